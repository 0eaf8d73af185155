/*
 * Latency: from a transaction's COMMIT returning to the message's receipt by a Kafka consumer,
 * through outbox-relay (its own process, default settings), at a steady rate; p50/p99/p999.
 * The first second of messages warms up (the producer's first metadata lookup of the topic
 * costs about half a second) and is not counted.
 * Every counted message's latency goes to OUTDIR/latency_RATE.dat, sorted, as a CDF (ms, fraction).
 * With relay.record.timestamp=produced among the relay's keys, each latency also splits at the
 * relay's produce call (the record's timestamp): the server's and the relay's part before it,
 * the producer's, the broker's and the consumer's after it.
 * Usage: bench_latency [-o OUTDIR] CONNINFO BOOTSTRAP RELAY_BINARY RATE_PER_S SECONDS [RELAY_KEY=VALUE...]
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "bench.h"
#include "outbox_int.h"

#define die(what, why) bench_die("bench_latency", what, why)




typedef struct {
    const char *bootstrap;
    char topic[64];     /* fresh per run, so nothing older is on it */
    long n;
    double *committed; /* per sequence number: when COMMIT returned (written by the main thread) */
    double *received_at; /* per sequence number: first receipt (-1 = not received; consumer thread) */
    double *committed_wall; /* per sequence number: COMMIT's return, wall clock ms (main thread) */
    double *stamp_wall;     /* per sequence number: the record's timestamp, ms (consumer thread) */
    _Atomic long received;
    long part_received[4];   /* per partition (consumer thread) */
    int64_t part_offset[4];  /* last offset received per partition (consumer thread) */
    _Atomic int ready, stop;
} shared_t;

static double wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* p50 and p99 of v[0..k) (sorted in place), or 0 when empty. */
static void p50_p99(double *v, long k, double *p50, double *p99) {
    qsort(v, (size_t)k, sizeof(double), bench_cmp_double);
    *p50 = k ? v[(long)((double)(k - 1) * 0.5)] : 0;
    *p99 = k ? v[(long)((double)(k - 1) * 0.99)] : 0;
}

/* Reads the topic from its end (assigned before the first write) and timestamps receipts. */
static void *consume(void *arg) {
    shared_t *sh = arg;
    char err[512];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_conf_set(kc, "bootstrap.servers", sh->bootstrap, err, sizeof(err));
    rd_kafka_conf_set(kc, "group.id", "bench-latency", err, sizeof(err));
    rd_kafka_conf_set(kc, "fetch.wait.max.ms", "1", err, sizeof(err));
    rd_kafka_conf_set(kc, "fetch.error.backoff.ms", "1", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    if (!rk)
        die("consumer", err);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(l, sh->topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    atomic_store(&sh->ready, 1);
    int errors = 0;
    while (!atomic_load(&sh->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
        if (!m)
            continue;
        double t = bench_now();
        outbox_message_t *msg;
        if (!m->err && outbox_message_decode(&msg, m->payload, m->len, err, sizeof(err)) == OUTBOX_OK) {
            size_t len;
            const char *p = outbox_message_payload(msg, &len);
            /* The payload is len bytes, not a C string. */
            char digits[24], *end;
            long seq = -1;
            if (len > 0 && len < sizeof(digits)) {
                memcpy(digits, p, len);
                digits[len] = '\0';
                seq = strtol(digits, &end, 10);
                if (*end)
                    seq = -1;
            }
            if (m->partition >= 0 && m->partition < 4) {
                sh->part_received[m->partition]++;
                sh->part_offset[m->partition] = m->offset;
            }
            /* The relay may publish a row before COMMIT's reply reaches the writer: only the
             * receipt time is taken here, the latency is computed after the run. */
            if (seq >= 0 && seq < sh->n && sh->received_at[seq] < 0) {
                sh->received_at[seq] = t;
                sh->stamp_wall[seq] = (double)rd_kafka_message_timestamp(m, NULL);
                atomic_fetch_add(&sh->received, 1);
            }
            outbox_message_destroy(msg);
        } else if (m->err && errors++ < 10) {
            fprintf(stderr, "bench_latency: consumer: %s [%d]: %s\n", m->rkt ? rd_kafka_topic_name(m->rkt) : "-",
                    (int)m->partition, rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return NULL;
}


int main(int argc, char **argv) {
    const char *outdir = ".";
    int opt, bad = 0;
    while ((opt = getopt(argc, argv, "+o:")) != -1) {
        if (opt == 'o')
            outdir = optarg;
        else
            bad = 1;
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (bad || argc < 6) {
        fprintf(stderr, "usage: bench_latency [-o OUTDIR] CONNINFO BOOTSTRAP RELAY_BINARY RATE_PER_S SECONDS "
                        "[KEY=VALUE...]\n");
        return 2;
    }
    double rate = atof(argv[4]), secs = atof(argv[5]);
    if (rate <= 0 || rate > 100000 || secs <= 0)
        die("arguments", "RATE_PER_S in (0, 100000], SECONDS > 0");
    long warmup = (long)rate < 20 ? 20 : (long)rate;
    shared_t sh = {.bootstrap = argv[2], .n = warmup + (long)(rate * secs)};
    snprintf(sh.topic, sizeof(sh.topic), "bench.latency.%d.%ld", (int)getpid(), (long)time(NULL));
    sh.committed = calloc((size_t)sh.n, sizeof(double));
    sh.received_at = malloc((size_t)sh.n * sizeof(double));
    sh.committed_wall = calloc((size_t)sh.n, sizeof(double));
    sh.stamp_wall = calloc((size_t)sh.n, sizeof(double));
    if (!sh.committed || !sh.received_at || !sh.committed_wall || !sh.stamp_wall)
        die("setup", "out of memory");
    for (long i = 0; i < sh.n; i++)
        sh.received_at[i] = -1;
    setenv("OUTBOX_PG_CONNINFO", argv[1], 1);
    PGconn *conn = PQconnectdb(argv[1]);
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    /* outbox.mode=wal among the relay's keys: the writer emits logical messages too. */
    const char *mode = "table";
    for (int i = 6; i < argc; i++)
        if (!strcmp(argv[i], "outbox.mode=wal"))
            mode = "wal";
    outbox_conf_set(conf, "outbox.mode", mode, err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (PQstatus(conn) != CONNECTION_OK || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("setup", PQerrorMessage(conn));
    PQclear(PQexec(conn, "TRUNCATE outbox.messages"));
    /* With the record timestamp taken when the relay produces, a message's latency splits there. */
    int produced_ts = 0;
    for (int i = 6; i < argc; i++)
        produced_ts |= !strcmp(argv[i], "relay.record.timestamp=produced");
    if (!strcmp(mode, "wal")) {
        char cmd[4096];
        snprintf(cmd, sizeof(cmd), "%s -X outbox.mode=wal migrate >/dev/null", argv[3]);
        if (system(cmd) != 0)
            die("setup", "outbox-relay -X outbox.mode=wal migrate failed");
    }

    pid_t relay = bench_start_relay(argv[3], argv[2], argv + 6, argc > 6 ? argc - 6 : 0);
    pthread_t th;
    pthread_create(&th, NULL, consume, &sh);
    while (!atomic_load(&sh.ready))
        usleep(10000);
    usleep(500000); /* the relay is connected and idle-polling: the steady state being measured */

    double t0 = bench_now(), interval = 1.0 / rate;
    for (long i = 0; i < sh.n; i++) {
        double due = t0 + (double)i * interval, wait = due - bench_now();
        if (wait > 0)
            usleep((useconds_t)(wait * 1e6));
        char payload[24];
        int len = snprintf(payload, sizeof(payload), "%ld", i);
        outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, sh.topic, "bench.Latency");
        char key[16];
        int kl = snprintf(key, sizeof(key), "k%ld", i % 100);
        outbox_message_set_key(m, key, (size_t)kl);
        outbox_message_set_payload(m, payload, (size_t)len);
        PQclear(PQexec(conn, "BEGIN"));
        if (outbox_send(ob, conn, m) != OUTBOX_OK)
            die("outbox_send", outbox_errmsg(ob));
        PQclear(PQexec(conn, "COMMIT"));
        sh.committed[i] = bench_now();
        sh.committed_wall[i] = wall_ms();
        outbox_message_destroy(m);
    }
    double deadline = bench_now() + 10;
    while (atomic_load(&sh.received) < sh.n && bench_now() < deadline)
        usleep(10000);
    atomic_store(&sh.stop, 1);
    pthread_join(th, NULL);
    if (atomic_load(&sh.received) < sh.n) {
        /* Still in the outbox: the relay did not send it; gone: the broker acknowledged it. */
        PGresult *res = PQexec(conn, "SELECT (SELECT count(*) FROM outbox.messages), "
                                     "(SELECT count(*) FROM outbox.dead_letters)");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            fprintf(stderr, "bench_latency: after the deadline the outbox holds %s rows, dead_letters %s\n",
                    PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
        PQclear(res);
    }
    kill(relay, SIGTERM);
    waitpid(relay, NULL, 0);

    long got = atomic_load(&sh.received);
    double *lat = malloc((size_t)(got ? got : 1) * sizeof(double));
    long k = 0, early = 0;
    for (long i = warmup; i < sh.n; i++)
        if (sh.received_at[i] >= 0) {
            /* Received before COMMIT returned to the writer: no measurable latency. */
            double l = sh.received_at[i] - sh.committed[i];
            early += l < 0;
            lat[k++] = l > 0 ? l * 1000 : 0;
        }
    qsort(lat, (size_t)k, sizeof(double), bench_cmp_double);
#define PCT(p) (k ? lat[(long)((double)(k - 1) * (p))] : 0)
    printf("latency commit -> consumer receipt at %.0f msg/s for %.0f s after %ld warm-up messages "
           "(%ld of %ld received), outbox.mode=%s:\n", rate, secs, warmup, got, sh.n, mode);
    printf("  p50 %.2f ms   p99 %.2f ms   p999 %.2f ms   max %.2f ms\n", PCT(0.5), PCT(0.99), PCT(0.999),
           k ? lat[k - 1] : 0);
    if (early)
        printf("  %ld received before COMMIT returned to the writer (counted as 0 ms)\n", early);
    if (produced_ts && k) {
        /* The record's timestamp is the relay's produce call (wall clock, whole ms): before it the
         * time is the server's and the relay's (decoding, reading, building a batch), after it the
         * producer's, the broker's and the consumer's (linger, the produce request, the fetch). */
        double *a = malloc((size_t)k * sizeof(double)), *b = malloc((size_t)k * sizeof(double));
        long j = 0;
        for (long i = warmup; i < sh.n && a && b; i++)
            if (sh.received_at[i] >= 0) {
                double total = (sh.received_at[i] - sh.committed[i]) * 1000;
                a[j] = sh.stamp_wall[i] - sh.committed_wall[i];
                b[j] = total - a[j];
                j++;
            }
        double a50, a99, b50, b99;
        p50_p99(a, j, &a50, &a99);
        p50_p99(b, j, &b50, &b99);
        printf("  split at the relay's produce call (record timestamps, whole ms):\n"
               "    commit -> produce   p50 %.2f ms   p99 %.2f ms\n"
               "    produce -> receipt  p50 %.2f ms   p99 %.2f ms\n", a50, a99, b50, b99);
        free(a);
        free(b);
    }
    char path[4096];
    /* latency_[wal_]RATE[_lingerMS].dat: a linger set among the keys names its own file. */
    const char *linger = "";
    for (int i = 6; i < argc; i++)
        if (!strncmp(argv[i], "kafka.linger.ms=", 16))
            linger = argv[i] + 16;
    snprintf(path, sizeof(path), "%s/latency_%s%.0f%s%s.dat", outdir, strcmp(mode, "wal") ? "" : "wal_", rate,
             *linger ? "_linger" : "", linger);
    FILE *f = fopen(path, "w");
    if (!f)
        die(path, "cannot write the latencies");
    fprintf(f, "# title: %s, %.0f msg/s%s%s (p50 %.1f ms, p99 %.1f ms)\n# latency_ms fraction_at_or_below\n", mode,
            rate, *linger ? ", linger.ms " : "", linger, PCT(0.5), PCT(0.99));
    for (long i = 0; i < k; i++)
        fprintf(f, "%.3f %.6f\n", lat[i], (double)(i + 1) / (double)k);
    fclose(f);
    printf("  every latency (CDF): %s\n", path);
    printf("{\"bench\":\"latency\",\"mode\":\"%s\",\"rate\":%.0f,\"seconds\":%.0f,\"sent\":%ld,\"received\":%ld,\"p50_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"early\":%ld,\"cdf\":\"%s\"}\n",
           mode, rate, secs, sh.n, got, PCT(0.5), PCT(0.99), PCT(0.999), k ? lat[k - 1] : 0, early, path);
    if (got != sh.n) {
        int shown = 0;
        fprintf(stderr, "bench_latency: not received:");
        for (long i = 0; i < sh.n && shown < 20; i++)
            if (sh.received_at[i] < 0) {
                fprintf(stderr, " #%ld (committed %.3f s after the first)", i, sh.committed[i] - sh.committed[0]);
                shown++;
            }
        fprintf(stderr, "%s\n", sh.n - got > shown ? " ..." : "");
        for (int p = 0; p < 4; p++)
            fprintf(stderr, "bench_latency: partition %d: %ld received, last offset %lld\n", p, sh.part_received[p],
                    (long long)sh.part_offset[p]);
    }
    free(lat);
    free(sh.committed);
    free(sh.received_at);
    free(sh.committed_wall);
    free(sh.stamp_wall);
    outbox_destroy(ob);
    PQfinish(conn);
    return got == sh.n ? 0 : 1;
}
