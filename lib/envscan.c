/*
 * A bounds-checked, allocation-free scan of an Envelope for the relay's hot path: it reads the
 * kind and the headers map without decoding (and copying) the whole message.
 */
#include "outbox_int.h"

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skips a field of the given wire type; -1 on malformed input or group wire types. */
static int skip(const uint8_t **p, const uint8_t *end, unsigned wt) {
    uint64_t n;
    switch (wt) {
    case 0:
        return varint(p, end, &n);
    case 1:
        n = 8;
        break;
    case 2:
        if (varint(p, end, &n))
            return -1;
        break;
    case 5:
        n = 4;
        break;
    default:
        return -1;
    }
    if (n > (uint64_t)(end - *p))
        return -1;
    *p += n;
    return 0;
}

/* Reads one map entry (field 1 key, field 2 value). */
static int header_entry(const uint8_t *p, const uint8_t *end, outbox_envscan_header_cb *cb,
                        void *opaque) {
    const char *k = "", *v = "";
    size_t kl = 0, vl = 0;
    while (p < end) {
        uint64_t tag, n;
        if (varint(&p, end, &tag))
            return -1;
        if ((tag >> 3) == 1 || (tag >> 3) == 2) {
            if ((tag & 7) != 2 || varint(&p, end, &n) || n > (uint64_t)(end - p))
                return -1;
            if ((tag >> 3) == 1) {
                k = (const char *)p;
                kl = (size_t)n;
            } else {
                v = (const char *)p;
                vl = (size_t)n;
            }
            p += n;
        } else if (skip(&p, end, (unsigned)(tag & 7))) {
            return -1;
        }
    }
    return cb ? cb(k, kl, v, vl, opaque) : 0;
}

int outbox_envelope_scan(const uint8_t *buf, size_t len, int *kind, outbox_envscan_header_cb *cb,
                         void *opaque) {
    const uint8_t *p = buf, *end = buf + len;
    *kind = 0;
    while (p < end) {
        uint64_t tag, n;
        if (varint(&p, end, &tag))
            return -1;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        if (field == 0)
            return -1;
        if (field == 2 && wt == 0) {
            if (varint(&p, end, &n))
                return -1;
            *kind = (int)n;
        } else if (field == 7 && wt == 2) {
            if (varint(&p, end, &n) || n > (uint64_t)(end - p))
                return -1;
            if (header_entry(p, p + n, cb, opaque))
                return -1;
            p += n;
        } else if (skip(&p, end, wt)) {
            return -1;
        }
    }
    return 0;
}
