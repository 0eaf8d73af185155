/*
 * The relay's configuration syntax: "key = value" lines from -c FILE and -X arguments, applied with
 * outbox_conf_set().  Apart from main.c so it links without main() (tests/fuzz/fuzz_conf.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

int relay_conf_apply(outbox_conf_t *conf, char *kv, const char *where, FILE *errfp) {
    char err[512];
    char *eq = strchr(kv, '=');
    if (!eq) {
        if (errfp)
            fprintf(errfp, "outbox-relay: %s: \"%s\" is not key=value\n", where, kv);
        return -1;
    }
    *eq = '\0';
    char *key = trim(kv), *value = trim(eq + 1);
    if (outbox_conf_set(conf, key, value, err, sizeof(err)) != OUTBOX_CONF_OK) {
        if (errfp)
            fprintf(errfp, "outbox-relay: %s: %s\n", where, err);
        return -1;
    }
    return 0;
}

int relay_conf_read(outbox_conf_t *conf, FILE *fp, const char *path, FILE *errfp) {
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, fp) >= 0) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char where[512];
        snprintf(where, sizeof(where), "%s:%d", path, lineno);
        if (relay_conf_apply(conf, s, where, errfp)) {
            rc = -1;
            break;
        }
    }
    free(line);
    return rc;
}
