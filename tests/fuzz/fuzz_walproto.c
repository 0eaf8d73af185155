/*
 * Fuzz target: untrusted bytes as a replication CopyData frame (relay/walproto.c).  The parsers stay
 * in bounds whatever the bytes; what they accept points inside the input and is exactly as long as
 * the layout says; a Message's content reads through outbox_envelope_fields() as the decoder reads
 * it; LSN text and the status update round-trip.
 */
#include <string.h>

#include "fuzz.h"
#include "outbox_int.h"
#include "walproto.h"

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static int within(const void *p, size_t n, const uint8_t *buf, size_t len) {
    const uint8_t *q = p;
    return q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n);
}

/* why must be a NUL-terminated, non-empty reason inside its buffer. */
static void check_why(const char *why, size_t size) {
    FUZZ_CHECK(why[0] != '\0' && memchr(why, '\0', size), "no reason given");
}

/* Wire bytes p[0..len) hold the decoder's C string s: equal, or s then a NUL.  The decoder keeps a
 * string only up to a NUL the wire may carry (the field scan reports every byte, so its user must
 * refuse a NUL where one does not belong). */
static int same_cstr(const char *p, size_t len, const char *s) {
    size_t n = strlen(s);
    return n <= len && (!n || !memcmp(p, s, n)) && (n == len || p[n] == '\0');
}

/* The fields the relay routes by agree with what the full decoder makes of the same bytes. */
static void check_envelope(const uint8_t *buf, size_t len) {
    outbox_envelope_fields_t f;
    int rc = outbox_envelope_fields(buf, len, &f);
    if (rc == 0) {
        FUZZ_CHECK(!f.id == !f.id_len && !f.type == !f.type_len && !f.destination == !f.destination_len &&
                       !f.key == !f.key_len,
                   "a pointer without a length, or the reverse");
        FUZZ_CHECK(!f.id || within(f.id, f.id_len, buf, len), "id out of bounds");
        FUZZ_CHECK(!f.type || within(f.type, f.type_len, buf, len), "type out of bounds");
        FUZZ_CHECK(!f.destination || within(f.destination, f.destination_len, buf, len), "destination");
        FUZZ_CHECK(!f.key || within(f.key, f.key_len, buf, len), "key out of bounds");
    }
    char err[256];
    outbox_message_t *m = NULL;
    if (outbox_message_decode(&m, buf, len, err, sizeof(err)) != OUTBOX_OK)
        return;
    FUZZ_CHECK(rc == 0, "the decoder accepted %zu bytes the field scan refused", len);
    FUZZ_CHECK(f.kind == (int)m->kind, "kind %d, decoded %d", f.kind, (int)m->kind);
    FUZZ_CHECK(same_cstr(f.id, f.id_len, m->id), "id");
    FUZZ_CHECK(same_cstr(f.destination, f.destination_len, m->destination), "destination");
    FUZZ_CHECK(same_cstr(f.type, f.type_len, m->type), "type");
    FUZZ_CHECK(f.key_len == m->key_len && (!f.key_len || !memcmp(f.key, m->key, f.key_len)), "key");
    FUZZ_CHECK(f.created_at_unix_us == m->created_at_us, "created_at");
    outbox_message_destroy(m);
}

static void check_msg(const uint8_t *buf, size_t len) {
    walp_msg_t m;
    char why[128] = "";
    if (walp_msg_parse(buf, len, &m, why, sizeof(why)) != 0) {
        check_why(why, sizeof(why));
        FUZZ_CHECK(len == 0 || buf[0] == 'B' || buf[0] == 'M' || buf[0] == 'C', "type 0x%02x refused", buf[0]);
        return;
    }
    FUZZ_CHECK(len > 0 && m.raw_type == buf[0], "raw_type");
    if (m.type == WALP_OTHER) {
        FUZZ_CHECK(buf[0] != 'B' && buf[0] != 'M' && buf[0] != 'C', "%c as WALP_OTHER", buf[0]);
        return;
    }
    FUZZ_CHECK(m.type == buf[0], "type %d for 0x%02x", m.type, buf[0]);
    /* Exact layouts: one byte less is a truncation. */
    walp_msg_t m2;
    FUZZ_CHECK(walp_msg_parse(buf, len - 1, &m2, why, sizeof(why)) == -1, "%c minus a byte accepted", buf[0]);
    if (m.type == WALP_BEGIN) {
        FUZZ_CHECK(len == 21 && m.final_lsn == get64(buf + 1) && m.commit_time == (int64_t)get64(buf + 9),
                   "Begin");
    } else if (m.type == WALP_COMMIT) {
        FUZZ_CHECK(len == 26 && m.commit_lsn == get64(buf + 2) && m.end_lsn == get64(buf + 10), "Commit");
    } else {
        FUZZ_CHECK(m.transactional == ((buf[1] & 1) != 0) && m.lsn == get64(buf + 2), "Message header");
        FUZZ_CHECK(within(m.prefix, m.prefix_len + 1, buf, len), "prefix out of bounds");
        FUZZ_CHECK(m.prefix_len == strlen(m.prefix), "prefix_len %zu", m.prefix_len);
        FUZZ_CHECK(within(m.content, m.content_len, buf, len) && m.content + m.content_len == buf + len,
                   "content out of bounds or short of the end");
        FUZZ_CHECK(len == 10 + m.prefix_len + 1 + 4 + m.content_len, "Message of %zu bytes", len);
        check_envelope(m.content, m.content_len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    walp_frame_t f;
    char why[128] = "";
    if (walp_frame_parse(data, size, &f, why, sizeof(why)) == 0) {
        FUZZ_CHECK(f.kind == (char)data[0] && (f.kind == 'w' || f.kind == 'k'), "kind");
        if (f.kind == 'w') {
            FUZZ_CHECK(size >= 25 && f.data == data + 25 && f.data_len == size - 25, "XLogData data");
            FUZZ_CHECK(f.wal_start == get64(data + 1) && f.wal_end == get64(data + 9), "XLogData positions");
            check_msg(f.data, f.data_len);
        } else {
            FUZZ_CHECK(size >= 18 && f.wal_end == get64(data + 1) && f.reply_requested == (data[17] != 0),
                       "keepalive");
        }
    } else {
        check_why(why, sizeof(why));
    }
    /* The input as a bare pgoutput message too: reaches Message branches without a frame header. */
    check_msg(data, size);

    /* Any 8 bytes as an LSN: printed as PostgreSQL prints it, read back the same. */
    uint8_t b8[8] = {0};
    memcpy(b8, data, size < 8 ? size : 8);
    uint64_t lsn = get64(b8), back = ~lsn;
    char text[18], upper[18];
    walp_lsn_format(lsn, text);
    FUZZ_CHECK(strlen(text) <= 17 && walp_lsn_parse(text, &back) == 0 && back == lsn, "LSN %s", text);
    /* The input as LSN text: what parses prints to text that parses to the same value. */
    char s[40];
    size_t n = size < sizeof(s) - 1 ? size : sizeof(s) - 1;
    memcpy(s, data, n);
    s[n] = '\0';
    if (walp_lsn_parse(s, &lsn) == 0) {
        walp_lsn_format(lsn, upper);
        FUZZ_CHECK(walp_lsn_parse(upper, &back) == 0 && back == lsn, "\"%s\" -> %s", s, upper);
    }

    uint8_t st[34];
    FUZZ_CHECK(walp_status_encode(st, lsn, ~lsn, lsn ^ 1, (int64_t)lsn, size & 1) == 34 && st[0] == 'r' &&
                   get64(st + 1) == lsn && get64(st + 9) == ~lsn && get64(st + 17) == (lsn ^ 1) &&
                   get64(st + 25) == lsn && st[33] == (size & 1),
               "status update");
    return 0;
}
