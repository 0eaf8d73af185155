/*
 * The one-shot verbs: migrate (apply the schema) and status (backlog, oldest age, dead letters,
 * the current leader).
 */
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#include "relay.h"

/* A library handle on a copy of the relay's configuration (its schema, its log callback), for
 * the schema calls; NULL after saying why on stderr, after "outbox-relay: <what>: ". */
static outbox_t *admin_handle(const relay_t *r, const char *what) {
    /* outbox_new(NULL) would mean the default schema, not the configured one: never pass it. */
    outbox_conf_t *conf = outbox_conf_dup(r->conf);
    if (!conf) {
        fprintf(stderr, "outbox-relay: %s: out of memory copying the configuration\n", what);
        return NULL;
    }
    char err[512];
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (!ob) {
        fprintf(stderr, "outbox-relay: %s: %s\n", what, err);
        outbox_conf_destroy(conf); /* outbox_new takes it only on success */
    }
    return ob;
}

int relay_migrate(relay_t *r) {
    outbox_t *ob = admin_handle(r, "migrate failed");
    if (!ob)
        return 1;
    PGconn *pg = relay_connect(r);
    if (!pg) {
        outbox_destroy(ob);
        return 1;
    }
    int rc = 0;
    if (outbox_migrate(ob, pg) != OUTBOX_OK) {
        fprintf(stderr, "outbox-relay: migrate failed: %s\n", outbox_errmsg(ob));
        rc = 1;
    } else {
        printf("schema %s is at version %d\n", r->schema_q, OUTBOX_SCHEMA_VERSION);
    }
    outbox_destroy(ob);
    PQfinish(pg);
    return rc;
}

static PGresult *query(PGconn *pg, const char *sql, int nparams, const char *const *params) {
    PGresult *res = PQexecParams(pg, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "outbox-relay: status query failed: %s", PQresultErrorMessage(res));
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Writes s as a JSON string (quoted, escaped). */
static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int relay_status(relay_t *r, int argc, const char **argv) {
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else {
            fprintf(stderr, "outbox-relay: status: unknown argument \"%s\" (expected --json)\n", argv[i]);
            return 2;
        }
    }
    outbox_t *ob = admin_handle(r, "status");
    if (!ob)
        return 1;
    PGconn *pg = relay_connect(r);
    if (!pg) {
        outbox_destroy(ob);
        return 1;
    }
    char sql[1024], lock[160];
    int rc = 1, version = 0;
    PGresult *a = NULL, *b = NULL, *c = NULL, *w = NULL;
    if (outbox_schema_version(ob, pg, &version) != OUTBOX_OK) {
        fprintf(stderr, "outbox-relay: status: %s\n", outbox_errmsg(ob));
        goto done;
    }
    if (version == 0) {
        fprintf(stderr, "outbox-relay: status: schema %s does not exist; run outbox-relay migrate\n",
                r->schema_q);
        goto done;
    }
    snprintf(sql, sizeof(sql),
             "SELECT count(*), coalesce(round(extract(epoch FROM now() - min(created_at))::numeric, 3), 0)"
             " FROM %s.messages", r->schema_q);
    if (!(a = query(pg, sql, 0, NULL)))
        goto done;
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.dead_letters", r->schema_q);
    if (!(b = query(pg, sql, 0, NULL)))
        goto done;
    relay_lock_name(r, lock, sizeof(lock));
    const char *p[1] = {lock};
    if (!(c = query(pg,
                    "SELECT coalesce(a.application_name, ''), l.pid, coalesce(host(a.client_addr), 'local')"
                    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
                    1, p)))
        goto done;
    /* Transactions that wrote to the outbox and have been open for a second or more: they hold
     * the relay's claim floor (relay/floor.c) until they end.  Prepared ones have no session. */
    char table[160];
    snprintf(table, sizeof(table), "%s.messages", r->schema_q);
    const char *tp[1] = {table};
    if (!(w = query(pg,
                    "SELECT coalesce(a.pid::text, 'prepared'), coalesce(a.application_name, ''),"
                    " coalesce(a.state, 'prepared'), coalesce(extract(epoch FROM now() - coalesce(a.xact_start,"
                    "  x.prepared))::bigint, 0)"
                    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                    " LEFT JOIN pg_prepared_xacts x ON l.pid IS NULL AND x.transaction::text ="
                    "  split_part(l.virtualtransaction, '/', 2)"
                    " WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted"
                    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    " AND l.relation IN ($1::text::regclass, pg_get_serial_sequence($1::text, 'id')::regclass)"
                    " AND l.pid IS DISTINCT FROM pg_backend_pid()"
                    " AND coalesce(a.xact_start, x.prepared) < now() - interval '1 second'"
                    " GROUP BY 1, 2, 3, 4 ORDER BY 4 DESC LIMIT 20",
                    1, tp)))
        goto done;
    if (json) {
        printf("{\"schema\":");
        json_str(r->schema);
        printf(",\"schema_version\":%d,\"backlog\":%s,\"oldest_age_seconds\":%s,\"dead_letters\":%s,"
               "\"leader\":", version, PQgetvalue(a, 0, 0), PQgetvalue(a, 0, 1), PQgetvalue(b, 0, 0));
        if (PQntuples(c)) {
            printf("{\"application_name\":");
            json_str(PQgetvalue(c, 0, 0));
            printf(",\"pid\":%s,\"host\":", PQgetvalue(c, 0, 1));
            json_str(PQgetvalue(c, 0, 2));
            printf("}");
        } else {
            printf("null");
        }
        printf(",\"open_writers\":[");
        for (int i = 0; i < PQntuples(w); i++) {
            printf("%s{\"pid\":", i ? "," : "");
            json_str(PQgetvalue(w, i, 0));
            printf(",\"application_name\":");
            json_str(PQgetvalue(w, i, 1));
            printf(",\"state\":");
            json_str(PQgetvalue(w, i, 2));
            printf(",\"xact_age_seconds\":%s}", PQgetvalue(w, i, 3));
        }
        printf("]}\n");
    } else {
        printf("schema:          %s (version %d)\n", r->schema_q, version);
        printf("backlog:         %s\n", PQgetvalue(a, 0, 0));
        printf("oldest_age_s:    %s\n", PQgetvalue(a, 0, 1));
        printf("dead_letters:    %s\n", PQgetvalue(b, 0, 0));
        if (PQntuples(c))
            printf("leader:          %s pid=%s host=%s\n", PQgetvalue(c, 0, 0), PQgetvalue(c, 0, 1),
                   PQgetvalue(c, 0, 2));
        else
            printf("leader:          none\n");
        /* An open writer holds the claim floor: claims then step over more deleted rows. */
        for (int i = 0; i < PQntuples(w); i++)
            printf("open_writer:     pid=%s application_name=%s state=\"%s\" xact_age_s=%s\n",
                   PQgetvalue(w, i, 0), PQgetvalue(w, i, 1), PQgetvalue(w, i, 2), PQgetvalue(w, i, 3));
    }
    rc = 0;
done:
    PQclear(a);
    PQclear(b);
    PQclear(c);
    PQclear(w);
    outbox_destroy(ob);
    PQfinish(pg);
    return rc;
}

static int dl_list(relay_t *r, PGconn *pg, const char *limit) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT id, coalesce(message_id::text, ''), destination, coalesce(message_type, ''),"
             " to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), attempts,"
             " octet_length(envelope), error FROM %s.dead_letters ORDER BY id LIMIT $1::bigint", r->schema_q);
    const char *p[1] = {limit};
    PGresult *res = query(pg, sql, 1, p);
    if (!res)
        return 1;
    printf("%-10s %-36s %-24s %-24s %-20s %-8s %-9s %s\n", "ID", "MESSAGE_ID", "DESTINATION", "TYPE",
           "FAILED_AT", "ATTEMPTS", "BYTES", "ERROR");
    for (int i = 0; i < PQntuples(res); i++)
        printf("%-10s %-36s %-24.24s %-24.24s %-20s %-8s %-9s %s\n", PQgetvalue(res, i, 0),
               PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
               PQgetvalue(res, i, 5), PQgetvalue(res, i, 6), PQgetvalue(res, i, 7));
    printf("(%d dead letter%s)\n", PQntuples(res), PQntuples(res) == 1 ? "" : "s");
    PQclear(res);
    return 0;
}

/* Retry: move rows back to the outbox in one statement (so one transaction); they get new ids
 * and go out after what is already queued.  Drop: delete them. */
static int dl_move(relay_t *r, PGconn *pg, bool retry, const char *id) {
    char sql[1024];
    const char *where = id ? "WHERE id = $1::bigint" : "";
    if (retry)
        snprintf(sql, sizeof(sql),
                 "WITH d AS (DELETE FROM %s.dead_letters %s RETURNING *)"
                 " INSERT INTO %s.messages (message_id, destination, partition_key, message_type, envelope,"
                 " created_at) SELECT coalesce(message_id, gen_random_uuid()), destination, partition_key,"
                 " coalesce(message_type, ''), envelope, created_at FROM d ORDER BY id",
                 r->schema_q, where, r->schema_q);
    else
        snprintf(sql, sizeof(sql), "DELETE FROM %s.dead_letters %s", r->schema_q, where);
    const char *p[1] = {id};
    PGresult *res = PQexecParams(pg, sql, id ? 1 : 0, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        fprintf(stderr, "outbox-relay: dead-letters %s failed: %s", retry ? "retry" : "drop",
                PQresultErrorMessage(res));
        PQclear(res);
        return 1;
    }
    long n = atol(PQcmdTuples(res));
    PQclear(res);
    if (id && n == 0) {
        fprintf(stderr, "outbox-relay: no dead letter with id %s in %s.dead_letters (see dead-letters list)\n",
                id, r->schema_q);
        return 1;
    }
    printf("%s %ld dead letter%s\n", retry ? "moved back to the outbox:" : "dropped:", n, n == 1 ? "" : "s");
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

int relay_dead_letters(relay_t *r, int argc, const char **argv) {
    static const char usage[] = "expected: dead-letters list [--limit N] | retry ID|--all | drop ID|--all --yes";
    if (argc < 1) {
        fprintf(stderr, "outbox-relay: dead-letters needs a command; %s\n", usage);
        return 2;
    }
    const char *cmd = argv[0], *limit = "100", *id = NULL;
    bool all = false, yes = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--limit") && i + 1 < argc && is_id(argv[i + 1]) && !strcmp(cmd, "list"))
            limit = argv[++i];
        else if (!strcmp(argv[i], "--all"))
            all = true;
        else if (!strcmp(argv[i], "--yes"))
            yes = true;
        else if (is_id(argv[i]) && !id)
            id = argv[i];
        else {
            fprintf(stderr, "outbox-relay: dead-letters %s: bad argument \"%s\"; %s\n", cmd, argv[i], usage);
            return 2;
        }
    }
    bool list = !strcmp(cmd, "list"), retry = !strcmp(cmd, "retry"), drop = !strcmp(cmd, "drop");
    if (!list && !retry && !drop) {
        fprintf(stderr, "outbox-relay: dead-letters: unknown command \"%s\"; %s\n", cmd, usage);
        return 2;
    }
    if (!list && !!id == all) {
        fprintf(stderr, "outbox-relay: dead-letters %s: give one ID or --all; %s\n", cmd, usage);
        return 2;
    }
    if (drop && all && !yes) {
        fprintf(stderr, "outbox-relay: dead-letters drop --all deletes every dead letter for good; "
                        "add --yes to confirm\n");
        return 2;
    }
    PGconn *pg = relay_connect(r);
    if (!pg)
        return 1;
    int rc = list ? dl_list(r, pg, limit) : dl_move(r, pg, retry, id);
    PQfinish(pg);
    return rc;
}

/* Appends ident quoted as an SQL literal ('it''s') to out. */
static void print_literal(const char *s) {
    putchar('\'');
    for (; *s; s++) {
        if (*s == '\'')
            putchar('\'');
        putchar(*s);
    }
    putchar('\'');
}

/* role: the name; q: the same quoted as an identifier. */
static void print_role(const char *role, const char *q, const char *what) {
    printf("-- %s\nDO $outbox$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = ", what);
    print_literal(role);
    printf(") THEN\n    CREATE ROLE %s LOGIN;\n  END IF;\nEND $outbox$;\n", q);
}

/* The least-privilege roles: a writer may only insert into the outbox; the relay may read and
 * delete outbox rows and write dead letters (advisory locks need no grant; dead-letters
 * retry/drop are operator actions for the schema owner); a consumer records processed messages
 * and rejections and may reply through the outbox. */
static const struct {
    const char *flag, *comment;
    const char *grants[4][2]; /* {privileges, table} */
} role_specs[] = {
    {"--writer", "writer: may add messages, nothing else", {{"INSERT", "messages"}}},
    {"--relay", "relay: reads and deletes outbox rows, writes dead letters",
     {{"SELECT, DELETE", "messages"}, {"SELECT, INSERT, UPDATE", "dead_letters"}, {"SELECT", "schema_version"}}},
    {"--consumer", "consumer: records processed messages and rejections, may reply through the outbox",
     {{"SELECT, INSERT, DELETE", "processed"}, {"INSERT", "consumer_dead_letters"}, {"INSERT", "messages"}}},
};
#define ROLE_KINDS ((int)(sizeof(role_specs) / sizeof(role_specs[0])))

/* Prints the SQL that creates the roles named on the command line, for this schema. */
int relay_grants(relay_t *r, int argc, const char **argv) {
    const char *names[ROLE_KINDS] = {NULL};
    bool any = false;
    for (int i = 0; i < argc; i++) {
        int k = 0;
        while (k < ROLE_KINDS && strcmp(argv[i], role_specs[k].flag))
            k++;
        if (k == ROLE_KINDS || i + 1 >= argc || !*argv[i + 1] || strlen(argv[i + 1]) > OUTBOX_IDENT_MAX) {
            fprintf(stderr, "outbox-relay: grants: bad argument \"%s\"; expected --writer ROLE, --relay ROLE "
                            "and/or --consumer ROLE (role names of 1 to %d bytes)\n", argv[i], OUTBOX_IDENT_MAX);
            return 2;
        }
        names[k] = argv[++i];
        any = true;
    }
    if (!any) {
        fprintf(stderr, "outbox-relay: grants: name at least one of --writer ROLE, --relay ROLE, --consumer ROLE\n");
        return 2;
    }
    /* Quoted before anything is printed, so that a failure prints no script rather than half of one. */
    char *quoted[ROLE_KINDS] = {NULL};
    int rc = 0;
    for (int k = 0; k < ROLE_KINDS; k++) {
        if (names[k] && !(quoted[k] = outbox_quote_ident(names[k]))) {
            fprintf(stderr, "outbox-relay: grants: out of memory\n");
            rc = 1;
            goto done;
        }
    }
    const char *s = r->schema_q;
    printf("-- Least-privilege roles for the outbox in schema %s (liboutbox %s).\n"
           "-- Apply as the owner of the schema, e.g.: outbox-relay grants ... | psql\nBEGIN;\n",
           s, outbox_version_str());
    for (int k = 0; k < ROLE_KINDS; k++) {
        const char *q = quoted[k];
        if (!q)
            continue;
        print_role(names[k], q, role_specs[k].comment);
        printf("GRANT USAGE ON SCHEMA %s TO %s;\n", s, q);
        for (int g = 0; g < 4 && role_specs[k].grants[g][0]; g++)
            printf("GRANT %s ON %s.%s TO %s;\n", role_specs[k].grants[g][0], s, role_specs[k].grants[g][1], q);
    }
    printf("COMMIT;\n");
done:
    for (int k = 0; k < ROLE_KINDS; k++)
        free(quoted[k]);
    return rc;
}
