/*
 * Write overhead: transactions per second of a bare domain transaction (BEGIN; INSERT order;
 * COMMIT) against the same plus outbox_send(), plus outbox_send_batch() of 10, and with
 * outbox_send_commit() (message and COMMIT in one round trip), in outbox.mode=table and wal, from
 * N connections, measured in the same process, modes interleaved, the median of several runs.
 * Usage: bench_write CONNINFO [CONNECTIONS=8] [SECONDS=3] [RUNS=5]
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "outbox/outbox.h"

enum { MODE_BARE, MODE_SEND, MODE_BATCH10, MODE_SEND_COMMIT, MODE_WAL_SEND, MODE_WAL_SEND_COMMIT, MODES };
static const char *mode_names[MODES] = {"bare", "outbox_send", "outbox_send_batch(10)", "outbox_send_commit",
                                        "wal outbox_send", "wal outbox_send_commit"};

typedef struct {
    const char *conninfo;
    int mode;
    double seconds;
    long tx;
    int failed;
} worker_t;


static int ok(PGresult *res) {
    int good = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!good)
        fprintf(stderr, "bench_write: %s", PQresultErrorMessage(res));
    PQclear(res);
    return good;
}

static void *work(void *arg) {
    worker_t *w = arg;
    PGconn *conn = PQconnectdb(w->conninfo);
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "3", err, sizeof(err));
    bool wal = w->mode == MODE_WAL_SEND || w->mode == MODE_WAL_SEND_COMMIT;
    bool with_commit = w->mode == MODE_SEND_COMMIT || w->mode == MODE_WAL_SEND_COMMIT;
    outbox_conf_set(conf, "outbox.mode", wal ? "wal" : "table", err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    char payload[200];
    memset(payload, 'p', sizeof(payload));
    const char *params[2] = {"customer-1", "1234"};
    double end = bench_now() + w->seconds;
    while (bench_now() < end) {
        if (!ok(PQexec(conn, "BEGIN")) ||
            !ok(PQexecParams(conn, "INSERT INTO bench_orders (customer_id, amount_cents) VALUES ($1, $2)",
                             2, NULL, params, NULL, NULL, 0))) {
            w->failed = 1;
            break;
        }
        int n = w->mode == MODE_BATCH10 ? 10 : w->mode == MODE_BARE ? 0 : 1;
        outbox_message_t *ms[10];
        for (int i = 0; i < n; i++) {
            ms[i] = outbox_message_new(OUTBOX_EVENT, "orders", "orders.OrderCreated");
            outbox_message_set_key(ms[i], "customer-1", 10);
            outbox_message_set_payload(ms[i], payload, sizeof(payload));
        }
        outbox_err_t e = with_commit ? outbox_send_commit(ob, conn, (const outbox_message_t *const *)ms, (size_t)n)
                         : n == 1 ? outbox_send(ob, conn, ms[0])
                         : n ? outbox_send_batch(ob, conn, (const outbox_message_t *const *)ms, (size_t)n)
                             : OUTBOX_OK;
        for (int i = 0; i < n; i++)
            outbox_message_destroy(ms[i]);
        if (e != OUTBOX_OK) {
            fprintf(stderr, "bench_write: %s\n", outbox_errmsg(ob));
            w->failed = 1;
            break;
        }
        if (!with_commit && !ok(PQexec(conn, "COMMIT"))) {
            w->failed = 1;
            break;
        }
        w->tx++;
    }
    outbox_destroy(ob);
    PQfinish(conn);
    return NULL;
}


int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_write CONNINFO [CONNECTIONS] [SECONDS] [RUNS]\n");
        return 2;
    }
    const char *ci = argv[1];
    int conns = argc > 2 ? atoi(argv[2]) : 8;
    double secs = argc > 3 ? atof(argv[3]) : 3;
    int runs = argc > 4 ? atoi(argv[4]) : 5;
    if (conns < 1 || conns > 64 || secs <= 0 || runs < 1 || runs > 50) {
        fprintf(stderr, "bench_write: CONNECTIONS 1..64, SECONDS > 0, RUNS 1..50\n");
        return 2;
    }
    PGconn *setup = PQconnectdb(ci);
    char err[256];
    outbox_t *ob = outbox_new(NULL, err, sizeof(err));
    if (PQstatus(setup) != CONNECTION_OK || outbox_migrate(ob, setup) != OUTBOX_OK) {
        fprintf(stderr, "bench_write: setup failed: %s %s\n", PQerrorMessage(setup), outbox_errmsg(ob));
        return 1;
    }
    ok(PQexec(setup, "CREATE TABLE IF NOT EXISTS bench_orders (id bigserial PRIMARY KEY, "
                     "customer_id text NOT NULL, amount_cents bigint NOT NULL)"));
    double tps[MODES][50];
    for (int r = 0; r < runs; r++) {
        for (int mode = 0; mode < MODES; mode++) {
            /* Same starting state for every mode: empty tables, vacuumed. */
            ok(PQexec(setup, "TRUNCATE bench_orders, outbox.messages"));
            ok(PQexec(setup, "CHECKPOINT"));
            pthread_t th[64];
            worker_t w[64];
            for (int i = 0; i < conns; i++) {
                w[i] = (worker_t){.conninfo = ci, .mode = mode, .seconds = secs};
                pthread_create(&th[i], NULL, work, &w[i]);
            }
            long total = 0;
            for (int i = 0; i < conns; i++) {
                pthread_join(th[i], NULL);
                if (w[i].failed)
                    return 1;
                total += w[i].tx;
            }
            tps[mode][r] = (double)total / secs;
            fprintf(stderr, "run %d %-22s %8.0f tps\n", r + 1, mode_names[mode], tps[mode][r]);
        }
    }
    double med[MODES];
    for (int mode = 0; mode < MODES; mode++) {
        med[mode] = bench_median(tps[mode], runs);
    }
    printf("write overhead, %d connections, %d runs of %.0f s, medians:\n", conns, runs, secs);
    for (int mode = 0; mode < MODES; mode++)
        printf("  %-24s %8.0f tps  ratio to bare %.3f\n", mode_names[mode], med[mode], med[mode] / med[MODE_BARE]);
    printf("{\"bench\":\"write\",\"connections\":%d,\"runs\":%d,\"seconds\":%.1f,\"bare_tps\":%.0f,"
           "\"send_tps\":%.0f,\"batch10_tps\":%.0f,\"send_ratio\":%.3f,\"batch10_ratio\":%.3f,"
           "\"send_commit_tps\":%.0f,\"wal_send_tps\":%.0f,\"wal_send_commit_tps\":%.0f}\n",
           conns, runs, secs, med[0], med[1], med[2], med[1] / med[0], med[2] / med[0], med[3], med[4], med[5]);
    outbox_destroy(ob);
    PQfinish(setup);
    return 0;
}
