/*
 * Bounds-checked, allocation-free scans of an Envelope for the relay's hot path: the kind and the
 * headers map (outbox_envelope_scan), the fields the WAL source routes by (outbox_envelope_fields),
 * without decoding (and copying) the whole message.
 */
#include <string.h>

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

/* Reads a length-delimited field's bytes into *p and *n (NULL and 0 when empty: proto3 does not tell an
 * empty string from an absent one), advancing *cur past them. */
static int bytes_field(const uint8_t **cur, const uint8_t *end, const uint8_t **p, size_t *n) {
    uint64_t len;
    if (varint(cur, end, &len) || len > (uint64_t)(end - *cur))
        return -1;
    *p = len ? *cur : NULL;
    *n = (size_t)len;
    *cur += len;
    return 0;
}

/* A varint as protobuf's int64 (two's complement), without an implementation-defined conversion. */
static int64_t as_int64(uint64_t v) {
    return v <= (uint64_t)INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

static int as_int32(uint32_t v) {
    return v <= (uint32_t)INT32_MAX ? (int)v : -(int)(~v) - 1;
}

/* Ownership: buf is borrowed; f's pointers point into it and are valid as long as buf is.  The last
 * occurrence of a field wins, as in protobuf; a routed field with another wire type is malformed. */
int outbox_envelope_fields(const uint8_t *buf, size_t len, outbox_envelope_fields_t *f) {
    const uint8_t *p = buf, *end = buf + len;
    memset(f, 0, sizeof(*f));
    while (p < end) {
        uint64_t tag, n;
        const uint8_t *s = NULL;
        size_t sl = 0;
        if (varint(&p, end, &tag))
            return -1;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        switch (field) {
        case 0:
            return -1;
        case 2: /* kind (enum: int32 on the wire as a varint) */
        case 9: /* created_at_unix_us */
            if (wt != 0 || varint(&p, end, &n))
                return -1;
            if (field == 2) /* an int32 enum: the low 32 bits, as protobuf-c reads it */
                f->kind = as_int32((uint32_t)n);
            else
                f->created_at_unix_us = as_int64(n);
            break;
        case 1: /* id */
        case 3: /* type */
        case 5: /* destination */
        case 6: /* key */
            if (wt != 2 || bytes_field(&p, end, &s, &sl))
                return -1;
            if (field == 1)
                f->id = (const char *)s, f->id_len = sl;
            else if (field == 3)
                f->type = (const char *)s, f->type_len = sl;
            else if (field == 5)
                f->destination = (const char *)s, f->destination_len = sl;
            else
                f->key = s, f->key_len = sl;
            break;
        default:
            if (skip(&p, end, wt))
                return -1;
        }
    }
    return 0;
}
