/*
 * consumer_park.h: the consumer's parked keys (consumer.reject.policy=park-key), behind a narrow
 * interface so that lib/consumer.c only hooks it in a few places.  Internal; not exported.
 */
#ifndef OUTBOX_CONSUMER_PARK_H
#define OUTBOX_CONSUMER_PARK_H

#include <librdkafka/rdkafka.h>

#include "outbox_int.h"

/* The parked keys of one consumer: an in-memory set of (topic, partition, key), loaded from
 * <schema>.consumer_parked at assignment and refreshed every PARK_REFRESH_MS, so that a message
 * of a key that is not parked costs one comparison when nothing is parked and no query ever.
 * @locality the thread that polls the consumer, like everything of outbox_consumer_t. */
typedef struct outbox_park_s outbox_park_t;

/* What the park module borrows from its consumer for its whole life. */
typedef struct {
    const outbox_conf_t *conf;
    const char *group;
    const char *schema_q;
    const outbox_pg_limits_t *lim;
    outbox_consumer_stats_t *stats;
    char *errstr; /* the consumer's last error: the module's failures are written here */
    size_t errstr_size;
    int major_max;
    int retry_backoff_ms;
} outbox_park_env_t;

/* A park module when consumer.reject.policy is park-key, else NULL with *nomem false; NULL with
 * *nomem true when out of memory.  env is copied (the pointers in it stay borrowed).  Caller
 * owns; free with outbox_park_destroy(), which takes NULL. */
outbox_park_t *outbox_park_new(const outbox_park_env_t *env, bool *nomem);
void outbox_park_destroy(outbox_park_t *p);

/* Partitions were assigned: the set is loaded again before the next message is looked up. */
void outbox_park_assigned(outbox_park_t *p);
/* Partitions are being revoked: forget their keys (the next owner loads them from the table). */
void outbox_park_revoked(outbox_park_t *p, const rd_kafka_topic_partition_list_t *parts);

/* *held = whether m's key is parked in m's partition at or before m's offset, so that m must wait
 * behind it.  Loads the set first when the assignment changed (one query).  OUTBOX_OK, or the
 * error of that query (OUTBOX_ERR_CONNECTION: drop the session). */
outbox_err_t outbox_park_held(outbox_park_t *p, PGconn *pg, rd_kafka_t *rk, const rd_kafka_message_t *m,
                              bool *held);

/* Whether m can park at all: it has a Kafka key (a message without one has no order to keep, and
 * is dead-lettered as before). */
bool outbox_park_can_park(const outbox_park_t *p, const rd_kafka_message_t *m);

/* Stores m in consumer_parked, in one statement on pg, in the transaction open there (the
 * batch's): with reason, m parks its key (the poison, logged as a warning unless quiet: a batch
 * run again after its first pass logged it); with reason NULL, m is held behind its key's first
 * row.  A redelivered m (same offset) is stored once.  msg_id (may be NULL) is kept for the dead
 * letter a drop makes.  OUTBOX_OK, or OUTBOX_ERR_PG / OUTBOX_ERR_CONNECTION (drop the session). */
outbox_err_t outbox_park_store(outbox_park_t *p, PGconn *pg, const rd_kafka_message_t *m, const char *msg_id,
                               const char *reason, bool quiet);

/* Once per poll: refreshes the set when PARK_REFRESH_MS passed (or a release asked for it), then
 * hands the held messages of every released key of an assigned partition to handler, in offset
 * order, each in its own transaction with the dedup record and the row's DELETE.  A key whose
 * first message is rejected again stays parked with the new reason; a RETRY waits
 * consumer.retry.backoff.ms.  OUTBOX_OK, or the first PostgreSQL failure (OUTBOX_ERR_CONNECTION:
 * drop the session). */
outbox_err_t outbox_park_poll(outbox_park_t *p, PGconn *pg, rd_kafka_t *rk, outbox_handler_cb handler,
                              void *opaque);

/* The transaction that stored rows went back: the set is loaded again before the next look-up.
 * p may be NULL. */
void outbox_park_forget(outbox_park_t *p);

/* Marks every held row of key (len bytes) of the group released, on pg (autocommit), and asks
 * for a refresh at the next poll. */
outbox_err_t outbox_park_release(outbox_park_t *p, PGconn *pg, const void *key, size_t len);

#endif /* OUTBOX_CONSUMER_PARK_H */
