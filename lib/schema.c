/*
 * Schema migrations: numbered, embedded, applied in order under a transaction-scoped advisory
 * lock and recorded in <schema>.schema_version.  "%1$s" in a migration is the quoted schema name.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "outbox_int.h"

static const char *const migrations[] = {
    /* 1: the tables of the delivery contract. */
    "CREATE TABLE %1$s.messages ("
    "  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  message_id    uuid NOT NULL,"
    "  destination   text NOT NULL,"
    "  partition_key bytea,"
    "  message_type  text NOT NULL,"
    "  envelope      bytea NOT NULL,"
    "  created_at    timestamptz NOT NULL DEFAULT now()"
    /* A queue table: rows are inserted and soon deleted, so vacuum it early and often. */
    ") WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);"
    "CREATE TABLE %1$s.dead_letters ("
    "  id            bigint PRIMARY KEY,"
    "  message_id    uuid,"
    "  destination   text NOT NULL,"
    "  partition_key bytea,"
    "  message_type  text,"
    "  envelope      bytea NOT NULL,"
    "  created_at    timestamptz NOT NULL,"
    "  error         text NOT NULL,"
    "  failed_at     timestamptz NOT NULL DEFAULT now(),"
    "  attempts      integer NOT NULL DEFAULT 1"
    ");"
    "CREATE TABLE %1$s.processed ("
    "  consumer      text NOT NULL,"
    "  message_id    uuid NOT NULL,"
    "  processed_at  timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (consumer, message_id)"
    ");"
    "CREATE INDEX processed_processed_at_idx ON %1$s.processed (processed_at);"
    "CREATE TABLE %1$s.consumer_dead_letters ("
    "  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  consumer        text NOT NULL,"
    "  message_id      text,"
    "  reason          text NOT NULL,"
    "  raw             bytea,"
    "  topic           text,"
    "  kafka_partition integer,"
    "  kafka_offset    bigint,"
    "  rejected_at     timestamptz NOT NULL DEFAULT now()"
    ");",
    /* 2: the failed deliveries a row has behind it, so that a dead letter moved back to the outbox
     * (outbox-relay dead-letters retry) keeps its count when it fails again under its new outbox
     * id.  NULL (never failed) for every row a writer inserts: a NULL costs no byte in the tuple,
     * and adding a nullable column without a default rewrites nothing. */
    "ALTER TABLE %1$s.messages ADD COLUMN attempts integer;",
    /* 3: per-key parking and the saved claim floor.  Per-key parking (relay.poison.policy = park-key).  A parked key's rows leave messages for
     * parked_messages, keeping their ids, so that claims never walk them (relay/park.c says why the
     * claim floor stays sound); parked_keys says why each key is parked and carries an operator's
     * request (retry, drop, drop-first) to the leader, which carries it out between batches. */
    "CREATE TABLE %1$s.parked_keys ("
    "  partition_key bytea PRIMARY KEY,"
    "  destination   text NOT NULL,"
    "  first_id      bigint NOT NULL,"
    "  error         text NOT NULL,"
    "  parked_at     timestamptz NOT NULL DEFAULT now(),"
    "  request       text CHECK (request IN ('retry', 'drop', 'drop-first')),"
    "  requested_at  timestamptz"
    ");"
    "CREATE TABLE %1$s.parked_messages ("
    "  id            bigint PRIMARY KEY,"
    "  message_id    uuid NOT NULL,"
    "  destination   text NOT NULL,"
    "  partition_key bytea NOT NULL,"
    "  message_type  text NOT NULL,"
    "  envelope      bytea NOT NULL,"
    "  created_at    timestamptz NOT NULL,"
    "  attempts      integer,"
    "  held_at       timestamptz NOT NULL DEFAULT now()"
    ");"
    "CREATE INDEX parked_messages_key_idx ON %1$s.parked_messages (partition_key, id);"
    /* Where the last leader's claims could start (relay/floor.c): the next leader starts there
     * instead of walking every deleted row the table still has. */
    "CREATE TABLE %1$s.claim_state ("
    "  singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
    "  floor         bigint NOT NULL,"
    "  done_lo       bigint[] NOT NULL,"
    "  done_hi       bigint[] NOT NULL,"
    "  saved_at      timestamptz NOT NULL DEFAULT now()"
    ");"
    /* The consumer's parked keys (consumer.reject.policy=park-key): a rejected message and
     * every later message of its Kafka key in its partition wait here, in offset order, until
     * released.  reason is set on the first row of a key only (why it parked); the rows held
     * behind it have none.  released is the handshake with `outbox-relay consumer-parked retry`:
     * the consumer retries a key once a row of it is released, or once its first row has no
     * reason (the poison was dropped). */
    "CREATE TABLE %1$s.consumer_parked ("
    "  consumer        text NOT NULL,"
    "  topic           text NOT NULL,"
    "  kafka_partition integer NOT NULL,"
    "  kafka_offset    bigint NOT NULL,"
    "  kafka_key       bytea NOT NULL,"
    "  message_id      text,"
    "  raw             bytea,"
    "  headers         bytea,"
    "  reason          text,"
    "  released        boolean NOT NULL DEFAULT false,"
    "  parked_at       timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (consumer, topic, kafka_partition, kafka_offset)"
    ");"
    "CREATE INDEX consumer_parked_key_idx ON %1$s.consumer_parked "
    "(consumer, topic, kafka_partition, kafka_key, kafka_offset);"
    /* A relay's role (the one that may DELETE outbox rows) and a consumer's (the one that may
     * INSERT into processed) get the new tables too, so that an upgraded schema does not stop a
     * least-privilege relay at its next claim or a consumer at its next rejection. */
    "DO $outbox_m3$ DECLARE r name; BEGIN"
    "  FOR r IN SELECT rolname FROM pg_roles WHERE NOT rolsuper AND rolname <> current_user"
    "   AND has_table_privilege(oid, $t$%1$s.messages$t$, 'DELETE') LOOP"
    "    EXECUTE $g$GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.parked_keys TO $g$ || quote_ident(r);"
    "    EXECUTE $g$GRANT SELECT, INSERT, DELETE ON %1$s.parked_messages TO $g$ || quote_ident(r);"
    "    EXECUTE $g$GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.claim_state TO $g$ || quote_ident(r);"
    "  END LOOP;"
    "  FOR r IN SELECT rolname FROM pg_roles WHERE NOT rolsuper AND rolname <> current_user"
    "   AND has_table_privilege(oid, $t$%1$s.processed$t$, 'INSERT') LOOP"
    "    EXECUTE $g$GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s.consumer_parked TO $g$ || quote_ident(r);"
    "  END LOOP;"
    "END $outbox_m3$;",
    /* 4: how far a wal-mode relay stored held messages (relay/walpark.c).  PostgreSQL writes a
     * logical slot's confirmed position to disk lazily, so after a crash the slot may stream
     * transactions again whose held messages an operator has released since (dropped or sent
     * back to the table): they would park or publish again, behind later messages of their key.
     * The position is stored in the transaction that stores the held messages, and the stream
     * starts after it.  system_id (IDENTIFY_SYSTEM's) ties it to the cluster whose WAL it is in:
     * a copy of the table in another cluster (a restore, a migration) is not followed. */
    "CREATE TABLE %1$s.wal_state ("
    "  slot_name     text PRIMARY KEY,"
    "  system_id     text NOT NULL,"
    "  held_upto     pg_lsn NOT NULL,"
    "  saved_at      timestamptz NOT NULL DEFAULT now()"
    ");"
    "DO $outbox_m4$ DECLARE r name; BEGIN"
    "  FOR r IN SELECT rolname FROM pg_roles WHERE NOT rolsuper AND rolname <> current_user"
    "   AND has_table_privilege(oid, $t$%1$s.messages$t$, 'DELETE') LOOP"
    "    EXECUTE $g$GRANT SELECT, INSERT, UPDATE ON %1$s.wal_state TO $g$ || quote_ident(r);"
    "  END LOOP;"
    "END $outbox_m4$;",
};

#define MIGRATION_CNT ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* Runs a statement that returns no rows; records the error on failure. */
static outbox_err_t exec_cmd(outbox_t *ob, PGconn *conn, const char *sql, const char *what) {
    PGresult *res = PQexec(conn, sql);
    outbox_err_t err = OUTBOX_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        err = outbox_seterr_pg(ob, conn, res, what);
    PQclear(res);
    return err;
}

/* Expands "%1$s" (the only placeholder used) into the quoted schema name. */
static char *expand(const char *tmpl, const char *schema_q) {
    size_t n = strlen(tmpl) + 1, ql = strlen(schema_q);
    for (const char *p = tmpl; (p = strstr(p, "%1$s")); p += 4)
        n += ql;
    char *out = malloc(n), *w = out;
    if (!out)
        return NULL;
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "%1$s", 4)) {
            memcpy(w, schema_q, ql);
            w += ql;
            p += 4;
        } else {
            *w++ = *p++;
        }
    }
    *w = '\0';
    return out;
}

static outbox_err_t exec_tmpl(outbox_t *ob, PGconn *conn, const char *tmpl, const char *what) {
    char *sql = expand(tmpl, ob->schema_q);
    if (!sql)
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "%s: out of memory", what);
    outbox_err_t err = exec_cmd(ob, conn, sql, what);
    free(sql);
    return err;
}

static outbox_err_t read_version(outbox_t *ob, PGconn *conn, int *version) {
    char *sql = expand("SELECT coalesce(max(version), 0) FROM %1$s.schema_version", ob->schema_q);
    if (!sql)
        return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "outbox_migrate: out of memory");
    PGresult *res = PQexec(conn, sql);
    free(sql);
    outbox_err_t err = OUTBOX_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        err = outbox_seterr_pg(ob, conn, res, "reading the outbox schema version");
    else
        *version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return err;
}

/* What outbox_migrate learned before changing anything: the recorded version and the role it
 * runs as, to name in an error. */
typedef struct {
    int version;
    char role[64];
} probe_t;

/* Reads the schema version (0: no schema_version table) and current_user, with SELECTs only, so
 * that every role `outbox-relay grants` creates can check a current schema at start-up. */
static outbox_err_t probe(outbox_t *ob, PGconn *conn, probe_t *pr) {
    char regname[160];
    outbox_snprintf(regname, sizeof(regname), "%s.schema_version", ob->schema_q);
    const char *params[1] = {regname};
    PGresult *res = PQexecParams(conn, "SELECT to_regclass($1) IS NOT NULL, current_user", 1, NULL, params,
                                 NULL, NULL, 0);
    outbox_err_t err = OUTBOX_OK;
    int exists = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        err = outbox_seterr_pg(ob, conn, res, "looking up the outbox schema");
    } else {
        exists = PQgetvalue(res, 0, 0)[0] == 't';
        outbox_snprintf(pr->role, sizeof(pr->role), "%s", PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    pr->version = 0;
    if (err || !exists)
        return err;
    if ((err = read_version(ob, conn, &pr->version)) && !strcmp(ob->sqlstate, "42501")) {
        char cause[512];
        outbox_snprintf(cause, sizeof(cause), "%s", ob->errstr);
        outbox_seterr(ob, err, "outbox_migrate: role \"%s\" may not read %s.schema_version (%s); apply "
                      "`outbox-relay grants ... | psql` again as the schema's owner (it grants SELECT on it "
                      "to every role)", pr->role, ob->schema_q, cause);
        outbox_snprintf(ob->sqlstate, sizeof(ob->sqlstate), "42501");
    }
    return err;
}

/* A migration refused for want of privileges says who may run it instead. */
static outbox_err_t not_owner(outbox_t *ob, const probe_t *pr) {
    char cause[512];
    outbox_snprintf(cause, sizeof(cause), "%s", ob->errstr);
    outbox_seterr(ob, OUTBOX_ERR_SCHEMA,
                         "outbox_migrate: schema %s is at version %d and liboutbox %s needs version %d, "
                         "but role \"%s\" may not migrate it (%s); run `outbox-relay migrate` (or "
                         "outbox_migrate()) once as the schema's owner, then start this role's processes",
                         ob->schema_q, pr->version, outbox_version_str(), MIGRATION_CNT, pr->role, cause);
    outbox_snprintf(ob->sqlstate, sizeof(ob->sqlstate), "42501"); /* kept for the caller */
    return OUTBOX_ERR_SCHEMA;
}

static outbox_err_t too_new(outbox_t *ob, int current) {
    return outbox_seterr(ob, OUTBOX_ERR_SCHEMA_TOO_NEW,
                         "outbox_migrate: schema %s is at version %d but liboutbox %s knows "
                         "versions up to %d; upgrade liboutbox",
                         ob->schema_q, current, outbox_version_str(), MIGRATION_CNT);
}

static outbox_err_t migrate_in_tx(outbox_t *ob, PGconn *conn) {
    const char *schema = outbox_conf_str(ob->conf, "outbox.schema");
    char lockname[128];
    outbox_snprintf(lockname, sizeof(lockname), "liboutbox.migrate:%s", schema);
    const char *params[1] = {lockname};
    /* Serialises concurrent migrators of the same schema until this transaction ends. */
    PGresult *res = PQexecParams(conn, "SELECT pg_advisory_xact_lock(hashtext($1))", 1, NULL, params,
                                 NULL, NULL, 0);
    outbox_err_t err = OUTBOX_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        err = outbox_seterr_pg(ob, conn, res, "taking the migration lock");
    PQclear(res);
    if (err)
        return err;
    err = exec_tmpl(ob, conn,
                    "CREATE SCHEMA IF NOT EXISTS %1$s;"
                    "CREATE TABLE IF NOT EXISTS %1$s.schema_version ("
                    "  version integer PRIMARY KEY,"
                    "  applied_at timestamptz NOT NULL DEFAULT now(),"
                    "  library_version text NOT NULL)",
                    "creating the outbox schema");
    int current = 0;
    if (!err)
        err = read_version(ob, conn, &current);
    if (err)
        return err;
    if (current > MIGRATION_CNT)
        return too_new(ob, current);
    for (int v = current + 1; v <= MIGRATION_CNT; v++) {
        char what[64];
        outbox_snprintf(what, sizeof(what), "outbox migration %d", v);
        if ((err = exec_tmpl(ob, conn, migrations[v - 1], what)))
            return err;
        char vtext[16];
        outbox_snprintf(vtext, sizeof(vtext), "%d", v);
        const char *vp[2] = {vtext, outbox_version_str()};
        char *sql = expand("INSERT INTO %1$s.schema_version (version, library_version) "
                           "VALUES ($1, $2)", ob->schema_q);
        if (!sql)
            return outbox_seterr(ob, OUTBOX_ERR_NOMEM, "outbox_migrate: out of memory");
        res = PQexecParams(conn, sql, 2, NULL, vp, NULL, NULL, 0);
        free(sql);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            err = outbox_seterr_pg(ob, conn, res, "recording the outbox schema version");
        PQclear(res);
        if (err)
            return err;
        char shown[128]; /* the name, not its SQL quoting: '"' or a line break would end the value */
        outbox_log(ob->conf, 6, "MIGRATE", "msg=\"applied outbox migration\" schema=\"%s\" version=%d",
                   outbox_logfmt_value(schema, shown, sizeof(shown)), v);
    }
    return OUTBOX_OK;
}

outbox_err_t outbox_migrate(outbox_t *ob, PGconn *conn) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!conn)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, "outbox_migrate: conn is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return outbox_seterr(ob, OUTBOX_ERR_CONNECTION, "outbox_migrate: the connection is bad: %s",
                             PQerrorMessage(conn));
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INERROR)
        return outbox_seterr(ob, OUTBOX_ERR_TRANSACTION_ABORTED,
                             "outbox_migrate: the connection's transaction has already failed; "
                             "ROLLBACK, then call it on the idle connection or in a new transaction");
    if (ts != PQTRANS_IDLE && ts != PQTRANS_INTRANS)
        return outbox_seterr(ob, OUTBOX_ERR_STATE,
                             "outbox_migrate: the connection is busy with another query; collect "
                             "its results first");
    /* A current schema is only read: the writer's, the relay's and a consumer's roles call this
     * at start-up and may not CREATE anything (even CREATE SCHEMA IF NOT EXISTS needs CREATE on
     * the database). */
    probe_t pr;
    outbox_err_t err = probe(ob, conn, &pr);
    if (err)
        return err;
    if (pr.version > MIGRATION_CNT)
        return too_new(ob, pr.version);
    if (pr.version == MIGRATION_CNT) {
        ob->errstr[0] = '\0';
        return OUTBOX_OK;
    }
    if (ts == PQTRANS_INTRANS) {
        if ((err = migrate_in_tx(ob, conn)) && !strcmp(ob->sqlstate, "42501"))
            return not_owner(ob, &pr);
        return err;
    }
    if ((err = exec_cmd(ob, conn, "BEGIN", "outbox_migrate: BEGIN")))
        return err;
    err = migrate_in_tx(ob, conn);
    if (err) {
        bool denied = !strcmp(ob->sqlstate, "42501");
        PQclear(PQexec(conn, "ROLLBACK"));
        return denied ? not_owner(ob, &pr) : err;
    }
    if ((err = exec_cmd(ob, conn, "COMMIT", "outbox_migrate: COMMIT")))
        return err;
    ob->errstr[0] = '\0';
    return OUTBOX_OK;
}

outbox_err_t outbox_schema_version(outbox_t *ob, PGconn *conn, int *version) {
    if (!ob)
        return OUTBOX_ERR_INVALID_ARG;
    if (!conn || !version)
        return outbox_seterr(ob, OUTBOX_ERR_INVALID_ARG, "outbox_schema_version: %s is NULL",
                             !conn ? "conn" : "version");
    char regname[160];
    outbox_snprintf(regname, sizeof(regname), "%s.schema_version", ob->schema_q);
    const char *params[1] = {regname};
    PGresult *res = PQexecParams(conn, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL,
                                 NULL, 0);
    outbox_err_t err = OUTBOX_OK;
    int exists = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        err = outbox_seterr_pg(ob, conn, res, "looking up the outbox schema");
    else
        exists = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (err)
        return err;
    *version = 0;
    return exists ? read_version(ob, conn, version) : OUTBOX_OK;
}
