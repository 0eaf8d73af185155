/*
 * The consumer's handle and the helpers its two files share: consumer.c (the session, the group,
 * offsets and rewinds) and consumer_batch.c (a poll's batch: gather, dedup, handlers, COMMIT).
 */
#ifndef OUTBOX_CONSUMER_INT_H
#define OUTBOX_CONSUMER_INT_H

#include <librdkafka/rdkafka.h>

#include "consumer_park.h"
#include "outbox_int.h"

typedef struct {
    char *topic;
    int32_t partition;
    int64_t resume_ms;
} paused_t;

/* One record of a batch and what became of it (consumer_batch.c). */
typedef struct outbox_cons_entry_s outbox_cons_entry_t;

struct outbox_consumer_s {
    outbox_conf_t *conf;
    char *group;
    char *conninfo;
    char *schema_q;
    PGconn *pg;              /* NULL after a session was dropped: pg_ensure connects again */
    outbox_pg_limits_t lim; /* pg.timeout.ms: the deadline of the library's own statements */
    rd_kafka_t *rk;
    outbox_consumer_stats_t stats;
    paused_t *paused;
    size_t paused_cnt, paused_cap;
    int major_max;
    int retry_backoff_ms;
    /* Session setup (connect, then check the schema and privileges) backs off after a failure:
     * no attempt before setup_next_ms, and each failure doubles the wait. */
    int64_t setup_next_ms;
    int setup_backoff_ms;   /* the wait after the next failure; 0: the last setup succeeded */
    outbox_err_t setup_err; /* the last failure, reported while waiting */
    char setup_errstr[OUTBOX_ERRSTR_SIZE];
    char sql_dedup[256];
    char sql_reject[512];
    /* Batches (consumer_batch.c): consumer.batch.max records, gathered for at most
     * consumer.batch.linger.ms, processed in one transaction. */
    int batch_max;
    int linger_ms;
    bool optimistic_batches;          /* consumer.batch.savepoints=on-failure */
    outbox_batch_handler_cb batch_cb; /* NULL: the per-message handler given to poll */
    void *batch_opaque;
    outbox_cons_entry_t *batch;       /* batch_max entries, allocated at the first poll */
    char sql_dedup_batch[320];
    char sql_undo[256];
    /* Pruning of <schema>.processed (consumer.processed.retention.s; 0 = off). */
    int64_t retention_s;
    int64_t prune_next_ms;
    char sql_prune[512];
    char errstr[OUTBOX_ERRSTR_SIZE];
    outbox_park_t *park; /* consumer.reject.policy=park-key (consumer_park.c); NULL: dead-letter */
};

outbox_err_t outbox_cons_err(outbox_consumer_t *c, outbox_err_t err, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
/* Sets up a session if there is none (with backoff after failures); false with the error recorded. */
bool outbox_cons_pg_ensure(outbox_consumer_t *c);
/* Ends the session: its state is unknown after a statement went unanswered or the link broke. */
void outbox_cons_pg_drop(outbox_consumer_t *c);
/* res (freed here) is a command that succeeded; else records "<what> failed: ..." and drops a
 * session that gave no answer or broke. */
bool outbox_cons_stmt_ok(outbox_consumer_t *c, PGresult *res, const char *why, const char *what);
/* Runs one of our simple statements within pg.timeout.ms; see outbox_cons_stmt_ok. */
bool outbox_cons_exec_ok(outbox_consumer_t *c, const char *sql);
/* ROLLBACK of the open transaction, keeping the error that caused it. */
void outbox_cons_rollback(outbox_consumer_t *c);
/* Rewinds m's partition to m (and pauses it pause_ms), so that m is delivered again next. */
void outbox_cons_redeliver(outbox_consumer_t *c, const rd_kafka_message_t *m, int pause_ms);

/* One poll: gathers a batch and processes it (consumer_batch.c).  handler may be NULL when a batch
 * handler is set. */
outbox_err_t outbox_cons_poll_batch(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque,
                                    int timeout_ms);
/* Frees the batch buffers. */
void outbox_cons_batch_free(outbox_consumer_t *c);

#endif
