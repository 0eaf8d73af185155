/*
 * Example order service: each order is one transaction that inserts the order row and its
 * orders.OrderCreated event through liboutbox; about one in ten transactions rolls back.
 * With --consume it instead applies the customer service's credit decisions to its orders.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <outbox/outbox.h>

#include "orders.pb-c.h"

static void die(const char *what, const char *why) {
    fprintf(stderr, "order-service: %s: %s\n", what, why);
    exit(1);
}

static PGresult *exec_ok(PGconn *conn, const char *sql, int n, const char *const *params) {
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        die(sql, PQresultErrorMessage(res));
    return res;
}

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

/* Approves or rejects the order a credit decision is about, once per decision. */
static outbox_handler_result_t on_decision(const outbox_message_t *msg, PGconn *conn, void *opaque) {
    (void)opaque;
    const char *type = outbox_message_type(msg);
    int approved = !strcmp(type, "customers.CreditReserved");
    if (!approved && strcmp(type, "customers.CreditLimitExceeded") != 0)
        return OUTBOX_HANDLER_OK;
    size_t len;
    const void *p = outbox_message_payload(msg, &len);
    Examples__Orders__CreditDecision *d = examples__orders__credit_decision__unpack(NULL, len, p);
    if (!d)
        return OUTBOX_HANDLER_REJECT;
    char id[32];
    snprintf(id, sizeof(id), "%lld", (long long)d->order_id);
    const char *params[2] = {id, approved ? "APPROVED" : "REJECTED"};
    PGresult *res = PQexecParams(conn,
                                 "UPDATE orders SET status = $2, decided_at = clock_timestamp() "
                                 "WHERE id = $1 AND status = 'PENDING'",
                                 2, NULL, params, NULL, NULL, 0);
    outbox_handler_result_t r = PQresultStatus(res) == PGRES_COMMAND_OK ? OUTBOX_HANDLER_OK : OUTBOX_HANDLER_RETRY;
    PQclear(res);
    examples__orders__credit_decision__free_unpacked(d, NULL);
    return r;
}

static int consume(const char *bootstrap) {
    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "consumer.group.id", "order-service", err, sizeof(err));
    if (outbox_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err)))
        die("--consume", err);
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    if (!c)
        die("consumer", err);
    const char *topics[] = {"customers"};
    outbox_consumer_subscribe(c, topics, 1);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop)
        if (outbox_consumer_poll(c, on_decision, NULL, 100) != OUTBOX_OK)
            fprintf(stderr, "order-service: %s\n", outbox_consumer_errmsg(c));
    outbox_consumer_stats_t st;
    outbox_consumer_stats(c, &st);
    printf("order-service consumer: processed=%lld duplicates=%lld retried=%lld rejected=%lld\n",
           (long long)st.processed, (long long)st.duplicates, (long long)st.retried, (long long)st.rejected);
    outbox_consumer_destroy(c);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--consume"))
        return consume(argv[2]);
    long orders = 10000, customers = 100, rollback_pct = 10;
    const char *out_dir = ".";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--orders"))
            orders = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--customers"))
            customers = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rollback-percent"))
            rollback_pct = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--out"))
            out_dir = argv[i + 1];
        else
            die("unknown argument", argv[i]);
    }
    if (orders < 1 || customers < 1 || rollback_pct < 0 || rollback_pct > 100)
        die("arguments", "--orders and --customers must be >= 1, --rollback-percent 0..100");
    const char *ci = getenv("OUTBOX_PG_CONNINFO");
    PGconn *conn = PQconnectdb(ci ? ci : "");
    if (PQstatus(conn) != CONNECTION_OK)
        die("connect (set OUTBOX_PG_CONNINFO)", PQerrorMessage(conn));

    char err[512];
    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "log.level", "4", err, sizeof(err));
    outbox_t *ob = outbox_new(conf, err, sizeof(err));
    if (!ob || outbox_migrate(ob, conn) != OUTBOX_OK)
        die("outbox", ob ? outbox_errmsg(ob) : err);
    PQclear(exec_ok(conn,
                    "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer_id text NOT NULL,"
                    " amount_cents bigint NOT NULL, status text NOT NULL DEFAULT 'PENDING',"
                    " created_at timestamptz NOT NULL DEFAULT clock_timestamp(), decided_at timestamptz)",
                    0, NULL));
    PQclear(exec_ok(conn,
                    "CREATE TABLE IF NOT EXISTS customers (id text PRIMARY KEY, orders bigint NOT NULL DEFAULT 0)",
                    0, NULL));

    char path[512];
    snprintf(path, sizeof(path), "%s/committed.txt", out_dir);
    FILE *committed = fopen(path, "w");
    snprintf(path, sizeof(path), "%s/rolledback.txt", out_dir);
    FILE *rolled = fopen(path, "w");
    if (!committed || !rolled)
        die("cannot write id files in", out_dir);

    srand(42);
    long n_commit = 0, n_rollback = 0;
    for (long i = 0; i < orders; i++) {
        char cust[32], amount[32];
        snprintf(cust, sizeof(cust), "customer-%ld", (long)(rand() % customers));
        snprintf(amount, sizeof(amount), "%d", 100 + rand() % 100000);
        int roll_back = rand() % 100 < rollback_pct;

        PQclear(exec_ok(conn, "BEGIN", 0, NULL));
        /* Updating the customer row first serialises this customer's orders, which is what
         * keeps their events in order (the outbox id order of one key is its commit order). */
        const char *cp[1] = {cust};
        PGresult *res = exec_ok(conn,
                                "INSERT INTO customers (id, orders) VALUES ($1, 1) ON CONFLICT (id) DO "
                                "UPDATE SET orders = customers.orders + 1 RETURNING orders", 1, cp);
        long seq = atol(PQgetvalue(res, 0, 0));
        PQclear(res);
        const char *op[2] = {cust, amount};
        res = exec_ok(conn, "INSERT INTO orders (customer_id, amount_cents) VALUES ($1, $2) RETURNING id",
                      2, op);
        long order_id = atol(PQgetvalue(res, 0, 0));
        PQclear(res);

        Examples__Orders__OrderCreated ev = EXAMPLES__ORDERS__ORDER_CREATED__INIT;
        ev.order_id = order_id;
        ev.customer_id = cust;
        ev.amount_cents = atol(amount);
        ev.customer_seq = seq;
        uint8_t buf[256];
        size_t len = examples__orders__order_created__pack(&ev, buf);

        outbox_message_t *m = outbox_message_new(OUTBOX_EVENT, "orders", "orders.OrderCreated");
        outbox_message_set_key(m, cust, strlen(cust));
        outbox_message_set_payload(m, buf, len);
        if (outbox_send(ob, conn, m) != OUTBOX_OK)
            die("outbox_send", outbox_errmsg(ob));
        PQclear(exec_ok(conn, roll_back ? "ROLLBACK" : "COMMIT", 0, NULL));
        fprintf(roll_back ? rolled : committed, "%s\n", outbox_message_id(m));
        if (roll_back)
            n_rollback++;
        else
            n_commit++;
        outbox_message_destroy(m);
    }
    fclose(committed);
    fclose(rolled);
    printf("order-service: %ld orders committed, %ld rolled back\n", n_commit, n_rollback);
    outbox_destroy(ob);
    PQfinish(conn);
    return 0;
}
