/*
 * Helpers shared by the Check suites: connecting to the throwaway PostgreSQL cluster started by
 * tests/support/with-services.sh, running SQL with assertions, fresh schemas per test.
 */
#ifndef OUTBOX_TESTUTIL_H
#define OUTBOX_TESTUTIL_H

#include <check.h>
#include <libpq-fe.h>

#include "outbox/outbox.h"

/* Connects to $OUTBOX_TEST_PG; fails the test if that is unset or refused.  Caller PQfinish()es. */
PGconn *tu_connect(void);
/* Runs SQL that must succeed (any command or query); fails the test otherwise. */
void tu_exec(PGconn *conn, const char *sql);
/* Runs a query returning one integer cell. */
long long tu_scalar(PGconn *conn, const char *sql);
/* A schema name unique to this process and call, e.g. "t_writer_1234_3". Static buffer per call site
 * is not needed: the result is caller-owned (free()). */
char *tu_schema_name(const char *prefix);
/* A writer for schema, migrated on conn.  Caller owns. */
outbox_t *tu_outbox(PGconn *conn, const char *schema);
/* Runs a Check suite with CK_NORMAL output and returns the process exit status. */
int tu_run(Suite *s);

#endif
