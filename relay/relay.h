/*
 * relay.h: outbox-relay's state and the entry points its files share.  The drain is a pipeline
 * of stages, one file each:
 *
 *   source (claim.c: the outbox table)  ->  produce.c (librdkafka)  ->  settle (settle.c: delete)
 *
 * drain.c only moves batches between them through relay_source_t, so a second source (the WAL
 * stream) plugs in without touching produce or settle.  pgsession.c holds the PostgreSQL session
 * and its leadership lock, floor.c the claim floor, idranges.c the id arithmetic, batch.c a
 * batch's life.  Everything runs on the main thread unless a comment says otherwise.
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

#include "idranges.h"
#include "outbox_int.h"

#define RELAY_FAC "RELAY"

/* ---- settings: read once at start (settings_read in drain.c) ------------------------------ */

typedef struct {
    int batch_size, inflight_max;
    int64_t poll_min_ms, poll_max_ms, poll_active_ms;
    int64_t backoff_ms, backoff_max_ms;   /* relay.reconnect.backoff[.max].ms */
    int64_t lock_retry_ms, statement_timeout_ms, shutdown_timeout_ms;
    int64_t floor_warn_ms;                /* relay.floor.warn.ms */
    long long reindex_min_bytes;
    int64_t reindex_check_ms;
    bool debug;                           /* log.level 7: one line per delivered row too */
    bool record_created;                  /* relay.record.timestamp = created */
    bool park_key;                        /* relay.poison.policy = park-key */
    bool cloudevents;                     /* relay.format = cloudevents */
    char ce_source[512];                  /* relay.cloudevents.source, or its default */
    outbox_ce_time_cache_t ce_time;       /* ce_time's last second, formatted */
} relay_settings_t;

/* ---- batches (batch.c) ---------------------------------------------------------------------- */

/* Row states inside a batch.  ROW_HELD: its partition key is parked (park.c); the row moves to
 * parked_messages when its batch settles. */
enum { ROW_PENDING = 0, ROW_ACKED, ROW_DEAD, ROW_RETRY, ROW_HELD };

typedef struct relay_s relay_t;
typedef struct batch_s batch_t;

/* One message as the source hands it to the producer: borrowed, valid while its batch lives. */
typedef struct {
    const char *dest;                     /* topic, NUL-terminated */
    const void *key;                      /* NULL: no partition key */
    size_t key_len;
    const void *value;                    /* the encoded Envelope */
    size_t value_len;
    const uint8_t *uuid;                  /* the message id, 16 bytes */
    const char *type;
    size_t type_len;
    int64_t timestamp_ms;                 /* the record's CreateTime; 0: when produced */
} relay_row_t;

/* Handed to each produced message as its opaque. */
typedef struct {
    batch_t *batch;
    int row;
} slot_t;

/* One batch of messages in source order.  The source's storage (owner) holds every byte the
 * producer points into, so it is freed only when the last delivery report has arrived. */
struct batch_s {
    int n;
    int pending;          /* rows produced whose delivery report has not arrived */
    int64_t *ids;         /* the source's position of each row (table: the outbox id), ascending */
    relay_row_t *rows;
    uint8_t *state;
    char **error;         /* for ROW_DEAD and failed ROW_HELD rows: why (owned; NULL if out of memory) */
    slot_t *slots;
    void *owner;          /* the source's storage, freed with owner_free */
    void (*owner_free)(void *owner);
    int64_t claimed_ms;
    bool settling;        /* its settle statement is in flight */
};

/* A batch of n rows, every array allocated, joined to the in-flight list; NULL when out of
 * memory or the list is full.  The source fills ids and rows.  Takes ownership of owner on
 * success (owner_free frees it with the batch); on failure the caller still owns it. */
batch_t *batch_new(relay_t *r, int n, void *owner, void (*owner_free)(void *owner));
/* A settled (or abandoned) batch leaves the in-flight list and is freed. */
void batch_retire(relay_t *r, batch_t *b);
/* Frees every batch in flight (the producer no longer points into them). */
void batch_retire_all(relay_t *r);
/* Delivery reports still outstanding, over every batch in flight. */
int batch_outstanding(const relay_t *r);
/* The ids of the nb batches bs (only the acknowledged ones if acked_only), ascending, and their
 * count in *n; NULL when out of memory.  Caller frees. */
int64_t *batch_sorted_ids(batch_t *const *bs, int nb, bool acked_only, size_t *n);

/* ---- the source seam ----------------------------------------------------------------------- */

/* A source of ordered messages that later learns which of them were acknowledged.  Each
 * function runs on the main thread; r->src_state is the source's own. */
typedef struct {
    const char *name;
    /* Builds its statements; nothing is connected yet. */
    void (*open)(relay_t *r);
    /* Connects, takes the leadership and reads input that arrived meanwhile; false while it
     * cannot deliver (it waited its backoff then). */
    bool (*ready)(relay_t *r);
    /* Appends the next batch to the in-flight list: 1 with *out set, 0 when nothing waits,
     * -1 on failure (logged). */
    int (*next)(relay_t *r, batch_t **out);
    /* Called every few hundred rows while a batch is produced: read input meanwhile. */
    void (*pump)(relay_t *r);
    /* Records what was acknowledged (table: delete the rows; WAL: confirm a position) for every
     * batch whose reports have all arrived, and retires them.  wait: until nothing acknowledged
     * is left unrecorded, or it fails. */
    void (*settle)(relay_t *r, bool wait);
    /* The producer is gone with rows unacknowledged: deliver again from the oldest. */
    void (*rewind)(relay_t *r);
    /* Every second or so: figures for metrics and housekeeping. */
    void (*sample)(relay_t *r);
    /* How many messages are left to publish (table: rows, approximate above 10,000); -1 when it
     * cannot be told. */
    int64_t (*left)(relay_t *r);
    /* Releases every session and buffer. */
    void (*close)(relay_t *r);
    /* Optional: waits up to ms for input, serving delivery reports meanwhile (NULL: sleep). */
    void (*wait)(relay_t *r, int64_t ms);
} relay_source_t;

extern const relay_source_t relay_table_source; /* claim.c */
extern const relay_source_t relay_wal_source;   /* walsource.c */

/* ---- state by concern ----------------------------------------------------------------------- */

#define METRICS_BUCKETS 11
#define METRICS_ERR_CODES 32

/* Figures the drain loop writes and the metrics thread reads. */
typedef struct {
    _Atomic int64_t published, dead_lettered, pg_reconnects, backlog, oldest_age_ms;
    _Atomic int64_t floor_held_ms;   /* how long outbox writers have held the claim floor */
    _Atomic int64_t parked_keys, parked_messages, parked_oldest_s, parked_overtaken;
    _Atomic int64_t batch_buckets[METRICS_BUCKETS], batch_count, batch_sum_us;
    _Atomic int is_leader, pg_ok, kafka_ok;
    _Atomic int wal_mode, wal_broken;   /* wal_broken: the slot is missing or lost (not ready) */
    _Atomic int64_t wal_lag_bytes, wal_retained_bytes, wal_confirmed_lsn, wal_last_commit_ms;
    pthread_mutex_t lock; /* guards errs */
    struct {
        int code;
        int64_t count;
    } errs[METRICS_ERR_CODES];
    int err_cnt;
} relay_metrics_t;

/* pgsession.c: the session that holds the leadership lock and claims. */
typedef struct {
    PGconn *pg;
    bool leader;
    int standby_waits;       /* lock attempts lost, for occasional logging */
    int connections;         /* successful connects; all but the first are reconnects */
    int64_t backoff_ms;      /* the next reconnect's wait */
    int64_t down_since_ms;   /* 0, or since when connecting fails */
    int64_t next_remind_ms;  /* no "still cannot connect" before then */
    outbox_pg_limits_t stmt_lim;
} relay_session_t;

/* floor.c: claims start at floor (see floor.c for why that is safe). */
typedef struct {
    int64_t floor;
    int64_t cand;            /* the id floor may rise past once vxids have all ended */
    char *vxids;             /* outbox writers running when cand was seen; NULL: none */
    bool settled;            /* vxids have all ended */
    int64_t next_ms;         /* no floor queries before then */
    int64_t listed_ms;       /* when vxids were listed */
    int64_t next_warn_ms;    /* no warning about who holds the floor before then */
    uint64_t gen;            /* counts floor resets: a claim sent before one is stale */
    idr_set_t done;          /* ids from the floor up already settled: claims skip them */
    char table[160];         /* the outbox table, as SQL text for regclass */
    int64_t next_save_ms;    /* no claim_state save before then */
    int64_t saved_floor, saved_hi; /* what the last save wrote (floor, highest done id) */
    size_t saved_n;
    char sql_save[512], sql_load[640];
} relay_floor_t;

/* claim.c: what one claim covers: every id from the floor that is neither in flight nor
 * settled. */
typedef struct {
    int64_t top;             /* from here up, every id */
    uint64_t gen;            /* floor.gen then: a claim made before a floor reset is stale */
    bool floor_ok;           /* floor.settled then: whether it may raise the floor */
} claim_plan_t;

/* claim.c: the claim sent ahead, so PostgreSQL looks up the next batch while the relay
 * produces the current one. */
typedef struct {
    bool sent;               /* its result is still to be read */
    PGresult *res;           /* its result, read but not yet made a batch */
    claim_plan_t ahead;      /* what it covers */
    int64_t next_sample_ms;  /* when to sample the backlog again */
    char sql[1024], sql_sample[512], sql_count[256];
} relay_claim_t;

/* settle.c: a second session deletes acknowledged rows while the first claims. */
typedef struct {
    PGconn *pg;
    bool busy;               /* a DELETE is in flight */
    int64_t sent_ms;         /* when it was sent: past its deadline the session is given up */
    int64_t retry_ms;        /* no reconnect before then */
    int64_t backoff_ms;      /* the last reconnect's wait; 0 after a success */
    bool clean;              /* a batch settled with every row acknowledged: failures are over */
    char sql_delete[384], sql_dead[2560];
} relay_settle_t;

/* reindex.c: the session rebuilding the outbox's index (NULL: none). */
typedef struct {
    PGconn *pg;
    long long before;
    int64_t next_ms;
    bool off;                /* given up: not the owner, or a failed rebuild left debris */
} relay_reindex_t;

/* produce.c: the producer and the broker probe. */
typedef struct {
    rd_kafka_t *rk;
    bool fatal;              /* a fatal error: re-create the producer */
    bool offsets_expected;   /* acks != 0: every acknowledgement carries the record's offset */
    int64_t last_delivery_ms;
    int64_t next_probe_ms;
    pthread_t probe;         /* asks the broker for metadata off the main thread */
    bool probing;
    atomic_int probe_done, probe_ok;
    int64_t waiting_since_ms;  /* when reports became outstanding after none were */
    bool silent;               /* the broker has not acknowledged anything for long */
    int64_t next_remind_ms;    /* no reminder of the silence before then */
    int64_t retries;           /* rows to re-send since the last summary */
    const char *retry_err;     /* the first one's error */
    struct {
        int code;
        int64_t logged_ms;
    } errs[8];                 /* librdkafka errors logged lately: the same one is not repeated */
} relay_producer_t;

/* park.c: one parked partition key. */
typedef struct {
    uint8_t *key;
    size_t key_len;
    uint64_t hash;
    int64_t first_id;        /* the row whose failure parked it */
    char *dest, *error;
} park_entry_t;

/* park.c: the parked keys, as the leader knows them: every row of one is held, not produced. */
typedef struct {
    park_entry_t *e;         /* dense, n of them */
    int n, cap;
    int *slot;               /* open-addressing index into e (-1: empty), nslot a power of 2 */
    int nslot;
    bool reload;             /* read parked_keys again once nothing is in flight */
    bool release;            /* an operator's request waits for the same */
    int64_t next_poll_ms;
    char sql_load[256], sql_poll[512], sql_release[2560];
} relay_park_t;

/* walsource.c: the logical replication stream of the WAL source. */
typedef struct {
    PGconn *repl;            /* the replication connection, streaming; NULL: none */
    char slot[OUTBOX_WAL_NAME_SIZE], publication[OUTBOX_WAL_NAME_SIZE], prefix[OUTBOX_WAL_NAME_SIZE];
    size_t prefix_len;
    struct wbuild_s *build;  /* the batch being read from the stream (wal.h): owned, freed by wbuild_free */
    bool in_txn;             /* between a Begin and its Commit */
    int64_t seq;             /* the position given to the next message read */
    uint64_t confirmed;      /* the end of what Kafka acknowledged entirely (flushed) */
    uint64_t reported;       /* what the last status update carried */
    int64_t next_status_ms;
    bool status_asked;       /* the server asked for a status update */
    bool restart;            /* a message is to be sent again: restart from the slot */
    bool table_phase;        /* rows left in the table (table mode, retried dead letters) first */
    bool warned_untx;        /* a non-transactional message with the prefix was logged */
    int64_t next_table_ms, next_sample_ms, next_broken_log_ms;
    int64_t settle_retry_ms;  /* a failed store of dead or held rows is tried again from then */
    bool park_denied;         /* no USAGE on the identity: held rows are dead-lettered (walpark.c) */
    int64_t backoff_ms;      /* before the next attempt to start the stream */
    char system_id[32];      /* the server's, from IDENTIFY_SYSTEM when the stream started */
    char sql_dead[1024], sql_slot[512], sql_rows[256], sql_held[256];
} relay_wal_t;

/* walbuild.c: a batch's storage: every byte its rows point to, and where it ends.  Owned by its
 * batch, freed with it (owner_free in walbuild.c). */
typedef struct {
    char *arena;             /* destinations, keys, envelopes, types, errors */
    uint8_t *uuids;          /* 16 bytes a row */
    uint64_t *lsn;           /* each row's message LSN (dead letters are recorded under -lsn) */
    uint64_t confirm;        /* the end of the last transaction this batch completes; 0: none */
    bool dead_stored;        /* its dead letters are recorded (walsource.c's wal_settle) */
} wal_owner_t;

struct relay_s {
    outbox_conf_t *conf;
    relay_settings_t set;
    const char *schema;
    char *schema_q;
    const char *conninfo;
    volatile sig_atomic_t *stop;  /* > 0: SIGTERM/SIGINT received */
    atomic_int *interrupts;       /* SIGINT count: 2 = exit at once */
    const relay_source_t *src;
    relay_session_t session;
    relay_floor_t floor;
    relay_claim_t claim;
    relay_settle_t settle;
    relay_reindex_t reindex;
    relay_producer_t prod;
    relay_park_t park;
    relay_wal_t wal;
    batch_t **inflight;
    int inflight_cnt;
    bool rewind;                  /* a row failed transiently: drain, then deliver from the oldest */
    int64_t published, dead_lettered;
    relay_metrics_t metrics;
    struct MHD_Daemon *mhd;
};

/* ---- pgsession.c ------------------------------------------------------------------------------ */

/* Sets the session's limits and backoff from r->set. */
void session_init(relay_t *r);
/* Connects with the relay's session settings within pg.timeout.ms; NULL and a logged error on
 * failure.  Works before settings_read too (admin verbs). */
PGconn *relay_connect(relay_t *r);
/* The same, without logging: NULL with the reason in err. */
PGconn *relay_connect_quiet(relay_t *r, char *err, size_t err_size);
/* What to do about a failed setup statement of this SQLSTATE (may be NULL), into out; "" when
 * there is nothing to add. */
const char *relay_setup_hint(const relay_t *r, const char *sqlstate, char *out, size_t size);
/* The advisory lock key of this schema's leadership, as SQL text for hashtextextended(). */
void relay_lock_name(const relay_t *r, char *out, size_t size);
/* Whether the leader session is gone. */
bool session_lost(const relay_t *r);
/* Connects (with backoff), prepares the statements and takes the leadership lock; true when
 * leader.  prepare: the source's statements, NULL-terminated name/SQL pairs. */
bool session_ensure_leader(relay_t *r, const char *const *prepare);
/* Closes the session, saying why; the claim sent ahead goes with it. */
void session_drop(relay_t *r, const char *why);
/* Runs a prepared statement on the session within its deadline.  The result if its status is
 * expect; else NULL, the failure logged as "<what> failed" and the session dropped when it is
 * lost or silent. */
PGresult *session_exec(relay_t *r, const char *stmt, int nparams, const char *const *params,
                       int result_format, ExecStatusType expect, const char *what);
/* Reads the result of a query sent on the session (same rules as session_exec). */
PGresult *session_result(relay_t *r, ExecStatusType expect, const char *what);
/* Sleeps ms, serving delivery reports meanwhile, and returns early on a stop request. */
void relay_sleep(relay_t *r, int64_t ms);
/* The next wait of a capped doubling backoff. */
int64_t backoff_next(int64_t cur, int64_t max);

/* ---- floor.c ---------------------------------------------------------------------------------- */

/* The floor's statements, as name/SQL pairs for session_ensure_leader. */
extern const char *const floor_statements[];
void floor_reset(relay_t *r);
void floor_build_sql(relay_t *r);
/* A new leadership: claims start where the last leader's could (claim_state), when it is sound. */
void floor_load(relay_t *r);
/* Every second or so (now: at once), when it changed: saves where claims could start for the
 * next leader. */
void floor_save(relay_t *r, bool now);
void floor_check(relay_t *r);
void floor_advance(relay_t *r, const batch_t *b, int got, bool settled);
/* b settled with every row gone from the table: claims need not look at its ids again. */
void floor_settled_batch(relay_t *r, const batch_t *b);
void floor_free(relay_t *r);

/* ---- park.c ----------------------------------------------------------------------------------- */

void park_build_sql(relay_t *r);
/* The release statement of an operator's request on one key ($1: the key in hex), for the
 * leader and for the parked verbs when no relay leads; schema_q is the quoted schema. */
void park_release_sql(const char *schema_q, char *out, size_t size);
/* The parked entry of this key, or NULL (fast when nothing is parked). */
const park_entry_t *park_find(const relay_t *r, const void *key, size_t key_len);
/* Parks key because row id failed (why); false when out of memory. */
bool park_add(relay_t *r, const void *key, size_t key_len, int64_t id, const char *dest, const char *why);
/* A new leadership: the parked keys are read again before the next claim. */
void park_leader(relay_t *r);
/* Before each claim: polls parked_keys every second for requests and figures; reloads it or
 * carries out requests once nothing is in flight.  false: do not claim now.  _pending: polls only;
 * whether a reload or a request waits. */
bool park_before_claim(relay_t *r);
bool park_pending(relay_t *r);
void park_free(relay_t *r);
/* key as lowercase hex, as encode(..., 'hex') writes it, cut to fit size (NUL included); the
 * digits written. */
size_t park_hex(const void *key, size_t len, char *out, size_t size);
/* Hex digits (as encode(..., 'hex') writes them, or upper case) into out (size bytes): the
 * length, or -1. */
ssize_t park_unhex(const char *hex, uint8_t *out, size_t size);
/* Whether key is text an operator can type: printable UTF-8 without control characters. */
bool park_key_is_text(const void *key, size_t len);

/* ---- cloudevents.c: relay.format = cloudevents ----------------------------------------------- */

/* The record for row i of b in binary-mode CloudEvents: its headers (caller owns) and its value,
 * pointing into the row.  NULL when the row cannot be one (the reason in dead: a permanent
 * failure) or out of memory (dead empty). */
rd_kafka_headers_t *ce_row_headers(relay_t *r, batch_t *b, int i, const void **value, size_t *value_len,
                                   char *dead, size_t dead_size);

/* ---- produce.c -------------------------------------------------------------------------------- */

/* A new producer in r->prod.rk; -1 with the reason in err. */
int producer_start(relay_t *r, char *err, size_t err_size);
/* Produces the rows of b, the batch just taken from the source, in order. */
void produce_batch(relay_t *r, batch_t *b);
/* Serves delivery reports and logs for up to ms. */
void producer_poll(relay_t *r, int ms);
/* Waits (while stop allows) for outstanding reports up to wait_ms, settles what was acked,
 * purges the rest and destroys the producer; every batch is freed.  Returns how many messages
 * were left unacknowledged (they stay in the source). */
int64_t producer_close(relay_t *r, int64_t wait_ms);
/* Logs, once, how many rows failed transiently since the last summary. */
void producer_retry_summary(relay_t *r);
/* Whether the broker answers: from delivery reports, else a metadata probe off the loop. */
void producer_probe(relay_t *r);

/* ---- settle.c --------------------------------------------------------------------------------- */

void settle_build_sql(relay_t *r);
void settle_table(relay_t *r, bool wait);
void settle_close(relay_t *r);

/* ---- walsetup.c --------------------------------------------------------------------------- */

/* migrate's part in outbox.mode=wal: checks wal_level, the slots, senders and the REPLICATION
 * attribute, then creates the publication and slot if missing.  0, or 1 with each problem printed. */
int wal_migrate(relay_t *r, PGconn *pg);
/* status's lines (or JSON members, each led by a comma) about the slot, in outbox.mode=wal. */
void wal_status_print(relay_t *r, PGconn *pg, bool json);
/* The slot-recreate verb: replaces a lost (or missing) slot, saying which positions were lost. */
int relay_slot_recreate(relay_t *r, int argc, const char **argv);

/* ---- reindex.c -------------------------------------------------------------------------------- */

/* Once the leader has drained the table (drained), rebuilds the outbox's primary-key index if it
 * outgrew relay.reindex.min.bytes, on a session of its own; called every loop, it also collects
 * the rebuild's result.  _stop leaves a running rebuild to the server. */
void relay_reindex_poll(relay_t *r, PGconn *leader, bool drained);
void relay_reindex_stop(relay_t *r);

/* ---- drain.c, metrics.c, admin.c, conffile.c ---------------------------------------------- */

int relay_run(relay_t *r);

/* metrics.c: serve metrics.listen (no-op when empty); 0, or -1 with the reason in err. */
int metrics_start(relay_t *r, char *err, size_t err_size);
void metrics_stop(relay_t *r);
void metrics_observe_batch(relay_metrics_t *m, double seconds);
void metrics_delivery_error(relay_metrics_t *m, int err);
int relay_status(relay_t *r, int argc, const char **argv);
int relay_dead_letters(relay_t *r, int argc, const char **argv);
int relay_consumer_dead_letters(relay_t *r, int argc, const char **argv);
/* consumerparked.c: the consumer-parked verbs. */
int relay_consumer_parked(relay_t *r, int argc, const char **argv);
int relay_grants(relay_t *r, int argc, const char **argv);
/* parked.c: the parked verbs (list, retry, drop). */
int relay_parked(relay_t *r, int argc, const char **argv);
/* The parked keys, oldest first (see parked.c for the columns). */
PGresult *parked_query(const relay_t *r, PGconn *pg);
/* Prints them as a JSON array, as a table, or as status's parked_key lines. */
void parked_print(PGresult *res, bool json, bool status_lines);
/* admin.c: writes s to stdout as a JSON string (quoted, escaped). */
void admin_json_str(const char *s);
int relay_migrate(relay_t *r);

/* conffile.c: applies one "key=value" (kv is modified) to conf; 0, or -1 with the reason, prefixed
 * by where, on errfp (NULL: silent). */
int relay_conf_apply(outbox_conf_t *conf, char *kv, const char *where, FILE *errfp);
/* Applies every line of fp ('#' starts a comment; blank lines are skipped) up to the first bad one;
 * path names the file in messages.  0, or -1 after reporting on errfp (NULL: silent). */
int relay_conf_read(outbox_conf_t *conf, FILE *fp, const char *path, FILE *errfp);

#endif
