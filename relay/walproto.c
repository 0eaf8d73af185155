/*
 * walproto.c: the bytes of a logical replication stream (CopyData frames, pgoutput protocol 1
 * messages, the standby status update and LSN text), parsed and written without I/O or allocation.
 * Layouts are in walproto.h; every read is bounds-checked against the caller's length.
 */
#include "walproto.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC (10957 days). */
#define WALP_PG_EPOCH_OFFSET_S INT64_C(946684800)

/* Fixed sizes on the wire, type or kind byte included. */
#define WALP_XLOGDATA_HDR 25  /* 'w', dataStart, walEnd, sendTime */
#define WALP_KEEPALIVE_LEN 18 /* 'k', walEnd, sendTime, replyRequested */
#define WALP_BEGIN_LEN 21     /* 'B', final_lsn, commit_time, xid */
#define WALP_COMMIT_LEN 26    /* 'C', flags, commit_lsn, end_lsn, commit_time */
#define WALP_MESSAGE_MIN 15   /* 'M', flags, lsn, "" (the NUL), length */
#define WALP_LSN_HALF_MAX 8   /* hex digits in each half, as PostgreSQL's pg_lsn_in allows */

static int fail(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes the reason for a -1 into why (may be NULL or 0 bytes) and returns -1. */
static int fail(char *why, size_t why_size, const char *fmt, ...) {
    if (why && why_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Big-endian reads; the caller has checked that the bytes are there. */
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

/* Two's complement without relying on implementation-defined conversions. */
static int64_t to_i64(uint64_t v) {
    return v <= (uint64_t)INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

static int32_t to_i32(uint32_t v) {
    return v <= (uint32_t)INT32_MAX ? (int32_t)v : -(int32_t)(~v) - 1;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The type or kind byte as text for an error: 'x' when printable, else its code. */
static const char *byte_name(uint8_t b, char out[8]) {
    if (b >= 0x20 && b < 0x7f)
        snprintf(out, 8, "'%c'", (char)b);
    else
        snprintf(out, 8, "0x%02x", (unsigned)b);
    return out;
}

/* Ownership: buf is borrowed; f->data points into it and is valid as long as buf is. */
int walp_frame_parse(const uint8_t *buf, size_t len, walp_frame_t *f, char *why, size_t why_size) {
    char name[8];
    memset(f, 0, sizeof(*f));
    if (!buf || len == 0)
        return fail(why, why_size, "empty replication frame");
    switch (buf[0]) {
    case 'w':
        if (len < WALP_XLOGDATA_HDR)
            return fail(why, why_size, "XLogData frame of %zu bytes, at least %d expected", len,
                        WALP_XLOGDATA_HDR);
        f->kind = 'w';
        f->wal_start = get_u64(buf + 1);
        f->wal_end = get_u64(buf + 9);
        f->send_time = to_i64(get_u64(buf + 17));
        f->data = buf + WALP_XLOGDATA_HDR;
        f->data_len = len - WALP_XLOGDATA_HDR;
        return 0;
    case 'k':
        /* Bytes after replyRequested are ignored, as pg_recvlogical does: none are defined. */
        if (len < WALP_KEEPALIVE_LEN)
            return fail(why, why_size, "keepalive frame of %zu bytes, at least %d expected", len,
                        WALP_KEEPALIVE_LEN);
        f->kind = 'k';
        f->wal_end = get_u64(buf + 1);
        f->send_time = to_i64(get_u64(buf + 9));
        f->reply_requested = buf[17] != 0;
        return 0;
    default:
        return fail(why, why_size, "unknown replication frame kind %s (%zu bytes)",
                    byte_name(buf[0], name), len);
    }
}

/* 'M': flags, lsn, prefix\0, int32 length, content.  Exactly that: a byte left over means the
 * layout is not the one we read (a protocol 2+ streamed message carries an xid first). */
static int parse_message(const uint8_t *buf, size_t len, walp_msg_t *m, char *why, size_t why_size) {
    if (len < WALP_MESSAGE_MIN)
        return fail(why, why_size, "Message of %zu bytes, at least %d expected", len,
                    WALP_MESSAGE_MIN);
    m->transactional = (buf[1] & 1) != 0;
    m->lsn = get_u64(buf + 2);
    const uint8_t *prefix = buf + 10, *end = buf + len;
    const uint8_t *nul = memchr(prefix, '\0', (size_t)(end - prefix));
    if (!nul)
        return fail(why, why_size, "Message prefix is not NUL-terminated within its %zu bytes", len);
    size_t rest = (size_t)(end - (nul + 1));
    if (rest < 4)
        return fail(why, why_size, "Message truncated after its prefix: %zu of 4 length bytes", rest);
    int32_t clen = to_i32(get_u32(nul + 1));
    rest -= 4;
    if (clen < 0)
        return fail(why, why_size, "Message content length %ld is negative", (long)clen);
    if ((size_t)clen > rest)
        return fail(why, why_size, "Message content length %ld, only %zu bytes follow", (long)clen,
                    rest);
    if ((size_t)clen < rest)
        return fail(why, why_size, "Message content length %ld, but %zu bytes follow", (long)clen,
                    rest);
    m->prefix = (const char *)prefix;
    m->prefix_len = (size_t)(nul - prefix);
    m->content = nul + 5;
    m->content_len = (size_t)clen;
    return 0;
}

/* Ownership: buf is borrowed; m->prefix and m->content point into it and are valid as long as buf
 * is.  Begin and Commit must have exactly their protocol 1 length: a different one means we are not
 * reading the layout the server wrote. */
int walp_msg_parse(const uint8_t *buf, size_t len, walp_msg_t *m, char *why, size_t why_size) {
    memset(m, 0, sizeof(*m));
    if (!buf || len == 0)
        return fail(why, why_size, "empty pgoutput message");
    m->raw_type = buf[0];
    switch (buf[0]) {
    case 'B':
        if (len != WALP_BEGIN_LEN)
            return fail(why, why_size, "Begin of %zu bytes, %d expected", len, WALP_BEGIN_LEN);
        m->final_lsn = get_u64(buf + 1);
        m->commit_time = to_i64(get_u64(buf + 9));
        m->xid = get_u32(buf + 17);
        break;
    case 'M':
        if (parse_message(buf, len, m, why, why_size))
            return -1;
        break;
    case 'C':
        if (len != WALP_COMMIT_LEN)
            return fail(why, why_size, "Commit of %zu bytes, %d expected", len, WALP_COMMIT_LEN);
        m->commit_lsn = get_u64(buf + 2);
        m->end_lsn = get_u64(buf + 10);
        m->commit_time = to_i64(get_u64(buf + 18));
        break;
    default:
        m->type = WALP_OTHER;
        return 0;
    }
    m->type = buf[0];
    return 0;
}

/* Ownership: writes into the caller's 34 bytes; nothing is kept. */
size_t walp_status_encode(uint8_t out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                          int64_t now_pg_us, bool reply_requested) {
    out[0] = 'r';
    put_u64(out + 1, written);
    put_u64(out + 9, flushed);
    put_u64(out + 17, applied);
    put_u64(out + 25, (uint64_t)now_pg_us);
    out[33] = reply_requested ? 1 : 0;
    return 34;
}

/* Ownership: none; reads the real-time clock. */
int64_t walp_now_pg_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((int64_t)ts.tv_sec - WALP_PG_EPOCH_OFFSET_S) * 1000000 + (int64_t)(ts.tv_nsec / 1000);
}

/* Reads 1 to 8 hex digits (either case) at *s into *out, advancing *s; -1 if there are none or
 * more than 8 (a half would not fit 32 bits). */
static int lsn_half(const char **s, uint32_t *out) {
    uint32_t v = 0;
    int n = 0;
    for (const char *p = *s;; p++, n++) {
        unsigned d;
        if (*p >= '0' && *p <= '9')
            d = (unsigned)(*p - '0');
        else if (*p >= 'A' && *p <= 'F')
            d = (unsigned)(*p - 'A' + 10);
        else if (*p >= 'a' && *p <= 'f')
            d = (unsigned)(*p - 'a' + 10);
        else
            break;
        if (n == WALP_LSN_HALF_MAX)
            return -1;
        v = v << 4 | d;
    }
    if (n == 0)
        return -1;
    *s += n;
    *out = v;
    return 0;
}

/* Ownership: s is borrowed and only read.  Accepts what PostgreSQL's pg_lsn accepts: 1-8 hex
 * digits, '/', 1-8 hex digits, nothing else (no sign, space or "0x"). */
int walp_lsn_parse(const char *s, uint64_t *lsn) {
    uint32_t hi, lo;
    if (!s || lsn_half(&s, &hi) || *s++ != '/' || lsn_half(&s, &lo) || *s != '\0')
        return -1;
    *lsn = (uint64_t)hi << 32 | lo;
    return 0;
}

/* Ownership: writes into the caller's 18 bytes and returns them. */
char *walp_lsn_format(uint64_t lsn, char out[18]) {
    snprintf(out, 18, "%X/%X", (unsigned)(uint32_t)(lsn >> 32), (unsigned)(uint32_t)lsn);
    return out;
}
