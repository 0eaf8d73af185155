// Reads a topic that outbox-relay publishes with relay.format=cloudevents (CloudEvents 1.0, Kafka
// binding, binary mode) through the official CloudEvents JavaScript SDK, and prints each event with
// the W3C trace context it carries.  No .proto, no liboutbox: any CloudEvents SDK reads the topic.
//
//   npm install
//   node reader.mjs localhost:9092 orders [group]
import kafkajs from "kafkajs";
import LZ4Codec from "kafkajs-lz4";
import cloudevents from "cloudevents";

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = kafkajs;
// The relay compresses with lz4 (kafka.compression.codec); kafkajs needs the codec registered.
CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec;

const [bootstrap = "localhost:9092", topic = "orders", group = "cloudevents-reader"] = process.argv.slice(2);
const kafka = new Kafka({ clientId: "cloudevents-reader", brokers: bootstrap.split(","), logLevel: logLevel.WARN });
const consumer = kafka.consumer({ groupId: group });

await consumer.connect();
await consumer.subscribe({ topic, fromBeginning: true });
await consumer.run({
  eachMessage: async ({ partition, message }) => {
    const headers = {};
    for (const [k, v] of Object.entries(message.headers || {}))
      headers[k] = Buffer.isBuffer(v) ? v.toString("utf8") : String(v);
    const kafkaMessage = { key: message.key, value: message.value, headers, timestamp: message.timestamp };
    if (!cloudevents.Kafka.isEvent(kafkaMessage)) {
      console.log(`partition ${partition} offset ${message.offset}: not a CloudEvent (relay.format=envelope?)`);
      return;
    }
    const ev = cloudevents.Kafka.toEvent(kafkaMessage);
    ev.validate();
    // Extensions: outboxkind (EVENT, COMMAND, REPLY, DOCUMENT), schemaversion, correlationid, replyto.
    console.log(`${ev.time} ${ev.type} id=${ev.id} source=${ev.source} subject=${ev.subject ?? ""} ` +
                `kind=${ev.outboxkind} schema=${ev.schemaversion} content-type=${ev.datacontenttype} ` +
                `bytes=${ev.data ? ev.data.length : 0} traceparent=${headers.traceparent ?? "-"}`);
    // A consumer that wants exactly-once effects deduplicates by ev.id (a UUIDv7), as liboutbox's
    // consumer does in outbox.processed.
  },
});
for (const sig of ["SIGINT", "SIGTERM"])
  process.on(sig, async () => { await consumer.disconnect(); process.exit(0); });
