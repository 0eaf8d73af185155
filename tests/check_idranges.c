/*
 * The relay's id arithmetic (relay/idranges.c) against naive models on thousands of random inputs.
 * The seed is printed first and in every failure; OUTBOX_TEST_SEED=<seed> replays a run.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idranges.h"
#include "testutil.h"

/* Enough cases that every shape below meets every floor position many times over. */
enum { CASES = 20000, MAX_IDS = 1000, MAX_TEXT = 2000 };

static uint64_t g_seed;

/* The case being checked, described in a failure so it can be read without replaying. */
static int g_case;
static const int64_t *g_ids;
static size_t g_n;
static int64_t g_floor;
static int g_has_floor;

static const char *case_msg(const char *expr, const char *fmt, ...) {
    static char buf[2048];
    int w = snprintf(buf, sizeof(buf), "seed=%" PRIu64 " case=%d (replay: OUTBOX_TEST_SEED=%" PRIu64
                     "): %s: ", g_seed, g_case, g_seed, expr);
    va_list ap;
    va_start(ap, fmt);
    w += vsnprintf(buf + w, sizeof(buf) - (size_t)w, fmt, ap);
    va_end(ap);
    if (g_has_floor)
        w += snprintf(buf + w, sizeof(buf) - (size_t)w, "; floor=%" PRId64, g_floor);
    w += snprintf(buf + w, sizeof(buf) - (size_t)w, "; n=%zu ids=", g_n);
    for (size_t i = 0; i < g_n && w < (int)sizeof(buf) - 32; i++)
        w += snprintf(buf + w, sizeof(buf) - (size_t)w, "%s%" PRId64, i ? "," : "", g_ids[i]);
    return buf;
}

/* ck_assert marks a checkpoint per call (a write in fork mode): too slow for inner loops. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s", case_msg(#cond, __VA_ARGS__));                                      \
    } while (0)

static void set_case(int c, const int64_t *ids, size_t n, const int64_t *floor) {
    g_case = c, g_ids = ids, g_n = n;
    g_has_floor = floor != NULL;
    g_floor = floor ? *floor : 0;
}

/* ---- seeded randomness (splitmix64) ------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n) {
    return n ? rng_next(s) % n : 0;
}

/* Each test draws its own stream so that one test's cases do not depend on another's. */
static uint64_t rng_for(uint64_t stream) {
    uint64_t s = g_seed ^ (stream * 0xd1342543de82ef95ULL);
    rng_next(&s);
    return s;
}

static int64_t sat_add(int64_t a, int64_t d) {
    if (d > 0 && a > INT64_MAX - d)
        return INT64_MAX;
    if (d < 0 && a < INT64_MIN - d)
        return INT64_MIN;
    return a + d;
}

/* base + off without signed overflow; the caller keeps the sum in range. */
static int64_t add_off(int64_t base, uint64_t off) {
    return (int64_t)((uint64_t)base + off);
}

/* Any int64 in [lo, hi]. */
static int64_t rng_between(uint64_t *s, int64_t lo, int64_t hi) {
    uint64_t width = (uint64_t)hi - (uint64_t)lo; /* count - 1 */
    uint64_t off = width == UINT64_MAX ? rng_next(s) : rng_below(s, width + 1);
    return add_off(lo, off);
}

/* Ids of a varied shape, none above max_id, in random order: empty, single, all equal, dense
 * with duplicates, runs with holes, sparse; placed around zero (negatives), at INT64_MIN, at
 * max_id, or anywhere. */
static size_t gen_ids(uint64_t *s, int64_t *ids, int64_t max_id) {
    size_t n;
    uint64_t r = rng_below(s, 100);
    if (r < 8)
        n = 0;
    else if (r < 18)
        n = 1;
    else if (r < 55)
        n = 2 + rng_below(s, 15);
    else if (r < 92)
        n = 17 + rng_below(s, 100);
    else
        n = 117 + rng_below(s, MAX_IDS - 117 + 1);

    uint64_t *off = malloc((n ? n : 1) * sizeof(*off)), max_off = 0;
    ck_assert_ptr_nonnull(off);
    switch (rng_below(s, 4)) {
    case 0: { /* uniform in a span: dense (many duplicates) to sparse */
        static const uint64_t mult[] = {1, 2, 10};
        uint64_t span = n * mult[rng_below(s, 3)] + 1;
        for (size_t i = 0; i < n; i++)
            off[i] = rng_below(s, span);
        break;
    }
    case 1: /* all the same id */
        for (size_t i = 0; i < n; i++)
            off[i] = 0;
        break;
    default: { /* a walk: runs of consecutive ids, duplicates, holes of varied width */
        uint64_t cur = 0, p_dup = rng_below(s, 30), p_next = p_dup + rng_below(s, 90 - p_dup);
        for (size_t i = 0; i < n; i++) {
            off[i] = cur;
            uint64_t step = rng_below(s, 100);
            cur += step < p_dup ? 0 : step < p_next ? 1 : 2 + rng_below(s, 20);
        }
        break;
    }
    }
    for (size_t i = 0; i < n; i++)
        if (off[i] > max_off)
            max_off = off[i];

    int64_t base, base_max = (int64_t)(max_id - (int64_t)max_off);
    switch (rng_below(s, 4)) {
    case 0: /* around zero: negative and positive ids */
        base = -(int64_t)rng_below(s, max_off + 20);
        break;
    case 1:
        base = add_off(INT64_MIN, rng_below(s, 3));
        break;
    case 2:
        base = sat_add(base_max, -(int64_t)rng_below(s, 3));
        break;
    default:
        base = rng_between(s, INT64_MIN, base_max);
        break;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = add_off(base, off[i]);
    free(off);
    for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
        size_t j = rng_below(s, i);
        int64_t t = ids[i - 1];
        ids[i - 1] = ids[j], ids[j] = t;
    }
    return n;
}

/* ---- naive models -------------------------------------------------------------------------- */

static void model_sort(int64_t *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        int64_t v = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

/* Is v among the sorted a[0..n)? */
static int model_has(const int64_t *a, size_t n, int64_t v) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && a[lo] == v;
}

/* Is v in one of the ascending, disjoint ranges [lo[k], hi[k]]? */
static int in_ranges(const int64_t *lo, const int64_t *hi, size_t k, int64_t v) {
    size_t a = 0, b = k;
    while (a < b) { /* first range whose hi >= v */
        size_t mid = a + (b - a) / 2;
        if (hi[mid] < v)
            a = mid + 1;
        else
            b = mid;
    }
    return a < k && lo[a] <= v;
}

/* Parses a bigint[] literal as written by idr_text_*: "{}" or "{v,v,...}", every v a canonical
 * decimal (no sign but '-', no leading zero, no spaces).  Returns the count, or -1 if malformed
 * or longer than cap. */
static long parse_array(const char *s, int64_t *out, size_t cap) {
    size_t k = 0;
    if (*s++ != '{')
        return -1;
    if (*s == '}')
        return s[1] == '\0' ? 0 : -1;
    for (;;) {
        const char *d = s + (*s == '-');
        if (*d < '0' || *d > '9' || (*d == '0' && (d[1] >= '0' && d[1] <= '9')) ||
            (*d == '0' && d != s))
            return -1;
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || end == s || k == cap)
            return -1;
        out[k++] = v;
        s = end;
        if (*s == '}')
            return s[1] == '\0' ? (long)k : -1;
        if (*s++ != ',')
            return -1;
    }
}

/* ---- idr_text ------------------------------------------------------------------------------- */

static int64_t extreme_value(uint64_t *s) {
    static const int64_t v[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, -1, 0, 1,
                                -10,       9,             10,        -999999999999999999};
    uint64_t r = rng_below(s, 4);
    if (r == 0)
        return v[rng_below(s, sizeof(v) / sizeof(v[0]))];
    if (r == 1)
        return (int64_t)rng_below(s, 2000) - 1000;
    return (int64_t)rng_next(s); /* any int64, mostly 19 digits */
}

START_TEST(test_text_roundtrip) {
    uint64_t s = rng_for(1);
    int64_t *in = malloc(MAX_TEXT * sizeof(*in)), *out = malloc((MAX_TEXT + 1) * sizeof(*out));
    ck_assert(in && out);
    for (int c = 0; c < CASES; c++) {
        size_t n = c < 64                     ? (size_t)c
                   : rng_below(&s, 100) < 90 ? rng_below(&s, 40)
                                             : rng_below(&s, MAX_TEXT + 1);
        /* Every tenth case is all INT64_MIN: the longest text idr_text_init(n) must hold. */
        int worst = c % 10 == 0;
        for (size_t i = 0; i < n; i++)
            in[i] = worst ? INT64_MIN : extreme_value(&s);
        set_case(c, in, n, NULL);
        idr_text_t t;
        REQUIRE(idr_text_init(&t, n) == 0, "out of memory");
        for (size_t i = 0; i < n; i++)
            idr_text_add(&t, in[i]);
        idr_text_end(&t);
        /* ASan catches any write past the buffer; without it, at least the length must fit. */
        size_t len = strlen(t.buf);
        REQUIRE(len + 1 <= n * IDR_ELEM_MAX + 3, "text of %zu bytes in a buffer of %zu", len + 1,
                n * IDR_ELEM_MAX + 3);
        if (worst)
            REQUIRE(len == (n ? n * IDR_ELEM_MAX + 1 : 2), "all-INT64_MIN text is %zu bytes", len);
        long k = parse_array(t.buf, out, MAX_TEXT + 1);
        REQUIRE(k == (long)n, "parsed %ld elements of %s", k, t.buf);
        for (size_t i = 0; i < n; i++)
            REQUIRE(out[i] == in[i], "element %zu reads back as %" PRId64, i, out[i]);
        free(t.buf);
    }
    free(in);
    free(out);
}
END_TEST

START_TEST(test_text_examples) {
    idr_text_t t;
    ck_assert_int_eq(idr_text_init(&t, 0), 0);
    idr_text_end(&t);
    ck_assert_str_eq(t.buf, "{}");
    free(t.buf);
    ck_assert_int_eq(idr_text_init(&t, 4), 0);
    idr_text_add(&t, 1);
    idr_text_add(&t, -2);
    idr_text_add(&t, INT64_MIN);
    idr_text_add(&t, INT64_MAX);
    idr_text_end(&t);
    ck_assert_str_eq(t.buf, "{1,-2,-9223372036854775808,9223372036854775807}");
    free(t.buf);
}
END_TEST

/* ---- idr_sort ------------------------------------------------------------------------------- */

START_TEST(test_sort_matches_insertion_sort) {
    uint64_t s = rng_for(2);
    int64_t *a = malloc(MAX_IDS * sizeof(*a)), *m = malloc(MAX_IDS * sizeof(*m));
    int64_t *in = malloc(MAX_IDS * sizeof(*in));
    ck_assert(a && m && in);
    for (int c = 0; c < CASES; c++) {
        size_t n = gen_ids(&s, a, INT64_MAX);
        switch (rng_below(&s, 6)) {
        case 0: /* any int64 at all */
            for (size_t i = 0; i < n; i++)
                a[i] = rng_below(&s, 4) ? (int64_t)rng_next(&s) : extreme_value(&s);
            break;
        case 1: /* already sorted */
            model_sort(a, n);
            break;
        case 2: /* reversed */
            model_sort(a, n);
            for (size_t i = 0; i < n / 2; i++) {
                int64_t t = a[i];
                a[i] = a[n - 1 - i], a[n - 1 - i] = t;
            }
            break;
        default: /* shuffled shapes as generated */
            break;
        }
        memcpy(in, a, n * sizeof(*a)); /* the input, for a failure message */
        set_case(c, in, n, NULL);
        memcpy(m, a, n * sizeof(*a));
        model_sort(m, n);
        idr_sort(a, n);
        for (size_t i = 0; i < n; i++)
            REQUIRE(a[i] == m[i], "sorted[%zu] = %" PRId64 ", insertion sort says %" PRId64, i,
                    a[i], m[i]);
    }
    free(a);
    free(m);
    free(in);
}
END_TEST

START_TEST(test_empty_may_be_null) {
    char *lo, *hi;
    int64_t top;
    idr_sort(NULL, 0); /* under UBSan: qsort is never given NULL */
    ck_assert_int_eq(idr_gaps(NULL, 0, NULL, 7, SIZE_MAX, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, "{}");
    ck_assert_str_eq(hi, "{}");
    ck_assert_int_eq(top, 7);
    free(lo), free(hi);
    ck_assert_int_eq(idr_runs(NULL, 0, &lo, &hi), 0);
    ck_assert_str_eq(lo, "{}");
    ck_assert_str_eq(hi, "{}");
    free(lo), free(hi);
}
END_TEST

/* ---- idr_gaps ------------------------------------------------------------------------------- */

/* A floor below, at, inside, between or above the sorted ids, or at either end of int64. */
static int64_t gen_floor(uint64_t *s, const int64_t *sorted, size_t n) {
    if (n == 0 || rng_below(s, 10) == 0) {
        switch (rng_below(s, 4)) {
        case 0:
            return INT64_MIN;
        case 1:
            return INT64_MAX - (int64_t)rng_below(s, 2);
        case 2:
            return (int64_t)rng_below(s, 200) - 100;
        default:
            return (int64_t)rng_next(s);
        }
    }
    int64_t min = sorted[0], max = sorted[n - 1];
    switch (rng_below(s, 5)) {
    case 0: /* below every id */
        return sat_add(min, -(int64_t)rng_below(s, 6));
    case 1: /* exactly an id in flight */
        return sorted[rng_below(s, n)];
    case 2: /* next to an id: often in a hole */
        return sat_add(sorted[rng_below(s, n)], (int64_t)rng_below(s, 5) - 2);
    case 3: /* anywhere between the first and the last */
        return rng_between(s, min, max);
    default: /* above every id */
        return sat_add(max, 1 + (int64_t)rng_below(s, 5));
    }
}

/* Checks one id against the model: claimable per the output iff from the floor up and not in
 * flight. */
static void check_gap_point(int64_t v, const int64_t *sorted, size_t n, int64_t floor,
                            const int64_t *lo, const int64_t *hi, size_t k, int64_t top) {
    int claimable = v >= top || in_ranges(lo, hi, k, v);
    int expected = v >= floor && !model_has(sorted, n, v);
    REQUIRE(claimable == expected, "id %" PRId64 " is %s but should %sbe (top=%" PRId64 ")", v,
            claimable ? "claimable" : "not claimable", expected ? "" : "not ", top);
}

static void check_gap_window(int64_t a, int64_t b, const int64_t *sorted, size_t n, int64_t floor,
                             const int64_t *lo, const int64_t *hi, size_t k, int64_t top) {
    for (int64_t v = a; v <= b; v++) {
        check_gap_point(v, sorted, n, floor, lo, hi, k, top);
        if (v == b) /* b may be INT64_MAX */
            break;
    }
}

START_TEST(test_gaps_match_model) {
    uint64_t s = rng_for(3);
    int64_t *ids = malloc(MAX_IDS * sizeof(*ids));
    int64_t *lo = malloc((MAX_IDS + 2) * sizeof(*lo)), *hi = malloc((MAX_IDS + 2) * sizeof(*hi));
    ck_assert(ids && lo && hi);
    for (int c = 0; c < CASES; c++) {
        /* *top is one past the last id in flight: INT64_MAX itself is never in flight. */
        size_t n = gen_ids(&s, ids, INT64_MAX - 1);
        model_sort(ids, n);
        int64_t floor = gen_floor(&s, ids, n);
        set_case(c, ids, n, &floor);

        char *lo_txt = NULL, *hi_txt = NULL;
        int64_t top = 0;
        REQUIRE(idr_gaps(ids, n, NULL, floor, SIZE_MAX, &lo_txt, &hi_txt, &top) == 0, "out of memory");
        long kl = parse_array(lo_txt, lo, MAX_IDS + 2), kh = parse_array(hi_txt, hi, MAX_IDS + 2);
        REQUIRE(kl >= 0 && kh >= 0, "unparsable lo=%s hi=%s", lo_txt, hi_txt);
        REQUIRE(kl == kh, "%ld lows but %ld highs: lo=%s hi=%s", kl, kh, lo_txt, hi_txt);
        size_t k = (size_t)kl;

        /* top: one past the last id in flight from the floor up, else the floor. */
        int64_t want_top = floor;
        for (size_t i = 0; i < n; i++)
            if (ids[i] >= floor && ids[i] >= want_top)
                want_top = ids[i] + 1;
        REQUIRE(top == want_top, "top=%" PRId64 ", want %" PRId64, top, want_top);

        /* Ascending, disjoint, non-empty, from the floor up, below the last id in flight, and
         * maximal (each one probe): bounded by ids in flight or by the floor. */
        REQUIRE(k <= n, "%zu ranges for %zu ids", k, n);
        for (size_t j = 0; j < k; j++) {
            REQUIRE(lo[j] <= hi[j], "empty range [%" PRId64 ",%" PRId64 "]", lo[j], hi[j]);
            REQUIRE(lo[j] >= floor, "range [%" PRId64 ",%" PRId64 "] below the floor", lo[j],
                    hi[j]);
            REQUIRE(hi[j] < top, "range [%" PRId64 ",%" PRId64 "] reaches top", lo[j], hi[j]);
            REQUIRE(j == 0 || lo[j] > hi[j - 1], "range %zu not after range %zu: lo=%s hi=%s", j,
                    j - 1, lo_txt, hi_txt);
            REQUIRE(model_has(ids, n, hi[j] + 1), "range [%" PRId64 ",%" PRId64 "] stops short",
                    lo[j], hi[j]);
            REQUIRE(lo[j] == floor || model_has(ids, n, lo[j] - 1),
                    "range [%" PRId64 ",%" PRId64 "] starts late", lo[j], hi[j]);
        }

        /* Every id around the floor and the ids in flight, and beyond top. */
        int64_t wa = sat_add(floor, -3), wb = sat_add(top, 3);
        if ((uint64_t)wb - (uint64_t)wa <= 20000) {
            check_gap_window(wa, wb, ids, n, floor, lo, hi, k, top);
        } else { /* a floor far below the ids: every id near it, near and among the ids, and a
                  * sample of the stretch between */
            check_gap_window(wa, sat_add(floor, 3), ids, n, floor, lo, hi, k, top);
            size_t first = 0;
            while (first < n && ids[first] < floor)
                first++;
            int64_t from = first < n ? sat_add(ids[first], -3) : sat_add(top, -3);
            if ((uint64_t)wb - (uint64_t)from <= 20000) {
                check_gap_window(from, wb, ids, n, floor, lo, hi, k, top);
            } else { /* ids spread wider than the window: each one and its neighbours */
                for (size_t i = 0; i < n; i++)
                    check_gap_window(sat_add(ids[i], -1), sat_add(ids[i], 1), ids, n, floor, lo, hi,
                                     k, top);
            }
            for (int r = 0; r < 64; r++)
                check_gap_point(rng_between(&s, wa, wb), ids, n, floor, lo, hi, k, top);
            check_gap_point(INT64_MIN, ids, n, floor, lo, hi, k, top);
            check_gap_point(INT64_MAX, ids, n, floor, lo, hi, k, top);
        }
        free(lo_txt);
        free(hi_txt);
    }
    free(ids);
    free(lo);
    free(hi);
}
END_TEST

START_TEST(test_gaps_examples) {
    const int64_t ids[] = {3, 4, 4, 7, 9};
    char *lo, *hi;
    int64_t top;
    ck_assert_int_eq(idr_gaps(ids, 5, NULL, 1, SIZE_MAX, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, "{1,5,8}");
    ck_assert_str_eq(hi, "{2,6,8}");
    ck_assert_int_eq(top, 10);
    free(lo), free(hi);
    /* Ids below the floor are ignored; a floor on an id in flight starts after it. */
    ck_assert_int_eq(idr_gaps(ids, 5, NULL, 4, SIZE_MAX, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, "{5,8}");
    ck_assert_str_eq(hi, "{6,8}");
    ck_assert_int_eq(top, 10);
    free(lo), free(hi);
    ck_assert_int_eq(idr_gaps(ids, 5, NULL, 10, SIZE_MAX, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, "{}");
    ck_assert_str_eq(hi, "{}");
    ck_assert_int_eq(top, 10);
    free(lo), free(hi);
    ck_assert_int_eq(idr_gaps(ids, 0, NULL, -5, SIZE_MAX, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, "{}");
    ck_assert_int_eq(top, -5);
    free(lo), free(hi);
}
END_TEST

/* ---- idr_runs ------------------------------------------------------------------------------- */

START_TEST(test_runs_match_model) {
    uint64_t s = rng_for(4);
    int64_t *ids = malloc(MAX_IDS * sizeof(*ids));
    int64_t *lo = malloc((MAX_IDS + 1) * sizeof(*lo)), *hi = malloc((MAX_IDS + 1) * sizeof(*hi));
    ck_assert(ids && lo && hi);
    for (int c = 0; c < CASES; c++) {
        size_t n = gen_ids(&s, ids, INT64_MAX);
        model_sort(ids, n);
        set_case(c, ids, n, NULL);

        char *lo_txt = NULL, *hi_txt = NULL;
        REQUIRE(idr_runs(ids, n, &lo_txt, &hi_txt) == 0, "out of memory");
        long kl = parse_array(lo_txt, lo, MAX_IDS + 1), kh = parse_array(hi_txt, hi, MAX_IDS + 1);
        REQUIRE(kl >= 0 && kh >= 0, "unparsable lo=%s hi=%s", lo_txt, hi_txt);
        REQUIRE(kl == kh, "%ld firsts but %ld lasts: lo=%s hi=%s", kl, kh, lo_txt, hi_txt);
        size_t k = (size_t)kl;

        /* Ascending, disjoint and maximal: a hole of at least one id between runs. */
        for (size_t j = 0; j < k; j++) {
            REQUIRE(lo[j] <= hi[j], "empty run [%" PRId64 ",%" PRId64 "]", lo[j], hi[j]);
            REQUIRE(j == 0 || (lo[j] > hi[j - 1] && (uint64_t)lo[j] - (uint64_t)hi[j - 1] >= 2),
                    "run %zu not after run %zu with a hole: lo=%s hi=%s", j, j - 1, lo_txt, hi_txt);
        }
        /* Every id of every run is an input id (a run is never longer than the input). */
        size_t covered = 0;
        for (size_t j = 0; j < k; j++) {
            for (int64_t v = lo[j];; v++) {
                REQUIRE(++covered <= n, "runs cover more ids than the %zu given", n);
                REQUIRE(model_has(ids, n, v), "id %" PRId64 " of run [%" PRId64 ",%" PRId64
                        "] was not given", v, lo[j], hi[j]);
                if (v == hi[j])
                    break;
            }
        }
        /* Every input id is in a run. */
        for (size_t i = 0; i < n; i++)
            REQUIRE(in_ranges(lo, hi, k, ids[i]), "id %" PRId64 " is in no run", ids[i]);
        /* As many runs as ids whose predecessor is absent. */
        size_t want = 0;
        for (size_t i = 0; i < n; i++)
            if ((i == 0 || ids[i] != ids[i - 1]) &&
                (ids[i] == INT64_MIN || !model_has(ids, n, ids[i] - 1)))
                want++;
        REQUIRE(k == want, "%zu runs, want %zu: lo=%s hi=%s", k, want, lo_txt, hi_txt);
        free(lo_txt);
        free(hi_txt);
    }
    free(ids);
    free(lo);
    free(hi);
}
END_TEST

START_TEST(test_runs_examples) {
    const int64_t ids[] = {INT64_MIN, -1, 0, 0, 1, 5, 7, 8, INT64_MAX - 1, INT64_MAX, INT64_MAX};
    char *lo, *hi;
    ck_assert_int_eq(idr_runs(ids, 11, &lo, &hi), 0);
    ck_assert_str_eq(lo, "{-9223372036854775808,-1,5,7,9223372036854775806}");
    ck_assert_str_eq(hi, "{-9223372036854775808,1,5,8,9223372036854775807}");
    free(lo), free(hi);
    ck_assert_int_eq(idr_runs(ids, 0, &lo, &hi), 0);
    ck_assert_str_eq(lo, "{}");
    ck_assert_str_eq(hi, "{}");
    free(lo), free(hi);
}
END_TEST

static Suite *idranges_suite(void) {
    Suite *s = suite_create("idranges");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300); /* thousands of cases each, slower under ASan */
    tcase_add_test(tc, test_text_examples);
    tcase_add_test(tc, test_text_roundtrip);
    tcase_add_test(tc, test_sort_matches_insertion_sort);
    tcase_add_test(tc, test_empty_may_be_null);
    tcase_add_test(tc, test_gaps_examples);
    tcase_add_test(tc, test_gaps_match_model);
    tcase_add_test(tc, test_runs_examples);
    tcase_add_test(tc, test_runs_match_model);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    const char *env = getenv("OUTBOX_TEST_SEED");
    if (env && *env) {
        char *end;
        errno = 0;
        g_seed = strtoull(env, &end, 0);
        if (errno || *end) {
            fprintf(stderr, "check_idranges: OUTBOX_TEST_SEED=%s is not a number\n", env);
            return EXIT_FAILURE;
        }
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_seed = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                 ((uint64_t)getpid() << 40);
    }
    printf("check_idranges: seed=%" PRIu64 " (replay: OUTBOX_TEST_SEED=%" PRIu64 ")\n", g_seed,
           g_seed);
    fflush(stdout); /* before Check forks, or each child would print it again */
    return tu_run(idranges_suite());
}
