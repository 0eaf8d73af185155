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

/* The ranges a claim may read given the sorted ids in flight: every id from floor up that is
 * not in ids, as closed ranges [lo[k], hi[k]] below the last in-flight id (two bigint[] texts),
 * and *top, from which every id is free.  Ids below floor are ignored.  Every id must be below
 * INT64_MAX, as *top is one past the last.  Caller frees both texts; -1 when out of memory. */
int idr_gaps(const int64_t *sorted, size_t n, int64_t floor, char **lo, char **hi, int64_t *top);

/* The sorted ids[0..n) (duplicates allowed) as runs of consecutive ids: two bigint[] texts of
 * each run's first and last id.  Every id of a run is in ids.  Caller frees; -1 when out of
 * memory. */
int idr_runs(const int64_t *sorted, size_t n, char **lo, char **hi);

#endif
