/* Sequenced messages: see testutil_seq.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_seq.h"

/* ---- messages with a per-key sequence ------------------------------------------------------ */

/* An EVENT for topic with key "k<key>" and payload "<key>:<seq>": the payload lets a reader check
 * per-key order and completeness without the rows, which the relay deletes. */
outbox_message_t *seq_msg(const char *topic, int key, int seq) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "test.Sequenced");
    ck_assert_ptr_nonnull(m);
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "k%d", key);
    ck_assert_int_eq(outbox_message_set_key(m, buf, (size_t)n), OUTBOX_OK);
    n = snprintf(buf, sizeof(buf), "%d:%d", key, seq);
    ck_assert_int_eq(outbox_message_set_payload(m, buf, (size_t)n), OUTBOX_OK);
    return m;
}

/* Commits sequence numbers [from, to) of keys 0..nkeys-1, round robin (so outbox id order is
 * sequence order per key), in transactions of at most 25,000 messages.  ids (optional) receives
 * the message id of (key k, seq s) at index s * nkeys + k. */
void write_seq(const char *topic, int nkeys, int from, int to, char (*ids)[37]) {
    enum { PER_TX = 25000 };
    outbox_message_t **ms = calloc(PER_TX, sizeof(*ms));
    ck_assert_ptr_nonnull(ms);
    size_t n = 0;
    for (int s = from; s < to; s++) {
        for (int k = 0; k < nkeys; k++) {
            ms[n] = seq_msg(topic, k, s);
            if (ids)
                memcpy(ids[(size_t)s * (size_t)nkeys + (size_t)k], outbox_message_id(ms[n]), 37);
            n++;
            if (n == PER_TX || (s == to - 1 && k == nkeys - 1)) {
                tu_exec(tf_conn, "BEGIN");
                ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, n) == OUTBOX_OK,
                              "outbox_send_batch: %s", outbox_errmsg(tf_ob));
                tu_exec(tf_conn, "COMMIT");
                for (size_t i = 0; i < n; i++)
                    outbox_message_destroy(ms[i]);
                n = 0;
            }
        }
    }
    free(ms);
}



void seq_init(seqstate_t *st, int nkeys, int per_key) {
    memset(st, 0, sizeof(*st));
    st->nkeys = nkeys;
    st->per_key = per_key;
    st->next = calloc((size_t)nkeys, sizeof(int));
    st->partition = malloc((size_t)nkeys * sizeof(int));
    st->seen = calloc((size_t)nkeys * (size_t)per_key, 1);
    ck_assert(st->next && st->partition && st->seen);
    for (int k = 0; k < nkeys; k++)
        st->partition[k] = -1;
}

void seq_free(seqstate_t *st) {
    free(st->next);
    free(st->partition);
    free(st->seen);
}

/* The (key, seq) of a record, checking that its value is an envelope whose id matches the "id"
 * header and whose key matches the record's key. */
void record_seq(const tk_record_t *r, int *key, int *seq) {
    outbox_message_t *m = NULL;
    char err[256];
    TF_CHECK(outbox_message_decode(&m, r->value, r->value_len, err, sizeof(err)) == OUTBOX_OK,
             "partition %d offset %lld: value is not an envelope: %s", r->partition, (long long)r->offset, err);
    size_t len;
    const char *payload = outbox_message_payload(m, &len);
    char buf[32];
    TF_CHECK(len < sizeof(buf), "payload of %zu bytes", len);
    memcpy(buf, payload, len);
    buf[len] = '\0';
    TF_CHECK(sscanf(buf, "%d:%d", key, seq) == 2, "unexpected payload '%s'", buf);
    const char *id = tk_record_header(r, "id");
    TF_CHECK(id && !strcmp(id, outbox_message_id(m)), "header id %s, envelope id %s", id ? id : "(none)",
             outbox_message_id(m));
    char kbuf[16];
    int klen = snprintf(kbuf, sizeof(kbuf), "k%d", *key);
    TF_CHECK(r->key && r->key_len == (size_t)klen && !memcmp(r->key, kbuf, (size_t)klen),
             "record of %s has the wrong Kafka key", buf);
    outbox_message_destroy(m);
}

/* Looks at the records read since the last call.  Per key, first appearances must come in sequence
 * order: a duplicate may repeat an earlier message (at least once), never jump ahead. */
void seq_feed(seqstate_t *st, tk_consumer_t *c) {
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    for (; st->pos < n; st->pos++) {
        const tk_record_t *r = &recs[st->pos];
        int k, s;
        record_seq(r, &k, &s);
        TF_CHECK(k >= 0 && k < st->nkeys && s >= 0 && s < st->per_key, "unexpected message %d:%d", k, s);
        if (st->partition[k] < 0)
            st->partition[k] = r->partition;
        TF_CHECK(st->partition[k] == r->partition, "key k%d on partitions %d and %d", k, st->partition[k],
                 r->partition);
        TF_CHECK(s <= st->next[k],
                 "key k%d: message %d arrived before message %d (partition %d offset %lld): order broken", k, s,
                 st->next[k], r->partition, (long long)r->offset);
        if (s == st->next[k])
            st->next[k]++;
        unsigned char *seen = &st->seen[(size_t)s * (size_t)st->nkeys + (size_t)k];
        if (!*seen)
            st->complete++;
        *seen = 1;
    }
}

/* Reads (and checks) more records for up to slice_ms, returning early once one arrived. */
void seq_poll(seqstate_t *st, tk_consumer_t *c, int slice_ms) {
    size_t n;
    tk_consumer_records(c, &n);
    tk_consumer_poll(c, n + 1, tk_now_ms() + slice_ms);
    seq_feed(st, c);
}

/* Reads until all nkeys * per_key messages have arrived, in order per key, or fails. */
void seq_read_all(seqstate_t *st, tk_consumer_t *c, int timeout_ms) {
    int total = st->nkeys * st->per_key;
    int64_t deadline = tk_now_ms() + timeout_ms;
    while (st->complete < total && tk_now_ms() < deadline)
        seq_poll(st, c, 500);
    TF_CHECK(st->complete == total, "only %d of %d messages arrived within %d ms", st->complete, total, timeout_ms);
}

/* How many records with sequence numbers in [from, to) were read (duplicates count). */
int seq_records_in(tk_consumer_t *c, int from, int to) {
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int cnt = 0;
    for (size_t i = 0; i < n; i++) {
        int k, s;
        record_seq(&recs[i], &k, &s);
        cnt += s >= from && s < to;
    }
    return cnt;
}

