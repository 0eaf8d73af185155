/*
 * Bad input, everywhere: one table of every public function of outbox.h against hostile arguments
 * (NULL, empty, huge, non-UTF-8, embedded NUL, SQL-looking names, negative and huge sizes, bad
 * connections) with the exact result each must give, and a check that the table covers the header.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox/v1/envelope.pb-c.h"
#include "testutil.h"
#include "testutil_kafka.h"

/* The schema version a migration reaches, as text for the expected messages; one migration
 * per version, so also the number of schema_version rows after it. */
#define SV_(x) #x
#define SV_STR(x) SV_(x)
#define SV SV_STR(OUTBOX_SCHEMA_VERSION)

#define MIB (1024 * 1024)
/* SQL-looking text: each would end a quoted identifier or a string literal if the library pasted
 * it into SQL.  SQL_IDENT aims at the sentinel table public.t, which every row checks afterwards. */
#define SQL_IDENT "x\"; DROP TABLE t; --"
#define SQL_STR "'; select 1; --"
#define NON_UTF8 "bad\xff\xfe" "bytes"
/* The longest schema name (63 bytes) made of the one character quoting doubles: 128 quoted. */
#define Q9 "\"\"\"\"\"\"\"\"\""
#define QUOTES63 Q9 Q9 Q9 Q9 Q9 Q9 Q9
/* A schema name that would start a new log line if logged raw. */
#define LOG_FORGER "lf\nlevel=emerg msg=\"forged\""
#define UUID_RE "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

/* ---- the table ------------------------------------------------------------------------------ */

/* How a row's string or byte argument is made. */
typedef enum {
    A_NONE = 0, /* not used by the row (passed as NULL) */
    A_STR,      /* a C string */
    A_NULL,     /* NULL */
    A_REP,      /* n copies of s[0], NUL-terminated */
    A_BUF,      /* n bytes that may hold NULs (for (ptr, len) arguments) */
} akind_t;

typedef struct {
    akind_t k;
    const char *s;
    size_t n;
} arg_t;

#define S(x) {A_STR, (x), 0}
#define ANULL {A_NULL, NULL, 0}
#define REP(c, count) {A_REP, (c), (count)}
#define BUF(x) {A_BUF, (x), sizeof(x) - 1}

/* Results of functions that return a pointer or nothing; other rows expect the returned integer. */
enum { R_NULL = 1001, R_PTR, R_VOID };

/* The connection handed to functions that take a PGconn. */
typedef enum {
    CN_NONE = 0, /* the call takes none */
    CN_NULL,     /* NULL */
    CN_BAD,      /* PQconnectdb() to a port nobody listens on: CONNECTION_BAD */
    CN_IDLE,     /* healthy, no transaction */
    CN_TX,       /* inside BEGIN */
    CN_FAILED,   /* inside a transaction that has failed (SELECT 1/0) */
    CN_BUSY,     /* a query sent and its result not yet collected */
    CN_KILLED,   /* inside BEGIN, its backend terminated behind libpq's back */
} conn_t;

/* Messages and envelopes a row works on. */
typedef enum {
    MS_NONE = 0,
    MS_NULL,             /* NULL */
    MS_EVENT,            /* an ordinary EVENT with key "k1" */
    MS_COMMAND,          /* a COMMAND with reply_to and key "k1" */
    MS_COMMAND_NO_REPLY, /* a COMMAND without reply_to */
    MS_HOSTILE,          /* SQL-looking type, header and correlation id; key and payload with NUL and 0xff */
    MS_AT_LIMIT,         /* encodes to exactly writer.max.message.bytes (1000000) */
    MS_OVER_LIMIT,       /* one byte more */
    MS_MIB,              /* a 1 MiB payload */
    MS_BATCH_WITH_NULL,  /* for outbox_send_batch: {event, NULL} */
    MS_BATCH_WITH_BIG,   /* for outbox_send_batch: {event, over the limit} */
    ENV_VALID,           /* encoded MS_HOSTILE */
    ENV_TRUNCATED,       /* the same, last byte cut */
    ENV_SQL_DEST,        /* destination SQL_IDENT */
    ENV_SQL_ID,          /* id SQL_STR */
    ENV_KIND_ZERO,       /* KIND_UNSPECIFIED */
    ENV_SQL_VERSION,     /* schema_version SQL_STR */
    ENV_NON_UTF8_TYPE,   /* type not UTF-8 */
    ENV_NON_UTF8_HEADER, /* a header value not UTF-8 */
    ENV_NON_UTF8_CORR,   /* correlation_id not UTF-8 */
    ENV_REPEATED_HEADER, /* h=1, g=2, h=3 */
    ENV_MANY_HEADERS,    /* 140,000 distinct headers in under 1 MB */
} ms_t;

enum {
    F_NULL_H = 1 << 0,   /* the handle argument (conf, ob, m, c or out) is NULL */
    F_NULL_OUT = 1 << 1, /* the out-parameter (errstr, len, version, deleted, stats, topics, handler) is NULL */
    F_LEN = 1 << 2,      /* pass n as the length or count instead of the argument's own length */
    F_NOMIGRATE = 1 << 3,/* the handle's schema is not migrated */
    F_SMALL = 1 << 4,    /* a 1-byte errstr, or a conf_get buffer of n bytes */
    F_OLD = 1 << 5,      /* the field already holds "old" before the call */
    F_VARIANT = 1 << 6,  /* the function's second scenario, described in its handler */
};

typedef struct {
    const char *fn;     /* the public function the row calls */
    const char *what;   /* the hostile input, for failure messages */
    arg_t a, b;         /* string or byte arguments, in the function's order */
    long long n;        /* the kind, code, size, count, index, age or timeout argument */
    unsigned flags;
    conn_t conn;
    ms_t msg;
    const char *schema; /* outbox.schema; NULL: a fresh name for the row */
    int expect;         /* the exact return value (outbox_err_t, outbox_conf_res_t, int) or R_* */
    const char *re;     /* extended regex the row's message must match: the error message, or a
                           description of the effect for successful calls; NULL: not checked */
} row_t;

static const row_t rows[] = {
    /* ---- version and errors ---- */
    {"outbox_version_str", "no arguments", .expect = R_PTR, .re = "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
    {"outbox_err2str", "OUTBOX_OK", .n = 0, .expect = R_PTR, .re = "^success$"},
    {"outbox_err2str", "the last code", .n = OUTBOX_ERR_COMMIT_UNKNOWN, .expect = R_PTR, .re = "^commit outcome unknown$"},
    {"outbox_err2str", "one past the last code", .n = -15, .expect = R_PTR, .re = "^unknown error$"},
    {"outbox_err2str", "a positive code", .n = 1, .expect = R_PTR, .re = "^unknown error$"},
    {"outbox_err2str", "INT_MIN", .n = INT_MIN, .expect = R_PTR, .re = "^unknown error$"},
    {"outbox_err2str", "INT_MAX", .n = INT_MAX, .expect = R_PTR, .re = "^unknown error$"},
    {"outbox_err_is_retriable", "OUTBOX_OK", .n = 0, .expect = 0},
    {"outbox_err_is_retriable", "a lost connection", .n = OUTBOX_ERR_CONNECTION, .expect = 1},
    {"outbox_err_is_retriable", "an aborted transaction", .n = OUTBOX_ERR_TRANSACTION_ABORTED, .expect = 1},
    {"outbox_err_is_retriable", "invalid argument", .n = OUTBOX_ERR_INVALID_ARG, .expect = 0},
    {"outbox_err_is_retriable", "INT_MIN", .n = INT_MIN, .expect = 0},
    {"outbox_err_is_retriable", "a positive code", .n = 7, .expect = 0},

    /* ---- configuration ---- */
    {"outbox_conf_new", "no arguments: every default set", .expect = R_PTR, .re = "^outbox$"},
    {"outbox_conf_set", "conf NULL", S("outbox.schema"), S("s"), .flags = F_NULL_H, .expect = OUTBOX_CONF_INVALID,
     .re = "^outbox_conf_set: conf is NULL$"},
    {"outbox_conf_set", "key NULL", ANULL, S("s"), .expect = OUTBOX_CONF_INVALID, .re = "^outbox_conf_set: key is NULL$"},
    {"outbox_conf_set", "value NULL", S("outbox.schema"), ANULL, .expect = OUTBOX_CONF_INVALID,
     .re = "^outbox_conf_set: value is NULL$"},
    {"outbox_conf_set", "errstr NULL with a size", ANULL, S("s"), .flags = F_NULL_OUT, .expect = OUTBOX_CONF_INVALID,
     .re = "^\\(errstr NULL\\)$"},
    {"outbox_conf_set", "errstr of 1 byte", S("no.such.key"), S("s"), .flags = F_SMALL, .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^$"},
    {"outbox_conf_set", "key empty", S(""), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"\" .*outbox-relay --help"},
    {"outbox_conf_set", "key SQL-looking", S(SQL_IDENT), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"x\"; DROP TABLE t; --\""},
    {"outbox_conf_set", "key not UTF-8", S(NON_UTF8), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"bad"},
    {"outbox_conf_set", "key of 1 MiB", REP("k", MIB), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"kkkk.*outbox-relay --help"},
    {"outbox_conf_set", "key \"kafka.\" with no property", S("kafka."), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"kafka\\.\""},
    {"outbox_conf_set", "kafka.* key SQL-looking", S("kafka." SQL_IDENT), S("s"), .expect = OUTBOX_CONF_UNKNOWN,
     .re = "\"kafka\\.x\"; DROP TABLE t; --\".*not a librdkafka property"},
    {"outbox_conf_set", "kafka.* key of 1 MiB", REP("k", MIB), S("1"), .flags = F_VARIANT, .expect = OUTBOX_CONF_UNKNOWN,
     .re = "^unknown configuration key \"kafka\\.kkk.*not a librdkafka property"},
    {"outbox_conf_set", "kafka.acks SQL-looking", S("kafka.acks"), S(SQL_STR), .expect = OUTBOX_CONF_INVALID,
     .re = "^invalid value \"'; select 1; --\" for \"kafka\\.acks\""},
    {"outbox_conf_set", "kafka.acks of 1 MiB", S("kafka.acks"), REP("x", MIB), .expect = OUTBOX_CONF_INVALID,
     .re = "^invalid value \"xxxx.*for \"kafka\\.acks\""},
    {"outbox_conf_set", "kafka.client.id of 1 MiB (librdkafka takes any string)", S("kafka.client.id"), REP("c", MIB),
     .expect = OUTBOX_CONF_OK, .re = "^stored 1048577 bytes: cccc"},
    {"outbox_conf_set", "outbox.schema empty", S("outbox.schema"), S(""), .expect = OUTBOX_CONF_INVALID,
     .re = "^invalid value \"\" for \"outbox\\.schema\": expected 1 to 63 bytes, got 0$"},
    {"outbox_conf_set", "outbox.schema of 63 bytes (the limit)", S("outbox.schema"), REP("s", 63),
     .expect = OUTBOX_CONF_OK, .re = "^stored 64 bytes: s{63}$"},
    {"outbox_conf_set", "outbox.schema of 64 bytes", S("outbox.schema"), REP("s", 64), .expect = OUTBOX_CONF_INVALID,
     .re = "for \"outbox\\.schema\": expected 1 to 63 bytes, got 64$"},
    {"outbox_conf_set", "outbox.schema of 1 MiB", S("outbox.schema"), REP("s", MIB), .expect = OUTBOX_CONF_INVALID,
     .re = "for \"outbox\\.schema\": expected 1 to 63 bytes, got 1048576$"},
    {"outbox_conf_set", "outbox.schema SQL-looking (identifier)", S("outbox.schema"), S(SQL_IDENT),
     .expect = OUTBOX_CONF_OK, .re = "^stored 21 bytes: x\"; DROP TABLE t; --$"},
    {"outbox_conf_set", "outbox.schema SQL-looking (literal)", S("outbox.schema"), S(SQL_STR), .expect = OUTBOX_CONF_OK,
     .re = "^stored 16 bytes: '; select 1; --$"},
    {"outbox_conf_set", "outbox.schema of 63 double quotes", S("outbox.schema"), S(QUOTES63), .expect = OUTBOX_CONF_OK,
     .re = "^stored 64 bytes: \"{63}$"},
    {"outbox_conf_set", "outbox.schema not UTF-8", S("outbox.schema"), S(NON_UTF8), .expect = OUTBOX_CONF_INVALID,
     .re = "for \"outbox\\.schema\".*not valid UTF-8.*offset 3"},
    {"outbox_conf_set", "outbox.schema with an embedded NUL: the C string ends there", S("outbox.schema"),
     BUF("ab\0; DROP TABLE t"), .expect = OUTBOX_CONF_OK, .re = "^stored 3 bytes: ab$"},
    {"outbox_conf_set", "consumer.group.id of 200 bytes (the limit)", S("consumer.group.id"), REP("g", 200),
     .expect = OUTBOX_CONF_OK, .re = "^stored 201 bytes: gggg"},
    {"outbox_conf_set", "consumer.group.id of 201 bytes", S("consumer.group.id"), REP("g", 201),
     .expect = OUTBOX_CONF_INVALID, .re = "for \"consumer\\.group\\.id\": expected 0 to 200 bytes, got 201$"},
    {"outbox_conf_set", "consumer.group.id SQL-looking", S("consumer.group.id"), S(SQL_STR), .expect = OUTBOX_CONF_OK,
     .re = "^stored 16 bytes: '; select 1; --$"},
    {"outbox_conf_set", "consumer.group.id not UTF-8", S("consumer.group.id"), S(NON_UTF8),
     .expect = OUTBOX_CONF_INVALID, .re = "for \"consumer\\.group\\.id\".*not valid UTF-8"},
    {"outbox_conf_set", "pg.conninfo of 1 MiB (no limit)", S("pg.conninfo"), REP("p", MIB), .expect = OUTBOX_CONF_OK,
     .re = "^stored 1048577 bytes: pppp"},
    {"outbox_conf_set", "writer.max.message.bytes 63 (one under the minimum)", S("writer.max.message.bytes"), S("63"),
     .expect = OUTBOX_CONF_INVALID,
     .re = "^invalid value \"63\" for \"writer\\.max\\.message\\.bytes\": expected an integer from 64 to 1000000000$"},
    {"outbox_conf_set", "writer.max.message.bytes 64 (the minimum)", S("writer.max.message.bytes"), S("64"),
     .expect = OUTBOX_CONF_OK, .re = "^stored 3 bytes: 64$"},
    {"outbox_conf_set", "writer.max.message.bytes one over the maximum", S("writer.max.message.bytes"),
     S("1000000001"), .expect = OUTBOX_CONF_INVALID, .re = "\"writer\\.max\\.message\\.bytes\": expected an integer"},
    {"outbox_conf_set", "writer.max.message.bytes negative", S("writer.max.message.bytes"), S("-1"),
     .expect = OUTBOX_CONF_INVALID, .re = "^invalid value \"-1\" for \"writer\\.max\\.message\\.bytes\""},
    {"outbox_conf_set", "writer.max.message.bytes beyond long long", S("writer.max.message.bytes"),
     S("99999999999999999999999"), .expect = OUTBOX_CONF_INVALID, .re = "for \"writer\\.max\\.message\\.bytes\""},
    {"outbox_conf_set", "writer.max.message.bytes empty", S("writer.max.message.bytes"), S(""),
     .expect = OUTBOX_CONF_INVALID, .re = "^invalid value \"\" for \"writer\\.max\\.message\\.bytes\""},
    {"outbox_conf_set", "writer.max.message.bytes of 1 MiB of digits", S("writer.max.message.bytes"), REP("9", MIB),
     .expect = OUTBOX_CONF_INVALID, .re = "for \"writer\\.max\\.message\\.bytes\": expected an integer from 64"},
    {"outbox_conf_set", "writer.max.message.bytes with an embedded NUL", S("writer.max.message.bytes"),
     BUF("1000\0x"), .expect = OUTBOX_CONF_OK, .re = "^stored 5 bytes: 1000$"},
    {"outbox_conf_set", "log.level 8", S("log.level"), S("8"), .expect = OUTBOX_CONF_INVALID,
     .re = "for \"log\\.level\": expected an integer from 0 to 7$"},
    {"outbox_conf_set", "writer.allow.autocommit empty", S("writer.allow.autocommit"), S(""),
     .expect = OUTBOX_CONF_INVALID, .re = "^invalid value \"\" for \"writer\\.allow\\.autocommit\": expected true or false$"},
    {"outbox_conf_set", "writer.allow.autocommit SQL-looking", S("writer.allow.autocommit"), S(SQL_STR),
     .expect = OUTBOX_CONF_INVALID, .re = "expected true or false$"},
    {"outbox_conf_set", "writer.allow.autocommit of 1 MiB", S("writer.allow.autocommit"), REP("t", MIB),
     .expect = OUTBOX_CONF_INVALID, .re = "for \"writer\\.allow\\.autocommit\": expected true or false$"},
    {"outbox_conf_get", "conf NULL", S("outbox.schema"), .flags = F_NULL_H, .expect = OUTBOX_CONF_INVALID,
     .re = "^size=16$"},
    {"outbox_conf_get", "key NULL", ANULL, .expect = OUTBOX_CONF_INVALID, .re = "^size=16$"},
    {"outbox_conf_get", "dest_size NULL", S("outbox.schema"), .flags = F_NULL_OUT, .expect = OUTBOX_CONF_INVALID},
    {"outbox_conf_get", "dest NULL: the size needed", S("outbox.schema"), .flags = F_VARIANT, .expect = OUTBOX_CONF_OK,
     .re = "^size=7$"},
    {"outbox_conf_get", "dest of 3 bytes: too small, left alone", S("outbox.schema"), .n = 3, .flags = F_SMALL,
     .expect = OUTBOX_CONF_INVALID, .re = "^size=7 dest=ZZZ$"},
    {"outbox_conf_get", "dest_size 0", S("outbox.schema"), .n = 0, .flags = F_SMALL, .expect = OUTBOX_CONF_INVALID,
     .re = "^size=7 dest=$"},
    {"outbox_conf_get", "key empty", S(""), .expect = OUTBOX_CONF_UNKNOWN, .re = "^size=16$"},
    {"outbox_conf_get", "key SQL-looking", S(SQL_IDENT), .expect = OUTBOX_CONF_UNKNOWN},
    {"outbox_conf_get", "key not UTF-8", S(NON_UTF8), .expect = OUTBOX_CONF_UNKNOWN},
    {"outbox_conf_get", "key of 1 MiB", REP("k", MIB), .expect = OUTBOX_CONF_UNKNOWN},
    {"outbox_conf_get", "key \"kafka.\"", S("kafka."), .expect = OUTBOX_CONF_UNKNOWN},
    {"outbox_conf_get", "kafka.* key not set", S("kafka.bootstrap.servers"), .expect = OUTBOX_CONF_UNKNOWN},
    {"outbox_conf_dup", "conf NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_conf_dup", "SQL-looking schema, 1 MiB conninfo, kafka.* value: a deep copy", S(SQL_IDENT), REP("p", MIB),
     .expect = R_PTR, .re = "^schema=x\"; DROP TABLE t; -- conninfo=1048576 client.id='; select 1; -- cb=1$"},
    {"outbox_conf_set_log_cb", "conf NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_conf_set_log_cb", "cb NULL restores the default", .expect = R_VOID},
    {"outbox_conf_set_log_cb", "a schema name with a line break and quotes: one logfmt line", .flags = F_VARIANT,
     .schema = LOG_FORGER, .expect = OUTBOX_OK,
     .re = "^msg=\"applied outbox migration\" schema=\"lf level=emerg msg='forged'\" version=" SV "$"},
    {"outbox_conf_set_opaque", "conf NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_conf_set_opaque", "opaque reaches the log callback", .expect = OUTBOX_OK, .re = "^opaque=mine$"},
    {"outbox_conf_destroy", "NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_conf_destroy", "a conf holding 1 MiB values and kafka.* keys", .expect = R_VOID},

    /* ---- the writer handle ---- */
    {"outbox_new", "conf NULL: defaults", .flags = F_NULL_H, .expect = R_PTR, .re = "^schema=\"outbox\" errmsg=$"},
    {"outbox_new", "conf NULL, errstr NULL", .flags = F_NULL_H | F_NULL_OUT, .expect = R_PTR},
    {"outbox_new", "SQL-looking schema", S(SQL_IDENT), .expect = R_PTR, .re = "^schema=\"x\"\"; DROP TABLE t; --\" errmsg=$"},
    {"outbox_destroy", "NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_errmsg", "NULL handle: a static message", .flags = F_NULL_H, .expect = R_PTR,
     .re = "^outbox handle is NULL$"},
    {"outbox_errmsg", "a fresh handle", .expect = R_PTR, .re = "^$"},
    {"outbox_errmsg_retriable", "NULL handle", .flags = F_NULL_H, .expect = 0},
    {"outbox_errmsg_retriable", "after a send on a bad connection", .conn = CN_BAD, .expect = 1,
     .re = "^send=-6 outbox_send: the connection is bad"},
    {"outbox_errmsg_retriable", "after a send in a failed transaction", .conn = CN_FAILED, .expect = 1,
     .re = "^send=-3 .*ROLLBACK"},
    {"outbox_errmsg_retriable", "after a send whose backend was terminated", .conn = CN_KILLED, .expect = 1,
     .re = "^send=-6 "},
    {"outbox_errmsg_retriable", "after a send outside a transaction (not retriable)", .conn = CN_IDLE, .expect = 0,
     .re = "^send=-2 .*BEGIN"},

    /* ---- messages: creating ---- */
    {"outbox_message_new", "kind 0 (unspecified)", S("orders"), S("t.T"), .n = 0, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "kind 5", S("orders"), S("t.T"), .n = 5, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "kind -1", S("orders"), S("t.T"), .n = -1, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "kind INT_MAX", S("orders"), S("t.T"), .n = INT_MAX, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "destination NULL", ANULL, S("t.T"), .n = OUTBOX_EVENT, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "destination empty", S(""), S("t.T"), .n = OUTBOX_EVENT, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "destination SQL-looking", S(SQL_IDENT), S("t.T"), .n = OUTBOX_EVENT, .expect = R_NULL,
     .re = "^errno=EINVAL$"},
    {"outbox_message_new", "destination of 249 characters (the limit)", REP("d", 249), S("t.T"), .n = OUTBOX_EVENT,
     .expect = R_PTR, .re = "^destination=d{249} type=t\\.T$"},
    {"outbox_message_new", "destination of 250 characters", REP("d", 250), S("t.T"), .n = OUTBOX_EVENT, .expect = R_NULL,
     .re = "^errno=EINVAL$"},
    {"outbox_message_new", "destination with an embedded NUL: the C string ends there", BUF("ab\0 cd"), S("t.T"),
     .n = OUTBOX_EVENT, .expect = R_PTR, .re = "^destination=ab type=t\\.T$"},
    {"outbox_message_new", "type NULL", S("orders"), ANULL, .n = OUTBOX_EVENT, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "type empty", S("orders"), S(""), .n = OUTBOX_EVENT, .expect = R_NULL, .re = "^errno=EINVAL$"},
    {"outbox_message_new", "type SQL-looking: kept as text", S("orders"), S(SQL_STR), .n = OUTBOX_EVENT, .expect = R_PTR,
     .re = "^destination=orders type='; select 1; --$"},
    {"outbox_message_new", "type of 1 MiB", S("orders"), REP("t", MIB), .n = OUTBOX_EVENT, .expect = R_PTR,
     .re = "^destination=orders type=tttt"},
    {"outbox_message_new", "type not UTF-8", S("orders"), S(NON_UTF8), .n = OUTBOX_EVENT, .expect = R_NULL,
     .re = "^errno=EINVAL$"},
    {"outbox_message_create", "out NULL", S("orders"), S("t.T"), .n = OUTBOX_EVENT, .flags = F_NULL_H,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_message_create: out is NULL$"},
    {"outbox_message_create", "kind 0", S("orders"), S("t.T"), .n = 0, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "kind 0 is not a message kind \\(use OUTBOX_EVENT"},
    {"outbox_message_create", "kind 99", S("orders"), S("t.T"), .n = 99, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "kind 99 is not a message kind"},
    {"outbox_message_create", "kind INT_MIN", S("orders"), S("t.T"), .n = INT_MIN, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "kind -2147483648 is not a message kind"},
    {"outbox_message_create", "destination NULL", ANULL, S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "destination is NULL; pass the Kafka topic"},
    {"outbox_message_create", "destination empty", S(""), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "destination \"\" is empty; a Kafka topic name has 1 to 249"},
    {"outbox_message_create", "destination SQL-looking (identifier)", S(SQL_IDENT), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION,
     .re = "destination \"x\"; DROP TABLE t; --\" has the character 0x22 at offset 1; .*\\[a-zA-Z0-9\\._-\\]"},
    {"outbox_message_create", "destination SQL-looking (literal)", S(SQL_STR), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "has the character 0x27 at offset 0"},
    {"outbox_message_create", "destination not UTF-8", S("t" NON_UTF8), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "has the character 0xff at offset 4"},
    {"outbox_message_create", "destination \"..\"", S(".."), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "destination \"\\.\\.\" is \"\\.\\.\", which Kafka does not allow"},
    {"outbox_message_create", "destination of 250 characters", REP("d", 250), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "is 250 characters long; a Kafka topic name has at most 249$"},
    {"outbox_message_create", "destination of 1 MiB", REP("d", MIB), S("t.T"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "^outbox_message_new: destination \"d+\" is 1048576 characters long"},
    {"outbox_message_create", "type NULL", S("orders"), ANULL, .n = OUTBOX_EVENT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "type is NULL; pass the message type"},
    {"outbox_message_create", "type empty", S("orders"), S(""), .n = OUTBOX_EVENT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "type is empty; pass the message type"},
    {"outbox_message_create", "type not UTF-8", S("orders"), S(NON_UTF8), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "type is not valid UTF-8 \\(byte 0xff at offset 3\\)"},
    {"outbox_message_create", "type with an overlong UTF-8 encoding of '/'", S("orders"), S("a\xc0\xaf"),
     .n = OUTBOX_EVENT, .expect = OUTBOX_ERR_INVALID_ARG, .re = "type is not valid UTF-8 \\(byte 0xc0 at offset 1\\)"},
    {"outbox_message_create", "type with a UTF-16 surrogate", S("orders"), S("a\xed\xa0\x80"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "type is not valid UTF-8 \\(byte 0xed at offset 1\\)"},
    {"outbox_message_create", "type with a truncated sequence", S("orders"), S("a\xe2\x82"), .n = OUTBOX_EVENT,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "type is not valid UTF-8"},
    {"outbox_message_create", "type in valid multi-byte UTF-8", S("orders"), S("caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x98\x80"),
     .n = OUTBOX_EVENT, .expect = OUTBOX_OK, .re = "^destination=orders type=caf"},
    {"outbox_message_create", "errstr NULL with a size", ANULL, S("t.T"), .n = OUTBOX_EVENT, .flags = F_NULL_OUT,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "^\\(errstr NULL\\)$"},
    {"outbox_message_create", "errstr of 1 byte", ANULL, S("t.T"), .n = OUTBOX_EVENT, .flags = F_SMALL,
     .expect = OUTBOX_ERR_INVALID_DESTINATION, .re = "^$"},

    /* ---- messages: setters (no error text: the code and the unchanged field say it) ---- */
    {"outbox_message_set_key", "m NULL", S("k"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_key", "key NULL, len 5: old key kept", ANULL, .n = 5, .flags = F_LEN | F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^len=3 hex=6f6c64$"},
    {"outbox_message_set_key", "key NULL, len 0: cleared", ANULL, .n = 0, .flags = F_LEN | F_OLD, .expect = OUTBOX_OK,
     .re = "^len=0 hex=$"},
    {"outbox_message_set_key", "key with NUL and 0xff bytes: kept exactly", BUF("a\0b\xff"), .expect = OUTBOX_OK,
     .re = "^len=4 hex=610062ff$"},
    {"outbox_message_set_key", "key SQL-looking", S(SQL_IDENT), .expect = OUTBOX_OK, .re = "^len=20 hex=78223b2044524f50"},
    {"outbox_message_set_key", "key of 1 MiB", REP("k", MIB), .expect = OUTBOX_OK, .re = "^len=1048576 hex=6b6b"},
    {"outbox_message_set_key", "len (size_t)-1: old key kept", S("k"), .n = -1, .flags = F_LEN | F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^len=3 hex=6f6c64$"},
    {"outbox_message_set_key", "len PTRDIFF_MAX + 1", S("k"), .n = (long long)((size_t)PTRDIFF_MAX + 1), .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^len=0 hex=$"},
    {"outbox_message_set_payload", "m NULL", S("p"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_payload", "payload NULL, len 5: old payload kept", ANULL, .n = 5, .flags = F_LEN | F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^len=3 hex=6f6c64$"},
    {"outbox_message_set_payload", "payload NULL, len 0: emptied", ANULL, .n = 0, .flags = F_LEN | F_OLD,
     .expect = OUTBOX_OK, .re = "^len=0 hex=$"},
    {"outbox_message_set_payload", "payload with NUL and 0xff bytes", BUF("\0\xff\0"), .expect = OUTBOX_OK,
     .re = "^len=3 hex=00ff00$"},
    {"outbox_message_set_payload", "payload of 1 MiB", REP("p", MIB), .expect = OUTBOX_OK, .re = "^len=1048576 hex=7070"},
    {"outbox_message_set_payload", "len (size_t)-1: old payload kept", S("p"), .n = -1, .flags = F_LEN | F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^len=3 hex=6f6c64$"},
    {"outbox_message_set_header", "m NULL", S("h"), S("v"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_header", "name NULL", ANULL, S("v"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^count=0$"},
    {"outbox_message_set_header", "name empty", S(""), S("v"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^count=0$"},
    {"outbox_message_set_header", "value NULL: old value kept", S("h"), ANULL, .flags = F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^count=1 h\\(1\\)=old\\(3\\)$"},
    {"outbox_message_set_header", "name \"id\" (reserved)", S("id"), S("v"), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^count=0$"},
    {"outbox_message_set_header", "name \"type\" (reserved)", S("type"), S("v"), .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_header", "name \"kind\" (reserved)", S("kind"), S("v"), .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_header", "name \"id\" hidden before an embedded NUL", BUF("id\0x"), S("v"),
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^count=0$"},
    {"outbox_message_set_header", "name \"ID\" (headers are case-sensitive)", S("ID"), S("v"), .expect = OUTBOX_OK,
     .re = "^count=1 ID\\(2\\)=v\\(1\\)$"},
    {"outbox_message_set_header", "name and value SQL-looking", S(SQL_IDENT), S(SQL_STR), .expect = OUTBOX_OK,
     .re = "^count=1 x\"; DROP TABLE t; --\\(20\\)='; select 1; --\\(15\\)$"},
    {"outbox_message_set_header", "name of 1 MiB", REP("h", MIB), S("v"), .expect = OUTBOX_OK,
     .re = "^count=1 h+\\(1048576\\)=v\\(1\\)$"},
    {"outbox_message_set_header", "value of 1 MiB", S("h"), REP("v", MIB), .expect = OUTBOX_OK,
     .re = "^count=1 h\\(1\\)=v+\\(1048576\\)$"},
    {"outbox_message_set_header", "value with an embedded NUL: the C string ends there", S("h"), BUF("ab\0cd"),
     .expect = OUTBOX_OK, .re = "^count=1 h\\(1\\)=ab\\(2\\)$"},
    {"outbox_message_set_header", "name not UTF-8", S(NON_UTF8), S("v"), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^count=0$"},
    {"outbox_message_set_header", "value not UTF-8: old value kept", S("h"), S(NON_UTF8), .flags = F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^count=1 h\\(1\\)=old\\(3\\)$"},
    {"outbox_message_set_schema_version", "m NULL", S("2.1"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_schema_version", "NULL", ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "empty", S(""), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "no dot", S("2"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "no minor", S("2."), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "no major", S(".1"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "three parts", S("1.2.3"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "a sign", S("-1.0"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "a leading blank", S(" 1.0"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "a 10-digit major", S("1234567890.0"), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "9-digit parts (the limit)", S("123456789.123456789"), .expect = OUTBOX_OK,
     .re = "^123456789\\.123456789$"},
    {"outbox_message_set_schema_version", "SQL-looking", S(SQL_STR), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "not UTF-8", S("1.\xff"), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "1 MiB", REP("1", MIB), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^1\\.0$"},
    {"outbox_message_set_schema_version", "embedded NUL: the C string ends there", BUF("2.1\0x"), .expect = OUTBOX_OK,
     .re = "^2\\.1$"},
    {"outbox_message_set_correlation_id", "m NULL", S("c"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_correlation_id", "NULL: old id kept", ANULL, .flags = F_OLD, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^old\\(3\\)$"},
    {"outbox_message_set_correlation_id", "empty: cleared", S(""), .flags = F_OLD, .expect = OUTBOX_OK, .re = "^\\(0\\)$"},
    {"outbox_message_set_correlation_id", "SQL-looking", S(SQL_IDENT), .expect = OUTBOX_OK,
     .re = "^x\"; DROP TABLE t; --\\(20\\)$"},
    {"outbox_message_set_correlation_id", "1 MiB", REP("c", MIB), .expect = OUTBOX_OK, .re = "^c+\\(1048576\\)$"},
    {"outbox_message_set_correlation_id", "not UTF-8: old id kept", S(NON_UTF8), .flags = F_OLD,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^old\\(3\\)$"},
    {"outbox_message_set_reply_to", "m NULL", S("r"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_reply_to", "NULL", ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_reply_to", "empty", S(""), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_reply_to", "SQL-looking", S(SQL_IDENT), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_reply_to", "not UTF-8", S(NON_UTF8), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_reply_to", "249 characters (the limit)", REP("r", 249), .expect = OUTBOX_OK, .re = "^r{249}$"},
    {"outbox_message_set_reply_to", "250 characters", REP("r", 250), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_reply_to", "1 MiB", REP("r", MIB), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_content_type", "m NULL", S("a/b"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_content_type", "NULL", ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^application/octet-stream$"},
    {"outbox_message_set_content_type", "empty: the default", S(""), .expect = OUTBOX_OK, .re = "^application/octet-stream$"},
    {"outbox_message_set_content_type", "SQL-looking", S(SQL_IDENT), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^application/octet-stream$"},
    {"outbox_message_set_content_type", "not UTF-8", S("a/" NON_UTF8), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^application/octet-stream$"},
    {"outbox_message_set_content_type", "1 MiB", REP("a/", MIB / 2), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^application/octet-stream$"},
    {"outbox_message_set_content_type", "a media type", S("application/json; charset=utf-8"), .expect = OUTBOX_OK, .re = "^application/json; charset=utf-8$"},
    {"outbox_message_set_trace_context", "m NULL", S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ANULL, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_set_trace_context", "traceparent NULL", ANULL, ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "SQL-looking", S(SQL_IDENT), ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "not UTF-8", S(NON_UTF8), ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "1 MiB", REP("0", MIB), ANULL, .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "hostile tracestate", S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), S(SQL_IDENT), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "1 MiB tracestate", S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), REP("a=b,", MIB / 4), .expect = OUTBOX_ERR_INVALID_ARG, .re = "^$"},
    {"outbox_message_set_trace_context", "valid, no tracestate", S("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ANULL, .expect = OUTBOX_OK, .re = "^00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01$"},
    {"outbox_message_destroy", "NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_message_destroy", "a message holding 1 MiB in every field", .expect = R_VOID},

    /* ---- messages: reading ---- */
    {"outbox_message_id", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_id", "a message", .msg = MS_HOSTILE, .expect = R_PTR, .re = UUID_RE},
    {"outbox_message_kind", "NULL", .flags = F_NULL_H, .expect = 0},
    {"outbox_message_kind", "a COMMAND", .msg = MS_COMMAND, .expect = OUTBOX_COMMAND},
    {"outbox_message_type", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_type", "SQL-looking type", .msg = MS_HOSTILE, .expect = R_PTR, .re = "^'; select 1; --$"},
    {"outbox_message_schema_version", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_schema_version", "the default", .msg = MS_EVENT, .expect = R_PTR, .re = "^1\\.0$"},
    {"outbox_message_destination", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_destination", "a message", .msg = MS_EVENT, .expect = R_PTR, .re = "^orders$"},
    {"outbox_message_key", "NULL message, len given", .flags = F_NULL_H, .expect = R_NULL, .re = "^len=0$"},
    {"outbox_message_key", "NULL message, len NULL", .flags = F_NULL_H | F_NULL_OUT, .expect = R_NULL},
    {"outbox_message_key", "len NULL", .msg = MS_HOSTILE, .flags = F_NULL_OUT, .expect = R_PTR},
    {"outbox_message_key", "no key", .msg = MS_COMMAND_NO_REPLY, .expect = R_NULL, .re = "^len=0$"},
    {"outbox_message_key", "a key with NUL and 0xff", .msg = MS_HOSTILE, .expect = R_PTR, .re = "^len=4 hex=610062ff$"},
    {"outbox_message_payload", "NULL message, len given", .flags = F_NULL_H, .expect = R_NULL, .re = "^len=0$"},
    {"outbox_message_payload", "len NULL", .msg = MS_HOSTILE, .flags = F_NULL_OUT, .expect = R_PTR},
    {"outbox_message_payload", "a payload with NUL and 0xfe", .msg = MS_HOSTILE, .expect = R_PTR,
     .re = "^len=3 hex=7000fe$"},
    {"outbox_message_header", "NULL message", S("h"), .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_header", "name NULL", ANULL, .msg = MS_HOSTILE, .expect = R_NULL},
    {"outbox_message_header", "name empty", S(""), .msg = MS_HOSTILE, .expect = R_NULL},
    {"outbox_message_header", "name absent", S("absent"), .msg = MS_HOSTILE, .expect = R_NULL},
    {"outbox_message_header", "SQL-looking name", S(SQL_IDENT), .msg = MS_HOSTILE, .expect = R_PTR,
     .re = "^'; select 1; --$"},
    {"outbox_message_header", "name of 1 MiB", REP("h", MIB), .msg = MS_HOSTILE, .expect = R_NULL},
    {"outbox_message_header_count", "NULL", .flags = F_NULL_H, .expect = 0},
    {"outbox_message_header_count", "one header", .msg = MS_HOSTILE, .expect = 1},
    {"outbox_message_header_at", "NULL message", .n = 0, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_header_at", "idx == count", .n = 1, .msg = MS_HOSTILE, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^untouched$"},
    {"outbox_message_header_at", "idx (size_t)-1", .n = -1, .msg = MS_HOSTILE, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^untouched$"},
    {"outbox_message_header_at", "no headers at all", .n = 0, .msg = MS_EVENT, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_header_at", "name and value NULL", .n = 0, .msg = MS_HOSTILE, .flags = F_NULL_OUT,
     .expect = OUTBOX_OK},
    {"outbox_message_header_at", "idx 0", .n = 0, .msg = MS_HOSTILE, .expect = OUTBOX_OK,
     .re = "^x\"; DROP TABLE t; --='; select 1; --$"},
    {"outbox_message_correlation_id", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_correlation_id", "SQL-looking", .msg = MS_HOSTILE, .expect = R_PTR,
     .re = "^x\"; DROP TABLE t; --$"},
    {"outbox_message_correlation_id", "absent: \"\" not NULL", .msg = MS_EVENT, .expect = R_PTR, .re = "^$"},
    {"outbox_message_reply_to", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_reply_to", "absent: \"\" not NULL", .msg = MS_EVENT, .expect = R_PTR, .re = "^$"},
    {"outbox_message_content_type", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_content_type", "absent: the default", .msg = MS_EVENT, .expect = R_PTR, .re = "^application/octet-stream$"},
    {"outbox_message_trace_context", "NULL", .flags = F_NULL_H, .expect = 0},
    {"outbox_message_trace_context", "absent", .msg = MS_EVENT, .expect = 0},
    {"outbox_message_created_at_us", "NULL: 0", .flags = F_NULL_H, .expect = 0},
    {"outbox_message_created_at_us", "a new message: now", .msg = MS_EVENT, .expect = 1, .re = "^within a minute of now$"},
    {"outbox_message_errmsg", "NULL: a static message", .flags = F_NULL_H, .expect = R_PTR, .re = "^message is NULL$"},
    {"outbox_message_errmsg", "a new message: \"\"", .msg = MS_EVENT, .expect = R_PTR, .re = "^$"},
    {"outbox_message_kafka_topic", "NULL", .flags = F_NULL_H, .expect = R_NULL},
    {"outbox_message_kafka_topic", "not from a consumer: \"\"", .msg = MS_EVENT, .expect = R_PTR, .re = "^$"},
    {"outbox_message_kafka_partition", "NULL: -1", .flags = F_NULL_H, .expect = -1},
    {"outbox_message_kafka_partition", "not from a consumer: -1", .msg = MS_EVENT, .expect = -1},
    {"outbox_message_kafka_offset", "NULL: -1", .flags = F_NULL_H, .expect = -1},
    {"outbox_message_kafka_offset", "not from a consumer: -1", .msg = MS_EVENT, .expect = -1},
    {"outbox_message_encode", "m NULL", .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_encode", "buf NULL", .msg = MS_EVENT, .flags = F_NULL_OUT, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_encode", "len NULL", .msg = MS_EVENT, .flags = F_VARIANT, .expect = OUTBOX_ERR_INVALID_ARG},
    {"outbox_message_encode", "hostile fields: decode gives them back", .msg = MS_HOSTILE, .expect = OUTBOX_OK,
     .re = "^roundtrip type='; select 1; -- key=610062ff payload=7000fe header=x\"; DROP TABLE t; --='; select 1; -- "
           "correlation=x\"; DROP TABLE t; --$"},
    {"outbox_message_encode", "1 MiB payload", .msg = MS_MIB, .expect = OUTBOX_OK, .re = "payload=7070"},
    {"outbox_message_decode", "out NULL", .msg = ENV_VALID, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_message_decode: out is NULL$"},
    {"outbox_message_decode", "buf NULL, len 5", ANULL, .n = 5, .flags = F_LEN, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_message_decode: buf is NULL$"},
    {"outbox_message_decode", "buf NULL, len 0", ANULL, .n = 0, .flags = F_LEN, .expect = OUTBOX_ERR_DECODE,
     .re = "the value is empty"},
    {"outbox_message_decode", "len 0", S("x"), .n = 0, .flags = F_LEN, .expect = OUTBOX_ERR_DECODE,
     .re = "the value is empty"},
    {"outbox_message_decode", "not protobuf", BUF("\xff\xff\xff"), .expect = OUTBOX_ERR_DECODE,
     .re = "3 bytes are not a valid outbox\\.v1\\.Envelope"},
    {"outbox_message_decode", "1 MiB of NUL bytes", REP("\0", MIB), .flags = F_LEN, .n = MIB,
     .expect = OUTBOX_ERR_DECODE, .re = "1048576 bytes are not a valid"},
    {"outbox_message_decode", "1 MiB of 'a' (unknown fixed64 fields)", REP("a", MIB), .expect = OUTBOX_ERR_DECODE,
     .re = "bytes are not a valid outbox\\.v1\\.Envelope"},
    {"outbox_message_decode", "SQL text as bytes", S(SQL_IDENT), .expect = OUTBOX_ERR_DECODE, .re = "not a valid"},
    {"outbox_message_decode", "a valid envelope cut by one byte", .msg = ENV_TRUNCATED, .expect = OUTBOX_ERR_DECODE,
     .re = "not a valid outbox\\.v1\\.Envelope"},
    {"outbox_message_decode", "a valid envelope, len (size_t)-1", .msg = ENV_VALID, .n = -1, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_message_decode: len 18446744073709551615 is not a length"},
    {"outbox_message_decode", "errstr NULL", BUF("\xff"), .flags = F_NULL_OUT, .expect = OUTBOX_ERR_DECODE,
     .re = "^\\(errstr NULL\\)$"},
    {"outbox_message_decode", "destination SQL-looking", .msg = ENV_SQL_DEST, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: destination has the character 0x22 at offset 1"},
    {"outbox_message_decode", "id SQL-looking", .msg = ENV_SQL_ID, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: id is not a UUID$"},
    {"outbox_message_decode", "kind unspecified", .msg = ENV_KIND_ZERO, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: kind 0 is unspecified$"},
    {"outbox_message_decode", "schema_version SQL-looking", .msg = ENV_SQL_VERSION, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: schema_version is not MAJOR\\.MINOR$"},
    {"outbox_message_decode", "type not UTF-8", .msg = ENV_NON_UTF8_TYPE, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: type is not valid UTF-8$"},
    {"outbox_message_decode", "a header value not UTF-8", .msg = ENV_NON_UTF8_HEADER, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: header \"h\" is not valid UTF-8$"},
    {"outbox_message_decode", "correlation_id not UTF-8", .msg = ENV_NON_UTF8_CORR, .expect = OUTBOX_ERR_DECODE,
     .re = "^invalid envelope: correlation_id is not valid UTF-8$"},
    {"outbox_message_decode", "a repeated header: the last value wins, the first place stays",
     .msg = ENV_REPEATED_HEADER, .expect = OUTBOX_OK, .re = "^headers=2 h=3 g=2$"},
    {"outbox_message_decode", "140,000 distinct headers in under 1 MB (no quadratic work)", .msg = ENV_MANY_HEADERS,
     .expect = OUTBOX_OK, .re = "^headers=140000 "},

    /* ---- writing ---- */
    {"outbox_send", "ob NULL", .conn = CN_TX, .msg = MS_EVENT, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox handle is NULL \\| rows=0 "},
    {"outbox_send", "conn NULL", .conn = CN_NULL, .msg = MS_EVENT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_send: conn is NULL; pass the PGconn .* \\| rows=0 "},
    {"outbox_send", "message NULL", .conn = CN_TX, .msg = MS_NULL, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_send: message is NULL; create one with outbox_message_new\\(\\) \\| rows=0 "},
    {"outbox_send", "a bad connection", .conn = CN_BAD, .msg = MS_EVENT, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^outbox_send: the connection is bad: .*(refused|failed).* \\| rows=0 "},
    {"outbox_send", "no transaction", .conn = CN_IDLE, .msg = MS_EVENT, .expect = OUTBOX_ERR_NOT_IN_TRANSACTION,
     .re = "run BEGIN first.*writer\\.allow\\.autocommit=true.*nothing was written \\| rows=0 "},
    {"outbox_send", "a failed transaction", .conn = CN_FAILED, .msg = MS_EVENT,
     .expect = OUTBOX_ERR_TRANSACTION_ABORTED, .re = "already failed; ROLLBACK and retry.* \\| rows=0 "},
    {"outbox_send", "a connection busy with a query", .conn = CN_BUSY, .msg = MS_EVENT, .expect = OUTBOX_ERR_STATE,
     .re = "busy with another query.* \\| rows=0 "},
    {"outbox_send", "a terminated backend", .conn = CN_KILLED, .msg = MS_EVENT, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^insert into the outbox failed: .*(terminat|closed).* \\| rows=0 "},
    {"outbox_send", "schema not migrated", .conn = CN_TX, .msg = MS_EVENT, .flags = F_NOMIGRATE,
     .expect = OUTBOX_ERR_SCHEMA, .re = "not migrated: call outbox_migrate\\(\\) .* \\| rows=\\?$"},
    {"outbox_send", "SQL-looking schema (identifier) and message fields", .conn = CN_TX, .msg = MS_HOSTILE,
     .schema = SQL_IDENT, .expect = OUTBOX_OK, .re = "^ok \\| rows=1 dest=\\[orders\\] types=\\['; select 1; --\\] keys=\\[610062ff\\]$"},
    {"outbox_send", "SQL-looking schema (literal)", .conn = CN_TX, .msg = MS_HOSTILE, .schema = SQL_STR,
     .expect = OUTBOX_OK, .re = "^ok \\| rows=1 "},
    {"outbox_send", "schema of 63 double quotes", .conn = CN_TX, .msg = MS_EVENT, .schema = QUOTES63,
     .expect = OUTBOX_OK, .re = "^ok \\| rows=1 dest=\\[orders\\] types=\\[orders\\.Created\\] keys=\\[6b31\\]$"},
    {"outbox_send", "SQL-looking schema, not migrated", .conn = CN_TX, .msg = MS_EVENT, .schema = SQL_IDENT,
     .flags = F_NOMIGRATE, .expect = OUTBOX_ERR_SCHEMA, .re = "schema \"x\"\"; DROP TABLE t; --\" not migrated"},
    {"outbox_send", "envelope of exactly writer.max.message.bytes", .conn = CN_TX, .msg = MS_AT_LIMIT,
     .expect = OUTBOX_OK, .re = "^ok \\| rows=1 "},
    {"outbox_send", "envelope one byte over writer.max.message.bytes", .conn = CN_TX, .msg = MS_OVER_LIMIT,
     .expect = OUTBOX_ERR_MSG_TOO_LARGE,
     .re = "encodes to 1000001 bytes, more than writer\\.max\\.message\\.bytes=1000000.* \\| rows=0 "},
    {"outbox_send", "1 MiB payload", .conn = CN_TX, .msg = MS_MIB, .expect = OUTBOX_ERR_MSG_TOO_LARGE,
     .re = "encodes to 10486[0-9]{2} bytes.* \\| rows=0 "},
    {"outbox_send_batch", "ob NULL", .conn = CN_TX, .msg = MS_EVENT, .flags = F_NULL_H,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox handle is NULL"},
    {"outbox_send_batch", "ms NULL, n 3", .conn = CN_TX, .msg = MS_NULL, .n = 3, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_send_batch: ms is NULL but n is 3 \\| rows=0 "},
    {"outbox_send_batch", "ms NULL, n 0: nothing to do", .conn = CN_TX, .msg = MS_NULL, .n = 0, .flags = F_LEN,
     .expect = OUTBOX_OK, .re = "^ok \\| rows=0 "},
    {"outbox_send_batch", "n 0 and conn NULL: nothing to do", .conn = CN_NULL, .msg = MS_EVENT, .n = 0,
     .flags = F_LEN, .expect = OUTBOX_OK, .re = "^ok \\| rows=0 "},
    {"outbox_send_batch", "a NULL message in the batch", .conn = CN_TX, .msg = MS_BATCH_WITH_NULL,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_send_batch: message 1 is NULL \\| rows=0 "},
    {"outbox_send_batch", "one message too large refuses all", .conn = CN_TX, .msg = MS_BATCH_WITH_BIG,
     .expect = OUTBOX_ERR_MSG_TOO_LARGE, .re = "encodes to 1000001 bytes.* \\| rows=0 "},
    {"outbox_send_batch", "n (size_t)-1", .conn = CN_TX, .msg = MS_BATCH_WITH_NULL, .n = -1, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_send_batch: n is 18446744073709551615.* \\| rows=0 "},
    {"outbox_send_batch", "a failed transaction", .conn = CN_FAILED, .msg = MS_EVENT,
     .expect = OUTBOX_ERR_TRANSACTION_ABORTED, .re = "ROLLBACK"},
    {"outbox_send_batch", "a bad connection", .conn = CN_BAD, .msg = MS_EVENT, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^outbox_send_batch: the connection is bad"},
    {"outbox_send_batch", "SQL-looking schema and message fields", .conn = CN_TX, .msg = MS_HOSTILE,
     .schema = SQL_IDENT, .expect = OUTBOX_OK, .re = "^ok \\| rows=1 dest=\\[orders\\] types=\\['; select 1; --\\]"},

    {"outbox_send_commit", "ob NULL", .conn = CN_TX, .msg = MS_EVENT, .flags = F_NULL_H,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox handle is NULL \\| tx=INTRANS rows=0 "},
    {"outbox_send_commit", "conn NULL", .conn = CN_NULL, .msg = MS_EVENT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_send_commit: conn is NULL; pass the PGconn .* \\| tx=none rows=0 "},
    {"outbox_send_commit", "ms NULL, n 3", .conn = CN_TX, .msg = MS_NULL, .n = 3, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_send_commit: ms is NULL but n is 3; nothing was sent and the transaction was rolled back \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "ms NULL, n 0: just COMMIT", .conn = CN_TX, .msg = MS_NULL, .n = 0, .flags = F_LEN,
     .expect = OUTBOX_OK, .re = "^ok \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "a NULL message in the batch", .conn = CN_TX, .msg = MS_BATCH_WITH_NULL,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_send_commit: message 1 is NULL; .*rolled back \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "one message too large refuses all", .conn = CN_TX, .msg = MS_BATCH_WITH_BIG,
     .expect = OUTBOX_ERR_MSG_TOO_LARGE, .re = "encodes to 1000001 bytes.*rolled back \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "n (size_t)-1", .conn = CN_TX, .msg = MS_BATCH_WITH_NULL, .n = -1, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_send_commit: n is 18446744073709551615.* \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "no transaction", .conn = CN_IDLE, .msg = MS_EVENT, .expect = OUTBOX_ERR_NOT_IN_TRANSACTION,
     .re = "not inside a transaction block.*nothing was sent \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "a failed transaction", .conn = CN_FAILED, .msg = MS_EVENT,
     .expect = OUTBOX_ERR_TRANSACTION_ABORTED, .re = "COMMIT rolled it back.* \\| tx=IDLE rows=0 "},
    {"outbox_send_commit", "a bad connection", .conn = CN_BAD, .msg = MS_EVENT, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^outbox_send_commit: the connection is bad"},
    {"outbox_send_commit", "a connection busy with a query", .conn = CN_BUSY, .msg = MS_EVENT, .expect = OUTBOX_ERR_STATE,
     .re = "busy with another query.*nothing was sent \\| tx=ACTIVE rows=0 "},
    {"outbox_send_commit", "a terminated backend", .conn = CN_KILLED, .msg = MS_EVENT, .expect = OUTBOX_ERR_CONNECTION,
     .re = "(terminat|closed).* \\| tx=.* rows=0 "},
    {"outbox_send_commit", "schema not migrated", .conn = CN_TX, .msg = MS_EVENT, .flags = F_NOMIGRATE,
     .expect = OUTBOX_ERR_SCHEMA, .re = "not migrated.*nothing was committed.* \\| tx=IDLE rows=\\?$"},
    {"outbox_send_commit", "SQL-looking schema and message fields", .conn = CN_TX, .msg = MS_HOSTILE,
     .schema = SQL_IDENT, .expect = OUTBOX_OK, .re = "^ok \\| tx=IDLE rows=1 dest=\\[orders\\] types=\\['; select 1; --\\]"},

    /* ---- schema ---- */
    {"outbox_migrate", "ob NULL", .conn = CN_IDLE, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox handle is NULL \\| tables=0 "},
    {"outbox_migrate", "conn NULL", .conn = CN_NULL, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_migrate: conn is NULL \\| tables=0 "},
    {"outbox_migrate", "a bad connection", .conn = CN_BAD, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^outbox_migrate: the connection is bad: .*(refused|failed).* \\| tables=0 "},
    {"outbox_migrate", "a failed transaction", .conn = CN_FAILED, .expect = OUTBOX_ERR_TRANSACTION_ABORTED,
     .re = "^outbox_migrate: the connection's transaction has already failed; ROLLBACK.* \\| tables=0 tx=INERROR$"},
    {"outbox_migrate", "a connection busy with a query", .conn = CN_BUSY, .expect = OUTBOX_ERR_STATE,
     .re = "^outbox_migrate: the connection is busy.* \\| tables=0 "},
    {"outbox_migrate", "a terminated backend", .conn = CN_KILLED, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^(looking up the outbox schema|taking the migration lock) failed: .*(terminat|closed).* \\| tables=0 "},
    {"outbox_migrate", "inside the caller's transaction: left open", .conn = CN_TX, .expect = OUTBOX_OK,
     .re = "^ok \\| tables=10 tx=INTRANS$"},
    {"outbox_migrate", "SQL-looking schema (identifier)", .conn = CN_IDLE, .schema = SQL_IDENT, .expect = OUTBOX_OK,
     .re = "^ok \\| tables=10 tx=IDLE$"},
    {"outbox_migrate", "SQL-looking schema (literal)", .conn = CN_IDLE, .schema = SQL_STR, .expect = OUTBOX_OK,
     .re = "^ok \\| tables=10 tx=IDLE$"},
    {"outbox_migrate", "schema of 63 double quotes", .conn = CN_IDLE, .schema = QUOTES63, .expect = OUTBOX_OK,
     .re = "^ok \\| tables=10 tx=IDLE$"},
    {"outbox_migrate", "SQL-looking schema, migrated twice", .conn = CN_IDLE, .schema = SQL_IDENT,
     .flags = F_VARIANT, .expect = OUTBOX_OK, .re = "^ok \\| tables=10 tx=IDLE versions=" SV "$"},
    {"outbox_schema_version", "ob NULL", .conn = CN_IDLE, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox handle is NULL$"},
    {"outbox_schema_version", "conn NULL", .conn = CN_NULL, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_schema_version: conn is NULL$"},
    {"outbox_schema_version", "version NULL", .conn = CN_IDLE, .flags = F_NULL_OUT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_schema_version: version is NULL$"},
    {"outbox_schema_version", "a bad connection", .conn = CN_BAD, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^looking up the outbox schema failed: "},
    {"outbox_schema_version", "a failed transaction", .conn = CN_FAILED, .expect = OUTBOX_ERR_TRANSACTION_ABORTED,
     .re = "current transaction is aborted.*25P02"},
    {"outbox_schema_version", "not migrated: 0", .conn = CN_IDLE, .flags = F_NOMIGRATE, .expect = OUTBOX_OK,
     .re = "^version=0$"},
    {"outbox_schema_version", "SQL-looking schema", .conn = CN_IDLE, .schema = SQL_IDENT, .expect = OUTBOX_OK,
     .re = "^version=" SV "$"},
    {"outbox_schema_version", "SQL-looking schema, not migrated", .conn = CN_IDLE, .schema = SQL_STR,
     .flags = F_NOMIGRATE, .expect = OUTBOX_OK, .re = "^version=0$"},
    {"outbox_schema_version", "schema of 63 double quotes", .conn = CN_TX, .schema = QUOTES63, .expect = OUTBOX_OK,
     .re = "^version=" SV "$"},

    /* ---- consuming ---- */
    {"outbox_consumer_new", "conf NULL", .flags = F_NULL_H, .expect = R_NULL,
     .re = "^outbox_consumer_new: conf is NULL; set at least consumer\\.group\\.id"},
    {"outbox_consumer_new", "consumer.group.id empty", S("consumer.group.id"), S(""), .expect = R_NULL,
     .re = "consumer\\.group\\.id is not set"},
    {"outbox_consumer_new", "pg.conninfo empty (and no OUTBOX_PG_CONNINFO)", S("pg.conninfo"), S(""), .expect = R_NULL,
     .re = "pg\\.conninfo is not set \\(nor OUTBOX_PG_CONNINFO\\)"},
    {"outbox_consumer_new", "kafka.bootstrap.servers not set", .flags = F_VARIANT, .expect = R_NULL,
     .re = "^outbox_consumer_new: kafka\\.bootstrap\\.servers is not set$"},
    {"outbox_consumer_new", "pg.conninfo to a closed port", S("pg.conninfo"), S("host=127.0.0.1 port=1"),
     .expect = R_NULL, .re = "^outbox_consumer_new: cannot connect to PostgreSQL: .*(refused|failed)"},
    {"outbox_consumer_new", "pg.conninfo SQL-looking", S("pg.conninfo"), S(SQL_STR), .expect = R_NULL,
     .re = "^outbox_consumer_new: cannot connect to PostgreSQL: "},
    {"outbox_consumer_new", "pg.conninfo of 1 MiB", S("pg.conninfo"), REP("p", MIB), .expect = R_NULL,
     .re = "^outbox_consumer_new: cannot connect to PostgreSQL: "},
    {"outbox_consumer_new", "errstr NULL", S("consumer.group.id"), S(""), .flags = F_NULL_OUT, .expect = R_NULL,
     .re = "^\\(errstr NULL\\)$"},
    {"outbox_consumer_new", "SQL-looking group id and schema", S("consumer.group.id"), S(SQL_STR),
     .schema = SQL_IDENT, .expect = R_PTR, .re = "^$"},
    {"outbox_consumer_subscribe", "c NULL", S("orders"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^consumer handle is NULL$"},
    {"outbox_consumer_subscribe", "topics NULL", .n = 1, .flags = F_NULL_OUT | F_LEN, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_consumer_subscribe: no topics given$"},
    {"outbox_consumer_subscribe", "n 0", S("orders"), .n = 0, .flags = F_LEN, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "no topics given$"},
    {"outbox_consumer_subscribe", "a NULL topic", S("orders"), ANULL, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_consumer_subscribe: topic 1 \"\\(null\\)\" is NULL$"},
    {"outbox_consumer_subscribe", "an empty topic", S(""), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "topic 0 \"\" is empty"},
    {"outbox_consumer_subscribe", "SQL-looking topic", S("orders"), S(SQL_IDENT), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "topic 1 \"x\"; DROP TABLE t; --\" has the character 0x22 at offset 1"},
    {"outbox_consumer_subscribe", "topic not UTF-8", S(NON_UTF8), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "topic 0 .* has the character 0xff at offset 3"},
    {"outbox_consumer_subscribe", "topic of 250 characters", REP("t", 250), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "is 250 characters long; a Kafka topic name has at most 249$"},
    {"outbox_consumer_subscribe", "topic of 1 MiB", REP("t", MIB), .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_consumer_subscribe: topic 0 \"t+\" is 1048576 characters long; a Kafka topic name has at most 249$"},
    {"outbox_consumer_subscribe", "n INT_MAX with a bad first topic", S("bad topic"), .n = INT_MAX, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "topic 0 \"bad topic\" has the character 0x20"},
    {"outbox_consumer_subscribe", "n (size_t)-1 with a bad first topic", S("bad topic"), .n = -1, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "topic 0 \"bad topic\" has the character 0x20"},
    {"outbox_consumer_subscribe", "a topic of 249 characters (the limit)", REP("t", 249), .expect = OUTBOX_OK, .re = "^$"},
    {"outbox_consumer_poll", "c NULL", .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^consumer handle is NULL$"},
    {"outbox_consumer_poll", "handler NULL", .flags = F_NULL_OUT, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_consumer_poll: handler is NULL and no batch handler is set \\| "},
    {"outbox_consumer_poll", "timeout INT_MIN: no wait", .n = INT_MIN, .expect = OUTBOX_OK,
     .re = "^ \\| processed=0 duplicates=0 retried=0 rejected=0$"},
    {"outbox_consumer_poll", "timeout -1: no wait", .n = -1, .expect = OUTBOX_OK, .re = "processed=0"},
    {"outbox_consumer_poll", "SQL-looking group id and schema, an envelope and garbage on the topic",
     .flags = F_VARIANT, .schema = SQL_IDENT, .n = 200, .expect = OUTBOX_OK,
     .re = "^processed=1 rejected=1 dedup=\\['; select 1; --\\] dead=\\[not an envelope: [0-9]+ bytes are not a "
           "valid outbox\\.v1\\.Envelope protobuf\\] type='; select 1; -- header='; select 1; --$"},
    {"outbox_consumer_parked_retry", "c NULL", S("k"), .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^consumer handle is NULL$"},
    {"outbox_consumer_parked_retry", "key NULL, len 3", ANULL, .n = 3, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_consumer_parked_retry: key is NULL but len is 3$"},
    {"outbox_consumer_parked_retry", "len (size_t)-1", S("k"), .n = -1, .flags = F_LEN,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "len 18446744073709551615 is not a key length$"},
    {"outbox_consumer_parked_retry", "policy dead-letter (the default)", BUF("k\0\xff"),
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "consumer\\.reject\\.policy is not park-key"},
    {"outbox_consumer_set_batch_handler", "c NULL", .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^consumer handle is NULL$"},
    {"outbox_consumer_set_batch_handler", "cb NULL: clears it", .flags = F_NULL_OUT, .expect = OUTBOX_OK, .re = "^$"},
    {"outbox_consumer_stats", "c NULL: stats left alone", .flags = F_NULL_H, .expect = R_VOID,
     .re = "^processed=7 duplicates=7 retried=7 rejected=7$"},
    {"outbox_consumer_stats", "stats NULL", .flags = F_NULL_OUT, .expect = R_VOID},
    {"outbox_consumer_errmsg", "c NULL: a static message", .flags = F_NULL_H, .expect = R_PTR,
     .re = "^consumer handle is NULL$"},
    {"outbox_consumer_errmsg", "a fresh consumer", .expect = R_PTR, .re = "^$"},
    {"outbox_consumer_destroy", "NULL", .flags = F_NULL_H, .expect = R_VOID},
    {"outbox_consumer_destroy", "a subscribed consumer whose broker is unreachable", .expect = R_VOID},

    /* ---- replies and pruning ---- */
    {"outbox_reply", "ob NULL", S("r.T"), S("p"), .conn = CN_TX, .msg = MS_COMMAND, .flags = F_NULL_H,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox handle is NULL"},
    {"outbox_reply", "request NULL", S("r.T"), S("p"), .conn = CN_TX, .msg = MS_NULL, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_reply: request is NULL; replies answer a COMMAND that has a reply_to channel \\| rows=0 "},
    {"outbox_reply", "request is an EVENT", S("r.T"), S("p"), .conn = CN_TX, .msg = MS_EVENT,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_reply: request is not a COMMAND"},
    {"outbox_reply", "request has no reply_to", S("r.T"), S("p"), .conn = CN_TX, .msg = MS_COMMAND_NO_REPLY,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_reply: request has no reply_to"},
    {"outbox_reply", "type NULL", ANULL, S("p"), .conn = CN_TX, .msg = MS_COMMAND, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_reply: .*type is NULL"},
    {"outbox_reply", "type empty", S(""), S("p"), .conn = CN_TX, .msg = MS_COMMAND, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_reply: .*type is empty"},
    {"outbox_reply", "type not UTF-8", S(NON_UTF8), S("p"), .conn = CN_TX, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_reply: .*type is not valid UTF-8.* \\| rows=0 "},
    {"outbox_reply", "payload NULL, len 5", S("r.T"), ANULL, .n = 5, .flags = F_LEN, .conn = CN_TX, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_reply: payload is NULL but len is 5 \\| rows=0 "},
    {"outbox_reply", "payload NULL, len 0: an empty reply", S("r.T"), ANULL, .n = 0, .flags = F_LEN, .conn = CN_TX,
     .msg = MS_COMMAND, .expect = OUTBOX_OK, .re = "^ok \\| rows=1 dest=\\[orders\\.replies\\]"},
    {"outbox_reply", "len (size_t)-1", S("r.T"), S("p"), .n = -1, .flags = F_LEN, .conn = CN_TX, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "^outbox_reply: len 18446744073709551615 is not a length .*\\| rows=0 "},
    {"outbox_reply", "conn NULL", S("r.T"), S("p"), .conn = CN_NULL, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_INVALID_ARG, .re = "conn is NULL"},
    {"outbox_reply", "no transaction", S("r.T"), S("p"), .conn = CN_IDLE, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_NOT_IN_TRANSACTION, .re = "BEGIN"},
    {"outbox_reply", "a failed transaction", S("r.T"), S("p"), .conn = CN_FAILED, .msg = MS_COMMAND,
     .expect = OUTBOX_ERR_TRANSACTION_ABORTED, .re = "ROLLBACK"},
    {"outbox_reply", "SQL-looking schema and type, binary payload", S(SQL_STR), BUF("\0\xff"), .conn = CN_TX,
     .msg = MS_COMMAND, .schema = SQL_IDENT, .expect = OUTBOX_OK,
     .re = "^ok \\| rows=1 dest=\\[orders\\.replies\\] types=\\['; select 1; --\\] keys=\\[6b31\\]$"},
    {"outbox_processed_prune", "ob NULL", .conn = CN_IDLE, .n = 5, .flags = F_NULL_H, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox handle is NULL"},
    {"outbox_processed_prune", "conn NULL", .conn = CN_NULL, .n = 5, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_processed_prune: conn is NULL \\| left=1$"},
    {"outbox_processed_prune", "max_age_s -1", .conn = CN_IDLE, .n = -1, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "^outbox_processed_prune: max_age_s is negative \\| left=1$"},
    {"outbox_processed_prune", "max_age_s INT64_MIN", .conn = CN_IDLE, .n = INT64_MIN, .expect = OUTBOX_ERR_INVALID_ARG,
     .re = "max_age_s is negative"},
    {"outbox_processed_prune", "max_age_s 0: everything", .conn = CN_IDLE, .n = 0, .expect = OUTBOX_OK,
     .re = "^deleted=1 \\| left=0$"},
    {"outbox_processed_prune", "max_age_s INT64_MAX: nothing is that old", .conn = CN_IDLE, .n = INT64_MAX,
     .expect = OUTBOX_OK, .re = "^deleted=0 \\| left=1$"},
    {"outbox_processed_prune", "max_age_s 2^40 (beyond PostgreSQL's timestamps)", .conn = CN_IDLE,
     .n = 1099511627776LL, .expect = OUTBOX_OK, .re = "^deleted=0 \\| left=1$"},
    {"outbox_processed_prune", "deleted NULL", .conn = CN_IDLE, .n = 0, .flags = F_NULL_OUT, .expect = OUTBOX_OK,
     .re = "^deleted=-5 \\| left=0$"},
    {"outbox_processed_prune", "a bad connection", .conn = CN_BAD, .n = 5, .expect = OUTBOX_ERR_CONNECTION,
     .re = "^pruning processed records failed: "},
    {"outbox_processed_prune", "a failed transaction", .conn = CN_FAILED, .n = 5,
     .expect = OUTBOX_ERR_TRANSACTION_ABORTED, .re = "current transaction is aborted.*25P02"},
    {"outbox_processed_prune", "schema not migrated", .conn = CN_IDLE, .n = 5, .flags = F_NOMIGRATE,
     .expect = OUTBOX_ERR_SCHEMA, .re = "not migrated: call outbox_migrate\\(\\)"},
    {"outbox_processed_prune", "SQL-looking schema", .conn = CN_IDLE, .n = 5, .schema = SQL_IDENT, .expect = OUTBOX_OK,
     .re = "^deleted=1 \\| left=0$"},
    {"outbox_processed_prune", "schema of 63 double quotes", .conn = CN_TX, .n = 5, .schema = QUOTES63,
     .expect = OUTBOX_OK, .re = "^deleted=1 \\| left=0$"},
};

#define NROWS ((int)(sizeof(rows) / sizeof(rows[0])))

/* ---- per-row state (each row runs in its own forked process) ------------------------------ */

static const row_t *cur;
static int cur_idx;
static PGconn *admin;    /* the test's own connection, for setting up and checking */
static char *cur_schema; /* the row's outbox.schema */

#define ROW_CHECK(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            char why_[2048];                                                                  \
            snprintf(why_, sizeof(why_), __VA_ARGS__);                                        \
            ck_abort_msg("row %d (%s: %s): %s", cur_idx, cur->fn, cur->what, why_);           \
        }                                                                                     \
    } while (0)

/* A materialised argument; owned is freed after the row. */
typedef struct {
    const char *p;
    size_t len;
    char *owned;
} val_t;

static val_t make_val(arg_t a) {
    val_t v = {NULL, 0, NULL};
    switch (a.k) {
    case A_NONE:
    case A_NULL:
        break;
    case A_STR:
        v.p = a.s;
        v.len = strlen(a.s);
        break;
    case A_BUF:
        v.p = a.s;
        v.len = a.n;
        break;
    case A_REP:
        v.owned = malloc(a.n + 1);
        ck_assert_ptr_nonnull(v.owned);
        memset(v.owned, a.s[0], a.n);
        v.owned[a.n] = '\0';
        v.p = v.owned;
        v.len = a.n;
        break;
    }
    return v;
}

static void hex(char *out, size_t size, const void *p, size_t len, size_t max) {
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < len && i < max && o + 3 < size; i++)
        o += (size_t)snprintf(out + o, size - o, "%02x", ((const unsigned char *)p)[i]);
}

/* Collects what the library logs: the last MIGRATE line, the opaque pointer, nothing on stderr. */
static char last_log[2048];
static void *last_opaque;
static void capture_log(int level, const char *fac, const char *msg, void *opaque) {
    (void)level;
    if (!strcmp(fac, "MIGRATE"))
        snprintf(last_log, sizeof(last_log), "%s", msg);
    last_opaque = opaque;
}

static char *quoted_schema(void) {
    char *q = PQescapeIdentifier(admin, cur_schema, strlen(cur_schema));
    ck_assert_ptr_nonnull(q);
    return q;
}

static void drop_schema(void) {
    char *q = quoted_schema();
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", q);
    PQfreemem(q);
    tu_exec(admin, sql);
}

/* A one-cell query on admin, with the row's schema quoted for every '@'; -1 if it fails. */
static long long admin_scalar(const char *fmt) {
    char sql[1024], *q = quoted_schema();
    size_t o = 0;
    for (const char *p = fmt; *p && o + strlen(q) + 1 < sizeof(sql); p++) {
        if (*p == '@') {
            memcpy(sql + o, q, strlen(q));
            o += strlen(q);
        } else {
            sql[o++] = *p;
        }
    }
    sql[o] = '\0';
    PQfreemem(q);
    PGresult *res = PQexec(admin, sql);
    long long v = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 ? atoll(PQgetvalue(res, 0, 0)) : -1;
    PQclear(res);
    return v;
}

static long long schema_tables(void) {
    const char *p[1] = {cur_schema};
    PGresult *res = PQexecParams(admin, "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", 1,
                                 NULL, p, NULL, NULL, 0);
    ROW_CHECK(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    long long n = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

/* "rows=N dest=[..] types=[..] keys=[..]" of the row's outbox table, or "rows=?" without one. */
static const char *describe_rows(void) {
    static char out[1024];
    char sql[1024], *q = quoted_schema();
    snprintf(sql, sizeof(sql),
             "SELECT count(*), coalesce(string_agg(destination, ',' ORDER BY id), ''), "
             "coalesce(string_agg(left(message_type, 60), ',' ORDER BY id), ''), "
             "coalesce(string_agg(encode(partition_key, 'hex'), ',' ORDER BY id), '') FROM %s.messages",
             q);
    PQfreemem(q);
    PGresult *res = PQexec(admin, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        snprintf(out, sizeof(out), "rows=?");
    else
        snprintf(out, sizeof(out), "rows=%s dest=[%s] types=[%s] keys=[%s]", PQgetvalue(res, 0, 0),
                 PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3));
    PQclear(res);
    return out;
}

/* A conf for the row's schema that logs into capture_log. */
static outbox_conf_t *row_conf(void) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_ptr_nonnull(conf);
    ROW_CHECK(outbox_conf_set(conf, "outbox.schema", cur_schema, err, sizeof(err)) == OUTBOX_CONF_OK, "%s", err);
    outbox_conf_set_log_cb(conf, capture_log);
    return conf;
}

/* A writer for the row's schema, migrated unless the row says F_NOMIGRATE. */
static outbox_t *row_ob(void) {
    char err[512];
    outbox_t *ob = outbox_new(row_conf(), err, sizeof(err));
    ROW_CHECK(ob != NULL, "outbox_new: %s", err);
    if (!(cur->flags & F_NOMIGRATE))
        ROW_CHECK(outbox_migrate(ob, admin) == OUTBOX_OK, "outbox_migrate: %s", outbox_errmsg(ob));
    return ob;
}

static PGconn *make_conn(conn_t k) {
    if (k == CN_NONE || k == CN_NULL)
        return NULL;
    if (k == CN_BAD) {
        PGconn *c = PQconnectdb("host=127.0.0.1 port=1 connect_timeout=5");
        ROW_CHECK(PQstatus(c) == CONNECTION_BAD, "a connection to port 1 succeeded");
        return c;
    }
    PGconn *c = tu_connect();
    if (k == CN_TX || k == CN_FAILED || k == CN_KILLED)
        tu_exec(c, "BEGIN");
    if (k == CN_FAILED)
        PQclear(PQexec(c, "SELECT 1/0"));
    if (k == CN_BUSY)
        ROW_CHECK(PQsendQuery(c, "SELECT pg_sleep(0.05)"), "PQsendQuery: %s", PQerrorMessage(c));
    if (k == CN_KILLED) {
        char sql[128];
        int pid = PQbackendPID(c);
        snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
        tu_exec(admin, sql);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
        for (int i = 0; i < 500 && tu_scalar(admin, sql) > 0; i++)
            tk_sleep_ms(10);
    }
    return c;
}

static void free_conn(PGconn *c) {
    PGresult *res;
    if (!c)
        return;
    while ((res = PQgetResult(c)))
        PQclear(res);
    PQfinish(c);
}

/* Ends whatever transaction the call left on c, keeping what a healthy one wrote. */
static void finish_tx(PGconn *c) {
    if (!c || PQstatus(c) != CONNECTION_OK)
        return;
    PGresult *res;
    while ((res = PQgetResult(c)))
        PQclear(res);
    if (PQtransactionStatus(c) == PQTRANS_INTRANS)
        tu_exec(c, "COMMIT");
    else if (PQtransactionStatus(c) == PQTRANS_INERROR)
        tu_exec(c, "ROLLBACK");
}

static const char *tx_name(PGconn *c) {
    if (!c)
        return "none";
    switch (PQtransactionStatus(c)) {
    case PQTRANS_IDLE: return "IDLE";
    case PQTRANS_INTRANS: return "INTRANS";
    case PQTRANS_INERROR: return "INERROR";
    case PQTRANS_ACTIVE: return "ACTIVE";
    default: return "UNKNOWN";
    }
}

static outbox_message_t *new_msg(outbox_kind_t kind, const char *dest, const char *type) {
    outbox_message_t *m;
    char err[512];
    ROW_CHECK(outbox_message_create(&m, kind, dest, type, err, sizeof(err)) == OUTBOX_OK, "%s", err);
    return m;
}

/* The payload size that makes a message encode to exactly 1000000 bytes. */
static size_t payload_at_limit(outbox_message_t *m, char *buf) {
    size_t p = 999000, len;
    void *enc;
    outbox_message_set_payload(m, buf, p);
    ck_assert_int_eq(outbox_message_encode(m, &enc, &len), OUTBOX_OK);
    free(enc);
    return p + (1000000 - len); /* the length prefix stays 3 bytes in this range */
}

static outbox_message_t *build_msg(ms_t k) {
    outbox_message_t *m = NULL;
    switch (k) {
    case MS_NONE:
    case MS_NULL:
        return NULL;
    case MS_EVENT:
        m = new_msg(OUTBOX_EVENT, "orders", "orders.Created");
        ck_assert_int_eq(outbox_message_set_key(m, "k1", 2), OUTBOX_OK);
        return m;
    case MS_COMMAND:
    case MS_COMMAND_NO_REPLY:
        m = new_msg(OUTBOX_COMMAND, "orders.cmd", "orders.Approve");
        if (k == MS_COMMAND) {
            ck_assert_int_eq(outbox_message_set_key(m, "k1", 2), OUTBOX_OK);
            ck_assert_int_eq(outbox_message_set_reply_to(m, "orders.replies"), OUTBOX_OK);
        }
        return m;
    case MS_HOSTILE:
        m = new_msg(OUTBOX_EVENT, "orders", SQL_STR);
        ck_assert_int_eq(outbox_message_set_key(m, "a\0b\xff", 4), OUTBOX_OK);
        ck_assert_int_eq(outbox_message_set_payload(m, "p\0\xfe", 3), OUTBOX_OK);
        ck_assert_int_eq(outbox_message_set_header(m, SQL_IDENT, SQL_STR), OUTBOX_OK);
        ck_assert_int_eq(outbox_message_set_correlation_id(m, SQL_IDENT), OUTBOX_OK);
        return m;
    case MS_AT_LIMIT:
    case MS_OVER_LIMIT: {
        m = new_msg(OUTBOX_EVENT, "orders", "orders.Big");
        char *buf = calloc(1, 1000000);
        ck_assert_ptr_nonnull(buf);
        size_t p = payload_at_limit(m, buf) + (k == MS_OVER_LIMIT);
        ck_assert_int_eq(outbox_message_set_payload(m, buf, p), OUTBOX_OK);
        free(buf);
        void *enc;
        size_t len;
        ck_assert_int_eq(outbox_message_encode(m, &enc, &len), OUTBOX_OK);
        free(enc);
        ROW_CHECK(len == 1000000 + (k == MS_OVER_LIMIT), "the message encodes to %zu bytes", len);
        return m;
    }
    case MS_MIB: {
        m = new_msg(OUTBOX_EVENT, "orders", "orders.Big");
        char *buf = malloc(MIB);
        ck_assert_ptr_nonnull(buf);
        memset(buf, 'p', MIB);
        ck_assert_int_eq(outbox_message_set_payload(m, buf, MIB), OUTBOX_OK);
        free(buf);
        return m;
    }
    default:
        ROW_CHECK(0, "message spec %d is not a message", (int)k);
        return NULL;
    }
}

/* The bytes of an envelope spec.  Caller frees. */
static uint8_t *build_env(ms_t k, size_t *len) {
    if (k == ENV_VALID || k == ENV_TRUNCATED) {
        outbox_message_t *m = build_msg(MS_HOSTILE);
        void *buf;
        ck_assert_int_eq(outbox_message_encode(m, &buf, len), OUTBOX_OK);
        outbox_message_destroy(m);
        if (k == ENV_TRUNCATED)
            (*len)--;
        return buf;
    }
    Outbox__V1__Envelope e = OUTBOX__V1__ENVELOPE__INIT;
    e.id = (char *)"0190f0e2-8c1a-7cde-8f00-0123456789ab";
    e.kind = OUTBOX__V1__KIND__EVENT;
    e.type = (char *)"t.T";
    e.destination = (char *)"d";
    e.schema_version = (char *)"1.0";
    Outbox__V1__Envelope__HeadersEntry *entries = NULL, **ptrs = NULL;
    char(*names)[4] = NULL;
    size_t nh = 0;
    switch (k) {
    case ENV_SQL_DEST: e.destination = (char *)SQL_IDENT; break;
    case ENV_SQL_ID: e.id = (char *)SQL_STR; break;
    case ENV_KIND_ZERO: e.kind = OUTBOX__V1__KIND__KIND_UNSPECIFIED; break;
    case ENV_SQL_VERSION: e.schema_version = (char *)SQL_STR; break;
    case ENV_NON_UTF8_TYPE: e.type = (char *)NON_UTF8; break;
    case ENV_NON_UTF8_CORR: e.correlation_id = (char *)NON_UTF8; break;
    case ENV_NON_UTF8_HEADER: nh = 1; break;
    case ENV_REPEATED_HEADER: nh = 3; break;
    case ENV_MANY_HEADERS: nh = 140000; break;
    default: ROW_CHECK(0, "envelope spec %d", (int)k);
    }
    if (nh) {
        entries = calloc(nh, sizeof(*entries));
        ptrs = calloc(nh, sizeof(*ptrs));
        names = calloc(nh, sizeof(*names));
        ck_assert(entries && ptrs && names);
        for (size_t i = 0; i < nh; i++) {
            Outbox__V1__Envelope__HeadersEntry init = OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT;
            entries[i] = init;
            ptrs[i] = &entries[i];
            /* Three printable characters, all different: 90^3 > 140,000. */
            names[i][0] = (char)(33 + i % 90);
            names[i][1] = (char)(33 + i / 90 % 90);
            names[i][2] = (char)(33 + i / 8100 % 90);
            entries[i].key = names[i];
        }
        if (k == ENV_NON_UTF8_HEADER) {
            entries[0].key = (char *)"h";
            entries[0].value = (char *)NON_UTF8;
        } else if (k == ENV_REPEATED_HEADER) {
            entries[0].key = (char *)"h", entries[0].value = (char *)"1";
            entries[1].key = (char *)"g", entries[1].value = (char *)"2";
            entries[2].key = (char *)"h", entries[2].value = (char *)"3";
        }
        e.n_headers = nh;
        e.headers = ptrs;
    }
    *len = outbox__v1__envelope__get_packed_size(&e);
    uint8_t *buf = malloc(*len);
    ck_assert_ptr_nonnull(buf);
    outbox__v1__envelope__pack(&e, buf);
    free(entries);
    free(ptrs);
    free(names);
    return buf;
}

/* ---- one handler per public function ------------------------------------------------------- */

/* Calls the row's function; returns its result (or R_*) and writes into msg the error message,
 * or for a successful call a description of what it did. */
typedef int (*handler_fn)(val_t a, val_t b, char *msg, size_t msz);

static int h_version_str(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    const char *s = outbox_version_str();
    snprintf(msg, msz, "%s", s ? s : "");
    return s ? R_PTR : R_NULL;
}

static int h_err2str(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    const char *s = outbox_err2str((outbox_err_t)cur->n);
    snprintf(msg, msz, "%s", s ? s : "");
    return s ? R_PTR : R_NULL;
}

static int h_err_is_retriable(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    return outbox_err_is_retriable((outbox_err_t)cur->n);
}

static int h_conf_new(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_conf_t *conf = outbox_conf_new();
    if (!conf)
        return R_NULL;
    size_t n = msz;
    ROW_CHECK(outbox_conf_get(conf, "outbox.schema", msg, &n) == OUTBOX_CONF_OK, "no outbox.schema");
    outbox_conf_destroy(conf);
    return R_PTR;
}

static int h_conf_set(val_t a, val_t b, char *msg, size_t msz) {
    outbox_conf_t *conf = cur->flags & F_NULL_H ? NULL : outbox_conf_new();
    char err[512] = "(untouched)";
    char *key = (char *)a.p;
    if (cur->flags & F_VARIANT) { /* the key is "kafka." + a */
        key = malloc(a.len + 7);
        ck_assert_ptr_nonnull(key);
        memcpy(key, "kafka.", 6);
        memcpy(key + 6, a.p, a.len + 1);
    }
    size_t esz = cur->flags & F_SMALL ? 1 : sizeof(err);
    outbox_conf_res_t r = outbox_conf_set(conf, key, b.p, cur->flags & F_NULL_OUT ? NULL : err, esz);
    if (cur->flags & F_NULL_OUT)
        snprintf(msg, msz, "(errstr NULL)");
    else if (r != OUTBOX_CONF_OK)
        snprintf(msg, msz, "%s", err);
    else {
        size_t n = 0;
        ROW_CHECK(outbox_conf_get(conf, key, NULL, &n) == OUTBOX_CONF_OK, "cannot read back %s", key);
        char *v = malloc(n);
        ck_assert_ptr_nonnull(v);
        ROW_CHECK(outbox_conf_get(conf, key, v, &n) == OUTBOX_CONF_OK, "cannot read back %s", key);
        snprintf(msg, msz, "stored %zu bytes: %.100s", n, v);
        free(v);
    }
    if (key != a.p)
        free(key);
    outbox_conf_destroy(conf);
    return r;
}

static int h_conf_get(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_conf_t *conf = cur->flags & F_NULL_H ? NULL : outbox_conf_new();
    char dest[16];
    memset(dest, 'Z', sizeof(dest));
    size_t n = cur->flags & F_SMALL ? (size_t)cur->n : sizeof(dest), asked = n;
    outbox_conf_res_t r;
    if (cur->flags & F_NULL_OUT)
        r = outbox_conf_get(conf, a.p, dest, NULL);
    else if (cur->flags & F_VARIANT)
        r = outbox_conf_get(conf, a.p, NULL, &n);
    else
        r = outbox_conf_get(conf, a.p, dest, &n);
    if (cur->flags & F_SMALL)
        snprintf(msg, msz, "size=%zu dest=%.*s", n, (int)asked, dest);
    else if (r == OUTBOX_CONF_OK && !(cur->flags & F_VARIANT))
        snprintf(msg, msz, "size=%zu value=%s", n, dest);
    else
        snprintf(msg, msz, "size=%zu", n);
    outbox_conf_destroy(conf);
    return r;
}

static int h_conf_dup(val_t a, val_t b, char *msg, size_t msz) {
    if (cur->flags & F_NULL_H)
        return outbox_conf_dup(NULL) ? R_PTR : R_NULL;
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", a.p, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", b.p, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.client.id", SQL_STR, err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_conf_set_log_cb(conf, capture_log);
    outbox_conf_t *copy = outbox_conf_dup(conf);
    outbox_conf_destroy(conf); /* the copy must not share anything with it */
    if (!copy)
        return R_NULL;
    char schema[128], client[128];
    size_t n = sizeof(schema), cn = 0, k = sizeof(client);
    ck_assert_int_eq(outbox_conf_get(copy, "outbox.schema", schema, &n), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_get(copy, "pg.conninfo", NULL, &cn), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_get(copy, "kafka.client.id", client, &k), OUTBOX_CONF_OK);
    /* The log callback went along: a handle made from the copy logs into capture_log. */
    last_log[0] = '\0';
    outbox_t *ob = outbox_new(copy, err, sizeof(err));
    ck_assert_ptr_nonnull(ob);
    free(cur_schema);
    cur_schema = strdup(schema);
    int migrated = outbox_migrate(ob, admin) == OUTBOX_OK;
    snprintf(msg, msz, "schema=%s conninfo=%zu client.id=%s cb=%d", schema, cn - 1, client,
             migrated && strstr(last_log, "applied outbox migration") != NULL);
    outbox_destroy(ob);
    return R_PTR;
}

static int h_conf_set_log_cb(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    if (cur->flags & F_NULL_H) {
        outbox_conf_set_log_cb(NULL, capture_log);
        outbox_conf_set_log_cb(NULL, NULL);
        return R_VOID;
    }
    outbox_conf_t *conf = row_conf();
    if (!(cur->flags & F_VARIANT)) {
        outbox_conf_set_log_cb(conf, NULL);
        outbox_conf_destroy(conf);
        return R_VOID;
    }
    /* The migration log line carries the schema name: it must stay one well-formed logfmt line. */
    char err[512];
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_ptr_nonnull(ob);
    last_log[0] = '\0';
    int r = outbox_migrate(ob, admin);
    snprintf(msg, msz, "%s", r ? outbox_errmsg(ob) : last_log);
    outbox_destroy(ob);
    return r;
}

static int h_conf_set_opaque(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    static char mine[] = "mine";
    if (cur->flags & F_NULL_H) {
        outbox_conf_set_opaque(NULL, mine);
        return R_VOID;
    }
    outbox_conf_t *conf = row_conf();
    outbox_conf_set_opaque(conf, mine);
    char err[512];
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    ck_assert_ptr_nonnull(ob);
    last_opaque = NULL;
    int r = outbox_migrate(ob, admin);
    snprintf(msg, msz, "opaque=%s", last_opaque == mine ? "mine" : "other");
    outbox_destroy(ob);
    return r;
}

static int h_conf_destroy(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    if (cur->flags & F_NULL_H) {
        outbox_conf_destroy(NULL);
        return R_VOID;
    }
    char err[512], *big = malloc(MIB + 1);
    ck_assert_ptr_nonnull(big);
    memset(big, 'v', MIB);
    big[MIB] = '\0';
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", big, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.client.id", big, err, sizeof(err)), OUTBOX_CONF_OK);
    for (int i = 0; i < 20; i++) /* more kafka.* keys than the first allocation holds */
        ck_assert_int_eq(outbox_conf_set(conf, i % 2 ? "kafka.linger.ms" : "kafka.acks", "1", err, sizeof(err)),
                         OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.socket.timeout.ms", "10000", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.batch.size", "1000", err, sizeof(err)), OUTBOX_CONF_OK);
    for (int i = 0; i < 10; i++) {
        char key[64];
        static const char *const keys[] = {"client.rack", "group.instance.id", "sasl.username", "sasl.password",
                                           "ssl.cipher.suites", "debug", "broker.version.fallback",
                                           "api.version.request", "socket.keepalive.enable", "metadata.max.age.ms"};
        static const char *const vals[] = {"r", "i", "u", "p", "ALL", "", "0.10.0", "true", "true", "60000"};
        snprintf(key, sizeof(key), "kafka.%s", keys[i]);
        outbox_conf_set(conf, key, vals[i], err, sizeof(err)); /* what librdkafka accepts is enough */
    }
    free(big);
    outbox_conf_destroy(conf); /* LeakSanitizer checks that everything went */
    return R_VOID;
}

static int h_new(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    char err[512] = "";
    outbox_conf_t *conf = NULL;
    if (!(cur->flags & F_NULL_H)) {
        conf = outbox_conf_new();
        ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", a.p, err, sizeof(err)), OUTBOX_CONF_OK);
    }
    outbox_t *ob = cur->flags & F_NULL_OUT ? outbox_new(conf, NULL, 0) : outbox_new(conf, err, sizeof(err));
    if (!ob) {
        snprintf(msg, msz, "%s", err);
        outbox_conf_destroy(conf);
        return R_NULL;
    }
    char fresh[64]; /* a new handle has no error yet */
    snprintf(fresh, sizeof(fresh), "%s", outbox_errmsg(ob));
    /* The handle quotes the schema once; an unmigrated one names it in the SCHEMA error. */
    PGconn *c = make_conn(CN_TX);
    outbox_message_t *m = build_msg(MS_EVENT);
    int r = outbox_send(ob, c, m);
    const char *q = strstr(outbox_errmsg(ob), "(schema ");
    char schema[256] = "?";
    if (r == OUTBOX_ERR_SCHEMA && q) {
        snprintf(schema, sizeof(schema), "%s", q + 8);
        char *end = strstr(schema, " not migrated");
        if (end)
            *end = '\0';
    }
    outbox_message_destroy(m);
    free_conn(c);
    outbox_destroy(ob);
    snprintf(msg, msz, "schema=%s errmsg=%s", schema, fresh);
    return R_PTR;
}

static int h_destroy(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    outbox_destroy(NULL);
    return R_VOID;
}

static int h_errmsg(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *ob = cur->flags & F_NULL_H ? NULL : outbox_new(NULL, NULL, 0);
    const char *s = outbox_errmsg(ob);
    snprintf(msg, msz, "%s", s ? s : "");
    outbox_destroy(ob);
    return s ? R_PTR : R_NULL;
}

static int h_errmsg_retriable(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    if (cur->flags & F_NULL_H)
        return outbox_errmsg_retriable(NULL);
    outbox_t *ob = row_ob();
    PGconn *c = make_conn(cur->conn);
    outbox_message_t *m = build_msg(MS_EVENT);
    int err = outbox_send(ob, c, m);
    int r = outbox_errmsg_retriable(ob);
    snprintf(msg, msz, "send=%d %s", err, outbox_errmsg(ob));
    outbox_message_destroy(m);
    free_conn(c);
    outbox_destroy(ob);
    return r;
}

static const char *errno_name(int e) {
    return e == EINVAL ? "EINVAL" : e == ENOMEM ? "ENOMEM" : e ? "another errno" : "0";
}

static int h_message_new(val_t a, val_t b, char *msg, size_t msz) {
    errno = 0;
    outbox_message_t *m = outbox_message_new((outbox_kind_t)cur->n, a.p, b.p);
    int e = errno;
    if (!m) {
        snprintf(msg, msz, "errno=%s", errno_name(e));
        return R_NULL;
    }
    snprintf(msg, msz, "destination=%.300s type=%.60s", outbox_message_destination(m), outbox_message_type(m));
    outbox_message_destroy(m);
    return R_PTR;
}

static int h_message_create(val_t a, val_t b, char *msg, size_t msz) {
    outbox_message_t *m = (outbox_message_t *)&m; /* must be overwritten */
    char err[512] = "(untouched)";
    size_t esz = cur->flags & F_SMALL ? 1 : sizeof(err);
    outbox_err_t r = outbox_message_create(cur->flags & F_NULL_H ? NULL : &m, (outbox_kind_t)cur->n, a.p, b.p,
                                           cur->flags & F_NULL_OUT ? NULL : err, esz);
    if (!(cur->flags & F_NULL_H))
        ROW_CHECK(r == OUTBOX_OK ? m != NULL : m == NULL, "*out is %p after returning %d", (void *)m, r);
    if (cur->flags & F_NULL_OUT)
        snprintf(msg, msz, "(errstr NULL)");
    else if (r)
        snprintf(msg, msz, "%s", err);
    else
        snprintf(msg, msz, "destination=%.300s type=%.60s", outbox_message_destination(m), outbox_message_type(m));
    if (!r)
        outbox_message_destroy(m);
    return r;
}

/* A plain message for the setters, or NULL for F_NULL_H. */
static outbox_message_t *setter_msg(void) {
    return cur->flags & F_NULL_H ? NULL : new_msg(OUTBOX_COMMAND, "orders", "orders.T");
}

static int h_set_key(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    if (m && (cur->flags & F_OLD))
        ck_assert_int_eq(outbox_message_set_key(m, "old", 3), OUTBOX_OK);
    int r = outbox_message_set_key(m, a.p, cur->flags & F_LEN ? (size_t)cur->n : a.len);
    size_t len = 0;
    const void *k = outbox_message_key(m, &len);
    char h[64];
    hex(h, sizeof(h), k, len, 8);
    snprintf(msg, msz, "len=%zu hex=%s", len, h);
    outbox_message_destroy(m);
    return r;
}

static int h_set_payload(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    if (m && (cur->flags & F_OLD))
        ck_assert_int_eq(outbox_message_set_payload(m, "old", 3), OUTBOX_OK);
    int r = outbox_message_set_payload(m, a.p, cur->flags & F_LEN ? (size_t)cur->n : a.len);
    size_t len = 0;
    const void *p = outbox_message_payload(m, &len);
    char h[64];
    hex(h, sizeof(h), p, len, 8);
    snprintf(msg, msz, "len=%zu hex=%s", len, h);
    outbox_message_destroy(m);
    return r;
}

static int h_set_header(val_t a, val_t b, char *msg, size_t msz) {
    outbox_message_t *m = setter_msg();
    if (m && (cur->flags & F_OLD))
        ck_assert_int_eq(outbox_message_set_header(m, "h", "old"), OUTBOX_OK);
    int r = outbox_message_set_header(m, a.p, b.p);
    size_t n = outbox_message_header_count(m);
    int o = snprintf(msg, msz, "count=%zu", n);
    for (size_t i = 0; i < n && (size_t)o < msz; i++) {
        const char *name, *value;
        ck_assert_int_eq(outbox_message_header_at(m, i, &name, &value), OUTBOX_OK);
        o += snprintf(msg + o, msz - (size_t)o, " %.40s(%zu)=%.40s(%zu)", name, strlen(name), value, strlen(value));
    }
    outbox_message_destroy(m);
    return r;
}

static int h_set_schema_version(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    int r = outbox_message_set_schema_version(m, a.p);
    snprintf(msg, msz, "%s", m ? outbox_message_schema_version(m) : "");
    outbox_message_destroy(m);
    return r;
}

static int h_set_correlation_id(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    if (m && (cur->flags & F_OLD))
        ck_assert_int_eq(outbox_message_set_correlation_id(m, "old"), OUTBOX_OK);
    int r = outbox_message_set_correlation_id(m, a.p);
    const char *c = m ? outbox_message_correlation_id(m) : "";
    snprintf(msg, msz, "%.40s(%zu)", c, strlen(c));
    outbox_message_destroy(m);
    return r;
}

static int h_set_reply_to(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    int r = outbox_message_set_reply_to(m, a.p);
    snprintf(msg, msz, "%.300s", m ? outbox_message_reply_to(m) : "");
    outbox_message_destroy(m);
    return r;
}

static int h_set_content_type(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = setter_msg();
    int r = outbox_message_set_content_type(m, a.p);
    snprintf(msg, msz, "%.300s", m ? outbox_message_content_type(m) : "");
    outbox_message_destroy(m);
    return r;
}

static int h_set_trace_context(val_t a, val_t b, char *msg, size_t msz) {
    outbox_message_t *m = setter_msg();
    int r = outbox_message_set_trace_context(m, a.p, b.p);
    const char *tp = NULL;
    if (m)
        outbox_message_trace_context(m, &tp, NULL);
    snprintf(msg, msz, "%.300s", tp ? tp : "");
    outbox_message_destroy(m);
    return r;
}

static int h_message_destroy(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    if (cur->flags & F_NULL_H) {
        outbox_message_destroy(NULL);
        return R_VOID;
    }
    char *big = malloc(MIB + 1);
    ck_assert_ptr_nonnull(big);
    memset(big, 'x', MIB);
    big[MIB] = '\0';
    outbox_message_t *m = new_msg(OUTBOX_COMMAND, "orders", big);
    ck_assert_int_eq(outbox_message_set_key(m, big, MIB), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, big, MIB), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_correlation_id(m, big), OUTBOX_OK);
    for (int i = 0; i < 9; i++) { /* past the first allocation of headers */
        big[0] = (char)('a' + i);
        ck_assert_int_eq(outbox_message_set_header(m, big, big), OUTBOX_OK);
    }
    free(big);
    outbox_message_destroy(m);
    return R_VOID;
}

/* The message a getter reads: NULL for F_NULL_H, else the row's message spec. */
static outbox_message_t *getter_msg(void) {
    return cur->flags & F_NULL_H ? NULL : build_msg(cur->msg);
}

static int str_result(const char *s, char *msg, size_t msz) {
    snprintf(msg, msz, "%.300s", s ? s : "");
    return s ? R_PTR : R_NULL;
}

static int h_message_id(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_id(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_kind(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    outbox_message_t *m = getter_msg();
    int r = (int)outbox_message_kind(m);
    outbox_message_destroy(m);
    return r;
}

static int h_message_type(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_type(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_schema_version(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_schema_version(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_destination(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_destination(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int bytes_result(const void *p, size_t len, char *msg, size_t msz) {
    char h[64] = "";
    if (p && !(cur->flags & F_NULL_OUT))
        hex(h, sizeof(h), p, len, 8);
    if (cur->flags & F_NULL_OUT)
        msg[0] = '\0';
    else if (p)
        snprintf(msg, msz, "len=%zu hex=%s", len, h);
    else
        snprintf(msg, msz, "len=%zu", len);
    return p ? R_PTR : R_NULL;
}

static int h_message_key(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    size_t len = 777;
    const void *p = outbox_message_key(m, cur->flags & F_NULL_OUT ? NULL : &len);
    int r = bytes_result(p, len, msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_payload(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    size_t len = 777;
    const void *p = outbox_message_payload(m, cur->flags & F_NULL_OUT ? NULL : &len);
    int r = bytes_result(p, len, msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_header(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_header(m, a.p), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_header_count(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    outbox_message_t *m = getter_msg();
    int r = (int)outbox_message_header_count(m);
    outbox_message_destroy(m);
    return r;
}

static int h_message_header_at(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    const char *name = "untouched", *value = "untouched";
    int r = cur->flags & F_NULL_OUT ? outbox_message_header_at(m, (size_t)cur->n, NULL, NULL)
                                    : outbox_message_header_at(m, (size_t)cur->n, &name, &value);
    if (r || (cur->flags & F_NULL_OUT))
        snprintf(msg, msz, "%s", !strcmp(name, "untouched") && !strcmp(value, "untouched") ? "untouched" : "changed");
    else
        snprintf(msg, msz, "%s=%s", name, value);
    outbox_message_destroy(m);
    return r;
}

static int h_message_correlation_id(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_correlation_id(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_reply_to(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_reply_to(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_content_type(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_content_type(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_trace_context(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    const char *tp = "x", *ts = "x";
    int r = outbox_message_trace_context(m, &tp, &ts);
    snprintf(msg, msz, "%s %s", tp ? tp : "(null)", ts ? ts : "(null)");
    outbox_message_destroy(m);
    return r;
}

static int h_message_created_at_us(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int64_t t = outbox_message_created_at_us(m);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    snprintf(msg, msz, "%s", llabs((long long)(now - t)) < 60000000 ? "within a minute of now" : "not now");
    outbox_message_destroy(m);
    return t != 0;
}

static int h_message_errmsg(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_errmsg(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_kafka_topic(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    int r = str_result(outbox_message_kafka_topic(m), msg, msz);
    outbox_message_destroy(m);
    return r;
}

static int h_message_kafka_partition(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    outbox_message_t *m = getter_msg();
    int r = (int)outbox_message_kafka_partition(m);
    outbox_message_destroy(m);
    return r;
}

static int h_message_kafka_offset(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    outbox_message_t *m = getter_msg();
    int64_t o = outbox_message_kafka_offset(m);
    outbox_message_destroy(m);
    return o == -1 ? -1 : o < 0 ? -2 : 0;
}

static int h_message_encode(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_message_t *m = getter_msg();
    void *buf = NULL;
    size_t len = 0;
    int r;
    if (cur->flags & F_NULL_OUT)
        r = outbox_message_encode(m, NULL, &len);
    else if (cur->flags & F_VARIANT)
        r = outbox_message_encode(m, &buf, NULL);
    else
        r = outbox_message_encode(m, &buf, &len);
    if (r == OUTBOX_OK && buf) {
        outbox_message_t *d = NULL;
        char err[512];
        ROW_CHECK(outbox_message_decode(&d, buf, len, err, sizeof(err)) == OUTBOX_OK, "decode: %s", err);
        ROW_CHECK(!strcmp(outbox_message_id(d), outbox_message_id(m)), "the id changed");
        size_t kl, pl;
        const void *k = outbox_message_key(d, &kl), *p = outbox_message_payload(d, &pl);
        char kh[64], ph[64];
        hex(kh, sizeof(kh), k, kl, 8);
        hex(ph, sizeof(ph), p, pl, 8);
        const char *hn = "", *hv = "";
        outbox_message_header_at(d, 0, &hn, &hv);
        snprintf(msg, msz, "roundtrip type=%.60s key=%s payload=%s header=%s=%s correlation=%s",
                 outbox_message_type(d), kh, ph, hn, hv, outbox_message_correlation_id(d));
        outbox_message_destroy(d);
    }
    free(buf);
    outbox_message_destroy(m);
    return r;
}

static int h_message_decode(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    uint8_t *env = NULL;
    const void *buf = a.p;
    size_t len = a.len;
    if (cur->msg != MS_NONE)
        buf = env = build_env(cur->msg, &len);
    if (cur->flags & F_LEN)
        len = (size_t)cur->n;
    outbox_message_t *m = (outbox_message_t *)&m;
    char err[512] = "(untouched)";
    int r = outbox_message_decode(cur->flags & F_NULL_H ? NULL : &m, buf, len, cur->flags & F_NULL_OUT ? NULL : err,
                                  sizeof(err));
    if (!(cur->flags & F_NULL_H) && r != OUTBOX_ERR_INVALID_ARG)
        ROW_CHECK(r == OUTBOX_OK ? m != NULL : m == NULL, "*out is %p after returning %d", (void *)m, r);
    if (cur->flags & F_NULL_OUT)
        snprintf(msg, msz, "(errstr NULL)");
    else if (r)
        snprintf(msg, msz, "%s", err);
    else {
        size_t n = outbox_message_header_count(m);
        int o = snprintf(msg, msz, "headers=%zu", n);
        for (size_t i = 0; i < n && i < 3; i++) {
            const char *hn, *hv;
            outbox_message_header_at(m, i, &hn, &hv);
            o += snprintf(msg + o, msz - (size_t)o, " %s=%s", hn, hv);
        }
        outbox_message_destroy(m);
    }
    free(env);
    return r;
}

static int h_send(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    PGconn *c = make_conn(cur->conn);
    outbox_message_t *m = build_msg(cur->msg);
    int r = outbox_send(ob, c, m);
    char err[600];
    snprintf(err, sizeof(err), "%s", r ? outbox_errmsg(ob) : "ok");
    finish_tx(c);
    snprintf(msg, msz, "%s | %s", err, describe_rows());
    outbox_message_destroy(m);
    free_conn(c);
    outbox_destroy(own);
    return r;
}

static int h_send_batch(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    PGconn *c = make_conn(cur->conn);
    outbox_message_t *ms[2] = {NULL, NULL};
    size_t n = 1;
    switch (cur->msg) {
    case MS_NULL: n = 0; break;
    case MS_BATCH_WITH_NULL: ms[0] = build_msg(MS_EVENT), n = 2; break;
    case MS_BATCH_WITH_BIG: ms[0] = build_msg(MS_EVENT), ms[1] = build_msg(MS_OVER_LIMIT), n = 2; break;
    default: ms[0] = build_msg(cur->msg); break;
    }
    if (cur->flags & F_LEN)
        n = (size_t)cur->n;
    int r = outbox_send_batch(ob, c, cur->msg == MS_NULL ? NULL : (const outbox_message_t *const *)ms, n);
    char err[600];
    snprintf(err, sizeof(err), "%s", r ? outbox_errmsg(ob) : "ok");
    finish_tx(c);
    snprintf(msg, msz, "%s | %s", err, describe_rows());
    outbox_message_destroy(ms[0]);
    outbox_message_destroy(ms[1]);
    free_conn(c);
    outbox_destroy(own);
    return r;
}

static int h_send_commit(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    PGconn *c = make_conn(cur->conn);
    outbox_message_t *ms[2] = {NULL, NULL};
    size_t n = 1;
    switch (cur->msg) {
    case MS_NULL: n = 0; break;
    case MS_BATCH_WITH_NULL: ms[0] = build_msg(MS_EVENT), n = 2; break;
    case MS_BATCH_WITH_BIG: ms[0] = build_msg(MS_EVENT), ms[1] = build_msg(MS_OVER_LIMIT), n = 2; break;
    default: ms[0] = build_msg(cur->msg); break;
    }
    if (cur->flags & F_LEN)
        n = (size_t)cur->n;
    int r = outbox_send_commit(ob, c, cur->msg == MS_NULL ? NULL : (const outbox_message_t *const *)ms, n);
    char err[600];
    snprintf(err, sizeof(err), "%s", r ? outbox_errmsg(ob) : "ok");
    /* The transaction state it left, before finish_tx() ends one it left open. */
    const char *tx = c && PQstatus(c) == CONNECTION_OK ? tx_name(c) : c ? "dead" : "none";
    finish_tx(c);
    snprintf(msg, msz, "%s | tx=%s %s", err, tx, describe_rows());
    outbox_message_destroy(ms[0]);
    outbox_message_destroy(ms[1]);
    free_conn(c);
    outbox_destroy(own);
    return r;
}

static int h_migrate(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    char err[512];
    outbox_t *ob = cur->flags & F_NULL_H ? NULL : outbox_new(row_conf(), err, sizeof(err));
    PGconn *c = make_conn(cur->conn);
    if (cur->flags & F_VARIANT)
        ROW_CHECK(outbox_migrate(ob, c) == OUTBOX_OK, "first migration: %s", outbox_errmsg(ob));
    int r = outbox_migrate(ob, c);
    char e[600];
    snprintf(e, sizeof(e), "%s", r ? outbox_errmsg(ob) : "ok");
    const char *tx = tx_name(c);
    finish_tx(c);
    int o = snprintf(msg, msz, "%s | tables=%lld tx=%s", e, schema_tables(), tx);
    if (cur->flags & F_VARIANT)
        snprintf(msg + o, msz - (size_t)o, " versions=%lld", admin_scalar("SELECT count(*) FROM @.schema_version"));
    free_conn(c);
    outbox_destroy(ob);
    return r;
}

static int h_schema_version(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    PGconn *c = make_conn(cur->conn);
    int v = -5;
    int r = outbox_schema_version(ob, c, cur->flags & F_NULL_OUT ? NULL : &v);
    if (r)
        snprintf(msg, msz, "%s", outbox_errmsg(ob));
    else
        snprintf(msg, msz, "version=%d", v);
    free_conn(c);
    outbox_destroy(own);
    return r;
}

/* A consumer on the row's schema with a broker nobody listens on: enough for everything but
 * receiving.  Logs go to capture_log. */
static outbox_consumer_t *make_consumer(void) {
    char err[512];
    outbox_conf_t *conf = row_conf();
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.group.id", "g", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", getenv("OUTBOX_TEST_PG"), err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.bootstrap.servers", "127.0.0.1:1", err, sizeof(err)),
                     OUTBOX_CONF_OK);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ROW_CHECK(c != NULL, "outbox_consumer_new: %s", err);
    return c;
}

static int h_consumer_new(val_t a, val_t b, char *msg, size_t msz) {
    char err[512] = "(untouched)";
    outbox_conf_t *conf = NULL;
    if (!(cur->flags & F_NULL_H)) {
        conf = row_conf();
        ck_assert_int_eq(outbox_conf_set(conf, "consumer.group.id", "g", err, sizeof(err)), OUTBOX_CONF_OK);
        ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", getenv("OUTBOX_TEST_PG"), err, sizeof(err)),
                         OUTBOX_CONF_OK);
        if (!(cur->flags & F_VARIANT))
            ck_assert_int_eq(outbox_conf_set(conf, "kafka.bootstrap.servers", "127.0.0.1:1", err, sizeof(err)),
                             OUTBOX_CONF_OK);
        if (a.p)
            ROW_CHECK(outbox_conf_set(conf, a.p, b.p, err, sizeof(err)) == OUTBOX_CONF_OK, "%s", err);
    }
    unsetenv("OUTBOX_PG_CONNINFO");
    outbox_consumer_t *c = outbox_consumer_new(conf, cur->flags & F_NULL_OUT ? NULL : err, sizeof(err));
    if (!c) {
        snprintf(msg, msz, "%s", cur->flags & F_NULL_OUT ? "(errstr NULL)" : err);
        outbox_conf_destroy(conf); /* still the caller's after a failure */
        return R_NULL;
    }
    snprintf(msg, msz, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    return R_PTR;
}

static int h_consumer_subscribe(val_t a, val_t b, char *msg, size_t msz) {
    outbox_consumer_t *c = cur->flags & F_NULL_H ? NULL : make_consumer();
    const char *topics[2] = {a.p, b.p};
    size_t n = cur->flags & F_LEN ? (size_t)cur->n : cur->b.k != A_NONE ? 2 : 1;
    int r = outbox_consumer_subscribe(c, cur->flags & F_NULL_OUT ? NULL : topics, n);
    snprintf(msg, msz, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    return r;
}

static int h_consumer_parked_retry(val_t a, val_t b, char *msg, size_t msz) {
    (void)b;
    outbox_consumer_t *c = cur->flags & F_NULL_H ? NULL : make_consumer();
    int r = outbox_consumer_parked_retry(c, a.p, cur->flags & F_LEN ? (size_t)cur->n : a.len);
    snprintf(msg, msz, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    return r;
}

static void noop_batch_handler(const outbox_message_t *const *msgs, size_t n, PGconn *conn,
                               outbox_handler_result_t *results, void *opaque) {
    (void)msgs, (void)n, (void)conn, (void)results, (void)opaque;
}

static int h_consumer_set_batch_handler(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_consumer_t *c = cur->flags & F_NULL_H ? NULL : make_consumer();
    int r = outbox_consumer_set_batch_handler(c, cur->flags & F_NULL_OUT ? NULL : noop_batch_handler, NULL);
    snprintf(msg, msz, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    return r;
}

static outbox_handler_result_t noop_handler(const outbox_message_t *m, PGconn *conn, void *opaque) {
    (void)m, (void)conn, (void)opaque;
    return OUTBOX_HANDLER_OK;
}

typedef struct {
    char type[128];
    char header[128];
} seen_t;

static outbox_handler_result_t seen_handler(const outbox_message_t *m, PGconn *conn, void *opaque) {
    (void)conn;
    seen_t *s = opaque;
    const char *h = outbox_message_header(m, SQL_IDENT);
    snprintf(s->type, sizeof(s->type), "%s", outbox_message_type(m));
    snprintf(s->header, sizeof(s->header), "%s", h ? h : "(none)");
    return OUTBOX_HANDLER_OK;
}

/* Through the mock broker: an envelope with SQL-looking fields and a garbage record reach a
 * consumer whose group id and schema are SQL-looking; both are recorded, nothing is executed. */
static int consume_hostile(char *msg, size_t msz) {
    char err[512];
    outbox_t *ob = row_ob(); /* migrates the schema */
    outbox_destroy(ob);
    const char *args[] = {"--topic", "bad.t:1", NULL};
    tk_broker_t *broker = tk_broker_start(args);
    tk_producer_t *prod = tk_producer_new(broker->bootstrap);
    outbox_message_t *m = new_msg(OUTBOX_EVENT, "bad.t", SQL_STR);
    ck_assert_int_eq(outbox_message_set_header(m, SQL_IDENT, SQL_STR), OUTBOX_OK);
    void *env;
    size_t len;
    ck_assert_int_eq(outbox_message_encode(m, &env, &len), OUTBOX_OK);
    static const char garbage[] = "\xff\xfe" SQL_IDENT;
    tk_produce(prod, "bad.t", 0, NULL, 0, env, len, outbox_message_id(m), NULL, NULL);
    tk_produce(prod, "bad.t", 0, NULL, 0, garbage, sizeof(garbage) - 1, NULL, NULL, NULL);
    tk_producer_flush(prod, 15000);

    outbox_conf_t *conf = row_conf();
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.group.id", SQL_STR, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", getenv("OUTBOX_TEST_PG"), err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.bootstrap.servers", broker->bootstrap, err, sizeof(err)),
                     OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.fetch.wait.max.ms", "50", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ROW_CHECK(c != NULL, "outbox_consumer_new: %s", err);
    const char *topics[] = {"bad.t"};
    ROW_CHECK(outbox_consumer_subscribe(c, topics, 1) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    seen_t seen = {"(none)", "(none)"};
    outbox_consumer_stats_t st = {0};
    int r = OUTBOX_OK;
    for (int64_t end = tk_now_ms() + 30000; r == OUTBOX_OK && st.processed + st.rejected < 2 && tk_now_ms() < end;) {
        r = outbox_consumer_poll(c, seen_handler, &seen, (int)cur->n);
        outbox_consumer_stats(c, &st);
    }
    char *q = quoted_schema(), sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT (SELECT string_agg(consumer, ',') FROM %s.processed), "
             "(SELECT string_agg(reason, ',') FROM %s.consumer_dead_letters WHERE consumer = '''; select 1; --')",
             q, q);
    PQfreemem(q);
    PGresult *res = PQexec(admin, sql);
    ROW_CHECK(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    snprintf(msg, msz, "%sprocessed=%lld rejected=%lld dedup=[%s] dead=[%s] type=%s header=%s",
             r ? outbox_consumer_errmsg(c) : "", (long long)st.processed, (long long)st.rejected,
             PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), seen.type, seen.header);
    PQclear(res);
    outbox_consumer_destroy(c);
    outbox_message_destroy(m);
    free(env);
    tk_producer_free(prod);
    tk_broker_stop(broker);
    return r;
}

static int h_consumer_poll(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    if (cur->flags & F_VARIANT)
        return consume_hostile(msg, msz);
    outbox_consumer_t *c = cur->flags & F_NULL_H ? NULL : make_consumer();
    int r = outbox_consumer_poll(c, cur->flags & F_NULL_OUT ? NULL : noop_handler, NULL, (int)cur->n);
    outbox_consumer_stats_t st = {0};
    outbox_consumer_stats(c, &st);
    if (c)
        snprintf(msg, msz, "%s | processed=%lld duplicates=%lld retried=%lld rejected=%lld", outbox_consumer_errmsg(c),
                 (long long)st.processed, (long long)st.duplicates, (long long)st.retried, (long long)st.rejected);
    else
        snprintf(msg, msz, "%s", outbox_consumer_errmsg(NULL));
    outbox_consumer_destroy(c);
    return r;
}

static int h_consumer_stats(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_consumer_stats_t st = {7, 7, 7, 7};
    if (cur->flags & F_NULL_H) {
        outbox_consumer_stats(NULL, &st);
    } else {
        outbox_consumer_t *c = make_consumer();
        outbox_consumer_stats(c, NULL);
        outbox_consumer_destroy(c);
    }
    snprintf(msg, msz, "processed=%lld duplicates=%lld retried=%lld rejected=%lld", (long long)st.processed,
             (long long)st.duplicates, (long long)st.retried, (long long)st.rejected);
    return R_VOID;
}

static int h_consumer_errmsg(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_consumer_t *c = cur->flags & F_NULL_H ? NULL : make_consumer();
    const char *s = outbox_consumer_errmsg(c);
    snprintf(msg, msz, "%s", s ? s : "");
    outbox_consumer_destroy(c);
    return s ? R_PTR : R_NULL;
}

static int h_consumer_destroy(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b, (void)msg, (void)msz;
    if (cur->flags & F_NULL_H) {
        outbox_consumer_destroy(NULL);
        return R_VOID;
    }
    outbox_consumer_t *c = make_consumer();
    const char *topics[] = {"orders"};
    ck_assert_int_eq(outbox_consumer_subscribe(c, topics, 1), OUTBOX_OK);
    ck_assert_int_eq(outbox_consumer_poll(c, noop_handler, NULL, 100), OUTBOX_OK);
    outbox_consumer_destroy(c);
    return R_VOID;
}

static int h_reply(val_t a, val_t b, char *msg, size_t msz) {
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    PGconn *c = make_conn(cur->conn);
    outbox_message_t *req = build_msg(cur->msg);
    int r = outbox_reply(ob, c, req, a.p, b.p, cur->flags & F_LEN ? (size_t)cur->n : b.len);
    char err[600];
    snprintf(err, sizeof(err), "%s", r ? outbox_errmsg(ob) : "ok");
    finish_tx(c);
    snprintf(msg, msz, "%s | %s", err, describe_rows());
    outbox_message_destroy(req);
    free_conn(c);
    outbox_destroy(own);
    return r;
}

static int h_processed_prune(val_t a, val_t b, char *msg, size_t msz) {
    (void)a, (void)b;
    outbox_t *own = row_ob(), *ob = cur->flags & F_NULL_H ? NULL : own;
    if (!(cur->flags & F_NOMIGRATE))
        ROW_CHECK(admin_scalar("WITH i AS (INSERT INTO @.processed (consumer, message_id, processed_at) VALUES "
                               "('g', gen_random_uuid(), now() - interval '10 seconds') RETURNING 1) "
                               "SELECT count(*) FROM i") == 1,
                  "cannot insert a processed record");
    PGconn *c = make_conn(cur->conn);
    int64_t deleted = -5;
    int r = outbox_processed_prune(ob, c, (int64_t)cur->n, cur->flags & F_NULL_OUT ? NULL : &deleted);
    char e[600];
    if (r)
        snprintf(e, sizeof(e), "%s", outbox_errmsg(ob));
    else
        snprintf(e, sizeof(e), "deleted=%lld", (long long)deleted);
    finish_tx(c);
    snprintf(msg, msz, "%s | left=%lld", e, admin_scalar("SELECT count(*) FROM @.processed"));
    free_conn(c);
    outbox_destroy(own);
    return r;
}

static const struct {
    const char *fn;
    handler_fn h;
} handlers[] = {
    {"outbox_version_str", h_version_str},
    {"outbox_err2str", h_err2str},
    {"outbox_err_is_retriable", h_err_is_retriable},
    {"outbox_conf_new", h_conf_new},
    {"outbox_conf_set", h_conf_set},
    {"outbox_conf_get", h_conf_get},
    {"outbox_conf_dup", h_conf_dup},
    {"outbox_conf_set_log_cb", h_conf_set_log_cb},
    {"outbox_conf_set_opaque", h_conf_set_opaque},
    {"outbox_conf_destroy", h_conf_destroy},
    {"outbox_new", h_new},
    {"outbox_destroy", h_destroy},
    {"outbox_errmsg", h_errmsg},
    {"outbox_errmsg_retriable", h_errmsg_retriable},
    {"outbox_message_new", h_message_new},
    {"outbox_message_create", h_message_create},
    {"outbox_message_set_key", h_set_key},
    {"outbox_message_set_payload", h_set_payload},
    {"outbox_message_set_header", h_set_header},
    {"outbox_message_set_schema_version", h_set_schema_version},
    {"outbox_message_set_correlation_id", h_set_correlation_id},
    {"outbox_message_set_reply_to", h_set_reply_to},
    {"outbox_message_set_content_type", h_set_content_type},
    {"outbox_message_set_trace_context", h_set_trace_context},
    {"outbox_message_destroy", h_message_destroy},
    {"outbox_message_id", h_message_id},
    {"outbox_message_kind", h_message_kind},
    {"outbox_message_type", h_message_type},
    {"outbox_message_schema_version", h_message_schema_version},
    {"outbox_message_destination", h_message_destination},
    {"outbox_message_key", h_message_key},
    {"outbox_message_payload", h_message_payload},
    {"outbox_message_header", h_message_header},
    {"outbox_message_header_count", h_message_header_count},
    {"outbox_message_header_at", h_message_header_at},
    {"outbox_message_correlation_id", h_message_correlation_id},
    {"outbox_message_reply_to", h_message_reply_to},
    {"outbox_message_content_type", h_message_content_type},
    {"outbox_message_trace_context", h_message_trace_context},
    {"outbox_message_created_at_us", h_message_created_at_us},
    {"outbox_message_errmsg", h_message_errmsg},
    {"outbox_message_kafka_topic", h_message_kafka_topic},
    {"outbox_message_kafka_partition", h_message_kafka_partition},
    {"outbox_message_kafka_offset", h_message_kafka_offset},
    {"outbox_message_encode", h_message_encode},
    {"outbox_message_decode", h_message_decode},
    {"outbox_send", h_send},
    {"outbox_send_batch", h_send_batch},
    {"outbox_send_commit", h_send_commit},
    {"outbox_migrate", h_migrate},
    {"outbox_schema_version", h_schema_version},
    {"outbox_consumer_new", h_consumer_new},
    {"outbox_consumer_subscribe", h_consumer_subscribe},
    {"outbox_consumer_parked_retry", h_consumer_parked_retry},
    {"outbox_consumer_set_batch_handler", h_consumer_set_batch_handler},
    {"outbox_consumer_poll", h_consumer_poll},
    {"outbox_consumer_stats", h_consumer_stats},
    {"outbox_consumer_errmsg", h_consumer_errmsg},
    {"outbox_consumer_destroy", h_consumer_destroy},
    {"outbox_reply", h_reply},
    {"outbox_processed_prune", h_processed_prune},
};

static handler_fn find_handler(const char *fn) {
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++)
        if (!strcmp(handlers[i].fn, fn))
            return handlers[i].h;
    return NULL;
}

static const char *result_name(int v, char *buf, size_t size) {
    if (v == R_NULL)
        return "NULL";
    if (v == R_PTR)
        return "a non-NULL pointer";
    if (v == R_VOID)
        return "(void)";
    snprintf(buf, size, "%d (as outbox_err_t: %s)", v, outbox_err2str((outbox_err_t)v));
    return buf;
}

/* ---- the tests ---------------------------------------------------------------------------- */

START_TEST(test_row) {
    cur_idx = _i;
    cur = &rows[_i];
    handler_fn h = find_handler(cur->fn);
    ROW_CHECK(h != NULL, "no handler for %s in check_badinput.c", cur->fn);
    admin = tu_connect();
    tu_exec(admin, "CREATE TABLE IF NOT EXISTS public.t (x int)");
    cur_schema = cur->schema ? strdup(cur->schema) : tu_schema_name("t_bad");
    drop_schema(); /* what an earlier failed row may have left */

    val_t a = make_val(cur->a), b = make_val(cur->b);
    static char msg[8192];
    msg[0] = '\0';
    int got = h(a, b, msg, sizeof(msg));
    char gb[96], eb[96];
    ROW_CHECK(got == cur->expect, "returned %s, expected %s; message: %.1500s", result_name(got, gb, sizeof(gb)),
              result_name(cur->expect, eb, sizeof(eb)), msg);
    if (cur->re) {
        regex_t re;
        ROW_CHECK(regcomp(&re, cur->re, REG_EXTENDED | REG_NOSUB) == 0, "bad regex /%s/", cur->re);
        int matched = regexec(&re, msg, 0, NULL, 0) == 0;
        regfree(&re);
        ROW_CHECK(matched, "the message does not match /%s/: \"%.1500s\"", cur->re, msg);
    }
    /* Nothing the row passed was executed as SQL: the sentinel public.t survives. */
    ROW_CHECK(tu_scalar(admin, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 't'") == 1,
              "the sentinel table public.t is gone");
    drop_schema();
    free(a.owned);
    free(b.owned);
    free(cur_schema);
    cur_schema = NULL;
    PQfinish(admin);
    admin = NULL;
}
END_TEST

/* The public functions declared in the header: every "OUTBOX_API ... outbox_xxx(" at the start
 * of a line.  Returns how many were found; names are NUL-separated in out. */
static size_t header_functions(char *out, size_t size) {
    const char *path = "include/outbox/outbox.h";
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s (run the suite from the repository root): %s", path, strerror(errno));
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    size_t found = 0, o = 0;
    for (const char *p = text; (p = strstr(p, "OUTBOX_API")); p += 10) {
        const char *line = p;
        while (line > text && line[-1] != '\n')
            line--;
        while (line < p && (*line == ' ' || *line == '\t'))
            line++;
        if (line != p)
            continue; /* the #define, or a mention inside a comment */
        const char *paren = strchr(p, '(');
        ck_assert_msg(paren != NULL, "an OUTBOX_API declaration without '('");
        const char *e = paren;
        while (e > p && isspace((unsigned char)e[-1]))
            e--;
        const char *s = e;
        while (s > p && (isalnum((unsigned char)s[-1]) || s[-1] == '_'))
            s--;
        ck_assert_msg(e - s > 7 && !strncmp(s, "outbox_", 7), "an OUTBOX_API declaration whose name is not outbox_*: %.*s",
                      (int)(e - s), s);
        ck_assert_uint_lt(o + (size_t)(e - s) + 1, size);
        memcpy(out + o, s, (size_t)(e - s));
        o += (size_t)(e - s);
        out[o++] = '\0';
        found++;
    }
    return found;
}

START_TEST(test_every_public_function_has_a_row) {
    static char names[16384];
    char missing[4096] = "";
    size_t n = header_functions(names, sizeof(names));
    ck_assert_msg(n >= 50, "only %zu OUTBOX_API functions found in the header: is the parser broken?", n);
    const char *name = names;
    for (size_t i = 0; i < n; i++, name += strlen(name) + 1) {
        int has = 0;
        for (int r = 0; r < NROWS && !has; r++)
            has = !strcmp(rows[r].fn, name);
        size_t l = strlen(missing);
        if (!has && l + strlen(name) + 2 < sizeof(missing)) {
            missing[l] = ' ';
            memcpy(missing + l + 1, name, strlen(name) + 1);
        }
    }
    ck_assert_msg(!missing[0], "public functions with no hostile-argument row in tests/check_badinput.c:%s", missing);
}
END_TEST

START_TEST(test_every_row_names_a_public_function) {
    static char names[16384];
    size_t n = header_functions(names, sizeof(names));
    for (int r = 0; r < NROWS; r++) {
        const char *name = names;
        int known = 0;
        for (size_t i = 0; i < n && !known; i++, name += strlen(name) + 1)
            known = !strcmp(rows[r].fn, name);
        ck_assert_msg(known, "row %d names %s, which outbox.h does not declare", r, rows[r].fn);
        ck_assert_msg(find_handler(rows[r].fn) != NULL, "row %d: no handler for %s", r, rows[r].fn);
    }
}
END_TEST

static Suite *badinput_suite(void) {
    Suite *s = suite_create("badinput");
    TCase *cov = tcase_create("coverage");
    tcase_add_test(cov, test_every_public_function_has_a_row);
    tcase_add_test(cov, test_every_row_names_a_public_function);
    suite_add_tcase(s, cov);
    TCase *tc = tcase_create("rows");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_row, 0, NROWS);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(badinput_suite());
}
