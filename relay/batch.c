/*
 * batch.c: a batch's life, whatever its source: made when the source hands it over, in flight
 * while its rows are produced and acknowledged, retired once the source has settled it.
 */
#include <stdlib.h>
#include <string.h>

#include "idranges.h"
#include "relay.h"

static void batch_free(batch_t *b) {
    if (!b)
        return;
    if (b->error)
        for (int i = 0; i < b->n; i++)
            free(b->error[i]);
    free(b->error);
    free(b->state);
    free(b->ids);
    free(b->rows);
    free(b->slots);
    if (b->owner_free)
        b->owner_free(b->owner);
    free(b);
}

batch_t *batch_new(relay_t *r, int n, void *owner, void (*owner_free)(void *owner)) {
    if (r->inflight_cnt >= r->set.inflight_max)
        return NULL;
    batch_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->n = n;
    b->owner = owner;
    b->owner_free = owner_free;
    b->ids = calloc((size_t)n, sizeof(*b->ids));
    b->rows = calloc((size_t)n, sizeof(*b->rows));
    b->state = calloc((size_t)n, 1);
    b->error = calloc((size_t)n, sizeof(*b->error));
    b->slots = calloc((size_t)n, sizeof(*b->slots));
    if (!b->ids || !b->rows || !b->state || !b->error || !b->slots) {
        b->owner_free = NULL; /* on failure the owner stays the caller's */
        batch_free(b);
        return NULL;
    }
    b->claimed_ms = outbox_mono_ms();
    r->inflight[r->inflight_cnt++] = b;
    return b;
}

void batch_retire(relay_t *r, batch_t *b) {
    metrics_observe_batch(&r->metrics, (double)(outbox_mono_ms() - b->claimed_ms) / 1000.0);
    for (int k = 0; k < r->inflight_cnt; k++)
        if (r->inflight[k] == b) {
            memmove(&r->inflight[k], &r->inflight[k + 1], (size_t)(r->inflight_cnt - k - 1) * sizeof(b));
            r->inflight_cnt--;
            break;
        }
    batch_free(b);
}

void batch_retire_all(relay_t *r) {
    for (int k = 0; k < r->inflight_cnt; k++)
        batch_free(r->inflight[k]);
    r->inflight_cnt = 0;
}

int batch_outstanding(const relay_t *r) {
    int n = 0;
    for (int k = 0; k < r->inflight_cnt; k++)
        n += r->inflight[k]->pending;
    return n;
}

int64_t *batch_sorted_ids(batch_t *const *bs, int nb, bool acked_only, size_t *n) {
    size_t cap = 0, m = 0;
    for (int k = 0; k < nb; k++)
        cap += (size_t)bs[k]->n;
    int64_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
    if (!ids)
        return NULL;
    for (int k = 0; k < nb; k++)
        for (int i = 0; i < bs[k]->n; i++)
            if (!acked_only || bs[k]->state[i] == ROW_ACKED)
                ids[m++] = bs[k]->ids[i];
    /* A batch's ids ascend, and so do the batches' in claim order, unless a late commit was
     * claimed below ids already in flight. */
    idr_sort(ids, m);
    *n = m;
    return ids;
}
