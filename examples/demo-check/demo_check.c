/*
 * Reads the demo's topic back from the broker and checks it against what the order service
 * committed and rolled back: nothing lost, nothing rolled back published, per-customer order kept.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <outbox/outbox.h>

#include "orders.pb-c.h"

typedef char id_t37[37];

static int cmp_id(const void *a, const void *b) {
    return strcmp(a, b);
}

static id_t37 *read_ids(const char *path, size_t *n) {
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "demo-check: cannot read %s\n", path);
        exit(2);
    }
    size_t cap = 1024;
    id_t37 *ids = malloc(cap * sizeof(*ids));
    char line[128];
    *n = 0;
    while (fgets(line, sizeof(line), fp)) {
        line[strcspn(line, "\n")] = '\0';
        if (strlen(line) != 36)
            continue;
        if (*n == cap)
            ids = realloc(ids, (cap *= 2) * sizeof(*ids));
        memcpy(ids[(*n)++], line, 37);
    }
    fclose(fp);
    qsort(ids, *n, sizeof(*ids), cmp_id);
    return ids;
}

static long find(id_t37 *ids, size_t n, const char *id) {
    id_t37 *hit = bsearch(id, ids, n, sizeof(*ids), cmp_id);
    return hit ? (long)(hit - ids) : -1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: demo-check BOOTSTRAP TOPIC DIR [TIMEOUT_S]\n");
        return 2;
    }
    const char *bootstrap = argv[1], *topic = argv[2], *dir = argv[3];
    double timeout = argc > 4 ? atof(argv[4]) : 60;
    char path[512], err[512];
    size_t n_commit, n_roll;
    snprintf(path, sizeof(path), "%s/committed.txt", dir);
    id_t37 *committed = read_ids(path, &n_commit);
    snprintf(path, sizeof(path), "%s/rolledback.txt", dir);
    id_t37 *rolled = read_ids(path, &n_roll);
    unsigned *seen = calloc(n_commit ? n_commit : 1, sizeof(unsigned));

    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_conf_set(kc, "bootstrap.servers", bootstrap, err, sizeof(err));
    rd_kafka_conf_set(kc, "group.id", "demo-check", err, sizeof(err));
    rd_kafka_conf_set(kc, "enable.partition.eof", "true", err, sizeof(err));
    rd_kafka_conf_set(kc, "enable.auto.commit", "false", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "demo-check: %s\n", err);
        return 2;
    }
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) || md->topic_cnt != 1 || md->topics[0].err) {
        fprintf(stderr, "demo-check: no metadata for topic %s\n", topic);
        return 2;
    }
    int parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(tl, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);

    long records = 0, duplicates = 0, rolled_present = 0, unknown = 0, bad = 0, violations = 0;
    long *last_seq = NULL;
    size_t last_cap = 0;
    int eof = 0;
    double deadline = now_s() + timeout;
    while (eof < parts && now_s() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            eof++;
        } else if (!m->err) {
            records++;
            outbox_message_t *msg;
            if (outbox_message_decode(&msg, m->payload, m->len, err, sizeof(err)) != OUTBOX_OK) {
                bad++;
            } else {
                const char *id = outbox_message_id(msg);
                long ci = find(committed, n_commit, id);
                if (ci >= 0 && seen[ci]++ > 0) {
                    duplicates++;
                } else if (ci >= 0) {
                    size_t plen;
                    const void *p = outbox_message_payload(msg, &plen);
                    Examples__Orders__OrderCreated *ev =
                        examples__orders__order_created__unpack(NULL, plen, p);
                    if (!ev) {
                        bad++;
                    } else {
                        size_t cust = (size_t)atol(ev->customer_id + strlen("customer-"));
                        if (cust >= last_cap) {
                            size_t cap = (cust + 1) * 2;
                            last_seq = realloc(last_seq, cap * sizeof(*last_seq));
                            memset(last_seq + last_cap, 0, (cap - last_cap) * sizeof(*last_seq));
                            last_cap = cap;
                        }
                        /* First appearances of one customer's events must follow its order. */
                        if (ev->customer_seq <= last_seq[cust])
                            violations++;
                        else
                            last_seq[cust] = ev->customer_seq;
                        examples__orders__order_created__free_unpacked(ev, NULL);
                    }
                } else if (find(rolled, n_roll, id) >= 0) {
                    rolled_present++;
                } else {
                    unknown++;
                }
                outbox_message_destroy(msg);
            }
        }
        rd_kafka_message_destroy(m);
    }
    long lost = 0;
    for (size_t i = 0; i < n_commit; i++)
        lost += seen[i] == 0;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);

    printf("  committed               %zu\n", n_commit);
    printf("  published (distinct)    %zu\n", n_commit - (size_t)lost);
    printf("  rolled back             %zu (published: %ld)\n", n_roll, rolled_present);
    printf("  records on the topic    %ld (duplicates: %ld)\n", records, duplicates);
    printf("  lost                    %ld\n", lost);
    printf("  per-key order violations %ld\n", violations);
    if (bad || unknown)
        printf("  undecodable / unknown   %ld / %ld\n", bad, unknown);
    free(seen);
    free(committed);
    free(rolled);
    free(last_seq);
    return lost || rolled_present || violations || bad || unknown ? 1 : 0;
}
