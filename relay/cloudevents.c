/*
 * cloudevents.c: relay.format = cloudevents, the record of a row in the CloudEvents 1.0 Kafka
 * binding's binary mode (the building is lib/cloudevents.c's; this is the relay's seam to it).
 */
#include "relay.h"

rd_kafka_headers_t *ce_row_headers(relay_t *r, batch_t *b, int i, const void **value, size_t *value_len,
                                   char *dead, size_t dead_size) {
    const relay_row_t *row = &b->rows[i];
    /* Room for the attributes (up to 9), content-type and a few of the message's own headers. */
    rd_kafka_headers_t *h = rd_kafka_headers_new(16);
    int rc = outbox_ce_record(row->value, row->value_len, r->set.ce_source, row->key, row->key_len, h, value,
                              value_len, dead, dead_size, &r->set.ce_time);
    if (rc == 0)
        return h;
    rd_kafka_headers_destroy(h);
    if (rc != -1 && dead_size)
        *dead = '\0'; /* out of memory: the row is sent again, not failed */
    return NULL;
}
