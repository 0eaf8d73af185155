/*
 * Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/{envelope,consumer,walproto}:
 * envelopes of every kind made by outbox_message_encode(), hand-made invalid ones, truncations, and
 * replication frames laid out as relay/walproto.h says.  A one-off: the output is committed (ids and
 * times differ per run).  Run from the top directory after `make`:
 *   cc -std=c11 -D_GNU_SOURCE -Iinclude -Ilib -Ibuild/gen $(pkg-config --cflags libpq) \
 *      -o build/gen_corpus tests/fuzz/gen_corpus.c build/liboutbox.a \
 *      $(pkg-config --libs libpq rdkafka libprotobuf-c) -pthread && build/gen_corpus
 * `build/gen_corpus walproto` writes only the walproto seeds (leaving the others as committed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/v1/envelope.pb-c.h"
#include "outbox_int.h"

#define ENV_DIR "tests/fuzz/corpus/envelope"
#define CON_DIR "tests/fuzz/corpus/consumer"
#define WAL_DIR "tests/fuzz/corpus/walproto"

static void die(const char *what) {
    fprintf(stderr, "gen_corpus: %s\n", what);
    exit(1);
}

static void write_file(const char *dir, const char *name, const void *buf, size_t len) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp || (len && fwrite(buf, 1, len, fp) != len) || fclose(fp))
        die(path);
}

static void *encode(const outbox_message_t *m, size_t *len) {
    void *buf;
    if (outbox_message_encode(m, &buf, len))
        die("encode");
    return buf;
}

static void *pack(const Outbox__V1__Envelope *e, size_t *len) {
    *len = outbox__v1__envelope__get_packed_size(e);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (!buf)
        die("out of memory");
    outbox__v1__envelope__pack(e, buf);
    return buf;
}

/* A consumer input: major_max, the headers (name, value; a NULL value is length 255), the value. */
static void write_record(const char *name, int major_max, const char *const *hdrs, size_t nhdr,
                         const void *value, size_t len) {
    size_t cap = 2 + len;
    for (size_t i = 0; i < nhdr; i++)
        cap += 2 + strlen(hdrs[2 * i]) + (hdrs[2 * i + 1] ? strlen(hdrs[2 * i + 1]) : 0);
    uint8_t *buf = malloc(cap), *w = buf;
    if (!buf)
        die("out of memory");
    *w++ = (uint8_t)major_max;
    *w++ = (uint8_t)nhdr;
    for (size_t i = 0; i < nhdr; i++) {
        size_t nl = strlen(hdrs[2 * i]);
        *w++ = (uint8_t)nl;
        memcpy(w, hdrs[2 * i], nl);
        w += nl;
        if (!hdrs[2 * i + 1]) {
            *w++ = 255;
            continue;
        }
        size_t vl = strlen(hdrs[2 * i + 1]);
        *w++ = (uint8_t)vl;
        memcpy(w, hdrs[2 * i + 1], vl);
        w += vl;
    }
    memcpy(w, value, len);
    w += len;
    write_file(CON_DIR, name, buf, (size_t)(w - buf));
    free(buf);
}

static outbox_message_t *msg(outbox_kind_t kind, const char *dest, const char *type) {
    outbox_message_t *m = outbox_message_new(kind, dest, type);
    if (!m)
        die("outbox_message_new");
    return m;
}

/* Big-endian bytes, as the replication stream carries them. */
typedef struct {
    uint8_t b[1024];
    size_t n;
} wire_t;

static void w8(wire_t *w, uint8_t v) {
    if (w->n == sizeof(w->b))
        die("wire buffer full");
    w->b[w->n++] = v;
}
static void w64(wire_t *w, uint64_t v) {
    for (int i = 7; i >= 0; i--)
        w8(w, (uint8_t)(v >> (8 * i)));
}
static void w32(wire_t *w, uint32_t v) {
    for (int i = 3; i >= 0; i--)
        w8(w, (uint8_t)(v >> (8 * i)));
}
static void wbytes(wire_t *w, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        w8(w, ((const uint8_t *)p)[i]);
}
/* An XLogData frame header: 'w', dataStart, walEnd, sendTime. */
static wire_t xlog(uint64_t lsn) {
    wire_t w = {.n = 0};
    w8(&w, 'w'), w64(&w, lsn), w64(&w, lsn + 0x100), w64(&w, 817000000000000u);
    return w;
}
/* A pgoutput Message: 'M', flags, lsn, prefix\0, int32 length, content. */
static void wmessage(wire_t *w, uint8_t flags, const char *prefix, uint32_t len_field, const void *c, size_t n) {
    w8(w, 'M'), w8(w, flags), w64(w, 0x16B374D848u);
    wbytes(w, prefix, strlen(prefix) + 1);
    w32(w, len_field), wbytes(w, c, n);
}

/* Seeds for fuzz_walproto: each frame and message kind, and the malformed cases the parser names. */
static void walproto_corpus(void) {
    outbox_message_t *m = msg(OUTBOX_EVENT, "orders.events", "orders.OrderCreated");
    outbox_message_set_key(m, "order-42", 8);
    outbox_message_set_payload(m, "{}", 2);
    size_t elen;
    void *env = encode(m, &elen);
    wire_t w = xlog(0x16B374D800u);
    w8(&w, 'B'), w64(&w, 0x16B374D9A0u), w64(&w, 817000000000000u), w32(&w, 771);
    write_file(WAL_DIR, "xlog-begin", w.b, w.n);
    w = xlog(0x16B374D848u);
    wmessage(&w, 1, "outbox", (uint32_t)elen, env, elen);
    write_file(WAL_DIR, "xlog-message-envelope", w.b, w.n);
    write_file(WAL_DIR, "xlog-message-truncated", w.b, w.n - 3);
    write_file(WAL_DIR, "message-bare", w.b + 25, w.n - 25);
    w = xlog(1);
    wmessage(&w, 0, "", 0, "", 0);
    write_file(WAL_DIR, "xlog-message-nontx-empty", w.b, w.n);
    w = xlog(1);
    wmessage(&w, 1, "p", 0xFFFFFFFFu, "abcd", 4);
    write_file(WAL_DIR, "bad-length-negative", w.b, w.n);
    w = xlog(1);
    wmessage(&w, 1, "p", 5, "abcd", 4);
    write_file(WAL_DIR, "bad-length-long", w.b, w.n);
    w = xlog(1);
    w8(&w, 'M'), w8(&w, 1), w64(&w, 1), wbytes(&w, "outbox-no-terminator", 20);
    write_file(WAL_DIR, "bad-prefix-unterminated", w.b, w.n);
    w = xlog(0x16B374D9A0u);
    w8(&w, 'C'), w8(&w, 0), w64(&w, 0x16B374D9A0u), w64(&w, 0x16B374D9D8u), w64(&w, 817000000000000u);
    write_file(WAL_DIR, "xlog-commit", w.b, w.n);
    write_file(WAL_DIR, "bad-commit-short", w.b, w.n - 1);
    w = xlog(2);
    w8(&w, 'R'), w32(&w, 16384), wbytes(&w, "public\0t\0d\0\0\1", 13);
    write_file(WAL_DIR, "xlog-relation", w.b, w.n);
    w = (wire_t){.n = 0};
    w8(&w, 'k'), w64(&w, 0x16B374DA00u), w64(&w, 817000000000000u), w8(&w, 1);
    write_file(WAL_DIR, "keepalive-reply", w.b, w.n);
    w.b[17] = 0;
    write_file(WAL_DIR, "keepalive-noreply", w.b, w.n);
    write_file(WAL_DIR, "keepalive-short", w.b, w.n - 1);
    w.b[0] = 'r';
    write_file(WAL_DIR, "bad-kind-status", w.b, w.n);
    write_file(WAL_DIR, "lsn-text", "16/B374D848", 11);
    write_file(WAL_DIR, "lsn-text-lower-9digits", "16/b374d848a", 12);
    write_file(WAL_DIR, "empty", "", 0);
    free(env);
    outbox_message_destroy(m);
}

int main(int argc, char **argv) {
    size_t len;
    void *buf;

    walproto_corpus();
    if (argc > 1 && !strcmp(argv[1], "walproto"))
        return 0;

    /* ---- valid envelopes, one of each kind, from the library's own encoder ---- */
    outbox_message_t *ev = msg(OUTBOX_EVENT, "orders.events", "orders.OrderCreated");
    buf = encode(ev, &len);
    write_file(ENV_DIR, "event-minimal", buf, len);
    free(buf);

    outbox_message_set_key(ev, "order-42", 8);
    outbox_message_set_payload(ev, "\x0a\x08order-42\x10\x95\x9a\xef\x3a\x00\xff", 17);
    outbox_message_set_header(ev, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    outbox_message_set_header(ev, "tenant", "acme");
    outbox_message_set_header(ev, "empty", "");
    outbox_message_set_schema_version(ev, "2.1");
    void *full = encode(ev, &len);
    size_t full_len = len;
    write_file(ENV_DIR, "event-full", full, full_len);
    /* Truncations: inside a header entry, inside the payload, one byte short. */
    write_file(ENV_DIR, "event-full-half", full, full_len / 2);
    write_file(ENV_DIR, "event-full-short1", full, full_len - 1);
    write_file(ENV_DIR, "event-full-first10", full, 10);

    outbox_message_t *cmd = msg(OUTBOX_COMMAND, "payments.commands", "payments.Charge");
    outbox_message_set_key(cmd, "customer-7", 10);
    outbox_message_set_payload(cmd, "{\"amount\":1999}", 15);
    outbox_message_set_reply_to(cmd, "orders.replies");
    outbox_message_set_header(cmd, "deadline", "2030-01-01T00:00:00Z");
    buf = encode(cmd, &len);
    write_file(ENV_DIR, "command", buf, len);
    free(buf);

    outbox_message_t *rep = msg(OUTBOX_REPLY, "orders.replies", "payments.Charged");
    outbox_message_set_correlation_id(rep, outbox_message_id(cmd));
    outbox_message_set_key(rep, "customer-7", 10);
    buf = encode(rep, &len);
    write_file(ENV_DIR, "reply", buf, len);
    free(buf);

    outbox_message_t *doc = msg(OUTBOX_DOCUMENT, "catalog.products", "catalog.Product");
    uint8_t bin[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (uint8_t)i;
    outbox_message_set_payload(doc, bin, sizeof(bin));
    outbox_message_set_header(doc, "content-type", "application/x-protobuf");
    outbox_message_set_header(doc, "name-\xc3\xa9", "valeur \xe2\x82\xac");
    outbox_message_set_schema_version(doc, "123456789.987654321");
    buf = encode(doc, &len);
    write_file(ENV_DIR, "document", buf, len);
    free(buf);

    outbox_message_t *many = msg(OUTBOX_EVENT, "a", "t");
    for (int i = 0; i < 40; i++) {
        char n[16], v[16];
        snprintf(n, sizeof(n), "h%02d", i);
        snprintf(v, sizeof(v), "v%d", i * i);
        outbox_message_set_header(many, n, v);
    }
    buf = encode(many, &len);
    write_file(ENV_DIR, "many-headers", buf, len);
    free(buf);

    char topic[OUTBOX_KAFKA_TOPIC_MAX + 1];
    memset(topic, 'x', OUTBOX_KAFKA_TOPIC_MAX);
    topic[OUTBOX_KAFKA_TOPIC_MAX] = '\0';
    outbox_message_t *longest = msg(OUTBOX_EVENT, topic, "orders.Long\xc3\xa9v\xc3\xa9nement");
    buf = encode(longest, &len);
    write_file(ENV_DIR, "longest-topic", buf, len);
    free(buf);

    /* ---- hand-made envelopes the decoder must refuse (or, for some, accept) ---- */
    char id[OUTBOX_UUID_STR_LEN + 1];
    outbox_uuid7(id);
    Outbox__V1__Envelope e = OUTBOX__V1__ENVELOPE__INIT;
    e.id = id;
    e.kind = OUTBOX__V1__KIND__EVENT;
    e.type = (char *)"t.T";
    e.schema_version = (char *)"1.0";
    e.destination = (char *)"t.events";
    Outbox__V1__Envelope bad = e;
    bad.kind = OUTBOX__V1__KIND__KIND_UNSPECIFIED;
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-kind-unspecified", buf, len), free(buf);
    bad = e;
    bad.kind = (Outbox__V1__Kind)7;
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-kind-7", buf, len), free(buf);
    bad = e;
    bad.type = (char *)"";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-type-empty", buf, len), free(buf);
    bad = e;
    bad.destination = (char *)"no/slashes";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-destination", buf, len), free(buf);
    bad = e;
    bad.schema_version = (char *)"1";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-schema-version", buf, len), free(buf);
    bad = e;
    bad.id = (char *)"not-a-uuid";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-id", buf, len), free(buf);
    bad = e;
    bad.reply_to = (char *)"bad reply";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-reply-to", buf, len), free(buf);

    /* Headers the encoder never writes: an empty name (refused), a repeated name (last wins). */
    Outbox__V1__Envelope__HeadersEntry h[3] = {OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT,
                                                OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT,
                                                OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT};
    Outbox__V1__Envelope__HeadersEntry *hp[3] = {&h[0], &h[1], &h[2]};
    h[0].key = (char *)"dup", h[0].value = (char *)"first";
    h[1].key = (char *)"other", h[1].value = (char *)"x";
    h[2].key = (char *)"dup", h[2].value = (char *)"second";
    bad = e;
    bad.headers = hp, bad.n_headers = 3;
    buf = pack(&bad, &len), write_file(ENV_DIR, "header-repeated", buf, len), free(buf);
    h[1].key = (char *)"";
    buf = pack(&bad, &len), write_file(ENV_DIR, "bad-header-empty-name", buf, len), free(buf);

    /* Raw bytes: unknown fields of each wire type after a valid envelope, a group, overlong varints. */
    buf = pack(&e, &len);
    uint8_t raw[512];
    memcpy(raw, buf, len);
    static const uint8_t unknown[] = {0x78, 0x01, 0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x8a, 0x01, 0x02, 'h', 'i',
                                      0x95, 0x01, 1, 2, 3, 4};
    memcpy(raw + len, unknown, sizeof(unknown));
    write_file(ENV_DIR, "unknown-fields", raw, len + sizeof(unknown));
    static const uint8_t group[] = {0x9b, 0x01, 0x9c, 0x01};
    memcpy(raw + len, group, sizeof(group));
    write_file(ENV_DIR, "bad-group", raw, len + sizeof(group));
    static const uint8_t kind_long[] = {0x10, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
    memcpy(raw + len, kind_long, sizeof(kind_long));
    write_file(ENV_DIR, "kind-10-byte-varint", raw, len + sizeof(kind_long));
    free(buf);
    write_file(ENV_DIR, "empty", "", 0);
    write_file(ENV_DIR, "zero-byte", "\0", 1);
    write_file(ENV_DIR, "varint-unterminated", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11);
    write_file(ENV_DIR, "length-too-long", "\x3a\xff\xff\xff\xff\x0f", 6);

    /* ---- consumer records ---- */
    const char *relay_hdrs[] = {"id", outbox_message_id(ev), "type", "orders.OrderCreated", "kind", "EVENT",
                                "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    write_record("accept-event", 0, relay_hdrs, 4, full, full_len);
    write_record("accept-no-headers", 3, NULL, 0, full, full_len);
    outbox_message_set_schema_version(ev, "9.0");
    buf = encode(ev, &len);
    write_record("reject-major", 1, relay_hdrs, 4, buf, len);
    write_record("accept-major-equal", 9, relay_hdrs, 4, buf, len);
    free(buf);
    static const char garbage[] = "\xff\xfe\x07 this is not a protobuf \x01\x02\x03";
    write_record("reject-garbage-id-header", 0, relay_hdrs, 4, garbage, sizeof(garbage) - 1);
    const char *odd_id[] = {"id", "id with\ttab"};
    write_record("reject-garbage-unprintable-id", 0, odd_id, 1, garbage, sizeof(garbage) - 1);
    const char *null_id[] = {"id", NULL};
    write_record("reject-garbage-null-id", 0, null_id, 1, garbage, sizeof(garbage) - 1);
    const char *two_ids[] = {"id", "first", "x", "y", "id", "second-wins"};
    write_record("reject-empty-two-ids", 0, two_ids, 3, "", 0);
    char id65[66];
    memset(id65, 'a', 65);
    id65[65] = '\0';
    const char *long_id[] = {"id", id65};
    write_record("reject-id-65", 0, long_id, 1, "x", 1);
    id65[64] = '\0';
    write_record("reject-id-64", 0, long_id, 1, "x", 1);
    bad = e;
    bad.kind = (Outbox__V1__Kind)7;
    buf = pack(&bad, &len);
    write_record("reject-kind-7", 0, relay_hdrs, 2, buf, len);
    free(buf);

    free(full);
    outbox_message_destroy(ev);
    outbox_message_destroy(cmd);
    outbox_message_destroy(rep);
    outbox_message_destroy(doc);
    outbox_message_destroy(many);
    outbox_message_destroy(longest);
    return 0;
}
