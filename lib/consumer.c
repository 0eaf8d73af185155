/*
 * The consumer: each Kafka message is processed once in effect, by recording its id in
 * <schema>.processed in the same PostgreSQL transaction as the handler's work, and committing the
 * Kafka offset only after that transaction committed.  Also outbox_reply() and pruning.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "consumer_park.h"
#include "outbox_int.h"

/* The dedup record goes out in libpq's pipeline mode, new in libpq 14. */
#ifndef LIBPQ_HAS_PIPELINING
#error "liboutbox needs libpq 14 or newer (pipeline mode): install a newer libpq-dev"
#endif

#define FAC "CONSUMER"
#define MAX_PER_POLL 1000
/* Session setup retries wait consumer.retry.backoff.ms at first but never less than this, so that
 * retry.backoff.ms=0 (redeliver at once) does not turn a missing schema into a connection storm... */
#define SETUP_BACKOFF_MIN_MS 100
/* ... and double up to this: a schema migrated or a grant given later is noticed within 30 s. */
#define SETUP_BACKOFF_MAX_MS 30000

typedef struct {
    char *topic;
    int32_t partition;
    int64_t resume_ms;
} paused_t;

struct outbox_consumer_s {
    outbox_conf_t *conf;
    char *group;
    char *conninfo;
    char *schema_q;
    PGconn *pg;              /* NULL after a session was dropped: pg_ensure connects again */
    outbox_pg_limits_t lim; /* pg.timeout.ms: the deadline of the library's own statements */
    rd_kafka_t *rk;
    outbox_consumer_stats_t stats;
    paused_t *paused;
    size_t paused_cnt, paused_cap;
    int major_max;
    int retry_backoff_ms;
    /* Session setup (connect, then check the schema and privileges) backs off after a failure:
     * no attempt before setup_next_ms, and each failure doubles the wait. */
    int64_t setup_next_ms;
    int setup_backoff_ms;   /* the wait after the next failure; 0: the last setup succeeded */
    outbox_err_t setup_err; /* the last failure, reported while waiting */
    char setup_errstr[OUTBOX_ERRSTR_SIZE];
    char sql_dedup[256];
    char sql_reject[512];
    char errstr[OUTBOX_ERRSTR_SIZE];
    outbox_park_t *park; /* consumer.reject.policy=park-key (consumer_park.c); NULL: dead-letter */
};

static const char *const consumer_defaults[] = {
    "enable.auto.commit", "false",
    "auto.offset.reset", "earliest",
    /* Offsets are stored by us, after the message's transaction committed. */
    "enable.auto.offset.store", "false",
    NULL,
};

static outbox_err_t cerr(outbox_consumer_t *c, outbox_err_t err, const char *fmt, ...)
    OUTBOX_PRINTF(3, 4);
static outbox_err_t cerr(outbox_consumer_t *c, outbox_err_t err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof(c->errstr), fmt, ap);
    va_end(ap);
    return err;
}

/* Forgets the retry pauses of the given partitions (they are being revoked). */
static void forget_paused(outbox_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
    for (size_t i = 0; i < c->paused_cnt;) {
        if (rd_kafka_topic_partition_list_find(parts, c->paused[i].topic, c->paused[i].partition)) {
            free(c->paused[i].topic);
            c->paused[i] = c->paused[--c->paused_cnt];
        } else {
            i++;
        }
    }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
    outbox_consumer_t *c = opaque;
    bool cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (cooperative)
            rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, parts));
        else
            rd_kafka_assign(rk, parts);
        /* librdkafka keeps an application pause across unassign and assign: a partition paused
         * for a retry backoff and revoked would never fetch again.  Its retry starts afresh from
         * the committed offset, so resume it. */
        rd_kafka_resume_partitions(rk, parts);
        outbox_park_assigned(c->park);
        outbox_log(c->conf, 6, FAC, "msg=\"partitions assigned\" count=%d", parts->cnt);
        return;
    }
    /* Revoked: commit what our committed transactions covered before another member takes over. */
    rd_kafka_commit(rk, NULL, 0);
    forget_paused(c, parts);
    outbox_park_revoked(c->park, parts);
    if (cooperative)
        rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
    else
        rd_kafka_assign(rk, NULL);
    outbox_log(c->conf, 6, FAC, "msg=\"partitions revoked\" count=%d", parts->cnt);
}

/* @locality the thread in outbox_consumer_poll (or in destroy's close): log.queue keeps librdkafka
 * from calling it on its own threads, where neither rd_kafka_opaque() nor the user's log_cb may run. */
static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    const outbox_consumer_t *c = rd_kafka_opaque(rk);
    outbox_kafka_log(c->conf, level, fac, buf);
}

/* libpq's notice receiver for the consumer's session, whose default prints to stderr: one logfmt
 * line per NOTICE, WARNING, INFO... from the server, the handler's statements' included, and
 * what the server sends unasked (e.g. "terminating connection due to administrator command").
 * @locality the thread in the libpq call on c->pg: the one in outbox_consumer_poll (or new). */
static void notice_cb(void *arg, const PGresult *res) {
    const outbox_consumer_t *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *text = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    if (!sev)
        sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    if (!text)
        text = PQresultErrorMessage(res);
    /* As syslog levels: WARNING (and anything graver) 4, NOTICE 5, INFO and LOG 6, DEBUG 7. */
    int level = !sev                                           ? 5
                : !strncmp(sev, "DEBUG", 5)                    ? 7
                : !strcmp(sev, "LOG") || !strcmp(sev, "INFO") ? 6
                : !strcmp(sev, "NOTICE")                       ? 5
                                                               : 4;
    char t[512], d[512], h[512], sv[32];
    outbox_log(c->conf, level, FAC, "msg=\"PostgreSQL notice\" severity=%s sqlstate=%s text=\"%s\"%s%s%s%s%s%s",
               sev ? outbox_logfmt_value(sev, sv, sizeof(sv)) : "-", state && *state ? state : "-",
               outbox_logfmt_value(text, t, sizeof(t)), detail ? " detail=\"" : "",
               detail ? outbox_logfmt_value(detail, d, sizeof(d)) : "", detail ? "\"" : "",
               hint ? " hint=\"" : "", hint ? outbox_logfmt_value(hint, h, sizeof(h)) : "", hint ? "\"" : "");
}

/* The primary text of a failed result, without libpq's "ERROR:  " and trailing newline. */
static const char *pg_primary(const PGresult *res) {
    const char *t = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return t ? t : PQresultErrorMessage(res);
}

/* Checks, on a new session, that the consumer can work in its schema: that <schema>.processed and
 * <schema>.consumer_dead_letters exist and that the session's role may INSERT into them.  A
 * failure names the cause and the fix: a missing table means a schema that was never migrated,
 * a missing privilege a role without the consumer's grants. */
static outbox_err_t session_check(outbox_consumer_t *c, const char *schema) {
    static const char sql[] =
        "SELECT p IS NOT NULL, d IS NOT NULL, "
        "CASE WHEN p IS NULL THEN false ELSE has_table_privilege(p, 'INSERT') END, "
        "CASE WHEN d IS NULL THEN false ELSE has_table_privilege(d, 'INSERT') END, current_user "
        "FROM (SELECT to_regclass($1) AS p, to_regclass($2) AS d) AS t";
    char p_name[160], d_name[160], why[256];
    snprintf(p_name, sizeof(p_name), "%s.processed", c->schema_q);
    snprintf(d_name, sizeof(d_name), "%s.consumer_dead_letters", c->schema_q);
    const char *params[2] = {p_name, d_name};
    PGresult *res = outbox_pg_exec(c->pg, &c->lim, sql, 2, params, NULL, NULL, 0, why, sizeof(why));
    if (!res)
        return cerr(c, OUTBOX_ERR_CONNECTION, "checking schema \"%s\" failed: %s", schema, why);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        outbox_err_t err;
        if (state && !strcmp(state, "42501")) /* no USAGE on the schema */
            err = cerr(c, OUTBOX_ERR_PG, "%s: the role lacks USAGE on schema \"%s\"; grant the consumer's "
                       "privileges, `outbox-relay grants --consumer ROLE` prints them", pg_primary(res), schema);
        else
            err = cerr(c, PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION,
                       "checking schema \"%s\" failed: %s", schema, pg_primary(res));
        PQclear(res);
        return err;
    }
    bool has_p = *PQgetvalue(res, 0, 0) == 't', has_d = *PQgetvalue(res, 0, 1) == 't';
    bool ins_p = *PQgetvalue(res, 0, 2) == 't', ins_d = *PQgetvalue(res, 0, 3) == 't';
    char role[128];
    snprintf(role, sizeof(role), "%s", PQgetvalue(res, 0, 4));
    PQclear(res);
    if (!has_p || !has_d)
        return cerr(c, OUTBOX_ERR_SCHEMA, "schema \"%s\" is not migrated (it has no %s table): run "
                    "`outbox-relay migrate` (or outbox_migrate()) with outbox.schema=%s, or correct "
                    "outbox.schema", schema, !has_p ? "processed" : "consumer_dead_letters", schema);
    if (!ins_p || !ins_d)
        return cerr(c, OUTBOX_ERR_PG, "role \"%s\" lacks INSERT on \"%s\".%s: grant the consumer's "
                    "privileges, `outbox-relay grants --consumer %s` prints them", role, schema,
                    !ins_p ? "processed" : "consumer_dead_letters", role);
    return OUTBOX_OK;
}

/* Ends the session.  Used when a statement of ours got no answer within pg.timeout.ms or the
 * connection failed: the session's state is then unknown, and the server rolls back whatever
 * transaction it had open when it notices.  The message in hand is redelivered (its offset is
 * stored only after a COMMIT that answered), and the dedup record decides on redelivery whether
 * a COMMIT that went unanswered took effect. */
static void pg_drop(outbox_consumer_t *c) {
    PQfinish(c->pg);
    c->pg = NULL;
}

/* Sets up a session if there is none: connects with outbox_pg_connect's bounds (connect_timeout,
 * keepalives, tcp_user_timeout, which the user's conninfo may override) within pg.timeout.ms, then
 * checks the schema (session_check).  After a failure the next attempt waits, doubling from
 * consumer.retry.backoff.ms up to SETUP_BACKOFF_MAX_MS; until then this fails at once with the
 * last failure's error, so a missing schema or grant costs one connection per wait, not one per
 * message.  The session stays non-blocking, so that the deadline covers sending our statements
 * as well as waiting for their answers; the handler alone gets it in blocking mode (see
 * call_handler). */
static bool pg_ensure(outbox_consumer_t *c) {
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK)
        return true;
    pg_drop(c);
    int64_t now = outbox_mono_ms();
    if (c->setup_backoff_ms && now < c->setup_next_ms) {
        cerr(c, c->setup_err, "%s (next attempt in %lld ms)", c->setup_errstr, (long long)(c->setup_next_ms - now));
        return false;
    }
    char why[OUTBOX_ERRSTR_SIZE - 64];
    outbox_err_t err;
    if (!(c->pg = outbox_pg_connect(c->conninfo, NULL, &c->lim, why, sizeof(why)))) {
        err = cerr(c, OUTBOX_ERR_CONNECTION, "cannot connect to PostgreSQL: %s", why);
    } else {
        PQsetNoticeReceiver(c->pg, notice_cb, c);
        if (!(err = session_check(c, outbox_conf_str(c->conf, "outbox.schema")))) {
            c->setup_backoff_ms = 0;
            return true;
        }
        pg_drop(c);
    }
    int wait = c->setup_backoff_ms ? c->setup_backoff_ms
               : c->retry_backoff_ms > SETUP_BACKOFF_MIN_MS ? c->retry_backoff_ms
                                                            : SETUP_BACKOFF_MIN_MS;
    c->setup_err = err;
    c->setup_next_ms = outbox_mono_ms() + wait;
    c->setup_backoff_ms = wait >= SETUP_BACKOFF_MAX_MS / 2 ? SETUP_BACKOFF_MAX_MS : wait * 2;
    snprintf(c->setup_errstr, sizeof(c->setup_errstr), "%s", c->errstr);
    char e[OUTBOX_ERRSTR_SIZE];
    outbox_log(c->conf, 3, FAC, "msg=\"cannot set up the PostgreSQL session; will try again\" retry_in_ms=%d "
               "error=\"%s\"", wait, outbox_logfmt_value(c->errstr, e, sizeof(e)));
    return false;
}

outbox_consumer_t *outbox_consumer_new(outbox_conf_t *conf, char *errstr, size_t errstr_size) {
    if (!conf) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: conf is NULL; set at least "
                        "consumer.group.id, pg.conninfo and kafka.bootstrap.servers");
        return NULL;
    }
    const char *group = outbox_conf_str(conf, "consumer.group.id");
    if (!*group) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: consumer.group.id is not set; it "
                        "names the Kafka consumer group and the duplicate-detection namespace");
        return NULL;
    }
    const char *ci = outbox_conf_str(conf, "pg.conninfo");
    if (!*ci && getenv("OUTBOX_PG_CONNINFO"))
        ci = getenv("OUTBOX_PG_CONNINFO");
    if (!*ci) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: pg.conninfo is not set (nor "
                        "OUTBOX_PG_CONNINFO): the consumer needs its own PostgreSQL connection");
        return NULL;
    }
    size_t n = 0;
    if (outbox_conf_get(conf, "kafka.bootstrap.servers", NULL, &n) != OUTBOX_CONF_OK) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: kafka.bootstrap.servers is not set");
        return NULL;
    }
    outbox_consumer_t *c = calloc(1, sizeof(*c));
    if (!c) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: out of memory");
        return NULL;
    }
    c->conf = conf; /* borrowed for logging until we succeed, owned from then on */
    c->group = outbox_strdup(group);
    c->conninfo = outbox_strdup(ci);
    c->schema_q = outbox_quote_ident(outbox_conf_str(conf, "outbox.schema"));
    c->major_max = (int)outbox_conf_int(conf, "consumer.schema.major.max");
    c->retry_backoff_ms = (int)outbox_conf_int(conf, "consumer.retry.backoff.ms");
    /* The consumer sets no statement_timeout: pg.timeout.ms bounds its own statements (BEGIN, the
     * dedup and dead-letter INSERTs, COMMIT, ROLLBACK), never the handler's. */
    c->lim.timeout_ms = outbox_conf_int(conf, "pg.timeout.ms");
    if (!c->group || !c->conninfo || !c->schema_q) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: out of memory");
        goto fail;
    }
    snprintf(c->sql_dedup, sizeof(c->sql_dedup),
             "INSERT INTO %s.processed (consumer, message_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING",
             c->schema_q);
    snprintf(c->sql_reject, sizeof(c->sql_reject),
             "INSERT INTO %s.consumer_dead_letters (consumer, message_id, reason, raw, topic, "
             "kafka_partition, kafka_offset) VALUES ($1, $2, $3, $4, $5, $6, $7)", c->schema_q);
    bool nomem;
    c->park = outbox_park_new(&(outbox_park_env_t){conf, c->group, c->schema_q, &c->lim, &c->stats, c->errstr,
                                                   sizeof(c->errstr), c->major_max, c->retry_backoff_ms}, &nomem);
    if (nomem) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: out of memory");
        goto fail;
    }
    /* A server that cannot be reached fails here; a schema that is not migrated yet, or a role
     * without its grants, is logged and waited for: polls retry the setup with backoff, so a
     * consumer deployed before the migration starts working once it ran. */
    if (!pg_ensure(c) && c->setup_err == OUTBOX_ERR_CONNECTION) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: %s", c->errstr);
        goto fail;
    }
    rd_kafka_conf_t *kc = outbox_kafka_conf(conf, consumer_defaults, errstr, errstr_size);
    if (!kc)
        goto fail;
    char why[256];
    if (rd_kafka_conf_set(kc, "group.id", group, why, sizeof(why)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(kc, "enable.auto.offset.store", "false", why, sizeof(why)) != RD_KAFKA_CONF_OK) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: %s", why);
        rd_kafka_conf_destroy(kc);
        goto fail;
    }
    rd_kafka_conf_set_opaque(kc, c);
    rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
    if (outbox_kafka_conf_logs(kc, kafka_log_cb, why, sizeof(why))) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: %s", why);
        rd_kafka_conf_destroy(kc);
        goto fail;
    }
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, why, sizeof(why));
    if (!c->rk) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: %s", why);
        rd_kafka_conf_destroy(kc);
        goto fail;
    }
    /* Log lines wait in librdkafka's log queue until it is set; the main queue, forwarded to the
     * consumer queue below, hands them to rd_kafka_consumer_poll's caller. */
    rd_kafka_resp_err_t lerr = rd_kafka_set_log_queue(c->rk, NULL);
    if (lerr) {
        outbox_snprintf(errstr, errstr_size, "outbox_consumer_new: rd_kafka_set_log_queue: %s",
                        rd_kafka_err2str(lerr));
        goto fail;
    }
    rd_kafka_poll_set_consumer(c->rk);
    /* A setup failure that did not fail the call was logged, and the first poll reports it: a
     * new consumer has no error of its own. */
    c->errstr[0] = '\0';
    return c; /* conf is owned from here on */
fail:
    if (c->rk)
        rd_kafka_destroy(c->rk);
    PQfinish(c->pg);
    outbox_park_destroy(c->park);
    free(c->group);
    free(c->conninfo);
    free(c->schema_q);
    free(c);
    return NULL;
}

void outbox_consumer_destroy(outbox_consumer_t *c) {
    if (!c)
        return;
    if (c->rk) {
        rd_kafka_commit(c->rk, NULL, 0);
        rd_kafka_consumer_close(c->rk);
        rd_kafka_destroy(c->rk);
    }
    PQfinish(c->pg);
    for (size_t i = 0; i < c->paused_cnt; i++)
        free(c->paused[i].topic);
    free(c->paused);
    outbox_park_destroy(c->park);
    free(c->group);
    free(c->conninfo);
    free(c->schema_q);
    outbox_conf_destroy(c->conf);
    free(c);
}

const char *outbox_consumer_errmsg(const outbox_consumer_t *c) {
    return c ? c->errstr : "consumer handle is NULL";
}

void outbox_consumer_stats(const outbox_consumer_t *c, outbox_consumer_stats_t *stats) {
    if (c && stats)
        *stats = c->stats;
}

outbox_err_t outbox_consumer_subscribe(outbox_consumer_t *c, const char *const *topics, size_t n) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    if (!topics || !n)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: no topics given");
    /* Every name is checked before librdkafka sizes a list by n: a huge n (a negative count) made
     * it abort on the allocation even when the first topic was already invalid. */
    for (size_t i = 0; i < n; i++) {
        char why[160];
        if (!topics[i] || !outbox_topic_valid(topics[i], why, sizeof(why)))
            return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: topic %zu \"%.300s\" %s", i,
                        topics[i] ? topics[i] : "(null)", topics[i] ? why : "is NULL");
    }
    if (n > INT_MAX)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: n is %zu, more topics than "
                    "librdkafka takes", n);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return cerr(c, OUTBOX_ERR_KAFKA, "outbox_consumer_subscribe: %s", rd_kafka_err2str(err));
    return OUTBOX_OK;
}

/* ---- per-message processing ----------------------------------------------------------------- */

static void store_offset(outbox_consumer_t *c, const rd_kafka_message_t *m) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition)->offset = m->offset + 1;
    rd_kafka_offsets_store(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Rewinds the message's partition to it, so it is delivered again (and nothing after it first);
 * with pause_ms > 0 the partition also rests that long. */
static void redeliver(outbox_consumer_t *c, const rd_kafka_message_t *m, int pause_ms) {
    const char *topic = rd_kafka_topic_name(m->rkt);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, m->partition)->offset = m->offset;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(c->rk, l, 5000);
    if (e) {
        char why[256];
        outbox_log(c->conf, 3, FAC, "msg=\"seek failed\" topic=%s partition=%d offset=%lld error=\"%s\"",
                   topic, (int)m->partition, (long long)m->offset,
                   outbox_logfmt_value(rd_kafka_error_string(e), why, sizeof(why)));
        rd_kafka_error_destroy(e);
    }
    if (pause_ms > 0 && rd_kafka_pause_partitions(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (c->paused_cnt == c->paused_cap) {
            size_t cap = c->paused_cap ? c->paused_cap * 2 : 8;
            paused_t *p = realloc(c->paused, cap * sizeof(*p));
            if (p) {
                c->paused = p;
                c->paused_cap = cap;
            }
        }
        if (c->paused_cnt < c->paused_cap) {
            c->paused[c->paused_cnt].topic = outbox_strdup(topic);
            c->paused[c->paused_cnt].partition = m->partition;
            c->paused[c->paused_cnt].resume_ms = outbox_mono_ms() + pause_ms;
            c->paused_cnt++;
        } else {
            rd_kafka_resume_partitions(c->rk, l); /* cannot track it: do not leave it paused */
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void resume_due(outbox_consumer_t *c) {
    int64_t now = outbox_mono_ms();
    for (size_t i = 0; i < c->paused_cnt;) {
        if (c->paused[i].resume_ms > now) {
            i++;
            continue;
        }
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, c->paused[i].topic, c->paused[i].partition);
        rd_kafka_resume_partitions(c->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        free(c->paused[i].topic);
        c->paused[i] = c->paused[--c->paused_cnt];
    }
}

/* The outcome of one of our statements: res as an outbox_pg_* call returned it (NULL: no answer,
 * why says why), freed here.  On failure the error is recorded as "<what> failed: ..." and a
 * session that gave no answer, or broke, is dropped. */
static bool stmt_ok(outbox_consumer_t *c, PGresult *res, const char *why, const char *what) {
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        bool lost = !res || PQstatus(c->pg) != CONNECTION_OK;
        cerr(c, lost ? OUTBOX_ERR_CONNECTION : OUTBOX_ERR_PG, "%s failed: %s", what,
             res ? PQresultErrorMessage(res) : why);
        if (lost)
            pg_drop(c);
    }
    PQclear(res);
    return ok;
}

static bool exec_ok(outbox_consumer_t *c, const char *sql) {
    char why[256];
    if (!c->pg)
        return false; /* dropped earlier in this message: the error is recorded */
    return stmt_ok(c, outbox_pg_exec_simple(c->pg, &c->lim, sql, why, sizeof(why)), why, sql);
}

/* Ends the open transaction, if the session is still there; a failure is recorded only if no
 * earlier error of this poll was, since that one is what made us roll back. */
static void rollback(outbox_consumer_t *c) {
    char why[256], keep[sizeof(c->errstr)];
    if (!c->pg)
        return;
    memcpy(keep, c->errstr, sizeof(keep));
    if (!stmt_ok(c, outbox_pg_exec_simple(c->pg, &c->lim, "ROLLBACK", why, sizeof(why)), why, "ROLLBACK") &&
        *keep)
        memcpy(c->errstr, keep, sizeof(keep));
}

/* The Kafka "id" header, if it is plain enough to store as text. */
static const char *header_id(const rd_kafka_headers_t *h, char out[65]) {
    const void *v;
    size_t len;
    if (!h || rd_kafka_header_get_last(h, "id", &v, &len) || !v || len > 64)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (((const unsigned char *)v)[i] < 0x20 || ((const unsigned char *)v)[i] > 0x7e)
            return NULL;
    memcpy(out, v, len);
    out[len] = '\0';
    return out;
}

/* s fit for a dead letter's reason, a text column that refuses invalid UTF-8 (which would fail the
 * INSERT and redeliver the record for ever): printable ASCII, other bytes as '?', at most 100
 * bytes so the rest of the reason is never cut off.  An envelope's strings are unchecked bytes. */
static const char *reason_text(const char *s, char out[101]) {
    size_t n = 0;
    for (; s[n] && n < 100; n++)
        out[n] = s[n] >= 0x20 && s[n] <= 0x7e ? s[n] : '?';
    out[n] = '\0';
    return out;
}

bool outbox_consumer_verdict(const void *value, size_t len, const rd_kafka_headers_t *headers,
                             int major_max, outbox_verdict_t *v) {
    v->msg = NULL;
    v->dead_id = NULL;
    v->dead_id_valid = false;
    v->id_buf[0] = v->reason[0] = '\0';
    outbox_message_t *msg;
    if (outbox_message_decode(&msg, value, len, v->reason, sizeof(v->reason)) != OUTBOX_OK) {
        v->dead_id = header_id(headers, v->id_buf);
        return false;
    }
    if (major_max > 0 && atoi(msg->schema_version) > major_max) {
        char type[101];
        snprintf(v->reason, sizeof(v->reason), "schema version %s of %s has a major version above "
                 "consumer.schema.major.max=%d", msg->schema_version, reason_text(msg->type, type),
                 major_max);
        memcpy(v->id_buf, msg->id, sizeof(msg->id));
        v->dead_id = v->id_buf;
        v->dead_id_valid = true;
        outbox_message_destroy(msg);
        return false;
    }
    v->msg = msg;
    return true;
}

/* Records a rejected message (with its raw bytes) and, when it has a valid id, marks it processed
 * so a redelivery is skipped; one transaction.  Returns false when PostgreSQL failed. */
static bool record_rejected(outbox_consumer_t *c, const rd_kafka_message_t *m, const char *msg_id,
                            bool valid_id, const char *reason) {
    char part[16], off[24];
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    const char *p[7] = {c->group, msg_id, reason, m->payload ? m->payload : "", rd_kafka_topic_name(m->rkt),
                        part, off};
    int lens[7] = {0, 0, 0, (int)m->len, 0, 0, 0};
    int fmts[7] = {0, 0, 0, 1, 0, 0, 0};
    char why[256];
    if (!exec_ok(c, "BEGIN"))
        return false;
    bool ok = stmt_ok(c, outbox_pg_exec(c->pg, &c->lim, c->sql_reject, 7, p, lens, fmts, 0, why, sizeof(why)),
                      why, "recording a rejected message");
    if (ok && valid_id) {
        const char *d[2] = {c->group, msg_id};
        ok = stmt_ok(c, outbox_pg_exec(c->pg, &c->lim, c->sql_dedup, 2, d, NULL, NULL, 0, why, sizeof(why)),
                     why, "recording a rejected message as processed");
    }
    if (!ok) {
        rollback(c);
        return false;
    }
    if (!exec_ok(c, "COMMIT"))
        return false;
    c->stats.rejected++;
    char rsn[512];
    outbox_log(c->conf, 4, FAC, "msg=\"rejected a message\" topic=%s partition=%d offset=%lld id=%s "
               "reason=\"%s\"", rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
               msg_id ? msg_id : "-", outbox_logfmt_value(reason, rsn, sizeof(rsn)));
    return true;
}

/* A PostgreSQL failure while processing m: roll back, redeliver m later, report the error. */
static outbox_err_t pg_failed(outbox_consumer_t *c, const rd_kafka_message_t *m) {
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK)
        rollback(c);
    redeliver(c, m, c->retry_backoff_ms);
    char why[sizeof(c->errstr)];
    outbox_log(c->conf, 3, FAC, "msg=\"processing failed, will redeliver\" topic=%s partition=%d "
               "offset=%lld error=\"%s\"", rd_kafka_topic_name(m->rkt), (int)m->partition,
               (long long)m->offset, outbox_logfmt_value(c->errstr, why, sizeof(why)));
    return c->pg && PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION;
}

/* BEGIN and the dedup record's INSERT, sent as one pipeline: one round trip, within pg.timeout.ms.
 * Returns the INSERT's result (its row count says whether the record is new), or NULL with the
 * error recorded; a session that gave no answer, or whose pipeline cannot be read to its end, is
 * dropped. */
static PGresult *begin_and_record(outbox_consumer_t *c, const char *id) {
    const char *d[2] = {c->group, id};
    static const char *const what[2] = {"BEGIN", "recording the message as processed"};
    PGresult *res[2] = {NULL, NULL}, *sync;
    char why[256] = "";
    const char *step = "sending BEGIN";
    if (!PQenterPipelineMode(c->pg) || !PQsendQueryParams(c->pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0))
        goto lost;
    step = "sending the dedup record's INSERT";
    if (!PQsendQueryParams(c->pg, c->sql_dedup, 2, NULL, d, NULL, NULL, 0))
        goto lost;
    step = "sending the pipeline's Sync";
    if (!PQpipelineSync(c->pg))
        goto lost;
    /* The server holds a pipeline's answers until the Sync: they come together, so a wait that
     * ends without one is the pipeline's, not BEGIN's alone. */
    step = "BEGIN and the dedup record's INSERT";
    for (int q = 0; q < 2; q++)
        if (!(res[q] = outbox_pg_result(c->pg, &c->lim, why, sizeof(why))))
            goto lost;
    step = "the pipeline's Sync";
    if (outbox_pg_wait(c->pg, &c->lim, why, sizeof(why)))
        goto lost;
    sync = PQgetResult(c->pg);
    bool synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced || !PQexitPipelineMode(c->pg))
        goto lost;
    for (int q = 0; q < 2; q++) {
        if (PQresultStatus(res[q]) != PGRES_COMMAND_OK) {
            cerr(c, PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION,
                 "%s for message %s failed: %s", what[q], id, PQresultErrorMessage(res[q]));
            PQclear(res[0]);
            PQclear(res[1]);
            return NULL;
        }
    }
    PQclear(res[0]);
    return res[1];
lost:
    cerr(c, OUTBOX_ERR_CONNECTION, "%s for message %s failed: %s", step, id, *why ? why : PQerrorMessage(c->pg));
    PQclear(res[0]);
    PQclear(res[1]);
    pg_drop(c); /* results that cannot be read: start afresh on a new session */
    return NULL;
}

/* Runs the handler with the session in libpq's default, blocking mode.  Non-blocking mode changes
 * what some synchronous calls mean: PQexec and friends still wait (PQgetResult waits for the
 * socket itself), but PQputCopyData may return 0 ("not queued, try again"), PQputnbytes fails,
 * and PQfn, under every lo_* large-object call, fails as soon as its request does not fit the
 * socket at once.  The handler's statements are its own business, unbounded by pg.timeout.ms.
 * Our statements go back to non-blocking mode afterwards.  Returns the handler's verdict;
 * *ts gets the transaction status it left. */
static outbox_handler_result_t call_handler(outbox_consumer_t *c, const outbox_message_t *msg,
                                            outbox_handler_cb handler, void *opaque,
                                            PGTransactionStatusType *ts) {
    PQsetnonblocking(c->pg, 0); /* cannot fail: our statements left nothing unsent */
    outbox_handler_result_t r = handler(msg, c->pg, opaque);
    *ts = PQtransactionStatus(c->pg);
    /* Flushes what the handler left unsent; fails only on a broken session, which our next
     * statement reports. */
    PQsetnonblocking(c->pg, 1);
    return r;
}

/* ---- hooks of consumer_park.c (consumer.reject.policy=park-key) ------------------------------ */

typedef enum { PARK_NO, PARK_HELD, PARK_FAILED } park_hold_t;

/* A message of a parked key is stored behind it and its offset stored: the consumer moves on. */
static park_hold_t park_hold(outbox_consumer_t *c, const rd_kafka_message_t *m) {
    bool held = false;
    if (!c->park)
        return PARK_NO;
    outbox_err_t err = outbox_park_held(c->park, c->pg, c->rk, m, &held);
    if (!err && held)
        err = outbox_park_store(c->park, c->pg, m, NULL, NULL);
    if (err == OUTBOX_ERR_CONNECTION)
        pg_drop(c);
    if (err)
        return PARK_FAILED;
    if (held)
        store_offset(c, m);
    return held ? PARK_HELD : PARK_NO;
}

/* A rejected message parks its key under park-key; without a key, or under dead-letter, it is a
 * dead letter as before.  Returns false when PostgreSQL failed. */
static bool reject(outbox_consumer_t *c, const rd_kafka_message_t *m, const char *msg_id, bool valid_id,
                   const char *reason) {
    if (!outbox_park_can_park(c->park, m))
        return record_rejected(c, m, msg_id, valid_id, reason);
    outbox_err_t err = outbox_park_store(c->park, c->pg, m, msg_id, reason);
    if (err == OUTBOX_ERR_CONNECTION)
        pg_drop(c);
    if (!err)
        c->stats.rejected++;
    return !err;
}

/* Retries the released keys before new messages are read. */
static outbox_err_t park_poll(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque) {
    if (!c->park)
        return OUTBOX_OK;
    if (!pg_ensure(c))
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    outbox_err_t err = outbox_park_poll(c->park, c->pg, c->rk, handler, opaque);
    if (err == OUTBOX_ERR_CONNECTION)
        pg_drop(c);
    return err;
}

outbox_err_t outbox_consumer_parked_retry(outbox_consumer_t *c, const void *key, size_t len) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    if (!key && len)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: key is NULL but len is %zu", len);
    if (len > INT_MAX)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: len %zu is not a key length", len);
    if (!c->park)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: consumer.reject.policy is not "
                    "park-key: this consumer parks no key");
    if (!pg_ensure(c))
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    outbox_err_t err = outbox_park_release(c->park, c->pg, key, len);
    if (err == OUTBOX_ERR_CONNECTION)
        pg_drop(c);
    return err;
}

static outbox_err_t process(outbox_consumer_t *c, const rd_kafka_message_t *m, outbox_handler_cb handler,
                            void *opaque) {
    if (!pg_ensure(c)) {
        /* The partition rests until the next setup attempt is due, at least retry.backoff.ms. */
        int64_t due = c->setup_next_ms - outbox_mono_ms();
        redeliver(c, m, due > c->retry_backoff_ms ? (int)due : c->retry_backoff_ms);
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    }
    switch (park_hold(c, m)) {
    case PARK_HELD:
        return OUTBOX_OK;
    case PARK_FAILED:
        return pg_failed(c, m);
    case PARK_NO:
        break;
    }
    rd_kafka_headers_t *headers = NULL;
    if (rd_kafka_message_headers(m, &headers))
        headers = NULL; /* none, or unparsable: then there is no "id" header to fall back on */
    outbox_verdict_t v;
    if (!outbox_consumer_verdict(m->payload, m->len, headers, c->major_max, &v)) {
        if (!reject(c, m, v.dead_id, v.dead_id_valid, v.reason))
            return pg_failed(c, m);
        store_offset(c, m);
        return OUTBOX_OK;
    }
    outbox_message_t *msg = v.msg;
    /* Borrowed from the record, which outlives the handler call (outbox_message_kafka_topic). */
    msg->kafka_topic = rd_kafka_topic_name(m->rkt);
    msg->kafka_partition = m->partition;
    msg->kafka_offset = m->offset;
    PGresult *res = begin_and_record(c, msg->id);
    if (!res) {
        outbox_message_destroy(msg);
        return pg_failed(c, m);
    }
    bool duplicate = strcmp(PQcmdTuples(res), "1") != 0;
    PQclear(res);
    if (duplicate) {
        rollback(c);
        c->stats.duplicates++;
        outbox_log(c->conf, 7, FAC, "msg=\"duplicate skipped\" id=%s", msg->id);
        outbox_message_destroy(msg);
        store_offset(c, m);
        return OUTBOX_OK;
    }
    PGTransactionStatusType ts;
    outbox_handler_result_t r = call_handler(c, msg, handler, opaque, &ts);
    outbox_err_t err = OUTBOX_OK;
    if (r == OUTBOX_HANDLER_OK && ts == PQTRANS_INTRANS) {
        if (exec_ok(c, "COMMIT")) {
            c->stats.processed++;
            store_offset(c, m);
        } else {
            c->stats.retried++;
            err = pg_failed(c, m);
        }
    } else if (r == OUTBOX_HANDLER_OK && ts == PQTRANS_IDLE) {
        /* The handler committed itself: its work and the dedup record went together. */
        outbox_log(c->conf, 4, FAC, "msg=\"handler ended the transaction itself\" id=%s", msg->id);
        c->stats.processed++;
        store_offset(c, m);
    } else if (r == OUTBOX_HANDLER_REJECT) {
        rollback(c);
        if (reject(c, m, msg->id, true, "rejected by the handler"))
            store_offset(c, m);
        else
            err = pg_failed(c, m);
    } else {
        /* RETRY, or OK with a failed transaction: roll back and deliver this message again. */
        if (r == OUTBOX_HANDLER_OK)
            outbox_log(c->conf, 4, FAC, "msg=\"handler returned OK but its transaction failed; "
                       "retrying\" id=%s", msg->id);
        if (ts != PQTRANS_IDLE)
            rollback(c);
        c->stats.retried++;
        redeliver(c, m, c->retry_backoff_ms);
        if (!c->pg)
            err = OUTBOX_ERR_CONNECTION; /* the ROLLBACK went unanswered: the session was dropped */
    }
    outbox_message_destroy(msg);
    return err;
}

outbox_err_t outbox_consumer_poll(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque,
                                  int timeout_ms) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    if (!handler)
        return cerr(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_poll: handler is NULL");
    c->errstr[0] = '\0';
    resume_due(c);
    /* A failed retry of a released key does not stop the poll: the other keys flow, and the
     * set in memory still holds back the parked ones. */
    outbox_err_t park_err = park_poll(c, handler, opaque), err = OUTBOX_OK;
    int done = 0;
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, timeout_ms < 0 ? 0 : timeout_ms);
    while (m) {
        if (m->err) {
            char why[512];
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                outbox_log(c->conf, 4, FAC, "msg=\"consumer error\" error=%s reason=\"%s\"",
                           rd_kafka_err2name(m->err),
                           outbox_logfmt_value(rd_kafka_message_errstr(m), why, sizeof(why)));
        } else {
            err = process(c, m, handler, opaque);
            done++;
        }
        rd_kafka_message_destroy(m);
        if (err || done >= MAX_PER_POLL)
            break;
        m = rd_kafka_consumer_poll(c->rk, 0);
    }
    if (done)
        rd_kafka_commit(c->rk, NULL, 1); /* the offsets stored after each committed transaction */
    return err ? err : park_err;
}

/* ---- replies and retention ------------------------------------------------------------------ */

outbox_err_t outbox_reply(outbox_t *ob, PGconn *conn, const outbox_message_t *request, const char *type,
                          const void *payload, size_t len) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!request || request->kind != OUTBOX_COMMAND || !request->reply_to || !*request->reply_to)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG,
                             "outbox_reply: request %s; replies answer a COMMAND that has a reply_to channel",
                             !request ? "is NULL" : request->kind != OUTBOX_COMMAND ? "is not a COMMAND"
                                                                                     : "has no reply_to");
    outbox_message_t *r;
    char why[OUTBOX_ERRSTR_SIZE];
    outbox_err_t err = outbox_message_create(&r, OUTBOX_REPLY, request->reply_to, type, why, sizeof(why));
    if (err)
        return outbox_seterr(ob, err, "outbox_reply: %s", why);
    err = outbox_message_set_correlation_id(r, request->id);
    if (!err)
        err = outbox_message_set_key(r, request->key, request->key_len);
    if (!err)
        err = outbox_message_set_payload(r, payload, len);
    if (err) {
        outbox_message_destroy(r);
        if (err == OUTBOX_ERR_NOMEM)
            return outbox_seterr(ob, err, "outbox_reply: out of memory");
        if (!payload)
            return outbox_seterr(ob, err, "outbox_reply: payload is NULL but len is %zu", len);
        return outbox_seterr(ob, err, "outbox_reply: len %zu is not a length (a negative size?)", len);
    }
    err = outbox_send(ob, conn, r);
    outbox_message_destroy(r);
    return err;
}

outbox_err_t outbox_processed_prune(outbox_t *ob, PGconn *conn, int64_t max_age_s, int64_t *deleted) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!conn || max_age_s < 0)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, "outbox_processed_prune: %s",
                             !conn ? "conn is NULL" : "max_age_s is negative");
    char sql[512], age[32];
    /* Batches keep each statement short, so pruning a large table never holds locks for long. */
    snprintf(sql, sizeof(sql),
             "DELETE FROM %s.processed WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s.processed "
             "WHERE processed_at < now() - $1::bigint * interval '1 second' LIMIT 10000))",
             ob->schema_q, ob->schema_q);
    /* A larger age means "keep everything", not "timestamp out of range": no record is 5,000 years
     * old, and PostgreSQL's timestamps begin in 4713 BC. */
    if (max_age_s > INT64_C(157788000000))
        max_age_s = INT64_C(157788000000);
    snprintf(age, sizeof(age), "%lld", (long long)max_age_s);
    const char *p[1] = {age};
    int64_t total = 0;
    for (;;) {
        PGresult *res = PQexecParams(conn, sql, 1, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            outbox_err_t err = outbox_seterr_pg(ob, conn, res, "pruning processed records");
            PQclear(res);
            return err;
        }
        int64_t n = atoll(PQcmdTuples(res));
        PQclear(res);
        total += n;
        if (n < 10000)
            break;
    }
    if (deleted)
        *deleted = total;
    return OUTBOX_OK;
}
