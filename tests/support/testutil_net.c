/* Network helpers: free ports, HTTP GET, the freeze-proxy, the relay's keys (see testutil_net.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#include "testutil_fixture.h"
#include "testutil_net.h"

int tn_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

int tn_http_get(int port, const char *path, char **body) {
    if (body)
        *body = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
                     path, port);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    size_t len = 0, cap = 8192;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    int64_t deadline = tk_now_ms() + 3000;
    int eof = 0;
    while (!eof) {
        int64_t left = deadline - tk_now_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            eof = 1;
        else
            len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    char *head_end = strstr(buf, "\r\n\r\n");
    if (eof && head_end && sscanf(buf, "HTTP/1.%*d %d", &status) == 1 && body)
        *body = strdup(head_end + 4);
    free(buf);
    return eof && head_end ? status : -1;
}

/* ---- freeze-proxy --------------------------------------------------------------------------- */

/* Appends " key='value'" (libpq quoting) to out. */
static void conninfo_add(char *out, size_t size, const char *key, const char *val) {
    size_t n = strlen(out);
    int w = snprintf(out + n, size - n, "%s%s='", n ? " " : "", key);
    ck_assert(w > 0 && n + (size_t)w < size);
    n += (size_t)w;
    for (const char *v = val; *v; v++) {
        ck_assert_uint_lt(n + 3, size);
        if (*v == '\'' || *v == '\\')
            out[n++] = '\\';
        out[n++] = *v;
    }
    ck_assert_uint_lt(n + 1, size);
    out[n++] = '\'';
    out[n] = '\0';
}

tn_proxy_t *tn_proxy_start(const char *tag) {
    const char *ci = getenv("OUTBOX_TEST_PG");
    ck_assert_msg(ci && *ci, "OUTBOX_TEST_PG is not set: run the suites through make check");
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(ci, &err);
    ck_assert_msg(opts, "cannot parse OUTBOX_TEST_PG: %s", err ? err : "?");
    tn_proxy_t *p = calloc(1, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    /* The test cluster listens on 127.0.0.1 besides its socket directory (with-services.sh). */
    const char *pg_port = NULL;
    conninfo_add(p->conninfo, sizeof(p->conninfo), "host", "127.0.0.1");
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "port"))
            pg_port = o->val;
        else if (strcmp(o->keyword, "host") && strcmp(o->keyword, "hostaddr"))
            conninfo_add(p->conninfo, sizeof(p->conninfo), o->keyword, o->val);
    }
    ck_assert_msg(pg_port, "OUTBOX_TEST_PG has no port: %s", ci);
    char *prog = tk_build_path("freeze-proxy");
    const char *argv[] = {prog, "0", "127.0.0.1", pg_port, NULL};
    p->proc = tk_proc_start(tag, argv);
    free(prog);
    PQconninfoFree(opts);
    ck_assert_msg(tk_wait_file_contains(p->proc->out_path, "\n", 10000),
                  "freeze-proxy printed no port within 10 s; its stderr:\n%s", tk_file_tail(p->proc->err_path, 2000));
    char *out = tk_read_file(p->proc->out_path);
    p->port = atoi(out);
    free(out);
    ck_assert_msg(p->port > 0, "freeze-proxy printed no port");
    char port[16];
    snprintf(port, sizeof(port), "%d", p->port);
    conninfo_add(p->conninfo, sizeof(p->conninfo), "port", port);
    return p;
}

/* Sends sig and waits for the proxy's line "<what> <n> connections=<c>"; returns c. */
static int proxy_signal(tn_proxy_t *p, int sig, const char *what, int n) {
    tn_proxy_check(p);
    char needle[64];
    snprintf(needle, sizeof(needle), "%s %d connections=", what, n);
    tk_proc_signal(p->proc, sig);
    ck_assert_msg(tk_wait_file_contains(p->proc->out_path, needle, 5000),
                  "freeze-proxy did not confirm '%s' within 5 s; its stderr:\n%s", needle,
                  tk_file_tail(p->proc->err_path, 2000));
    char *out = tk_read_file(p->proc->out_path);
    int conns = atoi(strstr(out, needle) + strlen(needle));
    free(out);
    return conns;
}

int tn_proxy_freeze(tn_proxy_t *p) {
    return proxy_signal(p, SIGUSR1, "frozen", ++p->freezes);
}

void tn_proxy_thaw(tn_proxy_t *p) {
    proxy_signal(p, SIGUSR2, "thawed", ++p->thaws);
}

void tn_proxy_check(tn_proxy_t *p) {
    ck_assert_msg(tk_proc_running(p->proc), "freeze-proxy exited (%s); its stderr:\n%s",
                  tk_status_str(p->proc->status), tk_file_tail(p->proc->err_path, 2000));
}

void tn_proxy_free(tn_proxy_t *p) {
    if (!p)
        return;
    tk_proc_free(p->proc);
    free(p);
}

/* ---- the relay -------------------------------------------------------------------------------- */

int tn_relay_has_key(const char *key) {
    char *prog = tk_build_path("outbox-relay");
    const char *argv[] = {prog, "--help", NULL};
    int timed_out;
    tk_proc_t *p = tk_proc_run("relay-help", argv, 10000, &timed_out);
    char *out = tk_read_file(p->out_path);
    ck_assert_msg(!timed_out && strstr(out, "Keys and defaults"), "outbox-relay --help: %s", tk_status_str(p->status));
    /* Listed as "  <key> <default> <doc>". */
    size_t kl = strlen(key);
    int found = 0;
    for (const char *s = out; (s = strstr(s, key)); s += kl)
        if (s > out && s[-1] == ' ' && (s[kl] == ' ' || s[kl] == '\t'))
            found = 1;
    free(out);
    tk_proc_free(p);
    free(prog);
    return found;
}

int tn_metric(const char *text, const char *name, double *value) {
    size_t nl = strlen(name);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, name, nl) && line[nl] == ' ') {
            *value = strtod(line + nl + 1, NULL);
            return 1;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

double tn_must_metric(const char *text, const char *name) {
    double v = 0;
    TF_CHECK(tn_metric(text, name, &v), "/metrics has no sample %s:\n%s", name, text);
    return v;
}
