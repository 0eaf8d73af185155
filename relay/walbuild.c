/*
 * walbuild.c: the WAL source's batch builder: copies each message read from the stream into an
 * arena and hands the lot to the producer as one batch (walsource.c decides when).
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "wal.h"

/* One message read from the stream; its bytes live in the build's arena, at these offsets. */
struct wbuild_row_s {
    size_t dest, key, value, type, error; /* error: SIZE_MAX when the message is sound */
    size_t key_len, value_len, type_len;
    bool has_key;
    uint8_t uuid[16];
    int64_t ts_ms;
    uint64_t lsn;
};

static void owner_free(void *p) {
    wal_owner_t *o = p;
    if (!o)
        return;
    free(o->arena);
    free(o->lsn);
    free(o->uuids);
    free(o);
}

/* Appends len bytes (and a NUL) to the arena; its offset, or SIZE_MAX when out of memory. */
static size_t put(wbuild_t *b, const void *p, size_t len) {
    if (b->used + len + 1 > b->size) {
        size_t size = (b->size ? b->size : 65536);
        while (size < b->used + len + 1)
            size *= 2;
        char *a = realloc(b->arena, size);
        if (!a)
            return SIZE_MAX;
        b->arena = a;
        b->size = size;
    }
    size_t at = b->used;
    if (len)
        memcpy(b->arena + at, p, len);
    b->arena[at + len] = '\0';
    b->used += len + 1;
    return at;
}

wbuild_t *wbuild_of(relay_t *r) {
    if (!r->wal.build)
        r->wal.build = calloc(1, sizeof(wbuild_t));
    return r->wal.build;
}

int wbuild_add(relay_t *r, wbuild_t *b, const uint8_t *content, size_t content_len, uint64_t lsn) {
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 256;
        wbuild_row_t *rows = realloc(b->rows, (size_t)cap * sizeof(*rows));
        if (!rows)
            return -1;
        b->rows = rows;
        b->cap = cap;
    }
    wbuild_row_t *w = &b->rows[b->n];
    outbox_envelope_fields_t f;
    char why[200] = "";
    memset(w, 0, sizeof(*w));
    w->error = SIZE_MAX;
    w->lsn = lsn;
    if (outbox_envelope_fields(content, content_len, &f))
        snprintf(why, sizeof(why), "envelope is not a valid outbox.v1.Envelope protobuf (%zu bytes)", content_len);
    else if (memchr(f.destination ? f.destination : "", '\0', f.destination_len) ||
             memchr(f.type ? f.type : "", '\0', f.type_len))
        snprintf(why, sizeof(why), "envelope destination or type contains a NUL byte");
    else if (outbox_uuid_parse(f.id, f.id_len, w->uuid))
        snprintf(why, sizeof(why), "envelope id \"%.*s\" is not a uuid", (int)(f.id_len > 64 ? 64 : f.id_len),
                 f.id ? f.id : "");
    if (*why)
        memset(&f, 0, sizeof(f));
    w->dest = put(b, f.destination, f.destination_len);
    w->value = put(b, content, content_len);
    w->value_len = content_len;
    w->type = put(b, f.type, f.type_len);
    w->type_len = f.type_len;
    w->has_key = f.key != NULL;
    w->key = put(b, f.key, f.key_len);
    w->key_len = f.key_len;
    if (*why)
        w->error = put(b, why, strlen(why));
    if (r->set.record_created && f.created_at_unix_us > 0)
        w->ts_ms = f.created_at_unix_us / 1000;
    if (w->dest == SIZE_MAX || w->value == SIZE_MAX || w->type == SIZE_MAX || w->key == SIZE_MAX ||
        (*why && w->error == SIZE_MAX))
        return -1;
    b->n++;
    return 0;
}

batch_t *wbuild_take(relay_t *r, wbuild_t *b) {
    wal_owner_t *o = calloc(1, sizeof(*o));
    uint64_t *lsn = malloc((size_t)b->n * sizeof(*lsn));
    uint8_t *uuids = malloc((size_t)b->n * 16);
    batch_t *bt = o && lsn && uuids ? batch_new(r, b->n, o, owner_free) : NULL;
    if (!bt) {
        free(o);
        free(lsn);
        free(uuids);
        return NULL;
    }
    o->lsn = lsn;
    o->uuids = uuids;
    o->confirm = b->confirm;
    for (int i = 0; i < b->n; i++) {
        const wbuild_row_t *w = &b->rows[i];
        relay_row_t *row = &bt->rows[i];
        bt->ids[i] = r->wal.seq++;
        lsn[i] = w->lsn;
        memcpy(uuids + 16 * i, w->uuid, 16);
        row->dest = b->arena + w->dest;
        row->key = w->has_key ? b->arena + w->key : NULL;
        row->key_len = w->key_len;
        row->value = b->arena + w->value;
        row->value_len = w->value_len;
        row->uuid = uuids + 16 * i;
        row->type = b->arena + w->type;
        row->type_len = w->type_len;
        row->timestamp_ms = w->ts_ms;
        if (w->error != SIZE_MAX)
            bt->error[i] = outbox_strdup(b->arena + w->error);
    }
    o->arena = b->arena;
    b->arena = NULL;
    b->used = b->size = 0;
    b->n = 0;
    b->confirm = 0;
    b->first_ms = 0;
    return bt;
}

void wbuild_reset(wbuild_t *b) {
    if (b) {
        b->n = 0;
        b->used = 0;
        b->confirm = 0;
        b->first_ms = 0;
    }
}

void wbuild_free(relay_t *r) {
    wbuild_t *b = r->wal.build;
    if (b) {
        free(b->rows);
        free(b->arena);
        free(b);
    }
    r->wal.build = NULL;
}
