/*
 * outbox-relay beside long transactions: an unrelated session idle in a transaction, or an outbox
 * writer left open, must not cost a single message, however the relay's claim floor treats them.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil_fixture.h"

static void setup(void) {
    tf_setup("t_longtx");
}

static void teardown(void) {
    tf_teardown(NULL);
}

/* ---- what is written, and checking what the topic holds ------------------------------------ */

/* Stream message (step s, key k) has Kafka key "k<k>" and payload "s:<k>:<s>"; late message i,
 * the one a long transaction holds, has key "late<i>" and payload "l:<i>". */
typedef struct {
    const char *topic;
    int nkeys, steps, nlate;
    char (*stream)[37]; /* message id of (s, k) at s * nkeys + k */
    char (*late)[37];
} plan_t;

static void plan_init(plan_t *p, const char *topic, int nkeys, int steps, int nlate) {
    p->topic = topic;
    p->nkeys = nkeys;
    p->steps = steps;
    p->nlate = nlate;
    p->stream = calloc((size_t)nkeys * (size_t)steps, sizeof(*p->stream));
    p->late = calloc((size_t)nlate, sizeof(*p->late));
    ck_assert(p->stream && p->late);
}

static void plan_free(plan_t *p) {
    free(p->stream);
    free(p->late);
}

static outbox_message_t *msg(const char *topic, const char *key, const char *payload, char *id_out) {
    outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, topic, "test.LongTx");
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(outbox_message_set_key(m, key, strlen(key)), OUTBOX_OK);
    ck_assert_int_eq(outbox_message_set_payload(m, payload, strlen(payload)), OUTBOX_OK);
    memcpy(id_out, outbox_message_id(m), 37);
    return m;
}

/* Commits step s of the stream on tf_conn: one message per key, in key order. */
static void write_step(plan_t *p, int s) {
    outbox_message_t *ms[64];
    ck_assert_int_le(p->nkeys, 64);
    for (int k = 0; k < p->nkeys; k++) {
        char key[16], payload[32];
        snprintf(key, sizeof(key), "k%d", k);
        snprintf(payload, sizeof(payload), "s:%d:%d", k, s);
        ms[k] = msg(p->topic, key, payload, p->stream[(size_t)s * (size_t)p->nkeys + (size_t)k]);
    }
    tu_exec(tf_conn, "BEGIN");
    ck_assert_msg(outbox_send_batch(tf_ob, tf_conn, (const outbox_message_t *const *)ms, (size_t)p->nkeys) ==
                      OUTBOX_OK, "outbox_send_batch: %s", outbox_errmsg(tf_ob));
    tu_exec(tf_conn, "COMMIT");
    for (int k = 0; k < p->nkeys; k++)
        outbox_message_destroy(ms[k]);
}

/* A transaction holding late message i, open on its own session. */
typedef struct {
    PGconn *conn;
    outbox_t *ob;
    long long id;   /* the outbox id it got */
    int64_t due_ms; /* when it commits */
    int open;
} late_t;

/* BEGINs on l's session and sends late message i in it; its id stays invisible to the others. */
static void late_begin(plan_t *p, late_t *l, int i, int hold_ms) {
    char key[16], payload[16], sql[160];
    snprintf(key, sizeof(key), "late%d", i);
    snprintf(payload, sizeof(payload), "l:%d", i);
    outbox_message_t *m = msg(p->topic, key, payload, p->late[i]);
    tu_exec(l->conn, "BEGIN");
    ck_assert_msg(outbox_send(l->ob, l->conn, m) == OUTBOX_OK, "outbox_send: %s", outbox_errmsg(l->ob));
    snprintf(sql, sizeof(sql), "%s'%s'", tf_q("SELECT id FROM @.messages WHERE message_id = "), p->late[i]);
    l->id = tu_scalar(l->conn, sql);
    l->due_ms = tk_now_ms() + hold_ms;
    l->open = 1;
    outbox_message_destroy(m);
}

/* Commits l once every row committed above its id has been published: its row then lands below
 * ids the relay has already been past. */
static void late_commit(late_t *l) {
    long long above = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages WHERE id > %lld", l->id), 0,
                                     15000);
    TF_CHECK(above == 0, "%lld rows committed above id %lld of an open transaction were not published", above,
             l->id);
    tu_exec(l->conn, "COMMIT");
    l->open = 0;
}

/* Waits for the relay to empty the outbox table. */
static void wait_drained(int timeout_ms) {
    long long left = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.messages"), 0, timeout_ms);
    TF_CHECK(left == 0, "%lld rows still in the outbox after %d ms, the lowest id %lld", left, timeout_ms,
             tu_scalar(tf_conn, tf_q("SELECT coalesce(min(id), 0) FROM @.messages")));
}

/* Reads the whole topic and checks it against p: every stream message and the first late_done
 * late ones exactly once, with the id they were written with, each key's stream messages in step
 * order; nothing else.  Returns the records' number. */
static size_t check_topic(const plan_t *p, tk_consumer_t *c, int late_done) {
    TF_CHECK(tk_consumer_read_to_end(c, p->topic, tk_now_ms() + 30000), "the topic could not be read to its end");
    size_t n;
    const tk_record_t *recs = tk_consumer_records(c, &n);
    int *next = calloc((size_t)p->nkeys, sizeof(int)), *late_seen = calloc((size_t)p->nlate + 1, sizeof(int));
    ck_assert(next && late_seen);
    for (size_t i = 0; i < n; i++) {
        const tk_record_t *r = &recs[i];
        outbox_message_t *m = NULL;
        char err[256], payload[32];
        TF_CHECK(outbox_message_decode(&m, r->value, r->value_len, err, sizeof(err)) == OUTBOX_OK,
                 "partition %d offset %lld: not an envelope: %s", r->partition, (long long)r->offset, err);
        size_t len;
        const char *pl = outbox_message_payload(m, &len);
        TF_CHECK(len < sizeof(payload), "payload of %zu bytes", len);
        memcpy(payload, pl, len);
        payload[len] = '\0';
        const char *id = tk_record_header(r, "id"), *want;
        int k, s;
        if (sscanf(payload, "s:%d:%d", &k, &s) == 2) {
            TF_CHECK(k >= 0 && k < p->nkeys && s >= 0 && s < p->steps, "unexpected message %s", payload);
            /* Once each and in order: message s of key k is due exactly when the ones before it came. */
            TF_CHECK(s == next[k], "key k%d: message %d arrived when %d was due (partition %d offset %lld)", k, s,
                     next[k], r->partition, (long long)r->offset);
            next[k]++;
            want = p->stream[(size_t)s * (size_t)p->nkeys + (size_t)k];
        } else {
            TF_CHECK(sscanf(payload, "l:%d", &k) == 1 && k >= 0 && k < p->nlate, "unexpected message %s", payload);
            TF_CHECK(k < late_done, "late message %d was published before its transaction committed", k);
            TF_CHECK(++late_seen[k] == 1, "late message %d was published %d times", k, late_seen[k]);
            want = p->late[k];
        }
        TF_CHECK(id && !strcmp(id, want) && !strcmp(outbox_message_id(m), want),
                 "%s: header id %s, envelope id %s, written as %s", payload, id ? id : "(none)", outbox_message_id(m),
                 want);
        outbox_message_destroy(m);
    }
    for (int k = 0; k < p->nkeys; k++)
        TF_CHECK(next[k] == p->steps, "key k%d: %d of %d messages published", k, next[k], p->steps);
    for (int i = 0; i < late_done; i++)
        TF_CHECK(late_seen[i] == 1, "late message %d (id committed below later ones) was never published", i);
    free(next);
    free(late_seen);
    return n;
}

/* ---- tests ---------------------------------------------------------------------------------- */

/* An unrelated session idle in a transaction that holds an xid stays open for the whole test.
 * Meanwhile transactions take a low id, sleep 300 to 1000 ms while later ids commit and are
 * published, then commit below them.  Every message is published once, with per-key order, and
 * the outbox ends empty. */
START_TEST(test_late_low_ids_published_beside_an_unrelated_open_transaction) {
    enum { KEYS = 8, STEPS = 300, LATE = 6, LATE_EVERY = 40 };
    tf_start_broker("--topic", "lt.stream:4", NULL);
    PGconn *idle = tu_connect();
    tu_exec(idle, "BEGIN");
    long long xid = tu_scalar(idle, "SELECT txid_current()");
    tf_start_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "lt.stream");

    plan_t p;
    plan_init(&p, "lt.stream", KEYS, STEPS, LATE);
    late_t late[LATE];
    for (int i = 0; i < LATE; i++) {
        late[i] = (late_t){.conn = tu_connect()};
        late[i].ob = tu_outbox(late[i].conn, tf_schema);
    }
    for (int s = 0; s < STEPS; s++) {
        if (s % LATE_EVERY == 0 && s / LATE_EVERY < LATE) {
            int i = s / LATE_EVERY;
            late_begin(&p, &late[i], i, 300 + i * 700 / (LATE - 1));
        }
        write_step(&p, s);
        for (int i = 0; i < LATE; i++)
            if (late[i].open && tk_now_ms() >= late[i].due_ms)
                late_commit(&late[i]);
        tk_sleep_ms(10);
    }
    for (int i = 0; i < LATE; i++) {
        if (late[i].open) {
            int64_t wait = late[i].due_ms - tk_now_ms();
            if (wait > 0)
                tk_sleep_ms((int)wait);
            late_commit(&late[i]);
        }
    }
    wait_drained(30000);
    size_t n = check_topic(&p, c, LATE);
    ck_assert_uint_eq(n, (size_t)KEYS * STEPS + LATE);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);
    /* The same transaction was open throughout. */
    ck_assert_int_eq(tu_scalar(idle, "SELECT txid_current()"), xid);
    tu_exec(idle, "ROLLBACK");

    for (int i = 0; i < LATE; i++) {
        outbox_destroy(late[i].ob);
        PQfinish(late[i].conn);
    }
    plan_free(&p);
    tk_consumer_free(c);
    PQfinish(idle);
}
END_TEST

/* The open transaction is itself an outbox writer: its message, with an id below the whole stream,
 * stays unpublished while it is open, the stream flows past it, and once it commits at the end it
 * is published once, after everything else on its partition. */
START_TEST(test_open_outbox_writer_is_published_after_its_commit) {
    enum { KEYS = 8, STEPS = 150 };
    tf_start_broker("--topic", "lt.writer:4", NULL);
    tf_start_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "lt.writer");
    plan_t p;
    plan_init(&p, "lt.writer", KEYS, STEPS, 1);
    late_t w = {.conn = tu_connect()};
    w.ob = tu_outbox(w.conn, tf_schema);
    late_begin(&p, &w, 0, 0);

    for (int s = 0; s < STEPS; s++) {
        write_step(&p, s);
        tk_sleep_ms(5);
    }
    wait_drained(30000);
    tk_sleep_ms(500); /* the relay polls past the open id a few times */
    ck_assert_uint_eq(check_topic(&p, c, 0), (size_t)KEYS * STEPS);

    late_commit(&w);
    wait_drained(15000);
    size_t n = check_topic(&p, c, 1);
    ck_assert_uint_eq(n, (size_t)KEYS * STEPS + 1);
    const tk_record_t *recs = tk_consumer_records(c, &n);
    const tk_record_t *wr = NULL;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(tk_record_header(&recs[i], "id"), p.late[0]))
            wr = &recs[i];
    ck_assert_ptr_nonnull(wr);
    for (size_t i = 0; i < n; i++)
        TF_CHECK(recs[i].partition != wr->partition || recs[i].offset <= wr->offset,
                 "a stream message follows the late writer's on partition %d", wr->partition);
    ck_assert_int_eq(tu_scalar(tf_conn, tf_q("SELECT count(*) FROM @.dead_letters")), 0);

    outbox_destroy(w.ob);
    PQfinish(w.conn);
    plan_free(&p);
    tk_consumer_free(c);
}
END_TEST


/* The next leader starts its claims where the last one's could (claim_state), not from the lowest
 * id: yet an outbox writer left open below that state's settled ranges is still published after
 * its commit, and an identity sequence restarted below the saved floor makes the state be
 * ignored, not rows skipped. */
START_TEST(test_next_leader_starts_from_the_saved_floor) {
    enum { KEYS = 8, STEPS = 120 };
    tf_start_broker("--topic", "lt.next:4", NULL);
    tk_proc_t *a = tf_start_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "lt.next");
    plan_t p;
    plan_init(&p, "lt.next", KEYS, STEPS, 1);
    late_t w = {.conn = tu_connect()};
    w.ob = tu_outbox(w.conn, tf_schema);
    late_begin(&p, &w, 0, 0);
    for (int s = 0; s < STEPS / 2; s++)
        write_step(&p, s);
    wait_drained(30000);
    /* Saved within a second or two: at or below the open writer's id, with settled ranges. */
    long long saved = tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.claim_state WHERE "
                                                   "cardinality(done_lo) > 0"), 1, 10000);
    TF_CHECK(saved == 1, "no claim_state with settled ranges was saved");
    char sql[256];
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT count(*) FROM @.claim_state WHERE floor <= "), w.id);
    ck_assert_int_eq(tu_scalar(tf_conn, sql), 1);
    tk_proc_signal(a, SIGTERM);
    TF_CHECK(tk_proc_wait(a, 15000), "relay a did not stop");

    for (int s = STEPS / 2; s < STEPS; s++)
        write_step(&p, s);
    tk_proc_t *b = tf_start_relay(NULL);
    TF_CHECK(tk_wait_file_contains(b->err_path, "claims start where the last leader's could", 15000),
             "the next leader did not start from the saved floor:\n%s", tk_file_tail(b->err_path, 2000));
    late_commit(&w);
    wait_drained(15000);
    ck_assert_uint_eq(check_topic(&p, c, 1), (size_t)KEYS * STEPS + 1);

    /* A sequence restarted below the saved floor: the state is refused and the row published.
     * The floor rises past the writer's id once it is published: wait for that to be saved. */
    snprintf(sql, sizeof(sql), "%s%lld", tf_q("SELECT count(*) FROM @.claim_state WHERE floor > "), w.id + 1);
    TF_CHECK(tk_wait_scalar(tf_conn, sql, 1, 15000) == 1, "the saved floor did not rise past id %lld", w.id + 1);
    tk_proc_signal(b, SIGTERM);
    TF_CHECK(tk_proc_wait(b, 15000), "relay b did not stop");
    tu_exec(tf_conn, tf_q("ALTER TABLE @.messages ALTER COLUMN id RESTART WITH 1"));
    outbox_message_t *m = msg("lt.next", "restarted", "r", (char[37]){0});
    tu_exec(tf_conn, "BEGIN");
    ck_assert_int_eq(outbox_send(tf_ob, tf_conn, m), OUTBOX_OK);
    tu_exec(tf_conn, "COMMIT");
    outbox_message_destroy(m);
    tk_proc_t *c2 = tf_start_relay(NULL);
    wait_drained(15000);
    TF_CHECK(!tk_file_count(c2->err_path, "claims start where the last leader's could"),
             "a saved floor above a restarted sequence's rows was used:\n%s", tk_file_tail(c2->err_path, 2000));

    outbox_destroy(w.ob);
    PQfinish(w.conn);
    plan_free(&p);
    tk_consumer_free(c);
}
END_TEST

/* A leader that stops saves what it settled last.  Its periodic save, at most every second, runs
 * after a claim and so before that claim's rows settle; a relay stopped right after them would
 * leave its successor to walk those deleted rows in every claim while a writer holds the floor. */
START_TEST(test_a_stopping_leader_saves_what_it_settled_last) {
    enum { KEYS = 8, STEPS = 20 };
    tf_start_broker("--topic", "lt.stop:4", NULL);
    tk_proc_t *a = tf_start_relay(NULL);
    tk_consumer_t *c = tk_consumer_new(tf_broker->bootstrap, "lt.stop");
    plan_t p;
    plan_init(&p, "lt.stop", KEYS, STEPS, 1);
    late_t w = {.conn = tu_connect()};
    w.ob = tu_outbox(w.conn, tf_schema);
    late_begin(&p, &w, 0, 0); /* holds the floor at its id */
    for (int s = 0; s < STEPS - 1; s++)
        write_step(&p, s);
    wait_drained(30000);
    TF_CHECK(tk_wait_scalar(tf_conn, tf_q("SELECT count(*) FROM @.claim_state WHERE cardinality(done_lo) > 0"), 1,
                            10000) == 1, "no claim_state with settled ranges was saved");
    tk_sleep_ms(1500); /* a periodic save is due: it runs right after the claim of the last step */
    write_step(&p, STEPS - 1);
    long long last = tu_scalar(tf_conn, tf_q("SELECT last_value FROM pg_sequences WHERE format('%%I.%%I', "
                                             "schemaname, sequencename) = pg_get_serial_sequence('@.messages', 'id')"));
    wait_drained(15000);
    tk_proc_signal(a, SIGTERM);
    TF_CHECK(tk_proc_wait(a, 15000), "relay a did not stop");
    long long saved_hi = tu_scalar(tf_conn, tf_q("SELECT coalesce(max(h), 0) FROM @.claim_state, unnest(done_hi) h"));
    TF_CHECK(saved_hi >= last, "the stopped leader saved settled ids up to %lld, not up to the last one, %lld",
             saved_hi, last);

    late_commit(&w);
    tf_start_relay(NULL);
    wait_drained(15000);
    ck_assert_uint_eq(check_topic(&p, c, 1), (size_t)KEYS * STEPS + 1);
    outbox_destroy(w.ob);
    PQfinish(w.conn);
    plan_free(&p);
    tk_consumer_free(c);
}
END_TEST

static Suite *longtx_suite(void) {
    Suite *s = suite_create("longtx");
    TCase *tc = tcase_create("open transactions");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_late_low_ids_published_beside_an_unrelated_open_transaction);
    tcase_add_test(tc, test_open_outbox_writer_is_published_after_its_commit);
    tcase_add_test(tc, test_next_leader_starts_from_the_saved_floor);
    tcase_add_test(tc, test_a_stopping_leader_saves_what_it_settled_last);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(longtx_suite());
}
