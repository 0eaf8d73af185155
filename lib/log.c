/*
 * Logging through the configured callback; the default writes one logfmt line to stderr.
 */
#include <string.h>
#include <time.h>

#include "outbox_int.h"

static const char *level_name(int level) {
    static const char *names[] = {"emerg", "alert", "crit", "error",
                                  "warning", "notice", "info", "debug"};
    return level >= 0 && level <= 7 ? names[level] : "debug";
}

void outbox_log_default(int level, const char *fac, const char *msg, void *opaque) {
    (void)opaque;
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    /* msg is already "msg=... key=value" or plain text; plain text gets quoted as msg. */
    if (!strncmp(msg, "msg=", 4))
        fprintf(stderr, "ts=%s.%03ldZ level=%s fac=%s %s\n", when, ts.tv_nsec / 1000000,
                level_name(level), fac, msg);
    else
        fprintf(stderr, "ts=%s.%03ldZ level=%s fac=%s msg=\"%s\"\n", when, ts.tv_nsec / 1000000,
                level_name(level), fac, msg);
}

void outbox_log(const outbox_conf_t *conf, int level, const char *fac, const char *fmt, ...) {
    if (conf && level > conf->log_level)
        return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (conf && conf->log_cb)
        conf->log_cb(level, fac, buf, conf->opaque);
    else
        outbox_log_default(level, fac, buf, conf ? conf->opaque : NULL);
}
