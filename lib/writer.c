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

/* One INSERT of n rows: its text and parameters, built once, sent by PQexecParams or in a pipeline. */
typedef struct {
    char *sql;
    const char **values;
    int *lengths;
    int *formats;
    int np;
} insert_t;

static void insert_free(insert_t *st) {
    free(st->values);
    free(st->lengths);
    free(st->formats);
    free(st->sql);
}

static outbox_err_t insert_build(outbox_t *ob, const outbox_message_t *const *ms, const row_t *rows,
                                 size_t n, const char *fn, insert_t *st) {
    size_t np = n * COLS_PER_ROW;
    st->np = (int)np;
    st->values = malloc(np * sizeof(*st->values));
    st->lengths = malloc(np * sizeof(*st->lengths));
    st->formats = malloc(np * sizeof(*st->formats));
    st->sql = insert_sql(ob->schema_q, n);
    if (!st->values || !st->lengths || !st->formats || !st->sql) {
        insert_free(st);
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    }
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
        for (size_t k = 0; k < COLS_PER_ROW; k++) {
            st->lengths[p + k] = 0;
            st->formats[p + k] = fmt[k];
        }
        st->lengths[p] = 16;
        st->lengths[p + 2] = (int)m->key_len;
        st->lengths[p + 4] = (int)rows[i].env_len;
        st->lengths[p + 5] = 8;
    }
    return OUTBOX_OK;
}

static outbox_err_t insert_chunk(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                 const row_t *rows, size_t n, const char *fn) {
    insert_t st;
    outbox_err_t err = insert_build(ob, ms, rows, n, fn, &st);
    if (err)
        return err;
    PGresult *res = PQexecParams(conn, st.sql, st.np, NULL, st.values, st.lengths, st.formats, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        err = outbox_seterr_pg(ob, conn, res, "insert into the outbox");
    PQclear(res);
    insert_free(&st);
    return err;
}

/* Encodes and checks every message first, so that a bad one refuses the batch before any write. */
static outbox_err_t encode_all(outbox_t *ob, const outbox_message_t *const *ms, size_t n,
                               const char *fn, row_t **out) {
    row_t *rows = calloc(n ? n : 1, sizeof(*rows));
    *out = rows;
    if (!rows)
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    outbox_err_t err = OUTBOX_OK;
    for (size_t i = 0; !err && i < n; i++)
        err = encode_row(ob, ms[i], i, fn, &rows[i]);
    return err;
}

static void rows_free(row_t *rows, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(rows[i].env);
    free(rows);
}

static outbox_err_t send_many(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                              size_t n, const char *fn) {
    outbox_err_t err = check_conn(ob, conn, fn);
    if (err)
        return err;
    row_t *rows;
    err = encode_all(ob, ms, n, fn, &rows);
    for (size_t off = 0; !err && off < n; off += ROWS_PER_INSERT) {
        size_t k = n - off < ROWS_PER_INSERT ? n - off : ROWS_PER_INSERT;
        err = insert_chunk(ob, conn, ms + off, rows + off, k, fn);
    }
    if (rows)
        rows_free(rows, n);
    if (!err)
        ob->errstr[0] = '\0';
    return err;
}

/* Reads one pipelined query's results; records the first failure in ob.  Returns the last
 * status seen (PGRES_FATAL_ERROR if none came: the connection is gone). */
static ExecStatusType pipeline_result(outbox_t *ob, PGconn *conn, const char *what, bool *failed,
                                      bool *committed) {
    ExecStatusType last = PGRES_FATAL_ERROR;
    PGresult *res;
    while ((res = PQgetResult(conn))) {
        last = PQresultStatus(res);
        if (last == PGRES_FATAL_ERROR && !*failed) {
            outbox_seterr_pg(ob, conn, res, what);
            *failed = true;
        } else if (last == PGRES_COMMAND_OK && committed) {
            /* COMMIT of a transaction that had failed answers ROLLBACK: not a commit. */
            *committed = !strcmp(PQcmdStatus(res), "COMMIT");
        }
        PQclear(res);
    }
    return last;
}

/* The INSERTs and the COMMIT, sent as one pipeline ending in one Sync: one round trip. */
static outbox_err_t pipeline_commit(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                    const row_t *rows, size_t n, const char *fn) {
    size_t nst = (n + ROWS_PER_INSERT - 1) / ROWS_PER_INSERT;
    insert_t *st = calloc(nst ? nst : 1, sizeof(*st));
    if (!st)
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    /* Build every statement before sending any, so that running out of memory sends nothing. */
    outbox_err_t err = OUTBOX_OK;
    size_t built = 0;
    for (size_t off = 0; !err && off < n; off += ROWS_PER_INSERT, built++) {
        size_t k = n - off < ROWS_PER_INSERT ? n - off : ROWS_PER_INSERT;
        err = insert_build(ob, ms + off, rows + off, k, fn, &st[built]);
    }
    if (err) {
        for (size_t i = 0; i + 1 < built; i++) /* the failed one freed itself */
            insert_free(&st[i]);
        free(st);
        return err;
    }
    if (!PQenterPipelineMode(conn)) {
        for (size_t i = 0; i < nst; i++)
            insert_free(&st[i]);
        free(st);
        return outbox_seterr(ob, OUTBOX_ERR_STATE, "%s: the connection cannot enter pipeline "
                             "mode: %s", fn, PQerrorMessage(conn));
    }
    size_t queued = 0;
    bool sent = true;
    for (size_t i = 0; i < nst; i++) {
        if (sent && PQsendQueryParams(conn, st[i].sql, st[i].np, NULL, st[i].values,
                                      st[i].lengths, st[i].formats, 0))
            queued++;
        else
            sent = false;
        insert_free(&st[i]);
    }
    free(st);
    bool commit_sent = sent && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    bool synced = PQpipelineSync(conn);
    bool failed = false, committed = false;
    if (!sent || !commit_sent) {
        outbox_seterr(ob, OUTBOX_ERR_CONNECTION, "%s: sending to the server failed: %s", fn,
                      PQerrorMessage(conn));
        failed = true;
    }
    for (size_t i = 0; synced && i < queued && PQstatus(conn) == CONNECTION_OK; i++)
        pipeline_result(ob, conn, "insert into the outbox", &failed, NULL);
    if (synced && commit_sent && PQstatus(conn) == CONNECTION_OK)
        pipeline_result(ob, conn, "COMMIT", &failed, &committed);
    if (synced && PQstatus(conn) == CONNECTION_OK) {
        PGresult *res = PQgetResult(conn); /* the Sync's */
        PQclear(res);
    }
    PQexitPipelineMode(conn);
    if (committed) {
        ob->errstr[0] = '\0';
        return OUTBOX_OK;
    }
    if (commit_sent && PQstatus(conn) != CONNECTION_OK) {
        char cause[256]; /* the error recorded while reading, or libpq's */
        outbox_snprintf(cause, sizeof(cause), "%s", failed ? ob->errstr : PQerrorMessage(conn));
        cause[strcspn(cause, "\n")] = '\0';
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION,
                             "%s: the connection was lost after COMMIT was sent, so whether the "
                             "transaction committed is unknown (%s); reconnect and check for "
                             "your own changes before retrying", fn, cause);
    }
    if (!failed) /* COMMIT answered ROLLBACK: the transaction had failed without telling us */
        return outbox_seterr(ob, OUTBOX_ERR_TRANSACTION_ABORTED,
                             "%s: the server rolled the transaction back instead of committing "
                             "it; nothing was committed", fn);
    return ob->err;
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

outbox_err_t outbox_send_commit(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms,
                                size_t n) {
    static const char fn[] = "outbox_send_commit";
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!ms && n)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, "%s: ms is NULL but n is %zu", fn, n);
    if (n > PTRDIFF_MAX / sizeof(row_t))
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "%s: n is %zu, more messages than memory can hold (a negative "
                             "count?); nothing was written", fn, n);
    outbox_err_t err = check_conn(ob, conn, fn);
    if (err && err != OUTBOX_ERR_NOT_IN_TRANSACTION)
        return err;
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) /* whatever writer.allow.autocommit says */
        return outbox_seterr(ob, OUTBOX_ERR_NOT_IN_TRANSACTION,
                             "%s: the connection is not inside a transaction block, so there is "
                             "no transaction to commit; run BEGIN first, or use outbox_send() "
                             "with writer.allow.autocommit=true; nothing was written", fn);
    row_t *rows;
    err = encode_all(ob, ms, n, fn, &rows);
    if (!err)
        err = pipeline_commit(ob, conn, ms, rows, n, fn);
    if (rows)
        rows_free(rows, n);
    return err;
}
