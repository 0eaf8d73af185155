/*
 * outbox.mode=wal: outbox-relay streams the outbox's logical messages from its replication slot
 * (the throwaway cluster runs with wal_level=logical) to the mock broker over TCP.  Commit order,
 * rollbacks, restarts (at least once, never a gap), a transaction the server spills to disk, an
 * idle database, rows left in the table, a broker outage, the setup errors, a lost slot and a batch's
 * dead letters recorded together.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil_net.h"
#include "testutil_seq.h"

static void setup(void) {
    tf_setup("t_wal");
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1), 0); /* for the verbs */
}

static void teardown(void) {
    tf_teardown(tf_wal_drop_slot);
}

/* Moves the rows written this transaction into the WAL as the outbox's logical messages, in id
 * order, as a writer in wal mode emits them. */
static void rows_to_wal(PGconn *conn) {
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(pg_logical_emit_message(true, 'outbox:%s', envelope)) FROM "
             "(SELECT envelope FROM \"%s\".messages ORDER BY id) m", tf_schema, tf_schema);
    tu_exec(conn, sql);
    snprintf(sql, sizeof(sql), "DELETE FROM \"%s\".messages", tf_schema);
    tu_exec(conn, sql);
}

/* Commits sequence numbers [from, to) of nkeys keys as logical messages, per transactions of at most per_tx. */
static void emit_seq(const char *topic, int nkeys, int from, int to, int per_tx) {
    outbox_message_t **ms = calloc((size_t)per_tx, sizeof(*ms));
    ck_assert_ptr_nonnull(ms);
    size_t n = 0;
    for (int s = from; s < to; s++)
        for (int k = 0; k < nkeys; k++) {
            ms[n++] = seq_msg(topic, k, s);
            if ((int)n == per_tx || (s == to - 1 && k == nkeys - 1)) {
                tu_exec(tf_conn, "BEGIN");
                ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, n) == OUTBOX_OK,
                              "outbox_send_batch: %s", outbox_errmsg(tf_ob));
                rows_to_wal(tf_conn);
                tu_exec(tf_conn, "COMMIT");
                for (size_t i = 0; i < n; i++)
                    outbox_message_destroy(ms[i]);
                n = 0;
            }
        }
    free(ms);
}

static tk_proc_t *start_wal_relay(const char *extra) {
    return tf_start_relay("outbox.mode=wal", extra, NULL);
}

/* Bytes between the current WAL position and the slot's confirmed one. */
static long long slot_lag(void) {
    return tu_scalar(tf_conn, tf_q("SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), -1)::bigint "
                                   "FROM pg_replication_slots WHERE slot_name = '%s'", tf_wal_slot_name()));
}

/* A wal relay whose /metrics and /readyz answer on *port. */
static tk_proc_t *start_wal_relay_metrics(int *port) {
    char listen[64];
    *port = tn_free_port();
    snprintf(listen, sizeof(listen), "metrics.listen=127.0.0.1:%d", *port);
    return start_wal_relay(listen);
}

/* /metrics, once it answers 200 with name in it (up to 15 s); caller frees. */
static char *metrics_with(int port, const char *name) {
    int64_t deadline = tk_now_ms() + 15000;
    for (;;) {
        char *text = NULL;
        int st = tn_http_get(port, "/metrics", &text);
        if ((st == 200 && text && strstr(text, name)) || tk_now_ms() >= deadline) {
            TF_CHECK(st == 200 && text && strstr(text, name), "/metrics (status %d) has no %s:\n%s", st, name,
                     text ? text : "");
            return text;
        }
        free(text);
        tk_sleep_ms(100);
    }
}

/* ---- delivery --------------------------------------------------------------------------------- */

START_TEST(test_commit_order_and_rollback) {
    enum { KEYS = 20, PER_KEY = 50 };
    tf_start_broker("--topic", "w1.seq:4", "--topic", "w1.one:1", NULL);
    tf_wal_migrate();
    /* A rollback publishes nothing. */
    outbox_message_t *m = seq_msg("w1.one", 999, 999);
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, tf_conn, m), OUTBOX_OK);
    rows_to_wal(tf_conn);
    tu_exec(tf_conn, "ROLLBACK");
    outbox_message_destroy(m);
    /* Two transactions interleaved: the one that commits first comes first. */
    PGconn *other = PQconnectdb(getenv("OUTBOX_TEST_PG"));
    ck_assert_int_eq(PQstatus(other), CONNECTION_OK);
    outbox_message_t *a = seq_msg("w1.one", 1, 0), *b = seq_msg("w1.one", 2, 0);
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, tf_conn, a), OUTBOX_OK);
    rows_to_wal(tf_conn); /* emitted first, committed last */
    tu_exec(other, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, other, b), OUTBOX_OK);
    rows_to_wal(other);
    tu_exec(other, "COMMIT");
    tu_exec(tf_conn, "COMMIT");
    PQfinish(other);
    outbox_message_destroy(a);
    outbox_message_destroy(b);
    emit_seq("w1.seq", KEYS, 0, PER_KEY, 100);
    start_wal_relay(NULL);

    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w1.one");
    size_t n = tk_consumer_poll(c, 2, tk_now_ms() + 30000);
    TF_CHECK(n >= 2, "%zu of 2 records on w1.one", n);
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int k0, s0, k1, s1;
    record_seq(&recs[0], &k0, &s0);
    record_seq(&recs[1], &k1, &s1);
    TF_CHECK(k0 == 2 && k1 == 1, "commit order broken: key k%d then k%d, expected k2 (committed first) then k1", k0, k1);
    tk_consumer_poll(c, 3, tk_now_ms() + 1500);
    tk_consumer_records(c, &n);
    TF_CHECK(n == 2, "%zu records on w1.one: the rolled-back message was published", n);
    tk_consumer_free(c);

    c = tk_consumer_new(tf_broker->bootstrap, "w1.seq");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    seq_read_all(&st, c, 60000);
    seq_free(&st);
    tk_consumer_free(c);
    /* Everything acknowledged: the slot confirms up to the end, within a few status updates. */
    long long lag = tk_wait_scalar(tf_conn, tf_q("SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) "
                                                 "< 65536)::int FROM pg_replication_slots WHERE slot_name = '%s'",
                                                 tf_wal_slot_name()), 1, 20000);
    TF_CHECK(lag == 1, "the slot's confirmed position stays %lld bytes behind after the drain", slot_lag());
    char schema[160];
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "status", NULL);
    char *out = strdup(tk_file_tail(p->out_path, 4000));
    TF_CHECK(tf_exit_code(p) == 0 && strstr(out, "mode:            wal") && strstr(out, "wal_status=reserved") &&
             strstr(out, "active_pid=") && !strstr(out, "active_pid=none"), "status in wal mode: %s", out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "grants", "--relay", "r_wal", NULL);
    TF_CHECK(strstr(tk_file_tail(p->out_path, 4000), "ALTER ROLE \"r_wal\" REPLICATION;"), "grants in wal mode: %s",
             tk_file_tail(p->out_path, 4000));
    tk_proc_free(p);
}
END_TEST

/* SIGKILLed mid-stream (acknowledged messages not yet confirmed, others not yet acknowledged):
 * the next relay sends again from the confirmed position, so nothing is missing, order holds. */
START_TEST(test_kill_and_restart_resends_never_gaps) {
    enum { KEYS = 50, PER_KEY = 600 };
    tf_start_broker("--topic", "w2.seq:4", NULL);
    tf_wal_migrate();
    emit_seq("w2.seq", KEYS, 0, PER_KEY, 1000);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w2.seq");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    tk_proc_t *relay = start_wal_relay("relay.batch.size=500");
    int64_t deadline = tk_now_ms() + 30000;
    while (st.complete < KEYS * PER_KEY / 4 && tk_now_ms() < deadline)
        seq_poll(&st, c, 50);
    TF_CHECK(st.complete > 0, "nothing published within 30 s");
    tk_proc_signal(relay, SIGKILL);
    ck_assert(tk_proc_wait(relay, 5000));
    start_wal_relay(NULL);
    seq_read_all(&st, c, 90000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* One transaction of 200,000 messages: the server spills it to disk and sends it whole at commit. */
START_TEST(test_a_200k_message_transaction_arrives_whole_in_order) {
    enum { KEYS = 100, PER_KEY = 2000 };
    tf_start_broker("--topic", "w3.big:4", NULL);
    tf_wal_migrate();
    emit_seq("w3.big", KEYS, 0, PER_KEY, KEYS * PER_KEY);
    start_wal_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w3.big");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    seq_read_all(&st, c, 180000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* An idle outbox in a busy database: the slot's confirmed position follows the server's, so the
 * slot retains little WAL. */
START_TEST(test_idle_outbox_retains_little_wal) {
    tf_start_broker("--topic", "w4.seq:1", NULL);
    tf_wal_migrate();
    int port;
    start_wal_relay_metrics(&port);
    emit_seq("w4.seq", 1, 0, 1, 1);
    tu_exec(tf_conn, tf_q("CREATE TABLE @.busy (x text)"));
    for (int i = 0; i < 20; i++)
        tu_exec(tf_conn, tf_q("INSERT INTO @.busy SELECT repeat('x', 1000) FROM generate_series(1, 2000)"));
    long long written = tu_scalar(tf_conn, "SELECT 20 * 2000 * 1000");
    int64_t deadline = tk_now_ms() + 30000;
    long long lag = slot_lag();
    while ((lag < 0 || lag > 1 << 20) && tk_now_ms() < deadline) {
        tk_sleep_ms(200);
        lag = slot_lag();
    }
    TF_CHECK(lag >= 0 && lag <= 1 << 20, "after ~%lld bytes of other traffic the idle slot lags %lld bytes "
             "(over 1 MiB): keepalives are not confirmed", written, lag);
    /* The relay's figures for the slot (sampled every 2 s): bounded lag, a position, a commit time. */
    char *text = NULL;
    double m_lag = -1;
    for (int64_t until = tk_now_ms() + 15000; tk_now_ms() < until; tk_sleep_ms(200)) {
        free(text);
        text = metrics_with(port, "outbox_relay_wal_lag_bytes");
        if (tn_metric(text, "outbox_relay_wal_lag_bytes", &m_lag) && m_lag >= 0 && m_lag <= 1 << 20)
            break;
    }
    TF_CHECK(m_lag >= 0 && m_lag <= 1 << 20, "outbox_relay_wal_lag_bytes is %.0f on an idle slot:\n%s", m_lag, text);
    long long confirmed = tu_scalar(tf_conn, tf_q("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM "
                                                  "pg_replication_slots WHERE slot_name = '%s'", tf_wal_slot_name()));
    double m_lsn = tn_must_metric(text, "outbox_relay_wal_confirmed_lsn");
    TF_CHECK(m_lsn > 0 && m_lsn <= (double)confirmed, "outbox_relay_wal_confirmed_lsn %.0f, the slot's %lld", m_lsn,
             confirmed);
    double commit_s = tn_must_metric(text, "outbox_relay_wal_last_commit_timestamp_seconds");
    double now_s = (double)tu_scalar(tf_conn, "SELECT extract(epoch FROM now())::bigint");
    TF_CHECK(commit_s > now_s - 120 && commit_s <= now_s + 2, "last commit time %.3f, now %.0f", commit_s, now_s);
    TF_CHECK(tn_must_metric(text, "outbox_relay_wal_retained_bytes") >= 0, "negative retained WAL:\n%s", text);
    ck_assert_int_eq((int)tn_must_metric(text, "outbox_relay_wal_slot_broken"), 0);
    free(text);
}
END_TEST

/* Switching from table mode: rows left in the table go out before the stream's messages. */
START_TEST(test_rows_left_in_the_table_go_first) {
    enum { KEYS = 10 };
    tf_start_broker("--topic", "w5.seq:2", NULL);
    tf_wal_migrate();
    write_seq("w5.seq", KEYS, 0, 30, NULL);  /* table mode */
    emit_seq("w5.seq", KEYS, 30, 60, 100);   /* then wal mode */
    start_wal_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w5.seq");
    seqstate_t st;
    seq_init(&st, KEYS, 60);
    seq_read_all(&st, c, 60000);
    long long left = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    TF_CHECK(left == 0, "%lld rows left in the table", left);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* The broker away: nothing is confirmed, WAL is retained; once back, everything drains. */
START_TEST(test_broker_down_freezes_the_slot_then_drains) {
    enum { KEYS = 20 };
    tf_start_broker("--topic", "w6.seq:2", NULL);
    tf_wal_migrate();
    start_wal_relay(NULL);
    emit_seq("w6.seq", KEYS, 0, 10, 50);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w6.seq");
    seqstate_t st;
    seq_init(&st, KEYS, 20);
    int64_t deadline = tk_now_ms() + 30000;
    while (st.complete < KEYS * 10 && tk_now_ms() < deadline)
        seq_poll(&st, c, 200);
    TF_CHECK(st.complete == KEYS * 10, "%d of %d before the outage", st.complete, KEYS * 10);
    tk_broker_cmd(tf_broker, "down all");
    tk_sleep_ms(500);
    const char *pos = tf_q("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots "
                           "WHERE slot_name = '%s'", tf_wal_slot_name());
    char *pos_sql = strdup(pos);
    long long before = tu_scalar(tf_conn, pos_sql);
    /* The first transaction of the outage ends at or before first_end: a confirmation that covers
     * it would reach first_end.  Below it the position may still move, to WAL written meanwhile
     * (a keepalive's end while nothing is in flight, or the new transaction's own records). */
    emit_seq("w6.seq", KEYS, 10, 11, 50);
    long long first_end = tu_scalar(tf_conn, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint");
    emit_seq("w6.seq", KEYS, 11, 20, 50);
    tk_sleep_ms(3000);
    long long after = tu_scalar(tf_conn, pos_sql);
    TF_CHECK(after >= before && after < first_end, "the confirmed position moved from %lld to %lld while the broker "
             "was down, past the end of the outage's first transaction (%lld): an unacknowledged message confirmed",
             before, after, first_end);
    free(pos_sql);
    tk_broker_cmd(tf_broker, "up all");
    seq_read_all(&st, c, 60000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* ---- setup errors and a lost slot ------------------------------------------------------------- */

START_TEST(test_missing_slot_and_replication_attribute_are_named) {
    tf_start_broker("--topic", "w7.seq:1", NULL);
    tk_proc_t *relay = start_wal_relay(NULL);
    TF_CHECK(tk_wait_file_contains(relay->err_path, "does not exist", 15000) ||
             tk_wait_file_contains(relay->out_path, "does not exist", 1000),
             "no error naming the missing slot");
    TF_CHECK(tk_file_count(relay->err_path, "outbox.mode=wal migrate") + tk_file_count(relay->out_path, "outbox.mode=wal migrate") > 0,
             "the missing slot's error does not name the fix");
    /* A role without REPLICATION: migrate names the attribute and the statement. */
    tu_exec(tf_conn, "DROP ROLE IF EXISTS t_wal_norepl");
    tu_exec(tf_conn, "CREATE ROLE t_wal_norepl LOGIN");
    tu_exec(tf_conn, tf_q("GRANT USAGE ON SCHEMA @ TO t_wal_norepl"));
    tu_exec(tf_conn, tf_q("GRANT SELECT ON ALL TABLES IN SCHEMA @ TO t_wal_norepl"));
    char conninfo[1024], schema[160];
    snprintf(conninfo, sizeof(conninfo), "pg.conninfo=%s user=t_wal_norepl", getenv("OUTBOX_TEST_PG"));
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", conninfo, "-X", schema, "-X", "outbox.mode=wal", "migrate", NULL);
    char *err = strdup(tk_file_tail(p->err_path, 4000));
    TF_CHECK(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 1 && strstr(err, "REPLICATION") &&
             strstr(err, "ALTER ROLE t_wal_norepl REPLICATION"), "migrate as a role without REPLICATION: %s: %s",
             tk_status_str(p->status), err);
    free(err);
    tk_proc_free(p);
    tu_exec(tf_conn, tf_q("REVOKE ALL ON ALL TABLES IN SCHEMA @ FROM t_wal_norepl"));
    tu_exec(tf_conn, tf_q("REVOKE ALL ON SCHEMA @ FROM t_wal_norepl"));
    tu_exec(tf_conn, "DROP ROLE t_wal_norepl");
}
END_TEST


/* A slot that fell behind max_slot_wal_keep_size is lost: the relay says so and publishes nothing,
 * and only slot-recreate --accept-loss replaces it, saying which positions were lost. */
START_TEST(test_a_lost_slot_is_reported_and_recreated_only_on_request) {
    tf_start_broker("--topic", "w8.seq:1", NULL);
    tf_wal_migrate();
    tu_exec(tf_conn, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    tu_exec(tf_conn, "SELECT pg_reload_conf()");
    tu_exec(tf_conn, tf_q("CREATE TABLE @.filler (x text)"));
    for (int i = 0; i < 4 && tu_scalar(tf_conn, tf_q("SELECT (wal_status = 'lost')::int FROM pg_replication_slots "
                                                     "WHERE slot_name = '%s'", tf_wal_slot_name())) == 0; i++) {
        tu_exec(tf_conn, tf_q("INSERT INTO @.filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, 20000) g"));
        tu_exec(tf_conn, "SELECT pg_switch_wal()");
        tu_exec(tf_conn, "CHECKPOINT");
    }
    tu_exec(tf_conn, "ALTER SYSTEM RESET max_slot_wal_keep_size");
    tu_exec(tf_conn, "SELECT pg_reload_conf()");
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT (wal_status = 'lost')::int FROM pg_replication_slots WHERE slot_name = '%s'",
                                     tf_wal_slot_name())) == 1, "could not make the slot lost");
    int port;
    tk_proc_t *relay = start_wal_relay_metrics(&port);
    TF_CHECK(tk_wait_file_contains(relay->err_path, "is lost", 15000), "the relay did not report the lost slot");
    char *text = metrics_with(port, "outbox_relay_wal_slot_broken 1");
    free(text);
    char *body = NULL;
    int code = tn_http_get(port, "/readyz", &body);
    TF_CHECK(code == 503 && body && strstr(body, "slot"), "/readyz with a lost slot: %d %s", code, body ? body : "");
    free(body);
    TF_CHECK(tk_file_count(relay->err_path, "slot-recreate") > 0, "the lost slot's error does not name the fix");
    TF_CHECK(tk_proc_running(relay), "the relay exited on a lost slot: %s", tk_status_str(relay->status));
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT (wal_status = 'lost')::int FROM pg_replication_slots WHERE slot_name = '%s'",
                                     tf_wal_slot_name())) == 1, "the relay replaced the lost slot by itself");
    char schema[160];
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "slot-recreate", NULL);
    TF_CHECK(tf_exit_code(p) == 2 && strstr(tk_file_tail(p->err_path, 2000), "--accept-loss"),
             "slot-recreate without --accept-loss: %s", tk_status_str(p->status));
    tk_proc_free(p);
    p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "slot-recreate", "--accept-loss", NULL);
    TF_CHECK(tf_exit_code(p) == 1 && strstr(tk_file_tail(p->err_path, 2000), "a relay leads"),
             "slot-recreate while a relay leads: %s", tk_status_str(p->status));
    tk_proc_free(p);
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 20000), "the relay did not stop on SIGTERM");
    p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "slot-recreate", "--accept-loss", NULL);
    char *out = strdup(tk_file_tail(p->out_path, 2000));
    TF_CHECK(tf_exit_code(p) == 0 && strstr(out, "LOST: messages committed after"), "slot-recreate --accept-loss: %s: %s",
             tk_status_str(p->status), out);
    free(out);
    tk_proc_free(p);
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT (wal_status <> 'lost')::int FROM pg_replication_slots WHERE slot_name = '%s'",
                                     tf_wal_slot_name())) == 1, "the slot is still lost after slot-recreate");
    /* The new slot works. */
    start_wal_relay(NULL);
    emit_seq("w8.seq", 3, 0, 5, 15);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w8.seq");
    seqstate_t st;
    seq_init(&st, 3, 5);
    seq_read_all(&st, c, 30000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* The library's own wal-mode writer, end to end: outbox_send and outbox_send_commit emit logical
 * messages (no rows), which the relay publishes in order. */
START_TEST(test_wal_writer_end_to_end) {
    enum { KEYS = 5, PER_KEY = 40 };
    char err[512];
    tf_start_broker("--topic", "w9.seq:2", NULL);
    tf_wal_migrate();
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.mode", "wal", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_msg(ob != NULL, "outbox_new: %s", err);
    start_wal_relay(NULL);
    for (int s = 0; s < PER_KEY; s++) {
        outbox_message_t *ms[KEYS];
        for (int k = 0; k < KEYS; k++)
            ms[k] = seq_msg("w9.seq", k, s);
        tu_exec(tf_conn, "BEGIN");
        if (s % 2) {
            ck_assert_msg(outbox_send_commit(ob, tf_conn, (const outbox_message_t *const *)ms, KEYS) == OUTBOX_OK,
                          "outbox_send_commit: %s", outbox_errmsg(ob));
        } else {
            for (int k = 0; k < KEYS; k++)
                ck_assert_msg(outbox_send(ob, tf_conn, ms[k]) == OUTBOX_OK, "outbox_send: %s", outbox_errmsg(ob));
            tu_exec(tf_conn, "COMMIT");
        }
        for (int k = 0; k < KEYS; k++)
            outbox_message_destroy(ms[k]);
    }
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")) == 0, "the wal writer left table rows");
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "w9.seq");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    seq_read_all(&st, c, 30000);
    seq_free(&st);
    tk_consumer_free(c);
    outbox_destroy(ob);
}
END_TEST

/* Dead letters of one batch go to dead_letters together or not at all: while PostgreSQL refuses
 * the batch's last one (a CHECK), trying the batch again must not count the others again. */
START_TEST(test_a_batchs_dead_letters_are_recorded_together) {
    tf_start_broker("--topic", "w10.any:1", NULL);
    tf_wal_migrate();
    tu_exec(tf_conn, tf_q("ALTER TABLE @.dead_letters ADD CONSTRAINT refuse_one CHECK "
                          "(envelope <> convert_to('not an envelope: refused', 'UTF8'))"));
    /* Not outbox.v1.Envelope protobufs ('n' is no valid field tag): each one is dead on arrival. */
    tu_exec(tf_conn, "BEGIN");
    tu_exec(tf_conn, tf_q("SELECT pg_logical_emit_message(true, 'outbox:%s', convert_to(e, 'UTF8')) FROM "
                          "unnest(ARRAY['not an envelope 1', 'not an envelope 2', 'not an envelope: refused']) "
                          "WITH ORDINALITY AS t(e, n) ORDER BY n", tf_schema));
    tu_exec(tf_conn, "COMMIT");
    tk_proc_t *relay = start_wal_relay(NULL);
    int64_t deadline = tk_now_ms() + 20000;
    while (tk_file_count(relay->err_path, "recording a dead letter failed") < 5 && tk_now_ms() < deadline)
        tk_sleep_ms(50);
    TF_CHECK(tk_file_count(relay->err_path, "recording a dead letter failed") >= 5,
             "the refused dead letter was not tried again: %s", tk_file_tail(relay->err_path, 2000));
    /* All three normally arrive in one batch, then none is recorded yet; a batch the stream
     * happened to end earlier is recorded on its own, once. */
    long long again = tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE attempts <> 1"));
    TF_CHECK(again == 0, "%lld dead letters counted again each time the refused batch was retried", again);
    tu_exec(tf_conn, tf_q("ALTER TABLE @.dead_letters DROP CONSTRAINT refuse_one"));
    long long n = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters"), 3, 20000);
    TF_CHECK(n == 3, "%lld of 3 dead letters recorded once the table accepts them", n);
    long long once = tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE attempts = 1 AND "
                                             "error LIKE 'envelope is not a valid outbox.v1.Envelope%%'"));
    TF_CHECK(once == 3, "%lld of 3 dead letters have attempts = 1 and the envelope's error", once);
}
END_TEST

static Suite *wal_suite(void) {
    Suite *s = suite_create("wal");
    TCase *tc = tcase_create("wal");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_commit_order_and_rollback);
    tcase_add_test(tc, test_wal_writer_end_to_end);
    tcase_add_test(tc, test_kill_and_restart_resends_never_gaps);
    tcase_add_test(tc, test_a_200k_message_transaction_arrives_whole_in_order);
    tcase_add_test(tc, test_idle_outbox_retains_little_wal);
    tcase_add_test(tc, test_rows_left_in_the_table_go_first);
    tcase_add_test(tc, test_broker_down_freezes_the_slot_then_drains);
    tcase_add_test(tc, test_missing_slot_and_replication_attribute_are_named);
    tcase_add_test(tc, test_a_lost_slot_is_reported_and_recreated_only_on_request);
    tcase_add_test(tc, test_a_batchs_dead_letters_are_recorded_together);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(wal_suite());
}
