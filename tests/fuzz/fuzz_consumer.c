/*
 * Fuzz target: what the consumer makes of a received Kafka record (outbox_consumer_verdict), with
 * no PostgreSQL or broker.  Input framing, chosen so that truncation still means something:
 *   byte 0      consumer.schema.major.max = byte & 15 (0 = any)
 *   byte 1      number of Kafka headers (& 7)
 *   per header  name length (1 byte), name, value length (1 byte; 255 = a NULL value), value
 *   the rest    the record value
 * The record key is not part of the framing: the verdict does not read it (the envelope has its own).
 */
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "fuzz.h"
#include "outbox_int.h"

/* PostgreSQL stores the reason as text: it must be valid UTF-8 or the INSERT of the dead letter
 * fails, and the record is redelivered for ever.  Same rules as PostgreSQL's pg_utf8_islegal(). */
static int utf8_valid(const unsigned char *s) {
    while (*s) {
        unsigned char c = *s;
        size_t n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!n)
            return 0;
        for (size_t i = 1; i < n; i++)
            if ((s[i] & 0xc0) != 0x80)
                return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
            (c == 0xf4 && s[1] > 0x8f))
            return 0;
        s += n;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *p = data, *end = data + size;
    int major_max = p < end ? *p++ & 15 : 0;
    int nhdr = p < end ? *p++ & 7 : 0;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
    /* The "id" header the consumer must fall back on: the last one named exactly "id". */
    const uint8_t *id_val = NULL;
    size_t id_len = 0;
    int id_seen = 0;
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
        if (nl == 2 && !memcmp(name, "id", 2)) {
            id_seen = 1;
            id_val = value;
            id_len = vl;
        }
    }
    const uint8_t *value = p;
    size_t len = (size_t)(end - p);

    outbox_verdict_t v;
    bool accepted = outbox_consumer_verdict(value, len, NULL, 0, "fuzz", hdrs, major_max, &v);
    if (outbox_ce_is_binary(hdrs)) { /* a CloudEvent, not an envelope: fuzz_cloudevents.c checks those */
        outbox_message_destroy(v.msg);
        rd_kafka_headers_destroy(hdrs);
        return 0;
    }

    /* The decoder alone, to check the verdict against. */
    outbox_message_t *m = NULL;
    char err[300];
    bool decodes = outbox_message_decode(&m, value, len, err, sizeof(err)) == OUTBOX_OK;
    if (accepted) {
        FUZZ_CHECK(v.msg && decodes && !v.dead_id, "accepted without a message");
        FUZZ_CHECK(!strcmp(v.msg->id, m->id), "accepted %s, decoded %s", v.msg->id, m->id);
        FUZZ_CHECK(!major_max || atoi(v.msg->schema_version) <= major_max, "schema %s accepted, major max %d",
                   v.msg->schema_version, major_max);
        outbox_message_destroy(v.msg);
    } else {
        FUZZ_CHECK(!v.msg, "rejected, yet a message");
        size_t rl = strnlen(v.reason, sizeof(v.reason));
        FUZZ_CHECK(rl > 0 && rl < sizeof(v.reason), "reason empty or unterminated");
        FUZZ_CHECK(utf8_valid((const unsigned char *)v.reason), "reason is not UTF-8: \"%s\"", v.reason);
        if (decodes) {
            /* Only a schema major above the maximum rejects a decodable envelope, by its own id. */
            FUZZ_CHECK(major_max && atoi(m->schema_version) > major_max, "decodable envelope rejected: %s", v.reason);
            FUZZ_CHECK(v.dead_id && v.dead_id_valid && !strcmp(v.dead_id, m->id), "dead letter id");
        } else {
            FUZZ_CHECK(!v.dead_id_valid, "an undecodable value cannot have a valid id");
            /* The "id" header, if plain printable ASCII of at most 64 bytes; nothing otherwise. */
            int plain = id_seen && id_val && id_len <= 64;
            for (size_t i = 0; plain && i < id_len; i++)
                plain = id_val[i] >= 0x20 && id_val[i] <= 0x7e;
            if (plain)
                FUZZ_CHECK(v.dead_id && strlen(v.dead_id) == id_len && !memcmp(v.dead_id, id_val, id_len),
                           "dead letter id is not the \"id\" header");
            else
                FUZZ_CHECK(!v.dead_id, "dead letter id \"%s\" from an unusable header", v.dead_id);
        }
    }
    outbox_message_destroy(m);
    rd_kafka_headers_destroy(hdrs);
    return 0;
}
