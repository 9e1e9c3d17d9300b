// The pull consumer the features worker reads with, both implementations (the hand-written one and
// nats.js fetch()) against real NATS JetStream: every message once with acks, redelivery of what
// was not acked, naks with a delay, bounded asks while paused, a consumer deleted under it, and a
// server restart. And the fence: the nats.js internals the fast one writes through are still there.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, connect, DeliverPolicy, nanos, type NatsConnection } from "nats";
import {
  createPullConsumer,
  fastPullSupported,
  installedNatsVersion,
  NATS_INTERNALS_CHECKED,
  parseAckSubject,
  PULL_IMPLEMENTATIONS,
  type PullConsumer,
  type PulledMessage,
  type PullStatus,
} from "../../lib/jetstream-pull.js";
import { rawProtocol } from "../../lib/jetstream-pull-fast.js";
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

for (const impl of PULL_IMPLEMENTATIONS)
  describe(`${impl}: on the shared NATS`, () => {
    let nc: NatsConnection;
    before(async () => {
      nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
    });
    after(async () => {
      await nc?.close();
    });

    test("acks a batch in one write: nothing stays pending, nothing comes back after the ack wait", async () => {
      const s = await setup(nc, `ackall_${impl}`, 1000);
      try {
        await s.publish(2500);
        const seen: PulledMessage[] = [];
        let held: PulledMessage[] = [];
        let pc: PullConsumer | undefined;
        pc = createPullConsumer(nc, {
          implementation: impl,
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
      const s = await setup(nc, `all_${impl}`);
      try {
        await s.publish(3000);
        const seen = new Map<number, PulledMessage>();
        const pc = createPullConsumer(nc, {
          implementation: impl,
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
      const s = await setup(nc, `redeliver_${impl}`, 1000);
      try {
        await s.publish(10);
        const deliveries: { seq: number; count: number; at: number }[] = [];
        const started = Date.now();
        const pc = createPullConsumer(nc, {
          implementation: impl,
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
      const s = await setup(nc, `pause_${impl}`);
      try {
        await s.publish(2000);
        let n = 0;
        const pc = createPullConsumer(nc, {
          implementation: impl,
          stream: s.stream,
          consumer: "c",
          batch: 100,
          maxWaiting: 300,
          onMessage: (m) => (n++, m.ack()),
        });
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
      const s = await setup(nc, `deleted_${impl}`);
      try {
        const statuses: PullStatus[] = [];
        let n = 0;
        const pc = createPullConsumer(nc, {
          implementation: impl,
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

describe("the fence around the nats.js internals the fast consumer uses", () => {
  test("the installed nats is the release they were checked against", () => {
    const { major, minor } = NATS_INTERNALS_CHECKED;
    assert.ok(
      fastPullSupported(),
      `nats ${installedNatsVersion()} is installed, the fast pull was checked on ${major}.${minor}: check the tests below on it, then move NATS_INTERNALS_CHECKED`,
    );
    assert.equal(fastPullSupported("2.30.0"), false);
    assert.equal(fastPullSupported("3.0.0"), false);
  });

  test("nc.protocol writes a raw frame and counts it in nc.stats() as ackAll expects", async () => {
    const nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
    try {
      const protocol = rawProtocol(nc);
      assert.ok(protocol, "nc.protocol no longer has sendCommand(), outMsgs and outBytes: the fast pull's ackAll cannot write through it");
      const subject = `t_pull_fence_${tag}`;
      const got: string[] = [];
      const sub = nc.subscribe(subject, { callback: (_err, m) => got.push(new TextDecoder().decode(m.data)) });
      await nc.flush();
      const before = nc.stats();
      protocol.outMsgs += 2;
      protocol.outBytes += 8;
      protocol.sendCommand(Buffer.from(`PUB ${subject} 4\r\n+ACK\r\nPUB ${subject} 4\r\n+ACK\r\n`));
      await nc.flush();
      await waitFor("the raw frames delivered", async () => got.length === 2, 5000);
      assert.deepEqual(got, ["+ACK", "+ACK"]);
      const after = nc.stats();
      assert.equal(after.outMsgs - before.outMsgs, 2, "nc.stats() reads the counters ackAll raises");
      assert.ok(after.outBytes - before.outBytes >= 8);
      sub.unsubscribe();
    } finally {
      await nc.close();
    }
  });
});

for (const impl of PULL_IMPLEMENTATIONS)
  describe(`${impl}: across a NATS restart`, () => {
    let server: OwnService;
    before(async () => {
      server = await OwnService.nats();
    });
    after(async () => {
      await server?.remove();
    });

    test("pulls again after the server comes back, and gets what was published meanwhile", async () => {
      const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
      const s = await setup(nc, `restart_${impl}`);
      const got = new Set<string>();
      const pc = createPullConsumer(nc, {
        implementation: impl,
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
