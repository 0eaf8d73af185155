/*
 * outbox_send_commit(): the messages' statements and the caller's COMMIT sent together in libpq
 * pipeline mode, one round trip, and the COMMIT's outcome returned.  The one library function
 * that ends the caller's transaction (CONVENTIONS 5).
 */
#include <stdlib.h>
#include <string.h>

#include "outbox_int.h"

#define FN "outbox_send_commit"

/* The checks made before anything is sent; conn is left as it was when one fails. */
static outbox_err_t check_conn(outbox_t *ob, PGconn *conn) {
    if (!conn)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             FN ": conn is NULL; pass the PGconn whose transaction to commit");
    if (PQstatus(conn) != CONNECTION_OK)
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION, FN ": the connection is bad: %s",
                             PQerrorMessage(conn));
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return outbox_seterr(ob, OUTBOX_ERR_STATE,
                             FN ": the connection is in pipeline mode; collect its results and call "
                             "PQexitPipelineMode() first (outbox_send_commit runs its own pipeline); "
                             "nothing was sent");
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR: /* ended below: its COMMIT answers ROLLBACK */
        return OUTBOX_OK;
    case PQTRANS_IDLE:
        /* writer.allow.autocommit does not apply: there is no transaction of the caller's for the
         * messages to be atomic with, and none for this function to commit. */
        return outbox_seterr(ob, OUTBOX_ERR_NOT_IN_TRANSACTION,
                             FN ": the connection is not inside a transaction block, so there is "
                             "nothing to commit the messages with; run BEGIN and your statements "
                             "first (writer.allow.autocommit does not apply here: use "
                             "outbox_send_batch() to write messages on their own); nothing was sent");
    case PQTRANS_ACTIVE:
        return outbox_seterr(ob, OUTBOX_ERR_STATE,
                             FN ": the connection is busy with another query; collect its results "
                             "first; nothing was sent");
    default:
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION, FN ": the connection's state is unknown");
    }
}

/* Ends a transaction that is still open (failed, or refused before sending) on a healthy conn. */
static void rollback(PGconn *conn) {
    if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
}

/* Appends what happened to the transaction to the handle's message. */
static outbox_err_t tell(outbox_t *ob, outbox_err_t err, const char *what) {
    size_t l = strlen(ob->errstr);
    outbox_snprintf(ob->errstr + l, sizeof(ob->errstr) - l, "; %s", what);
    return err;
}

/* What the pipeline's results said. */
typedef struct {
    size_t queued;        /* statements handed to libpq, COMMIT included */
    bool commit_queued;   /* the COMMIT was handed to libpq: the server may have run it */
    bool commit_answered; /* its result arrived */
    bool committed;       /* ... and it was "COMMIT" */
    bool lost;            /* the connection broke */
    bool stmt_failed;     /* the server refused a statement before the COMMIT: it skipped the COMMIT */
    outbox_err_t err;     /* the first failure recorded in ob, or OK */
} outcome_t;

/* Reads every result up to the pipeline's sync (or the connection's end) into *o. */
static void read_results(outbox_t *ob, PGconn *conn, const outbox_write_t *w, outcome_t *o) {
    size_t q = 0; /* the statement whose results come next; w->nstmts is the COMMIT */
    for (;;) {
        PGresult *res = PQgetResult(conn);
        /* The server's own answers carry a SQLSTATE; libpq's "server closed the connection" does not. */
        bool answer = res && (PQresultStatus(res) != PGRES_FATAL_ERROR ||
                              PQresultErrorField(res, PG_DIAG_SQLSTATE));
        if (!answer && PQstatus(conn) != CONNECTION_OK) {
            if (!o->err)
                o->err = outbox_seterr_pg(ob, conn, res, q < w->nstmts ? w->what : "commit");
            o->lost = true;
            PQclear(res);
            return;
        }
        if (!res) {
            if (++q > o->queued) /* past the last statement with no sync: nothing more will come */
                return;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            return;
        }
        if (q == w->nstmts) {
            o->commit_answered = true;
            const char *tag = PQcmdStatus(res);
            if (st == PGRES_COMMAND_OK && tag && !strcmp(tag, "COMMIT"))
                o->committed = true;
            else if (st == PGRES_COMMAND_OK && !o->err) /* "ROLLBACK": the transaction had failed */
                o->err = outbox_seterr(ob, OUTBOX_ERR_TRANSACTION_ABORTED,
                                       FN ": the transaction had already failed, so COMMIT rolled "
                                       "it back; retry the whole transaction");
            else if (st != PGRES_PIPELINE_ABORTED && !o->err)
                o->err = outbox_seterr_pg(ob, conn, res, "commit");
        } else if (!outbox_write_res_ok(res) && st != PGRES_PIPELINE_ABORTED) {
            o->stmt_failed = true;
            if (!o->err)
                o->err = outbox_seterr_pg(ob, conn, res, w->what);
        }
        PQclear(res);
    }
}

/* Sends w's statements and COMMIT in one pipeline and reads the outcome into *o. */
static void run_pipeline(outbox_t *ob, PGconn *conn, const outbox_write_t *w, outcome_t *o) {
    if (!PQenterPipelineMode(conn)) {
        o->err = outbox_seterr(ob, OUTBOX_ERR_STATE, FN ": cannot enter pipeline mode: %s",
                               PQerrorMessage(conn));
        return;
    }
    bool sent = true;
    for (size_t i = 0; sent && i < w->nstmts; i++) {
        const outbox_wstmt_t *st = &w->stmts[i];
        sent = PQsendQueryParams(conn, st->sql, st->nparams, st->types, st->values, st->lengths,
                                 st->formats, 0);
        o->queued += sent;
    }
    if (sent && (sent = PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))) {
        o->queued++;
        o->commit_queued = true;
    }
    if (sent)
        sent = PQpipelineSync(conn);
    if (!sent && PQstatus(conn) == CONNECTION_OK) {
        /* libpq refused to queue (no COMMIT went out): collect what was queued, then roll back. */
        o->err = outbox_seterr(ob, OUTBOX_ERR_STATE, FN ": libpq refused the pipeline: %s",
                               PQerrorMessage(conn));
        sent = PQpipelineSync(conn);
    }
    if (sent || PQstatus(conn) != CONNECTION_OK)
        read_results(ob, conn, w, o);
    if (PQstatus(conn) == CONNECTION_OK)
        PQexitPipelineMode(conn);
}

outbox_err_t outbox_send_commit(outbox_t *ob, PGconn *conn, const outbox_message_t *const *ms, size_t n) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    outbox_err_t err = check_conn(ob, conn);
    if (err)
        return err;
    /* From here on the transaction ends, whatever happens. */
    outbox_write_t w = {0};
    if (!ms && n)
        err = outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, FN ": ms is NULL but n is %zu", n);
    else if (n > PTRDIFF_MAX / 64) /* no such array: a negative count converted to size_t */
        err = outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                            FN ": n is %zu, more messages than memory can hold (a negative count?)", n);
    else if (n && PQtransactionStatus(conn) == PQTRANS_INTRANS)
        err = outbox_write_build(ob, ms, n, FN, &w);
    if (err) {
        rollback(conn);
        return tell(ob, err, "nothing was sent and the transaction was rolled back");
    }
    outcome_t o = {0};
    run_pipeline(ob, conn, &w, &o);
    outbox_write_free(&w);
    /* A server error that came with the connection's end (e.g. the backend terminated) is, for the
     * caller, a lost connection, as outbox_send() reports it. */
    if (o.err == OUTBOX_ERR_PG && PQstatus(conn) != CONNECTION_OK)
        o.err = ob->err = OUTBOX_ERR_CONNECTION;
    if (o.committed) {
        ob->errstr[0] = '\0';
        return OUTBOX_OK;
    }
    if (o.lost && o.commit_queued && !o.commit_answered && !o.stmt_failed) {
        /* The COMMIT may have run before the connection broke: a retry could send twice. */
        char why[256];
        outbox_snprintf(why, sizeof(why), "%s", PQerrorMessage(conn));
        for (size_t l = strlen(why); l && (why[l - 1] == '\n' || why[l - 1] == ' '); l--)
            why[l - 1] = '\0';
        return outbox_seterr(ob, OUTBOX_ERR_COMMIT_UNKNOWN,
                             FN ": the connection was lost after the COMMIT was sent, so whether the "
                             "transaction committed is unknown (%s); check for its effects on a new "
                             "connection before retrying", why);
    }
    if (!o.err) /* no COMMIT answer and no failure: cannot happen with a sane server */
        o.err = outbox_seterr(ob, OUTBOX_ERR_CONNECTION, FN ": no answer to COMMIT: %s",
                              PQerrorMessage(conn));
    rollback(conn);
    return tell(ob, o.err, o.lost && !o.commit_answered
                               ? "the connection was lost before COMMIT was sent: nothing was committed"
                               : "nothing was committed and the transaction is over");
}
