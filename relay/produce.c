/*
 * produce.c: the Kafka side: the idempotent producer, its callbacks, producing a batch's rows
 * without copying them, and whether the broker answers.
 *
 * Callbacks run on the main thread: delivery reports, errors and librdkafka's own log lines all
 * come through rd_kafka_poll (log.queue), never from librdkafka's threads.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define FAC RELAY_FAC
/* Room for the headers of a typical message: id, type, kind and a few of its own. */
#define HEADERS_INITIAL 8
/* While the producer's queue is full, wait this long for room, serving reports. */
#define QUEUE_FULL_WAIT_MS 10
/* The source reads its input every so many produced rows (relay_source_t.pump). */
#define PUMP_EVERY_ROWS 256
/* With no delivery report for this long, ask the broker for metadata to tell whether it is up. */
#define PROBE_QUIET_MS 2000
/* How long one metadata request may take; it runs off the main thread. */
#define PROBE_TIMEOUT_MS 1000
/* Outstanding reports with no acknowledgement for this long: the broker is silent, say so. */
#define BROKER_SILENT_MS 10000
/* A state that lasts is logged again at most this often. */
#define REMIND_EVERY_MS 30000

/* Errors that will not go away by retrying the same message: such rows park their key or are
 * dead-lettered (relay.poison.policy). */
static bool permanent(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

static void mark_dead(batch_t *b, int row, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
static void mark_dead(batch_t *b, int row, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    b->state[row] = ROW_DEAD;
    free(b->error[row]);
    b->error[row] = outbox_strdup(buf); /* NULL when out of memory: settle says so */
}

/* A row to send again, after everything in flight has settled (the loop's rewind).  The first
 * of a series is logged; the rest (a purge at shutdown may fail thousands) only at debug level,
 * and producer_retry_summary counts them. */
static void mark_retry(relay_t *r, batch_t *b, int row, const char *what, const char *err) {
    b->state[row] = ROW_RETRY;
    r->rewind = true;
    outbox_log(r->conf, r->prod.retries ? 7 : 4, FAC, "msg=\"%s, will re-send\" id=%lld error=%s", what,
               (long long)b->ids[row], err);
    if (!r->prod.retries++)
        r->prod.retry_err = err;
}

/* A row that failed permanently: under park-key, with a partition key, it parks its key and is
 * held with it (park.c); else, or when the key cannot be recorded, it is dead-lettered. */
static void mark_failed(relay_t *r, batch_t *b, int row, const char *fmt, ...) OUTBOX_PRINTF(4, 5);
static void mark_failed(relay_t *r, batch_t *b, int row, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    const relay_row_t *rw = &b->rows[row];
    if (r->set.park_key && rw->key) {
        if (!park_add(r, rw->key, rw->key_len, b->ids[row], rw->dest, buf)) {
            mark_retry(r, b, row, "cannot park its key", "out_of_memory"); /* it stays in the table */
            return;
        }
        b->state[row] = ROW_HELD;
        free(b->error[row]);
        b->error[row] = outbox_strdup(buf);
        return;
    }
    mark_dead(b, row, "%s", buf);
}

void producer_retry_summary(relay_t *r) {
    if (r->prod.retries > 1)
        outbox_log(r->conf, 4, FAC, "msg=\"re-sending from the oldest unsettled message\" failed=%lld "
                   "first_error=%s", (long long)r->prod.retries, r->prod.retry_err);
    r->prod.retries = 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    relay_t *r = opaque;
    slot_t *s = m->_private;
    batch_t *b = s->batch;
    b->pending--;
    if (!m->err && m->offset < 0 && r->prod.offsets_expected) {
        /* "Delivered" without an offset: the idempotent producer infers that a failed request
         * was written after all because a later one of the same partition was acknowledged.
         * That holds on a broker that enforces sequence numbers; librdkafka 2.0.2's mock broker
         * does not, and the fault suite (seed 11) lost rows this way after injected
         * NOT_ENOUGH_REPLICAS errors.  Re-sending costs at most a duplicate. */
        mark_retry(r, b, s->row, "acknowledged without an offset", "no_offset");
        return;
    }
    if (!m->err) {
        b->state[s->row] = ROW_ACKED;
        if (r->park.n) {
            /* A later row of a key that parked while this one was in flight: published ahead of
             * the rows held before it (the README says so). */
            const park_entry_t *e = park_find(r, b->rows[s->row].key, b->rows[s->row].key_len);
            if (e && b->ids[s->row] > e->first_id)
                atomic_fetch_add(&r->metrics.parked_overtaken, 1);
        }
        /* Where the broker says it put the row: with this line a reader can tell a row the
         * broker acknowledged and then lost from one the relay never sent.  The message id too:
         * in outbox.mode=wal a stream message's id is the relay's own sequence number, which
         * names no message (and may equal a released row's id). */
        if (r->set.debug) {
            char uuid[OUTBOX_UUID_STR_LEN + 1];
            outbox_uuid_text(b->rows[s->row].uuid, uuid);
            outbox_log(r->conf, 7, FAC, "msg=delivered id=%lld partition=%d offset=%lld message_id=%s",
                       (long long)b->ids[s->row], (int)m->partition, (long long)m->offset, uuid);
        }
        r->published++;
        atomic_fetch_add(&r->metrics.published, 1);
        r->prod.last_delivery_ms = outbox_mono_ms();
        if (r->prod.silent) {
            r->prod.silent = false;
            outbox_log(r->conf, 5, FAC, "msg=\"the broker acknowledges again\" silent_s=%lld",
                       (long long)((r->prod.last_delivery_ms - r->prod.waiting_since_ms) / 1000));
        }
        atomic_store(&r->metrics.kafka_ok, 1);
        return;
    }
    metrics_delivery_error(&r->metrics, m->err);
    if (permanent(m->err))
        mark_failed(r, b, s->row, "kafka: %s (%s)", rd_kafka_err2name(m->err), rd_kafka_err2str(m->err));
    else /* transient or local (purge, timeout): keep the row and re-send from it */
        mark_retry(r, b, s->row, "delivery failed", rd_kafka_err2name(m->err));
}

/* The level of a librdkafka error: warning the first time in REMIND_EVERY_MS, else debug (while
 * the brokers are away librdkafka repeats itself every second). */
static int error_level(relay_t *r, int err) {
    int64_t now = outbox_mono_ms();
    int oldest = 0, n = (int)(sizeof(r->prod.errs) / sizeof(r->prod.errs[0]));
    for (int i = 0; i < n; i++) {
        if (r->prod.errs[i].code == err && r->prod.errs[i].logged_ms) {
            if (now - r->prod.errs[i].logged_ms < REMIND_EVERY_MS)
                return 7;
            r->prod.errs[i].logged_ms = now;
            return 4;
        }
        if (r->prod.errs[i].logged_ms < r->prod.errs[oldest].logged_ms)
            oldest = i;
    }
    r->prod.errs[oldest].code = err;
    r->prod.errs[oldest].logged_ms = now;
    return 4;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    relay_t *r = opaque;
    char safe[512];
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&r->metrics.kafka_ok, 0);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        outbox_log(r->conf, 3, FAC, "msg=\"fatal producer error: re-creating the producer\" "
                   "error=%s reason=\"%s\"", rd_kafka_err2name(orig),
                   outbox_logfmt_value(why, safe, sizeof(safe)));
        r->prod.fatal = true;
        return;
    }
    outbox_log(r->conf, error_level(r, err), FAC, "msg=\"kafka error\" error=%s reason=\"%s\"",
               rd_kafka_err2name((rd_kafka_resp_err_t)err), outbox_logfmt_value(reason, safe, sizeof(safe)));
}

/* Served by rd_kafka_poll on the main thread (log.queue), where rd_kafka_opaque is allowed. */
static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    const relay_t *r = rd_kafka_opaque(rk);
    outbox_kafka_log(r->conf, level, fac, buf);
}

int producer_start(relay_t *r, char *err, size_t err_size) {
    rd_kafka_conf_t *kc = outbox_kafka_conf(r->conf, outbox_kafka_producer_defaults(), err, err_size);
    if (!kc)
        return -1;
    char acks[16] = "";
    size_t acks_len = sizeof(acks);
    r->prod.offsets_expected = rd_kafka_conf_get(kc, "acks", acks, &acks_len) != RD_KAFKA_CONF_OK ||
                               strcmp(acks, "0") != 0;
    rd_kafka_conf_set_opaque(kc, r);
    rd_kafka_conf_set_dr_msg_cb(kc, on_delivery);
    rd_kafka_conf_set_error_cb(kc, on_error);
    if (outbox_kafka_conf_logs(kc, on_kafka_log, err, err_size)) {
        rd_kafka_conf_destroy(kc);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, err_size);
    if (!rk) {
        rd_kafka_conf_destroy(kc);
        return -1;
    }
    rd_kafka_set_log_queue(rk, NULL); /* the main queue, served by rd_kafka_poll */
    r->prod.rk = rk;
    r->prod.fatal = false;
    return 0;
}

void producer_poll(relay_t *r, int ms) {
    rd_kafka_poll(r->prod.rk, ms);
}

static const char *kind_name(int kind) {
    static const char *names[] = {"UNSPECIFIED", "EVENT", "COMMAND", "REPLY", "DOCUMENT"};
    return kind >= 0 && kind <= 4 ? names[kind] : "UNKNOWN";
}

static int add_header(const char *name, size_t nl, const char *value, size_t vl, void *opaque) {
    return rd_kafka_header_add(opaque, name, (ssize_t)nl, value, (ssize_t)vl) ? -1 : 0;
}

/* The record's headers: id, type, the envelope's own headers, kind.  NULL when the envelope does
 * not decode (the row is then marked dead) or a header cannot be added. */
static rd_kafka_headers_t *row_headers(relay_t *r, batch_t *b, int i) {
    const relay_row_t *row = &b->rows[i];
    char id[OUTBOX_UUID_STR_LEN + 1];
    int kind;
    rd_kafka_headers_t *h = rd_kafka_headers_new(HEADERS_INITIAL);
    outbox_uuid_text(row->uuid, id);
    if (rd_kafka_header_add(h, "id", 2, id, OUTBOX_UUID_STR_LEN) ||
        rd_kafka_header_add(h, "type", 4, row->type, (ssize_t)row->type_len)) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    if (outbox_envelope_scan(row->value, row->value_len, &kind, add_header, h)) {
        rd_kafka_headers_destroy(h);
        mark_failed(r, b, i, "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", row->value_len);
        return NULL;
    }
    if (rd_kafka_header_add(h, "kind", 4, kind_name(kind), -1)) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    return h;
}

/* Produces row i of b, pointing into the source's storage (no copy).  Returns false when the
 * batch must stop here: a fatal error, or a stop request while the queue is full. */
static bool produce_row(relay_t *r, batch_t *b, int i) {
    const relay_row_t *row = &b->rows[i];
    char why[200];
    if (r->park.n && park_find(r, row->key, row->key_len)) {
        b->state[i] = ROW_HELD; /* its key is parked: it waits behind the failed row */
        return true;
    }
    if (b->error[i] && b->state[i] == ROW_PENDING) {
        /* The source found it unpublishable (a WAL message whose envelope does not decode). */
        char reason[300];
        outbox_snprintf(reason, sizeof(reason), "%s", b->error[i]);
        mark_failed(r, b, i, "%s", reason);
        return true;
    }
    if (!outbox_topic_valid(row->dest, why, sizeof(why))) {
        mark_failed(r, b, i, "invalid destination: \"%.200s\" %s", row->dest, why);
        return true;
    }
    const void *value = row->value;
    size_t value_len = row->value_len;
    char dead[300] = "";
    rd_kafka_headers_t *h = r->set.cloudevents ? ce_row_headers(r, b, i, &value, &value_len, dead, sizeof(dead))
                                               : row_headers(r, b, i);
    if (!h && *dead) {
        mark_failed(r, b, i, "%s", dead); /* not a record it can be: parks its key, or dead-lettered */
        return true;
    }
    if (!h) {
        if (b->state[i] != ROW_DEAD && b->state[i] != ROW_HELD)
            mark_retry(r, b, i, "cannot build the record's headers", "out_of_memory");
        return true;
    }
    slot_t *slot = &b->slots[i];
    slot->batch = b;
    slot->row = i;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            r->prod.rk, RD_KAFKA_V_TOPIC(row->dest), RD_KAFKA_V_KEY(row->key, row->key_len),
            RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_MSGFLAGS(0),
            RD_KAFKA_V_TIMESTAMP(row->timestamp_ms),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(slot), RD_KAFKA_V_END);
        if (!err) {
            b->pending++;
            return true;
        }
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !*r->stop) {
            producer_poll(r, QUEUE_FULL_WAIT_MS);
            continue;
        }
        rd_kafka_headers_destroy(h);
        slot->batch = NULL;
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return false; /* stopping: this row and the rest of the batch stay in the source */
        if (permanent(err)) {
            mark_failed(r, b, i, "kafka: %s (%s): %zu-byte envelope, kafka.message.max.bytes applies",
                      rd_kafka_err2name(err), rd_kafka_err2str(err), row->value_len);
            return true;
        }
        if (err == RD_KAFKA_RESP_ERR__FATAL) {
            r->prod.fatal = true;
            return false;
        }
        mark_retry(r, b, i, "produce failed", rd_kafka_err2name(err));
        return true;
    }
}

void produce_batch(relay_t *r, batch_t *b) {
    int i = 0;
    if (batch_outstanding(r) == 0)
        r->prod.waiting_since_ms = outbox_mono_ms(); /* the silence, if any, counts from now */
    for (; i < b->n && !r->prod.fatal; i++) {
        if (!produce_row(r, b, i))
            break;
        if (b->state[i] == ROW_RETRY) {
            /* Refused before it left (a topic unknown for a moment, say): a later row of its key
             * must not go out ahead of it, so the rest of the batch waits for the rewind too. */
            i++;
            break;
        }
        if (r->src->pump && i % PUMP_EVERY_ROWS == PUMP_EVERY_ROWS - 1)
            r->src->pump(r);
    }
    /* Rows never handed to the producer stay where they are, to be sent again. */
    for (; i < b->n; i++)
        if (b->state[i] == ROW_PENDING && !b->slots[i].batch)
            b->state[i] = ROW_RETRY;
    outbox_log(r->conf, 7, FAC, "msg=\"claimed batch\" rows=%d first_id=%lld last_id=%lld", b->n,
               (long long)b->ids[0], (long long)b->ids[b->n - 1]);
}

/* ---- is the broker there? ------------------------------------------------------------------- */

/* @locality the probe thread: only librdkafka's thread-safe metadata call and two atomics. */
static void *probe_main(void *arg) {
    relay_t *r = arg;
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(r->prod.rk, 0, NULL, &md, PROBE_TIMEOUT_MS);
    if (!err)
        rd_kafka_metadata_destroy(md);
    atomic_store(&r->prod.probe_ok, err == RD_KAFKA_RESP_ERR_NO_ERROR);
    atomic_store(&r->prod.probe_done, 1);
    return NULL;
}

static void probe_join(relay_t *r) {
    if (!r->prod.probing)
        return;
    pthread_join(r->prod.probe, NULL);
    r->prod.probing = false;
    if (r->prod.last_delivery_ms < r->prod.next_probe_ms - PROBE_QUIET_MS)
        atomic_store(&r->metrics.kafka_ok, atomic_load(&r->prod.probe_ok));
}

/* Outstanding reports and no acknowledgement for long: say so once, then every REMIND_EVERY_MS. */
static void silence_watch(relay_t *r, int64_t now) {
    relay_producer_t *p = &r->prod;
    int64_t since = p->last_delivery_ms > p->waiting_since_ms ? p->last_delivery_ms : p->waiting_since_ms;
    int outstanding = batch_outstanding(r);
    if (!outstanding || now - since < BROKER_SILENT_MS || (p->silent && now < p->next_remind_ms))
        return;
    outbox_log(r->conf, 4, FAC, "msg=\"%sno acknowledgement from the broker\" silent_s=%lld outstanding=%d",
               p->silent ? "still " : "", (long long)((now - since) / 1000), outstanding);
    p->silent = true;
    p->next_remind_ms = now + REMIND_EVERY_MS;
}

void producer_probe(relay_t *r) {
    int64_t now = outbox_mono_ms();
    silence_watch(r, now);
    if (r->prod.probing && atomic_load(&r->prod.probe_done))
        probe_join(r);
    if (r->prod.probing || !r->mhd || now < r->prod.next_probe_ms ||
        now - r->prod.last_delivery_ms <= PROBE_QUIET_MS)
        return;
    /* Never on the loop: a metadata request to a broker that is away blocks until its timeout. */
    r->prod.next_probe_ms = now + PROBE_QUIET_MS;
    atomic_store(&r->prod.probe_done, 0);
    r->prod.probing = pthread_create(&r->prod.probe, NULL, probe_main, r) == 0;
}

int64_t producer_close(relay_t *r, int64_t wait_ms) {
    if (!r->prod.rk)
        return 0;
    probe_join(r);
    int64_t deadline = outbox_mono_ms() + wait_ms;
    while (batch_outstanding(r) > 0 && outbox_mono_ms() < deadline && atomic_load(r->interrupts) < 2) {
        producer_poll(r, 50);
        r->src->settle(r, false);
    }
    rd_kafka_purge(r->prod.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    producer_poll(r, 0);
    r->src->settle(r, true);
    rd_kafka_destroy(r->prod.rk);
    r->prod.rk = NULL;
    int64_t left = 0;
    for (int k = 0; k < r->inflight_cnt; k++)
        for (int i = 0; i < r->inflight[k]->n; i++)
            left += r->inflight[k]->state[i] != ROW_ACKED && r->inflight[k]->state[i] != ROW_DEAD &&
                    r->inflight[k]->state[i] != ROW_HELD;
    r->src->rewind(r);
    batch_retire_all(r);
    producer_retry_summary(r);
    return left;
}
