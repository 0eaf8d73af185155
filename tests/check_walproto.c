/*
 * The replication stream parser (relay/walproto.c) and the envelope field scan (lib/envscan.c) on
 * hand-built bytes laid out as walproto.h documents, every truncation of them, and malformed input.
 * Pure: no PostgreSQL and no Kafka.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox/v1/envelope.pb-c.h"
#include "outbox_int.h"
#include "testutil.h"
#include "walproto.h"

/* Bytes built big-endian, as the server writes them. */
typedef struct {
    uint8_t b[512];
    size_t n;
} wire_t;

static void w8(wire_t *w, uint8_t v) {
    ck_assert_uint_lt(w->n, sizeof(w->b));
    w->b[w->n++] = v;
}
static void w32(wire_t *w, uint32_t v) {
    for (int i = 24; i >= 0; i -= 8)
        w8(w, (uint8_t)(v >> i));
}
static void w64(wire_t *w, uint64_t v) {
    w32(w, (uint32_t)(v >> 32)), w32(w, (uint32_t)v);
}
static void wbytes(wire_t *w, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        w8(w, ((const uint8_t *)p)[i]);
}
static uint64_t r64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* A Message as pgoutput writes it: 'M', flags, lsn, prefix\0, int32 length, content. */
static wire_t message(uint8_t flags, uint64_t lsn, const char *prefix, const void *content, size_t len) {
    wire_t w = {.n = 0};
    w8(&w, 'M'), w8(&w, flags), w64(&w, lsn);
    wbytes(&w, prefix, strlen(prefix) + 1);
    w32(&w, (uint32_t)len), wbytes(&w, content, len);
    return w;
}
static wire_t begin(void) {
    wire_t w = {.n = 0};
    w8(&w, 'B'), w64(&w, 0x16B374D848u), w64(&w, (uint64_t)INT64_C(-5)), w32(&w, 0xFFFFFFFEu);
    return w;
}
static wire_t commit(void) {
    wire_t w = {.n = 0};
    w8(&w, 'C'), w8(&w, 0), w64(&w, 0x100000001u), w64(&w, 0xFFFFFFFFFFFFFFF0u), w64(&w, 758000000000000u);
    return w;
}

START_TEST(test_frame_xlogdata) {
    wire_t w = {.n = 0};
    w8(&w, 'w'), w64(&w, 0x16B374D848u), w64(&w, 0xFFFFFFFFFFFFFFFFu), w64(&w, (uint64_t)INT64_C(-1));
    wbytes(&w, "B123", 4);
    walp_frame_t f;
    char why[128] = "";
    ck_assert_int_eq(walp_frame_parse(w.b, w.n, &f, why, sizeof(why)), 0);
    ck_assert(f.kind == 'w' && !f.reply_requested);
    ck_assert_uint_eq(f.wal_start, 0x16B374D848u);
    ck_assert_uint_eq(f.wal_end, UINT64_MAX);
    ck_assert_int_eq(f.send_time, -1);
    ck_assert(f.data == w.b + 25 && f.data_len == 4);
    /* Every shorter prefix: too short for the header, or the header with less data. */
    for (size_t n = 0; n < w.n; n++) {
        int rc = walp_frame_parse(w.b, n, &f, why, sizeof(why));
        if (n < 25) {
            ck_assert_msg(rc == -1, "XLogData prefix of %zu bytes accepted", n);
            ck_assert_msg(strstr(why, n ? "XLogData frame of" : "empty"), "why: %s", why);
        } else {
            ck_assert(rc == 0 && f.data_len == n - 25 && f.wal_end == UINT64_MAX);
        }
    }
}
END_TEST

START_TEST(test_frame_keepalive) {
    wire_t w = {.n = 0};
    w8(&w, 'k'), w64(&w, 0xABCDEF0123456789u), w64(&w, 758000000123456u), w8(&w, 1);
    walp_frame_t f;
    char why[128] = "";
    ck_assert_int_eq(walp_frame_parse(w.b, w.n, &f, why, sizeof(why)), 0);
    ck_assert(f.kind == 'k' && f.reply_requested && !f.data && f.data_len == 0);
    ck_assert_uint_eq(f.wal_end, 0xABCDEF0123456789u); /* the high bit set: unsigned */
    ck_assert_int_eq(f.send_time, 758000000123456);
    w.b[17] = 0;
    ck_assert_int_eq(walp_frame_parse(w.b, w.n, &f, why, sizeof(why)), 0);
    ck_assert(!f.reply_requested);
    for (size_t n = 0; n < w.n; n++) {
        ck_assert_msg(walp_frame_parse(w.b, n, &f, why, sizeof(why)) == -1, "keepalive of %zu bytes", n);
        ck_assert_msg(strstr(why, n ? "keepalive frame of" : "empty"), "why: %s", why);
    }
    /* Bytes after replyRequested are not defined: ignored, as pg_recvlogical does. */
    w8(&w, 0x55);
    ck_assert_int_eq(walp_frame_parse(w.b, w.n, &f, why, sizeof(why)), 0);
    ck_assert_uint_eq(f.wal_end, 0xABCDEF0123456789u);
}
END_TEST

START_TEST(test_frame_unknown_kind) {
    uint8_t buf[32] = {0};
    walp_frame_t f;
    char why[128] = "";
    static const char *const whys[256] = {['r'] = "'r'", ['W'] = "'W'", ['K'] = "'K'", [0] = "0x00",
                                          [0xff] = "0xff"};
    for (int k = 0; k < 256; k++) {
        if (!whys[k])
            continue;
        buf[0] = (uint8_t)k;
        ck_assert_int_eq(walp_frame_parse(buf, sizeof(buf), &f, why, sizeof(why)), -1);
        char want[64];
        snprintf(want, sizeof(want), "unknown replication frame kind %s (32 bytes)", whys[k]);
        ck_assert_str_eq(why, want);
    }
    /* why may be absent or small: still -1, and a short why is cut, NUL-terminated. */
    ck_assert_int_eq(walp_frame_parse(buf, sizeof(buf), &f, NULL, 0), -1);
    char small[8];
    ck_assert_int_eq(walp_frame_parse(buf, sizeof(buf), &f, small, sizeof(small)), -1);
    ck_assert_str_eq(small, "unknown");
}
END_TEST

START_TEST(test_msg_begin_commit) {
    walp_msg_t m;
    char why[128] = "";
    wire_t b = begin(), c = commit();
    ck_assert_int_eq(walp_msg_parse(b.b, b.n, &m, why, sizeof(why)), 0);
    ck_assert(m.type == WALP_BEGIN && m.raw_type == 'B');
    ck_assert_uint_eq(m.final_lsn, 0x16B374D848u);
    ck_assert_int_eq(m.commit_time, -5);
    ck_assert(m.xid == 0xFFFFFFFEu && !m.prefix);
    ck_assert_int_eq(walp_msg_parse(c.b, c.n, &m, why, sizeof(why)), 0);
    ck_assert(m.type == WALP_COMMIT && m.raw_type == 'C');
    ck_assert_uint_eq(m.commit_lsn, 0x100000001u);
    ck_assert_uint_eq(m.end_lsn, 0xFFFFFFFFFFFFFFF0u);
    ck_assert(m.commit_time == 758000000000000 && m.final_lsn == 0);
}
END_TEST

/* Every proper prefix of a valid message is refused, and so is one byte more. */
static void refuse_truncations(wire_t w, const char *what) {
    walp_msg_t m;
    char why[128];
    for (size_t n = 0; n < w.n; n++) {
        why[0] = '\0';
        ck_assert_msg(walp_msg_parse(w.b, n, &m, why, sizeof(why)) == -1, "%s: prefix %zu accepted", what, n);
        ck_assert_msg(why[0] != '\0', "%s: prefix %zu: no reason", what, n);
    }
    ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), 0);
    w8(&w, 0);
    ck_assert_msg(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)) == -1, "%s: a trailing byte accepted", what);
    ck_assert_msg(why[0] != '\0', "%s", what);
}

START_TEST(test_msg_truncations) {
    refuse_truncations(begin(), "Begin");
    refuse_truncations(commit(), "Commit");
    refuse_truncations(message(1, 7, "outbox", "\x0a\x01x", 3), "Message");
    refuse_truncations(message(1, 7, "", "", 0), "empty Message");
    walp_msg_t m;
    char why[128];
    wire_t b = begin(), c = commit();
    walp_msg_parse(b.b, 20, &m, why, sizeof(why));
    ck_assert_str_eq(why, "Begin of 20 bytes, 21 expected");
    walp_msg_parse(c.b, 27, &m, why, sizeof(why)); /* c.b is zero past the Commit */
    ck_assert_str_eq(why, "Commit of 27 bytes, 26 expected");
    walp_msg_parse(c.b, 0, &m, why, sizeof(why));
    ck_assert_str_eq(why, "empty pgoutput message");
}
END_TEST

START_TEST(test_msg_message) {
    static const uint8_t content[] = {0x0a, 0x00, 0xff, 'h', 'i', 0x00};
    wire_t w = message(1, 0x16B374D848u, "outbox:orders", content, sizeof(content));
    walp_msg_t m;
    char why[128] = "";
    ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), 0);
    ck_assert(m.type == WALP_MESSAGE && m.raw_type == 'M');
    ck_assert(m.transactional);
    ck_assert_uint_eq(m.lsn, 0x16B374D848u);
    ck_assert_str_eq(m.prefix, "outbox:orders");
    ck_assert_uint_eq(m.prefix_len, 13);
    ck_assert_ptr_eq(m.prefix, (const char *)w.b + 10);
    ck_assert_uint_eq(m.content_len, sizeof(content));
    ck_assert(m.content == w.b + w.n - sizeof(content) && !memcmp(m.content, content, sizeof(content)));
    /* Non-transactional (flags 0); only bit 0 makes a message transactional. */
    for (uint8_t flags = 0; flags < 4; flags++) {
        w = message(flags, 1, "p", "x", 1);
        ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), 0);
        ck_assert_int_eq(m.transactional, flags & 1);
        ck_assert_str_eq(m.prefix, "p");
    }
    /* Empty prefix and empty content. */
    w = message(1, 0, "", "", 0);
    ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), 0);
    ck_assert(m.prefix_len == 0 && !strcmp(m.prefix, "") && m.content_len == 0);
}
END_TEST

START_TEST(test_msg_malformed_message) {
    walp_msg_t m;
    char why[128];
    /* A prefix with no NUL before the end of the buffer. */
    wire_t w = {.n = 0};
    w8(&w, 'M'), w8(&w, 1), w64(&w, 9);
    wbytes(&w, "outbox-prefix-without-end", 25);
    ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), -1);
    ck_assert_msg(strstr(why, "not NUL-terminated"), "why: %s", why);
    /* Content lengths: negative (two values), longer than what follows, shorter. */
    static const struct {
        uint32_t len;
        const char *why;
    } lens[] = {{0xFFFFFFFFu, "Message content length -1 is negative"},
                {0x80000000u, "Message content length -2147483648 is negative"},
                {5, "Message content length 5, only 4 bytes follow"},
                {0x7FFFFFFFu, "Message content length 2147483647, only 4 bytes follow"},
                {3, "Message content length 3, but 4 bytes follow"}};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        w = message(1, 9, "p", "abcd", 4);
        w.n -= 8, w32(&w, lens[i].len), w.n += 4; /* rewrite the length field in place */
        ck_assert_int_eq(walp_msg_parse(w.b, w.n, &m, why, sizeof(why)), -1);
        ck_assert_str_eq(why, lens[i].why);
    }
}
END_TEST

START_TEST(test_msg_other_types) {
    static const char types[] = "RIUDTYOSEAcrs";
    walp_msg_t m;
    char why[128] = "";
    wire_t w = {.n = 0};
    w8(&w, 0), w32(&w, 0xFFFFFFFFu), wbytes(&w, "no layout is read", 17);
    for (size_t i = 0; types[i]; i++) {
        w.b[0] = (uint8_t)types[i];
        for (size_t n = 1; n <= w.n; n += w.n - 1) { /* the type byte alone, and the whole buffer */
            memset(&m, 0x5a, sizeof(m));
            ck_assert_int_eq(walp_msg_parse(w.b, n, &m, why, sizeof(why)), 0);
            ck_assert_int_eq(m.type, WALP_OTHER);
            ck_assert_uint_eq(m.raw_type, (uint8_t)types[i]);
            ck_assert(!m.prefix && !m.content && m.lsn == 0 && m.xid == 0);
        }
    }
}
END_TEST

START_TEST(test_status_encode) {
    uint8_t out[34];
    memset(out, 0xee, sizeof(out));
    ck_assert_uint_eq(walp_status_encode(out, 0x16B374D848u, 0x0102030405060708u, UINT64_MAX, INT64_C(-2), true),
                      34);
    ck_assert(out[0] == 'r' && out[33] == 1);
    ck_assert_uint_eq(r64(out + 1), 0x16B374D848u);
    ck_assert_uint_eq(r64(out + 9), 0x0102030405060708u);
    ck_assert(out[9] == 0x01 && out[16] == 0x08); /* big-endian */
    ck_assert_uint_eq(r64(out + 17), UINT64_MAX);
    ck_assert_uint_eq(r64(out + 25), (uint64_t)INT64_C(-2));
    int64_t now = walp_now_pg_us();
    walp_status_encode(out, 0, 0, 0, now, false);
    ck_assert(r64(out + 1) == 0 && r64(out + 9) == 0 && r64(out + 17) == 0 && out[33] == 0);
    ck_assert_int_eq((int64_t)r64(out + 25), now);
}
END_TEST

START_TEST(test_now_pg_us) {
    time_t before = time(NULL);
    int64_t now = walp_now_pg_us();
    time_t after = time(NULL);
    int64_t unix_s = now / 1000000 + INT64_C(946684800);
    /* time() reads the coarse clock, which may trail the precise one by a tick across a second. */
    ck_assert_msg(unix_s >= (int64_t)before - 1 && unix_s <= (int64_t)after + 1, "%lld s since 1970, time() %lld..%lld",
                  (long long)unix_s, (long long)before, (long long)after);
}
END_TEST

START_TEST(test_lsn_text) {
    static const struct {
        const char *in, *out;
        uint64_t v;
    } ok[] = {{"16/B374D848", "16/B374D848", 0x16B374D848u},
              {"16/b374d848", "16/B374D848", 0x16B374D848u},
              {"0/0", "0/0", 0},
              {"FFFFFFFF/FFFFFFFF", "FFFFFFFF/FFFFFFFF", UINT64_MAX},
              {"00000016/00000001", "16/1", 0x1600000001u},
              {"aBc/DeF", "ABC/DEF", 0xABC00000DEFu}};
    char out[18];
    uint64_t v;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        ck_assert_msg(walp_lsn_parse(ok[i].in, &v) == 0, "\"%s\" refused", ok[i].in);
        ck_assert_uint_eq(v, ok[i].v);
        ck_assert_str_eq(walp_lsn_format(v, out), ok[i].out);
    }
    static const char *const bad[] = {"", "/", "16/", "/1", "16", "16B374D848", "1/2/3", "g/1", "1/g", " 1/2",
                                      "1/2 ", "+1/2", "1/-2", "-1/0", "0x1/2", "100000000/0", "0/100000000",
                                      "1//2", "1/2\n", "FFFFFFFFF/0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 42;
        ck_assert_msg(walp_lsn_parse(bad[i], &v) == -1, "\"%s\" accepted", bad[i]);
    }
    ck_assert_int_eq(walp_lsn_parse(NULL, &v), -1);
    /* Round trips over values with every bit pattern density. */
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (int i = 0; i < 10000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t lsn = i % 3 == 0 ? x >> (i % 64) : x;
        ck_assert_ptr_eq(walp_lsn_format(lsn, out), out);
        ck_assert_uint_le(strlen(out), 17);
        ck_assert_msg(walp_lsn_parse(out, &v) == 0 && v == lsn, "%s", out);
    }
}
END_TEST

/* ---- outbox_envelope_fields ---- */

static size_t pack(const Outbox__V1__Envelope *e, uint8_t *buf, size_t cap) {
    size_t n = outbox__v1__envelope__get_packed_size(e);
    ck_assert(n <= cap && outbox__v1__envelope__pack(e, buf) == n);
    return n;
}

#define ID "0190f0e2-8c1a-7cde-8f00-0123456789ab"
static const uint8_t KEY[] = {'k', 0x00, 0xff, '7'};

static Outbox__V1__Envelope full_envelope(Outbox__V1__Envelope__HeadersEntry **hp) {
    Outbox__V1__Envelope e = OUTBOX__V1__ENVELOPE__INIT;
    e.id = (char *)ID, e.kind = OUTBOX__V1__KIND__COMMAND, e.type = (char *)"payments.Charge";
    e.schema_version = (char *)"2.1", e.destination = (char *)"payments.commands";
    e.key.data = (uint8_t *)KEY, e.key.len = sizeof(KEY);
    e.headers = hp, e.n_headers = 1;
    e.payload.data = (uint8_t *)"{\"amount\":1999}", e.payload.len = 15;
    e.created_at_unix_us = INT64_C(1764518400123456);
    e.correlation_id = (char *)"c", e.reply_to = (char *)"orders.replies", e.content_type = (char *)"a/b";
    return e;
}

/* A borrowed, not NUL-terminated field holds exactly want. */
#define ASSERT_FIELD(ptr, len, want) ck_assert_msg((len) == strlen(want) && !memcmp((ptr), (want), (len)), \
                                                   "\"%.*s\" is not \"%s\"", (int)(len), (ptr), (want))

START_TEST(test_envelope_fields) {
    Outbox__V1__Envelope__HeadersEntry h = OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT, *hp = &h;
    h.key = (char *)"traceparent", h.value = (char *)"00-x";
    Outbox__V1__Envelope e = full_envelope(&hp);
    uint8_t buf[512];
    size_t n = pack(&e, buf, sizeof(buf));
    outbox_envelope_fields_t f;
    ck_assert_int_eq(outbox_envelope_fields(buf, n, &f), 0);
    ck_assert_int_eq(f.kind, OUTBOX__V1__KIND__COMMAND);
    ASSERT_FIELD(f.id, f.id_len, ID);
    ASSERT_FIELD(f.type, f.type_len, "payments.Charge");
    ASSERT_FIELD(f.destination, f.destination_len, "payments.commands");
    ck_assert(f.key_len == sizeof(KEY) && !memcmp(f.key, KEY, sizeof(KEY)));
    ck_assert_int_eq(f.created_at_unix_us, INT64_C(1764518400123456));
    ck_assert(f.id >= (const char *)buf && f.id + f.id_len <= (const char *)buf + n);

    /* The library's own encoder gives what the relay reads. */
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders.events", "orders.OrderCreated");
    ck_assert_ptr_nonnull(m);
    void *enc;
    size_t len;
    ck_assert_int_eq(outbox_message_encode(m, &enc, &len), OUTBOX_OK);
    ck_assert_int_eq(outbox_envelope_fields(enc, len, &f), 0);
    ck_assert_int_eq(f.kind, OUTBOX_EVENT);
    ASSERT_FIELD(f.id, f.id_len, outbox_message_id(m));
    ASSERT_FIELD(f.destination, f.destination_len, "orders.events");
    ASSERT_FIELD(f.type, f.type_len, "orders.OrderCreated");
    ck_assert(!f.key && f.key_len == 0);
    ck_assert_int_eq(f.created_at_unix_us, outbox_message_created_at_us(m));
    free(enc);
    outbox_message_destroy(m);

    /* Absent fields, negative values, and nothing at all. */
    Outbox__V1__Envelope bare = OUTBOX__V1__ENVELOPE__INIT;
    bare.kind = (Outbox__V1__Kind)-3, bare.created_at_unix_us = -7;
    n = pack(&bare, buf, sizeof(buf));
    ck_assert_int_eq(outbox_envelope_fields(buf, n, &f), 0);
    ck_assert(f.kind == -3 && f.created_at_unix_us == -7);
    ck_assert(!f.id && !f.type && !f.destination && !f.key);
    ck_assert_uint_eq(f.id_len + f.type_len + f.destination_len + f.key_len, 0);
    memset(&f, 0x5a, sizeof(f));
    ck_assert_int_eq(outbox_envelope_fields(buf, 0, &f), 0);
    ck_assert(f.kind == 0 && !f.id && !f.key && f.created_at_unix_us == 0);
}
END_TEST

START_TEST(test_envelope_fields_last_wins) {
    /* Two envelopes back to back are one protobuf message: each field set in the second wins. */
    Outbox__V1__Envelope__HeadersEntry h = OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT, *hp = &h;
    h.key = (char *)"a", h.value = (char *)"b";
    Outbox__V1__Envelope e = full_envelope(&hp), e2 = OUTBOX__V1__ENVELOPE__INIT;
    e2.id = (char *)"second", e2.kind = OUTBOX__V1__KIND__REPLY, e2.destination = (char *)"other.topic";
    uint8_t buf[1024];
    size_t n = pack(&e, buf, sizeof(buf));
    n += pack(&e2, buf + n, sizeof(buf) - n);
    outbox_envelope_fields_t f;
    ck_assert_int_eq(outbox_envelope_fields(buf, n, &f), 0);
    ASSERT_FIELD(f.id, f.id_len, "second");
    ck_assert_int_eq(f.kind, OUTBOX__V1__KIND__REPLY); /* and a later field of the first stays */
    ASSERT_FIELD(f.destination, f.destination_len, "other.topic");
    ASSERT_FIELD(f.type, f.type_len, "payments.Charge"); /* not in the second */
    ck_assert(f.key_len == sizeof(KEY) && f.created_at_unix_us == INT64_C(1764518400123456));
}
END_TEST

START_TEST(test_envelope_fields_truncated) {
    Outbox__V1__Envelope__HeadersEntry h = OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT, *hp = &h;
    h.key = (char *)"k", h.value = (char *)"v";
    Outbox__V1__Envelope e = full_envelope(&hp);
    uint8_t buf[512];
    size_t n = pack(&e, buf, sizeof(buf));
    /* A prefix is refused, or (cut between fields) reads a subset of the fields, all in bounds. */
    int refused = 0;
    for (size_t cut = 0; cut < n; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees a read past it */
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, buf, cut);
        outbox_envelope_fields_t f;
        if (outbox_envelope_fields(copy, cut, &f) == 0) {
            ck_assert(!f.id || (f.id_len == strlen(ID) && !memcmp(f.id, ID, f.id_len)));
            ck_assert(!f.key || (f.key_len == sizeof(KEY) && f.key + f.key_len <= copy + cut));
            ck_assert(!f.destination || f.destination + f.destination_len <= (const char *)copy + cut);
            ck_assert(f.kind == 0 || f.kind == OUTBOX__V1__KIND__COMMAND);
        } else {
            refused++;
        }
        free(copy);
    }
    ck_assert_int_gt(refused, (int)n / 2); /* most cuts land inside a field */
    ck_assert_int_eq(outbox_envelope_fields(buf, 10, &(outbox_envelope_fields_t){0}), -1); /* in the id */
}
END_TEST

START_TEST(test_envelope_fields_garbage) {
    static const struct {
        const char *what, *bytes;
        size_t len;
        int rc;
    } cases[] = {
        {"id as a varint", "\x08\x01", 2, -1},
        {"kind length-delimited", "\x12\x00", 2, -1},
        {"type as fixed32", "\x1d\x01\x02\x03\x04", 5, -1},
        {"destination as a varint", "\x28\x05", 2, -1},
        {"key as fixed64", "\x31\x01\x02\x03\x04\x05\x06\x07\x08", 9, -1},
        {"created_at length-delimited", "\x4a\x01\x00", 3, -1},
        {"field 0", "\x02\x00", 2, -1},
        {"group on an unknown field", "\x9b\x01\x9c\x01", 4, -1},
        {"unterminated varint", "\x10\xff\xff", 3, -1},
        {"11-byte varint", "\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12, -1},
        {"length past the end", "\x0a\x05" "abcd", 6, -1},
        {"huge length", "\x3a\xff\xff\xff\xff\x0f", 6, -1},
        {"unknown fields of each wire type", "\x20\x01\x3a\x01x\x41" "12345678\x65" "1234", 19, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        outbox_envelope_fields_t f;
        ck_assert_msg(outbox_envelope_fields((const uint8_t *)cases[i].bytes, cases[i].len, &f) == cases[i].rc,
                      "%s", cases[i].what);
    }
    outbox_envelope_fields_t f;
    static const uint8_t kind_big[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0x0f}; /* 2^32 - 1: int32 -1 */
    ck_assert_int_eq(outbox_envelope_fields(kind_big, sizeof(kind_big), &f), 0);
    ck_assert_int_eq(f.kind, -1);
}
END_TEST

static Suite *walproto_suite(void) {
    Suite *s = suite_create("walproto");
    TCase *tc = tcase_create("stream");
    tcase_add_test(tc, test_frame_xlogdata);
    tcase_add_test(tc, test_frame_keepalive);
    tcase_add_test(tc, test_frame_unknown_kind);
    tcase_add_test(tc, test_msg_begin_commit);
    tcase_add_test(tc, test_msg_truncations);
    tcase_add_test(tc, test_msg_message);
    tcase_add_test(tc, test_msg_malformed_message);
    tcase_add_test(tc, test_msg_other_types);
    tcase_add_test(tc, test_status_encode);
    tcase_add_test(tc, test_now_pg_us);
    tcase_add_test(tc, test_lsn_text);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("envelope_fields");
    tcase_add_test(te, test_envelope_fields);
    tcase_add_test(te, test_envelope_fields_last_wins);
    tcase_add_test(te, test_envelope_fields_truncated);
    tcase_add_test(te, test_envelope_fields_garbage);
    suite_add_tcase(s, te);
    return s;
}

int main(void) {
    return tu_run(walproto_suite());
}
