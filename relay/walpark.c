/*
 * walpark.c: per-key parking in outbox.mode=wal: stores a settled stream batch's held messages in
 * parked_messages before its position is confirmed, and keeps the stream still while the parked
 * keys are reloaded or released.
 *
 * Why nothing is lost: held messages are stored in the transaction that records their key, before
 * the batch's end may be confirmed (walsource.c confirms only after walpark_store succeeded); a
 * crash in between streams the batch again, and a message already held for its key is skipped.
 *
 * Why the key's order holds: a held message gets its id from the outbox table's identity sequence
 * when stored, in stream order, so it sorts after every row of its key held before (from table
 * mode too) and before every later one.  A release (park.c) puts the held rows back into the table
 * under those ids; it runs only with nothing in flight and nothing read but not handed out, and
 * the source then publishes the table (its table phase) until it is empty before it reads the
 * stream again, so the released rows go out before any later stream message of their key.  A
 * release by `outbox-relay parked` while no relay leads is followed by a new leadership, which
 * starts with the table phase too (walsource.c's wal_ready).
 */
#include <stdlib.h>
#include <string.h>

#include "wal.h"
#include "walproto.h"

#define FAC "WAL"
/* The arrays of walpark_store: the held rows' uuids, destinations, keys, types, envelopes and
 * creation times; the keys' keys, destinations, first message ids and errors. */
enum { A_UUID, A_DEST, A_KEY, A_TYPE, A_ENV, A_CREATED, A_KKEY, A_KDEST, A_KFIRST, A_KERR, A_COUNT };

/* A growing text[] or bigint[] literal. */
typedef struct {
    char *buf;
    size_t len, size;
    bool failed;
} lit_t;

static bool lit_room(lit_t *l, size_t more) {
    if (l->failed)
        return false;
    if (l->len + more + 2 > l->size) {
        size_t size = l->size ? l->size : 256;
        while (size < l->len + more + 2)
            size *= 2;
        char *b = realloc(l->buf, size);
        if (!b) {
            l->failed = true;
            return false;
        }
        l->buf = b;
        l->size = size;
    }
    return true;
}

/* Appends the separator ('{' first, then ','). */
static void lit_sep(lit_t *l) {
    if (lit_room(l, 1)) {
        char c = l->len ? ',' : '{';
        l->buf[l->len++] = c;
    }
}

/* Appends n bytes of s as a quoted element. */
static void lit_str(lit_t *l, const char *s, size_t n) {
    lit_sep(l);
    if (!lit_room(l, 2 * n + 2))
        return;
    l->buf[l->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            l->buf[l->len++] = '\\';
        l->buf[l->len++] = s[i];
    }
    l->buf[l->len++] = '"';
}

/* Appends n bytes as a hex element (decode(..., 'hex') reads it). */
static void lit_hex(lit_t *l, const void *p, size_t n) {
    lit_sep(l);
    if (lit_room(l, 2 * n + 1))
        l->len += park_hex(p, n, l->buf + l->len, 2 * n + 1);
}

static void lit_raw(lit_t *l, const char *s) {
    lit_sep(l);
    size_t n = strlen(s);
    if (lit_room(l, n)) {
        memcpy(l->buf + l->len, s, n);
        l->len += n;
    }
}

/* Closes the literal: its text, or NULL when out of memory. */
static const char *lit_end(lit_t *l) {
    if (!l->len)
        lit_sep(l);
    if (!lit_room(l, 1))
        return NULL;
    l->buf[l->len++] = '}';
    l->buf[l->len] = '\0';
    return l->buf;
}

/* One statement, so one transaction.  Held messages $1..$6 in stream order: those not held yet
 * for their key get ids from the identity of the outbox table ($7), in that order, and are stored;
 * keys $8..$11 (key, destination, message id of the row that parked it, error) are recorded
 * unless parked already, first_id naming that row's id, stored now or before. */
static void store_sql(const relay_t *r, char *out, size_t size) {
    snprintf(out, size,
             "WITH u AS (SELECT n, m::uuid AS message_id, d, decode(k, 'hex') AS key, t, decode(e, 'hex') AS env,"
             "  coalesce(to_timestamp(c / 1e6), now()) AS created"
             "  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])"
             "  WITH ORDINALITY AS x(m, d, k, t, e, c, n)),"
             " fresh AS (SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM %1$s.parked_messages p"
             "  WHERE p.partition_key = u.key AND p.message_id = u.message_id) ORDER BY n),"
             " ins AS (INSERT INTO %1$s.parked_messages (id, message_id, destination, partition_key, message_type,"
             "  envelope, created_at)"
             "  SELECT nextval(pg_get_serial_sequence($7, 'id')), message_id, d, key, t, env, created FROM fresh"
             "  RETURNING id, message_id, partition_key),"
             " keys AS (INSERT INTO %1$s.parked_keys (partition_key, destination, first_id, error)"
             "  SELECT decode(kk, 'hex'), kd, coalesce("
             "   (SELECT min(i.id) FROM ins i WHERE i.partition_key = decode(kk, 'hex') AND i.message_id = km::uuid),"
             "   (SELECT min(p.id) FROM %1$s.parked_messages p WHERE p.partition_key = decode(kk, 'hex')"
             "    AND p.message_id = km::uuid)), ke"
             "  FROM unnest($8::text[], $9::text[], $10::text[], $11::text[]) AS y(kk, kd, km, ke)"
             "  ON CONFLICT (partition_key) DO NOTHING),"
             /* The batch's end: after a crash the stream starts past it (walslot.c), so messages
              * held here and released since are not read again. */
             " upto AS (INSERT INTO %1$s.wal_state (slot_name, system_id, held_upto)"
             "  SELECT $12, $14, $13::pg_lsn WHERE $13::pg_lsn <> '0/0' AND $14 <> ''"
             "  ON CONFLICT (slot_name) DO UPDATE SET system_id = excluded.system_id,"
             "  held_upto = CASE WHEN %1$s.wal_state.system_id = excluded.system_id"
             "  THEN greatest(%1$s.wal_state.held_upto, excluded.held_upto) ELSE excluded.held_upto END,"
             "  saved_at = now())"
             " SELECT count(*) FROM ins", r->schema_q);
}

/* The held rows of b as the arrays of store_sql; false when out of memory. */
static bool held_arrays(relay_t *r, batch_t *b, lit_t *a) {
    const park_entry_t **keys = calloc((size_t)b->n, sizeof(*keys));
    int nk = 0;
    if (!keys)
        return false;
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] != ROW_HELD)
            continue;
        const relay_row_t *row = &b->rows[i];
        const park_entry_t *e = park_find(r, row->key, row->key_len);
        if (!e) {
            /* Never while releases wait for an empty pipeline: sent again from the slot. */
            b->state[i] = ROW_RETRY;
            r->wal.restart = true;
            continue;
        }
        char uuid[OUTBOX_UUID_STR_LEN + 1], created[24];
        outbox_uuid_text(row->uuid, uuid);
        lit_raw(&a[A_UUID], uuid);
        lit_str(&a[A_DEST], row->dest, strlen(row->dest));
        lit_hex(&a[A_KEY], row->key, row->key_len);
        lit_str(&a[A_TYPE], row->type, row->type_len);
        lit_hex(&a[A_ENV], row->value, row->value_len);
        snprintf(created, sizeof(created), "%lld", (long long)row->timestamp_ms * 1000);
        lit_raw(&a[A_CREATED], row->timestamp_ms ? created : "NULL");
        int k = 0;
        while (k < nk && keys[k] != e)
            k++;
        if (k < nk)
            continue;
        /* The key's first row here: the one whose failure parked it (e->first_id is its position
         * in the stream) when it is in this batch, else the first held (it failed too: only a
         * failure holds a row produced before its key parked). */
        int first = i;
        for (int j = i; j < b->n; j++)
            if (b->state[j] == ROW_HELD && b->ids[j] == e->first_id && b->rows[j].key_len == e->key_len &&
                !memcmp(b->rows[j].key, e->key, e->key_len))
                first = j;
        keys[nk++] = e;
        outbox_uuid_text(b->rows[first].uuid, uuid);
        lit_hex(&a[A_KKEY], e->key, e->key_len);
        lit_str(&a[A_KDEST], e->dest, strlen(e->dest));
        lit_raw(&a[A_KFIRST], uuid);
        lit_str(&a[A_KERR], e->error, strlen(e->error));
    }
    free(keys);
    for (int k = 0; k < A_COUNT; k++)
        if (!lit_end(&a[k]))
            return false;
    return true;
}

/* Parking needs nextval() on the outbox table's identity: without USAGE on it, a held message
 * could never be stored and the stream would stop for every key.  So the relay dead-letters such
 * messages instead, as relay.poison.policy=dead-letter does, and says how to get parking back. */
static void denied(relay_t *r, const char *why) {
    r->wal.park_denied = true;
    r->set.park_key = false; /* no key parks from now on: a failing message alone is dead-lettered */
    outbox_log(r->conf, 4, FAC, "msg=\"relay.poison.policy=park-key needs USAGE on the outbox table's identity "
               "sequence in outbox.mode=wal, which the relay's role lacks: a message that fails permanently, or "
               "whose key is parked, is dead-lettered instead\" fix=\"outbox-relay -X outbox.mode=wal grants "
               "--relay ROLE prints the grant; restart the relay after it\" why=\"%s\"", why);
}

void walpark_leader(relay_t *r) {
    char table[200], err[512];
    if (!r->set.park_key || r->wal.park_denied || session_lost(r))
        return;
    snprintf(table, sizeof(table), "%s.messages", r->schema_q);
    const char *p[1] = {table};
    PGresult *res = outbox_pg_exec(r->session.pg, &r->session.stmt_lim,
                                   "SELECT has_sequence_privilege(pg_get_serial_sequence($1, 'id'), 'USAGE')", 1, p,
                                   NULL, NULL, 0, err, sizeof(err));
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 0), "f"))
        denied(r, "has_sequence_privilege(..., 'USAGE') is false");
    PQclear(res); /* a failed check: the store says what it meets */
}

void walpark_unhold(relay_t *r, batch_t *b) {
    if (!r->wal.park_denied)
        return;
    for (int i = 0; i < b->n; i++)
        if (b->state[i] == ROW_HELD) {
            b->state[i] = ROW_DEAD;
            /* A dead letter to record, also when the batch's others were recorded before its
             * held rows' store failed on the grant (wal_settle). */
            ((wal_owner_t *)b->owner)->dead_stored = false;
            if (!b->error[i])
                b->error[i] = outbox_strdup("its partition key is parked, and the relay's role lacks USAGE on the "
                                            "outbox table's identity sequence to hold it (outbox-relay -X "
                                            "outbox.mode=wal grants --relay ROLE)");
        }
}

int walpark_store(relay_t *r, batch_t *b) {
    lit_t a[A_COUNT];
    char sql[3072], table[200], err[512], msg[512];
    memset(a, 0, sizeof(a));
    int rc = -1;
    if (!held_arrays(r, b, a)) {
        outbox_log(r->conf, 3, FAC, "msg=\"out of memory holding the messages of parked keys\" rows=%d", b->n);
        goto out;
    }
    if (session_lost(r))
        goto out;
    store_sql(r, sql, sizeof(sql));
    snprintf(table, sizeof(table), "%s.messages", r->schema_q);
    /* The batch's end, unless held_arrays sent a row of it to be read again from the slot (0/0:
     * nothing is recorded), which the next stream must not start past. */
    char upto[18];
    walp_lsn_format(r->wal.restart ? 0 : ((const wal_owner_t *)b->owner)->confirm, upto);
    const char *p[14] = {a[A_UUID].buf, a[A_DEST].buf, a[A_KEY].buf, a[A_TYPE].buf, a[A_ENV].buf,
                         a[A_CREATED].buf, table, a[A_KKEY].buf, a[A_KDEST].buf, a[A_KFIRST].buf, a[A_KERR].buf,
                         r->wal.slot, upto, r->wal.system_id};
    PGresult *res = outbox_pg_exec(r->session.pg, &r->session.stmt_lim, sql, 14, p, NULL, NULL, 0, err, sizeof(err));
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg));
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (!res || session_lost(r))
            session_drop(r, msg);
        else if (state && !strcmp(state, "42501"))
            denied(r, msg); /* the grant went since the leadership began: dead letters from now on */
        else
            outbox_log(r->conf, 3, FAC, "msg=\"holding the messages of parked keys failed: tried again after "
                       "relay.reconnect.backoff.ms\" rows=%d error=\"%s\"", b->n, msg);
        PQclear(res);
        goto out;
    }
    long long stored = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    outbox_log(r->conf, 6, FAC, "msg=\"held messages of parked keys\" stored=%lld", stored);
    rc = 0;
out:
    for (int k = 0; k < A_COUNT; k++)
        free(a[k].buf);
    return rc;
}

int walpark_gate(relay_t *r, int built) {
    if (!park_pending(r))
        return WALPARK_STREAM;
    /* Held messages settle under the set as it is, and no message of a released key may go out
     * ahead of its released rows: so nothing in flight, nothing read but not handed out. */
    if (r->inflight_cnt || built || session_lost(r))
        return WALPARK_DRAIN;
    bool release = r->park.release;
    if (!park_before_claim(r))
        return WALPARK_DRAIN;
    return release ? WALPARK_TABLE : WALPARK_STREAM;
}
