/*
 * outbox-relay: command line, configuration file and signals; the verbs live in drain.c and
 * admin.c.  Exit codes: 0 done, 1 runtime failure, 2 bad usage or configuration.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

/* A handler may only assign to a volatile sig_atomic_t or use lock-free atomics (C11 7.14.1.1p5):
 * counting reads the old value, so the count is an atomic_int, which must then be lock-free. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "the SIGINT count needs a lock-free atomic_int");
static volatile sig_atomic_t stop_requested;
static atomic_int interrupt_count;

static void on_signal(int sig) {
    stop_requested = 1;
    if (sig == SIGINT)
        atomic_fetch_add(&interrupt_count, 1);
}

/* Who reads each group of keys, so that one file may serve the relay and a service alike. */
static const struct {
    const char *title;
    const char *prefixes[4];
} key_groups[] = {
    {"Read by outbox-relay and by liboutbox in your services", {"pg.", "outbox.", "log.", NULL}},
    {"Read by outbox-relay", {"relay.", "metrics.", NULL}},
    {"Read by liboutbox when your service writes (outbox_send); outbox-relay ignores them", {"writer.", NULL}},
    {"Read by outbox_consumer_new() in your consumer service; outbox-relay ignores them", {"consumer.", NULL}},
};
#define KEY_GROUPS ((int)(sizeof(key_groups) / sizeof(key_groups[0])))

/* The group of a key, or KEY_GROUPS when none names it (listed last, so that no key is missing). */
static int key_group(const char *name) {
    for (int g = 0; g < KEY_GROUPS; g++)
        for (const char *const *p = key_groups[g].prefixes; *p; p++)
            if (!strncmp(name, *p, strlen(*p)))
                return g;
    return KEY_GROUPS;
}

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: outbox-relay [-c FILE] [-X key=value]...\n"
            "                    [run|migrate|status|dead-letters|consumer-dead-letters|parked|\n"
            "                     consumer-parked|grants|slot-recreate] [ARGS]\n"
            "       outbox-relay --help | --version\n"
            "\n"
            "Publishes the rows of a liboutbox outbox table to Kafka, in id order, deleting each\n"
            "row once the broker acknowledged it.\n"
            "\n"
            "Verbs (the role that runs each is the one `grants` creates, except migrate):\n"
            "  run       publish until SIGTERM/SIGINT (the default); needs kafka.bootstrap.servers\n"
            "  migrate   create or upgrade the outbox schema, then exit; run it as the schema's owner\n"
            "            (any granted role may run it on a current schema: it then only checks); with\n"
            "            outbox.mode=wal it also checks wal_level, the slot and sender limits and the\n"
            "            REPLICATION attribute, and creates the publication and the logical slot\n"
            "  status [--json]\n"
            "            the schema version, backlog, oldest message's age, dead letters, the leader\n"
            "            relay (its pid and host) and transactions that hold the claim floor\n"
            "  dead-letters list [--limit N] [--json]\n"
            "            the relay's dead letters, oldest first (N defaults to 100; 0 shows all)\n"
            "  dead-letters retry ID|--all\n"
            "            move dead letters back to the outbox, in one transaction: the same message id\n"
            "            and envelope, a new outbox id (they go out after what is queued); their\n"
            "            attempts keep counting if they fail again\n"
            "  dead-letters drop ID|--all --yes\n"
            "            delete dead letters (--all needs --yes)\n"
            "  dead-letters prune --older-than DURATION\n"
            "            delete dead letters that failed longer ago than DURATION (45s, 30m, 12h, 7d)\n"
            "  consumer-dead-letters list [--limit N] [--json] --group GROUP\n"
            "  consumer-dead-letters drop ID|--all --group GROUP  (--all needs --yes)\n"
            "  consumer-dead-letters prune --older-than DURATION --group GROUP\n"
            "            the messages consumer group GROUP rejected (outbox.consumer_dead_letters)\n"
            "  parked list [--json]\n"
            "            the partition keys a message that failed permanently parked\n"
            "            (relay.poison.policy=park-key): key, destination, first held id, rows held,\n"
            "            error, since when\n"
            "  parked retry --key K|--key-hex H|--all\n"
            "            publish a parked key's held messages again, from the first, in order (the\n"
            "            running leader does it between batches; if the first fails again the key\n"
            "            parks again with the new error)\n"
            "  parked drop --key K|--key-hex H [--first-only]\n"
            "            move a parked key's held messages to dead_letters; --first-only moves only\n"
            "            the one that failed and publishes the rest in order\n"
            "  consumer-parked list --group GROUP [--key K | --key-hex H] [--json]\n"
            "            the keys group GROUP parked (consumer.reject.policy=park-key): topic,\n"
            "            partition, key (text, or hex:...), first held offset, messages held, since,\n"
            "            state and the reason\n"
            "  consumer-parked retry --group GROUP (--key K | --key-hex H | --all)\n"
            "            release keys: the running consumer retries their messages in order\n"
            "  consumer-parked drop --group GROUP (--key K | --key-hex H | --all --yes) [--first-only]\n"
            "            move held messages to consumer_dead_letters; --first-only moves each key's\n"
            "            first (the poison) and lets the rest through in order\n"
            "  grants [--writer ROLE] [--relay ROLE] [--consumer ROLE]\n"
            "            print SQL creating least-privilege roles for this schema: the relay's role\n"
            "            runs every verb above but migrate\n"
            "  slot-recreate --accept-loss\n"
            "            outbox.mode=wal: replace a lost replication slot with a new one at the current\n"
            "            WAL position, with no relay running; prints the positions whose messages are\n"
            "            lost (the relay never re-creates a slot by itself)\n"
            "\n"
            "Options:\n"
            "  -c FILE   read key=value lines ('#' starts a comment)\n"
            "  -X k=v    set one key; overrides the file\n"
            "\n"
            "Keys and defaults:\n");
    const outbox_conf_prop_t *props = outbox_conf_props();
    for (int g = 0; g <= KEY_GROUPS; g++) {
        int shown = 0;
        for (const outbox_conf_prop_t *p = props; p->name; p++) {
            if (key_group(p->name) != g)
                continue;
            if (!shown++)
                fprintf(fp, "\n %s:\n", g < KEY_GROUPS ? key_groups[g].title : "Other keys");
            fprintf(fp, "  %-30s %-14s %s\n", p->name, *p->def ? p->def : "\"\"", p->doc);
        }
    }
    fprintf(fp, "\n Read by outbox-relay (its producer) and outbox_consumer_new() (its consumer):\n");
    fprintf(fp, "  %-30s %-14s %s\n", "kafka.<property>", "", "any librdkafka property, unchanged");
    fprintf(fp, "\nProducer defaults (override with kafka.<property>):\n");
    for (const char *const *kv = outbox_kafka_producer_defaults(); kv[0]; kv += 2)
        fprintf(fp, "  kafka.%-24s %s\n", kv[0], kv[1]);
    fprintf(fp, "\npg.conninfo falls back to the environment variable OUTBOX_PG_CONNINFO.\n"
                "kafka.bootstrap.servers is required for run.\n");
}

/* run needs a broker list: a missing or empty kafka.bootstrap.servers is a configuration error
 * (exit 2), said before anything connects. */
static int check_bootstrap(const outbox_conf_t *conf) {
    char value[4096];
    size_t n = sizeof(value);
    outbox_conf_res_t res = outbox_conf_get(conf, "kafka.bootstrap.servers", value, &n);
    if (res == OUTBOX_CONF_OK && value[strspn(value, " \t")] != '\0')
        return 0;
    if (res == OUTBOX_CONF_INVALID && n > sizeof(value))
        return 0; /* set, and longer than any blank value */
    fprintf(stderr, "outbox-relay: kafka.bootstrap.servers is %s: run needs the brokers to publish to; pass "
                    "-X kafka.bootstrap.servers=host:9092 or put it in the -c file\n",
            res == OUTBOX_CONF_OK ? "empty" : "not set");
    return -1;
}

static int read_file(outbox_conf_t *conf, const char *path) {
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "outbox-relay: cannot read configuration file %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = relay_conf_read(conf, fp, path, stderr);
    fclose(fp);
    return rc;
}

/* Applies the file, then every -X in order, so the command line overrides the file. */
static int configure(outbox_conf_t *conf, const char *file, int argc, char **argv) {
    if (file && read_file(conf, file))
        return -1;
    for (int i = 1, n = 0; i + 1 < argc; i++) {
        if (strcmp(argv[i], "-X") && strcmp(argv[i], "-c"))
            continue;
        if (!strcmp(argv[i++], "-c"))
            continue;
        char where[64];
        snprintf(where, sizeof(where), "-X argument %d", ++n);
        char *copy = outbox_strdup(argv[i]);
        int bad = !copy || relay_conf_apply(conf, copy, where, stderr);
        free(copy);
        if (bad)
            return -1;
    }
    return 0;
}

/* The verbs that take arguments of their own (run and migrate take none). */
static const struct {
    const char *name;
    int (*fn)(relay_t *r, int argc, const char **argv);
} arg_verbs[] = {
    {"status", relay_status},
    {"dead-letters", relay_dead_letters},
    {"consumer-dead-letters", relay_consumer_dead_letters},
    {"parked", relay_parked},
    {"consumer-parked", relay_consumer_parked},
    {"grants", relay_grants},
    {"slot-recreate", relay_slot_recreate},
};
#define ARG_VERBS ((int)(sizeof(arg_verbs) / sizeof(arg_verbs[0])))

/* The arg_verbs index of name, or -1. */
static int arg_verb(const char *name) {
    for (int k = 0; k < ARG_VERBS; k++)
        if (!strcmp(arg_verbs[k].name, name))
            return k;
    return -1;
}

int main(int argc, char **argv) {
    const char *file = NULL, *verb = "run";
    const char *vargs[16];
    int nvargs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("outbox-relay %s (librdkafka %s, libpq %d)\n", outbox_version_str(),
                   rd_kafka_version_str(), PQlibVersion());
            return 0;
        } else if (!strcmp(a, "-c") || !strcmp(a, "-X")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "outbox-relay: %s needs an argument (see --help)\n", a);
                return 2;
            }
            if (a[1] == 'c')
                file = argv[i + 1];
            i++;
        } else if (nvargs == 0 && strcmp(verb, "run") == 0 &&
                   (!strcmp(a, "run") || !strcmp(a, "migrate") || arg_verb(a) >= 0)) {
            verb = a;
        } else if (arg_verb(verb) >= 0) {
            if (nvargs == (int)(sizeof(vargs) / sizeof(vargs[0]))) {
                fprintf(stderr, "outbox-relay: too many arguments for %s\n", verb);
                return 2;
            }
            vargs[nvargs++] = a; /* checked by the verb */
        } else {
            fprintf(stderr, "outbox-relay: unknown argument \"%s\" (expected -c FILE, -X key=value, or a verb: "
                            "run, migrate, status, dead-letters, consumer-dead-letters, parked, consumer-parked, "
                            "grants, slot-recreate; see --help)\n", a);
            return 2;
        }
    }

    outbox_conf_t *conf = outbox_conf_new();
    relay_t r = {0};
    int rc = 2;
    if (!conf) {
        fprintf(stderr, "outbox-relay: out of memory\n");
        rc = 1;
        goto done;
    }
    if (configure(conf, file, argc, argv))
        goto done;
    if (!strcmp(verb, "run") && check_bootstrap(conf))
        goto done;
    r.conf = conf;
    r.conninfo = outbox_conf_str(conf, "pg.conninfo");
    if (!*r.conninfo && getenv("OUTBOX_PG_CONNINFO"))
        r.conninfo = getenv("OUTBOX_PG_CONNINFO");
    if (!*r.conninfo && strcmp(verb, "grants") != 0) {
        fprintf(stderr, "outbox-relay: pg.conninfo is not set: pass -X pg.conninfo=\"host=... "
                        "dbname=...\", put it in the -c file, or set OUTBOX_PG_CONNINFO\n");
        goto done;
    }
    r.schema = outbox_conf_str(conf, "outbox.schema");
    /* Every verb builds SQL (or, for grants, prints it) with the quoted schema. */
    if (!(r.schema_q = outbox_quote_ident(r.schema))) {
        fprintf(stderr, "outbox-relay: out of memory\n");
        rc = 1;
        goto done;
    }
    r.stop = &stop_requested;
    r.interrupts = &interrupt_count;

    /* A broken pipe (stdout to `head`, a peer gone) is an error return, never a death. */
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    /* Only run has a loop that watches the flag and shuts down in order.  The other verbs keep the
     * default disposition so SIGTERM/SIGINT end them at once (a handler would leave them blocked in
     * libpq): none leaves anything half-done, as each change is one transaction (migrate: BEGIN ..
     * COMMIT; dead-letters retry/drop/prune: one statement), status and list only read, and grants only
     * prints a script wrapped in BEGIN/COMMIT. */
    if (!strcmp(verb, "run")) {
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
    }

    if (!strcmp(verb, "migrate"))
        rc = relay_migrate(&r);
    else if (arg_verb(verb) >= 0)
        rc = arg_verbs[arg_verb(verb)].fn(&r, nvargs, vargs);
    else
        rc = relay_run(&r);
done:
    free(r.schema_q);
    outbox_conf_destroy(conf);
    return rc;
}
