/*
 * Schema migrations: idempotent, safe when run concurrently, recorded, and safe with hostile
 * schema names (quoted, never executed).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static outbox_t *writer_for(const char *schema) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", schema, err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_ptr_nonnull(ob);
    return ob;
}

static long long table_count(PGconn *conn, const char *schema) {
    const char *p[1] = {schema};
    PGresult *res = PQexecParams(conn,
                                 "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                                 1, NULL, p, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    long long n = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

START_TEST(test_migrate_twice) {
    PGconn *conn = tu_connect();
    char *schema = tu_schema_name("t_mig");
    outbox_t *ob = writer_for(schema);
    int v = -1;
    ck_assert_int_eq(outbox_schema_version(ob, conn, &v), OUTBOX_OK);
    ck_assert_int_eq(v, 0);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE); /* its own transaction committed */
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    ck_assert_int_eq(outbox_schema_version(ob, conn, &v), OUTBOX_OK);
    ck_assert_int_eq(v, OUTBOX_SCHEMA_VERSION);
    /* messages, dead_letters, processed, consumer_dead_letters, parked_keys, parked_messages,
     * claim_state, consumer_parked, schema_version */
    ck_assert_int_eq(table_count(conn, schema), 10);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".schema_version", schema);
    ck_assert_int_eq(tu_scalar(conn, sql), OUTBOX_SCHEMA_VERSION);
    outbox_destroy(ob);
    free(schema);
    PQfinish(conn);
}
END_TEST

START_TEST(test_migrate_inside_caller_transaction) {
    PGconn *conn = tu_connect();
    char *schema = tu_schema_name("t_migtx");
    outbox_t *ob = writer_for(schema);
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_migrate(ob, conn), OUTBOX_OK);
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_INTRANS); /* left to the caller */
    tu_exec(conn, "ROLLBACK");
    ck_assert_int_eq(table_count(conn, schema), 0);
    outbox_destroy(ob);
    free(schema);
    PQfinish(conn);
}
END_TEST

typedef struct {
    const char *schema;
    outbox_err_t err;
    char msg[512];
} job_t;

static void *migrate_job(void *arg) {
    job_t *j = arg;
    PGconn *conn = PQconnectdb(getenv("OUTBOX_TEST_PG"));
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "outbox.schema", j->schema, err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    j->err = outbox_migrate(ob, conn);
    snprintf(j->msg, sizeof(j->msg), "%s", outbox_errmsg(ob));
    outbox_destroy(ob);
    PQfinish(conn);
    return NULL;
}

START_TEST(test_migrate_concurrently) {
    enum { T = 6 };
    for (int round = 0; round < 5; round++) {
        char *schema = tu_schema_name("t_conc");
        pthread_t th[T];
        job_t jobs[T];
        for (int i = 0; i < T; i++) {
            jobs[i].schema = schema;
            pthread_create(&th[i], NULL, migrate_job, &jobs[i]);
        }
        for (int i = 0; i < T; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < T; i++)
            ck_assert_msg(jobs[i].err == OUTBOX_OK, "migrator %d: %s", i, jobs[i].msg);
        PGconn *conn = tu_connect();
        ck_assert_int_eq(table_count(conn, schema), 10);
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".schema_version", schema);
        ck_assert_int_eq(tu_scalar(conn, sql), OUTBOX_SCHEMA_VERSION);
        PQfinish(conn);
        free(schema);
    }
}
END_TEST

START_TEST(test_hostile_schema_name_is_quoted) {
    static const char *hostile = "x\"; DROP TABLE t; --";
    PGconn *conn = tu_connect();
    tu_exec(conn, "CREATE TABLE IF NOT EXISTS public.t (x int)");
    outbox_t *ob = writer_for(hostile);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                                     "AND tablename = 't'"), 1);
    ck_assert_int_eq(table_count(conn, hostile), 10);
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders", "orders.OrderCreated");
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send(ob, conn, m) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    tu_exec(conn, "COMMIT");
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM \"x\"\"; DROP TABLE t; --\".messages"), 1);
    ck_assert_int_eq(tu_scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                                     "AND tablename = 't'"), 1);
    tu_exec(conn, "DROP SCHEMA \"x\"\"; DROP TABLE t; --\" CASCADE");
    outbox_message_destroy(m);
    outbox_destroy(ob);
    PQfinish(conn);
}
END_TEST

/* A schema at version 1, as an older liboutbox left it: version 2 added messages.attempts, version
 * 3 the parking tables (relay and consumer) and claim_state. */
static void downgrade_to_1(PGconn *conn, const char *schema) {
    char sql[640];
    snprintf(sql, sizeof(sql), "DROP TABLE \"%s\".parked_keys, \"%s\".parked_messages, \"%s\".claim_state, "
             "\"%s\".consumer_parked, \"%s\".wal_state; ALTER TABLE \"%s\".messages DROP COLUMN attempts; "
             "DELETE FROM \"%s\".schema_version WHERE version > 1", schema, schema, schema, schema, schema, schema,
             schema);
    tu_exec(conn, sql);
}

/* A service's role may not create anything; on a current schema outbox_migrate() must only read,
 * so it succeeds even in a read-only session, idle or inside the caller's transaction. */
START_TEST(test_current_schema_is_only_checked) {
    PGconn *conn = tu_connect();
    char *schema = tu_schema_name("t_migro");
    outbox_t *ob = writer_for(schema);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    tu_exec(conn, "SET default_transaction_read_only = on");
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "a current schema, read-only session: %s",
                  outbox_errmsg(ob));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "inside a read-only transaction: %s", outbox_errmsg(ob));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_INTRANS);
    tu_exec(conn, "ROLLBACK");
    int v = -1;
    ck_assert_msg(outbox_schema_version(ob, conn, &v) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    ck_assert_int_eq(v, OUTBOX_SCHEMA_VERSION);

    /* An older schema needs a migration, which a read-only session cannot run: the error says so
     * and leaves the connection idle. */
    tu_exec(conn, "SET default_transaction_read_only = off");
    downgrade_to_1(conn, schema);
    tu_exec(conn, "SET default_transaction_read_only = on");
    ck_assert_int_ne(outbox_migrate(ob, conn), OUTBOX_OK);
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    ck_assert_msg(strstr(outbox_errmsg(ob), "read-only"), "the error does not give the cause: %s", outbox_errmsg(ob));
    tu_exec(conn, "SET default_transaction_read_only = off");
    outbox_destroy(ob);
    free(schema);
    PQfinish(conn);
}
END_TEST

/* Version 1 to 2 keeps the queued rows; they have no failed attempts behind them. */
START_TEST(test_upgrade_from_version_1_keeps_rows) {
    PGconn *conn = tu_connect();
    char *schema = tu_schema_name("t_migup");
    outbox_t *ob = writer_for(schema);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    downgrade_to_1(conn, schema);
    char sql[512];
    snprintf(sql, sizeof(sql), "INSERT INTO \"%s\".messages (message_id, destination, message_type, envelope) "
             "VALUES (gen_random_uuid(), 'orders', 't', '\\x00')", schema);
    tu_exec(conn, sql);
    int v = -1;
    ck_assert_int_eq(outbox_schema_version(ob, conn, &v), OUTBOX_OK);
    ck_assert_int_eq(v, 1);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    ck_assert_int_eq(outbox_schema_version(ob, conn, &v), OUTBOX_OK);
    ck_assert_int_eq(v, OUTBOX_SCHEMA_VERSION);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".messages WHERE destination = 'orders' "
             "AND attempts IS NULL", schema);
    ck_assert_int_eq(tu_scalar(conn, sql), 1);
    outbox_destroy(ob);
    free(schema);
    PQfinish(conn);
}
END_TEST

START_TEST(test_newer_schema_refused) {
    PGconn *conn = tu_connect();
    char *schema = tu_schema_name("t_new");
    outbox_t *ob = writer_for(schema);
    ck_assert_int_eq(outbox_migrate(ob, conn), OUTBOX_OK);
    char sql[256];
    snprintf(sql, sizeof(sql), "INSERT INTO \"%s\".schema_version VALUES (99, now(), '9.9.9')", schema);
    tu_exec(conn, sql);
    ck_assert_int_eq(outbox_migrate(ob, conn), OUTBOX_ERR_SCHEMA_TOO_NEW);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "version 99"));
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    outbox_destroy(ob);
    free(schema);
    PQfinish(conn);
}
END_TEST

static Suite *schema_suite(void) {
    Suite *s = suite_create("schema");
    TCase *tc = tcase_create("migrate");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_migrate_twice);
    tcase_add_test(tc, test_migrate_inside_caller_transaction);
    tcase_add_test(tc, test_migrate_concurrently);
    tcase_add_test(tc, test_hostile_schema_name_is_quoted);
    tcase_add_test(tc, test_newer_schema_refused);
    tcase_add_test(tc, test_current_schema_is_only_checked);
    tcase_add_test(tc, test_upgrade_from_version_1_keeps_rows);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(schema_suite());
}
