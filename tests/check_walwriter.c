/*
 * outbox.mode=wal and outbox_send_commit() against a real PostgreSQL: what a logical replication
 * slot (pgoutput, messages 'true', as the relay reads it) decodes after commits and rollbacks.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "outbox_int.h"
#include "testutil.h"

static PGconn *conn;
static outbox_t *ob_wal, *ob_tab;
static char *schema, *slot;
static char sql[2048];

/* One decoded logical message. */
typedef struct {
    char prefix[128];
    unsigned char *content;
    size_t len;
    int flags;
    int txn; /* which decoded transaction (0-based) carried it */
} wmsg_t;

static wmsg_t *got;
static size_t ngot;

static outbox_t *writer(const char *sch, const char *mode) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", sch, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.mode", mode, err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_msg(ob != NULL, "outbox_new: %s", err);
    return ob;
}

static void setup(void) {
    conn = tu_connect();
    schema = tu_schema_name("t_ww");
    slot = tu_schema_name("t_ww_slot");
    ob_tab = tu_outbox(conn, schema); /* migrates: table mode needs the tables */
    ob_wal = writer(schema, "wal");
    /* pgoutput needs a publication; logical messages pass whatever it lists. */
    snprintf(sql, sizeof(sql), "CREATE PUBLICATION \"%s\"", slot);
    tu_exec(conn, sql);
    snprintf(sql, sizeof(sql), "SELECT 1 FROM pg_create_logical_replication_slot('%s', 'pgoutput')", slot);
    tu_exec(conn, sql);
    tu_exec(conn, "CREATE TABLE IF NOT EXISTS public.ww_user (id int PRIMARY KEY)");
    tu_exec(conn, "TRUNCATE public.ww_user");
    got = NULL;
    ngot = 0;
}

static void free_got(void) {
    for (size_t i = 0; i < ngot; i++)
        free(got[i].content);
    free(got);
    got = NULL;
    ngot = 0;
}

static void teardown(void) {
    free_got();
    PQclear(PQexec(conn, "ROLLBACK"));
    snprintf(sql, sizeof(sql), "SELECT pg_drop_replication_slot('%s')", slot);
    tu_exec(conn, sql);
    snprintf(sql, sizeof(sql), "DROP PUBLICATION \"%s\"", slot);
    tu_exec(conn, sql);
    snprintf(sql, sizeof(sql), "DROP SCHEMA \"%s\" CASCADE", schema);
    tu_exec(conn, sql);
    outbox_destroy(ob_wal);
    outbox_destroy(ob_tab);
    PQfinish(conn);
    free(schema);
    free(slot);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Consumes everything the slot decoded since the last call into got[] (pgoutput protocol 1:
 * 'B' begin, 'M' flags lsn prefix\0 length content, 'C' commit). */
static void read_slot(void) {
    free_got();
    snprintf(sql, sizeof(sql),
             "SELECT data FROM pg_logical_slot_get_binary_changes('%s', NULL, NULL, 'proto_version', "
             "'1', 'publication_names', '\"%s\"', 'messages', 'true')", slot, slot);
    PGresult *res = PQexecParams(conn, sql, 0, NULL, NULL, NULL, NULL, 1);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    got = calloc((size_t)PQntuples(res) + 1, sizeof(*got));
    int txn = -1;
    for (int r = 0; r < PQntuples(res); r++) {
        const unsigned char *d = (const unsigned char *)PQgetvalue(res, r, 0);
        size_t n = (size_t)PQgetlength(res, r, 0);
        ck_assert_uint_gt(n, 0);
        if (d[0] == 'B')
            txn++;
        if (d[0] != 'M')
            continue;
        wmsg_t *m = &got[ngot++];
        m->flags = d[1];
        const char *prefix = (const char *)d + 10;
        size_t pl = strnlen(prefix, n - 10);
        ck_assert_uint_lt(10 + pl + 5, n + 1);
        snprintf(m->prefix, sizeof(m->prefix), "%s", prefix);
        m->len = be32(d + 10 + pl + 1);
        ck_assert_uint_eq(10 + pl + 1 + 4 + m->len, n);
        m->content = malloc(m->len + 1);
        memcpy(m->content, d + 10 + pl + 1 + 4, m->len);
        m->txn = txn;
    }
    PQclear(res);
}

static outbox_message_t *event(int i) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders", "orders.Created");
    ck_assert_ptr_nonnull(m);
    char key[32];
    snprintf(key, sizeof(key), "order-%d", i);
    ck_assert_int_eq(outbox_message_set_key(m, key, strlen(key)), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "\x00\xff pay", 6), OUTBOX_OK);
    return m;
}

/* got[i] is m's envelope, byte for byte, with prefix. */
static void assert_msg(size_t i, const outbox_message_t *m, const char *prefix) {
    void *env;
    size_t len;
    ck_assert_int_eq(outbox_message_encode(m, &env, &len), OUTBOX_OK);
    ck_assert_str_eq(got[i].prefix, prefix);
    ck_assert_int_eq(got[i].flags, 1); /* transactional */
    ck_assert_msg(got[i].len == len && !memcmp(got[i].content, env, len),
                  "message %zu: envelope differs (%zu bytes decoded, %zu expected)", i, got[i].len, len);
    free(env);
}

static const char *prefix_of(const char *sch) {
    static char p[OUTBOX_WAL_NAME_SIZE];
    outbox_wal_prefix(sch, p, sizeof(p));
    return p;
}

static long long rows(void) {
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".messages", schema);
    return tu_scalar(conn, sql);
}

START_TEST(test_names) {
    char out[OUTBOX_WAL_NAME_SIZE], err[256];
    outbox_wal_prefix("Orders \"x\"", out, sizeof(out));
    ck_assert_str_eq(out, "outbox:Orders \"x\"");
    outbox_wal_publication("Orders-Ünï 1", out, sizeof(out));
    ck_assert_str_eq(out, "outbox_orders___n___1"); /* "-", 2 bytes, "n", 2 bytes, " " */
    char longs[64];
    memset(longs, 'S', 63);
    longs[63] = '\0';
    outbox_wal_publication(longs, out, sizeof(out));
    ck_assert_uint_eq(strlen(out), 63);
    ck_assert_int_eq(strncmp(out, "outbox_sss", 10), 0);
    outbox_conf_t *c = outbox_conf_new();
    ck_assert(!outbox_conf_wal(c));
    ck_assert_int_eq(outbox_conf_set(c, "outbox.schema", "Billing", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_wal_slot_name(c, out, sizeof(out));
    ck_assert_str_eq(out, "outbox_billing");
    ck_assert_int_eq(outbox_conf_set(c, "relay.slot.name", "my_slot_2", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_wal_slot_name(c, out, sizeof(out));
    ck_assert_str_eq(out, "my_slot_2");
    ck_assert_int_eq(outbox_conf_set(c, "outbox.mode", "wal", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert(outbox_conf_wal(c));
    outbox_conf_destroy(c);
}
END_TEST

START_TEST(test_rollback_emits_nothing) {
    outbox_message_t *m = event(1);
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send(ob_wal, conn, m) == OUTBOX_OK, "%s", outbox_errmsg(ob_wal));
    const outbox_message_t *two[2] = {m, m};
    ck_assert_msg(outbox_send_batch(ob_wal, conn, two, 2) == OUTBOX_OK, "%s", outbox_errmsg(ob_wal));
    tu_exec(conn, "ROLLBACK");
    read_slot();
    ck_assert_uint_eq(ngot, 0);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_commit_emits_exact_envelope_no_row) {
    outbox_message_t *m = event(1);
    ck_assert_int_eq(outbox_message_set_header(m, "tenant", "acme"), OUTBOX_OK);
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send(ob_wal, conn, m) == OUTBOX_OK, "%s", outbox_errmsg(ob_wal));
    tu_exec(conn, "COMMIT");
    read_slot();
    ck_assert_uint_eq(ngot, 1);
    assert_msg(0, m, prefix_of(schema));
    ck_assert_int_eq(rows(), 0); /* no heap row in wal mode */
    outbox_message_destroy(m);
}
END_TEST

/* 12,001 messages: three statements of at most 5,000, one transaction, the batch's order. */
START_TEST(test_batch_order_over_chunks) {
    enum { N = 12001 };
    outbox_message_t **ms = calloc(N, sizeof(*ms));
    for (int i = 0; i < N; i++)
        ms[i] = event(i);
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(ob_wal, conn, (const outbox_message_t *const *)ms, N) == OUTBOX_OK, "%s",
                  outbox_errmsg(ob_wal));
    outbox_message_t *last = event(N);
    ck_assert_int_eq(outbox_send(ob_wal, conn, last), OUTBOX_OK);
    tu_exec(conn, "COMMIT");
    read_slot();
    ck_assert_uint_eq(ngot, N + 1);
    for (int i = 0; i < N; i++) {
        assert_msg((size_t)i, ms[i], prefix_of(schema));
        ck_assert_int_eq(got[i].txn, 0);
    }
    assert_msg(N, last, prefix_of(schema));
    for (int i = 0; i < N; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
    outbox_message_destroy(last);
}
END_TEST

START_TEST(test_other_schema_other_prefix) {
    char other[80];
    snprintf(other, sizeof(other), "%s_Other \"q\"", schema);
    outbox_t *ob2 = writer(other, "wal");
    outbox_message_t *a = event(1), *b = event(2);
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send(ob_wal, conn, a), OUTBOX_OK);
    ck_assert_int_eq(outbox_send(ob2, conn, b), OUTBOX_OK);
    tu_exec(conn, "COMMIT");
    read_slot();
    ck_assert_uint_eq(ngot, 2);
    char p1[OUTBOX_WAL_NAME_SIZE];
    snprintf(p1, sizeof(p1), "outbox:%s", schema);
    assert_msg(0, a, p1);
    char p2[OUTBOX_WAL_NAME_SIZE + 16];
    snprintf(p2, sizeof(p2), "outbox:%s", other); /* verbatim: quotes, spaces and case kept */
    assert_msg(1, b, p2);
    ck_assert_str_ne(got[0].prefix, got[1].prefix);
    outbox_message_destroy(a);
    outbox_message_destroy(b);
    outbox_destroy(ob2);
}
END_TEST

START_TEST(test_refused_outside_transaction) {
    outbox_message_t *m = event(1);
    const outbox_message_t *one[1] = {m};
    ck_assert_int_eq(outbox_send(ob_wal, conn, m), OUTBOX_ERR_NOT_IN_TRANSACTION);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob_wal), "writer.allow.autocommit"));
    ck_assert_int_eq(outbox_send_batch(ob_wal, conn, one, 1), OUTBOX_ERR_NOT_IN_TRANSACTION);
    tu_exec(conn, "BEGIN");
    PQclear(PQexec(conn, "SELECT 1/0"));
    ck_assert_int_eq(outbox_send(ob_wal, conn, m), OUTBOX_ERR_TRANSACTION_ABORTED);
    tu_exec(conn, "ROLLBACK");
    read_slot();
    ck_assert_uint_eq(ngot, 0);
    outbox_message_destroy(m);
}
END_TEST

/* ---- outbox_send_commit, in both modes (the loop index: 0 table, 1 wal) ---- */

static outbox_t *mode_ob(int wal) {
    return wal ? ob_wal : ob_tab;
}

/* What a committed send_commit left: n outbox messages and the caller's row. */
static size_t delivered(int wal) {
    if (!wal)
        return (size_t)rows();
    read_slot();
    return ngot;
}

START_TEST(test_commit_success) {
    int wal = _i;
    outbox_message_t *a = event(1), *b = event(2);
    const outbox_message_t *ms[2] = {a, b};
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_user VALUES (1)");
    ck_assert_msg(outbox_send_commit(mode_ob(wal), conn, ms, 2) == OUTBOX_OK, "%s", outbox_errmsg(mode_ob(wal)));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    ck_assert_str_eq(outbox_errmsg(mode_ob(wal)), "");
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_user"), 1);
    ck_assert_uint_eq(delivered(wal), 2);
    if (wal) {
        assert_msg(0, a, prefix_of(schema));
        assert_msg(1, b, prefix_of(schema));
    }
    outbox_message_destroy(a);
    outbox_message_destroy(b);
}
END_TEST

START_TEST(test_commit_n0_just_commits) {
    int wal = _i;
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_user VALUES (7)");
    ck_assert_msg(outbox_send_commit(mode_ob(wal), conn, NULL, 0) == OUTBOX_OK, "%s", outbox_errmsg(mode_ob(wal)));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_user WHERE id = 7"), 1);
    ck_assert_uint_eq(delivered(wal), 0);
}
END_TEST

/* COMMIT itself fails: a deferred unique constraint checked at commit. */
START_TEST(test_commit_fails_deferred_constraint) {
    int wal = _i;
    tu_exec(conn, "CREATE TABLE IF NOT EXISTS public.ww_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)");
    tu_exec(conn, "TRUNCATE public.ww_deferred");
    outbox_message_t *a = event(1);
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_deferred VALUES (1), (1)");
    ck_assert_int_eq(outbox_send_commit(mode_ob(wal), conn, (const outbox_message_t *const *)&a, 1), OUTBOX_ERR_PG);
    const char *e = outbox_errmsg(mode_ob(wal));
    ck_assert_msg(strstr(e, "commit failed") && strstr(e, "23505") && strstr(e, "nothing was committed"), "%s", e);
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_deferred"), 0);
    ck_assert_uint_eq(delivered(wal), 0);
    outbox_message_destroy(a);
}
END_TEST

/* The transaction had already failed: COMMIT answers ROLLBACK, which is no success. */
START_TEST(test_commit_of_failed_transaction) {
    int wal = _i;
    outbox_message_t *a = event(1);
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_user VALUES (1)");
    PQclear(PQexec(conn, "SELECT 1/0"));
    ck_assert_int_eq(outbox_send_commit(mode_ob(wal), conn, (const outbox_message_t *const *)&a, 1),
                     OUTBOX_ERR_TRANSACTION_ABORTED);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(mode_ob(wal)), "rolled it back"));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_user"), 0);
    ck_assert_uint_eq(delivered(wal), 0);
    outbox_message_destroy(a);
}
END_TEST

/* A statement of the pipeline fails (table mode: schema not migrated): COMMIT is skipped, the
 * transaction rolled back, the caller's work gone. */
START_TEST(test_statement_failure_rolls_back) {
    outbox_t *nom = writer("t_ww_not_migrated", "table");
    outbox_message_t *a = event(1);
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_user VALUES (1)");
    ck_assert_int_eq(outbox_send_commit(nom, conn, (const outbox_message_t *const *)&a, 1), OUTBOX_ERR_SCHEMA);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(nom), "not migrated"));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_user"), 0);
    outbox_message_destroy(a);
    outbox_destroy(nom);
}
END_TEST

START_TEST(test_refusals_leave_conn_alone) {
    int wal = _i;
    outbox_t *ob = mode_ob(wal);
    outbox_message_t *a = event(1);
    const outbox_message_t *one[1] = {a};
    /* No transaction: refused even with writer.allow.autocommit. */
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.mode", wal ? "wal" : "table", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "writer.allow.autocommit", "true", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *auto_ob = outbox_new(conf, err, sizeof(err));
    ck_assert_int_eq(outbox_send_commit(auto_ob, conn, one, 1), OUTBOX_ERR_NOT_IN_TRANSACTION);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(auto_ob), "BEGIN"));
    outbox_destroy(auto_ob);
    /* Pipeline mode: refused, pipeline and transaction untouched. */
    tu_exec(conn, "BEGIN");
    tu_exec(conn, "INSERT INTO public.ww_user VALUES (1)");
    ck_assert(PQenterPipelineMode(conn));
    ck_assert_int_eq(outbox_send_commit(ob, conn, one, 1), OUTBOX_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "pipeline mode"));
    ck_assert_int_eq(PQpipelineStatus(conn), PQ_PIPELINE_ON);
    ck_assert(PQexitPipelineMode(conn));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_INTRANS);
    /* A bad message past those checks: nothing sent, the transaction rolled back. */
    outbox_message_t *ms2[2] = {a, NULL};
    ck_assert_int_eq(outbox_send_commit(ob, conn, (const outbox_message_t *const *)ms2, 2), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "message 1 is NULL; nothing was sent and the transaction was rolled back"));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM public.ww_user"), 0);
    ck_assert_uint_eq(delivered(wal), 0);
    outbox_message_destroy(a);
}
END_TEST

/* The connection breaks while the server runs the COMMIT (a deferred trigger sleeps in it): the
 * outcome is unknown to the client, and here the transaction did in fact commit. */
static int cut_fd;
static void *cut_later(void *arg) {
    (void)arg;
    usleep(400 * 1000);
    shutdown(cut_fd, SHUT_RDWR);
    return NULL;
}

START_TEST(test_commit_outcome_unknown) {
    int wal = _i;
    tu_exec(conn, "CREATE OR REPLACE FUNCTION public.ww_slow() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END$$");
    tu_exec(conn, "CREATE TABLE IF NOT EXISTS public.ww_slow (id int)");
    tu_exec(conn, "TRUNCATE public.ww_slow");
    tu_exec(conn, "DROP TRIGGER IF EXISTS ww_slow ON public.ww_slow");
    tu_exec(conn, "CREATE CONSTRAINT TRIGGER ww_slow AFTER INSERT ON public.ww_slow DEFERRABLE INITIALLY "
                  "DEFERRED FOR EACH ROW EXECUTE FUNCTION public.ww_slow()");
    PGconn *c = tu_connect();
    outbox_message_t *a = event(1);
    tu_exec(c, "BEGIN");
    tu_exec(c, "INSERT INTO public.ww_slow VALUES (1)");
    cut_fd = PQsocket(c);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, cut_later, NULL), 0);
    outbox_err_t r = outbox_send_commit(mode_ob(wal), c, (const outbox_message_t *const *)&a, 1);
    pthread_join(t, NULL);
    ck_assert_msg(r == OUTBOX_ERR_COMMIT_UNKNOWN, "%d: %s", r, outbox_errmsg(mode_ob(wal)));
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(mode_ob(wal)), "is unknown"));
    ck_assert(!outbox_err_is_retriable(r));
    ck_assert_str_eq(outbox_err2str(r), "commit outcome unknown");
    PQfinish(c);
    /* The server finishes the COMMIT after the sleep. */
    long long n = 0;
    for (int i = 0; i < 50 && !n; i++, usleep(100 * 1000))
        n = tu_scalar(conn, "SELECT count(*) FROM public.ww_slow");
    ck_assert_int_eq(n, 1);
    ck_assert_uint_eq(delivered(wal), 1);
    outbox_message_destroy(a);
}
END_TEST

static Suite *walwriter_suite(void) {
    Suite *s = suite_create("walwriter");
    TCase *tc = tcase_create("wal");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_rollback_emits_nothing);
    tcase_add_test(tc, test_commit_emits_exact_envelope_no_row);
    tcase_add_test(tc, test_batch_order_over_chunks);
    tcase_add_test(tc, test_other_schema_other_prefix);
    tcase_add_test(tc, test_refused_outside_transaction);
    tcase_add_test(tc, test_statement_failure_rolls_back);
    tcase_add_loop_test(tc, test_commit_success, 0, 2);
    tcase_add_loop_test(tc, test_commit_n0_just_commits, 0, 2);
    tcase_add_loop_test(tc, test_commit_fails_deferred_constraint, 0, 2);
    tcase_add_loop_test(tc, test_commit_of_failed_transaction, 0, 2);
    tcase_add_loop_test(tc, test_refusals_leave_conn_alone, 0, 2);
    tcase_add_loop_test(tc, test_commit_outcome_unknown, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(walwriter_suite());
}
