/*
 * walsource.c: the WAL source (outbox.mode=wal).  Writers emit each envelope as a transactional
 * logical message (pg_logical_emit_message(true, prefix, envelope)); this source streams them
 * from the schema's logical replication slot (pgoutput, protocol 1, messages 'true') and hands
 * them to the producer in commit order, a transaction's messages in emission order.
 *
 * Why it is at least once and never out of order:
 *   - the server sends a transaction only after it committed, whole, in commit order;
 *   - a batch remembers the end LSN of the last transaction it completes; batches settle oldest
 *     first, and the confirmed (flushed) position only moves to such an end once that batch and
 *     every one before it were acknowledged entirely;
 *   - a message to send again (a transient failure, a new producer) restarts the stream from the
 *     slot once everything in flight has settled: the server resends every transaction after the
 *     confirmed position, so the failed message goes out again before anything newer (duplicates,
 *     never a gap);
 *   - with nothing in flight and nothing read but not yet produced, a keepalive's WAL end may be
 *     confirmed, so an idle outbox does not retain WAL.
 * Leadership is the table source's advisory lock on the main session (a table relay and a wal
 * relay on one schema exclude each other); the slot allows one reader anyway.  Before streaming,
 * rows left in the outbox table (from table mode, or dead letters retried) are published through
 * the table source.  Slot checks, dead letters and figures are walslot.c's; parking, walpark.c's.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "walpark.h"
#include "walproto.h"

#define FAC "WAL"
/* A status update at least this often (wal_sender_timeout defaults to 60 s). */
#define STATUS_EVERY_MS 10000
/* How often the outbox table is checked for rows while streaming. */
#define TABLE_CHECK_MS 5000
/* While the pipeline is busy, a batch waits at most this long for more messages. */
#define BUILD_LINGER_MS 2
/* A wait for input serves delivery reports at least this often. */
#define WAIT_SLICE_MS 10
/* A binary timestamp counts microseconds from 2000-01-01; Kafka, milliseconds from 1970. */
#define PG_EPOCH_UNIX_MS 946684800000LL

/* One message read from the stream; its bytes live in the build's arena, at these offsets. */
typedef struct {
    size_t dest, key, value, type, error; /* error: SIZE_MAX when the message is sound */
    size_t key_len, value_len, type_len;
    bool has_key;
    uint8_t uuid[16];
    int64_t ts_ms;
    uint64_t lsn;
} wrow_t;

/* The batch being read: rows and bytes grow until it is handed out. */
typedef struct {
    wrow_t *rows;
    int n, cap;
    char *arena;
    size_t used, size;
    uint64_t confirm;     /* the end of the last transaction it completes; 0: none */
    int64_t first_ms;     /* when its first message was read; 0: none yet */
} wbuild_t;

static void owner_free(void *p) {
    wal_owner_t *o = p;
    if (!o)
        return;
    free(o->arena);
    free(o->lsn);
    free(o->uuids);
    free(o);
}

/* Appends len bytes (and a NUL) to the arena; its offset, or SIZE_MAX when out of memory. */
static size_t put(wbuild_t *b, const void *p, size_t len) {
    if (b->used + len + 1 > b->size) {
        size_t size = (b->size ? b->size : 65536);
        while (size < b->used + len + 1)
            size *= 2;
        char *a = realloc(b->arena, size);
        if (!a)
            return SIZE_MAX;
        b->arena = a;
        b->size = size;
    }
    size_t at = b->used;
    if (len)
        memcpy(b->arena + at, p, len);
    b->arena[at + len] = '\0';
    b->used += len + 1;
    return at;
}

/* Adds one message of this outbox to the build.  A message whose envelope does not say where it
 * goes is kept too, with the reason: the producer dead-letters it. */
static int add_message(relay_t *r, wbuild_t *b, const walp_msg_t *m) {
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 256;
        wrow_t *rows = realloc(b->rows, (size_t)cap * sizeof(*rows));
        if (!rows)
            return -1;
        b->rows = rows;
        b->cap = cap;
    }
    wrow_t *w = &b->rows[b->n];
    outbox_envelope_fields_t f;
    char why[200] = "";
    memset(w, 0, sizeof(*w));
    w->error = SIZE_MAX;
    w->lsn = m->lsn;
    if (outbox_envelope_fields(m->content, m->content_len, &f))
        snprintf(why, sizeof(why), "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", m->content_len);
    else if (memchr(f.destination ? f.destination : "", '\0', f.destination_len) ||
             memchr(f.type ? f.type : "", '\0', f.type_len))
        snprintf(why, sizeof(why), "envelope destination or type contains a NUL byte");
    else if (outbox_uuid_parse(f.id, f.id_len, w->uuid))
        snprintf(why, sizeof(why), "envelope id \"%.*s\" is not a uuid", (int)(f.id_len > 64 ? 64 : f.id_len),
                 f.id ? f.id : "");
    if (*why)
        memset(&f, 0, sizeof(f));
    w->dest = put(b, f.destination, f.destination_len);
    w->value = put(b, m->content, m->content_len);
    w->value_len = m->content_len;
    w->type = put(b, f.type, f.type_len);
    w->type_len = f.type_len;
    w->has_key = f.key != NULL;
    w->key = put(b, f.key, f.key_len);
    w->key_len = f.key_len;
    if (*why)
        w->error = put(b, why, strlen(why));
    if (r->set.record_created && f.created_at_unix_us > 0)
        w->ts_ms = f.created_at_unix_us / 1000;
    if (w->dest == SIZE_MAX || w->value == SIZE_MAX || w->type == SIZE_MAX || w->key == SIZE_MAX ||
        (*why && w->error == SIZE_MAX))
        return -1;
    b->n++;
    return 0;
}

/* Hands the build out as a batch (rows pointing into its arena, which the batch now owns); NULL
 * when out of memory (the build is left as it was). */
static batch_t *build_take(relay_t *r, wbuild_t *b) {
    wal_owner_t *o = calloc(1, sizeof(*o));
    uint64_t *lsn = malloc((size_t)b->n * sizeof(*lsn));
    uint8_t *uuids = malloc((size_t)b->n * 16);
    batch_t *bt = o && lsn && uuids ? batch_new(r, b->n, o, owner_free) : NULL;
    if (!bt) {
        free(o);
        free(lsn);
        free(uuids);
        return NULL;
    }
    o->lsn = lsn;
    o->uuids = uuids;
    o->confirm = b->confirm;
    for (int i = 0; i < b->n; i++) {
        const wrow_t *w = &b->rows[i];
        relay_row_t *row = &bt->rows[i];
        bt->ids[i] = r->wal.seq++;
        lsn[i] = w->lsn;
        memcpy(uuids + 16 * i, w->uuid, 16);
        row->dest = b->arena + w->dest;
        row->key = w->has_key ? b->arena + w->key : NULL;
        row->key_len = w->key_len;
        row->value = b->arena + w->value;
        row->value_len = w->value_len;
        row->uuid = uuids + 16 * i;
        row->type = b->arena + w->type;
        row->type_len = w->type_len;
        row->timestamp_ms = w->ts_ms;
        if (w->error != SIZE_MAX)
            bt->error[i] = outbox_strdup(b->arena + w->error);
    }
    o->arena = b->arena;
    b->arena = NULL;
    b->used = b->size = 0;
    b->n = 0;
    b->confirm = 0;
    b->first_ms = 0;
    return bt;
}

/* Sends a status update: flushed (and written, applied) = the confirmed position. */
static int status_send(relay_t *r) {
    relay_wal_t *w = &r->wal;
    uint8_t buf[34];
    size_t n = walp_status_encode(buf, w->confirmed, w->confirmed, w->confirmed, walp_now_pg_us(), false);
    if (PQputCopyData(w->repl, (const char *)buf, (int)n) != 1 || PQflush(w->repl) < 0)
        return -1;
    w->reported = w->confirmed;
    w->status_asked = false;
    w->next_status_ms = outbox_mono_ms() + STATUS_EVERY_MS;
    atomic_store(&r->metrics.wal_confirmed_lsn, (int64_t)w->confirmed);
    return 0;
}

/* Sends a status update when the position moved, the server asked, or 10 s passed. */
static void status_maybe(relay_t *r) {
    relay_wal_t *w = &r->wal;
    if (!w->repl)
        return;
    if (PQflush(w->repl) < 0) { /* what an earlier update left in libpq's buffer */
        wal_stream_close(r, PQerrorMessage(w->repl));
        return;
    }
    if (w->confirmed == w->reported && !w->status_asked && outbox_mono_ms() < w->next_status_ms)
        return;
    if (status_send(r))
        wal_stream_close(r, PQerrorMessage(w->repl));
}

/* Raises the confirmed position (never lowers it). */
static void confirm(relay_t *r, uint64_t lsn) {
    if (!r->wal.restart && lsn > r->wal.confirmed)
        r->wal.confirmed = lsn;
}

/* A transaction ended at end: its last message is in the build, in the newest batch in flight,
 * or already settled (then nothing is left before it). */
static void commit_seen(relay_t *r, wbuild_t *b, uint64_t end) {
    if (b->n)
        b->confirm = end;
    else if (r->inflight_cnt)
        ((wal_owner_t *)r->inflight[r->inflight_cnt - 1]->owner)->confirm = end;
    else
        confirm(r, end);
}

/* Reads one frame into the build: 0, or -1 when the stream is unusable (logged). */
static int frame(relay_t *r, wbuild_t *b, const uint8_t *buf, size_t len) {
    relay_wal_t *w = &r->wal;
    walp_frame_t f;
    walp_msg_t m;
    char why[200];
    if (walp_frame_parse(buf, len, &f, why, sizeof(why)) ||
        (f.kind == 'w' && walp_msg_parse(f.data, f.data_len, &m, why, sizeof(why)))) {
        outbox_log(r->conf, 3, FAC, "msg=\"malformed replication frame\" error=\"%s\"", why);
        return -1;
    }
    if (f.kind == 'k') {
        if (f.reply_requested)
            w->status_asked = true;
        if (!w->in_txn && !b->n && !r->inflight_cnt)
            confirm(r, f.wal_end); /* nothing unacknowledged: an idle outbox retains no WAL */
        return 0;
    }
    switch (m.type) {
    case WALP_BEGIN:
        w->in_txn = true;
        return 0;
    case WALP_COMMIT:
        w->in_txn = false;
        commit_seen(r, b, m.end_lsn);
        atomic_store(&r->metrics.wal_last_commit_ms, m.commit_time / 1000 + PG_EPOCH_UNIX_MS);
        return 0;
    case WALP_MESSAGE:
        if (m.prefix_len != w->prefix_len || memcmp(m.prefix, w->prefix, m.prefix_len))
            return 0; /* another outbox's, or anyone's: skipped, and passed by its commit */
        if (!m.transactional) {
            if (!w->warned_untx)
                outbox_log(r->conf, 4, FAC, "msg=\"skipped a non-transactional message with this outbox's "
                           "prefix: only pg_logical_emit_message(true, ...) is published\" prefix=\"%s\"", w->prefix);
            w->warned_untx = true;
            return 0;
        }
        if (add_message(r, b, &m)) {
            outbox_log(r->conf, 3, FAC, "msg=\"out of memory reading the stream\"");
            return -1;
        }
        return 0;
    default:
        return 0;
    }
}

/* Reads what the stream has now (the socket drained as often as it gives more), up to a batch.
 * The number of frames read, or -1 when the stream was closed. */
static int read_stream(relay_t *r, wbuild_t *b) {
    relay_wal_t *w = &r->wal;
    bool consumed = false;
    int frames = 0;
    while (b->n < r->set.batch_size && w->repl) {
        char *buf = NULL;
        int len = PQgetCopyData(w->repl, &buf, 1);
        if (len == 0) {
            if (consumed)
                return frames; /* the socket had nothing more */
            consumed = true;
            if (!PQconsumeInput(w->repl)) {
                wal_stream_close(r, PQerrorMessage(w->repl));
                return -1;
            }
            continue;
        }
        if (len < 0) {
            wal_stream_end(r);
            return -1;
        }
        consumed = false;
        frames++;
        int rc = frame(r, b, (const uint8_t *)buf, (size_t)len);
        PQfreemem(buf);
        if (rc) {
            wal_stream_close(r, "cannot read the stream");
            return -1;
        }
    }
    return frames;
}

static wbuild_t *build_of(relay_t *r) {
    if (!r->wal.build)
        r->wal.build = calloc(1, sizeof(wbuild_t));
    return r->wal.build;
}

static void build_reset(relay_t *r) {
    wbuild_t *b = r->wal.build;
    if (b) {
        b->n = 0;
        b->used = 0;
        b->confirm = 0;
        b->first_ms = 0;
    }
    r->wal.in_txn = false;
}

static bool wal_ready(relay_t *r) {
    relay_wal_t *w = &r->wal;
    bool was_leader = r->session.leader && !session_lost(r);
    if (!relay_table_source.ready(r)) {
        if (w->repl)
            wal_stream_close(r, "not the leader");
        return false;
    }
    if (!was_leader) {
        /* A new leadership: what the last stream read is read again from the slot, and rows left
         * in the table go first, once nothing of the last stream is in flight (wal_next). */
        if (w->repl)
            wal_stream_close(r, "a new leadership");
        build_reset(r);
        if (r->inflight_cnt)
            w->restart = true;
        w->next_table_ms = 0;
    }
    return true;
}

static int wal_next(relay_t *r, batch_t **out) {
    relay_wal_t *w = &r->wal;
    *out = NULL;
    if (session_lost(r)) {
        if (w->repl)
            wal_stream_close(r, "lost the leader session");
        return -1;
    }
    const wbuild_t *lingering = w->build;
    /* Parked keys reloaded or released (walpark.c): released rows go out first, from the table. */
    int gate = w->table_phase ? WALPARK_STREAM : walpark_gate(r, lingering ? lingering->n : 0);
    w->table_phase = w->table_phase || gate == WALPARK_TABLE;
    if (!w->table_phase && !r->inflight_cnt && !(lingering && lingering->n) && outbox_mono_ms() >= w->next_table_ms) {
        /* Between batches of the stream (nothing in flight): rows that reached the table since. */
        w->next_table_ms = outbox_mono_ms() + TABLE_CHECK_MS;
        w->table_phase = wal_table_has_rows(r) > 0;
    }
    if (w->table_phase) {
        status_maybe(r); /* a stream left open still answers the server */
        int rc = relay_table_source.next(r, out);
        if (rc == 0 && !r->inflight_cnt) {
            w->table_phase = false;
            w->next_table_ms = outbox_mono_ms() + TABLE_CHECK_MS;
        }
        return rc;
    }
    if (w->restart) {
        if (r->inflight_cnt)
            return 0; /* everything in flight settles first */
        if (w->repl)
            wal_stream_close(r, "re-sending from the confirmed position");
        w->restart = false;
    }
    if (!w->repl) {
        if (wal_stream_start(r))
            return -1;
        build_reset(r);
    }
    wbuild_t *b = build_of(r);
    if (!b)
        return -1;
    int rc = gate == WALPARK_DRAIN ? 0 : read_stream(r, b);
    /* While the stream flows and batches are in flight, a batch fills for up to BUILD_LINGER_MS
     * before it goes: many small ones would cost a produce round each.  An idle stream or an
     * empty pipeline sends what there is at once. */
    if (b->n && !b->first_ms)
        b->first_ms = outbox_mono_ms();
    bool flowing = rc > 0 && r->inflight_cnt > 0 && b->n < r->set.batch_size &&
                   outbox_mono_ms() - b->first_ms < BUILD_LINGER_MS;
    if (rc >= 0 && b->n && !flowing) {
        *out = build_take(r, b);
        if (!*out) {
            outbox_log(r->conf, 3, FAC, "msg=\"out of memory making a batch\" rows=%d", b->n);
            wal_stream_close(r, "out of memory");
            return -1;
        }
    }
    if (rc < 0)
        build_reset(r);
    status_maybe(r);
    return *out ? 1 : rc < 0 ? -1 : 0;
}

static void wal_pump(relay_t *r) {
    if (r->wal.table_phase)
        relay_table_source.pump(r);
}

static void wal_settle(relay_t *r, bool wait) {
    relay_wal_t *w = &r->wal;
    if (w->table_phase) {
        relay_table_source.settle(r, wait);
        status_maybe(r);
        return;
    }
    while (r->inflight_cnt && r->inflight[0]->pending == 0) {
        batch_t *b = r->inflight[0];
        size_t dead = 0, again = 0, held = 0;
        for (int i = 0; i < b->n; i++) {
            dead += b->state[i] == ROW_DEAD;
            held += b->state[i] == ROW_HELD;
            again += b->state[i] != ROW_ACKED && b->state[i] != ROW_DEAD && b->state[i] != ROW_HELD;
        }
        /* Held rows are stored (walpark.c) before the batch's end may be confirmed. */
        if (held && !again && !w->restart && walpark_store(r, b) < 0)
            break; /* tried again at the next settle */
        if (dead && !again && !w->restart && wal_dead_letters(r, b) < 0)
            break; /* tried again at the next settle */
        if (again)
            w->restart = true; /* this batch and every later one go out again from the slot */
        else
            r->settle.clean = true;
        confirm(r, ((wal_owner_t *)b->owner)->confirm);
        batch_retire(r, b);
    }
    status_maybe(r);
}

static void wal_rewind(relay_t *r) {
    if (r->wal.table_phase)
        relay_table_source.rewind(r);
    r->wal.restart = true;
}

static int64_t wal_left(relay_t *r) {
    return r->wal.table_phase ? relay_table_source.left(r) : -1;
}

static void wal_close(relay_t *r) {
    wbuild_t *b = r->wal.build;
    if (r->wal.repl) {
        status_maybe(r);
        wal_stream_close(r, NULL);
    }
    if (b) {
        free(b->rows);
        free(b->arena);
        free(b);
    }
    r->wal.build = NULL;
    relay_table_source.close(r);
}

static void wal_open(relay_t *r) {
    relay_table_source.open(r);
    wal_build_sql(r);
    atomic_store(&r->metrics.wal_mode, 1);
}

/* Waits for the stream (or the table source's pace), serving delivery reports meanwhile. */
static void wal_wait(relay_t *r, int64_t ms) {
    relay_wal_t *w = &r->wal;
    if (!w->repl || w->table_phase || w->restart || r->park.reload || r->park.release) {
        relay_sleep(r, ms);
        return;
    }
    const wbuild_t *b = w->build;
    if (b && b->n) {
        /* A batch lingers: back when its linger ends, not a whole idle wait later. */
        int64_t left = b->first_ms + BUILD_LINGER_MS - outbox_mono_ms();
        if (left < ms)
            ms = left > 0 ? left : 0;
    }
    int64_t end = outbox_mono_ms() + ms;
    for (int64_t now = outbox_mono_ms(); now < end && !*r->stop; now = outbox_mono_ms()) {
        struct pollfd p = {.fd = PQsocket(w->repl), .events = POLLIN};
        int slice = (int)(end - now < WAIT_SLICE_MS ? end - now : WAIT_SLICE_MS);
        int rc = poll(&p, 1, slice);
        producer_poll(r, 0);
        if (rc != 0)
            return; /* input (or an error, which the next read reports) */
    }
}

const relay_source_t relay_wal_source = {
    .name = "wal",
    .open = wal_open,
    .ready = wal_ready,
    .next = wal_next,
    .pump = wal_pump,
    .settle = wal_settle,
    .rewind = wal_rewind,
    .sample = wal_sample,
    .left = wal_left,
    .close = wal_close,
    .wait = wal_wait,
};
