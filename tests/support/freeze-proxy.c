/* freeze-proxy: a TCP forwarder for tests that can go silent like a partitioned network or a hung
 * pooler (SIGUSR1) and come back (SIGUSR2), without ever closing or resetting a connection. */
/*
 * Usage: freeze-proxy LISTEN_PORT TARGET_HOST TARGET_PORT
 *   Listens on 127.0.0.1:LISTEN_PORT (0 = a free port) and forwards every accepted connection to
 *   TARGET_HOST:TARGET_PORT in both directions; one thread, poll(), any number of connections.
 * stdout, one line each, flushed:
 *   "<port>"                      first, once listening
 *   "frozen <n> connections=<c>"  the n-th SIGUSR1 took effect (c connections open)
 *   "thawed <n> connections=<c>"  the n-th SIGUSR2 took effect
 *   Wait for the line before relying on the new state.  USR1 and USR2 pending together are taken in
 *   signal-number order, so send the next one only after the line of the previous one.
 * stderr: one logfmt line per connection event.
 * SIGUSR1 (freeze): no socket of any connection is read, written, polled or closed any more, in either
 *   direction; new connections are still accepted and connected upstream, and forward nothing.  The
 *   kernel keeps ACKing what peers send until its buffers fill, so the peers see exactly a silent
 *   network: no FIN, no RST, no error, and TCP keepalives are answered.
 * SIGUSR2 (thaw): everything buffered meanwhile is forwarded; closes seen then are passed on.
 * SIGTERM, SIGINT: exit 0.
 * A connection whose upstream is refused or fails is closed on the client side too (while thawed).
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Per direction: large enough for PostgreSQL's bulk results to flow at full speed, small enough for
 * hundreds of connections. */
#define BUF_SIZE 65536

typedef struct {
    int fd;          /* -1 once closed */
    char buf[BUF_SIZE]; /* read from this side, not yet written to the other */
    size_t off, len;
    bool eof;        /* this side sent FIN */
    bool wr_shut;    /* we passed the other side's FIN on to this side */
} side_t;

typedef struct {
    side_t side[2]; /* 0: the client, 1: upstream */
    bool connecting; /* upstream connect() in progress */
    int upstream_err; /* connect() failed at once (errno), handled once thawed */
    unsigned long id;
} conn_t;

static volatile sig_atomic_t want_frozen, want_stop;
static volatile sig_atomic_t freeze_signals, thaw_signals;

static void on_signal(int sig) {
    if (sig == SIGUSR1) {
        want_frozen = 1;
        freeze_signals++;
    } else if (sig == SIGUSR2) {
        want_frozen = 0;
        thaw_signals++;
    } else {
        want_stop = 1;
    }
}

static conn_t **conns;
static size_t n_conns, cap_conns;
static unsigned long next_id = 1;
static struct addrinfo *target;

static void conn_close(conn_t *c, const char *why) {
    fprintf(stderr, "msg=closed conn=%lu reason=\"%s\"\n", c->id, why);
    for (int i = 0; i < 2; i++)
        if (c->side[i].fd >= 0)
            close(c->side[i].fd);
    c->side[0].fd = c->side[1].fd = -1;
}

static void accept_one(int lfd) {
    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
            fprintf(stderr, "msg=\"accept failed\" error=\"%s\"\n", strerror(errno));
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        close(cfd);
        return;
    }
    c->id = next_id++;
    c->side[0].fd = cfd;
    c->side[1].fd = socket(target->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (c->side[1].fd < 0) {
        c->upstream_err = errno;
    } else {
        setsockopt(c->side[1].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(c->side[1].fd, target->ai_addr, target->ai_addrlen) == 0)
            c->connecting = false;
        else if (errno == EINPROGRESS)
            c->connecting = true;
        else
            c->upstream_err = errno;
    }
    fprintf(stderr, "msg=accepted conn=%lu frozen=%d\n", c->id, (int)want_frozen);
    if (n_conns == cap_conns) {
        size_t cap = cap_conns ? cap_conns * 2 : 64;
        conn_t **n = realloc(conns, cap * sizeof(*n));
        if (!n) {
            conn_close(c, "out of memory");
            free(c);
            return;
        }
        conns = n;
        cap_conns = cap;
    }
    conns[n_conns++] = c;
}

/* Moves bytes between the two sides of c as far as the sockets allow; closes c when done or
 * broken.  revents: what poll reported for each side (0 when it was not polled). */
static void conn_pump(conn_t *c, const short revents[2]) {
    if (c->upstream_err) {
        conn_close(c, strerror(c->upstream_err));
        return;
    }
    if (c->connecting) {
        if (!(revents[1] & (POLLOUT | POLLERR | POLLHUP)))
            return;
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->side[1].fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            char why[128];
            snprintf(why, sizeof(why), "upstream connect: %s", strerror(err));
            conn_close(c, why);
            return;
        }
        c->connecting = false;
    }
    for (int i = 0; i < 2; i++) {
        side_t *from = &c->side[i], *to = &c->side[1 - i];
        /* Read when poll said so, including a hang-up or an error, which read() then reports. */
        if (!from->eof && from->len < BUF_SIZE && (revents[i] & (POLLIN | POLLHUP | POLLERR))) {
            if (from->off > 0) {
                memmove(from->buf, from->buf + from->off, from->len - from->off);
                from->len -= from->off;
                from->off = 0;
            }
            ssize_t r = read(from->fd, from->buf + from->len, BUF_SIZE - from->len);
            if (r > 0) {
                from->len += (size_t)r;
            } else if (r == 0) {
                from->eof = true;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(c, i == 0 ? "client read error" : "upstream read error");
                return;
            }
        }
        /* Write what we hold for the other side; try even without POLLOUT (it usually has room). */
        if (from->off < from->len) {
            ssize_t w = send(to->fd, from->buf + from->off, from->len - from->off, MSG_NOSIGNAL);
            if (w > 0) {
                from->off += (size_t)w;
                if (from->off == from->len)
                    from->off = from->len = 0;
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(c, i == 0 ? "upstream write error" : "client write error");
                return;
            }
        }
        if (from->eof && from->off == from->len && !to->wr_shut) {
            shutdown(to->fd, SHUT_WR);
            to->wr_shut = true;
        }
    }
    if (c->side[0].eof && c->side[1].eof && c->side[0].wr_shut && c->side[1].wr_shut) {
        conn_close(c, "both sides closed");
        return;
    }
    /* A side gone both ways (hang-up) with nothing left to read from it and nothing to send it. */
    for (int i = 0; i < 2; i++)
        if ((revents[i] & (POLLHUP | POLLERR)) && c->side[i].eof && c->side[1 - i].off == c->side[1 - i].len) {
            conn_close(c, i == 0 ? "client hung up" : "upstream hung up");
            return;
        }
}

static void sweep_closed(void) {
    size_t k = 0;
    for (size_t i = 0; i < n_conns; i++) {
        if (conns[i]->side[0].fd < 0)
            free(conns[i]);
        else
            conns[k++] = conns[i];
    }
    n_conns = k;
}

static short side_events(const conn_t *c, int i) {
    if (c->upstream_err)
        return 0;
    if (c->connecting)
        return i == 1 ? POLLOUT : 0;
    const side_t *s = &c->side[i], *other = &c->side[1 - i];
    short ev = 0;
    if (!s->eof && s->len < BUF_SIZE)
        ev |= POLLIN;
    if (other->off < other->len)
        ev |= POLLOUT;
    return ev;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: freeze-proxy LISTEN_PORT TARGET_HOST TARGET_PORT\n");
        return 2;
    }
    struct addrinfo hints = {0};
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(argv[2], argv[3], &hints, &target);
    if (gai) {
        fprintf(stderr, "freeze-proxy: %s:%s: %s\n", argv[2], argv[3], gai_strerror(gai));
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)atoi(argv[1]));
    socklen_t salen = sizeof(sa);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 512) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &salen) != 0) {
        fprintf(stderr, "freeze-proxy: cannot listen on 127.0.0.1:%s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    /* The signals stay blocked except inside ppoll(), so none is lost between checks and waits. */
    sigset_t block, during_poll;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &during_poll);
    sigdelset(&during_poll, SIGUSR1);
    sigdelset(&during_poll, SIGUSR2);
    sigdelset(&during_poll, SIGTERM);
    sigdelset(&during_poll, SIGINT);
    struct sigaction act = {0};
    act.sa_handler = on_signal;
    sigfillset(&act.sa_mask);
    sigaction(SIGUSR1, &act, NULL);
    sigaction(SIGUSR2, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    signal(SIGPIPE, SIG_IGN);

    bool frozen = false;
    int seen_freezes = 0, seen_thaws = 0;
    struct pollfd *pfds = NULL;
    size_t pfd_cap = 0;
    while (!want_stop) {
        /* Take the state first, then report every signal taken, so that a test waiting for its
         * line finds the state in effect.  The kind that is in effect now is reported last. */
        if (frozen != (bool)want_frozen) {
            frozen = want_frozen;
            fprintf(stderr, "msg=%s connections=%zu\n", frozen ? "frozen" : "thawed", n_conns);
        }
        for (int pass = 0; pass < 2; pass++) {
            bool report_freezes = (pass == 0) != frozen;
            for (; report_freezes && seen_freezes < freeze_signals; seen_freezes++)
                printf("frozen %d connections=%zu\n", seen_freezes + 1, n_conns);
            for (; !report_freezes && seen_thaws < thaw_signals; seen_thaws++)
                printf("thawed %d connections=%zu\n", seen_thaws + 1, n_conns);
        }
        fflush(stdout);

        size_t need = 1 + 2 * n_conns;
        if (need > pfd_cap) {
            pfd_cap = need * 2;
            pfds = realloc(pfds, pfd_cap * sizeof(*pfds));
            if (!pfds) {
                fprintf(stderr, "freeze-proxy: out of memory\n");
                return 1;
            }
        }
        pfds[0] = (struct pollfd){lfd, POLLIN, 0};
        for (size_t i = 0; i < n_conns; i++)
            for (int s = 0; s < 2; s++) {
                conn_t *c = conns[i];
                /* Frozen: not even polled, so that no hang-up or reset is noticed, let alone passed on. */
                pfds[1 + 2 * i + (size_t)s] =
                    (struct pollfd){frozen || c->side[s].fd < 0 ? -1 : c->side[s].fd, frozen ? 0 : side_events(c, s), 0};
            }
        /* A connection that failed at once needs no event to be closed. */
        int timeout_ms = -1;
        for (size_t i = 0; i < n_conns && !frozen; i++)
            if (conns[i]->upstream_err)
                timeout_ms = 0;
        struct timespec ts = {0, 0}, *tsp = timeout_ms == 0 ? &ts : NULL;
        int r = ppoll(pfds, need, tsp, &during_poll);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "freeze-proxy: poll: %s\n", strerror(errno));
            return 1;
        }
        size_t polled = n_conns; /* accept_one() may append */
        if (pfds[0].revents & POLLIN)
            for (int k = 0; k < 64; k++) {
                size_t before = n_conns;
                accept_one(lfd);
                if (n_conns == before)
                    break;
            }
        if (frozen || want_frozen)
            continue;
        for (size_t i = 0; i < polled; i++) {
            short rev[2] = {pfds[1 + 2 * i].revents, pfds[2 + 2 * i].revents};
            conn_pump(conns[i], rev);
        }
        sweep_closed();
    }
    fprintf(stderr, "msg=exiting connections=%zu\n", n_conns);
    return 0;
}
