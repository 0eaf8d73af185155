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
 * the table source.  Slot checks, dead letters and figures are walslot.c's; the batch being read
 * is walbuild.c's; parking, walpark.c's.
 */
#include <poll.h>
#include <string.h>

#include "relay.h"
#include "wal.h"
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
        if (wbuild_add(r, b, m.content, m.content_len, m.lsn)) {
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

/* Drops what the build holds and any half-read transaction: the stream is read again. */
static void build_reset(relay_t *r) {
    wbuild_reset(r->wal.build);
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
        walpark_leader(r);
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
    wbuild_t *b = wbuild_of(r);
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
        *out = wbuild_take(r, b);
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
    while (r->inflight_cnt && r->inflight[0]->pending == 0 && outbox_mono_ms() >= w->settle_retry_ms) {
        batch_t *b = r->inflight[0];
        size_t dead = 0, again = 0, held = 0;
        walpark_unhold(r, b);
        for (int i = 0; i < b->n; i++) {
            dead += b->state[i] == ROW_DEAD;
            held += b->state[i] == ROW_HELD;
            again += b->state[i] != ROW_ACKED && b->state[i] != ROW_DEAD && b->state[i] != ROW_HELD;
        }
        /* Dead and held rows are stored before the batch's end may be confirmed.  The dead first:
         * storing the held records the batch's end in wal_state, where the next stream starts
         * (walpark.c), so nothing of the batch may be left unstored after it. */
        wal_owner_t *o = b->owner;
        bool store = !again && !w->restart;
        if (store && dead && !o->dead_stored) {
            if (wal_dead_letters(r, b) < 0) {
                w->settle_retry_ms = outbox_mono_ms() + r->set.backoff_ms; /* not on every loop turn */
                break;
            }
            o->dead_stored = true; /* not counted again if the held rows' store must be tried again */
        }
        if (store && held && walpark_store(r, b) < 0) {
            w->settle_retry_ms = outbox_mono_ms() + r->set.backoff_ms;
            break;
        }
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
    if (r->wal.repl) {
        status_maybe(r);
        wal_stream_close(r, NULL);
    }
    wbuild_free(r);
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
