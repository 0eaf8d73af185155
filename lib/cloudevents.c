/*
 * cloudevents.c: the CloudEvents 1.0 Kafka protocol binding, binary content mode, both ways: the
 * relay's record (value = payload, attributes as "ce_" headers) built from an encoded Envelope
 * without decoding it, and the consumer's reading of such a record into an outbox_message_t.
 * Also the W3C Trace Context (level 1) and RFC 3986 URI-reference checks they need.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "outbox_int.h"

/* CloudEvents: extension names are lowercase ASCII letters and digits, at most 20 characters
 * (spec 1.0.2, "Attribute Naming Convention"); ours are listed once here for the tests. */
static const char *const extension_names[] = {"outboxkind", "schemaversion", "correlationid", "replyto", NULL};

const char *const *outbox_ce_extension_names(void) {
    return extension_names;
}

/* ---- small checks -------------------------------------------------------------------------- */

static int is_lchex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int is_hex(char c) {
    return is_lchex(c) || (c >= 'A' && c <= 'F');
}

static int is_lcalpha(char c) {
    return c >= 'a' && c <= 'z';
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* 1 if the n bytes at s are well-formed UTF-8 with no NUL. */
static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!k || k > n - i)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] > 0x8f))
            return 0;
        i += k;
    }
    return 1;
}

/* 1 if the n bytes are printable UTF-8: no C0/C1 control character, no DEL (ce_subject). */
static int printable_utf8(const uint8_t *s, size_t n) {
    if (!n || !utf8_ok(s, n))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return 0;
        if (s[i] == 0xc2 && i + 1 < n && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return 0;
    }
    return 1;
}

/* ---- W3C Trace Context, level 1 ------------------------------------------------------------ */

static int all_zero(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return 0;
    return 1;
}

const char *outbox_traceparent_problem(const char *s, char *why, size_t why_size) {
    /* version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 */
    static const struct {
        size_t at, len;
        const char *name;
    } parts[] = {{0, 2, "version"}, {3, 32, "trace id"}, {36, 16, "parent id"}, {53, 2, "flags"}};
    size_t n = strlen(s);
    if (n != 55) {
        outbox_snprintf(why, why_size, "%zu characters, not 55", n);
        return why;
    }
    if (s[2] != '-' || s[35] != '-' || s[52] != '-') {
        outbox_snprintf(why, why_size, "the parts are not separated by '-' at offsets 2, 35 and 52");
        return why;
    }
    for (size_t p = 0; p < 4; p++)
        for (size_t i = parts[p].at; i < parts[p].at + parts[p].len; i++)
            if (!is_lchex(s[i])) {
                outbox_snprintf(why, why_size, "the %s has '%c' at offset %zu (lowercase hex digits only)",
                                parts[p].name, s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?', i);
                return why;
            }
    if (s[0] != '0' || s[1] != '0') {
        outbox_snprintf(why, why_size, "version %.2s is not 00", s);
        return why;
    }
    if (all_zero(s + 3, 32)) {
        outbox_snprintf(why, why_size, "the trace id is all zeros");
        return why;
    }
    if (all_zero(s + 36, 16)) {
        outbox_snprintf(why, why_size, "the parent id is all zeros");
        return why;
    }
    return NULL;
}

static int key_chr(char c) {
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

/* simple-key = lcalpha 0*255(key-chr); multi-tenant-key = tenant-id "@" system-id with
 * tenant-id = (lcalpha / DIGIT) 0*240(key-chr) and system-id = lcalpha 0*13(key-chr). */
static int tracestate_key_ok(const char *k, size_t n) {
    const char *at = memchr(k, '@', n);
    if (!at) {
        if (!n || n > 256 || !is_lcalpha(k[0]))
            return 0;
        for (size_t i = 1; i < n; i++)
            if (!key_chr(k[i]))
                return 0;
        return 1;
    }
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (!tn || tn > 241 || !sn || sn > 14 || (!is_lcalpha(k[0]) && !is_digit(k[0])) || !is_lcalpha(at[1]))
        return 0;
    for (size_t i = 1; i < tn; i++)
        if (!key_chr(k[i]))
            return 0;
    for (size_t i = 2; i <= sn; i++)
        if (!key_chr(at[i]))
            return 0;
    return 1;
}

/* value = 0*255(chr) nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E; chr = %x20 / nblk-chr */
static int tracestate_value_ok(const char *v, size_t n) {
    if (!n || n > 256 || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e || v[i] == ',' || v[i] == '=')
            return 0;
    return 1;
}

const char *outbox_tracestate_problem(const char *s, char *why, size_t why_size) {
    struct {
        const char *k;
        size_t n;
    } keys[32];
    size_t members = 0, idx = 0;
    for (const char *p = s;; idx++) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *b = p, *e = p + n;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (b < e) { /* empty members are allowed and ignored */
            const char *eq = memchr(b, '=', (size_t)(e - b));
            if (!eq || !tracestate_key_ok(b, (size_t)(eq - b))) {
                outbox_snprintf(why, why_size, "member %zu has %s", idx + 1,
                                eq ? "an invalid key (lowercase letters, digits, _-*/ and one '@')"
                                   : "no '=' (members are key=value)");
                return why;
            }
            if (!tracestate_value_ok(eq + 1, (size_t)(e - eq - 1))) {
                outbox_snprintf(why, why_size, "member %zu has an invalid value (1 to 256 printable ASCII "
                                "characters, no ',' or '=', not ending with a space)", idx + 1);
                return why;
            }
            if (members == 32) {
                outbox_snprintf(why, why_size, "more than 32 list members");
                return why;
            }
            for (size_t i = 0; i < members; i++)
                if (keys[i].n == (size_t)(eq - b) && !memcmp(keys[i].k, b, keys[i].n)) {
                    outbox_snprintf(why, why_size, "member %zu repeats the key of member %zu", idx + 1, i + 1);
                    return why;
                }
            keys[members].k = b;
            keys[members].n = (size_t)(eq - b);
            members++;
        }
        if (!end)
            break;
        p = end + 1;
    }
    return NULL;
}

/* ---- RFC 3986 URI-reference (ce_source) ---------------------------------------------------- */

static int uri_chr(char c) {
    /* unreserved / gen-delims / sub-delims, and '%' checked apart */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || (c && strchr("-._~:/?#[]@!$&'()*+,;=", c));
}

const char *outbox_uri_reference_problem(const char *s, char *why, size_t why_size) {
    if (!*s)
        return outbox_snprintf(why, why_size, "it is empty"), why;
    const char *hash = strchr(s, '#');
    if (hash && strchr(hash + 1, '#'))
        return outbox_snprintf(why, why_size, "it has a second '#'"), why;
    for (const char *p = s; *p; p++) {
        if (*p == '%') {
            if (!is_hex(p[1]) || !is_hex(p[2]))
                return outbox_snprintf(why, why_size, "'%%' at offset %td is not followed by two hex digits",
                                       p - s), why;
            p += 2;
        } else if (!uri_chr(*p)) {
            unsigned char c = (unsigned char)*p;
            if (c >= 0x21 && c < 0x7f)
                outbox_snprintf(why, why_size, "'%c' at offset %td is not allowed in a URI (percent-encode it)",
                                *p, p - s);
            else
                outbox_snprintf(why, why_size, "byte 0x%02x at offset %td is not allowed in a URI "
                                "(percent-encode it)", c, p - s);
            return why;
        }
    }
    /* A ':' before any '/', '?' or '#' ends a scheme, which starts with a letter and goes on with
     * letters, digits, '+', '-' and '.'; a relative reference cannot have one in its first segment. */
    size_t first = strcspn(s, "/?#");
    const char *colon = memchr(s, ':', first);
    if (colon) {
        int ok = colon > s && ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'));
        for (const char *p = s + 1; ok && p < colon; p++)
            ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || is_digit(*p) || strchr("+-.", *p);
        if (!ok)
            return outbox_snprintf(why, why_size, "\"%.*s\" before the ':' is not a URI scheme",
                                   (int)(colon - s > 40 ? 40 : colon - s), s), why;
    }
    /* '[' and ']' only around an IP literal host: right after "//". */
    const char *auth = strstr(s, "//");
    size_t auth_end = auth ? (size_t)(auth - s) + 2 + strcspn(auth + 2, "/?#") : 0;
    for (const char *p = s; *p && (p - s) < (ptrdiff_t)strcspn(s, "#?") + 1; p++)
        if ((*p == '[' || *p == ']') && (!auth || p < auth + 2 || (size_t)(p - s) >= auth_end))
            return outbox_snprintf(why, why_size, "'%c' at offset %td is only allowed around an IP literal host",
                                   *p, p - s), why;
    return NULL;
}

void outbox_ce_source_default(const char *schema, char *out, size_t size) {
    static const char hex[] = "0123456789ABCDEF";
    outbox_snprintf(out, size, "/outbox/");
    size_t len = strlen(out);
    for (const unsigned char *p = (const unsigned char *)schema; *p && len + 4 < size; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || is_digit((char)*p) || strchr("-._~", *p)) {
            out[len++] = (char)*p;
        } else {
            out[len++] = '%';
            out[len++] = hex[*p >> 4];
            out[len++] = hex[*p & 15];
        }
    }
    out[len] = '\0';
}

/* ---- the relay's side: an Envelope's fields as a binary-mode record ------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n;
    bool set;
} span_t;

/* The fields of an encoded Envelope, pointing into it (last occurrence wins, as in protobuf). */
typedef struct {
    span_t id, type, schema_version, payload, correlation_id, reply_to, content_type;
    uint64_t kind;
    int64_t created_at_us;
} env_fields_t;

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

static int env_fields(const uint8_t *buf, size_t len, env_fields_t *f) {
    const uint8_t *p = buf, *end = buf + len;
    memset(f, 0, sizeof(*f));
    while (p < end) {
        uint64_t tag, n;
        if (varint(&p, end, &tag))
            return -1;
        unsigned field = (unsigned)(tag >> 3), wt = (unsigned)(tag & 7);
        if (field == 0)
            return -1;
        if (wt == 0) {
            if (varint(&p, end, &n))
                return -1;
            if (field == 2)
                f->kind = n;
            else if (field == 9)
                f->created_at_us = (int64_t)n;
            continue;
        }
        if (wt == 1 || wt == 5) {
            n = wt == 1 ? 8 : 4;
            if (n > (uint64_t)(end - p))
                return -1;
            p += n;
            continue;
        }
        if (wt != 2 || varint(&p, end, &n) || n > (uint64_t)(end - p))
            return -1;
        span_t sp = {p, (size_t)n, true}, *dst = NULL;
        switch (field) {
        case 1: dst = &f->id; break;
        case 3: dst = &f->type; break;
        case 4: dst = &f->schema_version; break;
        case 8: dst = &f->payload; break;
        case 10: dst = &f->correlation_id; break;
        case 11: dst = &f->reply_to; break;
        case 12: dst = &f->content_type; break;
        default: break; /* destination, key (the record's own), headers (read by the scan) */
        }
        if (dst)
            *dst = sp;
        p += n;
    }
    return 0;
}

static const char *kind_text(uint64_t kind) {
    static const char *names[] = {"UNSPECIFIED", "EVENT", "COMMAND", "REPLY", "DOCUMENT"};
    return kind <= 4 ? names[kind] : "UNKNOWN";
}

static void digits(char *out, long v, int n) {
    for (int i = n - 1; i >= 0; i--, v /= 10)
        out[i] = (char)('0' + v % 10);
}

/* By hand, and gmtime_r once per second of created_at: snprintf and gmtime_r were a third of the
 * cost of a record's headers (bench_drain -F). */
int outbox_ce_time_format_cached(int64_t us, char out[32], outbox_ce_time_cache_t *cache) {
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    outbox_ce_time_cache_t local = {0, 0, ""};
    if (!cache)
        cache = &local;
    if (!cache->valid || cache->secs != secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        cache->valid = 0;
        if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            return -1;
        char *p = cache->prefix; /* YYYY-MM-DDTHH:MM:SS */
        digits(p, tm.tm_year + 1900, 4);
        p[4] = '-';
        digits(p + 5, tm.tm_mon + 1, 2);
        p[7] = '-';
        digits(p + 8, tm.tm_mday, 2);
        p[10] = 'T';
        digits(p + 11, tm.tm_hour, 2);
        p[13] = ':';
        digits(p + 14, tm.tm_min, 2);
        p[16] = ':';
        digits(p + 17, tm.tm_sec, 2);
        p[19] = '\0';
        cache->secs = secs;
        cache->valid = 1;
    }
    memcpy(out, cache->prefix, 19);
    out[19] = '.';
    digits(out + 20, (long)frac, 6);
    out[26] = 'Z';
    out[27] = '\0';
    return 0;
}

int outbox_ce_time_format(int64_t us, char out[32]) {
    return outbox_ce_time_format_cached(us, out, NULL);
}

typedef struct {
    rd_kafka_headers_t *h;
    bool content_type_written;
    int failed;
} own_headers_t;

/* The message's own headers follow the attributes.  A "ce_" name (only a writer that bypassed
 * outbox_message_set_header() makes one) would forge an attribute: left out. */
static int own_header(const char *name, size_t nl, const char *value, size_t vl, void *opaque) {
    own_headers_t *o = opaque;
    if ((nl >= 3 && !memcmp(name, "ce_", 3)) ||
        (o->content_type_written && nl == 12 && !memcmp(name, "content-type", 12)))
        return 0;
    if (rd_kafka_header_add(o->h, name, (ssize_t)nl, value, (ssize_t)vl))
        o->failed = 1;
    return 0;
}

static int add(rd_kafka_headers_t *h, const char *name, const void *v, size_t n) {
    return rd_kafka_header_add(h, name, -1, v, (ssize_t)n) ? -1 : 0;
}

int outbox_ce_record(const void *envelope, size_t len, const char *source, const void *key, size_t key_len,
                     rd_kafka_headers_t *h, const void **payload, size_t *payload_len, char *why,
                     size_t why_size, outbox_ce_time_cache_t *cache) {
    env_fields_t f;
    int kind;
    if (env_fields(envelope, len, &f)) {
        outbox_snprintf(why, why_size, "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", len);
        return -1;
    }
    const char *kt = kind_text(f.kind);
    if (!f.id.set || f.id.n != OUTBOX_UUID_STR_LEN) {
        outbox_snprintf(why, why_size, "cloudevents: the envelope's id is not a UUID (ce_id)");
        return -1;
    }
    if (!f.type.n || !utf8_ok(f.type.p, f.type.n)) {
        outbox_snprintf(why, why_size, "cloudevents: the envelope's type is %s (ce_type)",
                        f.type.n ? "not valid UTF-8" : "empty");
        return -1;
    }
    const span_t *ext[] = {&f.schema_version, &f.correlation_id, &f.reply_to, &f.content_type};
    for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++)
        if (!utf8_ok(ext[i]->p, ext[i]->n)) {
            outbox_snprintf(why, why_size, "cloudevents: the envelope's %s is not valid UTF-8",
                            (const char *[]){"schema_version", "correlation_id", "reply_to", "content_type"}[i]);
            return -1;
        }
    char time[32];
    int err = add(h, "ce_specversion", "1.0", 3) || add(h, "ce_id", f.id.p, f.id.n) ||
              add(h, "ce_source", source, strlen(source)) || add(h, "ce_type", f.type.p, f.type.n);
    if (!err && !outbox_ce_time_format_cached(f.created_at_us, time, cache))
        err = add(h, "ce_time", time, 27);
    if (!err && key && printable_utf8(key, key_len))
        err = add(h, "ce_subject", key, key_len);
    if (!err) /* an unspecified or unknown kind too: the consumer refuses it, as it does in an envelope */
        err = add(h, "ce_outboxkind", kt, strlen(kt));
    if (!err && f.schema_version.n)
        err = add(h, "ce_schemaversion", f.schema_version.p, f.schema_version.n);
    if (!err && f.correlation_id.n)
        err = add(h, "ce_correlationid", f.correlation_id.p, f.correlation_id.n);
    if (!err && f.reply_to.n)
        err = add(h, "ce_replyto", f.reply_to.p, f.reply_to.n);
    own_headers_t o = {h, f.content_type.n > 0, 0};
    if (!err && f.content_type.n)
        err = add(h, "content-type", f.content_type.p, f.content_type.n);
    /* The same scan as the envelope format's: what it refuses, no format publishes. */
    if (!err && outbox_envelope_scan(envelope, len, &kind, own_header, &o)) {
        outbox_snprintf(why, why_size, "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", len);
        return -1;
    }
    if (!err && !o.failed && !f.content_type.n) {
        /* No content type in the envelope: a "content-type" header of its own, else the default. */
        const void *v;
        size_t vl;
        if (rd_kafka_header_get_last(h, "content-type", &v, &vl))
            err = add(h, "content-type", OUTBOX_CONTENT_TYPE_DEFAULT, strlen(OUTBOX_CONTENT_TYPE_DEFAULT));
    }
    if (err || o.failed) {
        outbox_snprintf(why, why_size, "cloudevents: cannot add a header (out of memory)");
        return -2;
    }
    /* Never a null value, even for no payload: a null is a tombstone to a compacted topic. */
    *payload = f.payload.set ? f.payload.p : (const uint8_t *)envelope;
    *payload_len = f.payload.n;
    return 0;
}

/* ---- the consumer's side: a binary-mode record as a message --------------------------------- */

int outbox_ce_is_binary(const rd_kafka_headers_t *h) {
    const void *v;
    size_t n;
    return h && rd_kafka_header_get_last(h, "ce_specversion", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR;
}

static int two(const char *s) {
    return is_digit(s[0]) && is_digit(s[1]) ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

int outbox_ce_time_parse(const char *s, size_t n, int64_t *us) {
    /* date-time = full-date "T" partial-time time-offset (RFC 3339 section 5.6); 't'/'z' allowed */
    char buf[64];
    if (n < 20 || n >= sizeof(buf))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    s = buf;
    int year = two(s) * 100 + two(s + 2), mon = two(s + 5), day = two(s + 8);
    int hour = two(s + 11), min = two(s + 14), sec = two(s + 17);
    if (two(s) < 0 || two(s + 2) < 0 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
        s[13] != ':' || s[16] != ':' || mon < 1 || mon > 12 || day < 1 || hour < 0 || hour > 23 || min < 0 ||
        min > 59 || sec < 0 || sec > 60)
        return -1;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[mon - 1] + (mon == 2 && leap))
        return -1;
    const char *p = s + 19;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; is_digit(*p); p++, digits++)
            if (digits < 6)
                frac = frac * 10 + (*p - '0');
        if (!digits)
            return -1;
        for (; digits < 6; digits++)
            frac *= 10;
    }
    int offset = 0;
    if ((*p == 'Z' || *p == 'z') && !p[1]) {
        offset = 0;
    } else if ((*p == '+' || *p == '-') && two(p + 1) >= 0 && p[3] == ':' && two(p + 4) >= 0 && !p[6] &&
               two(p + 1) <= 23 && two(p + 4) <= 59) {
        offset = (two(p + 1) * 60 + two(p + 4)) * (*p == '-' ? -1 : 1);
    } else {
        return -1;
    }
    /* days from the civil date (Howard Hinnant's algorithm) */
    int y = year - (mon <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    int64_t secs = days * 86400 + hour * 3600 + min * 60 + (sec == 60 ? 59 : sec) - offset * 60;
    *us = secs * 1000000 + frac;
    return 0;
}

typedef struct {
    const char *name;
    char *value; /* NUL-terminated copy, NULL when absent */
} attr_t;

enum { A_SPECVERSION, A_ID, A_SOURCE, A_TYPE, A_TIME, A_KIND, A_SCHEMA, A_CORR, A_REPLYTO, A_CONTENT_TYPE, A_N };

/* Reads a binary-mode CloudEvent (value, key, headers) received on topic into *out (caller owns)
 * or says why not in why: 0, -1 (rejected) or -2 (out of memory).  *id_out gets ce_id when it is
 * plain printable ASCII of at most 64 bytes, for the dead letter. */
int outbox_ce_decode(const void *value, size_t len, const void *key, size_t key_len,
                     const rd_kafka_headers_t *h, const char *topic, outbox_message_t **out, char *why,
                     size_t why_size, char id_out[65]) {
    attr_t a[A_N] = {{"ce_specversion", NULL}, {"ce_id", NULL}, {"ce_source", NULL},
                     {"ce_type", NULL}, {"ce_time", NULL}, {"ce_outboxkind", NULL},
                     {"ce_schemaversion", NULL}, {"ce_correlationid", NULL}, {"ce_replyto", NULL},
                     {"content-type", NULL}};
    outbox_message_t *m = NULL;
    int rc = -1;
    const char *name;
    const void *v;
    size_t vl;
    *out = NULL;
    id_out[0] = '\0';
    why[0] = '\0';
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &vl); i++)
        for (int k = 0; k < A_N; k++)
            if (!strcmp(name, a[k].name)) {
                if (!v)
                    vl = 0;
                if (!utf8_ok(v, vl)) {
                    outbox_snprintf(why, why_size, "cloudevent: header %s is not valid UTF-8 (or has a NUL byte)",
                                    a[k].name);
                    goto done;
                }
                free(a[k].value);
                if (!(a[k].value = malloc(vl + 1))) {
                    rc = -2;
                    goto done;
                }
                if (vl)
                    memcpy(a[k].value, v, vl);
                a[k].value[vl] = '\0';
            }
    const char *id = a[A_ID].value;
    if (id && strlen(id) <= 64) {
        size_t i = 0;
        for (; id[i] && id[i] >= 0x20 && id[i] <= 0x7e; i++)
            ;
        if (!id[i])
            memcpy(id_out, id, i + 1);
    }
    static const int required[] = {A_SPECVERSION, A_ID, A_SOURCE, A_TYPE};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        if (!a[required[i]].value || !*a[required[i]].value) {
            outbox_snprintf(why, why_size, "cloudevent: required attribute %s is missing%s",
                            a[required[i]].name + 3, a[required[i]].value ? " (empty)" : "");
            goto done;
        }
    if (strcmp(a[A_SPECVERSION].value, "1.0")) {
        outbox_snprintf(why, why_size, "cloudevent: specversion is not 1.0");
        goto done;
    }
    if (!outbox_uuid_valid(id)) {
        outbox_snprintf(why, why_size, "cloudevent: id is not a UUID (duplicate detection records UUIDs)");
        goto done;
    }
    int64_t created = 0;
    if (a[A_TIME].value && outbox_ce_time_parse(a[A_TIME].value, strlen(a[A_TIME].value), &created)) {
        outbox_snprintf(why, why_size, "cloudevent: time is not an RFC 3339 timestamp");
        goto done;
    }
    int kind = OUTBOX_EVENT; /* a CloudEvent from elsewhere is an event unless it says otherwise */
    if (a[A_KIND].value) {
        for (kind = OUTBOX_EVENT; kind <= OUTBOX_DOCUMENT; kind++)
            if (!strcmp(a[A_KIND].value, kind_text((uint64_t)kind)))
                break;
        if (kind > OUTBOX_DOCUMENT) {
            outbox_snprintf(why, why_size, "cloudevent: outboxkind is not EVENT, COMMAND, REPLY or DOCUMENT");
            goto done;
        }
    }
    char err[OUTBOX_ERRSTR_SIZE];
    outbox_err_t e = outbox_message_create(&m, (outbox_kind_t)kind, topic ? topic : "", a[A_TYPE].value, err,
                                           sizeof(err));
    if (e == OUTBOX_ERR_NOMEM) {
        rc = -2;
        goto done;
    }
    if (e) {
        outbox_snprintf(why, why_size, "cloudevent: %s", topic && *topic ? "invalid type" : "no topic");
        goto done;
    }
    memcpy(m->id, id, OUTBOX_UUID_STR_LEN + 1);
    m->created_at_us = created;
    static const struct {
        int attr;
        outbox_err_t (*set)(outbox_message_t *, const char *);
    } setters[] = {{A_SCHEMA, outbox_message_set_schema_version},
                   {A_CORR, outbox_message_set_correlation_id},
                   {A_REPLYTO, outbox_message_set_reply_to},
                   {A_CONTENT_TYPE, outbox_message_set_content_type}};
    for (size_t i = 0; i < sizeof(setters) / sizeof(setters[0]); i++) {
        const char *val = a[setters[i].attr].value;
        if (!val || !*val)
            continue;
        if ((e = setters[i].set(m, val))) {
            outbox_snprintf(why, why_size, "cloudevent: %s is invalid", a[setters[i].attr].name + 3);
            goto fail;
        }
    }
    if ((e = outbox_message_set_key(m, key, key ? key_len : 0)) ||
        (e = outbox_message_set_payload(m, value, value ? len : 0))) {
        outbox_snprintf(why, why_size, "cloudevent: out of memory");
        goto fail;
    }
    /* The rest are the message's own headers; the envelope format's routing headers are not. */
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &vl); i++) {
        if (!strncmp(name, "ce_", 3) || !strcmp(name, "content-type") || !strcmp(name, "id") ||
            !strcmp(name, "type") || !strcmp(name, "kind"))
            continue;
        char *val = malloc(vl + 1);
        if (!val) {
            e = OUTBOX_ERR_NOMEM;
            goto fail;
        }
        if (vl)
            memcpy(val, v, vl);
        val[vl] = '\0';
        e = !*name || !utf8_ok(v ? v : "", v ? vl : 0) ? OUTBOX_ERR_INVALID_ARG : outbox_message_set_header(m, name, val);
        free(val);
        if (e) {
            if (e != OUTBOX_ERR_NOMEM)
                outbox_snprintf(why, why_size, "cloudevent: a header's name or value is empty, not valid UTF-8 "
                                "or has a NUL byte");
            goto fail;
        }
    }
    *out = m;
    m = NULL;
    rc = 0;
    goto done;
fail:
    rc = e == OUTBOX_ERR_NOMEM ? -2 : -1;
    if (rc == -2)
        outbox_snprintf(why, why_size, "cloudevent: out of memory");
done:
    outbox_message_destroy(m);
    for (int k = 0; k < A_N; k++)
        free(a[k].value);
    return rc;
}
