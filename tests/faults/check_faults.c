/* check_faults: one seeded fault-injection scenario (`make check-faults`).  Writers, a relay and a
 * standby, a consumer, a 3-broker mock cluster and PostgreSQL are broken on purpose about 20 times;
 * then a checker reads the whole topic and fails on any breach of the delivery contract (DESIGN.md). */
/*
 * Environment (set by tests/faults/run.sh through with-services.sh):
 *   OUTBOX_TEST_PG, OUTBOX_TEST_PGCTL, OUTBOX_BUILD_DIR   the cluster, pg_ctl, the built programs
 *   OUTBOX_FAULT_SEED     the seed (required: the runner draws and prints it)
 *   OUTBOX_FAULT_MESSAGES committed messages to write (default 100000)
 *   OUTBOX_FAULT_COUNT    faults to inject (default: every type once, plus 3)
 *   OUTBOX_FAULT_JSON     file to append the result to as one JSON line (optional)
 *   OUTBOX_FAULT_TYPES    only these fault types, by number in fault_types[] (e.g. "2,5"; to chase
 *                         one failure)
 *   OUTBOX_FAULT_MODE     table (default) or wal: the outbox.mode of the writers and the relays
 * The seed and the mode fix the workload (keys, rollbacks) and the fault schedule (types, order,
 * durations, targets); process timing still varies from run to run.
 */
#include <glob.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "outbox/outbox.h"
#include "outbox/v1/envelope.pb-c.h"
#include "testutil.h"
#include "testutil_kafka.h"
#include "testutil_net.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#define TOPIC "faults"
#define KEYS 1000
#define WRITERS 8
#define BROKERS 3
#define PARTITIONS 4
#define BACKLOG 20000            /* written before the relays start: the fault-free drain rate */
#define ROLLBACK_PERCENT 10
/* Long writer transactions: this many per thousand stay open LONG_TX_MIN_MS..LONG_TX_MAX_MS after
 * writing their message, holding the relays' claim floor while later ids are published. */
#define LONG_TX_PERMILLE 3
#define LONG_TX_MIN_MS 1000
#define LONG_TX_MAX_MS 6000
#define STMT_TIMEOUT_MS 2000     /* the relays' relay.statement.timeout.ms */
#define ACK_TIMEOUT_MS 3000      /* the relays' kafka.socket.timeout.ms: a response later than that is lost */
#define RECOVERY_LIMIT_MS 120000 /* a fault not recovered from by then is a failure */
/* The relays' pg.timeout.ms (once they know the key): the longest wait for a connect, and for an
 * answer beyond STMT_TIMEOUT_MS, so the server's statement timeout still ends a lock wait first. */
#define PG_TIMEOUT_MS 2000
/* libpq's connect_timeout (s) in the relays' pg.conninfo: a connect through a silent network ends. */
#define CONNECT_TIMEOUT_S 3

/* ---- the seeded generator -------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static int rnd(uint64_t *s, int lo, int hi) {
    return lo + (int)(splitmix(s) % (uint64_t)(hi - lo + 1));
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- faults ---------------------------------------------------------------------------------- */

typedef enum {
    F_ALL_DOWN,
    F_BROKER_DOWN_LEADER_MOVED,
    F_RETRIABLE_ERRORS,
    F_TRANSPORT,
    F_LOST_ACK,
    F_NON_RETRIABLE,
    F_SLOW_BROKER,
    F_RELAYS_KILLED,
    F_LEADER_KILLED,
    F_LEADER_TERMINATED,
    F_PG_FAST_RESTART,
    F_PG_IMMEDIATE_RESTART,
    F_BACKEND_TERMINATED,
    F_STATEMENT_TIMEOUT,
    F_POISON,
    F_CONSUMER_KILLED,
    F_PG_PARTITION,
    F_CONSUMER_KILLED_MID_BATCH,
    F_PG_RESTART_MID_BATCH,
    F_RETRY_MID_BATCH,
    F_REJECT_MID_BATCH,
    /* wal mode only (last, so that table mode's schedule per seed stays what it was): */
    F_WALSENDER_TERMINATED,
    F__CNT
} fault_type_t;

static const struct {
    const char *name;
    int hold_min_ms, hold_max_ms; /* how long the fault lasts before it is cleared */
} fault_types[F__CNT] = {
    [F_ALL_DOWN] = {"all brokers down", 2000, 10000},
    [F_BROKER_DOWN_LEADER_MOVED] = {"broker down, leaders moved", 2000, 6000},
    [F_RETRIABLE_ERRORS] = {"retriable produce errors", 500, 1500},
    [F_TRANSPORT] = {"transport failure", 200, 800},
    [F_LOST_ACK] = {"lost ack", ACK_TIMEOUT_MS + 2000, ACK_TIMEOUT_MS + 2000},
    [F_NON_RETRIABLE] = {"non-retriable error", 500, 1500},
    [F_SLOW_BROKER] = {"slow broker", 2000, 5000},
    [F_RELAYS_KILLED] = {"relays SIGKILLed", 500, 2000},
    [F_LEADER_KILLED] = {"leader SIGKILLed", 1000, 3000},
    [F_LEADER_TERMINATED] = {"leader SIGTERMed", 0, 1000},
    [F_PG_FAST_RESTART] = {"PostgreSQL fast restart", 0, 0},
    [F_PG_IMMEDIATE_RESTART] = {"PostgreSQL immediate restart", 0, 0},
    [F_BACKEND_TERMINATED] = {"relay backends terminated", 0, 0},
    [F_STATEMENT_TIMEOUT] = {"statement timeout", STMT_TIMEOUT_MS + 1000, STMT_TIMEOUT_MS + 3000},
    [F_POISON] = {"poison messages", 0, 0},
    [F_CONSUMER_KILLED] = {"consumer SIGKILLed", 500, 2000},
    /* Longer than a statement's deadline (STMT_TIMEOUT_MS + PG_TIMEOUT_MS), so the relays give up
     * on their sessions and retry while the partition lasts. */
    [F_PG_PARTITION] = {"PostgreSQL partition", STMT_TIMEOUT_MS + PG_TIMEOUT_MS + 1000,
                        STMT_TIMEOUT_MS + PG_TIMEOUT_MS + 5000},
    /* The consumer's batches: the handler is slowed (test-consumer --fault-file) so that the fault
     * lands while a batch's transaction holds handled but uncommitted messages. */
    [F_CONSUMER_KILLED_MID_BATCH] = {"consumer SIGKILLed mid-batch", 500, 2000},
    [F_PG_RESTART_MID_BATCH] = {"PostgreSQL restart mid-batch", 0, 0},
    /* One message in 16 RETRYs (once) or is REJECTed by the handler while this lasts. */
    [F_RETRY_MID_BATCH] = {"handler RETRY mid-batch", 2000, 5000},
    [F_REJECT_MID_BATCH] = {"handler REJECT mid-batch", 1000, 3000},
    /* Only the relays' replication connections: the leader keeps its lock and must start the
     * stream again from the slot's confirmed position. */
    [F_WALSENDER_TERMINATED] = {"walsender terminated", 0, 0},
};

/* How often the wal relay looks at the outbox table between stream batches (TABLE_CHECK_MS in
 * relay/walsource.c): in wal mode the table lock of a statement timeout fault is held this much
 * longer, so that such a look falls inside it. */
#define WAL_TABLE_CHECK_MS 5000

/* Whether fault type t can hit anything in this mode. */
static int fault_applies(fault_type_t t, int wal) {
    return t != F_WALSENDER_TERMINATED || wal;
}

typedef struct {
    fault_type_t type;
    int hold_ms, gap_ms, arg; /* arg: a broker, an error choice or a count, drawn with the rest */
    char detail[96];
    int64_t start_wall, end_wall, recovered_wall; /* recovered_wall 0: not recovered */
    long long recovery_ms;
    long dups; /* duplicates whose record timestamp falls in [start, recovered + 1 s] */
} fault_t;

/* ---- scenario state -------------------------------------------------------------------------- */

static uint64_t seed;
static int wal_mode;           /* OUTBOX_FAULT_MODE=wal: writers and relays in outbox.mode=wal */
static const char *mode_name;  /* "table" or "wal" */
static char slot_name[80];     /* wal mode: the slot (and publication) `outbox-relay migrate` made */
static long target_messages;
static int fault_count;
static char schema[64];
static const char *conninfo;
static tk_broker_t *broker;
static tk_proc_t *relays[2];
static tk_proc_t *consumer;
static PGconn *mon; /* the scenario's own connection, re-established after PostgreSQL restarts */
/* The relays (only they) reach PostgreSQL through this proxy for the whole run, so that a partition
 * can silence their sessions while writers, consumer and checker carry on. */
static tn_proxy_t *pgproxy;
static char relay_conninfo[1200];
static const char *pg_timeout_arg; /* "pg.timeout.ms=..." or NULL while the relay lacks the key */
static long unexpected_exits; /* relays or consumers that ended without being told to */
static char consumer_fault_path[1024]; /* test-consumer --fault-file */

/* Writers share these. */
static atomic_long committed, issued;
static atomic_long long_txs; /* writer transactions held open LONG_TX_MIN_MS or more */
static atomic_int writers_stop;
static double offered_rate; /* transactions per second for all writers together; 0 = unthrottled */
static int64_t writers_t0;
static long writers_target;

typedef struct {
    int idx;
    uint64_t rng;
    char (*rolled_back)[37];
    size_t n_rb, cap_rb;
    long errors;
} writer_t;

/* SQL text with every '@' replaced by the quoted schema.  Rotating buffers of this thread's own:
 * the writers call it concurrently (shared buffers once garbled a writer's statement). */
static const char *q(const char *fmt) {
    static _Thread_local char bufs[4][1024];
    static _Thread_local int i;
    char *b = bufs[i++ % 4];
    size_t n = 0;
    for (const char *f = fmt; *f && n < 1000; f++) {
        if (*f == '@')
            n += (size_t)snprintf(b + n, 1024 - n, "\"%s\"", schema);
        else
            b[n++] = *f;
    }
    b[n] = '\0';
    return b;
}

static void reconnect(PGconn **c) {
    int64_t deadline = tk_now_ms() + 120000;
    while (PQstatus(*c) != CONNECTION_OK) {
        ck_assert_msg(tk_now_ms() < deadline, "PostgreSQL did not come back within 120 s: %s",
                      PQerrorMessage(*c));
        tk_sleep_ms(100);
        PQreset(*c);
    }
}

/* Runs sql on the scenario's connection, re-connecting and retrying while PostgreSQL restarts;
 * fails the test on any other error. */
static PGresult *mon_exec(const char *sql, int n, const char *const *params) {
    for (int attempt = 0;; attempt++) {
        PGresult *r = PQexecParams(mon, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
            return r;
        if (PQstatus(mon) != CONNECTION_OK && attempt < 20) {
            PQclear(r);
            reconnect(&mon);
            continue;
        }
        ck_abort_msg("%s: %s", sql, PQresultErrorMessage(r));
    }
}

static long long mon_scalar(const char *sql, int n, const char *const *params) {
    for (int attempt = 0;; attempt++) {
        PGresult *r = mon_exec(sql, n, params);
        if (PQntuples(r) == 1) {
            long long v = PQgetisnull(r, 0, 0) ? 0 : atoll(PQgetvalue(r, 0, 0));
            PQclear(r);
            return v;
        }
        /* Seen once right after a restart: a result without rows.  Never read it as 0. */
        ck_assert_msg(attempt < 50, "%s: %d rows (%s)", sql, PQntuples(r), PQresStatus(PQresultStatus(r)));
        PQclear(r);
        tk_sleep_ms(100);
    }
}

/* ---- wal mode: the slot ---------------------------------------------------------------------- */

/* `outbox-relay -X outbox.mode=wal migrate`: the publication and the slot, after the schema's own
 * migration, directly (not through the relays' proxy). */
static void wal_migrate(void) {
    char *relay = tk_build_path("outbox-relay");
    char s_conn[1300], s_schema[128];
    snprintf(s_conn, sizeof(s_conn), "pg.conninfo=%s", conninfo);
    snprintf(s_schema, sizeof(s_schema), "outbox.schema=%s", schema);
    const char *argv[] = {relay, "-X", s_conn, "-X", s_schema, "-X", "outbox.mode=wal", "migrate", NULL};
    int timed_out;
    tk_proc_t *p = tk_proc_run("wal-migrate", argv, 60000, &timed_out);
    ck_assert_msg(!timed_out && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0, "wal migrate failed (%s): %s %s",
                  tk_status_str(p->status), tk_file_tail(p->out_path, 2000), tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    free(relay);
}

/* Drops the slot and the publication: they outlive the schema, and a slot left behind retains WAL
 * for everything run later in the cluster.  A walsender that has not yet noticed its relay is gone
 * holds the slot: it is terminated after a few tries. */
static void wal_drop(void) {
    const char *p[] = {slot_name};
    for (int i = 0; i < 100; i++) {
        if (PQstatus(mon) != CONNECTION_OK)
            reconnect(&mon);
        PGresult *r = PQexecParams(mon, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                                   " WHERE slot_name = $1", 1, NULL, p, NULL, NULL, 0);
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        if (ok)
            break;
        if (i >= 20)
            PQclear(PQexecParams(mon, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                                 " WHERE slot_name = $1 AND active_pid IS NOT NULL", 1, NULL, p, NULL, NULL, 0));
        tk_sleep_ms(100);
    }
    char sql[160];
    snprintf(sql, sizeof(sql), "DROP PUBLICATION IF EXISTS \"%s\"", slot_name);
    PQclear(mon_exec(sql, 0, NULL));
    ck_assert_int_eq(mon_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", 1, p), 0);
}

/* The server's WAL write position now, as text. */
static void wal_now(char out[32]) {
    PGresult *r = mon_exec("SELECT pg_current_wal_lsn()::text", 0, NULL);
    snprintf(out, 32, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* Bytes of WAL between the slot's confirmed position and lsn (0 once the slot confirmed lsn). */
static long long wal_short_of(const char *lsn) {
    const char *p[] = {lsn, slot_name};
    return mon_scalar("SELECT greatest(coalesce(pg_wal_lsn_diff($1::pg_lsn, confirmed_flush_lsn),"
                      " pg_wal_lsn_diff($1::pg_lsn, '0/0')), 0)::bigint FROM pg_replication_slots WHERE slot_name = $2",
                      2, p);
}

/* ---- writers --------------------------------------------------------------------------------- */

static int exec_ok(PGconn *c, const char *sql) {
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

/* One transaction: lock the aggregate's row (this serialises writers of one key, so the outbox id
 * order of a key is its commit order), write the domain row and the message, then commit or roll
 * back.  The domain table `orders` is the truth about what committed, also when a COMMIT's answer
 * is lost to a restart. */
static void write_one(writer_t *w, PGconn *c, outbox_t *ob) {
    int k = rnd(&w->rng, 1, KEYS);
    int rollback = rnd(&w->rng, 1, 100) <= ROLLBACK_PERCENT;
    int hold_ms = rnd(&w->rng, 1, 1000) <= LONG_TX_PERMILLE ? rnd(&w->rng, LONG_TX_MIN_MS, LONG_TX_MAX_MS) : 0;
    char kbuf[16], seqbuf[16], payload[64], keybuf[16];
    snprintf(kbuf, sizeof(kbuf), "%d", k);
    snprintf(keybuf, sizeof(keybuf), "k%d", k);
    if (!exec_ok(c, "BEGIN"))
        goto failed;
    const char *p1[] = {kbuf};
    PGresult *r = PQexecParams(c, q("UPDATE @.agg SET seq = seq + 1 WHERE k = $1 RETURNING seq"), 1, NULL, p1,
                               NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        PQclear(r);
        goto failed;
    }
    snprintf(seqbuf, sizeof(seqbuf), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    snprintf(payload, sizeof(payload), "ok k=%d s=%s", k, seqbuf);
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, TOPIC, "faults.OrderPlaced");
    ck_assert_ptr_nonnull(m);
    outbox_message_set_key(m, keybuf, strlen(keybuf));
    outbox_message_set_payload(m, payload, strlen(payload));
    char id[37];
    snprintf(id, sizeof(id), "%s", outbox_message_id(m));
    outbox_err_t err = outbox_send(ob, c, m);
    outbox_message_destroy(m);
    if (err)
        goto failed;
    const char *p2[] = {id, kbuf, seqbuf};
    /* The row's outbox id too, so that a lost message can be traced in the relays' debug logs.  A
     * wal writer has no row: the WAL insert position just after its message stands in (it grows
     * with a key's commit order too, since the aggregate's lock is held). */
    r = PQexecParams(c,
                     wal_mode ? q("INSERT INTO @.orders (message_id, k, seq, outbox_id) VALUES ($1, $2, $3,"
                                  " (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint)")
                              : q("INSERT INTO @.orders (message_id, k, seq, outbox_id) VALUES ($1, $2, $3,"
                                  " currval(pg_get_serial_sequence('@.messages', 'id')))"),
                     3, NULL, p2, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok)
        goto failed;
    if (hold_ms) {
        atomic_fetch_add(&long_txs, 1);
        tk_sleep_ms(hold_ms); /* an outbox writer left open, as a slow request would */
    }
    if (rollback) {
        if (!exec_ok(c, "ROLLBACK"))
            goto failed;
        if (w->n_rb == w->cap_rb) {
            w->cap_rb = w->cap_rb ? w->cap_rb * 2 : 1024;
            w->rolled_back = realloc(w->rolled_back, w->cap_rb * sizeof(*w->rolled_back));
        }
        memcpy(w->rolled_back[w->n_rb++], id, 37);
        return;
    }
    if (exec_ok(c, "COMMIT")) {
        atomic_fetch_add(&committed, 1);
        return;
    }
failed:
    /* A restart, a terminated session or a lock wait cut short: the orders table tells later
     * whether an interrupted COMMIT took effect. */
    w->errors++;
    if (PQstatus(c) != CONNECTION_OK)
        return;
    PQclear(PQexec(c, "ROLLBACK"));
}

static void *writer_main(void *arg) {
    writer_t *w = arg;
    PGconn *c = PQconnectdb(conninfo);
    outbox_conf_t *conf = outbox_conf_new();
    char errstr[256];
    outbox_conf_set(conf, "outbox.schema", schema, errstr, sizeof(errstr));
    if (wal_mode)
        outbox_conf_set(conf, "outbox.mode", "wal", errstr, sizeof(errstr));
    outbox_t *ob = outbox_new(conf, errstr, sizeof(errstr));
    ck_assert_msg(ob != NULL, "outbox_new: %s", errstr);
    while (!atomic_load(&writers_stop) && atomic_load(&committed) < writers_target) {
        if (PQstatus(c) != CONNECTION_OK) {
            tk_sleep_ms(100);
            PQreset(c);
            continue;
        }
        long slot = atomic_fetch_add(&issued, 1);
        if (offered_rate > 0) {
            int64_t due = writers_t0 + (int64_t)((double)slot * 1000.0 / offered_rate);
            int64_t now = tk_now_ms();
            if (due > now)
                tk_sleep_ms((int)(due - now));
        }
        write_one(w, c, ob);
    }
    outbox_destroy(ob);
    PQfinish(c);
    return NULL;
}

static void run_writers(writer_t *ws, long target, double rate, pthread_t *threads) {
    writers_target = atomic_load(&committed) + target;
    offered_rate = rate;
    atomic_store(&issued, 0);
    atomic_store(&writers_stop, 0);
    writers_t0 = tk_now_ms();
    for (int i = 0; i < WRITERS; i++)
        ck_assert_int_eq(pthread_create(&threads[i], NULL, writer_main, &ws[i]), 0);
}

static void join_writers(pthread_t *threads) {
    for (int i = 0; i < WRITERS; i++)
        pthread_join(threads[i], NULL);
}

/* ---- processes ------------------------------------------------------------------------------- */

static const char *const relay_names[2] = {"relay-a", "relay-b"};

static void start_relay(int i) {
    char *relay = tk_build_path("outbox-relay");
    char s_conn[1300], s_schema[128], s_boot[1100], s_app[64];
    snprintf(s_conn, sizeof(s_conn), "pg.conninfo=%s", relay_conninfo);
    snprintf(s_schema, sizeof(s_schema), "outbox.schema=%s", schema);
    snprintf(s_boot, sizeof(s_boot), "kafka.bootstrap.servers=%s", broker->bootstrap);
    snprintf(s_app, sizeof(s_app), "relay.application.name=%s", relay_names[i]);
    const char *argv[32] = {relay, "-X", s_conn, "-X", s_schema, "-X", s_boot, "-X", s_app,
                            "-X", "relay.statement.timeout.ms=" STR(STMT_TIMEOUT_MS),
                            "-X", "kafka.socket.timeout.ms=" STR(ACK_TIMEOUT_MS),
                            "-X", "relay.lock.retry.ms=200", "-X", "relay.reconnect.backoff.max.ms=1000",
                            "-X", "relay.shutdown.timeout.ms=5000", "-X", "log.level=7"};
    size_t n = 0;
    while (argv[n])
        n++;
    if (wal_mode) {
        argv[n++] = "-X";
        argv[n++] = "outbox.mode=wal";
    }
    if (pg_timeout_arg) {
        argv[n++] = "-X";
        argv[n++] = pg_timeout_arg;
    }
    argv[n++] = "run";
    argv[n] = NULL;
    tk_proc_free(relays[i]);
    relays[i] = tk_proc_start(relay_names[i], argv);
    free(relay);
}

static void start_consumer(void) {
    char *prog = tk_build_path("test-consumer");
    const char *argv[] = {prog, "--bootstrap", broker->bootstrap, "--conninfo", conninfo, "--schema", schema,
                          "--group", "faults", "--topic", TOPIC, "--effects", "effects", "--no-sleep",
                          "--log-level", "4", "--fault-file", consumer_fault_path, NULL};
    tk_proc_free(consumer);
    consumer = tk_proc_start("consumer", argv);
    free(prog);
}

/* A relay or the consumer that died on its own is a failure (a crash, a sanitizer report, an
 * exit on an error it should have survived): count it, show why, and start it again. */
static void check_procs(void) {
    tn_proxy_check(pgproxy);
    for (int i = 0; i < 3; i++) {
        tk_proc_t *p = i < 2 ? relays[i] : consumer;
        if (tk_proc_running(p))
            continue;
        unexpected_exits++;
        printf("UNEXPECTED EXIT of %s (%s); the end of its stderr:\n%s\n", i < 2 ? relay_names[i] : "consumer",
               tk_status_str(p->status), tk_file_tail(p->err_path, 3000));
        if (i < 2)
            start_relay(i);
        else
            start_consumer();
    }
}

/* Which relay holds the leader lock (index), or -1 while none does. */
static int leader(void) {
    PGresult *r = mon_exec("SELECT split_part(a.application_name, ' ', 1) FROM pg_locks l"
                           " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                           " AND split_part(a.application_name, ' ', 1) IN ('relay-a', 'relay-b')",
                           0, NULL);
    int who = -1;
    if (PQntuples(r) == 1)
        who = strcmp(PQgetvalue(r, 0, 0), "relay-a") == 0 ? 0 : 1;
    PQclear(r);
    return who;
}

static void pgctl(const char *how) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s restart -m %s >/dev/null 2>&1", getenv("OUTBOX_TEST_PGCTL"), how);
    ck_assert_msg(system(cmd) == 0, "pg_ctl restart -m %s failed", how);
    PQreset(mon);
    reconnect(&mon);
}

static void broker_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void broker_cmd(const char *fmt, ...) {
    char cmd[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    tk_broker_cmd(broker, cmd);
}

static int park_inject(PGconn *c, int kind, int k);
static int relay_log_count(const char *needle);

/* Poison written with plain SQL (park_inject): one of each kind, at keys drawn with the fault. */
static void inject_poison(fault_t *f) {
    int ok = 0;
    for (int kind = 0; kind < 3; kind++)
        ok += park_inject(mon, kind, 1 + (f->arg + kind * 331) % KEYS);
    snprintf(f->detail, sizeof(f->detail), "%d %s: bad topic at k%d, oversize at k%d, oversize keyless", ok,
             wal_mode ? "logical messages" : "rows", 1 + f->arg % KEYS, 1 + (f->arg + 331) % KEYS);
}

static const char *const retriable_errs[] = {"NOT_ENOUGH_REPLICAS", "REQUEST_TIMED_OUT",
                                             "NOT_LEADER_FOR_PARTITION", "_TRANSPORT"};

/* Applies a fault; returns after its hold time, with the fault cleared. */
/* Tells test-consumer's handler how to behave ("" = normally). */
static void consumer_fault(const char *word) {
    FILE *f = fopen(consumer_fault_path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", consumer_fault_path);
    fprintf(f, "%s\n", word);
    fclose(f);
}

/* How long a consumer fault waits for the consumer to handle messages: a SIGKILLed consumer's
 * successor gets its partitions only once the dead member's session timed out (45 s). */
#define CONSUMER_WAIT_MS 60000
static long consumer_faults_missed; /* mid-batch faults that found no batch to hit */
static long consumer_faults_run;    /* mid-batch faults run */

/* Slows the consumer's handler and waits until it handles a message, i.e. until a batch's
 * transaction is open with work in it: the moment for a mid-batch fault.  Returns whether it came
 * within CONSUMER_WAIT_MS. */
static int wait_mid_batch(void) {
    int before = tk_file_count(consumer->out_path, "slow ");
    consumer_fault("slow");
    int64_t deadline = tk_now_ms() + CONSUMER_WAIT_MS;
    while (tk_now_ms() < deadline) {
        if (tk_file_count(consumer->out_path, "slow ") > before)
            return 1;
        tk_sleep_ms(5);
    }
    return 0;
}

static void run_fault(fault_t *f) {
    PGconn *locker = NULL;
    f->start_wall = wall_ms();
    switch (f->type) {
    case F_ALL_DOWN:
        broker_cmd("down all");
        tk_sleep_ms(f->hold_ms);
        broker_cmd("up all");
        break;
    case F_BROKER_DOWN_LEADER_MOVED: {
        int b = 1 + f->arg % BROKERS;
        broker_cmd("down %d", b);
        for (int p = 0; p < PARTITIONS; p++)
            broker_cmd("leader %s %d %d", TOPIC, p, 1 + (b + p % (BROKERS - 1)) % BROKERS);
        snprintf(f->detail, sizeof(f->detail), "broker %d", b);
        tk_sleep_ms(f->hold_ms);
        broker_cmd("up %d", b);
        break;
    }
    case F_RETRIABLE_ERRORS: {
        const char *e = retriable_errs[f->arg % 4];
        int n = 3 + f->arg % 17;
        broker_cmd("produce-errors %d %s", n, e);
        snprintf(f->detail, sizeof(f->detail), "%d x %s", n, e);
        tk_sleep_ms(f->hold_ms);
        broker_cmd("clear");
        break;
    }
    case F_TRANSPORT: {
        int b = 1 + f->arg % BROKERS;
        broker_cmd("down %d", b);
        snprintf(f->detail, sizeof(f->detail), "broker %d connections dropped", b);
        tk_sleep_ms(f->hold_ms);
        broker_cmd("up %d", b);
        break;
    }
    case F_LOST_ACK:
        /* Each broker answers its next Produce request after the relay's ack timeout: the records
         * are appended, the relay never hears so and sends them again. */
        for (int b = 1; b <= BROKERS; b++)
            broker_cmd("broker-errors %d Produce NO_ERROR %d 1", b, ACK_TIMEOUT_MS + 1500);
        tk_sleep_ms(f->hold_ms);
        /* Evidence that the relay really gave up on a response (librdkafka logs REQTMOUT). */
        snprintf(f->detail, sizeof(f->detail), "ack delayed %d ms > %d ms timeout; relay logged %d timeouts",
                 ACK_TIMEOUT_MS + 1500, ACK_TIMEOUT_MS,
                 tk_file_count(relays[0]->err_path, "REQTMOUT") + tk_file_count(relays[1]->err_path, "REQTMOUT"));
        break;
    case F_NON_RETRIABLE:
        broker_cmd("produce-errors 1 TOPIC_AUTHORIZATION_FAILED");
        snprintf(f->detail, sizeof(f->detail), "1 x TOPIC_AUTHORIZATION_FAILED");
        tk_sleep_ms(f->hold_ms);
        broker_cmd("clear");
        break;
    case F_SLOW_BROKER: {
        int b = 1 + f->arg % BROKERS, ms = 100 + (f->arg % 5) * 100;
        broker_cmd("rtt %d %d", b, ms);
        snprintf(f->detail, sizeof(f->detail), "broker %d +%d ms", b, ms);
        tk_sleep_ms(f->hold_ms);
        broker_cmd("rtt %d 0", b);
        break;
    }
    case F_RELAYS_KILLED:
        for (int i = 0; i < 2; i++)
            tk_proc_signal(relays[i], SIGKILL);
        tk_sleep_ms(f->hold_ms);
        start_relay(0);
        start_relay(1);
        break;
    case F_LEADER_KILLED:
    case F_LEADER_TERMINATED: {
        int who = leader();
        if (who < 0)
            who = 0;
        int sig = f->type == F_LEADER_KILLED ? SIGKILL : SIGTERM;
        tk_proc_signal(relays[who], sig);
        if (sig == SIGTERM) {
            int exited = tk_proc_wait(relays[who], 15000);
            snprintf(f->detail, sizeof(f->detail), "%s, %s", relay_names[who],
                     exited ? tk_status_str(relays[who]->status) : "still running after 15 s");
        } else {
            snprintf(f->detail, sizeof(f->detail), "%s", relay_names[who]);
        }
        tk_sleep_ms(f->hold_ms);
        start_relay(who);
        break;
    }
    case F_PG_FAST_RESTART:
        pgctl("fast");
        break;
    case F_PG_IMMEDIATE_RESTART:
        pgctl("immediate");
        break;
    case F_BACKEND_TERMINATED: {
        /* In wal mode the leader's walsender ("relay-a wal") is one of them. */
        PGresult *r = mon_exec("SELECT count(pg_terminate_backend(pid)), count(*) FILTER (WHERE backend_type = 'walsender')"
                               " FROM pg_stat_activity"
                               " WHERE split_part(application_name, ' ', 1) IN ('relay-a', 'relay-b')",
                               0, NULL);
        if (wal_mode)
            snprintf(f->detail, sizeof(f->detail), "%s sessions (%s walsenders)", PQgetvalue(r, 0, 0),
                     PQgetvalue(r, 0, 1));
        else
            snprintf(f->detail, sizeof(f->detail), "%s sessions", PQgetvalue(r, 0, 0));
        PQclear(r);
        break;
    }
    case F_WALSENDER_TERMINATED: {
        /* The stream may be between starts (a restart from the slot): wait for it a little. */
        long long n = 0;
        for (int64_t until = tk_now_ms() + 10000; !n && tk_now_ms() < until; tk_sleep_ms(n ? 0 : 100))
            n = mon_scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'walsender'"
                           " AND split_part(application_name, ' ', 1) IN ('relay-a', 'relay-b')",
                           0, NULL);
        snprintf(f->detail, sizeof(f->detail), "%lld walsenders, the leader's session kept", n);
        break;
    }
    case F_STATEMENT_TIMEOUT:
        /* The relays' statements wait on this lock until their statement_timeout cancels them. */
        locker = PQconnectdb(conninfo);
        ck_assert_int_eq(exec_ok(locker, "BEGIN"), 1);
        ck_assert_int_eq(exec_ok(locker, q("LOCK TABLE @.messages IN ACCESS EXCLUSIVE MODE")), 1);
        snprintf(f->detail, sizeof(f->detail), "outbox locked %d ms > %d ms timeout", f->hold_ms, STMT_TIMEOUT_MS);
        int timeouts = relay_log_count("statement timeout");
        tk_sleep_ms(f->hold_ms);
        exec_ok(locker, "ROLLBACK");
        PQfinish(locker);
        if (wal_mode) /* only the table re-check meets the lock: say whether one did */
            snprintf(f->detail, sizeof(f->detail), "outbox table locked %d ms; %d relay statements timed out",
                     f->hold_ms, relay_log_count("statement timeout") - timeouts);
        break;
    case F_POISON:
        inject_poison(f);
        break;
    case F_CONSUMER_KILLED:
        tk_proc_signal(consumer, SIGKILL);
        tk_sleep_ms(f->hold_ms);
        start_consumer();
        break;
    case F_PG_PARTITION: {
        /* Silent both ways, nothing closed (a hung pooler): the relays must notice on their own and
         * work again once it heals; the leader's session, and so its lock, lives on meanwhile. */
        int conns = tn_proxy_freeze(pgproxy);
        tk_sleep_ms(f->hold_ms);
        tn_proxy_thaw(pgproxy);
        snprintf(f->detail, sizeof(f->detail), "%d relay connections silenced%s", conns,
                 pg_timeout_arg ? "" : " (relay without pg.timeout.ms)");
        break;
    }
    case F_CONSUMER_KILLED_MID_BATCH: {
        int mid = wait_mid_batch();
        tk_proc_signal(consumer, SIGKILL);
        consumer_fault("");
        consumer_faults_missed += !mid;
        consumer_faults_run++;
        snprintf(f->detail, sizeof(f->detail), "%s", mid ? "in a batch's handler" : "no batch within 60 s");
        tk_sleep_ms(f->hold_ms);
        start_consumer();
        break;
    }
    case F_PG_RESTART_MID_BATCH: {
        int mid = wait_mid_batch();
        pgctl(f->arg % 2 ? "fast" : "immediate");
        consumer_fault("");
        consumer_faults_missed += !mid;
        consumer_faults_run++;
        snprintf(f->detail, sizeof(f->detail), "%s, %s", f->arg % 2 ? "fast" : "immediate",
                 mid ? "in a batch's handler" : "no batch within 60 s");
        break;
    }
    case F_RETRY_MID_BATCH:
    case F_REJECT_MID_BATCH: {
        const char *word = f->type == F_RETRY_MID_BATCH ? "retry" : "reject";
        const char *line = f->type == F_RETRY_MID_BATCH ? "retrying " : "rejecting ";
        int before = tk_file_count(consumer->out_path, line);
        consumer_fault(word);
        /* At least hold_ms, and until a few messages were hit (the consumer may be rejoining). */
        int64_t t0 = tk_now_ms();
        while (tk_now_ms() - t0 < f->hold_ms ||
               (tk_file_count(consumer->out_path, line) - before < 3 && tk_now_ms() - t0 < CONSUMER_WAIT_MS))
            tk_sleep_ms(50);
        consumer_fault("");
        int hit = tk_file_count(consumer->out_path, line) - before;
        consumer_faults_missed += hit == 0;
        consumer_faults_run++;
        snprintf(f->detail, sizeof(f->detail), "%d messages %s by the handler", hit,
                 f->type == F_RETRY_MID_BATCH ? "retried" : "rejected");
        break;
    }
    case F__CNT:
        break;
    }
    f->end_wall = wall_ms();
}

/* Milliseconds until no row written before now is left in the outbox, or -1 after limit_ms.  In
 * wal mode also until the slot confirmed the WAL written before now (the relay confirms a position
 * once Kafka acknowledged every message before it). */
static long long wait_recovered(int limit_ms) {
    int64_t t0 = tk_now_ms();
    char maxid[32], lsn[32] = "";
    snprintf(maxid, sizeof(maxid), "%lld", mon_scalar(q("SELECT max(id) FROM @.messages"), 0, NULL));
    if (wal_mode)
        wal_now(lsn);
    const char *p[] = {maxid};
    while (mon_scalar(q("SELECT count(*) FROM (SELECT 1 FROM @.messages WHERE id <= $1 LIMIT 1) s"), 1, p) ||
           (wal_mode && wal_short_of(lsn) > 0)) {
        if (tk_now_ms() - t0 > limit_ms)
            return -1;
        tk_sleep_ms(20);
    }
    return tk_now_ms() - t0;
}

/* ---- the check ------------------------------------------------------------------------------- */

/* An open-addressing set of message ids, each with a small value. */
typedef struct {
    char (*keys)[37];
    int *vals;
    size_t cap, n;
} idmap_t;

static size_t idhash(const char *s) {
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void idmap_init(idmap_t *m, size_t expected) {
    m->cap = 16;
    while (m->cap < expected * 2)
        m->cap *= 2;
    m->keys = calloc(m->cap, sizeof(*m->keys));
    m->vals = calloc(m->cap, sizeof(*m->vals));
    m->n = 0;
    ck_assert(m->keys && m->vals);
}

/* The slot of id (an empty slot if absent). */
static size_t idmap_slot(const idmap_t *m, const char *id) {
    size_t i = idhash(id) & (m->cap - 1);
    while (m->keys[i][0] && strcmp(m->keys[i], id) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int *idmap_get(const idmap_t *m, const char *id) {
    size_t i = idmap_slot(m, id);
    return m->keys[i][0] ? &m->vals[i] : NULL;
}

static int *idmap_put(idmap_t *m, const char *id, int val) {
    ck_assert_uint_lt(m->n * 2, m->cap);
    size_t i = idmap_slot(m, id);
    if (!m->keys[i][0]) {
        snprintf(m->keys[i], 37, "%s", id);
        m->vals[i] = val;
        m->n++;
    }
    return &m->vals[i];
}

static void idmap_free(idmap_t *m) {
    free(m->keys);
    free(m->vals);
}

/* For a lost message: every acknowledgement the relays logged for its outbox row (they log one line
 * per delivered row at log.level 7), and what the topic holds at that partition and offset.  An
 * acknowledged offset holding another message, or no record, puts the loss on the broker's side. */
static void trace_lost(long long outbox_id, const tk_record_t *recs, size_t n_recs) {
    char pattern[1024], needle[64];
    snprintf(pattern, sizeof(pattern), "%s/*relay-*.err", getenv("OUTBOX_TEST_DIR"));
    snprintf(needle, sizeof(needle), "msg=delivered id=%lld ", outbox_id);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0)
        return;
    int acks = 0;
    for (size_t f = 0; f < g.gl_pathc; f++) {
        char *text = tk_read_file(g.gl_pathv[f]);
        for (char *at = strstr(text, needle); at; at = strstr(at + 1, needle)) {
            int part = -1;
            long long off = -1;
            sscanf(at + strlen(needle), "partition=%d offset=%lld", &part, &off);
            const char *there = "no record at that offset";
            for (size_t i = 0; i < n_recs; i++)
                if (recs[i].partition == part && recs[i].offset == off) {
                    const char *id = tk_record_header(&recs[i], "id");
                    there = id ? id : "a record without an id header";
                    break;
                }
            printf("  acknowledged to %s: partition %d offset %lld; the topic holds there: %s\n",
                   strrchr(g.gl_pathv[f], '.') ? g.gl_pathv[f] : "", part, off, there);
            acks++;
        }
        free(text);
    }
    if (!acks)
        printf("  no relay logged an acknowledgement for it\n");
    globfree(&g);
}

/* For a message lost in wal mode: the WAL positions, and how often the relays' logs name it (their
 * delivery lines name it by message id; their ids are the relays' own sequence numbers). */
static void trace_lost_wal(const char *message_id, long long wal_pos) {
    char pos[32], needle[64];
    snprintf(pos, sizeof(pos), "%lld", wal_pos);
    const char *p[] = {pos, slot_name};
    PGresult *r = mon_exec("SELECT ('0/0'::pg_lsn + $1::numeric)::text, confirmed_flush_lsn::text, restart_lsn::text"
                           " FROM pg_replication_slots WHERE slot_name = $2", 2, p);
    if (PQntuples(r) == 1)
        printf("  WAL insert position after its message %s; the slot's confirmed_flush_lsn %s, restart_lsn %s\n",
               PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
    PQclear(r);
    snprintf(needle, sizeof(needle), "message_id=%s", message_id);
    printf("  relay log lines naming it (acknowledgements, dead letters): %d\n", relay_log_count(needle));
}

/* How often needle occurs in all the relays' logs of this run (restarted relays included). */
static int relay_log_count(const char *needle) {
    char pattern[1024];
    snprintf(pattern, sizeof(pattern), "%s/*relay-*.err", getenv("OUTBOX_TEST_DIR"));
    glob_t g;
    int n = 0;
    if (glob(pattern, 0, NULL, &g) != 0)
        return 0;
    for (size_t f = 0; f < g.gl_pathc; f++)
        n += tk_file_count(g.gl_pathv[f], needle);
    globfree(&g);
    return n;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static long long pct(long long *v, size_t n, double p) {
    if (!n)
        return -1;
    qsort(v, n, sizeof(*v), cmp_ll);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

/* ---- parking: poison at random keys, an operator's CLI, the release ------------------------- */

/* Under relay.poison.policy = park-key (the default) a keyed row that fails permanently parks its
 * key: it and every later row of the key wait in parked_messages until an operator retries or
 * drops them (`outbox-relay parked`).  An operator thread injects poison at random keys during the
 * load and works the parked keys through the CLI while the faults run; at the end every key still
 * parked is released, and the checker (park_check_*) proves per-key order for every key and that
 * nothing is missing that was not dropped on purpose.  What was injected and dropped lives in two
 * tables of the scenario's schema, @.poison and @.dropped, so the checker can join them.  They are
 * joined to the relay's tables by message id: in wal mode a held message's id comes from the
 * outbox identity when it is held, while @.poison and @.orders know it by its WAL position. */

typedef enum {
    PK_DEST,    /* keyed, destination Kafka refuses: curable (the operator fixes the destination) */
    PK_SIZE,    /* keyed, envelope over the broker's limit: incurable, only a drop releases it */
    PK_KEYLESS, /* no key, over the limit: straight to dead_letters, as before */
    PK__CNT
} poison_kind_t;

static const char *const poison_kind_names[PK__CNT] = {"dest", "size", "keyless"};
#define BAD_TOPIC "faults bad/topic!"
#define POISON_BIG 1500000 /* bytes of payload: over the mock broker's message size limit */
#define PARK_POISON_PERCENT 40 /* of the operator's actions: inject a poison row, else work a parked key */

typedef struct {
    char hex[64];     /* the key */
    char t0[64];      /* the database's clock_timestamp() just before the request */
    int first_only;
} park_drop_t;

static struct {
    pthread_t thread;
    atomic_int stop;
    uint64_t rng;
    PGconn *c; /* the operator's own connection (the scenario's `mon` belongs to the main thread) */
    char *zeros; /* an oversize payload */
    long fixes, retries, drops_first, drops_key, cli_runs, cli_failed, cli_usage, actions;
    park_drop_t *drops;
    size_t n_drops, cap_drops;
    int cli_seq;
} park;

/* park_q with binary parameters where fmts says so. */
static PGresult *park_qb(const char *sql, int n, const char *const *params, const int *lens, const int *fmts) {
    if (PQstatus(park.c) != CONNECTION_OK)
        PQreset(park.c);
    PGresult *r = PQexecParams(park.c, sql, n, NULL, params, lens, fmts, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    PQclear(r);
    if (PQstatus(park.c) != CONNECTION_OK)
        PQreset(park.c);
    return NULL;
}

static PGresult *park_q(const char *sql, int n, const char *const *params) {
    return park_qb(sql, n, params, NULL, NULL);
}

static void park_setup(uint64_t *rng) {
    park.rng = splitmix(rng);
    park.c = PQconnectdb(conninfo);
    ck_assert_int_eq(PQstatus(park.c), CONNECTION_OK);
    PQclear(mon_exec(q("CREATE TABLE @.poison (id bigint PRIMARY KEY, message_id uuid NOT NULL, k int, kind text"
                       " NOT NULL, parked_seen bool NOT NULL DEFAULT false, fixed bool NOT NULL DEFAULT false)"),
                     0, NULL));
    PQclear(mon_exec(q("CREATE TABLE @.dropped (id bigint PRIMARY KEY, message_id uuid, partition_key bytea,"
                       " requested_at timestamptz NOT NULL, first_only bool NOT NULL)"), 0, NULL));
    park.zeros = calloc(1, POISON_BIG);
    ck_assert_ptr_nonnull(park.zeros);
}

/* Rewrites an encoded envelope's destination, as a buggy writer could (outbox_message_new refuses
 * an invalid topic, so a bad destination can only be written by hand). */
static void envelope_set_destination(void **env, size_t *len, const char *dest) {
    Outbox__V1__Envelope *e = outbox__v1__envelope__unpack(NULL, *len, *env);
    ck_assert_ptr_nonnull(e);
    char *was = e->destination;
    e->destination = (char *)dest;
    size_t n = outbox__v1__envelope__get_packed_size(e);
    uint8_t *buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(outbox__v1__envelope__pack(e, buf), n);
    e->destination = was;
    outbox__v1__envelope__free_unpacked(e, NULL);
    free(*env);
    *env = buf;
    *len = n;
}

/* Writes one poison row with plain SQL, as a buggy or hostile writer could, at key k (a writer's
 * key, under its aggregate's lock, so that its id falls in the key's commit order); recorded in
 * @.poison in the same transaction.  0 when a fault interrupted it (then neither row exists). */
static int park_inject(PGconn *c, int kind, int k) {
    char kbuf[16], keybuf[16];
    snprintf(kbuf, sizeof(kbuf), "%d", k);
    snprintf(keybuf, sizeof(keybuf), "k%d", k);
    /* Its own message id in the envelope and the row (the consumer dedups by the envelope's), and
     * a payload the consumer applies once a fixed one is published. */
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, TOPIC, "faults.Poison");
    ck_assert_ptr_nonnull(m);
    /* A wal relay reads destination and key from the envelope alone (there is no row). */
    if (wal_mode && kind != PK_KEYLESS)
        outbox_message_set_key(m, keybuf, strlen(keybuf));
    if (kind == PK_DEST)
        outbox_message_set_payload(m, "ok poison", 9);
    else
        outbox_message_set_payload(m, park.zeros, POISON_BIG);
    void *env;
    size_t env_len;
    ck_assert_int_eq(outbox_message_encode(m, &env, &env_len), 0);
    if (wal_mode && kind == PK_DEST)
        envelope_set_destination(&env, &env_len, BAD_TOPIC);
    const char *params[] = {kind == PK_DEST ? BAD_TOPIC : TOPIC, kind == PK_KEYLESS ? NULL : keybuf, env,
                            kind == PK_KEYLESS ? NULL : kbuf, poison_kind_names[kind], outbox_message_id(m)};
    int lens[] = {0, 0, (int)env_len, 0, 0, 0}, fmts[] = {0, 0, 1, 0, 0, 0};
    int ok = exec_ok(c, "BEGIN");
    if (ok && kind != PK_KEYLESS) {
        const char *p1[] = {kbuf};
        PGresult *r = PQexecParams(c, q("SELECT seq FROM @.agg WHERE k = $1 FOR UPDATE"), 1, NULL, p1, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
    }
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "outbox:%s", schema);
    /* Every parameter used ($2, the key, is in the envelope): an unused one has no type. */
    const char *wparams[] = {prefix, env, kind == PK_KEYLESS ? NULL : kbuf, poison_kind_names[kind],
                             outbox_message_id(m)};
    int wlens[] = {0, (int)env_len, 0, 0, 0}, wfmts[] = {0, 1, 0, 0, 0};
    /* In wal mode the message is emitted with the outbox's prefix, as a buggy writer could; its id
     * in @.poison is -(its LSN): abs(id) orders it among its key's messages as @.orders' WAL
     * positions do, and a keyless one's dead letter is recorded under that id too. */
    PGresult *r = !ok ? NULL
                  : wal_mode
                      ? PQexecParams(c,
                                     q("WITH m AS (SELECT pg_logical_emit_message(true, $1::text, $2::bytea) AS lsn)"
                                       " INSERT INTO @.poison (id, message_id, k, kind)"
                                       " SELECT -(lsn - '0/0'::pg_lsn)::bigint, $5::uuid, $3::int, $4 FROM m"),
                                     5, NULL, wparams, wlens, wfmts, 0)
                      : PQexecParams(c,
                               q("WITH m AS (INSERT INTO @.messages (message_id, destination, partition_key,"
                                 " message_type, envelope) VALUES ($6::uuid, $1, convert_to($2, 'UTF8'),"
                                 " 'faults.Poison', $3) RETURNING id, message_id)"
                                 " INSERT INTO @.poison (id, message_id, k, kind) SELECT id, message_id, $4::int, $5"
                                 " FROM m"),
                               6, NULL, params, lens, fmts, 0);
    ok = ok && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    free(env);
    outbox_message_destroy(m);
    if (!ok || !exec_ok(c, "COMMIT"))
        goto failed;
    return 1;
failed:
    /* An interrupted COMMIT may still have taken effect: @.poison says, and the checker reads it. */
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    else
        PQreset(c);
    return 0;
}

/* Runs `outbox-relay parked VERB KEYFLAG KEY [--first-only]` against the running relays (directly,
 * not through the relays' proxy: an operator's session is not partitioned with theirs); returns its
 * exit code, or -1 when it had to be killed. */
static int park_cli(const char *verb, const char *keyflag, const char *key, int first_only) {
    char *relay = tk_build_path("outbox-relay");
    char s_conn[1300], s_schema[128], tag[32];
    snprintf(s_conn, sizeof(s_conn), "pg.conninfo=%s connect_timeout=%d", conninfo, CONNECT_TIMEOUT_S);
    snprintf(s_schema, sizeof(s_schema), "outbox.schema=%s", schema);
    snprintf(tag, sizeof(tag), "parked-cli-%d", ++park.cli_seq);
    const char *argv[16] = {relay, "-X", s_conn, "-X", s_schema};
    size_t n = 5;
    if (wal_mode) { /* as in the relays' configuration */
        argv[n++] = "-X";
        argv[n++] = "outbox.mode=wal";
    }
    argv[n++] = "parked";
    argv[n++] = verb;
    argv[n++] = keyflag;
    argv[n++] = key;
    argv[n++] = first_only ? "--first-only" : NULL;
    argv[n] = NULL;
    int timed_out;
    tk_proc_t *p = tk_proc_run(tag, argv, 30000, &timed_out);
    int rc = timed_out || !WIFEXITED(p->status) ? -1 : WEXITSTATUS(p->status);
    park.cli_runs++;
    if (rc == 2) {
        park.cli_usage++;
        printf("parked %s %s %s: usage error: %s\n", verb, keyflag, key, tk_file_tail(p->err_path, 500));
    } else if (rc != 0) {
        /* Faults make this happen (the leader busy past 10 s, PostgreSQL restarting): a recorded
         * request stays and is carried out later; the end releases whatever is still parked. */
        park.cli_failed++;
    }
    tk_proc_free(p);
    free(relay);
    return rc;
}

/* Records poison rows seen held, so that the checker can tell each keyed poison did park. */
static void park_mark_seen(void) {
    PGresult *r = park_q(q("UPDATE @.poison p SET parked_seen = true FROM @.parked_messages m"
                           " WHERE m.message_id = p.message_id AND NOT p.parked_seen"), 0, NULL);
    PQclear(r);
}

/* The operator's fix for a curable poison row: a valid destination on the held row.  In wal mode
 * on its envelope too, which names the bad one (the relay read it from there, and consumers refuse
 * an envelope whose destination is no topic name). */
static int park_fix(const char *first_id) {
    const char *p[] = {first_id, TOPIC, NULL};
    int lens[] = {0, 0, 0}, fmts[] = {0, 0, 1};
    void *env = NULL;
    if (wal_mode) {
        PGresult *e = park_q(q("SELECT envelope FROM @.parked_messages WHERE id = $1"), 1, p);
        if (!e || PQntuples(e) != 1) {
            PQclear(e);
            return 0;
        }
        size_t len;
        unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(e, 0, 0), &len);
        PQclear(e);
        ck_assert_ptr_nonnull(raw);
        env = malloc(len);
        ck_assert_ptr_nonnull(env);
        memcpy(env, raw, len);
        PQfreemem(raw);
        envelope_set_destination(&env, &len, TOPIC);
        p[2] = env;
        lens[2] = (int)len;
    }
    PGresult *r = wal_mode ? park_qb(q("UPDATE @.parked_messages SET destination = $2, envelope = $3 WHERE id = $1"
                                       " RETURNING message_id"), 3, p, lens, fmts)
                           : park_q(q("UPDATE @.parked_messages SET destination = $2 WHERE id = $1"
                                      " RETURNING message_id"), 2, p);
    free(env);
    int fixed = r && PQntuples(r) == 1;
    if (fixed) {
        const char *m[] = {PQgetvalue(r, 0, 0)};
        PQclear(park_q(q("UPDATE @.poison SET fixed = true WHERE message_id = $1"), 1, m));
        park.fixes++;
    }
    PQclear(r);
    return fixed;
}

/* Drops a key's held rows (or its first one) and notes when, for park_record_drops. */
static void park_drop(const char *keyflag, const char *key, const char *hex, int first_only) {
    PGresult *r = park_q("SELECT clock_timestamp()::text", 0, NULL);
    if (!r)
        return;
    if (park.n_drops == park.cap_drops) {
        park.cap_drops = park.cap_drops ? park.cap_drops * 2 : 64;
        park.drops = realloc(park.drops, park.cap_drops * sizeof(*park.drops));
    }
    park_drop_t *d = &park.drops[park.n_drops++];
    snprintf(d->hex, sizeof(d->hex), "%s", hex);
    snprintf(d->t0, sizeof(d->t0), "%s", PQgetvalue(r, 0, 0));
    d->first_only = first_only;
    PQclear(r);
    /* Exit 1 (the leader did not act within 10 s) leaves the request recorded: it may still be
     * carried out, so the drop stays noted either way. */
    if (park_cli("drop", keyflag, key, first_only) == 0)
        *(first_only ? &park.drops_first : &park.drops_key) += 1;
}

static void park_retry(const char *keyflag, const char *key) {
    if (park_cli("retry", keyflag, key, 0) == 0)
        park.retries++;
}

/* The parked keys with their first row's poison kind ("" for a writer's row). */
static PGresult *park_list(void) {
    return park_q(q("SELECT encode(k.partition_key, 'hex'), convert_from(k.partition_key, 'UTF8'), k.first_id,"
                    " coalesce(p.kind, '') FROM @.parked_keys k LEFT JOIN @.poison p ON p.id = k.first_id"
                    " OR p.message_id = (SELECT m.message_id FROM @.parked_messages m WHERE m.id = k.first_id)"
                    " ORDER BY 1"), 0, NULL);
}

/* One random operator action: inject a poison row, or retry (fixed or not) or drop a parked key. */
static void park_act(void) {
    park.actions++;
    park_mark_seen();
    if (rnd(&park.rng, 1, 100) <= PARK_POISON_PERCENT) {
        int d = rnd(&park.rng, 1, 100);
        park_inject(park.c, d <= 45 ? PK_DEST : d <= 80 ? PK_SIZE : PK_KEYLESS, rnd(&park.rng, 1, KEYS));
        return;
    }
    PGresult *r = park_list();
    /* A key that parked after the first look and is released below would otherwise never be
     * seen held: its rows are in parked_messages now (they move with the key, in one statement). */
    park_mark_seen();
    if (!r || PQntuples(r) == 0) {
        PQclear(r);
        return;
    }
    int i = rnd(&park.rng, 0, PQntuples(r) - 1), a = rnd(&park.rng, 1, 100);
    const char *hex = PQgetvalue(r, i, 0), *key = PQgetvalue(r, i, 1), *kind = PQgetvalue(r, i, 3);
    if (!strcmp(kind, "dest") ? a <= 50 : 0) {
        park_fix(PQgetvalue(r, i, 2));
        park_retry("--key", key);
    } else if (!strcmp(kind, "size") ? a <= 40 : a <= 15) {
        park_retry("--key", key); /* parks again: the poison is still there */
    } else if (a <= 80) {
        park_drop("--key", key, hex, 1);
    } else {
        park_drop("--key", key, hex, 0);
    }
    PQclear(r);
}

static void *park_operator_main(void *arg) {
    (void)arg;
    while (!atomic_load(&park.stop)) {
        tk_sleep_ms(rnd(&park.rng, 200, 1200));
        park_act();
    }
    return NULL;
}

static void park_operator_start(void) {
    atomic_store(&park.stop, 0);
    ck_assert_int_eq(pthread_create(&park.thread, NULL, park_operator_main, NULL), 0);
}

static void park_operator_stop(void) {
    atomic_store(&park.stop, 1);
    pthread_join(park.thread, NULL);
}

/* At the end: every key still parked is released (a curable first row fixed and retried, an
 * incurable one dropped alone, anything else retried) until nothing is parked or left to publish.
 * In wal mode also not before the slot confirmed last_lsn (the WAL after the last commit): a
 * message is held before its position is confirmed, so no poison still in the stream parks a key
 * after this returns. */
static void park_release_all(const char *last_lsn) {
    int64_t deadline = tk_now_ms() + 300000;
    for (int round = 0;; round++) {
        park_mark_seen();
        PGresult *r = park_list();
        PGresult *left = park_q(q("SELECT count(*) FROM @.messages"), 0, NULL);
        int n = r ? PQntuples(r) : -1;
        long long rows = left ? atoll(PQgetvalue(left, 0, 0)) : -1;
        PQclear(left);
        long long unread = wal_mode ? wal_short_of(last_lsn) : 0; /* may still park a key */
        if (n == 0 && rows == 0 && unread == 0) {
            PQclear(r);
            printf("parking: every key released after %d rounds\n", round);
            return;
        }
        ck_assert_msg(tk_now_ms() < deadline,
                      "parked keys (%d), outbox rows (%lld) or unconfirmed WAL (%lld bytes) left after 300 s of releasing",
                      n, rows, unread);
        for (int i = 0; i < n; i++) {
            const char *hex = PQgetvalue(r, i, 0), *kind = PQgetvalue(r, i, 3);
            if (!strcmp(kind, "size")) {
                park_drop("--key-hex", hex, hex, 1);
            } else {
                if (!strcmp(kind, "dest"))
                    park_fix(PQgetvalue(r, i, 2));
                park_retry("--key-hex", hex);
            }
        }
        PQclear(r);
        tk_sleep_ms(500);
    }
}

/* What each drop moved to dead_letters: the rows of its key dead-lettered since its request. */
static void park_record_drops(void) {
    for (size_t i = 0; i < park.n_drops; i++) {
        const char *p[] = {park.drops[i].hex, park.drops[i].t0, park.drops[i].first_only ? "true" : "false"};
        PQclear(mon_exec(q("INSERT INTO @.dropped (id, message_id, partition_key, requested_at, first_only)"
                           " SELECT id, message_id, partition_key, $2::timestamptz, $3::bool FROM @.dead_letters"
                           " WHERE partition_key = decode($1, 'hex') AND failed_at >= $2::timestamptz"
                           " ON CONFLICT (id) DO NOTHING"),
                         3, p));
    }
}

/* ---- parking: the check ---------------------------------------------------------------------- */

/* Every committed message and every keyed poison row, by message id: its key and outbox id (the
 * key's commit order), whether it is poison, whether it was dropped on purpose and when. */
typedef struct {
    idmap_t ids;
    int *k;
    long long *oid;
    signed char *kind; /* -1: a writer's message */
    char *fixed, *dropped, *seen;
    int64_t *drop_ms;
    long long *last_oid; /* per key: the highest outbox id among first appearances so far */
    long n;
    long order_violations, poison_on_topic, poison_published_unfixed, dropped_published_before,
        dropped_published_after;
} park_check_t;

static void park_check_load(park_check_t *pc) {
    /* A wal message held again after a drop could be dropped twice: its first drop counts. */
    PGresult *r = mon_exec(q("WITH d AS (SELECT message_id, min(requested_at) AS requested_at FROM @.dropped"
                             " GROUP BY message_id)"
                             " SELECT o.message_id, o.k, o.outbox_id, -1, false, d.message_id IS NOT NULL,"
                             " coalesce((extract(epoch FROM d.requested_at) * 1000)::bigint, 0) FROM @.orders o"
                             " LEFT JOIN d ON d.message_id = o.message_id"
                             " UNION ALL SELECT p.message_id, coalesce(p.k, 0), abs(p.id),"
                             " CASE p.kind WHEN 'dest' THEN 0 WHEN 'size' THEN 1 ELSE 2 END, p.fixed,"
                             " d.message_id IS NOT NULL,"
                             " coalesce((extract(epoch FROM d.requested_at) * 1000)::bigint, 0) FROM @.poison p"
                             " LEFT JOIN d ON d.message_id = p.message_id"),
                           0, NULL);
    memset(pc, 0, sizeof(*pc));
    pc->n = PQntuples(r);
    idmap_init(&pc->ids, (size_t)pc->n + 1);
    pc->k = calloc((size_t)pc->n + 1, sizeof(*pc->k));
    pc->oid = calloc((size_t)pc->n + 1, sizeof(*pc->oid));
    pc->kind = calloc((size_t)pc->n + 1, 1);
    pc->fixed = calloc((size_t)pc->n + 1, 1);
    pc->dropped = calloc((size_t)pc->n + 1, 1);
    pc->seen = calloc((size_t)pc->n + 1, 1);
    pc->drop_ms = calloc((size_t)pc->n + 1, sizeof(*pc->drop_ms));
    pc->last_oid = calloc(KEYS + 1, sizeof(*pc->last_oid));
    for (long i = 0; i < pc->n; i++) {
        idmap_put(&pc->ids, PQgetvalue(r, (int)i, 0), (int)i);
        pc->k[i] = atoi(PQgetvalue(r, (int)i, 1));
        pc->oid[i] = atoll(PQgetvalue(r, (int)i, 2));
        pc->kind[i] = (signed char)atoi(PQgetvalue(r, (int)i, 3));
        pc->fixed[i] = *PQgetvalue(r, (int)i, 4) == 't';
        pc->dropped[i] = *PQgetvalue(r, (int)i, 5) == 't';
        pc->drop_ms[i] = atoll(PQgetvalue(r, (int)i, 6));
    }
    PQclear(r);
}

/* When a relay first logged the broker's acknowledgement of outbox row id (its log line's ts), in
 * ms since the epoch; 0 when none did (a relay killed before it heard, or one that never sent).
 * In wal mode by message id: a delivery line's id is the relay's sequence number for a stream
 * message, which may equal a released row's id. */
static int64_t park_ack_ms(long long outbox_id, const char *message_id) {
    char pattern[1024], needle[96];
    snprintf(pattern, sizeof(pattern), "%s/*relay-*.err", getenv("OUTBOX_TEST_DIR"));
    if (wal_mode)
        snprintf(needle, sizeof(needle), " message_id=%s\n", message_id);
    else
        snprintf(needle, sizeof(needle), " msg=delivered id=%lld ", outbox_id);
    glob_t g;
    int64_t first = 0;
    if (glob(pattern, 0, NULL, &g) != 0)
        return 0;
    for (size_t f = 0; f < g.gl_pathc; f++) {
        char *text = tk_read_file(g.gl_pathv[f]);
        for (char *at = strstr(text, needle); at; at = strstr(at + 1, needle)) {
            char *line = at;
            while (line > text && line[-1] != '\n')
                line--;
            if (wal_mode && !memmem(line, (size_t)(at - line), " msg=delivered ", 15))
                continue; /* a dead letter's line */
            struct tm tm = {0};
            int ms = 0;
            if (sscanf(line, "ts=%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                       &tm.tm_min, &tm.tm_sec, &ms) != 7)
                continue;
            tm.tm_year -= 1900;
            tm.tm_mon -= 1;
            int64_t t = (int64_t)timegm(&tm) * 1000 + ms;
            if (!first || t < first)
                first = t;
        }
        free(text);
    }
    globfree(&g);
    return first;
}

/* A record's first appearance on the topic: per-key order by outbox id, poison and writers' rows
 * alike (a released key's held rows after what its key published before the park, before what
 * was written later), and no dropped row published after its drop.  Returns 1 for poison. */
static int park_check_record(park_check_t *pc, const char *id, const tk_record_t *rec) {
    int *at = idmap_get(&pc->ids, id);
    if (!at)
        return 0;
    long i = *at;
    pc->seen[i] = 1;
    if (pc->kind[i] >= 0) {
        pc->poison_on_topic++;
        if (pc->kind[i] != PK_DEST || !pc->fixed[i]) {
            printf("poison published without a fix: outbox id %lld (%s)\n", pc->oid[i],
                   poison_kind_names[pc->kind[i]]);
            pc->poison_published_unfixed++;
        }
    }
    if (pc->dropped[i]) {
        /* Both published and dropped.  Acknowledged (by the relays' logs) before the drop was
         * requested, or never acknowledged to a relay (one killed with the row in flight): the
         * row was written, its relay did not settle it, and it stayed to be held and dropped:
         * at-least-once, the drop raced the publish.  Acknowledged only after the request: a
         * relay produced a row being dropped, a violation. */
        int64_t ack = park_ack_ms(pc->oid[i], id);
        int after = ack && ack >= pc->drop_ms[i];
        if (ack)
            printf("dropped on purpose and on the topic: outbox id %lld key k%d partition %d offset %lld, acknowledged"
                   " %lld ms %s the drop's request\n", pc->oid[i], pc->k[i], rec->partition, (long long)rec->offset,
                   (long long)llabs(pc->drop_ms[i] - ack), after ? "after" : "before");
        else
            printf("dropped on purpose and on the topic: outbox id %lld key k%d partition %d offset %lld, no relay"
                   " logged its acknowledgement (killed in flight)\n", pc->oid[i], pc->k[i], rec->partition,
                   (long long)rec->offset);
        *(after ? &pc->dropped_published_after : &pc->dropped_published_before) += 1;
    }
    int k = pc->k[i];
    if (k > 0 && k <= KEYS) {
        if (pc->oid[i] < pc->last_oid[k]) {
            if (pc->order_violations < 5)
                printf("order violation (outbox ids): key k%d id %lld%s after id %lld (partition %d offset %lld)\n",
                       k, pc->oid[i], pc->kind[i] >= 0 ? " (poison)" : "", pc->last_oid[k], rec->partition,
                       (long long)rec->offset);
            pc->order_violations++;
        } else {
            pc->last_oid[k] = pc->oid[i];
        }
    }
    return pc->kind[i] >= 0;
}

/* Whether message id was dropped on purpose (so its absence from the topic is no loss). */
static int park_check_dropped(const park_check_t *pc, const char *id) {
    int *at = idmap_get(&pc->ids, id);
    return at && pc->dropped[*at];
}

static void park_check_free(park_check_t *pc) {
    idmap_free(&pc->ids);
    free(pc->k);
    free(pc->oid);
    free(pc->kind);
    free(pc->fixed);
    free(pc->dropped);
    free(pc->seen);
    free(pc->drop_ms);
    free(pc->last_oid);
}

/* The parking rows of the result table, from the tables and the topic pass. */
typedef struct {
    long long keyed, keyless, parked_seen, fixed, keyless_dead, dead_unexplained, dropped, dropped_committed,
        parked_left, poison_lost;
} park_report_t;

static void park_check_finish(const park_check_t *pc, park_report_t *pr) {
    memset(pr, 0, sizeof(*pr));
    pr->keyed = mon_scalar(q("SELECT count(*) FROM @.poison WHERE k IS NOT NULL"), 0, NULL);
    pr->keyless = mon_scalar(q("SELECT count(*) FROM @.poison WHERE k IS NULL"), 0, NULL);
    pr->parked_seen = mon_scalar(q("SELECT count(*) FROM @.poison WHERE k IS NOT NULL AND parked_seen"), 0, NULL);
    pr->fixed = mon_scalar(q("SELECT count(*) FROM @.poison WHERE fixed"), 0, NULL);
    /* By message id: a wal dead letter's id is -(its LSN), or the id it was held under. */
    pr->keyless_dead = mon_scalar(q("SELECT count(*) FROM @.poison p WHERE p.k IS NULL AND EXISTS (SELECT 1 FROM"
                                    " @.dead_letters d WHERE d.message_id = p.message_id)"), 0, NULL);
    pr->dead_unexplained =
        mon_scalar(q("SELECT count(*) FROM @.dead_letters d WHERE NOT EXISTS (SELECT 1 FROM @.dropped x"
                     " WHERE x.id = d.id) AND NOT EXISTS (SELECT 1 FROM @.poison p WHERE p.message_id = d.message_id"
                     " AND p.k IS NULL)"),
                   0, NULL);
    pr->dropped = mon_scalar(q("SELECT count(*) FROM @.dropped"), 0, NULL);
    pr->dropped_committed = mon_scalar(q("SELECT count(*) FROM @.dropped d JOIN @.orders o"
                                         " ON o.message_id = d.message_id"), 0, NULL);
    pr->parked_left = mon_scalar(q("SELECT (SELECT count(*) FROM @.parked_keys) + (SELECT count(*) FROM"
                                   " @.parked_messages)"), 0, NULL);
    for (long i = 0; i < pc->n; i++)
        if (pc->kind[i] == PK_DEST || pc->kind[i] == PK_SIZE)
            pr->poison_lost += !pc->seen[i] && !pc->dropped[i];
}

/* The rows that broke the contract, "label=value; ...": the run's last line repeats them, since a
 * CI log may keep only its tail. */
static char violated[1024];

static void note_violation(const char *label, long long value) {
    size_t n = strlen(violated);
    if (n < sizeof(violated) - 1)
        snprintf(violated + n, sizeof(violated) - n, "%s%s=%lld", n ? "; " : "", label, value);
}

static long park_check_rows(const park_check_t *pc, const park_report_t *pr) {
    long violations = 0;
#define PROW(label, value, bad)                                                                              \
    do {                                                                                                     \
        printf("  %-46s %10lld%s\n", label, (long long)(value), (bad) ? "   <-- VIOLATION" : "");         \
        if (bad)                                                                                             \
            note_violation(label, (long long)(value));                                                       \
        violations += (bad) ? 1 : 0;                                                                         \
    } while (0)
    PROW(wal_mode ? "poison emitted at writers' keys (logical msgs)" : "poison injected at writers' keys", pr->keyed, 0);
    PROW("  of which parked their key (seen held)", pr->parked_seen, pr->parked_seen != pr->keyed);
    PROW("  fixed by the operator (destination)", pr->fixed, 0);
    PROW("  published (after a fix)", pc->poison_on_topic, 0);
    PROW("  published without a fix", pc->poison_published_unfixed, pc->poison_published_unfixed != 0);
    PROW("  neither published nor dropped", pr->poison_lost, pr->poison_lost != 0);
    PROW(wal_mode ? "keyless poison emitted" : "keyless poison injected", pr->keyless, 0);
    PROW("  in dead_letters", pr->keyless_dead, pr->keyless_dead != pr->keyless);
    PROW("operator actions (CLI runs)", park.cli_runs, 0);
    PROW("  parked retry done", park.retries, 0);
    PROW("  parked drop --first-only done", park.drops_first, 0);
    PROW("  parked drop (whole key) done", park.drops_key, 0);
    PROW("  failed (exit 1: leader busy, PG restarting)", park.cli_failed, 0);
    PROW("  usage errors (exit 2)", park.cli_usage, park.cli_usage != 0);
    PROW("rows dropped on purpose", pr->dropped, 0);
    PROW("  of which committed messages", pr->dropped_committed, 0);
    PROW("  on the topic, acked before the drop or never", pc->dropped_published_before, 0);
    PROW("  on the topic, acked after the drop", pc->dropped_published_after, pc->dropped_published_after != 0);
    PROW("dead_letters rows not dropped on purpose", pr->dead_unexplained, pr->dead_unexplained != 0);
    PROW("rows left parked (keys + messages)", pr->parked_left, pr->parked_left != 0);
    PROW(wal_mode ? "per-key order violations (WAL positions, poison)" : "per-key order violations (outbox ids, poison)",
         pc->order_violations, pc->order_violations != 0);
#undef PROW
    return violations;
}

static void park_check_json(FILE *json, const park_check_t *pc, const park_report_t *pr) {
    fprintf(json,
            "\"poison\":{\"injected_keyed\":%lld,\"injected_keyless\":%lld,\"parked\":%lld,\"fixed\":%lld,"
            "\"published\":%ld,\"keyless_dead_lettered\":%lld,\"retried\":%ld,\"dropped_first\":%ld,"
            "\"dropped_key\":%ld,\"cli_runs\":%ld,\"cli_failed\":%ld,\"rows_dropped\":%lld,"
            "\"committed_dropped\":%lld,\"dropped_published_before\":%ld,\"dropped_published_after\":%ld,"
            "\"dead_unexplained\":%lld,\"parked_left\":%lld,\"order_violations\":%ld},",
            pr->keyed, pr->keyless, pr->parked_seen, pr->fixed, pc->poison_on_topic, pr->keyless_dead, park.retries,
            park.drops_first, park.drops_key, park.cli_runs, park.cli_failed, pr->dropped, pr->dropped_committed,
            pc->dropped_published_before, pc->dropped_published_after, pr->dead_unexplained, pr->parked_left,
            pc->order_violations);
}

/* How many distinct messages the consumer must have applied at least: the committed ones not
 * dropped, and the poison published after a fix. */
static long long park_effects_expected(long n_orders) {
    return n_orders -
           mon_scalar(q("SELECT count(DISTINCT o.message_id) FROM @.dropped d JOIN @.orders o"
                        " ON o.message_id = d.message_id"), 0, NULL) +
           mon_scalar(q("SELECT count(*) FROM @.poison p WHERE p.fixed AND NOT EXISTS (SELECT 1 FROM @.dropped d"
                        " WHERE d.message_id = p.message_id)"), 0, NULL);
}

static void park_free(void) {
    PQfinish(park.c);
    free(park.zeros);
    free(park.drops);
}

START_TEST(test_fault_scenario) {
    conninfo = getenv("OUTBOX_TEST_PG");
    const char *s = getenv("OUTBOX_FAULT_SEED");
    ck_assert_msg(conninfo && s, "run through tests/faults/run.sh (OUTBOX_TEST_PG and OUTBOX_FAULT_SEED)");
    seed = strtoull(s, NULL, 10);
    mode_name = getenv("OUTBOX_FAULT_MODE") && *getenv("OUTBOX_FAULT_MODE") ? getenv("OUTBOX_FAULT_MODE") : "table";
    ck_assert_msg(!strcmp(mode_name, "table") || !strcmp(mode_name, "wal"),
                  "OUTBOX_FAULT_MODE (make check-faults MODE=): table or wal, not \"%s\"", mode_name);
    wal_mode = !strcmp(mode_name, "wal");
    target_messages = getenv("OUTBOX_FAULT_MESSAGES") ? atol(getenv("OUTBOX_FAULT_MESSAGES")) : 100000;
    int applicable = 0;
    for (int t = 0; t < F__CNT; t++)
        applicable += fault_applies((fault_type_t)t, wal_mode);
    fault_count = getenv("OUTBOX_FAULT_COUNT") ? atoi(getenv("OUTBOX_FAULT_COUNT")) : applicable + 3;
    long backlog = target_messages / 5 < BACKLOG ? target_messages / 5 : BACKLOG;
    uint64_t rng = seed;
    snprintf(schema, sizeof(schema), "faults_%llu", (unsigned long long)seed);
    snprintf(slot_name, sizeof(slot_name), "outbox_%s", schema); /* as the relay derives it: schema is [a-z0-9_] */
    printf("seed %llu, mode %s: %ld messages over %d keys from %d writers, %d faults, %d brokers x %d partitions\n",
           (unsigned long long)seed, mode_name, target_messages, KEYS, WRITERS, fault_count, BROKERS, PARTITIONS);
    if (wal_mode)
        printf("wal mode: writers emit logical messages, relays stream slot %s; every table-mode fault type applies"
               " (statement timeout: the outbox table stays locked %d ms longer, across the relay's table"
               " re-check), plus \"%s\"; poison is emitted as logical messages with the outbox's prefix and parks"
               " its key as in table mode (held messages get ids from the outbox identity)\n",
               slot_name, WAL_TABLE_CHECK_MS, fault_types[F_WALSENDER_TERMINATED].name);

    /* The schedule first, so that it depends on the seed (and the mode) alone: every fault type
     * once, then random ones, in a seeded order. */
    fault_type_t types[F__CNT];
    int ntypes = 0;
    for (const char *t = getenv("OUTBOX_FAULT_TYPES"); t && *t && ntypes < F__CNT; t += strcspn(t, ","), t += !!*t) {
        int v = atoi(t);
        ck_assert_msg(v >= 0 && v < F__CNT, "OUTBOX_FAULT_TYPES: %d is not a fault type 0..%d", v, F__CNT - 1);
        ck_assert_msg(fault_applies((fault_type_t)v, wal_mode), "OUTBOX_FAULT_TYPES: %d (%s) does not apply in %s mode",
                      v, fault_types[v].name, mode_name);
        types[ntypes++] = (fault_type_t)v;
    }
    for (int t = 0; !getenv("OUTBOX_FAULT_TYPES") && t < F__CNT; t++)
        if (fault_applies((fault_type_t)t, wal_mode))
            types[ntypes++] = (fault_type_t)t;
    fault_t *faults = calloc((size_t)fault_count, sizeof(*faults));
    for (int i = 0; i < fault_count; i++) {
        faults[i].type = i < ntypes ? types[i] : types[rnd(&rng, 0, ntypes - 1)];
        faults[i].hold_ms = rnd(&rng, fault_types[faults[i].type].hold_min_ms, fault_types[faults[i].type].hold_max_ms);
        if (wal_mode && faults[i].type == F_STATEMENT_TIMEOUT)
            faults[i].hold_ms += WAL_TABLE_CHECK_MS;
        faults[i].gap_ms = rnd(&rng, 300, 1500);
        faults[i].arg = rnd(&rng, 0, 1 << 20);
    }
    for (int i = fault_count - 1; i > 0; i--) {
        int j = rnd(&rng, 0, i);
        fault_t t = faults[i];
        faults[i] = faults[j];
        faults[j] = t;
    }
    int64_t planned_ms = 0;
    for (int i = 0; i < fault_count; i++)
        planned_ms += faults[i].hold_ms + faults[i].gap_ms + 1500; /* ~1.5 s to recover and restart */

    /* Schema, domain tables, broker, the relays' way to PostgreSQL. */
    pgproxy = tn_proxy_start("pg-proxy");
    snprintf(relay_conninfo, sizeof(relay_conninfo), "%s connect_timeout=%d", pgproxy->conninfo, CONNECT_TIMEOUT_S);
    static char pg_timeout_buf[64];
    snprintf(pg_timeout_buf, sizeof(pg_timeout_buf), "pg.timeout.ms=%d", PG_TIMEOUT_MS);
    pg_timeout_arg = tn_relay_has_key("pg.timeout.ms") ? pg_timeout_buf : NULL;
    if (!pg_timeout_arg)
        printf("note: outbox-relay does not know pg.timeout.ms: relays run with their defaults\n");
    mon = PQconnectdb(conninfo);
    ck_assert_int_eq(PQstatus(mon), CONNECTION_OK);
    PQclear(mon_exec(q("DROP SCHEMA IF EXISTS @ CASCADE"), 0, NULL));
    if (wal_mode)
        wal_drop(); /* a slot from an earlier run of this seed would hold its messages */
    {
        outbox_conf_t *conf = outbox_conf_new();
        char errstr[256];
        outbox_conf_set(conf, "outbox.schema", schema, errstr, sizeof(errstr));
        outbox_t *ob = outbox_new(conf, errstr, sizeof(errstr));
        ck_assert_int_eq(outbox_migrate(ob, mon), 0);
        outbox_destroy(ob);
    }
    if (wal_mode)
        wal_migrate(); /* the slot exists before the first message is emitted */
    PQclear(mon_exec(q("CREATE TABLE @.agg (k int PRIMARY KEY, seq int NOT NULL DEFAULT 0)"), 0, NULL));
    PQclear(mon_exec(q("INSERT INTO @.agg (k) SELECT generate_series(1, " STR(KEYS) ")"), 0, NULL));
    PQclear(mon_exec(q("CREATE TABLE @.orders (message_id uuid PRIMARY KEY, k int NOT NULL, seq int NOT NULL,"
                       " outbox_id bigint NOT NULL)"), 0, NULL));
    /* seq: the order the consumer applied the effects in, checked per key against commit order. */
    PQclear(mon_exec(q("CREATE TABLE @.effects (seq bigint GENERATED ALWAYS AS IDENTITY, message_id uuid NOT NULL,"
                       " payload text)"), 0, NULL));
    snprintf(consumer_fault_path, sizeof(consumer_fault_path), "%s/consumer-fault",
             getenv("OUTBOX_TEST_DIR") ? getenv("OUTBOX_TEST_DIR") : "/tmp");
    unlink(consumer_fault_path);
    const char *bargs[] = {"--brokers", STR(BROKERS), "--topic", TOPIC ":" STR(PARTITIONS), NULL};
    broker = tk_broker_start(bargs);

    writer_t ws[WRITERS];
    pthread_t threads[WRITERS];
    memset(ws, 0, sizeof(ws));
    for (int i = 0; i < WRITERS; i++) {
        ws[i].idx = i;
        ws[i].rng = splitmix(&rng);
    }
    park_setup(&rng);

    /* Phase 1, no faults: a backlog written before the relays start, drained by them. */
    run_writers(ws, backlog, 0, threads);
    join_writers(threads);
    int64_t t0 = tk_now_ms();
    start_relay(0);
    start_relay(1);
    start_consumer();
    long long clean_ms = wait_recovered(RECOVERY_LIMIT_MS);
    ck_assert_msg(clean_ms >= 0, "the fault-free backlog did not drain within %d s", RECOVERY_LIMIT_MS / 1000);
    double clean_rate = (double)atomic_load(&committed) * 1000.0 / (double)(tk_now_ms() - t0);
    printf("fault-free: %ld-message backlog drained in %lld ms (%.0f msg/s, relay start-up included)\n",
           atomic_load(&committed), (long long)(tk_now_ms() - t0), clean_rate);

    /* Phase 2: the rest of the messages at a steady rate while the faults run one after another. */
    long rest = target_messages - atomic_load(&committed);
    double rate = (double)rest * 1.0 / (1.0 - ROLLBACK_PERCENT / 100.0) * 1000.0 / (double)planned_ms;
    int64_t t1 = tk_now_ms();
    long committed_before = atomic_load(&committed);
    run_writers(ws, rest, rate, threads);
    park_operator_start();
    for (int i = 0; i < fault_count; i++) {
        fault_t *f = &faults[i];
        tk_sleep_ms(f->gap_ms);
        check_procs();
        run_fault(f);
        f->recovery_ms = wait_recovered(RECOVERY_LIMIT_MS);
        f->recovered_wall = f->recovery_ms >= 0 ? wall_ms() : 0;
        printf("fault %2d at %6.1f s: %-28s held %5d ms, recovered in %6lld ms  %s\n", i + 1,
               (double)(tk_now_ms() - t1) / 1000.0, fault_types[f->type].name, f->hold_ms, f->recovery_ms,
               f->detail);
        fflush(stdout);
    }
    join_writers(threads);
    printf("writer transactions held open %d-%d s after writing: %ld\n", LONG_TX_MIN_MS / 1000,
           LONG_TX_MAX_MS / 1000, atomic_load(&long_txs));
    park_operator_stop();
    /* wal mode: the WAL position after the last writer (and the last poison) committed; the slot
     * must confirm it (checked below, a row of the table). */
    char last_commit_lsn[32] = "";
    if (wal_mode)
        wal_now(last_commit_lsn);
    check_procs();
    park_release_all(last_commit_lsn);
    long long final_ms = wait_recovered(300000);
    /* In wal mode the slot's part of this is a row of the table rather than an abort. */
    ck_assert_msg(final_ms >= 0 || wal_mode, "the outbox did not drain within 300 s after the last fault");
    long long slot_short = 0;
    if (wal_mode) {
        int64_t until = tk_now_ms() + 60000;
        while ((slot_short = wal_short_of(last_commit_lsn)) > 0 && tk_now_ms() < until)
            tk_sleep_ms(200);
        const char *p[] = {slot_name};
        PGresult *r = mon_exec("SELECT confirmed_flush_lsn::text, restart_lsn::text, coalesce(wal_status, '')"
                               " FROM pg_replication_slots WHERE slot_name = $1", 1, p);
        printf("wal: last commit at %s; slot %s confirmed %s (restart_lsn %s, wal_status %s)\n", last_commit_lsn,
               slot_name, PQntuples(r) ? PQgetvalue(r, 0, 0) : "(no slot)", PQntuples(r) ? PQgetvalue(r, 0, 1) : "-",
               PQntuples(r) ? PQgetvalue(r, 0, 2) : "-");
        PQclear(r);
    }
    check_procs();
    double faulted_rate =
        (double)(atomic_load(&committed) - committed_before) * 1000.0 / (double)(tk_now_ms() - t1);

    /* The truth: what committed. */
    PGresult *orders = mon_exec(q("SELECT message_id, k, seq FROM @.orders"), 0, NULL);
    long n_orders = PQntuples(orders);
    idmap_t truth;
    idmap_init(&truth, (size_t)n_orders + 1);
    int *seq_of = calloc((size_t)n_orders + 1, sizeof(int)), *key_of = calloc((size_t)n_orders + 1, sizeof(int));
    for (long i = 0; i < n_orders; i++) {
        idmap_put(&truth, PQgetvalue(orders, (int)i, 0), (int)i);
        key_of[i] = atoi(PQgetvalue(orders, (int)i, 1));
        seq_of[i] = atoi(PQgetvalue(orders, (int)i, 2));
    }
    PQclear(orders);

    /* The consumer has applied every committed message's effect (but those dropped on purpose),
     * except those its handler rejected (F_REJECT_MID_BATCH), which are in consumer_dead_letters. */
    park_record_drops();
    long long effects_expected = park_effects_expected(n_orders);
    int64_t deadline = tk_now_ms() + 300000;
    const char *accounted = q("SELECT (SELECT count(DISTINCT message_id) FROM @.effects) + "
                              "(SELECT count(DISTINCT message_id) FROM @.consumer_dead_letters)");
    while (mon_scalar(accounted, 0, NULL) < effects_expected && tk_now_ms() < deadline)
        tk_sleep_ms(1000); /* the count costs the server a scan: don't ask often */
    long long effects_distinct = mon_scalar(q("SELECT count(DISTINCT message_id) FROM @.effects"), 0, NULL);
    long long consumer_rejected =
        mon_scalar(q("SELECT count(DISTINCT message_id) FROM @.consumer_dead_letters"), 0, NULL);
    long long rejected_with_effect =
        mon_scalar(q("SELECT count(*) FROM @.effects e WHERE EXISTS (SELECT 1 FROM @.consumer_dead_letters d"
                     " WHERE d.message_id = e.message_id::text)"), 0, NULL);
    /* Each key's effects in the order its messages committed (seq of the writer's aggregate). */
    long effect_order_violations = 0;
    {
        PGresult *er = mon_exec(q("SELECT payload FROM @.effects ORDER BY seq"), 0, NULL);
        int *last = calloc(KEYS + 1, sizeof(int));
        for (int i = 0; i < PQntuples(er); i++) {
            int k = 0, sq = 0;
            if (sscanf(PQgetvalue(er, i, 0), "ok k=%d s=%d", &k, &sq) != 2 || k < 1 || k > KEYS)
                continue;
            if (sq <= last[k]) {
                if (effect_order_violations < 5)
                    printf("consumer effect order violation: key k%d seq %d applied after seq %d\n", k, sq, last[k]);
                effect_order_violations++;
            }
            if (sq > last[k])
                last[k] = sq;
        }
        free(last);
        PQclear(er);
    }
    long long effects_twice = mon_scalar(
        q("SELECT count(*) FROM (SELECT message_id FROM @.effects GROUP BY message_id HAVING count(*) > 1) d"), 0,
        NULL);
    long long effects_foreign =
        mon_scalar(q("SELECT count(*) FROM @.effects e WHERE NOT EXISTS (SELECT 1 FROM @.orders o"
                     " WHERE o.message_id = e.message_id) AND NOT EXISTS (SELECT 1 FROM @.poison p"
                     " WHERE p.message_id = e.message_id)"),
                   0, NULL);
    long long rows_left = mon_scalar(q("SELECT count(*) FROM @.messages"), 0, NULL);
    PGresult *dl = mon_exec(q("SELECT id, destination, left(error, 120) FROM @.dead_letters ORDER BY id"), 0, NULL);
    for (int i = 0; i < PQntuples(dl); i++)
        printf("dead letter %s (%s): %s\n", PQgetvalue(dl, i, 0), PQgetvalue(dl, i, 1), PQgetvalue(dl, i, 2));
    PQclear(dl);

    /* The whole topic, read back. */
    for (int i = 0; i < 2; i++)
        tk_proc_signal(relays[i], SIGTERM);
    tk_proc_signal(consumer, SIGTERM);
    tk_consumer_t *reader = tk_consumer_new(broker->bootstrap, TOPIC);
    tk_consumer_poll(reader, (size_t)n_orders, tk_now_ms() + 120000);
    ck_assert_msg(tk_consumer_read_to_end(reader, TOPIC, tk_now_ms() + 60000), "could not read the topic to its end");
    size_t n_recs;
    const tk_record_t *recs = tk_consumer_records(reader, &n_recs);

    long lost = 0, foreign = 0, dups = 0, order_violations = 0, undecodable = 0;
    park_check_t pc;
    park_check_load(&pc);
    idmap_t seen;
    idmap_init(&seen, n_recs + 1);
    int *last_seq = calloc(KEYS + 1, sizeof(int));
    long dup_by_type[F__CNT + 1] = {0}, worst_by_type[F__CNT + 1] = {0};
    for (size_t i = 0; i < n_recs; i++) {
        const char *id = tk_record_header(&recs[i], "id");
        if (!id) {
            undecodable++;
            continue;
        }
        int *first = idmap_get(&seen, id);
        if (first) {
            dups++;
            int hit = -1;
            for (int f = 0; f < fault_count; f++) {
                int64_t end = faults[f].recovered_wall ? faults[f].recovered_wall : faults[f].end_wall;
                if (recs[i].timestamp_ms >= faults[f].start_wall && recs[i].timestamp_ms <= end + 1000) {
                    hit = f;
                    break;
                }
            }
            if (hit >= 0)
                faults[hit].dups++;
            dup_by_type[hit >= 0 ? faults[hit].type : F__CNT]++;
            continue;
        }
        idmap_put(&seen, id, 1);
        int poison = park_check_record(&pc, id, &recs[i]);
        int *row = idmap_get(&truth, id);
        if (!row) {
            foreign += !poison;
            continue;
        }
        int k = key_of[*row], sq = seq_of[*row];
        /* The payload must be what was written for this id, and a key's first appearances must come
         * in commit order (seq increasing). */
        outbox_message_t *m = NULL;
        char errstr[128], expect[64];
        snprintf(expect, sizeof(expect), "ok k=%d s=%d", k, sq);
        size_t plen;
        if (outbox_message_decode(&m, recs[i].value, recs[i].value_len, errstr, sizeof(errstr)) ||
            (plen = 0, outbox_message_payload(m, &plen), plen != strlen(expect)) ||
            memcmp(outbox_message_payload(m, &plen), expect, plen) != 0)
            undecodable++;
        outbox_message_destroy(m);
        if (sq <= last_seq[k]) {
            if (order_violations < 5)
                printf("order violation: key k%d seq %d after seq %d (partition %d offset %lld)\n", k, sq,
                       last_seq[k], recs[i].partition, (long long)recs[i].offset);
            order_violations++;
        }
        if (sq > last_seq[k])
            last_seq[k] = sq;
    }
    for (size_t i = 0; i < truth.cap; i++)
        if (truth.keys[i][0] && !idmap_get(&seen, truth.keys[i]) && !park_check_dropped(&pc, truth.keys[i])) {
            if (lost < 5) {
                const char *p[] = {truth.keys[i]};
                long long oid = mon_scalar(q("SELECT outbox_id FROM @.orders WHERE message_id = $1"), 1, p);
                printf("lost: %s outbox id %lld\n", truth.keys[i], oid);
                if (wal_mode)
                    trace_lost_wal(truth.keys[i], oid);
                else
                    trace_lost(oid, recs, n_recs);
            }
            lost++;
        }
    long rolled_back = 0, rolled_back_present = 0, rolled_back_committed = 0;
    for (int w = 0; w < WRITERS; w++) {
        for (size_t i = 0; i < ws[w].n_rb; i++) {
            rolled_back++;
            if (idmap_get(&seen, ws[w].rolled_back[i]))
                rolled_back_present++;
            if (idmap_get(&truth, ws[w].rolled_back[i]))
                rolled_back_committed++;
        }
        free(ws[w].rolled_back);
    }
    for (int f = 0; f < fault_count; f++)
        if (faults[f].dups > worst_by_type[faults[f].type])
            worst_by_type[faults[f].type] = faults[f].dups;

    long writer_errors = 0;
    for (int w = 0; w < WRITERS; w++)
        writer_errors += ws[w].errors;

    /* The table. */
    long violations = 0;
#define ROW(label, value, bad)                                                                               \
    do {                                                                                                     \
        printf("  %-46s %10lld%s\n", label, (long long)(value), (bad) ? "   <-- VIOLATION" : "");         \
        if (bad)                                                                                             \
            note_violation(label, (long long)(value));                                                       \
        violations += (bad) ? 1 : 0;                                                                         \
    } while (0)
    printf("\nseed %llu (mode %s) results\n", (unsigned long long)seed, mode_name);
    ROW("committed messages", n_orders, 0);
    ROW("committed messages lost", lost, lost != 0);
    ROW("rolled-back messages (deliberate)", rolled_back, 0);
    ROW("rolled-back messages present on the topic", rolled_back_present + foreign, rolled_back_present + foreign != 0);
    ROW("rolled-back messages found committed", rolled_back_committed, rolled_back_committed != 0);
    ROW("outbox rows left", rows_left, rows_left != 0);
    if (wal_mode)
        ROW("slot short of last commit's WAL (bytes)", slot_short, slot_short != 0);
    ROW("per-key order violations (first appearances)", order_violations, order_violations != 0);
    ROW("records not matching what was written", undecodable, undecodable != 0);
    park_report_t pr;
    park_check_finish(&pc, &pr);
    violations += park_check_rows(&pc, &pr);
    long long effects_due = (long long)(seen.n - (size_t)foreign);
    ROW("consumer effects applied", effects_distinct, effects_distinct != effects_due - consumer_rejected);
    ROW("messages rejected by the consumer's handler", consumer_rejected, 0);
    ROW("consumer effects lost (neither applied nor rejected)", effects_due - effects_distinct - consumer_rejected,
        effects_due - effects_distinct - consumer_rejected != 0);
    ROW("rejected messages whose effect stayed", rejected_with_effect, rejected_with_effect != 0);
    ROW("consumer effects applied twice", effects_twice, effects_twice != 0);
    ROW("consumer effects out of per-key order", effect_order_violations, effect_order_violations != 0);
    ROW("consumer effects of uncommitted messages", effects_foreign, effects_foreign != 0);
    ROW("records on the topic", (long long)n_recs, 0);
    ROW("duplicates on the topic", dups, 0);
    ROW("writer transactions interrupted by faults", writer_errors, 0);
    ROW("acks without an offset, re-sent by the relay", relay_log_count("acknowledged without an offset"), 0);
    int unrecovered = 0;
    for (int f = 0; f < fault_count; f++)
        unrecovered += faults[f].recovery_ms < 0;
    ROW("faults not recovered from within 120 s", unrecovered, unrecovered != 0);
    ROW("relay or consumer exits nobody asked for", unexpected_exits, unexpected_exits != 0);
    /* One that comes after the load has ended finds nothing to hit: only a run in which none hit
     * proved nothing about batches. */
    ROW("mid-batch consumer faults that found no batch", consumer_faults_missed,
        consumer_faults_run > 0 && consumer_faults_missed == consumer_faults_run);
    printf("  %-46s %10.0f msg/s\n", "drain without faults (backlog)", clean_rate);
    printf("  %-46s %10.0f msg/s (offered %.0f tx/s)\n", "delivered during the faulted phase", faulted_rate, rate);
    printf("\n  %-30s %5s %10s %10s %10s %10s\n", "fault type", "count", "dups", "worst", "rec p50", "rec p99");
    long long rec[64];
    FILE *json = getenv("OUTBOX_FAULT_JSON") ? fopen(getenv("OUTBOX_FAULT_JSON"), "a") : NULL;
    if (json)
        fprintf(json,
                "{\"seed\":%llu,\"mode\":\"%s\",\"slot_short_bytes\":%lld,\"committed\":%ld,\"lost\":%ld,\"rolled_back\":%ld,\"rolled_back_present\":%ld,"
                "\"rows_left\":%lld,\"order_violations\":%ld,\"effects_twice\":%lld,\"effects_applied\":%lld,\"records\":%zu,"
                "\"duplicates\":%ld,\"clean_msgs_per_s\":%.0f,\"faulted_msgs_per_s\":%.0f,\"violations\":%ld,",
                (unsigned long long)seed, mode_name, slot_short, n_orders, lost, rolled_back, rolled_back_present + foreign, rows_left,
                order_violations, effects_twice,
                effects_distinct, n_recs, dups, clean_rate, faulted_rate, violations);
    if (json) {
        park_check_json(json, &pc, &pr);
        fprintf(json, "\"faults\":[");
    }
    int first_json = 1;
    for (int t = 0; t <= F__CNT; t++) {
        size_t n = 0;
        for (int f = 0; f < fault_count; f++)
            if ((int)faults[f].type == t && faults[f].recovery_ms >= 0 && n < 64)
                rec[n++] = faults[f].recovery_ms;
        int count = 0;
        for (int f = 0; f < fault_count; f++)
            count += (int)faults[f].type == t;
        if (t == F__CNT) {
            printf("  %-30s %5s %10ld\n", "(outside any fault window)", "", dup_by_type[t]);
            continue;
        }
        if (!count)
            continue;
        long long p50 = pct(rec, n, 0.5), p99 = pct(rec, n, 0.99);
        printf("  %-30s %5d %10ld %10ld %8lld ms %8lld ms\n", fault_types[t].name, count, dup_by_type[t],
               worst_by_type[t], p50, p99);
        if (json)
            fprintf(json, "%s{\"type\":\"%s\",\"count\":%d,\"dups\":%ld,\"worst_dups\":%ld,\"recovery_p50_ms\":%lld,"
                          "\"recovery_p99_ms\":%lld}",
                    first_json ? "" : ",", fault_types[t].name, count, dup_by_type[t], worst_by_type[t], p50, p99);
        first_json = 0;
    }
    if (json) {
        fprintf(json, "],\"unattributed_dups\":%ld}\n", dup_by_type[F__CNT]);
        fclose(json);
    }
    printf("  replay: make check-faults MODE=%s SEED=%llu\n", mode_name, (unsigned long long)seed);
    fflush(stdout);

    for (int i = 0; i < 2; i++)
        tk_proc_free(relays[i]);
    tk_proc_free(consumer);
    tk_consumer_free(reader);
    tk_broker_stop(broker);
    tn_proxy_free(pgproxy);
    idmap_free(&truth);
    idmap_free(&seen);
    free(seq_of);
    free(key_of);
    free(last_seq);
    free(faults);
    park_check_free(&pc);
    park_free();
    if (violations == 0) {
        PQclear(mon_exec(q("DROP SCHEMA @ CASCADE"), 0, NULL));
    } else {
        /* The throwaway cluster's directory goes away with it: keep every process's log. */
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "d=%s/faults/seed-%llu; mkdir -p $d && find %s -maxdepth 1 -type f -exec cp {} $d/ \\;"
                 " && echo \"logs kept in $d\"", getenv("OUTBOX_BUILD_DIR") ? getenv("OUTBOX_BUILD_DIR") : "build",
                 (unsigned long long)seed, getenv("OUTBOX_TEST_DIR"));
        if (system(cmd) != 0)
            printf("could not keep the logs\n");
    }
    /* The slot goes either way (its position is in the output above): kept, it would retain WAL
     * for everything run later in this cluster. */
    if (wal_mode)
        wal_drop();
    PQfinish(mon);
    ck_assert_msg(violations == 0, "seed %llu (mode %s): %ld violations of the delivery contract (table above): %s",
                  (unsigned long long)seed, mode_name, violations, violated);
}
END_TEST

int main(void) {
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("scenario");
    tcase_set_timeout(tc, 3600);
    tcase_add_test(tc, test_fault_scenario);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
