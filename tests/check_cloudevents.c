/*
 * relay.format=cloudevents and W3C trace context: the CloudEvents Kafka binding's conformance
 * (binary mode), the consumer reading both formats, the trace context from writer to reply, and
 * the relay's records read by the official CloudEvents JavaScript SDK (tests/js/ce_read.mjs).
 */
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <librdkafka/rdkafka.h>

#include "outbox_int.h"
#include "testutil_fixture.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TS "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

/* ---- helpers ------------------------------------------------------------------------------- */

/* A COMMAND with every field set. */
static outbox_message_t *full_msg(void) {
    outbox_message_t *m = outbox_message_new(OUTBOX_COMMAND, "ce.orders", "orders.PlaceOrder");
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(outbox_message_set_key(m, "cust-42", 7), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "\x01\x02\x00\xff", 4), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_schema_version(m, "2.3"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_reply_to(m, "ce.replies"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_correlation_id(m, "corr-7"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_content_type(m, "application/protobuf"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, TS), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_header(m, "x-tenant", "acme \xc3\xa9"), OUTBOX_OK);
    return m;
}

/* The binary-mode record of m as the relay builds it: headers (caller frees) and value. */
static rd_kafka_headers_t *record_of(const outbox_message_t *m, void **env, const void **value, size_t *value_len) {
    size_t env_len, key_len;
    ck_assert_int_eq(outbox_message_encode(m, env, &env_len), OUTBOX_OK);
    const void *key = outbox_message_key(m, &key_len);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    char why[300];
    int rc = outbox_ce_record(*env, env_len, "/outbox/test", key, key_len, h, value, value_len, why, sizeof(why), NULL);
    ck_assert_msg(rc == 0, "outbox_ce_record: %d %s", rc, why);
    return h;
}

static const char *hdr(const rd_kafka_headers_t *h, const char *name, char *out, size_t size) {
    const void *v;
    size_t n;
    if (rd_kafka_header_get_last(h, name, &v, &n))
        return NULL;
    ck_assert_uint_lt(n, size);
    memcpy(out, v, n);
    out[n] = '\0';
    return out;
}

static int header_count(const rd_kafka_headers_t *h, const char *name) {
    const void *v;
    size_t n, cnt = 0;
    for (size_t i = 0; !rd_kafka_header_get(h, i, name, &v, &n); i++)
        cnt++;
    return (int)cnt;
}

/* ---- conformance: the relay's record -------------------------------------------------------- */

START_TEST(test_record_has_required_attributes_and_extensions) {
    outbox_message_t *m = full_msg();
    void *env;
    const void *value;
    size_t value_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    char b[256];
    ck_assert_str_eq(hdr(h, "ce_specversion", b, sizeof(b)), "1.0");
    ck_assert_str_eq(hdr(h, "ce_id", b, sizeof(b)), outbox_message_id(m));
    ck_assert_str_eq(hdr(h, "ce_source", b, sizeof(b)), "/outbox/test");
    ck_assert_str_eq(hdr(h, "ce_type", b, sizeof(b)), "orders.PlaceOrder");
    ck_assert_str_eq(hdr(h, "ce_subject", b, sizeof(b)), "cust-42");
    ck_assert_str_eq(hdr(h, "ce_outboxkind", b, sizeof(b)), "COMMAND");
    ck_assert_str_eq(hdr(h, "ce_schemaversion", b, sizeof(b)), "2.3");
    ck_assert_str_eq(hdr(h, "ce_correlationid", b, sizeof(b)), "corr-7");
    ck_assert_str_eq(hdr(h, "ce_replyto", b, sizeof(b)), "ce.replies");
    ck_assert_str_eq(hdr(h, "content-type", b, sizeof(b)), "application/protobuf");
    ck_assert_str_eq(hdr(h, "traceparent", b, sizeof(b)), TP);
    ck_assert_str_eq(hdr(h, "tracestate", b, sizeof(b)), TS);
    ck_assert_str_eq(hdr(h, "x-tenant", b, sizeof(b)), "acme \xc3\xa9");
    /* Each attribute once; the envelope format's routing headers are not there. */
    ck_assert_int_eq(header_count(h, "ce_id"), 1);
    ck_assert_int_eq(header_count(h, "content-type"), 1);
    ck_assert_int_eq(header_count(h, "id") + header_count(h, "type") + header_count(h, "kind"), 0);
    /* The value is the payload itself, pointing into the envelope (no copy). */
    ck_assert_uint_eq(value_len, 4);
    ck_assert_int_eq(memcmp(value, "\x01\x02\x00\xff", 4), 0);
    ck_assert((const char *)value > (const char *)env && (const char *)value < (const char *)env + 1000);
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_time_is_rfc3339_utc_with_microseconds) {
    outbox_message_t *m = full_msg();
    m->created_at_us = 1700000000123456LL; /* 2023-11-14T22:13:20.123456Z */
    void *env;
    const void *value;
    size_t value_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    char b[64];
    ck_assert_str_eq(hdr(h, "ce_time", b, sizeof(b)), "2023-11-14T22:13:20.123456Z");
    ck_assert(tf_matches(b, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"));
    int64_t us;
    ck_assert_int_eq(outbox_ce_time_parse(b, strlen(b), &us), 0);
    ck_assert_int_eq(us, 1700000000123456LL);
    /* Other RFC 3339 forms read the same instant; malformed ones are refused. */
    const char *same = "2023-11-15T00:13:20.123456+02:00";
    ck_assert_int_eq(outbox_ce_time_parse(same, strlen(same), &us), 0);
    ck_assert_int_eq(us, 1700000000123456LL);
    const char *coarse = "2023-11-14t22:13:20z";
    ck_assert_int_eq(outbox_ce_time_parse(coarse, strlen(coarse), &us), 0);
    ck_assert_int_eq(us, 1700000000000000LL);
    const char *bad[] = {"2023-11-14 22:13:20Z", "2023-11-14T22:13:20", "2023-02-30T00:00:00Z",
                         "2023-11-14T25:00:00Z", "2023-11-14T22:13:20.Z", "1700000000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(outbox_ce_time_parse(bad[i], strlen(bad[i]), &us) == -1, "accepted %s", bad[i]);
    char t[32];
    ck_assert_int_eq(outbox_ce_time_format(0, t), 0);
    ck_assert_str_eq(t, "1970-01-01T00:00:00.000000Z");
    ck_assert_int_eq(outbox_ce_time_format(-1, t), 0);
    ck_assert_str_eq(t, "1969-12-31T23:59:59.999999Z");
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

/* Every ce_ header: a lowercase alphanumeric name of at most 20 characters, a UTF-8 value. */
START_TEST(test_attribute_names_and_values_follow_the_naming_rules) {
    outbox_message_t *m = full_msg();
    void *env;
    const void *value;
    size_t value_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    const char *name;
    const void *v;
    size_t n, attrs = 0;
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &v, &n); i++) {
        char *copy = strndup(v, n);
        ck_assert_msg(outbox_utf8_invalid_at(copy) < 0 && strlen(copy) == n, "header %s: not UTF-8", name);
        free(copy);
        if (strncmp(name, "ce_", 3))
            continue;
        attrs++;
        const char *a = name + 3;
        ck_assert_msg(strlen(a) >= 1 && strlen(a) <= 20, "attribute %s: length", name);
        for (const char *p = a; *p; p++)
            ck_assert_msg((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'), "attribute %s: '%c'", name, *p);
    }
    ck_assert_uint_eq(attrs, 10); /* 4 required, time, subject, 4 extensions */
    for (const char *const *e = outbox_ce_extension_names(); *e; e++) {
        ck_assert_uint_le(strlen(*e), 20);
        char full[32], b[64];
        snprintf(full, sizeof(full), "ce_%s", *e);
        ck_assert_msg(hdr(h, full, b, sizeof(b)) != NULL, "extension %s missing", full);
    }
    /* A writer cannot forge an attribute through a header of its own. */
    ck_assert_int_eq(outbox_message_set_header(m, "ce_type", "x"), OUTBOX_ERR_INVALID_ARG);
    ck_assert(strstr(outbox_message_errmsg(m), "reserved") != NULL);
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_record_with_no_payload_and_a_binary_key) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "ce.orders", "orders.Ping");
    ck_assert_int_eq(outbox_message_set_key(m, "\x00\x01\xfe", 3), OUTBOX_OK);
    void *env;
    const void *value;
    size_t value_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    char b[64];
    ck_assert_uint_eq(value_len, 0);
    ck_assert_ptr_nonnull(value); /* an empty value, not a null one (a tombstone to compaction) */
    ck_assert_ptr_null(hdr(h, "ce_subject", b, sizeof(b))); /* not printable UTF-8 */
    ck_assert_ptr_null(hdr(h, "ce_correlationid", b, sizeof(b)));
    ck_assert_ptr_null(hdr(h, "ce_replyto", b, sizeof(b)));
    ck_assert_str_eq(hdr(h, "content-type", b, sizeof(b)), "application/octet-stream");
    ck_assert_str_eq(hdr(h, "ce_outboxkind", b, sizeof(b)), "EVENT");
    /* The consumer reads it back: empty payload, the binary key. */
    outbox_verdict_t v;
    ck_assert_msg(outbox_consumer_verdict(value, value_len, "\x00\x01\xfe", 3, "ce.orders", h, 0, &v), "%s", v.reason);
    size_t n;
    outbox_message_payload(v.msg, &n);
    ck_assert_uint_eq(n, 0);
    const void *k = outbox_message_key(v.msg, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(memcmp(k, "\x00\x01\xfe", 3), 0);
    outbox_message_destroy(v.msg);
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_envelope_without_content_type_is_unchanged) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "ce.orders", "orders.Ping");
    ck_assert_int_eq(outbox_message_set_payload(m, "p", 1), OUTBOX_OK);
    void *a, *b;
    size_t al, bl;
    ck_assert_int_eq(outbox_message_encode(m, &a, &al), OUTBOX_OK);
    ck_assert_str_eq(outbox_message_content_type(m), "application/octet-stream");
    ck_assert_int_eq(outbox_message_set_content_type(m, "text/plain; charset=utf-8"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_content_type(m, ""), OUTBOX_OK); /* back to the default */
    ck_assert_int_eq(outbox_message_encode(m, &b, &bl), OUTBOX_OK);
    ck_assert_uint_eq(al, bl);
    ck_assert_int_eq(memcmp(a, b, al), 0);
    free(a);
    free(b);
    /* Set, it travels in field 12 and decodes back. */
    ck_assert_int_eq(outbox_message_set_content_type(m, "application/json"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_encode(m, &a, &al), OUTBOX_OK);
    ck_assert_uint_eq(al, bl + 2 + strlen("application/json"));
    outbox_message_t *d;
    char err[256];
    ck_assert_int_eq(outbox_message_decode(&d, a, al, err, sizeof(err)), OUTBOX_OK);
    ck_assert_str_eq(outbox_message_content_type(d), "application/json");
    outbox_message_destroy(d);
    free(a);
    ck_assert_int_eq(outbox_message_set_content_type(m, "json"), OUTBOX_ERR_INVALID_ARG);
    ck_assert(strstr(outbox_message_errmsg(m), "type/subtype") != NULL);
    ck_assert_int_eq(outbox_message_set_content_type(m, "text/plain\n"), OUTBOX_ERR_INVALID_ARG);
    outbox_message_destroy(m);
}
END_TEST

/* ---- the consumer's reading ------------------------------------------------------------------ */

START_TEST(test_consumer_reads_the_record_back_as_the_same_message) {
    outbox_message_t *m = full_msg();
    void *env;
    const void *value;
    size_t value_len, key_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    const void *key = outbox_message_key(m, &key_len);
    outbox_verdict_t v;
    ck_assert_msg(outbox_consumer_verdict(value, value_len, key, key_len, "ce.orders", h, 0, &v), "%s", v.reason);
    const outbox_message_t *r = v.msg;
    ck_assert_str_eq(outbox_message_id(r), outbox_message_id(m));
    ck_assert_int_eq(outbox_message_kind(r), OUTBOX_COMMAND);
    ck_assert_str_eq(outbox_message_type(r), "orders.PlaceOrder");
    ck_assert_str_eq(outbox_message_schema_version(r), "2.3");
    ck_assert_str_eq(outbox_message_destination(r), "ce.orders");
    ck_assert_str_eq(outbox_message_correlation_id(r), "corr-7");
    ck_assert_str_eq(outbox_message_reply_to(r), "ce.replies");
    ck_assert_str_eq(outbox_message_content_type(r), "application/protobuf");
    ck_assert_int_eq(outbox_message_created_at_us(r), outbox_message_created_at_us(m));
    size_t n;
    const void *p = outbox_message_payload(r, &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(memcmp(p, "\x01\x02\x00\xff", 4), 0);
    p = outbox_message_key(r, &n);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(memcmp(p, "cust-42", 7), 0);
    ck_assert_uint_eq(outbox_message_header_count(r), 3);
    ck_assert_str_eq(outbox_message_header(r, "x-tenant"), "acme \xc3\xa9");
    const char *tp, *ts;
    ck_assert_int_eq(outbox_message_trace_context(r, &tp, &ts), 1);
    ck_assert_str_eq(tp, TP);
    ck_assert_str_eq(ts, TS);
    /* The major version rule holds in this format too, by the event's own id. */
    outbox_message_destroy(v.msg);
    ck_assert(!outbox_consumer_verdict(value, value_len, key, key_len, "ce.orders", h, 1, &v));
    ck_assert(strstr(v.reason, "consumer.schema.major.max=1") != NULL);
    ck_assert(v.dead_id_valid);
    ck_assert_str_eq(v.dead_id, outbox_message_id(m));
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

/* A copy of h without header `drop` (NULL: none) and with extra name/value pairs after. */
static rd_kafka_headers_t *edited(const rd_kafka_headers_t *h, const char *drop, const char *name, const char *value) {
    rd_kafka_headers_t *c = rd_kafka_headers_new(8);
    const char *n;
    const void *v;
    size_t vl;
    for (size_t i = 0; !rd_kafka_header_get_all(h, i, &n, &v, &vl); i++)
        if (!drop || strcmp(n, drop))
            rd_kafka_header_add(c, n, -1, v, (ssize_t)vl);
    if (name)
        rd_kafka_header_add(c, name, -1, value, -1);
    return c;
}

START_TEST(test_missing_required_attribute_is_rejected_by_name) {
    outbox_message_t *m = full_msg();
    void *env;
    const void *value;
    size_t value_len;
    rd_kafka_headers_t *h = record_of(m, &env, &value, &value_len);
    static const char *const required[] = {"id", "source", "type"};
    for (size_t i = 0; i < 3; i++) {
        char name[32], want[64];
        snprintf(name, sizeof(name), "ce_%s", required[i]);
        snprintf(want, sizeof(want), "required attribute %s is missing", required[i]);
        rd_kafka_headers_t *c = edited(h, name, NULL, NULL);
        outbox_verdict_t v;
        ck_assert(!outbox_consumer_verdict(value, value_len, NULL, 0, "ce.orders", c, 0, &v));
        ck_assert_ptr_null(v.msg);
        ck_assert_msg(strstr(v.reason, want) != NULL, "reason: %s", v.reason);
        ck_assert(!v.dead_id_valid);
        if (strcmp(required[i], "id"))
            ck_assert_str_eq(v.dead_id, outbox_message_id(m)); /* the dead letter names the event */
        else
            ck_assert_ptr_null(v.dead_id);
        rd_kafka_headers_destroy(c);
    }
    /* An empty one counts as missing; a wrong specversion, time or id is refused too. */
    struct {
        const char *drop, *name, *value, *want;
    } cases[] = {{"ce_type", "ce_type", "", "required attribute type is missing (empty)"},
                 {"ce_specversion", "ce_specversion", "0.3", "specversion is not 1.0"},
                 {"ce_time", "ce_time", "yesterday", "time is not an RFC 3339 timestamp"},
                 {"ce_id", "ce_id", "order-1", "id is not a UUID"},
                 {"ce_outboxkind", "ce_outboxkind", "QUERY", "outboxkind is not"},
                 {"ce_source", "ce_source", "\xff", "ce_source is not valid UTF-8"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rd_kafka_headers_t *c = edited(h, cases[i].drop, cases[i].name, cases[i].value);
        outbox_verdict_t v;
        ck_assert(!outbox_consumer_verdict(value, value_len, NULL, 0, "ce.orders", c, 0, &v));
        ck_assert_msg(strstr(v.reason, cases[i].want) != NULL, "case %zu reason: %s", i, v.reason);
        ck_assert_msg(outbox_utf8_invalid_at(v.reason) < 0, "reason is not UTF-8");
        rd_kafka_headers_destroy(c);
    }
    /* Without ce_specversion the record is read as an envelope, which a payload is not. */
    rd_kafka_headers_t *c = edited(h, "ce_specversion", NULL, NULL);
    outbox_verdict_t v;
    ck_assert(!outbox_consumer_verdict(value, value_len, NULL, 0, "ce.orders", c, 0, &v));
    ck_assert(strstr(v.reason, "envelope") != NULL);
    rd_kafka_headers_destroy(c);
    rd_kafka_headers_destroy(h);
    free(env);
    outbox_message_destroy(m);
}
END_TEST

/* ---- trace context and configuration ------------------------------------------------------------ */

START_TEST(test_trace_context_is_validated_per_w3c_level_1) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "ce.orders", "orders.Ping");
    const char *tp, *ts;
    ck_assert_int_eq(outbox_message_trace_context(m, &tp, &ts), 0);
    ck_assert_ptr_null(tp);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, NULL), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_trace_context(m, &tp, &ts), 1);
    ck_assert_str_eq(tp, TP);
    ck_assert_ptr_null(ts);
    const char *good_ts[] = {"a=1", " a=1 , b@c=x y,,", "t-1_*/x@sys=v", TS};
    for (size_t i = 0; i < sizeof(good_ts) / sizeof(good_ts[0]); i++)
        ck_assert_msg(outbox_message_set_trace_context(m, TP, good_ts[i]) == OUTBOX_OK, "%s: %s", good_ts[i],
                      outbox_message_errmsg(m));
    struct {
        const char *tp, *ts, *want;
    } bad[] = {
        {NULL, NULL, "traceparent is NULL"},
        {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", NULL, "trace id has 'B'"},
        {"00-00000000000000000000000000000000-00f067aa0ba902b7-01", NULL, "trace id is all zeros"},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", NULL, "parent id is all zeros"},
        {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL, "version 01 is not 00"},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", NULL, "54 characters"},
        {"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL, "separated by '-'"},
        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", NULL, "flags has 'g'"},
        {TP, "Upper=1", "member 1 has an invalid key"},
        {TP, "a=1,b", "member 2 has no '='"},
        {TP, "a=1,a=2", "member 2 repeats the key of member 1"},
        {TP, "a=x,b=", "member 2 has an invalid value"},
        {TP, "a=x=y", "member 1 has an invalid value"},
        {TP, "toolongsystemid@a123456789012345=1", "member 1 has an invalid key"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(outbox_message_set_trace_context(m, bad[i].tp, bad[i].ts), OUTBOX_ERR_INVALID_ARG);
        ck_assert_msg(strstr(outbox_message_errmsg(m), bad[i].want) != NULL, "case %zu: %s", i,
                      outbox_message_errmsg(m));
    }
    /* 32 members pass, 33 do not. */
    char list[600] = "";
    for (int i = 0; i < 33; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%sk%d=v", i ? "," : "", i);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, list), OUTBOX_ERR_INVALID_ARG);
    ck_assert(strstr(outbox_message_errmsg(m), "more than 32 list members") != NULL);
    *strrchr(list, ',') = '\0';
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, list), OUTBOX_OK);
    /* A refusal leaves the message as it was; NULL tracestate removes the older one. */
    ck_assert_int_eq(outbox_message_trace_context(m, &tp, &ts), 1);
    ck_assert_str_eq(ts, list);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, NULL), OUTBOX_OK);
    ck_assert_ptr_null(outbox_message_header(m, "tracestate"));
    /* A traceparent set as a plain header but invalid is not handed out as a context. */
    ck_assert_int_eq(outbox_message_set_header(m, "traceparent", "garbage"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_trace_context(m, &tp, &ts), 0);
    ck_assert_ptr_null(tp);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_config_keys_are_checked_when_read) {
    outbox_conf_t *c = outbox_conf_new();
    char err[512];
    ck_assert_int_eq(outbox_conf_set(c, "relay.format", "cloudevents", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(c, "relay.format", "json", err, sizeof(err)), OUTBOX_CONF_INVALID);
    ck_assert(strstr(err, "relay.format") && strstr(err, "envelope|cloudevents"));
    const char *good[] = {"https://example.com/orders", "/orders-service", "urn:acme:orders", "orders",
                          "//host:8080/p?q=1#f", "http://[::1]/x", "a%20b"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(outbox_conf_set(c, "relay.cloudevents.source", good[i], err, sizeof(err)) == OUTBOX_CONF_OK,
                      "%s: %s", good[i], err);
    struct {
        const char *v, *want;
    } bad[] = {{"has space", "0x20 at offset 3"}, {"a%zz", "'%' at offset 1"}, {"1http://x", "not a URI scheme"},
               {"a#b#c", "second '#'"}, {"/x[1]", "IP literal"}, {"caf\xc3\xa9", "byte 0xc3"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(outbox_conf_set(c, "relay.cloudevents.source", bad[i].v, err, sizeof(err)),
                         OUTBOX_CONF_INVALID);
        ck_assert_msg(strstr(err, "relay.cloudevents.source") && strstr(err, "URI-reference") &&
                          strstr(err, bad[i].want) && strstr(err, "use e.g."),
                      "case %zu: %s", i, err);
    }
    char src[64];
    outbox_ce_source_default("my schema", src, sizeof(src));
    ck_assert_str_eq(src, "/outbox/my%20schema");
    ck_assert_ptr_null(outbox_uri_reference_problem(src, err, sizeof(err)));
    outbox_conf_destroy(c);
}
END_TEST

/* ---- end to end: writer -> relay -> Kafka -> consumer -> reply ---------------------------------- */

static void setup(void) {
    tf_setup("t_ce");
}

static void teardown(void) {
    tf_teardown(NULL);
}

static outbox_consumer_t *consumer_on(const char *group, const char *topic) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", getenv("OUTBOX_TEST_PG"), err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.group.id", group, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.bootstrap.servers", tf_broker->bootstrap, err, sizeof(err)),
                     OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.fetch.wait.max.ms", "50", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "log.level", "4", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ck_assert_msg(c != NULL, "outbox_consumer_new: %s", err);
    const char *topics[] = {topic};
    ck_assert_msg(outbox_consumer_subscribe(c, topics, 1) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    return c;
}

static void send_one(outbox_message_t *m) {
    tu_exec(tf_conn, "BEGIN");
    ck_assert_msg(outbox_send(tf_ob, tf_conn, m) == OUTBOX_OK, "send: %s", outbox_errmsg(tf_ob));
    tu_exec(tf_conn, "COMMIT");
}

typedef struct {
    int calls;
    char id[8][40], tp[8][64], ts[8][64], ctype[8][64], dest[8][64];
    outbox_kind_t kind[8];
    outbox_t *replier; /* when set, answers each COMMAND */
} seen_t;

static outbox_handler_result_t on_msg(const outbox_message_t *m, PGconn *conn, void *opaque) {
    seen_t *s = opaque;
    if (s->calls >= 8)
        return OUTBOX_HANDLER_REJECT;
    int i = s->calls++;
    const char *tp = NULL, *ts = NULL;
    outbox_message_trace_context(m, &tp, &ts);
    snprintf(s->id[i], sizeof(s->id[i]), "%s", outbox_message_id(m));
    snprintf(s->tp[i], sizeof(s->tp[i]), "%s", tp ? tp : "");
    snprintf(s->ts[i], sizeof(s->ts[i]), "%s", ts ? ts : "");
    snprintf(s->ctype[i], sizeof(s->ctype[i]), "%s", outbox_message_content_type(m));
    snprintf(s->dest[i], sizeof(s->dest[i]), "%s", outbox_message_destination(m));
    s->kind[i] = outbox_message_kind(m);
    if (s->replier && outbox_message_kind(m) == OUTBOX_COMMAND &&
        outbox_reply(s->replier, conn, m, "orders.Placed", "ok", 2) != OUTBOX_OK)
        return OUTBOX_HANDLER_RETRY;
    return OUTBOX_HANDLER_OK;
}

static void poll_until(outbox_consumer_t *c, seen_t *s, int calls) {
    int64_t deadline = tk_now_ms() + 30000;
    while (s->calls < calls && tk_now_ms() < deadline)
        TF_CHECK(outbox_consumer_poll(c, on_msg, s, 200) == OUTBOX_OK, "poll: %s", outbox_consumer_errmsg(c));
    TF_CHECK(s->calls >= calls, "the handler saw %d messages, not %d", s->calls, calls);
}

START_TEST(test_trace_context_survives_writer_relay_consumer_reply) {
    tf_start_broker("--topic", "ce.cmds:2", "--topic", "ce.replies:2", NULL);
    tf_start_relay("relay.format=cloudevents", "relay.cloudevents.source=https://example.com/orders", NULL);
    outbox_message_t *m = full_msg();
    outbox_message_t *cmd = outbox_message_new(OUTBOX_COMMAND, "ce.cmds", "orders.PlaceOrder");
    ck_assert_int_eq(outbox_message_set_key(cmd, "cust-42", 7), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(cmd, "{}", 2), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_content_type(cmd, "application/json"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_reply_to(cmd, "ce.replies"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_trace_context(cmd, TP, TS), OUTBOX_OK);
    send_one(cmd);
    outbox_message_destroy(m);

    /* On Kafka: binary mode, the payload as the value, the context as plain headers. */
    tk_consumer_t *kc = tk_consumer_new(tf_broker->bootstrap, "ce.cmds");
    TF_CHECK(tk_consumer_poll(kc, 1, tk_now_ms() + 30000) == 1, "the command did not reach Kafka");
    size_t n;
    const tk_record_t *rec = tk_consumer_records(kc, &n);
    ck_assert_str_eq(tk_record_header(rec, "ce_specversion"), "1.0");
    ck_assert_str_eq(tk_record_header(rec, "ce_id"), outbox_message_id(cmd));
    ck_assert_str_eq(tk_record_header(rec, "ce_source"), "https://example.com/orders");
    ck_assert_str_eq(tk_record_header(rec, "content-type"), "application/json");
    ck_assert_str_eq(tk_record_header(rec, "traceparent"), TP);
    ck_assert_uint_eq(rec->value_len, 2);
    ck_assert_int_eq(memcmp(rec->value, "{}", 2), 0);
    tk_consumer_free(kc);

    /* The consumer hands the handler the context, and the reply carries it on. */
    seen_t s = {0};
    s.replier = tf_ob;
    outbox_consumer_t *c = consumer_on("ce-svc", "ce.cmds");
    poll_until(c, &s, 1);
    outbox_consumer_destroy(c);
    ck_assert_str_eq(s.id[0], outbox_message_id(cmd));
    ck_assert_str_eq(s.tp[0], TP);
    ck_assert_str_eq(s.ts[0], TS);
    ck_assert_str_eq(s.ctype[0], "application/json");
    ck_assert_str_eq(s.dest[0], "ce.cmds");

    kc = tk_consumer_new(tf_broker->bootstrap, "ce.replies");
    TF_CHECK(tk_consumer_poll(kc, 1, tk_now_ms() + 30000) == 1, "the reply did not reach Kafka");
    rec = tk_consumer_records(kc, &n);
    ck_assert_str_eq(tk_record_header(rec, "ce_outboxkind"), "REPLY");
    ck_assert_str_eq(tk_record_header(rec, "ce_correlationid"), outbox_message_id(cmd));
    ck_assert_str_eq(tk_record_header(rec, "traceparent"), TP);
    ck_assert_str_eq(tk_record_header(rec, "tracestate"), TS);
    tk_consumer_free(kc);
    outbox_message_destroy(cmd);
}
END_TEST

/* The same message published in both formats: the consumer reads both alike and the second is a
 * duplicate of the first. */
START_TEST(test_consumer_round_trip_in_both_formats_with_dedup) {
    tf_start_broker("--topic", "ce.mixed:1", NULL);
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "ce.mixed", "orders.Created");
    ck_assert_int_eq(outbox_message_set_key(m, "k1", 2), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "one", 3), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, NULL), OUTBOX_OK);
    outbox_message_t *m2 = outbox_message_new(OUTBOX_DOCUMENT, "ce.mixed", "orders.Doc");
    ck_assert_int_eq(outbox_message_set_payload(m2, "two", 3), OUTBOX_OK);

    tk_proc_t *relay = tf_start_relay(NULL); /* envelope format, the default */
    send_one(m);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 30000) == 0,
             "the envelope relay did not publish");
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 20000), "relay did not stop");
    tf_start_relay("relay.format=cloudevents", NULL);
    send_one(m); /* the same message again, now as a CloudEvent */
    send_one(m2);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 30000) == 0,
             "the cloudevents relay did not publish");

    tk_consumer_t *kc = tk_consumer_new(tf_broker->bootstrap, "ce.mixed");
    TF_CHECK(tk_consumer_poll(kc, 3, tk_now_ms() + 30000) == 3, "three records expected");
    size_t n;
    const tk_record_t *rec = tk_consumer_records(kc, &n);
    ck_assert_ptr_null(tk_record_header(&rec[0], "ce_specversion"));
    ck_assert_str_eq(tk_record_header(&rec[0], "id"), outbox_message_id(m));
    ck_assert_str_eq(tk_record_header(&rec[1], "ce_id"), outbox_message_id(m));
    tk_consumer_free(kc);

    seen_t s = {0};
    outbox_consumer_t *c = consumer_on("ce-both", "ce.mixed");
    poll_until(c, &s, 2);
    outbox_consumer_stats_t st;
    int64_t deadline = tk_now_ms() + 10000;
    do {
        TF_CHECK(outbox_consumer_poll(c, on_msg, &s, 200) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
        outbox_consumer_stats(c, &st);
    } while (st.duplicates < 1 && tk_now_ms() < deadline);
    outbox_consumer_destroy(c);
    ck_assert_int_eq(s.calls, 2);
    ck_assert_int_eq(st.duplicates, 1);
    ck_assert_str_eq(s.id[0], outbox_message_id(m));
    ck_assert_str_eq(s.tp[0], TP);
    ck_assert_int_eq(s.kind[0], OUTBOX_EVENT);
    ck_assert_str_eq(s.id[1], outbox_message_id(m2));
    ck_assert_int_eq(s.kind[1], OUTBOX_DOCUMENT);
    ck_assert_str_eq(s.dest[1], "ce.mixed");
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.processed")), 2);
    outbox_message_destroy(m);
    outbox_message_destroy(m2);
}
END_TEST

/* Rejects a message whose payload is "bad" until accept is set; records the rest as on_msg. */
typedef struct {
    seen_t seen;
    int accept, rejected;
} picky_t;

static outbox_handler_result_t on_picky(const outbox_message_t *m, PGconn *conn, void *opaque) {
    picky_t *p = opaque;
    size_t len;
    const void *pl = outbox_message_payload(m, &len);
    if (!p->accept && len == 3 && !memcmp(pl, "bad", 3)) {
        p->rejected++;
        return OUTBOX_HANDLER_REJECT;
    }
    return on_msg(m, conn, &p->seen);
}

/* Under consumer.reject.policy=park-key a CloudEvents record is held with its headers (its
 * attributes): released, it is read back as the same message, trace context and type included. */
START_TEST(test_parked_cloudevent_is_retried_as_the_same_message) {
    tf_start_broker("--topic", "ce.park:1", NULL);
    tf_start_relay("relay.format=cloudevents", NULL);
    outbox_message_t *m1 = outbox_message_new(OUTBOX_EVENT, "ce.park", "orders.Created");
    ck_assert_int_eq(outbox_message_set_key(m1, "k1", 2), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m1, "bad", 3), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_trace_context(m1, TP, TS), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_content_type(m1, "text/plain"), OUTBOX_OK);
    outbox_message_t *m2 = outbox_message_new(OUTBOX_EVENT, "ce.park", "orders.Paid");
    ck_assert_int_eq(outbox_message_set_key(m2, "k1", 2), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m2, "two", 3), OUTBOX_OK);
    send_one(m1);
    send_one(m2);

    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "pg.conninfo", getenv("OUTBOX_TEST_PG"), err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.group.id", "ce-park", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.reject.policy", "park-key", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.bootstrap.servers", tf_broker->bootstrap, err, sizeof(err)),
                     OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.fetch.wait.max.ms", "50", err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    ck_assert_msg(c != NULL, "outbox_consumer_new: %s", err);
    const char *topics[] = {"ce.park"};
    ck_assert_msg(outbox_consumer_subscribe(c, topics, 1) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));

    picky_t p = {0};
    int64_t deadline = tk_now_ms() + 30000;
    while (tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")) < 2 && tk_now_ms() < deadline)
        TF_CHECK(outbox_consumer_poll(c, on_picky, &p, 200) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked WHERE headers IS NOT NULL")), 2);
    ck_assert_int_eq(p.rejected, 1);
    ck_assert_int_eq(p.seen.calls, 0);

    p.accept = 1;
    ck_assert_msg(outbox_consumer_parked_retry(c, "k1", 2) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    deadline = tk_now_ms() + 30000;
    while (p.seen.calls < 2 && tk_now_ms() < deadline)
        TF_CHECK(outbox_consumer_poll(c, on_picky, &p, 200) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    ck_assert_int_eq(p.seen.calls, 2);
    ck_assert_str_eq(p.seen.id[0], outbox_message_id(m1));
    ck_assert_str_eq(p.seen.tp[0], TP);
    ck_assert_str_eq(p.seen.ts[0], TS);
    ck_assert_str_eq(p.seen.ctype[0], "text/plain");
    ck_assert_str_eq(p.seen.id[1], outbox_message_id(m2));
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_parked")), 0);
    outbox_message_destroy(m1);
    outbox_message_destroy(m2);
}
END_TEST

/* A CloudEvent without its type is dead-lettered with the attribute named; the consumer goes on. */
START_TEST(test_incomplete_cloudevent_is_dead_lettered) {
    tf_start_broker("--topic", "ce.bad:1", NULL);
    /* Produced with librdkafka directly: the test producer adds only an "id" header. */
    char err[256];
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    ck_assert_int_eq(rd_kafka_conf_set(kconf, "bootstrap.servers", tf_broker->bootstrap, err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, err, sizeof(err));
    ck_assert_msg(rk != NULL, "%s", err);
    rd_kafka_headers_t *h = rd_kafka_headers_new(4);
    rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
    rd_kafka_header_add(h, "ce_id", -1, "0190a5a4-8e1b-7c3d-9f00-000000000001", -1);
    rd_kafka_header_add(h, "ce_source", -1, "/elsewhere", -1);
    ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("ce.bad"), RD_KAFKA_V_KEY("k", 1),
                                       RD_KAFKA_V_VALUE((void *)"payload", 7), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    ck_assert_int_eq(rd_kafka_flush(rk, 15000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);
    seen_t s = {0};
    outbox_consumer_t *c = consumer_on("ce-bad", "ce.bad");
    int64_t deadline = tk_now_ms() + 30000;
    while (tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.consumer_dead_letters")) < 1 && tk_now_ms() < deadline)
        TF_CHECK(outbox_consumer_poll(c, on_msg, &s, 200) == OUTBOX_OK, "%s", outbox_consumer_errmsg(c));
    outbox_consumer_destroy(c);
    ck_assert_int_eq(s.calls, 0);
    PGresult *res = PQexec(tf_conn, tf_q("SELECT reason, message_id::text FROM @.consumer_dead_letters"));
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_msg(strstr(PQgetvalue(res, 0, 0), "required attribute type is missing"), "%s", PQgetvalue(res, 0, 0));
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "0190a5a4-8e1b-7c3d-9f00-000000000001");
    PQclear(res);
}
END_TEST

/* ---- an independent implementation: the official CloudEvents JavaScript SDK ---------------- */

START_TEST(test_cloudevents_sdk_reads_the_relay_records) {
    tf_start_broker("--topic", "ce.js:2", NULL);
    tf_start_relay("relay.format=cloudevents", NULL);
    outbox_message_t *m = outbox_message_new(OUTBOX_COMMAND, "ce.js", "orders.PlaceOrder");
    ck_assert_int_eq(outbox_message_set_key(m, "cust-42", 7), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "\x01\x02\x00\xff", 4), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_reply_to(m, "ce.replies"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_schema_version(m, "2.3"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_content_type(m, "application/protobuf"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_trace_context(m, TP, TS), OUTBOX_OK);
    outbox_message_t *e = outbox_message_new(OUTBOX_EVENT, "ce.js", "orders.Empty"); /* no payload */
    send_one(m);
    send_one(e);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 30000) == 0, "not published");

    char *script = tk_build_path("js/ce_read.mjs");
    const char *argv[] = {"/usr/bin/env", "node", script, tf_broker->bootstrap, "ce.js", "2", NULL};
    int timed_out;
    tk_proc_t *p = tk_proc_run("ce_read", argv, 90000, &timed_out);
    free(script);
    char *out = tk_read_file(p->out_path);
    TF_CHECK(!timed_out && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
             "node ce_read.mjs: %s\nstdout:\n%s\nstderr:\n%s", tk_status_str(p->status), out,
             tk_file_tail(p->err_path, 3000));
    char want[256], time[32];
    const char *line_m = strstr(out, outbox_message_id(m)), *line_e = strstr(out, outbox_message_id(e));
    TF_CHECK(line_m && line_e, "the SDK did not print both events:\n%s", out);
    /* Every field as the SDK decoded it, from the JSON line of each event. */
    const char *lm = line_m;
    while (lm > out && lm[-1] != '\n')
        lm--;
    char *eol = strchr(lm, '\n');
    char *l = strndup(lm, eol ? (size_t)(eol - lm) : strlen(lm));
    ck_assert_int_eq(outbox_ce_time_format(outbox_message_created_at_us(m), time), 0);
    const char *fields[][2] = {{"specversion", "1.0"}, {"type", "orders.PlaceOrder"},
                               {"source", NULL}, {"subject", "cust-42"}, {"datacontenttype", "application/protobuf"},
                               {"outboxkind", "COMMAND"}, {"schemaversion", "2.3"}, {"replyto", "ce.replies"},
                               {"data_base64", "AQIA/w=="}, {"traceparent", TP}, {"tracestate", TS},
                               {"time", time}};
    /* The SDK keeps time as a JavaScript Date: milliseconds. */
    strcpy(time + 23, "Z");
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        char src[128];
        if (!fields[i][1]) {
            outbox_ce_source_default(tf_schema, src, sizeof(src));
            fields[i][1] = src;
        }
        snprintf(want, sizeof(want), "\"%s\":\"%s\"", fields[i][0], fields[i][1]);
        TF_CHECK(strstr(l, want), "the SDK's event lacks %s:\n%s", want, l);
    }
    free(l);
    TF_CHECK(strstr(line_e, "\"data_base64\":\"\""), "the empty event's data:\n%s", out);
    free(out);
    tk_proc_free(p);
    outbox_message_destroy(m);
    outbox_message_destroy(e);
}
END_TEST

static Suite *cloudevents_suite(void) {
    Suite *s = suite_create("cloudevents");
    TCase *tc = tcase_create("binding");
    tcase_add_test(tc, test_record_has_required_attributes_and_extensions);
    tcase_add_test(tc, test_time_is_rfc3339_utc_with_microseconds);
    tcase_add_test(tc, test_attribute_names_and_values_follow_the_naming_rules);
    tcase_add_test(tc, test_record_with_no_payload_and_a_binary_key);
    tcase_add_test(tc, test_envelope_without_content_type_is_unchanged);
    tcase_add_test(tc, test_consumer_reads_the_record_back_as_the_same_message);
    tcase_add_test(tc, test_missing_required_attribute_is_rejected_by_name);
    tcase_add_test(tc, test_trace_context_is_validated_per_w3c_level_1);
    tcase_add_test(tc, test_config_keys_are_checked_when_read);
    suite_add_tcase(s, tc);
    tc = tcase_create("end_to_end");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_trace_context_survives_writer_relay_consumer_reply);
    tcase_add_test(tc, test_consumer_round_trip_in_both_formats_with_dedup);
    tcase_add_test(tc, test_incomplete_cloudevent_is_dead_lettered);
    tcase_add_test(tc, test_parked_cloudevent_is_retried_as_the_same_message);
    tcase_add_test(tc, test_cloudevents_sdk_reads_the_relay_records);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(cloudevents_suite());
}
