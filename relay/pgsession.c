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
/* While PostgreSQL stays unreachable, a reminder at most this often (the change itself is logged
 * at once). */
#define REMIND_EVERY_MS 30000

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

/* libpq's notices ("WARNING: terminating connection due to ...") as one log line each. */
static void on_notice(void *arg, const char *message) {
    const relay_t *r = arg;
    char msg[512];
    outbox_log(r->conf, 4, FAC, "msg=\"PostgreSQL notice\" notice=\"%s\"",
               outbox_logfmt_value(message, msg, sizeof(msg)));
}

PGconn *relay_connect_quiet(relay_t *r, char *err, size_t err_size) {
    int64_t stmt_ms = outbox_conf_int(r->conf, "relay.statement.timeout.ms");
    outbox_pg_limits_t lim = limits(r, 0);
    /* The relay's own pid and host ride along, so that `status` can name the leader process. */
    char app[128], host[64] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(app, sizeof(app), "%s pid=%d host=%s", outbox_conf_str(r->conf, "relay.application.name"),
             (int)getpid(), *host ? host : "unknown");
    PGconn *pg = outbox_pg_connect(r->conninfo, app, &lim, err, err_size);
    if (!pg)
        return NULL; /* libpq's message names host and port but never the password */
    PQsetNoticeProcessor(pg, on_notice, r);
    char sql[256];
    /* A lost delete only causes a re-send, never a loss: the relay's commits need not wait for
     * the WAL flush. */
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld; SET synchronous_commit = off",
             (long long)stmt_ms);
    char why[512];
    PGresult *res = outbox_pg_exec_simple(pg, &lim, sql, why, sizeof(why));
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        outbox_snprintf(err, err_size, "cannot apply session settings: %s",
                        res ? PQresultErrorMessage(res) : why);
        PQclear(res);
        PQfinish(pg);
        return NULL;
    }
    PQclear(res);
    return pg;
}

PGconn *relay_connect(relay_t *r) {
    char err[512], msg[512];
    PGconn *pg = relay_connect_quiet(r, err, sizeof(err));
    if (!pg)
        outbox_log(r->conf, 3, FAC, "msg=\"cannot connect to PostgreSQL\" error=\"%s\"",
                   outbox_logfmt_value(err, msg, sizeof(msg)));
    return pg;
}

const char *relay_setup_hint(const relay_t *r, const char *sqlstate, char *out, size_t size) {
    if (!sqlstate)
        *out = '\0';
    else if (!strcmp(sqlstate, "42P01") || !strcmp(sqlstate, "3F000"))
        outbox_snprintf(out, size, "schema %s is not migrated: run outbox-relay migrate as its owner, "
                        "or check outbox.schema", r->schema_q);
    else if (!strcmp(sqlstate, "42501"))
        outbox_snprintf(out, size, "the relay's role lacks a privilege on schema %s: see outbox-relay "
                        "grants", r->schema_q);
    else
        *out = '\0';
    return out;
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
static bool prepare_statements(relay_t *r, const char *const *stmts, char *what, size_t what_size,
                               char *err, size_t err_size) {
    for (int i = 0; stmts[i]; i += 2) {
        PGresult *res = outbox_pg_prepare(r->session.pg, &r->session.stmt_lim, stmts[i],
                                          stmts[i + 1], err, err_size);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok) {
            /* A schema never migrated, a typo in outbox.schema, a missing grant: say what to do. */
            char hint[256];
            relay_setup_hint(r, res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL, hint, sizeof(hint));
            outbox_snprintf(what, what_size, "cannot prepare the relay's statements%s%s", *hint ? ": " : "",
                            hint);
            if (res)
                outbox_snprintf(err, err_size, "%s", PQresultErrorMessage(res));
            PQfinish(r->session.pg);
            r->session.pg = NULL;
            atomic_store(&r->metrics.pg_ok, 0);
        }
        PQclear(res);
        if (!ok)
            return false;
    }
    return true;
}

/* Whether the schema is at the version this relay was built for: an older one lacks columns
 * its statements use.  On false, what and err say why and the session is closed. */
static bool schema_current(relay_t *r, char *what, size_t what_size, char *err, size_t err_size) {
    char sql[256], hint[256];
    snprintf(sql, sizeof(sql), "SELECT coalesce(max(version), 0) FROM %s.schema_version", r->schema_q);
    PGresult *res = outbox_pg_exec(r->session.pg, &r->session.stmt_lim, sql, 0, NULL, NULL, NULL, 0, err,
                                   err_size);
    int version = PQresultStatus(res) == PGRES_TUPLES_OK ? atoi(PQgetvalue(res, 0, 0)) : -1;
    if (version < 0) {
        relay_setup_hint(r, res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL, hint, sizeof(hint));
        outbox_snprintf(what, what_size, "cannot read the schema's version%s%s", *hint ? ": " : "", hint);
        if (res)
            outbox_snprintf(err, err_size, "%s", PQresultErrorMessage(res));
    } else if (version < OUTBOX_SCHEMA_VERSION) {
        outbox_snprintf(what, what_size, "schema %s is at version %d, this relay needs %d: run "
                        "outbox-relay migrate as its owner", r->schema_q, version, OUTBOX_SCHEMA_VERSION);
        outbox_snprintf(err, err_size, "schema version %d < %d", version, OUTBOX_SCHEMA_VERSION);
    }
    PQclear(res);
    if (version >= OUTBOX_SCHEMA_VERSION)
        return true;
    PQfinish(r->session.pg);
    r->session.pg = NULL;
    atomic_store(&r->metrics.pg_ok, 0);
    return false;
}

/* A failed connect or setup: logged when it starts and then every REMIND_EVERY_MS, not at every
 * attempt; then the backoff. */
static void session_failed(relay_t *r, const char *what, const char *err) {
    relay_session_t *s = &r->session;
    int64_t now = outbox_mono_ms();
    char msg[512];
    if (!s->down_since_ms || now >= s->next_remind_ms) {
        outbox_log(r->conf, 3, FAC, "msg=\"%s%s\" down_s=%lld retry_ms=%lld error=\"%s\"",
                   s->down_since_ms ? "still: " : "", what,
                   (long long)(s->down_since_ms ? (now - s->down_since_ms) / 1000 : 0),
                   (long long)s->backoff_ms, outbox_logfmt_value(err, msg, sizeof(msg)));
        s->next_remind_ms = now + REMIND_EVERY_MS;
    }
    if (!s->down_since_ms)
        s->down_since_ms = now;
    relay_sleep(r, s->backoff_ms);
    s->backoff_ms = backoff_next(s->backoff_ms, r->set.backoff_max_ms);
}

/* Connects and prepares, backing off after any failure of either (a schema that is not there
 * must not cost a session every few milliseconds); true when connected and prepared. */
static bool session_connect(relay_t *r, const char *const *prepare) {
    relay_session_t *s = &r->session;
    char err[512];
    if (s->pg)
        session_drop(r, PQerrorMessage(s->pg));
    s->pg = relay_connect_quiet(r, err, sizeof(err));
    atomic_store(&r->metrics.pg_ok, s->pg != NULL);
    if (!s->pg) {
        session_failed(r, "cannot connect to PostgreSQL", err);
        return false;
    }
    char what[512];
    if (!schema_current(r, what, sizeof(what), err, sizeof(err)) ||
        !prepare_statements(r, prepare, what, sizeof(what), err, sizeof(err))) {
        session_failed(r, what, err);
        return false;
    }
    s->backoff_ms = r->set.backoff_ms;
    if (s->connections++ > 0)
        atomic_fetch_add(&r->metrics.pg_reconnects, 1);
    outbox_log(r->conf, 6, FAC, "msg=\"connected to PostgreSQL\" schema=%s down_s=%lld", r->schema_q,
               (long long)(s->down_since_ms ? (outbox_mono_ms() - s->down_since_ms) / 1000 : 0));
    s->down_since_ms = 0;
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
    /* The server answers within its statement timeout, even if only to cancel; without one, a
     * statement may run as long as it likes. */
    s->stmt_lim = limits(r, r->set.statement_timeout_ms);
    if (r->set.statement_timeout_ms == 0)
        s->stmt_lim.timeout_ms = 0;
}
