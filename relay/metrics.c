/*
 * Metrics and health over HTTP (libmicrohttpd, its own thread): Prometheus text on /metrics,
 * liveness on /healthz, readiness on /readyz.  The drain loop writes the figures with atomics;
 * the HTTP thread only reads them, so a scrape never touches PostgreSQL or the producer.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "relay.h"

static const double buckets[METRICS_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

void metrics_observe_batch(relay_metrics_t *m, double seconds) {
    for (int i = 0; i < METRICS_BUCKETS; i++)
        if (seconds <= buckets[i])
            atomic_fetch_add(&m->batch_buckets[i], 1);
    atomic_fetch_add(&m->batch_count, 1);
    atomic_fetch_add(&m->batch_sum_us, (int64_t)(seconds * 1e6));
}

void metrics_delivery_error(relay_metrics_t *m, int err) {
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->err_cnt && m->errs[i].code != err)
        i++;
    if (i == m->err_cnt && i < METRICS_ERR_CODES) {
        m->errs[i].code = err;
        m->errs[i].count = 0;
        m->err_cnt++;
    }
    if (i < METRICS_ERR_CODES)
        m->errs[i].count++;
    pthread_mutex_unlock(&m->lock);
}

typedef struct {
    char *buf;
    size_t len, cap;
    bool failed; /* a put did not fit and could not grow the buffer: the text is incomplete */
} sbuf_t;

static void put(sbuf_t *b, const char *fmt, ...) OUTBOX_PRINTF(2, 3);
static void put(sbuf_t *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n) * 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->failed = true;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
}

/* One metric with one sample: shown as an integer, or divided by div with three decimals. */
typedef struct {
    const char *name, *type, *help;
    long long v;
    double div; /* 0: an integer */
} metric_t;

#define LL(x) ((long long)atomic_load(&(x)))

static void put_metric(sbuf_t *b, const metric_t *t) {
    put(b, "# HELP %s %s\n# TYPE %s %s\n", t->name, t->help, t->name, t->type);
    if (t->div)
        put(b, "%s %.3f\n", t->name, (double)t->v / t->div);
    else
        put(b, "%s %lld\n", t->name, t->v);
}

static void render(relay_t *r, sbuf_t *b) {
    relay_metrics_t *m = &r->metrics;
    const metric_t all[] = {
        {"outbox_relay_published_total", "counter", "Messages acknowledged by the broker.", LL(m->published), 0},
        {"outbox_relay_dead_letters_total", "counter", "Messages moved to dead_letters.", LL(m->dead_lettered), 0},
        {"outbox_relay_parked_keys", "gauge", "Partition keys parked by a message that failed permanently.",
         LL(m->parked_keys), 0},
        {"outbox_relay_parked_messages", "gauge", "Messages held behind parked keys (parked_messages).",
         LL(m->parked_messages), 0},
        {"outbox_relay_parked_oldest_age_seconds", "gauge", "Since when the oldest parked key is parked.",
         LL(m->parked_oldest_s), 0},
        {"outbox_relay_parked_overtaken_total", "counter", "Messages of a key acknowledged after an earlier one of "
         "the key failed at the broker and parked it (they were already in flight).", LL(m->parked_overtaken), 0},
        {"outbox_backlog_messages", "gauge", "Rows waiting in the outbox (exact below 10000, else the id range).",
         LL(m->backlog), 0},
        {"outbox_oldest_message_age_seconds", "gauge", "Age of the oldest row in the outbox.", LL(m->oldest_age_ms),
         1000},
    };
    const metric_t wal[] = {
        {"outbox_relay_wal_lag_bytes", "gauge", "WAL between the server's current position and the slot's "
         "confirmed one.", LL(m->wal_lag_bytes), 0},
        {"outbox_relay_wal_retained_bytes", "gauge", "WAL the slot keeps the server from removing.",
         LL(m->wal_retained_bytes), 0},
        {"outbox_relay_wal_confirmed_lsn", "gauge", "The slot's confirmed position (everything before it is "
         "published).", LL(m->wal_confirmed_lsn), 0},
        {"outbox_relay_wal_last_commit_timestamp_seconds", "gauge", "Commit time of the last transaction read "
         "from the stream.", LL(m->wal_last_commit_ms), 1000},
        {"outbox_relay_wal_slot_broken", "gauge", "1 while the slot is missing or lost: nothing is published.",
         LL(m->wal_broken), 0},
    };
    const metric_t session[] = {
        {"outbox_relay_is_leader", "gauge", "1 while this relay holds the leadership lock.", LL(m->is_leader), 0},
        {"outbox_relay_pg_reconnects_total", "counter", "Connections to PostgreSQL made after the first.",
         LL(m->pg_reconnects), 0},
        {"outbox_relay_floor_held_seconds", "gauge", "How long open transactions that wrote to the outbox "
         "have held the claim floor (0: it rises freely).", LL(m->floor_held_ms), 1000},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        put_metric(b, &all[i]);
    for (size_t i = 0; atomic_load(&m->wal_mode) && i < sizeof(wal) / sizeof(wal[0]); i++)
        put_metric(b, &wal[i]);
    for (size_t i = 0; i < sizeof(session) / sizeof(session[0]); i++)
        put_metric(b, &session[i]);
    put(b, "# HELP outbox_relay_batch_duration_seconds From claiming a batch to deleting its acknowledged rows.\n"
           "# TYPE outbox_relay_batch_duration_seconds histogram\n");
    for (int i = 0; i < METRICS_BUCKETS; i++)
        put(b, "outbox_relay_batch_duration_seconds_bucket{le=\"%g\"} %lld\n", buckets[i],
            (long long)atomic_load(&m->batch_buckets[i]));
    long long count = (long long)atomic_load(&m->batch_count);
    put(b, "outbox_relay_batch_duration_seconds_bucket{le=\"+Inf\"} %lld\n", count);
    put(b, "outbox_relay_batch_duration_seconds_sum %.6f\noutbox_relay_batch_duration_seconds_count %lld\n",
        (double)atomic_load(&m->batch_sum_us) / 1e6, count);
    put(b, "# HELP outbox_relay_delivery_errors_total Failed deliveries by librdkafka error code.\n"
           "# TYPE outbox_relay_delivery_errors_total counter\n");
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->err_cnt; i++)
        put(b, "outbox_relay_delivery_errors_total{code=\"%s\"} %lld\n",
            rd_kafka_err2name((rd_kafka_resp_err_t)m->errs[i].code), (long long)m->errs[i].count);
    pthread_mutex_unlock(&m->lock);
}

/* Sent instead of a body that could not be built: static, so it needs no memory of its own. */
static const char oom_text[] = "out of memory\n";

/* Queues a response.  body: malloc'd, taken over; NULL (out of memory) answers 500 with oom_text.
 * MHD_NO, which makes MHD close the connection, only if not even that response can be made. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type, char *body,
                             size_t len) {
    struct MHD_Response *resp = NULL;
    if (body && !(resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)))
        free(body); /* MHD frees it only once the response exists */
    if (!resp) {
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        type = "text/plain";
        resp = MHD_create_response_from_buffer(sizeof(oom_text) - 1, (void *)oom_text, MHD_RESPMEM_PERSISTENT);
        if (!resp)
            return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* A fixed text: static, nothing to allocate or free. */
static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), (void *)text,
                                                                MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/plain");
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **ctx) {
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)ctx;
    relay_t *r = cls;
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return reply_text(conn, 405, "method not allowed\n");
    if (!strcmp(url, "/metrics")) {
        sbuf_t b = {malloc(4096), 0, 4096, false};
        if (b.buf)
            render(r, &b);
        if (b.buf && b.failed) { /* a truncated scrape would read as real, missing figures */
            free(b.buf);
            b.buf = NULL;
        }
        return reply(conn, 200, "text/plain; version=0.0.4", b.buf, b.len);
    }
    if (!strcmp(url, "/healthz"))
        return reply_text(conn, 200, "ok\n");
    if (!strcmp(url, "/readyz")) {
        int pg = atomic_load(&r->metrics.pg_ok), kafka = atomic_load(&r->metrics.kafka_ok);
        int leader = atomic_load(&r->metrics.is_leader), slot_ok = !atomic_load(&r->metrics.wal_broken);
        char *body = malloc(160);
        int n = 0;
        bool ready = pg && kafka && slot_ok;
        if (body)
            n = snprintf(body, 160, "%s postgresql=%s kafka=%s role=%s%s\n", ready ? "ready" : "not ready",
                         pg ? "up" : "down", kafka ? "up" : "down", leader ? "leader" : "standby",
                         slot_ok ? "" : " slot=broken (see the log)");
        return reply(conn, ready ? 200 : 503, "text/plain", body, (size_t)n);
    }
    return reply_text(conn, 404, "not found: try /metrics, /healthz, /readyz\n");
}

int metrics_start(relay_t *r, char *err, size_t err_size) {
    const char *listen = outbox_conf_str(r->conf, "metrics.listen");
    if (!*listen)
        return 0;
    char host[64];
    const char *colon = strrchr(listen, ':');
    long port = colon ? strtol(colon + 1, NULL, 10) : 0;
    size_t hl = colon ? (size_t)(colon - listen) : 0;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    if (!colon || hl >= sizeof(host) || port < 1 || port > 65535) {
        outbox_snprintf(err, err_size, "metrics.listen=\"%s\" is not host:port (e.g. 127.0.0.1:9187)", listen);
        return -1;
    }
    memcpy(host, listen, hl);
    host[hl] = '\0';
    if (!*host || !strcmp(host, "*"))
        strcpy(host, "0.0.0.0");
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        outbox_snprintf(err, err_size, "metrics.listen=\"%s\": \"%s\" is not an IPv4 address", listen, host);
        return -1;
    }
    sa.sin_port = htons((uint16_t)port);
    r->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL, on_request, r,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)10, MHD_OPTION_END);
    if (!r->mhd) {
        outbox_snprintf(err, err_size, "metrics.listen=\"%s\": cannot listen there (in use, or not an "
                        "address of this machine)", listen);
        return -1;
    }
    outbox_log(r->conf, 6, "METRICS", "msg=\"serving metrics\" listen=%s", listen);
    return 0;
}

void metrics_stop(relay_t *r) {
    if (r->mhd)
        MHD_stop_daemon(r->mhd);
    r->mhd = NULL;
}
