/*
 * park.c: per-key parking (relay.poison.policy = park-key).  A row that fails permanently parks
 * its partition key: it and every later row of that key are held, in id order, until an operator
 * retries or drops them (`outbox-relay parked`, parked.c); every other key keeps flowing.
 *
 * Where held rows live: when its batch settles, a held row moves from messages to
 * parked_messages, keeping its id, in the transaction that records why its key is parked
 * (parked_keys).  So the claims never see a held row and their cost does not grow with them.
 *
 * Why the claim floor stays sound (floor.c): to the claims a held row is a deleted row.  The
 * floor's argument is that no row can appear in messages below it; the one way a held row comes
 * back (retry, or drop of the first only) is a release, and a release runs either on the leader,
 * between batches with nothing in flight, followed by floor_reset; or in `outbox-relay parked`
 * while it holds the leadership lock, so while no relay leads, and a relay that takes the
 * leadership starts from a reset floor.  Claims therefore never step over a released row.  (In
 * outbox.mode=wal the leader also waits until nothing read from the stream is unproduced, and
 * publishes the table before reading the stream again: walpark.c.)
 *
 * Why the key's order holds: produce_row holds every row of a parked key, claimed ahead or not,
 * before handing it to the producer; rows keep their ids through the move and back, and after a
 * release the claims start from the lowest id, so the released rows go out before any later row
 * of their key.  The exception is a row already handed to the producer when an earlier row of its
 * key fails at the broker: it may be acknowledged after the key parked (counted in
 * parked_overtaken).  Failures found before producing (size, destination, envelope) never let a
 * later row through.
 *
 * The leader's in-memory set is the authority while it runs; parked_keys is read again at each
 * new leadership, once nothing is in flight, so that rows held under the old set settle first.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define FAC RELAY_FAC
/* parked_keys is read for requests and figures this often. */
#define PARK_POLL_MS 1000
/* The smallest open-addressing index. */
#define PARK_SLOTS_MIN 16

void park_release_sql(const char *s, char *out, size_t size) {
    /* One statement, so one transaction: the requests ($1: one key in hex, or NULL for all) are
     * taken, their held rows leave parked_messages, and each goes to dead_letters (drop, or the
     * first row with drop-first) or back to messages under its own id (retry, or the rest with
     * drop-first).  The first row is the one that failed when it is held, else the lowest. */
    snprintf(out, size,
             "WITH k AS (DELETE FROM %1$s.parked_keys WHERE request IS NOT NULL"
             "  AND ($1::text IS NULL OR partition_key = decode($1::text, 'hex'))"
             "  RETURNING partition_key, request, error, first_id),"
             " held AS (DELETE FROM %1$s.parked_messages p USING k WHERE p.partition_key = k.partition_key"
             "  RETURNING p.*, k.request AS req, k.error AS perr, k.first_id AS fid),"
             " firsts AS (SELECT partition_key, CASE WHEN bool_or(id = fid) THEN min(fid) ELSE min(id) END AS first"
             "  FROM held GROUP BY partition_key),"
             " dl AS (INSERT INTO %1$s.dead_letters (id, message_id, destination, partition_key, message_type,"
             "  envelope, created_at, error, attempts)"
             "  SELECT h.id, h.message_id, h.destination, h.partition_key, h.message_type, h.envelope, h.created_at,"
             "   CASE WHEN h.id = f.first THEN h.perr"
             "   ELSE 'dropped while parked behind id ' || f.first || ': ' || h.perr END, coalesce(h.attempts, 0) + 1"
             "  FROM held h JOIN firsts f USING (partition_key)"
             "  WHERE h.req = 'drop' OR (h.req = 'drop-first' AND h.id = f.first)"
             "  ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now(),"
             "   attempts = %1$s.dead_letters.attempts + 1),"
             " back AS (INSERT INTO %1$s.messages (id, message_id, destination, partition_key, message_type,"
             "  envelope, created_at, attempts) OVERRIDING SYSTEM VALUE"
             "  SELECT h.id, h.message_id, h.destination, h.partition_key, h.message_type, h.envelope,"
             "   h.created_at, h.attempts"
             "  FROM held h JOIN firsts f USING (partition_key)"
             "  WHERE h.req = 'retry' OR (h.req = 'drop-first' AND h.id <> f.first)"
             "  RETURNING partition_key),"
             /* released rows are back below where the last leader's claims started */
             " cs AS (DELETE FROM %1$s.claim_state)"
             " SELECT encode(k.partition_key, 'hex'), k.request,"
             "  (SELECT count(*) FROM held h WHERE h.partition_key = k.partition_key),"
             "  (SELECT count(*) FROM back b WHERE b.partition_key = k.partition_key)"
             " FROM k ORDER BY 1", s);
}

void park_build_sql(relay_t *r) {
    const char *s = r->schema_q;
    relay_park_t *p = &r->park;
    snprintf(p->sql_load, sizeof(p->sql_load),
             "SELECT encode(partition_key, 'hex'), first_id, destination, error FROM %s.parked_keys", s);
    snprintf(p->sql_poll, sizeof(p->sql_poll),
             "SELECT (SELECT count(*) FROM %1$s.parked_keys),"
             " (SELECT count(*) FROM %1$s.parked_messages),"
             " (SELECT coalesce(extract(epoch FROM now() - min(parked_at))::bigint, 0) FROM %1$s.parked_keys),"
             " EXISTS (SELECT 1 FROM %1$s.parked_keys WHERE request IS NOT NULL)", s);
    park_release_sql(s, p->sql_release, sizeof(p->sql_release));
}

/* FNV-1a. */
static uint64_t key_hash(const void *key, size_t len) {
    const uint8_t *k = key;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

/* Rebuilds the index for the entries e; false when out of memory (the old index stays). */
static bool index_rebuild(relay_park_t *p) {
    int nslot = PARK_SLOTS_MIN;
    while (nslot < 2 * (p->n + 1))
        nslot *= 2;
    int *slot = malloc((size_t)nslot * sizeof(*slot));
    if (!slot)
        return false;
    for (int i = 0; i < nslot; i++)
        slot[i] = -1;
    for (int k = 0; k < p->n; k++) {
        int i = (int)(p->e[k].hash & (uint64_t)(nslot - 1));
        while (slot[i] >= 0)
            i = (i + 1) & (nslot - 1);
        slot[i] = k;
    }
    free(p->slot);
    p->slot = slot;
    p->nslot = nslot;
    return true;
}

const park_entry_t *park_find(const relay_t *r, const void *key, size_t key_len) {
    const relay_park_t *p = &r->park;
    if (!p->n || !key)
        return NULL;
    uint64_t h = key_hash(key, key_len);
    for (int i = (int)(h & (uint64_t)(p->nslot - 1));; i = (i + 1) & (p->nslot - 1)) {
        int k = p->slot[i];
        if (k < 0)
            return NULL;
        const park_entry_t *e = &p->e[k];
        if (e->hash == h && e->key_len == key_len && !memcmp(e->key, key, key_len))
            return e;
    }
}

static void entry_free(park_entry_t *e) {
    free(e->key);
    free(e->dest);
    free(e->error);
}

/* Adds an entry without logging; false when out of memory. */
static bool entry_add(relay_park_t *p, const void *key, size_t key_len, int64_t id, const char *dest,
                      const char *why) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 8;
        park_entry_t *e = realloc(p->e, (size_t)cap * sizeof(*e));
        if (!e)
            return false;
        p->e = e;
        p->cap = cap;
    }
    park_entry_t *e = &p->e[p->n];
    *e = (park_entry_t){.key = malloc(key_len ? key_len : 1), .key_len = key_len,
                        .hash = key_hash(key, key_len), .first_id = id, .dest = outbox_strdup(dest),
                        .error = outbox_strdup(why)};
    if (!e->key || !e->dest || !e->error) {
        entry_free(e);
        return false;
    }
    memcpy(e->key, key, key_len);
    p->n++;
    if (2 * p->n > p->nslot || !p->slot) {
        if (!index_rebuild(p)) {
            entry_free(&p->e[--p->n]);
            return false;
        }
        return true;
    }
    int i = (int)(e->hash & (uint64_t)(p->nslot - 1));
    while (p->slot[i] >= 0)
        i = (i + 1) & (p->nslot - 1);
    p->slot[i] = p->n - 1;
    return true;
}

size_t park_hex(const void *key, size_t len, char *out, size_t size) {
    static const char digits[] = "0123456789abcdef";
    const uint8_t *k = key;
    size_t i = 0;
    for (; i < len && 2 * i + 2 < size; i++) {
        out[2 * i] = digits[k[i] >> 4];
        out[2 * i + 1] = digits[k[i] & 15];
    }
    out[2 * i] = '\0';
    return 2 * i;
}

bool park_add(relay_t *r, const void *key, size_t key_len, int64_t id, const char *dest, const char *why) {
    if (park_find(r, key, key_len))
        return true;
    if (!entry_add(&r->park, key, key_len, id, dest, why))
        return false;
    char hex[129], safe[512];
    park_hex(key, key_len, hex, sizeof(hex));
    outbox_log(r->conf, 3, FAC, "msg=\"parked a partition key: its messages wait for outbox-relay parked "
               "retry|drop\" id=%lld key_hex=%s%s destination=\"%s\" error=\"%s\"", (long long)id, hex,
               key_len > 64 ? "..." : "", dest, outbox_logfmt_value(why, safe, sizeof(safe)));
    return true;
}

static void park_clear(relay_park_t *p) {
    for (int k = 0; k < p->n; k++)
        entry_free(&p->e[k]);
    p->n = 0;
    for (int i = 0; i < p->nslot; i++)
        p->slot[i] = -1;
}

void park_free(relay_t *r) {
    park_clear(&r->park);
    free(r->park.e);
    free(r->park.slot);
    r->park.e = NULL;
    r->park.slot = NULL;
    r->park.cap = r->park.nslot = 0;
}

static int unhex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20); /* either case */
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

ssize_t park_unhex(const char *hex, uint8_t *out, size_t size) {
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > size)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = unhex(hex[2 * i]), lo = unhex(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (ssize_t)(n / 2);
}

static void park_remove_hex(relay_t *r, const char *hex) {
    relay_park_t *p = &r->park;
    size_t n = strlen(hex) / 2;
    uint8_t *key = malloc(n ? n : 1);
    ssize_t len = key ? park_unhex(hex, key, n) : -1;
    const park_entry_t *e = len >= 0 ? park_find(r, key, (size_t)len) : NULL;
    free(key);
    if (!e)
        return;
    int k = (int)(e - p->e);
    entry_free(&p->e[k]);
    p->e[k] = p->e[--p->n];
    if (!index_rebuild(p)) {
        /* Keep a consistent index without the memory for a new one: rebuild in place. */
        for (int i = 0; i < p->nslot; i++)
            p->slot[i] = -1;
        for (int j = 0; j < p->n; j++) {
            int i = (int)(p->e[j].hash & (uint64_t)(p->nslot - 1));
            while (p->slot[i] >= 0)
                i = (i + 1) & (p->nslot - 1);
            p->slot[i] = j;
        }
    }
}

void park_leader(relay_t *r) {
    r->park.reload = true;
    r->park.next_poll_ms = 0;
}

/* Reads parked_keys into the set, replacing it; false on failure. */
static bool park_load(relay_t *r) {
    PGresult *res = session_exec(r, "outbox_park_load", 0, NULL, 0, PGRES_TUPLES_OK, "reading the parked keys");
    if (!res)
        return false;
    park_clear(&r->park);
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        const char *hex = PQgetvalue(res, i, 0);
        size_t cap = strlen(hex) / 2;
        uint8_t *key = malloc(cap ? cap : 1);
        ssize_t len = key ? park_unhex(hex, key, cap) : -1;
        bool ok = len >= 0 && entry_add(&r->park, key, (size_t)len, atoll(PQgetvalue(res, i, 1)),
                                        PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
        free(key);
        if (!ok) {
            outbox_log(r->conf, 3, FAC, "msg=\"out of memory reading the parked keys\" keys=%d", n);
            PQclear(res);
            return false;
        }
    }
    PQclear(res);
    if (n)
        outbox_log(r->conf, 5, FAC, "msg=\"holding the messages of parked keys\" keys=%d", n);
    atomic_store(&r->metrics.parked_keys, n);
    return true;
}

/* Carries out every operator request; false on failure (they stay for the next turn). */
static bool park_release(relay_t *r) {
    const char *p[1] = {NULL};
    PGresult *res = session_exec(r, "outbox_park_release", 1, p, 0, PGRES_TUPLES_OK,
                                 "carrying out the parked requests");
    if (!res)
        return false;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *hex = PQgetvalue(res, i, 0), *req = PQgetvalue(res, i, 1);
        long long held = atoll(PQgetvalue(res, i, 2)), back = atoll(PQgetvalue(res, i, 3));
        park_remove_hex(r, hex);
        outbox_log(r->conf, 5, FAC, "msg=\"released a parked key\" key_hex=%s request=%s held=%lld "
                   "back_in_outbox=%lld dead_lettered=%lld", hex, req, held, back, held - back);
        r->dead_lettered += held - back;
        atomic_fetch_add(&r->metrics.dead_lettered, held - back);
    }
    PQclear(res);
    /* Released rows are back in messages under their old ids, maybe below the floor. */
    floor_reset(r);
    return true;
}

static void park_poll(relay_t *r) {
    relay_park_t *p = &r->park;
    p->next_poll_ms = outbox_mono_ms() + PARK_POLL_MS;
    PGresult *res = session_exec(r, "outbox_park_poll", 0, NULL, 0, PGRES_TUPLES_OK, "reading the parked keys");
    if (!res)
        return;
    atomic_store(&r->metrics.parked_keys, atoll(PQgetvalue(res, 0, 0)));
    atomic_store(&r->metrics.parked_messages, atoll(PQgetvalue(res, 0, 1)));
    atomic_store(&r->metrics.parked_oldest_s, atoll(PQgetvalue(res, 0, 2)));
    if (!strcmp(PQgetvalue(res, 0, 3), "t"))
        p->release = true;
    PQclear(res);
}

bool park_pending(relay_t *r) {
    relay_park_t *p = &r->park;
    if (!p->reload && !p->release && outbox_mono_ms() >= p->next_poll_ms)
        park_poll(r);
    return p->reload || p->release;
}

bool park_before_claim(relay_t *r) {
    relay_park_t *p = &r->park;
    if (!park_pending(r))
        return true;
    /* Rows held under the set as it is must settle before it changes. */
    if (r->inflight_cnt > 0 || session_lost(r))
        return false;
    if (p->reload && !park_load(r))
        return false;
    p->reload = false;
    if (p->release && !park_release(r))
        return false;
    p->release = false;
    return true;
}

bool park_key_is_text(const void *key, size_t len) {
    const uint8_t *k = key;
    char buf[256];
    if (len == 0 || len >= sizeof(buf))
        return len == 0;
    for (size_t i = 0; i < len; i++)
        if (k[i] < 0x20 || k[i] == 0x7f)
            return false;
    memcpy(buf, key, len);
    buf[len] = '\0';
    return outbox_utf8_invalid_at(buf) < 0;
}
