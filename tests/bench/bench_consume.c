/*
 * Consumer throughput: messages per second through outbox_consumer_poll() (decode, dedup insert
 * and commit in PostgreSQL, a trivial handler) next to a plain librdkafka consumer reading the
 * same topic in the same process; medians of several runs.
 * Usage: bench_consume CONNINFO BOOTSTRAP [MESSAGES=20000] [RUNS=3]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "bench.h"
#include "outbox_int.h"

#define die(what, why) bench_die("bench_consume", what, why)



static void produce(const char *bootstrap, const char *topic, long n) {
    char err[512];
    rd_kafka_conf_t *kc = outbox_kafka_conf(NULL, outbox_kafka_producer_defaults(), err, sizeof(err));
    rd_kafka_conf_set(kc, "bootstrap.servers", bootstrap, err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    if (!rk)
        die("producer", err);
    char payload[200];
    memset(payload, 'p', sizeof(payload));
    for (long i = 0; i < n; i++) {
        char key[16];
        int kl = snprintf(key, sizeof(key), "k%ld", i % 100);
        outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "bench.Event");
        outbox_message_set_key(m, key, (size_t)kl);
        outbox_message_set_payload(m, payload, sizeof(payload));
        void *env;
        size_t len;
        outbox_message_encode(m, &env, &len);
        while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, (size_t)kl),
                                 RD_KAFKA_V_VALUE(env, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        outbox_message_destroy(m);
    }
    if (rd_kafka_flush(rk, 60000))
        die("producer", "flush timed out");
    rd_kafka_destroy(rk);
}

/* Plain librdkafka consumer in a fresh group: time from the first message to the n-th. */
static double raw_rate(const char *bootstrap, const char *topic, const char *group, long n) {
    char err[512];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_conf_set(kc, "bootstrap.servers", bootstrap, err, sizeof(err));
    rd_kafka_conf_set(kc, "group.id", group, err, sizeof(err));
    rd_kafka_conf_set(kc, "auto.offset.reset", "earliest", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    long got = 0;
    double t0 = 0, deadline = bench_now() + 120;
    while (got < n && bench_now() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m && !m->err && got++ == 0)
            t0 = bench_now();
        if (m)
            rd_kafka_message_destroy(m);
    }
    double t = bench_now() - t0;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (got < n)
        die("raw consumer", "did not read every message");
    return (double)(n - 1) / t;
}

static long handled;

static outbox_handler_result_t trivial(const outbox_message_t *m, PGconn *conn, void *opaque) {
    (void)m;
    (void)conn;
    (void)opaque;
    handled++;
    return OUTBOX_HANDLER_OK;
}

static double outbox_rate(const char *conninfo, const char *bootstrap, const char *topic, const char *group,
                          long n) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "consumer.group.id", group, err, sizeof(err));
    outbox_conf_set(conf, "pg.conninfo", conninfo, err, sizeof(err));
    outbox_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err));
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    if (!c)
        die("consumer", err);
    const char *topics[1] = {topic};
    outbox_consumer_subscribe(c, topics, 1);
    handled = 0;
    double t0 = 0, deadline = bench_now() + 300;
    while (handled < n && bench_now() < deadline) {
        long before = handled;
        if (outbox_consumer_poll(c, trivial, NULL, 100) != OUTBOX_OK)
            die("poll", outbox_consumer_errmsg(c));
        if (before == 0 && handled > 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    outbox_consumer_destroy(c);
    if (handled < n)
        die("outbox consumer", "did not process every message");
    return (double)(n - 1) / t;
}


int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_consume CONNINFO BOOTSTRAP [MESSAGES] [RUNS]\n");
        return 2;
    }
    long n = argc > 3 ? atol(argv[3]) : 20000;
    int runs = argc > 4 ? atoi(argv[4]) : 3;
    if (n < 2 || runs < 1 || runs > 20)
        die("arguments", "MESSAGES >= 2, RUNS 1..20");
    PGconn *conn = PQconnectdb(argv[1]);
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (PQstatus(conn) != CONNECTION_OK || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("setup", PQerrorMessage(conn));
    produce(argv[2], "bench.consume", n);
    double raw[20], ours[20];
    for (int r = 0; r < runs; r++) {
        char group[32];
        snprintf(group, sizeof(group), "raw-%d", r);
        raw[r] = raw_rate(argv[2], "bench.consume", group, n);
        snprintf(group, sizeof(group), "outbox-%d", r);
        ours[r] = outbox_rate(argv[1], argv[2], "bench.consume", group, n);
        fprintf(stderr, "run %d: raw consumer %.0f msg/s, outbox consumer %.0f msg/s\n", r + 1, raw[r], ours[r]);
    }
    double raw_med = bench_median(raw, runs), ours_med = bench_median(ours, runs);
    printf("consumer throughput, %ld messages, %d runs, medians:\n", n, runs);
    printf("  plain librdkafka consumer                   %9.0f msg/s\n", raw_med);
    printf("  outbox consumer (dedup + trivial handler)   %9.0f msg/s   ratio %.3f\n", ours_med,
           ours_med / raw_med);
    printf("{\"bench\":\"consume\",\"messages\":%ld,\"runs\":%d,\"raw\":%.0f,\"outbox\":%.0f}\n", n, runs,
           raw_med, ours_med);
    outbox_destroy(ob);
    PQfinish(conn);
    return 0;
}
