/*
 * consumer_park.c: per-key parking on the consumer side (consumer.reject.policy=park-key).  A
 * rejected message parks its Kafka key within its partition: it and every later message of that
 * key wait in <schema>.consumer_parked, in offset order, while other keys flow and offsets are
 * committed as usual, until the key is released (outbox_consumer_parked_retry() or
 * `outbox-relay consumer-parked retry`) or its rows are dropped.
 *
 * The table is the truth and survives restarts and rebalances; the in-memory set mirrors it for
 * the partitions this member owns.  A key is due for retry when one of its rows is released, or
 * when its first row has no reason (the poison was dropped by `consumer-parked drop
 * --first-only`, or every row was dropped while new ones were being held): its rows are then
 * handed to the handler in offset order until none is left.
 */
#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include "consumer_park.h"

#define FAC "CONSUMER"
/* How often the set is read again, so that a release or drop by another process (the CLI) is
 * noticed "within a second or two", for one small query a second. */
#define PARK_REFRESH_MS 1000

typedef struct {
    char *topic;
    int32_t partition;
    uint8_t *key;
    size_t key_len;
    int64_t first_offset; /* messages from here on wait behind the key */
    bool due;             /* released: retry at the next poll */
    int64_t next_try_ms;  /* after a RETRY from the handler, not before */
} park_key_t;

struct outbox_park_s {
    outbox_park_env_t env;
    park_key_t *keys;
    size_t cnt, cap;
    bool stale;           /* the assignment changed or a release asked for it: load before use */
    int64_t refreshed_ms; /* when the set was last read */
    char sql_store[512];
    char sql_load[512];
    char sql_first[512];
    char sql_delete[256];
    char sql_repark[512];
    char sql_release[256];
    char sql_dedup[256];
};

static outbox_err_t perr(outbox_park_t *p, outbox_err_t err, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
static outbox_err_t perr(outbox_park_t *p, outbox_err_t err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->env.errstr, p->env.errstr_size, fmt, ap);
    va_end(ap);
    return err;
}

outbox_park_t *outbox_park_new(const outbox_park_env_t *env, bool *nomem) {
    *nomem = false;
    if (strcmp(outbox_conf_str(env->conf, "consumer.reject.policy"), "park-key") != 0)
        return NULL;
    outbox_park_t *p = calloc(1, sizeof(*p));
    if (!p) {
        *nomem = true;
        return NULL;
    }
    p->env = *env;
    p->stale = true;
    const char *s = env->schema_q;
    snprintf(p->sql_store, sizeof(p->sql_store),
             "INSERT INTO %s.consumer_parked (consumer, topic, kafka_partition, kafka_offset, kafka_key, "
             "message_id, raw, reason, headers) VALUES ($1, $2, $3::int, $4::bigint, $5, $6, $7, $8, $9) "
             "ON CONFLICT DO NOTHING",
             s);
    /* One row per key: where it starts, and whether it is due (see the top of this file). */
    snprintf(p->sql_load, sizeof(p->sql_load),
             "SELECT topic, kafka_partition::text, kafka_key, min(kafka_offset)::text, "
             "(bool_or(released) OR (array_agg(reason ORDER BY kafka_offset))[1] IS NULL)::text "
             "FROM %s.consumer_parked WHERE consumer = $1 GROUP BY topic, kafka_partition, kafka_key", s);
    snprintf(p->sql_first, sizeof(p->sql_first),
             "SELECT kafka_offset::text, message_id, raw, headers FROM %s.consumer_parked WHERE consumer = $1 "
             "AND topic = $2 AND kafka_partition = $3::int AND kafka_key = $4 ORDER BY kafka_offset LIMIT 1", s);
    snprintf(p->sql_delete, sizeof(p->sql_delete),
             "DELETE FROM %s.consumer_parked WHERE consumer = $1 AND topic = $2 AND kafka_partition = $3::int "
             "AND kafka_offset = $4::bigint", s);
    snprintf(p->sql_repark, sizeof(p->sql_repark),
             "UPDATE %s.consumer_parked SET released = false, reason = CASE WHEN kafka_offset = $5::bigint "
             "THEN $6 ELSE reason END WHERE consumer = $1 AND topic = $2 AND kafka_partition = $3::int "
             "AND kafka_key = $4", s);
    snprintf(p->sql_release, sizeof(p->sql_release),
             "UPDATE %s.consumer_parked SET released = true WHERE consumer = $1 AND kafka_key = $2", s);
    snprintf(p->sql_dedup, sizeof(p->sql_dedup),
             "INSERT INTO %s.processed (consumer, message_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING", s);
    return p;
}

static void key_free(park_key_t *k) {
    free(k->topic);
    free(k->key);
}

void outbox_park_destroy(outbox_park_t *p) {
    if (!p)
        return;
    for (size_t i = 0; i < p->cnt; i++)
        key_free(&p->keys[i]);
    free(p->keys);
    free(p);
}

void outbox_park_assigned(outbox_park_t *p) {
    if (p)
        p->stale = true;
}

void outbox_park_revoked(outbox_park_t *p, const rd_kafka_topic_partition_list_t *parts) {
    if (!p)
        return;
    for (size_t i = 0; i < p->cnt;) {
        if (rd_kafka_topic_partition_list_find(parts, p->keys[i].topic, p->keys[i].partition)) {
            key_free(&p->keys[i]);
            p->keys[i] = p->keys[--p->cnt];
        } else {
            i++;
        }
    }
}

static park_key_t *find(outbox_park_t *p, const char *topic, int32_t partition, const void *key, size_t len) {
    for (size_t i = 0; i < p->cnt; i++) {
        park_key_t *k = &p->keys[i];
        if (k->partition == partition && k->key_len == len && !memcmp(k->key, key, len) && !strcmp(k->topic, topic))
            return k;
    }
    return NULL;
}

static park_key_t *add(outbox_park_t *p, const char *topic, int32_t partition, const void *key, size_t len) {
    if (p->cnt == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        park_key_t *n = realloc(p->keys, cap * sizeof(*n));
        if (!n)
            return NULL;
        p->keys = n;
        p->cap = cap;
    }
    park_key_t *k = &p->keys[p->cnt];
    memset(k, 0, sizeof(*k));
    k->topic = outbox_strdup(topic);
    k->key = malloc(len ? len : 1);
    if (!k->topic || !k->key) {
        key_free(k);
        return NULL;
    }
    memcpy(k->key, key, len);
    k->key_len = len;
    k->partition = partition;
    p->cnt++;
    return k;
}

/* Runs one of our statements on pg; NULL (error recorded) unless it ended with status want. */
static PGresult *run(outbox_park_t *p, PGconn *pg, const char *sql, int n, const char *const *v, const int *l,
                     const int *f, int rfmt, ExecStatusType want, const char *what, outbox_err_t *err) {
    char why[256];
    PGresult *res = outbox_pg_exec(pg, p->env.lim, sql, n, v, l, f, rfmt, why, sizeof(why));
    if (res && PQresultStatus(res) == want)
        return res;
    bool lost = !res || PQstatus(pg) != CONNECTION_OK;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state && !strcmp(state, "42P01")) { /* undefined_table */
        *err = perr(p, OUTBOX_ERR_SCHEMA, "%s failed: %s.consumer_parked does not exist: "
                    "consumer.reject.policy=park-key needs schema version %d; run `outbox-relay migrate` "
                    "as the schema's owner", what, p->env.schema_q, OUTBOX_SCHEMA_VERSION);
        PQclear(res);
        return NULL;
    }
    *err = perr(p, lost ? OUTBOX_ERR_CONNECTION : OUTBOX_ERR_PG, "%s failed: %s", what,
                res ? PQresultErrorMessage(res) : why);
    PQclear(res);
    return NULL;
}

static outbox_err_t cmd(outbox_park_t *p, PGconn *pg, const char *sql, const char *what) {
    outbox_err_t err = OUTBOX_OK;
    PQclear(run(p, pg, sql, 0, NULL, NULL, NULL, 0, PGRES_COMMAND_OK, what, &err));
    return err;
}

static void rollback(outbox_park_t *p, PGconn *pg) {
    char keep[OUTBOX_ERRSTR_SIZE];
    snprintf(keep, sizeof(keep), "%s", p->env.errstr);
    if (PQtransactionStatus(pg) != PQTRANS_IDLE)
        cmd(p, pg, "ROLLBACK", "ROLLBACK");
    snprintf(p->env.errstr, p->env.errstr_size, "%s", keep); /* the error that made us roll back */
}

/* Whether partition (topic, partition) is in the assignment list a (NULL: unknown, take it). */
static bool assigned(const rd_kafka_topic_partition_list_t *a, const char *topic, int32_t partition) {
    return !a || rd_kafka_topic_partition_list_find(a, topic, partition);
}

/* Reads the set again from the table, for the partitions assigned now. */
static outbox_err_t load(outbox_park_t *p, PGconn *pg, rd_kafka_t *rk) {
    const char *v[1] = {p->env.group};
    outbox_err_t err = OUTBOX_OK;
    /* Binary results: the key is bytes; every other column is text (cast above), as is. */
    PGresult *res = run(p, pg, p->sql_load, 1, v, NULL, NULL, 1, PGRES_TUPLES_OK, "reading the parked keys", &err);
    if (!res)
        return err;
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rk && rd_kafka_assignment(rk, &a))
        a = NULL;
    park_key_t *old = p->keys;
    size_t old_cnt = p->cnt;
    p->keys = NULL;
    p->cnt = p->cap = 0;
    int rows = PQntuples(res);
    for (int i = 0; i < rows && !err; i++) {
        char topic[OUTBOX_KAFKA_TOPIC_MAX + 1], num[32];
        snprintf(topic, sizeof(topic), "%.*s", PQgetlength(res, i, 0), PQgetvalue(res, i, 0));
        snprintf(num, sizeof(num), "%.*s", PQgetlength(res, i, 1), PQgetvalue(res, i, 1));
        int32_t part = (int32_t)atol(num);
        if (!assigned(a, topic, part))
            continue;
        park_key_t *k = add(p, topic, part, PQgetvalue(res, i, 2), (size_t)PQgetlength(res, i, 2));
        if (!k) {
            err = perr(p, OUTBOX_ERR_NOMEM, "reading the parked keys: out of memory");
            break;
        }
        snprintf(num, sizeof(num), "%.*s", PQgetlength(res, i, 3), PQgetvalue(res, i, 3));
        k->first_offset = atoll(num);
        k->due = PQgetvalue(res, i, 4)[0] == 't';
        for (size_t o = 0; o < old_cnt; o++) /* a RETRY's wait outlives the refresh */
            if (old[o].partition == part && old[o].key_len == k->key_len && !memcmp(old[o].key, k->key, k->key_len) &&
                !strcmp(old[o].topic, topic))
                k->next_try_ms = old[o].next_try_ms;
    }
    for (size_t o = 0; o < old_cnt; o++)
        key_free(&old[o]);
    free(old);
    if (a)
        rd_kafka_topic_partition_list_destroy(a);
    PQclear(res);
    if (!err) {
        p->stale = false;
        p->refreshed_ms = outbox_mono_ms();
    }
    return err;
}

outbox_err_t outbox_park_held(outbox_park_t *p, PGconn *pg, rd_kafka_t *rk, const rd_kafka_message_t *m,
                              bool *held) {
    *held = false;
    if (p->stale) {
        outbox_err_t err = load(p, pg, rk);
        if (err)
            return err;
    }
    if (!p->cnt || !m->key_len)
        return OUTBOX_OK;
    park_key_t *k = find(p, rd_kafka_topic_name(m->rkt), m->partition, m->key, m->key_len);
    /* Below the first held offset is a redelivery of what went before the key parked: it was
     * processed (the dedup record skips it) and must not queue behind the key. */
    *held = k && m->offset >= k->first_offset;
    return OUTBOX_OK;
}

bool outbox_park_can_park(const outbox_park_t *p, const rd_kafka_message_t *m) {
    return p && m->key && m->key_len > 0;
}

/* The record's Kafka headers, kept with it so that its retry reads the same record (a CloudEvent
 * is all headers): per header a big-endian u32 name length, the name, a u32 value length
 * (0xffffffff: a NULL value) and the value.  NULL (no headers, or out of memory) in *out. */
static void headers_pack(const rd_kafka_message_t *m, char **out, size_t *len) {
    rd_kafka_headers_t *h = NULL;
    const char *name;
    const void *val;
    size_t size, n = 0;
    *out = NULL;
    *len = 0;
    if (rd_kafka_message_headers(m, &h) || !h)
        return;
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &val, &size); i++)
        n += 8 + strlen(name) + (val ? size : 0);
    char *buf = n ? malloc(n) : NULL, *w = buf;
    if (!buf)
        return;
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &val, &size); i++) {
        uint32_t nl = htobe32((uint32_t)strlen(name)), vl = htobe32(val ? (uint32_t)size : 0xffffffffu);
        memcpy(w, &nl, 4);
        memcpy(w + 4, name, strlen(name));
        w += 4 + strlen(name);
        memcpy(w, &vl, 4);
        w += 4;
        if (val) {
            memcpy(w, val, size);
            w += size;
        }
    }
    *out = buf;
    *len = n;
}

/* The headers headers_pack wrote; NULL when they do not parse or out of memory. */
static rd_kafka_headers_t *headers_unpack(const char *buf, size_t len) {
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    size_t at = 0;
    while (h && at < len) {
        uint32_t nl, vl;
        if (len - at < 4)
            goto bad;
        memcpy(&nl, buf + at, 4);
        nl = be32toh(nl);
        at += 4;
        if (len - at < (size_t)nl + 4)
            goto bad;
        const char *name = buf + at;
        at += nl;
        memcpy(&vl, buf + at, 4);
        vl = be32toh(vl);
        at += 4;
        if (vl != 0xffffffffu && len - at < vl)
            goto bad;
        if (rd_kafka_header_add(h, name, (ssize_t)nl, vl == 0xffffffffu ? NULL : buf + at,
                                vl == 0xffffffffu ? 0 : (ssize_t)vl))
            goto bad;
        at += vl == 0xffffffffu ? 0 : vl;
    }
    return h;
bad:
    rd_kafka_headers_destroy(h);
    return NULL;
}

outbox_err_t outbox_park_store(outbox_park_t *p, PGconn *pg, const rd_kafka_message_t *m, const char *msg_id,
                               const char *reason, bool quiet) {
    const char *topic = rd_kafka_topic_name(m->rkt);
    char part[16], off[24], hid[65];
    if (!msg_id) {
        /* A held message is not decoded: the record's "id" header names it in listings and in
         * the dead letter a drop makes. */
        rd_kafka_headers_t *h = NULL;
        const void *val;
        size_t vlen;
        if (!rd_kafka_message_headers(m, &h) && !rd_kafka_header_get_last(h, "id", &val, &vlen) && val &&
            vlen < sizeof(hid) && !memchr(val, 0, vlen)) {
            memcpy(hid, val, vlen);
            hid[vlen] = '\0';
            if (outbox_utf8_invalid_at(hid) < 0)
                msg_id = hid;
        }
    }
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    char *hdrs;
    size_t hdrs_len;
    headers_pack(m, &hdrs, &hdrs_len);
    const char *v[9] = {p->env.group, topic, part, off, m->key, msg_id, m->payload ? m->payload : "", reason, hdrs};
    int l[9] = {0, 0, 0, 0, (int)m->key_len, 0, (int)m->len, 0, (int)hdrs_len};
    int f[9] = {0, 0, 0, 0, 1, 0, 1, 0, 1};
    outbox_err_t err = OUTBOX_OK;
    PGresult *res = run(p, pg, p->sql_store, 9, v, l, f, 0, PGRES_COMMAND_OK,
                        reason ? "parking a rejected message's key" : "holding a message behind its parked key", &err);
    free(hdrs);
    if (!res)
        return err;
    PQclear(res);
    park_key_t *k = find(p, topic, m->partition, m->key, m->key_len);
    if (!k && !(k = add(p, topic, m->partition, m->key, m->key_len))) {
        p->stale = true; /* the row is stored: the next look-up reads it from the table */
        return OUTBOX_OK;
    }
    if (reason) {
        if (!k->due || m->offset < k->first_offset)
            k->first_offset = m->offset;
        k->due = false;
        char rsn[512];
        if (!quiet)
            outbox_log(p->env.conf, 4, FAC, "msg=\"parked a key\" topic=%s partition=%d offset=%lld id=%s "
                       "reason=\"%s\"", topic, (int)m->partition, (long long)m->offset, msg_id ? msg_id : "-",
                       outbox_logfmt_value(reason, rsn, sizeof(rsn)));
    } else {
        outbox_log(p->env.conf, 7, FAC, "msg=\"held a message behind its parked key\" topic=%s partition=%d "
                   "offset=%lld", topic, (int)m->partition, (long long)m->offset);
    }
    return OUTBOX_OK;
}

outbox_err_t outbox_park_release(outbox_park_t *p, PGconn *pg, const void *key, size_t len) {
    const char *v[2] = {p->env.group, len ? key : ""};
    int l[2] = {0, (int)len}, f[2] = {0, 1};
    outbox_err_t err = OUTBOX_OK;
    PGresult *res = run(p, pg, p->sql_release, 2, v, l, f, 0, PGRES_COMMAND_OK, "releasing a parked key", &err);
    if (!res)
        return err;
    outbox_log(p->env.conf, 6, FAC, "msg=\"released a parked key\" messages=%s", PQcmdTuples(res));
    PQclear(res);
    p->stale = true;
    return OUTBOX_OK;
}

/* ---- retrying a released key ---------------------------------------------------------------- */

/* The outcome of one held message's retry. */
typedef enum { STEP_DONE, STEP_EMPTY, STEP_STOP } step_t;

/* Keeps k parked at offset with a new reason; every row of it waits again for a release. */
static outbox_err_t repark(outbox_park_t *p, PGconn *pg, park_key_t *k, const char *part, const char *off,
                           const char *reason) {
    const char *v[6] = {p->env.group, k->topic, part, (const char *)k->key, off, reason};
    int l[6] = {0, 0, 0, (int)k->key_len, 0, 0}, f[6] = {0, 0, 0, 1, 0, 0};
    outbox_err_t err = OUTBOX_OK;
    PGresult *res = run(p, pg, p->sql_repark, 6, v, l, f, 0, PGRES_COMMAND_OK, "parking a key again", &err);
    if (!res)
        return err;
    PQclear(res);
    k->due = false;
    k->first_offset = atoll(off);
    p->env.stats->rejected++;
    char rsn[512];
    outbox_log(p->env.conf, 4, FAC, "msg=\"parked a key again: its first message was rejected on retry\" topic=%s "
               "partition=%s offset=%s reason=\"%s\"", k->topic, part, off,
               outbox_logfmt_value(reason, rsn, sizeof(rsn)));
    return OUTBOX_OK;
}

/* Hands k's first held message to handler in a transaction that also records it as processed
 * and deletes its row.  *step says whether to go on with the next one. */
static outbox_err_t retry_first(outbox_park_t *p, PGconn *pg, park_key_t *k, outbox_handler_cb handler,
                                void *opaque, step_t *step) {
    char part[16];
    snprintf(part, sizeof(part), "%d", (int)k->partition);
    const char *v[4] = {p->env.group, k->topic, part, (const char *)k->key};
    int l[4] = {0, 0, 0, (int)k->key_len}, f[4] = {0, 0, 0, 1};
    outbox_err_t err = OUTBOX_OK;
    *step = STEP_STOP;
    PGresult *row = run(p, pg, p->sql_first, 4, v, l, f, 1, PGRES_TUPLES_OK, "reading a parked message", &err);
    if (!row)
        return err;
    if (!PQntuples(row)) {
        PQclear(row);
        *step = STEP_EMPTY;
        return OUTBOX_OK;
    }
    char off[24], id[65] = "";
    snprintf(off, sizeof(off), "%.*s", PQgetlength(row, 0, 0), PQgetvalue(row, 0, 0));
    bool has_id = !PQgetisnull(row, 0, 1);
    if (has_id)
        snprintf(id, sizeof(id), "%.*s", PQgetlength(row, 0, 1), PQgetvalue(row, 0, 1));
    /* The record's own headers (a CloudEvent's attributes); for a row stored without them, the
     * "id" header, which names a value that is no envelope. */
    rd_kafka_headers_t *hdrs = NULL;
    if (!PQgetisnull(row, 0, 3))
        hdrs = headers_unpack(PQgetvalue(row, 0, 3), (size_t)PQgetlength(row, 0, 3));
    if (!hdrs && has_id && (hdrs = rd_kafka_headers_new(1)))
        rd_kafka_header_add(hdrs, "id", -1, id, -1);
    outbox_verdict_t verdict;
    bool ok = outbox_consumer_verdict(PQgetvalue(row, 0, 2), (size_t)PQgetlength(row, 0, 2), k->key, k->key_len,
                                      k->topic, hdrs, p->env.major_max, &verdict);
    if (hdrs)
        rd_kafka_headers_destroy(hdrs);
    PQclear(row);
    if (!ok)
        return repark(p, pg, k, part, off, verdict.reason);
    outbox_message_t *msg = verdict.msg;
    msg->kafka_topic = k->topic;
    msg->kafka_partition = k->partition;
    msg->kafka_offset = atoll(off);
    const char *d[4] = {p->env.group, k->topic, part, off};
    const char *dd[2] = {p->env.group, msg->id};
    PGresult *res;
    if ((err = cmd(p, pg, "BEGIN", "BEGIN")))
        goto out;
    if (!(res = run(p, pg, p->sql_delete, 4, d, NULL, NULL, 0, PGRES_COMMAND_OK, "removing a parked message", &err)))
        goto fail;
    PQclear(res);
    if (!(res = run(p, pg, p->sql_dedup, 2, dd, NULL, NULL, 0, PGRES_COMMAND_OK,
                    "recording a parked message as processed", &err)))
        goto fail;
    bool duplicate = strcmp(PQcmdTuples(res), "1") != 0;
    PQclear(res);
    if (duplicate) {
        /* Processed before (a redelivery that was held): only the row goes. */
        if (!(err = cmd(p, pg, "COMMIT", "COMMIT"))) {
            p->env.stats->duplicates++;
            *step = STEP_DONE;
        }
        goto out;
    }
    PQsetnonblocking(pg, 0); /* as consumer.c's call_handler: the handler gets a blocking session */
    outbox_handler_result_t r = handler(msg, pg, opaque);
    PGTransactionStatusType ts = PQtransactionStatus(pg);
    PQsetnonblocking(pg, 1);
    if (r == OUTBOX_HANDLER_OK && ts == PQTRANS_INTRANS) {
        if (!(err = cmd(p, pg, "COMMIT", "COMMIT"))) {
            p->env.stats->processed++;
            *step = STEP_DONE;
        }
    } else if (r == OUTBOX_HANDLER_OK && ts == PQTRANS_IDLE) {
        /* The handler committed itself, the row's DELETE and the dedup record with it. */
        p->env.stats->processed++;
        *step = STEP_DONE;
    } else if (r == OUTBOX_HANDLER_REJECT) {
        rollback(p, pg);
        err = repark(p, pg, k, part, off, "rejected by the handler");
    } else {
        rollback(p, pg);
        p->env.stats->retried++;
        k->next_try_ms = outbox_mono_ms() + p->env.retry_backoff_ms;
    }
    goto out;
fail:
    rollback(p, pg);
out:
    outbox_message_destroy(msg);
    return err;
}

outbox_err_t outbox_park_poll(outbox_park_t *p, PGconn *pg, rd_kafka_t *rk, outbox_handler_cb handler,
                              void *opaque) {
    outbox_err_t err = OUTBOX_OK;
    int64_t now = outbox_mono_ms();
    if ((p->stale || now - p->refreshed_ms >= PARK_REFRESH_MS) && (err = load(p, pg, rk)))
        return err;
    for (size_t i = 0; i < p->cnt;) {
        park_key_t *k = &p->keys[i];
        if (!k->due || k->next_try_ms > now) {
            i++;
            continue;
        }
        step_t step = STEP_DONE;
        while (step == STEP_DONE && !err)
            err = retry_first(p, pg, k, handler, opaque, &step);
        if (err)
            return err;
        if (step == STEP_EMPTY) {
            /* Every held message went through: later ones flow again. */
            outbox_log(p->env.conf, 6, FAC, "msg=\"a parked key is free again\" topic=%s partition=%d", k->topic,
                       (int)k->partition);
            key_free(k);
            *k = p->keys[--p->cnt];
        } else {
            i++;
        }
    }
    return OUTBOX_OK;
}

void outbox_park_forget(outbox_park_t *p) {
    if (p)
        p->stale = true;
}
