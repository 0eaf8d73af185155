/*
 * outbox-relay as its own process against the throwaway PostgreSQL and the mock Kafka broker over
 * TCP: delivery, gaps, per-key order, leadership, shutdown, broker and database faults, poison rows.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil_seq.h"

static void setup(void) {
    tf_setup("t_relay");
}

static void teardown(void) {
    tf_teardown(NULL);
}

static long long backlog(void) {
    return tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"));
}

/* Waits for the relay to empty the outbox table. */
static void wait_drained(int timeout_ms) {
    long long left = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, timeout_ms);
    TF_CHECK(left == 0, "%lld rows still in the outbox after %d ms", left, timeout_ms);
}

/* Waits until the relay has deleted at least one of the first total rows: it is mid-drain. */
static void wait_draining(long long total) {
    int64_t deadline = tk_now_ms() + 30000;
    while (backlog() >= total) {
        TF_CHECK(tk_now_ms() < deadline, "the relay deleted nothing of %lld rows within 30 s", total);
        tk_sleep_ms(5);
    }
}

/* ---- 1. delivery ---------------------------------------------------------------------------- */

START_TEST(test_delivers_committed_messages_with_key_value_and_headers) {
    enum { N = 2000, KEYS = 10, ROLLED = 50 };
    static const char *const kind_names[] = {"", "EVENT", "COMMAND", "REPLY", "DOCUMENT"};
    static const char *const topics[] = {"t1.orders", "t1.payments"};
    static const char traceparent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    tf_start_broker("--topic", "t1.orders:4", "--topic", "t1.payments:3", NULL);

    outbox_message_t **ms = calloc(N, sizeof(*ms));
    ck_assert_ptr_nonnull(ms);
    int expected[2] = {0, 0};
    for (int i = 0; i < N; i++) {
        int t = i % 5 == 4; /* every fifth message goes to the second topic */
        char buf[32];
        snprintf(buf, sizeof(buf), "test.Type%d", i % 3);
        ms[i] = outbox_message_new((outbox_kind_t)(i % 4 + 1), topics[t], buf);
        ck_assert_ptr_nonnull(ms[i]);
        expected[t]++;
        if (i % 97 != 0) { /* a few without key: the relay must send no Kafka key for them */
            int n = snprintf(buf, sizeof(buf), "k%d", i % KEYS);
            ck_assert_int_eq(outbox_message_set_key(ms[i], buf, (size_t)n), OUTBOX_OK);
        }
        int n = snprintf(buf, sizeof(buf), "%d", i);
        ck_assert_int_eq(outbox_message_set_payload(ms[i], buf, (size_t)n), OUTBOX_OK);
        ck_assert_int_eq(outbox_message_set_header(ms[i], "traceparent", traceparent), OUTBOX_OK);
        ck_assert_int_eq(outbox_message_set_header(ms[i], "seq", buf), OUTBOX_OK);
    }

    /* Messages of rolled-back transactions must never appear. */
    tk_idset_t rolled = {0};
    for (int round = 0; round < 2; round++) {
        tu_exec(tf_conn, "BEGIN");
        for (int i = 0; i < ROLLED; i++) {
            outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topics[i % 2], "test.RolledBack");
            ck_assert_int_eq(outbox_message_set_key(m, "k1", 2), OUTBOX_OK);
            ck_assert_int_eq(outbox_message_set_payload(m, "-1", 2), OUTBOX_OK);
            ck_assert_int_eq(outbox_send(tf_ob, tf_conn, m), OUTBOX_OK);
            tk_idset_add(&rolled, outbox_message_id(m));
            outbox_message_destroy(m);
        }
        tu_exec(tf_conn, "ROLLBACK");

        /* The first half is a backlog when the relay starts; the second arrives while it runs. */
        for (int tx = round * N / 2; tx < (round + 1) * N / 2; tx += 100) {
            tu_exec(tf_conn, "BEGIN");
            if (round == 0) {
                for (int i = tx; i < tx + 100; i++)
                    ck_assert_msg(outbox_send(tf_ob, tf_conn, ms[i]) == OUTBOX_OK, "%s", outbox_errmsg(tf_ob));
            } else {
                ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms + tx, 100) ==
                                  OUTBOX_OK,
                              "%s", outbox_errmsg(tf_ob));
            }
            tu_exec(tf_conn, "COMMIT");
        }
        if (round == 0)
            tf_start_relay(NULL);
    }

    unsigned char *seen = calloc(N, 1);
    int key_partition[2][KEYS], last[KEYS];
    for (int k = 0; k < KEYS; k++)
        key_partition[0][k] = key_partition[1][k] = -1, last[k] = -1;
    for (int t = 0; t < 2; t++) {
        tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, topics[t]);
        size_t got = tk_consumer_poll(c, (size_t)expected[t], tk_now_ms() + 60000);
        TF_CHECK(got == (size_t)expected[t], "%s: %zu of %d messages arrived", topics[t], got, expected[t]);
        /* Nothing more may come: no rolled-back message, and no duplicates without a fault. */
        got = tk_consumer_poll(c, (size_t)expected[t] + 1, tk_now_ms() + 1500);
        TF_CHECK(got == (size_t)expected[t], "%s: %zu messages, expected exactly %d", topics[t], got,
                 expected[t]);

        size_t n;
        const tk_record_t *recs = tk_consumer_records(c, &n);
        for (size_t j = 0; j < n; j++) {
            const tk_record_t *r = &recs[j];
            outbox_message_t *d = NULL;
            char err[256];
            TF_CHECK(outbox_message_decode(&d, r->value, r->value_len, err, sizeof(err)) == OUTBOX_OK,
                     "%s offset %lld: value is not an envelope: %s", topics[t], (long long)r->offset, err);
            const char *id = tk_record_header(r, "id");
            TF_CHECK(!tk_idset_has(&rolled, id), "message %s of a rolled-back transaction was published", id);
            size_t plen;
            const char *payload = outbox_message_payload(d, &plen);
            char buf[16] = "";
            memcpy(buf, payload, plen < sizeof(buf) - 1 ? plen : sizeof(buf) - 1);
            int i = atoi(buf);
            TF_CHECK(i >= 0 && i < N && !seen[i], "%s: unexpected or repeated message '%s'", topics[t], buf);
            seen[i] = 1;
            const outbox_message_t *m = ms[i];

            /* value = the envelope exactly as written */
            void *env;
            size_t env_len;
            ck_assert_int_eq(outbox_message_encode(m, &env, &env_len), OUTBOX_OK);
            TF_CHECK(r->value_len == env_len && !memcmp(r->value, env, env_len),
                     "message %d: value differs from the envelope written (%zu vs %zu bytes)", i, r->value_len,
                     env_len);
            free(env);
            ck_assert_str_eq(outbox_message_destination(d), topics[t]);

            /* headers: id, type and kind from the relay, then the envelope's own */
            TF_CHECK(id && !strcmp(id, outbox_message_id(m)), "message %d: header id %s, expected %s", i,
                     id ? id : "(none)", outbox_message_id(m));
            const char *h = tk_record_header(r, "type");
            TF_CHECK(h && !strcmp(h, outbox_message_type(m)), "message %d: header type %s", i, h ? h : "(none)");
            h = tk_record_header(r, "kind");
            TF_CHECK(h && !strcmp(h, kind_names[outbox_message_kind(m)]), "message %d: header kind %s, expected %s",
                     i, h ? h : "(none)", kind_names[outbox_message_kind(m)]);
            h = tk_record_header(r, "traceparent");
            TF_CHECK(h && !strcmp(h, traceparent), "message %d: header traceparent %s", i, h ? h : "(none)");
            h = tk_record_header(r, "seq");
            TF_CHECK(h && !strcmp(h, buf), "message %d: header seq %s", i, h ? h : "(none)");
            /* record time = event time (relay.record.timestamp = created, the default) */
            TF_CHECK(r->timestamp_ms == outbox_message_created_at_us(m) / 1000,
                     "message %d: record timestamp %lld, its created_at %lld ms", i,
                     (long long)r->timestamp_ms, (long long)(outbox_message_created_at_us(m) / 1000));

            /* key = partition key; same key, same partition, in outbox order */
            size_t klen;
            const void *key = outbox_message_key(m, &klen);
            if (!klen) {
                TF_CHECK(r->key == NULL, "message %d has no partition key but a Kafka key", i);
            } else {
                TF_CHECK(r->key && r->key_len == klen && !memcmp(r->key, key, klen), "message %d: wrong Kafka key",
                         i);
                int k = i % KEYS;
                if (key_partition[t][k] < 0)
                    key_partition[t][k] = r->partition;
                TF_CHECK(key_partition[t][k] == r->partition, "key k%d on partitions %d and %d", k,
                         key_partition[t][k], r->partition);
                TF_CHECK(i > last[k], "key k%d: message %d after message %d", k, i, last[k]);
                last[k] = i;
            }
            outbox_message_destroy(d);
        }
        tk_consumer_free(c);
    }
    for (int i = 0; i < N; i++)
        ck_assert_msg(seen[i], "message %d never arrived", i);
    wait_drained(10000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);

    for (int i = 0; i < N; i++)
        outbox_message_destroy(ms[i]);
    free(ms);
    free(seen);
    tk_idset_clear(&rolled);
}
END_TEST

/* ---- 2. gaps -------------------------------------------------------------------------------- */

START_TEST(test_late_commit_of_lower_id_is_published) {
    tf_start_broker("--topic", "t2.gap:2", NULL);
    PGconn *conn2 = tu_connect();
    outbox_t *ob2 = tu_outbox(conn2, tf_schema);
    tf_start_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t2.gap");

    outbox_message_t *a = seq_msg("t2.gap", 0, 0), *b = seq_msg("t2.gap", 1, 0);
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, tf_conn, a), OUTBOX_OK);
    long long id_a = tu_scalar(tf_conn, tf_q("SELECT max(id) FROM @.messages"));
    tu_exec(conn2, "BEGIN");
    ck_assert_int_eq(outbox_send(ob2, conn2, b), OUTBOX_OK);
    tu_exec(conn2, "COMMIT");
    char sql[512];
    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT id FROM @.messages WHERE message_id = "), outbox_message_id(b));
    long long id_b = tu_scalar(conn2, sql);
    ck_assert_int_gt(id_b, id_a); /* the gap: A holds a lower id and is not committed */

    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT count(*) FROM @.messages WHERE message_id = "),
             outbox_message_id(b));
    TF_CHECK(tk_wait_scalar(conn2, sql, 0, 15000) == 0, "B was not deleted");
    size_t n;
    TF_CHECK(tk_consumer_poll(c, 1, tk_now_ms() + 15000) == 1, "B was not published");
    const tk_record_t *recs = tk_consumer_records(c, &n);
    ck_assert_str_eq(tk_record_header(&recs[0], "id"), outbox_message_id(b));
    /* Let the relay poll past A's id a few times before A becomes visible. */
    tk_sleep_ms(500);

    tu_exec(tf_conn, "COMMIT");
    TF_CHECK(tk_consumer_poll(c, 2, tk_now_ms() + 15000) == 2, "A, committed after B, was never published");
    recs = tk_consumer_records(c, &n);
    ck_assert_str_eq(tk_record_header(&recs[1], "id"), outbox_message_id(a));
    wait_drained(10000);
    TF_CHECK(tk_consumer_poll(c, 3, tk_now_ms() + 1000) == 2, "more than the two messages were published");

    tk_consumer_free(c);
    outbox_message_destroy(a);
    outbox_message_destroy(b);
    outbox_destroy(ob2);
    PQfinish(conn2);
}
END_TEST

/* The same gap inside one claim: P and B commit together around A's lower id, and A commits while
 * their acknowledgements are still on the way.  Deleting P and B must not delete A, now visible
 * between them, unpublished. */
START_TEST(test_late_commit_inside_a_claimed_batch_is_published) {
    tf_start_broker("--topic", "t2.gap2:2", NULL);
    PGconn *conn2 = tu_connect();
    outbox_t *ob2 = tu_outbox(conn2, tf_schema);
    /* One batch in flight: no claim runs between A's commit and the deletion of P and B. */
    tf_start_relay("relay.inflight.batches=1", NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t2.gap2");
    tk_broker_cmd(tf_broker, "rtt all 1500"); /* slow acknowledgements */

    outbox_message_t *p = seq_msg("t2.gap2", 2, 0), *a = seq_msg("t2.gap2", 0, 0), *b = seq_msg("t2.gap2", 1, 0);
    tu_exec(conn2, "BEGIN");
    ck_assert_int_eq(outbox_send(ob2, conn2, p), OUTBOX_OK);
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, tf_conn, a), OUTBOX_OK);
    ck_assert_int_eq(outbox_send(ob2, conn2, b), OUTBOX_OK);
    tu_exec(conn2, "COMMIT");
    tk_sleep_ms(300); /* P and B are claimed together, and wait for their acknowledgements */
    long long left = tu_scalar(conn2, tf_q("SELECT count(*) FROM @.messages"));
    TF_CHECK(left == 2, "%lld rows in the outbox while P and B await their acknowledgements", left);
    tu_exec(tf_conn, "COMMIT");
    tk_broker_cmd(tf_broker, "rtt all 0");

    TF_CHECK(tk_consumer_poll(c, 3, tk_now_ms() + 20000) == 3, "A, committed between P and B while they "
             "were in flight, was never published");
    wait_drained(10000);
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int seen_a = 0;
    for (size_t i = 0; i < n; i++)
        seen_a += !strcmp(tk_record_header(&recs[i], "id"), outbox_message_id(a));
    TF_CHECK(seen_a >= 1, "A was never published (%zu records)", n);

    tk_consumer_free(c);
    outbox_message_destroy(p);
    outbox_message_destroy(a);
    outbox_message_destroy(b);
    outbox_destroy(ob2);
    PQfinish(conn2);
}
END_TEST

/* Claims start from a floor below which every id is settled.  The floor must never rise past an
 * id whose transaction is still open, however many later rows go out, and must rise once it has
 * ended (else every claim walks the deleted rows' index entries again). */
static long long max_floor(const char *log) {
    long long max = LLONG_MIN;
    for (const char *p = log; (p = strstr(p, "msg=\"claim floor\" floor=")); p++)
        if (atoll(p + strlen("msg=\"claim floor\" floor=")) > max)
            max = atoll(p + strlen("msg=\"claim floor\" floor="));
    return max;
}

START_TEST(test_claim_floor_waits_for_open_transactions) {
    tf_start_broker("--topic", "t2.floor:2", NULL);
    PGconn *conn2 = tu_connect();
    outbox_t *ob2 = tu_outbox(conn2, tf_schema);
    tk_proc_t *relay = tf_start_relay("log.level=7", NULL);

    outbox_message_t *a = seq_msg("t2.floor", 0, 0);
    tu_exec(conn2, "BEGIN");
    ck_assert_int_eq(outbox_send(ob2, conn2, a), OUTBOX_OK);
    long long id_a = tu_scalar(conn2, tf_q("SELECT max(id) FROM @.messages"));
    /* Many later rows, in many transactions, while A stays open. */
    for (int i = 0; i < 20; i++)
        write_seq("t2.floor", 1, 1 + i * 50, 1 + (i + 1) * 50, NULL);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
             "the rows after A were not published");
    tk_sleep_ms(500);
    char *log = tk_read_file(relay->err_path);
    long long before = max_floor(log);
    free(log);
    TF_CHECK(before <= id_a, "the claim floor rose to %lld, past id %lld of an open transaction", before, id_a);

    tu_exec(conn2, "COMMIT");
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
             "A was not published after its commit");
    long long after = LLONG_MIN;
    for (int64_t end = tk_now_ms() + 10000; tk_now_ms() < end && after <= id_a; tk_sleep_ms(100)) {
        log = tk_read_file(relay->err_path);
        after = max_floor(log);
        free(log);
    }
    TF_CHECK(after > id_a, "the claim floor stayed at %lld after the transaction of id %lld ended", after, id_a);

    outbox_message_destroy(a);
    outbox_destroy(ob2);
    PQfinish(conn2);
}
END_TEST

/* Only a transaction that wrote to the outbox can hold an id below the claims: an unrelated one,
 * however long, must not hold the claim floor (claims would step over every deleted row again),
 * while a writer that stays open must, and is named in a warning, and its row is still published
 * once it commits, below ids published long before. */
START_TEST(test_claim_floor_waits_only_for_outbox_writers) {
    tf_start_broker("--topic", "t2.only:2", NULL);
    PGconn *idle = tu_connect(), *writer = tu_connect();
    outbox_t *obw = tu_outbox(writer, tf_schema);
    tu_exec(idle, "SET application_name = 'unrelated-report'");
    tu_exec(idle, "BEGIN");
    tu_scalar(idle, "SELECT txid_current()"); /* holds an xid, as a long report or pg_dump would */
    tk_proc_t *relay = tf_start_relay("log.level=7", "relay.floor.warn.ms=500", NULL);

    write_seq("t2.only", 1, 1, 201, NULL);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
             "the first rows were not published");
    long long top = tu_scalar(idle, tf_q("SELECT last_value FROM @.messages_id_seq"));
    long long floor = LLONG_MIN;
    for (int64_t end = tk_now_ms() + 10000; tk_now_ms() < end && floor <= top; tk_sleep_ms(100)) {
        write_seq("t2.only", 2, 1, 2, NULL); /* claims keep coming, as under load */
        char *log = tk_read_file(relay->err_path);
        floor = max_floor(log);
        free(log);
    }
    TF_CHECK(floor > top, "an unrelated open transaction held the claim floor at %lld (ids up to %lld "
             "are published)", floor, top);

    /* Now an outbox writer stays open with a low id. */
    tu_exec(writer, "SET application_name = 'slow-writer'");
    tu_exec(writer, "BEGIN");
    outbox_message_t *a = seq_msg("t2.only", 3, 0);
    ck_assert_int_eq(outbox_send(obw, writer, a), OUTBOX_OK);
    long long id_a = tu_scalar(writer, tf_q("SELECT max(id) FROM @.messages"));
    for (int i = 0; i < 10; i++)
        write_seq("t2.only", 4, 1 + i * 50, 1 + (i + 1) * 50, NULL);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
             "the rows after the open writer's were not published");
    char *log = NULL, want[64];
    snprintf(want, sizeof(want), "pid=%d application_name=\"slow-writer\"", PQbackendPID(writer));
    for (int64_t end = tk_now_ms() + 10000; tk_now_ms() < end; tk_sleep_ms(100)) {
        free(log);
        log = tk_read_file(relay->err_path);
        if (strstr(log, want))
            break;
    }
    TF_CHECK(strstr(log, want) != NULL, "no warning naming the open writer (%s)", want);
    TF_CHECK(strstr(log, "unrelated-report") == NULL, "the warning named the unrelated transaction");
    TF_CHECK(max_floor(log) <= id_a, "the claim floor rose to %lld, past id %lld of an open writer",
             max_floor(log), id_a);
    free(log);
    /* status names it too (once it has been open a second), and not the unrelated transaction. */
    tk_sleep_ms(1100);
    char *pgkv, *schkv;
    ck_assert(asprintf(&pgkv, "pg.conninfo=%s", getenv("OUTBOX_TEST_PG")) > 0);
    ck_assert(asprintf(&schkv, "outbox.schema=%s", tf_schema) > 0);
    tk_proc_t *st = tf_relay_cli("-X", pgkv, "-X", schkv, "-X", "kafka.bootstrap.servers=127.0.0.1:9",
                                 "status", NULL);
    char *out = tk_read_file(st->out_path);
    snprintf(want, sizeof(want), "open_writer:     pid=%d application_name=slow-writer", PQbackendPID(writer));
    TF_CHECK(tf_exit_code(st) == 0 && strstr(out, want) && !strstr(out, "unrelated-report"),
             "status does not name the open writer alone (%s):\n%s", want, out);
    free(out);
    tk_proc_free(st);
    free(pgkv);
    free(schkv);

    tu_exec(writer, "COMMIT");
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
             "the open writer's row was not published after its commit");
    tu_exec(idle, "ROLLBACK");
    outbox_message_destroy(a);
    outbox_destroy(obw);
    PQfinish(idle);
    PQfinish(writer);
}
END_TEST

/* A full batch sends the next claim before its rows are produced, so that claim sees the table as
 * it was then.  A transaction holding a low id that commits in between must still be published:
 * the floor may rise only on a claim sent after those transactions were seen to end.  Each round
 * commits such a transaction while full batches of later rows stream out.  Whether a commit lands
 * in that window is a matter of timing: a relay that let the floor rise on such a claim stranded a
 * row in two of four runs of this test. */
START_TEST(test_late_commit_while_the_next_claim_is_sent_ahead) {
    tf_start_broker("--topic", "t2.ahead:2", NULL);
    PGconn *conn2 = tu_connect();
    outbox_t *ob2 = tu_outbox(conn2, tf_schema);
    /* Small batches, and room for many in flight: most claims go out ahead. */
    tf_start_relay("relay.batch.size=10", "relay.inflight.batches=64", NULL);
    for (int round = 0;; round++) {
        /* Drained and idle: the floor settles, and no transactions are listed (that takes a
         * claim with rows).  The first claim of this round lists A, with ids above A's. */
        TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, 15000) == 0,
                 "after round %d: %lld rows left unpublished, the lowest id %lld", round,
                 tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages")),
                 tu_scalar(tf_conn, tf_q("SELECT min(id) FROM @.messages")));
        if (round == 30)
            break;
        tk_sleep_ms(100);
        outbox_message_t *a = seq_msg("t2.ahead", 0, round);
        tu_exec(conn2, "BEGIN");
        ck_assert_int_eq(outbox_send(ob2, conn2, a), OUTBOX_OK);
        write_seq("t2.ahead", 1, round * 1000, (round + 1) * 1000, NULL);
        /* A commits while the relay is part-way through the later rows. */
        tk_wait_scalar(tf_conn, tf_q("SELECT (count(*) < 700)::int FROM @.messages"), 1, 15000);
        tu_exec(conn2, "COMMIT");
        outbox_message_destroy(a);
    }
    outbox_destroy(ob2);
    PQfinish(conn2);
}
END_TEST

/* A large backlog leaves the primary-key index at its largest size, which VACUUM never gives
 * back.  Once the table is drained, the relay rebuilds an index larger than
 * relay.reindex.min.bytes (REINDEX CONCURRENTLY) back to the size of an empty one. */
#define PK_SIZE_SQL                                                                               \
    "SELECT pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = '@.messages'::regclass"  \
    " AND indisprimary"

START_TEST(test_drained_relay_shrinks_a_bloated_index) {
    tf_start_broker("--topic", "t2.reindex:2", NULL);
    write_seq("t2.reindex", 10, 0, 10000, NULL); /* 100,000 rows */
    long long before = tu_scalar(tf_conn, tf_q(PK_SIZE_SQL));
    TF_CHECK(before > 1048576, "the index of 100,000 rows is only %lld bytes", before);
    tk_proc_t *relay = tf_start_relay("relay.reindex.min.bytes=1048576", "relay.reindex.check.ms=100", NULL);
    wait_drained(60000);
    long long after = tk_wait_scalar(tf_conn, tf_q("SELECT ((" PK_SIZE_SQL ") >= 65536)::int"), 0, 20000);
    TF_CHECK(after == 0, "the index is still %lld bytes (%lld before the drain), 20 s after it",
             tu_scalar(tf_conn, tf_q(PK_SIZE_SQL)), before);
    /* The new index replaces the old before the statement ends: its end is logged a little later. */
    char *log = NULL;
    for (int64_t end = tk_now_ms() + 10000; tk_now_ms() < end; tk_sleep_ms(100)) {
        free(log);
        log = tk_read_file(relay->err_path);
        if (strstr(log, "msg=\"rebuilt the outbox index\""))
            break;
    }
    TF_CHECK(strstr(log, "msg=\"rebuilt the outbox index\"") != NULL, "the relay did not log the rebuild:\n%s", log);
    free(log);
    /* The rebuilt index is the table's valid primary key, and the relay goes on. */
    TF_CHECK(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM pg_index WHERE indrelid = '@.messages'::regclass"
                                     " AND indisprimary AND indisvalid")) == 1, "no valid primary key after the rebuild");
    write_seq("t2.reindex", 10, 10000, 10010, NULL);
    wait_drained(15000);
}
END_TEST

/* ---- 3. per-key order under concurrent writers ------------------------------------------------ */

enum { T3_KEYS = 100, T3_PER_KEY = 100, T3_THREADS = 8 };

typedef struct {
    int thread;
    char error[512];
} writer_arg_t;

/* Writes its share of the messages as a service would: each transaction first updates the
 * aggregate's row, which serialises writers of one key and gives the next sequence number. */
static void *ordered_writer(void *p) {
    writer_arg_t *a = p;
    char err[256], upsert[512];
    PGconn *c = PQconnectdb(getenv("OUTBOX_TEST_PG"));
    outbox_conf_t *conf = outbox_conf_new();
    outbox_t *w = NULL;
    if (PQstatus(c) != CONNECTION_OK)
        snprintf(a->error, sizeof(a->error), "connect: %s", PQerrorMessage(c));
    else if (outbox_conf_set(conf, "outbox.schema", tf_schema, err, sizeof(err)) != OUTBOX_CONF_OK ||
             !(w = outbox_new(conf, err, sizeof(err))))
        snprintf(a->error, sizeof(a->error), "outbox_new: %s", err);
    if (!w) /* outbox_new() takes the conf only on success */
        outbox_conf_destroy(conf);
    snprintf(upsert, sizeof(upsert),
             "INSERT INTO \"%s\".agg (key) VALUES ($1) ON CONFLICT (key) DO UPDATE SET n = agg.n + 1 "
             "RETURNING n",
             tf_schema);
    for (int slot = a->thread; slot < T3_KEYS * T3_PER_KEY && !a->error[0]; slot += T3_THREADS) {
        int key = slot % T3_KEYS;
        char kbuf[16];
        snprintf(kbuf, sizeof(kbuf), "k%d", key);
        const char *params[1] = {kbuf};
        PQclear(PQexec(c, "BEGIN"));
        PGresult *res = PQexecParams(c, upsert, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            snprintf(a->error, sizeof(a->error), "upsert: %s", PQresultErrorMessage(res));
        } else {
            outbox_message_t *m = seq_msg("t3.ordered", key, atoi(PQgetvalue(res, 0, 0)));
            if (outbox_send(w, c, m) != OUTBOX_OK)
                snprintf(a->error, sizeof(a->error), "outbox_send: %s", outbox_errmsg(w));
            outbox_message_destroy(m);
        }
        PQclear(res);
        res = PQexec(c, a->error[0] ? "ROLLBACK" : "COMMIT");
        if (!a->error[0] && PQresultStatus(res) != PGRES_COMMAND_OK)
            snprintf(a->error, sizeof(a->error), "COMMIT: %s", PQresultErrorMessage(res));
        PQclear(res);
    }
    outbox_destroy(w);
    PQfinish(c);
    return NULL;
}

START_TEST(test_per_key_order_with_concurrent_writers) {
    tf_start_broker("--topic", "t3.ordered:8", NULL);
    tu_exec(tf_conn, tf_q("CREATE TABLE @.agg (key text PRIMARY KEY, n integer NOT NULL DEFAULT 0)"));
    tf_start_relay(NULL);
    pthread_t th[T3_THREADS];
    writer_arg_t args[T3_THREADS];
    for (int t = 0; t < T3_THREADS; t++) {
        memset(&args[t], 0, sizeof(args[t]));
        args[t].thread = t;
        ck_assert_int_eq(pthread_create(&th[t], NULL, ordered_writer, &args[t]), 0);
    }
    for (int t = 0; t < T3_THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < T3_THREADS; t++)
        ck_assert_msg(!args[t].error[0], "writer %d: %s", t, args[t].error);
    /* Every key got sequence numbers 0..99, each once. */
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.agg WHERE n = 99")), T3_KEYS);

    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t3.ordered");
    seqstate_t st;
    seq_init(&st, T3_KEYS, T3_PER_KEY);
    seq_read_all(&st, c, 90000);
    wait_drained(10000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* ---- 4. leadership -------------------------------------------------------------------------- */

/* Distinct PostgreSQL sessions of outbox-relay processes holding an advisory lock. */
static const char lock_holders_sql[] =
    "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND split_part(a.application_name, ' ', 1) = 'outbox-relay'";
static const char lock_holder_sql[] =
    "SELECT coalesce(min(l.pid), 0) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND split_part(a.application_name, ' ', 1) = 'outbox-relay'";

START_TEST(test_one_leader_and_standby_takes_over) {
    enum { KEYS = 20, BATCH = 10 }; /* three batches of 10 sequence numbers per key */
    tf_start_broker("--topic", "t4.leader:4", NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t4.leader");
    seqstate_t st;
    seq_init(&st, KEYS, 3 * BATCH);

    write_seq("t4.leader", KEYS, 0, BATCH, NULL);
    tk_proc_t *leader = tf_start_relay(NULL);
    wait_drained(30000);
    tk_proc_t *standby = tf_start_relay(NULL);
    tk_sleep_ms(1500); /* three lock retries of the standby */
    TF_CHECK(tk_proc_running(standby), "the standby exited: %s", tk_status_str(standby->status));
    long long holders = tu_scalar(tf_conn, lock_holders_sql);
    TF_CHECK(holders == 1, "%lld relay sessions hold an advisory lock, expected exactly 1", holders);
    long long leader_backend = tu_scalar(tf_conn, lock_holder_sql);

    /* While both run, each message is published once: the standby publishes nothing. */
    write_seq("t4.leader", KEYS, BATCH, 2 * BATCH, NULL);
    wait_drained(30000);
    int64_t deadline = tk_now_ms() + 30000;
    while (st.complete < 2 * BATCH * KEYS && tk_now_ms() < deadline)
        seq_poll(&st, c, 500);
    TF_CHECK(st.complete == 2 * BATCH * KEYS, "%d of %d messages arrived", st.complete, 2 * BATCH * KEYS);
    seq_poll(&st, c, 1000);
    int copies = seq_records_in(c, 0, 2 * BATCH);
    TF_CHECK(copies == 2 * BATCH * KEYS, "%d records for %d messages: more than one relay published", copies,
             2 * BATCH * KEYS);

    /* SIGKILL ends the leader's session; messages written after that must flow within 5 s. */
    tk_proc_signal(leader, SIGKILL);
    int64_t killed = tk_now_ms();
    ck_assert(tk_proc_wait(leader, 5000));
    write_seq("t4.leader", KEYS, 2 * BATCH, 3 * BATCH, NULL);
    int before = st.complete;
    while (st.complete == before && tk_now_ms() < killed + 5000)
        seq_poll(&st, c, 100);
    TF_CHECK(st.complete > before, "no new message was published within 5 s of killing the leader");
    seq_read_all(&st, c, 30000);
    wait_drained(10000);
    holders = tu_scalar(tf_conn, lock_holders_sql);
    TF_CHECK(holders == 1, "%lld relay sessions hold an advisory lock after the failover", holders);
    TF_CHECK(tu_scalar(tf_conn, lock_holder_sql) != leader_backend, "the lock holder did not change");
    TF_CHECK(tk_proc_running(standby), "the new leader exited: %s", tk_status_str(standby->status));
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* ---- 5. SIGTERM -------------------------------------------------------------------------------- */

START_TEST(test_sigterm_mid_drain_exits_0_and_loses_nothing) {
    enum { KEYS = 50, PER_KEY = 2000, N = KEYS * PER_KEY };
    tf_start_broker("--topic", "t5.drain:4", NULL);
    char(*ids)[37] = calloc(N, sizeof(*ids));
    ck_assert_ptr_nonnull(ids);
    write_seq("t5.drain", KEYS, 0, PER_KEY, ids);
    ck_assert_int_eq(backlog(), N);

    tk_proc_t *relay = tf_start_relay(NULL);
    wait_draining(N);
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 20000), "the relay did not exit within 20 s of SIGTERM");
    TF_CHECK(WIFEXITED(relay->status) && WEXITSTATUS(relay->status) == 0, "the relay ended with %s after SIGTERM",
             tk_status_str(relay->status));

    /* Rows may only be gone for messages that are on the topic. */
    tk_idset_t remaining = {0};
    PGresult *res = PQexec(tf_conn, tf_q("SELECT message_id::text FROM @.messages"));
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res); i++)
        tk_idset_add(&remaining, PQgetvalue(res, i, 0));
    int left = PQntuples(res);
    PQclear(res);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t5.drain");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    int64_t deadline = tk_now_ms() + 60000;
    while (st.complete < N - left && tk_now_ms() < deadline)
        seq_poll(&st, c, 500);
    for (int i = 0; i < N; i++)
        TF_CHECK(st.seen[i] || tk_idset_has(&remaining, ids[i]),
                 "message k%d:%d was deleted from the outbox but is not on the topic", i % KEYS, i / KEYS);

    /* A new relay finishes the job. */
    relay = tf_start_relay(NULL);
    wait_drained(60000);
    seq_read_all(&st, c, 60000);
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 20000) && WIFEXITED(relay->status) && WEXITSTATUS(relay->status) == 0,
             "the second relay did not exit 0 on SIGTERM");
    seq_free(&st);
    tk_consumer_free(c);
    tk_idset_clear(&remaining);
    free(ids);
}
END_TEST

/* ---- 6. broker outage --------------------------------------------------------------------------- */

/* A SIGTERM while the broker is away: the relay says once that the broker is silent, purges what
 * it holds without one log line per message, and its last line says how much is left. */
START_TEST(test_sigterm_with_the_broker_away_logs_a_summary_not_every_message) {
    enum { KEYS = 20, N = 100 };
    tf_start_broker("--topic", "t6.away:2", NULL);
    tk_proc_t *relay = tf_start_relay("relay.shutdown.timeout.ms=1000", NULL);
    write_seq("t6.away", KEYS, 0, 1, NULL);
    wait_drained(30000);
    tk_broker_cmd(tf_broker, "down all");
    write_seq("t6.away", KEYS, 1, 1 + N, NULL); /* 2,000 messages nobody can acknowledge */
    tk_sleep_ms(12000); /* past the 10 s after which the silence is worth a line */
    tk_proc_signal(relay, SIGTERM);
    TF_CHECK(tk_proc_wait(relay, 20000), "the relay did not exit within 20 s of SIGTERM");
    TF_CHECK(tf_exit_code(relay) == 0, "the relay exited with %s", tk_status_str(relay->status));
    char *log = tk_read_file(relay->err_path);
    int lines = 0;
    for (const char *p = log; (p = strchr(p, '\n')); p++)
        lines++;
    TF_CHECK(lines < 60, "%d log lines for %d messages left unacknowledged:\n%.3000s", lines, KEYS * N, log);
    TF_CHECK(tf_matches(log, "msg=\"no acknowledgement from the broker\" silent_s=[0-9]+ outstanding=[0-9]+"),
             "no line says the broker is silent:\n%.3000s", log);
    char want[128];
    snprintf(want, sizeof(want), "msg=\"stopped\" published=[0-9]+ dead_lettered=0 unacknowledged=[0-9]+ "
             "left_in_table=%d", KEYS * N);
    TF_CHECK(tf_matches(log, want), "the last line does not say what is left (%s):\n%.3000s", want, log);
    free(log);
}
END_TEST

START_TEST(test_broker_down_for_5s_loses_nothing_and_keeps_order) {
    enum { KEYS = 50, BEFORE = 600, DURING = 40 };
    tf_start_broker("--brokers", "3", "--topic", "t6.outage:4", NULL);
    write_seq("t6.outage", KEYS, 0, BEFORE, NULL);
    tf_start_relay(NULL);
    wait_draining((long long)KEYS * BEFORE);

    tk_broker_cmd(tf_broker, "down all");
    int64_t down_at = tk_now_ms();
    write_seq("t6.outage", KEYS, BEFORE, BEFORE + DURING, NULL); /* new work during the outage */
    tk_sleep_ms((int)(down_at + 5000 - tk_now_ms()));
    tk_broker_cmd(tf_broker, "up all");

    wait_drained(90000);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t6.outage");
    seqstate_t st;
    seq_init(&st, KEYS, BEFORE + DURING);
    seq_read_all(&st, c, 60000);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* ---- 7. lost PostgreSQL session ------------------------------------------------------------------ */

/* Through a PostgreSQL immediate restart the relay's log stays one logfmt record per line: the
 * server's "terminating connection due to immediate shutdown" notice and libpq's multi-line
 * errors are folded into records, and nothing reaches stderr raw.  Then it publishes again. */
START_TEST(test_log_through_an_immediate_restart_is_one_record_per_line) {
    enum { KEYS = 10, BEFORE = 100, AFTER = 20 };
    const char *pgctl = getenv("OUTBOX_TEST_PGCTL");
    ck_assert_msg(pgctl && *pgctl, "run through tests/support/run-tests.sh (OUTBOX_TEST_PGCTL)");
    tf_start_broker("--topic", "t7.restart:2", NULL);
    /* A notice of two lines on every delete the relay makes, as a trigger or the server may send. */
    tu_exec(tf_conn, tf_q("CREATE FUNCTION @.notice_twice() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                          " PERFORM set_config('client_min_messages', 'notice', true);"
                          " RAISE NOTICE E'outbox test notice\\nits second line'; RETURN NULL; END $$"));
    tu_exec(tf_conn, tf_q("CREATE TRIGGER notice_twice AFTER DELETE ON @.messages FOR EACH STATEMENT"
                          " EXECUTE FUNCTION @.notice_twice()"));
    write_seq("t7.restart", KEYS, 0, BEFORE, NULL);
    tk_proc_t *relay = tf_start_relay("relay.reconnect.backoff.max.ms=500", NULL);
    wait_drained(30000);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s restart -m immediate >/dev/null 2>&1", pgctl);
    ck_assert_int_eq(system(cmd), 0);
    PQreset(tf_conn);
    ck_assert_int_eq(PQstatus(tf_conn), CONNECTION_OK);
    write_seq("t7.restart", KEYS, BEFORE, BEFORE + AFTER, NULL);
    wait_drained(60000);
    TF_CHECK(tk_proc_running(relay), "the relay exited across the restart: %s", tk_status_str(relay->status));
    char *log = tk_read_file(relay->err_path);
    int lines = 0, bad = 0, connected = 0;
    const char *first_bad = NULL;
    for (char *line = log; line && *line;) {
        char *end = strchr(line, '\n');
        lines++;
        if (strncmp(line, "ts=", 3) != 0 || !strstr(line, " level=") || !strstr(line, " fac=")) {
            if (!bad++)
                first_bad = line;
        }
        connected += strstr(line, "msg=\"connected to PostgreSQL\"") && (!end || strstr(line, "msg=") < end);
        line = end ? end + 1 : NULL;
    }
    TF_CHECK(bad == 0, "%d of %d lines of the relay's log are not logfmt records, the first:\n%.300s", bad, lines,
             first_bad ? first_bad : "");
    TF_CHECK(connected >= 2, "the relay did not log its reconnection (%d connects):\n%s", connected, log);
    TF_CHECK(strstr(log, "outbox test notice its second line") != NULL, "the trigger's notice was not logged:\n%s",
             log);
    free(log);
}
END_TEST

START_TEST(test_relay_reconnects_after_backend_killed) {
    enum { KEYS = 60, BEFORE = 500, AFTER = 20 };
    tf_start_broker("--topic", "t7.reconnect:4", NULL);
    write_seq("t7.reconnect", KEYS, 0, BEFORE, NULL);
    tk_proc_t *relay = tf_start_relay(NULL);
    wait_draining((long long)KEYS * BEFORE);

    PGresult *res = PQexec(tf_conn, "SELECT coalesce(array_agg(pid)::text, '{}'), "
                                 "count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE split_part(application_name, ' ', 1) = 'outbox-relay'");
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    char killed[512], sql[1024];
    snprintf(killed, sizeof(killed), "%s", PQgetvalue(res, 0, 0));
    TF_CHECK(atoi(PQgetvalue(res, 0, 1)) >= 1, "no session with application_name 'outbox-relay' to terminate");
    PQclear(res);
    /* Rows written after the kill can only be claimed through a new session. */
    write_seq("t7.reconnect", KEYS, BEFORE, BEFORE + AFTER, NULL);
    wait_drained(60000);
    TF_CHECK(tk_proc_running(relay), "the relay exited after losing its session: %s", tk_status_str(relay->status));

    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t7.reconnect");
    seqstate_t st;
    seq_init(&st, KEYS, BEFORE + AFTER);
    seq_read_all(&st, c, 60000);
    /* It works through a new session, and says so in its log. */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE split_part(application_name, ' ', 1) = 'outbox-relay' "
             "AND pid <> ALL ('%s'::int[])",
             killed);
    TF_CHECK(tu_scalar(tf_conn, sql) >= 1, "the relay has no new session (old ones: %s)", killed);
    char *log = tk_read_file(relay->err_path);
    TF_CHECK(tf_matches(log, "lost|reconnect|terminat|closed"), "the relay's log does not mention the lost session");
    free(log);
    seq_free(&st);
    tk_consumer_free(c);
}
END_TEST

/* ---- 8. poison messages ------------------------------------------------------------------------- */

/* Inserts a row as a foreign producer would, with plain SQL; returns its outbox id. */
static long long insert_raw(const char *message_id, const char *destination, const char *key,
                            const void *envelope, size_t envelope_len) {
    char len_text[32];
    snprintf(len_text, sizeof(len_text), "%zu", envelope_len);
    const char *params[5] = {message_id, destination, key, "test.Poison", envelope};
    int lengths[5] = {0, 0, (int)strlen(key), 0, (int)envelope_len};
    int formats[5] = {0, 0, 1, 0, 1};
    PGresult *res = PQexecParams(tf_conn,
                                 tf_q("INSERT INTO @.messages (message_id, destination, partition_key, message_type, "
                                      "envelope) VALUES ($1, $2, $3, $4, $5) RETURNING id"),
                                 5, NULL, params, lengths, formats, 0);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "insert: %s", PQresultErrorMessage(res));
    long long id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return id;
}

/* The error text recorded in dead_letters for outbox id, checking the row kept what was sent. */
static char *dead_letter_error(long long id, const char *message_id, const char *destination, size_t env_len) {
    char sql[512];
    snprintf(sql, sizeof(sql), "%s%lld",
             tf_q("SELECT message_id::text, destination, octet_length(envelope), error FROM @.dead_letters "
                  "WHERE id = "),
             id);
    PGresult *res = PQexec(tf_conn, sql);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    TF_CHECK(PQntuples(res) == 1, "row %lld (%s) is not in dead_letters", id, destination);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), message_id);
    ck_assert_str_eq(PQgetvalue(res, 0, 1), destination);
    ck_assert_int_eq(strtoll(PQgetvalue(res, 0, 2), NULL, 10), (long long)env_len);
    char *error = strdup(PQgetvalue(res, 0, 3));
    PQclear(res);
    return error;
}

START_TEST(test_dead_letter_policy_moves_poison_rows_and_others_flow) {
    enum { KEYS = 3, PER_KEY = 5 };
    tf_start_broker("--topic", "t8.events:2", NULL);

    /* An envelope of 2,000,000+ bytes, above kafka.message.max.bytes (default 1000000). */
    size_t big_len = 2000000;
    char *big = malloc(big_len);
    memset(big, 'x', big_len);
    outbox_message_t *huge = seq_msg("t8.events", 0, 99);
    ck_assert_int_eq(outbox_message_set_payload(huge, big, big_len), OUTBOX_OK);
    void *huge_env, *bad_env;
    size_t huge_len, bad_len;
    ck_assert_int_eq(outbox_message_encode(huge, &huge_env, &huge_len), OUTBOX_OK);
    /* A well-formed envelope whose row names a destination that is no valid topic. */
    outbox_message_t *bad = seq_msg("t8.events", 1, 99);
    ck_assert_int_eq(outbox_message_encode(bad, &bad_env, &bad_len), OUTBOX_OK);

    write_seq("t8.events", KEYS, 0, 2, NULL);
    long long huge_id = insert_raw(outbox_message_id(huge), "t8.events", "k0", huge_env, huge_len);
    write_seq("t8.events", KEYS, 2, 4, NULL);
    long long bad_id = insert_raw(outbox_message_id(bad), "bad topic!", "k1", bad_env, bad_len);
    write_seq("t8.events", KEYS, 4, PER_KEY, NULL);
    tf_start_relay("relay.poison.policy=dead-letter", NULL); /* park-key (the default): check_park */

    wait_drained(30000);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 2);
    char *err = dead_letter_error(huge_id, outbox_message_id(huge), "t8.events", huge_len);
    TF_CHECK(strcasestr(err, "size") || strcasestr(err, "large"), "dead letter error for the oversize row: '%s'",
             err);
    free(err);
    err = dead_letter_error(bad_id, outbox_message_id(bad), "bad topic!", bad_len);
    TF_CHECK(strcasestr(err, "topic") != NULL, "dead letter error for the bad destination: '%s'", err);
    free(err);

    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "t8.events");
    seqstate_t st;
    seq_init(&st, KEYS, PER_KEY);
    seq_read_all(&st, c, 30000);
    /* The poison rows themselves were not published (their sequence number 99 would fail seq_feed). */
    seq_poll(&st, c, 1000);
    size_t n;
    tk_consumer_records(c, &n);
    TF_CHECK(n == KEYS * PER_KEY, "%zu records for %d valid messages", n, KEYS * PER_KEY);
    TF_CHECK(tk_proc_running(tf_procs[0]), "the relay exited: %s", tk_status_str(tf_procs[0]->status));

    seq_free(&st);
    tk_consumer_free(c);
    free(huge_env);
    free(bad_env);
    free(big);
    outbox_message_destroy(huge);
    outbox_message_destroy(bad);
}
END_TEST

/* ---- 9. command line ------------------------------------------------------------------------------ */

/* Writes a configuration file into the scratch directory.  Caller frees the path. */
static char *write_conf(const char *text) {
    char *path = tk_scratch_path("relay.conf");
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Runs a relay that must refuse its configuration: exit 2, and stderr must match every regex. */
#define EXPECT_REFUSED(p, ...)                                                                          \
    do {                                                                                                \
        char *err_ = tk_read_file((p)->err_path);                                                       \
        ck_assert_msg(tf_exit_code(p) == 2, "%s, expected exit 2; stderr:\n%s", tk_status_str((p)->status), \
                      err_);                                                                            \
        const char *res_[] = {__VA_ARGS__};                                                             \
        for (size_t i_ = 0; i_ < sizeof(res_) / sizeof(res_[0]); i_++)                                  \
            ck_assert_msg(tf_matches(err_, res_[i_]), "stderr does not match /%s/:\n%s", res_[i_], err_);   \
        free(err_);                                                                                     \
        tk_proc_free(p);                                                                                \
    } while (0)

/* A relay pointed at a schema that was never migrated (or a typo in outbox.schema) must back off
 * like a failed connection, not open a session every few milliseconds, and must say what to do. */
START_TEST(test_unmigrated_schema_backs_off_and_names_the_fix) {
    tf_start_broker("--topic", "t9.storm:1", NULL);
    const char *sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()";
    tk_sleep_ms(600); /* session statistics are counted as sessions end */
    long long before = tu_scalar(tf_conn, sessions);
    tf_relay_opts_t o = {.schema = "never_migrated_schema"};
    tk_proc_t *relay = tf_start_relay_with(&o, "relay.reconnect.backoff.max.ms=2000", NULL);
    tk_sleep_ms(6000);
    tk_proc_signal(relay, SIGTERM);
    ck_assert_msg(tk_proc_wait(relay, 15000), "the relay did not stop");
    tk_sleep_ms(600);
    long long opened = tu_scalar(tf_conn, sessions) - before;
    char *log = tk_read_file(relay->err_path);
    int told = 0;
    for (const char *p = log; (p = strstr(p, "is not migrated: run outbox-relay migrate")); p++)
        told++;
    TF_CHECK(opened <= 20, "%lld sessions in 6 s against a schema that is not there", opened);
    TF_CHECK(told >= 1 && told <= 3, "the cause was logged %d times in 6 s (once, then every 30 s):\n%s",
             told, log);
    TF_CHECK(tf_matches(log, "msg=\"stopped\" published=0 dead_lettered=0 unacknowledged=0 "
                             "left_in_table=unknown"), "no shutdown summary:\n%s", log);
    free(log);
}
END_TEST

START_TEST(test_bad_configuration_exits_2_naming_the_key) {
    char *pg, *kafka;
    ck_assert(asprintf(&pg, "pg.conninfo=%s", getenv("OUTBOX_TEST_PG")) > 0);
    kafka = strdup("kafka.bootstrap.servers=127.0.0.1:9");
    tk_proc_t *p = tf_relay_cli("-X", pg, "-X", kafka, "-X", "relay.bogus=1", "run", NULL);
    EXPECT_REFUSED(p, "relay\\.bogus");
    p = tf_relay_cli("-X", pg, "-X", kafka, "-X", "relay.batch.size=abc", "run", NULL);
    EXPECT_REFUSED(p, "relay\\.batch\\.size");

    /* The file's path and the line number, so the operator can go straight to it. */
    char *path = write_conf("# relay settings\nlog.level=6\nrelay.poll.max.ms=soon\n");
    char line_re[64];
    snprintf(line_re, sizeof(line_re), "(:|line )3([^0-9]|$)");
    p = tf_relay_cli("-c", path, "-X", pg, "-X", kafka, "run", NULL);
    EXPECT_REFUSED(p, "relay\\.poll\\.max\\.ms", "relay\\.conf", line_re);
    free(path);
    path = write_conf("log.level=6\nthis line has no equals sign\n");
    snprintf(line_re, sizeof(line_re), "(:|line )2([^0-9]|$)");
    p = tf_relay_cli("-c", path, "-X", pg, "-X", kafka, "run", NULL);
    EXPECT_REFUSED(p, "relay\\.conf", line_re);
    free(path);

    p = tf_relay_cli("-c", "/nonexistent/outbox/relay.conf", "-X", pg, "-X", kafka, "run", NULL);
    EXPECT_REFUSED(p, "/nonexistent/outbox/relay\\.conf");
    free(pg);
    free(kafka);
}
END_TEST

START_TEST(test_help_and_version) {
    tk_proc_t *p = tf_relay_cli("--version", NULL);
    char *out = tk_read_file(p->out_path);
    ck_assert_msg(tf_exit_code(p) == 0 && strstr(out, outbox_version_str()), "--version: %s, output '%s'",
                  tk_status_str(p->status), out);
    free(out);
    tk_proc_free(p);
    p = tf_relay_cli("--help", NULL);
    out = tk_read_file(p->out_path);
    ck_assert_msg(tf_exit_code(p) == 0, "--help: %s", tk_status_str(p->status));
    /* --help lists the keys with their defaults (CONVENTIONS 12). */
    ck_assert_msg(strstr(out, "relay.lock.retry.ms") && strstr(out, "kafka."), "--help output:\n%s", out);
    free(out);
    tk_proc_free(p);
}
END_TEST

START_TEST(test_migrate_then_status_reports_backlog) {
    char *s2 = tu_schema_name("t_relay_cli");
    char *pg, *sch;
    ck_assert(asprintf(&pg, "pg.conninfo=%s", getenv("OUTBOX_TEST_PG")) > 0);
    ck_assert(asprintf(&sch, "outbox.schema=%s", s2) > 0);
    const char *kafka = "kafka.bootstrap.servers=127.0.0.1:9";
    char sql[512];

    for (int round = 0; round < 2; round++) { /* the second run finds nothing to do */
        tk_proc_t *p = tf_relay_cli("-X", pg, "-X", sch, "-X", kafka, "migrate", NULL);
        ck_assert_msg(tf_exit_code(p) == 0, "migrate: %s; stderr:\n%s", tk_status_str(p->status),
                      tk_file_tail(p->err_path, 2000));
        tk_proc_free(p);
        snprintf(sql, sizeof(sql), "SELECT max(version) FROM \"%s\".schema_version", s2);
        ck_assert_int_eq(tu_scalar(tf_conn, sql), OUTBOX_SCHEMA_VERSION);
    }

    char err[256];
    outbox_conf_t *conf = outbox_conf_new();
    ck_assert_int_eq(outbox_conf_set(conf, "outbox.schema", s2, err, sizeof(err)), OUTBOX_CONF_OK);
    outbox_t *w = outbox_new(conf, err, sizeof(err));
    tu_exec(tf_conn, "BEGIN");
    for (int i = 0; i < 3; i++) {
        outbox_message_t *m = seq_msg("t10.status", i, 0);
        ck_assert_msg(outbox_send(w, tf_conn, m) == OUTBOX_OK, "%s", outbox_errmsg(w));
        outbox_message_destroy(m);
    }
    tu_exec(tf_conn, "COMMIT");
    snprintf(sql, sizeof(sql),
             "INSERT INTO \"%s\".dead_letters (id, message_id, destination, envelope, created_at, error) "
             "VALUES (1001, gen_random_uuid(), 'x', '\\x00', now(), 'test'), "
             "(1002, gen_random_uuid(), 'x', '\\x00', now(), 'test')",
             s2);
    tu_exec(tf_conn, sql);

    tk_proc_t *p = tf_relay_cli("-X", pg, "-X", sch, "-X", kafka, "status", NULL);
    char *out = tk_read_file(p->out_path);
    ck_assert_msg(tf_exit_code(p) == 0, "status: %s; stderr:\n%s", tk_status_str(p->status),
                  tk_file_tail(p->err_path, 2000));
    ck_assert_msg(tf_matches(out, "backlog[^0-9\n]{0,30}3([^0-9]|$)"), "status shows no backlog of 3:\n%s", out);
    ck_assert_msg(tf_matches(out, "dead[ _-]?letters?[^0-9\n]{0,30}2([^0-9]|$)"),
                  "status shows no 2 dead letters:\n%s", out);
    free(out);
    tk_proc_free(p);

    snprintf(sql, sizeof(sql), "DROP SCHEMA \"%s\" CASCADE", s2);
    tu_exec(tf_conn, sql);
    outbox_destroy(w);
    free(pg);
    free(sch);
    free(s2);
}
END_TEST

static Suite *relay_suite(void) {
    Suite *s = suite_create("relay");
    TCase *tc = tcase_create("delivery");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_delivers_committed_messages_with_key_value_and_headers);
    tcase_add_test(tc, test_late_commit_of_lower_id_is_published);
    tcase_add_test(tc, test_late_commit_inside_a_claimed_batch_is_published);
    tcase_add_test(tc, test_claim_floor_waits_for_open_transactions);
    tcase_add_test(tc, test_claim_floor_waits_only_for_outbox_writers);
    tcase_add_test(tc, test_late_commit_while_the_next_claim_is_sent_ahead);
    tcase_add_test(tc, test_drained_relay_shrinks_a_bloated_index);
    tcase_add_test(tc, test_per_key_order_with_concurrent_writers);
    tcase_add_test(tc, test_dead_letter_policy_moves_poison_rows_and_others_flow);
    suite_add_tcase(s, tc);

    tc = tcase_create("faults");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_one_leader_and_standby_takes_over);
    tcase_add_test(tc, test_sigterm_mid_drain_exits_0_and_loses_nothing);
    tcase_add_test(tc, test_broker_down_for_5s_loses_nothing_and_keeps_order);
    tcase_add_test(tc, test_sigterm_with_the_broker_away_logs_a_summary_not_every_message);
    tcase_add_test(tc, test_relay_reconnects_after_backend_killed);
    tcase_add_test(tc, test_log_through_an_immediate_restart_is_one_record_per_line);
    suite_add_tcase(s, tc);

    tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_bad_configuration_exits_2_naming_the_key);
    tcase_add_test(tc, test_unmigrated_schema_backs_off_and_names_the_fix);
    tcase_add_test(tc, test_help_and_version);
    tcase_add_test(tc, test_migrate_then_status_reports_backlog);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(relay_suite());
}
