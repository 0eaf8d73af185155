/*
 * floor.c: the claim floor, the id below which no row can still appear.  Claims start from it,
 * so they need not walk the dead index entries of rows already deleted.
 *
 * The floor rises in two steps around the claims:
 *  1. after a claim whose last id is L, list the transactions running now (vxids).  Ids come
 *     from the identity sequence in increasing order, so every id <= L was handed out before L
 *     was seen, by a transaction that has ended or is in that list;
 *  2. once they have all ended, no id <= L can become visible any more, and the next claim sees
 *     every committed one.  If that claim returns fewer rows than asked, or reaches L, every id
 *     from the floor to L is published, in flight or never to be: the floor becomes L + 1.
 * An in-flight row below the floor that is not deleted (re-sent, or its producer or session
 * gone) resets the floor.  A long transaction elsewhere only holds the floor where it is.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define FAC RELAY_FAC
/* The floor's statements run at most this often: each is a pg_locks scan. */
#define FLOOR_QUERY_EVERY_MS 20

/* The transactions running now, but for this session and autovacuum (which never writes the
 * outbox, and whose long transactions would hold the floor back). */
static const char sql_list[] =
    "SELECT coalesce(array_agg(l.virtualxid), '{}') FROM pg_locks l"
    " WHERE l.locktype = 'virtualxid' AND l.granted AND l.mode = 'ExclusiveLock'"
    " AND l.pid IS DISTINCT FROM pg_backend_pid() AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
    "  WHERE a.pid = l.pid AND a.backend_type = 'autovacuum worker')";
/* Whether they have all ended.  A transaction that was prepared for two-phase commit gives up
 * its virtual id but may still commit: any prepared transaction holds the floor back. */
static const char sql_check[] =
    "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'virtualxid' AND granted"
    "  AND virtualxid = ANY($1::text[])) AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts)";

const char *const floor_statements[] = {"outbox_floor_list", sql_list, "outbox_floor_check",
                                        sql_check, NULL};

void floor_free(relay_t *r) {
    free(r->floor.vxids);
    r->floor.vxids = NULL;
}

/* Claims start from the lowest id again: a row below the floor may be left in the table. */
void floor_reset(relay_t *r) {
    relay_floor_t *f = &r->floor;
    f->floor = INT64_MIN;
    f->gen++;
    f->cand = 0;
    floor_free(r);
    f->settled = false;
}

/* Runs one of the floor statements: its one-row result, or NULL (the reason logged). */
static PGresult *floor_query(relay_t *r, const char *stmt, const char *param, const char *what) {
    const char *p[1] = {param};
    PGresult *res = session_exec(r, stmt, param ? 1 : 0, p, 0, PGRES_TUPLES_OK, what);
    if (res && PQntuples(res) != 1) {
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Before a claim: whether the listed transactions have all ended (step 2). */
void floor_check(relay_t *r) {
    relay_floor_t *f = &r->floor;
    int64_t now = outbox_mono_ms();
    if (!f->vxids || f->settled || now < f->next_ms)
        return;
    f->next_ms = now + FLOOR_QUERY_EVERY_MS;
    PGresult *res = floor_query(r, "outbox_floor_check", f->vxids, "checking the claim floor");
    if (!res)
        return;
    f->settled = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
}

/* After a claim of got rows (b: their batch, NULL when none): raises the floor if step 2 holds,
 * and starts step 1 again from this claim's last id.  settled: whether step 2 held before the
 * claim was sent (a claim sent ahead may have run before floor_check saw it hold). */
void floor_advance(relay_t *r, const batch_t *b, int got, bool settled) {
    relay_floor_t *f = &r->floor;
    int64_t now = outbox_mono_ms();
    bool reached = got < r->set.batch_size || (b && b->ids[got - 1] >= f->cand);
    if (settled && f->settled && reached) {
        f->floor = f->cand + 1;
        outbox_log(r->conf, 7, FAC, "msg=\"claim floor\" floor=%lld", (long long)f->floor);
        floor_free(r);
        f->settled = false;
    }
    if (f->vxids || !b || now < f->next_ms)
        return;
    PGresult *res = floor_query(r, "outbox_floor_list", NULL, "listing transactions for the claim floor");
    if (!res)
        return;
    f->vxids = strdup(PQgetvalue(res, 0, 0)); /* NULL when out of memory: tried again later */
    f->cand = b->ids[got - 1];
    f->next_ms = now + FLOOR_QUERY_EVERY_MS;
    PQclear(res);
}
