/*
 * pgsession.c: the relay's PostgreSQL session: connecting with bounded waits, the leadership
 * lock, prepared statements, and what a failed or silent statement does to the session.
 *
 * Claims run on the very session that holds the advisory lock: if that session dies, the next
 * claim fails, so a relay that lost leadership cannot publish anything new.  Every wait on the
 * server has a deadline (lib/pgio.c): a server that goes silent without closing the connection
 * costs the session, never the relay.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

#define FAC RELAY_FAC
/* A standby logs "another relay holds the lock" once every so many attempts, not every retry. */
#define STANDBY_LOG_EVERY 20
/* After a stop request, a wait on PostgreSQL ends within this much more. */
#define STOP_GRACE_MS 2000
/* Sleeps are cut into slices of this length so that a stop request ends them. */
#define SLEEP_SLICE_MS 100

void relay_lock_name(const relay_t *r, char *out, size_t size) {
    outbox_snprintf(out, size, "liboutbox.relay:%s", r->schema);
}

int64_t backoff_next(int64_t cur, int64_t max) {
    return cur * 2 > max ? max : cur * 2;
}

void relay_sleep(relay_t *r, int64_t ms) {
    int64_t end = outbox_mono_ms() + ms;
    for (int64_t now = outbox_mono_ms(); now < end && !*r->stop; now = outbox_mono_ms()) {
        int slice = (int)(end - now < SLEEP_SLICE_MS ? end - now : SLEEP_SLICE_MS);
        if (r->prod.rk)
            producer_poll(r, slice); /* serve delivery reports while waiting */
        else
            usleep((useconds_t)slice * 1000);
    }
}

/* The limits of a wait: pg.timeout.ms beyond the statement timeout, cut short after a stop. */
static outbox_pg_limits_t limits(const relay_t *r, int64_t extra_ms) {
    int64_t t = outbox_conf_int(r->conf, "pg.timeout.ms");
    outbox_pg_limits_t lim = {t + extra_ms, r->stop, STOP_GRACE_MS};
    return lim;
}

PGconn *relay_connect(relay_t *r) {
    char err[512], msg[512];
    int64_t stmt_ms = outbox_conf_int(r->conf, "relay.statement.timeout.ms");
    outbox_pg_limits_t lim = limits(r, 0);
    PGconn *pg = outbox_pg_connect(r->conninfo, outbox_conf_str(r->conf, "relay.application.name"),
                                   &lim, err, sizeof(err));
    if (!pg) {
        /* libpq's message names host and port but never the password. */
        outbox_log(r->conf, 3, FAC, "msg=\"cannot connect to PostgreSQL\" error=\"%s\"",
                   outbox_logfmt_value(err, msg, sizeof(msg)));
        return NULL;
    }
    char sql[256];
    /* A lost delete only causes a re-send, never a loss: the relay's commits need not wait for
     * the WAL flush. */
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld; SET synchronous_commit = off",
             (long long)stmt_ms);
    PGresult *res = outbox_pg_exec_simple(pg, &lim, sql, err, sizeof(err));
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        outbox_log(r->conf, 3, FAC, "msg=\"cannot apply session settings\" error=\"%s\"",
                   outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg)));
        PQclear(res);
        PQfinish(pg);
        return NULL;
    }
    PQclear(res);
    return pg;
}

bool session_lost(const relay_t *r) {
    return !r->session.pg || PQstatus(r->session.pg) != CONNECTION_OK;
}

void session_drop(relay_t *r, const char *why) {
    relay_session_t *s = &r->session;
    char msg[512];
    atomic_store(&r->metrics.pg_ok, 0);
    atomic_store(&r->metrics.is_leader, 0);
    r->claim.sent = false; /* its result goes with the session */
    PQclear(r->claim.res);
    r->claim.res = NULL;
    if (s->pg) {
        outbox_log(r->conf, 3, FAC, "msg=\"lost the PostgreSQL session\" leader=%s error=\"%s\"",
                   s->leader ? "true" : "false", outbox_logfmt_value(why, msg, sizeof(msg)));
        PQfinish(s->pg);
        s->pg = NULL;
    }
    s->leader = false;
}

/* Logs a failed statement; drops the session when the connection is gone or silent (no
 * result). */
static void statement_failed(relay_t *r, PGresult *res, const char *err, const char *what) {
    char msg[512];
    outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg));
    if (!res || session_lost(r)) {
        session_drop(r, msg);
        return;
    }
    outbox_log(r->conf, 3, FAC, "msg=\"%s failed\" error=\"%s\"", what, msg);
}

PGresult *session_result(relay_t *r, ExecStatusType expect, const char *what) {
    char err[512];
    PGresult *res = outbox_pg_result(r->session.pg, &r->session.stmt_lim, err, sizeof(err));
    if (PQresultStatus(res) == expect)
        return res;
    statement_failed(r, res, err, what);
    PQclear(res);
    return NULL;
}

PGresult *session_exec(relay_t *r, const char *stmt, int nparams, const char *const *params,
                       int result_format, ExecStatusType expect, const char *what) {
    if (session_lost(r))
        return NULL;
    if (!PQsendQueryPrepared(r->session.pg, stmt, nparams, params, NULL, NULL, result_format)) {
        statement_failed(r, NULL, PQerrorMessage(r->session.pg), what);
        return NULL;
    }
    return session_result(r, expect, what);
}

/* Prepares the loop's statements on a new session: parsed and planned once, not at every poll
 * (an idle relay polls hundreds of times a second). */
static bool prepare_statements(relay_t *r, const char *const *stmts) {
    char err[512];
    for (int i = 0; stmts[i]; i += 2) {
        PGresult *res = outbox_pg_prepare(r->session.pg, &r->session.stmt_lim, stmts[i],
                                          stmts[i + 1], err, sizeof(err));
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok) {
            statement_failed(r, res, err, "preparing the relay's statements");
            if (r->session.pg)
                session_drop(r, "cannot prepare the relay's statements");
        }
        PQclear(res);
        if (!ok)
            return false;
    }
    return true;
}

/* Connects, backing off after a failure; true when connected and prepared. */
static bool session_connect(relay_t *r, const char *const *prepare) {
    relay_session_t *s = &r->session;
    if (s->pg)
        session_drop(r, PQerrorMessage(s->pg));
    s->pg = relay_connect(r);
    atomic_store(&r->metrics.pg_ok, s->pg != NULL);
    if (!s->pg) {
        relay_sleep(r, s->backoff_ms);
        s->backoff_ms = backoff_next(s->backoff_ms, r->set.backoff_max_ms);
        return false;
    }
    s->backoff_ms = r->set.backoff_ms;
    if (!prepare_statements(r, prepare))
        return false;
    if (s->connections++ > 0)
        atomic_fetch_add(&r->metrics.pg_reconnects, 1);
    outbox_log(r->conf, 6, FAC, "msg=\"connected to PostgreSQL\" schema=%s", r->schema_q);
    return true;
}

bool session_ensure_leader(relay_t *r, const char *const *prepare) {
    relay_session_t *s = &r->session;
    if (s->leader && !session_lost(r))
        return true;
    if (session_lost(r) && !session_connect(r, prepare))
        return false;
    char lock[160];
    relay_lock_name(r, lock, sizeof(lock));
    const char *p[1] = {lock}, *sql = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
    char err[512];
    PGresult *res = outbox_pg_exec(s->pg, &s->stmt_lim, sql, 1, p, NULL, NULL, 0, err, sizeof(err));
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        statement_failed(r, res, err, "taking the leadership lock");
        PQclear(res);
        return false;
    }
    s->leader = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    atomic_store(&r->metrics.is_leader, s->leader);
    if (s->leader) {
        outbox_log(r->conf, 5, FAC, "msg=\"became the leader\" schema=%s pid=%d", r->schema_q,
                   PQbackendPID(s->pg));
        return true;
    }
    if (s->standby_waits++ % STANDBY_LOG_EVERY == 0)
        outbox_log(r->conf, 6, FAC, "msg=\"standby: another relay holds the lock\" schema=%s",
                   r->schema_q);
    relay_sleep(r, r->set.lock_retry_ms);
    return false;
}

void session_init(relay_t *r) {
    relay_session_t *s = &r->session;
    s->backoff_ms = r->set.backoff_ms;
    s->connect_lim = limits(r, 0);
    /* The server answers within its statement timeout, even if only to cancel; without one, a
     * statement may run as long as it likes. */
    s->stmt_lim = limits(r, r->set.statement_timeout_ms);
    if (r->set.statement_timeout_ms == 0)
        s->stmt_lim.timeout_ms = 0;
}
