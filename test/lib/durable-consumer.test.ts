// The one ensureConsumer of the features worker and the sink, against real JetStream: created when
// missing (also by two workers at once), its tunables brought up to date, and a consumer that reads
// other subjects refused rather than reused.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { AckPolicy, connect, DeliverPolicy, nanos, type JetStreamManager, type NatsConnection } from "nats";
import { ensureConsumer, type DurableConsumerConfig } from "../../lib/durable-consumer.js";

const tag = randomBytes(4).toString("hex");
const stream = `T_DURABLE_${tag}`;
let nc: NatsConnection;
let jsm: JetStreamManager;

before(async () => {
  nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
  jsm = await nc.jetstreamManager();
  await jsm.streams.add({ name: stream, subjects: [`t_durable_${tag}.>`] });
});
after(async () => {
  await jsm?.streams.delete(stream).catch(() => undefined);
  await nc?.close();
});

const config = (name: string, ackWaitMs: number): DurableConsumerConfig => ({
  durable_name: name,
  filter_subject: `t_durable_${tag}.a`,
  ack_policy: AckPolicy.Explicit,
  deliver_policy: DeliverPolicy.All,
  ack_wait: nanos(ackWaitMs),
  max_ack_pending: 100,
});

test("two workers creating the same missing consumer at once both succeed, and it is made once", async () => {
  await Promise.all([ensureConsumer(jsm, stream, config("both", 30_000)), ensureConsumer(jsm, stream, config("both", 30_000))]);
  const info = await jsm.consumers.info(stream, "both");
  assert.equal(info.config.filter_subject, `t_durable_${tag}.a`);
  assert.equal(info.config.ack_wait, nanos(30_000));
});

test("an existing consumer gets the new ack wait and most unacked, and keeps its place in the stream", async () => {
  await ensureConsumer(jsm, stream, config("tuned", 30_000));
  const js = nc.jetstream();
  await js.publish(`t_durable_${tag}.a`, "one");
  const before = await jsm.consumers.info(stream, "tuned");
  await ensureConsumer(jsm, stream, { ...config("tuned", 5_000), max_ack_pending: 7 });
  const info = await jsm.consumers.info(stream, "tuned");
  assert.equal(info.config.ack_wait, nanos(5_000));
  assert.equal(info.config.max_ack_pending, 7);
  assert.equal(info.num_pending, before.num_pending, "the same consumer, not a new one");
});

test("a consumer of that name reading other subjects is an error that says how to fix it", async () => {
  await ensureConsumer(jsm, stream, config("other", 30_000));
  await assert.rejects(
    ensureConsumer(jsm, stream, { ...config("other", 30_000), filter_subject: `t_durable_${tag}.b` }),
    /filters "t_durable_\w+\.a", expected "t_durable_\w+\.b"; delete it to recreate/,
  );
});
