/*
 * outbox-relay against a PostgreSQL that stops answering without closing the connection (a network
 * partition, a hung proxy or pooler), made with build/freeze-proxy: readiness, delivery, SIGTERM.
 */
/*
 * What the relay is expected to do (and these tests assume):
 *  - every wait on PostgreSQL has a deadline: pg.timeout.ms for a connect (and libpq's
 *    connect_timeout from pg.conninfo), relay.statement.timeout.ms plus pg.timeout.ms for a
 *    statement; once it passes, the session is dropped,
 *    /readyz answers 503 (not "postgresql=up") until a new session works, and the relay reconnects
 *    once PostgreSQL answers again, losing nothing and keeping per-key order;
 *  - SIGTERM during such a wait ends `run` (exit 0) within relay.shutdown.timeout.ms plus a few
 *    seconds, and ends `status` at once.
 * A relay that does not know pg.timeout.ms yet (it lists its keys in --help) runs with its
 * default: these tests then wait long enough for a default of up to 10 s.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil_fixture.h"
#include "testutil_net.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#define PG_TIMEOUT_MS 2000       /* pg.timeout.ms given to the relay */
#define STMT_TIMEOUT_MS 2000     /* relay.statement.timeout.ms given to the relay: a statement waits both */
#define DETECT_WINDOW_MS 15000   /* how long into a partition /readyz may still say 200 */
#define SHUTDOWN_TIMEOUT_MS 2000 /* relay.shutdown.timeout.ms given to the relay */
#define SHUTDOWN_SLACK_MS 5000   /* "plus a few seconds" */

static tn_proxy_t *proxy;

static void setup(void) {
    tf_setup("t_part");
}

static void teardown(void) {
    tn_proxy_free(proxy);
    proxy = NULL;
    tf_teardown(NULL);
}

/* TF_CHECK that also shows the proxy's account of its connections. */
#define PCHECK(cond, ...)                                                                                 \
    do {                                                                                                  \
        if (!(cond) && proxy)                                                                             \
            fprintf(stderr, "---- freeze-proxy, end of its stderr:\n%s\n----\n",                          \
                    tk_file_tail(proxy->proc->err_path, 2000));                                          \
        TF_CHECK(cond, __VA_ARGS__);                                                                      \
    } while (0)

/* "pg.timeout.ms=<ms>", or NULL (which ends a settings list early) when the relay does not
 * know the key yet.  Static buffer. */
static int pg_timeout_known = -1;

static const char *pg_timeout_setting(int ms) {
    static char buf[64];
    pg_timeout_known = tn_relay_has_key("pg.timeout.ms");
    if (!pg_timeout_known) {
        fprintf(stderr, "note: outbox-relay does not know pg.timeout.ms: testing with its defaults\n");
        return NULL;
    }
    snprintf(buf, sizeof(buf), "pg.timeout.ms=%d", ms);
    return buf;
}

/* The proxy's conninfo plus extra libpq parameters.  Caller frees. */
static char *via_proxy(const char *extra) {
    char *ci;
    ck_assert(asprintf(&ci, "%s %s", proxy->conninfo, extra) > 0);
    return ci;
}

/* ---- messages with a per-key sequence ------------------------------------------------------ */

/* Commits sequence numbers [from, to) of keys k0..k<nkeys-1>, round robin, in one transaction:
 * outbox id order is sequence order per key.  Payload "<key>:<seq>". */
static void write_seq(const char *topic, int nkeys, int from, int to) {
    size_t n = (size_t)(to - from) * (size_t)nkeys, i = 0;
    outbox_message_t **ms = calloc(n, sizeof(*ms));
    ck_assert_ptr_nonnull(ms);
    for (int s = from; s < to; s++)
        for (int k = 0; k < nkeys; k++, i++) {
            char buf[32];
            ms[i] = outbox_message_new(OUTBOX_EVENT, topic, "test.Sequenced");
            ck_assert_ptr_nonnull(ms[i]);
            int len = snprintf(buf, sizeof(buf), "k%d", k);
            ck_assert_int_eq(outbox_message_set_key(ms[i], buf, (size_t)len), OUTBOX_OK);
            len = snprintf(buf, sizeof(buf), "%d:%d", k, s);
            ck_assert_int_eq(outbox_message_set_payload(ms[i], buf, (size_t)len), OUTBOX_OK);
        }
    tu_exec(tf_conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, n) == OUTBOX_OK,
                  "outbox_send_batch: %s", outbox_errmsg(tf_ob));
    tu_exec(tf_conn, "COMMIT");
    for (i = 0; i < n; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
}

/* Reads topic until every (key, seq) of nkeys x per_key arrived, checking per key that first
 * appearances come in sequence order (duplicates may repeat earlier ones, never jump ahead). */
static void read_all_in_order(const char *topic, int nkeys, int per_key, int timeout_ms) {
    int total = nkeys * per_key, complete = 0;
    int *next = calloc((size_t)nkeys, sizeof(int));
    unsigned char *seen = calloc((size_t)total, 1);
    ck_assert(next && seen);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topic);
    int64_t deadline = tk_now_ms() + timeout_ms;
    size_t pos = 0;
    while (complete < total && tk_now_ms() < deadline) {
        tk_consumer_poll(c, pos + 1, tk_now_ms() + 500);
        size_t n;
        const tk_record_t *recs = tk_consumer_records(c, &n);
        for (; pos < n; pos++) {
            outbox_message_t *m = NULL;
            char err[256], buf[32];
            TF_CHECK(outbox_message_decode(&m, recs[pos].value, recs[pos].value_len, err, sizeof(err)) == OUTBOX_OK,
                     "a record is not an envelope: %s", err);
            size_t len;
            const char *payload = outbox_message_payload(m, &len);
            TF_CHECK(len < sizeof(buf), "payload of %zu bytes", len);
            memcpy(buf, payload, len);
            buf[len] = '\0';
            outbox_message_destroy(m);
            int k, s;
            TF_CHECK(sscanf(buf, "%d:%d", &k, &s) == 2 && k >= 0 && k < nkeys && s >= 0 && s < per_key,
                     "unexpected payload '%s'", buf);
            TF_CHECK(s <= next[k], "key k%d: message %d arrived before message %d: order broken", k, s, next[k]);
            if (s == next[k])
                next[k]++;
            if (!seen[s * nkeys + k]++)
                complete++;
        }
    }
    TF_CHECK(complete == total, "only %d of %d messages reached %s within %d ms", complete, total, topic, timeout_ms);
    tk_consumer_free(c);
    free(next);
    free(seen);
}

static void wait_drained(int timeout_ms) {
    long long left = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, timeout_ms);
    PCHECK(left == 0, "%lld rows still in the outbox after %d ms", left, timeout_ms);
}

/* Polls /readyz until its status is want (or, with want < 0, an answer other than 200) or timeout_ms
 * passes; returns the last status, *body (caller frees) the last body. */
static int wait_ready_status(int port, int want, int timeout_ms, char **body) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        char *b = NULL;
        int st = tn_http_get(port, "/readyz", &b);
        int done = want >= 0 ? st == want : st > 0 && st != 200;
        if (done || tk_now_ms() >= deadline) {
            *body = b ? b : strdup("");
            return st;
        }
        free(b);
        tk_sleep_ms(200);
    }
}

static char *listen_setting(int port) {
    char *s;
    ck_assert(asprintf(&s, "metrics.listen=127.0.0.1:%d", port) > 0);
    return s;
}

/* ---- 1. readiness and delivery across a partition --------------------------------------------- */

START_TEST(test_partition_readiness_and_nothing_lost) {
    enum { KEYS = 20, BEFORE = 100, DURING = 50 };
    const char *topic = "p1.partition";
    tf_start_broker("--topic", "p1.partition:4", NULL);
    proxy = tn_proxy_start("freeze-proxy");
    char *ci = via_proxy("connect_timeout=2");
    int port = tn_free_port();
    char *listen = listen_setting(port);
    tk_proc_t *relay = tf_start_relay_with(&(tf_relay_opts_t){.conninfo = ci}, listen,
                                           "relay.reconnect.backoff.max.ms=500",
                                           "relay.statement.timeout.ms=" STR(STMT_TIMEOUT_MS), pg_timeout_setting(PG_TIMEOUT_MS),
                                           NULL);
    write_seq(topic, KEYS, 0, BEFORE);
    wait_drained(30000);
    char *body;
    int st = wait_ready_status(port, 200, 10000, &body);
    PCHECK(st == 200, "/readyz before the partition: %d '%s'", st, body);
    free(body);

    int conns = tn_proxy_freeze(proxy);
    int64_t frozen_at = tk_now_ms();
    PCHECK(conns >= 1, "the relay holds no connection through the proxy");
    /* Work arrives during the partition, written directly: only a working session can claim it. */
    write_seq(topic, KEYS, BEFORE, BEFORE + DURING);

    st = wait_ready_status(port, -1, DETECT_WINDOW_MS, &body);
    PCHECK(st == 503 && !strstr(body, "postgresql=up"),
           "/readyz %d ms into a partition of PostgreSQL (pg.timeout.ms=%d%s, relay.statement.timeout.ms=%d): %d '%s'; expected 503 "
           "without postgresql=up: the relay does not notice that PostgreSQL stopped answering",
           (int)(tk_now_ms() - frozen_at), PG_TIMEOUT_MS, pg_timeout_known ? "" : ", unknown to this relay", STMT_TIMEOUT_MS, st, body);
    free(body);
    /* ... and stays so while the partition lasts: no session can work through it. */
    int64_t until = tk_now_ms() + 3000;
    while (tk_now_ms() < until) {
        st = tn_http_get(port, "/readyz", &body);
        PCHECK(st == 503, "/readyz during the partition, after it said 503: %d '%s'", st, body ? body : "");
        free(body);
        tk_sleep_ms(250);
    }
    PCHECK(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")) == KEYS * DURING,
           "rows written during the partition were deleted: the relay reached PostgreSQL around the proxy");
    PCHECK(tk_proc_running(relay), "the relay exited during the partition: %s", tk_status_str(relay->status));

    tn_proxy_thaw(proxy);
    wait_drained(60000);
    read_all_in_order(topic, KEYS, BEFORE + DURING, 60000);
    st = wait_ready_status(port, 200, 15000, &body);
    PCHECK(st == 200, "/readyz 15 s after the partition healed: %d '%s'", st, body);
    free(body);
    PCHECK(tk_proc_running(relay), "the relay exited after the partition: %s", tk_status_str(relay->status));
    free(listen);
    free(ci);
}
END_TEST

/* ---- 2. SIGTERM while PostgreSQL is silent ------------------------------------------------------ */

START_TEST(test_sigterm_during_partition_exits_0_in_time) {
    enum { KEYS = 10, BEFORE = 50, DURING = 20 };
    const char *topic = "p2.sigterm";
    tf_start_broker("--topic", "p2.sigterm:4", NULL);
    proxy = tn_proxy_start("freeze-proxy");
    char *ci = via_proxy("connect_timeout=2");
    tk_proc_t *relay = tf_start_relay_with(&(tf_relay_opts_t){.conninfo = ci},
                                           "relay.shutdown.timeout.ms=" STR(SHUTDOWN_TIMEOUT_MS),
                                           "relay.statement.timeout.ms=" STR(STMT_TIMEOUT_MS),
                                           pg_timeout_setting(PG_TIMEOUT_MS), NULL);
    write_seq(topic, KEYS, 0, BEFORE);
    wait_drained(30000);

    PCHECK(tn_proxy_freeze(proxy) >= 1, "the relay holds no connection through the proxy");
    write_seq(topic, KEYS, BEFORE, BEFORE + DURING);
    tk_sleep_ms(500); /* the relay now waits on a server that does not answer */
    PCHECK(tk_proc_running(relay), "the relay exited at the start of the partition: %s", tk_status_str(relay->status));
    int64_t t0 = tk_now_ms();
    tk_proc_signal(relay, SIGTERM);
    int exited = tk_proc_wait(relay, SHUTDOWN_TIMEOUT_MS + SHUTDOWN_SLACK_MS);
    PCHECK(exited, "the relay did not exit within %d ms of SIGTERM during a partition "
                   "(relay.shutdown.timeout.ms=%d, pg.timeout.ms=%d%s): it waits on PostgreSQL without a deadline",
           SHUTDOWN_TIMEOUT_MS + SHUTDOWN_SLACK_MS, SHUTDOWN_TIMEOUT_MS, PG_TIMEOUT_MS,
           pg_timeout_known ? "" : " unknown to this relay");
    PCHECK(WIFEXITED(relay->status) && WEXITSTATUS(relay->status) == 0,
           "the relay ended with %s %lld ms after SIGTERM during a partition, expected exit 0",
           tk_status_str(relay->status), (long long)(tk_now_ms() - t0));

    /* Nothing is lost: a relay with a working session delivers the rest, in order. */
    tn_proxy_thaw(proxy);
    tf_start_relay(NULL);
    wait_drained(60000);
    read_all_in_order(topic, KEYS, BEFORE + DURING, 60000);
    free(ci);
}
END_TEST

/* ---- 3. SIGTERM while connecting to a silent server ------------------------------------------- */

/* conninfo for a connection that only SIGTERM can end: libpq's own connect_timeout is far away, and
 * so is the relay's deadline when it has one. */
#define LONG_CONNECT "connect_timeout=60"
#define LONG_PG_TIMEOUT_MS 30000

START_TEST(test_status_ends_on_sigterm_while_connecting) {
    proxy = tn_proxy_start("freeze-proxy");
    tn_proxy_freeze(proxy);
    char *ci = via_proxy(LONG_CONNECT);
    char *pg, *sch;
    ck_assert(asprintf(&pg, "pg.conninfo=%s", ci) > 0);
    ck_assert(asprintf(&sch, "outbox.schema=%s", tf_schema) > 0);
    char *prog = tk_build_path("outbox-relay");
    const char *timeout = pg_timeout_setting(LONG_PG_TIMEOUT_MS);
    const char *argv[9] = {prog, "-X", pg, "-X", sch};
    int n = 5;
    if (timeout) {
        argv[n++] = "-X";
        argv[n++] = timeout;
    }
    argv[n++] = "status";
    argv[n] = NULL;
    tk_proc_t *p = tf_spawn("status", argv);
    tk_sleep_ms(1000);
    PCHECK(tk_proc_running(p), "status ended before SIGTERM (%s), while the server it connects to is silent",
           tk_status_str(p->status));
    tk_proc_signal(p, SIGTERM);
    PCHECK(tk_proc_wait(p, 3000), "outbox-relay status did not end within 3 s of SIGTERM while connecting to a "
                                  "server that does not answer");
    /* It has no status to report: it must not claim success. */
    PCHECK(!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0), "status exited 0 without an answer; stdout:\n%s",
           tk_file_tail(p->out_path, 1000));
    free(prog);
    free(pg);
    free(sch);
    free(ci);
}
END_TEST

START_TEST(test_run_ends_on_sigterm_while_connecting) {
    tf_start_broker("--topic", "p4.connect:1", NULL);
    proxy = tn_proxy_start("freeze-proxy");
    tn_proxy_freeze(proxy);
    char *ci = via_proxy(LONG_CONNECT);
    tk_proc_t *relay = tf_start_relay_with(&(tf_relay_opts_t){.conninfo = ci},
                                           "relay.shutdown.timeout.ms=" STR(SHUTDOWN_TIMEOUT_MS),
                                           pg_timeout_setting(LONG_PG_TIMEOUT_MS), NULL);
    tk_sleep_ms(1000);
    PCHECK(tk_proc_running(relay), "the relay ended before SIGTERM: %s", tk_status_str(relay->status));
    PCHECK(tk_file_count(proxy->proc->err_path, "msg=accepted") >= 1, "the relay has not connected to the proxy");
    tk_proc_signal(relay, SIGTERM);
    PCHECK(tk_proc_wait(relay, SHUTDOWN_TIMEOUT_MS + SHUTDOWN_SLACK_MS),
           "the relay did not exit within %d ms of SIGTERM while connecting to a server that does not answer",
           SHUTDOWN_TIMEOUT_MS + SHUTDOWN_SLACK_MS);
    PCHECK(WIFEXITED(relay->status) && WEXITSTATUS(relay->status) == 0,
           "the relay ended with %s on SIGTERM while connecting, expected exit 0", tk_status_str(relay->status));
    free(ci);
}
END_TEST

static Suite *partition_suite(void) {
    Suite *s = suite_create("partition");
    TCase *tc = tcase_create("partition");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_partition_readiness_and_nothing_lost);
    tcase_add_test(tc, test_sigterm_during_partition_exits_0_in_time);
    tcase_add_test(tc, test_status_ends_on_sigterm_while_connecting);
    tcase_add_test(tc, test_run_ends_on_sigterm_while_connecting);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(partition_suite());
}
