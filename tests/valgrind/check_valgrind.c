/* check_valgrind: outbox-relay under valgrind memcheck for a 10,000-message drain (`make
 * check-valgrind`): every message published, no invalid access, 0 bytes definitely lost. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_fixture.h"

enum { MESSAGES = 10000 };

static void setup(void) {
    tf_setup("t_valgrind");
}

static void teardown(void) {
    tf_teardown(NULL);
}

START_TEST(test_relay_drain_under_memcheck) {
    tf_start_broker("--topic", "vg.orders:4", NULL);
    /* The message shapes the relay handles differently: keyed, unkeyed, with headers, and a
     * keyless poison row it must move to dead_letters, and a keyed one whose key it parks. */
    outbox_message_t **ms = calloc(MESSAGES, sizeof(*ms));
    for (int i = 0; i < MESSAGES; i++) {
        ms[i] = outbox_message_new(i % 3 == 2 ? OUTBOX_COMMAND : OUTBOX_EVENT, "vg.orders", "vg.Order");
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "k%d", i % 100);
        if (i % 10)
            outbox_message_set_key(ms[i], buf, (size_t)n);
        outbox_message_set_payload(ms[i], buf, (size_t)n);
        if (i % 7 == 0)
            outbox_message_set_header(ms[i], "trace", buf);
    }
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, MESSAGES), OUTBOX_OK);
    tu_exec(tf_conn, "COMMIT");
    for (int i = 0; i < MESSAGES; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
    tu_exec(tf_conn, tf_q("INSERT INTO @.messages (message_id, destination, message_type, envelope)"
                          " VALUES (gen_random_uuid(), 'vg bad topic', 'vg.Poison', '\\x00')"));
    /* A keyed poison row parks its key: it and the key's next row move to parked_messages. */
    tu_exec(tf_conn, tf_q("INSERT INTO @.messages (message_id, destination, partition_key, message_type, envelope)"
                          " VALUES (gen_random_uuid(), 'vg bad topic', 'vgp', 'vg.Poison', '\\x00'),"
                          " (gen_random_uuid(), 'vg.orders', 'vgp', 'vg.Held', '\\x00')"));

    char *relay = tk_build_path("outbox-relay"), *vglog = tk_scratch_path("valgrind.log");
    char s_log[512], s_conn[1024], s_schema[128], s_boot[1100];
    snprintf(s_log, sizeof(s_log), "--log-file=%s", vglog);
    snprintf(s_conn, sizeof(s_conn), "pg.conninfo=%s", getenv("OUTBOX_TEST_PG"));
    snprintf(s_schema, sizeof(s_schema), "outbox.schema=%s", tf_schema);
    snprintf(s_boot, sizeof(s_boot), "kafka.bootstrap.servers=%s", tf_broker->bootstrap);
    /* Leaks that librdkafka and libpq keep on purpose are "still reachable", never "definitely
     * lost": only definite leaks and invalid accesses count as errors. */
    const char *argv[] = {"/usr/bin/valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
                          "--errors-for-leak-kinds=definite", "--error-exitcode=99", "--track-origins=yes",
                          s_log, relay, "-X", s_conn, "-X", s_schema, "-X", s_boot, "-X",
                          "relay.batch.size=1000", "run", NULL};
    tk_proc_t *p = tf_spawn("relay-valgrind", argv);
    long long left = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 600000);
    TF_CHECK(left == 0, "%lld rows left after 600 s under valgrind", left);
    long long parked = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters"), 1, 10000);
    TF_CHECK(parked == 1, "%lld dead letters, expected the keyless poison row", parked);
    long long held = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_messages"), 2, 10000);
    TF_CHECK(held == 2, "%lld rows in parked_messages, expected the keyed poison row and the row after it", held);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.parked_keys")), 1);

    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "vg.orders");
    size_t got = tk_consumer_poll(c, MESSAGES, tk_now_ms() + 60000);
    tk_consumer_free(c);
    TF_CHECK(got >= MESSAGES, "%zu of %d messages on the topic", got, MESSAGES);

    tk_proc_signal(p, SIGTERM);
    TF_CHECK(tk_proc_wait(p, 120000), "the relay did not exit within 120 s of SIGTERM under valgrind");
    char *log = tk_read_file(vglog);
    printf("%s", strstr(log, "HEAP SUMMARY") ? strstr(log, "HEAP SUMMARY") : log);
    TF_CHECK(tf_exit_code(p) == 0, "relay under valgrind: %s (99 = memcheck errors); valgrind log:\n%s",
             tk_status_str(p->status), log);
    TF_CHECK(tf_matches(log, "ERROR SUMMARY: 0 errors"), "memcheck reported errors:\n%s", log);
    TF_CHECK(!tf_matches(log, "definitely lost: [1-9]"), "memcheck found definite leaks:\n%s", log);
    TF_CHECK(!tf_matches(log, "Invalid (read|write|free)|uninitialised"), "invalid accesses:\n%s", log);
    free(log);
    free(vglog);
    free(relay);
}
END_TEST

int main(void) {
    Suite *s = suite_create("valgrind");
    TCase *tc = tcase_create("relay");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_relay_drain_under_memcheck);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
