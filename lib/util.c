/*
 * Small helpers shared by the library and the relay: bounded formatting, identifier quoting,
 * Kafka topic name checks and clocks.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox_int.h"

void outbox_snprintf(char *dst, size_t size, const char *fmt, ...) {
    if (!dst || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, size, fmt, ap);
    va_end(ap);
}

char *outbox_strdup(const char *s) {
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Same rule as PQescapeIdentifier: wrap in double quotes and double any embedded quote, so the
 * name can never end the identifier early.  Needs no connection, so the handle can do it once. */
char *outbox_quote_ident(const char *ident) {
    size_t n = 2;
    for (const char *p = ident; *p; p++)
        n += *p == '"' ? 2 : 1;
    char *q = malloc(n + 1), *w = q;
    if (!q)
        return NULL;
    *w++ = '"';
    for (const char *p = ident; *p; p++) {
        if (*p == '"')
            *w++ = '"';
        *w++ = *p;
    }
    *w++ = '"';
    *w = '\0';
    return q;
}

int outbox_topic_valid(const char *s, char *why, size_t why_size) {
    if (!s || !*s) {
        outbox_snprintf(why, why_size, "is empty; a Kafka topic name has 1 to %d characters",
                        OUTBOX_KAFKA_TOPIC_MAX);
        return 0;
    }
    size_t len = strlen(s);
    if (len > OUTBOX_KAFKA_TOPIC_MAX) {
        outbox_snprintf(why, why_size, "is %zu characters long; a Kafka topic name has at most %d",
                        len, OUTBOX_KAFKA_TOPIC_MAX);
        return 0;
    }
    if (!strcmp(s, ".") || !strcmp(s, "..")) {
        outbox_snprintf(why, why_size, "is \"%s\", which Kafka does not allow as a topic name", s);
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            outbox_snprintf(why, why_size,
                            "has the character 0x%02x at offset %zu; a Kafka topic name uses only "
                            "[a-zA-Z0-9._-]",
                            c, i);
            return 0;
        }
    }
    return 1;
}

ptrdiff_t outbox_utf8_invalid_at(const char *str) {
    const unsigned char *s = (const unsigned char *)str, *p = s;
    while (*p) {
        unsigned c = *p, cp;
        size_t n;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3;
        else
            return p - s; /* a continuation byte, an overlong lead (0xc0, 0xc1) or beyond U+10FFFF */
        cp = c & (0x3fu >> n);
        for (size_t i = 1; i <= n; i++) { /* stops at the terminating NUL, which is no continuation */
            if ((p[i] & 0xc0) != 0x80)
                return p - s;
            cp = cp << 6 | (p[i] & 0x3fu);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return p - s; /* overlong, a UTF-16 surrogate, or beyond U+10FFFF */
        p += n + 1;
    }
    return -1;
}

const char *outbox_logfmt_value(const char *s, char *out, size_t size) {
    size_t n = 0;
    if (!size)
        return out;
    for (; s && *s && n + 1 < size; s++)
        out[n++] = *s == '"' ? '\'' : (*s == '\n' || *s == '\r') ? ' ' : *s;
    while (n && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
    return out;
}

int64_t outbox_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t outbox_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
