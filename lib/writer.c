/*
 * The writer: outbox_send() and outbox_send_batch() write envelopes inside the caller's
 * transaction, as rows (outbox.mode=table) or as transactional logical decoding messages (wal),
 * with every value passed as a parameter (bytea in binary).
 */
#include <stdlib.h>
#include <string.h>
#include <endian.h>

#include "outbox_int.h"

#define COLS_PER_ROW 6
/* 6 parameters a row stays well under the protocol's 65535 parameters per statement. */
#define ROWS_PER_INSERT 5000
/* Envelope bytes per statement: far below the 1 GB a protocol message (and a bytea[]) may hold,
 * and the int lengths of libpq's parameters.  A statement always takes at least one message. */
#define BYTES_PER_STATEMENT (64 * 1024 * 1024)

/* Type OIDs of pg_type.h (stable across releases): the wal statements name their types so that
 * the binary parameters need no cast and pick the bytea overload of pg_logical_emit_message. */
#define TEXTOID 25
#define BYTEAOID 17
#define BYTEAARRAYOID 1001

/* One message, transactional (decoded only if the caller's transaction commits). */
static const char wal_one_sql[] = "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)";
/* Several, in array order: the ORDER BY is met by the ordinality scan itself (no Sort), and if a
 * Sort were ever planned PostgreSQL evaluates volatile output expressions after it (9.6+), so the
 * messages are emitted, and decoded, in the order of the batch. */
static const char wal_many_sql[] =
    "SELECT pg_catalog.pg_logical_emit_message(true, $1, t.e) "
    "FROM unnest($2::bytea[]) WITH ORDINALITY AS t(e, n) ORDER BY t.n";
static const Oid wal_one_types[2] = {TEXTOID, BYTEAOID};
static const Oid wal_many_types[2] = {TEXTOID, BYTEAARRAYOID};

/* Checks the handle, connection and transaction state shared by both entry points. */
static outbox_err_t check_conn(outbox_t *ob, PGconn *conn, const char *fn) {
    if (!conn)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "%s: conn is NULL; pass the PGconn whose transaction the message "
                             "belongs to", fn);
    if (PQstatus(conn) != CONNECTION_OK)
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION, "%s: the connection is bad: %s", fn,
                             PQerrorMessage(conn));
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        return OUTBOX_OK;
    case PQTRANS_IDLE:
        if (outbox_conf_bool(ob->conf, "writer.allow.autocommit"))
            return OUTBOX_OK;
        return outbox_seterr(ob, OUTBOX_ERR_NOT_IN_TRANSACTION,
                             "%s: the connection is not inside a transaction block, so the "
                             "message would not be atomic with your changes; run BEGIN first and "
                             "COMMIT after (or set writer.allow.autocommit=true to write it on "
                             "its own); nothing was written", fn);
    case PQTRANS_INERROR:
        return outbox_seterr(ob, OUTBOX_ERR_TRANSACTION_ABORTED,
                             "%s: the connection's transaction has already failed; ROLLBACK and "
                             "retry the whole transaction; nothing was written", fn);
    case PQTRANS_ACTIVE:
        return outbox_seterr(ob, OUTBOX_ERR_STATE,
                             "%s: the connection is busy with another query; collect its results "
                             "first", fn);
    default:
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION, "%s: the connection's state is unknown",
                             fn);
    }
}

/* One encoded row: its parameters point into the message and these binary fields. */
typedef struct outbox_wrow_s {
    void *env;
    size_t env_len;
    uint8_t uuid[16];   /* binary uuid */
    uint64_t created;   /* binary timestamptz: big-endian microseconds since 2000-01-01 UTC */
} row_t;

/* Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01). */
#define PG_EPOCH_OFFSET_US INT64_C(946684800000000)

static outbox_err_t encode_row(outbox_t *ob, const outbox_message_t *m, size_t idx, const char *fn,
                               row_t *row) {
    char why[160];
    if (!m)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, "%s: message %zu is NULL", fn, idx);
    if (!outbox_topic_valid(m->destination, why, sizeof(why)))
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_DESTINATION, "%s: destination \"%.300s\" %s", fn,
                             m->destination ? m->destination : "(null)", why);
    if (outbox_message_encode(m, &row->env, &row->env_len))
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory encoding message %s", fn, m->id);
    long long max = outbox_conf_int(ob->conf, "writer.max.message.bytes");
    if ((long long)row->env_len > max) {
        free(row->env);
        row->env = NULL;
        return outbox_seterr(ob, OUTBOX_ERR_MSG_TOO_LARGE,
                             "%s: message %s encodes to %zu bytes, more than "
                             "writer.max.message.bytes=%lld; make the payload smaller or raise "
                             "writer.max.message.bytes (and the topic's max.message.bytes); "
                             "nothing was written", fn, m->id, row->env_len, max);
    }
    outbox_uuid_parse(m->id, strlen(m->id), row->uuid); /* validated when set: cannot fail */
    row->created = htobe64((uint64_t)(m->created_at_us - PG_EPOCH_OFFSET_US));
    return OUTBOX_OK;
}

/* INSERT INTO s.messages (...) VALUES ($1..$6), ($7..$12), ... for n rows. */
static char *insert_sql(const char *schema_q, size_t n) {
    static const char row_fmt[] =
        "%s($%zu::uuid,$%zu,$%zu,$%zu,$%zu,$%zu::timestamptz)";
    size_t cap = strlen(schema_q) + 128 + n * 80;
    char *sql = malloc(cap);
    if (!sql)
        return NULL;
    size_t off = (size_t)snprintf(sql, cap,
                                  "INSERT INTO %s.messages (message_id, destination, partition_key, "
                                  "message_type, envelope, created_at) VALUES ",
                                  schema_q);
    for (size_t i = 0; i < n; i++) {
        size_t p = i * COLS_PER_ROW;
        off += (size_t)snprintf(sql + off, cap - off, row_fmt, i ? "," : "", p + 1, p + 2, p + 3,
                                p + 4, p + 5, p + 6);
    }
    return sql;
}

/* Allocates a statement's parameter arrays for np parameters: 0, or -1 when out of memory. */
static int stmt_alloc(outbox_wstmt_t *st, size_t np) {
    st->nparams = (int)np;
    st->values = calloc(np, sizeof(*st->values));
    st->lengths = calloc(np, sizeof(*st->lengths));
    st->formats = calloc(np, sizeof(*st->formats));
    return st->values && st->lengths && st->formats ? 0 : -1;
}

/* The multi-row INSERT of n rows. */
static int insert_stmt(outbox_t *ob, const outbox_message_t *const *ms, const row_t *rows, size_t n,
                       outbox_wstmt_t *st) {
    if (stmt_alloc(st, n * COLS_PER_ROW) || !(st->sql = insert_sql(ob->schema_q, n)))
        return -1;
    for (size_t i = 0; i < n; i++) {
        const outbox_message_t *m = ms[i];
        size_t p = i * COLS_PER_ROW;
        st->values[p] = (const char *)rows[i].uuid;
        st->values[p + 1] = m->destination;
        st->values[p + 2] = m->key_len ? (const char *)m->key : NULL; /* NULL = no key */
        st->values[p + 3] = m->type;
        st->values[p + 4] = rows[i].env;
        st->values[p + 5] = (const char *)&rows[i].created;
        static const int fmt[COLS_PER_ROW] = {1, 0, 1, 0, 1, 1};
        for (size_t k = 0; k < COLS_PER_ROW; k++)
            st->formats[p + k] = fmt[k];
        st->lengths[p] = 16;
        st->lengths[p + 2] = (int)m->key_len;
        st->lengths[p + 4] = (int)rows[i].env_len;
        st->lengths[p + 5] = 8;
    }
    return 0;
}

static char *put_be32(char *p, uint32_t v) {
    v = htobe32(v);
    memcpy(p, &v, 4);
    return p + 4;
}

/* pg_logical_emit_message of n envelopes with ob's prefix: one message alone, several through a
 * bytea[] in PostgreSQL's binary array format (array_recv: ndim, has-null flag, element type,
 * then per dimension its size and lower bound, then per element its length and bytes). */
static int emit_stmt(outbox_t *ob, const row_t *rows, size_t n, outbox_wstmt_t *st) {
    if (stmt_alloc(st, 2))
        return -1;
    st->values[0] = ob->wal_prefix;
    st->formats[1] = 1;
    if (n == 1) {
        st->sql = outbox_strdup(wal_one_sql);
        st->types = wal_one_types;
        st->values[1] = rows[0].env;
        st->lengths[1] = (int)rows[0].env_len;
        return st->sql ? 0 : -1;
    }
    size_t len = 20;
    for (size_t i = 0; i < n; i++)
        len += 4 + rows[i].env_len;
    st->sql = outbox_strdup(wal_many_sql);
    st->types = wal_many_types;
    if (!st->sql || !(st->arr = malloc(len)))
        return -1;
    char *p = put_be32(st->arr, 1);
    p = put_be32(p, 0);
    p = put_be32(p, BYTEAOID);
    p = put_be32(p, (uint32_t)n);
    p = put_be32(p, 1);
    for (size_t i = 0; i < n; i++) {
        p = put_be32(p, (uint32_t)rows[i].env_len);
        memcpy(p, rows[i].env, rows[i].env_len);
        p += rows[i].env_len;
    }
    st->values[1] = st->arr;
    st->lengths[1] = (int)len;
    return 0;
}

void outbox_write_free(outbox_write_t *w) {
    for (size_t i = 0; w->rows && i < w->n; i++)
        free(w->rows[i].env);
    for (size_t i = 0; w->stmts && i < w->nstmts; i++) {
        outbox_wstmt_t *st = &w->stmts[i];
        free(st->sql);
        free(st->values);
        free(st->lengths);
        free(st->formats);
        free(st->arr);
    }
    free(w->rows);
    free(w->stmts);
    memset(w, 0, sizeof(*w));
}

outbox_err_t outbox_write_build(outbox_t *ob, const outbox_message_t *const *ms, size_t n, const char *fn,
                                outbox_write_t *w) {
    memset(w, 0, sizeof(*w));
    w->what = ob->wal ? "emit the outbox messages (pg_logical_emit_message)" : "insert into the outbox";
    outbox_err_t err = OUTBOX_OK;
    /* One statement per message at most. */
    if (!(w->rows = calloc(n, sizeof(*w->rows))) || !(w->stmts = calloc(n, sizeof(*w->stmts)))) {
        outbox_write_free(w);
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    }
    w->n = n;
    /* Encode and check everything first: a bad message refuses the batch before any write. */
    for (size_t i = 0; !err && i < n; i++)
        err = encode_row(ob, ms[i], i, fn, &w->rows[i]);
    for (size_t off = 0, k; !err && off < n; off += k) {
        size_t bytes = w->rows[off].env_len;
        for (k = 1; off + k < n && k < ROWS_PER_INSERT &&
                    bytes + w->rows[off + k].env_len <= BYTES_PER_STATEMENT; k++)
            bytes += w->rows[off + k].env_len;
        outbox_wstmt_t *st = &w->stmts[w->nstmts++];
        if (ob->wal ? emit_stmt(ob, w->rows + off, k, st) : insert_stmt(ob, ms + off, w->rows + off, k, st))
            err = outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    }
    if (err)
        outbox_write_free(w);
    return err;
}

int outbox_write_res_ok(const PGresult *res) {
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static outbox_err_t send_many(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                              size_t n, const char *fn) {
    outbox_err_t err = check_conn(ob, conn, fn);
    if (err)
        return err;
    outbox_write_t w;
    if ((err = outbox_write_build(ob, ms, n, fn, &w)))
        return err;
    for (size_t i = 0; !err && i < w.nstmts; i++) {
        const outbox_wstmt_t *st = &w.stmts[i];
        PGresult *res = PQexecParams(conn, st->sql, st->nparams, st->types, st->values, st->lengths,
                                     st->formats, 0);
        if (!outbox_write_res_ok(res))
            err = outbox_seterr_pg(ob, conn, res, w.what);
        PQclear(res);
    }
    outbox_write_free(&w);
    if (!err)
        ob->errstr[0] = '\0';
    return err;
}

outbox_err_t outbox_send(outbox_t *ob, PGconn *conn, const outbox_message_t *m) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!m)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "outbox_send: message is NULL; create one with outbox_message_new()");
    return send_many(ob, conn, &m, 1, "outbox_send");
}

outbox_err_t outbox_send_batch(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                               size_t n) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!ms && n)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "outbox_send_batch: ms is NULL but n is %zu", n);
    if (n == 0)
        return OUTBOX_OK;
    if (n > PTRDIFF_MAX / sizeof(row_t)) /* no such array: a negative count converted to size_t */
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "outbox_send_batch: n is %zu, more messages than memory can hold "
                             "(a negative count?); nothing was written", n);
    return send_many(ob, conn, ms, n, "outbox_send_batch");
}
