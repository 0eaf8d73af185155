/*
 * Fuzz target: untrusted bytes as an outbox.v1.Envelope.  What outbox_message_decode() accepts must
 * survive encode/decode unchanged, and the relay's allocation-free outbox_envelope_scan() must read
 * the same kind and headers from it (the relay turns those into Kafka headers without decoding).
 */
#include <string.h>

#include "fuzz.h"
#include "outbox_int.h"

typedef struct {
    const char *name, *value;
    size_t name_len, value_len;
} seen_t;

typedef struct {
    seen_t *h;
    size_t n, cap;
    size_t stop_at; /* return non-zero for this header, to check that it ends the scan */
} scan_t;

static int collect(const char *name, size_t name_len, const char *value, size_t value_len, void *opaque) {
    scan_t *s = opaque;
    if (s->n == s->stop_at)
        return 1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        seen_t *h = realloc(s->h, cap * sizeof(*h));
        FUZZ_CHECK(h, "out of memory");
        s->h = h;
        s->cap = cap;
    }
    s->h[s->n++] = (seen_t){name, value, name_len, value_len};
    return 0;
}

static int bytes_eq(const char *a, size_t a_len, const char *b) {
    return a_len == strlen(b) && !memcmp(a, b, a_len);
}

/* Scans buf and checks it reads what the decoder made of the same bytes into m.  The decoder keeps
 * the last value of a repeated header name, at the place of its first occurrence. */
static void scan_agrees(const uint8_t *buf, size_t len, const outbox_message_t *m) {
    scan_t s = {.stop_at = SIZE_MAX};
    int kind = -1;
    FUZZ_CHECK(outbox_envelope_scan(buf, len, &kind, collect, &s) == 0, "the decoder accepted %zu bytes", len);
    FUZZ_CHECK(kind == (int)m->kind, "scan kind %d, decoded kind %d", kind, (int)m->kind);
    for (size_t j = 0; j < s.n; j++) {
        size_t i = 0;
        while (i < m->header_cnt && !bytes_eq(s.h[j].name, s.h[j].name_len, m->headers[i].name))
            i++;
        FUZZ_CHECK(i < m->header_cnt, "scanned header %zu (\"%.*s\", %zu bytes) is not a decoded header", j,
                   (int)s.h[j].name_len, s.h[j].name, s.h[j].name_len);
    }
    for (size_t i = 0; i < m->header_cnt; i++) {
        size_t j = s.n;
        while (j > 0 && !bytes_eq(s.h[j - 1].name, s.h[j - 1].name_len, m->headers[i].name))
            j--;
        FUZZ_CHECK(j > 0, "decoded header \"%s\" was not scanned", m->headers[i].name);
        FUZZ_CHECK(bytes_eq(s.h[j - 1].value, s.h[j - 1].value_len, m->headers[i].value),
                   "header \"%s\": scanned %zu bytes, decoded \"%s\"", m->headers[i].name, s.h[j - 1].value_len,
                   m->headers[i].value);
    }
    if (s.n > 0) {
        /* A callback's non-zero result ends the scan as a failure (the relay's header_add failing). */
        scan_t stop = {.stop_at = 0};
        FUZZ_CHECK(outbox_envelope_scan(buf, len, &kind, collect, &stop) != 0, "a callback failure was ignored");
        free(stop.h);
    }
    free(s.h);
}

static void same_message(const outbox_message_t *a, const outbox_message_t *b) {
    FUZZ_CHECK(!strcmp(a->id, b->id), "id %s / %s", a->id, b->id);
    FUZZ_CHECK(a->kind == b->kind, "kind %d / %d", (int)a->kind, (int)b->kind);
    FUZZ_CHECK(!strcmp(a->type, b->type), "type");
    FUZZ_CHECK(!strcmp(a->schema_version, b->schema_version), "schema_version");
    FUZZ_CHECK(!strcmp(a->destination, b->destination), "destination");
    FUZZ_CHECK(a->key_len == b->key_len && (!a->key_len || !memcmp(a->key, b->key, a->key_len)), "key");
    FUZZ_CHECK(a->payload_len == b->payload_len &&
                   (!a->payload_len || !memcmp(a->payload, b->payload, a->payload_len)),
               "payload");
    FUZZ_CHECK(a->header_cnt == b->header_cnt, "%zu / %zu headers", a->header_cnt, b->header_cnt);
    for (size_t i = 0; i < a->header_cnt; i++)
        FUZZ_CHECK(!strcmp(a->headers[i].name, b->headers[i].name) &&
                       !strcmp(a->headers[i].value, b->headers[i].value),
                   "header %zu", i);
    FUZZ_CHECK(!strcmp(a->correlation_id, b->correlation_id), "correlation_id");
    FUZZ_CHECK(!strcmp(a->reply_to, b->reply_to), "reply_to");
    FUZZ_CHECK(a->created_at_us == b->created_at_us, "created_at");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    outbox_message_t *m = NULL;
    outbox_err_t rc = outbox_message_decode(&m, data, size, err, sizeof(err));
    if (rc != OUTBOX_OK) {
        FUZZ_CHECK(!m && rc == OUTBOX_ERR_DECODE && err[0], "rc %d, errstr \"%s\"", (int)rc, err);
        /* The relay scans rows it never decodes: whatever the bytes, the scan stays in bounds. */
        int kind;
        scan_t s = {.stop_at = SIZE_MAX};
        (void)outbox_envelope_scan(data, size, &kind, collect, &s);
        free(s.h);
        return 0;
    }
    FUZZ_CHECK(m->kind >= OUTBOX_EVENT && m->kind <= OUTBOX_DOCUMENT, "kind %d", (int)m->kind);
    FUZZ_CHECK(outbox_uuid_valid(m->id), "id \"%s\"", m->id);
    FUZZ_CHECK(*m->type && outbox_topic_valid(m->destination, NULL, 0), "type or destination");
    scan_agrees(data, size, m);

    /* Round trip: what we encode reads back the same, re-encodes to the same bytes, and scans the same. */
    void *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    FUZZ_CHECK(outbox_message_encode(m, &buf, &len) == OUTBOX_OK, "encode");
    outbox_message_t *m2 = NULL;
    rc = outbox_message_decode(&m2, buf, len, err, sizeof(err));
    FUZZ_CHECK(rc == OUTBOX_OK, "re-encoded message does not decode: %s", err);
    same_message(m, m2);
    FUZZ_CHECK(outbox_message_encode(m2, &buf2, &len2) == OUTBOX_OK, "encode");
    FUZZ_CHECK(len == len2 && !memcmp(buf, buf2, len), "encoding is not deterministic");
    scan_agrees(buf, len, m);
    free(buf);
    free(buf2);
    outbox_message_destroy(m2);
    outbox_message_destroy(m);
    return 0;
}
