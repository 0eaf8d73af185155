/*
 * Helpers shared by the Check suites (see testutil.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

PGconn *tu_connect(void) {
    const char *ci = getenv("OUTBOX_TEST_PG");
    ck_assert_msg(ci && *ci, "OUTBOX_TEST_PG is not set: run the suites through make check");
    PGconn *conn = PQconnectdb(ci);
    ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "cannot connect to %s: %s", ci,
                  PQerrorMessage(conn));
    return conn;
}

void tu_exec(PGconn *conn, const char *sql) {
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "SQL failed: %s\n%s", sql,
                  PQresultErrorMessage(res));
    PQclear(res);
}

long long tu_scalar(PGconn *conn, const char *sql) {
    PGresult *res = PQexec(conn, sql);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1, "query failed: %s\n%s",
                  sql, PQresultErrorMessage(res));
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

char *tu_schema_name(const char *prefix) {
    static int seq;
    char buf[64];
    snprintf(buf, sizeof(buf), "%s_%d_%d", prefix, (int)getpid(), ++seq);
    return strdup(buf);
}

outbox_t *tu_outbox(PGconn *conn, const char *schema) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "log.level", "4", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_msg(ob != NULL, "outbox_new: %s", err);
    ck_assert_msg(outbox_migrate(ob, conn) == OUTBOX_OK, "outbox_migrate: %s", outbox_errmsg(ob));
    return ob;
}

int tu_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
