/*
 * consumer_batch.c: one poll of the consumer as one batch.  Gathers up to consumer.batch.max
 * records that librdkafka has fetched (waiting at most consumer.batch.linger.ms for more), then
 * processes them in one PostgreSQL transaction: one dedup INSERT for the whole batch, a SAVEPOINT
 * per new message around its handler, one COMMIT, and only then the Kafka offsets, per partition,
 * up to the last record whose effect committed.  Under consumer.batch.savepoints=on-failure the
 * handlers first run without savepoints; the first failure rolls that pass back and the batch runs
 * again the savepoint way.  Also the pruning of <schema>.processed.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>

#include "consumer_int.h"

#define FAC "CONSUMER"
/* Dedup records deleted per prune statement: short statements, short locks. */
#define PRUNE_CHUNK 1000
/* Pruning runs at most this often once it caught up (it goes on at every poll while it finds
 * full chunks). */
#define PRUNE_INTERVAL_MS 10000
#define SAVEPOINT_NAME "outbox_msg"

typedef enum {
    E_PENDING = 0, /* not yet decided */
    E_DUPLICATE,   /* processed before: skipped */
    E_HANDLED,     /* the handler's work is in the transaction */
    E_REJECTED,    /* a dead letter is in the transaction */
    E_UNDONE,      /* RETRY, or after a RETRY of its partition: delivered again */
    E_PARKED,      /* rejected under park-key: it parked its key (consumer_parked) */
    E_HELD,        /* its key is parked: stored behind the key's first message */
} entry_state_t;

struct outbox_cons_entry_s {
    rd_kafka_message_t *m; /* owned */
    outbox_verdict_t v;    /* v.msg: owned, NULL if the record was rejected on decoding */
    int part;              /* index into the batch's partitions */
    bool is_new;           /* the batch's dedup INSERT inserted its record */
    bool warned;           /* its rejection was logged: a pass run again does not repeat it */
    entry_state_t state;
};

typedef struct {
    rd_kafka_topic_t *rkt; /* borrowed from the records */
    int32_t partition;
    int first;             /* its first entry in the batch */
    int last;              /* its last entry in the batch */
    int stop;              /* -1, or the entry delivered again from (a RETRY) */
    int stop_pause_ms;
} batch_part_t;

typedef struct {
    outbox_consumer_t *c;
    int n;
    batch_part_t *parts;
    int n_parts;
    bool sp_open;       /* a savepoint is open (release it before the next one) */
    bool ended;         /* the handler ended the transaction: stop the batch there */
    bool optimistic;    /* this pass runs the handlers without savepoints (savepoints=on-failure) */
    bool fall_back;     /* the optimistic pass met a failure: roll it back, run the savepoint pass */
    outbox_cons_entry_t *failed; /* the entry whose handler failed in the optimistic pass, or NULL */
    outbox_handler_result_t failed_result; /* ... and its result (OK: its transaction failed) */
    outbox_handler_cb handler;
    void *opaque;
    const outbox_message_t **msgs; /* scratch for the batch handler */
    outbox_handler_result_t *results;
    outbox_cons_entry_t **list;
    int64_t processed, duplicates, rejected;
} batch_t;

void outbox_cons_batch_free(outbox_consumer_t *c) {
    free(c->batch);
    c->batch = NULL;
}

/* ---- gathering ------------------------------------------------------------------------------ */

/* Polls for the first record up to timeout_ms, then takes what is ready, up to batch_max, waiting
 * for more at most linger_ms after the first.  Returns the number of records in c->batch. */
static int gather(outbox_consumer_t *c, int timeout_ms) {
    int n = 0;
    int64_t deadline = 0;
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, timeout_ms < 0 ? 0 : timeout_ms);
    while (m) {
        if (m->err) {
            char why[512];
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                outbox_log(c->conf, 4, FAC, "msg=\"consumer error\" error=%s reason=\"%s\"",
                           rd_kafka_err2name(m->err),
                           outbox_logfmt_value(rd_kafka_message_errstr(m), why, sizeof(why)));
            rd_kafka_message_destroy(m);
        } else {
            memset(&c->batch[n], 0, sizeof(c->batch[n]));
            c->batch[n++].m = m;
            if (n == 1)
                deadline = outbox_mono_ms() + c->linger_ms;
        }
        if (n >= c->batch_max)
            break;
        m = rd_kafka_consumer_poll(c->rk, 0);
        if (!m && n > 0) {
            int64_t left = deadline - outbox_mono_ms();
            if (left > 0)
                m = rd_kafka_consumer_poll(c->rk, (int)left);
        }
    }
    return n;
}

/* ---- statements ----------------------------------------------------------------------------- */

/* BEGIN and the batch's dedup INSERT, sent as one pipeline: one round trip, within pg.timeout.ms.
 * Returns the INSERT's rows (the ids it inserted: the new messages), or NULL with the error
 * recorded; a session that gave no answer, or whose pipeline cannot be read to its end, is
 * dropped. */
static PGresult *begin_and_dedup(outbox_consumer_t *c, const char *ids, const char *which) {
    const char *d[2] = {c->group, ids};
    static const char *const what[2] = {"BEGIN", "the batch's dedup INSERT"};
    static const ExecStatusType want[2] = {PGRES_COMMAND_OK, PGRES_TUPLES_OK};
    PGresult *res[2] = {NULL, NULL}, *sync;
    char why[256] = "";
    const char *step = "sending BEGIN";
    if (!PQenterPipelineMode(c->pg) || !PQsendQueryParams(c->pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0))
        goto lost;
    step = "sending the batch's dedup INSERT";
    if (!PQsendQueryParams(c->pg, c->sql_dedup_batch, 2, NULL, d, NULL, NULL, 0))
        goto lost;
    step = "sending the pipeline's Sync";
    if (!PQpipelineSync(c->pg))
        goto lost;
    /* The server holds a pipeline's answers until the Sync: they come together. */
    step = "BEGIN and the batch's dedup INSERT";
    for (int q = 0; q < 2; q++)
        if (!(res[q] = outbox_pg_result(c->pg, &c->lim, why, sizeof(why))))
            goto lost;
    step = "the pipeline's Sync";
    if (outbox_pg_wait(c->pg, &c->lim, why, sizeof(why)))
        goto lost;
    sync = PQgetResult(c->pg);
    bool synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced || !PQexitPipelineMode(c->pg))
        goto lost;
    for (int q = 0; q < 2; q++) {
        if (PQresultStatus(res[q]) != want[q]) {
            outbox_cons_err(c, PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION,
                            "%s for %s failed: %s", what[q], which, PQresultErrorMessage(res[q]));
            PQclear(res[0]);
            PQclear(res[1]);
            return NULL;
        }
    }
    PQclear(res[0]);
    return res[1];
lost:
    outbox_cons_err(c, OUTBOX_ERR_CONNECTION, "%s for %s failed: %s", step, which,
                    *why ? why : PQerrorMessage(c->pg));
    PQclear(res[0]);
    PQclear(res[1]);
    outbox_cons_pg_drop(c); /* results that cannot be read: start afresh on a new session */
    return NULL;
}

/* A new savepoint for the next handler call; the one before it (if any) is released in the same
 * round trip. */
static bool savepoint(batch_t *b) {
    bool ok = outbox_cons_exec_ok(b->c, b->sp_open ? "RELEASE SAVEPOINT " SAVEPOINT_NAME "; SAVEPOINT " SAVEPOINT_NAME
                                                   : "SAVEPOINT " SAVEPOINT_NAME);
    b->sp_open = ok;
    return ok;
}

static bool rollback_to_savepoint(batch_t *b) {
    return outbox_cons_exec_ok(b->c, "ROLLBACK TO SAVEPOINT " SAVEPOINT_NAME);
}

/* The entries' ids as a PostgreSQL array literal ("{id,id}"), those for which want(e) holds.
 * Ids are valid UUIDs (outbox_message_decode checks them).  Caller frees; NULL: out of memory. */
static char *id_array(batch_t *b, bool (*want)(const outbox_cons_entry_t *), int *count) {
    char *s = malloc((size_t)b->n * (OUTBOX_UUID_STR_LEN + 1) + 3), *w = s;
    if (!s)
        return NULL;
    *w++ = '{';
    *count = 0;
    for (int i = 0; i < b->n; i++) {
        const outbox_cons_entry_t *e = &b->c->batch[i];
        if (!want(e))
            continue;
        if (*count)
            *w++ = ',';
        size_t l = strlen(e->v.msg->id);
        memcpy(w, e->v.msg->id, l);
        w += l;
        ++*count;
    }
    *w++ = '}';
    *w = '\0';
    return s;
}

static bool decoded(const outbox_cons_entry_t *e) {
    return e->v.msg != NULL;
}

/* Recorded as new by this batch but not handled: the record must go, so a redelivery runs it (a
 * parked or held message too: its retry applies it). */
static bool to_undo(const outbox_cons_entry_t *e) {
    return e->is_new && e->state != E_HANDLED && e->state != E_REJECTED;
}

/* ---- outcomes ------------------------------------------------------------------------------- */

/* Records a rejected message in consumer_dead_letters, inside the batch's transaction (after the
 * handler's work was rolled back to its savepoint).  A message with a valid id is also marked
 * processed, so that a redelivery is skipped (the batch's dedup INSERT did so already for a
 * message a handler rejected).  The one place a rejected message goes: a policy other than the
 * dead letter (e.g. parking its key) hooks here.  Returns false when PostgreSQL failed. */
static bool reject_in_batch(batch_t *b, outbox_cons_entry_t *e, const char *reason) {
    outbox_consumer_t *c = b->c;
    const rd_kafka_message_t *m = e->m;
    const char *msg_id = e->v.msg ? e->v.msg->id : e->v.dead_id;
    if (c->park && outbox_park_can_park(c->park, m)) {
        /* park-key: it parks its key, in the batch's transaction; the rest of the key waits. */
        outbox_err_t err = outbox_park_store(c->park, c->pg, m, e->v.msg || e->v.dead_id_valid ? msg_id : NULL,
                                             reason, e->warned);
        if (err == OUTBOX_ERR_CONNECTION)
            outbox_cons_pg_drop(c);
        if (err)
            return false;
        e->state = E_PARKED;
        e->warned = true;
        b->rejected++;
        return true;
    }
    bool mark = !e->v.msg && e->v.dead_id_valid;
    char part[16], off[24], why[256];
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    const char *p[7] = {c->group, msg_id, reason, m->payload ? m->payload : "", rd_kafka_topic_name(m->rkt),
                        part, off};
    int lens[7] = {0, 0, 0, (int)m->len, 0, 0, 0};
    int fmts[7] = {0, 0, 0, 1, 0, 0, 0};
    if (!c->pg)
        return false;
    if (!outbox_cons_stmt_ok(c, outbox_pg_exec(c->pg, &c->lim, c->sql_reject, 7, p, lens, fmts, 0, why, sizeof(why)),
                             why, "recording a rejected message"))
        return false;
    if (mark) {
        const char *d[2] = {c->group, msg_id};
        if (!c->pg || !outbox_cons_stmt_ok(c, outbox_pg_exec(c->pg, &c->lim, c->sql_dedup, 2, d, NULL, NULL, 0, why,
                                                             sizeof(why)),
                                           why, "recording a rejected message as processed"))
            return false;
    }
    e->state = E_REJECTED;
    b->rejected++;
    char rsn[512];
    if (!e->warned)
        outbox_log(c->conf, 4, FAC, "msg=\"rejected a message\" topic=%s partition=%d offset=%lld id=%s "
                   "reason=\"%s\"", rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
                   msg_id ? msg_id : "-", outbox_logfmt_value(reason, rsn, sizeof(rsn)));
    e->warned = true;
    return true;
}

/* Under park-key, e waits behind its key when the key is parked at or before e's offset (also by a
 * message earlier in this batch): it is stored in consumer_parked in the batch's transaction.
 * 1: held, 0: not, -1: PostgreSQL failed. */
static int hold_if_parked(batch_t *b, outbox_cons_entry_t *e) {
    outbox_consumer_t *c = b->c;
    bool held = false;
    if (!c->park)
        return 0;
    outbox_err_t err = outbox_park_held(c->park, c->pg, c->rk, e->m, &held);
    if (!err && held)
        err = outbox_park_store(c->park, c->pg, e->m, NULL, NULL, false);
    if (err == OUTBOX_ERR_CONNECTION)
        outbox_cons_pg_drop(c);
    if (err)
        return -1;
    if (held)
        e->state = E_HELD;
    return held;
}

/* A RETRY: this message and the rest of its partition in the batch are delivered again, after
 * consumer.retry.backoff.ms; what came before it commits with the batch. */
static void retry_from(batch_t *b, int idx) {
    batch_part_t *p = &b->parts[b->c->batch[idx].part];
    if (p->stop < 0 || idx < p->stop) {
        p->stop = idx;
        p->stop_pause_ms = b->c->retry_backoff_ms;
    }
    b->c->batch[idx].state = E_UNDONE;
    b->c->stats.retried++;
}

static bool stopped(const batch_t *b, int idx) {
    const batch_part_t *p = &b->parts[b->c->batch[idx].part];
    return p->stop >= 0 && idx >= p->stop;
}

/* Applies a result other than OK to e, after its work was rolled back to the savepoint. */
static bool apply_failure(batch_t *b, outbox_cons_entry_t *e, outbox_handler_result_t r) {
    /* A failure before the optimistic pass's one changes what that handler would see: it is called
     * again rather than given its first result (run_one). */
    b->failed = NULL;
    if (r == OUTBOX_HANDLER_REJECT)
        return reject_in_batch(b, e, "rejected by the handler");
    if (r == OUTBOX_HANDLER_OK)
        outbox_log(b->c->conf, 4, FAC, "msg=\"handler returned OK but its transaction failed; retrying\" id=%s",
                   e->v.msg->id);
    retry_from(b, (int)(e - b->c->batch));
    return true;
}

/* ---- handlers ------------------------------------------------------------------------------- */

/* The handler ended the transaction itself (COMMIT or ROLLBACK on conn, which it must not do).  If
 * its COMMIT took the batch's dedup records with it, the work so far stands and the rest of the
 * batch is delivered again once its records are deleted (by the final DELETE, in a new
 * transaction); if the records are gone, so is the work: the whole batch is delivered again.
 * Returns false when PostgreSQL failed. */
static bool handler_ended_tx(batch_t *b, outbox_cons_entry_t **list, int k) {
    outbox_cons_entry_t *e = list[k - 1];
    outbox_consumer_t *c = b->c;
    char sql[320], why[256];
    outbox_log(c->conf, 4, FAC, "msg=\"handler ended the transaction itself; the rest of the batch is "
               "delivered again\" id=%s", e->v.msg->id);
    snprintf(sql, sizeof(sql), "SELECT 1 FROM %s.processed WHERE consumer = $1 AND message_id = $2::uuid", c->schema_q);
    const char *d[2] = {c->group, e->v.msg->id};
    PGresult *res = outbox_pg_exec(c->pg, &c->lim, sql, 2, d, NULL, NULL, 0, why, sizeof(why));
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        outbox_cons_err(c, OUTBOX_ERR_CONNECTION, "checking the batch after the handler ended its transaction failed: %s",
                        why);
        outbox_cons_pg_drop(c);
        return false;
    }
    bool committed = PQntuples(res) == 1;
    PQclear(res);
    b->sp_open = false;
    b->ended = true;
    int idx = (int)(e - c->batch);
    for (int i = 0; i < b->n; i++) {
        batch_part_t *p = &b->parts[c->batch[i].part];
        bool redo = committed ? i > idx : true;
        if (redo && (p->stop < 0 || i < p->stop)) {
            p->stop = i;
            p->stop_pause_ms = 0;
        }
    }
    if (committed) {
        for (int i = 0; i < k; i++)
            list[i]->state = E_HANDLED;
        b->processed += k;
    } else {
        for (int i = 0; i < b->n; i++)
            c->batch[i].is_new = false; /* their records went with the ROLLBACK */
        b->processed = b->duplicates = b->rejected = 0;
    }
    return outbox_cons_exec_ok(c, "BEGIN");
}

/* Runs the handler with the session in libpq's default, blocking mode.  Non-blocking mode changes
 * what some synchronous calls mean: PQexec and friends still wait (PQgetResult waits for the
 * socket itself), but PQputCopyData may return 0 ("not queued, try again"), PQputnbytes fails,
 * and PQfn, under every lo_* large-object call, fails as soon as its request does not fit the
 * socket at once.  The handler's statements are its own business, unbounded by pg.timeout.ms.
 * Our statements go back to non-blocking mode afterwards.  *ts gets the transaction status the
 * handler left. */
static void call_handler(batch_t *b, outbox_cons_entry_t **list, int k, PGTransactionStatusType *ts) {
    outbox_consumer_t *c = b->c;
    PQsetnonblocking(c->pg, 0); /* cannot fail: our statements left nothing unsent */
    if (c->batch_cb) {
        for (int i = 0; i < k; i++) {
            b->msgs[i] = list[i]->v.msg;
            b->results[i] = OUTBOX_HANDLER_OK;
        }
        c->batch_cb(b->msgs, (size_t)k, c->pg, b->results, c->batch_opaque);
    } else {
        b->results[0] = b->handler(list[0]->v.msg, c->pg, b->opaque);
    }
    *ts = PQtransactionStatus(c->pg);
    /* Flushes what the handler left unsent; fails only on a broken session, which our next
     * statement reports. */
    PQsetnonblocking(c->pg, 1);
}

/* Runs the handler on list[0..k) inside a savepoint (none in the optimistic pass).  1: every
 * result OK, the work stays; 0: rolled back to the savepoint, results in b->results, *failed_tx set
 * when the transaction had failed; -1: PostgreSQL failed (recorded), or, in the optimistic pass, a
 * result other than OK or a failed transaction (b->fall_back set, nothing applied); 2: the handler
 * ended the transaction (handled: without a savepoint the same as with one, since its COMMIT or
 * ROLLBACK takes the whole transaction either way). */
static int run_set(batch_t *b, outbox_cons_entry_t **list, int k, bool *failed_tx) {
    PGTransactionStatusType ts;
    if (!b->optimistic && !savepoint(b))
        return -1;
    call_handler(b, list, k, &ts);
    if (ts == PQTRANS_IDLE)
        return handler_ended_tx(b, list, k) ? 2 : -1;
    if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR) {
        outbox_cons_err(b->c, OUTBOX_ERR_CONNECTION, "the session broke in the handler: %s", PQerrorMessage(b->c->pg));
        outbox_cons_pg_drop(b->c);
        return -1;
    }
    bool all_ok = ts == PQTRANS_INTRANS;
    for (int i = 0; i < k && all_ok; i++)
        all_ok = b->results[i] == OUTBOX_HANDLER_OK;
    if (all_ok) {
        for (int i = 0; i < k; i++)
            list[i]->state = E_HANDLED;
        b->processed += k;
        return 1;
    }
    if (b->optimistic) {
        /* Nothing to roll back to: the savepoint pass applies it (fall_back, run_one). */
        b->fall_back = true;
        b->failed = list[0];
        b->failed_result = b->results[0];
        return -1;
    }
    *failed_tx = ts == PQTRANS_INERROR;
    return rollback_to_savepoint(b) ? 0 : -1;
}

/* One message alone: handled, rejected or retried.  false when PostgreSQL failed, or when the
 * optimistic pass must fall back (b->fall_back). */
static bool run_one(batch_t *b, outbox_cons_entry_t *e) {
    if (e == b->failed) {
        /* Its handler failed in the optimistic pass, in the same state as now (the messages before
         * it did the same again): that result applies, as if it had been called in this savepoint,
         * so a failing handler is called once per delivery, as with savepoints always. */
        return apply_failure(b, e, b->failed_result);
    }
    bool failed_tx = false;
    int rc = run_set(b, &e, 1, &failed_tx);
    if (rc < 0)
        return false;
    if (rc == 0)
        return apply_failure(b, e, b->results[0]);
    return true;
}

/* Collects the new messages from index from on that are not in a partition being retried, nor
 * held behind a parked key; -1 when PostgreSQL failed. */
static int pending_new(batch_t *b, int from) {
    int k = 0;
    for (int i = from; i < b->n; i++) {
        outbox_cons_entry_t *e = &b->c->batch[i];
        if (e->state != E_PENDING || !e->is_new || stopped(b, i))
            continue;
        int held = hold_if_parked(b, e);
        if (held < 0)
            return -1;
        if (!held)
            b->list[k++] = e;
    }
    return k;
}

/* The batch handler: all new messages in one call; after a result other than OK, again with those
 * before it, then that one alone, then the rest (see outbox_batch_handler_cb). */
static bool run_batch_handler(batch_t *b) {
    int from = 0;
    while (!b->ended) {
        int k = pending_new(b, from);
        if (k < 0)
            return false;
        if (!k)
            return true;
        bool failed_tx = false;
        int rc = run_set(b, b->list, k, &failed_tx);
        if (rc < 0)
            return false;
        if (rc > 0)
            return true;
        int bad = -1;
        for (int i = 0; i < k && bad < 0; i++)
            if (b->results[i] != OUTBOX_HANDLER_OK)
                bad = i;
        if (bad < 0) {
            /* Every result OK but the transaction failed: find the culprit one message at a time. */
            for (int i = 0; i < k && !b->ended; i++) {
                int idx = (int)(b->list[i] - b->c->batch);
                if (!stopped(b, idx) && !run_one(b, b->list[i]))
                    return false;
            }
            return true;
        }
        outbox_cons_entry_t *e = b->list[bad];
        outbox_handler_result_t r = b->results[bad];
        if (bad > 0) {
            rc = run_set(b, b->list, bad, &failed_tx);
            if (rc < 0)
                return false;
            if (rc == 0) /* not what it said the first time: one at a time */
                for (int i = 0; i < bad && !b->ended; i++)
                    if (!run_one(b, b->list[i]))
                        return false;
            if (b->ended)
                return true;
        }
        if (!apply_failure(b, e, r))
            return false;
        from = (int)(e - b->c->batch) + 1;
    }
    return true;
}

/* ---- the batch ------------------------------------------------------------------------------ */

/* Matches the ids the dedup INSERT returned to the entries (the first entry with that id: a record
 * twice in one batch is new once).  The rows come in the order of the array, so the search
 * usually finds the next one at once. */
static void mark_new(batch_t *b, PGresult *res) {
    int j = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *id = PQgetvalue(res, r, 0);
        for (int t = 0; t < b->n; t++, j = (j + 1) % b->n) {
            outbox_cons_entry_t *e = &b->c->batch[j];
            if (e->v.msg && !e->is_new && !strcasecmp(e->v.msg->id, id)) {
                e->is_new = true;
                break;
            }
        }
    }
}

/* PostgreSQL failed: roll back and deliver the whole batch again (dedup skips what had committed
 * if a COMMIT's answer was lost). */
static outbox_err_t batch_failed(batch_t *b, int pause_ms) {
    outbox_consumer_t *c = b->c;
    outbox_park_forget(c->park); /* keys this batch parked went with its transaction */
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK)
        outbox_cons_rollback(c);
    for (int p = 0; p < b->n_parts; p++)
        outbox_cons_redeliver(c, c->batch[b->parts[p].first].m, pause_ms);
    char why[sizeof(c->errstr)];
    outbox_log(c->conf, 3, FAC, "msg=\"processing a batch failed, will redeliver it\" messages=%d partitions=%d "
               "error=\"%s\"", b->n, b->n_parts, outbox_logfmt_value(c->errstr, why, sizeof(why)));
    return c->pg && PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION;
}

/* Decodes every record and groups them by partition.  false: out of memory. */
static bool prepare(batch_t *b) {
    outbox_consumer_t *c = b->c;
    for (int i = 0; i < b->n; i++) {
        outbox_cons_entry_t *e = &c->batch[i];
        rd_kafka_headers_t *headers = NULL;
        if (rd_kafka_message_headers(e->m, &headers))
            headers = NULL; /* none, or unparsable: then there is no "id" header to fall back on */
        if (outbox_consumer_verdict(e->m->payload, e->m->len, e->m->key, e->m->key_len, rd_kafka_topic_name(e->m->rkt),
                                    headers, c->major_max, &e->v)) {
            /* Borrowed from the record, which outlives the handler call (outbox_message_kafka_topic). */
            e->v.msg->kafka_topic = rd_kafka_topic_name(e->m->rkt);
            e->v.msg->kafka_partition = e->m->partition;
            e->v.msg->kafka_offset = e->m->offset;
        }
        int p = 0;
        while (p < b->n_parts && (b->parts[p].rkt != e->m->rkt || b->parts[p].partition != e->m->partition))
            p++;
        if (p == b->n_parts) {
            b->parts[p].rkt = e->m->rkt;
            b->parts[p].partition = e->m->partition;
            b->parts[p].first = i;
            b->parts[p].stop = -1;
            b->parts[p].stop_pause_ms = 0;
            b->n_parts++;
        }
        b->parts[p].last = i;
        e->part = p;
    }
    return true;
}

/* After the COMMIT: the offsets of each partition up to the last record whose effect committed,
 * and the partitions with a RETRY rewound to it. */
static void settle(batch_t *b) {
    outbox_consumer_t *c = b->c;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(b->n_parts);
    for (int p = 0; p < b->n_parts; p++) {
        const batch_part_t *bp = &b->parts[p];
        int upto = bp->stop >= 0 ? bp->stop : -1;
        int64_t next = upto >= 0 ? c->batch[upto].m->offset : c->batch[bp->last].m->offset + 1;
        if (upto != bp->first)
            rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(bp->rkt), bp->partition)->offset = next;
        if (upto >= 0)
            outbox_cons_redeliver(c, c->batch[upto].m, bp->stop_pause_ms);
    }
    if (l->cnt)
        rd_kafka_offsets_store(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    c->stats.processed += b->processed;
    c->stats.duplicates += b->duplicates;
    c->stats.rejected += b->rejected;
}

static outbox_err_t run_pass(batch_t *b);

/* The optimistic pass met a failure (a result other than OK, a failed statement): it goes back
 * whole, and the batch runs again from its BEGIN, the savepoint way, which applies the failure as
 * always (the handlers before the failed one are called again; the failed one's result is kept,
 * b->failed).  That pass starts from the state the first one started from: everything the first
 * changed is reset here (states, dedup flags, retry stops, counts; the park set is reloaded).
 * The first pass stored no offsets, rewound nothing and counted nothing in c->stats: settle()
 * and retry_from() only run in the pass that commits or applies a failure. */
static outbox_err_t fall_back(batch_t *b) {
    outbox_consumer_t *c = b->c;
    outbox_park_forget(c->park); /* keys the first pass parked or held went with its transaction */
    if (!outbox_cons_exec_ok(c, "ROLLBACK"))
        return batch_failed(b, c->retry_backoff_ms);
    for (int i = 0; i < b->n; i++) {
        c->batch[i].state = E_PENDING;
        c->batch[i].is_new = false;
    }
    for (int p = 0; p < b->n_parts; p++) {
        b->parts[p].stop = -1;
        b->parts[p].stop_pause_ms = 0;
    }
    b->sp_open = b->ended = b->optimistic = b->fall_back = false;
    b->processed = b->duplicates = b->rejected = 0;
    outbox_log(c->conf, 6, FAC, "msg=\"a handler failed in the batch's first pass; running the batch again with "
               "savepoints\" messages=%d", b->n);
    return run_pass(b);
}

/* BEGIN and the dedup, the handlers, the undo of what is delivered again, COMMIT and the offsets:
 * once, or (after fall_back) a second time with savepoints. */
static outbox_err_t run_pass(batch_t *b) {
    outbox_consumer_t *c = b->c;
    int cnt;
    char *ids = id_array(b, decoded, &cnt);
    if (!ids) {
        /* Delivered again, not dropped: later batches would store offsets past these records. */
        outbox_cons_err(c, OUTBOX_ERR_NOMEM, "out of memory for a batch of %d messages", b->n);
        batch_failed(b, c->retry_backoff_ms);
        return OUTBOX_ERR_NOMEM;
    }
    /* The error names the messages: the one, or the first and last of the batch. */
    char which[128] = "no decodable message";
    const char *first = NULL, *last = NULL;
    for (int i = 0; i < b->n; i++)
        if (c->batch[i].v.msg) {
            last = c->batch[i].v.msg->id;
            first = first ? first : last;
        }
    if (cnt == 1)
        snprintf(which, sizeof(which), "message %s", first);
    else if (cnt > 1)
        snprintf(which, sizeof(which), "%d messages %s..%s", cnt, first, last);
    PGresult *res = begin_and_dedup(c, ids, which);
    free(ids);
    if (!res)
        return batch_failed(b, c->retry_backoff_ms);
    mark_new(b, res);
    PQclear(res);
    /* Duplicates and undecodable records first (one of a parked key waits behind it)... */
    for (int i = 0; i < b->n; i++) {
        outbox_cons_entry_t *e = &c->batch[i];
        if (e->v.msg && !e->is_new) {
            e->state = E_DUPLICATE;
            b->duplicates++;
            outbox_log(c->conf, 7, FAC, "msg=\"duplicate skipped\" id=%s", e->v.msg->id);
        } else if (!e->v.msg) {
            int held = hold_if_parked(b, e);
            if (held < 0 || (!held && !reject_in_batch(b, e, e->v.reason)))
                return batch_failed(b, c->retry_backoff_ms);
        }
    }
    /* ... then the new messages, in order. */
    if (c->batch_cb) {
        if (!run_batch_handler(b))
            return batch_failed(b, c->retry_backoff_ms);
    } else {
        for (int i = 0; i < b->n && !b->ended; i++) {
            outbox_cons_entry_t *e = &c->batch[i];
            if (e->state != E_PENDING || !e->is_new || stopped(b, i))
                continue;
            int held = hold_if_parked(b, e);
            if (held < 0 || (!held && !run_one(b, e)))
                return b->fall_back ? fall_back(b) : batch_failed(b, c->retry_backoff_ms);
        }
    }
    /* Records of messages that will be delivered again go, so that they are not skipped then. */
    ids = id_array(b, to_undo, &cnt);
    if (!ids)
        return batch_failed(b, c->retry_backoff_ms);
    if (cnt) {
        const char *d[2] = {c->group, ids};
        char why[256];
        bool ok = c->pg && outbox_cons_stmt_ok(c, outbox_pg_exec(c->pg, &c->lim, c->sql_undo, 2, d, NULL, NULL, 0, why,
                                                                 sizeof(why)),
                                               why, "deleting the dedup records of messages delivered again");
        if (!ok) {
            free(ids);
            return batch_failed(b, c->retry_backoff_ms);
        }
    }
    free(ids);
    if (!outbox_cons_exec_ok(c, "COMMIT"))
        return batch_failed(b, c->retry_backoff_ms);
    settle(b);
    return OUTBOX_OK;
}

static outbox_err_t process_batch(batch_t *b) {
    outbox_consumer_t *c = b->c;
    prepare(b);
    if (!outbox_cons_pg_ensure(c)) {
        /* The partitions rest until the next setup attempt is due, at least retry.backoff.ms. */
        int64_t due = c->setup_next_ms - outbox_mono_ms();
        for (int p = 0; p < b->n_parts; p++)
            outbox_cons_redeliver(c, c->batch[b->parts[p].first].m,
                                  due > c->retry_backoff_ms ? (int)due : c->retry_backoff_ms);
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    }
    /* The batch handler keeps its savepoint: one per batch, and its calls after a failure are
     * documented (outbox_batch_handler_cb). */
    b->optimistic = c->optimistic_batches && !c->batch_cb;
    return run_pass(b);
}

/* ---- pruning -------------------------------------------------------------------------------- */

/* Deletes one chunk of this group's dedup records older than consumer.processed.retention.s, on
 * the idle session, when it is due: off the hot path, between batches. */
static void prune_tick(outbox_consumer_t *c) {
    int64_t now = outbox_mono_ms();
    if (c->retention_s <= 0 || now < c->prune_next_ms || !c->pg || PQstatus(c->pg) != CONNECTION_OK)
        return;
    char age[32], lim[16], why[256];
    snprintf(age, sizeof(age), "%lld", (long long)c->retention_s);
    snprintf(lim, sizeof(lim), "%d", PRUNE_CHUNK);
    const char *p[3] = {c->group, age, lim};
    PGresult *res = outbox_pg_exec(c->pg, &c->lim, c->sql_prune, 3, p, NULL, NULL, 0, why, sizeof(why));
    long long n = res && PQresultStatus(res) == PGRES_COMMAND_OK ? atoll(PQcmdTuples(res)) : -1;
    if (n < 0) {
        char e[512];
        outbox_log(c->conf, 4, FAC, "msg=\"pruning processed records failed\" error=\"%s\"",
                   outbox_logfmt_value(res ? PQresultErrorMessage(res) : why, e, sizeof(e)));
        if (!res || PQstatus(c->pg) != CONNECTION_OK)
            outbox_cons_pg_drop(c);
    } else if (n) {
        outbox_log(c->conf, 7, FAC, "msg=\"pruned processed records\" deleted=%lld", n);
    }
    PQclear(res);
    c->prune_next_ms = n == PRUNE_CHUNK ? now : now + PRUNE_INTERVAL_MS;
}

/* ---- the poll ------------------------------------------------------------------------------- */

outbox_err_t outbox_cons_poll_batch(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque,
                                    int timeout_ms) {
    size_t max = (size_t)c->batch_max;
    if (!c->batch && !(c->batch = calloc(max, sizeof(*c->batch))))
        return outbox_cons_err(c, OUTBOX_ERR_NOMEM, "out of memory for consumer.batch.max=%d", c->batch_max);
    batch_t b = {.c = c, .handler = handler, .opaque = opaque};
    b.parts = malloc(max * sizeof(*b.parts));
    b.msgs = malloc(max * sizeof(*b.msgs));
    b.results = malloc(max * sizeof(*b.results));
    b.list = malloc(max * sizeof(*b.list));
    outbox_err_t err = OUTBOX_OK;
    if (!b.parts || !b.msgs || !b.results || !b.list) {
        err = outbox_cons_err(c, OUTBOX_ERR_NOMEM, "out of memory for consumer.batch.max=%d", c->batch_max);
        goto out;
    }
    b.n = gather(c, timeout_ms);
    if (b.n) {
        err = process_batch(&b);
        for (int i = 0; i < b.n; i++) {
            outbox_message_destroy(c->batch[i].v.msg);
            rd_kafka_message_destroy(c->batch[i].m);
        }
        rd_kafka_commit(c->rk, NULL, 1); /* the offsets stored after the batch's COMMIT */
    }
    if (!err)
        prune_tick(c);
out:
    free(b.parts);
    free(b.msgs);
    free(b.results);
    free(b.list);
    return err;
}
