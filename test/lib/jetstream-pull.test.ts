// The pull consumer the features worker reads with, against real NATS JetStream: every message
// once with acks, redelivery of what was not acked, naks with a delay, bounded asks while paused,
// a consumer deleted under it, and a server restart.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, connect, DeliverPolicy, nanos, type NatsConnection } from "nats";
import { PullConsumer, parseAckSubject, type PulledMessage, type PullStatus } from "../../lib/jetstream-pull.js";
import { OwnService } from "../faults/own-services.js";
import { waitFor } from "../features/helpers.js";

const tag = randomBytes(4).toString("hex");

async function setup(nc: NatsConnection, name: string, ackWaitMs = 30_000) {
  const jsm = await nc.jetstreamManager();
  const stream = `T_PULL_${name}_${tag}`;
  const subject = `t_pull_${name}_${tag}.x`;
  await jsm.streams.add({ name: stream, subjects: [subject] });
  await jsm.consumers.add(stream, {
    durable_name: "c",
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(ackWaitMs),
    max_deliver: -1,
  });
  const js = nc.jetstream();
  const publish = async (n: number, from = 0) => {
    for (let i = from; i < from + n; i += 200)
      await Promise.all(Array.from({ length: Math.min(200, from + n - i) }, (_, j) => js.publish(subject, String(i + j))));
  };
  const pending = async () => {
    const info = await jsm.consumers.info(stream, "c");
    return info.num_pending + info.num_ack_pending;
  };
  return { jsm, stream, subject, publish, pending, cleanup: () => jsm.streams.delete(stream).catch(() => undefined) };
}

describe("on the shared NATS", () => {
  let nc: NatsConnection;
  before(async () => {
    nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
  });
  after(async () => {
    await nc?.close();
  });

  test("acks a batch in one write: nothing stays pending, nothing comes back after the ack wait", async () => {
    const s = await setup(nc, "ackall", 1000);
    try {
      await s.publish(2500);
      const seen: PulledMessage[] = [];
      let held: PulledMessage[] = [];
      let pc: PullConsumer | undefined;
      pc = new PullConsumer(nc, {
        stream: s.stream,
        consumer: "c",
        batch: 300,
        onMessage: (m) => {
          seen.push(m);
          held.push(m);
          // Uneven chunks, the last one short, as a worker's batches are.
          if (held.length === 700 || seen.length === 2500) {
            pc!.ackAll(held);
            held = [];
          }
        },
      });
      await waitFor("all messages", async () => seen.length === 2500, 20_000);
      await waitFor("all acked", async () => (await s.pending()) === 0, 10_000);
      await sleep(1500); // past the ack wait: an ack the server missed would come back now
      pc.stop();
      assert.equal(seen.length, 2500, "no redelivery");
      assert.ok(seen.every((m) => m.info().deliveryCount === 1));
      assert.equal(new Set(seen.map((m) => m.info().streamSequence)).size, 2500);
    } finally {
      await s.cleanup();
    }
  });

  test("delivers every message once, acked, with its stream sequence and delivery count", async () => {
    const s = await setup(nc, "all");
    try {
      await s.publish(3000);
      const seen = new Map<number, PulledMessage>();
      const pc = new PullConsumer(nc, {
        stream: s.stream,
        consumer: "c",
        batch: 250,
        onMessage: (m) => {
          seen.set(m.info().streamSequence, m);
          m.ack();
        },
      });
      await waitFor("all messages", async () => seen.size === 3000, 20_000);
      pc.stop();
      await waitFor("all acked", async () => (await s.pending()) === 0, 10_000);
      assert.deepEqual(
        [...seen.keys()].sort((a, b) => a - b),
        Array.from({ length: 3000 }, (_, i) => i + 1),
      );
      const first = seen.get(1)!;
      assert.equal(new TextDecoder().decode(first.data), "0");
      assert.equal(first.info().deliveryCount, 1);
      assert.ok(Math.abs(first.info().timestampNanos / 1e6 - Date.now()) < 60_000, "the time the message was stored");
    } finally {
      await s.cleanup();
    }
  });

  test("what is not acked comes back after the ack wait; a nak with a delay comes back after it", async () => {
    const s = await setup(nc, "redeliver", 1000);
    try {
      await s.publish(10);
      const deliveries: { seq: number; count: number; at: number }[] = [];
      const started = Date.now();
      const pc = new PullConsumer(nc, {
        stream: s.stream,
        consumer: "c",
        batch: 10,
        onMessage: (m) => {
          const { streamSequence: seq, deliveryCount: count } = m.info();
          deliveries.push({ seq, count, at: Date.now() - started });
          if (count === 1 && seq === 1) return; // never acked: redelivered after the ack wait
          if (count === 1 && seq === 2) return m.nak(300);
          m.ack();
        },
      });
      await waitFor("both redeliveries", async () => deliveries.filter((d) => d.count === 2).length === 2, 10_000);
      pc.stop();
      const again = deliveries.filter((d) => d.count === 2);
      const one = again.find((d) => d.seq === 1)!;
      const two = again.find((d) => d.seq === 2)!;
      assert.ok(one.at >= 900, `unacked came back after the ack wait (${one.at} ms)`);
      assert.ok(two.at >= 250 && two.at < one.at, `nak(300) came back after its delay, before the ack wait (${two.at} ms)`);
      assert.equal(deliveries.filter((d) => d.count === 1).length, 10);
    } finally {
      await s.cleanup();
    }
  });

  test("paused, it asks for no more than maxWaiting; resumed, it goes on", async () => {
    const s = await setup(nc, "pause");
    try {
      await s.publish(2000);
      let n = 0;
      const pc = new PullConsumer(nc, { stream: s.stream, consumer: "c", batch: 100, maxWaiting: 300, onMessage: (m) => (n++, m.ack()) });
      pc.pause();
      await sleep(500);
      assert.ok(n <= 300, `at most what was asked before the pause (${n})`);
      const held = n;
      await sleep(300);
      assert.equal(n, held, "nothing more while paused");
      pc.resume();
      await waitFor("the rest", async () => n === 2000, 20_000);
      pc.stop();
    } finally {
      await s.cleanup();
    }
  });

  test("a deleted consumer is reported; once created again, pulling resumes by itself", async () => {
    const s = await setup(nc, "deleted");
    try {
      const statuses: PullStatus[] = [];
      let n = 0;
      const pc = new PullConsumer(nc, {
        stream: s.stream,
        consumer: "c",
        batch: 50,
        heartbeatMs: 250,
        onMessage: (m) => (n++, m.ack()),
        onStatus: (st) => statuses.push(st),
      });
      await s.publish(100);
      await waitFor("the first messages", async () => n === 100, 10_000);
      await s.jsm.consumers.delete(s.stream, "c");
      await waitFor("the deletion reported", async () => statuses.length > 0, 10_000);
      await s.jsm.consumers.add(s.stream, { durable_name: "c", ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
      await waitFor("the stream delivered again to the new consumer", async () => n === 200, 15_000);
      pc.stop();
      assert.ok(statuses.includes("consumer_deleted") || statuses.includes("silent"), statuses.join(","));
    } finally {
      await s.cleanup();
    }
  });

  test("reply subjects of both JetStream formats", () => {
    assert.deepEqual(parseAckSubject("$JS.ACK.EVENTS.features.3.1042.998.1733000000000000000.17"), {
      deliveryCount: 3,
      streamSequence: 1042,
      timestampNanos: 1733000000000000000,
    });
    assert.deepEqual(parseAckSubject("$JS.ACK.hub.ACCHASH.EVENTS.features.1.7.7.1733000000000000000.0.tok"), {
      deliveryCount: 1,
      streamSequence: 7,
      timestampNanos: 1733000000000000000,
    });
  });
});

describe("across a NATS restart", () => {
  let server: OwnService;
  before(async () => {
    server = await OwnService.nats();
  });
  after(async () => {
    await server?.remove();
  });

  test("pulls again after the server comes back, and gets what was published meanwhile", async () => {
    const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
    const s = await setup(nc, "restart");
    const got = new Set<string>();
    const pc = new PullConsumer(nc, {
      stream: s.stream,
      consumer: "c",
      batch: 100,
      heartbeatMs: 500,
      onMessage: (m) => (got.add(new TextDecoder().decode(m.data)), m.ack()),
    });
    try {
      await s.publish(500);
      await waitFor("before the restart", async () => got.size === 500, 10_000);
      await server.kill();
      await sleep(500);
      await server.start();
      await waitFor(
        "reconnected",
        async () =>
          !nc.isClosed() &&
          nc.info !== undefined &&
          (await nc.flush().then(
            () => true,
            () => false,
          )),
        15_000,
      );
      await s.publish(500, 500);
      await waitFor("after the restart", async () => got.size === 1000, 20_000);
    } finally {
      pc.stop();
      await s.cleanup();
      await nc.close();
    }
  });
});
