/*
 * Messages: building them for sending, reading them, and the Envelope wire format (protobuf-c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/v1/envelope.pb-c.h"
#include "outbox_int.h"

static void msg_errmsg_free(outbox_message_t *m);

static int schema_version_valid(const char *v) {
    /* MAJOR.MINOR, digits only, each part 1 to 9 digits so it fits an int. */
    const char *dot = strchr(v, '.');
    if (!dot || dot == v || !dot[1] || dot - v > 9 || strlen(dot + 1) > 9)
        return 0;
    for (const char *p = v; *p; p++)
        if (p != dot && (*p < '0' || *p > '9'))
            return 0;
    return 1;
}

static int kind_valid(int kind) {
    return kind >= OUTBOX_EVENT && kind <= OUTBOX_DOCUMENT;
}

static outbox_message_t *message_alloc(const char *destination, const char *type) {
    outbox_message_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->destination = outbox_strdup(destination);
    m->type = outbox_strdup(type);
    m->correlation_id = outbox_strdup("");
    m->reply_to = outbox_strdup("");
    if (!m->destination || !m->type || !m->correlation_id || !m->reply_to) {
        outbox_message_destroy(m);
        return NULL;
    }
    strcpy(m->schema_version, "1.0");
    m->kafka_partition = -1;
    m->kafka_offset = -1;
    return m;
}

outbox_err_t outbox_message_create(outbox_message_t **out, outbox_kind_t kind,
                                   const char *destination, const char *type, char *errstr,
                                   size_t errstr_size) {
    char why[160];
    if (!out) {
        outbox_snprintf(errstr, errstr_size, "outbox_message_create: out is NULL");
        return OUTBOX_ERR_INVALID_ARG;
    }
    *out = NULL;
    if (!kind_valid((int)kind)) {
        outbox_snprintf(errstr, errstr_size,
                        "outbox_message_new: kind %d is not a message kind (use OUTBOX_EVENT, "
                        "OUTBOX_COMMAND, OUTBOX_REPLY or OUTBOX_DOCUMENT)",
                        (int)kind);
        return OUTBOX_ERR_INVALID_ARG;
    }
    if (!destination) {
        outbox_snprintf(errstr, errstr_size,
                        "outbox_message_new: destination is NULL; pass the Kafka topic to publish to");
        return OUTBOX_ERR_INVALID_DESTINATION;
    }
    if (!outbox_topic_valid(destination, why, sizeof(why))) {
        outbox_snprintf(errstr, errstr_size, "outbox_message_new: destination \"%.300s\" %s",
                        destination, why);
        return OUTBOX_ERR_INVALID_DESTINATION;
    }
    if (!type || !*type) {
        outbox_snprintf(errstr, errstr_size,
                        "outbox_message_new: type is %s; pass the message type, e.g. "
                        "\"orders.OrderCreated\"",
                        type ? "empty" : "NULL");
        return OUTBOX_ERR_INVALID_ARG;
    }
    ptrdiff_t bad = outbox_utf8_invalid_at(type);
    if (bad >= 0) { /* a text column in the outbox and a proto3 string on the wire */
        outbox_snprintf(errstr, errstr_size,
                        "outbox_message_new: type is not valid UTF-8 (byte 0x%02x at offset %td); "
                        "message types are text, e.g. \"orders.OrderCreated\"",
                        (unsigned char)type[bad], bad);
        return OUTBOX_ERR_INVALID_ARG;
    }
    outbox_message_t *m = message_alloc(destination, type);
    if (!m) {
        outbox_snprintf(errstr, errstr_size, "outbox_message_new: out of memory");
        return OUTBOX_ERR_NOMEM;
    }
    m->kind = kind;
    outbox_uuid7(m->id);
    m->created_at_us = outbox_now_us();
    *out = m;
    return OUTBOX_OK;
}

outbox_message_t *outbox_message_new(outbox_kind_t kind, const char *destination, const char *type) {
    outbox_message_t *m;
    outbox_err_t err = outbox_message_create(&m, kind, destination, type, NULL, 0);
    if (err)
        errno = err == OUTBOX_ERR_NOMEM ? ENOMEM : EINVAL;
    return m;
}

void outbox_message_destroy(outbox_message_t *m) {
    if (!m)
        return;
    free(m->destination);
    free(m->type);
    free(m->key);
    free(m->payload);
    for (size_t i = 0; i < m->header_cnt; i++) {
        free(m->headers[i].name);
        free(m->headers[i].value);
    }
    free(m->headers);
    free(m->correlation_id);
    free(m->reply_to);
    free(m->content_type);
    msg_errmsg_free(m);
    free(m);
}

/* ---- setters: each call clears m's error message, and a refusal writes why (CONVENTIONS 4) ---- */

/* m->errmsg when the text of a refusal could not be stored: never written to or freed. */
static char msg_nomem[] = "out of memory (the reason for the refusal could not be stored)";

static void msg_errmsg_free(outbox_message_t *m) {
    if (m->errmsg != msg_nomem)
        free(m->errmsg);
    m->errmsg = NULL;
}

/* Starts a setter call on m: the previous call's refusal no longer applies. */
static void msg_clear(outbox_message_t *m) {
    if (m->errmsg == msg_nomem)
        m->errmsg = NULL;
    else if (m->errmsg)
        m->errmsg[0] = '\0';
}

/* Records why a setter refused and returns err.  When even the message cannot be stored,
 * outbox_message_errmsg() says "out of memory". */
static outbox_err_t msg_err(outbox_message_t *m, outbox_err_t err, const char *fmt, ...) OUTBOX_PRINTF(3, 4);
static outbox_err_t msg_err(outbox_message_t *m, outbox_err_t err, const char *fmt, ...) {
    char buf[OUTBOX_ERRSTR_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    msg_errmsg_free(m);
    if (!(m->errmsg = outbox_strdup(buf)))
        m->errmsg = msg_nomem;
    return err;
}

/* A value for an error message: at most 60 bytes of s, quoted, with anything that is not
 * printable ASCII shown as '?' (the value may be the invalid UTF-8 being refused). */
static const char *shown(const char *s, char out[64]) {
    size_t n = 0;
    out[n++] = '"';
    for (; *s && n < 61; s++)
        out[n++] = (unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? *s : '?';
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

static outbox_err_t set_bytes(outbox_message_t *m, const char *fn, uint8_t **dst, size_t *dst_len, const void *src,
                              size_t len) {
    uint8_t *copy = NULL;
    if (len) {
        if (!(copy = malloc(len)))
            return msg_err(m, OUTBOX_ERR_NOMEM, "%s: out of memory copying %zu bytes", fn, len);
        memcpy(copy, src, len);
    }
    free(*dst);
    *dst = copy;
    *dst_len = len;
    return OUTBOX_OK;
}

/* The refusals set_key and set_payload share: a NULL pointer with a length, a length that is a
 * negative size converted (no object is larger than PTRDIFF_MAX). */
static outbox_err_t check_bytes(outbox_message_t *m, const char *fn, const char *arg, const void *p, size_t len) {
    if (!p && len)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: %s is NULL but len is %zu; pass len 0 for an empty %s",
                       fn, arg, len, arg);
    if (len > PTRDIFF_MAX)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: len %zu is not a length (a negative size converted to "
                       "size_t?); pass the %s's size in bytes", fn, len, arg);
    return OUTBOX_OK;
}

outbox_err_t outbox_message_set_key(outbox_message_t *m, const void *key, size_t len) {
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    outbox_err_t err = check_bytes(m, "outbox_message_set_key", "key", key, len);
    return err ? err : set_bytes(m, "outbox_message_set_key", &m->key, &m->key_len, key, len);
}

outbox_err_t outbox_message_set_payload(outbox_message_t *m, const void *payload, size_t len) {
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    outbox_err_t err = check_bytes(m, "outbox_message_set_payload", "payload", payload, len);
    return err ? err : set_bytes(m, "outbox_message_set_payload", &m->payload, &m->payload_len, payload, len);
}

static outbox_err_t set_str(outbox_message_t *m, const char *fn, char **dst, const char *src) {
    char *copy = outbox_strdup(src);
    if (!copy)
        return msg_err(m, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    free(*dst);
    *dst = copy;
    return OUTBOX_OK;
}

/* Adds or replaces a header; used by the setter and by the decoder (which skips the reserved-name
 * check, since the wire may carry anything and the relay puts its own headers first). */
static outbox_err_t header_put(outbox_message_t *m, const char *name, const char *value) {
    static const char fn[] = "outbox_message_set_header";
    for (size_t i = 0; i < m->header_cnt; i++)
        if (!strcmp(m->headers[i].name, name))
            return set_str(m, fn, &m->headers[i].value, value);
    if (m->header_cnt == m->header_cap) {
        size_t cap = m->header_cap ? m->header_cap * 2 : 4;
        outbox_header_t *h = realloc(m->headers, cap * sizeof(*h));
        if (!h)
            return msg_err(m, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
        m->headers = h;
        m->header_cap = cap;
    }
    char *n = outbox_strdup(name), *v = outbox_strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return msg_err(m, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    }
    m->headers[m->header_cnt].name = n;
    m->headers[m->header_cnt].value = v;
    m->header_cnt++;
    return OUTBOX_OK;
}

/* Refuses s (argument arg of fn) unless it is UTF-8, naming the first bad byte. */
static outbox_err_t check_utf8(outbox_message_t *m, const char *fn, const char *arg, const char *s, const char *why) {
    ptrdiff_t bad = outbox_utf8_invalid_at(s);
    char v[64];
    if (bad < 0)
        return OUTBOX_OK;
    return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: %s %s is not valid UTF-8 (byte 0x%02x at offset %td); %s", fn,
                   arg, shown(s, v), (unsigned char)s[bad], bad, why);
}

outbox_err_t outbox_message_set_header(outbox_message_t *m, const char *name, const char *value) {
    static const char fn[] = "outbox_message_set_header";
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    char v[64];
    if (!name || !*name)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: name is %s; pass a header name, e.g. \"traceparent\"", fn,
                       name ? "empty" : "NULL");
    if (!value)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: value of header %s is NULL; pass \"\" for an empty value",
                       fn, shown(name, v));
    /* proto3 strings: other languages' decoders refuse the rest */
    outbox_err_t err = check_utf8(m, fn, "name", name, "header names and values are proto3 strings; "
                                  "put binary data in the payload");
    if (!err)
        err = check_utf8(m, fn, "value", value, "header names and values are proto3 strings; "
                         "put binary data in the payload, or base64-encode it");
    if (err)
        return err;
    if (!strcmp(name, "id") || !strcmp(name, "type") || !strcmp(name, "kind"))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: name %s is reserved (\"id\", \"type\" and \"kind\" are "
                       "the Kafka headers the relay adds from the message itself); choose another name, "
                       "e.g. \"x-%s\"", fn, shown(name, v), name);
    if (!strncmp(name, "ce_", 3))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: name %s is reserved (\"ce_\" names are CloudEvents "
                       "attributes, which relay.format=cloudevents writes from the message itself); choose "
                       "another name, e.g. \"x-%s\"", fn, shown(name, v), name + 3);
    return header_put(m, name, value);
}

/* Removes header name if m has it, keeping the others' order. */
static void header_remove(outbox_message_t *m, const char *name) {
    for (size_t i = 0; i < m->header_cnt; i++) {
        if (strcmp(m->headers[i].name, name))
            continue;
        free(m->headers[i].name);
        free(m->headers[i].value);
        memmove(&m->headers[i], &m->headers[i + 1], (m->header_cnt - i - 1) * sizeof(*m->headers));
        m->header_cnt--;
        return;
    }
}

const char *outbox_content_type_problem(const char *s) {
    size_t n = strlen(s);
    if (n > 255)
        return "is longer than 255 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return "has a byte that is not printable ASCII";
    const char *slash = strchr(s, '/');
    if (n && (!slash || slash == s || !slash[1]))
        return "is not a media type \"type/subtype\"";
    return NULL;
}

outbox_err_t outbox_message_set_content_type(outbox_message_t *m, const char *content_type) {
    static const char fn[] = "outbox_message_set_content_type";
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    char v[64];
    if (!content_type)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: content_type is NULL; pass a media type, e.g. "
                       "\"application/json\", or \"\" for the default (" OUTBOX_CONTENT_TYPE_DEFAULT ")", fn);
    const char *problem = outbox_content_type_problem(content_type);
    if (problem)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: content_type %s %s; pass a media type (RFC 2046) of "
                       "printable ASCII, e.g. \"application/json\" or \"application/protobuf\"", fn,
                       shown(content_type, v), problem);
    if (!*content_type) {
        free(m->content_type);
        m->content_type = NULL;
        return OUTBOX_OK;
    }
    return set_str(m, fn, &m->content_type, content_type);
}

outbox_err_t outbox_message_set_trace_context(outbox_message_t *m, const char *traceparent,
                                              const char *tracestate) {
    static const char fn[] = "outbox_message_set_trace_context";
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    char v[64], why[160];
    if (!traceparent)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: traceparent is NULL; pass the W3C traceparent of the "
                       "current span, e.g. \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"", fn);
    if (outbox_traceparent_problem(traceparent, why, sizeof(why)))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: traceparent %s is not a W3C traceparent: %s; pass "
                       "\"00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>\", lowercase", fn,
                       shown(traceparent, v), why);
    if (tracestate && *tracestate && outbox_tracestate_problem(tracestate, why, sizeof(why)))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: tracestate %s is not a W3C tracestate: %s; pass at "
                       "most 32 \"key=value\" members separated by commas, or NULL", fn, shown(tracestate, v),
                       why);
    /* Both or neither: a tracestate left from another traceparent would describe another trace. */
    const char *old_tp = outbox_message_header(m, "traceparent");
    char *keep = old_tp ? outbox_strdup(old_tp) : NULL;
    if (old_tp && !keep)
        return msg_err(m, OUTBOX_ERR_NOMEM, "%s: out of memory", fn);
    outbox_err_t err = header_put(m, "traceparent", traceparent);
    if (!err && tracestate && *tracestate)
        err = header_put(m, "tracestate", tracestate);
    else if (!err)
        header_remove(m, "tracestate");
    if (err) { /* put back what was there */
        if (keep)
            header_put(m, "traceparent", keep);
        else
            header_remove(m, "traceparent");
    }
    free(keep);
    return err;
}

outbox_err_t outbox_message_set_schema_version(outbox_message_t *m, const char *ver) {
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    char v[64];
    if (!ver || strlen(ver) >= sizeof(m->schema_version) || !schema_version_valid(ver))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "outbox_message_set_schema_version: %s%s is not MAJOR.MINOR; "
                       "pass two numbers of digits only (1 to 9 each) joined by a dot, e.g. \"2.1\"",
                       ver ? "version " : "version is ", ver ? shown(ver, v) : "NULL");
    strcpy(m->schema_version, ver);
    return OUTBOX_OK;
}

outbox_err_t outbox_message_set_correlation_id(outbox_message_t *m, const char *id) {
    static const char fn[] = "outbox_message_set_correlation_id";
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    if (!id)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: id is NULL; pass the id of the message this one "
                       "answers (outbox_message_id() of the command), or \"\" to clear it", fn);
    outbox_err_t err = check_utf8(m, fn, "id", id, "correlation ids are text; pass the id of the "
                                  "message this one answers (outbox_message_id() of the command)");
    return err ? err : set_str(m, fn, &m->correlation_id, id);
}

outbox_err_t outbox_message_set_reply_to(outbox_message_t *m, const char *channel) {
    static const char fn[] = "outbox_message_set_reply_to";
    if (!m)
        return OUTBOX_ERR_INVALID_ARG;
    msg_clear(m);
    char why[160], v[64];
    if (!channel)
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: channel is NULL; pass the Kafka topic that replies "
                       "should go to, e.g. \"orders.replies\"", fn);
    if (!outbox_topic_valid(channel, why, sizeof(why)))
        return msg_err(m, OUTBOX_ERR_INVALID_ARG, "%s: channel %s %s; pass the Kafka topic that replies "
                       "should go to, e.g. \"orders.replies\"", fn, shown(channel, v), why);
    return set_str(m, fn, &m->reply_to, channel);
}

const char *outbox_message_errmsg(const outbox_message_t *m) {
    if (!m)
        return "message is NULL";
    return m->errmsg ? m->errmsg : "";
}

const char *outbox_message_kafka_topic(const outbox_message_t *m) {
    return m ? (m->kafka_topic ? m->kafka_topic : "") : NULL;
}

int32_t outbox_message_kafka_partition(const outbox_message_t *m) {
    return m ? m->kafka_partition : -1;
}

int64_t outbox_message_kafka_offset(const outbox_message_t *m) {
    return m ? m->kafka_offset : -1;
}

const char *outbox_message_id(const outbox_message_t *m) {
    return m ? m->id : NULL;
}

outbox_kind_t outbox_message_kind(const outbox_message_t *m) {
    return m ? m->kind : (outbox_kind_t)0;
}

const char *outbox_message_type(const outbox_message_t *m) {
    return m ? m->type : NULL;
}

const char *outbox_message_schema_version(const outbox_message_t *m) {
    return m ? m->schema_version : NULL;
}

const char *outbox_message_destination(const outbox_message_t *m) {
    return m ? m->destination : NULL;
}

const void *outbox_message_key(const outbox_message_t *m, size_t *len) {
    if (len)
        *len = m ? m->key_len : 0;
    return m ? m->key : NULL;
}

const void *outbox_message_payload(const outbox_message_t *m, size_t *len) {
    if (len)
        *len = m ? m->payload_len : 0;
    return m ? m->payload : NULL;
}

const char *outbox_message_header(const outbox_message_t *m, const char *name) {
    if (!m || !name)
        return NULL;
    for (size_t i = 0; i < m->header_cnt; i++)
        if (!strcmp(m->headers[i].name, name))
            return m->headers[i].value;
    return NULL;
}

size_t outbox_message_header_count(const outbox_message_t *m) {
    return m ? m->header_cnt : 0;
}

outbox_err_t outbox_message_header_at(const outbox_message_t *m, size_t idx, const char **name,
                                      const char **value) {
    if (!m || idx >= m->header_cnt)
        return OUTBOX_ERR_INVALID_ARG;
    if (name)
        *name = m->headers[idx].name;
    if (value)
        *value = m->headers[idx].value;
    return OUTBOX_OK;
}

const char *outbox_message_correlation_id(const outbox_message_t *m) {
    return m ? m->correlation_id : NULL;
}

const char *outbox_message_reply_to(const outbox_message_t *m) {
    return m ? m->reply_to : NULL;
}

int64_t outbox_message_created_at_us(const outbox_message_t *m) {
    return m ? m->created_at_us : 0;
}

const char *outbox_message_content_type(const outbox_message_t *m) {
    if (!m)
        return NULL;
    return m->content_type ? m->content_type : OUTBOX_CONTENT_TYPE_DEFAULT;
}

int outbox_message_trace_context(const outbox_message_t *m, const char **traceparent, const char **tracestate) {
    char why[160];
    const char *tp = outbox_message_header(m, "traceparent");
    const char *ts = outbox_message_header(m, "tracestate");
    if (tp && outbox_traceparent_problem(tp, why, sizeof(why)))
        tp = NULL;
    if (!tp || (ts && (!*ts || outbox_tracestate_problem(ts, why, sizeof(why)))))
        ts = NULL;
    if (traceparent)
        *traceparent = tp;
    if (tracestate)
        *tracestate = ts;
    return tp != NULL;
}

outbox_err_t outbox_message_encode(const outbox_message_t *m, void **buf, size_t *len) {
    if (!m || !buf || !len)
        return OUTBOX_ERR_INVALID_ARG;
    Outbox__V1__Envelope env = OUTBOX__V1__ENVELOPE__INIT;
    /* Point into the message: protobuf-c only reads these fields while packing. */
    env.id = (char *)m->id;
    env.kind = (Outbox__V1__Kind)m->kind;
    env.type = m->type;
    env.schema_version = (char *)m->schema_version;
    env.destination = m->destination;
    env.key.data = m->key;
    env.key.len = m->key_len;
    env.payload.data = m->payload;
    env.payload.len = m->payload_len;
    env.created_at_unix_us = m->created_at_us;
    env.correlation_id = m->correlation_id;
    env.reply_to = m->reply_to;
    /* Unset stays off the wire: envelopes without one are byte for byte what they were. */
    env.content_type = m->content_type ? m->content_type : (char *)"";

    Outbox__V1__Envelope__HeadersEntry *entries = NULL, **ptrs = NULL;
    if (m->header_cnt) {
        entries = calloc(m->header_cnt, sizeof(*entries));
        ptrs = calloc(m->header_cnt, sizeof(*ptrs));
        if (!entries || !ptrs) {
            free(entries);
            free(ptrs);
            return OUTBOX_ERR_NOMEM;
        }
        for (size_t i = 0; i < m->header_cnt; i++) {
            Outbox__V1__Envelope__HeadersEntry init = OUTBOX__V1__ENVELOPE__HEADERS_ENTRY__INIT;
            entries[i] = init;
            entries[i].key = m->headers[i].name;
            entries[i].value = m->headers[i].value;
            ptrs[i] = &entries[i];
        }
        env.n_headers = m->header_cnt;
        env.headers = ptrs;
    }
    size_t n = outbox__v1__envelope__get_packed_size(&env);
    uint8_t *out = malloc(n ? n : 1);
    if (out)
        outbox__v1__envelope__pack(&env, out);
    free(entries);
    free(ptrs);
    if (!out)
        return OUTBOX_ERR_NOMEM;
    *buf = out;
    *len = n;
    return OUTBOX_OK;
}

/* Checks a decoded envelope; returns NULL when fine, else the reason. */
static const char *envelope_problem(const Outbox__V1__Envelope *e, char *why, size_t why_size) {
    char topic_why[160];
    if (!e->id || !outbox_uuid_valid(e->id))
        return "id is not a UUID";
    if (!kind_valid((int)e->kind)) {
        outbox_snprintf(why, why_size, "kind %d is %s", (int)e->kind,
                        e->kind == 0 ? "unspecified" : "unknown");
        return why;
    }
    if (!e->type || !*e->type)
        return "type is empty";
    /* proto3 strings are UTF-8 (other languages' decoders refuse the rest) and type is stored as
     * text; reasons never quote the bad bytes, since they are stored as text too. */
    if (outbox_utf8_invalid_at(e->type) >= 0)
        return "type is not valid UTF-8";
    if (e->correlation_id && outbox_utf8_invalid_at(e->correlation_id) >= 0)
        return "correlation_id is not valid UTF-8";
    if (!e->destination || !outbox_topic_valid(e->destination, topic_why, sizeof(topic_why))) {
        outbox_snprintf(why, why_size, "destination %s", topic_why);
        return why;
    }
    if (!e->schema_version || strlen(e->schema_version) >= 24 ||
        !schema_version_valid(e->schema_version))
        return "schema_version is not MAJOR.MINOR";
    if (e->reply_to && *e->reply_to && !outbox_topic_valid(e->reply_to, NULL, 0))
        return "reply_to is not a valid topic name";
    if (e->content_type && outbox_content_type_problem(e->content_type))
        return "content_type is not a media type of printable ASCII";
    for (size_t i = 0; i < e->n_headers; i++) {
        const char *name = e->headers[i]->key, *value = e->headers[i]->value;
        if (!name || !*name)
            return "a header has an empty name";
        int name_ok = outbox_utf8_invalid_at(name) < 0;
        if (!name_ok || (value && outbox_utf8_invalid_at(value) >= 0)) {
            if (name_ok && strlen(name) <= 64)
                outbox_snprintf(why, why_size, "header \"%s\" is not valid UTF-8", name);
            else
                outbox_snprintf(why, why_size, "header %zu is not valid UTF-8", i);
            return why;
        }
    }
    return NULL;
}

/* One header of a decoded envelope and its place on the wire. */
typedef struct {
    const char *name, *value;
    size_t pos;
} wire_header_t;

static int wire_by_name(const void *a, const void *b) {
    const wire_header_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

static int wire_by_pos(const void *a, const void *b) {
    const wire_header_t *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Copies an envelope's headers into a new message with header_put()'s rule (a repeated name keeps
 * its first place and takes its last value, as protobuf maps do), sorting instead of searching the
 * list per header: one 1 MB record of 140,000 distinct headers took a minute to decode. */
static outbox_err_t put_wire_headers(outbox_message_t *m, Outbox__V1__Envelope__HeadersEntry **hs, size_t n) {
    if (!n)
        return OUTBOX_OK;
    wire_header_t *w = malloc(n * sizeof(*w));
    if (!w)
        return OUTBOX_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        w[i] = (wire_header_t){hs[i]->key, hs[i]->value ? hs[i]->value : "", i};
    qsort(w, n, sizeof(*w), wire_by_name);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && !strcmp(w[k - 1].name, w[i].name))
            w[k - 1].value = w[i].value;
        else
            w[k++] = w[i];
    }
    qsort(w, k, sizeof(*w), wire_by_pos);
    outbox_err_t err = OUTBOX_OK;
    if (!(m->headers = calloc(k, sizeof(*m->headers))))
        err = OUTBOX_ERR_NOMEM;
    else
        m->header_cap = k;
    for (size_t i = 0; !err && i < k; i++) {
        char *name = outbox_strdup(w[i].name), *value = outbox_strdup(w[i].value);
        if (!name || !value) {
            free(name);
            free(value);
            err = OUTBOX_ERR_NOMEM;
            break;
        }
        m->headers[i].name = name;
        m->headers[i].value = value;
        m->header_cnt++;
    }
    free(w);
    return err;
}

/* The relay reads kind and headers with outbox_envelope_scan(), not with protobuf-c, so an
 * envelope is valid only if both read it alike.  protobuf-c tolerates some malformed input (a field
 * number 0 in an overlong tag) that the scan refuses, and ends a string at its first NUL byte where
 * the scan hands the whole header to Kafka: such envelopes are refused. */
static int header_nul(const char *name, size_t name_len, const char *value, size_t value_len,
                      void *opaque) {
    if (memchr(name, '\0', name_len) || memchr(value, '\0', value_len))
        *(int *)opaque = 1;
    return 0;
}

outbox_err_t outbox_message_decode(outbox_message_t **out, const void *buf, size_t len, char *errstr,
                                   size_t errstr_size) {
    char why[200];
    if (!out || (!buf && len)) {
        outbox_snprintf(errstr, errstr_size, "outbox_message_decode: %s is NULL", !out ? "out" : "buf");
        return OUTBOX_ERR_INVALID_ARG;
    }
    *out = NULL;
    if (len > PTRDIFF_MAX) { /* protobuf-c would read that far past buf */
        outbox_snprintf(errstr, errstr_size,
                        "outbox_message_decode: len %zu is not a length (a negative size?)", len);
        return OUTBOX_ERR_INVALID_ARG;
    }
    if (len == 0) {
        outbox_snprintf(errstr, errstr_size, "not an envelope: the value is empty");
        return OUTBOX_ERR_DECODE;
    }
    Outbox__V1__Envelope *e = outbox__v1__envelope__unpack(NULL, len, buf);
    if (!e) {
        outbox_snprintf(errstr, errstr_size, "not an envelope: %zu bytes are not a valid "
                        "outbox.v1.Envelope protobuf", len);
        return OUTBOX_ERR_DECODE;
    }
    const char *problem = envelope_problem(e, why, sizeof(why));
    int kind, nul = 0;
    if (!problem && outbox_envelope_scan(buf, len, &kind, header_nul, &nul))
        problem = "malformed protobuf (e.g. a field number 0)";
    else if (!problem && nul)
        problem = "a header name or value has a NUL byte";
    if (problem) {
        outbox_snprintf(errstr, errstr_size, "invalid envelope: %s", problem);
        outbox__v1__envelope__free_unpacked(e, NULL);
        return OUTBOX_ERR_DECODE;
    }
    outbox_message_t *m = message_alloc(e->destination, e->type);
    outbox_err_t err = m ? OUTBOX_OK : OUTBOX_ERR_NOMEM;
    if (!err) {
        m->kind = (outbox_kind_t)e->kind;
        memcpy(m->id, e->id, OUTBOX_UUID_STR_LEN + 1);
        strcpy(m->schema_version, e->schema_version);
        m->created_at_us = e->created_at_unix_us;
        err = set_bytes(m, "outbox_message_decode", &m->key, &m->key_len, e->key.data, e->key.len);
    }
    if (!err)
        err = set_bytes(m, "outbox_message_decode", &m->payload, &m->payload_len, e->payload.data, e->payload.len);
    if (!err && e->correlation_id)
        err = set_str(m, "outbox_message_decode", &m->correlation_id, e->correlation_id);
    if (!err && e->reply_to)
        err = set_str(m, "outbox_message_decode", &m->reply_to, e->reply_to);
    if (!err && e->content_type && *e->content_type)
        err = set_str(m, "outbox_message_decode", &m->content_type, e->content_type);
    if (!err)
        err = put_wire_headers(m, e->headers, e->n_headers);
    outbox__v1__envelope__free_unpacked(e, NULL);
    if (err) {
        outbox_message_destroy(m);
        outbox_snprintf(errstr, errstr_size, "outbox_message_decode: out of memory");
        return err;
    }
    *out = m;
    return OUTBOX_OK;
}
