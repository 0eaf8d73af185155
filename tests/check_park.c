/*
 * Per-key parking (relay.poison.policy = park-key) against the throwaway PostgreSQL and the mock
 * Kafka broker: what parks, what flows, `outbox-relay parked list|retry|drop`, status, metrics,
 * restarts and leader changes.  Every test checks rows in the tables and per-key order on the topic.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_fixture.h"
#include "testutil_net.h"

static void setup(void) {
    tf_setup("t_park");
}

static void teardown(void) {
    tf_teardown(NULL);
}

/* ---- keys and messages ------------------------------------------------------------------------ */

/* Key indexes 0..LONG_KEY-1 are the text "k<i>"; BIN_KEY is bytes that are no UTF-8 (with a NUL);
 * LONG_KEY is LONG_KEY_LEN bytes of text: keys have no length limit. */
enum { LONG_KEY = 8, BIN_KEY = 9, NKEYS = 10, MAX_SEQ = 64, LONG_KEY_LEN = 1500, KEY_MAX = 2048 };
static const unsigned char bin_key[] = {0xc3, 0x28, 0x00, 0xff, 0x6b};
static const char bin_key_hex[] = "c32800ff6b";

/* The bytes of key k into buf; their number. */
static size_t key_bytes(int k, char *buf, size_t size) {
    if (k == BIN_KEY) {
        ck_assert_uint_ge(size, sizeof(bin_key));
        memcpy(buf, bin_key, sizeof(bin_key));
        return sizeof(bin_key);
    }
    if (k == LONG_KEY) {
        ck_assert_uint_gt(size, LONG_KEY_LEN);
        memset(buf, 'L', LONG_KEY_LEN);
        return LONG_KEY_LEN;
    }
    int n = snprintf(buf, size, "k%d", k);
    ck_assert(n > 0 && (size_t)n < size);
    return (size_t)n;
}

/* An EVENT for topic with key k and payload "<k>:<seq>": readers check per-key order by it. */
static outbox_message_t *seq_msg(const char *topic, int k, int seq) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "test.Sequenced");
    ck_assert_ptr_nonnull(m);
    char buf[KEY_MAX];
    size_t n = key_bytes(k, buf, sizeof(buf));
    ck_assert_int_eq(outbox_message_set_key(m, buf, n), OUTBOX_OK);
    int len = snprintf(buf, sizeof(buf), "%d:%d", k, seq);
    ck_assert_int_eq(outbox_message_set_payload(m, buf, (size_t)len), OUTBOX_OK);
    return m;
}

/* Commits sequence numbers [from, to) of each key in keys (terminated by -1), round robin, in one
 * transaction through the library. */
static void write_keys(const char *topic, const int *keys, int from, int to) {
    outbox_message_t *ms[512];
    size_t n = 0;
    for (int s = from; s < to; s++)
        for (const int *k = keys; *k >= 0; k++) {
            ck_assert_uint_lt(n, 512);
            ms[n++] = seq_msg(topic, *k, s);
        }
    if (!n)
        return;
    tu_exec(tf_conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, n) == OUTBOX_OK,
                  "outbox_send_batch: %s", outbox_errmsg(tf_ob));
    tu_exec(tf_conn, "COMMIT");
    for (size_t i = 0; i < n; i++)
        outbox_message_destroy(ms[i]);
}

/* Inserts a row as a foreign producer would, with plain SQL; key NULL for a keyless row.  Returns
 * its outbox id. */
static long long insert_raw(const char *message_id, const char *destination, const void *key, size_t key_len,
                            const void *envelope, size_t envelope_len) {
    const char *params[5] = {message_id, destination, key, "test.Poison", envelope};
    int lengths[5] = {0, 0, (int)key_len, 0, (int)envelope_len};
    int formats[5] = {0, 0, 1, 0, 1};
    PGresult *res = PQexecParams(tf_conn,
                                 tf_q("INSERT INTO @.messages (message_id, destination, partition_key, message_type, "
                                      "envelope) VALUES ($1, $2, $3, $4, $5) RETURNING id"),
                                 5, NULL, params, lengths, formats, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "insert: %s", PQresultErrorMessage(res));
    long long id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return id;
}

/* The ways a row fails permanently before it reaches the broker. */
typedef enum { P_OVERSIZE, P_BAD_DEST, P_BAD_ENVELOPE } poison_kind_t;

/* Inserts sequence number seq of key k as a row that fails permanently in the given way.  With a
 * bad destination its envelope is a good one for topic, so fixing the destination heals it.
 * keyless: the row has no partition key (its envelope still names key k).  Returns its outbox id. */
static long long insert_poison(const char *topic, int k, int seq, poison_kind_t kind, int keyless) {
    outbox_message_t *m = seq_msg(topic, k, seq);
    char *big = NULL;
    void *env = NULL;
    size_t env_len = 0;
    static const unsigned char garbage[] = "\xff\xfe\x07 this is not a protobuf \x01\x02\x03";
    if (kind == P_OVERSIZE) {
        /* 2,000,000 bytes, above kafka.message.max.bytes (default 1000000). */
        big = malloc(2000000);
        ck_assert_ptr_nonnull(big);
        memset(big, 'x', 2000000);
        ck_assert_int_eq(outbox_message_set_payload(m, big, 2000000), OUTBOX_OK);
    }
    if (kind == P_BAD_ENVELOPE) {
        env = malloc(sizeof(garbage));
        ck_assert_ptr_nonnull(env);
        memcpy(env, garbage, sizeof(garbage) - 1);
        env_len = sizeof(garbage) - 1;
    } else {
        ck_assert_int_eq(outbox_message_encode(m, &env, &env_len), OUTBOX_OK);
    }
    char key[KEY_MAX];
    size_t key_len = key_bytes(k, key, sizeof(key));
    long long id = insert_raw(outbox_message_id(m), kind == P_BAD_DEST ? "bad topic!" : topic, keyless ? NULL : key,
                              keyless ? 0 : key_len, env, env_len);
    free(env);
    free(big);
    outbox_message_destroy(m);
    return id;
}

/* ---- reading the topic back -------------------------------------------------------------------- */

/* The sequence numbers a key must show on the topic, in order of first appearance. */
typedef struct {
    int seq[MAX_SEQ];
    int n;
} expect_t;

static void exp_range(expect_t *e, int from, int to) {
    for (int s = from; s < to; s++) {
        ck_assert_int_lt(e->n, MAX_SEQ);
        e->seq[e->n++] = s;
    }
}

/* The (key, seq) of a record, checking that its value is an envelope whose id matches the "id"
 * header and whose Kafka key is the key named in its payload. */
static void record_seq(const tk_record_t *r, int *key, int *seq) {
    outbox_message_t *m = NULL;
    char err[256];
    TF_CHECK(outbox_message_decode(&m, r->value, r->value_len, err, sizeof(err)) == OUTBOX_OK,
             "partition %d offset %lld: value is not an envelope: %s", r->partition, (long long)r->offset, err);
    size_t len;
    const char *payload = outbox_message_payload(m, &len);
    char buf[32];
    TF_CHECK(len < sizeof(buf), "payload of %zu bytes was published", len);
    memcpy(buf, payload, len);
    buf[len] = '\0';
    TF_CHECK(sscanf(buf, "%d:%d", key, seq) == 2 && *key >= 0 && *key < NKEYS, "unexpected payload '%s'", buf);
    const char *id = tk_record_header(r, "id");
    TF_CHECK(id && !strcmp(id, outbox_message_id(m)), "header id %s, envelope id %s", id ? id : "(none)",
             outbox_message_id(m));
    char kbuf[KEY_MAX];
    size_t klen = key_bytes(*key, kbuf, sizeof(kbuf));
    TF_CHECK(r->key && r->key_len == klen && !memcmp(r->key, kbuf, klen), "record %s has the wrong Kafka key", buf);
    outbox_message_destroy(m);
}

/* How far key k has come: the number of e's sequence numbers that appeared, in order.  Fails the
 * test on a record of k out of order or not in e (a duplicate of one already seen is allowed:
 * delivery is at least once). */
static int key_progress(tk_consumer_t *c, int k, const expect_t *e) {
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int pos = 0, part = -1;
    for (size_t i = 0; i < n; i++) {
        int rk, s;
        record_seq(&recs[i], &rk, &s);
        if (rk != k)
            continue;
        if (part < 0)
            part = recs[i].partition;
        TF_CHECK(part == recs[i].partition, "key %d on partitions %d and %d", k, part, recs[i].partition);
        if (pos < e->n && s == e->seq[pos]) {
            pos++;
            continue;
        }
        int dup = 0;
        for (int j = 0; j < pos; j++)
            dup |= e->seq[j] == s;
        TF_CHECK(dup, "key %d: message %d:%d (offset %lld) arrived after %d of its %d expected messages, where "
                 "%d:%d was due: order broken or a held message published", k, k, s, (long long)recs[i].offset, pos,
                 e->n, k, pos < e->n ? e->seq[pos] : -1);
    }
    return pos;
}

/* Reads until every key in keys (-1 terminated) shows exactly exp[key] (in order) or timeout_ms
 * passes, then a second longer to catch anything more, and checks again.  strict: no record of
 * another key may be on the topic. */
static void expect_topic_ex(tk_consumer_t *c, const int *keys, const expect_t *exp, int timeout_ms, int strict) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        int done = 1, k;
        for (const int *kp = keys; (k = *kp) >= 0; kp++)
            done &= key_progress(c, k, &exp[k]) == exp[k].n;
        if (done)
            break;
        for (const int *kp = keys; (k = *kp) >= 0; kp++) {
            int got = key_progress(c, k, &exp[k]);
            TF_CHECK(tk_now_ms() < deadline, "key %d: %d of its %d expected messages arrived within %d ms", k, got,
                     exp[k].n, timeout_ms);
        }
        size_t n;
        tk_consumer_records(c, &n);
        tk_consumer_poll(c, n + 1, tk_now_ms() + 300);
    }
    size_t n;
    tk_consumer_records(c, &n);
    tk_consumer_poll(c, n + 1, tk_now_ms() + 1000);
    for (const int *kp = keys; *kp >= 0; kp++)
        TF_CHECK(key_progress(c, *kp, &exp[*kp]) == exp[*kp].n, "key %d changed", *kp);
    if (!strict)
        return;
    /* Nothing of a key not named was published either. */
    const tk_record_t *recs = tk_consumer_records(c, &n);
    for (size_t i = 0; i < n; i++) {
        int rk, s, named = 0;
        record_seq(&recs[i], &rk, &s);
        for (const int *kp = keys; *kp >= 0; kp++)
            named |= *kp == rk;
        TF_CHECK(named, "message %d:%d of an unexpected key was published", rk, s);
    }
}

static void expect_topic(tk_consumer_t *c, const int *keys, const expect_t *exp, int timeout_ms) {
    expect_topic_ex(c, keys, exp, timeout_ms, 1);
}

/* ---- SQL -------------------------------------------------------------------------------------- */

/* The first cell of a query as text (caller frees); "" when there is no row. */
static char *sql_text(const char *sql) {
    PGresult *res = PQexec(tf_conn, sql);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(res));
    char *s = strdup(PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return s;
}

static void wait_count(const char *sql, long long want, int timeout_ms) {
    long long got = tk_wait_scalar(tf_conn, sql, want, timeout_ms);
    TF_CHECK(got == want, "%s: %lld after %d ms, expected %lld", sql, got, timeout_ms, want);
}

/* "decode('<hex>', 'hex')" of key k: its bytea in SQL. */
static const char *key_sql(int k) {
    static char bufs[4][96];
    static int next;
    if (k == LONG_KEY)
        return "convert_to(repeat('L', 1500), 'UTF8')"; /* its hex would not fit tf_q() */
    char key[32];
    size_t n = key_bytes(k, key, sizeof(key));
    char *out = bufs[next++ % 4];
    int w = snprintf(out, sizeof(bufs[0]), "decode('");
    for (size_t i = 0; i < n; i++)
        w += snprintf(out + w, sizeof(bufs[0]) - (size_t)w, "%02x", (unsigned char)key[i]);
    snprintf(out + w, sizeof(bufs[0]) - (size_t)w, "', 'hex')");
    return out;
}

static long long held_of(int k) {
    return tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages WHERE partition_key = %s", key_sql(k)));
}

/* Waits until key k is parked with `held` rows held, none of its rows left in messages, and
 * no request pending. */
static void wait_parked(int k, long long held, int timeout_ms) {
    wait_count(tf_q("SELECT count(*) FROM @.parked_messages WHERE partition_key = %s", key_sql(k)), held, timeout_ms);
    wait_count(tf_q("SELECT count(*) FROM @.parked_keys WHERE partition_key = %s AND request IS NULL", key_sql(k)), 1,
               timeout_ms);
    wait_count(tf_q("SELECT count(*) FROM @.messages WHERE partition_key = %s", key_sql(k)), 0, timeout_ms);
}

/* Checks key k's parked record: first_id, an error matching re, and that its held rows are
 * exactly the `held` rows with ids >= first_id that the test wrote. */
static void check_parked(int k, long long first_id, long long held, const char *re) {
    char *err = sql_text(tf_q("SELECT error FROM @.parked_keys WHERE partition_key = %s", key_sql(k)));
    TF_CHECK(tf_matches(err, re), "key %d parked with error '%s', expected /%s/", k, err, re);
    free(err);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT first_id FROM @.parked_keys WHERE partition_key = %s",
                                             key_sql(k))),
                     first_id);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT min(id) FROM @.parked_messages WHERE partition_key = %s",
                                             key_sql(k))),
                     first_id);
    ck_assert_int_eq(held_of(k), held);
}

static long long count_of(const char *table) {
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM @.%s", table);
    return tu_scalar(tf_conn, tf_q("%s", sql));
}

/* ---- the command line ------------------------------------------------------------------------- */

typedef struct {
    int rc;
    char *out, *err;
} cli_t;

/* Runs outbox-relay -X outbox.schema=<tf_schema> args... with the test server's conninfo. */
#define CLI(...) cli_run((const char *const[]){__VA_ARGS__, NULL})
static cli_t cli_run(const char *const *args) {
    char *sch, *prog = tk_build_path("outbox-relay");
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    const char *argv[32] = {prog, "-X", sch};
    size_t n = 3;
    for (; *args && n < 31; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1), 0);
    int timed_out;
    tk_proc_t *p = tk_proc_run("relay-cli", argv, 20000, &timed_out);
    unsetenv("OUTBOX_PG_CONNINFO");
    TF_CHECK(!timed_out, "outbox-relay %s did not exit within 20 s; stderr:\n%s", argv[3],
             tk_file_tail(p->err_path, 2000));
    cli_t c = {tf_exit_code(p), tk_read_file(p->out_path), tk_read_file(p->err_path)};
    tk_proc_free(p);
    free(sch);
    free(prog);
    return c;
}

static void cli_free(cli_t *c) {
    free(c->out);
    free(c->err);
}

/* Runs a verb that must exit 0. */
#define CLI_OK(...)                                                                                       \
    do {                                                                                                  \
        cli_t c_ = CLI(__VA_ARGS__);                                                                      \
        TF_CHECK(c_.rc == 0, "exit %d; stdout:\n%s\nstderr:\n%s", c_.rc, c_.out, c_.err);                 \
        cli_free(&c_);                                                                                    \
    } while (0)

/* Distinct PostgreSQL sessions of outbox-relay processes holding an advisory lock. */
static const char lock_holders_sql[] =
    "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND split_part(a.application_name, ' ', 1) = 'outbox-relay'";
static const char lock_holder_sql[] =
    "SELECT coalesce(min(l.pid), 0) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND split_part(a.application_name, ' ', 1) = 'outbox-relay'";

/* ---- 1. each local failure parks its key ------------------------------------------------------ */

START_TEST(test_local_failures_park_their_keys) {
    /* k0 oversize, k1 bad destination, k2 envelope that does not decode; k3, k4 are healthy. */
    static const int all[] = {0, 1, 2, 3, 4, -1}, healthy[] = {3, 4, -1};
    const char *topic = "p1.events";
    tf_start_broker("--topic", "p1.events:3", NULL);
    write_keys(topic, all, 0, 2);
    long long ids[3];
    ids[0] = insert_poison(topic, 0, 2, P_OVERSIZE, 0);
    ids[1] = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    ids[2] = insert_poison(topic, 2, 2, P_BAD_ENVELOPE, 0);
    write_keys(topic, healthy, 2, 3);
    write_keys(topic, all, 3, 6);
    tf_start_relay(NULL);

    for (int k = 0; k < 3; k++)
        wait_parked(k, 4, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    check_parked(0, ids[0], 4, "size|large");
    check_parked(1, ids[1], 4, "destination|topic");
    check_parked(2, ids[2], 4, "envelope");
    ck_assert_int_eq(count_of("parked_keys"), 3);
    ck_assert_int_eq(count_of("dead_letters"), 0);

    expect_t exp[NKEYS] = {0};
    for (int k = 0; k < 3; k++)
        exp_range(&exp[k], 0, 2);
    exp_range(&exp[3], 0, 6);
    exp_range(&exp[4], 0, 6);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);

    /* Rows of the parked keys claimed in later batches are held too; the rest flow. */
    write_keys(topic, all, 6, 8);
    for (int k = 0; k < 3; k++)
        wait_parked(k, 6, 30000);
    exp_range(&exp[3], 6, 8);
    exp_range(&exp[4], 6, 8);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("dead_letters"), 0);
    TF_CHECK(tk_proc_running(tf_procs[0]), "the relay exited: %s", tk_status_str(tf_procs[0]->status));
    tk_consumer_free(c);
}
END_TEST

/* ---- 2. a keyless poison row is dead-lettered -------------------------------------------------- */

START_TEST(test_keyless_poison_goes_to_dead_letters) {
    static const int all[] = {0, 1, -1};
    const char *topic = "p2.events";
    tf_start_broker("--topic", "p2.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long id = insert_poison(topic, 1, 99, P_BAD_DEST, 1);
    write_keys(topic, all, 2, 4);
    tf_start_relay(NULL);

    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 1, 5000);
    char *err = sql_text(tf_q("SELECT error FROM @.dead_letters WHERE id = %lld", id));
    TF_CHECK(tf_matches(err, "topic|destination"), "dead letter error '%s'", err);
    free(err);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 4);
    exp_range(&exp[1], 0, 4);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000); /* 1:99 would fail it */
    tk_consumer_free(c);
}
END_TEST

/* ---- 3. relay.poison.policy = dead-letter ---------------------------------------------------- */

START_TEST(test_dead_letter_policy_keeps_the_old_behaviour) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "p3.events";
    tf_start_broker("--topic", "p3.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long a = insert_poison(topic, 0, 99, P_OVERSIZE, 0);
    long long b = insert_poison(topic, 1, 99, P_BAD_DEST, 0);
    long long e = insert_poison(topic, 2, 99, P_BAD_ENVELOPE, 0);
    write_keys(topic, all, 2, 5);
    tf_start_relay("relay.poison.policy=dead-letter", NULL);

    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 3, 5000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id IN (%lld, %lld, %lld)",
                                             a, b, e)),
                     3);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    expect_t exp[NKEYS] = {0};
    for (int k = 0; k < 3; k++)
        exp_range(&exp[k], 0, 5);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    tk_consumer_free(c);
}
END_TEST

/* ---- 4. retry after a fix ----------------------------------------------------------------------- */

START_TEST(test_retry_after_fix_publishes_held_rows_in_order) {
    static const int all[] = {0, 1, 2, -1}, others[] = {0, 2, -1}, k1[] = {1, -1};
    const char *topic = "p4.events";
    tf_start_broker("--topic", "p4.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    write_keys(topic, others, 2, 3);
    write_keys(topic, all, 3, 6);
    tf_start_relay(NULL);
    wait_parked(1, 4, 30000);

    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 6);
    exp_range(&exp[2], 0, 6);
    exp_range(&exp[1], 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);

    /* Written while parked: held behind the others. */
    write_keys(topic, all, 6, 8);
    wait_parked(1, 6, 30000);
    exp_range(&exp[0], 6, 8);
    exp_range(&exp[2], 6, 8);
    expect_topic(c, all, exp, 30000);

    /* The operator fixes the destination and retries: the running leader carries it out. */
    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad));
    cli_t r = CLI("parked", "retry", "--key", "k1");
    TF_CHECK(r.rc == 0, "parked retry: exit %d\n%s%s", r.rc, r.out, r.err);
    TF_CHECK(tf_matches(r.out, "released 1 key"), "parked retry says:\n%s", r.out);
    cli_free(&r);
    exp_range(&exp[1], 2, 8);
    expect_topic(c, all, exp, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    ck_assert_int_eq(count_of("dead_letters"), 0);

    /* The key flows again. */
    write_keys(topic, k1, 8, 10);
    exp_range(&exp[1], 8, 10);
    expect_topic(c, all, exp, 30000);
    tk_consumer_free(c);
}
END_TEST

/* ---- 5. retry without a fix ---------------------------------------------------------------------- */

START_TEST(test_retry_without_fix_parks_again) {
    static const int all[] = {0, 1, -1}, others[] = {0, -1};
    const char *topic = "p5.events";
    tf_start_broker("--topic", "p5.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    write_keys(topic, others, 2, 3);
    write_keys(topic, all, 3, 5);
    tf_start_relay(NULL);
    wait_parked(1, 3, 30000);
    char *since = sql_text(tf_q("SELECT parked_at::text FROM @.parked_keys"));

    cli_t r = CLI("parked", "retry", "--key", "k1");
    TF_CHECK(r.rc == 0, "parked retry: exit %d\n%s%s", r.rc, r.out, r.err);
    cli_free(&r);
    /* Parked anew (a new parked_keys row), the same rows held, nothing dead-lettered. */
    wait_count(tf_q("SELECT count(*) FROM @.parked_keys WHERE parked_at::text <> '%s'", since), 1, 15000);
    wait_parked(1, 3, 15000);
    check_parked(1, bad, 3, "destination|topic");
    ck_assert_int_eq(count_of("dead_letters"), 0);

    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 5);
    exp_range(&exp[1], 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    free(since);
    tk_consumer_free(c);
}
END_TEST

/* ---- 6. drop ---------------------------------------------------------------------------------- */

START_TEST(test_drop_first_only_and_drop_all) {
    static const int all[] = {0, 1, 2, -1};
    const char *topic = "p6.events";
    tf_start_broker("--topic", "p6.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad1 = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    long long bad2 = insert_poison(topic, 2, 2, P_BAD_ENVELOPE, 0);
    static const int k0[] = {0, -1};
    write_keys(topic, k0, 2, 3);
    write_keys(topic, all, 3, 6);
    tf_start_relay(NULL);
    wait_parked(1, 4, 30000);
    wait_parked(2, 4, 30000);

    /* --first-only: the poison row to dead_letters, the rest published in order. */
    CLI_OK("parked", "drop", "--key", "k1", "--first-only");
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 6);
    exp_range(&exp[1], 0, 2);
    exp_range(&exp[1], 3, 6);
    exp_range(&exp[2], 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("dead_letters"), 1);
    char *err = sql_text(tf_q("SELECT error FROM @.dead_letters WHERE id = %lld", bad1));
    TF_CHECK(tf_matches(err, "destination|topic"), "dead letter of the dropped row: '%s'", err);
    free(err);
    ck_assert_int_eq(held_of(1), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys WHERE partition_key = %s",
                                             key_sql(1))),
                     0);

    /* --key-hex, all held rows: to dead_letters with their ids; the key flows again. */
    CLI_OK("parked", "drop", "--key-hex", "6B32");
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters WHERE partition_key = %s AND id >= %lld", key_sql(2), bad2),
               4, 5000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    err = sql_text(tf_q("SELECT error FROM @.dead_letters WHERE id = %lld", bad2));
    TF_CHECK(tf_matches(err, "envelope"), "dead letter of the poison row: '%s'", err);
    free(err);
    write_keys(topic, all, 6, 8);
    exp_range(&exp[0], 6, 8);
    exp_range(&exp[1], 6, 8);
    exp_range(&exp[2], 6, 8);
    expect_topic(c, all, exp, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    tk_consumer_free(c);
}
END_TEST

/* ---- 7. a key that is no text -------------------------------------------------------------------- */

START_TEST(test_binary_key_shown_as_hex_and_retried_by_hex) {
    static const int all[] = {0, BIN_KEY, -1}, others[] = {0, -1};
    const char *topic = "p7.events";
    tf_start_broker("--topic", "p7.events:2", NULL);
    write_keys(topic, all, 0, 1);
    long long bad = insert_poison(topic, BIN_KEY, 1, P_BAD_DEST, 0);
    write_keys(topic, others, 1, 2);
    write_keys(topic, all, 2, 4);
    tf_start_relay(NULL);
    wait_parked(BIN_KEY, 3, 30000);
    check_parked(BIN_KEY, bad, 3, "destination|topic");

    cli_t l = CLI("parked", "list");
    TF_CHECK(l.rc == 0 && tf_matches(l.out, "^hex:c32800ff6b +bad topic! +[0-9]+ +3 "),
             "parked list: exit %d:\n%s%s", l.rc, l.out, l.err);
    cli_free(&l);
    l = CLI("parked", "list", "--json");
    TF_CHECK(l.rc == 0 && tf_matches(l.out, "^\\[\\{\"key\":null,\"key_hex\":\"c32800ff6b\",\"destination\":\"bad topic!\","
                                            "\"first_id\":[0-9]+,\"held\":3,"),
             "parked list --json: exit %d:\n%s%s", l.rc, l.out, l.err);
    cli_free(&l);

    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad));
    CLI_OK("parked", "retry", "--key-hex", bin_key_hex);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 4);
    exp_range(&exp[BIN_KEY], 0, 4);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    tk_consumer_free(c);
}
END_TEST

/* ---- 8. restarts, and the verbs with no relay running ------------------------------------------- */

START_TEST(test_parked_keys_survive_restart_and_verbs_work_without_relay) {
    static const int all[] = {0, 1, 2, -1}, k0[] = {0, -1};
    const char *topic = "p8.events";
    tf_start_broker("--topic", "p8.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad1 = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    long long bad2 = insert_poison(topic, 2, 2, P_OVERSIZE, 0);
    write_keys(topic, k0, 2, 3);
    write_keys(topic, all, 3, 5);
    tk_proc_t *relay = tf_start_relay(NULL);
    wait_parked(1, 3, 30000);
    wait_parked(2, 3, 30000);

    /* SIGTERM; more rows of every key while no relay runs; a new relay still holds them. */
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 15000), "the relay did not exit within 15 s of SIGTERM");
    TF_CHECK(tf_exit_code(relay) == 0, "the relay exited with %s after SIGTERM", tk_status_str(relay->status));
    write_keys(topic, all, 5, 7);
    relay = tf_start_relay(NULL);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 7);
    exp_range(&exp[1], 0, 2);
    exp_range(&exp[2], 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    wait_parked(1, 5, 30000);
    wait_parked(2, 5, 30000);
    check_parked(1, bad1, 5, "destination|topic");
    check_parked(2, bad2, 5, "size|large");

    /* SIGKILL: no relay leads.  retry and drop carry their requests out themselves. */
    tk_proc_signal(relay, SIGKILL);
    ck_assert(tk_proc_wait(relay, 5000));
    wait_count(lock_holders_sql, 0, 10000);
    write_keys(topic, all, 7, 8);
    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad1));
    cli_t r = CLI("parked", "retry", "--key", "k1");
    TF_CHECK(r.rc == 0 && tf_matches(r.out, "no relay leads"), "parked retry with no relay: exit %d\n%s%s", r.rc,
             r.out, r.err);
    cli_free(&r);
    r = CLI("parked", "drop", "--key", "k2", "--first-only");
    TF_CHECK(r.rc == 0 && tf_matches(r.out, "no relay leads"), "parked drop with no relay: exit %d\n%s%s", r.rc, r.out,
             r.err);
    cli_free(&r);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    /* Back in messages under their ids: k1 from the fixed row, k2 after the dropped one; plus 7. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages WHERE partition_key = %s AND id >= %lld",
                                             key_sql(1), bad1)),
                     6);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages WHERE partition_key = %s AND id > %lld",
                                             key_sql(2), bad2)),
                     5);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id = %lld", bad2)), 1);

    tf_start_relay(NULL);
    exp_range(&exp[0], 7, 8);
    exp_range(&exp[1], 2, 8);
    exp_range(&exp[2], 3, 8);
    expect_topic(c, all, exp, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);
    ck_assert_int_eq(count_of("dead_letters"), 1);
    tk_consumer_free(c);
}
END_TEST

/* ---- 9. a permanent broker error -------------------------------------------------------------- */

START_TEST(test_permanent_broker_error_parks_the_key) {
    static const int all[] = {0, 1, 2, -1}, k1[] = {1, -1}, others[] = {0, 2, -1};
    const char *topic = "p9.events";
    tf_start_broker("--topic", "p9.events:2", NULL);
    /* One row, so the one failed Produce request holds nothing else. */
    write_keys(topic, k1, 0, 1);
    tk_broker_cmd(tf_broker, "produce-errors 1 INVALID_RECORD");
    tf_start_relay(NULL);
    wait_parked(1, 1, 30000);
    char *err = sql_text(tf_q("SELECT error FROM @.parked_keys"));
    TF_CHECK(tf_matches(err, "INVALID_RECORD"), "parked with error '%s'", err);
    free(err);

    write_keys(topic, others, 0, 1);
    write_keys(topic, all, 1, 4);
    wait_parked(1, 4, 30000);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 4);
    exp_range(&exp[2], 0, 4);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);

    /* The broker accepts it now: a retry publishes the key's rows in order. */
    CLI_OK("parked", "retry", "--all");
    exp_range(&exp[1], 0, 4);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    ck_assert_int_eq(count_of("dead_letters"), 0);
    tk_consumer_free(c);
}
END_TEST

/* ---- 10. list, status, metrics, readiness ------------------------------------------------------- */

START_TEST(test_list_status_metrics_and_readiness) {
    static const int all[] = {0, 1, -1}, k0[] = {0, -1};
    const char *topic = "p10.events";
    tf_start_broker("--topic", "p10.events:2", NULL);
    write_keys(topic, all, 0, 1);
    long long bad = insert_poison(topic, 1, 1, P_BAD_DEST, 0);
    write_keys(topic, k0, 1, 2);
    write_keys(topic, all, 2, 5);
    int port = tn_free_port();
    char *listen;
    ck_assert(asprintf(&listen, "metrics.listen=127.0.0.1:%d", port) > 0);
    tf_start_relay(listen, NULL);
    wait_parked(1, 4, 30000);
    char want[256];

    cli_t l = CLI("parked", "list");
    snprintf(want, sizeof(want), "^k1 +bad topic! +%lld +4 +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +.*topic", bad);
    TF_CHECK(l.rc == 0 && tf_matches(l.out, "^KEY +DESTINATION +FIRST_ID +HELD +SINCE +ERROR$") &&
                 tf_matches(l.out, want) && tf_matches(l.out, "^1 parked key$"),
             "parked list: exit %d:\n%s%s", l.rc, l.out, l.err);
    cli_free(&l);
    l = CLI("parked", "list", "--json");
    snprintf(want, sizeof(want),
             "^\\[\\{\"key\":\"k1\",\"key_hex\":\"6b31\",\"destination\":\"bad topic!\",\"first_id\":%lld,"
             "\"held\":4,\"error\":\".*topic.*\",\"since\":\"[0-9T:Z-]+\",\"request\":null\\}\\]$",
             bad);
    TF_CHECK(l.rc == 0 && tf_matches(l.out, want), "parked list --json: exit %d:\n%s%s", l.rc, l.out, l.err);
    cli_free(&l);
    l = CLI("status");
    snprintf(want, sizeof(want), "^parked_key: +key=\"k1\" destination=bad topic! first_id=%lld held=4 ", bad);
    TF_CHECK(l.rc == 0 && tf_matches(l.out, "^parked_keys: +1$") && tf_matches(l.out, want),
             "status: exit %d:\n%s%s", l.rc, l.out, l.err);
    cli_free(&l);
    l = CLI("status", "--json");
    snprintf(want, sizeof(want), "\"parked_keys\":\\[\\{\"key\":\"k1\",\"key_hex\":\"6b31\",[^]]*\"first_id\":%lld,"
             "\"held\":4,", bad);
    TF_CHECK(l.rc == 0 && tf_matches(l.out, "^\\{.*\\}$") && tf_matches(l.out, want), "status --json: exit %d:\n%s%s",
             l.rc, l.out, l.err);
    cli_free(&l);

    /* The gauges are read every second; the age grows past 0 within a few. */
    char *text = NULL;
    double keys = -1, msgs = -1, age = -1, over = -1;
    int64_t deadline = tk_now_ms() + 10000;
    for (;;) {
        free(text);
        text = NULL;
        int st = tn_http_get(port, "/metrics", &text);
        if (st == 200 && tn_metric(text, "outbox_relay_parked_keys", &keys) && keys == 1 &&
            tn_metric(text, "outbox_relay_parked_messages", &msgs) && msgs == 4 &&
            tn_metric(text, "outbox_relay_parked_oldest_age_seconds", &age) && age >= 1 &&
            tn_metric(text, "outbox_relay_parked_overtaken_total", &over))
            break;
        TF_CHECK(tk_now_ms() < deadline, "/metrics (%d) does not show 1 parked key, 4 held messages and an age "
                 "within 10 s:\n%s", st, text ? text : "");
        tk_sleep_ms(200);
    }
    TF_CHECK(over == 0, "outbox_relay_parked_overtaken_total %g with no broker failure", over);
    TF_CHECK(age < 120, "outbox_relay_parked_oldest_age_seconds %g for a key parked moments ago", age);
    free(text);
    char *body = NULL;
    int st = tn_http_get(port, "/readyz", &body);
    TF_CHECK(st == 200, "/readyz answered %d while a key is parked: %s", st, body ? body : "");
    free(body);

    /* After a release the gauges go back to 0. */
    CLI_OK("parked", "drop", "--key", "k1");
    deadline = tk_now_ms() + 10000;
    for (;;) {
        text = NULL;
        st = tn_http_get(port, "/metrics", &text);
        if (st == 200 && tn_metric(text, "outbox_relay_parked_keys", &keys) && keys == 0 &&
            tn_metric(text, "outbox_relay_parked_messages", &msgs) && msgs == 0)
            break;
        TF_CHECK(tk_now_ms() < deadline, "/metrics still shows parked keys 10 s after the drop:\n%s",
                 text ? text : "");
        free(text);
        tk_sleep_ms(200);
    }
    free(text);
    ck_assert_int_eq(count_of("dead_letters"), 4);
    free(listen);
}
END_TEST

/* ---- 11. bad arguments --------------------------------------------------------------------------- */

START_TEST(test_bad_arguments) {
    static const struct {
        const char *args[8];
        const char *names; /* a regular expression the message must match */
    } cases[] = {
        {{"parked", NULL}, "expected: parked list"},
        {{"parked", "frob", NULL}, "\"frob\""},
        {{"parked", "retry", NULL}, "exactly one of --key"},
        {{"parked", "retry", "--key", "k1", "--all", NULL}, "exactly one of --key K, --key-hex H, --all"},
        {{"parked", "retry", "--key", "k1", "--key-hex", "6b31", NULL}, "exactly one of --key"},
        {{"parked", "retry", "--key-hex", "abc", NULL}, "--key-hex \"abc\""},
        {{"parked", "retry", "--key-hex", "zz", NULL}, "--key-hex \"zz\""},
        {{"parked", "drop", "--all", NULL}, "\"--all\""},
        {{"parked", "drop", "--key", NULL}, "\"--key\""},
        {{"parked", "list", "--key", "k1", NULL}, "\"--key\""},
        {{"parked", "retry", "--key", "k1", "--first-only", NULL}, "\"--first-only\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *const *a = cases[i].args;
        cli_t c = cli_run(a);
        TF_CHECK(c.rc == 2, "outbox-relay %s %s %s: exit %d, expected 2\n%s", a[0], a[1] ? a[1] : "",
                 a[1] && a[2] ? a[2] : "", c.rc, c.err);
        TF_CHECK(tf_matches(c.err, cases[i].names), "case %zu: the message does not match /%s/:\n%s", i,
                 cases[i].names, c.err);
        cli_free(&c);
    }
    /* Well-formed but nothing to do: a key that is not parked is a failure, naming the key. */
    cli_t c = CLI("parked", "retry", "--key", "nope");
    TF_CHECK(c.rc == 1 && tf_matches(c.err, "key nope is not parked"), "retry of a key not parked: exit %d\n%s",
             c.rc, c.err);
    cli_free(&c);
    c = CLI("parked", "drop", "--key-hex", "00ff");
    TF_CHECK(c.rc == 1 && tf_matches(c.err, "00ff is not parked"), "drop of a key not parked: exit %d\n%s", c.rc,
             c.err);
    cli_free(&c);
    c = CLI("parked", "retry", "--all");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "no parked key"), "retry --all with none parked: exit %d\n%s%s", c.rc,
             c.out, c.err);
    cli_free(&c);
    c = CLI("parked", "list");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^0 parked keys$"), "list with none parked: exit %d\n%s%s", c.rc, c.out,
             c.err);
    cli_free(&c);
    c = CLI("parked", "list", "--json");
    TF_CHECK(c.rc == 0 && !strcmp(c.out, "[]\n"), "list --json with none parked: exit %d\n%s%s", c.rc, c.out, c.err);
    cli_free(&c);
}
END_TEST

/* ---- 12. leadership ----------------------------------------------------------------------------- */

START_TEST(test_standby_takes_over_the_parked_key) {
    static const int all[] = {0, 1, -1}, k0[] = {0, -1};
    const char *topic = "p12.events";
    tf_start_broker("--topic", "p12.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    write_keys(topic, k0, 2, 3);
    write_keys(topic, all, 3, 5);
    tk_proc_t *leader = tf_start_relay(NULL);
    wait_parked(1, 3, 30000);
    wait_count(lock_holders_sql, 1, 10000);
    long long old_backend = tu_scalar(tf_conn, lock_holder_sql);
    tf_start_relay(NULL);
    tk_sleep_ms(1000); /* let the standby try the lock; the assertion is on rows below */
    ck_assert_int_eq(tu_scalar(tf_conn, lock_holder_sql), old_backend);

    tk_proc_signal(leader, SIGKILL);
    ck_assert(tk_proc_wait(leader, 5000));
    /* The standby leads, still holds the key, and publishes the others. */
    write_keys(topic, all, 5, 7);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 7);
    exp_range(&exp[1], 0, 2);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    wait_parked(1, 5, 30000);
    wait_count(lock_holders_sql, 1, 10000);
    TF_CHECK(tu_scalar(tf_conn, lock_holder_sql) != old_backend, "the lock holder did not change");

    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad));
    cli_t r = CLI("parked", "retry", "--key", "k1");
    TF_CHECK(r.rc == 0 && tf_matches(r.out, "the relay released 1 key"), "retry: exit %d\n%s%s", r.rc, r.out, r.err);
    cli_free(&r);
    exp_range(&exp[1], 2, 7);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("parked_messages"), 0);
    tk_consumer_free(c);
}
END_TEST


/* ---- 13. a broker error with later rows of the key in flight ------------------------------------ */

/* The number of records of key k read so far (duplicates count). */
static int records_of(tk_consumer_t *c, int k, int min_seq) {
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int cnt = 0;
    for (size_t i = 0; i < n; i++) {
        int rk, s;
        record_seq(&recs[i], &rk, &s);
        cnt += rk == k && s >= min_seq;
    }
    return cnt;
}

static double metric_now(int port, const char *name) {
    char *text = NULL;
    double v = -1;
    int st = tn_http_get(port, "/metrics", &text);
    TF_CHECK(st == 200 && tn_metric(text, name, &v), "/metrics (%d) has no %s:\n%s", st, name, text ? text : "");
    free(text);
    return v;
}

START_TEST(test_broker_error_with_rows_in_flight) {
    enum { PER_KEY = 20 };
    static const int all[] = {1, 0, -1};
    const char *topic = "p13.events";
    tf_start_broker("--topic", "p13.events:1", NULL);
    write_keys(topic, all, 0, PER_KEY);
    tk_broker_cmd(tf_broker, "produce-errors 1 INVALID_RECORD");
    int port = tn_free_port();
    char *listen;
    ck_assert(asprintf(&listen, "metrics.listen=127.0.0.1:%d", port) > 0);
    /* One record per Produce request, several requests in flight: k1:0 fails alone. */
    tf_start_relay(listen, "kafka.batch.num.messages=1", "kafka.linger.ms=0", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.parked_keys WHERE partition_key = %s", key_sql(1)), 1, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    char *err = sql_text(tf_q("SELECT error FROM @.parked_keys"));
    TF_CHECK(tf_matches(err, "INVALID_RECORD"), "parked with error '%s'", err);
    free(err);
    ck_assert_int_eq(count_of("parked_keys"), 1);

    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, PER_KEY);
    static const int k0[] = {0, -1};
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic_ex(c, k0, exp, 30000, 0);
    int overtaken = records_of(c, 1, 1);
    long long held = held_of(1);
    TF_CHECK(records_of(c, 1, 0) == overtaken, "k1:0, the failed row, was published");
    TF_CHECK(overtaken + held == PER_KEY, "%d rows of k1 published ahead, %lld held, of %d", overtaken, held, PER_KEY);
    /* The counter says how many went ahead of the failed row. */
    int64_t deadline = tk_now_ms() + 5000;
    double m;
    while ((m = metric_now(port, "outbox_relay_parked_overtaken_total")) != overtaken && tk_now_ms() < deadline)
        tk_sleep_ms(200);
    TF_CHECK(m == overtaken, "outbox_relay_parked_overtaken_total %g, but %d rows of k1 were published after k1:0 "
             "failed", m, overtaken);

    /* After a retry every row of k1 is on the topic. */
    CLI_OK("parked", "retry", "--key", "k1");
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    deadline = tk_now_ms() + 30000;
    for (;;) {
        size_t n;
        tk_consumer_records(c, &n);
        tk_consumer_poll(c, n + 1, tk_now_ms() + 300);
        int seen[PER_KEY] = {0}, distinct = 0;
        const tk_record_t *recs = tk_consumer_records(c, &n);
        for (size_t i = 0; i < n; i++) {
            int rk, s;
            record_seq(&recs[i], &rk, &s);
            if (rk == 1 && !seen[s]++)
                distinct++;
        }
        if (distinct == PER_KEY)
            break;
        TF_CHECK(tk_now_ms() < deadline, "%d of %d rows of k1 on the topic 30 s after the retry", distinct, PER_KEY);
    }
    free(listen);
    tk_consumer_free(c);
}
END_TEST

/* ---- 14. a second poison row behind the first --------------------------------------------------- */

START_TEST(test_retry_parks_again_at_the_next_poison_row) {
    static const int all[] = {0, 1, -1}, k0[] = {0, -1};
    const char *topic = "p14.events";
    tf_start_broker("--topic", "p14.events:2", NULL);
    write_keys(topic, all, 0, 2);
    long long bad = insert_poison(topic, 1, 2, P_BAD_DEST, 0);
    write_keys(topic, k0, 2, 3);
    write_keys(topic, all, 3, 5);
    long long bad2 = insert_poison(topic, 1, 5, P_BAD_ENVELOPE, 0);
    write_keys(topic, k0, 5, 6);
    write_keys(topic, all, 6, 8);
    tf_start_relay(NULL);
    wait_parked(1, 6, 30000);
    check_parked(1, bad, 6, "destination|topic");

    /* The first is fixed: it and the rows up to the second poison row go out, in order; the key
     * parks again at the second, which names the new error. */
    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad));
    CLI_OK("parked", "retry", "--key", "k1");
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 8);
    exp_range(&exp[1], 0, 5);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);
    wait_parked(1, 3, 30000);
    check_parked(1, bad2, 3, "envelope");

    CLI_OK("parked", "drop", "--key", "k1", "--first-only");
    exp_range(&exp[1], 6, 8);
    expect_topic(c, all, exp, 30000);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(count_of("dead_letters"), 1);
    tk_consumer_free(c);
}
END_TEST

/* ---- 15. a key longer than a kilobyte ---------------------------------------------------------- */

START_TEST(test_long_key_can_be_retried_and_dropped) {
    static const int all[] = {0, LONG_KEY, -1}, k0[] = {0, -1};
    const char *topic = "p15.events";
    tf_start_broker("--topic", "p15.events:2", NULL);
    write_keys(topic, all, 0, 1);
    long long bad = insert_poison(topic, LONG_KEY, 1, P_BAD_DEST, 0);
    write_keys(topic, k0, 1, 2);
    write_keys(topic, all, 2, 3);
    tf_start_relay(NULL);
    wait_parked(LONG_KEY, 2, 30000);

    char key[LONG_KEY_LEN + 1], hex[2 * LONG_KEY_LEN + 1];
    key_bytes(LONG_KEY, key, sizeof(key));
    key[LONG_KEY_LEN] = '\0';
    for (int i = 0; i < LONG_KEY_LEN; i++)
        sprintf(hex + 2 * i, "%02x", (unsigned char)key[i]);
    cli_t l = CLI("parked", "list", "--json");
    TF_CHECK(l.rc == 0 && strstr(l.out, hex), "parked list --json has not the key's hex: exit %d\n%.300s", l.rc, l.out);
    cli_free(&l);

    tu_exec(tf_conn, tf_q("UPDATE @.parked_messages SET destination = '%s' WHERE id = %lld", topic, bad));
    CLI_OK("parked", "retry", "--key", key);
    expect_t exp[NKEYS] = {0};
    exp_range(&exp[0], 0, 3);
    exp_range(&exp[LONG_KEY], 0, 3);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    expect_topic(c, all, exp, 30000);

    long long bad2 = insert_poison(topic, LONG_KEY, 3, P_BAD_DEST, 0);
    write_keys(topic, all, 4, 5);
    wait_parked(LONG_KEY, 2, 30000);
    CLI_OK("parked", "drop", "--key-hex", hex);
    ck_assert_int_eq(count_of("parked_keys"), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id >= %lld", bad2)), 2);
    tk_consumer_free(c);
}
END_TEST

static Suite *park_suite(void) {
    Suite *s = suite_create("park");
    TCase *tc = tcase_create("park");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 150);
    tcase_add_test(tc, test_local_failures_park_their_keys);
    tcase_add_test(tc, test_keyless_poison_goes_to_dead_letters);
    tcase_add_test(tc, test_dead_letter_policy_keeps_the_old_behaviour);
    tcase_add_test(tc, test_permanent_broker_error_parks_the_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("release");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 150);
    tcase_add_test(tc, test_retry_after_fix_publishes_held_rows_in_order);
    tcase_add_test(tc, test_retry_without_fix_parks_again);
    tcase_add_test(tc, test_drop_first_only_and_drop_all);
    tcase_add_test(tc, test_binary_key_shown_as_hex_and_retried_by_hex);
    tcase_add_test(tc, test_parked_keys_survive_restart_and_verbs_work_without_relay);
    tcase_add_test(tc, test_standby_takes_over_the_parked_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("edges");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_retry_parks_again_at_the_next_poison_row);
    tcase_add_test(tc, test_long_key_can_be_retried_and_dropped);
    suite_add_tcase(s, tc);

    tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_list_status_metrics_and_readiness);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);

    tc = tcase_create("inflight");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_broker_error_with_rows_in_flight);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(park_suite());
}
