/*
 * Per-key parking in outbox.mode=wal: a poison logical message parks only its key, its later
 * messages are held in parked_messages in stream order, `outbox-relay parked retry|drop` release
 * them before any later message of the key, and a SIGKILL while a key is parked loses nothing;
 * a slot that went back (a crash) does not stream the released messages again.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil_seq.h"

enum { NK = 3, MAXS = 16 };

/* Message ids of (key, seq), to check what is held and in which order. */
static char ids[NK][MAXS][37];

static void setup(void) {
    tf_setup("t_walpark");
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1), 0); /* for the verbs */
    memset(ids, 0, sizeof(ids));
}

/* The slots of this schema: the relay's, and the copy a test may leave behind when it fails. */
static void drop_slots(void) {
    PGresult *res = PQexec(tf_conn, tf_q("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                         "WHERE slot_name = '%s_then' AND NOT active", tf_wal_slot_name()));
    PQclear(res);
    tf_wal_drop_slot();
}

static void teardown(void) {
    tf_teardown(drop_slots);
}

static tk_proc_t *start_wal_relay(void) {
    return tf_start_relay("outbox.mode=wal", "relay.poison.policy=park-key", NULL);
}

/* Emits (key k, seq s) as the outbox's logical message, in the current transaction; bad: its
 * envelope names a destination that is no topic name ("bad topic!"). */
static void emit_one(const char *topic, int k, int s, bool bad) {
    outbox_message_t *m = seq_msg(bad ? "bad_topic_" : topic, k, s);
    void *env;
    size_t len;
    ck_assert_int_eq(outbox_message_encode(m, &env, &len), OUTBOX_OK);
    if (bad) {
        char *at = memmem(env, len, "bad_topic_", 10);
        ck_assert_ptr_nonnull(at);
        memcpy(at, "bad topic!", 10);
    }
    snprintf(ids[k][s], 37, "%s", outbox_message_id(m));
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "outbox:%s", tf_schema);
    const char *p[2] = {prefix, env};
    int lens[2] = {0, (int)len}, fmts[2] = {0, 1};
    PGresult *res = PQexecParams(tf_conn, "SELECT pg_logical_emit_message(true, $1, $2::bytea)", 2, NULL, p, lens,
                                 fmts, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "emit: %s", PQresultErrorMessage(res));
    PQclear(res);
    free(env);
    outbox_message_destroy(m);
}

/* Commits seq [from, to) of each key in keys (-1 terminated), round robin, in one transaction. */
static void emit_keys(const char *topic, const int *keys, int from, int to) {
    tu_exec(tf_conn, "BEGIN");
    for (int s = from; s < to; s++)
        for (const int *k = keys; *k >= 0; k++)
            emit_one(topic, *k, s, false);
    tu_exec(tf_conn, "COMMIT");
}

static const char *key_sql(int k) {
    return tf_q("convert_to('k%d', 'UTF8')", k);
}

static void wait_count(const char *sql, long long want, int timeout_ms) {
    long long got = tk_wait_scalar(tf_conn, sql, want, timeout_ms);
    TF_CHECK(got == want, "%s: %lld after %d ms, expected %lld", sql, got, timeout_ms, want);
}

/* Key k is parked with exactly the messages seq [from, to) held, in that id order, and first_id
 * names the first. */
static void check_held(int k, int from, int to) {
    wait_count(tf_q("SELECT count(*) FROM @.parked_messages WHERE partition_key = %s", key_sql(k)), to - from, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.parked_keys WHERE partition_key = %s AND request IS NULL", key_sql(k)), 1,
               30000);
    PGresult *res = PQexec(tf_conn, tf_q("SELECT message_id::text, id FROM @.parked_messages WHERE partition_key = %s "
                                         "ORDER BY id", key_sql(k)));
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(res), to - from);
    for (int i = 0; i < to - from; i++)
        TF_CHECK(!strcmp(PQgetvalue(res, i, 0), ids[k][from + i]), "key k%d: held message %d is %s, expected %d:%d (%s)",
                 k, i, PQgetvalue(res, i, 0), k, from + i, ids[k][from + i]);
    long long first = atoll(PQgetvalue(res, 0, 1));
    PQclear(res);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys WHERE partition_key = %s", key_sql(k))),
                     first);
}

/* The records of the topic read so far: per key, the sequence of first appearances must be
 * exp[k][0..n[k]) (a repeat of one seen is counted in dups); returns whether all are there. */
static bool topic_state(tk_consumer_t *c, const int exp[NK][MAXS], const int n[NK], int dups[NK]) {
    size_t cnt;
    const tk_record_t *recs = tk_consumer_records(c, &cnt);
    int pos[NK] = {0};
    bool all = true;
    for (int k = 0; k < NK; k++)
        dups[k] = 0;
    for (size_t i = 0; i < cnt; i++) {
        int k, s;
        record_seq(&recs[i], &k, &s);
        TF_CHECK(k >= 0 && k < NK, "record of key %d", k);
        if (pos[k] < n[k] && exp[k][pos[k]] == s) {
            pos[k]++;
            continue;
        }
        bool seen = false;
        for (int j = 0; j < pos[k]; j++)
            seen |= exp[k][j] == s;
        TF_CHECK(seen, "key k%d: %d:%d arrived after %d of %d expected, where %d:%d was due: order broken or a held "
                 "message published", k, k, s, pos[k], n[k], k, pos[k] < n[k] ? exp[k][pos[k]] : -1);
        dups[k]++;
    }
    for (int k = 0; k < NK; k++)
        all &= pos[k] == n[k];
    return all;
}

/* Reads until every key shows its expected messages, then a second more; once: no duplicates. */
static void expect_topic(tk_consumer_t *c, const int exp[NK][MAXS], const int n[NK], bool once, int timeout_ms) {
    int dups[NK];
    int64_t deadline = tk_now_ms() + timeout_ms;
    while (!topic_state(c, exp, n, dups)) {
        TF_CHECK(tk_now_ms() < deadline, "the expected messages did not all arrive within %d ms", timeout_ms);
        size_t cnt;
        tk_consumer_records(c, &cnt);
        tk_consumer_poll(c, cnt + 1, tk_now_ms() + 300);
    }
    size_t cnt;
    tk_consumer_records(c, &cnt);
    tk_consumer_poll(c, cnt + 1, tk_now_ms() + 1000);
    TF_CHECK(topic_state(c, exp, n, dups), "lost messages");
    for (int k = 0; k < NK && once; k++)
        TF_CHECK(dups[k] == 0, "key k%d: %d duplicates", k, dups[k]);
}

static void exp_add(int exp[NK][MAXS], int n[NK], int k, int from, int to) {
    for (int s = from; s < to; s++)
        exp[k][n[k]++] = s;
}

static int cli(const char *a, const char *b, const char *c, const char *d, char *out, size_t size) {
    char schema[160];
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", a, b, c, d, NULL);
    int rc = tf_exit_code(p);
    snprintf(out, size, "%s%s", tk_file_tail(p->out_path, 1000), tk_file_tail(p->err_path, 1000));
    tk_proc_free(p);
    return rc;
}

/* The operator's fix of a held poison message: the row's destination, and the one its envelope
 * names (same length, so the protobuf stays whole). */
static void fix_destination(const char *topic, long long id) {
    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s', envelope = overlay(envelope placing "
                          "'bad_topic_'::bytea from position('bad topic!'::bytea in envelope) for 10) WHERE id = %lld",
                          topic, id));
}

/* ---- (a), (b): a poison message parks only its key; retry publishes in order, exactly once ---- */

START_TEST(test_poison_parks_its_key_and_retry_publishes_in_order) {
    static const int all[] = {0, 1, 2, -1}, k1[] = {1, -1};
    const char *topic = "wp1.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    char out[2100];
    tf_start_broker("--topic", "wp1.events:2", NULL);
    tf_wal_migrate();
    emit_keys(topic, all, 0, 2);
    tu_exec(tf_conn, "BEGIN");
    emit_one(topic, 1, 2, true);
    tu_exec(tf_conn, "COMMIT");
    emit_keys(topic, all, 3, 5);
    start_wal_relay();
    check_held(1, 2, 5);
    long long bad = tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys"));
    ck_assert_int_gt(bad, 0);
    exp_add(exp, n, 0, 0, 2), exp_add(exp, n, 0, 3, 5);
    exp_add(exp, n, 2, 0, 2), exp_add(exp, n, 2, 3, 5);
    exp_add(exp, n, 1, 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, true, 30000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);

    /* Later messages of the key are held behind it, in order; the others flow. */
    emit_keys(topic, all, 5, 7);
    check_held(1, 2, 7);
    exp_add(exp, n, 0, 5, 7), exp_add(exp, n, 2, 5, 7);
    expect_topic(c, exp, n, true, 30000);

    /* Fixed and retried: the held messages first, in order, then the key's later ones. */
    fix_destination(topic, bad);
    int rc = cli("parked", "retry", "--key", "k1", out, sizeof(out));
    TF_CHECK(rc == 0 && tf_matches(out, "released 1 key"), "parked retry: %d %s", rc, out);
    emit_keys(topic, k1, 7, 9);
    exp_add(exp, n, 1, 2, 9);
    expect_topic(c, exp, n, true, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    tk_consumer_free(c);
}
END_TEST

/* ---- (c): drop-first and drop dead-letter the held messages under their ids ------------------ */

START_TEST(test_drop_first_and_drop) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "wp2.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    char out[2100];
    tf_start_broker("--topic", "wp2.events:2", NULL);
    tf_wal_migrate();
    emit_keys(topic, all, 0, 2);
    tu_exec(tf_conn, "BEGIN");
    emit_one(topic, 1, 2, true);
    emit_one(topic, 2, 2, true);
    tu_exec(tf_conn, "COMMIT");
    emit_keys(topic, all, 3, 5);
    start_wal_relay();
    check_held(1, 2, 5);
    check_held(2, 2, 5);
    long long bad1 = tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys WHERE partition_key = %s", key_sql(1)));
    long long bad2 = tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys WHERE partition_key = %s", key_sql(2)));
    ck_assert_int_lt(bad1, bad2); /* stream order */

    int rc = cli("parked", "drop", "--key", "k1", out, sizeof(out));
    exp_add(exp, n, 0, 0, 2), exp_add(exp, n, 0, 3, 5);
    exp_add(exp, n, 1, 0, 2);
    exp_add(exp, n, 2, 0, 2);
    TF_CHECK(rc == 0, "parked drop: %s", out);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters WHERE partition_key = %s AND id >= %lld", key_sql(1), bad1), 3,
               10000);
    char schema[160];
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", schema, "parked", "drop", "--key", "k2", "--first-only", NULL);
    TF_CHECK(tf_exit_code(p) == 0, "parked drop --first-only: %s", tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    exp_add(exp, n, 2, 3, 5);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, true, 30000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 4);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id = %lld AND error ~ "
                                             "'destination'", bad2)), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages")), 0);
    /* Both keys flow again. */
    emit_keys(topic, all, 5, 7);
    exp_add(exp, n, 0, 5, 7), exp_add(exp, n, 1, 5, 7), exp_add(exp, n, 2, 5, 7);
    expect_topic(c, exp, n, true, 30000);
    tk_consumer_free(c);
}
END_TEST

/* ---- (d): SIGKILL while a key is parked and messages are held ---------------------------------- */

START_TEST(test_kill_while_parked_loses_nothing) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "wp3.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    char out[2100];
    tf_start_broker("--topic", "wp3.events:2", NULL);
    tf_wal_migrate();
    emit_keys(topic, all, 0, 2);
    tu_exec(tf_conn, "BEGIN");
    emit_one(topic, 1, 2, true);
    tu_exec(tf_conn, "COMMIT");
    emit_keys(topic, all, 3, 5);
    tk_proc_t *relay = start_wal_relay();
    check_held(1, 2, 5);
    emit_keys(topic, all, 5, 7);
    tk_sleep_ms(50); /* maybe held, maybe not yet confirmed */
    tk_proc_signal(relay, SIGKILL);
    ck_assert(tk_proc_wait(relay, 5000));
    emit_keys(topic, all, 7, 9);
    relay = start_wal_relay();
    exp_add(exp, n, 0, 0, 2), exp_add(exp, n, 0, 3, 9);
    exp_add(exp, n, 2, 0, 2), exp_add(exp, n, 2, 3, 9);
    exp_add(exp, n, 1, 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, false, 30000);
    check_held(1, 2, 9); /* each held once, in order, though the stream may have sent some twice */

    /* Killed again with the key parked; retried while no relay leads; the next leader publishes
     * the released messages before the key's later ones. */
    tk_proc_signal(relay, SIGKILL);
    ck_assert(tk_proc_wait(relay, 5000));
    wait_count("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
               "AND l.granted AND split_part(a.application_name, ' ', 1) = 'outbox-relay'", 0, 10000);
    long long bad = tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys"));
    fix_destination(topic, bad);
    int rc = cli("parked", "retry", "--key", "k1", out, sizeof(out));
    TF_CHECK(rc == 0 && tf_matches(out, "no relay leads"), "parked retry with no relay: %d %s", rc, out);
    emit_keys(topic, all, 9, 11);
    start_wal_relay();
    exp_add(exp, n, 0, 9, 11), exp_add(exp, n, 2, 9, 11);
    exp_add(exp, n, 1, 2, 11);
    expect_topic(c, exp, n, false, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    tk_consumer_free(c);
}
END_TEST

/* ---- (e): a relay role without USAGE on the identity dead-letters instead of stalling ---------- */

/* An upgraded relay role may lack USAGE on the outbox table's identity, which holding a wal
 * message needs: the relay says so at its leadership and dead-letters the poison message alone,
 * as relay.poison.policy=dead-letter does; every key, the poison's own too, keeps flowing. */
START_TEST(test_a_role_without_usage_dead_letters_instead_of_stalling) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "wp4.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    char role[64], sch[160];
    tf_start_broker("--topic", "wp4.events:2", NULL);
    tf_wal_migrate();
    snprintf(role, sizeof(role), "walpark_relay_%d", (int)getpid());
    snprintf(sch, sizeof(sch), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", sch, "-X", "outbox.mode=wal", "grants", "--relay", role, NULL);
    char *grants = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0 && strstr(grants, "USAGE"), "wal grants: %s", tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    tu_exec(tf_conn, grants);
    free(grants);
    tu_exec(tf_conn, tf_q("DO $$ BEGIN EXECUTE format('REVOKE USAGE ON SEQUENCE %%s FROM %%I', "
                          "pg_get_serial_sequence('@.messages', 'id'), '%s'); END $$", role));

    emit_keys(topic, all, 0, 2);
    tu_exec(tf_conn, "BEGIN");
    emit_one(topic, 1, 2, true);
    tu_exec(tf_conn, "COMMIT");
    emit_keys(topic, all, 3, 5);
    char conninfo[1024];
    snprintf(conninfo, sizeof(conninfo), "%s user=%s", getenv("OUTBOX_TEST_PG"), role);
    tf_relay_opts_t o = {.conninfo = conninfo};
    tk_proc_t *relay = tf_start_relay_with(&o, "outbox.mode=wal", "relay.poison.policy=park-key", NULL);
    exp_add(exp, n, 0, 0, 2), exp_add(exp, n, 0, 3, 5);
    exp_add(exp, n, 1, 0, 2), exp_add(exp, n, 1, 3, 5);
    exp_add(exp, n, 2, 0, 2), exp_add(exp, n, 2, 3, 5);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, true, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters WHERE message_id = '%s'", ids[1][2]), 1, 10000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 0);
    TF_CHECK(tk_file_count(relay->err_path, "needs USAGE on the outbox table's identity") == 1 &&
             tk_file_count(relay->err_path, "grants --relay") > 0,
             "the relay did not say once what parking lacks and how to fix it:\n%s", tk_file_tail(relay->err_path, 3000));
    tk_consumer_free(c);
}
END_TEST

/* ---- (e): a slot that went back (a crash) streams released messages again ------------------- */

/* PostgreSQL writes a logical slot's confirmed position to disk lazily: after a crash the slot may
 * stand before messages the relay held and the operator released since.  Here the slot is put back
 * there for certain: a copy taken before, swapped in after the drop.  The stream must not hold
 * (park the key again) or publish the dropped messages a second time. */
START_TEST(test_a_slot_that_went_back_does_not_stream_released_messages_again) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "wp5.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    char out[2100], then[80];
    tf_start_broker("--topic", "wp5.events:2", NULL);
    tf_wal_migrate();
    const char *slot = tf_wal_slot_name();
    snprintf(then, sizeof(then), "%s_then", slot);
    emit_keys(topic, all, 0, 2);
    tk_proc_t *relay = start_wal_relay();
    exp_add(exp, n, 0, 0, 2), exp_add(exp, n, 1, 0, 2), exp_add(exp, n, 2, 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, false, 30000);
    tu_exec(tf_conn, tf_q("SELECT pg_copy_logical_replication_slot('%s', '%s')", slot, then));
    tu_exec(tf_conn, "BEGIN");
    emit_one(topic, 1, 2, true);
    tu_exec(tf_conn, "COMMIT");
    emit_keys(topic, all, 3, 5);
    long long end = tu_scalar(tf_conn, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint");
    check_held(1, 2, 5);
    /* The held messages' batch is confirmed: only a slot put back streams it again. */
    wait_count(tf_q("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s' AND "
                    "pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') >= %lld", slot, end), 1, 30000);
    int rc = cli("parked", "drop", "--key", "k1", out, sizeof(out));
    TF_CHECK(rc == 0, "parked drop: %s", out);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters WHERE partition_key = %s", key_sql(1)), 3, 10000);
    tk_proc_signal(relay, SIGTERM);
    ck_assert(tk_proc_wait(relay, 10000));
    wait_count(tf_q("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s' AND active", slot), 0, 10000);
    tu_exec(tf_conn, tf_q("SELECT pg_drop_replication_slot('%s')", slot));
    tu_exec(tf_conn, tf_q("SELECT pg_copy_logical_replication_slot('%s', '%s')", then, slot));
    tu_exec(tf_conn, tf_q("SELECT pg_drop_replication_slot('%s')", then));
    relay = start_wal_relay();
    emit_keys(topic, all, 5, 7);
    exp_add(exp, n, 0, 3, 7), exp_add(exp, n, 1, 5, 7), exp_add(exp, n, 2, 3, 7);
    /* Before the fix, k1:2 parked its key again and k1:5..6 waited behind it. */
    expect_topic(c, exp, n, false, 30000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 3);
    tk_consumer_free(c);
}
END_TEST

/* A wal_state copied from another cluster (a restore) names a position in another WAL: following
 * it would skip every transaction up to there.  The relay says so and streams from the slot. */
START_TEST(test_wal_state_of_another_cluster_is_not_followed) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "wp6.events";
    int exp[NK][MAXS] = {{0}}, n[NK] = {0};
    tf_start_broker("--topic", "wp6.events:2", NULL);
    tf_wal_migrate();
    tu_exec(tf_conn, tf_q("INSERT INTO @.wal_state (slot_name, system_id, held_upto) VALUES ('%s', '1', 'FF/0')",
                          tf_wal_slot_name()));
    emit_keys(topic, all, 0, 3);
    tk_proc_t *relay = start_wal_relay();
    exp_add(exp, n, 0, 0, 3), exp_add(exp, n, 1, 0, 3), exp_add(exp, n, 2, 0, 3);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, exp, n, true, 30000);
    TF_CHECK(tf_matches(tk_file_tail(relay->err_path, 20000), "wal_state was recorded on another server"),
             "the relay did not say why it does not follow wal_state:\n%s", tk_file_tail(relay->err_path, 3000));
    tk_consumer_free(c);
}
END_TEST

static Suite *walpark_suite(void) {
    Suite *s = suite_create("walpark");
    TCase *tc = tcase_create("walpark");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_poison_parks_its_key_and_retry_publishes_in_order);
    tcase_add_test(tc, test_drop_first_and_drop);
    tcase_add_test(tc, test_kill_while_parked_loses_nothing);
    tcase_add_test(tc, test_a_role_without_usage_dead_letters_instead_of_stalling);
    tcase_add_test(tc, test_a_slot_that_went_back_does_not_stream_released_messages_again);
    tcase_add_test(tc, test_wal_state_of_another_cluster_is_not_followed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(walpark_suite());
}
