/*
 * Shrinking the outbox's primary-key index after a large backlog.
 *
 * VACUUM returns the drained table to its empty size, but a B-tree file never shrinks: after a
 * backlog of millions of rows its index keeps hundreds of megabytes of empty pages.  Once the
 * leader has drained the table and the index is larger than relay.reindex.min.bytes, it rebuilds
 * the index with REINDEX INDEX CONCURRENTLY on a session of its own, without waiting for it:
 * writers and the relay's claims and deletes go on meanwhile (the statement takes no lock that
 * blocks them).
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define FAC RELAY_FAC

/* The primary-key index of the outbox table: its name (as SQL) and size, and the invalid
 * indexes a failed REINDEX CONCURRENTLY left on the table.  False when it cannot be read. */
static bool index_state(relay_t *r, PGconn *pg, char *name, size_t name_size, long long *bytes,
                        char *invalid, size_t invalid_size) {
    char table[300];
    snprintf(table, sizeof(table), "%s.messages", r->schema_q);
    const char *p[1] = {table};
    char err[512];
    PGresult *res = outbox_pg_exec(pg, &r->session.stmt_lim,
                                 "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid),"
                                 " (SELECT string_agg(v.indexrelid::regclass::text, ', ') FROM pg_index v"
                                 "  WHERE v.indrelid = i.indrelid AND NOT v.indisvalid)"
                                 " FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisprimary",
                                 1, p, NULL, NULL, 0, err, sizeof(err));
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        snprintf(name, name_size, "%s", PQgetvalue(res, 0, 0));
        *bytes = atoll(PQgetvalue(res, 0, 1));
        snprintf(invalid, invalid_size, "%s", PQgetvalue(res, 0, 2));
    } else {
        char msg[512];
        outbox_log(r->conf, 4, FAC, "msg=\"cannot read the outbox index's size\" error=\"%s\"",
                   outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg)));
    }
    PQclear(res);
    return ok;
}

/* The rebuild has ended: says how, and closes its session. */
static void reindex_finish(relay_t *r) {
    PGconn *pg = r->reindex.pg;
    char why[512] = "", state[8] = "", err[512];
    PGresult *res = outbox_pg_result(pg, &r->session.stmt_lim, err, sizeof(err));
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, why, sizeof(why));
        const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        snprintf(state, sizeof(state), "%s", st ? st : "");
    }
    PQclear(res);
    if (!*why && PQstatus(pg) != CONNECTION_OK)
        outbox_logfmt_value(PQerrorMessage(pg), why, sizeof(why));
    char name[512], invalid[512];
    long long after = -1;
    if (!*why && index_state(r, pg, name, sizeof(name), &after, invalid, sizeof(invalid))) {
        outbox_log(r->conf, 5, FAC, "msg=\"rebuilt the outbox index\" index=%s bytes_before=%lld "
                   "bytes_after=%lld", name, r->reindex.before, after);
    } else if (*why) {
        /* Not the owner: the next attempt would fail alike.  Say what to do, once. */
        bool denied = strcmp(state, "42501") == 0;
        outbox_log(r->conf, 4, FAC, "msg=\"rebuilding the outbox index failed%s\" error=\"%s\"",
                   denied ? "; not trying again: run the relay as the table's owner, or set "
                            "relay.reindex.min.bytes=0 and REINDEX it yourself" : "", why);
        if (denied)
            r->reindex.off = true;
    }
    PQfinish(pg);
    r->reindex.pg = NULL;
}

void relay_reindex_poll(relay_t *r, PGconn *leader, bool drained) {
    if (r->reindex.pg) {
        if (PQconsumeInput(r->reindex.pg) && PQisBusy(r->reindex.pg))
            return;
        reindex_finish(r);
        return;
    }
    /* Called at every turn of the loop: the cheap tests first. */
    int64_t now = outbox_mono_ms();
    if (!drained || r->reindex.off || !leader || now < r->reindex.next_ms)
        return;
    long long min = r->set.reindex_min_bytes;
    if (min == 0)
        return;
    r->reindex.next_ms = now + r->set.reindex_check_ms;
    char name[512], invalid[512];
    long long bytes;
    if (!index_state(r, leader, name, sizeof(name), &bytes, invalid, sizeof(invalid)) || bytes <= min)
        return;
    if (*invalid) {
        /* A rebuild that failed half-way left an invalid copy, which every write still updates;
         * another attempt would only add one more. */
        outbox_log(r->conf, 4, FAC, "msg=\"not rebuilding the outbox index: a failed rebuild left "
                   "invalid indexes; drop them with DROP INDEX CONCURRENTLY\" index=%s bytes=%lld "
                   "invalid=\"%s\"", name, bytes, invalid);
        r->reindex.off = true;
        return;
    }
    PGconn *pg = relay_connect(r);
    if (!pg)
        return;
    /* No timeout: a REINDEX CONCURRENTLY cancelled half-way leaves an invalid index behind. */
    char err[512];
    PQclear(outbox_pg_exec_simple(pg, &r->session.stmt_lim, "SET statement_timeout = 0", err, sizeof(err)));
    char sql[600];
    snprintf(sql, sizeof(sql), "REINDEX INDEX CONCURRENTLY %s", name);
    if (!PQsendQuery(pg, sql)) {
        char msg[512];
        outbox_log(r->conf, 4, FAC, "msg=\"cannot start rebuilding the outbox index\" error=\"%s\"",
                   outbox_logfmt_value(PQerrorMessage(pg), msg, sizeof(msg)));
        PQfinish(pg);
        return;
    }
    r->reindex.pg = pg;
    r->reindex.before = bytes;
    outbox_log(r->conf, 5, FAC, "msg=\"rebuilding the outbox index: the table is drained and the "
               "index larger than relay.reindex.min.bytes\" index=%s bytes=%lld min_bytes=%lld",
               name, bytes, min);
}

void relay_reindex_stop(relay_t *r) {
    if (!r->reindex.pg)
        return;
    if (PQconsumeInput(r->reindex.pg) && PQisBusy(r->reindex.pg)) {
        /* Cancelling it would leave an invalid index: the server finishes it on its own. */
        outbox_log(r->conf, 6, FAC, "msg=\"leaving the outbox index's rebuild to finish on the "
                   "server\"");
        PQfinish(r->reindex.pg);
        r->reindex.pg = NULL;
        return;
    }
    reindex_finish(r);
}
