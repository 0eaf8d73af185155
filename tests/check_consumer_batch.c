/*
 * The consumer's batches (consumer.batch.max, consumer.batch.linger.ms, the batch handler) against
 * the throwaway PostgreSQL and the mock broker: RETRY, REJECT, a failing statement and a lost
 * session in the middle of a batch, with savepoints always and on failure only (the optimistic first
 * pass and its fallback), duplicates, and pruning by consumer.processed.retention.s.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_fixture.h"

static tk_producer_t *producer;

static void setup(void) {
    tf_setup("t_batch");
    tu_exec(tf_conn, tf_q("CREATE TABLE @.effects (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                          "message_id text NOT NULL, payload text NOT NULL)"));
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

typedef struct {
    char id[37];
    void *env;
    size_t env_len;
    int64_t offset;
    int32_t partition;
} sent_t;

/* Produces an EVENT with this payload (a command for the handler below) and key. */
static void produce_cmd(sent_t *s, const char *topic, const char *key, const char *cmd) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "test.Command");
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(outbox_message_set_key(m, key, strlen(key)), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, cmd, strlen(cmd)), OUTBOX_OK);
    memset(s, 0, sizeof(*s));
    snprintf(s->id, sizeof(s->id), "%s", outbox_message_id(m));
    ck_assert_int_eq(outbox_message_encode(m, &s->env, &s->env_len), OUTBOX_OK);
    s->offset = s->partition = -1;
    tk_produce(producer, topic, -1, key, strlen(key), s->env, s->env_len, s->id, &s->offset, &s->partition);
    outbox_message_destroy(m);
}

/* Produces the same envelope again (a duplicate on the topic, as a relay retry makes). */
static void produce_again(const sent_t *s, const char *topic, const char *key) {
    static int64_t off; /* written by the delivery report, at the flush: must outlive this call */
    static int32_t part;
    tk_produce(producer, topic, -1, key, strlen(key), s->env, s->env_len, s->id, &off, &part);
}

/* ---- the handler: commands in the payload ---------------------------------------------------- */

enum { MAX_CALLS = 256 };

typedef struct {
    char calls[MAX_CALLS][37]; /* message ids, in the order the handler saw them */
    int n_calls;
    int batch_calls;           /* batch handler invocations */
    int batch_sizes[64];
} ctx_t;

static int seen_before(const ctx_t *ctx, const char *id) {
    int n = 0;
    for (int i = 0; i < ctx->n_calls; i++)
        n += !strcmp(ctx->calls[i], id);
    return n;
}

static int effect(PGconn *conn, const char *id, const char *payload) {
    const char *p[2] = {id, payload};
    PGresult *res = PQexecParams(conn, tf_q("INSERT INTO @.effects (message_id, payload) VALUES ($1, $2)"), 2, NULL, p,
                                 NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

/* Whether payload is command name with a count n ("retry2 ...") and this is one of the message's
 * first n calls. */
static int first_calls(const char *payload, const char *name, int before) {
    size_t l = strlen(name);
    return !strncmp(payload, name, l) && before < payload[l] - '0';
}

/* ok: effect, OK.  retryN: RETRY the first N times.  reject: effect, then REJECT (must be rolled
 * back).  badsqlN: the first N times a statement that fails, then OK (the savepoint must contain
 * it); notableN: the same with an INSERT into a table that does not exist.  kill1: the first
 * time, the session's own backend is terminated mid-batch. */
static outbox_handler_result_t handle(const outbox_message_t *msg, PGconn *conn, void *opaque) {
    ctx_t *ctx = opaque;
    const char *id = outbox_message_id(msg);
    size_t len;
    const char *raw = outbox_message_payload(msg, &len);
    char payload[64];
    snprintf(payload, sizeof(payload), "%.*s", (int)(len < 63 ? len : 63), raw);
    int before = seen_before(ctx, id);
    ck_assert_int_lt(ctx->n_calls, MAX_CALLS);
    snprintf(ctx->calls[ctx->n_calls++], 37, "%s", id);
    if (first_calls(payload, "retry", before))
        return OUTBOX_HANDLER_RETRY;
    if (first_calls(payload, "badsql", before) || first_calls(payload, "notable", before)) {
        PQclear(PQexec(conn, payload[0] == 'b' ? "SELECT 1/0" : tf_q("INSERT INTO @.no_such_table VALUES (1)")));
        return OUTBOX_HANDLER_OK; /* the transaction failed: the consumer must not believe this */
    }
    if (!strncmp(payload, "kill1", 5) && !before) {
        PQclear(PQexec(conn, "SELECT pg_terminate_backend(pg_backend_pid())"));
        return OUTBOX_HANDLER_RETRY;
    }
    if (!effect(conn, id, payload))
        return OUTBOX_HANDLER_RETRY;
    return strncmp(payload, "reject", 6) ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_REJECT;
}

/* Set-based: one multi-row INSERT for the messages whose payload starts with "ok"; "reject"
 * messages get REJECT. */
static void handle_batch(const outbox_message_t *const *msgs, size_t n, PGconn *conn,
                         outbox_handler_result_t *results, void *opaque) {
    ctx_t *ctx = opaque;
    if (ctx->batch_calls < 64)
        ctx->batch_sizes[ctx->batch_calls] = (int)n;
    ctx->batch_calls++;
    char *ids = calloc(n + 1, 40), *pls = calloc(n + 1, 70);
    strcpy(ids, "{");
    strcpy(pls, "{");
    for (size_t i = 0; i < n; i++) {
        const char *id = outbox_message_id(msgs[i]);
        size_t len;
        const char *raw = outbox_message_payload(msgs[i], &len);
        char payload[64];
        snprintf(payload, sizeof(payload), "%.*s", (int)(len < 63 ? len : 63), raw);
        ck_assert_int_lt(ctx->n_calls, MAX_CALLS);
        snprintf(ctx->calls[ctx->n_calls++], 37, "%s", id);
        results[i] = strncmp(payload, "reject", 6) ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_REJECT;
        sprintf(ids + strlen(ids), "%s%s", i ? "," : "", id);
        sprintf(pls + strlen(pls), "%s\"%s\"", i ? "," : "", payload);
    }
    strcat(ids, "}");
    strcat(pls, "}");
    const char *p[2] = {ids, pls};
    PGresult *res = PQexecParams(conn, tf_q("INSERT INTO @.effects (message_id, payload) "
                                            "SELECT * FROM unnest($1::text[], $2::text[])"),
                                 2, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQresultErrorMessage(res));
    PQclear(res);
    free(ids);
    free(pls);
}

/* The consumers' warnings that a message was rejected (the default log goes on to stderr). */
static int rejected_warnings;

static void count_rejections(int level, const char *fac, const char *msg, void *opaque) {
    (void)opaque;
    if (level == 4 && strstr(msg, "msg=\"rejected a message\""))
        rejected_warnings++;
    fprintf(stderr, "%s: %s\n", fac, msg);
}

static outbox_consumer_t *consumer(const char *group, const char *topic, ...) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set_log_cb(conf, count_rejections);
    const char *kv[] = {"outbox.schema", tf_schema, "pg.conninfo", getenv("OUTBOX_TEST_PG"), "consumer.group.id", group,
                        "kafka.bootstrap.servers", tf_broker->bootstrap, "kafka.fetch.wait.max.ms", "50",
                        "log.level", "4", "consumer.retry.backoff.ms", "100",
                        /* A member that left must not hold the partitions of the next one for long. */
                        "kafka.session.timeout.ms", "3000", "kafka.heartbeat.interval.ms", "300",
                        /* Everything produced before the first poll lands in one batch. */
                        "consumer.batch.linger.ms", "1000", NULL};
    for (int i = 0; kv[i]; i += 2)
        ck_assert_msg(outbox_conf_set(conf, kv[i], kv[i + 1], err, sizeof(err)) == OUTBOX_CONF_OK, "%s", err);
    va_list ap;
    va_start(ap, topic);
    for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *)) {
        const char *v = va_arg(ap, const char *);
        ck_assert_msg(outbox_conf_set(conf, k, v, err, sizeof(err)) == OUTBOX_CONF_OK, "%s", err);
    }
    va_end(ap);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ck_assert_msg(c != NULL, "outbox_consumer_new: %s", err);
    const char *topics[] = {topic};
    ck_assert_msg(outbox_consumer_subscribe(c, topics, 1) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    return c;
}

/* Polls until processed + rejected reaches want (or 30 s); returns the stats. */
static outbox_consumer_stats_t poll_until(outbox_consumer_t *c, ctx_t *ctx, long long want, int *errors) {
    outbox_consumer_stats_t st = {0};
    int64_t deadline = tk_now_ms() + 30000;
    while (st.processed + st.rejected < want && tk_now_ms() < deadline) {
        if (outbox_consumer_poll(c, handle, ctx, 100) != OUTBOX_OK && errors)
            ++*errors;
        outbox_consumer_stats(c, &st);
    }
    return st;
}

/* The effects' message ids in commit order must be exactly want[0..n). */
static void check_effects(sent_t *s, const int *want, int n) {
    PGresult *res = PQexec(tf_conn, tf_q("SELECT message_id FROM @.effects ORDER BY seq"));
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    TF_CHECK(PQntuples(res) == n, "%d effects, expected %d", PQntuples(res), n);
    for (int i = 0; i < n; i++)
        TF_CHECK(!strcmp(PQgetvalue(res, i, 0), s[want[i]].id), "effect %d is of %s, expected message %d", i,
                 PQgetvalue(res, i, 0), want[i]);
    PQclear(res);
}

/* ---- RETRY and REJECT in the middle of a batch ---------------------------------------------- */

START_TEST(test_retry_mid_batch_commits_before_and_redelivers_from_it) {
    start_broker("tb.events:1");
    enum { N = 6 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "retry1 2", "ok 3", "ok 4", "ok 5"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "tb.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    /* Savepoints always: each message called once (on-failure calls 0 and 1 again: see below). */
    outbox_consumer_t *c = consumer("tb", "tb.events", "consumer.batch.savepoints", "always", NULL);
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, NULL);
    TF_CHECK(st.processed == N && st.retried == 1 && st.rejected == 0 && st.duplicates == 0,
             "processed=%lld retried=%lld rejected=%lld duplicates=%lld, expected %d, 1, 0, 0",
             (long long)st.processed, (long long)st.retried, (long long)st.rejected, (long long)st.duplicates, N);
    /* The handler saw 0, 1, 2 (RETRY), then 2 again and the rest: nothing after 2 before 2 succeeded. */
    static const int calls[] = {0, 1, 2, 2, 3, 4, 5};
    TF_CHECK(ctx.n_calls == 7, "%d handler calls, expected 7", ctx.n_calls);
    for (int i = 0; i < 7; i++)
        TF_CHECK(!strcmp(ctx.calls[i], s[calls[i]].id), "call %d was for another message than %d", i, calls[i]);
    static const int order[] = {0, 1, 2, 3, 4, 5};
    check_effects(s, order, N);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'tb'")), N);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "tb", "tb.events", 0), s[N - 1].offset + 1);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

START_TEST(test_reject_mid_batch_rolls_back_only_that_message) {
    start_broker("tr.events:1");
    enum { N = 5 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "reject 2", "ok 3", "ok 4"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "tr.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    /* Savepoints always: one call each (on-failure calls 0 and 1 again: see the test below). */
    outbox_consumer_t *c = consumer("tr", "tr.events", "consumer.batch.savepoints", "always", NULL);
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, NULL);
    TF_CHECK(st.processed == 4 && st.rejected == 1 && st.retried == 0, "processed=%lld rejected=%lld retried=%lld",
             (long long)st.processed, (long long)st.rejected, (long long)st.retried);
    TF_CHECK(ctx.n_calls == N, "%d handler calls, expected %d (one each)", ctx.n_calls, N);
    static const int order[] = {0, 1, 3, 4};
    check_effects(s, order, 4);
    const char *p[1] = {s[2].id};
    PGresult *res = PQexecParams(tf_conn, tf_q("SELECT reason, kafka_offset FROM @.consumer_dead_letters "
                                               "WHERE consumer = 'tr' AND message_id = $1"), 1, NULL, p, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(res), 1);
    TF_CHECK(strstr(PQgetvalue(res, 0, 0), "rejected"), "reason: %s", PQgetvalue(res, 0, 0));
    ck_assert_int_eq(atoll(PQgetvalue(res, 0, 1)), s[2].offset);
    PQclear(res);
    /* Marked processed too: a redelivery is skipped. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'tr'")), N);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "tr", "tr.events", 0), s[N - 1].offset + 1);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* A handler statement that fails puts the transaction in error: its savepoint contains it, the
 * rest of the batch commits, and the message is tried again. */
START_TEST(test_failed_statement_in_handler_is_contained_by_its_savepoint) {
    start_broker("ts.events:1");
    enum { N = 4 };
    static const char *const cmds[N] = {"ok 0", "badsql1 1", "ok 2", "ok 3"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "ts.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("ts", "ts.events", NULL);
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, NULL);
    TF_CHECK(st.processed == N && st.retried == 1, "processed=%lld retried=%lld", (long long)st.processed,
             (long long)st.retried);
    static const int order[] = {0, 1, 2, 3};
    check_effects(s, order, N);
    outbox_consumer_destroy(c);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* The session dies in the middle of a batch: nothing of the batch committed, all of it comes
 * again, each effect once. */
START_TEST(test_session_lost_mid_batch_redelivers_the_whole_batch) {
    start_broker("tk.events:2");
    enum { N = 8 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "ok 2", "kill1 3", "ok 4", "ok 5", "ok 6", "ok 7"};
    static const char *const keys[N] = {"a", "b", "a", "b", "a", "b", "a", "b"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "tk.events", keys[i], cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("tk", "tk.events", NULL);
    int errors = 0;
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, &errors);
    TF_CHECK(st.processed == N, "processed=%lld of %d", (long long)st.processed, N);
    TF_CHECK(errors >= 1, "no poll reported the lost session");
    for (int i = 0; i < N; i++) {
        const char *sql = tf_q("SELECT count(*) FROM @.effects WHERE message_id = '%s'", s[i].id);
        long long n = tu_scalar(tf_conn, sql);
        TF_CHECK(n == 1, "message %d has %lld effects", i, n);
    }
    /* Each key's effects in its order. */
    PGresult *res = PQexec(tf_conn, tf_q("SELECT payload FROM @.effects ORDER BY seq"));
    int last[2] = {-1, -1};
    for (int i = 0; i < PQntuples(res); i++) {
        int n = atoi(strchr(PQgetvalue(res, i, 0), ' ') + 1), k = keys[n][0] - 'a';
        TF_CHECK(n > last[k], "key %s: effect of %d after %d", keys[n], n, last[k]);
        last[k] = n;
    }
    PQclear(res);
    outbox_consumer_destroy(c);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* ---- savepoints on failure only (the default): the optimistic pass and its fallback ----------- */

/* The handler's calls must have been for the messages want[0..n), in this order. */
static void check_calls(const ctx_t *ctx, sent_t *s, const int *want, int n) {
    TF_CHECK(ctx->n_calls == n, "%d handler calls, expected %d", ctx->n_calls, n);
    for (int i = 0; i < n && i < ctx->n_calls; i++)
        TF_CHECK(!strcmp(ctx->calls[i], s[want[i]].id), "call %d was for another message than %d", i, want[i]);
}

/* A REJECT in the first pass rolls it back: the batch runs again with savepoints, so the messages
 * before it are called twice (the rejected one once: its result is kept), and every effect (and
 * the first pass's dead letter of an undecodable record) still commits once. */
START_TEST(test_optimistic_reject_falls_back_and_commits_each_effect_once) {
    start_broker("or.events:1");
    enum { N = 5 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "reject 2", "ok 3", "ok 4"};
    sent_t s[N];
    produce_cmd(&s[0], "or.events", "k", cmds[0]);
    static int64_t junk_off; /* written at the flush */
    static int32_t junk_part;
    tk_produce(producer, "or.events", -1, "k", 1, "not an envelope", 15, NULL, &junk_off, &junk_part);
    for (int i = 1; i < N; i++)
        produce_cmd(&s[i], "or.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    rejected_warnings = 0;
    outbox_consumer_t *c = consumer("or", "or.events", NULL);
    outbox_consumer_stats_t st = poll_until(c, &ctx, N + 1, NULL);
    /* The undecodable record was rejected in both passes, and is logged once. */
    TF_CHECK(rejected_warnings == 2, "%d \"rejected a message\" warnings, expected 2", rejected_warnings);
    TF_CHECK(st.processed == 4 && st.rejected == 2 && st.retried == 0 && st.duplicates == 0,
             "processed=%lld rejected=%lld retried=%lld duplicates=%lld, expected 4, 2, 0, 0",
             (long long)st.processed, (long long)st.rejected, (long long)st.retried, (long long)st.duplicates);
    /* First pass 0, 1, 2 (REJECT); then with savepoints 0, 1, (2's REJECT applied), 3, 4. */
    static const int calls[] = {0, 1, 2, 0, 1, 3, 4};
    check_calls(&ctx, s, calls, 7);
    static const int order[] = {0, 1, 3, 4};
    check_effects(s, order, 4);
    const char *p[1] = {s[2].id};
    PGresult *res = PQexecParams(tf_conn, tf_q("SELECT reason, kafka_offset FROM @.consumer_dead_letters "
                                               "WHERE consumer = 'or' AND message_id = $1"), 1, NULL, p, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(res), 1);
    TF_CHECK(strstr(PQgetvalue(res, 0, 0), "rejected"), "reason: %s", PQgetvalue(res, 0, 0));
    ck_assert_int_eq(atoll(PQgetvalue(res, 0, 1)), s[2].offset);
    PQclear(res);
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'or' AND "
                                     "kafka_offset = %lld", (long long)junk_off)) == 1,
             "the undecodable record's dead letter is not there once");
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'or'")), 2);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'or'")), N);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "or", "or.events", 0), s[N - 1].offset + 1);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* A handler's statement that fails (an INSERT into a table that does not exist, the first time):
 * the savepoint pass treats it as a RETRY; the others commit once. */
START_TEST(test_optimistic_failed_statement_is_contained_by_the_fallback) {
    start_broker("os.events:1");
    enum { N = 4 };
    static const char *const cmds[N] = {"ok 0", "notable1 1", "ok 2", "ok 3"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "os.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("os", "os.events", NULL);
    int errors = 0;
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, &errors);
    TF_CHECK(errors == 0, "%d polls failed", errors);
    TF_CHECK(st.processed == N && st.retried == 1 && st.rejected == 0, "processed=%lld retried=%lld rejected=%lld",
             (long long)st.processed, (long long)st.retried, (long long)st.rejected);
    /* First pass 0, 1 (fails); with savepoints 0, (1 retried); redelivered 1, 2, 3. */
    static const int calls[] = {0, 1, 0, 1, 2, 3};
    check_calls(&ctx, s, calls, 6);
    static const int order[] = {0, 1, 2, 3};
    check_effects(s, order, N);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'os'")), N);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "os", "os.events", 0), s[N - 1].offset + 1);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* A RETRY in the first pass: what came before it commits once, from the savepoint pass; it and
 * the rest come again, in order, in a later transaction. */
START_TEST(test_optimistic_retry_commits_before_and_redelivers_from_it) {
    start_broker("ot.events:1");
    enum { N = 6 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "retry1 2", "ok 3", "ok 4", "ok 5"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "ot.events", "k", cmds[i]);
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("ot", "ot.events", NULL);
    outbox_consumer_stats_t st = poll_until(c, &ctx, N, NULL);
    TF_CHECK(st.processed == N && st.retried == 1 && st.rejected == 0 && st.duplicates == 0,
             "processed=%lld retried=%lld rejected=%lld duplicates=%lld, expected %d, 1, 0, 0",
             (long long)st.processed, (long long)st.retried, (long long)st.rejected, (long long)st.duplicates, N);
    /* First pass 0, 1, 2 (RETRY); with savepoints 0, 1, (2's RETRY applied); redelivered 2 to 5. */
    static const int calls[] = {0, 1, 2, 0, 1, 2, 3, 4, 5};
    check_calls(&ctx, s, calls, 9);
    static const int order[] = {0, 1, 2, 3, 4, 5};
    check_effects(s, order, N);
    /* 0 and 1 committed from the savepoint pass: each in its own subtransaction (its own xmin). */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(DISTINCT xmin::text) FROM (SELECT xmin FROM @.effects "
                                             "ORDER BY seq LIMIT 2) f")), 2);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'ot'")), N);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(tk_committed_offset(tf_broker->bootstrap, "ot", "ot.events", 0), s[N - 1].offset + 1);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* A clean batch: on-failure runs every handler in the batch's own transaction (its rows share one
 * xmin, no savepoint); always gives each its own subtransaction (its own xid, so its own xmin). */
START_TEST(test_savepoints_setting_decides_subtransactions_of_a_clean_batch) {
    start_broker("ox.events:1");
    enum { N = 5 };
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "ox.events", "k", "ok");
    tk_producer_flush(producer, 15000);
    static const char *const modes[2] = {"on-failure", "always"};
    static const char *const groups[2] = {"oxa", "oxb"};
    static const long long want_xmins[2] = {1, N};
    for (int m = 0; m < 2; m++) {
        ctx_t ctx = {0};
        outbox_consumer_t *c = consumer(groups[m], "ox.events", "consumer.batch.savepoints", modes[m], NULL);
        outbox_consumer_stats_t st = poll_until(c, &ctx, N, NULL);
        TF_CHECK(st.processed == N, "%s: processed=%lld", modes[m], (long long)st.processed);
        TF_CHECK(ctx.n_calls == N, "%s: %d handler calls, expected %d", modes[m], ctx.n_calls, N);
        ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.effects")), N);
        long long xmins = tu_scalar(tf_conn, tf_q("SELECT count(DISTINCT xmin::text) FROM @.effects"));
        TF_CHECK(xmins == want_xmins[m], "%s: the batch's %d effects have %lld xmins, expected %lld", modes[m], N,
                 xmins, want_xmins[m]);
        outbox_consumer_destroy(c);
        tu_exec(tf_conn, tf_q("TRUNCATE @.effects"));
    }
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

/* ---- batch size and the batch handler ------------------------------------------------------- */

START_TEST(test_batch_max_one_commits_each_message_alone) {
    start_broker("t1.events:1");
    sent_t s[3];
    for (int i = 0; i < 3; i++)
        produce_cmd(&s[i], "t1.events", "k", "ok");
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("t1", "t1.events", "consumer.batch.max", "1", NULL);
    outbox_consumer_stats_t st = {0};
    int64_t deadline = tk_now_ms() + 30000;
    while (st.processed == 0 && tk_now_ms() < deadline) {
        ck_assert_int_eq(outbox_consumer_poll(c, handle, &ctx, 100), OUTBOX_OK);
        outbox_consumer_stats(c, &st);
    }
    /* One poll, one message, one transaction. */
    ck_assert_int_eq(st.processed, 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.effects")), 1);
    outbox_consumer_destroy(c);

    /* The default gathers the rest in one poll. */
    c = consumer("t1", "t1.events", NULL);
    memset(&st, 0, sizeof(st));
    deadline = tk_now_ms() + 30000;
    while (st.processed + st.duplicates == 0 && tk_now_ms() < deadline) {
        ck_assert_int_eq(outbox_consumer_poll(c, handle, &ctx, 100), OUTBOX_OK);
        outbox_consumer_stats(c, &st);
    }
    TF_CHECK(st.processed == 2, "the first batch after the restart processed %lld messages, expected 2 (duplicates "
             "%lld)", (long long)st.processed, (long long)st.duplicates);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.effects")), 3);
    outbox_consumer_destroy(c);
    for (int i = 0; i < 3; i++)
        free(s[i].env);
}
END_TEST

START_TEST(test_batch_handler_gets_new_messages_in_order) {
    start_broker("th.events:1");
    enum { N = 5 };
    static const char *const cmds[N] = {"ok 0", "ok 1", "reject 2", "ok 3", "ok 4"};
    sent_t s[N];
    for (int i = 0; i < N; i++)
        produce_cmd(&s[i], "th.events", "k", cmds[i]);
    produce_again(&s[1], "th.events", "k"); /* a duplicate on the topic, in the same batch */
    tk_producer_flush(producer, 15000);
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("th", "th.events", NULL);
    ck_assert_int_eq(outbox_consumer_set_batch_handler(c, handle_batch, &ctx), OUTBOX_OK);
    outbox_consumer_stats_t st = {0};
    int64_t deadline = tk_now_ms() + 30000;
    while (st.processed + st.rejected < N && tk_now_ms() < deadline) {
        ck_assert_msg(outbox_consumer_poll(c, NULL, NULL, 100) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
        outbox_consumer_stats(c, &st);
    }
    TF_CHECK(st.processed == 4 && st.rejected == 1 && st.duplicates == 1,
             "processed=%lld rejected=%lld duplicates=%lld", (long long)st.processed, (long long)st.rejected,
             (long long)st.duplicates);
    /* All five, then again the two before the REJECT, then the two after it. */
    TF_CHECK(ctx.batch_calls == 3 && ctx.batch_sizes[0] == 5 && ctx.batch_sizes[1] == 2 && ctx.batch_sizes[2] == 2,
             "batch handler calls: %d (sizes %d %d %d)", ctx.batch_calls, ctx.batch_sizes[0], ctx.batch_sizes[1],
             ctx.batch_sizes[2]);
    for (int i = 0; i < N; i++)
        TF_CHECK(!strcmp(ctx.calls[i], s[i].id), "first call: message %d out of order", i);
    static const int order[] = {0, 1, 3, 4};
    check_effects(s, order, 4);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'th'")),
                     1);
    ck_assert_int_eq(outbox_consumer_set_batch_handler(NULL, handle_batch, &ctx), OUTBOX_ERR_INVALID_ARG);
    outbox_consumer_destroy(c);
    for (int i = 0; i < N; i++)
        free(s[i].env);
}
END_TEST

START_TEST(test_poll_without_any_handler_fails) {
    start_broker("tn.events:1");
    outbox_consumer_t *c = consumer("tn", "tn.events", NULL);
    ck_assert_int_eq(outbox_consumer_poll(c, NULL, NULL, 0), OUTBOX_ERR_INVALID_ARG);
    ck_assert_msg(strstr(outbox_consumer_errmsg(c), "handler"), "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
}
END_TEST

START_TEST(test_batch_keys_are_validated) {
    outbox_conf_t *conf = outbox_conf_new();
    char err[512];
    ck_assert_int_ne(outbox_conf_set(conf, "consumer.batch.max", "0", err, sizeof(err)), OUTBOX_CONF_OK);
    TF_CHECK(strstr(err, "consumer.batch.max"), "the error does not name the key: %s", err);
    ck_assert_int_ne(outbox_conf_set(conf, "consumer.batch.linger.ms", "-1", err, sizeof(err)), OUTBOX_CONF_OK);
    TF_CHECK(strstr(err, "consumer.batch.linger.ms"), "the error does not name the key: %s", err);
    ck_assert_int_ne(outbox_conf_set(conf, "consumer.processed.retention.s", "x", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.savepoints", "never", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    TF_CHECK(!strcmp(err, "invalid value \"never\" for \"consumer.batch.savepoints\": expected one of "
                          "on-failure|always"), "%s", err);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.savepoints", "always", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.max", "1", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.linger.ms", "0", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.processed.retention.s", "86400", err, sizeof(err)),
                     OUTBOX_CONF_OK);
    outbox_conf_destroy(conf);
}
END_TEST

/* ---- pruning from the consumer -------------------------------------------------------------- */

START_TEST(test_retention_prunes_this_groups_old_records) {
    start_broker("tp.events:1");
    tu_exec(tf_conn, tf_q("INSERT INTO @.processed (consumer, message_id, processed_at) SELECT 'tp', "
                          "gen_random_uuid(), now() - interval '2 hours' FROM generate_series(1, 2500)"));
    tu_exec(tf_conn, tf_q("INSERT INTO @.processed (consumer, message_id, processed_at) VALUES "
                          "('other', gen_random_uuid(), now() - interval '2 hours'), "
                          "('tp', gen_random_uuid(), now())"));
    ctx_t ctx = {0};
    outbox_consumer_t *c = consumer("tp", "tp.events", "consumer.processed.retention.s", "3600", NULL);
    /* Idle polls prune, a chunk at a time while chunks come back full. */
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(outbox_consumer_poll(c, handle, &ctx, 10), OUTBOX_OK);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'tp'")), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed WHERE consumer = 'other'")), 1);
    outbox_consumer_destroy(c);
}
END_TEST

static Suite *batch_suite(void) {
    Suite *s = suite_create("consumer_batch");
    TCase *tc = tcase_create("batch");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_retry_mid_batch_commits_before_and_redelivers_from_it);
    tcase_add_test(tc, test_reject_mid_batch_rolls_back_only_that_message);
    tcase_add_test(tc, test_failed_statement_in_handler_is_contained_by_its_savepoint);
    tcase_add_test(tc, test_session_lost_mid_batch_redelivers_the_whole_batch);
    tcase_add_test(tc, test_optimistic_reject_falls_back_and_commits_each_effect_once);
    tcase_add_test(tc, test_optimistic_failed_statement_is_contained_by_the_fallback);
    tcase_add_test(tc, test_optimistic_retry_commits_before_and_redelivers_from_it);
    tcase_add_test(tc, test_savepoints_setting_decides_subtransactions_of_a_clean_batch);
    tcase_add_test(tc, test_batch_max_one_commits_each_message_alone);
    tcase_add_test(tc, test_batch_handler_gets_new_messages_in_order);
    tcase_add_test(tc, test_poll_without_any_handler_fails);
    tcase_add_test(tc, test_batch_keys_are_validated);
    tcase_add_test(tc, test_retention_prunes_this_groups_old_records);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(batch_suite());
}
