/*
 * Drain rate: outbox-relay draining a backlog of N 200-byte messages into the broker, next to
 * K_raw, a plain librdkafka producer loop with the relay's producer settings to the same broker,
 * run alternately in the same process; medians of several runs, plus the relay's CPU per message.
 * Usage: bench_drain CONNINFO BOOTSTRAP RELAY_BINARY [MESSAGES=100000] [RUNS=3] [RELAY_KEY=VALUE...]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "bench.h"
#include "outbox_int.h"

#define die(what, why) bench_die("bench_drain", what, why)



static void sql(PGconn *conn, const char *q) {
    PGresult *res = PQexec(conn, q);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        die(q, PQresultErrorMessage(res));
    PQclear(res);
}

static long delivered;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (!m->err)
        delivered++;
}

/* K_raw: n messages of the same size as the relay sends, keys spread over 1,000 values. */
static double raw_rate(const char *bootstrap, const void *value, size_t len, long n) {
    char err[512];
    rd_kafka_conf_t *kc = outbox_kafka_conf(NULL, outbox_kafka_producer_defaults(), err, sizeof(err));
    if (!kc || rd_kafka_conf_set(kc, "bootstrap.servers", bootstrap, err, sizeof(err)))
        die("producer conf", err);
    rd_kafka_conf_set_dr_msg_cb(kc, on_dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    if (!rk)
        die("producer", err);
    /* Connect and fetch metadata before the clock starts, as the relay's steady state has. */
    const rd_kafka_metadata_t *md;
    if (rd_kafka_metadata(rk, 1, NULL, &md, 10000) == 0)
        rd_kafka_metadata_destroy(md);
    delivered = 0;
    double t0 = bench_now();
    for (long i = 0; i < n; i++) {
        char key[16];
        int kl = snprintf(key, sizeof(key), "k%ld", i % 1000);
        while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("bench"), RD_KAFKA_V_KEY(key, (size_t)kl),
                                 RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 60000);
    double t = bench_now() - t0;
    if (delivered != n)
        die("raw producer", "not every message was delivered");
    rd_kafka_destroy(rk);
    return (double)n / t;
}

/* Drain: fill the outbox, start the relay, time until the table is empty. */
static double drain_rate(PGconn *conn, const char *bootstrap, const char *relay, const void *env,
                         size_t len, long n, char **extra, int n_extra, double *cpu_us_per_msg) {
    char count[32];
    snprintf(count, sizeof(count), "%ld", n);
    const char *params[2] = {env, count};
    int lengths[2] = {(int)len, 0}, formats[2] = {1, 0};
    sql(conn, "TRUNCATE outbox.messages");
    PGresult *res = PQexecParams(conn,
                                 "INSERT INTO outbox.messages (message_id, destination, partition_key, "
                                 "message_type, envelope) SELECT gen_random_uuid(), 'bench', "
                                 "convert_to('k' || (g % 1000), 'UTF8'), 'bench.Event', $1 "
                                 "FROM generate_series(1, $2::int) g",
                                 2, NULL, params, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("fill", PQresultErrorMessage(res));
    PQclear(res);
    sql(conn, "VACUUM ANALYZE outbox.messages");
    res = PQexec(conn, "SELECT count(*) FROM outbox.dead_letters");
    long dead_before = atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    double t0 = bench_now();
    pid_t pid = bench_start_relay(relay, bootstrap, extra, n_extra);
    for (;;) {
        usleep(20000);
        res = PQexec(conn, "SELECT NOT EXISTS (SELECT 1 FROM outbox.messages)");
        int empty = PQresultStatus(res) == PGRES_TUPLES_OK && PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (empty)
            break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            die("relay", "exited before draining the backlog");
    }
    double t = bench_now() - t0;
    res = PQexec(conn, "SELECT count(*) FROM outbox.dead_letters");
    if (atol(PQgetvalue(res, 0, 0)) != dead_before)
        die("relay", "dead-lettered messages of the benchmark: the figure would not be a drain rate");
    PQclear(res);
    kill(pid, SIGTERM);
    int st;
    struct rusage ru;
    wait4(pid, &st, 0, &ru);
    double cpu = (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
                 (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
    *cpu_us_per_msg = cpu / (double)n;
    return (double)n / t;
}


int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_drain CONNINFO BOOTSTRAP RELAY_BINARY [MESSAGES] [RUNS]\n");
        return 2;
    }
    long n = argc > 4 ? atol(argv[4]) : 100000;
    int runs = argc > 5 ? atoi(argv[5]) : 3;
    if (n < 1 || runs < 1 || runs > 20)
        die("arguments", "MESSAGES >= 1, RUNS 1..20");
    setenv("OUTBOX_PG_CONNINFO", argv[1], 1);
    PGconn *conn = PQconnectdb(argv[1]);
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (PQstatus(conn) != CONNECTION_OK || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("setup", PQerrorMessage(conn));

    /* One real envelope with a 200-byte payload, as outbox_send would write it. */
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "bench", "bench.Event");
    char payload[200];
    memset(payload, 'p', sizeof(payload));
    outbox_message_set_payload(m, payload, sizeof(payload));
    void *env;
    size_t len;
    outbox_message_encode(m, &env, &len);

    double raw[20], drain[20], cpu[20];
    for (int r = 0; r < runs; r++) {
        raw[r] = raw_rate(argv[2], env, len, n);
        drain[r] = drain_rate(conn, argv[2], argv[3], env, len, n, argv + 6, argc > 6 ? argc - 6 : 0, &cpu[r]);
        fprintf(stderr, "run %d: K_raw %.0f msg/s, drain %.0f msg/s (%.2f of K_raw), relay CPU %.2f us/msg\n",
                r + 1, raw[r], drain[r], drain[r] / raw[r], cpu[r]);
    }
    double kr = bench_median(raw, runs), dr = bench_median(drain, runs), cu = bench_median(cpu, runs);
    printf("drain of a %ld-message backlog (%zu-byte envelopes), %d runs, medians:\n", n, len, runs);
    printf("  K_raw (librdkafka producer, same settings)  %9.0f msg/s\n", kr);
    printf("  outbox-relay drain (start to empty table)   %9.0f msg/s   ratio to K_raw %.2f\n", dr, dr / kr);
    printf("  relay CPU (user+sys)                        %9.2f us/msg\n", cu);
    printf("{\"bench\":\"drain\",\"messages\":%ld,\"runs\":%d,\"envelope_bytes\":%zu,\"k_raw\":%.0f,"
           "\"drain\":%.0f,\"ratio\":%.3f,\"relay_cpu_us_per_msg\":%.2f}\n",
           n, runs, len, kr, dr, dr / kr, cu);
    free(env);
    outbox_message_destroy(m);
    outbox_destroy(ob);
    PQfinish(conn);
    return 0;
}
