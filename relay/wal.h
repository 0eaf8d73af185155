/*
 * wal.h: the WAL source's internals, shared by walsource.c (the stream source), walbuild.c (the
 * batch being read), walslot.c (slot, connection, dead letters, figures) and walpark.c (parking).
 */
#ifndef OUTBOX_RELAY_WAL_H
#define OUTBOX_RELAY_WAL_H

#include "relay.h"

/* walbuild.c: the batch being read from the stream.  Rows and bytes grow until it is handed out
 * (wbuild_take); walsource.c reads n, confirm and first_ms to decide when. */
typedef struct wbuild_row_s wbuild_row_t; /* one message: offsets into arena (walbuild.c) */
typedef struct wbuild_s {
    wbuild_row_t *rows;
    int n, cap;
    char *arena;
    size_t used, size;
    uint64_t confirm;     /* the end of the last transaction it completes; 0: none */
    int64_t first_ms;     /* when its first message was read; 0: none yet */
} wbuild_t;

/* ---- walbuild.c: the WAL source's batch builder ------------------------------------------------ */

/* r's build, made on first use: borrowed (r owns it: wbuild_free); NULL when out of memory. */
wbuild_t *wbuild_of(relay_t *r);
/* Copies one message of this outbox (envelope, LSN) into b; one whose envelope does not say where
 * it goes is kept too, with the reason: the producer dead-letters it.  0, or -1 (out of memory). */
int wbuild_add(relay_t *r, wbuild_t *b, const uint8_t *content, size_t content_len, uint64_t lsn);
/* Hands b out as a batch that owns b's arena (caller owns it: batch_retire) and empties b; NULL
 * when out of memory (b is left as it was). */
batch_t *wbuild_take(relay_t *r, wbuild_t *b);
/* Empties b (may be NULL), keeping its memory. */
void wbuild_reset(wbuild_t *b);
/* Frees r's build (none: a no-op). */
void wbuild_free(relay_t *r);

/* ---- walslot.c: the WAL source's slot, stream connection, dead letters and figures ---------- */

/* The slot, publication and prefix names and the statements, from the settings. */
void wal_build_sql(relay_t *r);
/* Checks the slot and publication on the leader session, connects for replication and starts
 * streaming from the slot's confirmed position: 0, or -1 (logged; retried after a backoff). */
int wal_stream_start(relay_t *r);
/* Closes the stream; why (may be NULL) is logged. */
void wal_stream_close(relay_t *r, const char *why);
/* The server ended the stream: logs its reason and closes it. */
void wal_stream_end(relay_t *r);
/* Whether the outbox table holds rows: 1, 0, or -1 when it cannot be told. */
int wal_table_has_rows(relay_t *r);
/* Records the batch's dead rows in dead_letters (id: the message's LSN, negated): 0, or -1. */
int wal_dead_letters(relay_t *r, batch_t *b);
/* Every 2 s: the slot's lag, retained WAL and health, for metrics and readiness. */
void wal_sample(relay_t *r);

/* ---- walpark.c: per-key parking in outbox.mode=wal ------------------------------------------ */

/* What the WAL source may do next, as walpark_gate says. */
enum {
    WALPARK_STREAM, /* read the stream as usual */
    WALPARK_DRAIN,  /* read nothing more: hand out what was read, let in-flight batches settle */
    WALPARK_TABLE   /* keys were released into the outbox table: publish it before the stream */
};

/* Before the stream is read (not in the table phase); built: messages read but not yet handed
 * out.  Polls parked_keys for requests every second; a reload of the parked keys or an
 * operator's release waits until nothing is in flight and nothing is read but not handed out,
 * and runs then.  Main thread. */
int walpark_gate(relay_t *r, int built);
/* Stores b's held rows in parked_messages (ids from the outbox table's identity, in stream
 * order; a message already held for its key is not stored twice) and their keys in parked_keys,
 * in one statement: 0, or -1 (logged; the batch stays, tried again at the next settle).  A held
 * row whose key is no longer parked is marked to be sent again (ROW_RETRY).  Main thread. */
int walpark_store(relay_t *r, batch_t *b);
/* A new leadership: checks that the relay's role may draw ids for held messages (USAGE on the
 * outbox table's identity); without it, held messages are dead-lettered (walpark_unhold), and the
 * relay says how to get parking back.  Main thread. */
void walpark_leader(relay_t *r);
/* Before b's rows are counted at settle: without that USAGE, its held rows become dead rows, with
 * the reason.  Main thread. */
void walpark_unhold(relay_t *r, batch_t *b);

#endif
