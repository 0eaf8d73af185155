/*
 * Message ids: UUIDv7, unique and strictly time-ordered, also across threads.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "outbox_int.h"
#include "testutil.h"

enum { N = 1000000, THREADS = 4 };

START_TEST(test_million_ids_unique_and_ordered) {
    char(*ids)[OUTBOX_UUID_STR_LEN + 1] = malloc((size_t)N * sizeof(*ids));
    ck_assert_ptr_nonnull(ids);
    int64_t before_ms = outbox_now_us() / 1000;
    for (int i = 0; i < N; i++)
        outbox_uuid7(ids[i]);
    int64_t after_ms = outbox_now_us() / 1000;
    for (int i = 0; i < N; i++) {
        ck_assert(outbox_uuid_valid(ids[i]));
        ck_assert_int_eq(ids[i][14], '7');                       /* version 7 */
        ck_assert(strchr("89ab", ids[i][19]) != NULL);           /* RFC variant */
        /* Strictly increasing text means strictly increasing ids: unique and time-ordered. */
        if (i)
            ck_assert_msg(strcmp(ids[i - 1], ids[i]) < 0, "id %d not after %d: %s <= %s", i, i - 1,
                          ids[i], ids[i - 1]);
    }
    /* The embedded millisecond timestamp lies within the generation window. */
    char hex[13];
    memcpy(hex, ids[0], 8);
    memcpy(hex + 8, ids[0] + 9, 4);
    hex[12] = '\0';
    int64_t ms = strtoll(hex, NULL, 16);
    ck_assert(ms >= before_ms && ms <= after_ms + 1);
    free(ids);
}
END_TEST

typedef struct {
    char (*ids)[OUTBOX_UUID_STR_LEN + 1];
    int n;
} job_t;

static void *gen(void *arg) {
    job_t *j = arg;
    for (int i = 0; i < j->n; i++)
        outbox_uuid7(j->ids[i]);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    return strcmp(a, b);
}

START_TEST(test_threads_unique) {
    int per = N / THREADS;
    char(*ids)[OUTBOX_UUID_STR_LEN + 1] = malloc((size_t)N * sizeof(*ids));
    pthread_t t[THREADS];
    job_t jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i].ids = ids + i * per;
        jobs[i].n = per;
        pthread_create(&t[i], NULL, gen, &jobs[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        for (int k = 1; k < per; k++)
            ck_assert(strcmp(jobs[i].ids[k - 1], jobs[i].ids[k]) < 0);
    qsort(ids, (size_t)per * THREADS, sizeof(*ids), cmp);
    for (int i = 1; i < per * THREADS; i++)
        ck_assert_msg(strcmp(ids[i - 1], ids[i]) != 0, "duplicate id %s", ids[i]);
    free(ids);
}
END_TEST

START_TEST(test_uuid_validation) {
    ck_assert(outbox_uuid_valid("0190f0e2-8c1a-7cde-8f00-0123456789ab"));
    ck_assert(!outbox_uuid_valid("0190f0e2-8c1a-7cde-8f00-0123456789a"));
    ck_assert(!outbox_uuid_valid("0190f0e2x8c1a-7cde-8f00-0123456789ab"));
    ck_assert(!outbox_uuid_valid("0190f0e2-8c1a-7cde-8f00-0123456789ag"));
    ck_assert(!outbox_uuid_valid(""));
    ck_assert(!outbox_uuid_valid(NULL));
}
END_TEST

static Suite *uuid_suite(void) {
    Suite *s = suite_create("uuid");
    TCase *tc = tcase_create("uuid7");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_million_ids_unique_and_ordered);
    tcase_add_test(tc, test_threads_unique);
    tcase_add_test(tc, test_uuid_validation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(uuid_suite());
}
