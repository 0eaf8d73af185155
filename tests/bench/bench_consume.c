/*
 * Consumer throughput: messages per second through outbox_consumer_poll() with a handler that
 * inserts one row, per message (consumer.batch.max=1), batched (the defaults, savepoints on
 * failure only), batched with consumer.batch.savepoints=always, and with the batch handler, next to
 * a plain librdkafka consumer reading the same topic in the same process (the ceiling) and the
 * handler's own statement run alone on one connection (the handler's ceiling); medians of several
 * runs.  Then the p99 latency at 1,000 msg/s, and the dedup
 * statement's cost on a large processed table.
 * Usage: bench_consume CONNINFO BOOTSTRAP [MESSAGES=20000] [RUNS=3] [PROCESSED_ROWS=10000000]
 *                      [LATENCY_SECONDS=10]
 * BENCH_CONSUME_ONLY=M runs mode M alone once (0 per-message, 1 batched, 2 batch handler, 3 batched
 * with savepoints always), to profile.
 */
#include <pthread.h>
#include <stdbool.h>
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

/* ---- the outbox consumer in its four modes -------------------------------------------------- */

typedef enum { MODE_SINGLE, MODE_BATCHED, MODE_BATCH_HANDLER, MODE_BATCHED_ALWAYS, N_MODES } mode_t_;
static const char *const mode_names[] = {"per-message (consumer.batch.max=1)", "batched (defaults: on-failure)",
                                         "batch handler (defaults)", "batched (savepoints=always)"};
static const char *const mode_short[] = {"per-message", "batched", "batch handler", "batched always"};
/* The order of the table: the savepoints' cost shows between the two batched rows. */
static const mode_t_ mode_order[] = {MODE_SINGLE, MODE_BATCHED_ALWAYS, MODE_BATCHED, MODE_BATCH_HANDLER};

static long handled;
static char effects_sql[256], effects_batch_sql[256];

/* Latency mode: the payload starts with the send time (bench_now()); each handled message's send
 * time waits in pending[] until its batch committed, i.e. until the poll returns. */
static int latency_mode; /* also: new consumers start at the topic's end */
static double pending[20000];
static int n_pending;

static void note_sent_time(const outbox_message_t *m) {
    if (!latency_mode || n_pending >= (int)(sizeof(pending) / sizeof(pending[0])))
        return;
    size_t len;
    const char *p = outbox_message_payload(m, &len);
    char buf[32];
    snprintf(buf, sizeof(buf), "%.*s", (int)(len < 31 ? len : 31), p);
    pending[n_pending++] = atof(buf);
}

/* The handler a service would have: one row per message. */
static outbox_handler_result_t insert_one(const outbox_message_t *m, PGconn *conn, void *opaque) {
    (void)opaque;
    size_t len;
    const char *payload = outbox_message_payload(m, &len);
    const char *p[2] = {outbox_message_id(m), payload};
    int lens[2] = {0, (int)len}, fmts[2] = {0, 1};
    PGresult *res = PQexecParams(conn, effects_sql, 2, NULL, p, lens, fmts, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "bench_consume: insert: %s", PQresultErrorMessage(res));
    PQclear(res);
    note_sent_time(m);
    handled++;
    return ok ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_RETRY;
}

/* The same rows, set-based: one INSERT ... SELECT unnest(...) for the whole batch. */
static void insert_batch(const outbox_message_t *const *msgs, size_t n, PGconn *conn,
                         outbox_handler_result_t *results, void *opaque) {
    (void)opaque;
    static char ids[20000 * 38 + 3];
    size_t w = 0;
    ids[w++] = '{';
    const char **payloads = malloc(n * sizeof(*payloads));
    int *lens = malloc(n * sizeof(*lens));
    for (size_t i = 0; i < n; i++) {
        w += (size_t)snprintf(ids + w, sizeof(ids) - w, "%s%s", i ? "," : "", outbox_message_id(msgs[i]));
        size_t len;
        payloads[i] = outbox_message_payload(msgs[i], &len);
        lens[i] = (int)len;
        note_sent_time(msgs[i]);
    }
    ids[w++] = '}';
    ids[w] = '\0';
    /* The payloads as one bytea[] in binary would need array framing; as text they are plain
     * ASCII here, so a text[] cast to bytea is enough. */
    size_t total = 3;
    for (size_t i = 0; i < n; i++)
        total += (size_t)lens[i] + 3;
    char *pl = malloc(total), *q = pl;
    *q++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *q++ = ',';
        memcpy(q, payloads[i], (size_t)lens[i]);
        q += lens[i];
    }
    *q++ = '}';
    *q = '\0';
    const char *p[2] = {ids, pl};
    PGresult *res = PQexecParams(conn, effects_batch_sql, 2, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "bench_consume: batch insert: %s", PQresultErrorMessage(res));
    PQclear(res);
    for (size_t i = 0; i < n; i++)
        results[i] = ok ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_RETRY;
    if (ok)
        handled += (long)n;
    free(payloads);
    free(lens);
    free(pl);
}

static outbox_consumer_t *new_consumer(const char *conninfo, const char *bootstrap, const char *topic,
                                       const char *group, mode_t_ mode) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "consumer.group.id", group, err, sizeof(err));
    outbox_conf_set(conf, "pg.conninfo", conninfo, err, sizeof(err));
    outbox_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err));
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    if (mode == MODE_SINGLE)
        outbox_conf_set(conf, "consumer.batch.max", "1", err, sizeof(err));
    if (mode == MODE_BATCHED_ALWAYS)
        outbox_conf_set(conf, "consumer.batch.savepoints", "always", err, sizeof(err));
    if (latency_mode) {
        /* As bench_latency: no broker-side wait for more data to fill a fetch. */
        outbox_conf_set(conf, "kafka.auto.offset.reset", "latest", err, sizeof(err));
        outbox_conf_set(conf, "kafka.fetch.wait.max.ms", "1", err, sizeof(err));
        outbox_conf_set(conf, "kafka.fetch.error.backoff.ms", "1", err, sizeof(err));
    }
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    if (!c)
        die("consumer", err);
    if (mode == MODE_BATCH_HANDLER)
        outbox_consumer_set_batch_handler(c, insert_batch, NULL);
    const char *topics[1] = {topic};
    outbox_consumer_subscribe(c, topics, 1);
    return c;
}

static double outbox_rate(const char *conninfo, const char *bootstrap, const char *topic, const char *group,
                          long n, mode_t_ mode) {
    outbox_consumer_t *c = new_consumer(conninfo, bootstrap, topic, group, mode);
    handled = 0;
    double t0 = 0, deadline = bench_now() + 600;
    while (handled < n && bench_now() < deadline) {
        long before = handled;
        if (outbox_consumer_poll(c, insert_one, NULL, 100) != OUTBOX_OK)
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

/* ---- latency at a fixed rate ----------------------------------------------------------------- */

typedef struct {
    const char *bootstrap, *topic;
    int rate, seconds;
} lat_producer_t;

static void *paced_producer(void *arg) {
    const lat_producer_t *lp = arg;
    char err[512];
    rd_kafka_conf_t *kc = outbox_kafka_conf(NULL, outbox_kafka_producer_defaults(), err, sizeof(err));
    rd_kafka_conf_set(kc, "bootstrap.servers", lp->bootstrap, err, sizeof(err));
    rd_kafka_conf_set(kc, "linger.ms", "0", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    long total = (long)lp->rate * lp->seconds;
    double t0 = bench_now();
    for (long i = 0; i < total; i++) {
        double due = t0 + (double)i / lp->rate;
        while (bench_now() < due) {
            rd_kafka_poll(rk, 0);
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
        char key[16], payload[64];
        int kl = snprintf(key, sizeof(key), "k%ld", i % 100);
        snprintf(payload, sizeof(payload), "%.6f", bench_now());
        outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, lp->topic, "bench.Event");
        outbox_message_set_key(m, key, (size_t)kl);
        outbox_message_set_payload(m, payload, strlen(payload));
        void *env;
        size_t len;
        outbox_message_encode(m, &env, &len);
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(lp->topic), RD_KAFKA_V_KEY(key, (size_t)kl), RD_KAFKA_V_VALUE(env, len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_END);
        outbox_message_destroy(m);
    }
    rd_kafka_flush(rk, 30000);
    rd_kafka_destroy(rk);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p99 in ms of (commit time - send time) at lp's rate: the outbox consumer in mode (mode >= 0), or
 * the plain librdkafka consumer (mode < 0, receive time). */
static double latency_p99(const char *conninfo, const lat_producer_t *lp, const char *group, int mode) {
    static double lat[20000];
    int n_lat = 0;
    outbox_consumer_t *c = NULL;
    rd_kafka_t *rk = NULL;
    char err[512];
    latency_mode = 1;
    if (mode >= 0) {
        c = new_consumer(conninfo, lp->bootstrap, lp->topic, group, (mode_t_)mode);
    } else {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_conf_set(kc, "bootstrap.servers", lp->bootstrap, err, sizeof(err));
        rd_kafka_conf_set(kc, "group.id", group, err, sizeof(err));
        rd_kafka_conf_set(kc, "auto.offset.reset", "latest", err, sizeof(err));
        rd_kafka_conf_set(kc, "fetch.wait.max.ms", "1", err, sizeof(err));
        rd_kafka_conf_set(kc, "fetch.error.backoff.ms", "1", err, sizeof(err));
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
        rd_kafka_poll_set_consumer(rk);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, lp->topic, RD_KAFKA_PARTITION_UA);
        rd_kafka_subscribe(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    /* Joined and assigned before the clock starts: poll for a while first. */
    double settle = bench_now() + 6;
    while (bench_now() < settle) {
        if (c) {
            n_pending = 0;
            outbox_consumer_poll(c, insert_one, NULL, 100);
        } else {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
            if (m)
                rd_kafka_message_destroy(m);
        }
    }
    pthread_t th;
    pthread_create(&th, NULL, paced_producer, (void *)lp);
    long want = (long)lp->rate * lp->seconds;
    double deadline = bench_now() + lp->seconds + 30;
    while (n_lat < want && n_lat < 20000 && bench_now() < deadline) {
        if (c) {
            n_pending = 0;
            if (outbox_consumer_poll(c, insert_one, NULL, 100) != OUTBOX_OK)
                die("poll", outbox_consumer_errmsg(c));
            double now = bench_now();
            for (int i = 0; i < n_pending && n_lat < 20000; i++)
                lat[n_lat++] = (now - pending[i]) * 1000.0;
        } else {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
            if (m && !m->err) {
                outbox_message_t *msg;
                if (outbox_message_decode(&msg, m->payload, m->len, err, sizeof(err)) == OUTBOX_OK) {
                    size_t len;
                    const char *p = outbox_message_payload(msg, &len);
                    char buf[32];
                    snprintf(buf, sizeof(buf), "%.*s", (int)(len < 31 ? len : 31), p);
                    lat[n_lat++] = (bench_now() - atof(buf)) * 1000.0;
                    outbox_message_destroy(msg);
                }
            }
            if (m)
                rd_kafka_message_destroy(m);
        }
    }
    pthread_join(th, NULL);
    latency_mode = 0;
    if (c)
        outbox_consumer_destroy(c);
    else {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    if (n_lat < want / 2)
        die("latency", "too few messages arrived");
    qsort(lat, (size_t)n_lat, sizeof(lat[0]), cmp_d);
    return lat[(size_t)((double)(n_lat - 1) * 0.99)];
}

/* ---- a large processed table ------------------------------------------------------------------ */

/* Milliseconds for one dedup INSERT of 500 new ids (the consumer's statement), median of 21, rolled back. */
static double dedup_ms(PGconn *conn) {
    double v[21];
    for (int i = 0; i < 21; i++) {
        PQclear(PQexec(conn, "BEGIN"));
        double t = bench_now();
        PGresult *r = PQexec(conn, "INSERT INTO outbox.processed (consumer, message_id) SELECT 'bench-dedup', "
                                   "gen_random_uuid() FROM generate_series(1, 500) ON CONFLICT DO NOTHING "
                                   "RETURNING message_id::text");
        v[i] = (bench_now() - t) * 1000.0;
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            die("dedup statement", PQresultErrorMessage(r));
        PQclear(r);
        PQclear(PQexec(conn, "ROLLBACK"));
    }
    return bench_median(v, 21);
}

static void exec_or_die(PGconn *conn, const char *sql) {
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die(sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* ---- the handler alone ------------------------------------------------------------------------ */

/* The handler's own statement, n times with no consumer: the same INSERT with the same 200-byte
 * payload, one transaction per 500 as the batched consumer commits them.  What the handler costs
 * by itself on this machine (its round trip, parse, plan and insert): the batched consumer's
 * ceiling with this handler. */
static double handler_alone_rate(PGconn *conn, long n) {
    char payload[200], id[48];
    memset(payload, 'p', sizeof(payload));
    const char *p[2] = {id, payload};
    int lens[2] = {0, (int)sizeof(payload)}, fmts[2] = {0, 1};
    double t0 = bench_now();
    for (long i = 0; i < n; i++) {
        if (i % 500 == 0)
            exec_or_die(conn, "BEGIN");
        snprintf(id, sizeof(id), "00000000-0000-7000-8000-%012lx", (unsigned long)i);
        PGresult *res = PQexecParams(conn, effects_sql, 2, NULL, p, lens, fmts, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            die("the handler's INSERT", PQresultErrorMessage(res));
        PQclear(res);
        if (i % 500 == 499 || i == n - 1)
            exec_or_die(conn, "COMMIT");
    }
    double rate = (double)n / (bench_now() - t0);
    exec_or_die(conn, "TRUNCATE public.bench_consume_effects");
    return rate;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_consume CONNINFO BOOTSTRAP [MESSAGES=20000] [RUNS=3] [PROCESSED_ROWS=10000000] "
                        "[LATENCY_SECONDS=10]\n");
        return 2;
    }
    long n = argc > 3 ? atol(argv[3]) : 20000;
    int runs = argc > 4 ? atoi(argv[4]) : 3;
    long big = argc > 5 ? atol(argv[5]) : 10000000;
    int lat_s = argc > 6 ? atoi(argv[6]) : 10;
    if (n < 2 || runs < 1 || runs > 20 || big < 0 || lat_s < 1 || lat_s > 20)
        die("arguments", "MESSAGES >= 2, RUNS 1..20, PROCESSED_ROWS >= 0, LATENCY_SECONDS 1..20");
    PGconn *conn = PQconnectdb(argv[1]);
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (PQstatus(conn) != CONNECTION_OK || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("setup", PQerrorMessage(conn));
    exec_or_die(conn, "CREATE TABLE IF NOT EXISTS public.bench_consume_effects (message_id uuid NOT NULL, "
                      "payload bytea NOT NULL)");
    snprintf(effects_sql, sizeof(effects_sql),
             "INSERT INTO public.bench_consume_effects (message_id, payload) VALUES ($1::uuid, $2)");
    snprintf(effects_batch_sql, sizeof(effects_batch_sql),
             "INSERT INTO public.bench_consume_effects (message_id, payload) "
             "SELECT unnest($1::uuid[]), convert_to(unnest($2::text[]), 'UTF8')");
    produce(argv[2], "bench.consume", n);
    /* BENCH_CONSUME_ONLY=0|1|2|3: that mode once, e.g. under perf to profile it. */
    if (getenv("BENCH_CONSUME_ONLY")) {
        int m = atoi(getenv("BENCH_CONSUME_ONLY"));
        if (m < 0 || m >= N_MODES)
            die("BENCH_CONSUME_ONLY", "0 (per-message), 1 (batched), 2 (batch handler) or 3 (batched, savepoints "
                                      "always)");
        char group[32];
        snprintf(group, sizeof(group), "only-%d-%ld", m, (long)getpid());
        printf("%s: %.0f msg/s\n", mode_names[m], outbox_rate(argv[1], argv[2], "bench.consume", group, n, (mode_t_)m));
        return 0;
    }
    double raw[20], alone[20], ours[N_MODES][20];
    for (int r = 0; r < runs; r++) {
        char group[32];
        snprintf(group, sizeof(group), "raw-%d", r);
        raw[r] = raw_rate(argv[2], "bench.consume", group, n);
        alone[r] = handler_alone_rate(conn, n);
        fprintf(stderr, "run %d: raw consumer %.0f msg/s, handler alone %.0f/s", r + 1, raw[r], alone[r]);
        for (int o = 0; o < N_MODES; o++) {
            int m = mode_order[o];
            snprintf(group, sizeof(group), "outbox-%d-%d", m, r);
            ours[m][r] = outbox_rate(argv[1], argv[2], "bench.consume", group, n, (mode_t_)m);
            fprintf(stderr, ", %s %.0f msg/s", mode_short[m], ours[m][r]);
        }
        fprintf(stderr, "\n");
        exec_or_die(conn, "TRUNCATE public.bench_consume_effects");
    }
    double raw_med = bench_median(raw, runs), alone_med = bench_median(alone, runs), med[N_MODES];
    for (int m = 0; m < N_MODES; m++)
        med[m] = bench_median(ours[m], runs);

    /* Latency at 1,000 msg/s: the consumer's commit time against the plain consumer's receive time. */
    double p99[3];
    lat_producer_t lp = {argv[2], "bench.consume.lat", 1000, lat_s};
    p99[0] = latency_p99(argv[1], &lp, "lat-raw", -1);
    p99[1] = latency_p99(argv[1], &lp, "lat-batched", MODE_BATCHED);
    p99[2] = latency_p99(argv[1], &lp, "lat-single", MODE_SINGLE);

    /* A large processed table: the dedup statement alone, and the batched consumer, before and after. */
    double dedup_small = dedup_ms(conn), big_rate = 0, dedup_big = 0;
    if (big > 0) {
        char sql[256];
        snprintf(sql, sizeof(sql), "INSERT INTO outbox.processed (consumer, message_id, processed_at) SELECT "
                                   "'bench-old', gen_random_uuid(), now() FROM generate_series(1, %ld)", big);
        double t = bench_now();
        exec_or_die(conn, sql);
        exec_or_die(conn, "VACUUM ANALYZE outbox.processed");
        fprintf(stderr, "processed table filled with %ld rows in %.0f s\n", big, bench_now() - t);
        dedup_big = dedup_ms(conn);
        big_rate = outbox_rate(argv[1], argv[2], "bench.consume", "outbox-big", n, MODE_BATCHED);
        exec_or_die(conn, "DELETE FROM outbox.processed WHERE consumer = 'bench-old'");
    }

    printf("consumer throughput, %ld messages, %d runs, durable PostgreSQL, a handler inserting one row, medians:\n",
           n, runs);
    printf("  plain librdkafka consumer (the ceiling)      %9.0f msg/s\n", raw_med);
    printf("  the handler's INSERT alone, 500 a transaction %8.0f /s (the handler's own ceiling)\n", alone_med);
    for (int o = 0; o < N_MODES; o++) {
        int m = mode_order[o];
        printf("  outbox consumer, %-36s %9.0f msg/s   ratio to ceiling %.3f   to per-message %.2fx\n",
               mode_names[m], med[m], med[m] / raw_med, med[m] / med[0]);
    }
    printf("  batched, on-failure against always: %.2fx; batched against the handler alone: %.2f\n",
           med[MODE_BATCHED] / med[MODE_BATCHED_ALWAYS], med[MODE_BATCHED] / alone_med);
    printf("  targets: batched >= 20000 msg/s: %s; batched >= 8x per-message: %s\n",
           med[1] >= 20000 ? "met" : "MISSED", med[1] >= 8 * med[0] ? "met" : "MISSED");
    printf("latency at %d msg/s for %d s, p99 from send to commit (plain consumer: to receipt):\n", lp.rate, lp.seconds);
    printf("  plain librdkafka consumer %8.1f ms\n  batched                   %8.1f ms   added %.1f ms "
           "(target <= linger 5 + 10 ms: %s)\n  per-message               %8.1f ms   added %.1f ms\n",
           p99[0], p99[1], p99[1] - p99[0], p99[1] - p99[0] <= 15.0 ? "met" : "MISSED", p99[2], p99[2] - p99[0]);
    printf("dedup INSERT of 500 new ids: %.2f ms on the bench's processed table", dedup_small);
    if (big > 0)
        printf(", %.2f ms with %ld more rows; batched consumer then %.0f msg/s (%.2f of its median)", dedup_big, big,
               big_rate, big_rate / med[1]);
    printf("\n");
    printf("{\"bench\":\"consume\",\"messages\":%ld,\"runs\":%d,\"raw\":%.0f,\"handler_alone\":%.0f,"
           "\"outbox\":%.0f,\"per_message\":%.0f,"
           "\"batched\":%.0f,\"batched_always\":%.0f,\"batch_handler\":%.0f,\"batched_vs_per_message\":%.2f,"
           "\"lat_p99_raw_ms\":%.1f,"
           "\"lat_p99_batched_ms\":%.1f,\"lat_p99_per_message_ms\":%.1f,\"dedup_ms\":%.2f,\"dedup_big_ms\":%.2f,"
           "\"processed_rows_big\":%ld,\"batched_big\":%.0f}\n",
           n, runs, raw_med, alone_med, med[1], med[0], med[1], med[MODE_BATCHED_ALWAYS], med[2], med[1] / med[0], p99[0], p99[1],
           p99[2], dedup_small,
           dedup_big, big, big_rate);
    outbox_destroy(ob);
    PQfinish(conn);
    return 0;
}
