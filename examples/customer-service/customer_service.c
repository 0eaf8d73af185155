/*
 * Example customer service: consumes orders.OrderCreated, reserves credit in its own table and
 * publishes customers.CreditReserved or customers.CreditLimitExceeded through its own outbox, all
 * in the consumer's transaction, so a redelivered order never reserves credit twice.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <outbox/outbox.h>

#include "orders.pb-c.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

#define CREDIT_LIMIT_CENTS "2500000"

static outbox_handler_result_t on_order(const outbox_message_t *msg, PGconn *conn, void *opaque) {
    outbox_t *ob = opaque;
    if (strcmp(outbox_message_type(msg), "orders.OrderCreated") != 0)
        return OUTBOX_HANDLER_OK; /* not ours to act on */
    size_t len;
    const void *p = outbox_message_payload(msg, &len);
    Examples__Orders__OrderCreated *ev = examples__orders__order_created__unpack(NULL, len, p);
    if (!ev)
        return OUTBOX_HANDLER_REJECT;
    char amount[32];
    snprintf(amount, sizeof(amount), "%lld", (long long)ev->amount_cents);
    const char *params[2] = {ev->customer_id, amount};
    PGresult *res = PQexecParams(conn,
                                 "INSERT INTO customer_credit (customer_id, limit_cents) VALUES ($1, "
                                 CREDIT_LIMIT_CENTS ") ON CONFLICT (customer_id) DO NOTHING",
                                 1, NULL, params, NULL, NULL, 0);
    PQclear(res);
    res = PQexecParams(conn,
                       "UPDATE customer_credit SET reserved_cents = reserved_cents + $2::bigint "
                       "WHERE customer_id = $1 AND reserved_cents + $2::bigint <= limit_cents "
                       "RETURNING limit_cents - reserved_cents",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        examples__orders__order_created__free_unpacked(ev, NULL);
        return OUTBOX_HANDLER_RETRY;
    }
    int reserved = PQntuples(res) == 1;
    long long available = reserved ? atoll(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    if (!reserved) {
        res = PQexecParams(conn, "SELECT limit_cents - reserved_cents FROM customer_credit WHERE customer_id = $1",
                           1, NULL, params, NULL, NULL, 0);
        available = PQntuples(res) ? atoll(PQgetvalue(res, 0, 0)) : 0;
        PQclear(res);
    }
    Examples__Orders__CreditDecision d = EXAMPLES__ORDERS__CREDIT_DECISION__INIT;
    d.order_id = ev->order_id;
    d.customer_id = ev->customer_id;
    d.amount_cents = ev->amount_cents;
    d.available_cents = available;
    uint8_t buf[256];
    size_t n = examples__orders__credit_decision__pack(&d, buf);
    outbox_message_t *out = outbox_message_new(OUTBOX_EVENT, "customers",
                                               reserved ? "customers.CreditReserved"
                                                        : "customers.CreditLimitExceeded");
    outbox_message_set_key(out, ev->customer_id, strlen(ev->customer_id));
    outbox_message_set_payload(out, buf, n);
    outbox_message_set_correlation_id(out, outbox_message_id(msg));
    outbox_err_t err = outbox_send(ob, conn, out);
    outbox_message_destroy(out);
    examples__orders__order_created__free_unpacked(ev, NULL);
    if (err) {
        fprintf(stderr, "customer-service: %s\n", outbox_errmsg(ob));
        return OUTBOX_HANDLER_RETRY;
    }
    return OUTBOX_HANDLER_OK;
}

int main(int argc, char **argv) {
    const char *bootstrap = argc > 1 ? argv[1] : NULL;
    if (!bootstrap) {
        fprintf(stderr, "usage: customer-service BOOTSTRAP   (PostgreSQL from OUTBOX_PG_CONNINFO)\n");
        return 2;
    }
    char err[512];
    /* The service's own outbox lives in its own schema, drained by its own relay. */
    outbox_conf_t *wconf = outbox_conf_new();
    outbox_conf_set(wconf, "outbox.schema", "customer_outbox", err, sizeof(err));
    outbox_conf_set(wconf, "log.level", "4", err, sizeof(err));
    outbox_t *ob = outbox_new(wconf, err, sizeof(err));

    outbox_conf_t *conf = outbox_conf_new();
    outbox_conf_set(conf, "consumer.group.id", "customer-service", err, sizeof(err));
    outbox_conf_set(conf, "outbox.schema", "customer_outbox", err, sizeof(err));
    if (outbox_conf_set(conf, "kafka.bootstrap.servers", bootstrap, err, sizeof(err))) {
        fprintf(stderr, "customer-service: %s\n", err);
        return 2;
    }
    outbox_consumer_t *c = outbox_consumer_new(conf, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "customer-service: %s\n", err);
        return 1;
    }
    PGconn *setup = PQconnectdb(getenv("OUTBOX_PG_CONNINFO"));
    if (outbox_migrate(ob, setup) != OUTBOX_OK) {
        fprintf(stderr, "customer-service: %s\n", outbox_errmsg(ob));
        return 1;
    }
    PQclear(PQexec(setup, "CREATE TABLE IF NOT EXISTS customer_credit (customer_id text PRIMARY KEY, "
                          "limit_cents bigint NOT NULL, reserved_cents bigint NOT NULL DEFAULT 0)"));
    PQfinish(setup);

    const char *topics[] = {"orders"};
    outbox_consumer_subscribe(c, topics, 1);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop) {
        if (outbox_consumer_poll(c, on_order, ob, 100) != OUTBOX_OK)
            fprintf(stderr, "customer-service: %s\n", outbox_consumer_errmsg(c));
    }
    outbox_consumer_stats_t st;
    outbox_consumer_stats(c, &st);
    printf("customer-service: processed=%lld duplicates=%lld retried=%lld rejected=%lld\n",
           (long long)st.processed, (long long)st.duplicates, (long long)st.retried, (long long)st.rejected);
    outbox_consumer_destroy(c);
    outbox_destroy(ob);
    return 0;
}
