/*
 * Names of outbox.mode=wal: the logical decoding message prefix, the replication slot and the
 * publication, derived in one place for the writer (lib/writer.c) and the relay's WAL source.
 */
#include <string.h>

#include "outbox_int.h"

/* PostgreSQL's NAMEDATALEN - 1: longer slot and publication names are refused or truncated. */
#define WAL_NAME_MAX OUTBOX_IDENT_MAX

void outbox_wal_prefix(const char *schema, char *out, size_t size) {
    outbox_snprintf(out, size, "outbox:%s", schema ? schema : "");
}

void outbox_wal_publication(const char *schema, char *out, size_t size) {
    if (!out || !size)
        return;
    char name[WAL_NAME_MAX + 1];
    outbox_snprintf(name, sizeof(name), "outbox_%s", schema ? schema : "");
    /* Byte by byte: a multi-byte UTF-8 character becomes several '_', never a broken sequence. */
    for (char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 'A' && c <= 'Z')
            *p = (char)(c - 'A' + 'a');
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            *p = '_';
    }
    outbox_snprintf(out, size, "%s", name);
}

void outbox_wal_slot_name(const outbox_conf_t *conf, char *out, size_t size) {
    const char *set = outbox_conf_str(conf, "relay.slot.name");
    if (*set)
        outbox_snprintf(out, size, "%s", set);
    else
        outbox_wal_publication(outbox_conf_str(conf, "outbox.schema"), out, size);
}

const char *outbox_wal_slot_name_problem(const char *s, char *why, size_t why_size) {
    size_t n = strlen(s);
    if (n == 0 || n > WAL_NAME_MAX) {
        outbox_snprintf(why, why_size, "a replication slot name has 1 to %d bytes, this one %zu",
                        WAL_NAME_MAX, n);
        return why;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            outbox_snprintf(why, why_size, "a replication slot name may contain only lower-case "
                            "letters, digits and _ (byte %zu is 0x%02x)", i, c);
            return why;
        }
    }
    return NULL;
}
