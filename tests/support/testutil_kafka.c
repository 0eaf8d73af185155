/*
 * Helpers for suites that run the mock broker and outbox-relay as child processes (see
 * testutil_kafka.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "testutil.h"
#include "testutil_kafka.h"

int64_t tk_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tk_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

char *tk_build_path(const char *name) {
    const char *dir = getenv("OUTBOX_BUILD_DIR");
    char *path;
    ck_assert(asprintf(&path, "%s/%s", dir && *dir ? dir : "build", name) > 0);
    return path;
}

char *tk_scratch_path(const char *suffix) {
    static int seq;
    const char *dir = getenv("OUTBOX_TEST_DIR");
    ck_assert_msg(dir && *dir, "OUTBOX_TEST_DIR is not set: run the suites through make check");
    char *path;
    ck_assert(asprintf(&path, "%s/%d.%d.%s", dir, (int)getpid(), ++seq, suffix) > 0);
    return path;
}

char *tk_read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    if (f) {
        size_t r;
        while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
            len += r;
            if (cap - len - 1 == 0) {
                cap *= 2;
                buf = realloc(buf, cap);
                ck_assert_ptr_nonnull(buf);
            }
        }
        fclose(f);
    }
    buf[len] = '\0';
    return buf;
}

const char *tk_file_tail(const char *path, size_t max_bytes) {
    static char tail[8192];
    if (max_bytes >= sizeof(tail))
        max_bytes = sizeof(tail) - 1;
    tail[0] = '\0';
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f)
        return tail;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        long from = size > (long)max_bytes ? size - (long)max_bytes : 0;
        fseek(f, from, SEEK_SET);
        size_t r = fread(tail, 1, max_bytes, f);
        tail[r] = '\0';
    }
    fclose(f);
    return tail;
}

/* ---- child processes ---------------------------------------------------------------------- */

/* In the child after fork(): die with the test process, and keep none of its descriptors (a
 * relay holding a copy of the test's PostgreSQL socket would keep that session alive). */
static void child_prepare(pid_t parent, int in_fd, int out_fd, int err_fd) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127); /* the parent died before prctl took effect */
    if (dup2(in_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
        dup2(err_fd, STDERR_FILENO) < 0)
        _exit(127);
    for (int fd = 3; fd < 4096; fd++)
        close(fd);
    signal(SIGPIPE, SIG_DFL);
}

static int open_out(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ck_assert_msg(fd >= 0, "cannot create %s: %s", path, strerror(errno));
    return fd;
}

tk_proc_t *tk_proc_start(const char *tag, const char *const *argv) {
    struct stat st;
    ck_assert_msg(stat(argv[0], &st) == 0, "%s: %s (not built yet?)", argv[0], strerror(errno));
    tk_proc_t *p = calloc(1, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    char suffix[128];
    snprintf(suffix, sizeof(suffix), "%s.out", tag);
    p->out_path = tk_scratch_path(suffix);
    snprintf(suffix, sizeof(suffix), "%s.err", tag);
    p->err_path = tk_scratch_path(suffix);
    int in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out_fd = open_out(p->out_path), err_fd = open_out(p->err_path);
    ck_assert_int_ge(in_fd, 0);
    fflush(NULL);
    pid_t parent = getpid();
    p->pid = fork();
    ck_assert_msg(p->pid >= 0, "fork: %s", strerror(errno));
    if (p->pid == 0) {
        child_prepare(parent, in_fd, out_fd, err_fd);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(in_fd);
    close(out_fd);
    close(err_fd);
    return p;
}

void tk_proc_signal(tk_proc_t *p, int sig) {
    if (p && p->pid > 0)
        kill(p->pid, sig);
}

static int reap(tk_proc_t *p) {
    if (p->pid <= 0)
        return 1;
    pid_t r = waitpid(p->pid, &p->status, WNOHANG);
    if (r == p->pid) {
        p->pid = 0;
        return 1;
    }
    return 0;
}

int tk_proc_wait(tk_proc_t *p, int timeout_ms) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    while (!reap(p)) {
        if (tk_now_ms() >= deadline)
            return 0;
        tk_sleep_ms(10);
    }
    return 1;
}

int tk_proc_running(tk_proc_t *p) {
    return !reap(p);
}

void tk_proc_free(tk_proc_t *p) {
    if (!p)
        return;
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0); /* SIGKILL cannot be ignored: this returns */
    }
    free(p->out_path);
    free(p->err_path);
    free(p);
}

tk_proc_t *tk_proc_run(const char *tag, const char *const *argv, int timeout_ms, int *timed_out) {
    tk_proc_t *p = tk_proc_start(tag, argv);
    *timed_out = !tk_proc_wait(p, timeout_ms);
    if (*timed_out) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0);
        p->pid = 0;
    }
    return p;
}

const char *tk_status_str(int status) {
    static char buf[64];
    if (WIFEXITED(status))
        snprintf(buf, sizeof(buf), "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, sizeof(buf), "signal %d", WTERMSIG(status));
    else
        snprintf(buf, sizeof(buf), "status 0x%x", status);
    return buf;
}

/* ---- the mock broker ---------------------------------------------------------------------- */

/* Reads one line from the broker's stdout into line (without '\n'); 0 on timeout or EOF. */
static int broker_read_line(tk_broker_t *b, char *line, size_t size, int timeout_ms) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(b->rbuf, '\n', b->rlen);
        if (nl) {
            size_t n = (size_t)(nl - b->rbuf);
            size_t c = n < size - 1 ? n : size - 1;
            memcpy(line, b->rbuf, c);
            line[c] = '\0';
            memmove(b->rbuf, nl + 1, b->rlen - n - 1);
            b->rlen -= n + 1;
            return 1;
        }
        int64_t left = deadline - tk_now_ms();
        if (left <= 0 || b->rlen == sizeof(b->rbuf))
            return 0;
        struct pollfd pfd = {b->from_fd, POLLIN, 0};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        ssize_t got = read(b->from_fd, b->rbuf + b->rlen, sizeof(b->rbuf) - b->rlen);
        if (got <= 0)
            return 0;
        b->rlen += (size_t)got;
    }
}

tk_broker_t *tk_broker_start(const char *const *args) {
    char *prog = tk_build_path("mock-kafka");
    const char *argv[64];
    size_t n = 0;
    argv[n++] = prog;
    for (; args && *args; args++) {
        ck_assert_uint_lt(n, sizeof(argv) / sizeof(argv[0]) - 1);
        argv[n++] = *args;
    }
    argv[n] = NULL;
    struct stat st;
    ck_assert_msg(stat(prog, &st) == 0, "%s: %s (run make tests)", prog, strerror(errno));

    /* Writing to a broker that died must fail the test with a message, not kill it. */
    signal(SIGPIPE, SIG_IGN);
    tk_broker_t *b = calloc(1, sizeof(*b));
    ck_assert_ptr_nonnull(b);
    b->err_path = tk_scratch_path("mock-kafka.err");
    int to[2], from[2];
    ck_assert(pipe2(to, O_CLOEXEC) == 0 && pipe2(from, O_CLOEXEC) == 0);
    int err_fd = open_out(b->err_path);
    fflush(NULL);
    pid_t parent = getpid();
    b->pid = fork();
    ck_assert_msg(b->pid >= 0, "fork: %s", strerror(errno));
    if (b->pid == 0) {
        child_prepare(parent, to[0], from[1], err_fd);
        execv(prog, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    close(err_fd);
    free(prog);
    b->to_fd = to[1];
    b->from_fd = from[0];
    ck_assert_msg(broker_read_line(b, b->bootstrap, sizeof(b->bootstrap), 10000) && b->bootstrap[0],
                  "mock-kafka printed no bootstrap line; its stderr:\n%s", tk_file_tail(b->err_path, 2000));
    return b;
}

const char *tk_broker_cmd(tk_broker_t *b, const char *cmd) {
    static char reply[4096];
    size_t len = strlen(cmd);
    char *line = malloc(len + 2);
    ck_assert_ptr_nonnull(line);
    memcpy(line, cmd, len);
    line[len] = '\n';
    ck_assert_msg(write(b->to_fd, line, len + 1) == (ssize_t)(len + 1), "mock-kafka: cannot send '%s'",
                  cmd);
    free(line);
    ck_assert_msg(broker_read_line(b, reply, sizeof(reply), 10000), "mock-kafka: no reply to '%s'", cmd);
    ck_assert_msg(strncmp(reply, "ok", 2) == 0, "mock-kafka: '%s' -> %s", cmd, reply);
    return reply;
}

void tk_broker_stop(tk_broker_t *b) {
    if (!b)
        return;
    if (b->pid > 0) {
        if (write(b->to_fd, "quit\n", 5) != 5)
            kill(b->pid, SIGTERM);
        int64_t deadline = tk_now_ms() + 5000;
        int status;
        while (waitpid(b->pid, &status, WNOHANG) == 0) {
            if (tk_now_ms() >= deadline) {
                kill(b->pid, SIGKILL);
                waitpid(b->pid, &status, 0);
                break;
            }
            tk_sleep_ms(10);
        }
    }
    close(b->to_fd);
    close(b->from_fd);
    free(b->err_path);
    free(b);
}

/* ---- reading topics back ------------------------------------------------------------------ */

struct tk_consumer_s {
    rd_kafka_t *rk;
    int partitions;
    tk_record_t *recs;
    size_t n, cap;
};

/* The reader's own connection errors (e.g. while a test holds the broker down) are expected;
 * printing them would bury the test's real output. */
static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    if (getenv("TK_KAFKA_DEBUG"))
        fprintf(stderr, "reader: %d %s: %s\n", level, fac, buf);
}

static void quiet_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)rk, (void)opaque;
    if (getenv("TK_KAFKA_DEBUG"))
        fprintf(stderr, "reader: error %d: %s\n", err, reason);
}

static void conf_set(rd_kafka_conf_t *conf, const char *key, const char *value) {
    char err[512];
    ck_assert_msg(rd_kafka_conf_set(conf, key, value, err, sizeof(err)) == RD_KAFKA_CONF_OK, "%s: %s", key,
                  err);
}

tk_consumer_t *tk_consumer_new(const char *bootstrap, const char *topic) {
    static int seq;
    char err[512], group[64];
    tk_consumer_t *c = calloc(1, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "bootstrap.servers", bootstrap);
    snprintf(group, sizeof(group), "tk-reader-%d-%d", (int)getpid(), ++seq);
    conf_set(conf, "group.id", group);
    conf_set(conf, "enable.auto.commit", "false");
    conf_set(conf, "enable.auto.offset.store", "false");
    conf_set(conf, "enable.partition.eof", "false");
    conf_set(conf, "fetch.wait.max.ms", "50"); /* tests measure arrival, so don't linger */
    conf_set(conf, "topic.metadata.refresh.interval.ms", "1000");
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set_error_cb(conf, quiet_error);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    ck_assert_msg(c->rk != NULL, "rd_kafka_new: %s", err);
    rd_kafka_poll_set_consumer(c->rk);

    rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->rk, topic, NULL);
    ck_assert_ptr_nonnull(rkt);
    int64_t deadline = tk_now_ms() + 15000;
    const char *why = "no answer";
    while (c->partitions == 0) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(c->rk, 0, rkt, &md, 2000);
        if (e)
            why = rd_kafka_err2str(e);
        else if (md->topic_cnt == 1 && md->topics[0].err)
            why = rd_kafka_err2str(md->topics[0].err);
        else if (md->topic_cnt == 1)
            c->partitions = md->topics[0].partition_cnt;
        if (md)
            rd_kafka_metadata_destroy(md);
        if (c->partitions == 0) {
            ck_assert_msg(tk_now_ms() < deadline, "no metadata for topic %s: %s", topic, why);
            tk_sleep_ms(100); /* the first request after a broker comes up may fail */
        }
    }
    rd_kafka_topic_destroy(rkt);

    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(c->partitions);
    for (int p = 0; p < c->partitions; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(c->rk, parts);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "assign: %s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(parts);
    return c;
}

static void *memdup(const void *p, size_t n) {
    char *d = malloc(n + 1); /* +1: values may be read as strings */
    ck_assert_ptr_nonnull(d);
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

static void keep_record(tk_consumer_t *c, const rd_kafka_message_t *m) {
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->recs = realloc(c->recs, c->cap * sizeof(*c->recs));
        ck_assert_ptr_nonnull(c->recs);
    }
    tk_record_t *r = &c->recs[c->n++];
    memset(r, 0, sizeof(*r));
    r->partition = m->partition;
    r->offset = m->offset;
    r->timestamp_ms = rd_kafka_message_timestamp(m, NULL);
    if (m->key) {
        r->key = memdup(m->key, m->key_len);
        r->key_len = m->key_len;
    }
    r->value = memdup(m->payload, m->payload ? m->len : 0);
    r->value_len = m->payload ? m->len : 0;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
        size_t cnt = rd_kafka_header_cnt(hdrs);
        r->headers = calloc(cnt ? cnt : 1, sizeof(*r->headers));
        ck_assert_ptr_nonnull(r->headers);
        const char *name;
        const void *val;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == 0; i++) {
            tk_header_t *h = &r->headers[r->n_headers++];
            h->name = strdup(name);
            h->value = memdup(val, val ? size : 0);
            h->value_len = val ? size : 0;
        }
    }
}

size_t tk_consumer_poll(tk_consumer_t *c, size_t want, int64_t deadline_ms) {
    while (c->n < want) {
        int64_t left = deadline_ms - tk_now_ms();
        if (left <= 0)
            break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, left < 200 ? (int)left : 200);
        if (!m)
            continue;
        if (!m->err) /* errors are transient here: the consumer retries by itself */
            keep_record(c, m);
        rd_kafka_message_destroy(m);
    }
    return c->n;
}

int tk_consumer_read_to_end(tk_consumer_t *c, const char *topic, int64_t deadline_ms) {
    int64_t *high = calloc((size_t)c->partitions, sizeof(*high)), *next = calloc((size_t)c->partitions, sizeof(*next));
    ck_assert(high && next);
    for (int p = 0; p < c->partitions; p++) {
        int64_t lo;
        while (rd_kafka_query_watermark_offsets(c->rk, topic, p, &lo, &high[p], 2000)) {
            if (tk_now_ms() > deadline_ms) {
                free(high), free(next);
                return 0;
            }
        }
    }
    for (size_t i = 0; i < c->n; i++)
        if (c->recs[i].offset + 1 > next[c->recs[i].partition])
            next[c->recs[i].partition] = c->recs[i].offset + 1;
    int done = 0;
    while (!done && tk_now_ms() < deadline_ms) {
        done = 1;
        for (int p = 0; p < c->partitions; p++)
            if (next[p] < high[p])
                done = 0;
        if (done)
            break;
        size_t before = c->n;
        tk_consumer_poll(c, c->n + 1, tk_now_ms() + 200);
        for (size_t i = before; i < c->n; i++)
            if (c->recs[i].offset + 1 > next[c->recs[i].partition])
                next[c->recs[i].partition] = c->recs[i].offset + 1;
    }
    free(high), free(next);
    return done;
}

const tk_record_t *tk_consumer_records(const tk_consumer_t *c, size_t *n) {
    *n = c->n;
    return c->recs;
}

int tk_consumer_partitions(const tk_consumer_t *c) {
    return c->partitions;
}

void tk_consumer_free(tk_consumer_t *c) {
    if (!c)
        return;
    /* Not a group member: skip the close handshake, which only delays against a dead broker. */
    rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (size_t i = 0; i < c->n; i++) {
        tk_record_t *r = &c->recs[i];
        for (size_t h = 0; h < r->n_headers; h++) {
            free(r->headers[h].name);
            free(r->headers[h].value);
        }
        free(r->headers);
        free(r->key);
        free(r->value);
    }
    free(c->recs);
    free(c);
}

const char *tk_record_header(const tk_record_t *r, const char *name) {
    for (size_t i = 0; i < r->n_headers; i++)
        if (!strcmp(r->headers[i].name, name))
            return r->headers[i].value;
    return NULL;
}

/* ---- SQL ---------------------------------------------------------------------------------- */

long long tk_wait_scalar(PGconn *conn, const char *sql, long long target, int timeout_ms) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        long long v = tu_scalar(conn, sql);
        if (v == target || tk_now_ms() >= deadline)
            return v;
        tk_sleep_ms(20);
    }
}

/* ---- sets of message ids ------------------------------------------------------------------ */

static int cmp_id(const void *a, const void *b) {
    return memcmp(a, b, 37);
}

void tk_idset_add(tk_idset_t *s, const char *id) {
    ck_assert_msg(strlen(id) == 36, "not a canonical UUID: '%s'", id);
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->ids = realloc(s->ids, s->cap * sizeof(*s->ids));
        ck_assert_ptr_nonnull(s->ids);
    }
    memcpy(s->ids[s->n++], id, 37);
    s->sorted = 0;
}

int tk_idset_has(tk_idset_t *s, const char *id) {
    if (!id || strlen(id) != 36 || s->n == 0)
        return 0;
    if (!s->sorted) {
        qsort(s->ids, s->n, sizeof(*s->ids), cmp_id);
        s->sorted = 1;
    }
    char key[37];
    memcpy(key, id, 37);
    return bsearch(key, s->ids, s->n, sizeof(*s->ids), cmp_id) != NULL;
}

void tk_idset_clear(tk_idset_t *s) {
    free(s->ids);
    memset(s, 0, sizeof(*s));
}

/* ---- producing directly and reading committed offsets --------------------------------------- */

struct tk_producer_s {
    rd_kafka_t *rk;
    int failed;
    char first_error[512];
};

/* Where a record's delivery report goes. */
typedef struct {
    int64_t *offset;
    int32_t *partition;
} tk_dr_slot_t;

static void tk_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    tk_producer_t *p = opaque;
    tk_dr_slot_t *slot = m->_private;
    if (m->err) {
        if (!p->failed++)
            snprintf(p->first_error, sizeof(p->first_error), "%s", rd_kafka_err2str(m->err));
    } else if (slot) {
        if (slot->offset)
            *slot->offset = m->offset;
        if (slot->partition)
            *slot->partition = m->partition;
    }
    free(slot);
}

tk_producer_t *tk_producer_new(const char *bootstrap) {
    char err[512];
    tk_producer_t *p = calloc(1, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "bootstrap.servers", bootstrap);
    conf_set(conf, "acks", "all");
    conf_set(conf, "linger.ms", "0");
    conf_set(conf, "enable.idempotence", "true"); /* retries never duplicate nor reorder */
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set_error_cb(conf, quiet_error);
    rd_kafka_conf_set_dr_msg_cb(conf, tk_dr_cb);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    ck_assert_msg(p->rk != NULL, "rd_kafka_new: %s", err);
    return p;
}

void tk_produce(tk_producer_t *p, const char *topic, int32_t partition, const void *key, size_t key_len,
                const void *value, size_t value_len, const char *id, int64_t *offset, int32_t *partition_out) {
    tk_dr_slot_t *slot = malloc(sizeof(*slot));
    ck_assert_ptr_nonnull(slot);
    slot->offset = offset;
    slot->partition = partition_out;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(1);
    if (id)
        rd_kafka_header_add(hdrs, "id", 2, id, -1);
    rd_kafka_resp_err_t e;
    for (;;) {
        e = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                              RD_KAFKA_V_KEY(key, key ? key_len : 0),
                              RD_KAFKA_V_VALUE(value_len ? (void *)value : NULL, value_len),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
                              RD_KAFKA_V_OPAQUE(slot), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(p->rk, 50);
    }
    if (e) {
        rd_kafka_headers_destroy(hdrs);
        free(slot);
        ck_abort_msg("producing to %s: %s", topic, rd_kafka_err2str(e));
    }
    rd_kafka_poll(p->rk, 0);
}

void tk_producer_flush(tk_producer_t *p, int timeout_ms) {
    rd_kafka_resp_err_t e = rd_kafka_flush(p->rk, timeout_ms);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "flush: %s (%d records outstanding after %d ms)",
                  rd_kafka_err2str(e), rd_kafka_outq_len(p->rk), timeout_ms);
    ck_assert_msg(!p->failed, "%d records were not acknowledged, the first: %s", p->failed, p->first_error);
}

void tk_producer_free(tk_producer_t *p) {
    if (!p)
        return;
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0); /* delivery reports of purged records free their slots */
    rd_kafka_destroy(p->rk);
    free(p);
}

int64_t tk_committed_offset(const char *bootstrap, const char *group, const char *topic, int32_t partition) {
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "bootstrap.servers", bootstrap);
    conf_set(conf, "group.id", group);
    conf_set(conf, "enable.auto.commit", "false");
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    rd_kafka_conf_set_error_cb(conf, quiet_error);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", err);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    /* The first request may fail while the coordinator is being looked up: ask again. */
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    int64_t deadline = tk_now_ms() + 10000;
    do {
        e = rd_kafka_committed(rk, l, 2000);
        if (!e)
            e = l->elems[0].err;
    } while (e && tk_now_ms() < deadline && (tk_sleep_ms(100), 1));
    int64_t off = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    ck_assert_msg(!e, "committed offset of group %s on %s/%d: %s", group, topic, (int)partition,
                  rd_kafka_err2str(e));
    return off < 0 ? -1 : off;
}

int tk_file_count(const char *path, const char *needle) {
    char *text = tk_read_file(path);
    int n = 0;
    for (const char *s = text; (s = strstr(s, needle)); s += strlen(needle))
        n++;
    free(text);
    return n;
}

int tk_wait_file_contains(const char *path, const char *needle, int timeout_ms) {
    int64_t deadline = tk_now_ms() + timeout_ms;
    for (;;) {
        if (tk_file_count(path, needle) > 0)
            return 1;
        if (tk_now_ms() >= deadline)
            return 0;
        tk_sleep_ms(20);
    }
}
