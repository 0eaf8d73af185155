/*
 * drain.c: the relay's loop.  It takes batches from the source, hands them to the producer and
 * lets the source settle what was acknowledged; the stages themselves live in their own files
 * (relay.h lists them).
 *
 * Why it is safe: a message is settled (deleted, or its position confirmed) only after the
 * broker acknowledged it (acks=all), so a crash anywhere re-sends, never loses; and a row that
 * failed transiently is sent again only after everything in flight has settled, from the oldest,
 * so a key's messages never overtake each other.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

#define FAC RELAY_FAC
/* Rows after so long without any are a trickle: sent at once. */
#define TRICKLE_GAP_MS 20
/* How long rd_kafka_flush may wait for a trickle's acknowledgements. */
#define TRICKLE_FLUSH_MS 100
/* A quiet second lets the idle waits grow from relay.poll.active.ms to relay.poll.max.ms. */
#define QUIET_MS 1000
/* The longest wait before re-sending from the oldest row after transient failures. */
#define REWIND_BACKOFF_MAX_MS 5000
/* A progress line at most this often, while messages flow. */
#define PROGRESS_EVERY_MS 10000

static void settings_read(relay_t *r) {
    const outbox_conf_t *c = r->conf;
    relay_settings_t *s = &r->set;
    s->batch_size = (int)outbox_conf_int(c, "relay.batch.size");
    s->inflight_max = (int)outbox_conf_int(c, "relay.inflight.batches");
    s->poll_min_ms = outbox_conf_int(c, "relay.poll.min.ms");
    s->poll_max_ms = outbox_conf_int(c, "relay.poll.max.ms");
    s->poll_active_ms = outbox_conf_int(c, "relay.poll.active.ms");
    if (s->poll_active_ms > s->poll_max_ms)
        s->poll_active_ms = s->poll_max_ms;
    s->backoff_ms = outbox_conf_int(c, "relay.reconnect.backoff.ms");
    s->backoff_max_ms = outbox_conf_int(c, "relay.reconnect.backoff.max.ms");
    s->lock_retry_ms = outbox_conf_int(c, "relay.lock.retry.ms");
    s->statement_timeout_ms = outbox_conf_int(c, "relay.statement.timeout.ms");
    s->shutdown_timeout_ms = outbox_conf_int(c, "relay.shutdown.timeout.ms");
    s->floor_warn_ms = outbox_conf_int(c, "relay.floor.warn.ms");
    s->reindex_min_bytes = outbox_conf_int(c, "relay.reindex.min.bytes");
    s->reindex_check_ms = outbox_conf_int(c, "relay.reindex.check.ms");
    s->debug = outbox_conf_int(c, "log.level") >= 7;
    s->record_created = !strcmp(outbox_conf_str(c, "relay.record.timestamp"), "created");
    s->park_key = !strcmp(outbox_conf_str(c, "relay.poison.policy"), "park-key");
    s->cloudevents = !strcmp(outbox_conf_str(c, "relay.format"), "cloudevents");
    if (*outbox_conf_str(c, "relay.cloudevents.source"))
        outbox_snprintf(s->ce_source, sizeof(s->ce_source), "%s", outbox_conf_str(c, "relay.cloudevents.source"));
    else
        outbox_ce_source_default(outbox_conf_str(c, "outbox.schema"), s->ce_source, sizeof(s->ce_source));
}

/* The loop's own pacing: how long to wait when there is nothing to do. */
typedef struct {
    int64_t idle_ms;          /* the next wait after an empty claim */
    int64_t last_rows_ms;     /* when the source last returned rows */
    int64_t rewind_backoff;   /* the next wait before re-sending from the oldest row */
    int64_t last_report_ms, reported;
} pace_t;

/* The producer raised a fatal error (librdkafka 2.0.2 can raise a spurious idempotence one after
 * timeouts): settle what was acknowledged, then start over with a new producer from the oldest
 * message not yet settled.  -1 when no producer can be made. */
static int producer_restart(relay_t *r) {
    char err[512], safe[512];
    producer_close(r, 0);
    r->rewind = false;
    if (producer_start(r, err, sizeof(err)) == 0)
        return 0;
    outbox_log(r->conf, 2, FAC, "msg=\"cannot re-create the producer\" error=\"%s\"",
               outbox_logfmt_value(err, safe, sizeof(safe)));
    return -1;
}

/* After a batch of got rows (last: the newest batch in flight): waits as the flow asks. */
static void pace(relay_t *r, pace_t *p, int got) {
    int64_t quiet_ms = outbox_mono_ms() - p->last_rows_ms; /* since rows last came */
    if (got > 0)
        p->last_rows_ms = outbox_mono_ms();
    if (got == r->set.batch_size) {
        p->idle_ms = r->set.poll_min_ms; /* a full batch: more rows are likely waiting */
    } else if (got > 0) {
        p->idle_ms = r->set.poll_min_ms;
        const batch_t *last = r->inflight[r->inflight_cnt - 1];
        if (quiet_ms >= TRICKLE_GAP_MS && last->pending && batch_outstanding(r) == last->pending) {
            /* A trickle: the first rows after a pause, and all that is in flight.  Waiting
             * out linger.ms for more messages that are not coming would only add latency.
             * While rd_kafka_flush() runs the producer sends at once; it returns on the
             * acknowledgements (served here), or after the timeout if the broker is slow.
             * A steady stream keeps the linger: it batches, and many tiny produce requests
             * would queue at the broker. */
            rd_kafka_flush(r->prod.rk, TRICKLE_FLUSH_MS);
        } else if (r->src->wait) {
            r->src->wait(r, p->idle_ms); /* a pushed source: back as soon as more arrives */
        } else {
            relay_sleep(r, p->idle_ms);
        }
    } else {
        /* A trickle keeps the waits short (its next message is likely soon); a quiet second
         * lets them grow to poll.max, where an idle relay costs least. */
        if (r->src->wait)
            r->src->wait(r, p->idle_ms); /* wakes when input arrives */
        else
            relay_sleep(r, p->idle_ms);
        int64_t cap = outbox_mono_ms() - p->last_rows_ms < QUIET_MS ? r->set.poll_active_ms
                                                                     : r->set.poll_max_ms;
        p->idle_ms = p->idle_ms * 2 > cap ? cap : (p->idle_ms ? p->idle_ms * 2 : 1);
    }
    if (outbox_mono_ms() - p->last_report_ms >= PROGRESS_EVERY_MS && r->published != p->reported) {
        outbox_log(r->conf, 6, FAC, "msg=progress published=%lld dead_lettered=%lld inflight=%d",
                   (long long)r->published, (long long)r->dead_lettered, batch_outstanding(r));
        p->reported = r->published;
        p->last_report_ms = outbox_mono_ms();
    }
}

/* One turn of the loop; -1 when the relay cannot go on. */
static int step(relay_t *r, pace_t *p) {
    const relay_source_t *src = r->src;
    producer_poll(r, 0);
    if (r->prod.fatal)
        return producer_restart(r);
    producer_probe(r); /* a standby, or a relay without PostgreSQL, still reports the broker */
    src->sample(r);
    if (!src->ready(r)) {
        src->settle(r, false);
        return 0;
    }
    src->settle(r, false);
    if (r->rewind) {
        /* A row failed transiently: let everything in flight settle, then deliver again from
         * the oldest row, so the failed row goes out before anything newer. */
        if (r->inflight_cnt) {
            producer_poll(r, 5);
            return 0;
        }
        r->rewind = false;
        producer_retry_summary(r);
        relay_sleep(r, p->rewind_backoff);
        p->rewind_backoff = backoff_next(p->rewind_backoff, REWIND_BACKOFF_MAX_MS);
    }
    if (r->inflight_cnt >= r->set.inflight_max) {
        producer_poll(r, 1);
        return 0;
    }
    batch_t *b = NULL;
    int rc = src->next(r, &b);
    if (rc < 0) {
        relay_sleep(r, r->session.backoff_ms);
        return 0;
    }
    if (b)
        produce_batch(r, b);
    if (r->settle.clean) {
        /* Deliveries work again: the next failure starts from the shortest backoff (a trickle
         * never fills a batch, so a full claim is no sign of health). */
        p->rewind_backoff = r->set.backoff_ms;
        r->settle.clean = false;
    }
    pace(r, p, b ? b->n : 0);
    return 0;
}

/* Shutdown: no more claims; wait for outstanding acknowledgements, settle what was acked, and
 * say in one line what was done and what is left for the next run. */
static void stop(relay_t *r) {
    outbox_log(r->conf, 6, FAC, "msg=\"shutting down\" outstanding=%d", batch_outstanding(r));
    if (atomic_load(r->interrupts) >= 2)
        _exit(130); /* a second SIGINT: nothing is lost, rows are only deleted after the ack */
    int64_t unacked = producer_close(r, r->set.shutdown_timeout_ms);
    int64_t left = r->src->left(r);
    char left_txt[24] = "unknown";
    if (left >= 0)
        snprintf(left_txt, sizeof(left_txt), "%lld", (long long)left);
    outbox_log(r->conf, 6, FAC, "msg=\"stopped\" published=%lld dead_lettered=%lld unacknowledged=%lld "
               "left_in_%s=%s", (long long)r->published, (long long)r->dead_lettered, (long long)unacked,
               r->src->name, left_txt);
}

int relay_run(relay_t *r) {
    char err[512];
    size_t n = 0;
    if (outbox_conf_get(r->conf, "kafka.bootstrap.servers", NULL, &n) != OUTBOX_CONF_OK) {
        fprintf(stderr, "outbox-relay: kafka.bootstrap.servers is not set: pass "
                        "-X kafka.bootstrap.servers=host:9092 or put it in the -c file\n");
        return 2;
    }
    settings_read(r);
    session_init(r);
    r->src = outbox_conf_wal(r->conf) ? &relay_wal_source : &relay_table_source;
    r->inflight = calloc((size_t)r->set.inflight_max, sizeof(*r->inflight));
    if (!r->inflight || pthread_mutex_init(&r->metrics.lock, NULL) != 0) {
        fprintf(stderr, "outbox-relay: out of memory starting the relay\n");
        free(r->inflight);
        return 1;
    }
    r->src->open(r);
    int rc = 2;
    if (producer_start(r, err, sizeof(err))) {
        fprintf(stderr, "outbox-relay: cannot create the Kafka producer: %s\n", err);
        goto out;
    }
    if (metrics_start(r, err, sizeof(err))) {
        fprintf(stderr, "outbox-relay: %s\n", err);
        producer_close(r, 0);
        goto out;
    }
    outbox_log(r->conf, 6, FAC, "msg=\"relay starting\" version=%s source=%s schema=%s batch_size=%d "
               "inflight_batches=%d", outbox_version_str(), r->src->name, r->schema_q,
               r->set.batch_size, r->set.inflight_max);
    pace_t p = {.idle_ms = r->set.poll_min_ms, .rewind_backoff = r->set.backoff_ms,
                .last_report_ms = outbox_mono_ms()};
    rc = 0;
    while (!*r->stop && rc == 0)
        rc = step(r, &p);
    if (rc == 0)
        stop(r);
    else
        rc = 1; /* the producer could not be re-created: nothing is left in flight */
    metrics_stop(r);
out:
    r->src->close(r);
    pthread_mutex_destroy(&r->metrics.lock);
    free(r->inflight);
    r->inflight = NULL;
    return rc;
}
