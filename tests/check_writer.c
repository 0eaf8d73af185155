/*
 * The writer against a real PostgreSQL: atomicity with the caller's transaction, row contents,
 * envelope contents (decoded with the generated protobuf-c code), batches and bad input.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/v1/envelope.pb-c.h"
#include "testutil.h"

static PGconn *conn;
static outbox_t *ob;
static char *schema;
static char sql[1024];

static void setup(void) {
    conn = tu_connect();
    schema = tu_schema_name("t_writer");
    ob = tu_outbox(conn, schema);
}

static void teardown(void) {
    PQclear(PQexec(conn, "ROLLBACK"));
    snprintf(sql, sizeof(sql), "DROP SCHEMA \"%s\" CASCADE", schema);
    tu_exec(conn, sql);
    outbox_destroy(ob);
    PQfinish(conn);
    free(schema);
}

static long long count_rows(void) {
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\".messages", schema);
    return tu_scalar(conn, sql);
}

static outbox_message_t *order_event(const char *order_id) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders", "orders.OrderCreated");
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(outbox_message_set_key(m, order_id, strlen(order_id)), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "\x01\x02\x00\x03", 4), OUTBOX_OK);
    return m;
}

START_TEST(test_commit_writes_one_row_with_full_envelope) {
    outbox_message_t *m = outbox_message_new(OUTBOX_COMMAND, "orders.commands", "orders.Approve");
    ck_assert_int_eq(outbox_message_set_key(m, "order-42", 8), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, "\x00payload\xff", 9), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_header(m, "traceparent",
                                               "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                     OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_header(m, "tenant", "acme"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_schema_version(m, "2.3"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_correlation_id(m, "corr-1"), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_reply_to(m, "orders.replies"), OUTBOX_OK);

    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send(ob, conn, m) == OUTBOX_OK, "%s", outbox_errmsg(ob));
    tu_exec(conn, "COMMIT");

    snprintf(sql, sizeof(sql),
             "SELECT message_id::text, destination, partition_key, message_type, envelope, "
             "(extract(epoch from created_at) * 1000000)::bigint FROM \"%s\".messages",
             schema);
    PGresult *res = PQexecParams(conn, sql, 0, NULL, NULL, NULL, NULL, 1 /* binary */);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(res), 1);
    PQclear(res);
    /* Text columns in text form, bytea in binary: read the two separately. */
    res = PQexec(conn, sql);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), outbox_message_id(m));
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "orders.commands");
    ck_assert_str_eq(PQgetvalue(res, 0, 3), "orders.Approve");
    long long created = strtoll(PQgetvalue(res, 0, 5), NULL, 10);
    ck_assert(llabs(created - outbox_message_created_at_us(m)) <= 1);
    PQclear(res);
    res = PQexecParams(conn, sql, 0, NULL, NULL, NULL, NULL, 1);
    ck_assert_int_eq(PQgetlength(res, 0, 2), 8);
    ck_assert_mem_eq(PQgetvalue(res, 0, 2), "order-42", 8);

    Outbox__V1__Envelope *e = outbox__v1__envelope__unpack(
        NULL, (size_t)PQgetlength(res, 0, 4), (const uint8_t *)PQgetvalue(res, 0, 4));
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e->id, outbox_message_id(m));
    ck_assert_int_eq(e->kind, OUTBOX__V1__KIND__COMMAND);
    ck_assert_str_eq(e->type, "orders.Approve");
    ck_assert_str_eq(e->schema_version, "2.3");
    ck_assert_str_eq(e->destination, "orders.commands");
    ck_assert_int_eq(e->key.len, 8);
    ck_assert_mem_eq(e->key.data, "order-42", 8);
    ck_assert_int_eq(e->payload.len, 9);
    ck_assert_mem_eq(e->payload.data, "\x00payload\xff", 9);
    ck_assert_int_eq(e->created_at_unix_us, outbox_message_created_at_us(m));
    ck_assert_str_eq(e->correlation_id, "corr-1");
    ck_assert_str_eq(e->reply_to, "orders.replies");
    ck_assert_int_eq(e->n_headers, 2);
    ck_assert_str_eq(e->headers[0]->key, "traceparent");
    ck_assert_str_eq(e->headers[0]->value, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ck_assert_str_eq(e->headers[1]->key, "tenant");
    ck_assert_str_eq(e->headers[1]->value, "acme");
    outbox__v1__envelope__free_unpacked(e, NULL);
    PQclear(res);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_rollback_leaves_no_row) {
    outbox_message_t *m = order_event("o-1");
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send(ob, conn, m), OUTBOX_OK);
    ck_assert_int_eq(count_rows(), 1); /* visible inside the transaction */
    tu_exec(conn, "ROLLBACK");
    ck_assert_int_eq(count_rows(), 0);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_outside_transaction_refused) {
    outbox_message_t *m = order_event("o-1");
    ck_assert_int_eq(outbox_send(ob, conn, m), OUTBOX_ERR_NOT_IN_TRANSACTION);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "BEGIN"));
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "writer.allow.autocommit"));
    ck_assert_int_eq(count_rows(), 0);
    const outbox_message_t *one[1] = {m};
    ck_assert_int_eq(outbox_send_batch(ob, conn, one, 1), OUTBOX_ERR_NOT_IN_TRANSACTION);
    ck_assert_int_eq(count_rows(), 0);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_autocommit_when_asked) {
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", schema, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "writer.allow.autocommit", "true", err, sizeof(err)),
                     OUTBOX_CONF_OK);
    outbox_t *ob2 = outbox_new(conf, err, sizeof(err));
    outbox_message_t *m = order_event("o-1");
    ck_assert_msg(outbox_send(ob2, conn, m) == OUTBOX_OK, "%s", outbox_errmsg(ob2));
    ck_assert_int_eq(count_rows(), 1);
    outbox_message_destroy(m);
    outbox_destroy(ob2);
}
END_TEST

START_TEST(test_aborted_transaction_refused) {
    outbox_message_t *m = order_event("o-1");
    tu_exec(conn, "BEGIN");
    PQclear(PQexec(conn, "SELECT 1/0"));
    ck_assert_int_eq(outbox_send(ob, conn, m), OUTBOX_ERR_TRANSACTION_ABORTED);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "ROLLBACK"));
    tu_exec(conn, "ROLLBACK");
    ck_assert_int_eq(count_rows(), 0);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_batch_of_1000_in_order) {
    enum { N = 1000 };
    outbox_message_t *ms[N];
    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i % 7);
        ms[i] = order_event(key);
        char payload[16];
        int n = snprintf(payload, sizeof(payload), "%d", i);
        outbox_message_set_payload(ms[i], payload, (size_t)n);
    }
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(ob, conn, (const outbox_message_t *const *)ms, N) == OUTBOX_OK, "%s",
                  outbox_errmsg(ob));
    tu_exec(conn, "COMMIT");
    snprintf(sql, sizeof(sql), "SELECT message_id::text FROM \"%s\".messages ORDER BY id", schema);
    PGresult *res = PQexec(conn, sql);
    ck_assert_int_eq(PQntuples(res), N);
    for (int i = 0; i < N; i++)
        ck_assert_str_eq(PQgetvalue(res, i, 0), outbox_message_id(ms[i]));
    PQclear(res);
    for (int i = 0; i < N; i++)
        outbox_message_destroy(ms[i]);
}
END_TEST

START_TEST(test_batch_larger_than_one_statement) {
    enum { N = 12001 };
    outbox_message_t **ms = calloc(N, sizeof(*ms));
    for (int i = 0; i < N; i++)
        ms[i] = order_event("k");
    tu_exec(conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(ob, conn, (const outbox_message_t *const *)ms, N) == OUTBOX_OK, "%s",
                  outbox_errmsg(ob));
    tu_exec(conn, "COMMIT");
    snprintf(sql, sizeof(sql), "SELECT message_id::text FROM \"%s\".messages ORDER BY id", schema);
    PGresult *res = PQexec(conn, sql);
    ck_assert_int_eq(PQntuples(res), N);
    for (int i = 0; i < N; i += 997)
        ck_assert_str_eq(PQgetvalue(res, i, 0), outbox_message_id(ms[i]));
    ck_assert_str_eq(PQgetvalue(res, N - 1, 0), outbox_message_id(ms[N - 1]));
    PQclear(res);
    for (int i = 0; i < N; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
}
END_TEST

START_TEST(test_batch_with_one_bad_message_writes_nothing) {
    char big[2000];
    memset(big, 'x', sizeof(big));
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "outbox.schema", schema, err, sizeof(err));
    ck_assert_int_eq(outbox_conf_set(conf, "writer.max.message.bytes", "1000", err, sizeof(err)),
                     OUTBOX_CONF_OK);
    outbox_t *small = outbox_new(conf, err, sizeof(err));
    outbox_message_t *ms[3] = {order_event("a"), order_event("b"), order_event("c")};
    outbox_message_set_payload(ms[2], big, sizeof(big));
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send_batch(small, conn, (const outbox_message_t *const *)ms, 3),
                     OUTBOX_ERR_MSG_TOO_LARGE);
    tu_exec(conn, "COMMIT");
    ck_assert_int_eq(count_rows(), 0);
    for (int i = 0; i < 3; i++)
        outbox_message_destroy(ms[i]);
    outbox_destroy(small);
}
END_TEST

START_TEST(test_null_arguments) {
    outbox_message_t *m = order_event("o-1");
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send(NULL, conn, m), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(NULL), "NULL"));
    ck_assert_int_eq(outbox_send(ob, NULL, m), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "conn is NULL"));
    ck_assert_int_eq(outbox_send(ob, conn, NULL), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "message is NULL"));
    ck_assert_int_eq(outbox_send_batch(ob, conn, NULL, 3), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "ms is NULL"));
    const outbox_message_t *two[2] = {m, NULL};
    ck_assert_int_eq(outbox_send_batch(ob, conn, two, 2), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "message 1 is NULL"));
    ck_assert_int_eq(outbox_migrate(ob, NULL), OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob), "conn is NULL"));
    ck_assert_int_eq(outbox_message_set_key(NULL, "k", 1), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_payload(m, NULL, 5), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_header(m, NULL, "v"), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_header(m, "id", "v"), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_schema_version(m, "two"), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_schema_version(m, "1."), OUTBOX_ERR_INVALID_ARG);
    ck_assert_int_eq(outbox_message_set_reply_to(m, "no spaces"), OUTBOX_ERR_INVALID_ARG);
    tu_exec(conn, "COMMIT");
    ck_assert_int_eq(count_rows(), 0);
    outbox_destroy(NULL);
    outbox_message_destroy(NULL);
    outbox_conf_destroy(NULL);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_invalid_destinations) {
    static const char *bad[] = {"", "has space", "semi;colon", "quote\"", ".", "..", "ünïcode"};
    char err[512];
    outbox_message_t *m;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(outbox_message_create(&m, OUTBOX_EVENT, bad[i], "t.T", err, sizeof(err)),
                         OUTBOX_ERR_INVALID_DESTINATION);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(err, "destination") != NULL, "message lacks the argument: %s", err);
        errno = 0;
        ck_assert_ptr_null(outbox_message_new(OUTBOX_EVENT, bad[i], "t.T"));
        ck_assert_int_eq(errno, EINVAL);
    }
    char longname[251];
    memset(longname, 'a', 250);
    longname[250] = '\0';
    ck_assert_int_eq(outbox_message_create(&m, OUTBOX_EVENT, longname, "t.T", err, sizeof(err)),
                     OUTBOX_ERR_INVALID_DESTINATION);
    ck_assert_ptr_nonnull(strstr(err, "250 characters"));
    longname[249] = '\0'; /* 249 is the longest valid name */
    ck_assert_int_eq(outbox_message_create(&m, OUTBOX_EVENT, longname, "t.T", err, sizeof(err)), OUTBOX_OK);
    outbox_message_destroy(m);
    ck_assert_int_eq(outbox_message_create(&m, OUTBOX_EVENT, NULL, "t.T", err, sizeof(err)),
                     OUTBOX_ERR_INVALID_DESTINATION);
    ck_assert_int_eq(outbox_message_create(&m, OUTBOX_EVENT, "ok", "", err, sizeof(err)),
                     OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(err, "type is empty"));
    ck_assert_int_eq(outbox_message_create(&m, (outbox_kind_t)9, "ok", "t.T", err, sizeof(err)),
                     OUTBOX_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(err, "kind 9"));
}
END_TEST

START_TEST(test_oversize_refused_with_both_sizes) {
    size_t n = 1000001;
    char *big = malloc(n);
    memset(big, 'p', n);
    outbox_message_t *m = order_event("o-1");
    ck_assert_int_eq(outbox_message_set_payload(m, big, n), OUTBOX_OK);
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send(ob, conn, m), OUTBOX_ERR_MSG_TOO_LARGE);
    const char *msg = outbox_errmsg(ob);
    ck_assert_msg(strstr(msg, "writer.max.message.bytes=1000000") != NULL, "%s", msg);
    ck_assert_msg(strstr(msg, "10000") != NULL && strstr(msg, " bytes") != NULL, "%s", msg);
    /* The refusal happens before any statement: the transaction is still usable. */
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_INTRANS);
    tu_exec(conn, "COMMIT");
    ck_assert_int_eq(count_rows(), 0);
    free(big);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_unmigrated_schema_reports_schema_error) {
    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "outbox.schema", "never_migrated", err, sizeof(err));
    outbox_t *ob2 = outbox_new(conf, err, sizeof(err));
    outbox_message_t *m = order_event("o-1");
    tu_exec(conn, "BEGIN");
    ck_assert_int_eq(outbox_send(ob2, conn, m), OUTBOX_ERR_SCHEMA);
    ck_assert_ptr_nonnull(strstr(outbox_errmsg(ob2), "outbox_migrate"));
    tu_exec(conn, "ROLLBACK");
    outbox_message_destroy(m);
    outbox_destroy(ob2);
}
END_TEST

/* Each refusal says, through outbox_message_errmsg(), which argument, what value and what to do. */
static void refused(outbox_err_t got, const outbox_message_t *m, const char *const *needles) {
    ck_assert_int_eq(got, OUTBOX_ERR_INVALID_ARG);
    for (; *needles; needles++)
        ck_assert_msg(strstr(outbox_message_errmsg(m), *needles), "\"%s\" is not in the refusal: %s", *needles,
                      outbox_message_errmsg(m));
}

#define REFUSED(call, ...) refused((call), m, (const char *const[]){__VA_ARGS__, NULL})

START_TEST(test_setter_refusals_say_why) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders.events", "orders.OrderCreated");
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(outbox_message_errmsg(m), "");
    REFUSED(outbox_message_set_header(m, "id", "x"), "outbox_message_set_header", "name \"id\"", "reserved",
            "choose another name", "\"x-id\"");
    REFUSED(outbox_message_set_header(m, "kind", "x"), "name \"kind\"", "reserved");
    REFUSED(outbox_message_set_header(m, "", "x"), "name is empty", "pass a header name");
    REFUSED(outbox_message_set_header(m, NULL, "x"), "name is NULL");
    REFUSED(outbox_message_set_header(m, "trace", NULL), "value of header \"trace\" is NULL", "pass \"\"");
    REFUSED(outbox_message_set_header(m, "trace", "ab\xff"), "value \"ab?\"", "not valid UTF-8",
            "byte 0xff at offset 2", "base64");
    REFUSED(outbox_message_set_header(m, "n\xc3", "v"), "name \"n?\"", "not valid UTF-8");
    REFUSED(outbox_message_set_schema_version(m, "2"), "outbox_message_set_schema_version", "version \"2\"",
            "MAJOR.MINOR", "\"2.1\"");
    REFUSED(outbox_message_set_schema_version(m, NULL), "version is NULL");
    REFUSED(outbox_message_set_reply_to(m, "bad topic"), "outbox_message_set_reply_to", "channel \"bad topic\"",
            "pass the Kafka topic");
    REFUSED(outbox_message_set_reply_to(m, NULL), "channel is NULL");
    REFUSED(outbox_message_set_correlation_id(m, "\xfe"), "outbox_message_set_correlation_id", "id \"?\"",
            "not valid UTF-8");
    REFUSED(outbox_message_set_key(m, NULL, 3), "outbox_message_set_key", "key is NULL but len is 3",
            "pass len 0");
    REFUSED(outbox_message_set_payload(m, "x", (size_t)-1), "outbox_message_set_payload", "not a length",
            "negative size");
    /* A refusal leaves the message as it was; a call that succeeds clears the message. */
    ck_assert_ptr_null(outbox_message_header(m, "id"));
    ck_assert_str_eq(outbox_message_schema_version(m), "1.0");
    ck_assert_int_eq(outbox_message_set_header(m, "x-id", "x"), OUTBOX_OK);
    ck_assert_str_eq(outbox_message_errmsg(m), "");
    ck_assert_str_eq(outbox_message_errmsg(NULL), "message is NULL");
    /* Not received from Kafka: no record to name. */
    ck_assert_str_eq(outbox_message_kafka_topic(m), "");
    ck_assert_int_eq(outbox_message_kafka_partition(m), -1);
    ck_assert_int_eq(outbox_message_kafka_offset(m), -1);
    outbox_message_destroy(m);
}
END_TEST

START_TEST(test_encode_decode_roundtrip_and_garbage) {
    outbox_message_t *m = order_event("key-1"), *d = NULL;
    outbox_message_set_header(m, "h", "v");
    void *buf;
    size_t len;
    char err[256];
    ck_assert_int_eq(outbox_message_encode(m, &buf, &len), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_decode(&d, buf, len, err, sizeof(err)), OUTBOX_OK);
    ck_assert_str_eq(outbox_message_id(d), outbox_message_id(m));
    ck_assert_int_eq(outbox_message_kind(d), OUTBOX_EVENT);
    ck_assert_str_eq(outbox_message_header(d, "h"), "v");
    size_t klen;
    ck_assert_mem_eq(outbox_message_key(d, &klen), "key-1", 5);
    ck_assert_int_eq(klen, 5);
    outbox_message_destroy(d);
    free(buf);
    ck_assert_int_eq(outbox_message_decode(&d, "\xff\xff\xff", 3, err, sizeof(err)), OUTBOX_ERR_DECODE);
    ck_assert_ptr_null(d);
    ck_assert_ptr_nonnull(strstr(err, "not a valid"));
    ck_assert_int_eq(outbox_message_decode(&d, "", 0, err, sizeof(err)), OUTBOX_ERR_DECODE);
    ck_assert_ptr_nonnull(strstr(err, "empty"));
    /* A well-formed protobuf with a malformed id and an unknown kind. */
    Outbox__V1__Envelope e = OUTBOX__V1__ENVELOPE__INIT;
    e.id = (char *)"not-a-uuid";
    e.kind = OUTBOX__V1__KIND__EVENT;
    e.type = (char *)"t.T";
    e.destination = (char *)"d";
    e.schema_version = (char *)"1.0";
    uint8_t packed[256];
    size_t n = outbox__v1__envelope__pack(&e, packed);
    ck_assert_int_eq(outbox_message_decode(&d, packed, n, err, sizeof(err)), OUTBOX_ERR_DECODE);
    ck_assert_ptr_nonnull(strstr(err, "id is not a UUID"));
    e.id = (char *)"0190f0e2-8c1a-7cde-8f00-0123456789ab";
    e.kind = (Outbox__V1__Kind)42;
    n = outbox__v1__envelope__pack(&e, packed);
    ck_assert_int_eq(outbox_message_decode(&d, packed, n, err, sizeof(err)), OUTBOX_ERR_DECODE);
    ck_assert_ptr_nonnull(strstr(err, "kind 42"));
    outbox_message_destroy(m);
}
END_TEST

static Suite *writer_suite(void) {
    Suite *s = suite_create("writer");
    TCase *tc = tcase_create("send");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_commit_writes_one_row_with_full_envelope);
    tcase_add_test(tc, test_rollback_leaves_no_row);
    tcase_add_test(tc, test_outside_transaction_refused);
    tcase_add_test(tc, test_autocommit_when_asked);
    tcase_add_test(tc, test_aborted_transaction_refused);
    tcase_add_test(tc, test_batch_of_1000_in_order);
    tcase_add_test(tc, test_batch_larger_than_one_statement);
    tcase_add_test(tc, test_batch_with_one_bad_message_writes_nothing);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_invalid_destinations);
    tcase_add_test(tc, test_oversize_refused_with_both_sizes);
    tcase_add_test(tc, test_unmigrated_schema_reports_schema_error);
    tcase_add_test(tc, test_encode_decode_roundtrip_and_garbage);
    tcase_add_test(tc, test_setter_refusals_say_why);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(writer_suite());
}
