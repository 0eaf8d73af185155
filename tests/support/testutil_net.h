/*
 * Network helpers for suites that run the relay beside the test: free ports, a tiny HTTP client for
 * the metrics endpoint, the freeze-proxy (a silent network on demand) and a probe of the relay's keys.
 */
#ifndef OUTBOX_TESTUTIL_NET_H
#define OUTBOX_TESTUTIL_NET_H

#include "testutil_kafka.h"

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int tn_free_port(void);

/* GET path from 127.0.0.1:port.  Returns the status code, or -1 when there is no connection or no
 * complete response within 3 s; *body (may be NULL) receives the body, caller frees. */
int tn_http_get(int port, const char *path, char **body);
/* The value of the sample called exactly name (the whole text before the space, labels included)
 * in Prometheus text: 1 and *value set, or 0 if there is none. */
int tn_metric(const char *text, const char *name, double *value);
/* The same for a sample that must be there: fails the test (with the text) when it is not. */
double tn_must_metric(const char *text, const char *name);

/* ---- freeze-proxy --------------------------------------------------------------------------- */

/* A build/freeze-proxy in front of the test PostgreSQL's TCP port. */
typedef struct {
    tk_proc_t *proc;
    int port;            /* where it listens, on 127.0.0.1 */
    char conninfo[1024]; /* $OUTBOX_TEST_PG with host and port replaced by the proxy's */
    int freezes, thaws;  /* signals sent so far */
} tn_proxy_t;

/* Starts the proxy (child `tag`, logs like any tk_proc_t) and waits for its port.  Caller owns; free
 * with tn_proxy_free(). */
tn_proxy_t *tn_proxy_start(const char *tag);
/* Freezes every connection, current and new, in both directions without closing any, and returns
 * once the proxy confirmed it; returns the number of connections it holds. */
int tn_proxy_freeze(tn_proxy_t *p);
/* Thaws: everything buffered flows again.  Returns once the proxy confirmed it. */
void tn_proxy_thaw(tn_proxy_t *p);
/* Fails the test (with the proxy's stderr) unless the proxy is still running. */
void tn_proxy_check(tn_proxy_t *p);
/* Kills and frees.  NULL is a no-op. */
void tn_proxy_free(tn_proxy_t *p);

/* ---- the relay -------------------------------------------------------------------------------- */

/* 1 if the built outbox-relay knows the configuration key (it lists it in --help). */
int tn_relay_has_key(const char *key);

#endif
