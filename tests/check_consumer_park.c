/*
 * Consumer-side parking (consumer.reject.policy=park-key) against the throwaway PostgreSQL and the
 * mock Kafka broker: a rejected message parks its key, later messages of the key wait in order,
 * other keys flow, and a release (API or `outbox-relay consumer-parked`) or a drop lets them go.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_fixture.h"

static tk_producer_t *producer;

static void setup(void) {
    tf_setup("t_cpark");
    setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1); /* for the outbox-relay verbs */
    tu_exec(tf_conn, tf_q("CREATE TABLE @.effects (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                          "message_id text NOT NULL, k text, payload text NOT NULL)"));
}

static void teardown(void) {
    tk_producer_free(producer);
    producer = NULL;
    tf_teardown(NULL);
}

static void start_broker(const char *topic_spec) {
    tf_start_broker("--topic", topic_spec, NULL);
    producer = tk_producer_new(tf_broker->bootstrap);
}

/* ---- the handler ------------------------------------------------------------------------------ */

/* Payload "ok N": the effect (id, key, payload) and OK.  "bad N": REJECT, unless accept_bad is set
 * (the operator fixed the cause), then as "ok".  "retry N": RETRY the first time, then as "ok". */
typedef struct {
    int accept_bad;
    int calls;
    int retried;
} hctx_t;

static outbox_handler_result_t handler(const outbox_message_t *msg, PGconn *conn, void *opaque) {
    hctx_t *h = opaque;
    h->calls++;
    size_t len, klen;
    const char *payload = outbox_message_payload(msg, &len);
    const char *key = outbox_message_key(msg, &klen);
    char text[128], k[64];
    snprintf(text, sizeof(text), "%.*s", (int)(len < 127 ? len : 127), payload);
    snprintf(k, sizeof(k), "%.*s", (int)(klen < 63 ? klen : 63), key ? key : "");
    for (char *q = k; *q; q++) /* a binary key, as text the effects table can hold */
        if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
            *q = '?';
    if (!strncmp(text, "bad", 3) && !h->accept_bad)
        return OUTBOX_HANDLER_REJECT;
    if (!strncmp(text, "retry", 5) && !h->retried++)
        return OUTBOX_HANDLER_RETRY;
    const char *p[3] = {outbox_message_id(msg), k, text};
    char sql[256]; /* not tf_q(): its rotating buffers hold the caller's query while we run */
    snprintf(sql, sizeof(sql), "INSERT INTO \"%s\".effects (message_id, k, payload) VALUES ($1, $2, $3)", tf_schema);
    PGresult *res = PQexecParams(conn, sql, 3, NULL, p, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_RETRY;
}

/* An in-process consumer of topic for group with consumer.reject.policy=policy. */
static outbox_consumer_t *consumer(const char *group, const char *topic, const char *policy) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    const char *kv[] = {"outbox.schema", tf_schema, "pg.conninfo", getenv("OUTBOX_TEST_PG"), "consumer.group.id", group,
                        "kafka.bootstrap.servers", tf_broker->bootstrap, "kafka.fetch.wait.max.ms", "50",
                        "kafka.session.timeout.ms", "6000", "kafka.heartbeat.interval.ms", "300", "log.level", "4",
                        "consumer.retry.backoff.ms", "100", "consumer.reject.policy", policy, NULL};
    for (const char *const *p = kv; *p; p += 2)
        ck_assert_msg(outbox_conf_set(conf, p[0], p[1], err, sizeof(err)) == OUTBOX_CONF_OK, "%s", err);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ck_assert_msg(c != NULL, "outbox_consumer_new: %s", err);
    const char *topics[] = {topic};
    ck_assert_msg(outbox_consumer_subscribe(c, topics, 1) == OUTBOX_OK, "subscribe: %s", outbox_consumer_errmsg(c));
    return c;
}

/* Polls c until the one-integer query sql returns want (30 s at most); returns the last value. */
static long long poll_until(outbox_consumer_t *c, hctx_t *h, const char *sql, long long want) {
    long long v = -1;
    int64_t deadline = tk_now_ms() + 30000;
    while ((v = tu_scalar(tf_conn, sql)) != want && tk_now_ms() < deadline)
        ck_assert_msg(outbox_consumer_poll(c, handler, h, 100) == OUTBOX_OK, "poll: %s", outbox_consumer_errmsg(c));
    return v;
}

/* Polls c for about ms, for tests that check nothing more happens. */
static void poll_for(outbox_consumer_t *c, hctx_t *h, int ms) {
    int64_t deadline = tk_now_ms() + ms;
    while (tk_now_ms() < deadline)
        ck_assert_msg(outbox_consumer_poll(c, handler, h, 100) == OUTBOX_OK, "poll: %s", outbox_consumer_errmsg(c));
}

/* ---- producing ---------------------------------------------------------------------------------- */

typedef struct {
    char id[37];
    void *env;
    size_t env_len;
    int64_t offset;
    int32_t partition;
} sent_t;

static void produce(sent_t *s, const char *topic, const char *key, const char *payload) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "test.Park");
    ck_assert_ptr_nonnull(m);
    if (key)
        ck_assert_int_eq(outbox_message_set_key(m, key, strlen(key)), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, payload, strlen(payload)), OUTBOX_OK);
    memset(s, 0, sizeof(*s));
    snprintf(s->id, sizeof(s->id), "%s", outbox_message_id(m));
    ck_assert_int_eq(outbox_message_encode(m, &s->env, &s->env_len), OUTBOX_OK);
    s->offset = s->partition = -1;
    tk_produce(producer, topic, 0, key, key ? strlen(key) : 0, s->env, s->env_len, s->id, &s->offset, &s->partition);
    outbox_message_destroy(m);
}

/* The same envelope again (a duplicate delivery), at a new offset. */
static void produce_again(sent_t *dup, const sent_t *s, const char *topic, const char *key) {
    *dup = *s;
    dup->env = malloc(s->env_len);
    memcpy(dup->env, s->env, s->env_len);
    tk_produce(producer, topic, 0, key, strlen(key), dup->env, dup->env_len, dup->id, &dup->offset, &dup->partition);
}

static void produce_raw(sent_t *s, const char *topic, const char *key, const char *bytes) {
    memset(s, 0, sizeof(*s));
    s->env = strdup(bytes);
    s->env_len = strlen(bytes);
    s->offset = s->partition = -1;
    tk_produce(producer, topic, 0, key, key ? strlen(key) : 0, s->env, s->env_len, NULL, &s->offset, &s->partition);
}

static void flush(void) {
    tk_producer_flush(producer, 15000);
}

static void free_sent(sent_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(s[i].env);
}

/* ---- reading back ------------------------------------------------------------------------------ */

/* The payloads of key k's effects in commit order, space-separated. */
static char *effects_of(const char *k) {
    const char *p[1] = {k};
    PGresult *res = PQexecParams(tf_conn, tf_q("SELECT coalesce(string_agg(payload, ',' ORDER BY seq), '') "
                                               "FROM @.effects WHERE k = $1"), 1, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    char *out = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return out;
}

/* The held offsets of group's key k in offset order, with the reason of each ("-" for none). */
static char *parked_rows(const char *group, const char *k) {
    const char *p[2] = {group, k};
    PGresult *res = PQexecParams(tf_conn, tf_q("SELECT coalesce(string_agg(kafka_offset || ':' || coalesce(reason, '-'), "
                                               "',' ORDER BY kafka_offset), '') FROM @.consumer_parked "
                                               "WHERE consumer = $1 AND kafka_key = convert_to($2, 'UTF8')"),
                                 2, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    char *out = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return out;
}

#define EXPECT_STR(got_expr, want)                                                                        \
    do {                                                                                                  \
        char *got_ = (got_expr);                                                                          \
        TF_CHECK(!strcmp(got_, want), "%s: got \"%s\", want \"%s\"", #got_expr, got_, want);              \
        free(got_);                                                                                       \
    } while (0)

/* ---- 1. a rejected message parks its key; the key's later messages wait; other keys flow -------- */

START_TEST(test_reject_parks_key_holds_later_others_flow_then_api_retry_in_order) {
    start_broker("p1.events:1");
    sent_t s[9];
    produce(&s[0], "p1.events", "k1", "ok 1");
    produce(&s[1], "p1.events", "k1", "bad 2");
    produce(&s[2], "p1.events", "k1", "ok 3");
    produce(&s[3], "p1.events", "k2", "ok 4");
    produce_again(&s[4], &s[2], "p1.events", "k1"); /* a duplicate of "ok 3": one effect in the end */
    produce(&s[5], "p1.events", "k1", "ok 5");
    produce(&s[6], "p1.events", "k2", "ok 6");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g1", "p1.events", "park-key");
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k2'"), 2), 2);
    /* s[4], a duplicate of s[2], is held behind it when a later batch reads it; read in the same
     * batch, the batch's dedup already skips it.  Either way s[2]'s retry applies the effect once. */
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked WHERE kafka_offset <> %lld", (long long)s[4].offset),
               3);
    EXPECT_STR(effects_of("k1"), "ok 1");
    EXPECT_STR(effects_of("k2"), "ok 4,ok 6");
    char want[256], want_batched[256];
    snprintf(want, sizeof(want), "%lld:rejected by the handler,%lld:-,%lld:-,%lld:-", (long long)s[1].offset,
             (long long)s[2].offset, (long long)s[4].offset, (long long)s[5].offset);
    snprintf(want_batched, sizeof(want_batched), "%lld:rejected by the handler,%lld:-,%lld:-", (long long)s[1].offset,
             (long long)s[2].offset, (long long)s[5].offset);
    char *rows = parked_rows("g1", "k1");
    TF_CHECK(!strcmp(rows, want) || !strcmp(rows, want_batched), "parked rows of k1: got \"%s\", want \"%s\" or "
             "\"%s\"", rows, want, want_batched);
    free(rows);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters")), 0);
    /* The poison is not marked processed: a retry must run it. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE message_id = '%s'", s[1].id)), 0);
    outbox_consumer_stats_t st;
    outbox_consumer_stats(c, &st);
    ck_assert_int_eq(st.rejected, 1);
    /* Nothing is released by itself. */
    poll_for(c, &h, 1500);
    EXPECT_STR(effects_of("k1"), "ok 1");

    /* The cause is fixed; the API releases the key: the held messages go through in order, the
     * duplicate is skipped, and the key flows again afterwards. */
    h.accept_bad = 1;
    ck_assert_msg(outbox_consumer_parked_retry(c, "k1", 2) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 0), 0);
    produce(&s[7], "p1.events", "k1", "ok 7");
    flush();
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k1'"), 5), 5);
    EXPECT_STR(effects_of("k1"), "ok 1,bad 2,ok 3,ok 5,ok 7");
    outbox_consumer_stats(c, &st);
    ck_assert_int_eq(st.duplicates, 1);
    outbox_consumer_destroy(c);
    /* Every offset was committed, the held ones included. */
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "g1", "p1.events", 0), s[7].offset + 1);
    free_sent(s, 8);
}
END_TEST

/* ---- 2. rejected again on retry: the key stays parked, with the new reason ---------------------- */

START_TEST(test_rejected_again_stays_parked_with_new_reason) {
    start_broker("p2.events:1");
    sent_t s[3];
    produce(&s[0], "p2.events", "k1", "bad 1");
    produce(&s[1], "p2.events", "k1", "ok 2");
    produce(&s[2], "p2.events", "k2", "ok 3");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g2", "p2.events", "park-key");
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k2'"), 1);
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 2);
    tu_exec(tf_conn, tf_q("UPDATE @.consumer_parked SET reason = 'an older reason' WHERE reason IS NOT NULL"));
    int calls = h.calls;
    ck_assert_msg(outbox_consumer_parked_retry(c, "k1", 2) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    /* The retry runs the handler once more on the poison, which rejects it again. */
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked WHERE reason = 'rejected by the handler' "
                           "AND NOT released"), 1);
    poll_for(c, &h, 1500);
    ck_assert_int_eq(h.calls, calls + 1);
    char want[128];
    snprintf(want, sizeof(want), "%lld:rejected by the handler,%lld:-", (long long)s[0].offset, (long long)s[1].offset);
    EXPECT_STR(parked_rows("g2", "k1"), want);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked WHERE released")), 0);
    EXPECT_STR(effects_of("k1"), "");
    outbox_consumer_destroy(c);
    free_sent(s, 3);
}
END_TEST

/* ---- 3. no key: dead-lettered as before; bytes that are no envelope park a keyed message ------- */

START_TEST(test_keyless_is_dead_lettered_and_undecodable_with_key_parks) {
    start_broker("p3.events:1");
    sent_t s[4];
    produce(&s[0], "p3.events", NULL, "bad 1");
    produce_raw(&s[1], "p3.events", "k1", "not an envelope");
    produce(&s[2], "p3.events", "k1", "ok 2");
    produce(&s[3], "p3.events", "k2", "ok 3");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g3", "p3.events", "park-key");
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k2'"), 1);
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 2);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'g3' "
                                             "AND message_id = '%s' AND kafka_offset = %lld", s[0].id,
                                             (long long)s[0].offset)), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked WHERE kafka_offset = %lld "
                                             "AND reason IS NOT NULL AND reason <> '' AND raw = 'not an envelope'",
                                             (long long)s[1].offset)), 1);
    /* The held message keeps the record's id header for the listing and a drop's dead letter. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked WHERE kafka_offset = %lld "
                                             "AND message_id = '%s'", (long long)s[2].offset, s[2].id)), 1);
    EXPECT_STR(effects_of("k1"), "");
    outbox_consumer_destroy(c);
    free_sent(s, 4);
}
END_TEST

/* ---- 4. the CLI: list, retry (noticed by the running consumer), drop, drop --first-only -------- */

START_TEST(test_cli_list_retry_and_drop) {
    start_broker("p4.events:1");
    sent_t s[8];
    produce(&s[0], "p4.events", "k1", "bad 1");
    produce(&s[1], "p4.events", "k1", "ok 2");
    produce(&s[2], "p4.events", "k2", "bad 3");
    produce(&s[3], "p4.events", "k2", "ok 4");
    produce(&s[4], "p4.events", "\xff\x01", "bad 5"); /* a key that is no text */
    produce(&s[5], "p4.events", "\xff\x01", "ok 6");
    produce(&s[6], "p4.events", "k4", "ok 7");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g4", "p4.events", "park-key");
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k4'"), 1);
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 6);
    char sch[128];
    snprintf(sch, sizeof(sch), "outbox.schema=%s", tf_schema);

    tk_proc_t *p = tf_relay_cli("-X", sch, "consumer-parked", "list", "--group", "g4", "--json", NULL);
    char *out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0, "list: %s\n%s", tk_status_str(p->status), tk_file_tail(p->err_path, 2000));
    char want[256];
    snprintf(want, sizeof(want), "\"topic\":\"p4.events\",\"partition\":0,\"key\":\"k1\",\"key_hex\":\"6b31\","
             "\"first_offset\":%lld,\"held\":2,\"reason\":\"rejected by the handler\"", (long long)s[0].offset);
    TF_CHECK(strstr(out, want), "list --json lacks %s:\n%s", want, out);
    TF_CHECK(strstr(out, "\"key\":null,\"key_hex\":\"ff01\""), "list --json shows the binary key wrongly:\n%s", out);
    TF_CHECK(strstr(out, "\"state\":\"parked\""), "list --json has no state:\n%s", out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("-X", sch, "consumer-parked", "list", "--group", "g4", NULL);
    out = tk_read_file(p->out_path);
    TF_CHECK(tf_matches(out, "^p4\\.events +0 +k1 +[0-9]+ +2 +[0-9T:Z-]+ +parked +rejected by the handler$") &&
             tf_matches(out, " hex:ff01 ") && strstr(out, "(3 parked keys of group g4)"), "list:\n%s", out);
    free(out);
    tk_proc_free(p);

    /* retry from the CLI: the running consumer notices and goes through k1 in order. */
    h.accept_bad = 1;
    p = tf_relay_cli("-X", sch, "consumer-parked", "retry", "--group", "g4", "--key", "k1", NULL);
    TF_CHECK(tf_exit_code(p) == 0, "retry: %s", tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k1'"), 2), 2);
    EXPECT_STR(effects_of("k1"), "bad 1,ok 2");

    /* drop --first-only: the poison becomes a dead letter, the rest goes through in order. */
    p = tf_relay_cli("-X", sch, "consumer-parked", "drop", "--group", "g4", "--key", "k2", "--first-only", NULL);
    TF_CHECK(tf_exit_code(p) == 0, "drop --first-only: %s", tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k2'"), 1), 1);
    EXPECT_STR(effects_of("k2"), "ok 4");
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'g4' "
                                             "AND message_id = '%s' AND reason = 'rejected by the handler'", s[2].id)),
                     1);

    /* drop (all of a binary key, by hex): both to dead letters, none handled; the key flows again. */
    p = tf_relay_cli("-X", sch, "consumer-parked", "drop", "--group", "g4", "--key-hex", "FF01", NULL);
    out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0 && strstr(out, "2 messages of 1 key"), "drop: %s\n%s", out,
             tk_file_tail(p->err_path, 2000));
    free(out);
    tk_proc_free(p);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE kafka_offset IN "
                                             "(%lld, %lld)", (long long)s[4].offset, (long long)s[5].offset)), 2);
    produce(&s[7], "p4.events", "\xff\x01", "ok 8");
    flush();
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE payload = 'ok 8'"), 1), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.effects WHERE payload IN ('bad 5', 'ok 6')")), 0);

    /* Errors a user can make. */
    p = tf_relay_cli("-X", sch, "consumer-parked", "retry", "--group", "g4", "--key", "nope", NULL);
    out = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 1 && strstr(out, "no parked key"), "retry of an unknown key: %s", out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("-X", sch, "consumer-parked", "drop", "--group", "g4", "--all", NULL);
    out = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 2 && strstr(out, "--yes"), "drop --all without --yes: %s", out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("-X", sch, "consumer-parked", "retry", "--key", "k1", NULL);
    out = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 2 && strstr(out, "--group"), "retry without --group: %s", out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("-X", sch, "consumer-parked", "drop", "--group", "g4", "--key-hex", "xyz", NULL);
    TF_CHECK(tf_exit_code(p) == 2, "a bad --key-hex was accepted");
    tk_proc_free(p);
    outbox_consumer_destroy(c);
    free_sent(s, 8);
}
END_TEST

/* ---- 5. a restarted consumer keeps the key parked; a handler RETRY during a retry keeps order --- */

START_TEST(test_restart_keeps_parking_and_retry_keeps_order) {
    start_broker("p5.events:1");
    sent_t s[6];
    produce(&s[0], "p5.events", "k1", "bad 1");
    produce(&s[1], "p5.events", "k1", "ok 2");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g5", "p5.events", "park-key");
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 2);
    outbox_consumer_destroy(c);

    /* A new member of the group reads the parked set from the table: k1's new message waits. */
    produce(&s[2], "p5.events", "k1", "retry 3");
    produce(&s[3], "p5.events", "k2", "ok 4");
    flush();
    c = consumer("g5", "p5.events", "park-key");
    poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k2'"), 1);
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.consumer_parked"), 3), 3);
    EXPECT_STR(effects_of("k1"), "");

    /* Released: "retry 3" asks for a retry once, and the key waits for it; k1's newer message,
     * produced meanwhile, still queues behind. */
    h.accept_bad = 1;
    ck_assert_int_eq(outbox_consumer_parked_retry(c, "k1", 2), OUTBOX_OK);
    produce(&s[4], "p5.events", "k1", "ok 5");
    flush();
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k1'"), 4), 4);
    EXPECT_STR(effects_of("k1"), "bad 1,ok 2,retry 3,ok 5");
    ck_assert_int_eq(h.retried, 2); /* the handler saw "retry 3" twice: refused once, then passed */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")), 0);
    /* Exactly once: one effect per message id. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM (SELECT message_id FROM @.effects GROUP BY "
                                             "message_id HAVING count(*) > 1) d")), 0);
    outbox_consumer_destroy(c);
    free_sent(s, 5);
}
END_TEST

/* ---- 6. configuration and the API's refusals ------------------------------------------------ */

START_TEST(test_policy_key_is_validated_and_dead_letter_is_the_default) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_ne(outbox_conf_set(conf, "consumer.reject.policy", "park", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_msg(strstr(err, "dead-letter|park-key"), "%s", err);
    char v[32];
    size_t n = sizeof(v);
    ck_assert_int_eq(outbox_conf_get(conf, "consumer.reject.policy", v, &n), OUTBOX_CONF_OK);
    ck_assert_str_eq(v, "dead-letter");
    outbox_conf_destroy(conf);

    /* Under dead-letter a reject is a dead letter and the key's next message is handled. */
    start_broker("p6.events:1");
    sent_t s[2];
    produce(&s[0], "p6.events", "k1", "bad 1");
    produce(&s[1], "p6.events", "k1", "ok 2");
    flush();
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g6", "p6.events", "dead-letter");
    ck_assert_int_eq(poll_until(c, &h, tf_q("SELECT count(*) FROM @.effects WHERE k = 'k1'"), 1), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters")), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")), 0);
    ck_assert_int_eq(outbox_consumer_parked_retry(c, "k1", 2), OUTBOX_ERR_INVALID_ARG);
    ck_assert_msg(strstr(outbox_consumer_errmsg(c), "park-key"), "%s", outbox_consumer_errmsg(c));
    ck_assert_int_eq(outbox_consumer_parked_retry(NULL, "k1", 2), OUTBOX_ERR_INVALID_ARG);
    outbox_consumer_destroy(c);
    free_sent(s, 2);
}
END_TEST

/* ---- 7. the roles `outbox-relay grants` prints may park, list, retry and drop ------------------ */

START_TEST(test_grants_cover_the_parked_table) {
    char sch[128];
    snprintf(sch, sizeof(sch), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", sch, "grants", "--relay", "r_x", "--consumer", "c_x", NULL);
    char *out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0, "grants: %s", tk_file_tail(p->err_path, 2000));
    char want[3][256];
    snprintf(want[0], sizeof(want[0]), "GRANT SELECT, INSERT, UPDATE, DELETE ON \"%s\".consumer_parked TO \"c_x\";",
             tf_schema);
    snprintf(want[1], sizeof(want[1]), "GRANT SELECT, UPDATE, DELETE ON \"%s\".consumer_parked TO \"r_x\";", tf_schema);
    snprintf(want[2], sizeof(want[2]), "GRANT SELECT, INSERT, DELETE ON \"%s\".consumer_dead_letters TO \"r_x\";",
             tf_schema);
    for (int i = 0; i < 3; i++)
        TF_CHECK(strstr(out, want[i]), "grants lack %s:\n%s", want[i], out);
    free(out);
    tk_proc_free(p);
}
END_TEST

/* ---- 8. a consumer killed in the middle of a retry: the rest goes through once each, in order -- */

/* Starts build/test-consumer on this test's schema with park-key. */
static tk_proc_t *start_test_consumer(const char *name, const char *group, const char *topic) {
    char *prog = tk_build_path("test-consumer");
    const char *argv[] = {prog, "--bootstrap", tf_broker->bootstrap, "--conninfo", getenv("OUTBOX_TEST_PG"),
                          "--schema", tf_schema, "--group", group, "--topic", topic,
                          "-X", "kafka.session.timeout.ms=3000", "-X", "kafka.heartbeat.interval.ms=300",
                          "-X", "kafka.fetch.wait.max.ms=50", "-X", "consumer.reject.policy=park-key", NULL};
    tk_proc_t *p = tf_spawn(name, argv);
    free(prog);
    return p;
}

START_TEST(test_kill_during_retry_keeps_exactly_once_and_order) {
    start_broker("p8.events:1");
    sent_t s[5];
    produce(&s[0], "p8.events", "k1", "reject 1");
    produce(&s[1], "p8.events", "k1", "ok 2");
    produce(&s[2], "p8.events", "k1", "sleep:30000 3");
    produce(&s[3], "p8.events", "k1", "ok 4");
    produce(&s[4], "p8.events", "k2", "ok 5");
    flush();
    tk_proc_t *a = start_test_consumer("consumer-a", "g8", "p8.events");
    ck_assert_int_eq(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.effects WHERE payload = 'ok 5'"), 1, 30000), 1);
    ck_assert_int_eq(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked"), 4, 30000), 4);
    /* Drop the poison alone: the rest is due, and the consumer starts through it. */
    char sch[128];
    snprintf(sch, sizeof(sch), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", sch, "consumer-parked", "drop", "--group", "g8", "--key", "k1", "--first-only",
                                NULL);
    TF_CHECK(tf_exit_code(p) == 0, "drop --first-only: %s", tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    char sleeping[64];
    snprintf(sleeping, sizeof(sleeping), "sleeping %s", s[2].id);
    TF_CHECK(tk_wait_file_contains(a->out_path, sleeping, 30000), "the retry never reached the third message");
    /* Killed inside the third message's transaction: its effect and its row's DELETE go together. */
    tk_proc_signal(a, SIGKILL);
    TF_CHECK(tk_proc_wait(a, 10000), "a SIGKILLed consumer did not exit");
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")), 2);
    tk_proc_t *b = start_test_consumer("consumer-b", "g8", "p8.events");
    (void)b;
    ck_assert_int_eq(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked"), 0, 60000), 0);
    PGresult *res = PQexec(tf_conn, tf_q("SELECT string_agg(payload, ',' ORDER BY seq) FROM @.effects WHERE payload <> 'ok 5'"));
    TF_CHECK(PQresultStatus(res) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(res, 0, 0), "ok 2,sleep:30000 3,ok 4"),
             "effects: %s", PQgetvalue(res, 0, 0));
    PQclear(res);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE message_id = '%s'",
                                             s[0].id)), 1);
    free_sent(s, 5);
}
END_TEST

/* ---- 9. park-key on a schema without the table names the fix --------------------------------- */

START_TEST(test_missing_table_names_the_fix) {
    start_broker("p9.events:1");
    tu_exec(tf_conn, tf_q("DROP TABLE @.consumer_parked"));
    hctx_t h = {0};
    outbox_consumer_t *c = consumer("g9", "p9.events", "park-key");
    outbox_err_t err = outbox_consumer_poll(c, handler, &h, 100);
    ck_assert_int_eq(err, OUTBOX_ERR_SCHEMA);
    ck_assert_msg(strstr(outbox_consumer_errmsg(c), "outbox-relay migrate") &&
                  strstr(outbox_consumer_errmsg(c), "consumer_parked"), "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
}
END_TEST

int main(void) {
    Suite *s = suite_create("consumer_park");
    TCase *tc = tcase_create("park");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reject_parks_key_holds_later_others_flow_then_api_retry_in_order);
    tcase_add_test(tc, test_rejected_again_stays_parked_with_new_reason);
    tcase_add_test(tc, test_keyless_is_dead_lettered_and_undecodable_with_key_parks);
    tcase_add_test(tc, test_cli_list_retry_and_drop);
    tcase_add_test(tc, test_restart_keeps_parking_and_retry_keeps_order);
    tcase_add_test(tc, test_policy_key_is_validated_and_dead_letter_is_the_default);
    tcase_add_test(tc, test_grants_cover_the_parked_table);
    tcase_add_test(tc, test_kill_during_retry_keeps_exactly_once_and_order);
    tcase_add_test(tc, test_missing_table_names_the_fix);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
