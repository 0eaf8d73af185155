/*
 * Fuzz target: the consumer's reading of binary-mode CloudEvents (outbox_consumer_verdict on a
 * record with ce_ headers, lib/cloudevents.c), plus the trace context, RFC 3339 and URI-reference
 * checks on the same bytes.  Input framing:
 *   byte 0      consumer.schema.major.max = byte & 15 (0 = any); bit 7: no automatic ce_specversion
 *   byte 1      number of Kafka headers (& 15)
 *   per header  name length (1 byte), name, value length (1 byte; 255 = a NULL value), value
 *   next        key length (1 byte; 255 = no key), key
 *   the rest    the record value
 * Unless bit 7 of byte 0 is set, a "ce_specversion: 1.0" header comes first, so that most inputs
 * take the CloudEvents path.
 */
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "fuzz.h"
#include "outbox_int.h"

static int printable_ascii(const char *s) {
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *p = data, *end = data + size;
    int flags = p < end ? *p++ : 0;
    int major_max = flags & 15;
    int nhdr = p < end ? *p++ & 15 : 0;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
    if (!(flags & 0x80))
        FUZZ_CHECK(!rd_kafka_header_add(hdrs, "ce_specversion", -1, "1.0", 3), "header_add");
    for (int i = 0; i < nhdr && p < end; i++) {
        size_t nl = *p++;
        if (nl > (size_t)(end - p))
            break;
        const uint8_t *name = p;
        p += nl;
        if (p >= end)
            break;
        size_t vl = *p++;
        const uint8_t *value = NULL;
        if (vl == 255) {
            vl = 0;
        } else {
            if (vl > (size_t)(end - p))
                break;
            value = p;
            p += vl;
        }
        FUZZ_CHECK(!rd_kafka_header_add(hdrs, (const char *)name, (ssize_t)nl, value, (ssize_t)vl), "header_add");
    }
    const uint8_t *key = NULL;
    size_t key_len = 0;
    if (p < end) {
        size_t kl = *p++;
        if (kl != 255 && kl <= (size_t)(end - p)) {
            key = p;
            key_len = kl;
            p += kl;
        }
    }
    const uint8_t *value = p;
    size_t len = (size_t)(end - p);

    outbox_verdict_t v;
    bool accepted = outbox_consumer_verdict(value, len, key, key_len, "fuzz", hdrs, major_max, &v);
    if (accepted) {
        const outbox_message_t *m = v.msg;
        FUZZ_CHECK(m && !v.dead_id, "accepted without a message");
        if (outbox_ce_is_binary(hdrs)) {
            FUZZ_CHECK(outbox_uuid_valid(m->id), "id %s is not a UUID", m->id);
            FUZZ_CHECK(*m->type && outbox_utf8_invalid_at(m->type) < 0, "type empty or not UTF-8");
            FUZZ_CHECK(!strcmp(m->destination, "fuzz"), "destination %s", m->destination);
            FUZZ_CHECK(m->payload_len == len && (!len || !memcmp(m->payload, value, len)), "payload differs");
            FUZZ_CHECK(m->key_len == key_len && (!key_len || !memcmp(m->key, key, key_len)), "key differs");
            FUZZ_CHECK(!major_max || atoi(m->schema_version) <= major_max, "major above max accepted");
            for (size_t i = 0; i < m->header_cnt; i++)
                FUZZ_CHECK(*m->headers[i].name && strncmp(m->headers[i].name, "ce_", 3) &&
                               outbox_utf8_invalid_at(m->headers[i].name) < 0 &&
                               outbox_utf8_invalid_at(m->headers[i].value) < 0,
                           "header %zu", i);
            /* What was accepted goes back out as the relay would write it and reads back the same. */
            void *env;
            size_t env_len;
            FUZZ_CHECK(outbox_message_encode(m, &env, &env_len) == OUTBOX_OK, "encode");
            rd_kafka_headers_t *h2 = rd_kafka_headers_new(16);
            const void *pl;
            size_t pl_len;
            char why[300];
            int rc = outbox_ce_record(env, env_len, "/fuzz", m->key, m->key_len, h2, &pl, &pl_len, why, sizeof(why), NULL);
            FUZZ_CHECK(rc == 0, "an accepted message cannot be re-published: %s", why);
            outbox_verdict_t v2;
            FUZZ_CHECK(outbox_consumer_verdict(pl, pl_len, m->key, m->key_len, "fuzz", h2, major_max, &v2),
                       "re-published message refused: %s", v2.reason);
            FUZZ_CHECK(!strcmp(v2.msg->id, m->id) && !strcmp(v2.msg->type, m->type) && v2.msg->kind == m->kind &&
                           v2.msg->payload_len == m->payload_len && !strcmp(v2.msg->schema_version, m->schema_version) &&
                           !strcmp(v2.msg->reply_to, m->reply_to) &&
                           !strcmp(outbox_message_content_type(v2.msg), outbox_message_content_type(m)),
                       "round trip differs");
            /* Time survives to the microsecond when it is within years 0-9999. */
            char t[32];
            if (!outbox_ce_time_format(m->created_at_us, t))
                FUZZ_CHECK(v2.msg->created_at_us == m->created_at_us, "time %s", t);
            outbox_message_destroy(v2.msg);
            rd_kafka_headers_destroy(h2);
            free(env);
        }
        outbox_message_destroy(v.msg);
    } else {
        size_t rl = strnlen(v.reason, sizeof(v.reason));
        FUZZ_CHECK(!v.msg && rl > 0 && rl < sizeof(v.reason), "rejected: no reason or a message");
        FUZZ_CHECK(outbox_utf8_invalid_at(v.reason) < 0, "reason not UTF-8");
        FUZZ_CHECK(!v.dead_id || (strlen(v.dead_id) <= 64 && printable_ascii(v.dead_id)), "dead id");
    }

    /* The string checks on the value as text: no crash, and what they accept has their shape. */
    char *s = malloc(len + 1);
    FUZZ_CHECK(s != NULL, "malloc");
    memcpy(s, value, len);
    s[len] = '\0';
    char why[200];
    if (!outbox_traceparent_problem(s, why, sizeof(why)))
        FUZZ_CHECK(strlen(s) == 55 && s[0] == '0' && s[1] == '0', "traceparent %s", s);
    outbox_tracestate_problem(s, why, sizeof(why));
    if (!outbox_uri_reference_problem(s, why, sizeof(why)))
        FUZZ_CHECK(*s && !strchr(s, ' '), "URI %s", s);
    int64_t us;
    if (!outbox_ce_time_parse(s, strlen(s), &us)) {
        char t[32];
        if (!outbox_ce_time_format(us, t)) {
            int64_t back;
            FUZZ_CHECK(!outbox_ce_time_parse(t, strlen(t), &back) && back == us, "time %s -> %s", s, t);
        }
    }
    free(s);
    rd_kafka_headers_destroy(hdrs);
    return 0;
}
