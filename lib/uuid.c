/*
 * UUIDv7 (RFC 9562): 48-bit Unix milliseconds, 12 bits of sub-millisecond time, 62 random bits.
 * Ids from one process are strictly increasing, so outbox ids sort by creation time.
 */
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "outbox_int.h"

/*
 * The one piece of process-wide mutable state in the library, on purpose: ids made by different
 * threads can only be kept strictly ordered through a shared clock guard.  It is a lock-free
 * atomic holding the last 60-bit timestamp (ms << 12 | sub-ms fraction) handed out.
 */
static _Atomic uint64_t last_ts;

static uint64_t next_ts(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint64_t frac = ((uint64_t)(ts.tv_nsec % 1000000) << 12) / 1000000; /* 0..4095 */
    uint64_t now = (ms << 12) | frac;
    uint64_t prev = atomic_load_explicit(&last_ts, memory_order_relaxed);
    uint64_t next;
    do {
        /* Same tick or a clock step backwards: take the next value after the last one. */
        next = now > prev ? now : prev + 1;
    } while (!atomic_compare_exchange_weak_explicit(&last_ts, &prev, next, memory_order_relaxed,
                                                    memory_order_relaxed));
    return next;
}

static void random_bytes(uint8_t *b, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(b + got, n - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        /* getrandom() cannot fail for small requests after boot; fall back to the clock rather
         * than abort, since uniqueness also rests on the strictly increasing timestamp. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        for (; got < n; got++)
            b[got] = (uint8_t)(ts.tv_nsec >> (8 * (got % 4)));
    }
}

void outbox_uuid_text(const uint8_t u[16], char out[OUTBOX_UUID_STR_LEN + 1]) {
    static const char hex[] = "0123456789abcdef";
    char *w = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *w++ = '-';
        *w++ = hex[u[i] >> 4];
        *w++ = hex[u[i] & 15];
    }
    *w = '\0';
}

void outbox_uuid7(char out[OUTBOX_UUID_STR_LEN + 1]) {
    uint8_t u[16];
    uint64_t t = next_ts();
    uint64_t ms = t >> 12;
    uint16_t sub = (uint16_t)(t & 0xfff);
    for (int i = 0; i < 6; i++)
        u[i] = (uint8_t)(ms >> (40 - 8 * i));
    u[6] = (uint8_t)(0x70 | (sub >> 8));
    u[7] = (uint8_t)(sub & 0xff);
    random_bytes(u + 8, 8);
    u[8] = (uint8_t)(0x80 | (u[8] & 0x3f));
    outbox_uuid_text(u, out);
}

int outbox_uuid_valid(const char *s) {
    if (!s || strlen(s) != OUTBOX_UUID_STR_LEN)
        return 0;
    for (int i = 0; i < OUTBOX_UUID_STR_LEN; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

int outbox_uuid_parse(const char *text, size_t len, uint8_t out[16]) {
    char s[OUTBOX_UUID_STR_LEN + 1];
    if (len != OUTBOX_UUID_STR_LEN)
        return -1;
    memcpy(s, text, len);
    s[len] = '\0';
    if (!outbox_uuid_valid(s))
        return -1;
    for (int i = 0, k = 0; i < 16; i++, k += 2) {
        if (s[k] == '-')
            k++;
        int hi = s[k] <= '9' ? s[k] - '0' : (s[k] | 0x20) - 'a' + 10;
        int lo = s[k + 1] <= '9' ? s[k + 1] - '0' : (s[k + 1] | 0x20) - 'a' + 10;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
