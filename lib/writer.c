/*
 * The writer: outbox_send() and outbox_send_batch() insert envelope rows inside the caller's
 * transaction, with every value passed as a parameter (bytea in binary).
 */
#include <stdlib.h>
#include <string.h>
#include <endian.h>

#include "outbox_int.h"

#define COLS_PER_ROW 6
/* 6 parameters a row stays well under the protocol's 65535 parameters per statement. */
#define ROWS_PER_INSERT 5000

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
typedef struct {
    void *env;
    size_t env_len;
    uint8_t uuid[16];   /* binary uuid */
    uint64_t created;   /* binary timestamptz: big-endian microseconds since 2000-01-01 UTC */
} row_t;

/* Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01). */
#define PG_EPOCH_OFFSET_US INT64_C(946684800000000)

static int hexval(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* The id is ours (validated text); send it binary so the server need not parse it. */
static void uuid_bin(const char *text, uint8_t out[16]) {
    for (int i = 0, k = 0; i < 16; i++) {
        if (text[k] == '-')
            k++;
        out[i] = (uint8_t)(hexval(text[k]) << 4 | hexval(text[k + 1]));
        k += 2;
    }
}

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
    uuid_bin(m->id, row->uuid);
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

static outbox_err_t insert_chunk(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                 const row_t *rows, size_t n) {
    size_t np = n * COLS_PER_ROW;
    const char **values = malloc(np * sizeof(*values));
    int *lengths = malloc(np * sizeof(*lengths));
    int *formats = malloc(np * sizeof(*formats));
    char *sql = insert_sql(ob->schema_q, n);
    outbox_err_t err = OUTBOX_OK;
    if (!values || !lengths || !formats || !sql) {
        err = outbox_seterr(ob, OUTBOX_ERR_NOMEM, "outbox_send: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const outbox_message_t *m = ms[i];
        size_t p = i * COLS_PER_ROW;
        values[p] = (const char *)rows[i].uuid;
        values[p + 1] = m->destination;
        values[p + 2] = m->key_len ? (const char *)m->key : NULL; /* NULL = no key */
        values[p + 3] = m->type;
        values[p + 4] = rows[i].env;
        values[p + 5] = (const char *)&rows[i].created;
        static const int fmt[COLS_PER_ROW] = {1, 0, 1, 0, 1, 1};
        for (size_t k = 0; k < COLS_PER_ROW; k++) {
            lengths[p + k] = 0;
            formats[p + k] = fmt[k];
        }
        lengths[p] = 16;
        lengths[p + 2] = (int)m->key_len;
        lengths[p + 4] = (int)rows[i].env_len;
        lengths[p + 5] = 8;
    }
    PGresult *res = PQexecParams(conn, sql, (int)np, NULL, values, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        err = outbox_seterr_pg(ob, conn, res, "insert into the outbox");
    PQclear(res);
done:
    free(values);
    free(lengths);
    free(formats);
    free(sql);
    return err;
}

static outbox_err_t send_many(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                              size_t n, const char *fn) {
    outbox_err_t err = check_conn(ob, conn, fn);
    if (err)
        return err;
    row_t *rows = calloc(n, sizeof(*rows));
    if (!rows)
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    /* Encode and check everything first: a bad message refuses the batch before any write. */
    for (size_t i = 0; !err && i < n; i++)
        err = encode_row(ob, ms[i], i, fn, &rows[i]);
    for (size_t off = 0; !err && off < n; off += ROWS_PER_INSERT) {
        size_t k = n - off < ROWS_PER_INSERT ? n - off : ROWS_PER_INSERT;
        err = insert_chunk(ob, conn, ms + off, rows + off, k);
    }
    for (size_t i = 0; i < n; i++)
        free(rows[i].env);
    free(rows);
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
