/*
 * floor.c: the claim floor, the id below which no row can still appear, and the ids above it
 * already settled.  Claims start from the floor and skip the settled ids, so they need not walk
 * the dead index entries and heap tuples of rows already deleted, which VACUUM cannot remove
 * while any old snapshot lives.
 *
 * The floor rises in two steps around the claims:
 *  1. after a claim whose last id is L, list the outbox writers running now (vxids): the
 *     transactions that hold RowExclusiveLock on the outbox table or on its identity sequence.
 *  2. once they have all ended, no id <= L can become visible any more, and the next claim sees
 *     every committed one.  If that claim returns fewer rows than asked, or reaches L, every id
 *     from the floor to L is published, in flight or never to be: the floor becomes L + 1.
 *
 * Why only the outbox writers: an id is drawn from the identity sequence by nextval(), which
 * takes RowExclusiveLock on the sequence first, inside an INSERT that took RowExclusiveLock on
 * the table before it, and both locks are held until the transaction ends.  Ids are drawn in
 * increasing order (the sequence caches one value at a time), so every id <= L was drawn before
 * L was, which was before L was claimed, which was before step 1: a transaction that drew one
 * and has not ended holds those locks at step 1 and is listed.  A transaction that has not drawn
 * an id by then draws one above L.  Any other transaction, however long, cannot hold the floor.
 * A prepared transaction keeps its locks but gives up its virtual id: while one holds a lock on
 * the table or the sequence, step 2 does not hold.
 *
 * An in-flight row below the floor that is not deleted (re-sent, or its producer or session
 * gone) resets the floor.
 *
 * The next leader: every second, and once more when it stops (claim.c's table_settle), the
 * leader saves min(floor, lowest id in flight) and the settled ranges above it in claim_state,
 * and a new leader starts its claims there instead of from the lowest id, which would walk every
 * row its predecessor deleted while a long transaction keeps them from VACUUM.  A saved state
 * stays true forever: no id below the floor can appear (above), rows in flight are at or above the
 * saved value and stay so if re-sent, and deleted rows never come back, except released parked
 * rows, whose release deletes claim_state in its transaction (park.c).  The one thing that would break it, an identity sequence restarted below the saved
 * floor, leaves rows below it: the load refuses a state with any row below its floor.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define FAC RELAY_FAC
/* claim_state is saved at most this often. */
#define FLOOR_SAVE_EVERY_MS 1000
/* Settled ranges saved at most (the lowest ones): the rest only costs the next leader a walk. */
#define FLOOR_SAVE_RANGES_MAX 1024

/* The floor's statements run at most this often: each is a pg_locks scan. */
#define FLOOR_QUERY_EVERY_MS 20
/* Settled ranges remembered above the floor at most: forgetting one only costs claims a walk
 * over its deleted rows. */
#define FLOOR_DONE_MAX 65536

/* The relation locks of outbox writers: RowExclusiveLock on the table or its sequence. */
#define WRITER_LOCKS                                                                               \
    " l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted"                      \
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"          \
    " AND l.relation IN ($1::text::regclass, pg_get_serial_sequence($1::text, 'id')::regclass)"

/* The outbox writers running now, but for this session. */
static const char sql_list[] =
    "SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') FROM pg_locks l WHERE"
    WRITER_LOCKS " AND l.pid IS DISTINCT FROM pg_backend_pid()";
/* Whether they have all ended, and no prepared transaction holds a writer's lock. */
static const char sql_check[] =
    "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'virtualxid' AND granted"
    "  AND virtualxid = ANY($2::text[]))"
    " AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE" WRITER_LOCKS " AND l.pid IS NULL)";
/* Who they are, for an operator. */
static const char sql_holders[] =
    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),"
    " coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0), coalesce(a.client_addr::text, 'local')"
    " FROM pg_stat_activity a WHERE a.pid IN (SELECT pid FROM pg_locks WHERE locktype = 'virtualxid'"
    "  AND virtualxid = ANY($1::text[])) ORDER BY a.xact_start LIMIT 5";

const char *const floor_statements[] = {"outbox_floor_list", sql_list, "outbox_floor_check", sql_check,
                                        "outbox_floor_holders", sql_holders, NULL};

void floor_free(relay_t *r) {
    free(r->floor.vxids);
    r->floor.vxids = NULL;
}

/* Claims start from the lowest id again: a row below the floor may be left in the table. */
void floor_reset(relay_t *r) {
    relay_floor_t *f = &r->floor;
    if (!*f->table)
        outbox_snprintf(f->table, sizeof(f->table), "%s.messages", r->schema_q);
    f->floor = INT64_MIN;
    f->gen++;
    f->cand = 0;
    floor_free(r);
    f->settled = false;
    f->done.n = 0;
    atomic_store(&r->metrics.floor_held_ms, 0);
}

/* Runs one of the floor statements: its result, or NULL (the reason logged). */
static PGresult *floor_query(relay_t *r, const char *stmt, int n, const char *const *params,
                             const char *what) {
    PGresult *res = session_exec(r, stmt, n, params, 0, PGRES_TUPLES_OK, what);
    if (res && PQntuples(res) < 1 && strcmp(stmt, "outbox_floor_holders") != 0) {
        PQclear(res);
        return NULL;
    }
    return res;
}

/* The floor has been held for long: say by whom, so that an operator can act. */
static void floor_warn(relay_t *r, int64_t now) {
    relay_floor_t *f = &r->floor;
    if (now - f->listed_ms < r->set.floor_warn_ms || now < f->next_warn_ms)
        return;
    f->next_warn_ms = now + r->set.floor_warn_ms;
    const char *p[1] = {f->vxids};
    PGresult *res = floor_query(r, "outbox_floor_holders", 1, p, "naming the floor's holders");
    if (!res)
        return;
    for (int i = 0; i < PQntuples(res); i++) {
        char app[128], state[64];
        outbox_log(r->conf, 4, FAC, "msg=\"an open transaction that wrote to the outbox holds the "
                   "claim floor: claims step over more deleted rows until it ends\" floor=%lld "
                   "held_s=%lld pid=%s application_name=\"%s\" state=\"%s\" xact_age_s=%s client=%s",
                   (long long)f->floor, (long long)((now - f->listed_ms) / 1000), PQgetvalue(res, i, 0),
                   outbox_logfmt_value(PQgetvalue(res, i, 1), app, sizeof(app)),
                   outbox_logfmt_value(PQgetvalue(res, i, 2), state, sizeof(state)),
                   PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
    }
    if (PQntuples(res) == 0)
        outbox_log(r->conf, 4, FAC, "msg=\"a prepared transaction that wrote to the outbox holds the "
                   "claim floor: COMMIT PREPARED or ROLLBACK PREPARED it (see pg_prepared_xacts)\" "
                   "floor=%lld held_s=%lld", (long long)f->floor, (long long)((now - f->listed_ms) / 1000));
    PQclear(res);
}

/* Before a claim: whether the listed writers have all ended (step 2). */
void floor_check(relay_t *r) {
    relay_floor_t *f = &r->floor;
    int64_t now = outbox_mono_ms();
    if (!f->vxids || f->settled || now < f->next_ms)
        return;
    f->next_ms = now + FLOOR_QUERY_EVERY_MS;
    const char *p[2] = {f->table, f->vxids};
    PGresult *res = floor_query(r, "outbox_floor_check", 2, p, "checking the claim floor");
    if (!res)
        return;
    f->settled = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    atomic_store(&r->metrics.floor_held_ms, f->settled ? 0 : now - f->listed_ms);
    if (!f->settled)
        floor_warn(r, now);
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
        idr_set_drop_below(&f->done, f->floor);
        outbox_log(r->conf, 7, FAC, "msg=\"claim floor\" floor=%lld settled_ranges=%zu",
                   (long long)f->floor, f->done.n);
        floor_free(r);
        f->settled = false;
        atomic_store(&r->metrics.floor_held_ms, 0);
    }
    if (f->vxids || !b || now < f->next_ms)
        return;
    const char *p[1] = {f->table};
    PGresult *res = floor_query(r, "outbox_floor_list", 1, p, "listing outbox writers for the claim floor");
    if (!res)
        return;
    f->vxids = strdup(PQgetvalue(res, 0, 0)); /* NULL when out of memory: tried again later */
    f->cand = b->ids[got - 1];
    f->next_ms = now + FLOOR_QUERY_EVERY_MS;
    f->listed_ms = now;
    /* No writer (and no prepared one) at all: they have all ended already, and the next claim
     * may raise the floor without waiting for a check. */
    f->settled = f->vxids && !strcmp(f->vxids, "{}");
    PQclear(res);
}

void floor_settled_batch(relay_t *r, const batch_t *b) {
    idr_set_t *done = &r->floor.done;
    for (int i = 0; i < b->n;) {
        int j = i + 1;
        while (j < b->n && b->ids[j] == b->ids[j - 1] + 1)
            j++;
        /* Out of memory, or too many ranges: forget them; claims then step over those rows. */
        if (b->ids[j - 1] >= r->floor.floor &&
            (done->n >= FLOOR_DONE_MAX || idr_set_add(done, b->ids[i], b->ids[j - 1]))) {
            done->n = 0;
            return;
        }
        i = j;
    }
}

void floor_build_sql(relay_t *r) {
    relay_floor_t *f = &r->floor;
    snprintf(f->sql_save, sizeof(f->sql_save),
             "INSERT INTO %s.claim_state (floor, done_lo, done_hi) VALUES ($1::bigint, $2::bigint[], $3::bigint[])"
             " ON CONFLICT (singleton) DO UPDATE SET floor = EXCLUDED.floor, done_lo = EXCLUDED.done_lo,"
             " done_hi = EXCLUDED.done_hi, saved_at = now()", r->schema_q);
    /* A state with a row below its floor is wrong (an identity sequence restarted): it goes. */
    snprintf(f->sql_load, sizeof(f->sql_load),
             "WITH stale AS (DELETE FROM %1$s.claim_state c WHERE EXISTS (SELECT 1 FROM %1$s.messages m"
             "  WHERE m.id < c.floor) RETURNING 1)"
             " SELECT c.floor, u.lo, u.hi FROM %1$s.claim_state c"
             " LEFT JOIN LATERAL unnest(c.done_lo, c.done_hi) AS u(lo, hi) ON true"
             " WHERE NOT EXISTS (SELECT 1 FROM stale) ORDER BY u.lo", r->schema_q);
}

void floor_load(relay_t *r) {
    relay_floor_t *f = &r->floor;
    PGresult *res = session_exec(r, "outbox_floor_load", 0, NULL, 0, PGRES_TUPLES_OK, "reading the saved claim floor");
    if (!res || PQntuples(res) == 0) {
        PQclear(res);
        return;
    }
    f->floor = atoll(PQgetvalue(res, 0, 0));
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            continue;
        int64_t lo = atoll(PQgetvalue(res, i, 1)), hi = atoll(PQgetvalue(res, i, 2));
        if (lo >= f->floor && lo <= hi && idr_set_add(&f->done, lo, hi)) {
            f->done.n = 0; /* out of memory: claims step over those rows */
            break;
        }
    }
    PQclear(res);
    f->saved_floor = f->floor;
    f->saved_n = f->done.n;
    f->saved_hi = f->done.n ? f->done.r[f->done.n - 1].hi : 0;
    outbox_log(r->conf, 6, FAC, "msg=\"claims start where the last leader's could\" floor=%lld settled_ranges=%zu",
               (long long)f->floor, f->done.n);
}

void floor_save(relay_t *r, bool now) {
    relay_floor_t *f = &r->floor;
    int64_t t = outbox_mono_ms();
    if (!now && t < f->next_save_ms)
        return;
    f->next_save_ms = t + FLOOR_SAVE_EVERY_MS;
    int64_t base = f->floor;
    for (int k = 0; k < r->inflight_cnt; k++) /* a batch's ids ascend, save a late commit's */
        for (int i = 0; i < r->inflight[k]->n; i++)
            if (r->inflight[k]->ids[i] < base)
                base = r->inflight[k]->ids[i];
    size_t n = f->done.n < FLOOR_SAVE_RANGES_MAX ? f->done.n : FLOOR_SAVE_RANGES_MAX;
    int64_t hi = n ? f->done.r[n - 1].hi : 0;
    if ((base == INT64_MIN && n == 0) || (base == f->saved_floor && n == f->saved_n && hi == f->saved_hi))
        return;
    idr_text_t lo_t, hi_t;
    char from[24];
    if (idr_text_init(&lo_t, n))
        return;
    if (idr_text_init(&hi_t, n)) {
        free(lo_t.buf);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        idr_text_add(&lo_t, f->done.r[k].lo);
        idr_text_add(&hi_t, f->done.r[k].hi);
    }
    idr_text_end(&lo_t);
    idr_text_end(&hi_t);
    snprintf(from, sizeof(from), "%lld", (long long)base);
    const char *p[3] = {from, lo_t.buf, hi_t.buf};
    PGresult *res = session_exec(r, "outbox_floor_save", 3, p, 0, PGRES_COMMAND_OK, "saving the claim floor");
    free(lo_t.buf);
    free(hi_t.buf);
    if (!res)
        return;
    PQclear(res);
    f->saved_floor = base;
    f->saved_n = n;
    f->saved_hi = hi;
}
