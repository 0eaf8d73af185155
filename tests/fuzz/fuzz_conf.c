/*
 * Fuzz target: configuration text.  The bytes are read as a relay configuration file (the -c FILE
 * syntax, relay_conf_read), then cut into lines whose "key=value" go straight to outbox_conf_set().
 * A value that was set must read back, be accepted again, and survive outbox_conf_dup().
 */
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "relay.h"

/* The value of key (caller frees), or NULL if the conf does not know it. */
static char *get(const outbox_conf_t *conf, const char *key) {
    size_t n = 0;
    if (outbox_conf_get(conf, key, NULL, &n) != OUTBOX_CONF_OK)
        return NULL;
    char *v = malloc(n);
    FUZZ_CHECK(v, "out of memory");
    size_t n2 = n;
    FUZZ_CHECK(outbox_conf_get(conf, key, v, &n2) == OUTBOX_CONF_OK && n2 == n && strlen(v) + 1 == n,
               "outbox_conf_get(\"%s\") sized %zu, then %zu", key, n, n2);
    if (n > 1) {
        /* A short buffer is refused and told the size needed, never overrun. */
        char small[1];
        size_t n3 = sizeof(small);
        FUZZ_CHECK(outbox_conf_get(conf, key, small, &n3) == OUTBOX_CONF_INVALID && n3 == n, "short buffer");
    }
    return v;
}

static const outbox_conf_prop_t *prop(const char *key) {
    for (const outbox_conf_prop_t *p = outbox_conf_props(); p->name; p++)
        if (!strcmp(p->name, key))
            return p;
    return NULL;
}

/* Whatever a conf holds is a valid value of its key, and a copy holds the same. */
static void check_conf(const outbox_conf_t *conf) {
    char err[512];
    outbox_conf_t *dup = outbox_conf_dup(conf);
    FUZZ_CHECK(dup, "outbox_conf_dup failed");
    FUZZ_CHECK(dup->kafka_cnt == conf->kafka_cnt, "dup has %zu kafka keys, not %zu", dup->kafka_cnt,
               conf->kafka_cnt);
    for (const outbox_conf_prop_t *p = outbox_conf_props(); p->name; p++) {
        char *a = get(conf, p->name), *b = get(dup, p->name);
        FUZZ_CHECK(a && b && !strcmp(a, b), "%s differs in the copy", p->name);
        FUZZ_CHECK(outbox_conf_set(dup, p->name, a, err, sizeof(err)) == OUTBOX_CONF_OK,
                   "%s: the stored value is refused: %s", p->name, err);
        free(b);
        b = get(dup, p->name);
        FUZZ_CHECK(b && !strcmp(a, b), "%s changed when set again", p->name);
        free(a);
        free(b);
    }
    for (size_t i = 0; i < conf->kafka_cnt; i++) {
        size_t n = strlen(conf->kafka[i].key) + sizeof("kafka.");
        char *key = malloc(n);
        FUZZ_CHECK(key, "out of memory");
        snprintf(key, n, "kafka.%s", conf->kafka[i].key);
        char *b = get(dup, key);
        FUZZ_CHECK(b && !strcmp(b, conf->kafka[i].value), "%s differs in the copy", key);
        free(b);
        free(key);
    }
    outbox_conf_destroy(dup);
}

/* One "key=value" line, unparsed by the relay's syntax: what is set reads back as set. */
static void set_pair(outbox_conf_t *conf, char *line) {
    char err[512];
    char *eq = strchr(line, '=');
    if (!eq)
        return;
    *eq = '\0';
    const char *key = line, *value = eq + 1;
    char *before = get(conf, key);
    outbox_conf_res_t r = outbox_conf_set(conf, key, value, err, sizeof(err));
    char *after = get(conf, key);
    if (r == OUTBOX_CONF_OK) {
        const outbox_conf_prop_t *p = prop(key);
        const char *want = value;
        if (p && p->type == CONF_BOOL)
            want = !strcasecmp(value, "true") || !strcmp(value, "1") || !strcasecmp(value, "yes") ||
                           !strcasecmp(value, "on")
                       ? "true"
                       : "false";
        FUZZ_CHECK(after && !strcmp(after, want), "\"%s\" set to \"%s\" reads \"%s\"", key, value,
                   after ? after : "(unknown)");
    } else {
        FUZZ_CHECK(err[0], "\"%s\" refused without a message", key);
        FUZZ_CHECK((!before && !after) || (before && after && !strcmp(before, after)),
                   "refused \"%s\" changed the value", key);
    }
    free(before);
    free(after);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *sink;
    /* librdkafka loads shared libraries as soon as this property is set: keep the fuzzer from it. */
    if (memmem(data, size, "plugin.library.paths", 20))
        return 0;
    if (!sink)
        sink = fopen("/dev/null", "w"); /* still format every error message, print none */
    char *text = malloc(size + 1);
    FUZZ_CHECK(text, "out of memory");
    if (size)
        memcpy(text, data, size);
    text[size] = '\0';

    outbox_conf_t *conf = outbox_conf_new();
    FUZZ_CHECK(conf, "out of memory");
    FILE *fp = fmemopen(text, size ? size : 1, "r");
    FUZZ_CHECK(fp, "fmemopen");
    (void)relay_conf_read(conf, fp, "fuzz.conf", sink);
    fclose(fp);
    check_conf(conf);

    outbox_conf_t *raw = outbox_conf_new();
    FUZZ_CHECK(raw, "out of memory");
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        set_pair(raw, line);
    }
    check_conf(raw);

    outbox_conf_destroy(raw);
    outbox_conf_destroy(conf);
    free(text);
    return 0;
}
