/*
 * admin.c: the one-shot verbs migrate (apply the schema), status (backlog, oldest age, dead
 * letters, the leader, open writers) and grants; the dead-letter verbs are in deadletters.c.
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
    int rc = 0, before = 0;
    /* Read first, to say whether anything changed: any role granted by `grants` may check. */
    if (outbox_schema_version(ob, pg, &before) != OUTBOX_OK || outbox_migrate(ob, pg) != OUTBOX_OK) {
        fprintf(stderr, "outbox-relay: migrate failed: %s\n", outbox_errmsg(ob));
        rc = 1;
    } else if (outbox_conf_wal(r->conf) && wal_migrate(r, pg)) {
        rc = 1; /* the schema is current; what the stream needs was named above */
    } else if (before == OUTBOX_SCHEMA_VERSION) {
        printf("schema %s is at version %d (already current; nothing changed)\n", r->schema_q, before);
    } else {
        printf("schema %s is at version %d (migrated from version %d)\n", r->schema_q, OUTBOX_SCHEMA_VERSION,
               before);
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

void admin_json_str(const char *s) {
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

/* The leader relay's own process, as its session names it in application_name:
 * "<relay.application.name> pid=<pid> host=<hostname>" (PostgreSQL keeps 63 bytes of it, so a
 * long host name may arrive cut short).  The session's backend pid and client address are
 * PostgreSQL's side of the connection, not the relay. */
typedef struct {
    char pid[16];  /* digits, or empty: not named */
    char host[64]; /* or empty */
} leader_t;

static void leader_parse(const char *app, leader_t *out) {
    memset(out, 0, sizeof(*out));
    const char *p = strstr(app, " pid=");
    if (!p)
        return;
    p += 5;
    size_t n = strspn(p, "0123456789");
    if (n == 0 || n >= sizeof(out->pid) || (p[n] && p[n] != ' '))
        return;
    memcpy(out->pid, p, n);
    const char *h = strstr(p + n, " host=");
    if (h) {
        h += 6;
        size_t hn = strcspn(h, " ");
        if (hn >= sizeof(out->host))
            hn = sizeof(out->host) - 1;
        memcpy(out->host, h, hn);
    }
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
    PGresult *a = NULL, *b = NULL, *c = NULL, *w = NULL, *pk = NULL;
    leader_t ld = {0};
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
    pk = parked_query(r, pg);
    if (PQresultStatus(pk) != PGRES_TUPLES_OK && version < 3) {
        PQclear(pk); /* a schema from before parking: nothing can be parked */
        pk = PQmakeEmptyPGresult(pg, PGRES_TUPLES_OK);
    }
    if (PQresultStatus(pk) != PGRES_TUPLES_OK) {
        fprintf(stderr, "outbox-relay: status: reading the parked keys failed: %s", PQresultErrorMessage(pk));
        if (!strcmp(PQresultErrorField(pk, PG_DIAG_SQLSTATE) ? PQresultErrorField(pk, PG_DIAG_SQLSTATE) : "",
                    "42501"))
            fprintf(stderr, "outbox-relay: status needs SELECT on %s.parked_keys and parked_messages: apply "
                            "`outbox-relay grants --relay ROLE` again as the schema's owner\n", r->schema_q);
        goto done;
    }
    if (PQntuples(c))
        leader_parse(PQgetvalue(c, 0, 0), &ld);
    bool wal = outbox_conf_wal(r->conf);
    if (json) {
        printf("{\"schema\":");
        admin_json_str(r->schema);
        printf(",\"schema_version\":%d,\"backlog\":%s,\"oldest_age_seconds\":%s,\"dead_letters\":%s,"
               "\"leader\":", version, PQgetvalue(a, 0, 0), PQgetvalue(a, 0, 1), PQgetvalue(b, 0, 0));
        if (PQntuples(c)) {
            printf("{\"pid\":%s,\"host\":", ld.pid[0] ? ld.pid : "null");
            if (ld.host[0])
                admin_json_str(ld.host);
            else
                printf("null");
            printf(",\"application_name\":");
            admin_json_str(PQgetvalue(c, 0, 0));
            printf(",\"backend_pid\":%s,\"client_addr\":", PQgetvalue(c, 0, 1));
            admin_json_str(PQgetvalue(c, 0, 2));
            printf("}");
        } else {
            printf("null");
        }
        printf(",\"open_writers\":[");
        for (int i = 0; i < PQntuples(w); i++) {
            printf("%s{\"pid\":", i ? "," : "");
            admin_json_str(PQgetvalue(w, i, 0));
            printf(",\"application_name\":");
            admin_json_str(PQgetvalue(w, i, 1));
            printf(",\"state\":");
            admin_json_str(PQgetvalue(w, i, 2));
            printf(",\"xact_age_seconds\":%s}", PQgetvalue(w, i, 3));
        }
        printf("],\"parked_keys\":");
        parked_print(pk, true, false);
        if (wal)
            wal_status_print(r, pg, true);
        printf("}\n");
    } else {
        /* The same names as the JSON fields; open_writer is one element of open_writers. */
        printf("schema:          %s\n", r->schema);
        printf("schema_version:  %d\n", version);
        printf("backlog:         %s\n", PQgetvalue(a, 0, 0));
        printf("oldest_age_seconds: %s\n", PQgetvalue(a, 0, 1));
        printf("dead_letters:    %s\n", PQgetvalue(b, 0, 0));
        if (PQntuples(c))
            printf("leader:          pid=%s host=%s application_name=\"%s\" backend_pid=%s client_addr=%s\n",
                   ld.pid[0] ? ld.pid : "unknown", ld.host[0] ? ld.host : "unknown", PQgetvalue(c, 0, 0),
                   PQgetvalue(c, 0, 1), PQgetvalue(c, 0, 2));
        else
            printf("leader:          none\n");
        if (wal)
            wal_status_print(r, pg, false);
        printf("parked_keys:     %d\n", PQntuples(pk));
        parked_print(pk, false, true);
        /* An open writer holds the claim floor: claims then step over more deleted rows. */
        for (int i = 0; i < PQntuples(w); i++)
            printf("open_writer:     pid=%s application_name=%s state=\"%s\" xact_age_seconds=%s\n",
                   PQgetvalue(w, i, 0), PQgetvalue(w, i, 1), PQgetvalue(w, i, 2), PQgetvalue(w, i, 3));
    }
    rc = 0;
done:
    PQclear(a);
    PQclear(b);
    PQclear(c);
    PQclear(w);
    PQclear(pk);
    outbox_destroy(ob);
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

/* The least-privilege roles.  Every role may read schema_version, so that outbox_migrate() on a
 * current schema and outbox_schema_version() work at its start-up; only the schema's owner
 * migrates.  A writer may only insert into the outbox.  The relay's role is also the operator's
 * for outbox-relay's verbs: it reads and deletes outbox rows, writes dead letters, and moves them
 * back (INSERT on messages), drops and prunes them and the consumers' (advisory locks need no
 * grant).  A consumer records processed messages and rejections and may reply through the outbox. */
static const struct {
    const char *flag, *comment;
    const char *grants[10][2]; /* {privileges, table} */
} role_specs[] = {
    {"--writer", "writer: outbox_send(); outbox_migrate() on a current schema (a check), outbox_schema_version()",
     {{"INSERT", "messages"}, {"SELECT", "schema_version"}}},
    {"--relay", "relay: outbox-relay run, status, dead-letters list|retry|drop|prune, "
                "consumer-dead-letters list|drop|prune, parked list|retry|drop, consumer-parked list|retry|drop",
     {{"SELECT, INSERT, DELETE", "messages"}, {"SELECT, INSERT, UPDATE, DELETE", "dead_letters"},
      {"SELECT, INSERT, DELETE", "consumer_dead_letters"}, {"SELECT, INSERT, UPDATE, DELETE", "parked_keys"},
      {"SELECT, INSERT, DELETE", "parked_messages"}, {"SELECT, INSERT, UPDATE, DELETE", "claim_state"},
      {"SELECT, UPDATE, DELETE", "consumer_parked"}, {"SELECT, INSERT, UPDATE", "wal_state"},
      {"SELECT", "schema_version"}}},
    {"--consumer", "consumer: outbox_consumer_*() with outbox_reply(); outbox_migrate() on a current schema "
                   "(a check), outbox_schema_version()",
     {{"SELECT, INSERT, DELETE", "processed"}, {"INSERT", "consumer_dead_letters"}, {"INSERT", "messages"},
      {"SELECT, INSERT, UPDATE, DELETE", "consumer_parked"}, {"SELECT", "schema_version"}}},
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
    bool wal = outbox_conf_wal(r->conf);
    printf("-- Least-privilege roles for the outbox in schema %s (liboutbox %s).\n"
           "-- Apply as the owner of the schema, e.g.: outbox-relay grants ... | psql\n"
           "-- The owner runs `outbox-relay migrate` (or outbox_migrate() on an older schema); every\n"
           "-- role below may call outbox_migrate() on a current schema, which only reads.\nBEGIN;\n",
           s, outbox_version_str());
    for (int k = 0; k < ROLE_KINDS; k++) {
        const char *q = quoted[k];
        if (!q)
            continue;
        print_role(names[k], q, role_specs[k].comment);
        printf("GRANT USAGE ON SCHEMA %s TO %s;\n", s, q);
        for (int g = 0; g < 10 && role_specs[k].grants[g][0]; g++)
            printf("GRANT %s ON %s.%s TO %s;\n", role_specs[k].grants[g][0], s, role_specs[k].grants[g][1], q);
        if (wal && !strcmp(role_specs[k].flag, "--relay")) {
            printf("-- outbox.mode=wal: the relay streams from a replication slot (needs a superuser to apply)\n"
                   "ALTER ROLE %s REPLICATION;\n", q);
            /* Messages of a parked key get their parked_messages ids from the table's identity. */
            printf("DO $outbox$ BEGIN\n  EXECUTE format('GRANT USAGE ON SEQUENCE %%s TO %%s', "
                   "pg_get_serial_sequence(");
            char table[300];
            snprintf(table, sizeof(table), "%s.messages", s);
            print_literal(table);
            printf(", 'id'), ");
            print_literal(q);
            printf(");\nEND $outbox$;\n");
        }
    }
    printf("COMMIT;\n");
done:
    for (int k = 0; k < ROLE_KINDS; k++)
        free(quoted[k]);
    return rc;
}
