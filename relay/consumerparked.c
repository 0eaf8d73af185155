/*
 * consumerparked.c: the consumer-parked verbs: list, retry and drop the keys a consumer group
 * parked under consumer.reject.policy=park-key (<schema>.consumer_parked, see lib/consumer_park.c).
 * Each change is one statement, so one transaction; a running consumer notices it within about a
 * second (it reads the table again every second).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define CP_USAGE "expected: consumer-parked list --group GROUP [--key K | --key-hex H] [--json]" \
                 " | retry --group GROUP (--key K | --key-hex H | --all)"                     \
                 " | drop --group GROUP (--key K | --key-hex H | --all --yes) [--first-only]"

#define UTC_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* The key selection shared by the verbs: group $1, and key $2 when one is given. */
typedef struct {
    const char *group;
    char *key; /* the key's bytes (binary parameter); NULL: every key (--all, or list without one) */
    size_t key_len;
} cp_sel_t;

static void cp_failed(const relay_t *r, const char *cmd, PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "outbox-relay: consumer-parked %s failed: %s", cmd, PQresultErrorMessage(res));
    if (state && !strcmp(state, "42501"))
        fprintf(stderr, "outbox-relay: consumer-parked %s needs %s on %s.consumer_parked%s: run it as the relay's "
                        "role from `outbox-relay grants` (apply that script again if it is older than liboutbox %s) "
                        "or as the schema's owner\n", cmd, !strcmp(cmd, "list") ? "SELECT" : !strcmp(cmd, "retry") ?
                "SELECT and UPDATE" : "SELECT and DELETE", r->schema_q, !strcmp(cmd, "drop") ?
                " and INSERT on consumer_dead_letters" : "", outbox_version_str());
    else if (state && !strcmp(state, "42P01"))
        fprintf(stderr, "outbox-relay: schema %s has no consumer_parked table (it is older than this outbox-relay, "
                        "version %d): run `outbox-relay migrate` as the schema's owner first\n", r->schema_q,
                OUTBOX_SCHEMA_VERSION);
}

/* The bytes of hex text h into a new buffer (*len set); NULL if h is no even run of hex digits. */
static char *unhex(const char *h, size_t *len) {
    size_t n = strlen(h) / 2;
    char *out = n ? malloc(n) : NULL;
    if (!out || park_unhex(h, (uint8_t *)out, n) != (ssize_t)n) {
        free(out);
        return NULL;
    }
    *len = n;
    return out;
}

/* Whether the key's bytes read as text: well-formed UTF-8 without control characters (which
 * would break a line of the listing or hide the key's shape). */
static bool key_is_text(const char *k, size_t len) {
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)k[i] < 0x20 || k[i] == 0x7f)
            return false;
    char *z = malloc(len + 1);
    if (!z)
        return false;
    memcpy(z, k, len);
    z[len] = '\0';
    bool ok = outbox_utf8_invalid_at(z) < 0;
    free(z);
    return ok;
}

/* list: one line (or JSON object) per parked key, the longest parked first. */
static int cp_list(relay_t *r, PGconn *pg, const cp_sel_t *sel, bool json) {
    char sql[1536];
    snprintf(sql, sizeof(sql),
             "SELECT topic, kafka_partition, kafka_key, min(kafka_offset), count(*), "
             "(array_agg(reason ORDER BY kafka_offset))[1], "
             UTC_TS("(array_agg(parked_at ORDER BY kafka_offset))[1]") ", "
             "CASE WHEN bool_or(released) OR (array_agg(reason ORDER BY kafka_offset))[1] IS NULL "
             "THEN 'retrying' ELSE 'parked' END "
             "FROM %s.consumer_parked WHERE consumer = $1%s "
             "GROUP BY topic, kafka_partition, kafka_key ORDER BY min(parked_at), topic, kafka_partition",
             r->schema_q, sel->key ? " AND kafka_key = $2" : "");
    const char *p[2] = {sel->group, sel->key};
    int l[2] = {0, (int)sel->key_len}, f[2] = {0, 1};
    PGresult *res = PQexecParams(pg, sql, sel->key ? 2 : 1, NULL, p, l, f, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        cp_failed(r, "list", res);
        PQclear(res);
        return 1;
    }
    int n = PQntuples(res);
    if (json) {
        printf("{\"group\":");
        admin_json_str(sel->group);
        printf(",\"keys\":[");
    } else {
        printf("%-24s %-9s %-24s %-12s %-8s %-20s %-8s %s\n", "TOPIC", "PARTITION", "KEY", "FIRST_OFFSET", "HELD",
               "SINCE", "STATE", "REASON");
    }
    for (int i = 0; i < n; i++) {
        /* Text results: bytea comes as "\x<hex>". */
        const char *hex = PQgetvalue(res, i, 2);
        if (hex[0] == '\\' && hex[1] == 'x')
            hex += 2;
        size_t klen = 0;
        char *key = unhex(hex, &klen);
        bool text = key && key_is_text(key, klen);
        char *shown = NULL;
        if (text && (shown = malloc(klen + 1))) {
            memcpy(shown, key, klen);
            shown[klen] = '\0';
        }
        const char *reason = PQgetisnull(res, i, 5) ? NULL : PQgetvalue(res, i, 5);
        if (json) {
            printf("%s{\"topic\":", i ? "," : "");
            admin_json_str(PQgetvalue(res, i, 0));
            printf(",\"partition\":%s,\"key\":", PQgetvalue(res, i, 1));
            if (shown)
                admin_json_str(shown);
            else
                printf("null");
            printf(",\"key_hex\":");
            admin_json_str(hex);
            printf(",\"first_offset\":%s,\"held\":%s,\"reason\":", PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
            if (reason)
                admin_json_str(reason);
            else
                printf("null");
            printf(",\"since\":");
            admin_json_str(PQgetvalue(res, i, 6));
            printf(",\"state\":");
            admin_json_str(PQgetvalue(res, i, 7));
            printf("}");
        } else {
            char kbuf[80];
            if (shown)
                snprintf(kbuf, sizeof(kbuf), "%s", shown);
            else
                snprintf(kbuf, sizeof(kbuf), "hex:%s", hex);
            printf("%-24.24s %-9s %-24s %-12s %-8s %-20s %-8s %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                   kbuf, PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 6), PQgetvalue(res, i, 7),
                   reason ? reason : "-");
        }
        free(shown);
        free(key);
    }
    if (json)
        printf("]}\n");
    else
        printf("(%d parked key%s of group %s)\n", n, n == 1 ? "" : "s", sel->group);
    PQclear(res);
    return 0;
}

/* retry marks the rows released (the consumer retries them in order at its next refresh); drop
 * moves them to consumer_dead_letters, or with first_only only each key's first (the poison), the
 * rest then going through in order.  One statement each. */
static int cp_change(relay_t *r, PGconn *pg, const char *cmd, const cp_sel_t *sel, bool first_only) {
    const char *s = r->schema_q, *kw = sel->key ? " AND kafka_key = $2" : "";
    char sql[2048];
    if (!strcmp(cmd, "retry")) {
        snprintf(sql, sizeof(sql),
                 "WITH u AS (UPDATE %s.consumer_parked SET released = true WHERE consumer = $1%s "
                 "RETURNING topic, kafka_partition, kafka_key) "
                 "SELECT count(*), count(DISTINCT (topic, kafka_partition, kafka_key)) FROM u", s, kw);
    } else {
        char only[512] = "";
        if (first_only)
            snprintf(only, sizeof(only),
                     " AND (topic, kafka_partition, kafka_key, kafka_offset) IN (SELECT topic, kafka_partition, "
                     "kafka_key, min(kafka_offset) FROM %s.consumer_parked WHERE consumer = $1%s "
                     "GROUP BY topic, kafka_partition, kafka_key)", s, kw);
        snprintf(sql, sizeof(sql),
                 "WITH d AS (DELETE FROM %s.consumer_parked WHERE consumer = $1%s%s RETURNING *), "
                 "dl AS (INSERT INTO %s.consumer_dead_letters (consumer, message_id, reason, raw, topic, "
                 "kafka_partition, kafka_offset) SELECT consumer, message_id, coalesce(reason, 'held behind a parked "
                 "message; dropped by outbox-relay consumer-parked drop'), raw, topic, kafka_partition, kafka_offset "
                 "FROM d ORDER BY topic, kafka_partition, kafka_offset RETURNING 1) "
                 "SELECT (SELECT count(*) FROM dl), count(DISTINCT (topic, kafka_partition, kafka_key)) FROM d",
                 s, kw, only, s);
    }
    const char *p[2] = {sel->group, sel->key};
    int l[2] = {0, (int)sel->key_len}, f[2] = {0, 1};
    PGresult *res = PQexecParams(pg, sql, sel->key ? 2 : 1, NULL, p, l, f, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        cp_failed(r, cmd, res);
        PQclear(res);
        return 1;
    }
    long rows = atol(PQgetvalue(res, 0, 0)), keys = atol(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (sel->key && rows == 0) {
        fprintf(stderr, "outbox-relay: consumer-parked %s: group %s has no parked key like that in %s.consumer_parked "
                        "(see consumer-parked list --group %s)\n", cmd, sel->group, s, sel->group);
        return 1;
    }
    if (!strcmp(cmd, "retry"))
        printf("released: %ld held message%s of %ld key%s; the consumer retries them in order within a second or two\n",
               rows, rows == 1 ? "" : "s", keys, keys == 1 ? "" : "s");
    else
        printf("dropped to consumer_dead_letters: %ld message%s of %ld key%s%s\n", rows, rows == 1 ? "" : "s", keys,
               keys == 1 ? "" : "s", first_only ? "; the rest of each key goes through in order" : "");
    return 0;
}

int relay_consumer_parked(relay_t *r, int argc, const char **argv) {
    if (argc < 1) {
        fprintf(stderr, "outbox-relay: consumer-parked needs a command; %s\n", CP_USAGE);
        return 2;
    }
    const char *cmd = argv[0];
    bool list = !strcmp(cmd, "list"), retry = !strcmp(cmd, "retry"), drop = !strcmp(cmd, "drop");
    if (!list && !retry && !drop) {
        fprintf(stderr, "outbox-relay: consumer-parked: unknown command \"%s\"; %s\n", cmd, CP_USAGE);
        return 2;
    }
    cp_sel_t sel = {0};
    bool all = false, yes = false, json = false, first_only = false;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool valued = !strcmp(a, "--group") || !strcmp(a, "--key") || !strcmp(a, "--key-hex");
        if (valued && (!v || !*v)) {
            fprintf(stderr, "outbox-relay: consumer-parked %s: %s needs a value; %s\n", cmd, a, CP_USAGE);
            goto done;
        }
        if (!strcmp(a, "--group")) {
            sel.group = argv[++i];
        } else if ((!strcmp(a, "--key") || !strcmp(a, "--key-hex")) && !sel.key) {
            if (a[5] == '-') {
                if (!(sel.key = unhex(v, &sel.key_len))) {
                    fprintf(stderr, "outbox-relay: consumer-parked %s: --key-hex \"%s\" is not the key's bytes in "
                                    "hex (an even number of hex digits, as KEY shows after hex:)\n", cmd, v);
                    goto done;
                }
            } else {
                sel.key_len = strlen(v);
                if (!(sel.key = malloc(sel.key_len))) {
                    fprintf(stderr, "outbox-relay: out of memory\n");
                    rc = 1;
                    goto done;
                }
                memcpy(sel.key, v, sel.key_len);
            }
            i++;
        } else if (list && !strcmp(a, "--json")) {
            json = true;
        } else if (!list && !strcmp(a, "--all")) {
            all = true;
        } else if (drop && !strcmp(a, "--yes")) {
            yes = true;
        } else if (drop && !strcmp(a, "--first-only")) {
            first_only = true;
        } else {
            fprintf(stderr, "outbox-relay: consumer-parked %s: bad argument \"%s\"; %s\n", cmd, a, CP_USAGE);
            goto done;
        }
    }
    if (!sel.group) {
        fprintf(stderr, "outbox-relay: consumer-parked %s needs --group GROUP (the consumer.group.id whose parked keys "
                        "to %s)\n", cmd, list ? "show" : retry ? "release" : "drop");
        goto done;
    }
    if (!list && !!sel.key == all) {
        fprintf(stderr, "outbox-relay: consumer-parked %s: give one of --key K, --key-hex H or --all; %s\n", cmd,
                CP_USAGE);
        goto done;
    }
    if (drop && all && !yes) {
        fprintf(stderr, "outbox-relay: consumer-parked drop --all moves every held message of the group to "
                        "consumer_dead_letters; add --yes to confirm\n");
        goto done;
    }
    PGconn *pg = relay_connect(r);
    if (!pg) {
        rc = 1;
        goto done;
    }
    rc = list ? cp_list(r, pg, &sel, json) : cp_change(r, pg, cmd, &sel, first_only);
    PQfinish(pg);
done:
    free(sel.key);
    return rc;
}
