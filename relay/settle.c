/*
 * settle.c: the table source's settle stage: deletes exactly the acknowledged ids, and moves
 * rows that failed permanently to dead_letters and the held rows of parked keys to parked_messages
 * (park.c) in the same transaction.  Rows to re-send are left
 * alone.  Deletes of acknowledged rows go out on a second session without waiting, while the
 * first claims; deleting what the broker acknowledged is safe for any relay, leader or not.
 */
#include <stdlib.h>
#include <string.h>

#include "idranges.h"
#include "relay.h"

#define FAC RELAY_FAC
/* settle_table(wait): collect and send again at most this often before giving up. */
#define SETTLE_WAIT_ROUNDS 8

void settle_build_sql(relay_t *r) {
    const char *s = r->schema_q;
    snprintf(r->settle.sql_delete, sizeof(r->settle.sql_delete),
             "DELETE FROM %s.messages m USING unnest($1::bigint[], $2::bigint[]) AS g(lo, hi)"
             " WHERE m.id BETWEEN g.lo AND g.hi", s);
    snprintf(r->settle.sql_dead, sizeof(r->settle.sql_dead),
             "WITH acked AS (DELETE FROM %s.messages m USING unnest($1::bigint[], $2::bigint[]) AS g(lo, hi)"
             "  WHERE m.id BETWEEN g.lo AND g.hi),"
             " dead AS (DELETE FROM %s.messages m USING unnest($3::bigint[], $4::text[]) AS f(id, err)"
             "  WHERE m.id = f.id RETURNING m.*, f.err),"
             /* held rows of parked keys move to parked_messages, and their keys are recorded:
              * $6..$9 are, for each key, its hex, destination, failed row and error (park.c) */
             " held AS (DELETE FROM %s.messages m WHERE m.id = ANY($5::bigint[]) RETURNING m.*),"
             " moved AS (INSERT INTO %s.parked_messages (id, message_id, destination, partition_key,"
             "  message_type, envelope, created_at, attempts)"
             "  SELECT id, message_id, destination, partition_key, message_type, envelope, created_at, attempts"
             "  FROM held ON CONFLICT (id) DO NOTHING),"
             " keys AS (INSERT INTO %s.parked_keys (partition_key, destination, first_id, error)"
             "  SELECT decode(k, 'hex'), d, i, e FROM unnest($6::text[], $7::text[], $8::bigint[], $9::text[])"
             "  AS p(k, d, i, e) ON CONFLICT (partition_key) DO NOTHING)"
             " INSERT INTO %s.dead_letters (id, message_id, destination, partition_key, message_type,"
             "  envelope, created_at, error, attempts)"
             /* a retried dead letter brings its count along in messages.attempts */
             " SELECT id, message_id, destination, partition_key, message_type, envelope, created_at, err,"
             "  coalesce(attempts, 0) + 1"
             " FROM dead ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now(),"
             "  attempts = %s.dead_letters.attempts + 1", s, s, s, s, s, s, s);
}

static const char *dead_reason(const batch_t *b, int i) {
    return b->error[i] ? b->error[i] : "unknown (out of memory recording the error)";
}

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

/* The acknowledged ids of the nb batches bs, as runs (idr_runs); -1 when out of memory. */
static int acked_runs(batch_t *const *bs, int nb, char **lo, char **hi) {
    size_t n;
    int64_t *ids = batch_sorted_ids(bs, nb, true, &n);
    if (!ids)
        return -1;
    int rc = idr_runs(ids, n, lo, hi);
    free(ids);
    return rc;
}

/* The dead rows of b: their ids and errors as bigint[] and text[] literals. */
static int dead_arrays(const batch_t *b, char **ids_txt, char **errs_txt) {
    size_t dead = 0, errlen = 0;
    for (int i = 0; i < b->n; i++)
        if (b->state[i] == ROW_DEAD) {
            dead++;
            errlen += 2 * strlen(dead_reason(b, i)) + 4; /* every byte escaped, quotes, comma */
        }
    idr_text_t ids;
    char *errs = malloc(errlen + 3);
    if (!errs || idr_text_init(&ids, dead)) {
        free(errs);
        return -1;
    }
    char *e = errs;
    *e++ = '{';
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] != ROW_DEAD)
            continue;
        idr_text_add(&ids, b->ids[i]);
        if (e[-1] != '{')
            *e++ = ',';
        e += array_elem(e, dead_reason(b, i));
    }
    strcpy(e, "}");
    idr_text_end(&ids);
    *ids_txt = ids.buf;
    *errs_txt = errs;
    return 0;
}

/* The held rows of b and their parked keys, as the array literals $5..$9 of outbox_settle_dead
 * (see park.c).  A held row whose key is no longer parked (never, while releases and reloads wait
 * for an empty pipeline; kept for safety) stays in the table and is sent again from the oldest.
 * -1 when out of memory. */
static int held_arrays(relay_t *r, batch_t *const *bs, int nb, char *out[5]) {
    size_t held = 0, text = 0, rows = 0;
    for (int k = 0; k < nb; k++)
        rows += (size_t)bs[k]->n;
    const park_entry_t **keys = calloc(rows ? rows : 1, sizeof(*keys));
    int nk = 0;
    if (!keys)
        return -1;
    for (int bi = 0; bi < nb; bi++) {
    batch_t *b = bs[bi];
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] != ROW_HELD)
            continue;
        const park_entry_t *e = park_find(r, b->rows[i].key, b->rows[i].key_len);
        if (!e) {
            b->state[i] = ROW_RETRY;
            r->rewind = true;
            continue;
        }
        held++;
        int k = 0;
        while (k < nk && keys[k] != e)
            k++;
        if (k == nk) {
            keys[nk++] = e;
            text += 2 * e->key_len + 2 * (strlen(e->dest) + strlen(e->error)) + 16;
        }
    }
    }
    idr_text_t ids, firsts;
    char *hex = malloc(text + 3), *dests = malloc(text + 3), *errs = malloc(text + 3);
    if (!hex || !dests || !errs || idr_text_init(&ids, held)) {
        free(hex), free(dests), free(errs), free(keys);
        return -1;
    }
    if (idr_text_init(&firsts, (size_t)nk)) {
        free(ids.buf), free(hex), free(dests), free(errs), free(keys);
        return -1;
    }
    for (int bi = 0; bi < nb; bi++)
        for (int i = 0; i < bs[bi]->n; i++)
            if (bs[bi]->state[i] == ROW_HELD)
                idr_text_add(&ids, bs[bi]->ids[i]);
    char *h = hex, *d = dests, *e = errs;
    *h++ = *d++ = *e++ = '{';
    for (int k = 0; k < nk; k++) {
        if (k)
            *h++ = *d++ = *e++ = ',';
        const uint8_t *key = keys[k]->key;
        h += park_hex(key, keys[k]->key_len, h, 2 * keys[k]->key_len + 1);
        d += array_elem(d, keys[k]->dest);
        e += array_elem(e, keys[k]->error);
        idr_text_add(&firsts, keys[k]->first_id);
    }
    strcpy(h, "}"), strcpy(d, "}"), strcpy(e, "}");
    idr_text_end(&ids);
    idr_text_end(&firsts);
    free(keys);
    out[0] = ids.buf, out[1] = hex, out[2] = dests, out[3] = firsts.buf, out[4] = errs;
    return 0;
}

/* Settles b on the main session in one statement, so one transaction: deletes its acknowledged
 * rows, moves its dead rows to dead_letters and its held rows to parked_messages.  0, or -1 to
 * try again later. */
static int settle_main(relay_t *r, batch_t *b, size_t dead, size_t held) {
    char *lo, *hi, *dead_ids = NULL, *dead_errs = NULL, *h[5] = {NULL};
    if (acked_runs(&b, 1, &lo, &hi))
        return -1;
    if (((dead || held) && dead_arrays(b, &dead_ids, &dead_errs)) || (held && held_arrays(r, &b, 1, h))) {
        free(lo), free(hi), free(dead_ids), free(dead_errs);
        return -1;
    }
    const char *p[9] = {lo, hi, dead_ids, dead_errs, h[0] ? h[0] : "{}", h[1] ? h[1] : "{}",
                        h[2] ? h[2] : "{}", h[3] ? h[3] : "{}", h[4] ? h[4] : "{}"};
    PGresult *res = dead || held ? session_exec(r, "outbox_settle_dead", 9, p, 0, PGRES_COMMAND_OK,
                                                "moving failed rows to dead_letters or parked_messages")
                                 : session_exec(r, "outbox_settle", 2, p, 0, PGRES_COMMAND_OK,
                                                "deleting acknowledged rows");
    free(lo);
    free(hi);
    free(dead_ids);
    free(dead_errs);
    for (int k = 0; k < 5; k++)
        free(h[k]);
    if (!res)
        return -1;
    PQclear(res);
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] == ROW_DEAD) {
            char safe[512];
            outbox_log(r->conf, 3, FAC, "msg=\"dead-lettered a message\" id=%lld error=\"%s\"",
                       (long long)b->ids[i], outbox_logfmt_value(dead_reason(b, i), safe, sizeof(safe)));
        }
    }
    r->dead_lettered += (int64_t)dead;
    atomic_fetch_add(&r->metrics.dead_lettered, (int64_t)dead);
    return 0;
}

/* b is settled: what it says of the deliveries, then it is retired. */
static void settled(relay_t *r, batch_t *b) {
    bool all_acked = true, all_gone = true;
    for (int i = 0; i < b->n; i++) {
        all_acked = all_acked && b->state[i] == ROW_ACKED;
        all_gone = all_gone && (b->state[i] == ROW_ACKED || b->state[i] == ROW_DEAD || b->state[i] == ROW_HELD);
    }
    if (all_acked)
        r->settle.clean = true;
    if (!all_gone)
        floor_reset(r); /* a row of it stays in the table, maybe below the floor */
    else
        floor_settled_batch(r, b);
    batch_retire(r, b);
}

static void unmark_settling(relay_t *r) {
    for (int k = 0; k < r->inflight_cnt; k++)
        r->inflight[k]->settling = false; /* their rows are deleted again by the next settle */
}

static void settle_session_drop(relay_t *r, const char *why) {
    char msg[512];
    outbox_log(r->conf, 4, FAC, "msg=\"lost the settle session\" error=\"%s\"",
               outbox_logfmt_value(why, msg, sizeof(msg)));
    PQfinish(r->settle.pg);
    r->settle.pg = NULL;
    r->settle.busy = false;
    r->settle.retry_ms = outbox_mono_ms() + r->set.backoff_ms;
    unmark_settling(r);
}

/* The settle session, connected and prepared; NULL while it cannot be (the caller then settles
 * on the main session). */
static PGconn *settle_session(relay_t *r) {
    relay_settle_t *s = &r->settle;
    if (s->pg && PQstatus(s->pg) == CONNECTION_OK)
        return s->pg;
    if (s->pg)
        settle_session_drop(r, PQerrorMessage(s->pg));
    if (outbox_mono_ms() < s->retry_ms)
        return NULL;
    /* The main session reports PostgreSQL's state; this one only backs off, doubling. */
    s->backoff_ms = s->backoff_ms ? backoff_next(s->backoff_ms, r->set.backoff_max_ms) : r->set.backoff_ms;
    s->retry_ms = outbox_mono_ms() + s->backoff_ms;
    char err[512], msg[512];
    PGconn *pg = relay_connect_quiet(r, err, sizeof(err));
    PGresult *res = pg ? outbox_pg_prepare(pg, &r->session.stmt_lim, "outbox_settle", s->sql_delete,
                                           err, sizeof(err)) : NULL;
    if (PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        res = outbox_pg_prepare(pg, &r->session.stmt_lim, "outbox_settle_dead", s->sql_dead, err, sizeof(err));
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        outbox_log(r->conf, 7, FAC, "msg=\"cannot open the settle session\" retry_ms=%lld error=\"%s\"",
                   (long long)s->backoff_ms,
                   outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg)));
        PQclear(res);
        PQfinish(pg);
        return NULL;
    }
    PQclear(res);
    s->backoff_ms = 0;
    s->pg = pg;
    return pg;
}

/* Collects the in-flight DELETE's result: waiting for it if wait, else only if it has arrived.
 * On success the batches it settled are retired; on failure they stay and are settled again. */
static void settle_collect(relay_t *r, bool wait) {
    relay_settle_t *s = &r->settle;
    char err[512];
    if (!s->busy)
        return;
    if (wait) {
        if (outbox_pg_wait(s->pg, &r->session.stmt_lim, err, sizeof(err))) {
            settle_session_drop(r, err);
            return;
        }
    } else {
        int unsent = PQflush(s->pg); /* a large id list may not have gone out in one write */
        if (unsent < 0 || !PQconsumeInput(s->pg)) {
            settle_session_drop(r, PQerrorMessage(s->pg));
            return;
        }
        if (unsent > 0 || PQisBusy(s->pg)) {
            int64_t limit = r->session.stmt_lim.timeout_ms;
            if (limit > 0 && outbox_mono_ms() - s->sent_ms > limit)
                settle_session_drop(r, "no answer from PostgreSQL within the statement's deadline");
            return;
        }
    }
    PGresult *res = outbox_pg_result(s->pg, &r->session.stmt_lim, err, sizeof(err));
    s->busy = false;
    if (!res || PQstatus(s->pg) != CONNECTION_OK) {
        settle_session_drop(r, res ? PQerrorMessage(s->pg) : err);
        PQclear(res);
        return;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        char msg[512];
        outbox_log(r->conf, 3, FAC, "msg=\"deleting acknowledged rows failed\" error=\"%s\"",
                   outbox_logfmt_value(PQresultErrorMessage(res), msg, sizeof(msg)));
        PQclear(res);
        unmark_settling(r);
        return;
    }
    PQclear(res);
    for (int k = 0; k < r->inflight_cnt;) {
        batch_t *b = r->inflight[k];
        if (b->settling)
            settled(r, b);
        else
            k++;
    }
}

/* Sends one statement for every batch marked settling, on the settle session: a DELETE, or with
 * held rows among them the move of those to parked_messages too. */
static void settle_send(relay_t *r, bool held) {
    batch_t **bs = malloc((size_t)r->inflight_cnt * sizeof(*bs));
    int nb = 0;
    char *lo = NULL, *hi = NULL, *h[5] = {NULL};
    if (bs)
        for (int k = 0; k < r->inflight_cnt; k++)
            if (r->inflight[k]->settling)
                bs[nb++] = r->inflight[k];
    if (!bs || acked_runs(bs, nb, &lo, &hi) || (held && held_arrays(r, bs, nb, h))) {
        free(bs), free(lo), free(hi);
        unmark_settling(r);
        return;
    }
    free(bs);
    const char *p[9] = {lo, hi, "{}", "{}", h[0], h[1], h[2], h[3], h[4]};
    if (!PQsendQueryPrepared(r->settle.pg, held ? "outbox_settle_dead" : "outbox_settle", held ? 9 : 2, p, NULL,
                             NULL, 0)) {
        settle_session_drop(r, PQerrorMessage(r->settle.pg));
    } else {
        r->settle.busy = true;
        r->settle.sent_ms = outbox_mono_ms();
    }
    free(lo);
    free(hi);
    for (int k = 0; k < 5; k++)
        free(h[k]);
}

/* Settles every batch whose reports have all arrived.  Batches of acknowledged, held (and
 * re-send) rows are settled together in one statement on the settle session, without waiting for
 * it; a batch with dead rows is settled on the main session, in one transaction with their move
 * to dead_letters, and logged. */
static void settle_ready(relay_t *r) {
    settle_collect(r, false);
    size_t acked = 0, held_all = 0;
    for (int k = 0; k < r->inflight_cnt;) {
        batch_t *b = r->inflight[k];
        if (b->pending > 0 || b->settling) {
            k++;
            continue;
        }
        size_t a = 0, dead = 0, held = 0;
        for (int i = 0; i < b->n; i++) {
            a += b->state[i] == ROW_ACKED;
            dead += b->state[i] == ROW_DEAD;
            held += b->state[i] == ROW_HELD;
            if (b->state[i] == ROW_RETRY)
                r->settle.clean = false;
        }
        if (!a && !dead && !held) {
            settled(r, b);
            continue;
        }
        if (dead || r->settle.busy || !settle_session(r)) {
            /* Dead rows, or a busy or missing settle session: the main session settles it now. */
            if ((dead || !r->settle.busy) && !session_lost(r) && settle_main(r, b, dead, held) == 0) {
                settled(r, b);
                continue;
            }
            k++;
            continue;
        }
        b->settling = true;
        acked += a;
        held_all += held;
        k++;
    }
    if (acked || held_all)
        settle_send(r, held_all > 0);
}

void settle_table(relay_t *r, bool wait) {
    if (!wait) {
        settle_ready(r);
        return;
    }
    /* Until nothing acknowledged is left unsettled, or a settle fails (shutdown, a new
     * producer): each round waits for the settle session. */
    for (int round = 0; round < SETTLE_WAIT_ROUNDS; round++) {
        settle_ready(r);
        if (!r->settle.busy)
            break;
        settle_collect(r, true);
    }
}

void settle_close(relay_t *r) {
    PQfinish(r->settle.pg);
    r->settle.pg = NULL;
    r->settle.busy = false;
}
