/*
 * Operating outbox-relay as its own process: the metrics and health endpoints, status, the
 * dead-letter commands, an installed copy used from outside the tree, least-privilege roles, logs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "outbox_int.h" /* outbox_conf_props(): every key --help must list */
#include "testutil_fixture.h"
#include "testutil_net.h"

static void drop_roles(void);

static void setup(void) {
    tf_setup("t_ops");
}

static void teardown(void) {
    tf_teardown(drop_roles); /* drop_roles needs the connection out of any failed transaction */
}

/* Starts the built relay with conninfo ci (NULL: the test server's, as superuser) and extra
 * key=value settings (NULL-terminated). */
#define start_relay(ci, ...) tf_start_relay_with(&(tf_relay_opts_t){.conninfo = (ci)}, __VA_ARGS__)

/* Runs a shell command line to completion within timeout_ms; fails the test if it timed out. */
static tk_proc_t *sh(const char *tag, const char *cmdline, int timeout_ms) {
    const char *argv[] = {"/bin/sh", "-c", cmdline, NULL};
    int timed_out;
    tk_proc_t *p = tk_proc_run(tag, argv, timeout_ms, &timed_out);
    TF_CHECK(!timed_out, "`%s` did not finish within %d ms; stderr:\n%s", cmdline, timeout_ms,
             tk_file_tail(p->err_path, 3000));
    return p;
}

/* One run of the built outbox-relay: its exit code, stdout and stderr (caller frees with cli_free). */
typedef struct {
    int rc;
    char *out, *err;
} cli_t;

/* Runs outbox-relay -X outbox.schema=<tf_schema> args... with pg.conninfo from OUTBOX_PG_CONNINFO
 * = ci (NULL: the test server's, as superuser, the schema's owner). */
#define CLI(ci, ...) cli_run((ci), (const char *const[]){__VA_ARGS__, NULL})
static cli_t cli_run(const char *ci, const char *const *args) {
    char *sch, *prog = tk_build_path("outbox-relay");
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    const char *argv[32] = {prog, "-X", sch};
    size_t n = 3;
    for (; *args && n < 31; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", ci ? ci : getenv("OUTBOX_TEST_PG"), 1), 0);
    int timed_out;
    tk_proc_t *p = tk_proc_run("relay-cli", argv, 15000, &timed_out);
    unsetenv("OUTBOX_PG_CONNINFO");
    TF_CHECK(!timed_out, "outbox-relay %s did not exit within 15 s; stderr:\n%s", argv[3],
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

/* ---- messages ------------------------------------------------------------------------------- */

/* Commits n EVENTs for topic (keys k0..k9, payload "<i>") through w on c in one transaction;
 * ids (optional) receives their message ids. */
static void send_n(outbox_t *w, PGconn *c, const char *topic, int n, char (*ids)[37]) {
    outbox_message_t **ms = calloc((size_t)n, sizeof(*ms));
    ck_assert_ptr_nonnull(ms);
    for (int i = 0; i < n; i++) {
        char buf[32];
        ms[i] = outbox_message_new(OUTBOX_EVENT, topic, "test.Ops");
        ck_assert_ptr_nonnull(ms[i]);
        int len = snprintf(buf, sizeof(buf), "k%d", i % 10);
        ck_assert_int_eq(outbox_message_set_key(ms[i], buf, (size_t)len), OUTBOX_OK);
        len = snprintf(buf, sizeof(buf), "%d", i);
        ck_assert_int_eq(outbox_message_set_payload(ms[i], buf, (size_t)len), OUTBOX_OK);
        if (ids)
            memcpy(ids[i], outbox_message_id(ms[i]), 37);
    }
    tu_exec(c, "BEGIN");
    ck_assert_msg(outbox_send_batch(w, c, (const outbox_message_t *const *)ms, (size_t)n) == OUTBOX_OK,
                  "outbox_send_batch: %s", outbox_errmsg(w));
    tu_exec(c, "COMMIT");
    for (int i = 0; i < n; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
}

/* A row inserted with plain SQL, as a foreign producer would, whose destination is no valid topic:
 * its envelope is a well-formed one for envelope_topic. */
typedef struct {
    long long id; /* outbox id, which the dead letter keeps */
    char message_id[37];
    void *env;
    size_t env_len;
} poison_t;

static void insert_poison(poison_t *p, const char *envelope_topic, int i) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, envelope_topic, "test.Poison");
    ck_assert_ptr_nonnull(m);
    char payload[32];
    int len = snprintf(payload, sizeof(payload), "poison-%d", i);
    ck_assert_int_eq(outbox_message_set_payload(m, payload, (size_t)len), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_key(m, "kp", 2), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_encode(m, &p->env, &p->env_len), OUTBOX_OK);
    memcpy(p->message_id, outbox_message_id(m), 37);
    const char *params[4] = {p->message_id, "bad topic!", "test.Poison", p->env};
    int lengths[4] = {0, 0, 0, (int)p->env_len};
    int formats[4] = {0, 0, 0, 1};
    PGresult *res = PQexecParams(tf_conn,
                                 tf_q("INSERT INTO @.messages (message_id, destination, partition_key, message_type, "
                                      "envelope) VALUES ($1, $2, 'kp', $3, $4) RETURNING id"),
                                 4, NULL, params, lengths, formats, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "insert: %s", PQresultErrorMessage(res));
    p->id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    outbox_message_destroy(m);
}

static void wait_count(const char *sql, long long want, int timeout_ms) {
    long long got = tk_wait_scalar(tf_conn, sql, want, timeout_ms);
    TF_CHECK(got == want, "%s: %lld after %d ms, expected %lld", sql, got, timeout_ms, want);
}

/* Reads topic until want records arrived (or timeout_ms), then a little longer to catch extras. */
static tk_consumer_t *read_topic(const char *topic, size_t want, int timeout_ms) {
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    size_t got = tk_consumer_poll(c, want, tk_now_ms() + timeout_ms);
    TF_CHECK(got >= want, "only %zu of %zu records arrived on %s within %d ms", got, want, topic, timeout_ms);
    tk_consumer_poll(c, want + 1, tk_now_ms() + 500);
    return c;
}

/* ---- a tiny HTTP client --------------------------------------------------------------------- */

/* Polls path until it answers with want (and, when needle is not NULL, a body containing it)
 * or timeout_ms passes.  Returns the last status; *body (may be NULL) gets the last body. */
static int wait_http(int port, const char *path, int want, const char *needle, int timeout_ms, char **body) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        char *b = NULL;
        int st = tn_http_get(port, path, &b);
        int done = st == want && (!needle || (b && strstr(b, needle)));
        if (done || tk_now_ms() >= deadline) {
            if (body)
                *body = b ? b : strdup("");
            else
                free(b);
            return st;
        }
        free(b);
        tk_sleep_ms(100);
    }
}

static char *listen_setting(int port) {
    char *s;
    ck_assert(asprintf(&s, "metrics.listen=127.0.0.1:%d", port) > 0);
    return s;
}

/* ---- 1. metrics after a drain ------------------------------------------------------------------ */

START_TEST(test_metrics_after_a_drain) {
    enum { N = 500 };
    tf_start_broker("--topic", "ops1.metrics:4", NULL);
    send_n(tf_ob, tf_conn, "ops1.metrics", N, NULL);
    poison_t bad;
    insert_poison(&bad, "ops1.metrics", 0);
    int port = tn_free_port();
    char *listen = listen_setting(port);
    start_relay(NULL, "relay.poison.policy=dead-letter", listen, NULL);

    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 1, 5000);

    /* The backlog is sampled every 2 s: give it a few seconds to see the empty table. */
    char *text = NULL;
    double v = -1;
    int64_t deadline = tk_now_ms() + 6000;
    for (;;) {
        free(text);
        int st = tn_http_get(port, "/metrics", &text);
        if (st == 200 && tn_metric(text, "outbox_backlog_messages", &v) && v == 0 &&
            tn_metric(text, "outbox_relay_published_total", &v) && v == N &&
            tn_metric(text, "outbox_relay_dead_letters_total", &v) && v == 1)
            break;
        TF_CHECK(tk_now_ms() < deadline, "/metrics (status %d) after the drain does not show 500 published, "
                 "1 dead letter and an empty backlog within 6 s:\n%s", st, text ? text : "");
        tk_sleep_ms(200);
    }
    ck_assert_int_eq((long long)tn_must_metric(text, "outbox_relay_published_total"), N);
    ck_assert_int_eq((long long)tn_must_metric(text, "outbox_relay_dead_letters_total"), 1);
    ck_assert_int_eq((long long)tn_must_metric(text, "outbox_relay_is_leader"), 1);
    ck_assert_int_eq((long long)tn_must_metric(text, "outbox_backlog_messages"), 0);
    double count = tn_must_metric(text, "outbox_relay_batch_duration_seconds_count");
    double inf = tn_must_metric(text, "outbox_relay_batch_duration_seconds_bucket{le=\"+Inf\"}");
    TF_CHECK(count >= 1, "histogram _count %g after a drain of %d messages", count, N);
    TF_CHECK(inf == count, "+Inf bucket %g differs from _count %g", inf, count);
    tn_must_metric(text, "outbox_relay_batch_duration_seconds_sum");
    TF_CHECK(tf_matches(text, "^# TYPE outbox_relay_batch_duration_seconds histogram$"), "no histogram TYPE line:\n%s",
             text);
    /* Buckets are cumulative: never decreasing, never above _count. */
    double prev = 0;
    int buckets = 0;
    for (const char *p = text; (p = strstr(p, "outbox_relay_batch_duration_seconds_bucket{")); p++) {
        const char *sp = strchr(p, ' ');
        ck_assert_ptr_nonnull(sp);
        double b = strtod(sp + 1, NULL);
        TF_CHECK(b >= prev && b <= count, "bucket %d holds %g after %g (count %g)", buckets, b, prev, count);
        prev = b;
        buckets++;
    }
    TF_CHECK(buckets >= 2, "only %d histogram buckets", buckets);
    free(text);

    /* What was counted is what is on the topic. */
    tk_consumer_t *c = read_topic("ops1.metrics", N, 30000);
    size_t n;
    tk_consumer_records(c, &n);
    TF_CHECK(n == N, "%zu records on the topic, outbox_relay_published_total says %d", n, N);
    tk_consumer_free(c);

    char *body = NULL;
    int st = tn_http_get(port, "/healthz", &body);
    TF_CHECK(st == 200 && body && !strncmp(body, "ok", 2), "/healthz: %d '%s'", st, body ? body : "");
    free(body);
    st = tn_http_get(port, "/no/such/path", &body);
    /* The answer names the paths there are, whole (its length is no longer counted by hand). */
    TF_CHECK(st == 404 && body && !strcmp(body, "not found: try /metrics, /healthz, /readyz\n"),
             "/no/such/path: %d '%s'", st, body ? body : "");
    free(body);
    free(listen);
    free(bad.env);
}
END_TEST

/* ---- 2. readiness ------------------------------------------------------------------------------- */

START_TEST(test_readiness_follows_kafka_and_postgresql) {
    tf_start_broker("--brokers", "1", "--topic", "ops2.ready:1", NULL);
    send_n(tf_ob, tf_conn, "ops2.ready", 10, NULL);
    int port = tn_free_port();
    char *listen = listen_setting(port);
    start_relay(NULL, listen, NULL);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);

    char *body;
    int st = wait_http(port, "/readyz", 200, NULL, 10000, &body);
    TF_CHECK(st == 200, "/readyz while PostgreSQL and the broker are up: %d '%s'", st, body);
    TF_CHECK(strstr(body, "postgresql=up") && strstr(body, "kafka=up"), "/readyz body: '%s'", body);
    free(body);

    tk_broker_cmd(tf_broker, "down all");
    st = wait_http(port, "/readyz", 503, "kafka=down", 10000, &body);
    TF_CHECK(st == 503 && strstr(body, "kafka=down"), "/readyz 10 s after the broker went down: %d '%s'", st, body);
    free(body);
    st = tn_http_get(port, "/healthz", NULL);
    TF_CHECK(st == 200, "/healthz while the broker is down: %d (the process is alive)", st);

    tk_broker_cmd(tf_broker, "up all");
    st = wait_http(port, "/readyz", 200, NULL, 10000, &body);
    TF_CHECK(st == 200, "/readyz 10 s after the broker came back: %d '%s'", st, body);
    free(body);

    /* A relay that cannot reach PostgreSQL is alive but not ready. */
    int port2 = tn_free_port();
    char *listen2 = listen_setting(port2), *bad_pg;
    ck_assert(asprintf(&bad_pg, "%s port=1", getenv("OUTBOX_TEST_PG")) > 0);
    tk_proc_t *r2 = start_relay(bad_pg, listen2, "relay.reconnect.backoff.max.ms=500", NULL);
    st = wait_http(port2, "/healthz", 200, NULL, 10000, NULL);
    TF_CHECK(st == 200, "/healthz of the relay without PostgreSQL: %d", st);
    st = wait_http(port2, "/readyz", 503, "postgresql=down", 10000, &body);
    TF_CHECK(st == 503 && strstr(body, "postgresql=down"), "/readyz without PostgreSQL: %d '%s'", st, body);
    free(body);
    /* ... and stays so: it is not a start-up blip. */
    tk_sleep_ms(2500);
    st = tn_http_get(port2, "/readyz", &body);
    TF_CHECK(st == 503, "/readyz without PostgreSQL, 2.5 s later: %d '%s'", st, body ? body : "");
    free(body);
    TF_CHECK(tk_proc_running(r2), "the relay without PostgreSQL exited: %s", tk_status_str(r2->status));
    /* The first relay is unaffected. */
    st = tn_http_get(port, "/readyz", NULL);
    TF_CHECK(st == 200, "/readyz of the healthy relay: %d", st);
    free(listen);
    free(listen2);
    free(bad_pg);
}
END_TEST

/* ---- 3. status ---------------------------------------------------------------------------------- */

/* Runs `status [--json]` with the conninfo from OUTBOX_PG_CONNINFO; returns stdout (caller frees). */
static char *status_output(int json) {
    char *sch;
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1), 0);
    tk_proc_t *p = json ? tf_relay_cli("-X", sch, "status", "--json", NULL) : tf_relay_cli("-X", sch, "status", NULL);
    unsetenv("OUTBOX_PG_CONNINFO");
    char *out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0, "status%s: %s; stderr:\n%s", json ? " --json" : "", tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    free(sch);
    return out;
}

START_TEST(test_status_reports_backlog_dead_letters_and_leader) {
    send_n(tf_ob, tf_conn, "ops3.status", 3, NULL);
    tu_exec(tf_conn, tf_q("INSERT INTO @.dead_letters (id, message_id, destination, envelope, created_at, error) "
                          "VALUES (1001, gen_random_uuid(), 'x', '\\x00', now(), 'test'), "
                          "(1002, gen_random_uuid(), 'x', '\\x00', now(), 'test')"));

    char *out = status_output(1);
    TF_CHECK(tf_matches(out, "^\\{.*\\}$"), "status --json is not one JSON object:\n%s", out);
    TF_CHECK(tf_matches(out, "\"backlog\": *3[,}]"), "no \"backlog\":3 in:\n%s", out);
    TF_CHECK(tf_matches(out, "\"dead_letters\": *2[,}]"), "no \"dead_letters\":2 in:\n%s", out);
    char want[128];
    snprintf(want, sizeof(want), "\"schema_version\":%d,", OUTBOX_SCHEMA_VERSION);
    TF_CHECK(strstr(out, want), "no %s in:\n%s", want, out);
    TF_CHECK(tf_matches(out, "\"leader\": *null[,}]"), "no \"leader\":null (no relay runs) in:\n%s", out);
    snprintf(want, sizeof(want), "\"schema\":\"%s\"", tf_schema);
    TF_CHECK(strstr(out, want), "no %s in:\n%s", want, out);
    free(out);

    out = status_output(0);
    TF_CHECK(tf_matches(out, "^backlog: *3$"), "human status has no \"backlog: 3\" line:\n%s", out);
    TF_CHECK(tf_matches(out, "^leader: *none$"), "human status has no \"leader: none\" line:\n%s", out);
    TF_CHECK(tf_matches(out, "^dead_letters: *2$"), "human status has no \"dead_letters: 2\" line:\n%s", out);
    free(out);

    tf_start_broker("--topic", "ops3.status:1", NULL);
    tk_proc_t *relay = start_relay(NULL, NULL);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    out = status_output(1);
    TF_CHECK(tf_matches(out, "\"backlog\": *0[,}]"), "no \"backlog\":0 after the drain in:\n%s", out);
    TF_CHECK(tf_matches(out, "\"leader\": *\\{[^}]*\"application_name\": *\"outbox-relay"),
             "the leader object does not name outbox-relay:\n%s", out);
    const char *bpid = strstr(out, "\"backend_pid\":");
    TF_CHECK(bpid, "the leader object has no backend_pid:\n%s", out);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outbox-relay%%' "
             "AND pid = %ld", strtol(bpid + 14, NULL, 10));
    TF_CHECK(tu_scalar(tf_conn, sql) == 1, "the leader's backend_pid is no outbox-relay session:\n%s", out);
    /* The relay's own pid, once its session names it (relay/pgsession.c), is this relay's. */
    const char *pid = strstr(out, "\"pid\":");
    TF_CHECK(pid, "the leader object has no pid:\n%s", out);
    if (strncmp(pid + 6, "null", 4))
        TF_CHECK(strtol(pid + 6, NULL, 10) == (long)relay->pid, "the leader's pid is not the relay's (%d):\n%s",
                 (int)relay->pid, out);
    free(out);
    out = status_output(0);
    TF_CHECK(tf_matches(out, "^leader: *pid=[^ ]+ host=[^ ]+ application_name=\"outbox-relay.*backend_pid=[0-9]+"),
             "human status names no leader:\n%s", out);
    free(out);
}
END_TEST

/* The leader is named by its relay's own pid and host, which the relay's session carries in
 * application_name ("<relay.application.name> pid=<pid> host=<host>"); a session here plays it. */
START_TEST(test_status_names_the_leader_relay) {
    char *ci;
    ck_assert(asprintf(&ci, "%s application_name='outbox-relay pid=4242 host=relay-host-1'",
                       getenv("OUTBOX_TEST_PG")) > 0);
    PGconn *leader = PQconnectdb(ci);
    TF_CHECK(PQstatus(leader) == CONNECTION_OK, "%s", PQerrorMessage(leader));
    char lock[160];
    snprintf(lock, sizeof(lock), "liboutbox.relay:%s", tf_schema);
    const char *p[1] = {lock};
    PGresult *res = PQexecParams(leader, "SELECT pg_advisory_lock(hashtextextended($1, 0))", 1, NULL, p, NULL,
                                 NULL, 0);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);

    char *out = status_output(1), want[256];
    snprintf(want, sizeof(want), "\"leader\":{\"pid\":4242,\"host\":\"relay-host-1\",\"application_name\":"
             "\"outbox-relay pid=4242 host=relay-host-1\",\"backend_pid\":%d,", PQbackendPID(leader));
    TF_CHECK(strstr(out, want), "no %s in:\n%s", want, out);
    free(out);
    out = status_output(0);
    snprintf(want, sizeof(want), "^leader: +pid=4242 host=relay-host-1 .*backend_pid=%d ", PQbackendPID(leader));
    TF_CHECK(tf_matches(out, want), "human status does not name the leader relay (%s):\n%s", want, out);
    /* One set of names: every field of the JSON object is a line of the text. */
    static const char *const fields[] = {"schema", "schema_version", "backlog", "oldest_age_seconds", "dead_letters",
                                         "leader"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        snprintf(want, sizeof(want), "^%s: +[^ ]", fields[i]);
        TF_CHECK(tf_matches(out, want), "human status has no \"%s:\" line:\n%s", fields[i], out);
    }
    free(out);
    out = status_output(1);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        snprintf(want, sizeof(want), "\"%s\":", fields[i]);
        TF_CHECK(strstr(out, want), "status --json has no %s:\n%s", want, out);
    }
    free(out);
    PQfinish(leader);
    free(ci);

    /* A leader whose session does not carry them: its pid and host are unknown, not PostgreSQL's. */
    ck_assert(asprintf(&ci, "%s application_name=other-relay", getenv("OUTBOX_TEST_PG")) > 0);
    leader = PQconnectdb(ci);
    TF_CHECK(PQstatus(leader) == CONNECTION_OK, "%s", PQerrorMessage(leader));
    res = PQexecParams(leader, "SELECT pg_advisory_lock(hashtextextended($1, 0))", 1, NULL, p, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    out = status_output(1);
    snprintf(want, sizeof(want), "\"leader\":{\"pid\":null,\"host\":null,\"application_name\":\"other-relay\","
             "\"backend_pid\":%d,", PQbackendPID(leader));
    TF_CHECK(strstr(out, want), "no %s in:\n%s", want, out);
    free(out);
    out = status_output(0);
    TF_CHECK(tf_matches(out, "^leader: +pid=unknown host=unknown application_name=\"other-relay\""),
             "human status of an unnamed leader:\n%s", out);
    free(out);
    PQfinish(leader);
    free(ci);
}
END_TEST

/* ---- 4a. configuration and help ---------------------------------------------------------------- */

START_TEST(test_run_needs_bootstrap_servers) {
    static const char *const values[] = {"kafka.bootstrap.servers=", "kafka.bootstrap.servers=  ", NULL};
    for (int i = 0; i < 3; i++) {
        cli_t c = values[i] ? CLI(NULL, "-X", values[i], "run") : CLI(NULL, "run");
        TF_CHECK(c.rc == 2 && strstr(c.err, "kafka.bootstrap.servers is ") && strstr(c.err, "-X kafka.bootstrap.servers="),
                 "run with %s: exit %d, stderr: %s", values[i] ? values[i] : "no kafka.bootstrap.servers", c.rc, c.err);
        cli_free(&c);
    }
}
END_TEST

START_TEST(test_help_lists_every_key_and_verb) {
    cli_t c = CLI(NULL, "--help");
    ck_assert_int_eq(c.rc, 0);
    for (const outbox_conf_prop_t *p = outbox_conf_props(); p->name; p++) {
        char re[128];
        snprintf(re, sizeof(re), "^  %s ", p->name);
        TF_CHECK(tf_matches(c.out, re), "--help does not list %s:\n%s", p->name, c.out);
    }
    /* Grouped by who reads them. */
    const char *w = strstr(c.out, "\n  writer.allow.autocommit"), *cg = strstr(c.out, "\n  consumer.group.id");
    const char *wt = strstr(c.out, "when your service writes"), *ct = strstr(c.out, "in your consumer service");
    TF_CHECK(w && wt && wt < w && cg && ct && ct < cg && wt < ct, "writer.* and consumer.* keys are not under "
             "their readers:\n%s", c.out);
    static const char *const verbs[] = {"run", "migrate", "status", "dead-letters", "consumer-dead-letters",
                                       "parked", "grants"};
    const char *body = strstr(c.out, "\n\n");
    ck_assert_ptr_nonnull(body);
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        char re[96];
        snprintf(re, sizeof(re), "[[|]%s[]|]", verbs[i]);
        char *usage = strndup(c.out, (size_t)(body - c.out));
        TF_CHECK(tf_matches(usage, re), "the usage line does not list %s:\n%s", verbs[i], usage);
        free(usage);
        snprintf(re, sizeof(re), "^  %s( |$)", verbs[i]);
        TF_CHECK(tf_matches(body, re), "--help does not describe %s:\n%s", verbs[i], c.out);
    }
    TF_CHECK(strstr(c.out, "same message id"), "--help does not say retry keeps the message id:\n%s", c.out);
    static const char *const subs[] = {"dead-letters prune --older-than", "consumer-dead-letters list",
                                       "consumer-dead-letters drop", "consumer-dead-letters prune", "--json"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
        TF_CHECK(strstr(c.out, subs[i]), "--help does not mention %s:\n%s", subs[i], c.out);
    cli_free(&c);
}
END_TEST

/* ---- 4. dead letters ---------------------------------------------------------------------------- */

START_TEST(test_dead_letters_list_retry_drop) {
    tf_start_broker("--topic", "ops4.fixed:1", NULL);
    poison_t bad[3];
    for (int i = 0; i < 3; i++)
        insert_poison(&bad[i], "ops4.fixed", i);
    start_relay(NULL, "relay.poison.policy=dead-letter", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 3, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 5000);

    char *sch;
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    ck_assert_int_eq(setenv("OUTBOX_PG_CONNINFO", getenv("OUTBOX_TEST_PG"), 1), 0);

    tk_proc_t *p = tf_relay_cli("-X", sch, "dead-letters", "list", NULL);
    char *out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0, "dead-letters list: %s; stderr:\n%s", tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    for (int i = 0; i < 3; i++) {
        char sql[256], line_re[256];
        snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT error FROM @.dead_letters WHERE id = "), bad[i].id);
        PGresult *res = PQexec(tf_conn, sql);
        ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
        TF_CHECK(PQntuples(res) == 1, "outbox row %lld is not in dead_letters", bad[i].id);
        const char *error = PQgetvalue(res, 0, 0);
        TF_CHECK(strstr(error, "topic") || strstr(error, "destination"), "dead letter error: '%s'", error);
        /* One line per row: its id, its message id, and the error in full. */
        snprintf(line_re, sizeof(line_re), "^%lld +%s +bad topic! .*", bad[i].id, bad[i].message_id);
        TF_CHECK(tf_matches(out, line_re), "dead-letters list has no line for %lld (%s):\n%s", bad[i].id,
                 bad[i].message_id, out);
        TF_CHECK(strstr(out, error), "dead-letters list does not show the error '%s':\n%s", error, out);
        PQclear(res);
    }
    TF_CHECK(tf_matches(out, "^\\(3 dead letters\\)$"), "dead-letters list does not count 3:\n%s", out);
    free(out);

    /* The operator fixes one row's destination and retries it: it leaves dead_letters and, with
     * the relay still running, arrives on that topic as the same message. */
    char sql[256], idbuf[32];
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("UPDATE @.dead_letters SET destination = 'ops4.fixed' WHERE id = "),
             bad[0].id);
    tu_exec(tf_conn, sql);
    snprintf(idbuf, sizeof(idbuf), "%lld", bad[0].id);
    p = tf_relay_cli("-X", sch, "dead-letters", "retry", idbuf, NULL);
    TF_CHECK(tf_exit_code(p) == 0, "dead-letters retry %s: %s; stderr:\n%s", idbuf, tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT count(*) FROM @.dead_letters WHERE id = "), bad[0].id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 2);
    tk_consumer_t *c = read_topic("ops4.fixed", 1, 30000);
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    TF_CHECK(n == 1, "%zu records on ops4.fixed after retrying one dead letter", n);
    const char *hid = tk_record_header(&recs[0], "id");
    TF_CHECK(hid && !strcmp(hid, bad[0].message_id), "record header id %s, the dead letter's message id %s",
             hid ? hid : "(none)", bad[0].message_id);
    TF_CHECK(recs[0].value_len == bad[0].env_len && !memcmp(recs[0].value, bad[0].env, bad[0].env_len),
             "the record's value (%zu bytes) is not the dead letter's envelope (%zu bytes)", recs[0].value_len,
             bad[0].env_len);
    outbox_message_t *m = NULL;
    char err[256];
    TF_CHECK(outbox_message_decode(&m, recs[0].value, recs[0].value_len, err, sizeof(err)) == OUTBOX_OK, "%s", err);
    ck_assert_str_eq(outbox_message_id(m), bad[0].message_id);
    outbox_message_destroy(m);
    tk_consumer_free(c);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 10000);

    /* An unknown id is an error naming it. */
    p = tf_relay_cli("-X", sch, "dead-letters", "retry", "999999", NULL);
    char *errtext = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 1 && strstr(errtext, "999999"), "retry 999999: %s, stderr '%s'",
             tk_status_str(p->status), errtext);
    free(errtext);
    tk_proc_free(p);

    /* Dropping everything needs --yes. */
    p = tf_relay_cli("-X", sch, "dead-letters", "drop", "--all", NULL);
    errtext = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 2 && strstr(errtext, "--yes"), "drop --all without --yes: %s, stderr '%s'",
             tk_status_str(p->status), errtext);
    free(errtext);
    tk_proc_free(p);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 2);

    snprintf(idbuf, sizeof(idbuf), "%lld", bad[1].id);
    p = tf_relay_cli("-X", sch, "dead-letters", "drop", idbuf, NULL);
    TF_CHECK(tf_exit_code(p) == 0, "drop %s: %s; stderr:\n%s", idbuf, tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT count(*) FROM @.dead_letters WHERE id = "), bad[1].id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 1);

    p = tf_relay_cli("-X", sch, "dead-letters", "drop", "--all", "--yes", NULL);
    TF_CHECK(tf_exit_code(p) == 0, "drop --all --yes: %s; stderr:\n%s", tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    /* Dropped rows were deleted, not sent: nothing more on the topic, nothing back in the outbox. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")), 0);

    p = tf_relay_cli("-X", sch, "dead-letters", "frob", NULL);
    errtext = tk_read_file(p->err_path);
    TF_CHECK(tf_exit_code(p) == 2 && strstr(errtext, "frob"), "dead-letters frob: %s, stderr '%s'",
             tk_status_str(p->status), errtext);
    free(errtext);
    tk_proc_free(p);

    unsetenv("OUTBOX_PG_CONNINFO");
    free(sch);
    for (int i = 0; i < 3; i++)
        free(bad[i].env);
}
END_TEST

/* Inserts a dead letter as the relay would have left it, failed age_sql ago (an interval). */
static void insert_dead_letter(long long id, const char *message_id_sql, const char *age_sql, int attempts) {
    char sql[512];
    snprintf(sql, sizeof(sql), "%s (%lld, %s, 'ops4.list', 'kp', 'test.List', '\\x0a00', now(), 'boom %lld', "
             "now() - interval '%s', %d)", tf_q("INSERT INTO @.dead_letters (id, message_id, destination, "
             "partition_key, message_type, envelope, created_at, error, failed_at, attempts) VALUES"),
             id, message_id_sql, id, age_sql, attempts);
    tu_exec(tf_conn, sql);
}

START_TEST(test_dead_letters_limit_json_prune) {
    insert_dead_letter(2001, "'0190d5a8-0000-7000-8000-000000002001'", "10 days", 3);
    insert_dead_letter(2002, "'0190d5a8-0000-7000-8000-000000002002'", "2 hours", 1);
    insert_dead_letter(2003, "NULL", "1 second", 1);

    /* --limit 0 is no limit. */
    cli_t c = CLI(NULL, "dead-letters", "list", "--limit", "0");
    TF_CHECK(c.rc == 0, "list --limit 0: exit %d; stderr:\n%s", c.rc, c.err);
    for (int id = 2001; id <= 2003; id++) {
        char re[64];
        snprintf(re, sizeof(re), "^%d +", id);
        TF_CHECK(tf_matches(c.out, re), "list --limit 0 has no line for %d:\n%s", id, c.out);
    }
    TF_CHECK(tf_matches(c.out, "^\\(3 dead letters\\)$"), "list --limit 0 does not count 3:\n%s", c.out);
    cli_free(&c);

    /* A limit below the total says how many there are. */
    c = CLI(NULL, "dead-letters", "list", "--limit", "2");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^\\(2 shown of 3 dead letters; --limit 0 shows them all\\)$") &&
             !tf_matches(c.out, "^2003 "), "list --limit 2: exit %d:\n%s", c.rc, c.out);
    cli_free(&c);

    /* A bad value is named, with the fix. */
    c = CLI(NULL, "dead-letters", "list", "--limit", "x");
    TF_CHECK(c.rc == 2 && strstr(c.err, "--limit \"x\" is not a number") && strstr(c.err, "--limit 0"),
             "list --limit x: exit %d, stderr: %s", c.rc, c.err);
    cli_free(&c);

    c = CLI(NULL, "dead-letters", "list", "--json");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^\\{.*\\}$"), "list --json: exit %d:\n%s", c.rc, c.out);
    TF_CHECK(strstr(c.out, "\"total\":3,\"shown\":3,\"dead_letters\":[{\"id\":2001,"
                           "\"message_id\":\"0190d5a8-0000-7000-8000-000000002001\",\"destination\":\"ops4.list\","
                           "\"message_type\":\"test.List\",\"failed_at\":\""),
             "list --json does not describe 2001:\n%s", c.out);
    TF_CHECK(tf_matches(c.out, "\"attempts\":3,\"bytes\":2,\"error\":\"boom 2001\"\\}"), "2001's attempts:\n%s", c.out);
    TF_CHECK(strstr(c.out, "{\"id\":2003,\"message_id\":null,"), "a dead letter without message id:\n%s", c.out);
    cli_free(&c);

    static const char *const bad[] = {"7x", "0d", "d", "7", "-1d", "1.5h"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = CLI(NULL, "dead-letters", "prune", "--older-than", bad[i]);
        char want[64];
        snprintf(want, sizeof(want), "--older-than \"%s\" is not a duration", bad[i]);
        TF_CHECK(c.rc == 2 && strstr(c.err, want) && strstr(c.err, "7d"), "prune --older-than %s: exit %d, "
                 "stderr: %s", bad[i], c.rc, c.err);
        cli_free(&c);
    }
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 3);

    c = CLI(NULL, "dead-letters", "prune", "--older-than", "1d");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^pruned: 1 dead letter$"), "prune 1d: exit %d:\n%s%s", c.rc, c.out, c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id = 2001")), 0);
    c = CLI(NULL, "dead-letters", "prune", "--older-than", "30m");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^pruned: 1 dead letter$"), "prune 30m: exit %d:\n%s%s", c.rc, c.out,
             c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters WHERE id = 2003")), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 1);
}
END_TEST

/* retry keeps the message id and the count of attempts; the row gets a new outbox id. */
START_TEST(test_dead_letters_retry_keeps_message_id_and_attempts) {
    tf_start_broker("--topic", "ops4.fixed:1", NULL);
    poison_t bad;
    insert_poison(&bad, "ops4.fixed", 0);
    tk_proc_t *relay = start_relay(NULL, "relay.poison.policy=dead-letter", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 1, 30000);
    char sql[256];
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT attempts FROM @.dead_letters WHERE id = "), bad.id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 1);
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 15000), "the relay did not exit within 15 s of SIGTERM");

    /* As if it had failed four times. */
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("UPDATE @.dead_letters SET attempts = 4 WHERE id = "), bad.id);
    tu_exec(tf_conn, sql);
    char idbuf[32];
    snprintf(idbuf, sizeof(idbuf), "%lld", bad.id);
    cli_t c = CLI(NULL, "dead-letters", "retry", idbuf);
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^moved back to the outbox: 1 dead letter$"), "retry: exit %d:\n%s%s",
             c.rc, c.out, c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    snprintf(sql, sizeof(sql), "%s'%s' AND attempts = 4 AND id > %lld",
             tf_q("SELECT count(*) FROM @.messages WHERE message_id = "), bad.message_id, bad.id);
    TF_CHECK(tu_scalar(tf_conn, sql) == 1, "the retried row is not in the outbox with its message id, its 4 "
             "attempts and a new outbox id");

    /* It fails again (its destination is still bad): the same message is dead-lettered again, and
     * its attempts go on from 4 to 5. */
    start_relay(NULL, "relay.poison.policy=dead-letter", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 1, 30000);
    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT count(*) FROM @.dead_letters WHERE message_id = "),
             bad.message_id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 1);
    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT attempts FROM @.dead_letters WHERE message_id = "),
             bad.message_id);
    TF_CHECK(tu_scalar(tf_conn, sql) == 5, "a retried dead letter that failed again counts %lld attempts, "
             "expected 5", tu_scalar(tf_conn, sql));
    free(bad.env);
}
END_TEST

START_TEST(test_consumer_dead_letters) {
    tu_exec(tf_conn, tf_q("INSERT INTO @.consumer_dead_letters (consumer, message_id, reason, raw, topic, "
                          "kafka_partition, kafka_offset, rejected_at) VALUES "
                          "('g1', 'm-1', 'undecodable', '\\x0102', 'orders', 0, 10, now() - interval '3 days'),"
                          "('g1', NULL, 'unknown kind', NULL, 'orders', 1, 11, now()),"
                          "('g1', 'm-3', 'schema major 9', '\\x00', 'orders', 0, 12, now()),"
                          "('g2', 'm-4', 'undecodable', '\\x00', 'orders', 0, 13, now() - interval '3 days')"));
    long long id3 = tu_scalar(tf_conn, tf_q("SELECT id FROM @.consumer_dead_letters WHERE message_id = 'm-3'"));
    long long id4 = tu_scalar(tf_conn, tf_q("SELECT id FROM @.consumer_dead_letters WHERE message_id = 'm-4'"));
    char id3s[32], id4s[32];
    snprintf(id3s, sizeof(id3s), "%lld", id3);
    snprintf(id4s, sizeof(id4s), "%lld", id4);

    cli_t c = CLI(NULL, "consumer-dead-letters", "list");
    TF_CHECK(c.rc == 2 && strstr(c.err, "--group GROUP"), "list without --group: exit %d, stderr: %s", c.rc, c.err);
    cli_free(&c);

    c = CLI(NULL, "consumer-dead-letters", "list", "--group", "g1");
    TF_CHECK(c.rc == 0, "list --group g1: exit %d; stderr:\n%s", c.rc, c.err);
    TF_CHECK(tf_matches(c.out, "^[0-9]+ +m-1 +orders +0 +10 +.*undecodable$") &&
             tf_matches(c.out, "^[0-9]+ +- +orders +1 +11 .*unknown kind$") && !strstr(c.out, "m-4") &&
             tf_matches(c.out, "^\\(3 consumer dead letters of group g1\\)$"), "list --group g1:\n%s", c.out);
    cli_free(&c);

    c = CLI(NULL, "consumer-dead-letters", "list", "--json", "--group", "g1", "--limit", "1");
    TF_CHECK(c.rc == 0 && strstr(c.out, "{\"group\":\"g1\",\"total\":3,\"shown\":1,\"consumer_dead_letters\":[{\"id\":") &&
             strstr(c.out, "\"message_id\":\"m-1\",\"topic\":\"orders\",\"partition\":0,\"offset\":10,"),
             "list --json --limit 1: exit %d:\n%s", c.rc, c.out);
    cli_free(&c);

    /* Another group's row is not this group's to drop. */
    c = CLI(NULL, "consumer-dead-letters", "drop", id4s, "--group", "g1");
    TF_CHECK(c.rc == 1 && strstr(c.err, id4s) && strstr(c.err, "g1"), "drop g2's row as g1: exit %d, stderr: %s",
             c.rc, c.err);
    cli_free(&c);
    c = CLI(NULL, "consumer-dead-letters", "drop", "--all", "--group", "g1");
    TF_CHECK(c.rc == 2 && strstr(c.err, "--yes"), "drop --all without --yes: exit %d, stderr: %s", c.rc, c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters")), 4);

    c = CLI(NULL, "consumer-dead-letters", "prune", "--older-than", "2d", "--group", "g1");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^pruned: 1 consumer dead letter$"), "prune: exit %d:\n%s%s", c.rc,
             c.out, c.err);
    cli_free(&c);
    c = CLI(NULL, "consumer-dead-letters", "drop", id3s, "--group", "g1");
    TF_CHECK(c.rc == 0 && tf_matches(c.out, "^dropped: 1 consumer dead letter$"), "drop: exit %d:\n%s%s", c.rc,
             c.out, c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'g1'")), 1);
    c = CLI(NULL, "consumer-dead-letters", "drop", "--all", "--yes", "--group", "g1");
    TF_CHECK(c.rc == 0, "drop --all --yes: exit %d:\n%s", c.rc, c.err);
    cli_free(&c);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'g1'")), 0);
    /* The other group's, old as it is, stays. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters WHERE consumer = 'g2'")), 1);
}
END_TEST

/* ---- 4b. signals end the one-shot verbs ------------------------------------------------------- */

/* A TCP listener on 127.0.0.1 (ephemeral port) that never answers: the kernel completes the
 * handshake, so a client connecting to it waits for PostgreSQL's reply until its own timeout. */
static int silent_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, len) == 0, "bind: %s", strerror(errno));
    ck_assert_msg(listen(fd, 8) == 0, "listen: %s", strerror(errno));
    ck_assert_msg(getsockname(fd, (struct sockaddr *)&sa, &len) == 0, "getsockname: %s", strerror(errno));
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Starts `outbox-relay verb...` against a server that never answers, waits until it is blocked on
 * that connection, sends sig and requires it to end promptly and not report success: only `run`
 * has a loop that shuts down in order, every other verb must die as a plain program does. */
static void check_blocked_verb_ends_on(const char *const *verb, int sig) {
    int port, lfd = silent_listener(&port);
    char *ci;
    ck_assert(asprintf(&ci, "pg.conninfo=host=127.0.0.1 port=%d dbname=never user=never sslmode=disable "
                            "gssencmode=disable connect_timeout=60", port) > 0);
    char *prog = tk_build_path("outbox-relay");
    const char *argv[16] = {prog, "-X", ci};
    size_t n = 3;
    for (; *verb; verb++)
        argv[n++] = *verb;
    argv[n] = NULL;
    /* The child inherits an ignored signal across exec (e.g. SIGINT for a background job of a
     * non-interactive shell): give it the default, as a terminal would. */
    struct sigaction dfl = {.sa_handler = SIG_DFL}, saved;
    sigemptyset(&dfl.sa_mask);
    ck_assert_int_eq(sigaction(sig, &dfl, &saved), 0);
    tk_proc_t *p = tk_proc_start(argv[3], argv);
    ck_assert_int_eq(sigaction(sig, &saved, NULL), 0);

    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    TF_CHECK(poll(&pfd, 1, 10000) == 1, "outbox-relay %s did not connect within 10 s: %s; stderr:\n%s",
             argv[3], tk_proc_running(p) ? "still running" : tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    int cfd = accept(lfd, NULL, NULL); /* held open, never answered */
    ck_assert_msg(cfd >= 0, "accept: %s", strerror(errno));
    tk_sleep_ms(500);
    TF_CHECK(tk_proc_running(p), "outbox-relay %s ended before the signal: %s; stderr:\n%s", argv[3],
             tk_status_str(p->status), tk_file_tail(p->err_path, 2000));
    tk_proc_signal(p, sig);
    TF_CHECK(tk_proc_wait(p, 3000), "outbox-relay %s, blocked connecting, was still running 3 s after %s",
             argv[3], strsignal(sig));
    TF_CHECK(tf_exit_code(p) != 0, "outbox-relay %s reported success after %s", argv[3], strsignal(sig));
    tk_proc_free(p);
    close(cfd);
    close(lfd);
    free(prog);
    free(ci);
}

START_TEST(test_signal_ends_blocked_admin_verbs) {
    static const char *const verbs[][4] = {
        {"status", NULL}, {"migrate", NULL}, {"dead-letters", "list", NULL}, {"dead-letters", "drop", "7", NULL}};
    static const int sigs[] = {SIGTERM, SIGINT};
    for (size_t v = 0; v < sizeof(verbs) / sizeof(verbs[0]); v++)
        for (size_t s = 0; s < 2; s++)
            check_blocked_verb_ends_on(verbs[v], sigs[s]);
}
END_TEST

/* ---- 5. the installed library ------------------------------------------------------------------ */

/* A program outside the tree: only <outbox/outbox.h>, as a user of the installed library writes. */
static const char outside_prog[] =
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "#include <outbox/outbox.h>\n"
    "\n"
    "int main(int argc, char **argv) {\n"
    "    if (argc != 3) { fprintf(stderr, \"usage: prog SCHEMA TOPIC\\n\"); return 2; }\n"
    "    PGconn *conn = PQconnectdb(getenv(\"OUTBOX_PG_CONNINFO\"));\n"
    "    if (PQstatus(conn) != CONNECTION_OK) { fprintf(stderr, \"%s\", PQerrorMessage(conn)); return 1; }\n"
    "    char err[512];\n"
    "    outbox_conf_t *conf = outbox_conf_new();\n"
    "    if (outbox_conf_set(conf, \"outbox.schema\", argv[1], err, sizeof err) != OUTBOX_CONF_OK) {\n"
    "        fprintf(stderr, \"%s\\n\", err); return 1; }\n"
    "    outbox_t *ob = outbox_new(conf, err, sizeof err);\n"
    "    if (!ob) { fprintf(stderr, \"%s\\n\", err); return 1; }\n"
    "    if (outbox_migrate(ob, conn) != OUTBOX_OK) { fprintf(stderr, \"%s\\n\", outbox_errmsg(ob)); return 1; }\n"
    "    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, argv[2], \"install.Checked\");\n"
    "    outbox_message_set_payload(m, \"hello\", 5);\n"
    "    PQclear(PQexec(conn, \"BEGIN\"));\n"
    "    if (outbox_send(ob, conn, m) != OUTBOX_OK) { fprintf(stderr, \"%s\\n\", outbox_errmsg(ob)); return 1; }\n"
    "    PGresult *res = PQexec(conn, \"COMMIT\");\n"
    "    if (PQresultStatus(res) != PGRES_COMMAND_OK) { fprintf(stderr, \"commit failed\\n\"); return 1; }\n"
    "    PQclear(res);\n"
    "    printf(\"%s\\n\", outbox_message_id(m));\n"
    "    fprintf(stderr, \"liboutbox %s\\n\", outbox_version_str());\n"
    "    outbox_message_destroy(m);\n"
    "    outbox_destroy(ob);\n"
    "    PQfinish(conn);\n"
    "    return 0;\n"
    "}\n";

static void must_exist(const char *root, const char *rel, mode_t type) {
    char path[1024];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    TF_CHECK(lstat(path, &st) == 0, "make install did not place %s (%s)", rel, strerror(errno));
    TF_CHECK((st.st_mode & S_IFMT) == type, "%s is not a %s", rel, type == S_IFLNK ? "symlink" : "regular file");
}

START_TEST(test_installed_library_builds_an_outside_program) {
    TF_CHECK(access("Makefile", R_OK) == 0 && access("include/outbox/outbox.h", R_OK) == 0,
             "the test must run from the repository root (no Makefile here)");
    char *destdir = tk_scratch_path("inst"), *cmd;
    /* A plain user's `make install`: not the make that may be running this suite (its jobserver,
     * and its SANITIZE/BUILD settings, which make also exports into the environment, are not ours). */
    ck_assert(asprintf(&cmd, "unset MAKEFLAGS MFLAGS MAKELEVEL SANITIZE BUILD; exec make --no-print-directory install "
                             "DESTDIR='%s' PREFIX=/usr/local", destdir) > 0);
    tk_proc_t *p = sh("make-install", cmd, 170000);
    TF_CHECK(tf_exit_code(p) == 0, "make install: %s; stderr:\n%s", tk_status_str(p->status),
             tk_file_tail(p->err_path, 3000));
    tk_proc_free(p);
    free(cmd);

    char root[1024], path[1200], target[256];
    snprintf(root, sizeof(root), "%s/usr/local", destdir);
    must_exist(root, "lib/liboutbox.so.0", S_IFLNK);
    snprintf(path, sizeof(path), "%s/lib/liboutbox.so.0", root);
    ssize_t tl = readlink(path, target, sizeof(target) - 1);
    ck_assert(tl > 0);
    target[tl] = '\0';
    char versioned[64];
    snprintf(versioned, sizeof(versioned), "liboutbox.so.%s", outbox_version_str());
    TF_CHECK(!strcmp(target, versioned), "liboutbox.so.0 points to %s, expected %s", target, versioned);
    snprintf(path, sizeof(path), "lib/%s", versioned);
    must_exist(root, path, S_IFREG);
    must_exist(root, "lib/liboutbox.so", S_IFLNK); /* what -loutbox finds */
    must_exist(root, "lib/liboutbox.a", S_IFREG);
    must_exist(root, "include/outbox/outbox.h", S_IFREG);
    must_exist(root, "lib/pkgconfig/liboutbox.pc", S_IFREG);
    must_exist(root, "bin/outbox-relay", S_IFREG);
    must_exist(root, "share/man/man1/outbox-relay.1", S_IFREG);
    must_exist(root, "share/liboutbox/relay.conf.example", S_IFREG);
    must_exist(root, "lib/systemd/system/outbox-relay.service", S_IFREG);
    snprintf(path, sizeof(path), "%s/bin/outbox-relay", root);
    TF_CHECK(access(path, X_OK) == 0, "%s is not executable", path);
    char *installed_hdr, *repo_hdr = tk_read_file("include/outbox/outbox.h");
    snprintf(path, sizeof(path), "%s/include/outbox/outbox.h", root);
    installed_hdr = tk_read_file(path);
    TF_CHECK(!strcmp(installed_hdr, repo_hdr), "the installed header differs from include/outbox/outbox.h");
    free(installed_hdr);
    free(repo_hdr);
    snprintf(path, sizeof(path), "%s/lib/systemd/system/outbox-relay.service", root);
    char *unit = tk_read_file(path);
    TF_CHECK(tf_matches(unit, "^Restart=on-failure$"), "the unit has no Restart=on-failure:\n%s", unit);
    TF_CHECK(tf_matches(unit, "^KillSignal=SIGTERM$"), "the unit has no KillSignal=SIGTERM:\n%s", unit);
    TF_CHECK(tf_matches(unit, "^TimeoutStopSec=[0-9]+"), "the unit has no TimeoutStopSec:\n%s", unit);
    TF_CHECK(tf_matches(unit, "^ExecStart=/usr/local/bin/outbox-relay "), "ExecStart is not the installed relay:\n%s",
             unit);
    free(unit);

    /* Compile an outside program against the DESTDIR tree, which stands in for /usr/local.  The
     * sysroot also prefixes libpq's flags, which stay the system's: add those unprefixed. */
    char *src = tk_scratch_path("outside.c"), *bin = tk_scratch_path("outside");
    FILE *f = fopen(src, "w");
    ck_assert_ptr_nonnull(f);
    fputs(outside_prog, f);
    fclose(f);
    ck_assert(asprintf(&cmd, "cc -o '%s' '%s' $(PKG_CONFIG_SYSROOT_DIR='%s' PKG_CONFIG_PATH='%s/lib/pkgconfig' "
                             "pkg-config --cflags --libs liboutbox) $(pkg-config --cflags --libs libpq)",
                       bin, src, destdir, root) > 0);
    p = sh("cc", cmd, 60000);
    TF_CHECK(tf_exit_code(p) == 0, "compiling against the installed library: %s\n%s\nstderr:\n%s",
             tk_status_str(p->status), cmd, tk_file_tail(p->err_path, 3000));
    tk_proc_free(p);
    free(cmd);

    tf_schema2 = tu_schema_name("t_ops_inst");
    ck_assert(asprintf(&cmd, "OUTBOX_PG_CONNINFO='%s' LD_LIBRARY_PATH='%s/lib' exec '%s' '%s' ops5.installed",
                       getenv("OUTBOX_TEST_PG"), root, bin, tf_schema2) > 0);
    p = sh("outside", cmd, 30000);
    char *out = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0, "the outside program: %s; stderr:\n%s", tk_status_str(p->status),
             tk_file_tail(p->err_path, 3000));
    tk_proc_free(p);
    free(cmd);
    char id[37] = "";
    TF_CHECK(sscanf(out, "%36s", id) == 1 && strlen(id) == 36, "the outside program printed no message id: '%s'",
             out);
    free(out);
    /* It ran on the installed library, not on one found elsewhere. */
    ck_assert(asprintf(&cmd, "LD_LIBRARY_PATH='%s/lib' ldd '%s' | grep -F 'liboutbox.so.0 => %s/lib/'", root,
                       bin, root) > 0);
    p = sh("ldd", cmd, 10000);
    TF_CHECK(tf_exit_code(p) == 0, "the outside program does not resolve liboutbox.so.0 in %s/lib:\n%s", root,
             tk_file_tail(p->out_path, 2000));
    tk_proc_free(p);
    free(cmd);
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".messages WHERE message_id = '%s' "
             "AND destination = 'ops5.installed'", tf_schema2, id);
    TF_CHECK(tu_scalar(tf_conn, sql) == 1, "no row with message id %s in schema %s", id, tf_schema2);

    /* The installed relay: its version, and it publishes that row. */
    snprintf(path, sizeof(path), "%s/bin/outbox-relay", root);
    const char *vargv[] = {path, "--version", NULL};
    int timed_out;
    p = tk_proc_run("inst-version", vargv, 10000, &timed_out);
    out = tk_read_file(p->out_path);
    TF_CHECK(!timed_out && tf_exit_code(p) == 0 && strstr(out, outbox_version_str()),
             "installed outbox-relay --version: %s, output '%s'", tk_status_str(p->status), out);
    free(out);
    tk_proc_free(p);

    tf_start_broker("--topic", "ops5.installed:1", NULL);
    tf_start_relay_with(&(tf_relay_opts_t){.prog = path, .schema = tf_schema2}, NULL);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".messages", tf_schema2);
    wait_count(sql, 0, 30000);
    tk_consumer_t *c = read_topic("ops5.installed", 1, 30000);
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    TF_CHECK(n == 1, "%zu records on ops5.installed, expected 1", n);
    const char *hid = tk_record_header(&recs[0], "id");
    TF_CHECK(hid && !strcmp(hid, id), "record id %s, the outside program sent %s", hid ? hid : "(none)", id);
    tk_consumer_free(c);
    free(src);
    free(bin);
    free(destdir);
}
END_TEST

/* ---- 6. least privilege ------------------------------------------------------------------------- */

static char role_w[40], role_r[40], role_c[40];

static void drop_roles(void) {
    if (!role_w[0])
        return;
    char sql[1024];
    snprintf(sql, sizeof(sql), "REASSIGN OWNED BY %s, %s, %s TO postgres; DROP OWNED BY %s, %s, %s; "
             "DROP ROLE %s; DROP ROLE %s; DROP ROLE %s", role_w, role_r, role_c, role_w, role_r, role_c,
             role_w, role_r, role_c);
    tu_exec(tf_conn, sql);
    role_w[0] = '\0';
}

/* The SQLSTATE of running sql on c (an empty string when it succeeded). */
static const char *sqlstate_of(PGconn *c, const char *sql) {
    static char state[8];
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(state, sizeof(state), "%s", st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? "" : s ? s : "?");
    PQclear(res);
    return state;
}

/* Creates the three roles with `outbox-relay grants ... | psql`, as the schema's owner. */
static void apply_grants(void) {
    snprintf(role_w, sizeof(role_w), "ops_writer_%d", (int)getpid());
    snprintf(role_r, sizeof(role_r), "ops_relay_%d", (int)getpid());
    snprintf(role_c, sizeof(role_c), "ops_consumer_%d", (int)getpid());
    char *sch;
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    tk_proc_t *p = tf_relay_cli("-X", sch, "grants", "--writer", role_w, "--relay", role_r, "--consumer", role_c, NULL);
    char *grants = tk_read_file(p->out_path);
    TF_CHECK(tf_exit_code(p) == 0 && *grants, "grants: %s; stderr:\n%s", tk_status_str(p->status),
             tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
    free(sch);
    PGresult *res = PQexec(tf_conn, grants);
    TF_CHECK(PQresultStatus(res) == PGRES_COMMAND_OK, "applying the grants SQL failed: %s\n%s",
             PQresultErrorMessage(res), grants);
    PQclear(res);
    free(grants);
}

static char *role_conninfo(const char *role) {
    char *ci;
    ck_assert(asprintf(&ci, "%s user=%s", getenv("OUTBOX_TEST_PG"), role) > 0);
    return ci;
}

/* What a service does at start-up, as each role: outbox_migrate() and outbox_schema_version() on
 * a current schema only read, so they work for every role; an older schema needs the owner, and
 * the error says so; the relay's role runs every operator verb of outbox-relay. */
START_TEST(test_each_role_starts_up) {
    apply_grants();
    const char *roles[3] = {role_w, role_r, role_c};
    char *cis[3];
    PGconn *conns[3];
    outbox_t *obs[3];
    for (int k = 0; k < 3; k++) {
        cis[k] = role_conninfo(roles[k]);
        conns[k] = PQconnectdb(cis[k]);
        TF_CHECK(PQstatus(conns[k]) == CONNECTION_OK, "connecting as %s: %s", roles[k], PQerrorMessage(conns[k]));
        char err[256];
        outbox_conf_t *conf = outbox_conf_new();
        ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)), OUTBOX_CONF_OK);
        ck_assert_ptr_nonnull(obs[k] = outbox_new(conf, err, sizeof(err)));
        int v = -1;
        TF_CHECK(outbox_schema_version(obs[k], conns[k], &v) == OUTBOX_OK && v == OUTBOX_SCHEMA_VERSION,
                 "outbox_schema_version as %s: %d, %s", roles[k], v, outbox_errmsg(obs[k]));
        TF_CHECK(outbox_migrate(obs[k], conns[k]) == OUTBOX_OK, "outbox_migrate as %s on a current schema: %s",
                 roles[k], outbox_errmsg(obs[k]));
        ck_assert_int_eq(PQtransactionStatus(conns[k]), PQTRANS_IDLE);
        tu_exec(conns[k], "BEGIN");
        TF_CHECK(outbox_migrate(obs[k], conns[k]) == OUTBOX_OK, "outbox_migrate as %s in a transaction: %s",
                 roles[k], outbox_errmsg(obs[k]));
        tu_exec(conns[k], "COMMIT");
    }
    /* `migrate` as the relay's role on a current schema is a check. */
    cli_t c = CLI(cis[1], "migrate");
    TF_CHECK(c.rc == 0 && strstr(c.out, "already current"), "migrate as %s: exit %d:\n%s%s", role_r, c.rc, c.out,
             c.err);
    cli_free(&c);

    /* Back to version 1, as a library upgrade finds it: only the owner may migrate. */
    tu_exec(tf_conn, tf_q("DROP TABLE @.parked_keys, @.parked_messages, @.claim_state, @.consumer_parked, @.wal_state; "
                          "ALTER TABLE @.messages DROP COLUMN attempts; "
                          "DELETE FROM @.schema_version WHERE version > 1"));
    for (int k = 0; k < 3; k++) {
        outbox_err_t e = outbox_migrate(obs[k], conns[k]);
        const char *msg = outbox_errmsg(obs[k]);
        TF_CHECK(e == OUTBOX_ERR_SCHEMA && strstr(msg, roles[k]) && strstr(msg, "outbox-relay migrate") &&
                 strstr(msg, "owner") && strstr(msg, "version 1") && strstr(msg, "permission denied"),
                 "outbox_migrate as %s on version 1: %d, %s", roles[k], e, msg);
        ck_assert_int_eq(PQtransactionStatus(conns[k]), PQTRANS_IDLE);
    }
    c = CLI(cis[1], "migrate");
    TF_CHECK(c.rc == 1 && strstr(c.err, role_r) && strstr(c.err, "owner"), "migrate as %s on version 1: exit %d, "
             "stderr: %s", role_r, c.rc, c.err);
    cli_free(&c);
    c = CLI(NULL, "migrate");
    TF_CHECK(c.rc == 0 && strstr(c.out, "migrated from version 1"), "migrate as the owner: exit %d:\n%s%s", c.rc,
             c.out, c.err);
    cli_free(&c);
    for (int k = 0; k < 3; k++)
        TF_CHECK(outbox_migrate(obs[k], conns[k]) == OUTBOX_OK, "outbox_migrate as %s once migrated: %s", roles[k],
                 outbox_errmsg(obs[k]));

    /* The relay's role runs status and every dead-letter verb. */
    tu_exec(tf_conn, tf_q("INSERT INTO @.dead_letters (id, message_id, destination, envelope, created_at, error, "
                          "failed_at) VALUES (3001, gen_random_uuid(), 'ops6.x', '\\x00', now(), 'e', now()), "
                          "(3002, gen_random_uuid(), 'ops6.x', '\\x00', now(), 'e', now()), "
                          "(3003, gen_random_uuid(), 'ops6.x', '\\x00', now(), 'e', now() - interval '9 days');"
                          "INSERT INTO @.consumer_dead_letters (consumer, reason, rejected_at) VALUES "
                          "('g', 'r', now()), ('g', 'r', now() - interval '9 days')"));
    long long cid = tu_scalar(tf_conn, tf_q("SELECT min(id) FROM @.consumer_dead_letters")); /* the recent one */
    char cids[32];
    snprintf(cids, sizeof(cids), "%lld", cid);
    const char *const verbs[][8] = {
        {"status", NULL},
        {"dead-letters", "list", NULL},
        {"dead-letters", "retry", "3001", NULL},
        {"dead-letters", "drop", "3002", NULL},
        {"dead-letters", "prune", "--older-than", "1d", NULL},
        {"consumer-dead-letters", "list", "--group", "g", NULL},
        {"consumer-dead-letters", "prune", "--older-than", "1d", "--group", "g", NULL},
        {"consumer-dead-letters", "drop", cids, "--group", "g", NULL},
    };
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        c = cli_run(cis[1], verbs[i]);
        TF_CHECK(c.rc == 0 && !strstr(c.err, "permission denied"), "%s %s as %s: exit %d, stderr: %s", verbs[i][0],
                 verbs[i][1] ? verbs[i][1] : "", role_r, c.rc, c.err);
        cli_free(&c);
    }
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")), 1);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters")), 0);

    /* The writer's role may not: the error says which role may. */
    tu_exec(tf_conn, tf_q("INSERT INTO @.dead_letters (id, destination, envelope, created_at, error) VALUES "
                          "(3004, 'ops6.x', '\\x00', now(), 'e')"));
    c = CLI(cis[0], "dead-letters", "retry", "3004");
    TF_CHECK(c.rc == 1 && strstr(c.err, "permission denied") && strstr(c.err, "relay's role"),
             "retry as the writer: exit %d, stderr: %s", c.rc, c.err);
    cli_free(&c);

    for (int k = 0; k < 3; k++) {
        outbox_destroy(obs[k]);
        PQfinish(conns[k]);
        free(cis[k]);
    }
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('%s', '%s', '%s')", role_w,
             role_r, role_c);
    wait_count(sql, 0, 10000);
}
END_TEST

START_TEST(test_least_privilege_roles) {
    apply_grants();

    /* The writer adds messages in its own transaction, and can do nothing else to the outbox. */
    char *ci_w, *ci_r;
    ck_assert(asprintf(&ci_w, "%s user=%s", getenv("OUTBOX_TEST_PG"), role_w) > 0);
    ck_assert(asprintf(&ci_r, "%s user=%s", getenv("OUTBOX_TEST_PG"), role_r) > 0);
    PGconn *wc = PQconnectdb(ci_w);
    TF_CHECK(PQstatus(wc) == CONNECTION_OK, "connecting as %s: %s", role_w, PQerrorMessage(wc));
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *w = outbox_new(conf, err, sizeof(err));
    ck_assert_ptr_nonnull(w);
    enum { N = 20 };
    char ids[N][37];
    send_n(w, wc, "ops6.priv", N, ids);
    const char *st = sqlstate_of(wc, tf_q("SELECT count(*) FROM @.messages"));
    TF_CHECK(!strcmp(st, "42501"), "SELECT on the outbox as the writer: SQLSTATE '%s', expected 42501", st);
    st = sqlstate_of(wc, tf_q("DELETE FROM @.messages"));
    TF_CHECK(!strcmp(st, "42501"), "DELETE on the outbox as the writer: SQLSTATE '%s', expected 42501", st);
    st = sqlstate_of(wc, tf_q("SELECT count(*) FROM @.dead_letters"));
    TF_CHECK(!strcmp(st, "42501"), "SELECT on dead_letters as the writer: SQLSTATE '%s', expected 42501", st);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")), N);
    outbox_destroy(w);
    PQfinish(wc);

    /* The relay role publishes, parks the poison row's key and, asked to, drops it to dead_letters. */
    poison_t bad;
    insert_poison(&bad, "ops6.priv", 0);
    tf_start_broker("--topic", "ops6.priv:2", NULL);
    /* Any index is "too large" here: the relay, not the table's owner, may not rebuild it. */
    tk_proc_t *relay = start_relay(ci_r, "relay.reindex.min.bytes=1", "relay.reindex.check.ms=10", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    wait_count(tf_q("SELECT count(*) FROM @.parked_messages"), 1, 5000);
    cli_t dropped = CLI(ci_r, "parked", "drop", "--key", "kp");
    TF_CHECK(dropped.rc == 0, "parked drop as %s: exit %d: %s%s", role_r, dropped.rc, dropped.out, dropped.err);
    cli_free(&dropped);
    wait_count(tf_q("SELECT count(*) FROM @.dead_letters"), 1, 5000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 0);
    char sql[256];
    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT count(*) FROM @.dead_letters WHERE message_id = "),
             bad.message_id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 1);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", role_r);
    TF_CHECK(tu_scalar(tf_conn, sql) >= 1, "no session of %s: the relay did not run as that role", role_r);
    tk_consumer_t *c = read_topic("ops6.priv", N, 30000);
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    tk_idset_t sent = {0};
    for (int i = 0; i < N; i++)
        tk_idset_add(&sent, ids[i]);
    for (size_t i = 0; i < n; i++)
        TF_CHECK(tk_idset_has(&sent, tk_record_header(&recs[i], "id")), "record %zu is not one the writer sent", i);
    TF_CHECK(n == N, "%zu records for %d messages", n, N);
    char *log = tk_read_file(relay->err_path);
    TF_CHECK(!strstr(log, "permission denied"), "the relay hit a permission it was not granted:\n%s",
             tk_file_tail(relay->err_path, 3000));
    /* Refused the index rebuild once, said what to do, and did not try again. */
    for (int64_t end = tk_now_ms() + 5000; !strstr(log, "not trying again") && tk_now_ms() < end; tk_sleep_ms(50)) {
        free(log);
        log = tk_read_file(relay->err_path);
    }
    const char *refusal = strstr(log, "msg=\"rebuilding the outbox index failed; not trying again");
    TF_CHECK(refusal && strstr(refusal, "must be owner"), "no refusal of the index rebuild logged:\n%s",
             tk_file_tail(relay->err_path, 3000));
    tk_sleep_ms(300);
    free(log);
    log = tk_read_file(relay->err_path);
    refusal = strstr(log, "msg=\"rebuilding the outbox index");
    TF_CHECK(refusal && !strstr(strstr(refusal, "not trying again"), "msg=\"rebuilding the outbox index"),
             "the relay tried to rebuild the index more than once:\n%s", tk_file_tail(relay->err_path, 3000));
    free(log);
    tk_idset_clear(&sent);
    tk_consumer_free(c);

    /* The roles go, so a rerun starts clean (their sessions first). */
    tk_proc_free(relay);
    tf_procs[0] = NULL;
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('%s', '%s')", role_w,
             role_r);
    wait_count(sql, 0, 10000);
    drop_roles();
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'ops\\_%%\\_%d'", (int)getpid());
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 0);
    free(ci_w);
    free(ci_r);
    free(bad.env);
}
END_TEST

/* ---- 7. no secret in logs ----------------------------------------------------------------------- */

#define SECRET "S3cr3tPassw0rd-xyz"

START_TEST(test_no_password_in_logs) {
    tf_start_broker("--topic", "ops7.secret:2", NULL);
    send_n(tf_ob, tf_conn, "ops7.secret", 50, NULL);
    char *ci, *ci_bad;
    ck_assert(asprintf(&ci, "%s password=" SECRET, getenv("OUTBOX_TEST_PG")) > 0);
    /* TCP to a closed port: connection refused, retried and logged. */
    ck_assert(asprintf(&ci_bad, "%s password=" SECRET " host=127.0.0.1 port=1", getenv("OUTBOX_TEST_PG")) > 0);

    tk_proc_t *r1 = start_relay(ci, "log.level=7", NULL);
    wait_count(tf_q("SELECT count(*) FROM @.messages"), 0, 30000);
    tk_proc_signal(r1, SIGTERM);
    TF_CHECK(tk_proc_wait(r1, 15000), "the relay did not exit within 15 s of SIGTERM");
    TF_CHECK(tf_exit_code(r1) == 0, "the relay exited with %s after SIGTERM", tk_status_str(r1->status));

    tk_proc_t *r2 = start_relay(ci_bad, "log.level=7", "relay.reconnect.backoff.max.ms=200", NULL);
    tk_sleep_ms(2000);
    tk_proc_signal(r2, SIGTERM);
    TF_CHECK(tk_proc_wait(r2, 15000), "the relay without PostgreSQL did not exit within 15 s of SIGTERM");

    tk_proc_t *runs[2] = {r1, r2};
    for (int i = 0; i < 2; i++) {
        char *err = tk_read_file(runs[i]->err_path), *out = tk_read_file(runs[i]->out_path);
        const char *hit = strstr(err, SECRET);
        if (hit)
            hit = hit - err > 300 ? hit - 300 : err; /* show what led up to it */
        else if (strstr(out, SECRET))
            hit = out;
        TF_CHECK(!hit, "relay run %d logged the password:\n%.800s", i + 1, hit);
        free(err);
        free(out);
    }
    /* The second run did log its failures (otherwise the check above proves nothing). */
    char *err2 = tk_read_file(r2->err_path);
    TF_CHECK(tf_matches(err2, "level=error.*PostgreSQL"),
             "the relay without PostgreSQL logged no connection error:\n%s", err2);
    free(err2);

    /* One logfmt line per event. */
    char *err1 = tk_read_file(r1->err_path);
    TF_CHECK(strstr(err1, "level=debug"), "log.level=7 logged no debug line");
    int lines = 0;
    for (char *line = strtok(err1, "\n"); line; line = strtok(NULL, "\n")) {
        if (!*line)
            continue;
        lines++;
        TF_CHECK(!strncmp(line, "ts=", 3) && strstr(line, " level=") && strstr(line, " msg="),
                 "stderr line %d is not logfmt (ts= level= msg=): '%s'", lines, line);
    }
    TF_CHECK(lines >= 3, "only %d log lines from a relay at log.level=7", lines);
    free(err1);
    free(ci);
    free(ci_bad);
}
END_TEST

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("endpoints");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_metrics_after_a_drain);
    tcase_add_test(tc, test_readiness_follows_kafka_and_postgresql);
    suite_add_tcase(s, tc);

    tc = tcase_create("admin");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_status_reports_backlog_dead_letters_and_leader);
    tcase_add_test(tc, test_dead_letters_list_retry_drop);
    tcase_add_test(tc, test_dead_letters_limit_json_prune);
    tcase_add_test(tc, test_dead_letters_retry_keeps_message_id_and_attempts);
    tcase_add_test(tc, test_consumer_dead_letters);
    suite_add_tcase(s, tc);

    tc = tcase_create("signals");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_signal_ends_blocked_admin_verbs);
    suite_add_tcase(s, tc);

    tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_status_names_the_leader_relay);
    tcase_add_test(tc, test_run_needs_bootstrap_servers);
    tcase_add_test(tc, test_help_lists_every_key_and_verb);
    suite_add_tcase(s, tc);

    tc = tcase_create("install");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240); /* may compile the library first */
    tcase_add_test(tc, test_installed_library_builds_an_outside_program);
    suite_add_tcase(s, tc);

    tc = tcase_create("security");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_least_privilege_roles);
    tcase_add_test(tc, test_each_role_starts_up);
    tcase_add_test(tc, test_no_password_in_logs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(ops_suite());
}
