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
static const idr_set_t *g_done; /* the done set given to idr_gaps, if any */

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
    for (size_t i = 0; i < g_n && w < (int)sizeof(buf) - 64; i++)
        w += snprintf(buf + w, sizeof(buf) - (size_t)w, "%s%" PRId64, i ? "," : "", g_ids[i]);
    if (g_done && w < (int)sizeof(buf) - 64)
        w += snprintf(buf + w, sizeof(buf) - (size_t)w, "; done=");
    for (size_t i = 0; g_done && i < g_done->n && w < (int)sizeof(buf) - 64; i++)
        w += snprintf(buf + w, sizeof(buf) - (size_t)w, "[%" PRId64 ",%" PRId64 "]",
                      g_done->r[i].lo, g_done->r[i].hi);
    return buf;
}

/* ck_assert marks a checkpoint per call (a write in fork mode): too slow for inner loops. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s", case_msg(#cond, __VA_ARGS__));                                      \
    } while (0)

static void set_case(int c, const int64_t *ids, size_t n, const int64_t *floor) {
    g_case = c, g_ids = ids, g_n = n, g_done = NULL;
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
        REQUIRE(idr_gaps(ids, n, NULL, floor, SIZE_MAX, &lo_txt, &hi_txt, &top) == 0,
                "out of memory");
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

/* ---- idr_set and idr_gaps over done ids ------------------------------------------------------ */

/* A universe of slots, ascending and contiguous: slot i holds the ids [start[i], end[i]].  Most
 * slots hold one id; some may hold a thousand or up to a quarter of int64, so that ranges at
 * either end of int64 and separators longer than INT64_MAX come up.  An id in flight only sits
 * in a one-id slot and a done range covers whole slots, so all ids of a slot are alike and a
 * slot is checked by its ends (a one-id slot universe is checked id by id). */
enum { MAX_SLOTS = 300, MAX_FLIGHT = 3 * MAX_SLOTS, MAX_RUNS = MAX_SLOTS + 2 };

typedef struct {
    size_t n;
    int64_t start[MAX_SLOTS], end[MAX_SLOTS];
    char flight[MAX_SLOTS], done[MAX_SLOTS]; /* the naive model: a flag per slot */
} universe_t;

/* Slots whose last id is at most max_end, placed from INT64_MIN, up to max_end, around zero or
 * anywhere. */
static void gen_universe(uint64_t *s, universe_t *u, int64_t max_end) {
    uint64_t r = rng_below(s, 100), width[MAX_SLOTS], total = 0;
    u->n = r < 5    ? 1 + rng_below(s, 2)
           : r < 60 ? 3 + rng_below(s, 30)
           : r < 90 ? 33 + rng_below(s, 100)
                    : 133 + rng_below(s, MAX_SLOTS - 133 + 1);
    uint64_t mode = rng_below(s, 3);
    size_t huge = 0;
    for (size_t i = 0; i < u->n; i++) {
        uint64_t w = 1;
        if (mode == 1 && rng_below(s, 8) == 0)
            w = 2 + rng_below(s, 1000);
        else if (mode == 2 && huge < 3 && rng_below(s, u->n) < 2) /* the first past 2^63 */
            w = 1 + rng_below(s, huge++ ? UINT64_C(1) << 60 : UINT64_C(5) << 61);
        width[i] = w;
        total += w; /* below 2^63 + 2^61 + 2 * 2^60 + 300 * 1001: no wrap */
    }
    /* The first slot's offset from INT64_MIN, at most room. */
    uint64_t room = ((uint64_t)max_end - (uint64_t)INT64_MIN) - (total - 1), off;
    switch (rng_below(s, 4)) {
    case 0:
        off = rng_below(s, 3);
        break;
    case 1:
        off = room - rng_below(s, 3);
        break;
    case 2: { /* zero is at offset 2^63 */
        uint64_t back = rng_below(s, total + 20);
        off = back > (UINT64_C(1) << 63) ? 0 : (UINT64_C(1) << 63) - back;
        break;
    }
    default:
        off = room == UINT64_MAX ? rng_next(s) : rng_below(s, room + 1);
        break;
    }
    if (off > room)
        off = room;
    uint64_t cur = (uint64_t)INT64_MIN + off;
    for (size_t i = 0; i < u->n; i++) {
        u->start[i] = (int64_t)cur;
        u->end[i] = (int64_t)(cur + width[i] - 1);
        cur += width[i]; /* wraps only past the last slot */
    }
    memset(u->flight, 0, sizeof(u->flight));
    memset(u->done, 0, sizeof(u->done));
}

/* One add of slots [*a, *b]: mostly one slot or a few, sometimes a long stretch. */
static void gen_add(uint64_t *s, const universe_t *u, size_t *a, size_t *b) {
    uint64_t r = rng_below(s, 100);
    *a = rng_below(s, u->n);
    *b = *a + (r < 50 ? 0 : r < 85 ? rng_below(s, 4) : rng_below(s, u->n));
    if (*b >= u->n)
        *b = u->n - 1;
}

/* How many adds a case makes: none, a few, many, or enough one-slot adds to fill most slots
 * (adjacent ranges that must join). */
static size_t gen_add_count(uint64_t *s, const universe_t *u) {
    uint64_t r = rng_below(s, 100);
    return r < 10 ? 0 : r < 40 ? 1 + rng_below(s, 4) : r < 80 ? 5 + rng_below(s, 40)
                                                             : u->n + rng_below(s, u->n);
}

static size_t slot_of(const universe_t *u, int64_t v) {
    size_t a = 0, b = u->n;
    while (a < b) { /* the first slot ending at or after v */
        size_t m = a + (b - a) / 2;
        if (u->end[m] < v)
            a = m + 1;
        else
            b = m;
    }
    return a < u->n && u->start[a] <= v ? a : SIZE_MAX;
}

static int model_done(const universe_t *u, int64_t v) {
    size_t i = slot_of(u, v);
    return i != SIZE_MAX && u->done[i];
}

/* The done slots as maximal ranges of ids from floor up. */
static size_t model_done_ranges(const universe_t *u, int64_t floor, idr_range_t *out) {
    size_t k = 0;
    for (size_t i = 0; i < u->n; i++) {
        if (!u->done[i] || u->end[i] < floor)
            continue;
        int64_t lo = u->start[i] < floor ? floor : u->start[i];
        if (k && i > 0 && u->done[i - 1] && out[k - 1].hi == u->end[i - 1])
            out[k - 1].hi = u->end[i]; /* the previous slot's ids run straight into this one */
        else
            out[k].lo = lo, out[k].hi = u->end[i], k++;
    }
    return k;
}

static const char *fmt_ranges(char *buf, size_t size, const idr_range_t *r, size_t n) {
    int w = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && w < (int)size - 48; i++)
        w += snprintf(buf + w, size - (size_t)w, "[%" PRId64 ",%" PRId64 "]", r[i].lo, r[i].hi);
    return buf;
}

/* Ids at which to compare with the model: both ends of every slot (and the middle of a wide
 * one), either side of the universe, both ends of int64, the given extras and their
 * neighbours, and a few anywhere. */
static size_t check_points(uint64_t *s, const universe_t *u, const int64_t *extra, size_t nextra,
                           int64_t *pts) {
    size_t k = 0;
    for (size_t i = 0; i < u->n; i++) {
        pts[k++] = u->start[i];
        if (u->end[i] != u->start[i]) {
            pts[k++] = u->end[i];
            pts[k++] = rng_between(s, u->start[i], u->end[i]);
        }
    }
    const int64_t fixed[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX - 1, INT64_MAX,
                             sat_add(u->start[0], -1), sat_add(u->start[0], -2),
                             sat_add(u->end[u->n - 1], 1), sat_add(u->end[u->n - 1], 2)};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        pts[k++] = fixed[i];
    for (size_t i = 0; i < nextra; i++) {
        pts[k++] = sat_add(extra[i], -1);
        pts[k++] = extra[i];
        pts[k++] = sat_add(extra[i], 1);
    }
    for (int i = 0; i < 8; i++)
        pts[k++] = (int64_t)rng_next(s);
    return k;
}

/* A floor anywhere in, around or far from the universe, often on a slot's edge. */
static int64_t gen_floor_u(uint64_t *s, const universe_t *u) {
    size_t i = rng_below(s, u->n);
    switch (rng_below(s, 10)) {
    case 0:
        return INT64_MIN;
    case 1:
        return INT64_MAX - (int64_t)rng_below(s, 2);
    case 2:
        return (int64_t)rng_next(s);
    case 3:
    case 4:
        return u->start[i];
    case 5:
        return u->end[i];
    case 6:
        return sat_add(rng_below(s, 2) ? u->start[i] : u->end[i], rng_below(s, 2) ? 1 : -1);
    case 7: /* inside a slot, which may be a wide one */
        return rng_between(s, u->start[i], u->end[i]);
    case 8:
        return sat_add(u->start[0], -(int64_t)rng_below(s, 5));
    default:
        return sat_add(u->end[u->n - 1], (int64_t)rng_below(s, 5));
    }
}

START_TEST(test_set_matches_model) {
    uint64_t s = rng_for(5);
    universe_t *u = malloc(sizeof(*u));
    idr_range_t *want = malloc(MAX_SLOTS * sizeof(*want));
    int64_t *pts = malloc((3 * MAX_SLOTS + 64) * sizeof(*pts));
    ck_assert(u && want && pts);
    char gbuf[800], wbuf[800];
    for (int c = 0; c < CASES; c++) {
        gen_universe(&s, u, INT64_MAX); /* a set may hold any id */
        set_case(c, NULL, 0, NULL);
        idr_set_t set = {0};
        g_done = &set;
        size_t adds = gen_add_count(&s, u);
        int each = u->n <= 40; /* small sets are checked after every step */
        for (size_t m = 0; m < adds; m++) {
            if (rng_below(&s, 12) == 0) { /* forget below a slot's first id, between adds */
                size_t f = rng_below(&s, u->n);
                idr_set_drop_below(&set, u->start[f]);
                memset(u->done, 0, f);
            }
            size_t a, b;
            gen_add(&s, u, &a, &b);
            REQUIRE(idr_set_add(&set, u->start[a], u->end[b]) == 0, "out of memory");
            memset(u->done + a, 1, b - a + 1);
            if (!each && m + 1 < adds)
                continue;
            /* The very ranges of the naive union: sorted, disjoint, non-adjacent. */
            size_t k = model_done_ranges(u, INT64_MIN, want);
            REQUIRE(set.n == k && (k == 0 || memcmp(set.r, want, k * sizeof(*want)) == 0),
                    "after adding [%" PRId64 ",%" PRId64 "] the set is %s, the union is %s",
                    u->start[a], u->end[b], fmt_ranges(gbuf, sizeof(gbuf), set.r, set.n),
                    fmt_ranges(wbuf, sizeof(wbuf), want, k));
        }
        /* Every id the model holds, and only those, by idr_set_has. */
        int64_t extra[2] = {adds ? set.r[0].lo : 0, adds ? set.r[set.n - 1].hi : 0};
        size_t np = check_points(&s, u, extra, adds ? 2 : 0, pts);
        for (size_t i = 0; i < np; i++)
            REQUIRE(idr_set_has(&set, pts[i]) == model_done(u, pts[i]), "has(%" PRId64 ") = %d",
                    pts[i], idr_set_has(&set, pts[i]));
        /* Forgetting below any floor (even inside a range) removes exactly the ids below it. */
        int64_t floor = gen_floor_u(&s, u);
        g_floor = floor, g_has_floor = 1;
        idr_set_drop_below(&set, floor);
        size_t k = model_done_ranges(u, floor, want);
        REQUIRE(set.n == k && (k == 0 || memcmp(set.r, want, k * sizeof(*want)) == 0),
                "after drop_below the set is %s, want %s",
                fmt_ranges(gbuf, sizeof(gbuf), set.r, set.n),
                fmt_ranges(wbuf, sizeof(wbuf), want, k));
        np = check_points(&s, u, &floor, 1, pts);
        for (size_t i = 0; i < np; i++)
            REQUIRE(idr_set_has(&set, pts[i]) == (pts[i] >= floor && model_done(u, pts[i])),
                    "after drop_below has(%" PRId64 ") = %d", pts[i], idr_set_has(&set, pts[i]));
        idr_set_free(&set);
        REQUIRE(set.n == 0 && !idr_set_has(&set, floor), "a freed set is not empty");
    }
    g_done = NULL;
    free(u);
    free(want);
    free(pts);
}
END_TEST

START_TEST(test_set_examples) {
    idr_set_t set = {0};
    idr_set_drop_below(&set, 5); /* a set never added to: r is NULL (UBSan: no memmove(NULL)) */
    ck_assert(set.n == 0 && !idr_set_has(&set, 5));
    ck_assert_int_eq(idr_set_add(&set, 5, 7), 0);
    ck_assert_int_eq(idr_set_add(&set, 3, 4), 0); /* touching from below */
    ck_assert_int_eq(idr_set_add(&set, 8, 8), 0); /* touching from above */
    ck_assert_uint_eq(set.n, 1);
    ck_assert(set.r[0].lo == 3 && set.r[0].hi == 8);
    ck_assert_int_eq(idr_set_add(&set, INT64_MIN, INT64_MIN), 0);
    ck_assert_int_eq(idr_set_add(&set, INT64_MAX, INT64_MAX), 0);
    ck_assert_int_eq(idr_set_add(&set, INT64_MIN + 1, 2), 0); /* joins both sides */
    ck_assert_uint_eq(set.n, 2);
    ck_assert(set.r[0].lo == INT64_MIN && set.r[0].hi == 8);
    ck_assert(set.r[1].lo == INT64_MAX && set.r[1].hi == INT64_MAX);
    ck_assert(idr_set_has(&set, INT64_MIN) && !idr_set_has(&set, 9));
    idr_set_drop_below(&set, 6);
    ck_assert_uint_eq(set.n, 2);
    ck_assert(set.r[0].lo == 6 && set.r[0].hi == 8 && !idr_set_has(&set, 5));
    idr_set_free(&set);
    idr_set_free(&set); /* twice: a freed set is an empty one */
    ck_assert(!idr_set_has(&set, 6));
}
END_TEST

/* The free ids from floor up below top as maximal ranges, by walking the universe's pieces:
 * the ids below it (free), each slot, the ids above it (free). */
static size_t model_gaps(const universe_t *u, int64_t floor, int64_t *mlo, int64_t *mhi,
                         int64_t *top) {
    *top = floor; /* one past the last excluded id from the floor up */
    for (size_t i = 0; i < u->n; i++)
        if ((u->flight[i] || u->done[i]) && u->end[i] >= floor)
            *top = u->end[i] + 1; /* end < INT64_MAX: the contract */
    size_t k = 0;
    for (size_t p = 0; p < u->n + 2; p++) {
        int64_t a, b;
        if (p == 0) {
            if (u->start[0] == INT64_MIN)
                continue;
            a = INT64_MIN, b = u->start[0] - 1;
        } else if (p == u->n + 1) {
            a = u->end[u->n - 1] + 1, b = INT64_MAX;
        } else {
            if (u->flight[p - 1] || u->done[p - 1])
                continue;
            a = u->start[p - 1], b = u->end[p - 1];
        }
        if (b < floor)
            continue;
        if (a < floor)
            a = floor;
        if (a >= *top)
            break; /* from top up, every id is free and is not listed */
        if (k && mhi[k - 1] + 1 == a)
            mhi[k - 1] = b;
        else
            mlo[k] = a, mhi[k] = b, k++;
    }
    return k;
}

/* The number of elements of the sorted a[0..n) below v. */
static size_t count_below(const int64_t *a, size_t n, int64_t v) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The least total length of k separators among len[0..n), by trying every choice (n small). */
static uint64_t brute_min_sum(const uint64_t *len, size_t n, size_t k) {
    uint64_t best = UINT64_MAX;
    for (uint32_t mask = 0; mask < (UINT32_C(1) << n); mask++) {
        if ((size_t)__builtin_popcount(mask) != k)
            continue;
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
            if (mask & (UINT32_C(1) << i))
                sum += len[i];
        if (sum < best)
            best = sum;
    }
    return best;
}

typedef struct {
    const universe_t *u;
    const int64_t *ids; /* in flight, sorted */
    size_t n;
    int64_t floor;
    /* the model's uncapped answer */
    int64_t mlo[MAX_RUNS], mhi[MAX_RUNS], top;
    size_t k;
    int pinned[MAX_RUNS];   /* separator j (after run j) holds an id in flight */
    uint64_t sep[MAX_RUNS]; /* its length: up to 2^64 - 2 */
    size_t npinned;
} gaps_model_t;

static void gaps_model(gaps_model_t *m) {
    m->k = model_gaps(m->u, m->floor, m->mlo, m->mhi, &m->top);
    m->npinned = 0;
    for (size_t j = 0; j + 1 < m->k; j++) {
        size_t i = count_below(m->ids, m->n, m->mhi[j] + 1);
        m->pinned[j] = i < m->n && m->ids[i] < m->mlo[j + 1];
        m->npinned += m->pinned[j];
        m->sep[j] = (uint64_t)m->mlo[j + 1] - (uint64_t)m->mhi[j] - 1;
    }
}

/* Checks idr_gaps(max_ranges) against the model: the ranges are the model's free ranges with
 * some separators merged, never one holding an id in flight, as many as the cap allows, and the
 * merged separators the shortest; and, id by id, what is claimable. */
static void check_gaps_done(uint64_t *s, const gaps_model_t *m, size_t max_ranges, int64_t *pts) {
    const universe_t *u = m->u;
    char *lo_txt = NULL, *hi_txt = NULL;
    int64_t top = 0, lo[MAX_RUNS + 1], hi[MAX_RUNS + 1];
    REQUIRE(idr_gaps(m->ids, m->n, g_done, m->floor, max_ranges, &lo_txt, &hi_txt, &top) == 0,
            "out of memory");
    long kl = parse_array(lo_txt, lo, MAX_RUNS + 1), kh = parse_array(hi_txt, hi, MAX_RUNS + 1);
    REQUIRE(kl >= 0 && kh >= 0, "unparsable lo=%s hi=%s", lo_txt, hi_txt);
    REQUIRE(kl == kh, "%ld lows but %ld highs: lo=%s hi=%s", kl, kh, lo_txt, hi_txt);
    size_t k = (size_t)kl;
    REQUIRE(top == m->top, "max_ranges=%zu: top=%" PRId64 ", want %" PRId64, max_ranges, top,
            m->top);

    /* Each range runs from the start of a free range of the model to the end of one, taking
     * every free range in turn (nothing free is lost), and the separators it crosses hold no id
     * in flight. */
    size_t next = 0, merged = 0;
    uint64_t stepped = 0; /* done ids inside the ranges */
    for (size_t j = 0; j < k; j++) {
        REQUIRE(next < m->k && lo[j] == m->mlo[next],
                "max_ranges=%zu: range %zu [%" PRId64 ",%" PRId64 "] does not start at the next "
                "free id (%" PRId64 "): lo=%s hi=%s",
                max_ranges, j, lo[j], hi[j], next < m->k ? m->mlo[next] : top, lo_txt, hi_txt);
        size_t b = next;
        while (b < m->k && m->mhi[b] < hi[j]) {
            REQUIRE(!m->pinned[b],
                    "max_ranges=%zu: range [%" PRId64 ",%" PRId64 "] covers an id in flight "
                    "between %" PRId64 " and %" PRId64, max_ranges, lo[j], hi[j], m->mhi[b],
                    m->mlo[b + 1]);
            stepped += m->sep[b];
            merged++;
            b++;
        }
        REQUIRE(b < m->k && hi[j] == m->mhi[b],
                "max_ranges=%zu: range %zu [%" PRId64 ",%" PRId64 "] does not end where a free "
                "range ends: lo=%s hi=%s", max_ranges, j, lo[j], hi[j], lo_txt, hi_txt);
        next = b + 1;
    }
    REQUIRE(next == m->k,
            "max_ranges=%zu: the free ids from %" PRId64 " are in no range: lo=%s hi=%s",
            max_ranges, next < m->k ? m->mlo[next] : 0, lo_txt, hi_txt);

    /* As many ranges as the cap, unless separators holding ids in flight keep more apart. */
    size_t floor_count = m->npinned + 1, want = m->k <= max_ranges ? m->k
                                           : max_ranges > floor_count ? max_ranges
                                                                      : floor_count;
    REQUIRE(k == want, "max_ranges=%zu: %zu ranges, want %zu (%zu free ranges, %zu pinned "
            "separators): lo=%s hi=%s", max_ranges, k, want, m->k, m->npinned, lo_txt, hi_txt);
    REQUIRE(k <= max_ranges || k == floor_count, "more than %zu ranges", max_ranges);

    /* The fewest done ids stepped over: the merged separators are the shortest free ones. */
    uint64_t len[MAX_RUNS];
    size_t nl = 0;
    for (size_t j = 0; j + 1 < m->k; j++)
        if (!m->pinned[j]) {
            size_t i = nl++;
            for (; i > 0 && len[i - 1] > m->sep[j]; i--) /* insertion sort */
                len[i] = len[i - 1];
            len[i] = m->sep[j];
        }
    uint64_t best = 0;
    for (size_t i = 0; i < merged; i++)
        best += len[i];
    if (nl <= 12) /* the k shortest are the best k: by trying every choice */
        REQUIRE(brute_min_sum(len, nl, merged) == best, "greedy model %" PRIu64 " is not least",
                best);
    REQUIRE(stepped == best,
            "max_ranges=%zu: the ranges step over %" PRIu64 " done ids where %" PRIu64
            " would do: lo=%s hi=%s", max_ranges, stepped, best, lo_txt, hi_txt);

    /* Id by id: a free id is claimable, an id in flight never covered, a covered id free or done;
     * uncapped, claimable means exactly free. */
    int64_t extra[2 * MAX_RUNS + 4];
    size_t ne = 0;
    extra[ne++] = m->floor, extra[ne++] = top;
    for (size_t j = 0; j < k; j++)
        extra[ne++] = lo[j], extra[ne++] = hi[j];
    size_t np = check_points(s, u, extra, ne, pts);
    for (size_t i = 0; i < np; i++) {
        int64_t v = pts[i];
        int covered = in_ranges(lo, hi, k, v), flight = model_has(m->ids, m->n, v);
        int done = model_done(u, v), free_ = v >= m->floor && !flight && !done;
        REQUIRE(!free_ || covered || v >= top, "max_ranges=%zu: free id %" PRId64
                " is not claimable: lo=%s hi=%s", max_ranges, v, lo_txt, hi_txt);
        REQUIRE(!covered || !flight, "max_ranges=%zu: id %" PRId64 " in flight is covered: "
                "lo=%s hi=%s", max_ranges, v, lo_txt, hi_txt);
        REQUIRE(!covered || free_ || done, "max_ranges=%zu: covered id %" PRId64 " is neither "
                "free nor done: lo=%s hi=%s", max_ranges, v, lo_txt, hi_txt);
        REQUIRE(!covered || (v >= m->floor && v < top), "max_ranges=%zu: covered id %" PRId64
                " below the floor or from top", max_ranges, v);
        REQUIRE(v < m->floor || !(flight || done) || v < top, "excluded id %" PRId64
                " at or above top=%" PRId64, v, top);
        if (max_ranges == SIZE_MAX)
            REQUIRE((covered || v >= top) == free_, "id %" PRId64 " is %s but should %sbe "
                    "(top=%" PRId64 "): lo=%s hi=%s", v, free_ ? "not claimable" : "claimable",
                    free_ ? "" : "not ", top, lo_txt, hi_txt);
    }
    for (size_t i = 0; i < m->n; i++)
        REQUIRE(!in_ranges(lo, hi, k, m->ids[i]), "max_ranges=%zu: id %" PRId64 " in flight "
                "is covered: lo=%s hi=%s", max_ranges, m->ids[i], lo_txt, hi_txt);
    free(lo_txt);
    free(hi_txt);
}

START_TEST(test_gaps_done_match_model) {
    static const unsigned p_flight[] = {0, 2, 10, 30, 60, 100}; /* percent of one-id slots */
    uint64_t s = rng_for(6);
    universe_t *u = malloc(sizeof(*u));
    gaps_model_t *m = malloc(sizeof(*m));
    int64_t *ids = malloc(MAX_FLIGHT * sizeof(*ids));
    int64_t *pts = malloc((3 * MAX_SLOTS + 6 * MAX_RUNS + 64) * sizeof(*pts));
    idr_range_t *dr = malloc(MAX_SLOTS * sizeof(*dr));
    ck_assert(u && m && ids && pts && dr);
    for (int c = 0; c < CASES; c++) {
        gen_universe(&s, u, INT64_MAX - 1); /* every id below INT64_MAX: the contract */
        size_t adds = gen_add_count(&s, u);
        for (size_t i = 0; i < adds; i++) {
            size_t a, b;
            gen_add(&s, u, &a, &b);
            memset(u->done + a, 1, b - a + 1);
        }
        unsigned pf = p_flight[rng_below(&s, sizeof(p_flight) / sizeof(p_flight[0]))];
        int disjoint = rng_below(&s, 2); /* as in practice; else ids in flight inside done ranges */
        size_t n = 0;
        for (size_t i = 0; i < u->n; i++) {
            if (u->start[i] != u->end[i] || rng_below(&s, 100) >= pf || (disjoint && u->done[i]))
                continue;
            u->flight[i] = 1;
            for (uint64_t d = rng_below(&s, 6) == 0 ? 1 + rng_below(&s, 3) : 1; d > 0; d--)
                ids[n++] = u->start[i]; /* sometimes more than once */
        }
        /* The done set as idr_set_add would leave it (built directly: this test is about
         * idr_gaps), often with ranges below the floor. */
        idr_set_t done = {dr, model_done_ranges(u, INT64_MIN, dr), MAX_SLOTS};
        int64_t floor = gen_floor_u(&s, u);
        set_case(c, ids, n, &floor);
        g_done = &done;

        m->u = u, m->ids = ids, m->n = n, m->floor = floor;
        gaps_model(m);
        check_gaps_done(&s, m, SIZE_MAX, pts);
        check_gaps_done(&s, m, 1 + rng_below(&s, 8), pts);
        if (m->k > 2) /* right at the count, one below it, and a cap the pins exceed */
            check_gaps_done(&s, m, m->k - rng_below(&s, 2), pts);
        g_done = NULL;
    }
    free(u);
    free(m);
    free(ids);
    free(pts);
    free(dr);
}
END_TEST

/* Each idr_gaps call of the examples: the expected texts and top. */
static void gaps_example(const int64_t *ids, size_t n, const idr_set_t *done, int64_t floor,
                         size_t max, const char *want_lo, const char *want_hi, int64_t want_top) {
    char *lo, *hi;
    int64_t top;
    ck_assert_int_eq(idr_gaps(ids, n, done, floor, max, &lo, &hi, &top), 0);
    ck_assert_str_eq(lo, want_lo);
    ck_assert_str_eq(hi, want_hi);
    ck_assert_int_eq(top, want_top);
    free(lo), free(hi);
}

START_TEST(test_gaps_done_examples) {
    /* Free: 1-2, 4, 7, 9; separators: {3} in flight, {5,6} done, {8} done. */
    const int64_t ids[] = {3, 10};
    idr_range_t r[] = {{5, 6}, {8, 8}};
    idr_set_t done = {r, 2, 2};
    gaps_example(ids, 2, &done, 1, SIZE_MAX, "{1,4,7,9}", "{2,4,7,9}", 11);
    gaps_example(ids, 2, &done, 1, 3, "{1,4,7}", "{2,4,9}", 11); /* the shorter first */
    gaps_example(ids, 2, &done, 1, 2, "{1,4}", "{2,9}", 11);
    gaps_example(ids, 2, &done, 1, 1, "{1,4}", "{2,9}", 11); /* never across 3, in flight */
    /* A done range is excluded from the floor up and may set top alone. */
    gaps_example(NULL, 0, &done, 6, SIZE_MAX, "{7}", "{7}", 9);
    /* A separator longer than INT64_MAX is the longest, not the shortest. */
    const int64_t far[] = {INT64_MAX - 2};
    idr_range_t fr[] = {{INT64_MIN + 1, INT64_MAX - 8}, {INT64_MAX - 6, INT64_MAX - 6}};
    idr_set_t fdone = {fr, 2, 2};
    gaps_example(far, 1, &fdone, INT64_MIN, 2, "{-9223372036854775808,9223372036854775800}",
                 "{-9223372036854775808,9223372036854775804}", INT64_MAX - 1);
    gaps_example(far, 1, &fdone, INT64_MIN, 1, "{-9223372036854775808}", "{9223372036854775804}",
                 INT64_MAX - 1);
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
    tcase_add_test(tc, test_set_examples);
    tcase_add_test(tc, test_set_matches_model);
    tcase_add_test(tc, test_gaps_done_examples);
    tcase_add_test(tc, test_gaps_done_match_model);
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
