/*
 * Kafka client configuration shared by the relay's producer, the consumer and the benchmarks:
 * our defaults first, then every kafka.* key of the outbox conf, unchanged.
 */
#include <librdkafka/rdkafka.h>

#include "outbox_int.h"

/* Safe (idempotent, acks from all in-sync replicas, never give up on a message while the
 * broker is away) and fast (large batches with a short linger, lz4). */
static const char *const producer_defaults[] = {
    "enable.idempotence", "true",
    "acks", "all",
    "partitioner", "murmur2_random",
    "linger.ms", "5",
    "compression.codec", "lz4",
    "message.timeout.ms", "0", /* infinite: an outage delays messages, never drops them */
    /* librdkafka's 10 s ceiling left a relay idle for up to 10 s after the brokers came back
     * (fault suite: 6.5 s to recover from 4.6 s of all brokers down). */
    "reconnect.backoff.max.ms", "1000",
    "batch.num.messages", "10000",
    "queue.buffering.max.messages", "1000000",
    "queue.buffering.max.kbytes", "1048576",
    NULL,
};

const char *const *outbox_kafka_producer_defaults(void) {
    return producer_defaults;
}

rd_kafka_conf_t *outbox_kafka_conf(const outbox_conf_t *conf, const char *const *defaults,
                                   char *errstr, size_t errstr_size) {
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    for (const char *const *kv = defaults; kv && kv[0]; kv += 2)
        if (rd_kafka_conf_set(kc, kv[0], kv[1], errstr, errstr_size) != RD_KAFKA_CONF_OK)
            goto fail;
    for (size_t i = 0; conf && i < conf->kafka_cnt; i++)
        if (rd_kafka_conf_set(kc, conf->kafka[i].key, conf->kafka[i].value, errstr, errstr_size) !=
            RD_KAFKA_CONF_OK)
            goto fail;
    return kc;
fail:
    rd_kafka_conf_destroy(kc);
    return NULL;
}

int outbox_kafka_conf_logs(rd_kafka_conf_t *kc, void (*log_cb)(const rd_kafka_t *, int, const char *,
                                                                const char *),
                           char *errstr, size_t errstr_size) {
    rd_kafka_conf_set_log_cb(kc, log_cb);
    return rd_kafka_conf_set(kc, "log.queue", "true", errstr, errstr_size) == RD_KAFKA_CONF_OK ? 0 : -1;
}

void outbox_kafka_log(const outbox_conf_t *conf, int level, const char *fac, const char *buf) {
    char msg[1024], f[64];
    outbox_log(conf, level, "KAFKA", "msg=\"%s\" kafka_fac=\"%s\"",
               outbox_logfmt_value(buf, msg, sizeof(msg)), outbox_logfmt_value(fac, f, sizeof(f)));
}
