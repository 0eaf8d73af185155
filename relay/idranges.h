/*
 * idranges.h: the relay's pure id arithmetic: sorting ids, the ranges between ids in flight
 * (what a claim may take), and runs of consecutive ids (what a delete removes), written as
 * PostgreSQL bigint[] text.  No I/O; tested against a naive model by tests/check_idranges.c.
 */
#ifndef OUTBOX_IDRANGES_H
#define OUTBOX_IDRANGES_H

#include <stddef.h>
#include <stdint.h>

/* The longest decimal int64 with its sign ("-9223372036854775808") is 20 bytes; with the
 * separating comma an element takes at most 21. */
#define IDR_ELEM_MAX 21

/* A bigint[] literal being written: "{1,2,3}". */
typedef struct {
    char *buf, *w;
} idr_text_t;

/* Starts a literal with room for n elements; -1 when out of memory.  Free buf. */
int idr_text_init(idr_text_t *t, size_t n);
/* Appends v (room must have been reserved by idr_text_init). */
void idr_text_add(idr_text_t *t, int64_t v);
/* Closes the literal: "}" and the terminating NUL. */
void idr_text_end(idr_text_t *t);

/* Sorts ids[0..n) ascending; ids may be NULL when n is 0. */
void idr_sort(int64_t *ids, size_t n);

/* A set of ids as sorted, disjoint, non-adjacent closed ranges. */
typedef struct {
    int64_t lo, hi;
} idr_range_t;

typedef struct {
    idr_range_t *r;
    size_t n, cap;
} idr_set_t;

/* Adds [lo, hi] (lo <= hi), merging it with the ranges it overlaps or touches; -1 when out of
 * memory (the set is unchanged). */
int idr_set_add(idr_set_t *s, int64_t lo, int64_t hi);
/* Forgets every id below floor. */
void idr_set_drop_below(idr_set_t *s, int64_t floor);
/* Whether v is in the set. */
int idr_set_has(const idr_set_t *s, int64_t v);
void idr_set_free(idr_set_t *s);

/* The ranges a claim may read: every id from floor up that is neither in the sorted ids in
 * flight nor in done (may be NULL), as closed ranges [lo[k], hi[k]] below *top (two bigint[]
 * texts), and *top, one past the last excluded id, from which every id is free.  Excluded ids
 * below floor are ignored.  When there would be more than max_ranges ranges, ranges separated
 * only by done ids are merged, those closest together first, until there are max_ranges or no
 * such pair is left: a merged range also spans done ids (rows already deleted, which the claim
 * then steps over), never an id in flight.  Every id must be below INT64_MAX.  Caller frees both
 * texts; -1 when out of memory. */
int idr_gaps(const int64_t *sorted, size_t n, const idr_set_t *done, int64_t floor,
             size_t max_ranges, char **lo, char **hi, int64_t *top);

/* The sorted ids[0..n) (duplicates allowed) as runs of consecutive ids: two bigint[] texts of
 * each run's first and last id.  Every id of a run is in ids.  Caller frees; -1 when out of
 * memory. */
int idr_runs(const int64_t *sorted, size_t n, char **lo, char **hi);

#endif
