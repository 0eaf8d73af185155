/*
 * parked.c: the parked verbs: list the partition keys that a message which failed permanently
 * parked (relay.poison.policy = park-key), and retry or drop their held messages.
 *
 * retry and drop record a request in parked_keys; the leader carries it out between batches,
 * with nothing in flight (park.c), and this waits for it.  While no relay leads (the leadership
 * lock is free) the verb takes that lock and carries the request out itself, so a relay that
 * starts meanwhile waits as a standby and then claims from a reset floor.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

#define USAGE "expected: parked list [--json] | retry --key K|--key-hex H|--all | drop --key K|--key-hex H " \
              "[--first-only]"
/* How long retry and drop wait for the leader to carry out their request. */
#define PARKED_WAIT_MS 10000
#define PARKED_WAIT_STEP_MS 100

/* The parked keys, oldest first: key (hex), destination, first held id, rows held, error, since,
 * pending request. */
PGresult *parked_query(const relay_t *r, PGconn *pg) {
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "SELECT encode(k.partition_key, 'hex'), k.destination, coalesce(min(m.id), k.first_id),"
             " count(m.id), k.error, to_char(k.parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
             " coalesce(k.request, '')"
             " FROM %1$s.parked_keys k LEFT JOIN %1$s.parked_messages m USING (partition_key)"
             " GROUP BY k.partition_key ORDER BY k.parked_at, 1", r->schema_q);
    return PQexec(pg, sql);
}

/* The key of a row of parked_query as text, into out (NULL when it is not printable text). */
static const char *key_text(const char *hex, char *out, size_t size) {
    ssize_t n = park_unhex(hex, (uint8_t *)out, size - 1);
    if (n < 0)
        return NULL;
    out[n] = '\0';
    return park_key_is_text(out, (size_t)n) ? out : NULL;
}

void parked_print(PGresult *res, bool json, bool status_lines) {
    char text[256];
    int n = PQntuples(res);
    if (json) {
        printf("[");
        for (int i = 0; i < n; i++) {
            const char *hex = PQgetvalue(res, i, 0), *t = key_text(hex, text, sizeof(text));
            printf("%s{\"key\":", i ? "," : "");
            if (t)
                admin_json_str(t);
            else
                printf("null");
            printf(",\"key_hex\":\"%s\",\"destination\":", hex);
            admin_json_str(PQgetvalue(res, i, 1));
            printf(",\"first_id\":%s,\"held\":%s,\"error\":", PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
            admin_json_str(PQgetvalue(res, i, 4));
            printf(",\"since\":\"%s\",\"request\":", PQgetvalue(res, i, 5));
            if (*PQgetvalue(res, i, 6))
                admin_json_str(PQgetvalue(res, i, 6));
            else
                printf("null");
            printf("}");
        }
        printf("]");
        return;
    }
    if (!status_lines && n)
        printf("%-24s %-24s %10s %8s %-20s %s\n", "KEY", "DESTINATION", "FIRST_ID", "HELD", "SINCE", "ERROR");
    for (int i = 0; i < n; i++) {
        const char *hex = PQgetvalue(res, i, 0), *t = key_text(hex, text, sizeof(text));
        char shown[300];
        snprintf(shown, sizeof(shown), t ? "%s" : "hex:%s", t ? t : hex);
        const char *req = PQgetvalue(res, i, 6);
        if (status_lines)
            printf("parked_key:      key=\"%s\" destination=%s first_id=%s held=%s since=%s%s%s error=\"%s\"\n",
                   shown, PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQgetvalue(res, i, 3),
                   PQgetvalue(res, i, 5), *req ? " request=" : "", req, PQgetvalue(res, i, 4));
        else
            printf("%-24s %-24s %10s %8s %-20s %s%s%s%s\n", shown, PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                   PQgetvalue(res, i, 3), PQgetvalue(res, i, 5), PQgetvalue(res, i, 4), *req ? " (" : "",
                   req, *req ? " requested)" : "");
    }
    if (!status_lines)
        printf("%d parked key%s\n", n, n == 1 ? "" : "s");
}

static void failed(const relay_t *r, const char *cmd, PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "outbox-relay: parked %s failed: %s", cmd, PQresultErrorMessage(res));
    if (state && !strcmp(state, "42P01"))
        fprintf(stderr, "outbox-relay: schema %s is older than this outbox-relay (version %d): run "
                        "`outbox-relay migrate` as the schema's owner first\n", r->schema_q, OUTBOX_SCHEMA_VERSION);
    else if (state && !strcmp(state, "42501"))
        fprintf(stderr, "outbox-relay: parked %s needs the relay's role from `outbox-relay grants` (apply that "
                        "script again if it is older than liboutbox %s) or the schema's owner\n", cmd,
                outbox_version_str());
}

/* --key-hex H as encode() writes it (lowercase); false when it is not hex. */
static bool hex_arg(const char *h, char *out, size_t size) {
    size_t n = strlen(h);
    if (n == 0 || n % 2 || n >= size)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i] >= 'A' && h[i] <= 'F' ? (char)(h[i] - 'A' + 'a') : h[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        out[i] = c;
    }
    out[n] = '\0';
    return true;
}

/* Carries the request out on pg, which holds the leadership lock. */
static int release_here(relay_t *r, PGconn *pg, const char *cmd, const char *hex) {
    char sql[2560];
    park_release_sql(r->schema_q, sql, sizeof(sql));
    const char *p[1] = {hex};
    PGresult *res = PQexecParams(pg, sql, 1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        failed(r, cmd, res);
        PQclear(res);
        return 1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        long long held = atoll(PQgetvalue(res, i, 2)), back = atoll(PQgetvalue(res, i, 3));
        printf("key_hex %s: %s: %lld message%s back in the outbox, in order; %lld moved to dead_letters\n",
               PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), back, back == 1 ? "" : "s", held - back);
    }
    printf("no relay leads now: the next leader publishes them\n");
    PQclear(res);
    return 0;
}

/* Waits for the leader to carry out the request on hex (NULL: every key). */
static int wait_leader(relay_t *r, PGconn *pg, const char *cmd, const char *hex, int keys) {
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.parked_keys WHERE request IS NOT NULL"
             " AND ($1::text IS NULL OR partition_key = decode($1::text, 'hex'))", r->schema_q);
    const char *p[1] = {hex};
    for (int waited = 0; waited <= PARKED_WAIT_MS; waited += PARKED_WAIT_STEP_MS) {
        PGresult *res = PQexecParams(pg, sql, 1, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            failed(r, cmd, res);
            PQclear(res);
            return 1;
        }
        long long left = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
        if (left == 0) {
            printf("the relay released %d key%s: %s\n", keys, keys == 1 ? "" : "s",
                   !strcmp(cmd, "retry") ? "their messages are published again, in order (a key whose first "
                                           "message fails again parks again: see `outbox-relay parked list`)"
                                         : "see `outbox-relay dead-letters list`");
            return 0;
        }
        usleep(PARKED_WAIT_STEP_MS * 1000);
    }
    fprintf(stderr, "outbox-relay: parked %s: the leader has not carried out the request within %d s; it "
                    "stays recorded and the leader carries it out between batches (`outbox-relay parked list` "
                    "shows it; `outbox-relay status` names the leader)\n", cmd, PARKED_WAIT_MS / 1000);
    return 1;
}

static int request(relay_t *r, PGconn *pg, const char *cmd, const char *req, const char *hex, const char *shown) {
    char sql[512], lock[160];
    snprintf(sql, sizeof(sql), "UPDATE %s.parked_keys SET request = $2, requested_at = now()"
             " WHERE ($1::text IS NULL OR partition_key = decode($1::text, 'hex'))", r->schema_q);
    const char *p[2] = {hex, req};
    PGresult *res = PQexecParams(pg, sql, 2, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        failed(r, cmd, res);
        PQclear(res);
        return 1;
    }
    int keys = atoi(PQcmdTuples(res));
    PQclear(res);
    if (keys == 0) {
        if (hex)
            fprintf(stderr, "outbox-relay: parked %s: key %s is not parked (`outbox-relay parked list` shows "
                            "the parked keys)\n", cmd, shown);
        else
            printf("no parked key\n");
        return hex ? 1 : 0;
    }
    relay_lock_name(r, lock, sizeof(lock));
    const char *lp[1] = {lock};
    res = PQexecParams(pg, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", 1, NULL, lp, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        failed(r, cmd, res);
        PQclear(res);
        return 1;
    }
    bool mine = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (!mine)
        return wait_leader(r, pg, cmd, hex, keys);
    int rc = release_here(r, pg, cmd, hex);
    PQclear(PQexecParams(pg, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", 1, NULL, lp, NULL, NULL, 0));
    return rc;
}

int relay_parked(relay_t *r, int argc, const char **argv) {
    if (argc < 1) {
        fprintf(stderr, "outbox-relay: parked: %s\n", USAGE);
        return 2;
    }
    const char *cmd = argv[0];
    bool json = false, all = false, first_only = false;
    const char *key = NULL, *key_hex = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && !strcmp(cmd, "list")) {
            json = true;
        } else if (!strcmp(argv[i], "--all") && !strcmp(cmd, "retry")) {
            all = true;
        } else if (!strcmp(argv[i], "--first-only") && !strcmp(cmd, "drop")) {
            first_only = true;
        } else if ((!strcmp(argv[i], "--key") || !strcmp(argv[i], "--key-hex")) && i + 1 < argc &&
                   strcmp(cmd, "list")) {
            if (!strcmp(argv[i], "--key"))
                key = argv[++i];
            else
                key_hex = argv[++i];
        } else {
            fprintf(stderr, "outbox-relay: parked %s: unknown or misplaced argument \"%s\"; %s\n", cmd, argv[i],
                    USAGE);
            return 2;
        }
    }
    bool listing = !strcmp(cmd, "list");
    if (!listing && strcmp(cmd, "retry") && strcmp(cmd, "drop")) {
        fprintf(stderr, "outbox-relay: parked: unknown command \"%s\"; %s\n", cmd, USAGE);
        return 2;
    }
    if (!listing && (!!key + !!key_hex + all) != 1) {
        fprintf(stderr, "outbox-relay: parked %s: name exactly one of --key K, --key-hex H%s; %s\n", cmd,
                !strcmp(cmd, "retry") ? ", --all" : "", USAGE);
        return 2;
    }
    /* A key has no length limit (partition_key is bytea), so neither has its hex. */
    size_t hex_size = 2 * (key ? strlen(key) : key_hex ? strlen(key_hex) : 0) + 1;
    char *hex = malloc(hex_size);
    if (!hex) {
        fprintf(stderr, "outbox-relay: parked %s: out of memory\n", cmd);
        return 1;
    }
    if (key_hex && !hex_arg(key_hex, hex, hex_size)) {
        fprintf(stderr, "outbox-relay: parked %s: --key-hex \"%s\" is not an even number of hex digits; "
                        "`outbox-relay parked list` shows each key's key_hex\n", cmd, key_hex);
        free(hex);
        return 2;
    }
    if (key) {
        park_hex(key, strlen(key), hex, hex_size);
    }
    PGconn *pg = relay_connect(r);
    if (!pg) {
        free(hex);
        return 1;
    }
    int rc;
    if (listing) {
        PGresult *res = parked_query(r, pg);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            failed(r, cmd, res);
            rc = 1;
        } else {
            parked_print(res, json, false);
            if (json)
                printf("\n");
            rc = 0;
        }
        PQclear(res);
    } else {
        const char *req = !strcmp(cmd, "retry") ? "retry" : first_only ? "drop-first" : "drop";
        rc = request(r, pg, cmd, req, all ? NULL : hex, key ? key : key_hex);
    }
    PQfinish(pg);
    free(hex);
    return rc;
}
