/*
 * idranges.c: the pure id arithmetic of claims and deletes (see idranges.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idranges.h"

int idr_text_init(idr_text_t *t, size_t n) {
    /* "{" + n elements + "}" + NUL */
    t->buf = malloc(n * IDR_ELEM_MAX + 3);
    if (!t->buf)
        return -1;
    t->w = t->buf;
    *t->w++ = '{';
    return 0;
}

void idr_text_add(idr_text_t *t, int64_t v) {
    t->w += sprintf(t->w, "%s%" PRId64, t->w[-1] == '{' ? "" : ",", v);
}

void idr_text_end(idr_text_t *t) {
    strcpy(t->w, "}");
}

static int cmp_id(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

void idr_sort(int64_t *ids, size_t n) {
    if (n < 2)
        return; /* an empty set may come as NULL, which qsort must not be given */
    qsort(ids, n, sizeof(*ids), cmp_id);
}

static int pair_init(idr_text_t *lo, idr_text_t *hi, size_t n) {
    if (idr_text_init(lo, n))
        return -1;
    if (idr_text_init(hi, n)) {
        free(lo->buf);
        return -1;
    }
    return 0;
}

static void pair_end(idr_text_t *lo, idr_text_t *hi, char **lo_txt, char **hi_txt) {
    idr_text_end(lo);
    idr_text_end(hi);
    *lo_txt = lo->buf;
    *hi_txt = hi->buf;
}

int idr_set_add(idr_set_t *s, int64_t lo, int64_t hi) {
    /* The first range that ends at or after lo - 1 (it may touch or overlap [lo, hi]). */
    size_t i = 0, j;
    while (i < s->n && s->r[i].hi < lo && s->r[i].hi + 1 < lo)
        i++;
    /* The ranges i..j-1 overlap or touch [lo, hi]: they become one.  (lo - 1 is only taken when
     * lo > hi, so it cannot overflow.) */
    for (j = i; j < s->n && (s->r[j].lo <= hi || s->r[j].lo - 1 <= hi); j++) {
        if (s->r[j].lo < lo)
            lo = s->r[j].lo;
        if (s->r[j].hi > hi)
            hi = s->r[j].hi;
    }
    if (j == i) { /* no overlap: insert at i */
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 16;
            idr_range_t *r = realloc(s->r, cap * sizeof(*r));
            if (!r)
                return -1;
            s->r = r;
            s->cap = cap;
        }
        memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof(*s->r));
        s->n++;
    } else if (j > i + 1) {
        memmove(&s->r[i + 1], &s->r[j], (s->n - j) * sizeof(*s->r));
        s->n -= j - i - 1;
    }
    s->r[i].lo = lo;
    s->r[i].hi = hi;
    return 0;
}

void idr_set_drop_below(idr_set_t *s, int64_t floor) {
    size_t k = 0;
    while (k < s->n && s->r[k].hi < floor)
        k++;
    if (k) /* an empty set's r may be NULL, which memmove must not be given */
        memmove(s->r, &s->r[k], (s->n - k) * sizeof(*s->r));
    s->n -= k;
    if (s->n && s->r[0].lo < floor)
        s->r[0].lo = floor;
}

int idr_set_has(const idr_set_t *s, int64_t v) {
    size_t a = 0, b = s->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (s->r[m].hi < v)
            a = m + 1;
        else
            b = m;
    }
    return a < s->n && s->r[a].lo <= v;
}

void idr_set_free(idr_set_t *s) {
    free(s->r);
    s->r = NULL;
    s->n = s->cap = 0;
}

/* One free range, and whether the excluded span after it (up to the next range) holds an id in
 * flight, which no merge may cover. */
typedef struct {
    int64_t lo, hi;
    int pinned;
    uint64_t sep; /* the excluded span's length after this range: may exceed INT64_MAX */
} gap_t;

static int cmp_sep(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Merges free ranges across the shortest unpinned separators until at most max remain (or no
 * unpinned separator is left); returns the new count. */
static size_t merge_closest(gap_t *g, size_t n, size_t max) {
    size_t seps = 0;
    for (size_t k = 0; k + 1 < n; k++)
        seps += !g[k].pinned;
    if (n <= max || !seps)
        return n;
    size_t merges = n - max < seps ? n - max : seps;
    uint64_t *len = malloc(seps * sizeof(*len));
    if (!len)
        return n; /* no merge: the claim only steps over more dead rows */
    size_t m = 0;
    for (size_t k = 0; k + 1 < n; k++)
        if (!g[k].pinned)
            len[m++] = g[k].sep;
    qsort(len, seps, sizeof(*len), cmp_sep);
    uint64_t limit = len[merges - 1]; /* merge separators shorter than limit, and enough equal */
    size_t at_limit = 0;
    for (size_t k = 0; k < merges; k++)
        at_limit += len[k] == limit;
    free(len);
    size_t w = 0;
    for (size_t k = 0; k < n; k++) {
        if (w > 0 && !g[w - 1].pinned &&
            (g[w - 1].sep < limit || (g[w - 1].sep == limit && at_limit > 0))) {
            if (g[w - 1].sep == limit)
                at_limit--;
            g[w - 1].hi = g[k].hi; /* across the separator */
            g[w - 1].pinned = g[k].pinned;
            g[w - 1].sep = g[k].sep;
            continue;
        }
        g[w++] = g[k];
    }
    return w;
}

int idr_gaps(const int64_t *sorted, size_t n, const idr_set_t *done, int64_t floor,
             size_t max_ranges, char **lo_txt, char **hi_txt, int64_t *top) {
    size_t nd = done ? done->n : 0, i = 0, d = 0, ng = 0, cap = 16;
    /* In-flight ids come in few runs: the ranges are few, though the ids may be many. */
    gap_t *g = malloc(cap * sizeof(*g));
    if (!g)
        return -1;
    int64_t next = floor; /* the lowest id not yet placed in a range or a separator */
    /* The excluded ids in ascending order: the in-flight ids and the done ranges, merged. */
    while (i < n || d < nd) {
        int64_t a, b;
        int pinned = d >= nd || (i < n && sorted[i] < done->r[d].lo);
        if (pinned) {
            a = b = sorted[i++];
        } else {
            a = done->r[d].lo;
            b = done->r[d].hi;
            d++;
        }
        if (b >= next && a > next) {
            if (ng == cap) {
                gap_t *more = realloc(g, 2 * cap * sizeof(*g));
                if (!more) {
                    free(g);
                    return -1;
                }
                g = more;
                cap *= 2;
            }
            g[ng].lo = next;
            g[ng].hi = a - 1;
            g[ng].pinned = 0;
            g[ng].sep = 0;
            ng++;
        }
        /* At or after the last range's end: in the separator that follows it. */
        if (ng && b > g[ng - 1].hi)
            g[ng - 1].pinned |= pinned;
        if (b >= next)
            next = b + 1;
    }
    *top = next;
    for (size_t k = 0; k + 1 < ng; k++)
        g[k].sep = (uint64_t)g[k + 1].lo - (uint64_t)g[k].hi - 1;
    ng = merge_closest(g, ng, max_ranges);
    idr_text_t lo, hi;
    if (pair_init(&lo, &hi, ng)) {
        free(g);
        return -1;
    }
    for (size_t k = 0; k < ng; k++) {
        idr_text_add(&lo, g[k].lo);
        idr_text_add(&hi, g[k].hi);
    }
    free(g);
    pair_end(&lo, &hi, lo_txt, hi_txt);
    return 0;
}

/* Each run costs a DELETE one index descent and a walk along the leaf pages, where an id list
 * costs a descent per id (about half the statement's time at 5,000 ids). */
int idr_runs(const int64_t *sorted, size_t n, char **lo_txt, char **hi_txt) {
    idr_text_t lo, hi;
    if (pair_init(&lo, &hi, n))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && (sorted[i] == sorted[i - 1] || sorted[i] == sorted[i - 1] + 1))
            continue;
        if (i > 0)
            idr_text_add(&hi, sorted[i - 1]);
        idr_text_add(&lo, sorted[i]);
    }
    if (n)
        idr_text_add(&hi, sorted[n - 1]);
    pair_end(&lo, &hi, lo_txt, hi_txt);
    return 0;
}
