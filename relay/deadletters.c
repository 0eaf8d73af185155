/*
 * deadletters.c: the dead-letters and consumer-dead-letters verbs: list (text or JSON), retry,
 * drop and prune the relay's dead letters and a consumer group's rejected messages.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

/* ---- dead letters: the relay's (dead_letters) and the consumers' (consumer_dead_letters) ------ */

/* One column of a list: its SQL, its name (the JSON key; upper-cased, the text header), its text
 * width (0: the rest of the line) and whether JSON shows it as a number. */
typedef struct {
    const char *sql, *name;
    int width;
    bool num;
} dl_col_t;

/* What differs between the relay's dead letters and a consumer group's rejections. */
typedef struct {
    const char *verb;     /* the command-line verb */
    const char *table;    /* in the outbox schema */
    const char *time_col; /* when the row was dead-lettered: prune compares it */
    const char *noun;     /* one row, in messages */
    bool by_group;        /* rows belong to a consumer group: --group GROUP is required */
    const char *usage;
    const dl_col_t *cols;
    int ncols;
} dl_kind_t;

#define UTC_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const dl_col_t relay_dl_cols[] = {
    {"id", "id", 10, true},
    {"message_id::text", "message_id", 36, false},
    {"destination", "destination", 24, false},
    {"message_type", "message_type", 24, false},
    {UTC_TS("failed_at"), "failed_at", 20, false},
    {"attempts", "attempts", 8, true},
    {"octet_length(envelope)", "bytes", 9, true},
    {"error", "error", 0, false},
};

static const dl_col_t consumer_dl_cols[] = {
    {"id", "id", 10, true},
    {"message_id", "message_id", 36, false},
    {"topic", "topic", 24, false},
    {"kafka_partition", "partition", 9, true},
    {"kafka_offset", "offset", 12, true},
    {UTC_TS("rejected_at"), "rejected_at", 20, false},
    {"octet_length(raw)", "bytes", 9, true},
    {"reason", "reason", 0, false},
};

static const dl_kind_t relay_dl = {
    "dead-letters", "dead_letters", "failed_at", "dead letter", false,
    "expected: dead-letters list [--limit N] [--json] | retry ID|--all | drop ID|--all --yes"
    " | prune --older-than DURATION",
    relay_dl_cols, (int)(sizeof(relay_dl_cols) / sizeof(relay_dl_cols[0])),
};

static const dl_kind_t consumer_dl = {
    "consumer-dead-letters", "consumer_dead_letters", "rejected_at", "consumer dead letter", true,
    "expected: consumer-dead-letters list [--limit N] [--json] --group GROUP | drop ID|--all --group GROUP"
    " [--yes with --all] | prune --older-than DURATION --group GROUP",
    consumer_dl_cols, (int)(sizeof(consumer_dl_cols) / sizeof(consumer_dl_cols[0])),
};

/* Says why a statement failed; a missing privilege also says which role has it. */
static void dl_failed(const relay_t *r, const dl_kind_t *k, const char *cmd, PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "outbox-relay: %s %s failed: %s", k->verb, cmd, PQresultErrorMessage(res));
    if (state && !strcmp(state, "42501")) {
        char need[400];
        size_t n = (size_t)snprintf(need, sizeof(need), "%s on %s.%s", !strcmp(cmd, "list") ? "SELECT" :
                                    "SELECT and DELETE", r->schema_q, k->table);
        if (!strcmp(cmd, "retry"))
            snprintf(need + n, sizeof(need) - n, " and INSERT on %s.messages", r->schema_q);
        fprintf(stderr, "outbox-relay: %s %s needs %s: run it as the relay's role from `outbox-relay grants` "
                        "(apply that script again if it is older than liboutbox %s) or as the schema's owner\n",
                k->verb, cmd, need, outbox_version_str());
    } else if (state && !strcmp(state, "42703")) {
        fprintf(stderr, "outbox-relay: schema %s is older than this outbox-relay (version %d): run "
                        "`outbox-relay migrate` as the schema's owner first\n", r->schema_q, OUTBOX_SCHEMA_VERSION);
    }
}

static void upper(const char *s) {
    for (; *s; s++)
        putchar(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s);
}

/* list: the oldest rows first, up to limit (NULL: all), with the total, as text or one JSON object. */
static int dl_list(relay_t *r, const dl_kind_t *k, PGconn *pg, const char *limit, const char *group, bool json) {
    char sql[2048];
    size_t n = 0;
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "SELECT ");
    for (int c = 0; c < k->ncols; c++)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s, ", k->cols[c].sql);
    /* The total of the same snapshot: window functions run before the LIMIT. */
    snprintf(sql + n, sizeof(sql) - n, "count(*) OVER () FROM %s.%s%s ORDER BY id LIMIT $1::bigint",
             r->schema_q, k->table, group ? " WHERE consumer = $2" : "");
    const char *p[2] = {limit, group};
    PGresult *res = PQexecParams(pg, sql, group ? 2 : 1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        dl_failed(r, k, "list", res);
        PQclear(res);
        return 1;
    }
    int shown = PQntuples(res);
    const char *total = shown ? PQgetvalue(res, 0, k->ncols) : "0";
    if (json) {
        printf("{");
        if (group) {
            printf("\"group\":");
            admin_json_str(group);
            printf(",");
        }
        printf("\"total\":%s,\"shown\":%d,\"%s\":[", total, shown, k->table);
        for (int i = 0; i < shown; i++) {
            printf("%s{", i ? "," : "");
            for (int c = 0; c < k->ncols; c++) {
                printf("%s\"%s\":", c ? "," : "", k->cols[c].name);
                if (PQgetisnull(res, i, c))
                    printf("null");
                else if (k->cols[c].num)
                    printf("%s", PQgetvalue(res, i, c));
                else
                    admin_json_str(PQgetvalue(res, i, c));
            }
            printf("}");
        }
        printf("]}\n");
    } else {
        for (int c = 0; c < k->ncols; c++) {
            upper(k->cols[c].name);
            printf("%*s", k->cols[c].width ? k->cols[c].width + 1 - (int)strlen(k->cols[c].name) : 0, "");
        }
        printf("\n");
        for (int i = 0; i < shown; i++) {
            for (int c = 0; c < k->ncols; c++) {
                const char *v = PQgetisnull(res, i, c) ? "-" : PQgetvalue(res, i, c);
                int w = k->cols[c].width;
                if (!w)
                    printf("%s", v);
                else if (k->cols[c].num)
                    printf("%-*s ", w, v);
                else
                    printf("%-*.*s ", w, w, v);
            }
            printf("\n");
        }
        char of_group[300] = "";
        if (group)
            snprintf(of_group, sizeof(of_group), " of group %s", group);
        if (atol(total) == shown)
            printf("(%d %s%s%s)\n", shown, k->noun, shown == 1 ? "" : "s", of_group);
        else
            printf("(%d shown of %s %ss%s; --limit 0 shows them all)\n", shown, total, k->noun, of_group);
    }
    PQclear(res);
    return 0;
}

/* retry (the relay's dead letters only), drop and prune, each one statement, so one transaction.
 * Retry moves rows back to the outbox with their message id and envelope: they get new outbox ids
 * (so they go out after what is queued; the claim floor never looks below ids it has passed) and
 * carry their attempts, which the relay counts on if they fail again. */
static int dl_change(relay_t *r, const dl_kind_t *k, PGconn *pg, const char *cmd, const char *id,
                     const char *group, long long older_than_s) {
    char sql[1024], where[256], age[32];
    const char *p[2];
    int np = 0;
    size_t n = (size_t)snprintf(where, sizeof(where), "WHERE true");
    if (group) {
        p[np++] = group;
        n += (size_t)snprintf(where + n, sizeof(where) - n, " AND consumer = $%d", np);
    }
    if (id) {
        p[np++] = id;
        snprintf(where + n, sizeof(where) - n, " AND id = $%d::bigint", np);
    } else if (older_than_s > 0) {
        snprintf(age, sizeof(age), "%lld", older_than_s);
        p[np++] = age;
        snprintf(where + n, sizeof(where) - n, " AND %s < now() - $%d::bigint * interval '1 second'", k->time_col,
                 np);
    }
    if (!strcmp(cmd, "retry"))
        snprintf(sql, sizeof(sql),
                 "WITH d AS (DELETE FROM %s.%s %s RETURNING *)"
                 " INSERT INTO %s.messages (message_id, destination, partition_key, message_type, envelope,"
                 " created_at, attempts) SELECT coalesce(message_id, gen_random_uuid()), destination, partition_key,"
                 " coalesce(message_type, ''), envelope, created_at, attempts FROM d ORDER BY id",
                 r->schema_q, k->table, where, r->schema_q);
    else
        snprintf(sql, sizeof(sql), "DELETE FROM %s.%s %s", r->schema_q, k->table, where);
    PGresult *res = PQexecParams(pg, sql, np, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        dl_failed(r, k, cmd, res);
        PQclear(res);
        return 1;
    }
    long rows = atol(PQcmdTuples(res));
    PQclear(res);
    if (id && rows == 0) {
        fprintf(stderr, "outbox-relay: no %s with id %s%s%s in %s.%s (see %s list)\n", k->noun, id,
                group ? " of group " : "", group ? group : "", r->schema_q, k->table, k->verb);
        return 1;
    }
    printf("%s %ld %s%s\n", !strcmp(cmd, "retry") ? "moved back to the outbox:" : !strcmp(cmd, "drop") ?
           "dropped:" : "pruned:", rows, k->noun, rows == 1 ? "" : "s");
    return 0;
}

static bool is_id(const char *s) {
    if (!*s || strlen(s) > 18)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* "7d", "12h", "30m", "45s": a whole number above 0 and one unit, in seconds; -1 otherwise. */
static long long parse_duration(const char *s) {
    long long n = 0;
    const char *d = s;
    for (; *d >= '0' && *d <= '9'; d++) {
        if (d - s >= 9)
            return -1;
        n = n * 10 + (*d - '0');
    }
    if (d == s || n == 0 || !d[0] || d[1])
        return -1;
    switch (*d) {
    case 's': return n;
    case 'm': return n * 60;
    case 'h': return n * 3600;
    case 'd': return n * 86400;
    default: return -1;
    }
}

static int dl_main(relay_t *r, const dl_kind_t *k, int argc, const char **argv) {
    if (argc < 1) {
        fprintf(stderr, "outbox-relay: %s needs a command; %s\n", k->verb, k->usage);
        return 2;
    }
    const char *cmd = argv[0], *limit = "100", *id = NULL, *group = NULL;
    bool list = !strcmp(cmd, "list"), retry = !k->by_group && !strcmp(cmd, "retry"),
         drop = !strcmp(cmd, "drop"), prune = !strcmp(cmd, "prune");
    if (!list && !retry && !drop && !prune) {
        fprintf(stderr, "outbox-relay: %s: unknown command \"%s\"; %s\n", k->verb, cmd, k->usage);
        return 2;
    }
    bool all = false, yes = false, json = false;
    long long older = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool valued = !strcmp(a, "--limit") || !strcmp(a, "--older-than") || !strcmp(a, "--group");
        if (valued && !v) {
            fprintf(stderr, "outbox-relay: %s %s: %s needs a value; %s\n", k->verb, cmd, a, k->usage);
            return 2;
        }
        if (list && !strcmp(a, "--limit")) {
            if (!is_id(v)) {
                fprintf(stderr, "outbox-relay: %s list: --limit \"%s\" is not a number of rows; give a whole "
                                "number such as --limit 50, or --limit 0 for all of them\n", k->verb, v);
                return 2;
            }
            limit = strspn(v, "0") == strlen(v) ? NULL : v; /* 0: no limit (LIMIT NULL) */
            i++;
        } else if (prune && !strcmp(a, "--older-than")) {
            if ((older = parse_duration(v)) < 0) {
                fprintf(stderr, "outbox-relay: %s prune: --older-than \"%s\" is not a duration; give a whole "
                                "number above 0 and one unit: 45s, 30m, 12h or 7d\n", k->verb, v);
                return 2;
            }
            i++;
        } else if (k->by_group && !strcmp(a, "--group")) {
            if (!*v) {
                fprintf(stderr, "outbox-relay: %s %s: --group needs a consumer group name\n", k->verb, cmd);
                return 2;
            }
            group = argv[++i];
        } else if (list && !strcmp(a, "--json")) {
            json = true;
        } else if ((retry || drop) && !strcmp(a, "--all")) {
            all = true;
        } else if (drop && !strcmp(a, "--yes")) {
            yes = true;
        } else if ((retry || drop) && !id && a[0] != '-') {
            if (!is_id(a)) {
                fprintf(stderr, "outbox-relay: %s %s: \"%s\" is not an id (a whole number from the ID column "
                                "of %s list)\n", k->verb, cmd, a, k->verb);
                return 2;
            }
            id = a;
        } else {
            fprintf(stderr, "outbox-relay: %s %s: bad argument \"%s\"; %s\n", k->verb, cmd, a, k->usage);
            return 2;
        }
    }
    if ((retry || drop) && !!id == all) {
        fprintf(stderr, "outbox-relay: %s %s: give one ID or --all; %s\n", k->verb, cmd, k->usage);
        return 2;
    }
    if (drop && all && !yes) {
        fprintf(stderr, "outbox-relay: %s drop --all deletes every %s%s for good; add --yes to confirm\n",
                k->verb, k->noun, k->by_group ? " of the group" : "");
        return 2;
    }
    if (prune && !older) {
        fprintf(stderr, "outbox-relay: %s prune needs --older-than DURATION (e.g. 7d, 12h, 30m)\n", k->verb);
        return 2;
    }
    if (k->by_group && !group) {
        fprintf(stderr, "outbox-relay: %s %s needs --group GROUP (the consumer.group.id whose rejected "
                        "messages to %s)\n", k->verb, cmd, list ? "show" : "delete");
        return 2;
    }
    PGconn *pg = relay_connect(r);
    if (!pg)
        return 1;
    int rc = list ? dl_list(r, k, pg, limit, group, json) : dl_change(r, k, pg, cmd, id, group, older);
    PQfinish(pg);
    return rc;
}

int relay_dead_letters(relay_t *r, int argc, const char **argv) {
    return dl_main(r, &relay_dl, argc, argv);
}

int relay_consumer_dead_letters(relay_t *r, int argc, const char **argv) {
    return dl_main(r, &consumer_dl, argc, argv);
}

