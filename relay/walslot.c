/*
 * walslot.c: what the WAL source (walsource.c) asks of PostgreSQL besides the stream itself:
 * the slot's health before and while streaming, the replication connection, dead letters, and
 * the figures behind the metrics.  Every statement here runs on the leader session.
 */
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "wal.h"
#include "walproto.h"

#define FAC "WAL"
#define SAMPLE_EVERY_MS 2000
/* A broken slot is logged again at most this often. */
#define BROKEN_LOG_EVERY_MS 60000
#define START_BACKOFF_MAX_MS 10000

/* The session's limits, for statements sent outside the prepared set. */
static PGresult *exec(relay_t *r, const char *sql, int n, const char *const *params, const int *lengths,
                      const int *formats, ExecStatusType expect, const char *what) {
    char err[512], msg[512];
    if (session_lost(r))
        return NULL;
    PGresult *res = outbox_pg_exec(r->session.pg, &r->session.stmt_lim, sql, n, params, lengths, formats, 0,
                                   err, sizeof(err));
    if (PQresultStatus(res) == expect)
        return res;
    outbox_logfmt_value(res ? PQresultErrorMessage(res) : err, msg, sizeof(msg));
    if (!res || session_lost(r))
        session_drop(r, msg);
    else
        outbox_log(r->conf, 3, FAC, "msg=\"%s failed\" error=\"%s\"", what, msg);
    PQclear(res);
    return NULL;
}

void wal_build_sql(relay_t *r) {
    relay_wal_t *w = &r->wal;
    const char *s = r->schema_q;
    outbox_wal_prefix(r->schema, w->prefix, sizeof(w->prefix));
    w->prefix_len = strlen(w->prefix);
    outbox_wal_slot_name(r->conf, w->slot, sizeof(w->slot));
    outbox_wal_publication(r->schema, w->publication, sizeof(w->publication));
    snprintf(w->sql_slot, sizeof(w->sql_slot),
             "SELECT s.wal_status, s.active_pid, s.plugin, s.database = current_database(),"
             " pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,"
             " pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, s.confirmed_flush_lsn::text,"
             " (SELECT count(*) FROM pg_publication WHERE pubname = $2)"
             " FROM pg_replication_slots s WHERE s.slot_name = $1");
    snprintf(w->sql_rows, sizeof(w->sql_rows), "SELECT EXISTS (SELECT 1 FROM %s.messages)", s);
    snprintf(w->sql_held, sizeof(w->sql_held), "SELECT held_upto::text, system_id FROM %s.wal_state WHERE slot_name = $1",
             s);
    snprintf(w->sql_dead, sizeof(w->sql_dead),
             "INSERT INTO %1$s.dead_letters (id, message_id, destination, partition_key, message_type,"
             " envelope, created_at, error)"
             " VALUES ($1::bigint, $2::uuid, $3, $4, nullif($5, ''), $6, coalesce(to_timestamp($7::bigint / 1e6),"
             " now()), $8)"
             " ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now(),"
             " attempts = %1$s.dead_letters.attempts + 1", s);
}

static const char *dead_error(const batch_t *b, int i) {
    return b->error[i] ? b->error[i] : "unknown (out of memory recording the error)";
}

/* Marks the slot broken (not ready) or sound, logging the reason at most every minute. */
static void broken(relay_t *r, const char *why, const char *fix) {
    relay_wal_t *w = &r->wal;
    atomic_store(&r->metrics.wal_broken, why != NULL);
    if (!why || outbox_mono_ms() < w->next_broken_log_ms)
        return;
    w->next_broken_log_ms = outbox_mono_ms() + BROKEN_LOG_EVERY_MS;
    outbox_log(r->conf, 2, FAC, "msg=\"%s\" slot=%s fix=\"%s\"", why, w->slot, fix);
}

/* Reads the slot's row: the result (one row), or NULL when the slot or publication is missing or
 * lost (said, and marked broken) or the query failed. */
static PGresult *slot_check(relay_t *r) {
    relay_wal_t *w = &r->wal;
    const char *p[2] = {w->slot, w->publication};
    char why[256];
    PGresult *res = exec(r, w->sql_slot, 2, p, NULL, NULL, PGRES_TUPLES_OK, "reading the replication slot");
    if (!res)
        return NULL;
    if (PQntuples(res) == 0) {
        snprintf(why, sizeof(why), "replication slot %s does not exist: nothing is published", w->slot);
        broken(r, why, "run outbox-relay -X outbox.mode=wal migrate as the schema's owner (a role with "
                       "REPLICATION); messages written before the slot existed were never retained");
    } else if (!strcmp(PQgetvalue(res, 0, 0), "lost")) {
        snprintf(why, sizeof(why), "replication slot %s is lost (max_slot_wal_keep_size was exceeded): "
                 "messages after %s are gone from the WAL; the relay will not re-create it by itself",
                 w->slot, PQgetvalue(res, 0, 6));
        broken(r, why, "see README, 'A lost slot': outbox-relay slot-recreate --accept-loss");
    } else if (strcmp(PQgetvalue(res, 0, 2), "pgoutput") || strcmp(PQgetvalue(res, 0, 3), "t")) {
        snprintf(why, sizeof(why), "replication slot %s uses plugin %s in another database or with "
                 "another plugin", w->slot, PQgetvalue(res, 0, 2));
        broken(r, why, "set relay.slot.name to a pgoutput slot of this database, or drop that slot");
    } else if (!strcmp(PQgetvalue(res, 0, 7), "0")) {
        snprintf(why, sizeof(why), "publication %s does not exist: the stream cannot start", w->publication);
        broken(r, why, "run outbox-relay -X outbox.mode=wal migrate");
    } else {
        broken(r, NULL, NULL);
        return res;
    }
    PQclear(res);
    return NULL;
}

static void figures(relay_t *r, const PGresult *res) {
    uint64_t lsn;
    atomic_store(&r->metrics.wal_lag_bytes, atoll(PQgetvalue(res, 0, 4)));
    atomic_store(&r->metrics.wal_retained_bytes, atoll(PQgetvalue(res, 0, 5)));
    if (!walp_lsn_parse(PQgetvalue(res, 0, 6), &lsn) && lsn > (uint64_t)atomic_load(&r->metrics.wal_confirmed_lsn))
        atomic_store(&r->metrics.wal_confirmed_lsn, (int64_t)lsn);
}

/* The server's system identifier into w->system_id, from IDENTIFY_SYSTEM on the replication
 * connection pg: 0, or -1 with the reason in err. */
static int identify(relay_t *r, PGconn *pg, const outbox_pg_limits_t *lim, char *err, size_t err_size) {
    relay_wal_t *w = &r->wal;
    PGresult *res = NULL;
    if (PQsendQuery(pg, "IDENTIFY_SYSTEM") && outbox_pg_wait(pg, lim, err, err_size) == 0)
        res = PQgetResult(pg);
    else if (!*err)
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
             strlen(PQgetvalue(res, 0, 0)) < sizeof(w->system_id);
    if (ok)
        snprintf(w->system_id, sizeof(w->system_id), "%s", PQgetvalue(res, 0, 0));
    else if (res)
        outbox_snprintf(err, err_size, "IDENTIFY_SYSTEM: %s", PQresultErrorMessage(res));
    PQclear(res);
    while (ok && (res = PQgetResult(pg)))
        PQclear(res);
    return ok ? 0 : -1;
}

/* Connects for replication and sends START_REPLICATION from the later of the slot's position and
 * held (wal_state's, when it was recorded on this server: held_sys), setting *from to what it
 * asked for (0: the slot's): 0, or -1 with the reason in err. */
static int start(relay_t *r, uint64_t held, const char *held_sys, uint64_t *from, char *err, size_t err_size,
                 bool *busy) {
    relay_wal_t *w = &r->wal;
    char app[160], sql[512];
    outbox_pg_limits_t lim = r->session.stmt_lim;
    snprintf(app, sizeof(app), "%s wal", outbox_conf_str(r->conf, "relay.application.name"));
    PGconn *pg = outbox_pg_connect_as(r->conninfo, app, "database", &lim, err, err_size);
    if (!pg)
        return -1;
    if (identify(r, pg, &lim, err, err_size)) {
        PQfinish(pg);
        return -1;
    }
    *from = held;
    if (held && strcmp(held_sys, w->system_id)) {
        /* A copy of wal_state from another cluster (a restore): its position is not in this WAL. */
        char lsn[18];
        outbox_log(r->conf, 4, FAC, "msg=\"wal_state was recorded on another server: its position is not "
                   "followed\" slot=%s held_upto=%s its_system_id=%s system_id=%s", w->slot,
                   walp_lsn_format(held, lsn), held_sys, w->system_id);
        *from = 0;
    }
    char *slot = PQescapeIdentifier(pg, w->slot, strlen(w->slot));
    char *pub = PQescapeLiteral(pg, w->publication, strlen(w->publication));
    if (!slot || !pub) {
        outbox_snprintf(err, err_size, "out of memory");
        PQfreemem(slot), PQfreemem(pub), PQfinish(pg);
        return -1;
    }
    /* The server starts after the later of from and the slot's confirmed_flush_lsn (0/0: the
     * slot's): it skips the transactions that commit before. */
    char from_txt[18];
    snprintf(sql, sizeof(sql), "START_REPLICATION SLOT %s LOGICAL %s (proto_version '1', "
             "publication_names %s, messages 'true')", slot, walp_lsn_format(*from, from_txt), pub);
    PQfreemem(slot);
    PQfreemem(pub);
    PGresult *res = NULL;
    if (PQsendQuery(pg, sql) && outbox_pg_wait(pg, &lim, err, err_size) == 0)
        res = PQgetResult(pg);
    else if (!*err)
        outbox_snprintf(err, err_size, "%s", PQerrorMessage(pg));
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        *busy = state && !strcmp(state, "55006"); /* the slot is active for another process */
        if (res)
            outbox_snprintf(err, err_size, "%s", PQresultErrorMessage(res));
        PQclear(res);
        PQfinish(pg);
        return -1;
    }
    PQclear(res);
    w->repl = pg;
    return 0;
}

int wal_stream_start(relay_t *r) {
    relay_wal_t *w = &r->wal;
    char err[512], msg[512];
    bool busy = false;
    PGresult *res = slot_check(r);
    if (!res)
        return -1;
    figures(r, res);
    uint64_t slot_lsn = 0, held = 0, from = 0;
    bool slot_lsn_ok = !walp_lsn_parse(PQgetvalue(res, 0, 6), &slot_lsn);
    PQclear(res);
    /* Where held messages were stored up to (walpark.c): a slot that went back in a crash does not
     * stream them again, whatever the operator did with them since. */
    const char *p[1] = {w->slot};
    char held_sys[32] = "";
    if (!(res = exec(r, w->sql_held, 1, p, NULL, NULL, PGRES_TUPLES_OK, "reading wal_state")))
        return -1;
    if (PQntuples(res) == 1 && walp_lsn_parse(PQgetvalue(res, 0, 0), &held)) {
        outbox_log(r->conf, 3, FAC, "msg=\"wal_state holds no WAL position\" slot=%s held_upto=\"%s\"", w->slot,
                   PQgetvalue(res, 0, 0));
        PQclear(res);
        return -1;
    }
    if (PQntuples(res) == 1)
        snprintf(held_sys, sizeof(held_sys), "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    if (start(r, held, held_sys, &from, err, sizeof(err), &busy)) {
        /* A slot still held by the last leader's walsender frees itself once that one notices. */
        outbox_log(r->conf, busy ? 6 : 3, FAC, "msg=\"cannot start streaming from the slot\" slot=%s "
                   "retry_ms=%lld error=\"%s\"", w->slot, (long long)w->backoff_ms,
                   outbox_logfmt_value(err, msg, sizeof(msg)));
        relay_sleep(r, w->backoff_ms);
        w->backoff_ms = backoff_next(w->backoff_ms ? w->backoff_ms : r->set.backoff_ms, START_BACKOFF_MAX_MS);
        return -1;
    }
    char lsn[18];
    w->backoff_ms = 0;
    /* The server resends from the slot's position, or from held_upto if later: confirmations
     * start there.  Never from what this process confirmed before, which may lie on another
     * server's WAL after a failover.  held_upto is followed only when recorded on this system
     * (a physical standby shares the primary's), and a standby that has its row has the WAL of
     * the commit that stored it, written after that position. */
    if (slot_lsn_ok)
        w->confirmed = slot_lsn > from ? slot_lsn : from;
    atomic_store(&r->metrics.wal_confirmed_lsn, (int64_t)w->confirmed);
    w->reported = 0;
    w->next_status_ms = 0;
    outbox_log(r->conf, 6, FAC, "msg=\"streaming\" slot=%s publication=%s prefix=\"%s\" from=%s", w->slot,
               w->publication, w->prefix, walp_lsn_format(w->confirmed, lsn));
    return 0;
}

void wal_stream_close(relay_t *r, const char *why) {
    relay_wal_t *w = &r->wal;
    char msg[512];
    if (!w->repl)
        return;
    if (why)
        outbox_log(r->conf, 5, FAC, "msg=\"stopped streaming\" reason=\"%s\"", outbox_logfmt_value(why, msg, sizeof(msg)));
    PQfinish(w->repl);
    w->repl = NULL;
    w->in_txn = false;
}

void wal_stream_end(relay_t *r) {
    PGresult *res = PQgetResult(r->wal.repl);
    char why[512];
    outbox_snprintf(why, sizeof(why), "the server ended the stream: %s",
                    res && PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res) : PQerrorMessage(r->wal.repl));
    PQclear(res);
    wal_stream_close(r, why);
}

int wal_table_has_rows(relay_t *r) {
    PGresult *res = exec(r, r->wal.sql_rows, 0, NULL, NULL, NULL, PGRES_TUPLES_OK, "looking for rows in the table");
    if (!res)
        return -1;
    int rows = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (rows)
        outbox_log(r->conf, 6, FAC, "msg=\"rows wait in the outbox table: publishing them before the stream\"");
    return rows;
}

/* Ends the leader session's transaction with sql (COMMIT or ROLLBACK): 0, or -1.  A ROLLBACK that
 * fails drops the session, whose end rolls back instead. */
static int txn_end(relay_t *r, const char *sql, const char *what) {
    PGresult *res = exec(r, sql, 0, NULL, NULL, NULL, PGRES_COMMAND_OK, what);
    if (!res && !session_lost(r) && !strcmp(sql, "ROLLBACK"))
        session_drop(r, what);
    PQclear(res);
    return res ? 0 : -1;
}

/* One INSERT a dead row, in one transaction: a failure partway records none of the batch's, so
 * trying the batch again counts each dead letter's attempts once. */
int wal_dead_letters(relay_t *r, batch_t *b) {
    const wal_owner_t *o = b->owner;
    PGresult *res = exec(r, "BEGIN", 0, NULL, NULL, NULL, PGRES_COMMAND_OK, "beginning to record dead letters");
    if (!res)
        return -1;
    PQclear(res);
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] != ROW_DEAD)
            continue;
        const relay_row_t *row = &b->rows[i];
        char id[24], uuid[OUTBOX_UUID_STR_LEN + 1], created[24], type[256];
        snprintf(id, sizeof(id), "%lld", -(long long)o->lsn[i]);
        outbox_uuid_text(row->uuid, uuid);
        snprintf(type, sizeof(type), "%.*s", (int)(row->type_len > 255 ? 255 : row->type_len), row->type);
        const char *created_p = NULL;
        if (row->timestamp_ms) {
            snprintf(created, sizeof(created), "%lld", (long long)row->timestamp_ms * 1000);
            created_p = created;
        }
        const char *p[8] = {id, uuid, row->dest, row->key, type, row->value, created_p, dead_error(b, i)};
        int len[8] = {0, 0, 0, (int)row->key_len, 0, (int)row->value_len, 0, 0};
        int fmt[8] = {0, 0, 0, 1, 0, 1, 0, 0};
        res = exec(r, r->wal.sql_dead, 8, p, len, fmt, PGRES_COMMAND_OK, "recording a dead letter");
        if (!res) {
            txn_end(r, "ROLLBACK", "rolling back recording dead letters");
            return -1;
        }
        PQclear(res);
    }
    if (txn_end(r, "COMMIT", "committing dead letters"))
        return -1;
    for (int i = 0; i < b->n; i++) {
        if (b->state[i] != ROW_DEAD)
            continue;
        char uuid[OUTBOX_UUID_STR_LEN + 1], msg[512];
        outbox_uuid_text(b->rows[i].uuid, uuid);
        r->dead_lettered++;
        atomic_fetch_add(&r->metrics.dead_lettered, 1);
        outbox_log(r->conf, 3, FAC, "msg=\"dead-lettered\" id=%lld message_id=%s error=\"%s\"",
                   -(long long)o->lsn[i], uuid, outbox_logfmt_value(dead_error(b, i), msg, sizeof(msg)));
    }
    return 0;
}

void wal_sample(relay_t *r) {
    relay_wal_t *w = &r->wal;
    int64_t now = outbox_mono_ms();
    if (w->table_phase) {
        relay_table_source.sample(r);
        return;
    }
    if (now < w->next_sample_ms || session_lost(r) || !r->session.leader)
        return;
    w->next_sample_ms = now + SAMPLE_EVERY_MS;
    PGresult *res = slot_check(r); /* also finds a leader session that died silently */
    if (!res) {
        if (atomic_load(&r->metrics.wal_broken))
            wal_stream_close(r, "the slot cannot be used");
        return;
    }
    figures(r, res);
    PQclear(res);
}
