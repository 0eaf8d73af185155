/*
 * Drain rate: outbox-relay draining a backlog of N 200-byte messages into the broker, next to
 *  - K_raw, a plain librdkafka producer loop with the relay's producer settings to the same broker;
 *  - the SQL ceiling, a PL/pgSQL procedure deleting the same backlog server-side in id batches of
 *    relay.batch.size with a COMMIT per batch: the database's own limit for this work;
 * run alternately in the same process against the same cluster; medians of several runs.
 * Also the relay's cost (CPU per message, peak RSS) and its drain rate over time: its published
 * counter read from its /metrics endpoint every 250 ms, written to OUTDIR/NAME.dat.
 * With -s (scale), also the table and index sizes before the drain, right after it, once the
 * relay has rebuilt its index (relay.reindex.min.bytes), and after a plain VACUUM.
 * With -F (formats), instead: the drain rate with relay.format=envelope and =cloudevents, alternating
 * in the same process (the order swapped every run), and the ratio of their medians.
 * With -L (long transactions), instead: the drain rate of a fresh relay with no transaction open,
 * then beside an unrelated session idle in a transaction, then beside one whose open transaction
 * sent an outbox message, two backlogs each, against the targets of their ratios to the first.
 * With -P (parking), instead: the drain rate with no poison, with one parked key among the 1,000
 * (its first row has an invalid destination), and beside 10,000 rows held by a key parked before.
 * With -F (formats), instead: relay.format=envelope against cloudevents, alternating.
 * Usage: bench_drain [-o OUTDIR] [-n NAME] [-s | -L | -P | -F | -W | -w] CONNINFO BOOTSTRAP RELAY_BINARY
 *                    [MESSAGES=100000, with -L 300000] [RUNS=3] [RELAY_KEY=VALUE...]
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "bench.h"
#include "outbox_int.h"

#define die(what, why) bench_die("bench_drain", what, why)

#define MAX_RUNS 20
#define TICK_S 0.25          /* the time series' sampling interval */
#define FILL_CHUNK 1000000L  /* at most so many rows per INSERT ... SELECT of the fill */

static void sql(PGconn *conn, const char *q) {
    PGresult *res = PQexec(conn, q);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        die(q, PQresultErrorMessage(res));
    PQclear(res);
}

static long long sql_ll(PGconn *conn, const char *q) {
    PGresult *res = PQexec(conn, q);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        die(q, PQresultErrorMessage(res));
    long long v = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

/* ---- K_raw ------------------------------------------------------------------------------------ */

static long delivered;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (!m->err)
        delivered++;
}

/* K_raw: n messages of the same size as the relay sends, keys spread over 1,000 values. */
static double raw_rate(const char *bootstrap, const void *value, size_t len, long n) {
    char err[512];
    rd_kafka_conf_t *kc = outbox_kafka_conf(NULL, outbox_kafka_producer_defaults(), err, sizeof(err));
    if (!kc || rd_kafka_conf_set(kc, "bootstrap.servers", bootstrap, err, sizeof(err)))
        die("producer conf", err);
    rd_kafka_conf_set_dr_msg_cb(kc, on_dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    if (!rk)
        die("producer", err);
    /* Connect and fetch metadata before the clock starts, as the relay's steady state has. */
    const rd_kafka_metadata_t *md;
    if (rd_kafka_metadata(rk, 1, NULL, &md, 10000) == 0)
        rd_kafka_metadata_destroy(md);
    delivered = 0;
    double t0 = bench_now();
    for (long i = 0; i < n; i++) {
        char key[16];
        int kl = snprintf(key, sizeof(key), "k%ld", i % 1000);
        while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("bench"), RD_KAFKA_V_KEY(key, (size_t)kl),
                                 RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 60000);
    double t = bench_now() - t0;
    if (delivered != n)
        die("raw producer", "not every message was delivered");
    rd_kafka_destroy(rk);
    return (double)n / t;
}

/* ---- the backlog -------------------------------------------------------------------------------- */

/* Empties the outbox and fills it with n rows as outbox_send() writes them (the identity column
 * gives the ids; a message_id each, keys spread over 1,000 values, the same valid envelope bytes
 * as a binary parameter), server-side, a million rows per statement, FILL_CONNS statements at a
 * time.  Then VACUUM ANALYZE and a CHECKPOINT, so that the drain and the SQL ceiling start from
 * the same settled state.  Without truncate the rows go after what the table holds, dead rows
 * included: TRUNCATE would wait for a transaction that wrote the outbox, and would hide the dead
 * rows a long transaction keeps.  Returns the seconds taken. */
#define FILL_CONNS 2
static double fill(PGconn *const *conns, const void *env, size_t len, long n, int truncate) {
    double t0 = bench_now();
    long chunk = (n + FILL_CONNS - 1) / FILL_CONNS;
    if (chunk > FILL_CHUNK)
        chunk = FILL_CHUNK;
    if (truncate)
        sql(conns[0], "TRUNCATE outbox.messages");
    for (long from = 1; from <= n;) {
        int busy = 0;
        for (; busy < FILL_CONNS && from <= n; busy++, from += chunk) {
            long to = n - from >= chunk ? from + chunk - 1 : n;
            char lo[24], hi[24];
            snprintf(lo, sizeof(lo), "%ld", from);
            snprintf(hi, sizeof(hi), "%ld", to);
            const char *params[3] = {env, lo, hi};
            int lengths[3] = {(int)len, 0, 0}, formats[3] = {1, 0, 0};
            if (!PQsendQueryParams(conns[busy],
                                   "INSERT INTO outbox.messages (message_id, destination, partition_key, "
                                   "message_type, envelope) SELECT gen_random_uuid(), 'bench', "
                                   "convert_to('k' || (g % 1000), 'UTF8'), 'bench.Event', $1 "
                                   "FROM generate_series($2::bigint, $3::bigint) g",
                                   3, NULL, params, lengths, formats, 0))
                die("fill", PQerrorMessage(conns[busy]));
        }
        for (int c = 0; c < busy; c++) {
            PGresult *res;
            while ((res = PQgetResult(conns[c]))) {
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                    die("fill", PQresultErrorMessage(res));
                PQclear(res);
            }
        }
    }
    sql(conns[0], "VACUUM ANALYZE outbox.messages");
    sql(conns[0], "CHECKPOINT");
    return bench_now() - t0;
}

/* -W: the backlog is in the WAL (outbox.mode=wal): a drain ends when every message is acknowledged. */
static int wal_backlog;

static int table_empty(PGconn *conn) {
    /* The primary key's index, not a sequential scan through every dead row. */
    PGresult *res = PQexec(conn, "SELECT id FROM outbox.messages ORDER BY id LIMIT 1");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("checking the backlog", PQresultErrorMessage(res));
    int empty = PQntuples(res) == 0;
    PQclear(res);
    return empty;
}

typedef struct {
    long long heap, index, total;
} sizes_t;

static sizes_t rel_sizes(PGconn *conn) {
    PGresult *res = PQexec(conn, "SELECT pg_relation_size('outbox.messages'), pg_indexes_size('outbox.messages'), "
                                 "pg_total_relation_size('outbox.messages')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("table sizes", PQresultErrorMessage(res));
    sizes_t s = {atoll(PQgetvalue(res, 0, 0)), atoll(PQgetvalue(res, 0, 1)), atoll(PQgetvalue(res, 0, 2))};
    PQclear(res);
    return s;
}

/* ---- SQL ceiling -------------------------------------------------------------------------------- */

static void ceiling_setup(PGconn *conn) {
    sql(conn, "CREATE OR REPLACE PROCEDURE public.bench_delete_backlog(batch int) LANGUAGE plpgsql AS $$ "
              "DECLARE ids bigint[]; last bigint := -9223372036854775808; "
              "BEGIN "
              "  LOOP "
              /* From the last id deleted, as the relay's claims start from their floor: from
               * the lowest id each time, every batch would step over the index entries of all
               * the rows deleted before it. */
              "    SELECT array_agg(id ORDER BY id) INTO ids FROM "
              "      (SELECT id FROM outbox.messages WHERE id > last ORDER BY id LIMIT batch) s; "
              "    EXIT WHEN ids IS NULL; "
              "    last := ids[array_upper(ids, 1)]; "
              "    DELETE FROM outbox.messages WHERE id = ANY(ids); "
              "    COMMIT; "
              "  END LOOP; "
              "END $$");
}

/* Deletes the backlog of n rows in batches; the session commits as the relay's does (without
 * waiting for the WAL flush).  Returns messages per second. */
static double ceiling_rate(PGconn *conn, int batch) {
    char call[80];
    snprintf(call, sizeof(call), "CALL public.bench_delete_backlog(%d)", batch);
    long long n = sql_ll(conn, "SELECT count(*) FROM outbox.messages");
    sql(conn, "SET synchronous_commit = off");
    double t0 = bench_now();
    sql(conn, call);
    double t = bench_now() - t0;
    sql(conn, "RESET synchronous_commit");
    if (!table_empty(conn))
        die("SQL ceiling", "rows are left after the procedure");
    return (double)n / t;
}

/* ---- the relay's drain -------------------------------------------------------------------------- */

/* A free TCP port on 127.0.0.1 for the relay's metrics endpoint. */
static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || getsockname(s, (struct sockaddr *)&a, &l))
        die("metrics port", "cannot find a free port on 127.0.0.1");
    close(s);
    return ntohs(a.sin_port);
}

static long long metric(const char *body, const char *name) {
    char pat[96];
    snprintf(pat, sizeof(pat), "\n%s ", name);
    const char *p = strstr(body, pat);
    return p ? atoll(p + strlen(pat)) : -1;
}

/* Reads the relay's published and dead-lettered counters; -1 while the endpoint is not up. */
static int scrape(int port, long long *published, long long *dead) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        return -1;
    struct timeval tv = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    char body[16384];
    size_t got = 0;
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) || write(s, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1) {
        close(s);
        return -1;
    }
    for (ssize_t k; got < sizeof(body) - 1 && (k = read(s, body + got, sizeof(body) - 1 - got)) > 0;)
        got += (size_t)k;
    close(s);
    body[got] = '\0';
    long long p = metric(body, "outbox_relay_published_total"), d = metric(body, "outbox_relay_dead_letters_total");
    if (p < 0 || d < 0)
        return -1;
    *published = p;
    *dead = d;
    return 0;
}

typedef struct {
    double t;      /* seconds since the relay was started */
    long long p;   /* published so far */
    int tick;      /* a point of the 250 ms series (the others are the fast reads near the end) */
} sample_t;

typedef struct {
    double rate, cpu_us, first10, last10, steady;
    double pg_cpu_us;     /* the CPU of the relay's PostgreSQL sessions (walsender included), per message */
    double broker_cpu_us; /* the mock broker's CPU during the drain, per message */
    long rss_kb;
    long long published;
    long held;     /* set by the caller: rows of parked keys the relay holds instead of publishing */
    sample_t *s;
    int ns, cap;
} drain_t;

static void add_sample(drain_t *d, double t, long long p, int tick) {
    if (d->ns == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 1024;
        d->s = realloc(d->s, (size_t)d->cap * sizeof(*d->s));
        if (!d->s)
            die("samples", "out of memory");
    }
    d->s[d->ns++] = (sample_t){t, p, tick};
}

/* The rates of the first and the last tenth of the messages, from the counter's samples: from the
 * first sample that saw a message to the first one 10 % further, and from the last sample 10 %
 * before the final count to the first sample that saw the final count.  And the steady rate: from
 * the first sample at 10 % of n to the first at 90 %, without the start (process, sessions,
 * metadata, the first claim or the stream's start) and the last acknowledgements. */
static void tenths(drain_t *d, long n) {
    long long tenth = n / 10 > 0 ? n / 10 : 1, final = d->s[d->ns - 1].p;
    int a = 0, e = d->ns - 1;
    while (a < d->ns && d->s[a].p == 0)
        a++;
    while (e > 0 && d->s[e - 1].p == final)
        e--;
    int b = a, c = e;
    while (b < d->ns && d->s[b].p - d->s[a].p < tenth)
        b++;
    while (c > 0 && final - d->s[c].p < tenth)
        c--;
    d->first10 = a < d->ns && b < d->ns && d->s[b].t > d->s[a].t
                     ? (double)(d->s[b].p - d->s[a].p) / (d->s[b].t - d->s[a].t) : 0;
    d->last10 = final - d->s[c].p >= tenth && d->s[e].t > d->s[c].t
                    ? (double)(final - d->s[c].p) / (d->s[e].t - d->s[c].t) : 0;
    int lo = 0, hi;
    while (lo < d->ns && d->s[lo].p < tenth)
        lo++;
    for (hi = lo; hi < d->ns && d->s[hi].p < n - tenth; hi++)
        ;
    d->steady = hi < d->ns && d->s[hi].t > d->s[lo].t ? (double)(d->s[hi].p - d->s[lo].p) / (d->s[hi].t - d->s[lo].t) : 0;
}

/* The peak resident set of a running process, from /proc (VmHWM, kB); 0 if unreadable.  Not
 * wait4()'s ru_maxrss: Linux carries the high-water mark of the address space a child replaced at
 * exec into it, so a relay forked from this process (whose K_raw run queued the whole backlog in
 * memory) would report this process's size instead of its own. */
static long peak_rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    long kb = 0;
    if (!fp)
        return 0;
    while (fgets(line, sizeof(line), fp))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(fp);
    return kb;
}

/* A process's CPU time so far (user + system, µs), from /proc; 0 if it is gone. */
static double proc_cpu_us(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return 0;
    size_t got = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[got] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* The mock broker's CPU so far (the process named mock-kafka), µs; 0 if none is found. */
static double broker_cpu_us(void) {
    static long pid = -1;
    if (pid < 0) {
        pid = 0;
        FILE *fp = popen("pgrep -x mock-kafka", "r");
        if (fp) {
            if (fscanf(fp, "%ld", &pid) != 1)
                pid = 0;
            pclose(fp);
        }
    }
    return pid > 0 ? proc_cpu_us(pid) : 0;
}

/* The CPU so far of the PostgreSQL backends serving the relay whose process is pid (its sessions
 * name it in application_name) and of the walsender (the bench runs one relay at a time), µs.
 * They start with the relay: read before it stops, this is their whole cost. */
static double relay_sessions_cpu_us(PGconn *conn, pid_t pid) {
    char q[256];
    snprintf(q, sizeof(q), "SELECT pid FROM pg_stat_activity WHERE application_name LIKE '%% pid=%d%%' "
                           "OR backend_type = 'walsender'", (int)pid);
    PGresult *res = PQexec(conn, q);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("the relay's sessions", PQresultErrorMessage(res));
    double us = 0;
    for (int i = 0; i < PQntuples(res); i++)
        us += proc_cpu_us(atol(PQgetvalue(res, i, 0)));
    PQclear(res);
    return us;
}

/* After a drain, waits (up to 120 s) until the relay has rebuilt an index larger than min
 * bytes (relay.reindex.min.bytes): the seconds it took, 0 if none was due, -1 if it did not
 * happen. */
static double wait_reindex(PGconn *conn, long long min) {
    double t0 = bench_now();
    for (int first = 1;; first = 0) {
        if (sql_ll(conn, "SELECT count(*) FROM pg_stat_progress_create_index") == 0 &&
            rel_sizes(conn).index <= min)
            return first ? 0 : bench_now() - t0;
        if (bench_now() - t0 > 120)
            return -1;
        usleep(100000);
    }
}

/* Starts the relay on the filled outbox, follows its published counter and times it until the
 * table is empty; then stops it and reads its CPU time and peak RSS.  With at_empty, also
 * the sizes once the table is empty, and the time the relay took to rebuild its index after
 * (reindex_min: relay.reindex.min.bytes; 0 = no rebuild). */
static void drain(PGconn *conn, const char *bootstrap, const char *relay, char **extra, int n_extra, long n,
                  drain_t *d, sizes_t *at_empty, long long reindex_min, double *reindex_s) {
    int port = free_port();
    char listen[64];
    snprintf(listen, sizeof(listen), "metrics.listen=127.0.0.1:%d", port);
    char **ex = calloc((size_t)n_extra + 1, sizeof(char *));
    memcpy(ex, extra, (size_t)n_extra * sizeof(char *));
    ex[n_extra] = listen;
    long long dead_before = sql_ll(conn, "SELECT count(*) FROM outbox.dead_letters");

    n -= d->held; /* the messages to publish */
    double t0 = bench_now(), next_tick = TICK_S, last_check = 0, tick_t = 0, rate = 0, t = 0;
    double broker0 = broker_cpu_us();
    long long p = 0, dl = 0, tick_p = 0;
    pid_t pid = bench_start_relay(relay, bootstrap, ex, n_extra + 1);
    add_sample(d, 0, 0, 1);
    for (;;) {
        usleep(10000);
        double now = bench_now() - t0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            die("relay", "exited before draining the backlog");
        /* Read the counter every tick, and every 10 ms once the end is less than half a second
         * away, so that the last acknowledgement is timed to 10 ms. */
        int tick = now >= next_tick;
        int near = p + dl >= n || (rate > 0 && (double)(n - p - dl) / rate < 0.5);
        if (tick || near) {
            long long pp, dd;
            if (scrape(port, &pp, &dd) == 0) {
                p = pp;
                dl = dd;
            }
            add_sample(d, now, p, tick);
            if (tick) {
                rate = (double)(p - tick_p) / (now - tick_t);
                tick_p = p;
                tick_t = now;
                while (next_tick <= now)
                    next_tick += TICK_S;
            }
        }
        /* Done when the table is empty: looked at once every message is acknowledged or
         * dead-lettered (and every 5 s in any case). */
        if (wal_backlog) {
            if (p + dl >= n)
                break;
        } else if (p + dl >= n || now - last_check >= 5) {
            /* The query's snapshot is taken when it starts: the table was empty then.  Its own
             * time is not the relay's (beside a long transaction it walks every dead entry). */
            double asked = bench_now() - t0;
            last_check = now;
            if (table_empty(conn)) {
                t = asked;
                break;
            }
        }
    }
    if (t == 0)
        t = bench_now() - t0;
    long long pp, dd;
    if (scrape(port, &pp, &dd) == 0)
        p = pp;
    add_sample(d, t, p, 1);
    if (sql_ll(conn, "SELECT count(*) FROM outbox.dead_letters") != dead_before)
        die("relay", "dead-lettered messages of the benchmark: the figure would not be a drain rate");
    if (at_empty) {
        *at_empty = rel_sizes(conn);
        *reindex_s = reindex_min > 0 ? wait_reindex(conn, reindex_min) : 0;
    }
    d->rss_kb = peak_rss_kb(pid); /* VmHWM never falls: its peak over the whole drain */
    d->pg_cpu_us = relay_sessions_cpu_us(conn, pid) / (double)n;
    d->broker_cpu_us = (broker_cpu_us() - broker0) / (double)n;
    kill(pid, SIGTERM);
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid)
        die("relay", "cannot collect its exit status");
    double cpu = (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
                 (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
    d->cpu_us = cpu / (double)n;
    d->rate = (double)n / t;
    d->published = p;
    tenths(d, n);
    free(ex);
}

/* Writes every run's 250 ms series as gnuplot data blocks: t, msg/s over the interval, published. */
static void write_series(const char *path, const char *title, double ceiling, drain_t *runs, int n_runs) {
    FILE *f = fopen(path, "w");
    if (!f)
        die(path, "cannot write the time series");
    fprintf(f, "# title: %s\n# sql_ceiling: %.0f\n# t_s msgs_per_s published\n", title, ceiling);
    for (int r = 0; r < n_runs; r++) {
        drain_t *d = &runs[r];
        int *idx = malloc((size_t)d->ns * sizeof(int)), k = 0;
        for (int i = 0; i < d->ns; i++)
            if (d->s[i].tick)
                idx[k++] = i;
        /* The final point closes a partial interval: let it span at least 0.1 s. */
        if (k > 2 && d->s[idx[k - 1]].t - d->s[idx[k - 2]].t < 0.1) {
            idx[k - 2] = idx[k - 1];
            k--;
        }
        fprintf(f, "%s# run %d\n0 0 0\n", r ? "\n\n" : "", r + 1);
        for (int j = 1; j < k; j++) {
            sample_t *a = &d->s[idx[j - 1]], *b = &d->s[idx[j]];
            fprintf(f, "%.3f %.0f %lld\n", b->t, (double)(b->p - a->p) / (b->t - a->t), b->p);
        }
        free(idx);
    }
    fclose(f);
}

static void print_sizes(const char *what, sizes_t s) {
    printf("  %-34s %9.1f MB %9.1f MB %9.1f MB\n", what, (double)s.heap / 1048576, (double)s.index / 1048576,
           (double)s.total / 1048576);
}

static double median_of(const double *v, int n) {
    double c[MAX_RUNS];
    memcpy(c, v, (size_t)n * sizeof(double));
    return bench_median(c, n);
}

/* ---- long transactions (-L) --------------------------------------------------------------------- */

/* The scenario's phases in the order they run, and the share of the base rate each must keep. */
enum { LT_BASE, LT_IDLE1, LT_IDLE2, LT_WRITER1, LT_WRITER2, LT_PHASES };
static const struct {
    const char *name, *key;
    double target; /* 0: none */
} lt_phase[LT_PHASES] = {
    {"base: no transaction open", "base", 0},
    {"unrelated idle transaction, backlog 1", "idle1", 0.8},
    {"unrelated idle transaction, backlog 2", "idle2", 0.8},
    {"open outbox writer, backlog 1", "writer1", 0.5},
    {"open outbox writer, backlog 2", "writer2", 0.5},
};

typedef struct {
    PGconn **fillers; /* fillers[0] is the bench's own session */
    const void *env;
    size_t len;
    const char *bootstrap, *relay;
    char **extra;
    int n_extra;
} lt_ctx_t;

/* Fills a backlog of n rows and times a fresh relay draining it: msg/s. */
static double lt_backlog(const lt_ctx_t *x, long n, int truncate) {
    fill(x->fillers, x->env, x->len, n, truncate);
    drain_t d = {0};
    drain(x->fillers[0], x->bootstrap, x->relay, x->extra, x->n_extra, n, &d, NULL, 0, NULL);
    free(d.s);
    return d.rate;
}

/* One run of the scenario: base; two backlogs beside a session idle in a transaction that holds an
 * xid; two beside one whose transaction sent an outbox message (a lower id than either backlog,
 * invisible until it commits).  A VACUUM after each long transaction ends, so that each phase
 * starts from a table without the dead rows the one before could not let go of. */
static void lt_run(const lt_ctx_t *x, outbox_t *ob, PGconn *side, long n, double *rate) {
    PGconn *conn = x->fillers[0];
    rate[LT_BASE] = lt_backlog(x, n, 1);
    sql(conn, "VACUUM outbox.messages");

    sql(side, "BEGIN");
    sql(side, "SELECT txid_current()");
    rate[LT_IDLE1] = lt_backlog(x, n, 0);
    rate[LT_IDLE2] = lt_backlog(x, n, 0);
    sql(side, "ROLLBACK");
    sql(conn, "VACUUM outbox.messages");

    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "bench", "bench.LongTransaction");
    sql(side, "BEGIN");
    if (!m || outbox_send(ob, side, m) != OUTBOX_OK)
        die("outbox_send in the long transaction", outbox_errmsg(ob));
    rate[LT_WRITER1] = lt_backlog(x, n, 0);
    rate[LT_WRITER2] = lt_backlog(x, n, 0);
    sql(side, "COMMIT");
    /* Its message, committed last with the lowest id in the table, must be published too: drain()
     * returns only once the table is empty. */
    drain_t d = {0};
    drain(conn, x->bootstrap, x->relay, x->extra, x->n_extra, 1, &d, NULL, 0, NULL);
    free(d.s);
    outbox_message_destroy(m);
    sql(conn, "VACUUM outbox.messages");
}

static void longtx(const lt_ctx_t *x, outbox_t *ob, const char *conninfo, long n, int runs) {
    PGconn *side = PQconnectdb(conninfo);
    if (PQstatus(side) != CONNECTION_OK)
        die("connecting the side session", PQerrorMessage(side));
    double rate[LT_PHASES][MAX_RUNS], ratio[LT_PHASES][MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        double one[LT_PHASES];
        lt_run(x, ob, side, n, one);
        fprintf(stderr, "run %d:", r + 1);
        for (int p = 0; p < LT_PHASES; p++) {
            rate[p][r] = one[p];
            ratio[p][r] = one[p] / one[LT_BASE];
            fprintf(stderr, " %s %.0f msg/s (%.2f)", lt_phase[p].key, one[p], ratio[p][r]);
        }
        fprintf(stderr, "\n");
    }
    printf("long transactions: a fresh relay draining a %ld-message backlog (%zu-byte envelopes), %d runs, "
           "medians:\n", n, x->len, runs);
    printf("  %-40s %9s %14s %7s %6s\n", "phase", "msg/s", "ratio to base", "target", "holds");
    char json[2048];
    int k = snprintf(json, sizeof(json), "{\"bench\":\"longtx\",\"messages\":%ld,\"runs\":%d,\"envelope_bytes\":%zu",
                     n, runs, x->len);
    int held = 0, targets = 0;
    for (int p = 0; p < LT_PHASES; p++) {
        double rm = median_of(rate[p], runs), qm = median_of(ratio[p], runs);
        int holds = qm >= lt_phase[p].target;
        if (lt_phase[p].target > 0) {
            targets++;
            held += holds;
            printf("  %-40s %9.0f %14.3f %7.2f %6s\n", lt_phase[p].name, rm, qm, lt_phase[p].target,
                   holds ? "yes" : "no");
            k += snprintf(json + k, sizeof(json) - (size_t)k, ",\"%s\":%.0f,\"%s_ratio\":%.3f,\"%s_target\":%.2f,"
                          "\"%s_holds\":%s", lt_phase[p].key, rm, lt_phase[p].key, qm, lt_phase[p].key,
                          lt_phase[p].target, lt_phase[p].key, holds ? "true" : "false");
        } else {
            printf("  %-40s %9.0f %14.3f %7s %6s\n", lt_phase[p].name, rm, qm, "-", "-");
            k += snprintf(json + k, sizeof(json) - (size_t)k, ",\"%s\":%.0f", lt_phase[p].key, rm);
        }
    }
    printf("  targets held: %d of %d\n", held, targets);
    printf("%s,\"targets_held\":%d,\"targets\":%d}\n", json, held, targets);
    PQfinish(side);
}

/* ---- parking (-P) ------------------------------------------------------------------------------- */

enum { PK_BASE, PK_ONE, PK_HELD, PK_PHASES };
static const struct {
    const char *name, *key;
} pk_phase[PK_PHASES] = {
    {"no poison", "base"},
    {"one parked key among 1,000 (other keys)", "one_parked"},
    {"10,000 rows held by a parked key", "held_10000"},
};
#define PK_HELD_ROWS 10000
#define PK_TARGET 0.9

static void pk_clear(PGconn *conn) {
    sql(conn, "TRUNCATE outbox.parked_keys, outbox.parked_messages");
}

/* One run: base; the same backlog with key k0's first row poisoned; the same backlog beside
 * PK_HELD_ROWS rows of a key parked (by the relay, for real) before it. */
static void pk_run(const lt_ctx_t *x, long n, double *rate) {
    PGconn *conn = x->fillers[0];
    drain_t d = {0};
    pk_clear(conn);
    fill(x->fillers, x->env, x->len, n, 1);
    drain(conn, x->bootstrap, x->relay, x->extra, x->n_extra, n, &d, NULL, 0, NULL);
    rate[PK_BASE] = d.rate;
    free(d.s);

    fill(x->fillers, x->env, x->len, n, 1);
    sql(conn, "UPDATE outbox.messages SET destination = 'bad topic!' WHERE id = (SELECT min(id) FROM "
              "outbox.messages WHERE partition_key = 'k0')");
    d = (drain_t){.held = (long)sql_ll(conn, "SELECT count(*) FROM outbox.messages WHERE partition_key = 'k0'")};
    drain(conn, x->bootstrap, x->relay, x->extra, x->n_extra, n, &d, NULL, 0, NULL);
    rate[PK_ONE] = d.rate;
    free(d.s);
    if (sql_ll(conn, "SELECT count(*) FROM outbox.parked_messages") != d.held)
        die("parking", "the parked key does not hold exactly its rows");
    pk_clear(conn);

    /* A real park: a poison row and the rows after it of one key, held by a relay. */
    sql(conn, "TRUNCATE outbox.messages");
    char q[512];
    snprintf(q, sizeof(q), "INSERT INTO outbox.messages (message_id, destination, partition_key, message_type, "
             "envelope) SELECT gen_random_uuid(), CASE WHEN g = 1 THEN 'bad topic!' ELSE 'bench' END, "
             "'held', 'bench.Held', '\\x' FROM generate_series(1, %d) g", PK_HELD_ROWS);
    sql(conn, q);
    d = (drain_t){.held = PK_HELD_ROWS};
    drain(conn, x->bootstrap, x->relay, x->extra, x->n_extra, PK_HELD_ROWS, &d, NULL, 0, NULL);
    free(d.s);
    if (sql_ll(conn, "SELECT count(*) FROM outbox.parked_messages") != PK_HELD_ROWS)
        die("parking", "the relay did not hold the 10,000 rows");
    fill(x->fillers, x->env, x->len, n, 1);
    d = (drain_t){0};
    drain(conn, x->bootstrap, x->relay, x->extra, x->n_extra, n, &d, NULL, 0, NULL);
    rate[PK_HELD] = d.rate;
    free(d.s);
    pk_clear(conn);
}

static void parking(const lt_ctx_t *x, long n, int runs) {
    double rate[PK_PHASES][MAX_RUNS], ratio[PK_PHASES][MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        double one[PK_PHASES];
        pk_run(x, n, one);
        fprintf(stderr, "run %d:", r + 1);
        for (int p = 0; p < PK_PHASES; p++) {
            rate[p][r] = one[p];
            ratio[p][r] = one[p] / one[PK_BASE];
            fprintf(stderr, " %s %.0f msg/s (%.3f)", pk_phase[p].key, one[p], ratio[p][r]);
        }
        fprintf(stderr, "\n");
    }
    printf("parking: a fresh relay draining a %ld-message backlog over 1,000 keys (%zu-byte envelopes), %d runs, "
           "medians:\n", n, x->len, runs);
    printf("  %-42s %9s %14s %7s %6s\n", "phase", "msg/s", "ratio to base", "target", "holds");
    char json[1024];
    int k = snprintf(json, sizeof(json), "{\"bench\":\"parking\",\"messages\":%ld,\"runs\":%d", n, runs);
    int held = 0;
    for (int p = 0; p < PK_PHASES; p++) {
        double rm = median_of(rate[p], runs), qm = median_of(ratio[p], runs);
        if (p == PK_BASE) {
            printf("  %-42s %9.0f %14s %7s %6s\n", pk_phase[p].name, rm, "1", "-", "-");
            k += snprintf(json + k, sizeof(json) - (size_t)k, ",\"%s\":%.0f", pk_phase[p].key, rm);
            continue;
        }
        held += qm >= PK_TARGET;
        printf("  %-42s %9.0f %14.3f %7.2f %6s\n", pk_phase[p].name, rm, qm, PK_TARGET,
               qm >= PK_TARGET ? "yes" : "no");
        k += snprintf(json + k, sizeof(json) - (size_t)k, ",\"%s\":%.0f,\"%s_ratio\":%.3f,\"%s_holds\":%s",
                      pk_phase[p].key, rm, pk_phase[p].key, qm, pk_phase[p].key, qm >= PK_TARGET ? "true" : "false");
    }
    printf("  targets held: %d of %d\n", held, PK_PHASES - 1);
    printf("%s,\"targets_held\":%d,\"targets\":%d}\n", json, held, PK_PHASES - 1);
}

/* Releases what main() set up, whichever benchmark it ran. */
static void finish(PGconn **fillers, outbox_t *ob, outbox_message_t *m, void *env) {
    free(env);
    outbox_message_destroy(m);
    outbox_destroy(ob);
    for (int i = 0; i < FILL_CONNS; i++)
        PQfinish(fillers[i]);
}

/* -F: envelope against cloudevents, alternating, medians and their ratio. */
static void formats(PGconn **fillers, const char *bootstrap, const char *relay, char **extra, int n_extra,
                    const void *env, size_t len, long n, int runs) {
    static const char *const fmt[2] = {"relay.format=envelope", "relay.format=cloudevents"};
    char *args[64];
    if (n_extra > 62)
        die("arguments", "too many RELAY_KEY=VALUE");
    memcpy(args, extra, (size_t)n_extra * sizeof(*args));
    double rate[2][MAX_RUNS], cpu[2][MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        for (int k = 0; k < 2; k++) {
            int f = (r + k) % 2; /* envelope first in even runs, cloudevents first in odd ones */
            drain_t d = {0};
            double reindex_s = 0;
            fill(fillers, env, len, n, 1);
            args[n_extra] = (char *)fmt[f];
            drain(fillers[0], bootstrap, relay, args, n_extra + 1, n, &d, NULL, 0, &reindex_s);
            rate[f][r] = d.rate;
            cpu[f][r] = d.cpu_us;
            free(d.s);
            fprintf(stderr, "run %d: %s drain %.0f msg/s, relay CPU %.2f us/msg\n", r + 1, fmt[f] + 13, d.rate,
                    d.cpu_us);
        }
    }
    double env_m = median_of(rate[0], runs), ce_m = median_of(rate[1], runs);
    double env_c = median_of(cpu[0], runs), ce_c = median_of(cpu[1], runs);
    printf("drain of a %ld-message backlog (%zu-byte envelopes) per record format, %d runs each, medians:\n", n, len,
           runs);
    printf("  relay.format=envelope      %9.0f msg/s   relay CPU %.2f us/msg\n", env_m, env_c);
    printf("  relay.format=cloudevents   %9.0f msg/s   relay CPU %.2f us/msg\n", ce_m, ce_c);
    printf("  cloudevents / envelope     %9.3f (target >= 0.90)\n", ce_m / env_m);
    printf("{\"bench\":\"drain_formats\",\"messages\":%ld,\"runs\":%d,\"envelope\":%.0f,\"cloudevents\":%.0f,"
           "\"ratio\":%.3f,\"envelope_cpu_us_per_msg\":%.2f,\"cloudevents_cpu_us_per_msg\":%.2f}\n",
           n, runs, env_m, ce_m, ce_m / env_m, env_c, ce_c);
}


/* -W: the same backlog drained from the table and from the WAL, alternating.  The WAL backlog is n
 * logical messages in transactions of WAL_TX, written server-side (a DO block that commits), each
 * one of 1,000 envelopes that differ in their key only, as the table's rows do. */
#define WAL_TX 1000
static double wal_fill(PGconn *conn, void *const *envs, const size_t *lens, long n) {
    /* The table runs' WAL (their rows and deletes) is not this drain's backlog: the slot starts
     * where a relay keeping up with that traffic would have confirmed it. */
    sql(conn, "SELECT pg_replication_slot_advance('outbox_outbox', pg_current_wal_lsn())");
    double t0 = bench_now();
    size_t total = 0;
    for (int k = 0; k < 1000; k++)
        total += 2 * lens[k] + 8;
    char *arr = malloc(total + 16), *w = arr;
    w += sprintf(w, "{");
    for (int k = 0; k < 1000; k++) {
        w += sprintf(w, "%s\"\\\\x", k ? "," : "");
        for (size_t i = 0; i < lens[k]; i++)
            w += sprintf(w, "%02x", ((const unsigned char *)envs[k])[i]);
        w += sprintf(w, "\"");
    }
    sprintf(w, "}");
    char q[512];
    snprintf(q, sizeof(q), "CREATE TEMP TABLE IF NOT EXISTS wal_envs AS SELECT $1::bytea[] AS e");
    const char *p[1] = {arr};
    PGresult *res = PQexecParams(conn, "DROP TABLE IF EXISTS pg_temp.wal_envs", 0, NULL, NULL, NULL, NULL, 0);
    PQclear(res);
    res = PQexecParams(conn, q, 1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("wal fill", PQresultErrorMessage(res));
    PQclear(res);
    free(arr);
    snprintf(q, sizeof(q),
             "DO $$ DECLARE envs bytea[] := (SELECT e FROM wal_envs); BEGIN"
             " FOR t IN 0 .. %ld LOOP"
             "  PERFORM pg_logical_emit_message(true, 'outbox:outbox', envs[(g %% 1000) + 1])"
             "  FROM generate_series(t * %d, least((t + 1) * %d, %ld) - 1) g;"
             "  COMMIT;"
             " END LOOP; END $$", (n - 1) / WAL_TX, WAL_TX, WAL_TX, n);
    sql(conn, q);
    sql(conn, "CHECKPOINT");
    return bench_now() - t0;
}

static void modes(PGconn **fillers, const char *bootstrap, const char *relay, char **extra, int n_extra,
                  const void *env, size_t len, long n, int runs, int wal_only) {
    char *args[64];
    if (n_extra > 62)
        die("arguments", "too many RELAY_KEY=VALUE");
    memcpy(args, extra, (size_t)n_extra * sizeof(*args));
    void *envs[1000];
    size_t lens[1000];
    for (int k = 0; k < 1000; k++) {
        outbox_message_t *m = NULL;
        char err[256], key[16];
        if (outbox_message_decode(&m, env, len, err, sizeof(err)) != OUTBOX_OK)
            die("wal fill", err);
        int kl = snprintf(key, sizeof(key), "k%d", k);
        outbox_message_set_key(m, key, (size_t)kl);
        outbox_message_encode(m, &envs[k], &lens[k]);
        outbox_message_destroy(m);
    }
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s -X outbox.mode=wal migrate >/dev/null", relay);
    if (system(cmd) != 0)
        die("setup", "outbox-relay -X outbox.mode=wal migrate failed");
    double rate[2][MAX_RUNS], cpu[2][MAX_RUNS], steady[2][MAX_RUNS], pgc[2][MAX_RUNS], brk[2][MAX_RUNS];
    double fill_s[2] = {0, 0};
    static const char *const name[2] = {"table", "wal"};
    for (int r = 0; r < runs; r++) {
        for (int k = wal_only; k < 2; k++) {
            int md = wal_only ? 1 : (r + k) % 2; /* table first in even runs, wal first in odd ones */
            drain_t d = {0};
            double reindex_s = 0;
            wal_backlog = md;
            fill_s[md] = md ? wal_fill(fillers[0], envs, lens, n) : fill(fillers, env, len, n, 1);
            args[n_extra] = (char *)(md ? "outbox.mode=wal" : "outbox.mode=table");
            drain(fillers[0], bootstrap, relay, args, n_extra + 1, n, &d, NULL, 0, &reindex_s);
            rate[md][r] = d.rate;
            cpu[md][r] = d.cpu_us;
            steady[md][r] = d.steady;
            pgc[md][r] = d.pg_cpu_us;
            brk[md][r] = d.broker_cpu_us;
            free(d.s);
            fprintf(stderr, "run %d: %s drain %.0f msg/s (steady %.0f, fill %.1f s), CPU us/msg: relay %.2f, "
                    "its PostgreSQL sessions %.2f, broker %.2f\n", r + 1, name[md], d.rate, d.steady, fill_s[md],
                    d.cpu_us, d.pg_cpu_us, d.broker_cpu_us);
        }
    }
    wal_backlog = 0;
    for (int k = 0; k < 1000; k++)
        free(envs[k]);
    long long lag = sql_ll(fillers[0], "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), -1)"
                                       "::bigint FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'");
    double wm = median_of(rate[1], runs), wc = median_of(cpu[1], runs), ws = median_of(steady[1], runs);
    double wp = median_of(pgc[1], runs), wb = median_of(brk[1], runs);
    if (wal_only) {
        printf("drain of %ld logical messages (%zu-byte envelopes, %d a transaction), outbox.mode=wal, %d runs, "
               "medians:\n  %9.0f msg/s (steady, 10-90 %%: %.0f)   fill %.1f s   slot lag after the drain %lld bytes\n"
               "  CPU per message: relay %.2f us, its PostgreSQL sessions (walsender) %.2f us, broker %.2f us\n",
               n, len, WAL_TX, runs, wm, ws, fill_s[1], lag, wc, wp, wb);
        printf("{\"bench\":\"drain_wal\",\"messages\":%ld,\"runs\":%d,\"wal\":%.0f,\"wal_steady\":%.0f,"
               "\"wal_cpu_us_per_msg\":%.2f,\"wal_pg_cpu_us_per_msg\":%.2f,\"wal_broker_cpu_us_per_msg\":%.2f,"
               "\"wal_fill_s\":%.1f,\"slot_lag_bytes\":%lld}\n", n, runs, wm, ws, wc, wp, wb, fill_s[1], lag);
        return;
    }
    double tm = median_of(rate[0], runs), tc = median_of(cpu[0], runs), ts = median_of(steady[0], runs);
    double tp = median_of(pgc[0], runs), tb = median_of(brk[0], runs);
    printf("drain of a %ld-message backlog (%zu-byte envelopes, 1,000 keys) per outbox.mode, %d runs each, medians:\n",
           n, len, runs);
    printf("  outbox.mode=table (rows, 1,000,000 a transaction)   %9.0f msg/s   CPU us/msg: relay %.2f, "
           "its PostgreSQL sessions %.2f, broker %.2f\n", tm, tc, tp, tb);
    printf("  outbox.mode=wal (logical messages, %d a transaction) %9.0f msg/s   CPU us/msg: relay %.2f, "
           "its PostgreSQL sessions %.2f, broker %.2f\n", WAL_TX, wm, wc, wp, wb);
    printf("  wal / table                                        %9.3f (target >= 2)\n", wm / tm);
    printf("  steady rates (10-90 %% of the backlog): table %.0f, wal %.0f msg/s, wal / table %.3f\n", ts, ws,
           ts > 0 ? ws / ts : 0);
    printf("  slot lag after the last wal drain (relay stopped)   %9lld bytes\n", lag);
    printf("{\"bench\":\"drain_modes\",\"messages\":%ld,\"runs\":%d,\"table\":%.0f,\"wal\":%.0f,\"ratio\":%.3f,"
           "\"table_steady\":%.0f,\"wal_steady\":%.0f,\"table_cpu_us_per_msg\":%.2f,\"wal_cpu_us_per_msg\":%.2f,"
           "\"table_pg_cpu_us_per_msg\":%.2f,\"wal_pg_cpu_us_per_msg\":%.2f,\"table_broker_cpu_us_per_msg\":%.2f,"
           "\"wal_broker_cpu_us_per_msg\":%.2f,\"wal_fill_s\":%.1f,\"slot_lag_bytes\":%lld}\n",
           n, runs, tm, wm, wm / tm, ts, ws, tc, wc, tp, wp, tb, wb, fill_s[1], lag);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_drain [-o OUTDIR] [-n NAME] [-s | -L | -P | -F | -W | -w] CONNINFO BOOTSTRAP RELAY_BINARY "
                    "[MESSAGES] "
                    "[RUNS] [RELAY_KEY=VALUE...]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *outdir = ".", *name = "drain";
    int scale = 0, longtx_mode = 0, park_mode = 0, formats_mode = 0, modes_mode = 0, wal_only = 0, opt;
    while ((opt = getopt(argc, argv, "+o:n:sLPFWw")) != -1) {
        if (opt == 'o')
            outdir = optarg;
        else if (opt == 'n')
            name = optarg;
        else if (opt == 's')
            scale = 1;
        else if (opt == 'L')
            longtx_mode = 1;
        else if (opt == 'P')
            park_mode = 1;
        else if (opt == 'F')
            formats_mode = 1;
        else if (opt == 'W')
            modes_mode = 1;
        else if (opt == 'w')
            modes_mode = wal_only = 1;
        else
            usage();
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < 4 || scale + longtx_mode + park_mode + formats_mode + modes_mode > 1)
        usage();
    long n = argc > 4 ? atol(argv[4]) : longtx_mode ? 300000 : 100000;
    int runs = argc > 5 ? atoi(argv[5]) : 3;
    if (n < 1 || runs < 1 || runs > MAX_RUNS)
        die("arguments", "MESSAGES >= 1, RUNS 1..20");
    char **extra = argv + 6;
    int n_extra = argc > 6 ? argc - 6 : 0;
    setenv("OUTBOX_PG_CONNINFO", argv[1], 1);
    PGconn *conn = PQconnectdb(argv[1]), *fillers[FILL_CONNS] = {conn};
    for (int i = 1; i < FILL_CONNS; i++)
        if (PQstatus(fillers[i] = PQconnectdb(argv[1])) != CONNECTION_OK)
            die("connecting", PQerrorMessage(fillers[i]));
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    /* The relay's own batch size (its default, or the one passed to it) for the SQL ceiling. */
    outbox_conf_t *rconf = outbox_conf_new();
    for (int i = 0; i < n_extra; i++) {
        char kv[256], *eq;
        snprintf(kv, sizeof(kv), "%s", extra[i]);
        if ((eq = strchr(kv, '=')) && (*eq = '\0', !strcmp(kv, "relay.batch.size") ||
                                       !strcmp(kv, "relay.reindex.min.bytes")))
            outbox_conf_set(rconf, kv, eq + 1, err, sizeof(err));
    }
    int batch = (int)outbox_conf_int(rconf, "relay.batch.size");
    long long reindex_min = outbox_conf_int(rconf, "relay.reindex.min.bytes");
    outbox_conf_destroy(rconf);
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (PQstatus(conn) != CONNECTION_OK || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("setup", PQerrorMessage(conn));
    ceiling_setup(conn);

    /* One real envelope with a 200-byte payload, as outbox_send would write it. */
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "bench", "bench.Event");
    char payload[200];
    memset(payload, 'p', sizeof(payload));
    outbox_message_set_payload(m, payload, sizeof(payload));
    if (formats_mode) { /* what a traced service sends: both formats carry these */
        outbox_message_set_key(m, "customer-1234", 13);
        outbox_message_set_content_type(m, "application/protobuf");
        outbox_message_set_trace_context(m, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL);
    }
    void *env;
    size_t len;
    outbox_message_encode(m, &env, &len);

    if (modes_mode) {
        modes(fillers, argv[2], argv[3], extra, n_extra, env, len, n, runs, wal_only);
        finish(fillers, ob, m, env);
        return 0;
    }
    if (formats_mode) {
        formats(fillers, argv[2], argv[3], extra, n_extra, env, len, n, runs);
        finish(fillers, ob, m, env);
        return 0;
    }
    if (longtx_mode || park_mode) {
        lt_ctx_t x = {fillers, env, len, argv[2], argv[3], extra, n_extra};
        if (park_mode)
            parking(&x, n, runs);
        else
            longtx(&x, ob, argv[1], n, runs);
        finish(fillers, ob, m, env);
        return 0;
    }
    double raw[MAX_RUNS], dr[MAX_RUNS], ceiling[MAX_RUNS], cpu[MAX_RUNS], rss[MAX_RUNS], f10[MAX_RUNS],
        l10[MAX_RUNS], fill_s = 0, vacuum_s = 0;
    drain_t d[MAX_RUNS] = {{0}};
    sizes_t before = {0}, after = {0}, rebuilt = {0}, vacuumed = {0};
    double reindex_s = 0;
    for (int r = 0; r < runs; r++) {
        raw[r] = raw_rate(argv[2], env, len, n);
        fill_s = fill(fillers, env, len, n, 1);
        if (scale)
            before = rel_sizes(conn);
        drain(conn, argv[2], argv[3], extra, n_extra, n, &d[r], scale ? &after : NULL, reindex_min, &reindex_s);
        if (scale) {
            rebuilt = rel_sizes(conn);
            double t0 = bench_now();
            sql(conn, "VACUUM outbox.messages");
            vacuum_s = bench_now() - t0;
            vacuumed = rel_sizes(conn);
        }
        fill(fillers, env, len, n, 1);
        ceiling[r] = ceiling_rate(conn, batch);
        dr[r] = d[r].rate;
        cpu[r] = d[r].cpu_us;
        rss[r] = (double)d[r].rss_kb;
        f10[r] = d[r].first10;
        l10[r] = d[r].last10;
        fprintf(stderr, "run %d: fill %.1f s, K_raw %.0f msg/s, SQL ceiling %.0f msg/s, drain %.0f msg/s "
                "(%.2f of K_raw, %.2f of the ceiling; first/last 10 %% %.0f/%.0f msg/s), relay CPU %.2f us/msg, "
                "peak RSS %.1f MB\n", r + 1, fill_s, raw[r], ceiling[r], dr[r], dr[r] / raw[r], dr[r] / ceiling[r],
                f10[r], l10[r], cpu[r], rss[r] / 1024);
    }
    double kr = median_of(raw, runs), dm = median_of(dr, runs), cm = median_of(ceiling, runs),
           cu = median_of(cpu, runs), rs = median_of(rss, runs), fm = median_of(f10, runs),
           lm = median_of(l10, runs);
    char path[4096], title[160];
    snprintf(path, sizeof(path), "%s/%s.dat", outdir, name);
    snprintf(title, sizeof(title), "outbox-relay drain of a %ld-message backlog", n);
    write_series(path, title, cm, d, runs);

    printf("drain of a %ld-message backlog (%zu-byte envelopes, batches of %d), %d runs, medians:\n", n, len,
           batch, runs);
    printf("  K_raw (librdkafka producer, same settings)      %9.0f msg/s\n", kr);
    printf("  SQL ceiling (server-side batched DELETE)        %9.0f msg/s\n", cm);
    printf("  outbox-relay drain (start to empty table)       %9.0f msg/s   %.3f of K_raw   %.3f of the SQL "
           "ceiling\n", dm, dm / kr, dm / cm);
    printf("  drain rate, first / last 10 %% of the messages   %9.0f / %.0f msg/s   last/first %.2f\n", fm, lm,
           fm > 0 ? lm / fm : 0);
    printf("  relay CPU (user+sys)                            %9.2f us/msg\n", cu);
    printf("  relay peak RSS                                  %9.1f MB\n", rs / 1024);
    printf("  rate over time (every 250 ms, each run)         %s\n", path);
    printf("{\"bench\":\"drain\",\"name\":\"%s\",\"messages\":%ld,\"runs\":%d,\"envelope_bytes\":%zu,"
           "\"batch_size\":%d,\"k_raw\":%.0f,\"sql_ceiling\":%.0f,\"drain\":%.0f,\"ratio\":%.3f,"
           "\"ratio_sql_ceiling\":%.3f,\"first10_rate\":%.0f,\"last10_rate\":%.0f,\"last10_vs_first10\":%.3f,"
           "\"relay_cpu_us_per_msg\":%.2f,\"relay_peak_rss_kb\":%.0f,\"fill_s\":%.1f,\"series\":\"%s\"}\n",
           name, n, runs, len, batch, kr, cm, dm, dm / kr, dm / cm, fm, lm, fm > 0 ? lm / fm : 0, cu, rs, fill_s,
           path);
    if (scale) {
        printf("outbox.messages size around the drain of %ld messages (last run):\n", n);
        printf("  %-34s %12s %12s %12s\n", "", "table", "indexes", "total");
        print_sizes("before the drain", before);
        print_sizes("right after the drain", after);
        char what[64];
        if (reindex_s > 0)
            snprintf(what, sizeof(what), "after the relay's REINDEX (%.1f s)", reindex_s);
        else
            snprintf(what, sizeof(what), "relay stopped (%s)", reindex_s < 0 ? "no REINDEX in 120 s" : "no REINDEX due");
        print_sizes(what, rebuilt);
        snprintf(what, sizeof(what), "after a plain VACUUM (%.1f s)", vacuum_s);
        print_sizes(what, vacuumed);
        printf("{\"bench\":\"drain_scale\",\"name\":\"%s\",\"messages\":%ld,\"table_bytes_before\":%lld,"
               "\"index_bytes_before\":%lld,\"total_bytes_before\":%lld,\"table_bytes_after_drain\":%lld,"
               "\"index_bytes_after_drain\":%lld,\"total_bytes_after_drain\":%lld,\"reindex_s\":%.1f,"
               "\"index_bytes_after_reindex\":%lld,\"table_bytes_after_vacuum\":%lld,"
               "\"index_bytes_after_vacuum\":%lld,\"total_bytes_after_vacuum\":%lld,\"vacuum_s\":%.1f,"
               "\"first10_rate\":%.0f,\"last10_rate\":%.0f,\"last10_vs_first10\":%.3f}\n",
               name, n, before.heap, before.index, before.total, after.heap, after.index, after.total,
               reindex_s, rebuilt.index, vacuumed.heap, vacuumed.index, vacuumed.total, vacuum_s, fm, lm, fm > 0 ? lm / fm : 0);
    }
    for (int r = 0; r < runs; r++)
        free(d[r].s);
    finish(fillers, ob, m, env);
    return 0;
}
