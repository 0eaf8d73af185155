/*
 * pgio.c: PostgreSQL calls that never wait past a deadline, for the relay's and the consumer's own
 * sessions.  A server behind a hung proxy or a network partition keeps the connection open and
 * says nothing: libpq's blocking calls would wait forever, and TCP keepalives do not help when a
 * proxy's kernel still acknowledges every packet.  Only a deadline on each wait finds it.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "outbox_int.h"

/* Waits in slices of at most this long, so that a stop request is seen promptly. */
#define PGIO_SLICE_MS 100

/* Connection keywords that bound what the kernel waits for: they are written before the user's
 * conninfo, which therefore overrides any of them.  Keepalives find a peer that vanished while
 * the session idles (about 10 + 3 x 5 s); tcp_user_timeout, data left unacknowledged. */
static const char *const bound_keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                                         "keepalives_interval", "keepalives_count",
                                         "tcp_user_timeout"};
#define PGIO_KEEPALIVES_IDLE "10"
#define PGIO_KEEPALIVES_INTERVAL "5"
#define PGIO_KEEPALIVES_COUNT "3"

/* The deadline of a wait that starts now; a stop request shortens it to the grace period. */
static int64_t deadline_of(const outbox_pg_limits_t *lim, int64_t start) {
    return lim->timeout_ms > 0 ? start + lim->timeout_ms : INT64_MAX;
}

static int64_t deadline_update(const outbox_pg_limits_t *lim, int64_t deadline, int64_t now) {
    if (lim->stop && *lim->stop && now + lim->grace_ms < deadline)
        return now + lim->grace_ms;
    return deadline;
}

/* Polls the socket for events for at most ms; -1 on a poll error. */
static int wait_socket(int fd, short events, int64_t ms) {
    struct pollfd p = {.fd = fd, .events = events};
    int rc = poll(&p, 1, (int)(ms > PGIO_SLICE_MS ? PGIO_SLICE_MS : ms < 0 ? 0 : ms));
    return rc < 0 && errno != EINTR ? -1 : 0;
}

PGconn *outbox_pg_connect(const char *conninfo, const char *app_name, const outbox_pg_limits_t *lim,
                          char *err, size_t err_size) {
    return outbox_pg_connect_as(conninfo, app_name, NULL, lim, err, err_size);
}

PGconn *outbox_pg_connect_as(const char *conninfo, const char *app_name, const char *replication,
                             const outbox_pg_limits_t *lim, char *err, size_t err_size) {
    char connect_s[24], user_ms[24];
    int64_t t = lim->timeout_ms > 0 ? lim->timeout_ms : 0;
    /* libpq reads connect_timeout in whole seconds, and takes 1 as 2. */
    snprintf(connect_s, sizeof(connect_s), "%lld", t ? (long long)(t + 999) / 1000 + 1 : 0LL);
    snprintf(user_ms, sizeof(user_ms), "%lld", (long long)t);
    const char *keys[10], *vals[10];
    int n = 0;
    const char *bound_vals[] = {connect_s, "1", PGIO_KEEPALIVES_IDLE, PGIO_KEEPALIVES_INTERVAL,
                                PGIO_KEEPALIVES_COUNT, user_ms};
    for (size_t i = 0; i < sizeof(bound_keys) / sizeof(bound_keys[0]); i++) {
        keys[n] = bound_keys[i];
        vals[n++] = bound_vals[i];
    }
    if (app_name && *app_name) {
        keys[n] = "application_name";
        vals[n++] = app_name;
    }
    keys[n] = "dbname";
    vals[n++] = conninfo;
    if (replication) { /* after the conninfo: it wins over a replication= written there */
        keys[n] = "replication";
        vals[n++] = replication;
    }
    keys[n] = NULL;
    vals[n] = NULL;
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    if (!pg) {
        outbox_snprintf(err, err_size, "out of memory");
        return NULL;
    }
    int64_t now = outbox_mono_ms(), deadline = deadline_of(lim, now);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (PQstatus(pg) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        now = outbox_mono_ms();
        deadline = deadline_update(lim, deadline, now);
        if (now >= deadline) {
            outbox_snprintf(err, err_size, "no answer from PostgreSQL within %lld ms while connecting%s",
                            (long long)(lim->timeout_ms),
                            lim->stop && *lim->stop ? " (stopping)" : "");
            PQfinish(pg);
            return NULL;
        }
        if (wait_socket(PQsocket(pg), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline - now)) {
            outbox_snprintf(err, err_size, "poll: %s", strerror(errno));
            PQfinish(pg);
            return NULL;
        }
        st = PQconnectPoll(pg);
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    /* Sends never block on a full socket either: outbox_pg_wait flushes. */
    if (PQsetnonblocking(pg, 1) != 0) {
        outbox_snprintf(err, err_size, "cannot make the connection non-blocking: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

int outbox_pg_wait(PGconn *pg, const outbox_pg_limits_t *lim, char *err, size_t err_size) {
    int64_t deadline = deadline_of(lim, outbox_mono_ms());
    for (;;) {
        int unsent = PQflush(pg);
        if (unsent < 0) {
            outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
            return -1;
        }
        /* What is buffered may already hold the result: read the socket only when it does not. */
        if (!unsent && !PQisBusy(pg))
            return 0;
        if (!PQconsumeInput(pg)) {
            outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
            return -1;
        }
        if (!unsent && !PQisBusy(pg))
            return 0;
        int64_t now = outbox_mono_ms();
        deadline = deadline_update(lim, deadline, now);
        if (now >= deadline) {
            outbox_snprintf(err, err_size, "no answer from PostgreSQL within %lld ms%s",
                            (long long)lim->timeout_ms, lim->stop && *lim->stop ? " (stopping)" : "");
            return -1;
        }
        if (wait_socket(PQsocket(pg), (short)(POLLIN | (unsent ? POLLOUT : 0)), deadline - now)) {
            outbox_snprintf(err, err_size, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

PGresult *outbox_pg_result(PGconn *pg, const outbox_pg_limits_t *lim, char *err, size_t err_size) {
    PGresult *first = NULL, *res;
    for (;;) {
        if (outbox_pg_wait(pg, lim, err, err_size)) {
            PQclear(first);
            return NULL;
        }
        if (!(res = PQgetResult(pg)))
            break;
        /* Keep the first result, or the first failed one: the statement's outcome. */
        ExecStatusType st = PQresultStatus(res);
        bool failed = st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY;
        if (!first || (failed && PQresultStatus(first) == PGRES_COMMAND_OK)) {
            PQclear(first);
            first = res;
        } else {
            PQclear(res);
        }
    }
    if (!first)
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
    return first;
}

PGresult *outbox_pg_exec(PGconn *pg, const outbox_pg_limits_t *lim, const char *sql, int nparams,
                         const char *const *params, const int *lengths, const int *formats,
                         int result_format, char *err, size_t err_size) {
    if (!PQsendQueryParams(pg, sql, nparams, NULL, params, lengths, formats, result_format)) {
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
        return NULL;
    }
    return outbox_pg_result(pg, lim, err, err_size);
}

PGresult *outbox_pg_exec_simple(PGconn *pg, const outbox_pg_limits_t *lim, const char *sql, char *err,
                                size_t err_size) {
    if (!PQsendQuery(pg, sql)) {
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
        return NULL;
    }
    return outbox_pg_result(pg, lim, err, err_size);
}

PGresult *outbox_pg_exec_prepared(PGconn *pg, const outbox_pg_limits_t *lim, const char *stmt,
                                  int nparams, const char *const *params, const int *lengths,
                                  const int *formats, int result_format, char *err, size_t err_size) {
    if (!PQsendQueryPrepared(pg, stmt, nparams, params, lengths, formats, result_format)) {
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
        return NULL;
    }
    return outbox_pg_result(pg, lim, err, err_size);
}

PGresult *outbox_pg_prepare(PGconn *pg, const outbox_pg_limits_t *lim, const char *stmt,
                            const char *sql, char *err, size_t err_size) {
    if (!PQsendPrepare(pg, stmt, sql, 0, NULL)) {
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
        return NULL;
    }
    return outbox_pg_result(pg, lim, err, err_size);
}
