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

#include "consumer_int.h"
#include "consumer_park.h"
#include "outbox_int.h"

/* The dedup record goes out in libpq's pipeline mode, new in libpq 14. */
#ifndef LIBPQ_HAS_PIPELINING
#error "liboutbox needs libpq 14 or newer (pipeline mode): install a newer libpq-dev"
#endif

#define FAC "CONSUMER"
/* Session setup retries wait consumer.retry.backoff.ms at first but never less than this, so that
 * retry.backoff.ms=0 (redeliver at once) does not turn a missing schema into a connection storm... */
#define SETUP_BACKOFF_MIN_MS 100
/* ... and double up to this: a schema migrated or a grant given later is noticed within 30 s. */
#define SETUP_BACKOFF_MAX_MS 30000

static const char *const consumer_defaults[] = {
    "enable.auto.commit", "false",
    "auto.offset.reset", "earliest",
    /* Offsets are stored by us, after the message's transaction committed. */
    "enable.auto.offset.store", "false",
    NULL,
};

outbox_err_t outbox_cons_err(outbox_consumer_t *c, outbox_err_t err, const char *fmt, ...) {
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
 * <schema>.consumer_dead_letters exist and that the session's role may INSERT into them (and DELETE
 * from processed: a batch deletes the records of messages it hands back for redelivery).  A
 * failure names the cause and the fix: a missing table means a schema that was never migrated,
 * a missing privilege a role without the consumer's grants. */
static outbox_err_t session_check(outbox_consumer_t *c, const char *schema) {
    static const char sql[] =
        "SELECT p IS NOT NULL, d IS NOT NULL, "
        "CASE WHEN p IS NULL THEN false ELSE has_table_privilege(p, 'INSERT') END, "
        "CASE WHEN p IS NULL THEN false ELSE has_table_privilege(p, 'DELETE') END, "
        "CASE WHEN d IS NULL THEN false ELSE has_table_privilege(d, 'INSERT') END, current_user "
        "FROM (SELECT to_regclass($1) AS p, to_regclass($2) AS d) AS t";
    char p_name[160], d_name[160], why[256];
    snprintf(p_name, sizeof(p_name), "%s.processed", c->schema_q);
    snprintf(d_name, sizeof(d_name), "%s.consumer_dead_letters", c->schema_q);
    const char *params[2] = {p_name, d_name};
    PGresult *res = outbox_pg_exec(c->pg, &c->lim, sql, 2, params, NULL, NULL, 0, why, sizeof(why));
    if (!res)
        return outbox_cons_err(c, OUTBOX_ERR_CONNECTION, "checking schema \"%s\" failed: %s", schema, why);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        outbox_err_t err;
        if (state && !strcmp(state, "42501")) /* no USAGE on the schema */
            err = outbox_cons_err(c, OUTBOX_ERR_PG, "%s: the role lacks USAGE on schema \"%s\"; grant the consumer's "
                       "privileges, `outbox-relay grants --consumer ROLE` prints them", pg_primary(res), schema);
        else
            err = outbox_cons_err(c, PQstatus(c->pg) == CONNECTION_OK ? OUTBOX_ERR_PG : OUTBOX_ERR_CONNECTION,
                       "checking schema \"%s\" failed: %s", schema, pg_primary(res));
        PQclear(res);
        return err;
    }
    bool has_p = *PQgetvalue(res, 0, 0) == 't', has_d = *PQgetvalue(res, 0, 1) == 't';
    bool ins_p = *PQgetvalue(res, 0, 2) == 't', del_p = *PQgetvalue(res, 0, 3) == 't';
    bool ins_d = *PQgetvalue(res, 0, 4) == 't';
    char role[128];
    snprintf(role, sizeof(role), "%s", PQgetvalue(res, 0, 5));
    PQclear(res);
    if (!has_p || !has_d)
        return outbox_cons_err(c, OUTBOX_ERR_SCHEMA, "schema \"%s\" is not migrated (it has no %s table): run "
                    "`outbox-relay migrate` (or outbox_migrate()) with outbox.schema=%s, or correct "
                    "outbox.schema", schema, !has_p ? "processed" : "consumer_dead_letters", schema);
    /* A batch deletes the records of the messages it hands back for redelivery (a RETRY). */
    if (ins_p && ins_d && !del_p)
        return outbox_cons_err(c, OUTBOX_ERR_PG, "role \"%s\" lacks DELETE on \"%s\".processed: grant the "
                               "consumer's privileges, `outbox-relay grants --consumer %s` prints them", role, schema,
                               role);
    if (!ins_p || !ins_d)
        return outbox_cons_err(c, OUTBOX_ERR_PG, "role \"%s\" lacks INSERT on \"%s\".%s: grant the consumer's "
                    "privileges, `outbox-relay grants --consumer %s` prints them", role, schema,
                    !ins_p ? "processed" : "consumer_dead_letters", role);
    return OUTBOX_OK;
}

/* Ends the session.  Used when a statement of ours got no answer within pg.timeout.ms or the
 * connection failed: the session's state is then unknown, and the server rolls back whatever
 * transaction it had open when it notices.  The message in hand is redelivered (its offset is
 * stored only after a COMMIT that answered), and the dedup record decides on redelivery whether
 * a COMMIT that went unanswered took effect. */
void outbox_cons_pg_drop(outbox_consumer_t *c) {
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
bool outbox_cons_pg_ensure(outbox_consumer_t *c) {
    if (c->pg && PQstatus(c->pg) == CONNECTION_OK)
        return true;
    outbox_cons_pg_drop(c);
    int64_t now = outbox_mono_ms();
    if (c->setup_backoff_ms && now < c->setup_next_ms) {
        outbox_cons_err(c, c->setup_err, "%s (next attempt in %lld ms)", c->setup_errstr, (long long)(c->setup_next_ms - now));
        return false;
    }
    char why[OUTBOX_ERRSTR_SIZE - 64];
    outbox_err_t err;
    if (!(c->pg = outbox_pg_connect(c->conninfo, NULL, &c->lim, why, sizeof(why)))) {
        err = outbox_cons_err(c, OUTBOX_ERR_CONNECTION, "cannot connect to PostgreSQL: %s", why);
    } else {
        PQsetNoticeReceiver(c->pg, notice_cb, c);
        if (!(err = session_check(c, outbox_conf_str(c->conf, "outbox.schema")))) {
            c->setup_backoff_ms = 0;
            return true;
        }
        outbox_cons_pg_drop(c);
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
    c->batch_max = (int)outbox_conf_int(conf, "consumer.batch.max");
    c->linger_ms = (int)outbox_conf_int(conf, "consumer.batch.linger.ms");
    c->optimistic_batches = !strcmp(outbox_conf_str(conf, "consumer.batch.savepoints"), "on-failure");
    c->retention_s = outbox_conf_int(conf, "consumer.processed.retention.s");
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
    /* The batch's dedup: one statement, one round trip; the ids it returns are the new messages. */
    snprintf(c->sql_dedup_batch, sizeof(c->sql_dedup_batch),
             "INSERT INTO %s.processed (consumer, message_id) SELECT $1, unnest($2::uuid[]) "
             "ON CONFLICT DO NOTHING RETURNING message_id::text", c->schema_q);
    snprintf(c->sql_undo, sizeof(c->sql_undo),
             "DELETE FROM %s.processed WHERE consumer = $1 AND message_id = ANY ($2::uuid[])", c->schema_q);
    /* Small chunks keep each prune short (see outbox_processed_prune). */
    snprintf(c->sql_prune, sizeof(c->sql_prune),
             "DELETE FROM %s.processed WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s.processed "
             "WHERE consumer = $1 AND processed_at < now() - $2::bigint * interval '1 second' LIMIT $3))",
             c->schema_q, c->schema_q);
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
    if (!outbox_cons_pg_ensure(c) && c->setup_err == OUTBOX_ERR_CONNECTION) {
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
    outbox_cons_batch_free(c);
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
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: no topics given");
    /* Every name is checked before librdkafka sizes a list by n: a huge n (a negative count) made
     * it abort on the allocation even when the first topic was already invalid. */
    for (size_t i = 0; i < n; i++) {
        char why[160];
        if (!topics[i] || !outbox_topic_valid(topics[i], why, sizeof(why)))
            return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: topic %zu \"%.300s\" %s", i,
                        topics[i] ? topics[i] : "(null)", topics[i] ? why : "is NULL");
    }
    if (n > INT_MAX)
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_subscribe: n is %zu, more topics than "
                    "librdkafka takes", n);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return outbox_cons_err(c, OUTBOX_ERR_KAFKA, "outbox_consumer_subscribe: %s", rd_kafka_err2str(err));
    return OUTBOX_OK;
}

/* ---- per-message processing ----------------------------------------------------------------- */

/* Rewinds the message's partition to it, so it is delivered again (and nothing after it first);
 * with pause_ms > 0 the partition also rests that long. */
void outbox_cons_redeliver(outbox_consumer_t *c, const rd_kafka_message_t *m, int pause_ms) {
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
bool outbox_cons_stmt_ok(outbox_consumer_t *c, PGresult *res, const char *why, const char *what) {
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        bool lost = !res || PQstatus(c->pg) != CONNECTION_OK;
        outbox_cons_err(c, lost ? OUTBOX_ERR_CONNECTION : OUTBOX_ERR_PG, "%s failed: %s", what,
             res ? PQresultErrorMessage(res) : why);
        if (lost)
            outbox_cons_pg_drop(c);
    }
    PQclear(res);
    return ok;
}

bool outbox_cons_exec_ok(outbox_consumer_t *c, const char *sql) {
    char why[256];
    if (!c->pg)
        return false; /* dropped earlier in this message: the error is recorded */
    return outbox_cons_stmt_ok(c, outbox_pg_exec_simple(c->pg, &c->lim, sql, why, sizeof(why)), why, sql);
}

/* Ends the open transaction, if the session is still there; a failure is recorded only if no
 * earlier error of this poll was, since that one is what made us roll back. */
void outbox_cons_rollback(outbox_consumer_t *c) {
    char why[256], keep[sizeof(c->errstr)];
    if (!c->pg)
        return;
    memcpy(keep, c->errstr, sizeof(keep));
    if (!outbox_cons_stmt_ok(c, outbox_pg_exec_simple(c->pg, &c->lim, "ROLLBACK", why, sizeof(why)), why, "ROLLBACK") &&
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

bool outbox_consumer_verdict(const void *value, size_t len, const void *key, size_t key_len, const char *topic,
                             const rd_kafka_headers_t *headers, int major_max, outbox_verdict_t *v) {
    v->msg = NULL;
    v->dead_id = NULL;
    v->dead_id_valid = false;
    v->id_buf[0] = v->reason[0] = '\0';
    outbox_message_t *msg;
    /* A binary-mode CloudEvent (relay.format=cloudevents) or, by default, an envelope. */
    if (outbox_ce_is_binary(headers)) {
        if (outbox_ce_decode(value, len, key, key_len, headers, topic, &msg, v->reason, sizeof(v->reason), v->id_buf)) {
            v->dead_id = *v->id_buf ? v->id_buf : NULL;
            return false;
        }
    } else if (outbox_message_decode(&msg, value, len, v->reason, sizeof(v->reason)) != OUTBOX_OK) {
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

/* ---- hooks of consumer_park.c (consumer.reject.policy=park-key) ------------------------------ */

/* The retries of released keys go through the per-message handler; a consumer with only a batch
 * handler gets them as batches of one. */
typedef struct {
    outbox_consumer_t *c;
    outbox_handler_cb handler;
    void *opaque;
} park_handler_t;

static outbox_handler_result_t park_handler(const outbox_message_t *m, PGconn *conn, void *opaque) {
    park_handler_t *h = opaque;
    if (h->handler)
        return h->handler(m, conn, h->opaque);
    outbox_handler_result_t r = OUTBOX_HANDLER_OK;
    h->c->batch_cb(&m, 1, conn, &r, h->c->batch_opaque);
    return r;
}

/* Retries the released keys before new messages are read. */
static outbox_err_t park_poll(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque) {
    if (!c->park)
        return OUTBOX_OK;
    if (!outbox_cons_pg_ensure(c))
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    park_handler_t h = {c, handler, opaque};
    outbox_err_t err = outbox_park_poll(c->park, c->pg, c->rk, park_handler, &h);
    if (err == OUTBOX_ERR_CONNECTION)
        outbox_cons_pg_drop(c);
    return err;
}

outbox_err_t outbox_consumer_parked_retry(outbox_consumer_t *c, const void *key, size_t len) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    if (!key && len)
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: key is NULL but len is %zu",
                               len);
    if (len > INT_MAX)
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: len %zu is not a key length",
                               len);
    if (!c->park)
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_parked_retry: consumer.reject.policy is "
                               "not park-key: this consumer parks no key");
    if (!outbox_cons_pg_ensure(c))
        return c->setup_err ? c->setup_err : OUTBOX_ERR_CONNECTION;
    outbox_err_t err = outbox_park_release(c->park, c->pg, key, len);
    if (err == OUTBOX_ERR_CONNECTION)
        outbox_cons_pg_drop(c);
    return err;
}

outbox_err_t outbox_consumer_set_batch_handler(outbox_consumer_t *c, outbox_batch_handler_cb cb, void *opaque) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    c->batch_cb = cb;
    c->batch_opaque = cb ? opaque : NULL;
    return OUTBOX_OK;
}

outbox_err_t outbox_consumer_poll(outbox_consumer_t *c, outbox_handler_cb handler, void *opaque,
                                  int timeout_ms) {
    if (!c)
        return OUTBOX_ERR_INVALID_ARG;
    if (!handler && !c->batch_cb)
        return outbox_cons_err(c, OUTBOX_ERR_INVALID_ARG, "outbox_consumer_poll: handler is NULL and no batch "
                               "handler is set");
    c->errstr[0] = '\0';
    resume_due(c);
    /* A failed retry of a released key does not stop the poll: the other keys flow, and the
     * set in memory still holds back the parked ones. */
    outbox_err_t park_err = park_poll(c, handler, opaque);
    outbox_err_t err = outbox_cons_poll_batch(c, handler, opaque, timeout_ms);
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
    const char *tp, *ts;
    if (!err && outbox_message_trace_context(request, &tp, &ts)) /* the trace goes on in the reply */
        err = outbox_message_set_trace_context(r, tp, ts);
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
