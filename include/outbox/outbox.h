/*
 * liboutbox: transactional messaging on PostgreSQL and Kafka.
 * The one public header: configuration, handle, messages, send, schema migration, errors, version.
 *
 * A service calls outbox_send() inside its own PostgreSQL transaction; the message row exists if and
 * only if that transaction commits.  The outbox-relay process publishes committed rows to Kafka.
 *
 * Conventions used throughout:
 *  - Functions return outbox_err_t: OUTBOX_OK (0) or a negative error code (outbox_err2str()).
 *    The handle passed in keeps a human-readable message about its last error (outbox_errmsg()).
 *  - Ownership is stated per function.  The library borrows the caller's PGconn: it never begins,
 *    commits, rolls back or closes a transaction or connection it was handed (the documented
 *    exceptions: outbox_migrate() on an idle connection, which runs its own transaction, and
 *    outbox_send_commit(), which commits the caller's transaction because it was asked to).
 *  - Destroy functions accept NULL.
 */
#ifndef OUTBOX_OUTBOX_H
#define OUTBOX_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define OUTBOX_API __attribute__((visibility("default")))
#else
#define OUTBOX_API
#endif

/* Version of this header.  The Makefile reads these three lines for the soname and liboutbox.pc. */
#define OUTBOX_VERSION_MAJOR 0
#define OUTBOX_VERSION_MINOR 1
#define OUTBOX_VERSION_PATCH 0
/** The version as 0xMMmmpp00, comparable with <, e.g. 0x00010000 for 0.1.0. */
#define OUTBOX_VERSION                                                                        \
    ((OUTBOX_VERSION_MAJOR << 24) | (OUTBOX_VERSION_MINOR << 16) | (OUTBOX_VERSION_PATCH << 8))

/** The version of the library actually linked, e.g. "0.1.0".  Static string; never free it. */
OUTBOX_API const char *outbox_version_str(void);

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

typedef enum {
    OUTBOX_OK = 0,
    /** A required argument was NULL, empty or out of range; the message names it. */
    OUTBOX_ERR_INVALID_ARG = -1,
    /** outbox_send() on a connection that is not inside a transaction block. */
    OUTBOX_ERR_NOT_IN_TRANSACTION = -2,
    /** The connection's current transaction has already failed; roll it back and retry. */
    OUTBOX_ERR_TRANSACTION_ABORTED = -3,
    /** The destination is not a valid Kafka topic name ([a-zA-Z0-9._-], 1 to 249 characters). */
    OUTBOX_ERR_INVALID_DESTINATION = -4,
    /** The encoded message is larger than writer.max.message.bytes. */
    OUTBOX_ERR_MSG_TOO_LARGE = -5,
    /** The connection is bad or was lost (retriable with a new connection). */
    OUTBOX_ERR_CONNECTION = -6,
    /** PostgreSQL refused a statement; the message has its SQLSTATE and text. */
    OUTBOX_ERR_PG = -7,
    /** The outbox schema is missing or older than this library: run outbox_migrate(). */
    OUTBOX_ERR_SCHEMA = -8,
    /** Bytes that should be an Envelope are not a valid one. */
    OUTBOX_ERR_DECODE = -9,
    /** Out of memory. */
    OUTBOX_ERR_NOMEM = -10,
    /** The call is not valid in the handle's current state (e.g. a connection busy with a query). */
    OUTBOX_ERR_STATE = -11,
    /** A Kafka client error. */
    OUTBOX_ERR_KAFKA = -12,
    /** The schema in the database is newer than this library understands. */
    OUTBOX_ERR_SCHEMA_TOO_NEW = -13,
    /** outbox_send_commit(): the connection was lost after the COMMIT was sent, so whether the
     *  transaction committed is unknown.  Not retriable as such: look for its effects first. */
    OUTBOX_ERR_COMMIT_UNKNOWN = -14,
} outbox_err_t;

/** A short static description of an error code, e.g. "not in a transaction".  Never NULL. */
OUTBOX_API const char *outbox_err2str(outbox_err_t err);

/**
 * 1 if retrying the same operation (after rolling back, or on a new connection) may succeed:
 * lost connections, serialization failures and deadlocks, lock or statement timeouts.
 * OUTBOX_ERR_PG is reported retriable only by outbox_errmsg_retriable(), which knows the SQLSTATE.
 */
OUTBOX_API int outbox_err_is_retriable(outbox_err_t err);

/* ------------------------------------------------------------------------------------------ */
/* Configuration                                                                               */

typedef struct outbox_conf_s outbox_conf_t;

typedef enum {
    OUTBOX_CONF_UNKNOWN = -2, /**< no such key */
    OUTBOX_CONF_INVALID = -1, /**< the value is not valid for the key */
    OUTBOX_CONF_OK = 0,
} outbox_conf_res_t;

/** Log callback; level is a syslog level (3 = error ... 7 = debug).  Called from the thread that
 *  made the library call that logs.  msg is borrowed for the duration of the call. */
typedef void(outbox_log_cb)(int level, const char *fac, const char *msg, void *opaque);

/** A configuration with every default set.  Caller owns; free with outbox_conf_destroy() unless
 *  handed to a constructor that takes ownership.  NULL only when out of memory. */
OUTBOX_API outbox_conf_t *outbox_conf_new(void);

/**
 * Sets key to value, both borrowed (copied).  Keys:
 *   outbox.schema               schema of the outbox tables, default "outbox" (always quoted in SQL;
 *                               UTF-8, 1 to 63 bytes)
 *   outbox.mode                 table|wal, default table: how outbox_send() carries a message, as a
 *                               row of <schema>.messages or as a transactional logical decoding
 *                               message with prefix "outbox:<schema>" (wal needs wal_level=logical)
 *   relay.slot.name             wal mode: the relay's replication slot, 1 to 63 of [a-z0-9_];
 *                               default "" = outbox_<schema> lower-cased, other bytes as '_'
 *   writer.allow.autocommit     true|false, default false: allow outbox_send() outside a transaction
 *   writer.max.message.bytes    largest encoded envelope, default 1000000 (Kafka's default)
 *   log.level                   0..7 (syslog), default 6 (info)
 *   pg.conninfo                 libpq connection string for components that connect themselves
 *   relay.*, consumer.*, metrics.*  keys of the relay and consumer (see outbox-relay --help)
 *   kafka.<property>            passed unchanged to librdkafka (checked by librdkafka itself)
 * On failure a message naming the key, the value and what is expected is written to errstr.
 * Not thread-safe: configure from one thread before handing the conf over.
 */
OUTBOX_API outbox_conf_res_t outbox_conf_set(outbox_conf_t *conf, const char *key, const char *value,
                                             char *errstr, size_t errstr_size);

/**
 * Reads the current value of key into dest (dest_size bytes, NUL-terminated).  If dest is NULL or
 * too small, *dest_size is set to the size needed and OUTBOX_CONF_INVALID is returned for a short
 * buffer (OUTBOX_CONF_OK when dest is NULL).  OUTBOX_CONF_UNKNOWN if the key is not known or,
 * for kafka.*, not set.
 */
OUTBOX_API outbox_conf_res_t outbox_conf_get(const outbox_conf_t *conf, const char *key, char *dest,
                                             size_t *dest_size);

/** A deep copy.  Caller owns; free with outbox_conf_destroy(). NULL when out of memory. */
OUTBOX_API outbox_conf_t *outbox_conf_dup(const outbox_conf_t *conf);

/** Sets the log callback (NULL = the default, one line per event on stderr). */
OUTBOX_API void outbox_conf_set_log_cb(outbox_conf_t *conf, outbox_log_cb *cb);

/** Sets the opaque pointer passed to callbacks.  Borrowed: must outlive every handle made from conf. */
OUTBOX_API void outbox_conf_set_opaque(outbox_conf_t *conf, void *opaque);

/** Frees a configuration.  NULL is a no-op. */
OUTBOX_API void outbox_conf_destroy(outbox_conf_t *conf);

/* ------------------------------------------------------------------------------------------ */
/* The writer handle                                                                           */

/**
 * An outbox writer.  Holds configuration and the last error message; owns no connection.
 * Thread safety: not thread-safe (the last error message is per handle).  It is small: create one
 * per thread, or serialise calls.
 */
typedef struct outbox_s outbox_t;

/**
 * Creates a writer.  conf: NULL for defaults; otherwise ownership passes to the handle on success
 * (on failure the caller still owns it).  Returns NULL on failure with the reason in errstr.
 * Caller owns the result; free with outbox_destroy().
 */
OUTBOX_API outbox_t *outbox_new(outbox_conf_t *conf, char *errstr, size_t errstr_size);

/** Frees a writer.  NULL is a no-op. */
OUTBOX_API void outbox_destroy(outbox_t *ob);

/** The message of the handle's last error ("" if none).  Borrowed: valid until the next call on ob.
 *  A NULL handle gives a static message. */
OUTBOX_API const char *outbox_errmsg(const outbox_t *ob);

/** 1 if the handle's last error may succeed on retry (see outbox_err_is_retriable), judging
 *  OUTBOX_ERR_PG by its SQLSTATE (40001, 40P01, 55P03, 57014, class 08). */
OUTBOX_API int outbox_errmsg_retriable(const outbox_t *ob);

/* ------------------------------------------------------------------------------------------ */
/* Messages                                                                                    */

/** Message kinds; values equal the wire format's outbox.v1.Kind. */
typedef enum {
    OUTBOX_EVENT = 1,    /**< something happened (publish/subscribe) */
    OUTBOX_COMMAND = 2,  /**< a request to one receiver, which may reply */
    OUTBOX_REPLY = 3,    /**< the answer to a command (correlation_id = the command's id) */
    OUTBOX_DOCUMENT = 4, /**< plain data */
} outbox_kind_t;

/**
 * A message: headers and an opaque payload.  Thread safety: a message may be read from several
 * threads at once; setters need exclusive access.
 */
typedef struct outbox_message_s outbox_message_t;

/**
 * Creates a message of the given kind for destination (the Kafka topic) and type (e.g.
 * "orders.OrderCreated"); both are copied.  It gets a fresh UUIDv7 id, created_at = now and
 * schema version "1.0".  Returns NULL when an argument is invalid (errno = EINVAL: NULL, empty or
 * not UTF-8 type, a destination that is not a valid Kafka topic name, an unknown kind) or out of memory
 * (errno = ENOMEM).  outbox_message_create() says which argument is wrong.
 * Caller owns; free with outbox_message_destroy().
 */
OUTBOX_API outbox_message_t *outbox_message_new(outbox_kind_t kind, const char *destination,
                                                const char *type);

/**
 * Like outbox_message_new(), with the error in a return code and errstr: OUTBOX_ERR_INVALID_ARG,
 * OUTBOX_ERR_INVALID_DESTINATION or OUTBOX_ERR_NOMEM.  On success *out is caller-owned.
 */
OUTBOX_API outbox_err_t outbox_message_create(outbox_message_t **out, outbox_kind_t kind,
                                              const char *destination, const char *type,
                                              char *errstr, size_t errstr_size);

/* Setters.  Each copies its arguments and returns OUTBOX_OK, OUTBOX_ERR_INVALID_ARG (the value is
 * refused, m unchanged) or OUTBOX_ERR_NOMEM.  A refusal writes why into m, for
 * outbox_message_errmsg(): the function, the argument, the value and what to pass instead.
 * A NULL m is OUTBOX_ERR_INVALID_ARG with no message (there is no handle to keep it). */

/** Sets the partition key (the aggregate id: same key, same partition, order kept).  Copied.
 *  len 0 clears it (the relay then lets the partitioner spread messages).
 *  Refused: key NULL with len > 0; a len above PTRDIFF_MAX (a negative size converted). */
OUTBOX_API outbox_err_t outbox_message_set_key(outbox_message_t *m, const void *key, size_t len);

/** Sets the payload, copied.  len may be 0.  Refused as outbox_message_set_key(). */
OUTBOX_API outbox_err_t outbox_message_set_payload(outbox_message_t *m, const void *payload, size_t len);

/** Sets (or replaces) a string header, both copied.  Refused: a NULL or empty name, a NULL value,
 *  a name or value that is not UTF-8 (proto3 strings), the names "id", "type" and "kind",
 *  reserved for the Kafka headers the relay adds, and names starting "ce_", CloudEvents attributes
 *  (relay.format=cloudevents).  For the W3C trace context, outbox_message_set_trace_context()
 *  checks what it stores. */
OUTBOX_API outbox_err_t outbox_message_set_header(outbox_message_t *m, const char *name, const char *value);

/** Sets the payload's semantic schema version.  Refused unless "MAJOR.MINOR" with 1 to 9 digits
 *  each (e.g. "2.1"). */
OUTBOX_API outbox_err_t outbox_message_set_schema_version(outbox_message_t *m, const char *major_minor);

/** Sets the correlation id (for a REPLY: the command's id).  Copied.  Refused: NULL, not UTF-8. */
OUTBOX_API outbox_err_t outbox_message_set_correlation_id(outbox_message_t *m, const char *id);

/** Sets the reply channel (for a COMMAND).  Copied.  Refused: NULL, or not a valid Kafka topic
 *  name ([a-zA-Z0-9._-], 1 to 249 characters, not "." or ".."). */
OUTBOX_API outbox_err_t outbox_message_set_reply_to(outbox_message_t *m, const char *channel);

/** Sets the payload's media type (RFC 2046 "type/subtype", parameters allowed, e.g.
 *  "application/json; charset=utf-8"), carried in the Envelope's content_type and, with
 *  relay.format=cloudevents, in the record's content-type header.  Copied.  "" clears it.
 *  Refused: NULL, more than 255 bytes, anything but printable ASCII, no '/'. */
OUTBOX_API outbox_err_t outbox_message_set_content_type(outbox_message_t *m, const char *content_type);

/**
 * Sets the W3C Trace Context (level 1) of m: the headers "traceparent" and "tracestate".  Copied.
 * traceparent must be version 00, "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>", lowercase,
 * with neither id all zeros.  tracestate may be NULL or "" (then m carries none, and an older one is
 * removed); otherwise a list of at most 32 "key=value" members separated by commas (optional blanks
 * around them), keys and values per the W3C grammar, no key twice.  Refused (OUTBOX_ERR_INVALID_ARG,
 * m unchanged) with what is wrong in outbox_message_errmsg(m).
 */
OUTBOX_API outbox_err_t outbox_message_set_trace_context(outbox_message_t *m, const char *traceparent,
                                                         const char *tracestate);

/**
 * Why the last setter call on m refused its arguments, e.g.
 * "outbox_message_set_header: name \"id\" is reserved (...); choose another name, e.g. \"x-id\"";
 * "" when that call succeeded or no setter was called yet.  Each setter call replaces it (as
 * libpq's PQerrorMessage() does per connection).  Borrowed: valid until the next setter call on m
 * or its destruction.  Reading it needs the same exclusive access as the setters.  A NULL m gives
 * a static message.
 */
OUTBOX_API const char *outbox_message_errmsg(const outbox_message_t *m);

/** Frees a message.  NULL is a no-op. */
OUTBOX_API void outbox_message_destroy(outbox_message_t *m);

/* Read side.  Every returned pointer is borrowed: valid until the message is changed or destroyed.
 * Absent string fields read as "" (never NULL, except for a NULL message). */

/** The message id: UUIDv7 in canonical text form, set at creation. */
OUTBOX_API const char *outbox_message_id(const outbox_message_t *m);
OUTBOX_API outbox_kind_t outbox_message_kind(const outbox_message_t *m);
OUTBOX_API const char *outbox_message_type(const outbox_message_t *m);
OUTBOX_API const char *outbox_message_schema_version(const outbox_message_t *m);
OUTBOX_API const char *outbox_message_destination(const outbox_message_t *m);
/** The key, *len set to its length (0 and NULL when there is none). */
OUTBOX_API const void *outbox_message_key(const outbox_message_t *m, size_t *len);
/** The payload, *len set to its length. */
OUTBOX_API const void *outbox_message_payload(const outbox_message_t *m, size_t *len);
/** The value of header name, or NULL if there is none. */
OUTBOX_API const char *outbox_message_header(const outbox_message_t *m, const char *name);
/** The number of headers, and the idx'th one (0-based) through *name and *value; OUTBOX_ERR_INVALID_ARG
 *  when idx is out of range. */
OUTBOX_API size_t outbox_message_header_count(const outbox_message_t *m);
OUTBOX_API outbox_err_t outbox_message_header_at(const outbox_message_t *m, size_t idx, const char **name,
                                                 const char **value);
OUTBOX_API const char *outbox_message_correlation_id(const outbox_message_t *m);
OUTBOX_API const char *outbox_message_reply_to(const outbox_message_t *m);
/** Creation time in microseconds since the Unix epoch. */
OUTBOX_API int64_t outbox_message_created_at_us(const outbox_message_t *m);
/** The payload's media type; "application/octet-stream" when none was set. */
OUTBOX_API const char *outbox_message_content_type(const outbox_message_t *m);

/**
 * The W3C trace context m carries (a message received by a consumer: the one its writer set), for
 * a handler to continue the trace: *traceparent and *tracestate (either pointer may be NULL) are
 * set to the header values, borrowed from m.  Returns 1 when m has a valid traceparent; 0 when it
 * has none or an invalid one (both then read NULL, as the W3C spec says to start a new trace).
 * *tracestate is NULL when m has no valid tracestate.
 */
OUTBOX_API int outbox_message_trace_context(const outbox_message_t *m, const char **traceparent,
                                           const char **tracestate);

/**
 * Where the consumer received m: the Kafka topic, partition and offset of its record (what
 * librdkafka's rd_kafka_message_t carries as rkt, partition and offset).  Set on the messages an
 * outbox_consumer_t hands to its handler; a message from outbox_message_new() or
 * outbox_message_decode() reads topic "", partition -1 and offset -1.  The topic is borrowed
 * from the consumer: valid while m is, i.e. during the handler call; copy it to keep it.
 * Called from the handler's thread (the one in outbox_consumer_poll()).  A NULL m gives NULL, -1, -1.
 */
OUTBOX_API const char *outbox_message_kafka_topic(const outbox_message_t *m);
OUTBOX_API int32_t outbox_message_kafka_partition(const outbox_message_t *m);
OUTBOX_API int64_t outbox_message_kafka_offset(const outbox_message_t *m);

/**
 * Encodes m as an outbox.v1.Envelope.  *buf is caller-owned (free with free()); *len its size.
 */
OUTBOX_API outbox_err_t outbox_message_encode(const outbox_message_t *m, void **buf, size_t *len);

/**
 * Decodes an Envelope from untrusted bytes (borrowed; copied).  Refuses, with OUTBOX_ERR_DECODE and
 * the reason in errstr: bytes that are not protobuf, an id that is not a UUID, an unknown or
 * unspecified kind, an empty type, an invalid destination, a malformed schema version, a header
 * with an empty name or a NUL byte, or a type, correlation id or header that is not UTF-8.
 * A len above PTRDIFF_MAX is OUTBOX_ERR_INVALID_ARG.
 * On success *out is caller-owned; free with outbox_message_destroy().
 */
OUTBOX_API outbox_err_t outbox_message_decode(outbox_message_t **out, const void *buf, size_t len,
                                              char *errstr, size_t errstr_size);

/* ------------------------------------------------------------------------------------------ */
/* Writing                                                                                     */

/**
 * Adds m to the outbox inside the caller's current transaction on conn (both borrowed).  The row
 * exists iff that transaction commits.  With outbox.mode=wal there is no row: the encoded envelope
 * (the same bytes) is written with pg_logical_emit_message(true, 'outbox:<schema>', envelope), a
 * transactional message that logical decoding delivers iff the transaction commits.  conn must be inside a transaction block (BEGIN issued),
 * else OUTBOX_ERR_NOT_IN_TRANSACTION and nothing is written, unless writer.allow.autocommit=true.
 * Errors: OUTBOX_ERR_INVALID_ARG (NULL ob/conn/m), OUTBOX_ERR_TRANSACTION_ABORTED,
 * OUTBOX_ERR_INVALID_DESTINATION, OUTBOX_ERR_MSG_TOO_LARGE, OUTBOX_ERR_CONNECTION, OUTBOX_ERR_SCHEMA,
 * OUTBOX_ERR_PG.  A failed INSERT leaves the caller's transaction aborted, as any failed statement does.
 */
OUTBOX_API outbox_err_t outbox_send(outbox_t *ob, PGconn *conn, const outbox_message_t *m);

/**
 * Adds n messages in the given order (ids ascend in that order) with one statement per 5,000
 * messages or 64 MiB of envelopes, i.e. one round trip for up to 5,000 (wal mode: one
 * pg_logical_emit_message per message, in order, in one statement over a bytea[]).  Every message
 * is checked before anything is written: one bad message refuses the whole batch.  n == 0 is
 * OUTBOX_OK and writes nothing.
 */
OUTBOX_API outbox_err_t outbox_send_batch(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                          size_t n);

/**
 * Sends n messages (as outbox_send_batch(), either mode) and then COMMITs the caller's transaction
 * on conn, all in one round trip (libpq pipeline mode), and returns the COMMIT's outcome: OUTBOX_OK
 * only if the transaction committed.  The one function that ends the caller's transaction.
 * n == 0 (ms may then be NULL) just commits.  ms, its messages and conn are borrowed.
 * conn must be inside a transaction block (BEGIN and the caller's statements already sent), in
 * libpq's normal mode, and not busy.  Refused with conn left exactly as it was, nothing sent:
 * OUTBOX_ERR_INVALID_ARG (NULL ob or conn), OUTBOX_ERR_CONNECTION (a bad connection),
 * OUTBOX_ERR_STATE (conn in pipeline mode, or busy), OUTBOX_ERR_NOT_IN_TRANSACTION (no
 * transaction block; writer.allow.autocommit does not apply: with nothing to commit, call
 * outbox_send_batch() instead).  Past those checks the transaction always ends: on return conn is
 * idle, out of the transaction (or dead after a lost connection), whatever happened:
 *  - OUTBOX_OK: committed.
 *  - a refused message (NULL ms with n > 0, NULL message, bad destination, too large): nothing
 *    sent, the transaction rolled back, OUTBOX_ERR_INVALID_ARG etc.
 *  - OUTBOX_ERR_TRANSACTION_ABORTED: the transaction had already failed; COMMIT rolled it back.
 *  - OUTBOX_ERR_PG, OUTBOX_ERR_SCHEMA, ...: a statement or the COMMIT itself failed (e.g. a deferred
 *    constraint, a serialization failure: see outbox_errmsg_retriable()); nothing committed.
 *  - OUTBOX_ERR_CONNECTION: the connection broke before the COMMIT was sent; nothing committed.
 *  - OUTBOX_ERR_COMMIT_UNKNOWN: the connection broke after the COMMIT was sent and before its
 *    answer: the transaction may or may not have committed.  Check on a new connection.
 */
OUTBOX_API outbox_err_t outbox_send_commit(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                           size_t n);

/* ------------------------------------------------------------------------------------------ */
/* Schema                                                                                      */

/** The schema version this library creates and expects. */
#define OUTBOX_SCHEMA_VERSION 4

/**
 * Creates or upgrades the outbox tables in schema outbox.schema, idempotently and safely when
 * several processes run it at once (a transaction-scoped advisory lock).  On an idle connection it
 * runs and commits its own transaction; inside the caller's transaction block it runs there and
 * leaves the commit to the caller.  OUTBOX_ERR_SCHEMA_TOO_NEW if the database has a newer schema;
 * OUTBOX_ERR_TRANSACTION_ABORTED if conn's transaction has already failed.
 * On a schema already at OUTBOX_SCHEMA_VERSION it only reads <schema>.schema_version (SELECT, which
 * `outbox-relay grants` gives every role), so any role may call it at start-up; an actual migration
 * needs the schema's owner (or a role that may create it), and a role that may not gets
 * OUTBOX_ERR_SCHEMA with a message naming the role and saying to run `outbox-relay migrate` as the owner.
 */
OUTBOX_API outbox_err_t outbox_migrate(outbox_t *ob, PGconn *conn);

/**
 * The schema version recorded in the database (0 when the outbox schema does not exist) in
 * *version.  Reads only (SELECT on <schema>.schema_version, granted to every role by
 * `outbox-relay grants`); needs no transaction.
 */
OUTBOX_API outbox_err_t outbox_schema_version(outbox_t *ob, PGconn *conn, int *version);


/* ------------------------------------------------------------------------------------------ */
/* Consuming                                                                                   */

/** What a handler tells the consumer to do with the message it was given. */
typedef enum {
    OUTBOX_HANDLER_OK = 0, /**< commit the handler's work and the dedup record, move on */
    OUTBOX_HANDLER_RETRY,  /**< roll back; redeliver this message after consumer.retry.backoff.ms,
                                keeping its partition's order */
    OUTBOX_HANDLER_REJECT, /**< roll back; record it in consumer_dead_letters; move on */
} outbox_handler_result_t;

/**
 * Handles one message inside the consumer's transaction on conn: everything done through conn
 * (including outbox_send()/outbox_reply()) commits together with the record that makes
 * redeliveries of this message skip the handler.  msg and conn are borrowed for the call: do not
 * keep them, and do not BEGIN/COMMIT/ROLLBACK on conn.  conn is in libpq's default, blocking mode,
 * and pg.timeout.ms does not bound the handler's own statements.  outbox_message_kafka_topic(),
 * _partition() and _offset() name the record msg came from.  Notices the server sends on conn
 * (e.g. a RAISE NOTICE) go to the log callback, facility "CONSUMER", as one logfmt line:
 * msg="PostgreSQL notice" severity=... sqlstate=... text="..." [detail="..."] [hint="..."].
 * It may be called more than once for a message: after a RETRY, and, under
 * consumer.batch.savepoints=on-failure, again in the same poll when a later message of its batch
 * fails (its work on conn from the first call was rolled back).
 * Called from the thread that called outbox_consumer_poll().
 */
typedef outbox_handler_result_t (*outbox_handler_cb)(const outbox_message_t *msg, PGconn *conn,
                                                     void *opaque);

/**
 * A consumer: a Kafka consumer group member plus its own PostgreSQL connection.  Each message is
 * processed once in effect: BEGIN; record (consumer.group.id, message id) in <schema>.processed
 * (a duplicate skips the handler); handler; COMMIT; only then is the Kafka offset stored and
 * committed.  Thread safety: use one consumer from one thread.
 */
typedef struct outbox_consumer_s outbox_consumer_t;

/** Counters since the consumer was created. */
typedef struct {
    int64_t processed;  /**< handler returned OK and its transaction committed */
    int64_t duplicates; /**< already processed by this group: handler skipped */
    int64_t retried;    /**< handler returned RETRY (or its transaction failed) */
    int64_t rejected;   /**< handler returned REJECT, or the bytes were not an acceptable envelope */
} outbox_consumer_stats_t;

/**
 * Creates a consumer.  conf needs consumer.group.id, pg.conninfo (or OUTBOX_PG_CONNINFO) and
 * kafka.bootstrap.servers; optional: outbox.schema, consumer.schema.major.max,
 * consumer.retry.backoff.ms, consumer.batch.max, consumer.batch.linger.ms, consumer.batch.savepoints
 * (on-failure or always, see outbox_consumer_poll()),
 * consumer.processed.retention.s (this group's dedup records older than that are deleted by the
 * consumer between batches; a redelivery older than it is not detected), pg.timeout.ms, any kafka.* key (defaults: enable.auto.commit=false,
 * auto.offset.reset=earliest).  Connects to PostgreSQL at once: a server that cannot be reached
 * fails the call.  Each new session is then checked: <schema>.processed and
 * consumer_dead_letters must exist and the role must be allowed to INSERT into them (and DELETE
 * from processed).  If not, the
 * consumer is still created; the error, naming the cause and the fix (run `outbox-relay migrate`,
 * or grant what `outbox-relay grants --consumer ROLE` prints), is logged and returned by polls
 * (OUTBOX_ERR_SCHEMA or OUTBOX_ERR_PG) while messages wait, and session setup is retried after a
 * backoff that doubles from consumer.retry.backoff.ms (at least 100 ms) up to 30 s; a failed
 * reconnect backs off the same way.
 * pg.timeout.ms bounds connecting and each of the consumer's own statements (BEGIN, its
 * INSERTs, COMMIT, ROLLBACK): past it the session is dropped, the message redelivered and the
 * poll fails with OUTBOX_ERR_CONNECTION; the next poll connects again.
 * conf is owned by the consumer on success.  NULL with the reason in errstr on failure.
 * Caller owns; free with outbox_consumer_destroy().
 */
OUTBOX_API outbox_consumer_t *outbox_consumer_new(outbox_conf_t *conf, char *errstr, size_t errstr_size);

/** Subscribes to n topics (names copied).  Replaces an earlier subscription. */
OUTBOX_API outbox_err_t outbox_consumer_subscribe(outbox_consumer_t *c, const char *const *topics, size_t n);

/**
 * Waits up to timeout_ms for a first message, then gathers what librdkafka has already fetched, up
 * to consumer.batch.max messages (default 500), waiting at most consumer.batch.linger.ms (default
 * 5) for more, and processes them as one batch in one PostgreSQL transaction: BEGIN and one dedup
 * INSERT for the whole batch; for each new message, in order, a SAVEPOINT, the handler, and a
 * RELEASE on OK (REJECT: back to the savepoint and a dead letter; RETRY: back to the savepoint,
 * and that message and the rest of its partition in the batch are delivered again after
 * consumer.retry.backoff.ms); one COMMIT; then the offsets, per partition, up to the last message
 * whose effect committed.  Under consumer.batch.savepoints=on-failure (the default) the handlers
 * first run without savepoints, a round trip less per message; at the first REJECT, RETRY or
 * failed statement the whole transaction is rolled back and the batch runs again as above, with a
 * savepoint per message (always: with savepoints from the start).  What batching means for a
 * handler: its work commits with the rest of the batch, not on its own; a statement of its that
 * fails is contained by its savepoint (the consumer rolls back to it and retries the message);
 * under on-failure it may be called again for a message when a later message of its batch fails
 * (the first call's work on conn was rolled back: its effects still commit once, what it did
 * elsewhere happens twice; the failing message's handler is not called again unless a message
 * before it fails in the second pass).
 * consumer.batch.max=1 processes one message per transaction.  Returns OUTBOX_OK, or an error
 * when PostgreSQL or Kafka failed (the whole
 * batch is redelivered, and dedup skips what had committed; call again to continue, it
 * reconnects, with the backoff described at outbox_consumer_new()): OUTBOX_ERR_CONNECTION, OUTBOX_ERR_PG,
 * OUTBOX_ERR_SCHEMA (the schema is not migrated), with the reason in outbox_consumer_errmsg().
 * Bad input on the topic never fails the call: it is recorded as rejected and skipped.
 */
OUTBOX_API outbox_err_t outbox_consumer_poll(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque,
                                             int timeout_ms);

/**
 * Releases a key parked under consumer.reject.policy=park-key: at the next poll the messages of
 * Kafka key (len bytes) that this consumer group holds in <schema>.consumer_parked, in every
 * topic and partition assigned to c, are handed to the handler again, in offset order, each with
 * the usual exactly-once effect (a message already processed is skipped) and each removed from
 * the table in the transaction that applies it.  If the first is rejected again the key stays
 * parked, with the new reason.  `outbox-relay consumer-parked retry --group G --key K` does the
 * same from another process; a running consumer notices within about a second.  Marks the key's
 * rows released at once (one UPDATE on c's own session), so a restart or another member of the
 * group carries the retry out too.  A key that is not parked is no error.  Returns OUTBOX_OK,
 * OUTBOX_ERR_INVALID_ARG (key NULL with len > 0, or park-key is not the policy),
 * OUTBOX_ERR_CONNECTION or OUTBOX_ERR_PG (retriable).  key is borrowed for the call.
 * Call it from the thread that polls c.
 */
OUTBOX_API outbox_err_t outbox_consumer_parked_retry(outbox_consumer_t *c, const void *key, size_t len);

/**
 * Handles a batch's new messages together, for set-based work (one multi-row INSERT instead of one
 * per message).  msgs[0..n) are the messages of the batch that are not duplicates, in the order
 * received (each partition's in offset order), all inside the consumer's open transaction on conn,
 * within one savepoint.  The handler sets results[i] for each msgs[i] (they start as
 * OUTBOX_HANDLER_OK) and returns.  If every result is OK and the transaction did not fail, the
 * work commits with the batch.  Otherwise the consumer rolls back to the savepoint, calls the
 * handler again with the messages before the first one that was not OK, applies that one's
 * result as the per-message handler's would be (RETRY, REJECT; OK with a failed transaction counts
 * as RETRY, tried alone) and goes on with the rest, so a batch handler must give the same result
 * for the same message when called again.  msgs, each message and conn are borrowed for the call.
 * Do not BEGIN/COMMIT/ROLLBACK on conn.  Called from the thread in outbox_consumer_poll().
 */
typedef void (*outbox_batch_handler_cb)(const outbox_message_t *const *msgs, size_t n, PGconn *conn,
                                        outbox_handler_result_t *results, void *opaque);

/**
 * Sets (cb non-NULL) or clears (NULL) a batch handler: while it is set, outbox_consumer_poll()
 * calls it instead of its per-message handler (which may then be NULL).  opaque is passed to cb.
 * Set it before the first poll.  Returns OUTBOX_ERR_INVALID_ARG if c is NULL.
 */
OUTBOX_API outbox_err_t outbox_consumer_set_batch_handler(outbox_consumer_t *c, outbox_batch_handler_cb cb,
                                                          void *opaque);

/** Copies the counters into *stats. */
OUTBOX_API void outbox_consumer_stats(const outbox_consumer_t *c, outbox_consumer_stats_t *stats);

/** The consumer's last error message ("" if none).  Borrowed: valid until the next call on c. */
OUTBOX_API const char *outbox_consumer_errmsg(const outbox_consumer_t *c);

/** Commits stored offsets, leaves the group cleanly (rd_kafka_consumer_close(): the partitions
 *  are revoked and a LeaveGroup sent), closes the connection and frees c.  NULL is a no-op. */
OUTBOX_API void outbox_consumer_destroy(outbox_consumer_t *c);

/**
 * Sends, through the outbox and so inside the handler's transaction on conn, a REPLY to request's
 * reply_to channel with correlation_id = the request's id, the request's key and its W3C trace
 * context (traceparent, tracestate), so the trace goes on through the reply (type and payload
 * copied).  OUTBOX_ERR_INVALID_ARG if request is not a COMMAND or has no reply_to.
 */
OUTBOX_API outbox_err_t outbox_reply(outbox_t *ob, PGconn *conn, const outbox_message_t *request,
                                     const char *type, const void *payload, size_t len);

/**
 * Deletes processed-message records older than max_age_s seconds, in batches, on conn (idle or in
 * a transaction) and sets *deleted (may be NULL).  A record must outlive every possible
 * redelivery of its message: choose max_age_s above the topic's retention.ms (plus the longest
 * consumer downtime you tolerate), or a redelivered old message would run its handler again.
 * Ages beyond 5,000 years (e.g. INT64_MAX) delete nothing.
 */
OUTBOX_API outbox_err_t outbox_processed_prune(outbox_t *ob, PGconn *conn, int64_t max_age_s,
                                               int64_t *deleted);

#ifdef __cplusplus
}
#endif

#endif /* OUTBOX_OUTBOX_H */
