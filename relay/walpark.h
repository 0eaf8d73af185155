/*
 * walpark.h: per-key parking in outbox.mode=wal (walpark.c), for the WAL source.
 */
#ifndef OUTBOX_RELAY_WALPARK_H
#define OUTBOX_RELAY_WALPARK_H

#include "relay.h"

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

#endif
