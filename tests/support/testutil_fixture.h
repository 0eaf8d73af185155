/* The per-test fixture shared by the suites that run programs beside the test (relay, ops, consumer):
 * a fresh outbox schema, the mock broker, child processes, and checks that fail with the children's logs. */
#ifndef OUTBOX_TESTUTIL_FIXTURE_H
#define OUTBOX_TESTUTIL_FIXTURE_H

#include <stdarg.h>

#include <check.h>

#include "testutil.h"
#include "testutil_kafka.h"

/* As many children as one test needs at once (relays, consumers). */
enum { TF_MAX_PROCS = 6 };

/* ---- state of the running test -------------------------------------------------------------- */

/* Set by tf_setup(): a connection, a fresh migrated schema and a writer for it. */
extern PGconn *tf_conn;
extern outbox_t *tf_ob;
extern char *tf_schema;
/* A second schema a test may create itself (tu_schema_name()); tf_teardown() drops it if set. */
extern char *tf_schema2;
/* Set by tf_start_broker(). */
extern tk_broker_t *tf_broker;
/* The children started through tf_spawn(); tf_teardown() kills them.  A test that frees one itself
 * sets its slot to NULL. */
extern tk_proc_t *tf_procs[TF_MAX_PROCS];

/* Connects and creates this test's schema "<schema_prefix>_<pid>_<n>" with its writer. */
void tf_setup(const char *schema_prefix);
/* Kills the children, stops the broker, rolls back what the test left open, then runs before_drop
 * (may be NULL) and drops the schemas.  Check runs it only after a test that passed. */
void tf_teardown(void (*before_drop)(void));

/* ---- helpers ------------------------------------------------------------------------------ */

/* SQL text from a printf format with every '@' then replaced by tf_schema, quoted.  Rotating static
 * buffers, so a few results can be used at once. */
const char *tf_q(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints the end of every child's stdout and stderr: a failure is only diagnosable with their own
 * account, and Check runs no teardown after a failure. */
void tf_dump_logs(void);

/* ck_abort_msg(...) unless cond, after tf_dump_logs(). */
#define TF_CHECK(cond, ...)                                                                   \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            tf_dump_logs();                                                                   \
            ck_abort_msg(__VA_ARGS__);                                                        \
        }                                                                                     \
    } while (0)

/* Starts this test's broker (tf_broker) with the given arguments (NULL-terminated). */
void tf_start_broker(const char *arg, ...);
/* The same for a suite's own variadic wrapper. */
void tf_vstart_broker(const char *arg, va_list ap);

/* Starts argv (NULL-terminated) as child `name` in a free slot of tf_procs.  Teardown kills it. */
tk_proc_t *tf_spawn(const char *name, const char *const *argv);

/* How tf_start_relay_with() runs a relay; a NULL member means the default. */
typedef struct {
    const char *name;     /* child name in the logs; default "relay<slot>" */
    const char *prog;     /* default: the built outbox-relay */
    const char *conninfo; /* default: $OUTBOX_TEST_PG, as superuser */
    const char *schema;   /* default: tf_schema */
} tf_relay_opts_t;

/* Starts `outbox-relay run` on tf_schema and tf_broker with extra key=value settings
 * (NULL-terminated) after the common ones.  Teardown kills it. */
tk_proc_t *tf_start_relay(const char *setting, ...);
/* The same with other defaults; o may be NULL. */
tk_proc_t *tf_start_relay_with(const tf_relay_opts_t *o, const char *setting, ...);

/* Runs the built outbox-relay with the given arguments (NULL-terminated) to completion (15 s at
 * most); it inherits the environment (e.g. OUTBOX_PG_CONNINFO).  Caller frees. */
tk_proc_t *tf_relay_cli(const char *arg, ...);

/* The exit code of a reaped child, or -1 if a signal ended it. */
int tf_exit_code(const tk_proc_t *p);
/* 1 if text has a match of the extended, case-insensitive regular expression re ('^' and '$'
 * match at line ends). */
int tf_matches(const char *text, const char *re);

/* ---- outbox.mode=wal ------------------------------------------------------------------------- */

/* The slot's name for tf_schema, as the relay derives it (static buffer). */
const char *tf_wal_slot_name(void);
/* Drops tf_schema's slot and publication, which outlive the schema (a tf_teardown() hook: the
 * relay is gone, its walsender may take a moment to notice). */
void tf_wal_drop_slot(void);
/* outbox-relay -X outbox.mode=wal migrate on tf_schema: must succeed. */
void tf_wal_migrate(void);

#endif
