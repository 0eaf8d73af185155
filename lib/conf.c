/*
 * Configuration: one table of every known key with its type, default and range, plus the
 * kafka.* keys, which are checked by librdkafka itself and passed to it unchanged.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>

#include "outbox_int.h"

#define KAFKA_PREFIX "kafka."

/* Every key and its default, in one place (CONVENTIONS 12).  The relay prints it for --help. */
static const outbox_conf_prop_t props[] = {
    {"outbox.schema", CONF_STR, "outbox", 1, OUTBOX_IDENT_MAX,
     "schema of the outbox tables (always quoted in SQL)", NULL},
    {"outbox.mode", CONF_STR, "table", 0, 0,
     "how a message travels: table (outbox_send() INSERTs a row into <outbox.schema>.messages, the "
     "relay polls and deletes it) or wal (outbox_send() writes a transactional logical decoding "
     "message, prefix outbox:<outbox.schema>, which the relay reads from a replication slot; needs "
     "wal_level=logical)", "table|wal"},
    {"relay.slot.name", CONF_STR, "", 0, OUTBOX_IDENT_MAX,
     "outbox.mode=wal: the logical replication slot the relay reads (lower-case letters, digits and "
     "_, at most 63 bytes; empty = outbox_<outbox.schema>, lower-cased, other characters as _)", NULL},
    {"pg.conninfo", CONF_STR, "", 0, 0,
     "libpq connection string (relay, consumer); env OUTBOX_PG_CONNINFO if empty", NULL},
    {"pg.timeout.ms", CONF_INT, "10000", 100, 3600000,
     "longest wait for PostgreSQL to connect or answer (beyond a statement timeout) before the "
     "relay or consumer gives the session up", NULL},
    {"log.level", CONF_INT, "6", 0, 7, "syslog level of the lowest message logged (7 = debug)", NULL},
    {"writer.allow.autocommit", CONF_BOOL, "false", 0, 1,
     "let outbox_send() write outside a transaction block", NULL},
    {"writer.max.message.bytes", CONF_INT, "1000000", 64, 1000000000,
     "largest encoded envelope outbox_send() accepts", NULL},
    {"relay.batch.size", CONF_INT, "5000", 1, 100000, "rows claimed per batch", NULL},
    {"relay.inflight.batches", CONF_INT, "4", 1, 64,
     "batches produced and awaiting acknowledgement at once", NULL},
    {"relay.poll.min.ms", CONF_INT, "1", 0, 60000, "first wait after an empty poll", NULL},
    {"relay.poll.active.ms", CONF_INT, "5", 1, 600000,
     "longest wait between polls while messages arrived within the last second", NULL},
    {"relay.poll.max.ms", CONF_INT, "20", 1, 600000,
     "longest wait between polls of an idle outbox (doubles up to it)", NULL},
    {"relay.shutdown.timeout.ms", CONF_INT, "10000", 0, 3600000,
     "on SIGTERM, how long to wait for outstanding acknowledgements", NULL},
    {"relay.reconnect.backoff.ms", CONF_INT, "100", 1, 600000,
     "first wait before reconnecting to PostgreSQL", NULL},
    {"relay.reconnect.backoff.max.ms", CONF_INT, "5000", 1, 600000,
     "longest wait between reconnection attempts", NULL},
    {"relay.lock.retry.ms", CONF_INT, "500", 10, 60000,
     "how often a standby tries to take the leadership lock", NULL},
    {"relay.statement.timeout.ms", CONF_INT, "10000", 0, 3600000,
     "statement_timeout of the relay's sessions (0 = none); the relay waits this plus "
     "pg.timeout.ms for an answer", NULL},
    {"relay.record.timestamp", CONF_STR, "created", 0, 0,
     "Kafka record timestamp: created (the message's created_at, CreateTime) or produced (when the "
     "relay sends it)", "created|produced"},
    {"relay.poison.policy", CONF_STR, "park-key", 0, 0,
     "a message that fails permanently: park-key (it and every later message of its partition key "
     "wait, in order, for `outbox-relay parked retry|drop`; other keys flow) or dead-letter (move it "
     "to dead_letters and go on with its key's later messages)", "park-key|dead-letter"},
    {"relay.format", CONF_STR, "envelope", 0, 0,
     "Kafka record format: envelope (value = the outbox.v1.Envelope protobuf) or cloudevents "
     "(CloudEvents 1.0 Kafka binding, binary mode: value = payload, attributes as ce_ headers)",
     "envelope|cloudevents"},
    {"relay.cloudevents.source", CONF_STR, "", 0, 400,
     "ce_source of relay.format=cloudevents records, a URI-reference (empty = /outbox/<outbox.schema>)",
     NULL},
    {"relay.floor.warn.ms", CONF_INT, "60000", 100, 86400000,
     "warn, naming it, about an open transaction that wrote to the outbox and held the claim floor "
     "this long (and again as often)", NULL},
    {"relay.reindex.min.bytes", CONF_INT, "67108864", 0, 1099511627776LL,
     "once the outbox is drained, REINDEX CONCURRENTLY its primary key if larger (0 = never)", NULL},
    {"relay.reindex.check.ms", CONF_INT, "60000", 10, 86400000,
     "how often a drained relay compares the index's size with relay.reindex.min.bytes", NULL},
    {"relay.application.name", CONF_STR, "outbox-relay", 1, 63,
     "application_name of the relay's sessions", NULL},
    {"metrics.listen", CONF_STR, "", 0, 0, "host:port of the metrics endpoint (empty = off)", NULL},
    {"consumer.group.id", CONF_STR, "", 0, 200, "Kafka consumer group, also the dedup namespace", NULL},
    {"consumer.schema.major.max", CONF_INT, "0", 0, 1000000,
     "highest schema major version accepted (0 = any)", NULL},
    {"consumer.retry.backoff.ms", CONF_INT, "500", 0, 3600000,
     "wait before redelivering a message whose handler asked to retry", NULL},
    {"consumer.reject.policy", CONF_STR, "dead-letter", 0, 0,
     "what a rejected message does (handler REJECT, or bytes that are no acceptable envelope): "
     "dead-letter (record it in consumer_dead_letters and go on) or park-key (hold it and every later "
     "message of its Kafka key in its partition in consumer_parked until released)",
     "dead-letter|park-key"},
    {"consumer.batch.max", CONF_INT, "500", 1, 10000,
     "most messages processed in one PostgreSQL transaction (1 = one transaction per message)", NULL},
    {"consumer.batch.linger.ms", CONF_INT, "5", 0, 10000,
     "longest wait for more messages to fill a batch once one arrived", NULL},
    {"consumer.batch.savepoints", CONF_STR, "on-failure", 0, 0,
     "when a batch's handlers run inside a savepoint each: on-failure (first all without one, a round "
     "trip less per message; on the first REJECT, RETRY or failed statement the batch rolls back and "
     "runs again with them, so handlers before it are called twice, their effects still commit once) "
     "or always (every handler in its own savepoint, each called once)", "on-failure|always"},
    {"consumer.processed.retention.s", CONF_INT, "0", 0, 157788000000LL,
     "the consumer deletes its group's dedup records older than this, off the hot path (0 = never); "
     "a redelivery older than it is not detected as a duplicate", NULL},
    {NULL, CONF_STR, NULL, 0, 0, NULL, NULL},
};

const outbox_conf_prop_t *outbox_conf_props(void) {
    return props;
}

static int prop_index(const char *key) {
    for (int i = 0; props[i].name; i++)
        if (!strcmp(props[i].name, key))
            return i;
    return -1;
}

static void conf_free_values(outbox_conf_t *conf) {
    if (conf->values) {
        for (int i = 0; props[i].name; i++)
            free(conf->values[i]);
        free(conf->values);
    }
    for (size_t i = 0; i < conf->kafka_cnt; i++) {
        free(conf->kafka[i].key);
        free(conf->kafka[i].value);
    }
    free(conf->kafka);
}

outbox_conf_t *outbox_conf_new(void) {
    size_t n = 0;
    while (props[n].name)
        n++;
    outbox_conf_t *conf = calloc(1, sizeof(*conf));
    if (!conf)
        return NULL;
    conf->values = calloc(n, sizeof(char *));
    if (!conf->values) {
        free(conf);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(conf->values[i] = outbox_strdup(props[i].def))) {
            outbox_conf_destroy(conf);
            return NULL;
        }
    }
    conf->log_level = (int)outbox_conf_int(conf, "log.level");
    return conf;
}

void outbox_conf_destroy(outbox_conf_t *conf) {
    if (!conf)
        return;
    conf_free_values(conf);
    free(conf);
}

outbox_conf_t *outbox_conf_dup(const outbox_conf_t *src) {
    if (!src)
        return NULL;
    outbox_conf_t *conf = outbox_conf_new();
    if (!conf)
        return NULL;
    char err[256];
    for (int i = 0; props[i].name; i++) {
        char *v = outbox_strdup(src->values[i]);
        if (!v)
            goto fail;
        free(conf->values[i]);
        conf->values[i] = v;
    }
    for (size_t i = 0; i < src->kafka_cnt; i++) {
        char key[512];
        outbox_snprintf(key, sizeof(key), KAFKA_PREFIX "%s", src->kafka[i].key);
        if (outbox_conf_set(conf, key, src->kafka[i].value, err, sizeof(err)) != OUTBOX_CONF_OK)
            goto fail;
    }
    conf->log_cb = src->log_cb;
    conf->opaque = src->opaque;
    conf->log_level = src->log_level;
    return conf;
fail:
    outbox_conf_destroy(conf);
    return NULL;
}

static int parse_bool(const char *v, int *out) {
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = 1;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
             !strcasecmp(v, "off"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int parse_int(const char *v, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return -1;
    *out = x;
    return 0;
}

/* s as quoted in an error message: cut to 64 bytes ("...") so that the key and the fix that follow
 * it still fit in errstr when a caller passes a huge key or value. */
static const char *shown(const char *s, char buf[72]) {
    if (strlen(s) <= 64)
        return s;
    snprintf(buf, 72, "%.64s...", s);
    return buf;
}

/* Checks a kafka.* property with librdkafka's own parser, so the error is librdkafka's. */
static outbox_conf_res_t kafka_check(const char *key, const char *value, char *errstr,
                                     size_t errstr_size) {
    rd_kafka_conf_t *rk = rd_kafka_conf_new();
    char why[256] = "";
    char kb[72], vb[72];
    rd_kafka_conf_res_t r = rd_kafka_conf_set(rk, key, value, why, sizeof(why));
    rd_kafka_conf_destroy(rk);
    if (r == RD_KAFKA_CONF_OK)
        return OUTBOX_CONF_OK;
    if (r == RD_KAFKA_CONF_UNKNOWN) {
        outbox_snprintf(errstr, errstr_size,
                        "unknown configuration key \"" KAFKA_PREFIX "%s\": \"%s\" is not a "
                        "librdkafka property (see librdkafka's CONFIGURATION.md)",
                        shown(key, kb), shown(key, kb));
        return OUTBOX_CONF_UNKNOWN;
    }
    outbox_snprintf(errstr, errstr_size, "invalid value \"%s\" for \"" KAFKA_PREFIX "%s\": %s",
                    shown(value, vb), shown(key, kb), why);
    return OUTBOX_CONF_INVALID;
}

static outbox_conf_res_t kafka_set(outbox_conf_t *conf, const char *key, const char *value,
                                   char *errstr, size_t errstr_size) {
    outbox_conf_res_t r = kafka_check(key, value, errstr, errstr_size);
    if (r != OUTBOX_CONF_OK)
        return r;
    char *v = outbox_strdup(value);
    if (!v)
        goto nomem;
    for (size_t i = 0; i < conf->kafka_cnt; i++) {
        if (!strcmp(conf->kafka[i].key, key)) {
            free(conf->kafka[i].value);
            conf->kafka[i].value = v;
            return OUTBOX_CONF_OK;
        }
    }
    if (conf->kafka_cnt == conf->kafka_cap) {
        size_t cap = conf->kafka_cap ? conf->kafka_cap * 2 : 8;
        outbox_kv_t *kv = realloc(conf->kafka, cap * sizeof(*kv));
        if (!kv) {
            free(v);
            goto nomem;
        }
        conf->kafka = kv;
        conf->kafka_cap = cap;
    }
    char *k = outbox_strdup(key);
    if (!k) {
        free(v);
        goto nomem;
    }
    conf->kafka[conf->kafka_cnt].key = k;
    conf->kafka[conf->kafka_cnt].value = v;
    conf->kafka_cnt++;
    return OUTBOX_CONF_OK;
nomem:;
    char kb[72];
    outbox_snprintf(errstr, errstr_size, "out of memory setting \"" KAFKA_PREFIX "%s\"", shown(key, kb));
    return OUTBOX_CONF_INVALID;
}

/* Whether value is one of the '|'-separated choices. */
static bool choice_ok(const char *choices, const char *value) {
    size_t n = strlen(value);
    for (const char *c = choices; *c;) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && !strncmp(c, value, n))
            return true;
        c += len + (end != NULL);
    }
    return false;
}

outbox_conf_res_t outbox_conf_set(outbox_conf_t *conf, const char *key, const char *value,
                                  char *errstr, size_t errstr_size) {
    if (!conf || !key || !value) {
        outbox_snprintf(errstr, errstr_size, "outbox_conf_set: %s is NULL",
                        !conf ? "conf" : !key ? "key" : "value");
        return OUTBOX_CONF_INVALID;
    }
    if (!strncmp(key, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) && key[strlen(KAFKA_PREFIX)])
        return kafka_set(conf, key + strlen(KAFKA_PREFIX), value, errstr, errstr_size);

    char kb[72], vb[72];
    int i = prop_index(key);
    if (i < 0) {
        outbox_snprintf(errstr, errstr_size,
                        "unknown configuration key \"%s\" (known keys: outbox-relay --help; "
                        "Kafka client properties take the prefix \"kafka.\")",
                        shown(key, kb));
        return OUTBOX_CONF_UNKNOWN;
    }
    const outbox_conf_prop_t *p = &props[i];
    switch (p->type) {
    case CONF_BOOL: {
        int b;
        if (parse_bool(value, &b)) {
            outbox_snprintf(errstr, errstr_size,
                            "invalid value \"%s\" for \"%s\": expected true or false",
                            shown(value, vb), key);
            return OUTBOX_CONF_INVALID;
        }
        value = b ? "true" : "false";
        break;
    }
    case CONF_INT: {
        long long x;
        if (parse_int(value, &x) || x < p->min || x > p->max) {
            outbox_snprintf(errstr, errstr_size,
                            "invalid value \"%s\" for \"%s\": expected an integer from %lld to %lld",
                            shown(value, vb), key, p->min, p->max);
            return OUTBOX_CONF_INVALID;
        }
        break;
    }
    case CONF_STR: {
        size_t len = strlen(value);
        if (p->choices && !choice_ok(p->choices, value)) {
            outbox_snprintf(errstr, errstr_size, "invalid value \"%s\" for \"%s\": expected one of %s",
                            shown(value, vb), key, p->choices);
            return OUTBOX_CONF_INVALID;
        }
        if (p->max > 0 && ((long long)len < p->min || (long long)len > p->max)) {
            outbox_snprintf(errstr, errstr_size,
                            "invalid value \"%s\" for \"%s\": expected %lld to %lld bytes, got %zu",
                            shown(value, vb), key, p->min, p->max, len);
            return OUTBOX_CONF_INVALID;
        }
        /* Bounded strings are names that reach PostgreSQL as text (schema, group id), where bytes
         * that are not UTF-8 fail every statement with an error that names no setting. */
        ptrdiff_t bad = p->max > 0 ? outbox_utf8_invalid_at(value) : -1;
        if (bad >= 0) {
            outbox_snprintf(errstr, errstr_size,
                            "invalid value for \"%s\": not valid UTF-8 (byte 0x%02x at offset %td)",
                            key, (unsigned char)value[bad], bad);
            return OUTBOX_CONF_INVALID;
        }
        /* Keys with a grammar of their own: refused here, not at the first record or slot. */
        char why[160];
        if (!strcmp(p->name, "relay.slot.name") && *value &&
            outbox_wal_slot_name_problem(value, why, sizeof(why))) {
            outbox_snprintf(errstr, errstr_size, "invalid value \"%s\" for \"%s\": %s; use e.g. "
                            "\"outbox_orders\", or leave it empty for outbox_<outbox.schema>",
                            shown(value, vb), key, why);
            return OUTBOX_CONF_INVALID;
        }
        if (!strcmp(p->name, "relay.cloudevents.source") && *value &&
            outbox_uri_reference_problem(value, why, sizeof(why))) {
            outbox_snprintf(errstr, errstr_size, "invalid value \"%s\" for \"%s\": not a URI-reference "
                            "(RFC 3986): %s; use e.g. \"https://example.com/orders\" or \"/orders-service\"",
                            shown(value, vb), key, why);
            return OUTBOX_CONF_INVALID;
        }
        break;
    }
    }
    char *v = outbox_strdup(value);
    if (!v) {
        outbox_snprintf(errstr, errstr_size, "out of memory setting \"%s\"", key);
        return OUTBOX_CONF_INVALID;
    }
    free(conf->values[i]);
    conf->values[i] = v;
    if (!strcmp(props[i].name, "log.level"))
        conf->log_level = (int)strtol(v, NULL, 10); /* read on every log call: kept parsed */
    return OUTBOX_CONF_OK;
}

static outbox_conf_res_t copy_out(const char *v, char *dest, size_t *dest_size) {
    size_t need = strlen(v) + 1;
    if (!dest) {
        *dest_size = need;
        return OUTBOX_CONF_OK;
    }
    if (*dest_size < need) {
        *dest_size = need;
        return OUTBOX_CONF_INVALID;
    }
    memcpy(dest, v, need);
    *dest_size = need;
    return OUTBOX_CONF_OK;
}

outbox_conf_res_t outbox_conf_get(const outbox_conf_t *conf, const char *key, char *dest,
                                  size_t *dest_size) {
    if (!conf || !key || !dest_size)
        return OUTBOX_CONF_INVALID;
    if (!strncmp(key, KAFKA_PREFIX, strlen(KAFKA_PREFIX))) {
        for (size_t i = 0; i < conf->kafka_cnt; i++)
            if (!strcmp(conf->kafka[i].key, key + strlen(KAFKA_PREFIX)))
                return copy_out(conf->kafka[i].value, dest, dest_size);
        return OUTBOX_CONF_UNKNOWN;
    }
    int i = prop_index(key);
    if (i < 0)
        return OUTBOX_CONF_UNKNOWN;
    return copy_out(conf->values[i], dest, dest_size);
}

const char *outbox_conf_str(const outbox_conf_t *conf, const char *key) {
    int i = prop_index(key);
    return i < 0 ? "" : conf->values[i];
}

long long outbox_conf_int(const outbox_conf_t *conf, const char *key) {
    return strtoll(outbox_conf_str(conf, key), NULL, 10);
}

bool outbox_conf_bool(const outbox_conf_t *conf, const char *key) {
    return !strcmp(outbox_conf_str(conf, key), "true");
}

bool outbox_conf_wal(const outbox_conf_t *conf) {
    return !strcmp(outbox_conf_str(conf, "outbox.mode"), "wal");
}

void outbox_conf_set_log_cb(outbox_conf_t *conf, outbox_log_cb *cb) {
    if (conf)
        conf->log_cb = cb;
}

void outbox_conf_set_opaque(outbox_conf_t *conf, void *opaque) {
    if (conf)
        conf->opaque = opaque;
}
