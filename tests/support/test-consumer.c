/* test-consumer: a consumer process for tests/check_consumer.c; its handler obeys the command in each payload. */
/*
 * Usage: test-consumer --bootstrap B --conninfo C --schema S --group G --topic T [--topic T2 ...]
 *                      [--effects TABLE] [--log-level N] [--no-sleep] [--fault-file PATH] [-X key=value ...]
 *
 * The payload's first word is a command; anything after the first space is ignored by the
 * interpreter (tests put sequence numbers there) but stored with the effect:
 *   ok          insert the effect, return OK
 *   sleep:MS    insert the effect, sleep MS inside the transaction, return OK (--no-sleep: no sleep)
 *   retry:N     return RETRY the first N times this process sees the message id, then as "ok"
 *   reject      insert the effect, return REJECT (the consumer must roll the effect back)
 *   reply       for a COMMAND: outbox_reply(..., "test.Reply", "pong", 4), then as "ok"
 * --fault-file PATH (tests/faults): while PATH holds one of these words, messages whose payload is
 * "ok ..." are handled differently, so that faults land in the middle of a batch:
 *   slow        insert the effect, print "slow <id>", sleep 5 ms, return OK
 *   retry       RETRY one message in 16 (by id) the first time this process sees it
 *   reject      one message in 16 (by id): insert the effect, print "rejecting <id>", REJECT
 * The effect is one row (message_id, payload) in "<schema>"."<effects>" (default "effects"),
 * which the test creates.  Lines on stdout, flushed at once, let tests wait on progress:
 *   handled <id> <payload>      the handler returns OK (the consumer commits right after)
 *   sleeping <id> <ms>          the effect is inserted and the handler is about to sleep
 *   retrying <id> <attempt>     the handler returns RETRY
 *   rejecting <id>              the handler returns REJECT
 *   stats processed=P duplicates=D retried=R rejected=J    after SIGTERM/SIGINT, then exit 0
 * Exit status: 0 after a signal, 1 when the consumer cannot start, 2 on bad arguments.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox/outbox.h"

enum { MAX_TOPICS = 16, MAX_SETTINGS = 32 };

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    stop = sig;
}

typedef struct {
    char id[37];
    int seen;
} attempt_t;

typedef struct {
    outbox_t *ob;       /* writer for outbox_reply(), same schema as the consumer */
    char *effects_sql;  /* INSERT into the effects table */
    int no_sleep;
    attempt_t *attempts; /* per message id: how often "retry:N" was seen by this process */
    size_t n_attempts, cap_attempts;
    const char *fault_file;
    char fault[16];      /* the word in fault_file, read at most every 50 ms */
    long long fault_read_ms;
} ctx_t;

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The word in --fault-file ("" if none). */
static const char *fault_mode(ctx_t *ctx) {
    if (!ctx->fault_file)
        return "";
    long long now = mono_ms();
    if (now - ctx->fault_read_ms >= 50) {
        ctx->fault_read_ms = now;
        ctx->fault[0] = '\0';
        FILE *f = fopen(ctx->fault_file, "r");
        if (f) {
            if (fscanf(f, "%15s", ctx->fault) != 1)
                ctx->fault[0] = '\0';
            fclose(f);
        }
    }
    return ctx->fault;
}

/* A stable 1-in-16 choice of message ids: the last hex digit. */
static int id_bucket(const char *id) {
    size_t n = strlen(id);
    char c = n ? id[n - 1] : '0';
    return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static void usage(FILE *out) {
    fputs("usage: test-consumer --bootstrap B --conninfo C --schema S --group G --topic T...\n"
          "                     [--effects TABLE] [--log-level N] [--no-sleep] [--fault-file PATH]\n"
          "                     [-X key=value]...\n",
          out);
}

/* "name" with embedded quotes doubled.  Caller frees. */
static char *quote_ident(const char *s) {
    char *q = malloc(strlen(s) * 2 + 3), *w = q;
    if (!q)
        return NULL;
    *w++ = '"';
    for (; *s; s++) {
        if (*s == '"')
            *w++ = '"';
        *w++ = *s;
    }
    *w++ = '"';
    *w = '\0';
    return q;
}

/* Sleeps ms, ending early when a signal arrives (the test then wants the process to stop). */
static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* How many times this process has now seen id under "retry:N" (1 on the first call). */
static int bump_attempt(ctx_t *ctx, const char *id) {
    for (size_t i = 0; i < ctx->n_attempts; i++)
        if (!strcmp(ctx->attempts[i].id, id))
            return ++ctx->attempts[i].seen;
    if (ctx->n_attempts == ctx->cap_attempts) {
        size_t cap = ctx->cap_attempts ? ctx->cap_attempts * 2 : 16;
        attempt_t *a = realloc(ctx->attempts, cap * sizeof(*a));
        if (!a)
            return 1;
        ctx->attempts = a;
        ctx->cap_attempts = cap;
    }
    attempt_t *a = &ctx->attempts[ctx->n_attempts++];
    snprintf(a->id, sizeof(a->id), "%s", id);
    a->seen = 1;
    return 1;
}

static int effect(ctx_t *ctx, PGconn *conn, const char *id, const char *payload) {
    const char *p[2] = {id, payload};
    PGresult *res = PQexecParams(conn, ctx->effects_sql, 2, NULL, p, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "test-consumer: inserting the effect of %s failed: %s", id, PQresultErrorMessage(res));
    PQclear(res);
    return ok;
}

static outbox_handler_result_t handle(const outbox_message_t *msg, PGconn *conn, void *opaque) {
    ctx_t *ctx = opaque;
    const char *id = outbox_message_id(msg);
    size_t len;
    const char *raw = outbox_message_payload(msg, &len);
    char *payload = malloc(len + 1);
    if (!payload)
        return OUTBOX_HANDLER_RETRY;
    if (len)
        memcpy(payload, raw, len);
    payload[len] = '\0';
    char cmd[64];
    size_t cl = strcspn(payload, " ");
    snprintf(cmd, sizeof(cmd), "%.*s", (int)(cl < sizeof(cmd) - 1 ? cl : sizeof(cmd) - 1), payload);

    outbox_handler_result_t r = OUTBOX_HANDLER_OK;
    if (!strncmp(cmd, "retry:", 6)) {
        int n = atoi(cmd + 6), seen = bump_attempt(ctx, id);
        if (seen <= n) {
            printf("retrying %s %d\n", id, seen);
            r = OUTBOX_HANDLER_RETRY;
        } else if (!effect(ctx, conn, id, payload)) {
            r = OUTBOX_HANDLER_RETRY;
        }
    } else if (!strcmp(cmd, "ok")) {
        const char *fm = fault_mode(ctx);
        if (!strcmp(fm, "retry") && id_bucket(id) == 0 && bump_attempt(ctx, id) == 1) {
            printf("retrying %s 1\n", id);
            r = OUTBOX_HANDLER_RETRY;
        } else if (!effect(ctx, conn, id, payload)) {
            r = OUTBOX_HANDLER_RETRY;
        } else if (!strcmp(fm, "reject") && id_bucket(id) == 1) {
            printf("rejecting %s\n", id);
            r = OUTBOX_HANDLER_REJECT;
        } else if (!strcmp(fm, "slow")) {
            printf("slow %s\n", id);
            fflush(stdout);
            sleep_ms(5);
        }
    } else if (!strncmp(cmd, "sleep:", 6)) {
        if (!effect(ctx, conn, id, payload)) {
            r = OUTBOX_HANDLER_RETRY;
        } else {
            long ms = atol(cmd + 6);
            printf("sleeping %s %ld\n", id, ctx->no_sleep ? 0 : ms);
            fflush(stdout);
            if (!ctx->no_sleep && ms > 0)
                sleep_ms(ms);
        }
    } else if (!strcmp(cmd, "reject")) {
        effect(ctx, conn, id, payload); /* must be rolled back by the consumer */
        printf("rejecting %s\n", id);
        r = OUTBOX_HANDLER_REJECT;
    } else if (!strcmp(cmd, "reply")) {
        outbox_err_t err = outbox_reply(ctx->ob, conn, msg, "test.Reply", "pong", 4);
        if (err) {
            fprintf(stderr, "test-consumer: outbox_reply for %s: %s\n", id, outbox_errmsg(ctx->ob));
            r = err == OUTBOX_ERR_INVALID_ARG ? OUTBOX_HANDLER_REJECT : OUTBOX_HANDLER_RETRY;
            if (r == OUTBOX_HANDLER_REJECT)
                printf("rejecting %s\n", id);
        } else if (!effect(ctx, conn, id, payload)) {
            r = OUTBOX_HANDLER_RETRY;
        }
    } else {
        fprintf(stderr, "test-consumer: unknown command '%s' in message %s\n", cmd, id);
        printf("rejecting %s\n", id);
        r = OUTBOX_HANDLER_REJECT;
    }
    if (r == OUTBOX_HANDLER_OK)
        printf("handled %s %s\n", id, payload);
    fflush(stdout);
    free(payload);
    return r;
}

static int set(outbox_conf_t *conf, const char *key, const char *value) {
    char err[512];
    if (outbox_conf_set(conf, key, value, err, sizeof(err)) != OUTBOX_CONF_OK) {
        fprintf(stderr, "test-consumer: %s\n", err);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    const char *bootstrap = NULL, *conninfo = NULL, *schema = "outbox", *group = NULL;
    const char *effects = "effects", *log_level = NULL, *fault_file = NULL;
    const char *topics[MAX_TOPICS], *settings[MAX_SETTINGS];
    size_t n_topics = 0, n_settings = 0;
    int no_sleep = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-sleep")) {
            no_sleep = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "test-consumer: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--bootstrap"))
            bootstrap = v;
        else if (!strcmp(a, "--conninfo"))
            conninfo = v;
        else if (!strcmp(a, "--schema"))
            schema = v;
        else if (!strcmp(a, "--group"))
            group = v;
        else if (!strcmp(a, "--effects"))
            effects = v;
        else if (!strcmp(a, "--log-level"))
            log_level = v;
        else if (!strcmp(a, "--fault-file"))
            fault_file = v;
        else if (!strcmp(a, "--topic") && n_topics < MAX_TOPICS)
            topics[n_topics++] = v;
        else if (!strcmp(a, "-X") && n_settings < MAX_SETTINGS && strchr(v, '='))
            settings[n_settings++] = v;
        else {
            fprintf(stderr, "test-consumer: unexpected argument %s %s\n", a, v);
            usage(stderr);
            return 2;
        }
    }
    if (!bootstrap || !conninfo || !group || !n_topics) {
        fprintf(stderr, "test-consumer: --bootstrap, --conninfo, --group and --topic are required\n");
        usage(stderr);
        return 2;
    }

    /* Stop polling on the first signal; no SA_RESTART, so a sleeping handler wakes up. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    ctx_t ctx = {0};
    ctx.no_sleep = no_sleep;
    ctx.fault_file = fault_file;
    char *sq = quote_ident(schema), *tq = quote_ident(effects);
    if (!sq || !tq || asprintf(&ctx.effects_sql, "INSERT INTO %s.%s (message_id, payload) VALUES ($1, $2)",
                               sq, tq) < 0) {
        fprintf(stderr, "test-consumer: out of memory\n");
        return 1;
    }
    free(sq);
    free(tq);

    char err[512];
    outbox_conf_t *wconf = outbox_conf_new();
    if (!wconf || !set(wconf, "outbox.schema", schema) || (log_level && !set(wconf, "log.level", log_level)))
        return 2;
    ctx.ob = outbox_new(wconf, err, sizeof(err));
    if (!ctx.ob) {
        fprintf(stderr, "test-consumer: outbox_new: %s\n", err);
        return 1;
    }

    outbox_conf_t *conf = outbox_conf_new();
    if (!conf || !set(conf, "outbox.schema", schema) || !set(conf, "pg.conninfo", conninfo) ||
        !set(conf, "consumer.group.id", group) || !set(conf, "kafka.bootstrap.servers", bootstrap) ||
        (log_level && !set(conf, "log.level", log_level)))
        return 2;
    for (size_t i = 0; i < n_settings; i++) {
        char key[256];
        size_t kl = (size_t)(strchr(settings[i], '=') - settings[i]);
        snprintf(key, sizeof(key), "%.*s", (int)kl, settings[i]);
        if (!set(conf, key, settings[i] + kl + 1))
            return 2;
    }
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "test-consumer: outbox_consumer_new: %s\n", err);
        outbox_conf_destroy(conf);
        return 1;
    }
    if (outbox_consumer_subscribe(c, topics, n_topics) != OUTBOX_OK) {
        fprintf(stderr, "test-consumer: subscribe: %s\n", outbox_consumer_errmsg(c));
        outbox_consumer_destroy(c);
        return 1;
    }
    while (!stop) {
        outbox_err_t e = outbox_consumer_poll(c, handle, &ctx, 100);
        if (e != OUTBOX_OK) {
            /* The consumer redelivers the message in hand; keep going, as a service would. */
            fprintf(stderr, "test-consumer: poll: %s: %s\n", outbox_err2str(e), outbox_consumer_errmsg(c));
            sleep_ms(100);
        }
    }
    outbox_consumer_stats_t st;
    outbox_consumer_stats(c, &st);
    outbox_consumer_destroy(c);
    printf("stats processed=%lld duplicates=%lld retried=%lld rejected=%lld\n", (long long)st.processed,
           (long long)st.duplicates, (long long)st.retried, (long long)st.rejected);
    fflush(stdout);
    outbox_destroy(ctx.ob);
    free(ctx.effects_sql);
    free(ctx.attempts);
    return 0;
}
