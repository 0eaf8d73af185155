/*
 * outbox-relay internals shared by its files: the relay state, the drain loop's entry points and
 * the admin verbs.
 */
#ifndef OUTBOX_RELAY_H
#define OUTBOX_RELAY_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>
#include <libpq-fe.h>

#include "outbox_int.h"

/* Row states inside a claimed batch. */
enum { ROW_PENDING = 0, ROW_ACKED, ROW_DEAD, ROW_RETRY };

typedef struct relay_s relay_t;
typedef struct slot_s slot_t;

/* One claimed batch: the PGresult owns every payload the producer points into, so it is freed
 * only when the last delivery report of the batch has arrived. */
typedef struct {
    relay_t *relay;
    PGresult *res;
    int n;
    int pending;     /* rows produced whose delivery report has not arrived */
    int64_t *ids;
    uint8_t *state;
    char **error;    /* for ROW_DEAD rows: why (owned) */
    slot_t *slots;   /* one per row, the opaque of its produced message */
    int64_t claimed_ms;
    bool settling;   /* its DELETE is in flight on the settle session */
} batch_t;

/* Handed to each produced message as its opaque. */
struct slot_s {
    batch_t *batch;
    int row;
};

#define METRICS_BUCKETS 11
#define METRICS_ERR_CODES 32

/* Figures the drain loop writes and the metrics thread reads. */
typedef struct {
    _Atomic int64_t published, dead_lettered, pg_reconnects, backlog, oldest_age_ms;
    _Atomic int64_t batch_buckets[METRICS_BUCKETS], batch_count, batch_sum_us;
    _Atomic int is_leader, pg_ok, kafka_ok;
    pthread_mutex_t lock; /* guards errs */
    struct {
        int code;
        int64_t count;
    } errs[METRICS_ERR_CODES];
    int err_cnt;
} relay_metrics_t;

struct relay_s {
    outbox_conf_t *conf;
    const char *schema;
    char *schema_q;
    char conninfo_safe[64]; /* for logs: never the conninfo itself, which may hold a password */
    const char *conninfo;
    PGconn *pg;
    /* A second session that deletes acknowledged rows while the first claims the next batch:
     * deleting what the broker acknowledged is safe for any relay, leader or not. */
    PGconn *pg_settle;
    bool settle_busy;           /* a DELETE is in flight on pg_settle */
    int64_t settle_retry_ms;    /* no reconnect of pg_settle before then */
    bool leader;
    rd_kafka_t *rk;
    bool fatal;             /* the producer raised a fatal error: re-create it */
    bool rewind;            /* a row failed transiently: drain, then claim from the oldest row */
    bool debug;             /* log.level is 7: one line per delivered row too */
    bool settled_clean;     /* a batch settled with every row acknowledged: failures are over */
    bool offsets_expected;  /* acks != 0: every acknowledgement carries the record's offset */
    batch_t **inflight;
    int inflight_cnt, inflight_max;
    int batch_size;
    int64_t published, dead_lettered;
    int standby_waits;          /* lock attempts lost, for occasional logging */
    int connections;            /* successful connects; all but the first are reconnects */
    volatile sig_atomic_t *stop; /* > 0: SIGTERM/SIGINT received */
    atomic_int *interrupts;      /* SIGINT count: 2 = exit at once */
    char sql_claim[1024], sql_delete[384], sql_dead[1280];
    relay_metrics_t metrics;
    struct MHD_Daemon *mhd;
    int64_t next_sample_ms;     /* when to sample backlog and broker reachability again */
    int64_t last_delivery_ms;   /* last successful delivery report */
    /* Claims start at floor: every id below it is published, in flight or will never be visible
     * (see floor_advance in drain.c), so they need not walk the deleted rows' dead index entries. */
    int64_t floor;
    int64_t floor_cand;         /* the id floor may rise past once floor_vxids have all ended */
    char *floor_vxids;          /* transactions running when floor_cand was seen; NULL: none */
    bool floor_settled;         /* floor_vxids have all ended */
    int64_t floor_next_ms;      /* no floor queries before then */
    uint64_t floor_gen;         /* counts floor resets: a claim sent before one is stale */
    /* A claim sent ahead (claim_send in drain.c): PostgreSQL looks up the next batch while the
     * relay produces the current one. */
    bool claim_sent;            /* its result is still to be read from pg */
    PGresult *claim_res;        /* its result, read but not yet made a batch */
    uint64_t claim_gen;         /* floor_gen when it was sent */
    bool claim_floor_ok;        /* floor_settled when it was sent: whether it may raise the floor */
    /* reindex.c: the session rebuilding the outbox's index (NULL: none), its size before, when
     * to look at it again, and whether rebuilding is given up (not the owner, a failed one). */
    PGconn *pg_reindex;
    long long reindex_before;
    int64_t reindex_next_ms;
    bool reindex_off;
};

/* Connects with the relay's session settings; NULL and a logged error on failure. */
PGconn *relay_connect(relay_t *r);
/* The advisory lock key of this schema's leadership, as SQL text for hashtextextended(). */
void relay_lock_name(const relay_t *r, char *out, size_t size);

int relay_run(relay_t *r);

/* reindex.c: once the leader has drained the table (drained), rebuilds the outbox's primary-key
 * index if it outgrew relay.reindex.min.bytes, on a session of its own; called every loop, it
 * also collects the rebuild's result.  _stop leaves a running rebuild to the server. */
void relay_reindex_poll(relay_t *r, bool drained);
void relay_reindex_stop(relay_t *r);

/* metrics.c: serve metrics.listen (no-op when empty); 0, or -1 with the reason in err. */
int metrics_start(relay_t *r, char *err, size_t err_size);
void metrics_stop(relay_t *r);
void metrics_observe_batch(relay_metrics_t *m, double seconds);
void metrics_delivery_error(relay_metrics_t *m, int err);
int relay_status(relay_t *r, int argc, const char **argv);
int relay_dead_letters(relay_t *r, int argc, const char **argv);
int relay_grants(relay_t *r, int argc, const char **argv);
int relay_migrate(relay_t *r);

/* conffile.c: applies one "key=value" (kv is modified) to conf; 0, or -1 with the reason, prefixed
 * by where, on errfp (NULL: silent). */
int relay_conf_apply(outbox_conf_t *conf, char *kv, const char *where, FILE *errfp);
/* Applies every line of fp ('#' starts a comment; blank lines are skipped) up to the first bad one;
 * path names the file in messages.  0, or -1 after reporting on errfp (NULL: silent). */
int relay_conf_read(outbox_conf_t *conf, FILE *fp, const char *path, FILE *errfp);


#endif
