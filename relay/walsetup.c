/*
 * walsetup.c: what `migrate` adds in outbox.mode=wal (the server's settings checked, then the
 * publication and the logical slot created), and `slot-recreate`, the one way to replace a lost
 * slot, which says what was lost.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "walproto.h"

/* Runs sql with params; the result if it has tuples or is a command, else NULL and the error
 * printed after what. */
static PGresult *run(PGconn *pg, const char *sql, int n, const char *const *p, const char *what) {
    PGresult *res = PQexecParams(pg, sql, n, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    fprintf(stderr, "outbox-relay: %s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return NULL;
}

/* The server settings and role attribute the stream needs: 0, or 1 with each failure named. */
static int preconditions(PGconn *pg) {
    PGresult *res = run(pg, "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
                        " current_setting('max_wal_senders')::int, current_user,"
                        " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
                        0, NULL, "reading the server's settings");
    if (!res)
        return 1;
    int bad = 0;
    if (strcmp(PQgetvalue(res, 0, 0), "logical")) {
        fprintf(stderr, "outbox-relay: migrate: wal_level is '%s'; outbox.mode=wal needs wal_level=logical: run "
                "ALTER SYSTEM SET wal_level = logical as a superuser (or set it in postgresql.conf), then "
                "restart PostgreSQL (a reload is not enough)\n", PQgetvalue(res, 0, 0));
        bad = 1;
    }
    if (atoi(PQgetvalue(res, 0, 1)) < 1 || atoi(PQgetvalue(res, 0, 2)) < 1) {
        fprintf(stderr, "outbox-relay: migrate: max_replication_slots is %s and max_wal_senders is %s; both "
                "must be at least 1 (one slot and one sender per outbox): set them and restart PostgreSQL\n",
                PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
        bad = 1;
    }
    if (strcmp(PQgetvalue(res, 0, 4), "t")) {
        fprintf(stderr, "outbox-relay: migrate: role %s lacks the REPLICATION attribute, which creating and "
                "reading a slot needs: run ALTER ROLE %s REPLICATION as a superuser (the relay's role needs "
                "it too: see outbox-relay grants)\n", PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 3));
        bad = 1;
    }
    PQclear(res);
    return bad;
}

int wal_migrate(relay_t *r, PGconn *pg) {
    char slot[OUTBOX_WAL_NAME_SIZE], pub[OUTBOX_WAL_NAME_SIZE], sql[256];
    outbox_wal_slot_name(r->conf, slot, sizeof(slot));
    outbox_wal_publication(r->schema, pub, sizeof(pub));
    if (preconditions(pg))
        return 1;
    const char *p1[1] = {pub};
    PGresult *res = run(pg, "SELECT 1 FROM pg_publication WHERE pubname = $1", 1, p1, "reading publications");
    if (!res)
        return 1;
    bool have_pub = PQntuples(res) > 0;
    PQclear(res);
    if (!have_pub) {
        /* A publication of no tables: pgoutput needs one to start, and logical messages need none. */
        char *q = PQescapeIdentifier(pg, pub, strlen(pub));
        snprintf(sql, sizeof(sql), "CREATE PUBLICATION %s", q ? q : "\"\"");
        PQfreemem(q);
        if (!(res = run(pg, sql, 0, NULL, "creating the publication (the role needs CREATE on the database)")))
            return 1;
        PQclear(res);
        printf("created publication %s\n", pub);
    }
    const char *p2[1] = {slot};
    if (!(res = run(pg, "SELECT wal_status, plugin FROM pg_replication_slots WHERE slot_name = $1", 1, p2,
                    "reading replication slots")))
        return 1;
    int rc = 0;
    if (PQntuples(res) == 0) {
        PQclear(res);
        if (!(res = run(pg, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", 1, p2,
                        "creating the replication slot")))
            return 1;
        printf("created logical replication slot %s (pgoutput): messages are retained from now on\n", slot);
    } else if (!strcmp(PQgetvalue(res, 0, 0), "lost")) {
        fprintf(stderr, "outbox-relay: migrate: replication slot %s is lost; messages past its position are "
                "gone from the WAL. See README, 'A lost slot', then run outbox-relay slot-recreate "
                "--accept-loss\n", slot);
        rc = 1;
    } else if (strcmp(PQgetvalue(res, 0, 1), "pgoutput")) {
        fprintf(stderr, "outbox-relay: migrate: slot %s exists with plugin %s; set relay.slot.name to another "
                "name or drop it\n", slot, PQgetvalue(res, 0, 1));
        rc = 1;
    } else {
        printf("replication slot %s and publication %s are in place\n", slot, pub);
    }
    PQclear(res);
    return rc;
}

int relay_slot_recreate(relay_t *r, int argc, const char **argv) {
    char slot[OUTBOX_WAL_NAME_SIZE], lock[256], confirmed[32], lost_to[32];
    if (argc != 1 || strcmp(argv[0], "--accept-loss")) {
        fprintf(stderr, "outbox-relay: slot-recreate drops the outbox's replication slot and creates a new "
                "one at the current WAL position: every message between the old slot's position and now is "
                "never published. Pass --accept-loss to do it.\n");
        return 2;
    }
    outbox_wal_slot_name(r->conf, slot, sizeof(slot));
    PGconn *pg = relay_connect(r);
    if (!pg)
        return 1;
    relay_lock_name(r, lock, sizeof(lock));
    const char *p[2] = {lock, slot};
    int rc = 1;
    PGresult *res = run(pg, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", 1, p, "taking the leadership lock");
    if (!res)
        goto out;
    bool locked = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (!locked) {
        fprintf(stderr, "outbox-relay: slot-recreate: a relay leads this outbox; stop every relay of schema %s "
                "first\n", r->schema_q);
        goto out;
    }
    if (!(res = run(pg, "SELECT coalesce(confirmed_flush_lsn::text, '?'), pg_current_wal_lsn()::text,"
                    " wal_status FROM pg_replication_slots WHERE slot_name = $1", 1, p + 1, "reading the slot")))
        goto out;
    bool exists = PQntuples(res) > 0;
    snprintf(confirmed, sizeof(confirmed), "%s", exists ? PQgetvalue(res, 0, 0) : "?");
    snprintf(lost_to, sizeof(lost_to), "%s", exists ? PQgetvalue(res, 0, 1) : "?");
    PQclear(res);
    if (exists) {
        if (!(res = run(pg, "SELECT pg_drop_replication_slot($1)", 1, p + 1, "dropping the slot")))
            goto out;
        PQclear(res);
    }
    if (!(res = run(pg, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", 1, p + 1,
                    "creating the slot")))
        goto out;
    printf("re-created replication slot %s at %s.\n", slot, PQgetvalue(res, 0, 0));
    if (exists)
        printf("LOST: messages committed after %s and before %s were never published and cannot be read from "
               "the WAL again; find them in the writers' own tables and send them again.\n", confirmed, lost_to);
    PQclear(res);
    rc = 0;
out:
    PQfinish(pg);
    return rc;
}

void wal_status_print(relay_t *r, PGconn *pg, bool json) {
    char slot[OUTBOX_WAL_NAME_SIZE];
    outbox_wal_slot_name(r->conf, slot, sizeof(slot));
    const char *p[1] = {slot};
    PGresult *res = PQexecParams(pg, "SELECT coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, ''),"
                                 " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, 0),"
                                 " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, 0),"
                                 " coalesce(active_pid::text, '')"
                                 " FROM pg_replication_slots WHERE slot_name = $1", 1, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (json) {
        printf(",\"mode\":\"wal\",\"wal_slot\":");
        if (ok) {
            printf("{\"name\":");
            admin_json_str(slot);
            printf(",\"wal_status\":\"%s\",\"confirmed_lsn\":\"%s\",\"lag_bytes\":%s,\"retained_bytes\":%s,"
                   "\"active_pid\":%s}", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
                   PQgetvalue(res, 0, 3), *PQgetvalue(res, 0, 4) ? PQgetvalue(res, 0, 4) : "null");
        } else {
            printf("null");
        }
    } else if (ok) {
        printf("mode:            wal\n");
        printf("wal_slot:        name=%s wal_status=%s confirmed_lsn=%s lag_bytes=%s retained_bytes=%s "
               "active_pid=%s\n", slot, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
               PQgetvalue(res, 0, 3), *PQgetvalue(res, 0, 4) ? PQgetvalue(res, 0, 4) : "none");
    } else {
        printf("mode:            wal\nwal_slot:        %s does not exist: run outbox-relay -X outbox.mode=wal "
               "migrate\n", slot);
    }
    PQclear(res);
}
