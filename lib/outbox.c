/*
 * The writer handle, error codes and messages, and the version.
 */
#include <stdlib.h>
#include <string.h>

#include "outbox_int.h"

#define STR2(x) #x
#define STR(x) STR2(x)

const char *outbox_version_str(void) {
    return STR(OUTBOX_VERSION_MAJOR) "." STR(OUTBOX_VERSION_MINOR) "." STR(OUTBOX_VERSION_PATCH);
}

const char *outbox_err2str(outbox_err_t err) {
    switch (err) {
    case OUTBOX_OK: return "success";
    case OUTBOX_ERR_INVALID_ARG: return "invalid argument";
    case OUTBOX_ERR_NOT_IN_TRANSACTION: return "not in a transaction";
    case OUTBOX_ERR_TRANSACTION_ABORTED: return "transaction aborted";
    case OUTBOX_ERR_INVALID_DESTINATION: return "invalid destination";
    case OUTBOX_ERR_MSG_TOO_LARGE: return "message too large";
    case OUTBOX_ERR_CONNECTION: return "connection failure";
    case OUTBOX_ERR_PG: return "PostgreSQL error";
    case OUTBOX_ERR_SCHEMA: return "outbox schema missing or outdated";
    case OUTBOX_ERR_DECODE: return "invalid envelope";
    case OUTBOX_ERR_NOMEM: return "out of memory";
    case OUTBOX_ERR_STATE: return "invalid state";
    case OUTBOX_ERR_KAFKA: return "Kafka error";
    case OUTBOX_ERR_SCHEMA_TOO_NEW: return "outbox schema newer than this library";
    case OUTBOX_ERR_COMMIT_UNKNOWN: return "commit outcome unknown";
    }
    return "unknown error";
}

int outbox_err_is_retriable(outbox_err_t err) {
    return err == OUTBOX_ERR_CONNECTION || err == OUTBOX_ERR_TRANSACTION_ABORTED;
}

int outbox_sqlstate_retriable(const char *s) {
    return s && (!strcmp(s, "40001") || !strcmp(s, "40P01") || !strcmp(s, "55P03") ||
                 !strcmp(s, "57014") || !strcmp(s, "57P01") || !strncmp(s, "08", 2));
}

outbox_t *outbox_new(outbox_conf_t *conf, char *errstr, size_t errstr_size) {
    outbox_conf_t *own = NULL;
    if (!conf && !(conf = own = outbox_conf_new()))
        goto nomem;
    outbox_t *ob = calloc(1, sizeof(*ob));
    if (!ob)
        goto nomem;
    if (!(ob->schema_q = outbox_quote_ident(outbox_conf_str(conf, "outbox.schema")))) {
        free(ob);
        goto nomem;
    }
    ob->conf = conf;
    ob->wal = outbox_conf_wal(conf);
    outbox_wal_prefix(outbox_conf_str(conf, "outbox.schema"), ob->wal_prefix, sizeof(ob->wal_prefix));
    return ob;
nomem:
    outbox_conf_destroy(own);
    outbox_snprintf(errstr, errstr_size, "outbox_new: out of memory");
    return NULL;
}

void outbox_destroy(outbox_t *ob) {
    if (!ob)
        return;
    outbox_conf_destroy(ob->conf);
    free(ob->schema_q);
    free(ob);
}

const char *outbox_errmsg(const outbox_t *ob) {
    return ob ? ob->errstr : "outbox handle is NULL";
}

int outbox_errmsg_retriable(const outbox_t *ob) {
    return ob && ob->errstr[0] &&
           (outbox_err_is_retriable(ob->err) || outbox_sqlstate_retriable(ob->sqlstate));
}

outbox_err_t outbox_seterr(outbox_t *ob, outbox_err_t err, const char *fmt, ...) {
    if (!ob)
        return err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ob->errstr, sizeof(ob->errstr), fmt, ap);
    va_end(ap);
    ob->sqlstate[0] = '\0';
    ob->err = err;
    return err;
}

outbox_err_t outbox_seterr_pg(outbox_t *ob, PGconn *conn, const PGresult *res, const char *what) {
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : "";
    if (!msg || !*msg)
        msg = PQerrorMessage(conn);
    outbox_err_t err = OUTBOX_ERR_PG;
    if (PQstatus(conn) != CONNECTION_OK || (state && !strncmp(state, "08", 2)))
        err = OUTBOX_ERR_CONNECTION;
    else if (state && (!strcmp(state, "3F000") || !strcmp(state, "42P01")))
        err = OUTBOX_ERR_SCHEMA;
    else if (state && !strcmp(state, "25P02")) /* the caller's transaction had already failed */
        err = OUTBOX_ERR_TRANSACTION_ABORTED;
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    if (err == OUTBOX_ERR_SCHEMA)
        outbox_seterr(ob, err, "%s failed: %.*s (schema %s not migrated: call outbox_migrate() or "
                      "run outbox-relay migrate)", what, (int)n, msg, ob->schema_q);
    else
        outbox_seterr(ob, err, "%s failed: %.*s%s%s%s", what, (int)n, msg, state ? " (SQLSTATE " : "",
                      state ? state : "", state ? ")" : "");
    if (state)
        outbox_snprintf(ob->sqlstate, sizeof(ob->sqlstate), "%s", state);
    return err;
}
