/*
 * claim.c: the table source.  Claims rows of the outbox table in id order on the session that
 * holds the leadership lock, sends the next claim ahead while a full batch is produced, and
 * samples the backlog.  Settling (deleting what was acknowledged) is settle.c's.
 *
 * Every claim scans from the floor (floor.c), skipping only ids still in flight (it probes each
 * id range between them, idranges.c), so a transaction that commits a lower id late (a "gap")
 * is picked up by the next claim.
 */
#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include "idranges.h"
#include "relay.h"

#define FAC RELAY_FAC
/* Backlog and oldest age are sampled this often, for the metrics endpoint. */
#define SAMPLE_EVERY_MS 2000
/* Below this id range the backlog is counted exactly; above, the range stands for it. */
#define SAMPLE_EXACT_BELOW 10000
/* A claim probes at most about this many id ranges (one index probe each); past it, ranges
 * separated only by settled ids are merged, and the claim steps over those deleted rows. */
#define CLAIM_RANGES_MAX 256
/* Columns of a claimed row, in this order. */
#define CLAIM_COLUMNS "id, destination, partition_key, envelope, message_id, message_type, created_at"
enum { COL_ID, COL_DEST, COL_KEY, COL_ENVELOPE, COL_MESSAGE_ID, COL_TYPE, COL_CREATED };
/* A binary timestamptz counts microseconds from 2000-01-01; Kafka, milliseconds from 1970. */
#define PG_EPOCH_UNIX_MS 946684800000LL

static void build_sql(relay_t *r) {
    const char *s = r->schema_q;
    /* The rows between the ranges' bounds, then those from $4 up, merged in id order (a Merge
     * Append): only the ranges' rows are sorted, and there are few, while a sort of the whole
     * batch would copy every row and spill to disk once a batch outgrows work_mem. */
    snprintf(r->claim.sql, sizeof(r->claim.sql),
             "SELECT * FROM ("
             " (SELECT m.* FROM unnest($1::bigint[], $2::bigint[]) AS g(lo, hi) CROSS JOIN LATERAL"
             "  (SELECT %2$s FROM %1$s.messages WHERE id BETWEEN g.lo AND g.hi ORDER BY id LIMIT $3::int) m"
             "  ORDER BY m.id LIMIT $3::int)"
             " UNION ALL"
             " (SELECT %2$s FROM %1$s.messages WHERE id >= $4::bigint ORDER BY id LIMIT $3::int)"
             ") c ORDER BY id LIMIT $3::int", s, CLAIM_COLUMNS);
    /* Two index probes; the exact count only when the id range says the backlog is small.  The
     * oldest row is looked for from the floor up: below it lie only deleted rows (and rows in
     * flight), which a long transaction elsewhere keeps from VACUUM. */
    snprintf(r->claim.sql_sample, sizeof(r->claim.sql_sample),
             "SELECT (SELECT id FROM %1$s.messages WHERE id >= $1::bigint ORDER BY id LIMIT 1),"
             " (SELECT id FROM %1$s.messages ORDER BY id DESC LIMIT 1),"
             " (SELECT (extract(epoch FROM now() - created_at) * 1000)::bigint FROM %1$s.messages"
             "  WHERE id >= $1::bigint ORDER BY id LIMIT 1)", s);
    snprintf(r->claim.sql_count, sizeof(r->claim.sql_count),
             "SELECT count(*) FROM %s.messages WHERE id BETWEEN $1::bigint AND $2::bigint", s);
    settle_build_sql(r);
    park_build_sql(r);
    floor_build_sql(r);
}

/* Room for the name/SQL pairs of every statement prepared on the leader session, and the NULL. */
#define STATEMENTS_MAX 32

/* Every statement the source runs on the leader session, prepared once per session. */
static void statements(const relay_t *r, const char *out[STATEMENTS_MAX]) {
    int n = 0;
    const char *own[] = {"outbox_claim", r->claim.sql, "outbox_sample", r->claim.sql_sample,
                         "outbox_count", r->claim.sql_count, "outbox_settle", r->settle.sql_delete,
                         "outbox_settle_dead", r->settle.sql_dead, "outbox_park_load", r->park.sql_load,
                         "outbox_park_poll", r->park.sql_poll, "outbox_park_release", r->park.sql_release,
                         "outbox_floor_save", r->floor.sql_save, "outbox_floor_load", r->floor.sql_load};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        out[n++] = own[i];
    for (int i = 0; floor_statements[i] && n < STATEMENTS_MAX - 1; i++)
        out[n++] = floor_statements[i];
    out[n] = NULL;
}

/* Plans a claim and writes its parameters: the ranges between in-flight and settled ids (freed
 * by the caller), the batch size and the id from which every row may be taken.  -1 when out of
 * memory. */
static int claim_params(relay_t *r, claim_plan_t *plan, char limit[16], char from[24], char **lo,
                        char **hi) {
    const relay_floor_t *f = &r->floor;
    *plan = (claim_plan_t){.gen = f->gen, .floor_ok = f->settled};
    size_t n;
    int64_t *ids = batch_sorted_ids(r->inflight, r->inflight_cnt, false, &n);
    if (!ids)
        return -1;
    int rc = idr_gaps(ids, n, &f->done, f->floor, CLAIM_RANGES_MAX, lo, hi, &plan->top);
    free(ids);
    if (rc)
        return -1;
    snprintf(limit, 16, "%d", r->set.batch_size);
    snprintf(from, 24, "%lld", (long long)plan->top);
    return 0;
}

/* Sends the next claim without waiting for its rows: PostgreSQL looks them up while the relay
 * produces the batch just claimed, and they skip every id in flight now, that batch's too. */
static void claim_send(relay_t *r) {
    char limit[16], from[24], *lo, *hi;
    if (claim_params(r, &r->claim.ahead, limit, from, &lo, &hi))
        return;
    const char *params[4] = {lo, hi, limit, from};
    if (PQsendQueryPrepared(r->session.pg, "outbox_claim", 4, params, NULL, NULL, 1))
        r->claim.sent = true;
    else
        session_drop(r, PQerrorMessage(r->session.pg));
    free(lo);
    free(hi);
}

/* Reads the result of the claim sent ahead, if any, into claim.res: the session is free again. */
static void claim_collect(relay_t *r) {
    if (!r->claim.sent)
        return;
    r->claim.sent = false;
    r->claim.res = session_result(r, PGRES_TUPLES_OK, "claiming a batch");
}

static void res_free(void *res) {
    PQclear(res);
}

/* Claims up to batch_size rows: takes the claim sent ahead unless the floor was reset since it
 * was sent (a row below its ids may be left in the table), else runs one now.  The batch joins
 * the in-flight list unproduced.  Returns the number claimed, -1 on error; *settled tells
 * floor_advance whether the floor may rise on this claim. */
static int claim(relay_t *r, batch_t **out, bool *settled) {
    PGresult *res = r->claim.res;
    claim_plan_t plan = r->claim.ahead;
    r->claim.res = NULL;
    if (res && plan.gen != r->floor.gen) {
        PQclear(res);
        res = NULL;
    }
    if (!res) {
        char limit[16], from[24], *lo, *hi;
        if (claim_params(r, &plan, limit, from, &lo, &hi))
            return -1;
        const char *params[4] = {lo, hi, limit, from};
        res = session_exec(r, "outbox_claim", 4, params, 1, PGRES_TUPLES_OK, "claiming a batch");
        free(lo);
        free(hi);
        if (!res)
            return -1;
    }
    *settled = plan.floor_ok;
    int n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        return 0;
    }
    batch_t *b = batch_new(r, n, res, res_free);
    if (!b) {
        PQclear(res);
        outbox_log(r->conf, 3, FAC, "msg=\"out of memory claiming a batch\" rows=%d", n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        uint64_t be;
        memcpy(&be, PQgetvalue(res, i, COL_ID), 8);
        b->ids[i] = (int64_t)be64toh(be);
        relay_row_t *row = &b->rows[i];
        row->dest = PQgetvalue(res, i, COL_DEST);
        row->key = PQgetisnull(res, i, COL_KEY) ? NULL : PQgetvalue(res, i, COL_KEY);
        row->key_len = row->key ? (size_t)PQgetlength(res, i, COL_KEY) : 0;
        row->value = PQgetvalue(res, i, COL_ENVELOPE);
        row->value_len = (size_t)PQgetlength(res, i, COL_ENVELOPE);
        row->uuid = (const uint8_t *)PQgetvalue(res, i, COL_MESSAGE_ID);
        row->type = PQgetvalue(res, i, COL_TYPE);
        row->type_len = (size_t)PQgetlength(res, i, COL_TYPE);
        if (r->set.record_created) {
            memcpy(&be, PQgetvalue(res, i, COL_CREATED), 8);
            row->timestamp_ms = (int64_t)be64toh(be) / 1000 + PG_EPOCH_UNIX_MS;
        }
    }
    *out = b;
    return n;
}

static bool table_ready(relay_t *r) {
    const char *stmts[STATEMENTS_MAX];
    claim_collect(r); /* frees the session for the statements below */
    statements(r, stmts);
    bool was_leader = r->session.leader && !session_lost(r);
    if (!session_ensure_leader(r, stmts))
        return false;
    if (!was_leader) {
        floor_reset(r); /* a new session: what the last one knew of the table is gone */
        floor_load(r);  /* but where the last leader's claims could start holds */
        park_leader(r); /* and parked keys may have been released meanwhile */
    }
    return true;
}

static int table_next(relay_t *r, batch_t **out) {
    if (session_lost(r))
        return -1;
    *out = NULL;
    claim_collect(r); /* frees the session for park's statements */
    if (!park_before_claim(r))
        return 0;
    floor_check(r);
    bool settled;
    int got = claim(r, out, &settled);
    if (got >= 0 && !session_lost(r))
        floor_advance(r, *out, got, settled);
    if (got >= 0 && !session_lost(r))
        floor_save(r, false);
    if (got < 0)
        return -1;
    relay_reindex_poll(r, r->session.pg, got == 0 && r->inflight_cnt == 0);
    if (got == r->set.batch_size && r->inflight_cnt < r->set.inflight_max && !session_lost(r) &&
        !r->rewind && !r->prod.fatal) {
        /* A full batch: more rows are likely waiting. */
        floor_check(r);
        claim_send(r);
    }
    return got > 0;
}

/* Left in the session's small socket buffer, the rows of the claim sent ahead would stall it. */
static void table_pump(relay_t *r) {
    if (r->claim.sent)
        PQconsumeInput(r->session.pg); /* a failure shows when the result is read */
}

/* The main session may still be reading a claim sent ahead: read it before settling there.
 * Waiting comes before a stop or a new producer, whose rewind forgets what settled: the state is
 * saved then, so that the next leader does not walk the rows deleted in the last second (beside
 * a long transaction, every claim of its would). */
static void table_settle(relay_t *r, bool wait) {
    claim_collect(r);
    settle_table(r, wait);
    if (wait && r->session.leader && !session_lost(r))
        floor_save(r, true);
}

static void table_rewind(relay_t *r) {
    floor_reset(r); /* the batches freed now may hold rows that were not deleted */
}

/* The rows waiting in the table (exact below SAMPLE_EXACT_BELOW, else the id range) and the
 * oldest one's age; -1 when it cannot be read. */
static int64_t backlog_now(relay_t *r, int64_t *oldest_ms) {
    char from[24];
    snprintf(from, sizeof(from), "%lld", (long long)r->floor.floor);
    const char *p[1] = {from};
    PGresult *res = session_exec(r, "outbox_sample", 1, p, 0, PGRES_TUPLES_OK, "sampling the backlog");
    if (!res)
        return -1;
    int64_t lo = atoll(PQgetvalue(res, 0, 0)), hi = atoll(PQgetvalue(res, 0, 1));
    int64_t backlog = PQgetisnull(res, 0, 0) ? 0 : hi - lo + 1;
    *oldest_ms = atoll(PQgetvalue(res, 0, 2));
    const char *range[2] = {PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1)};
    if (backlog > 0 && backlog <= SAMPLE_EXACT_BELOW) {
        PGresult *count = session_exec(r, "outbox_count", 2, range, 0, PGRES_TUPLES_OK, "counting the backlog");
        if (count)
            backlog = atoll(PQgetvalue(count, 0, 0));
        PQclear(count);
    }
    PQclear(res);
    return backlog;
}

static void table_sample(relay_t *r) {
    int64_t now = outbox_mono_ms(), oldest_ms;
    if (!r->mhd || now < r->claim.next_sample_ms || session_lost(r) || r->claim.sent)
        return;
    r->claim.next_sample_ms = now + SAMPLE_EVERY_MS;
    int64_t backlog = backlog_now(r, &oldest_ms);
    if (backlog < 0)
        return;
    atomic_store(&r->metrics.oldest_age_ms, oldest_ms);
    atomic_store(&r->metrics.backlog, backlog);
}

static int64_t table_left(relay_t *r) {
    int64_t oldest_ms;
    claim_collect(r);
    return session_lost(r) ? -1 : backlog_now(r, &oldest_ms);
}

static void table_close(relay_t *r) {
    claim_collect(r);
    PQclear(r->claim.res);
    r->claim.res = NULL;
    relay_reindex_stop(r);
    settle_close(r);
    PQfinish(r->session.pg);
    r->session.pg = NULL;
    floor_free(r);
    idr_set_free(&r->floor.done);
    park_free(r);
}

static void table_open(relay_t *r) {
    build_sql(r);
    floor_reset(r);
}

const relay_source_t relay_table_source = {
    .name = "table",
    .open = table_open,
    .ready = table_ready,
    .next = table_next,
    .pump = table_pump,
    .settle = table_settle,
    .rewind = table_rewind,
    .sample = table_sample,
    .left = table_left,
    .close = table_close,
};
