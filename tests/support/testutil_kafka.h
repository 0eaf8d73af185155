/*
 * Helpers for suites that run programs beside the test: the mock Kafka broker and outbox-relay as
 * child processes, a librdkafka consumer that reads whole topics back, and bounded waits on SQL.
 */
#ifndef OUTBOX_TESTUTIL_KAFKA_H
#define OUTBOX_TESTUTIL_KAFKA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* Milliseconds of a monotonic clock. */
int64_t tk_now_ms(void);
void tk_sleep_ms(int ms);
/* "$OUTBOX_BUILD_DIR/name" (default build dir "build").  Caller frees. */
char *tk_build_path(const char *name);
/* A fresh path "$OUTBOX_TEST_DIR/<pid>.<seq>.<suffix>" for a log or config file.  Caller frees. */
char *tk_scratch_path(const char *suffix);
/* The whole contents of a file, NUL-terminated ("" if it cannot be read).  Caller frees. */
char *tk_read_file(const char *path);
/* The last max_bytes of a file, for failure messages.  Static buffer: valid until the next call. */
const char *tk_file_tail(const char *path, size_t max_bytes);

/* ---- child processes ---------------------------------------------------------------------- */

/* A child process.  Children die with the test process (PR_SET_PDEATHSIG), so a failed or timed
 * out test never leaves a broker or relay running. */
typedef struct {
    pid_t pid;      /* 0 once reaped */
    int status;     /* waitpid() status, valid once reaped */
    char *out_path; /* file receiving stdout (NULL when stdout is a pipe) */
    char *err_path; /* file receiving stderr */
} tk_proc_t;

/* Starts argv[0] with stdout and stderr to fresh scratch files named after tag.  argv is
 * NULL-terminated.  Caller owns; free with tk_proc_free(). */
tk_proc_t *tk_proc_start(const char *tag, const char *const *argv);
/* Sends sig to a running child (no-op once reaped). */
void tk_proc_signal(tk_proc_t *p, int sig);
/* Waits up to timeout_ms for the child to exit; 1 if it has (status in p->status), else 0. */
int tk_proc_wait(tk_proc_t *p, int timeout_ms);
/* 1 while the child has not exited (reaps it if it has). */
int tk_proc_running(tk_proc_t *p);
/* SIGKILLs (if still running), reaps and frees.  NULL is a no-op. */
void tk_proc_free(tk_proc_t *p);
/* Runs argv to completion within timeout_ms (SIGKILLed after that) and returns the child with
 * p->status set; its stdout and stderr are in p->out_path and p->err_path.  Caller frees. */
tk_proc_t *tk_proc_run(const char *tag, const char *const *argv, int timeout_ms, int *timed_out);
/* Describes a waitpid() status, e.g. "exit 2" or "signal 9".  Static buffer. */
const char *tk_status_str(int status);

/* ---- the mock broker ---------------------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int to_fd;          /* its stdin */
    int from_fd;        /* its stdout */
    char rbuf[4096];    /* bytes read from its stdout, not yet consumed as lines */
    size_t rlen;
    char bootstrap[1024];
    char *err_path;
} tk_broker_t;

/* Starts build/mock-kafka with the given arguments (NULL-terminated, e.g. "--topic", "t:4") and
 * reads its bootstrap line; fails the test if it does not come within 10 s. */
tk_broker_t *tk_broker_start(const char *const *args);
/* Sends one command line and returns its reply line (static buffer); fails the test unless the
 * reply starts with "ok". */
const char *tk_broker_cmd(tk_broker_t *b, const char *cmd);
/* Asks it to quit, then SIGKILLs it if it does not exit within 5 s; reaps and frees.  NULL ok. */
void tk_broker_stop(tk_broker_t *b);

/* ---- reading topics back ------------------------------------------------------------------ */

typedef struct {
    char *name;
    char *value; /* NUL-terminated copy; value_len excludes the NUL */
    size_t value_len;
} tk_header_t;

typedef struct {
    int32_t partition;
    int64_t offset;
    void *key; /* NULL when the record has no key */
    size_t key_len;
    void *value;
    size_t value_len;
    tk_header_t *headers;
    size_t n_headers;
    int64_t timestamp_ms; /* the record's timestamp (the producer's create time), -1 if none */
} tk_record_t;

/* A consumer assigned to every partition of one topic from the beginning.  Not a group member:
 * it commits nothing, so any number of them can read the same topic. */
typedef struct tk_consumer_s tk_consumer_t;

/* Creates the consumer; fails the test if the topic's metadata cannot be read within 15 s. */
tk_consumer_t *tk_consumer_new(const char *bootstrap, const char *topic);
/* Reads records until at least want have been read in total or deadline_ms (tk_now_ms() clock)
 * passes; returns the total.  Records accumulate in read order (offset order per partition). */
size_t tk_consumer_poll(tk_consumer_t *c, size_t want, int64_t deadline_ms);
/* Reads until every partition's records up to its high watermark (asked for now) have been read
 * or deadline_ms passes; returns 1 if the end was reached, 0 on timeout. */
int tk_consumer_read_to_end(tk_consumer_t *c, const char *topic, int64_t deadline_ms);
/* The records read so far (borrowed; valid until the next poll or free) and their number. */
const tk_record_t *tk_consumer_records(const tk_consumer_t *c, size_t *n);
int tk_consumer_partitions(const tk_consumer_t *c);
void tk_consumer_free(tk_consumer_t *c);

/* The value of the first header called name, or NULL. */
const char *tk_record_header(const tk_record_t *r, const char *name);

/* ---- SQL ---------------------------------------------------------------------------------- */

/* Runs a one-integer query until it returns target or timeout_ms passes; returns the last value. */
long long tk_wait_scalar(PGconn *conn, const char *sql, long long target, int timeout_ms);

/* ---- sets of message ids ------------------------------------------------------------------ */

/* A sorted set of canonical UUID strings (36 characters). */
typedef struct {
    char (*ids)[37];
    size_t n, cap;
    int sorted;
} tk_idset_t;

void tk_idset_add(tk_idset_t *s, const char *id);
int tk_idset_has(tk_idset_t *s, const char *id);
void tk_idset_clear(tk_idset_t *s);


/* ---- producing directly and reading committed offsets --------------------------------------- */

/* A plain librdkafka producer (acks=all, no batching delay) for writing arbitrary record values,
 * e.g. encoded envelopes or garbage, straight onto a topic. */
typedef struct tk_producer_s tk_producer_t;

/* Creates the producer.  Caller owns; free with tk_producer_free(). */
tk_producer_t *tk_producer_new(const char *bootstrap);
/* Queues one record.  partition -1 lets the partitioner choose by key; key may be NULL; value may
 * be NULL with value_len 0 (a record with an empty value).  id, if not NULL, is sent as the Kafka
 * header "id" (as the relay does).  *offset (may be NULL) receives the record's offset once it is
 * acknowledged, and *partition_out (may be NULL) its partition.  Both must stay valid until
 * tk_producer_flush() returns. */
void tk_produce(tk_producer_t *p, const char *topic, int32_t partition, const void *key, size_t key_len,
                const void *value, size_t value_len, const char *id, int64_t *offset, int32_t *partition_out);
/* Waits up to timeout_ms for every queued record to be acknowledged; fails the test if one was not. */
void tk_producer_flush(tk_producer_t *p, int timeout_ms);
void tk_producer_free(tk_producer_t *p);

/* The offset committed by consumer group `group` for topic/partition (the next offset it will
 * read), or -1 when the group has committed none.  Fails the test if the broker does not answer
 * within 10 s.  Does not join the group. */
int64_t tk_committed_offset(const char *bootstrap, const char *group, const char *topic, int32_t partition);

/* Waits up to timeout_ms until the file at path contains needle; 1 if it does. */
int tk_wait_file_contains(const char *path, const char *needle, int timeout_ms);
/* How many times needle occurs in the file at path (0 if it cannot be read). */
int tk_file_count(const char *path, const char *needle);

#endif
