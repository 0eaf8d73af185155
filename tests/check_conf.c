/*
 * Configuration: known keys, typed values with ranges, kafka.* keys checked by librdkafka, and
 * error messages that name the key, the value and the fix.
 */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static outbox_conf_t *conf;
static char err[512];

static void setup(void) {
    conf = outbox_conf_new();
    ck_assert_ptr_nonnull(conf);
    err[0] = '\0';
}

static void teardown(void) {
    outbox_conf_destroy(conf);
}

static const char *get(const char *key) {
    static char buf[256];
    size_t n = sizeof(buf);
    ck_assert_int_eq(outbox_conf_get(conf, key, buf, &n), OUTBOX_CONF_OK);
    return buf;
}

START_TEST(test_defaults) {
    ck_assert_str_eq(get("outbox.schema"), "outbox");
    ck_assert_str_eq(get("writer.max.message.bytes"), "1000000");
    ck_assert_str_eq(get("writer.allow.autocommit"), "false");
    ck_assert_str_eq(get("consumer.batch.savepoints"), "on-failure");
}
END_TEST

START_TEST(test_unknown_key_named) {
    ck_assert_int_eq(outbox_conf_set(conf, "writer.max.bytes", "5", err, sizeof(err)), OUTBOX_CONF_UNKNOWN);
    ck_assert_ptr_nonnull(strstr(err, "\"writer.max.bytes\""));
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.no.such.property", "1", err, sizeof(err)),
                     OUTBOX_CONF_UNKNOWN);
    ck_assert_ptr_nonnull(strstr(err, "kafka.no.such.property"));
    size_t n = 0;
    ck_assert_int_eq(outbox_conf_get(conf, "nope", NULL, &n), OUTBOX_CONF_UNKNOWN);
}
END_TEST

START_TEST(test_invalid_values_named) {
    ck_assert_int_eq(outbox_conf_set(conf, "writer.max.message.bytes", "12abc", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "\"12abc\""));
    ck_assert_ptr_nonnull(strstr(err, "writer.max.message.bytes"));
    ck_assert_ptr_nonnull(strstr(err, "integer from"));
    ck_assert_int_eq(outbox_conf_set(conf, "writer.max.message.bytes", "0", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_int_eq(outbox_conf_set(conf, "writer.allow.autocommit", "maybe", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "true or false"));
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", "", err, sizeof(err)), OUTBOX_CONF_INVALID);
    char longname[80];
    memset(longname, 's', 64);
    longname[64] = '\0';
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", longname, err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "64"));
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.acks", "sometimes", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "kafka.acks"));
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.savepoints", "sometimes", err, sizeof(err)),
                     OUTBOX_CONF_INVALID);
    ck_assert_str_eq(err, "invalid value \"sometimes\" for \"consumer.batch.savepoints\": expected one of "
                          "on-failure|always");
    ck_assert_int_eq(outbox_conf_set(NULL, "a", "b", err, sizeof(err)), OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "conf is NULL"));
    /* Failed sets leave the old value. */
    ck_assert_str_eq(get("writer.max.message.bytes"), "1000000");
}
END_TEST

START_TEST(test_valid_values_stored) {
    ck_assert_int_eq(outbox_conf_set(conf, "writer.allow.autocommit", "YES", err, sizeof(err)),
                     OUTBOX_CONF_OK);
    ck_assert_str_eq(get("writer.allow.autocommit"), "true");
    ck_assert_int_eq(outbox_conf_set(conf, "consumer.batch.savepoints", "always", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_str_eq(get("consumer.batch.savepoints"), "always");
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.acks", "all", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.linger.ms", "5", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "kafka.linger.ms", "7", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_str_eq(get("kafka.linger.ms"), "7");
    ck_assert_str_eq(get("kafka.acks"), "all");
    outbox_conf_t *copy = outbox_conf_dup(conf);
    size_t n = 0;
    ck_assert_int_eq(outbox_conf_get(copy, "kafka.linger.ms", NULL, &n), OUTBOX_CONF_OK);
    ck_assert_int_eq(n, 2);
    char small[1];
    n = sizeof(small);
    ck_assert_int_eq(outbox_conf_get(copy, "kafka.linger.ms", small, &n), OUTBOX_CONF_INVALID);
    ck_assert_int_eq(n, 2);
    outbox_conf_destroy(copy);
}
END_TEST

START_TEST(test_wal_keys) {
    ck_assert_str_eq(get("outbox.mode"), "table");
    ck_assert_str_eq(get("relay.slot.name"), "");
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.mode", "wal", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_str_eq(get("outbox.mode"), "wal");
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.mode", "WAL", err, sizeof(err)), OUTBOX_CONF_INVALID);
    ck_assert_str_eq(err, "invalid value \"WAL\" for \"outbox.mode\": expected one of table|wal");
    ck_assert_str_eq(get("outbox.mode"), "wal");
    ck_assert_int_eq(outbox_conf_set(conf, "relay.slot.name", "orders_outbox_1", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_str_eq(get("relay.slot.name"), "orders_outbox_1");
    ck_assert_int_eq(outbox_conf_set(conf, "relay.slot.name", "", err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_int_eq(outbox_conf_set(conf, "relay.slot.name", "Orders-1", err, sizeof(err)), OUTBOX_CONF_INVALID);
    ck_assert_msg(strstr(err, "\"Orders-1\"") && strstr(err, "\"relay.slot.name\"") &&
                      strstr(err, "lower-case letters, digits and _ (byte 0 is 0x4f)") &&
                      strstr(err, "use e.g. \"outbox_orders\""), "%s", err);
    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    ck_assert_int_eq(outbox_conf_set(conf, "relay.slot.name", longname, err, sizeof(err)), OUTBOX_CONF_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "0 to 63 bytes, got 64"));
    longname[63] = '\0';
    ck_assert_int_eq(outbox_conf_set(conf, "relay.slot.name", longname, err, sizeof(err)), OUTBOX_CONF_OK);
    ck_assert_str_eq(get("relay.slot.name"), longname);
}
END_TEST

START_TEST(test_version) {
    char expect[32];
    snprintf(expect, sizeof(expect), "%d.%d.%d", OUTBOX_VERSION_MAJOR, OUTBOX_VERSION_MINOR,
             OUTBOX_VERSION_PATCH);
    ck_assert_str_eq(outbox_version_str(), expect);
    ck_assert_int_eq(OUTBOX_VERSION >> 24, OUTBOX_VERSION_MAJOR);
    ck_assert_str_eq(outbox_err2str(OUTBOX_ERR_NOT_IN_TRANSACTION), "not in a transaction");
    ck_assert_str_eq(outbox_err2str((outbox_err_t)-999), "unknown error");
    ck_assert(outbox_err_is_retriable(OUTBOX_ERR_CONNECTION));
    ck_assert(!outbox_err_is_retriable(OUTBOX_ERR_INVALID_DESTINATION));
}
END_TEST

static Suite *conf_suite(void) {
    Suite *s = suite_create("conf");
    TCase *tc = tcase_create("conf");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_unknown_key_named);
    tcase_add_test(tc, test_invalid_values_named);
    tcase_add_test(tc, test_valid_values_stored);
    tcase_add_test(tc, test_wal_keys);
    tcase_add_test(tc, test_version);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(conf_suite());
}
