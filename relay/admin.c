/*
 * The one-shot verbs: migrate (apply the schema) and status (backlog, oldest age, dead letters,
 * the current leader).
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

int relay_migrate(relay_t *r) {
    PGconn *pg = relay_connect(r);
    if (!pg)
        return 1;
    char err[512];
    outbox_conf_t *conf = outbox_conf_dup(r->conf);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    int rc = 0;
    if (!ob || outbox_migrate(ob, pg) != OUTBOX_OK) {
        fprintf(stderr, "outbox-relay: migrate failed: %s\n", ob ? outbox_errmsg(ob) : err);
        rc = 1;
    } else {
        printf("schema %s is at version %d\n", r->schema_q, OUTBOX_SCHEMA_VERSION);
    }
    outbox_destroy(ob);
    PQfinish(pg);
    return rc;
}

static PGresult *query(PGconn *pg, const char *sql, int nparams, const char *const *params) {
    PGresult *res = PQexecParams(pg, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "outbox-relay: status query failed: %s", PQresultErrorMessage(res));
        PQclear(res);
        return NULL;
    }
    return res;
}

int relay_status(relay_t *r) {
    PGconn *pg = relay_connect(r);
    if (!pg)
        return 1;
    char sql[1024], lock[160];
    int rc = 1;
    PGresult *a = NULL, *b = NULL, *c = NULL;
    snprintf(sql, sizeof(sql),
             "SELECT count(*), coalesce(round(extract(epoch FROM now() - min(created_at))::numeric, 3), 0)"
             " FROM %s.messages", r->schema_q);
    if (!(a = query(pg, sql, 0, NULL)))
        goto done;
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.dead_letters", r->schema_q);
    if (!(b = query(pg, sql, 0, NULL)))
        goto done;
    relay_lock_name(r, lock, sizeof(lock));
    const char *p[1] = {lock};
    if (!(c = query(pg,
                    "SELECT coalesce(a.application_name, ''), l.pid, coalesce(host(a.client_addr), 'local')"
                    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
                    1, p)))
        goto done;
    printf("schema:        %s\n", r->schema_q);
    printf("backlog:       %s\n", PQgetvalue(a, 0, 0));
    printf("oldest_age_s:  %s\n", PQgetvalue(a, 0, 1));
    printf("dead_letters:  %s\n", PQgetvalue(b, 0, 0));
    if (PQntuples(c))
        printf("leader:        %s pid=%s host=%s\n", PQgetvalue(c, 0, 0), PQgetvalue(c, 0, 1),
               PQgetvalue(c, 0, 2));
    else
        printf("leader:        none\n");
    rc = 0;
done:
    PQclear(a);
    PQclear(b);
    PQclear(c);
    PQfinish(pg);
    return rc;
}
