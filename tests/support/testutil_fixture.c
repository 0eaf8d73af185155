/* The per-test fixture shared by the relay, ops and consumer suites (see testutil_fixture.h). */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil_fixture.h"

PGconn *tf_conn;
outbox_t *tf_ob;
char *tf_schema;
char *tf_schema2;
tk_broker_t *tf_broker;
tk_proc_t *tf_procs[TF_MAX_PROCS];
static char proc_names[TF_MAX_PROCS][32];

void tf_setup(const char *schema_prefix) {
    tf_conn = tu_connect();
    tf_schema = tu_schema_name(schema_prefix);
    tf_ob = tu_outbox(tf_conn, tf_schema);
}

static void drop_schema(const char *sch, int if_exists) {
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA %s\"%s\" CASCADE", if_exists ? "IF EXISTS " : "", sch);
    tu_exec(tf_conn, sql);
}

void tf_teardown(void (*before_drop)(void)) {
    for (int i = 0; i < TF_MAX_PROCS; i++) {
        tk_proc_free(tf_procs[i]);
        tf_procs[i] = NULL;
    }
    tk_broker_stop(tf_broker);
    tf_broker = NULL;
    PQclear(PQexec(tf_conn, "ROLLBACK"));
    if (before_drop)
        before_drop();
    drop_schema(tf_schema, 0); /* the test's own schema must still be there */
    if (tf_schema2) {
        drop_schema(tf_schema2, 1); /* the test may have failed to create it, or dropped it */
        free(tf_schema2);
        tf_schema2 = NULL;
    }
    outbox_destroy(tf_ob);
    tf_ob = NULL;
    PQfinish(tf_conn);
    tf_conn = NULL;
    free(tf_schema);
    tf_schema = NULL;
}

const char *tf_q(const char *fmt, ...) {
    static char bufs[4][2048];
    static int next;
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    ck_assert(w > 0 && (size_t)w < sizeof(text));
    char *out = bufs[next++ % 4];
    size_t n = 0;
    for (const char *p = text; *p; p++) {
        w = *p == '@' ? snprintf(out + n, sizeof(bufs[0]) - n, "\"%s\"", tf_schema)
                      : snprintf(out + n, sizeof(bufs[0]) - n, "%c", *p);
        ck_assert(w > 0 && n + (size_t)w < sizeof(bufs[0]));
        n += (size_t)w;
    }
    return out;
}

void tf_dump_logs(void) {
    for (int i = 0; i < TF_MAX_PROCS; i++) {
        tk_proc_t *p = tf_procs[i];
        if (!p)
            continue;
        tk_proc_running(p);
        /* Two calls: tk_file_tail() returns a static buffer. */
        fprintf(stderr, "---- %s (%s), end of its stdout:\n%s\n", proc_names[i],
                p->pid ? "running" : tk_status_str(p->status), tk_file_tail(p->out_path, 1500));
        fprintf(stderr, "---- %s, end of its stderr:\n%s\n----\n", proc_names[i], tk_file_tail(p->err_path, 3000));
    }
}

/* Appends the NULL-terminated arguments first, ... to argv[*n], keeping room for a NULL in cap. */
static void append_args(const char **argv, size_t cap, size_t *n, const char *first, va_list ap) {
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        ck_assert_uint_lt(*n, cap - 1);
        argv[(*n)++] = a;
    }
    argv[*n] = NULL;
}

void tf_vstart_broker(const char *arg, va_list ap) {
    const char *args[32];
    size_t n = 0;
    append_args(args, 32, &n, arg, ap);
    tf_broker = tk_broker_start(args);
}

void tf_start_broker(const char *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    tf_vstart_broker(arg, ap);
    va_end(ap);
}

static int free_slot(void) {
    for (int i = 0; i < TF_MAX_PROCS; i++)
        if (!tf_procs[i])
            return i;
    ck_abort_msg("more than %d child processes", TF_MAX_PROCS);
    return -1;
}

tk_proc_t *tf_spawn(const char *name, const char *const *argv) {
    int slot = free_slot();
    snprintf(proc_names[slot], sizeof(proc_names[slot]), "%s", name);
    tf_procs[slot] = tk_proc_start(name, argv);
    return tf_procs[slot];
}

static tk_proc_t *vstart_relay(const tf_relay_opts_t *o, const char *setting, va_list ap) {
    static const tf_relay_opts_t defaults = {0};
    if (!o)
        o = &defaults;
    char *built = o->prog ? NULL : tk_build_path("outbox-relay");
    char *common[3];
    ck_assert(asprintf(&common[0], "pg.conninfo=%s", o->conninfo ? o->conninfo : getenv("OUTBOX_TEST_PG")) > 0);
    ck_assert(asprintf(&common[1], "outbox.schema=%s", o->schema ? o->schema : tf_schema) > 0);
    ck_assert(asprintf(&common[2], "kafka.bootstrap.servers=%s", tf_broker->bootstrap) > 0);
    const char *argv[48];
    size_t n = 0;
    argv[n++] = o->prog ? o->prog : built;
    for (int i = 0; i < 3; i++) {
        argv[n++] = "-X";
        argv[n++] = common[i];
    }
    for (const char *s = setting; s; s = va_arg(ap, const char *)) {
        ck_assert_uint_lt(n, 44);
        argv[n++] = "-X";
        argv[n++] = s;
    }
    argv[n++] = "run";
    argv[n] = NULL;
    char name[32];
    if (o->name)
        snprintf(name, sizeof(name), "%s", o->name);
    else
        snprintf(name, sizeof(name), "relay%d", free_slot());
    tk_proc_t *p = tf_spawn(name, argv);
    for (int i = 0; i < 3; i++)
        free(common[i]);
    free(built);
    return p;
}

tk_proc_t *tf_start_relay(const char *setting, ...) {
    va_list ap;
    va_start(ap, setting);
    tk_proc_t *p = vstart_relay(NULL, setting, ap);
    va_end(ap);
    return p;
}

tk_proc_t *tf_start_relay_with(const tf_relay_opts_t *o, const char *setting, ...) {
    va_list ap;
    va_start(ap, setting);
    tk_proc_t *p = vstart_relay(o, setting, ap);
    va_end(ap);
    return p;
}

tk_proc_t *tf_relay_cli(const char *arg, ...) {
    char *prog = tk_build_path("outbox-relay");
    const char *argv[32];
    size_t n = 0;
    argv[n++] = prog;
    va_list ap;
    va_start(ap, arg);
    append_args(argv, 32, &n, arg, ap);
    va_end(ap);
    int timed_out;
    tk_proc_t *p = tk_proc_run("relay-cli", argv, 15000, &timed_out);
    TF_CHECK(!timed_out, "outbox-relay %s did not exit within 15 s; stderr:\n%s", arg,
             tk_file_tail(p->err_path, 2000));
    free(prog);
    return p;
}

int tf_exit_code(const tk_proc_t *p) {
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

int tf_matches(const char *text, const char *re) {
    regex_t rx;
    ck_assert_int_eq(regcomp(&rx, re, REG_EXTENDED | REG_ICASE | REG_NEWLINE | REG_NOSUB), 0);
    int hit = regexec(&rx, text, 0, NULL, 0) == 0;
    regfree(&rx);
    return hit;
}

/* ---- outbox.mode=wal ------------------------------------------------------------------------- */

const char *tf_wal_slot_name(void) {
    static char buf[128];
    PGresult *res = PQexecParams(tf_conn, "SELECT lower(regexp_replace('outbox_' || $1, '[^a-zA-Z0-9_]', '_', 'g'))",
                                 1, NULL, (const char *const[]){tf_schema}, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(buf, sizeof(buf), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return buf;
}

void tf_wal_drop_slot(void) {
    const char *p[1] = {tf_wal_slot_name()};
    for (int i = 0; i < 50; i++) {
        PGresult *res = PQexecParams(tf_conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                     "WHERE slot_name = $1", 1, NULL, p, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        PQclear(res);
        if (ok)
            break;
        tk_sleep_ms(100);
    }
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP PUBLICATION IF EXISTS \"%s\"", p[0]);
    PQclear(PQexec(tf_conn, sql));
}

void tf_wal_migrate(void) {
    char schema[160];
    snprintf(schema, sizeof(schema), "outbox.schema=%s", tf_schema);
    tk_proc_t *p = tf_relay_cli("-X", schema, "-X", "outbox.mode=wal", "migrate", NULL);
    TF_CHECK(tf_exit_code(p) == 0, "wal migrate failed (%s): %s %s", tk_status_str(p->status),
             tk_file_tail(p->out_path, 2000), tk_file_tail(p->err_path, 2000));
    tk_proc_free(p);
}
