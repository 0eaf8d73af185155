// Reads COUNT records of TOPIC from BOOTSTRAP with kafkajs and decodes each with the official
// CloudEvents SDK's Kafka binding (binary mode); prints one JSON line per event, for
// tests/check_cloudevents.c to compare with what was written.  Exit 1 on any error or timeout.
// Usage: node ce_read.mjs BOOTSTRAP TOPIC COUNT
import kafkajs from "kafkajs";
import LZ4Codec from "kafkajs-lz4";
import cloudevents from "cloudevents";

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = kafkajs; // CommonJS modules
const KafkaBinding = cloudevents.Kafka;

CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec; // the relay compresses with lz4

const [bootstrap, topic, countArg] = process.argv.slice(2);
const want = Number(countArg);
const kafka = new Kafka({ clientId: "ce-read", brokers: bootstrap.split(","), logLevel: logLevel.ERROR });
const consumer = kafka.consumer({ groupId: `ce-read-${process.pid}`, sessionTimeout: 10000, heartbeatInterval: 500 });
const timer = setTimeout(() => { console.error(`timeout: fewer than ${want} records`); process.exit(1); }, 60000);
let seen = 0;

await consumer.connect();
await consumer.subscribe({ topic, fromBeginning: true });
await consumer.run({
  eachMessage: async ({ message }) => {
    const headers = {};
    for (const [k, v] of Object.entries(message.headers || {}))
      headers[k] = Buffer.isBuffer(v) ? v.toString("utf8") : String(v);
    const ev = KafkaBinding.toEvent({ key: message.key, value: message.value, headers, timestamp: message.timestamp });
    ev.validate(); // throws on a missing or malformed attribute
    const data = ev.data === undefined || ev.data === null ? Buffer.alloc(0)
      : Buffer.isBuffer(ev.data) ? ev.data : Buffer.from(typeof ev.data === "string" ? ev.data : JSON.stringify(ev.data));
    const out = { ...ev.toJSON(), data: undefined, data_base64: data.toString("base64"),
                  traceparent: headers.traceparent ?? null, tracestate: headers.tracestate ?? null,
                  mode: KafkaBinding.isEvent({ key: message.key, value: message.value, headers }) ? "event" : "none" };
    console.log(JSON.stringify(out));
    if (++seen >= want) {
      clearTimeout(timer);
      setImmediate(async () => { await consumer.disconnect(); process.exit(0); });
    }
  },
});
