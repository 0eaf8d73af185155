/* TEMPORARY until the writer branch lands its own. */
#include <ctype.h>
#include <string.h>
#include "outbox_int.h"
void outbox_wal_prefix(const char *schema, char *out, size_t size);
void outbox_wal_slot_name(const outbox_conf_t *c, char *out, size_t size);
void outbox_wal_publication(const char *schema, char *out, size_t size);
void outbox_wal_prefix(const char *schema, char *out, size_t size) { snprintf(out, size, "outbox:%s", schema); }
void outbox_wal_publication(const char *schema, char *out, size_t size) {
    snprintf(out, size, "outbox_%s", schema);
    for (char *p = out; *p; p++) { *p = (char)tolower((unsigned char)*p); if (!isalnum((unsigned char)*p) && *p != '_') *p = '_'; }
}
void outbox_wal_slot_name(const outbox_conf_t *c, char *out, size_t size) {
    if (*outbox_conf_str(c, "relay.slot.name")) { snprintf(out, size, "%s", outbox_conf_str(c, "relay.slot.name")); return; }
    outbox_wal_publication(outbox_conf_str(c, "outbox.schema"), out, size);
}
