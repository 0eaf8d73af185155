/*
 * The drain loop: claim rows in id order on the session that holds the leadership lock, produce
 * them without copying, collect delivery reports, and delete exactly the acknowledged ids.
 *
 * Why it is safe:
 *  - Rows are deleted only after the broker acknowledged them (acks=all): a crash anywhere
 *    re-sends, never loses.
 *  - Every claim scans from the lowest id that may still become visible (the floor), skipping
 *    only ids still in flight (it probes each id range between them), so a transaction that
 *    commits a lower id late (a "gap") is picked up by the next claim.  The floor rises only past
 *    ids whose transactions have all ended (floor_advance), and falls back to the start whenever a
 *    row below it may be left in the table (a re-send, a new session or producer).
 *  - Claims run on the very session that holds the advisory lock: if that session dies, the
 *    next claim fails, so a relay that lost leadership cannot publish anything new.
 */
#include <endian.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

#define FAC "RELAY"
#define TRICKLE_GAP_MS 20 /* rows after so long without any are a trickle: sent at once */

void relay_lock_name(const relay_t *r, char *out, size_t size) {
    outbox_snprintf(out, size, "liboutbox.relay:%s", r->schema);
}

/* ---- PostgreSQL side ------------------------------------------------------------------------ */

PGconn *relay_connect(relay_t *r) {
    const char *keys[] = {"application_name", "dbname", NULL};
    const char *vals[] = {outbox_conf_str(r->conf, "relay.application.name"), r->conninfo, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        /* libpq's message names host and port but never the password. */
        char msg[512];
        outbox_log(r->conf, 3, FAC, "msg=\"cannot connect to PostgreSQL\" error=\"%s\"",
                   outbox_logfmt_value(PQerrorMessage(pg), msg, sizeof(msg)));
        PQfinish(pg);
        return NULL;
    }
    char sql[256];
    /* A lost delete only causes a re-send, never a loss: the relay's commits need not wait for
     * the WAL flush. */
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld; SET synchronous_commit = off",
             outbox_conf_int(r->conf, "relay.statement.timeout.ms"));
    PGresult *res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        outbox_log(r->conf, 4, FAC, "msg=\"cannot apply session settings\" error=\"%s\"",
                   PQresultErrorMessage(res));
    PQclear(res);
    return pg;
}

static bool conn_lost(relay_t *r) {
    return !r->pg || PQstatus(r->pg) != CONNECTION_OK;
}

static void drop_session(relay_t *r, const char *why) {
    atomic_store(&r->metrics.pg_ok, 0);
    r->claim_sent = false; /* its result goes with the session */
    PQclear(r->claim_res);
    r->claim_res = NULL;
    atomic_store(&r->metrics.is_leader, 0);
    if (r->pg) {
        outbox_log(r->conf, 3, FAC, "msg=\"lost the PostgreSQL session\" leader=%s error=\"%s\"",
                   r->leader ? "true" : "false", why);
        PQfinish(r->pg);
        r->pg = NULL;
    }
    r->leader = false;
}

/* Logs a failed statement; drops the session when the connection is gone. */
static void statement_failed(relay_t *r, PGresult *res, const char *what) {
    char msg[512];
    outbox_logfmt_value(res ? PQresultErrorMessage(res) : PQerrorMessage(r->pg), msg, sizeof(msg));
    if (conn_lost(r)) {
        drop_session(r, msg);
        return;
    }
    outbox_log(r->conf, 3, FAC, "msg=\"%s failed\" error=\"%s\"", what, msg);
}

static void sleep_ms(relay_t *r, int ms) {
    /* Serve delivery reports while waiting. */
    if (r->rk)
        rd_kafka_poll(r->rk, ms);
    else
        usleep((useconds_t)ms * 1000);
}

/* Prepares the loop's statements on a new session: parsed and planned once, not at every poll
 * (an idle relay polls hundreds of times a second). */
static bool prepare_statements(relay_t *r) {
    static const char *const names[] = {"outbox_claim", "outbox_settle", "outbox_settle_dead",
                                        "outbox_floor_list", "outbox_floor_check"};
    /* The transactions running now, but for this session and autovacuum (which never writes
     * the outbox, and whose long transactions would hold the floor back). */
    static const char list[] =
        "SELECT coalesce(array_agg(l.virtualxid), '{}') FROM pg_locks l"
        " WHERE l.locktype = 'virtualxid' AND l.granted AND l.mode = 'ExclusiveLock'"
        " AND l.pid IS DISTINCT FROM pg_backend_pid() AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
        "  WHERE a.pid = l.pid AND a.backend_type = 'autovacuum worker')";
    /* Whether they have all ended.  A transaction that was prepared for two-phase commit gives
     * up its virtual id but may still commit: any prepared transaction holds the floor back. */
    static const char check[] =
        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'virtualxid' AND granted"
        "  AND virtualxid = ANY($1::text[])) AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts)";
    const char *sql[] = {r->sql_claim, r->sql_delete, r->sql_dead, list, check};
    for (int i = 0; i < 5; i++) {
        PGresult *res = PQprepare(r->pg, names[i], sql[i], 0, NULL);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok) {
            statement_failed(r, res, "preparing the relay's statements");
            if (r->pg)
                drop_session(r, "cannot prepare the relay's statements");
        }
        PQclear(res);
        if (!ok)
            return false;
    }
    return true;
}

/* ---- the claim floor ------------------------------------------------------------------------ */

/* Claims start from the lowest id again: a row below the floor may be left in the table. */
static void floor_reset(relay_t *r) {
    r->floor = INT64_MIN;
    r->floor_gen++;
    r->floor_cand = 0;
    free(r->floor_vxids);
    r->floor_vxids = NULL;
    r->floor_settled = false;
}

/* Runs one of the floor statements; false (and the reason logged) on failure. */
static bool floor_query(relay_t *r, const char *stmt, const char *param, const char *what,
                        PGresult **out) {
    const char *p[1] = {param};
    PGresult *res = PQexecPrepared(r->pg, stmt, param ? 1 : 0, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        statement_failed(r, res, what);
        PQclear(res);
        return false;
    }
    *out = res;
    return true;
}

/* The floor rises in two steps around the claims:
 *  1. after a claim whose last id is L, list the transactions running now (floor_vxids).  Ids
 *     come from the identity sequence in increasing order, so every id <= L was handed out
 *     before L was seen, by a transaction that has ended or is in that list;
 *  2. once they have all ended, no id <= L can become visible any more, and the next claim sees
 *     every committed one.  If that claim returns fewer rows than asked, or reaches L, every id
 *     from the floor to L is published, in flight or never to be: the floor becomes L + 1.
 * An in-flight row below the floor that is not deleted (re-sent, or its producer or session
 * gone) resets the floor.  A long transaction elsewhere only holds the floor where it is. */

/* Before a claim: whether the listed transactions have all ended (step 2). */
static void floor_check(relay_t *r) {
    int64_t now = outbox_mono_ms();
    PGresult *res;
    if (!r->floor_vxids || r->floor_settled || now < r->floor_next_ms)
        return;
    r->floor_next_ms = now + 20;
    if (!floor_query(r, "outbox_floor_check", r->floor_vxids, "checking the claim floor", &res))
        return;
    r->floor_settled = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
}

/* After a claim of got rows (b: their batch, NULL when none): raises the floor if step 2 holds,
 * and starts step 1 again from this claim's last id.  settled: whether step 2 held before the
 * claim was sent (a claim sent ahead may have run before floor_check saw it hold). */
static void floor_advance(relay_t *r, const batch_t *b, int got, bool settled) {
    int64_t now = outbox_mono_ms();
    PGresult *res;
    bool reached = got < r->batch_size || (b && b->ids[got - 1] >= r->floor_cand);
    if (settled && r->floor_settled && reached) {
        r->floor = r->floor_cand + 1;
        outbox_log(r->conf, 7, FAC, "msg=\"claim floor\" floor=%lld", (long long)r->floor);
        free(r->floor_vxids);
        r->floor_vxids = NULL;
        r->floor_settled = false;
    }
    if (r->floor_vxids || !b || now < r->floor_next_ms)
        return;
    if (!floor_query(r, "outbox_floor_list", NULL, "listing transactions for the claim floor", &res))
        return;
    r->floor_vxids = strdup(PQgetvalue(res, 0, 0));
    r->floor_cand = b->ids[got - 1];
    r->floor_next_ms = now + 20;
    PQclear(res);
}

/* Connects (with backoff) and takes the leadership lock; returns true when leader. */
static bool ensure_leader(relay_t *r, int64_t *backoff_ms) {
    if (r->leader && !conn_lost(r))
        return true;
    if (conn_lost(r)) {
        if (r->pg)
            drop_session(r, PQerrorMessage(r->pg));
        r->pg = relay_connect(r);
        atomic_store(&r->metrics.pg_ok, r->pg != NULL);
        if (!r->pg) {
            sleep_ms(r, (int)*backoff_ms);
            int64_t max = outbox_conf_int(r->conf, "relay.reconnect.backoff.max.ms");
            *backoff_ms = *backoff_ms * 2 > max ? max : *backoff_ms * 2;
            return false;
        }
        *backoff_ms = outbox_conf_int(r->conf, "relay.reconnect.backoff.ms");
        if (!prepare_statements(r))
            return false;
        if (r->connections++ > 0)
            atomic_fetch_add(&r->metrics.pg_reconnects, 1);
        outbox_log(r->conf, 6, FAC, "msg=\"connected to PostgreSQL\" schema=%s", r->schema_q);
    }
    char lock[160];
    relay_lock_name(r, lock, sizeof(lock));
    const char *p[1] = {lock};
    PGresult *res = PQexecParams(r->pg, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", 1,
                                 NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        statement_failed(r, res, "taking the leadership lock");
        PQclear(res);
        return false;
    }
    r->leader = PQgetvalue(res, 0, 0)[0] == 't';
    floor_reset(r);
    atomic_store(&r->metrics.is_leader, r->leader);
    PQclear(res);
    if (r->leader) {
        outbox_log(r->conf, 5, FAC, "msg=\"became the leader\" schema=%s pid=%d", r->schema_q,
                   PQbackendPID(r->pg));
        return true;
    }
    if (r->standby_waits++ % 20 == 0) /* say so now and then, not every retry */
        outbox_log(r->conf, 6, FAC, "msg=\"standby: another relay holds the lock\" schema=%s",
                   r->schema_q);
    sleep_ms(r, (int)outbox_conf_int(r->conf, "relay.lock.retry.ms"));
    return false;
}

/* ---- Kafka side ----------------------------------------------------------------------------- */

/* Errors that will not go away by retrying the same message: such rows are dead-lettered. */
static bool permanent(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

static void mark_dead(batch_t *b, int row, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
static void mark_dead(batch_t *b, int row, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    b->state[row] = ROW_DEAD;
    free(b->error[row]);
    b->error[row] = outbox_strdup(buf);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    relay_t *r = opaque;
    slot_t *s = m->_private;
    batch_t *b = s->batch;
    if (!m->err && m->offset < 0 && r->offsets_expected) {
        /* "Delivered" without an offset: the idempotent producer infers that a failed request
         * was written after all because a later one of the same partition was acknowledged.
         * That holds on a broker that enforces sequence numbers; librdkafka 2.0.2's mock broker
         * does not, and the fault suite (seed 11) lost rows this way after injected
         * NOT_ENOUGH_REPLICAS errors.  Re-sending costs at most a duplicate. */
        b->state[s->row] = ROW_RETRY;
        r->rewind = true;
        outbox_log(r->conf, 4, FAC, "msg=\"acknowledged without an offset, will re-send\" id=%lld "
                   "partition=%d", (long long)b->ids[s->row], (int)m->partition);
        b->pending--;
        return;
    }
    if (!m->err) {
        b->state[s->row] = ROW_ACKED;
        /* Where the broker says it put the row: with this line a reader can tell a row the
         * broker acknowledged and then lost from one the relay never sent. */
        if (r->debug)
            outbox_log(r->conf, 7, FAC, "msg=delivered id=%lld partition=%d offset=%lld",
                       (long long)b->ids[s->row], (int)m->partition, (long long)m->offset);
        r->published++;
        atomic_fetch_add(&r->metrics.published, 1);
        r->last_delivery_ms = outbox_mono_ms();
        atomic_store(&r->metrics.kafka_ok, 1);
        b->pending--;
        return;
    }
    metrics_delivery_error(&r->metrics, m->err);
    if (permanent(m->err)) {
        mark_dead(b, s->row, "kafka: %s (%s)", rd_kafka_err2name(m->err), rd_kafka_err2str(m->err));
    } else {
        /* Transient or local (purge, timeout): keep the row and re-send from it. */
        b->state[s->row] = ROW_RETRY;
        r->rewind = true;
        outbox_log(r->conf, 4, FAC, "msg=\"delivery failed, will re-send\" id=%lld error=%s",
                   (long long)b->ids[s->row], rd_kafka_err2name(m->err));
    }
    b->pending--;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    relay_t *r = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&r->metrics.kafka_ok, 0);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        outbox_log(r->conf, 3, FAC, "msg=\"fatal producer error: re-creating the producer\" "
                   "error=%s reason=\"%s\"", rd_kafka_err2name(orig), why);
        r->fatal = true;
        return;
    }
    outbox_log(r->conf, 4, FAC, "msg=\"kafka error\" error=%s reason=\"%s\"",
               rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    relay_t *r = rd_kafka_opaque(rk);
    outbox_log(r->conf, level, "KAFKA", "msg=\"%s\" kafka_fac=%s", buf, fac);
}

static rd_kafka_t *producer_new(relay_t *r, char *err, size_t err_size) {
    rd_kafka_conf_t *kc = outbox_kafka_conf(r->conf, outbox_kafka_producer_defaults(), err, err_size);
    if (!kc)
        return NULL;
    char acks[16] = "";
    size_t acks_len = sizeof(acks);
    r->offsets_expected = rd_kafka_conf_get(kc, "acks", acks, &acks_len) != RD_KAFKA_CONF_OK ||
                          strcmp(acks, "0") != 0;
    rd_kafka_conf_set_opaque(kc, r);
    rd_kafka_conf_set_dr_msg_cb(kc, on_delivery);
    rd_kafka_conf_set_error_cb(kc, on_error);
    rd_kafka_conf_set_log_cb(kc, on_kafka_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, err_size);
    if (!rk)
        rd_kafka_conf_destroy(kc);
    return rk;
}

/* ---- batches -------------------------------------------------------------------------------- */

static void batch_free(batch_t *b) {
    if (!b)
        return;
    for (int i = 0; i < b->n; i++)
        free(b->error[i]);
    free(b->error);
    free(b->state);
    free(b->ids);
    free(b->slots);
    PQclear(b->res);
    free(b);
}

typedef struct {
    rd_kafka_headers_t *hdrs;
} hdr_ctx_t;

static int add_header(const char *name, size_t nl, const char *value, size_t vl, void *opaque) {
    hdr_ctx_t *h = opaque;
    return rd_kafka_header_add(h->hdrs, name, (ssize_t)nl, value, (ssize_t)vl) ? -1 : 0;
}

static const char *kind_name(int kind) {
    static const char *names[] = {"UNSPECIFIED", "EVENT", "COMMAND", "REPLY", "DOCUMENT"};
    return kind >= 0 && kind <= 4 ? names[kind] : "UNKNOWN";
}

static void uuid_text(const uint8_t *u, char out[37]) {
    static const char hex[] = "0123456789abcdef";
    char *w = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *w++ = '-';
        *w++ = hex[u[i] >> 4];
        *w++ = hex[u[i] & 15];
    }
    *w = '\0';
}

/* Produces row i of b, pointing into the PGresult (no copy).  Returns false on a fatal error. */
static bool produce_row(relay_t *r, batch_t *b, slot_t *slot, int i) {
    PGresult *res = b->res;
    const char *dest = PQgetvalue(res, i, 1);
    const void *key = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
    size_t key_len = key ? (size_t)PQgetlength(res, i, 2) : 0;
    void *env = PQgetvalue(res, i, 3);
    size_t env_len = (size_t)PQgetlength(res, i, 3);
    char why[200], id[37];
    if (!outbox_topic_valid(dest, why, sizeof(why))) {
        mark_dead(b, i, "invalid destination: \"%.200s\" %s", dest, why);
        return true;
    }
    int kind;
    hdr_ctx_t h = {rd_kafka_headers_new(8)};
    uuid_text((const uint8_t *)PQgetvalue(res, i, 4), id);
    rd_kafka_header_add(h.hdrs, "id", 2, id, 36);
    rd_kafka_header_add(h.hdrs, "type", 4, PQgetvalue(res, i, 5), PQgetlength(res, i, 5));
    if (outbox_envelope_scan(env, env_len, &kind, add_header, &h)) {
        rd_kafka_headers_destroy(h.hdrs);
        mark_dead(b, i, "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", env_len);
        return true;
    }
    rd_kafka_header_add(h.hdrs, "kind", 4, kind_name(kind), -1);
    slot->batch = b;
    slot->row = i;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            r->rk, RD_KAFKA_V_TOPIC(dest), RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE(env, env_len),
            RD_KAFKA_V_MSGFLAGS(0), RD_KAFKA_V_HEADERS(h.hdrs), RD_KAFKA_V_OPAQUE(slot), RD_KAFKA_V_END);
        if (!err) {
            b->pending++;
            return true;
        }
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(r->rk, 10);
            continue;
        }
        rd_kafka_headers_destroy(h.hdrs);
        if (permanent(err)) {
            mark_dead(b, i, "kafka: %s (%s): %zu-byte envelope, kafka.message.max.bytes applies",
                      rd_kafka_err2name(err), rd_kafka_err2str(err), env_len);
            return true;
        }
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
            r->fatal = true;
            return false;
        }
        b->state[i] = ROW_RETRY;
        r->rewind = true;
        outbox_log(r->conf, 4, FAC, "msg=\"produce failed, will re-send\" id=%lld error=%s",
                   (long long)b->ids[i], rd_kafka_err2name(err));
        return true;
    }
}

static int cmp_id(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Appends v to a bigint[] text being written at *w (its "{" already written). */
static void arr_add(char **w, int64_t v) {
    *w += sprintf(*w, "%s%lld", (*w)[-1] == '{' ? "" : ",", (long long)v);
}

/* Allocates two bigint[] texts for up to n ranges; -1 when out of memory. */
static int ranges_alloc(size_t n, char **lo, char **hi) {
    *lo = malloc(n * 22 + 3);
    *hi = malloc(n * 22 + 3);
    if (*lo && *hi)
        return 0;
    free(*lo);
    free(*hi);
    return -1;
}

/* The ids of the nb batches bs (only the acknowledged ones if acked_only), ascending, and their
 * count in *n; NULL when out of memory.  A batch's ids ascend, and so do the batches' in claim
 * order, unless a late commit was claimed below ids already in flight. */
static int64_t *sorted_ids(batch_t *const *bs, int nb, bool acked_only, size_t *n) {
    size_t cap = 0, m = 0;
    for (int k = 0; k < nb; k++)
        cap += (size_t)bs[k]->n;
    int64_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
    if (!ids)
        return NULL;
    for (int k = 0; k < nb; k++)
        for (int i = 0; i < bs[k]->n; i++)
            if (!acked_only || bs[k]->state[i] == ROW_ACKED)
                ids[m++] = bs[k]->ids[i];
    qsort(ids, m, sizeof(*ids), cmp_id);
    *n = m;
    return ids;
}

/* The ids a claim may take rows from, i.e. every id not in flight: the ranges between the floor
 * and the highest id in flight, as two bigint[] texts ("{lo,...}", "{hi,...}"), and every id from
 * *top up.  In-flight ids come in runs, so there are few ranges, and each costs the claim one
 * index probe: far cheaper than filtering every in-flight row out of an index scan with a large
 * id <> ALL() list. */
static int gap_arrays(relay_t *r, char **lo_txt, char **hi_txt, int64_t *top) {
    size_t n;
    int64_t *ids = sorted_ids(r->inflight, r->inflight_cnt, false, &n);
    char *lo, *hi;
    if (!ids || ranges_alloc(n + 1, &lo, &hi)) {
        free(ids);
        return -1;
    }
    char *wl = lo, *wh = hi;
    *wl++ = '{';
    *wh++ = '{';
    int64_t next = r->floor;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < next)
            continue; /* in flight below the floor */
        if (ids[i] > next) {
            arr_add(&wl, next);
            arr_add(&wh, ids[i] - 1);
        }
        next = ids[i] + 1;
    }
    *top = next;
    strcpy(wl, "}");
    strcpy(wh, "}");
    free(ids);
    *lo_txt = lo;
    *hi_txt = hi;
    return 0;
}

/* The sorted ids[0..n) as runs of consecutive ids, two bigint[] texts of their first and last
 * ids.  Every id of a run is in ids, so deleting the runs deletes exactly these ids, and each run
 * costs the DELETE one index descent and a walk along the leaf pages, where an id list costs a
 * descent per id (about half the statement's time at 5,000 ids). */
static int id_runs(const int64_t *ids, size_t n, char **lo_txt, char **hi_txt) {
    char *lo, *hi;
    if (ranges_alloc(n, &lo, &hi))
        return -1;
    char *wl = lo, *wh = hi;
    *wl++ = '{';
    *wh++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || ids[i] != ids[i - 1] + 1) {
            if (i)
                arr_add(&wh, ids[i - 1]);
            arr_add(&wl, ids[i]);
        }
    }
    if (n)
        arr_add(&wh, ids[n - 1]);
    strcpy(wl, "}");
    strcpy(wh, "}");
    *lo_txt = lo;
    *hi_txt = hi;
    return 0;
}

/* The claim's parameters: the ranges between in-flight ids (gap_arrays, freed by the caller),
 * the batch size and the id from which every row may be taken.  -1 when out of memory. */
static int claim_params(relay_t *r, char limit[16], char from[24], char **lo, char **hi) {
    int64_t top;
    if (gap_arrays(r, lo, hi, &top))
        return -1;
    snprintf(limit, 16, "%d", r->batch_size);
    snprintf(from, 24, "%lld", (long long)top);
    return 0;
}

/* Sends the next claim without waiting for its rows: PostgreSQL looks them up while the relay
 * produces the batch just claimed, and they skip every id in flight now, that batch's too. */
static void claim_send(relay_t *r) {
    char limit[16], from[24], *lo, *hi;
    if (claim_params(r, limit, from, &lo, &hi))
        return;
    const char *params[4] = {lo, hi, limit, from};
    if (PQsendQueryPrepared(r->pg, "outbox_claim", 4, params, NULL, NULL, 1)) {
        r->claim_sent = true;
        r->claim_gen = r->floor_gen;
        r->claim_floor_ok = r->floor_settled;
    } else {
        statement_failed(r, NULL, "sending a claim");
    }
    free(lo);
    free(hi);
}

/* Reads the result of the claim sent ahead, if any, into claim_res: the session is free again. */
static void claim_collect(relay_t *r) {
    if (!r->claim_sent)
        return;
    r->claim_sent = false;
    PGresult *res, *first = NULL;
    while ((res = PQgetResult(r->pg))) {
        if (!first)
            first = res;
        else
            PQclear(res);
    }
    if (PQresultStatus(first) != PGRES_TUPLES_OK) {
        statement_failed(r, first, "claiming a batch");
        PQclear(first);
        return;
    }
    r->claim_res = first;
}

/* Claims up to batch_size rows: takes the claim sent ahead unless the floor was reset since it
 * was sent (a row below its ids may be left in the table), else runs one now.  The batch joins
 * the in-flight list unproduced (produce_batch).  Returns the number claimed, -1 on error;
 * *settled tells floor_advance whether the floor may rise on this claim. */
static int claim(relay_t *r, bool *settled) {
    PGresult *res = r->claim_res;
    r->claim_res = NULL;
    *settled = r->claim_floor_ok;
    if (res && r->claim_gen != r->floor_gen) {
        PQclear(res);
        res = NULL;
    }
    if (!res) {
        char limit[16], from[24], *lo, *hi;
        if (claim_params(r, limit, from, &lo, &hi))
            return -1;
        const char *params[4] = {lo, hi, limit, from};
        res = PQexecPrepared(r->pg, "outbox_claim", 4, params, NULL, NULL, 1);
        free(lo);
        free(hi);
        *settled = r->floor_settled;
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            statement_failed(r, res, "claiming a batch");
            PQclear(res);
            return -1;
        }
    }
    int n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        return 0;
    }
    batch_t *b = calloc(1, sizeof(*b));
    slot_t *slots = calloc((size_t)n, sizeof(*slots));
    if (b) {
        b->ids = calloc((size_t)n, sizeof(*b->ids));
        b->state = calloc((size_t)n, 1);
        b->error = calloc((size_t)n, sizeof(char *));
    }
    if (!b || !slots || !b->ids || !b->state || !b->error) {
        free(slots);
        if (b)
            b->res = res;
        batch_free(b);
        outbox_log(r->conf, 3, FAC, "msg=\"out of memory claiming a batch\" rows=%d", n);
        return -1;
    }
    b->relay = r;
    b->res = res;
    b->n = n;
    b->claimed_ms = outbox_mono_ms();
    for (int i = 0; i < n; i++) {
        uint64_t be;
        memcpy(&be, PQgetvalue(res, i, 0), 8);
        b->ids[i] = (int64_t)be64toh(be);
    }
    b->slots = slots;
    r->inflight[r->inflight_cnt++] = b;
    return n;
}

/* Produces the rows of b, the batch just claimed.  Meanwhile the rows of the claim sent ahead
 * are read as they come: left in the session's small socket buffer, they would stall it. */
static void produce_batch(relay_t *r, batch_t *b) {
    for (int i = 0; i < b->n && !r->fatal; i++) {
        if (!produce_row(r, b, &b->slots[i], i))
            break;
        if (r->claim_sent && i % 256 == 255)
            PQconsumeInput(r->pg); /* a failure shows when the result is read */
    }
    for (int i = 0; i < b->n; i++)
        if (r->fatal && b->state[i] == ROW_PENDING && !b->slots[i].batch)
            b->state[i] = ROW_RETRY;
    outbox_log(r->conf, 7, FAC, "msg=\"claimed batch\" rows=%d first_id=%lld last_id=%lld", b->n,
               (long long)b->ids[0], (long long)b->ids[b->n - 1]);
}

/* ---- settling ------------------------------------------------------------------------------- */

/* Appends s as a quoted element of a text[] literal. */
static size_t array_elem(char *w, const char *s) {
    char *start = w;
    *w++ = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            *w++ = '\\';
        *w++ = *s;
    }
    *w++ = '"';
    return (size_t)(w - start);
}

/* The acknowledged ids of the nb batches bs, as runs (id_runs); -1 when out of memory. */
static int acked_runs(batch_t *const *bs, int nb, char **lo, char **hi) {
    size_t n;
    int64_t *ids = sorted_ids(bs, nb, true, &n);
    if (!ids)
        return -1;
    int rc = id_runs(ids, n, lo, hi);
    free(ids);
    return rc;
}

/* Deletes the acknowledged rows of b and moves its dead rows to dead_letters, in one statement
 * (so one transaction), on the main session.  Rows to re-send are left alone.  Returns 0 (the
 * caller then frees b with batch_done), or -1 to try again later. */
static int settle(relay_t *r, batch_t *b) {
    size_t dead = 0, errlen = 0;
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] == ROW_DEAD) {
            dead++;
            errlen += 2 * strlen(b->error[i]) + 4;
        }
    }
    char *lo, *hi;
    if (acked_runs(&b, 1, &lo, &hi))
        return -1;
    char *dead_txt = malloc(dead * 21 + 3), *err_txt = malloc(errlen + 3);
    if (!dead_txt || !err_txt) {
        free(lo);
        free(hi);
        free(dead_txt);
        free(err_txt);
        return -1;
    }
    char *d = dead_txt, *e = err_txt;
    *d++ = '{';
    *e++ = '{';
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] == ROW_DEAD) {
            arr_add(&d, b->ids[i]);
            if (e[-1] != '{')
                *e++ = ',';
            e += array_elem(e, b->error[i]);
        }
    }
    strcpy(d, "}");
    strcpy(e, "}");
    PGresult *res;
    if (dead) {
        const char *p[4] = {lo, hi, dead_txt, err_txt};
        res = PQexecPrepared(r->pg, "outbox_settle_dead", 4, p, NULL, NULL, 0);
    } else {
        const char *p[2] = {lo, hi};
        res = PQexecPrepared(r->pg, "outbox_settle", 2, p, NULL, NULL, 0);
    }
    int rc = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        statement_failed(r, res, "deleting acknowledged rows");
        rc = -1;
    } else {
        for (int i = 0; i < b->n; i++) {
            if (b->state[i] == ROW_DEAD) {
                char safe[512];
                outbox_log(r->conf, 3, FAC, "msg=\"dead-lettered a message\" id=%lld error=\"%s\"",
                           (long long)b->ids[i], outbox_logfmt_value(b->error[i], safe, sizeof(safe)));
            }
        }
        r->dead_lettered += (int64_t)dead;
        atomic_fetch_add(&r->metrics.dead_lettered, (int64_t)dead);
    }
    PQclear(res);
    free(lo);
    free(hi);
    free(dead_txt);
    free(err_txt);
    return rc;
}

/* A settled batch leaves the in-flight list and is freed. */
static void batch_done(relay_t *r, batch_t *b) {
    metrics_observe_batch(&r->metrics, (double)(outbox_mono_ms() - b->claimed_ms) / 1000.0);
    bool all_acked = true, all_gone = true;
    for (int i = 0; i < b->n; i++) {
        all_acked = all_acked && b->state[i] == ROW_ACKED;
        all_gone = all_gone && (b->state[i] == ROW_ACKED || b->state[i] == ROW_DEAD);
    }
    if (all_acked)
        r->settled_clean = true;
    if (!all_gone)
        floor_reset(r); /* a row of it stays in the table, maybe below the floor */
    for (int k = 0; k < r->inflight_cnt; k++)
        if (r->inflight[k] == b) {
            memmove(&r->inflight[k], &r->inflight[k + 1], (size_t)(r->inflight_cnt - k - 1) * sizeof(b));
            r->inflight_cnt--;
            break;
        }
    batch_free(b);
}

static void settle_session_drop(relay_t *r, const char *why) {
    char msg[512];
    outbox_log(r->conf, 4, FAC, "msg=\"lost the settle session\" error=\"%s\"",
               outbox_logfmt_value(why, msg, sizeof(msg)));
    PQfinish(r->pg_settle);
    r->pg_settle = NULL;
    r->settle_busy = false;
    r->settle_retry_ms = outbox_mono_ms() + outbox_conf_int(r->conf, "relay.reconnect.backoff.ms");
    for (int k = 0; k < r->inflight_cnt; k++)
        r->inflight[k]->settling = false; /* their rows are deleted again by the next settle */
}

/* The settle session, connected and prepared; NULL while it cannot be (the caller then settles
 * on the main session). */
static PGconn *settle_session(relay_t *r) {
    if (r->pg_settle && PQstatus(r->pg_settle) == CONNECTION_OK)
        return r->pg_settle;
    if (r->pg_settle)
        settle_session_drop(r, PQerrorMessage(r->pg_settle));
    if (outbox_mono_ms() < r->settle_retry_ms)
        return NULL;
    r->settle_retry_ms = outbox_mono_ms() + outbox_conf_int(r->conf, "relay.reconnect.backoff.ms");
    PGconn *pg = relay_connect(r);
    if (!pg)
        return NULL;
    PGresult *res = PQprepare(pg, "outbox_settle", r->sql_delete, 0, NULL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok || PQsetnonblocking(pg, 1) != 0) {
        PQfinish(pg);
        return NULL;
    }
    r->pg_settle = pg;
    return pg;
}

/* Collects the in-flight DELETE's result: at once if wait, else only if it has arrived.  On
 * success the batches it settled are freed; on failure they stay and are settled again. */
static void settle_collect(relay_t *r, bool wait) {
    if (!r->settle_busy)
        return;
    PGconn *pg = r->pg_settle;
    if (!wait) {
        int unsent = PQflush(pg); /* a large id list may not have gone out in one write */
        if (unsent < 0) {
            settle_session_drop(r, PQerrorMessage(pg));
            return;
        }
        if (unsent > 0)
            return;
        if (!PQconsumeInput(pg)) {
            settle_session_drop(r, PQerrorMessage(pg));
            return;
        }
        if (PQisBusy(pg))
            return;
    }
    bool ok = true;
    char why[512] = "";
    PGresult *res;
    while ((res = PQgetResult(pg))) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            ok = false;
            snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
        }
        PQclear(res);
    }
    r->settle_busy = false;
    if (!ok || PQstatus(pg) != CONNECTION_OK) {
        if (PQstatus(pg) != CONNECTION_OK) {
            settle_session_drop(r, *why ? why : PQerrorMessage(pg));
        } else {
            char msg[512];
            outbox_log(r->conf, 3, FAC, "msg=\"deleting acknowledged rows failed\" error=\"%s\"",
                       outbox_logfmt_value(why, msg, sizeof(msg)));
            for (int k = 0; k < r->inflight_cnt; k++)
                r->inflight[k]->settling = false;
        }
        return;
    }
    for (int k = 0; k < r->inflight_cnt;) {
        batch_t *b = r->inflight[k];
        if (!b->settling) {
            k++;
            continue;
        }
        batch_done(r, b);
    }
}

/* Settles every batch whose reports have all arrived.  Batches of acknowledged (and re-send)
 * rows are deleted together in one statement on the settle session, without waiting for it;
 * a batch with dead rows is settled on the main session, in one transaction with their move to
 * dead_letters. */
static void settle_done(relay_t *r) {
    settle_collect(r, false);
    size_t acked = 0;
    for (int k = 0; k < r->inflight_cnt;) {
        batch_t *b = r->inflight[k];
        if (b->pending > 0 || b->settling) {
            k++;
            continue;
        }
        size_t a = 0, dead = 0;
        for (int i = 0; i < b->n; i++) {
            a += b->state[i] == ROW_ACKED;
            dead += b->state[i] == ROW_DEAD;
            if (b->state[i] == ROW_RETRY)
                r->settled_clean = false;
        }
        if (!a && !dead) {
            batch_done(r, b);
            continue;
        }
        if (dead || r->settle_busy || !settle_session(r)) {
            /* Dead rows, or a busy or missing settle session: the main session settles it now. */
            if (dead || !r->settle_busy) {
                if (!conn_lost(r) && settle(r, b) == 0) {
                    batch_done(r, b);
                    continue;
                }
            }
            k++;
            continue;
        }
        b->settling = true;
        acked += a;
        k++;
    }
    if (!acked)
        return;
    batch_t **bs = malloc((size_t)r->inflight_cnt * sizeof(*bs));
    int nb = 0;
    char *lo = NULL, *hi = NULL;
    if (bs)
        for (int k = 0; k < r->inflight_cnt; k++)
            if (r->inflight[k]->settling)
                bs[nb++] = r->inflight[k];
    if (!bs || acked_runs(bs, nb, &lo, &hi)) {
        free(bs);
        for (int k = 0; k < r->inflight_cnt; k++)
            r->inflight[k]->settling = false;
        return;
    }
    free(bs);
    const char *p[2] = {lo, hi};
    if (!PQsendQueryPrepared(r->pg_settle, "outbox_settle", 2, p, NULL, NULL, 0))
        settle_session_drop(r, PQerrorMessage(r->pg_settle));
    else
        r->settle_busy = true;
    free(lo);
    free(hi);
}

/* Settles until nothing acknowledged is left unsettled or a settle fails (shutdown, producer
 * re-creation): waits for the settle session. */
static void settle_all(relay_t *r) {
    for (int round = 0; round < 8; round++) {
        settle_done(r);
        if (!r->settle_busy)
            break;
        if (PQflush(r->pg_settle) < 0) {
            settle_session_drop(r, PQerrorMessage(r->pg_settle));
            break;
        }
        PQsetnonblocking(r->pg_settle, 0);
        settle_collect(r, true);
        if (r->pg_settle)
            PQsetnonblocking(r->pg_settle, 1);
    }
}

static int outstanding(const relay_t *r) {
    int n = 0;
    for (int k = 0; k < r->inflight_cnt; k++)
        n += r->inflight[k]->pending;
    return n;
}

/* Ends the producer: purges what it still holds, then frees every batch (nothing points into
 * their results any more).  Acknowledged rows that could not be deleted are simply re-sent. */
static void producer_close(relay_t *r, int wait_ms) {
    if (!r->rk)
        return;
    int64_t deadline = outbox_mono_ms() + wait_ms;
    while (outstanding(r) > 0 && outbox_mono_ms() < deadline && *r->interrupts < 2) {
        rd_kafka_poll(r->rk, 50);
        settle_done(r);
    }
    rd_kafka_purge(r->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(r->rk, 0);
    settle_all(r);
    rd_kafka_destroy(r->rk);
    r->rk = NULL;
    floor_reset(r); /* the batches freed below may hold rows that were not deleted */
    for (int k = 0; k < r->inflight_cnt; k++)
        batch_free(r->inflight[k]);
    r->inflight_cnt = 0;
}

/* ---- sampling for metrics ------------------------------------------------------------------- */

/* Backlog and oldest age for the metrics endpoint, every 2 s: two index probes, and an exact
 * count only when the id range says the backlog is small.  Also checks the broker when no
 * delivery report has arrived for a while. */
static void sample(relay_t *r) {
    int64_t now = outbox_mono_ms();
    if (!r->mhd || now < r->next_sample_ms)
        return;
    r->next_sample_ms = now + 2000;
    if (!conn_lost(r)) {
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "SELECT (SELECT id FROM %1$s.messages ORDER BY id LIMIT 1),"
                 " (SELECT id FROM %1$s.messages ORDER BY id DESC LIMIT 1),"
                 " (SELECT (extract(epoch FROM now() - created_at) * 1000)::bigint FROM %1$s.messages"
                 "  ORDER BY id LIMIT 1)", r->schema_q);
        PGresult *res = PQexec(r->pg, sql);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            int64_t lo = atoll(PQgetvalue(res, 0, 0)), hi = atoll(PQgetvalue(res, 0, 1));
            int64_t backlog = PQgetisnull(res, 0, 0) ? 0 : hi - lo + 1;
            atomic_store(&r->metrics.oldest_age_ms, atoll(PQgetvalue(res, 0, 2)));
            PQclear(res);
            res = NULL;
            if (backlog > 0 && backlog <= 10000) {
                snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.messages", r->schema_q);
                res = PQexec(r->pg, sql);
                if (PQresultStatus(res) == PGRES_TUPLES_OK)
                    backlog = atoll(PQgetvalue(res, 0, 0));
            }
            atomic_store(&r->metrics.backlog, backlog);
        } else {
            statement_failed(r, res, "sampling the backlog");
        }
        PQclear(res);
    }
    if (now - r->last_delivery_ms > 2000) {
        const struct rd_kafka_metadata *md;
        rd_kafka_resp_err_t err = rd_kafka_metadata(r->rk, 0, NULL, &md, 500);
        if (!err)
            rd_kafka_metadata_destroy(md);
        atomic_store(&r->metrics.kafka_ok, err == RD_KAFKA_RESP_ERR_NO_ERROR);
    }
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void build_sql(relay_t *r) {
    const char *s = r->schema_q;
    /* The rows between the ranges' bounds, then those from $4 up, merged in id order (a Merge
     * Append): only the ranges' rows are sorted, and there are few, while a sort of the whole
     * batch would copy every row and spill to disk once a batch outgrows work_mem. */
    snprintf(r->sql_claim, sizeof(r->sql_claim),
             "SELECT * FROM ("
             " (SELECT m.* FROM unnest($1::bigint[], $2::bigint[]) AS g(lo, hi) CROSS JOIN LATERAL"
             "  (SELECT %2$s FROM %1$s.messages WHERE id BETWEEN g.lo AND g.hi ORDER BY id LIMIT $3::int) m"
             "  ORDER BY m.id LIMIT $3::int)"
             " UNION ALL"
             " (SELECT %2$s FROM %1$s.messages WHERE id >= $4::bigint ORDER BY id LIMIT $3::int)"
             ") c ORDER BY id LIMIT $3::int", s,
             "id, destination, partition_key, envelope, message_id, message_type");
    snprintf(r->sql_delete, sizeof(r->sql_delete),
             "DELETE FROM %s.messages m USING unnest($1::bigint[], $2::bigint[]) AS g(lo, hi)"
             " WHERE m.id BETWEEN g.lo AND g.hi", s);
    snprintf(r->sql_dead, sizeof(r->sql_dead),
             "WITH acked AS (DELETE FROM %s.messages m USING unnest($1::bigint[], $2::bigint[]) AS g(lo, hi)"
             "  WHERE m.id BETWEEN g.lo AND g.hi),"
             " dead AS (DELETE FROM %s.messages m USING unnest($3::bigint[], $4::text[]) AS f(id, err)"
             "  WHERE m.id = f.id RETURNING m.*, f.err)"
             " INSERT INTO %s.dead_letters (id, message_id, destination, partition_key, message_type,"
             "  envelope, created_at, error)"
             " SELECT id, message_id, destination, partition_key, message_type, envelope, created_at, err"
             " FROM dead ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now(),"
             "  attempts = %s.dead_letters.attempts + 1", s, s, s, s);
}

int relay_run(relay_t *r) {
    char err[512];
    size_t n = 0;
    if (outbox_conf_get(r->conf, "kafka.bootstrap.servers", NULL, &n) != OUTBOX_CONF_OK) {
        fprintf(stderr, "outbox-relay: kafka.bootstrap.servers is not set: pass "
                        "-X kafka.bootstrap.servers=host:9092 or put it in the -c file\n");
        return 2;
    }
    r->batch_size = (int)outbox_conf_int(r->conf, "relay.batch.size");
    r->inflight_max = (int)outbox_conf_int(r->conf, "relay.inflight.batches");
    r->debug = outbox_conf_int(r->conf, "log.level") >= 7;
    r->inflight = calloc((size_t)r->inflight_max, sizeof(*r->inflight));
    floor_reset(r);
    build_sql(r);
    if (!(r->rk = producer_new(r, err, sizeof(err)))) {
        fprintf(stderr, "outbox-relay: cannot create the Kafka producer: %s\n", err);
        free(r->inflight);
        return 2;
    }
    const int64_t poll_min = outbox_conf_int(r->conf, "relay.poll.min.ms");
    const int64_t poll_max = outbox_conf_int(r->conf, "relay.poll.max.ms");
    int64_t poll_active = outbox_conf_int(r->conf, "relay.poll.active.ms");
    poll_active = poll_active < poll_max ? poll_active : poll_max;
    int64_t last_rows_ms = 0; /* when a claim last returned rows */
    int64_t idle_ms = poll_min, backoff_ms = outbox_conf_int(r->conf, "relay.reconnect.backoff.ms");
    int64_t rewind_backoff = backoff_ms, last_report = outbox_mono_ms(), reported = 0;
    pthread_mutex_init(&r->metrics.lock, NULL);
    if (metrics_start(r, err, sizeof(err))) {
        fprintf(stderr, "outbox-relay: %s\n", err);
        producer_close(r, 0);
        free(r->inflight);
        return 2;
    }
    outbox_log(r->conf, 6, FAC, "msg=\"relay starting\" version=%s schema=%s batch_size=%d "
               "inflight_batches=%d", outbox_version_str(), r->schema_q, r->batch_size, r->inflight_max);

    while (!*r->stop) {
        rd_kafka_poll(r->rk, 0);
        claim_collect(r); /* frees the session for the statements below */
        sample(r);
        if (r->fatal) {
            /* librdkafka 2.0.2 can raise a spurious fatal idempotence error after timeouts:
             * settle what was acknowledged, then start over with a new producer from the
             * oldest row still in the table. */
            producer_close(r, 0);
            r->fatal = false;
            r->rewind = false;
            if (!(r->rk = producer_new(r, err, sizeof(err)))) {
                outbox_log(r->conf, 2, FAC, "msg=\"cannot re-create the producer\" error=\"%s\"", err);
                PQclear(r->claim_res);
                free(r->inflight);
                return 1;
            }
            continue;
        }
        if (!ensure_leader(r, &backoff_ms)) {
            settle_done(r);
            continue;
        }
        settle_done(r);
        if (conn_lost(r))
            continue;
        if (r->rewind) {
            /* A row failed transiently: let everything in flight settle, then claim again from
             * the oldest row, so the failed row goes out before anything newer. */
            if (r->inflight_cnt) {
                rd_kafka_poll(r->rk, 5);
                continue;
            }
            r->rewind = false;
            sleep_ms(r, (int)rewind_backoff);
            rewind_backoff = rewind_backoff * 2 > 5000 ? 5000 : rewind_backoff * 2;
        }
        if (r->inflight_cnt >= r->inflight_max) {
            rd_kafka_poll(r->rk, 1);
            continue;
        }
        floor_check(r);
        bool settled;
        int got = claim(r, &settled);
        batch_t *b = got > 0 ? r->inflight[r->inflight_cnt - 1] : NULL;
        if (got >= 0 && !conn_lost(r))
            floor_advance(r, b, got, settled);
        if (got < 0) {
            sleep_ms(r, (int)backoff_ms);
            continue;
        }
        relay_reindex_poll(r, got == 0 && r->inflight_cnt == 0);
        if (got == r->batch_size && r->inflight_cnt < r->inflight_max && !conn_lost(r) &&
            !r->rewind && !r->fatal) {
            /* A full batch: more rows are likely waiting. */
            floor_check(r);
            claim_send(r);
        }
        if (b)
            produce_batch(r, b);
        if (r->settled_clean) {
            /* Deliveries work again: the next failure starts from the shortest backoff (a
             * trickle never fills a batch, so a full claim is no sign of health). */
            rewind_backoff = outbox_conf_int(r->conf, "relay.reconnect.backoff.ms");
            r->settled_clean = false;
        }
        int64_t quiet_ms = outbox_mono_ms() - last_rows_ms; /* since rows last came */
        if (got > 0)
            last_rows_ms = outbox_mono_ms();
        if (got == r->batch_size) {
            idle_ms = poll_min;
        } else if (got > 0) {
            idle_ms = poll_min;
            const batch_t *last = r->inflight[r->inflight_cnt - 1];
            if (quiet_ms >= TRICKLE_GAP_MS && last->pending && outstanding(r) == last->pending) {
                /* A trickle: the first rows after a pause, and all that is in flight.  Waiting
                 * out linger.ms for more messages that are not coming would only add latency.
                 * While rd_kafka_flush() runs the producer sends at once; it returns on the
                 * acknowledgements (served here), or after the timeout if the broker is slow.
                 * A steady stream keeps the linger: it batches, and many tiny produce requests
                 * would queue at the broker. */
                rd_kafka_flush(r->rk, 100);
            } else {
                sleep_ms(r, (int)idle_ms);
            }
        } else {
            /* A trickle keeps the waits short (its next message is likely soon); a quiet
             * second lets them grow to poll.max, where an idle relay costs least. */
            sleep_ms(r, (int)idle_ms);
            int64_t cap = outbox_mono_ms() - last_rows_ms < 1000 ? poll_active : poll_max;
            idle_ms = idle_ms * 2 > cap ? cap : (idle_ms ? idle_ms * 2 : 1);
        }
        if (outbox_mono_ms() - last_report >= 10000 && r->published != reported) {
            outbox_log(r->conf, 6, FAC, "msg=progress published=%lld dead_lettered=%lld inflight=%d",
                       (long long)r->published, (long long)r->dead_lettered, outstanding(r));
            reported = r->published;
            last_report = outbox_mono_ms();
        }
    }

    /* Shutdown: no more claims; wait for outstanding acknowledgements, delete what was acked. */
    outbox_log(r->conf, 6, FAC, "msg=\"shutting down\" outstanding=%d", outstanding(r));
    if (*r->interrupts >= 2)
        _exit(130);
    claim_collect(r);
    PQclear(r->claim_res);
    r->claim_res = NULL;
    producer_close(r, (int)outbox_conf_int(r->conf, "relay.shutdown.timeout.ms"));
    outbox_log(r->conf, 6, FAC, "msg=\"stopped\" published=%lld dead_lettered=%lld",
               (long long)r->published, (long long)r->dead_lettered);
    metrics_stop(r);
    relay_reindex_stop(r);
    PQfinish(r->pg_settle);
    PQfinish(r->pg);
    free(r->inflight);
    floor_reset(r);
    return 0;
}
