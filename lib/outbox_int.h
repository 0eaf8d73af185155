/*
 * Internal declarations shared by the library's files and the relay (which links liboutbox.a).
 * Nothing here is exported from liboutbox.so.
 */
#ifndef OUTBOX_INT_H
#define OUTBOX_INT_H

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "outbox/outbox.h"

#define OUTBOX_ERRSTR_SIZE 512
#define OUTBOX_KAFKA_TOPIC_MAX 249
/* PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1): refuse them instead. */
#define OUTBOX_IDENT_MAX 63

#if defined(__GNUC__)
#define OUTBOX_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define OUTBOX_PRINTF(f, a)
#endif

/* ---- configuration (conf.c) ---- */

typedef enum { CONF_STR, CONF_INT, CONF_BOOL } conf_type_t;

/* One row of the table of known keys; the relay prints this table for --help. */
typedef struct {
    const char *name;
    conf_type_t type;
    const char *def; /* default, as text */
    long long min, max;
    const char *doc;
    const char *choices; /* CONF_STR: the allowed values, "a|b|c"; NULL: any */
} outbox_conf_prop_t;

typedef struct {
    char *key; /* without the "kafka." prefix */
    char *value;
} outbox_kv_t;

struct outbox_conf_s {
    char **values; /* one per known property, same order as the table */
    outbox_kv_t *kafka;
    size_t kafka_cnt, kafka_cap;
    outbox_log_cb *log_cb;
    void *opaque;
    int log_level; /* log.level, parsed */
};

/* The table of known keys, terminated by a row with name == NULL. */
const outbox_conf_prop_t *outbox_conf_props(void);
/* Typed reads of a known key; the key must exist in the table (a programming error otherwise). */
const char *outbox_conf_str(const outbox_conf_t *conf, const char *key);
long long outbox_conf_int(const outbox_conf_t *conf, const char *key);
bool outbox_conf_bool(const outbox_conf_t *conf, const char *key);
/* true when outbox.mode=wal (messages as logical decoding messages), false for table. */
bool outbox_conf_wal(const outbox_conf_t *conf);

/* ---- outbox.mode=wal names (wal.c), shared with the relay's WAL source ---- */

/* Room for any result of the three functions below, NUL included. */
#define OUTBOX_WAL_NAME_SIZE 72
/* The prefix of the outbox's logical decoding messages: "outbox:<schema>", schema verbatim.
 * Written into out (size bytes, cut to fit, NUL-terminated; OUTBOX_WAL_NAME_SIZE always fits). */
void outbox_wal_prefix(const char *schema, char *out, size_t size);
/* The replication slot of conf's outbox: relay.slot.name if set, else outbox_wal_publication()'s
 * derivation of outbox.schema.  Written into out as above; the result is unquoted, valid as is. */
void outbox_wal_slot_name(const outbox_conf_t *conf, char *out, size_t size);
/* The publication of schema's outbox: "outbox_<schema>" lower-cased, each byte outside [a-z0-9_]
 * replaced by '_', cut to 63 bytes.  Two schemas may derive the same name (e.g. "A" and "a"). */
void outbox_wal_publication(const char *schema, char *out, size_t size);
/* NULL if s is a valid slot name (1 to 63 of [a-z0-9_], PostgreSQL's rule), else what is wrong
 * (written into why, which is returned). */
const char *outbox_wal_slot_name_problem(const char *s, char *why, size_t why_size);

/* ---- logging (log.c) ---- */

void outbox_log(const outbox_conf_t *conf, int level, const char *fac, const char *fmt, ...)
    OUTBOX_PRINTF(4, 5);
void outbox_log_default(int level, const char *fac, const char *msg, void *opaque);

/* ---- utilities (util.c) ---- */

void outbox_snprintf(char *dst, size_t size, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
char *outbox_strdup(const char *s);
/* The SQL-quoted form of an identifier ("a""b"); caller frees.  NULL when out of memory. */
char *outbox_quote_ident(const char *ident);
/* 1 if s is a valid Kafka topic name, else 0 and the reason in why. */
int outbox_topic_valid(const char *s, char *why, size_t why_size);
/* -1 if s is well-formed UTF-8 (as PostgreSQL and proto3 strings require), else the offset of
 * the first byte that is not. */
ptrdiff_t outbox_utf8_invalid_at(const char *s);
/* Copies s into out (size bytes) fit for a quoted logfmt value: '"' becomes '\'', line breaks
 * become spaces, trailing blanks go.  Returns out. */
const char *outbox_logfmt_value(const char *s, char *out, size_t size);
/* Microseconds since the Unix epoch. */
int64_t outbox_now_us(void);
/* Milliseconds of a monotonic clock. */
int64_t outbox_mono_ms(void);

/* ---- UUIDv7 (uuid.c) ---- */

#define OUTBOX_UUID_STR_LEN 36
/* Writes a new UUIDv7 (monotonic across the process) as text into out (37 bytes). */
void outbox_uuid7(char out[OUTBOX_UUID_STR_LEN + 1]);
/* Writes the 16 bytes of a UUID as canonical lowercase text into out (37 bytes). */
void outbox_uuid_text(const uint8_t u[16], char out[OUTBOX_UUID_STR_LEN + 1]);
/* 1 if s is a canonical 8-4-4-4-12 hex UUID. */
int outbox_uuid_valid(const char *s);
/* The 16 bytes of a textual uuid of len bytes (not NUL-terminated): 0, or -1 if it is not one. */
int outbox_uuid_parse(const char *text, size_t len, uint8_t out[16]);

/* ---- messages (message.c) ---- */

typedef struct {
    char *name;
    char *value;
} outbox_header_t;

struct outbox_message_s {
    outbox_kind_t kind;
    char id[OUTBOX_UUID_STR_LEN + 1];
    char *destination;
    char *type;
    char schema_version[24];
    uint8_t *key;
    size_t key_len;
    uint8_t *payload;
    size_t payload_len;
    outbox_header_t *headers;
    size_t header_cnt, header_cap;
    char *correlation_id;
    char *reply_to;
    char *content_type; /* NULL: none set (application/octet-stream) */
    int64_t created_at_us;
    char *errmsg; /* why the last setter call refused (NULL: it did not); outbox_message_errmsg() */
    /* Where a consumer received the message (outbox_message_kafka_*): borrowed from the record,
     * valid during the handler call; NULL and -1 for messages built or decoded by the caller. */
    const char *kafka_topic;
    int32_t kafka_partition;
    int64_t kafka_offset;
};

/* The default media type of a payload (CloudEvents' datacontenttype when absent). */
#define OUTBOX_CONTENT_TYPE_DEFAULT "application/octet-stream"
/* NULL if s is a valid W3C traceparent (version 00) or tracestate (level 1), else what is wrong
 * (written into why, which is returned). */
const char *outbox_traceparent_problem(const char *s, char *why, size_t why_size);
const char *outbox_tracestate_problem(const char *s, char *why, size_t why_size);
/* NULL if s is acceptable as a content type, else what is wrong. */
const char *outbox_content_type_problem(const char *s);

/* ---- CloudEvents binary mode and URI references (cloudevents.c) ---- */

struct rd_kafka_headers_s;
/* Our extension attribute names (without "ce_"), NULL-terminated. */
const char *const *outbox_ce_extension_names(void);
/* NULL if s is an RFC 3986 URI-reference (non-empty), else what is wrong (written into why). */
const char *outbox_uri_reference_problem(const char *s, char *why, size_t why_size);
/* The default ce_source of an outbox schema: "/outbox/<schema, percent-encoded>". */
void outbox_ce_source_default(const char *schema, char *out, size_t size);
/* RFC 3339 UTC with microseconds, "2026-11-30T13:11:52.123456Z": 0, or -1 outside years 0-9999. */
int outbox_ce_time_format(int64_t us, char out[32]);
/* The same with the last second's date and time kept in cache (the caller's, zeroed at first). */
typedef struct {
    int64_t secs;
    int valid;
    char prefix[20];
} outbox_ce_time_cache_t;
int outbox_ce_time_format_cached(int64_t us, char out[32], outbox_ce_time_cache_t *cache);
/* An RFC 3339 date-time (any offset) of n bytes as microseconds since the epoch: 0, or -1. */
int outbox_ce_time_parse(const char *s, size_t n, int64_t *us);
/* Adds to h the binary-mode headers of the record for an encoded envelope (attributes, content-type,
 * the message's own headers) and points *payload into envelope (length 0 when it has none: an
 * empty value, never a null one, which compaction reads as a tombstone).  key is
 * the record key (ce_subject when printable UTF-8); cache (may be NULL) speeds up ce_time.  0; -1 when the envelope cannot be such a
 * record (why says why: dead-letter it); -2 when out of memory. */
int outbox_ce_record(const void *envelope, size_t len, const char *source, const void *key, size_t key_len,
                     struct rd_kafka_headers_s *h, const void **payload, size_t *payload_len, char *why,
                     size_t why_size, outbox_ce_time_cache_t *cache);
/* 1 if the record's headers mark a binary-mode CloudEvent (a ce_specversion header). */
int outbox_ce_is_binary(const struct rd_kafka_headers_s *h);
/* Reads a binary-mode CloudEvent received on topic into *out (caller owns): 0; -1 rejected, with
 * why (naming a missing required attribute); -2 out of memory.  id_out gets ce_id when it is plain
 * printable ASCII of at most 64 bytes, else "". */
int outbox_ce_decode(const void *value, size_t len, const void *key, size_t key_len,
                     const struct rd_kafka_headers_s *h, const char *topic, outbox_message_t **out,
                     char *why, size_t why_size, char id_out[65]);

/* ---- envelope scan (envscan.c) ---- */

/* Called for each header of an envelope; strings are not NUL-terminated.  Non-zero stops the scan
 * with that result. */
typedef int(outbox_envscan_header_cb)(const char *name, size_t name_len, const char *value,
                                      size_t value_len, void *opaque);
/* Reads the kind and headers of an encoded envelope without allocating.  0, or -1 if malformed. */
int outbox_envelope_scan(const uint8_t *buf, size_t len, int *kind, outbox_envscan_header_cb *cb,
                         void *opaque);

/* The fields of an encoded envelope the WAL source routes by, borrowed from the buffer (strings are
 * not NUL-terminated; absent fields have length 0 and NULL pointers). */
typedef struct {
    int kind;
    const char *id;           /* the message id as text */
    size_t id_len;
    const char *type;
    size_t type_len;
    const char *destination;
    size_t destination_len;
    const uint8_t *key;       /* NULL: no partition key */
    size_t key_len;
    int64_t created_at_unix_us;
} outbox_envelope_fields_t;
/* Reads those fields of an encoded envelope without allocating.  0, or -1 if malformed. */
int outbox_envelope_fields(const uint8_t *buf, size_t len, outbox_envelope_fields_t *f);

/* ---- what the consumer makes of a received record (consumer.c) ---- */

struct rd_kafka_headers_s;
struct rd_kafka_s;
struct rd_kafka_conf_s;

/* The verdict on one record, reached without PostgreSQL or Kafka (tests/fuzz/fuzz_consumer.c). */
typedef struct {
    outbox_message_t *msg; /* accepted: the message for the handler, caller owns; NULL if rejected */
    const char *dead_id;   /* rejected: the message id to record (points into id_buf) or NULL */
    bool dead_id_valid;    /* rejected: dead_id is the envelope's own valid id, so mark it processed */
    char id_buf[65];
    char reason[300];      /* rejected: why, for consumer_dead_letters.reason */
} outbox_verdict_t;

/* Decides whether a record's value becomes a message (true, v->msg set) or a dead letter (false,
 * v->reason set).  headers (may be NULL) are the record's Kafka headers, whose "id" names a dead
 * letter whose value is no envelope.  major_max is consumer.schema.major.max (0 = any).  A record
 * with a ce_specversion header is a binary-mode CloudEvent: its key (may be NULL) is the message's
 * and its topic the destination; an envelope carries its own key and destination. */
bool outbox_consumer_verdict(const void *value, size_t len, const void *key, size_t key_len, const char *topic,
                             const struct rd_kafka_headers_s *headers, int major_max, outbox_verdict_t *v);

/* ---- Kafka client configuration (kafka.c) ---- */

/* {key, value, key, value, ..., NULL}: the relay's producer defaults (safe, then fast). */
const char *const *outbox_kafka_producer_defaults(void);
/* A librdkafka conf with defaults (a list as above, may be NULL), then every kafka.* key of conf.
 * NULL with the reason in errstr.  Caller owns. */
struct rd_kafka_conf_s *outbox_kafka_conf(const outbox_conf_t *conf, const char *const *defaults,
                                          char *errstr, size_t errstr_size);

/* Sets log_cb on kc and keeps librdkafka from calling it on its own threads (log.queue): after
 * rd_kafka_new, rd_kafka_set_log_queue(rk, NULL) hands the lines to whichever thread polls rk, the
 * one that makes the library's calls.  0, or -1 with the reason in errstr. */
int outbox_kafka_conf_logs(struct rd_kafka_conf_s *kc,
                           void (*log_cb)(const struct rd_kafka_s *, int, const char *, const char *),
                           char *errstr, size_t errstr_size);
/* Logs one line of librdkafka's (buf, from facility fac) through conf, escaped for logfmt. */
void outbox_kafka_log(const outbox_conf_t *conf, int level, const char *fac, const char *buf);

/* ---- PostgreSQL calls with a deadline (pgio.c) ---- */

/* How long a session's calls may wait for the server.  timeout_ms <= 0: no deadline.  Once *stop
 * (may be NULL) is set, a wait ends after at most grace_ms more. */
typedef struct {
    int64_t timeout_ms;
    const volatile sig_atomic_t *stop;
    int64_t grace_ms;
} outbox_pg_limits_t;

/* Connects to conninfo (a keyword string or URI) within the limits, with connect_timeout, TCP
 * keepalives and tcp_user_timeout defaults that conninfo may override, and makes the connection
 * non-blocking.  NULL with the reason in err on failure.  Caller owns; PQfinish it. */
PGconn *outbox_pg_connect(const char *conninfo, const char *app_name, const outbox_pg_limits_t *lim,
                          char *err, size_t err_size);
/* The same as a replication connection: replication is libpq's keyword value ("database" for a
 * logical stream), or NULL for a normal session. */
PGconn *outbox_pg_connect_as(const char *conninfo, const char *app_name, const char *replication,
                             const outbox_pg_limits_t *lim, char *err, size_t err_size);
/* Flushes what was sent and waits until a result can be read without blocking: 0, or -1 with the
 * reason in err when the connection failed or the deadline passed.  After -1 the session is in
 * an unknown state: finish it. */
int outbox_pg_wait(PGconn *pg, const outbox_pg_limits_t *lim, char *err, size_t err_size);
/* Reads every result of the query sent last and returns its outcome: the first result, or the
 * first failed one.  NULL (reason in err) when no answer came: finish the session.  Caller owns. */
PGresult *outbox_pg_result(PGconn *pg, const outbox_pg_limits_t *lim, char *err, size_t err_size);
/* Send-and-wait forms of PQexecParams, PQexec, PQexecPrepared and PQprepare, same outcome rules. */
PGresult *outbox_pg_exec(PGconn *pg, const outbox_pg_limits_t *lim, const char *sql, int nparams,
                         const char *const *params, const int *lengths, const int *formats,
                         int result_format, char *err, size_t err_size);
PGresult *outbox_pg_exec_simple(PGconn *pg, const outbox_pg_limits_t *lim, const char *sql, char *err,
                                size_t err_size);
PGresult *outbox_pg_exec_prepared(PGconn *pg, const outbox_pg_limits_t *lim, const char *stmt,
                                  int nparams, const char *const *params, const int *lengths,
                                  const int *formats, int result_format, char *err, size_t err_size);
PGresult *outbox_pg_prepare(PGconn *pg, const outbox_pg_limits_t *lim, const char *stmt,
                            const char *sql, char *err, size_t err_size);

/* ---- handles (outbox.c) ---- */

struct outbox_s {
    outbox_conf_t *conf;
    char *schema_q; /* quoted schema identifier */
    bool wal;       /* outbox.mode=wal */
    char wal_prefix[OUTBOX_WAL_NAME_SIZE]; /* outbox_wal_prefix() of outbox.schema */
    char errstr[OUTBOX_ERRSTR_SIZE];
    char sqlstate[6];
    outbox_err_t err; /* the code of the last error recorded in errstr */
};

/* ---- the writer's statements (writer.c; pipelined with a COMMIT by commit.c) ---- */

/* One statement of a write, ready for PQexecParams or PQsendQueryParams (text results).  Every
 * pointer is owned by the outbox_write_t that holds it. */
typedef struct {
    char *sql;
    int nparams;
    const Oid *types; /* NULL: inferred by the server */
    const char **values;
    int *lengths;
    int *formats;
    char *arr; /* wal mode, several messages: the binary bytea[] parameter values[1] points to */
} outbox_wstmt_t;

struct outbox_wrow_s;
/* The statements that write a batch of messages, in order; they point into the messages, which
 * must outlive it. */
typedef struct {
    struct outbox_wrow_s *rows;
    size_t n;
    outbox_wstmt_t *stmts;
    size_t nstmts;
    const char *what; /* what the statements do, for error messages */
} outbox_write_t;

/* Checks and encodes ms[0..n) (n >= 1) for ob's mode and builds their statements into *w: every
 * message is checked before any statement exists, so one bad message refuses the batch.  On
 * error (recorded in ob, fn naming the public function) *w is empty.  Free with outbox_write_free(). */
outbox_err_t outbox_write_build(outbox_t *ob, const outbox_message_t *const *ms, size_t n, const char *fn,
                                outbox_write_t *w);
/* Frees what outbox_write_build() allocated; an empty or freed *w is a no-op. */
void outbox_write_free(outbox_write_t *w);
/* 1 if res is the success of one of the writer's statements. */
int outbox_write_res_ok(const PGresult *res);

/* Records the handle's last error and returns err, so callers can `return outbox_seterr(...)`. */
outbox_err_t outbox_seterr(outbox_t *ob, outbox_err_t err, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
/* Records a failed PGresult (res may be NULL) for what ("insert into outbox"); returns the code. */
outbox_err_t outbox_seterr_pg(outbox_t *ob, PGconn *conn, const PGresult *res, const char *what);
/* Maps a SQLSTATE to 1 when retrying the transaction may succeed. */
int outbox_sqlstate_retriable(const char *sqlstate);

#endif /* OUTBOX_INT_H */
