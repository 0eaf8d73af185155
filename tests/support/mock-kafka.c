/* mock-kafka: a Kafka-protocol broker for tests and the demo, run in its own
 * process on librdkafka's mock cluster and steered by line commands. */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_LINE 4096
#define MAX_WORDS 64
#define MAX_PARTITIONS 10000
#define MAX_ERR_COUNT 100000
#define MAX_TOPIC_LEN 249
/* librdkafka 2.0.2 hard-codes this for topics the mock auto-creates. */
#define MOCK_AUTO_PARTITIONS 4
#define API_PRODUCE 0

static volatile sig_atomic_t stop_signal;

struct topic_spec {
    const char *name;
    int partitions; /* 0: use --partitions */
};

struct options {
    int brokers;
    int partitions;
    struct topic_spec *topics;
    size_t ntopics;
    const char *control;
};

struct server {
    rd_kafka_mock_cluster_t *mc;
    int brokers;
    int partitions;
};

/* Bytes read from one input (stdin or a client) not yet split into lines. */
struct linebuf {
    char buf[MAX_LINE];
    size_t len;
    int overflow; /* discarding the rest of an over-long line */
};

struct api_name {
    const char *name;
    int key;
};

static const struct api_name api_names[] = {
    {"Produce", 0},           {"Fetch", 1},
    {"ListOffsets", 2},       {"Metadata", 3},
    {"OffsetCommit", 8},      {"OffsetFetch", 9},
    {"FindCoordinator", 10},  {"JoinGroup", 11},
    {"Heartbeat", 12},        {"LeaveGroup", 13},
    {"SyncGroup", 14},        {"DescribeGroups", 15},
    {"ListGroups", 16},       {"SaslHandshake", 17},
    {"ApiVersions", 18},      {"CreateTopics", 19},
    {"InitProducerId", 22},   {"OffsetForLeaderEpoch", 23},
    {"AddPartitionsToTxn", 24}, {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},           {"TxnOffsetCommit", 28},
};

static void usage(FILE *out)
{
    fputs(
        "usage: mock-kafka [--brokers N] [--partitions P]\n"
        "                  [--topic NAME[:PARTITIONS]]... [--control PATH]"
        " [--help]\n"
        "\n"
        "Runs a librdkafka mock Kafka cluster until SIGTERM/SIGINT or `quit`.\n"
        "The first line on stdout is the bootstrap server list; librdkafka\n"
        "logs go to stderr.\n"
        "\n"
        "  --brokers N        number of brokers, ids 1..N (default 1)\n"
        "  --partitions P     partitions for --topic without :PARTITIONS\n"
        "                     (default 4)\n"
        "  --topic NAME[:P]   create NAME at start-up with replication\n"
        "                     factor min(3,N); may be repeated\n"
        "  --control PATH     also accept commands on a unix stream socket\n"
        "\n"
        "Topics not created up front are auto-created by the mock when a\n"
        "client asks for them in a Metadata request (producers do by\n"
        "default), always with 4 partitions and replication factor\n"
        "min(3,N): librdkafka 2.0.2 offers no way to change that, so\n"
        "--partitions does not apply to them.\n"
        "\n"
        "Commands, one per line on stdin or the control socket; each gets\n"
        "one reply line, `ok [info]` or `error: <message>`:\n"
        "  topic NAME PARTITIONS [REPLICATION]   create a topic\n"
        "  down BROKER | up BROKER                BROKER is 1..N or all\n"
        "  rtt BROKER MS                          add round-trip delay\n"
        "  leader TOPIC PARTITION BROKER          move partition leader (an\n"
        "                                         unknown TOPIC is created,\n"
        "                                         PARTITION+1 partitions)\n"
        "  produce-errors COUNT ERR [ERR...]      fail the next COUNT\n"
        "                                         Produce requests (last ERR\n"
        "                                         repeats)\n"
        "  broker-errors BROKER API ERR RTT_MS [COUNT]\n"
        "                                         answer the next COUNT\n"
        "                                         (default 1) API requests\n"
        "                                         to BROKER with ERR after\n"
        "                                         RTT_MS\n"
        "  clear [API]                            drop pushed cluster-wide\n"
        "                                         errors (default Produce)\n"
        "  bootstrap                              ok <bootstrap list>\n"
        "  ping                                   ok\n"
        "  quit                                   ok, then exit 0\n"
        "ERR is a number or an error name such as NOT_ENOUGH_REPLICAS,\n"
        "REQUEST_TIMED_OUT, NOT_LEADER_FOR_PARTITION, _TRANSPORT or NO_ERROR.\n"
        "API is a number or a name such as Produce, Metadata, InitProducerId.\n"
        "Quirk of librdkafka 2.0.2: once broker-errors was used for an API on\n"
        "a broker, that broker ignores produce-errors/cluster-wide errors for\n"
        "the API, even after its own queue has drained.\n"
        "\n"
        "Exit status: 0 on quit or signal, 1 on start-up failure, 2 on bad\n"
        "arguments.\n",
        out);
}

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* Parses a whole decimal string; anything else (empty, trailing junk,
 * out of range) is rejected so that typos surface. */
static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (*s == '\0' || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Kafka allows [A-Za-z0-9._-], at most 249 characters. */
static int valid_topic(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > MAX_TOPIC_LEN)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' &&
            *s != '-')
            return 0;
    return 1;
}

static int parse_err(const char *s, rd_kafka_resp_err_t *out)
{
    const struct rd_kafka_err_desc *descs;
    size_t n, i;
    long num;
    int by_num;

    if (strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0)
        s += 18;
    by_num = parse_long(s, INT_MIN, INT_MAX, &num) == 0;
    rd_kafka_get_err_descs(&descs, &n);
    for (i = 0; i < n; i++) {
        if (!descs[i].name)
            continue; /* the table has holes */
        if (by_num ? (long)descs[i].code == num
                   : strcasecmp(descs[i].name, s) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

static int parse_api(const char *s, int16_t *out)
{
    size_t i;
    long num;

    if (parse_long(s, 0, INT16_MAX, &num) == 0) {
        *out = (int16_t)num;
        return 0;
    }
    for (i = 0; i < sizeof(api_names) / sizeof(api_names[0]); i++) {
        if (strcasecmp(api_names[i].name, s) == 0) {
            *out = (int16_t)api_names[i].key;
            return 0;
        }
    }
    return -1;
}

/* "all" maps to -1, which the mock API treats as every broker. */
static int parse_broker(const struct server *srv, const char *s, int allow_all,
                        int32_t *out)
{
    long id;

    if (allow_all && strcasecmp(s, "all") == 0) {
        *out = -1;
        return 0;
    }
    if (parse_long(s, 1, srv->brokers, &id) != 0)
        return -1;
    *out = (int32_t)id;
    return 0;
}

static int replication_for(int brokers)
{
    return brokers < 3 ? brokers : 3;
}

#define REPLY(...) (snprintf(reply, replysz, __VA_ARGS__), 0)

static int reply_rd_err(char *reply, size_t replysz, const char *what,
                        rd_kafka_resp_err_t err)
{
    if (err)
        return REPLY("error: %s: %s (%s)", what, rd_kafka_err2name(err),
                     rd_kafka_err2str(err));
    return REPLY("ok");
}

static int cmd_topic(struct server *srv, char **w, int n, char *reply,
                     size_t replysz)
{
    long parts, repl = replication_for(srv->brokers);

    if (n < 3 || n > 4)
        return REPLY("error: topic: expected `topic NAME PARTITIONS "
                     "[REPLICATION]`");
    if (!valid_topic(w[1]))
        return REPLY("error: topic: bad NAME '%s', expected 1-%d of "
                     "[A-Za-z0-9._-]", w[1], MAX_TOPIC_LEN);
    if (parse_long(w[2], 1, MAX_PARTITIONS, &parts) != 0)
        return REPLY("error: topic: bad PARTITIONS '%s', expected 1..%d",
                     w[2], MAX_PARTITIONS);
    if (n == 4 && parse_long(w[3], 1, srv->brokers, &repl) != 0)
        return REPLY("error: topic: bad REPLICATION '%s', expected 1..%d",
                     w[3], srv->brokers);
    return reply_rd_err(reply, replysz, "topic",
                        rd_kafka_mock_topic_create(srv->mc, w[1], (int)parts,
                                                   (int)repl));
}

static int cmd_updown(struct server *srv, char **w, int n, char *reply,
                      size_t replysz)
{
    int32_t id;
    int up = strcmp(w[0], "up") == 0;

    if (n != 2)
        return REPLY("error: %s: expected `%s BROKER_ID`", w[0], w[0]);
    if (parse_broker(srv, w[1], 1, &id) != 0)
        return REPLY("error: %s: bad BROKER_ID '%s', expected 1..%d or all",
                     w[0], w[1], srv->brokers);
    return reply_rd_err(reply, replysz, w[0],
                        up ? rd_kafka_mock_broker_set_up(srv->mc, id)
                           : rd_kafka_mock_broker_set_down(srv->mc, id));
}

static int cmd_rtt(struct server *srv, char **w, int n, char *reply,
                   size_t replysz)
{
    int32_t id;
    long ms;

    if (n != 3)
        return REPLY("error: rtt: expected `rtt BROKER_ID MS`");
    if (parse_broker(srv, w[1], 1, &id) != 0)
        return REPLY("error: rtt: bad BROKER_ID '%s', expected 1..%d or all",
                     w[1], srv->brokers);
    if (parse_long(w[2], 0, INT_MAX, &ms) != 0)
        return REPLY("error: rtt: bad MS '%s', expected 0..%d", w[2],
                     INT_MAX);
    return reply_rd_err(reply, replysz, "rtt",
                        rd_kafka_mock_broker_set_rtt(srv->mc, id, (int)ms));
}

static int cmd_leader(struct server *srv, char **w, int n, char *reply,
                      size_t replysz)
{
    long part;
    int32_t id;

    if (n != 4)
        return REPLY("error: leader: expected `leader TOPIC PARTITION "
                     "BROKER_ID`");
    if (!valid_topic(w[1]))
        return REPLY("error: leader: bad TOPIC '%s', expected 1-%d of "
                     "[A-Za-z0-9._-]", w[1], MAX_TOPIC_LEN);
    if (parse_long(w[2], 0, MAX_PARTITIONS - 1, &part) != 0)
        return REPLY("error: leader: bad PARTITION '%s', expected 0..%d",
                     w[2], MAX_PARTITIONS - 1);
    if (parse_broker(srv, w[3], 0, &id) != 0)
        return REPLY("error: leader: bad BROKER_ID '%s', expected 1..%d",
                     w[3], srv->brokers);
    return reply_rd_err(reply, replysz, "leader",
                        rd_kafka_mock_partition_set_leader(
                            srv->mc, w[1], (int32_t)part, id));
}

static int cmd_produce_errors(struct server *srv, char **w, int n,
                              char *reply, size_t replysz)
{
    rd_kafka_resp_err_t *errs;
    long count, i;

    if (n < 3)
        return REPLY("error: produce-errors: expected `produce-errors COUNT "
                     "ERR [ERR...]`");
    if (parse_long(w[1], 1, MAX_ERR_COUNT, &count) != 0)
        return REPLY("error: produce-errors: bad COUNT '%s', expected "
                     "1..%d", w[1], MAX_ERR_COUNT);
    if (n - 2 > count)
        return REPLY("error: produce-errors: %d ERRs given but COUNT is %ld",
                     n - 2, count);
    errs = calloc((size_t)count, sizeof(*errs));
    if (!errs)
        return REPLY("error: produce-errors: out of memory");
    for (i = 0; i < count; i++) {
        const char *word = w[2 + (i < n - 2 ? i : n - 3)];

        if (parse_err(word, &errs[i]) != 0) {
            free(errs);
            return REPLY("error: produce-errors: bad ERR '%s', expected an "
                         "error code number or name like NOT_ENOUGH_REPLICAS",
                         word);
        }
    }
    rd_kafka_mock_push_request_errors_array(srv->mc, API_PRODUCE,
                                            (size_t)count, errs);
    free(errs);
    return REPLY("ok");
}

static int cmd_broker_errors(struct server *srv, char **w, int n, char *reply,
                             size_t replysz)
{
    int32_t id;
    int16_t api;
    rd_kafka_resp_err_t err, rerr;
    long rtt, count = 1, i;

    if (n < 5 || n > 6)
        return REPLY("error: broker-errors: expected `broker-errors BROKER_ID "
                     "API ERR RTT_MS [COUNT]`");
    if (parse_broker(srv, w[1], 0, &id) != 0)
        return REPLY("error: broker-errors: bad BROKER_ID '%s', expected "
                     "1..%d", w[1], srv->brokers);
    if (parse_api(w[2], &api) != 0)
        return REPLY("error: broker-errors: bad API '%s', expected an ApiKey "
                     "number or a name like Produce", w[2]);
    if (parse_err(w[3], &err) != 0)
        return REPLY("error: broker-errors: bad ERR '%s', expected an error "
                     "code number or name like REQUEST_TIMED_OUT or NO_ERROR",
                     w[3]);
    if (parse_long(w[4], 0, INT_MAX, &rtt) != 0)
        return REPLY("error: broker-errors: bad RTT_MS '%s', expected 0..%d",
                     w[4], INT_MAX);
    if (n == 6 && parse_long(w[5], 1, MAX_ERR_COUNT, &count) != 0)
        return REPLY("error: broker-errors: bad COUNT '%s', expected 1..%d",
                     w[5], MAX_ERR_COUNT);
    /* The API is variadic; one push per entry appends in the same order. */
    for (i = 0; i < count; i++) {
        rerr = rd_kafka_mock_broker_push_request_error_rtts(
            srv->mc, id, api, 1, err, (int)rtt);
        if (rerr)
            return reply_rd_err(reply, replysz, "broker-errors", rerr);
    }
    return REPLY("ok");
}

static int cmd_clear(struct server *srv, char **w, int n, char *reply,
                     size_t replysz)
{
    int16_t api = API_PRODUCE;

    if (n > 2)
        return REPLY("error: clear: expected `clear [API]`");
    if (n == 2 && parse_api(w[1], &api) != 0)
        return REPLY("error: clear: bad API '%s', expected an ApiKey number "
                     "or a name like Produce", w[1]);
    rd_kafka_mock_clear_request_errors(srv->mc, api);
    return REPLY("ok");
}

/* Runs one command line and writes exactly one reply line (without '\n').
 * Returns 1 when the process should exit afterwards. */
static int run_command(struct server *srv, char *line, char *reply,
                       size_t replysz)
{
    char *w[MAX_WORDS], *save = NULL, *tok;
    int n = 0;

    for (tok = strtok_r(line, " \t\r", &save); tok;
         tok = strtok_r(NULL, " \t\r", &save)) {
        if (n == MAX_WORDS)
            return REPLY("error: too many words, at most %d", MAX_WORDS);
        w[n++] = tok;
    }
    if (n == 0)
        return REPLY("error: empty line, expected a command (ping, topic, "
                     "down, up, rtt, leader, produce-errors, broker-errors, "
                     "clear, bootstrap, quit)");

    if (strcmp(w[0], "ping") == 0 && n == 1)
        return REPLY("ok");
    if (strcmp(w[0], "quit") == 0 && n == 1) {
        snprintf(reply, replysz, "ok");
        return 1;
    }
    if (strcmp(w[0], "bootstrap") == 0 && n == 1)
        return REPLY("ok %s", rd_kafka_mock_cluster_bootstraps(srv->mc));
    if (strcmp(w[0], "ping") == 0 || strcmp(w[0], "quit") == 0 ||
        strcmp(w[0], "bootstrap") == 0)
        return REPLY("error: %s: takes no arguments, got '%s'", w[0], w[1]);
    if (strcmp(w[0], "topic") == 0)
        return cmd_topic(srv, w, n, reply, replysz);
    if (strcmp(w[0], "down") == 0 || strcmp(w[0], "up") == 0)
        return cmd_updown(srv, w, n, reply, replysz);
    if (strcmp(w[0], "rtt") == 0)
        return cmd_rtt(srv, w, n, reply, replysz);
    if (strcmp(w[0], "leader") == 0)
        return cmd_leader(srv, w, n, reply, replysz);
    if (strcmp(w[0], "produce-errors") == 0)
        return cmd_produce_errors(srv, w, n, reply, replysz);
    if (strcmp(w[0], "broker-errors") == 0)
        return cmd_broker_errors(srv, w, n, reply, replysz);
    if (strcmp(w[0], "clear") == 0)
        return cmd_clear(srv, w, n, reply, replysz);
    return REPLY("error: unknown command '%s', expected ping, topic, down, "
                 "up, rtt, leader, produce-errors, broker-errors, clear, "
                 "bootstrap or quit", w[0]);
}

#undef REPLY

static int write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t w = fd == STDOUT_FILENO ? write(fd, s, len)
                                        : send(fd, s, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        s += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads what is available on fd, runs every complete line and replies on
 * out_fd. Returns -1 on EOF/error, 1 after `quit`, else 0. */
static int serve_input(struct server *srv, int fd, int out_fd,
                       struct linebuf *lb)
{
    char reply[MAX_LINE + 512];
    ssize_t r;
    char *nl;
    int quit = 0;

    if (lb->len == sizeof(lb->buf)) {
        /* Buffer full with no newline: answer once, then skip to '\n'. */
        lb->len = 0;
        lb->overflow = 1;
    }
    r = read(fd, lb->buf + lb->len, sizeof(lb->buf) - lb->len);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -1;
    if (r == 0)
        return -1;
    lb->len += (size_t)r;

    while (!quit && (nl = memchr(lb->buf, '\n', lb->len)) != NULL) {
        size_t used = (size_t)(nl - lb->buf) + 1;

        *nl = '\0';
        if (lb->overflow) {
            snprintf(reply, sizeof(reply),
                     "error: line too long, expected at most %d bytes",
                     MAX_LINE - 1);
            lb->overflow = 0;
        } else if (memchr(lb->buf, '\0', used - 1)) {
            snprintf(reply, sizeof(reply),
                     "error: NUL byte in line, expected text");
        } else {
            quit = run_command(srv, lb->buf, reply, sizeof(reply) - 1);
        }
        strcat(reply, "\n");
        if (write_all(out_fd, reply, strlen(reply)) != 0 && !quit)
            return -1;
        memmove(lb->buf, lb->buf + used, lb->len - used);
        lb->len -= used;
    }
    return quit;
}

static int listen_control(const char *path)
{
    struct sockaddr_un addr;
    struct stat st;
    int fd;

    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path) + 1); /* length checked */

    /* A stale socket from a killed run would make bind fail; only remove
     * sockets so a typo cannot delete a regular file. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            fprintf(stderr, "mock-kafka: --control %s: exists and is not a "
                            "socket\n", path);
            return -1;
        }
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, 16) != 0) {
        fprintf(stderr, "mock-kafka: --control %s: %s\n", path,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void log_to_stderr(const rd_kafka_t *rk, int level, const char *fac,
                          const char *buf)
{
    (void)rk;
    fprintf(stderr, "mock-kafka: rdkafka %d %s: %s\n", level, fac, buf);
}

static int bad_arg(const char *opt, const char *val, const char *expected)
{
    fprintf(stderr, "mock-kafka: bad %s '%s': expected %s\n", opt,
            val ? val : "(missing)", expected);
    return -1;
}

static int parse_args(int argc, char **argv, struct options *o)
{
    int i;
    long v;

    o->brokers = 1;
    o->partitions = MOCK_AUTO_PARTITIONS;
    o->topics = calloc((size_t)argc, sizeof(*o->topics));
    o->ntopics = 0;
    o->control = NULL;
    if (!o->topics) {
        fprintf(stderr, "mock-kafka: out of memory\n");
        return -1;
    }

    /* Every option but --help takes a value. */
    for (i = 1; i < argc; i += 2) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--brokers") == 0) {
            if (!val || parse_long(val, 1, 100, &v) != 0)
                return bad_arg(a, val, "a broker count 1..100");
            o->brokers = (int)v;
        } else if (strcmp(a, "--partitions") == 0) {
            if (!val || parse_long(val, 1, MAX_PARTITIONS, &v) != 0)
                return bad_arg(a, val, "a partition count 1..10000");
            o->partitions = (int)v;
        } else if (strcmp(a, "--topic") == 0) {
            struct topic_spec *t = &o->topics[o->ntopics];
            char *colon;

            if (!val)
                return bad_arg(a, val, "NAME[:PARTITIONS]");
            t->name = val;
            t->partitions = 0;
            colon = strrchr(val, ':');
            if (colon) {
                if (parse_long(colon + 1, 1, MAX_PARTITIONS, &v) != 0)
                    return bad_arg(a, val, "NAME[:PARTITIONS] with "
                                           "PARTITIONS 1..10000");
                *colon = '\0'; /* argv strings are ours to modify */
                t->partitions = (int)v;
            }
            if (!valid_topic(val))
                return bad_arg(a, val, "a topic NAME of 1-249 characters "
                                       "[A-Za-z0-9._-]");
            o->ntopics++;
        } else if (strcmp(a, "--control") == 0) {
            if (!val || !*val ||
                strlen(val) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                return bad_arg(a, val, "a unix socket path shorter than "
                                       "108 bytes");
            o->control = val;
        } else {
            return bad_arg("argument", a, "one of --brokers, --partitions, "
                                          "--topic, --control, --help");
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options opt;
    struct server srv;
    struct sigaction sa;
    struct linebuf in_lb, cl_lb;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    char errstr[512];
    int listen_fd = -1, client_fd = -1, stdin_open = 1, quit = 0;
    size_t i;

    if (parse_args(argc, argv, &opt) != 0)
        return 2;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN; /* a vanished control client must not kill us */
    sigaction(SIGPIPE, &sa, NULL);

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, log_to_stderr);
    /* Hides the notice that this idle handle has no bootstrap.servers. */
    rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr));
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        fprintf(stderr, "mock-kafka: rd_kafka_new: %s\n", errstr);
        return 1;
    }
    srv.mc = rd_kafka_mock_cluster_new(rk, opt.brokers);
    srv.brokers = opt.brokers;
    srv.partitions = opt.partitions;
    if (!srv.mc) {
        fprintf(stderr, "mock-kafka: rd_kafka_mock_cluster_new failed\n");
        rd_kafka_destroy(rk);
        return 1;
    }

    for (i = 0; i < opt.ntopics; i++) {
        const struct topic_spec *t = &opt.topics[i];
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(
            srv.mc, t->name, t->partitions ? t->partitions : opt.partitions,
            replication_for(opt.brokers));

        if (err) {
            fprintf(stderr, "mock-kafka: --topic %s: %s\n", t->name,
                    rd_kafka_err2str(err));
            quit = 1;
            break;
        }
    }
    if (!quit && opt.control && (listen_fd = listen_control(opt.control)) < 0)
        quit = 1;
    if (quit) {
        rd_kafka_mock_cluster_destroy(srv.mc);
        rd_kafka_destroy(rk);
        return 1;
    }

    /* Tests read this line to learn where to connect, so it comes only once
     * topics and the control socket are ready. */
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(srv.mc));
    fflush(stdout);

    memset(&in_lb, 0, sizeof(in_lb));
    memset(&cl_lb, 0, sizeof(cl_lb));
    while (!stop_signal && !quit) {
        struct pollfd pfd[2];
        int nfd = 0, in_idx = -1, sock_idx = -1, r;

        if (stdin_open) {
            pfd[nfd].fd = STDIN_FILENO;
            pfd[nfd].events = POLLIN;
            in_idx = nfd++;
        }
        /* One client at a time: others wait in the listen backlog. */
        if (client_fd >= 0 || listen_fd >= 0) {
            pfd[nfd].fd = client_fd >= 0 ? client_fd : listen_fd;
            pfd[nfd].events = POLLIN;
            sock_idx = nfd++;
        }
        /* The timeout bounds how late a signal between the flag check and
         * poll() is noticed. */
        r = poll(pfd, (nfds_t)nfd, 200);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "mock-kafka: poll: %s\n", strerror(errno));
            break;
        }
        if (in_idx >= 0 && pfd[in_idx].revents) {
            r = serve_input(&srv, STDIN_FILENO, STDOUT_FILENO, &in_lb);
            if (r < 0)
                stdin_open = 0; /* EOF: keep serving until a signal */
            else
                quit = r;
        }
        if (!quit && sock_idx >= 0 && pfd[sock_idx].revents) {
            if (client_fd < 0) {
                client_fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                memset(&cl_lb, 0, sizeof(cl_lb));
            } else {
                r = serve_input(&srv, client_fd, client_fd, &cl_lb);
                if (r < 0) {
                    close(client_fd);
                    client_fd = -1;
                } else {
                    quit = r;
                }
            }
        }
    }

    if (client_fd >= 0)
        close(client_fd);
    if (listen_fd >= 0) {
        close(listen_fd);
        unlink(opt.control);
    }
    rd_kafka_mock_cluster_destroy(srv.mc);
    rd_kafka_destroy(rk);
    free(opt.topics);
    return 0;
}
