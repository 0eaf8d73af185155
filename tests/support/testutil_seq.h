/* Sequenced messages for the suites that run a relay: each message of key "k<key>" carries
 * "<key>:<seq>", so a reader checks per-key order and completeness from the topic alone. */
#ifndef OUTBOX_TESTUTIL_SEQ_H
#define OUTBOX_TESTUTIL_SEQ_H

#include "testutil_fixture.h"

/* What a reader has learnt from a topic of sequenced messages so far. */
typedef struct {
    int nkeys, per_key;
    int *next;           /* per key: the sequence number whose first appearance is due next */
    int *partition;      /* per key: the partition its records are on (-1: none seen yet) */
    unsigned char *seen; /* per (seq * nkeys + key): at least once on the topic */
    size_t pos;          /* consumer records already looked at */
    int complete;        /* distinct (key, seq) seen */
} seqstate_t;

/* An EVENT for topic with key "k<key>" and payload "<key>:<seq>".  Caller frees. */
outbox_message_t *seq_msg(const char *topic, int key, int seq);
/* Commits sequence numbers [from, to) of keys 0..nkeys-1 round robin through tf_ob on tf_conn, in
 * transactions of at most 25,000; ids (optional) gets message ids at s * nkeys + k. */
void write_seq(const char *topic, int nkeys, int from, int to, char (*ids)[37]);
void seq_init(seqstate_t *st, int nkeys, int per_key);
void seq_free(seqstate_t *st);
/* The (key, seq) of a record, checking its envelope, id header and Kafka key. */
void record_seq(const tk_record_t *r, int *key, int *seq);
/* Checks the records read since the last call: per key, no message before an earlier one. */
void seq_feed(seqstate_t *st, tk_consumer_t *c);
/* Reads (and checks) more records for up to slice_ms. */
void seq_poll(seqstate_t *st, tk_consumer_t *c, int slice_ms);
/* Reads until every message arrived in order per key, or fails. */
void seq_read_all(seqstate_t *st, tk_consumer_t *c, int timeout_ms);
/* How many records with sequence numbers in [from, to) were read (duplicates count). */
int seq_records_in(tk_consumer_t *c, int from, int to);

#endif
