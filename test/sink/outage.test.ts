// A real ClickHouse outage while logs keep arriving: the embedded engine is closed mid-stream and
// reopened later. Nothing is lost, nothing doubles, and the batch in hand is kept alive instead of
// being redelivered. Then the sink itself is stopped mid-stream and a new one picks up.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import type { NatsConnection } from "nats";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { openClickHouse, queryRows, type ClickHouse } from "../../lib/clickhouse.js";
import { startSink } from "../../sink/sink.js";
import { ITEMS_PER_PREDICTION, logMessage, publishLogs, tempDir, uniqueNamespace, waitFor } from "./fixtures/logs.js";
import type { LogKind } from "../../lib/config.js";

const dir = tempDir("sink-outage");
let runtime: Runtime;
let nc: NatsConnection;
let current: ClickHouse | undefined;
const open = () => openClickHouse(runtime.config, runtime.log);

const count = async (sql: string) => Number((await queryRows<{ n: string }>(current!, sql))[0]!.n);

async function consumerInfo(kind: LogKind) {
  const jsm = await nc.jetstreamManager();
  return jsm.consumers.info(runtime.names.logsStream, runtime.names.consumer(`sink-${kind}`));
}

/** Publishes `total` logs of a kind in small bursts, as a live server would. */
function publishSteadily(kind: LogKind, total: number, runId: string, perBurst = 100, everyMs = 20): Promise<void> {
  return (async () => {
    for (let i = 0; i < total; i += perBurst) {
      const burst = Array.from({ length: Math.min(perBurst, total - i) }, (_, k) => logMessage(kind, i + k, runId));
      await publishLogs(nc.jetstream(), runtime.names, burst);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
}

describe("sink under outages", () => {
  before(async () => {
    runtime = createRuntime({ namespace: uniqueNamespace("sinko"), dataDir: dir.path, logLevel: "error" });
    nc = await runtime.nats();
    current = await open();
  });

  after(async () => {
    await deleteNamespace(nc, runtime.names).catch(() => undefined);
    await current?.close();
    await runtime.close();
    dir.remove();
  });

  it("holds the logs in JetStream while ClickHouse is closed and writes each exactly once after it reopens", async () => {
    const total = 3000;
    // Two seconds: a loaded machine stalls this process for up to ~1.3 s (measured at load 12), and a
    // stall longer than the ack wait lets any deadline pass, kept alive or not.
    const ackWaitMs = 2000;
    const sink = await startSink(
      { ...runtime, clickhouse: async () => current ?? Promise.reject(new Error("ClickHouse is down")) },
      { kinds: ["prediction"], maxBatchMessages: 250, ackWaitMs, retryInitialMs: 50, retryMaxMs: 400 },
    );
    try {
      const publishing = publishSteadily("prediction", total, "outage");
      await waitFor("first batches written", () => sink.stats().messagesWritten >= 300, 30_000, 20);

      // The outage: the engine goes away between two batches or in the middle of one.
      const down = current!;
      current = undefined;
      await down.close();
      const writtenAtOutage = sink.stats().messagesWritten;
      await waitFor("inserts failing", () => sink.stats().insertFailures >= 3, 10_000, 20);
      // Longer than the ack deadline three times over: only working() keeps the batch from redelivery.
      await new Promise((r) => setTimeout(r, 3 * ackWaitMs + 500));
      assert.ok(sink.stats().messagesWritten <= writtenAtOutage + 250, "nothing is acked while ClickHouse is down");
      await publishing;
      assert.ok((await consumerInfo("prediction")).num_pending > 0, "the rest waits in JetStream");
      // A peer on the same durable (a second sink instance) must not be handed the batch in hand:
      // past its ack deadline it would be, were it not kept alive.
      const peer = await nc.jetstream().consumers.get(runtime.names.logsStream, runtime.names.consumer("sink-prediction"));
      const peerGot = [];
      for await (const m of await peer.fetch({ max_messages: 1000, expires: 1000 })) peerGot.push(m);
      // Handed back only now: a nak during the fetch would come straight back to the same pull.
      for (const m of peerGot) m.nak();
      const peerSaw = peerGot.length;
      const peerRedelivered = peerGot.filter((m) => m.redelivered).length;
      assert.ok(peerSaw > 0, "the peer was served the waiting logs");
      assert.equal(peerRedelivered, 0, "the batch in hand was kept alive, not redelivered");

      current = await open();
      await waitFor("everything written after the outage", () => sink.stats().messagesWritten === total, 60_000, 50);
    } finally {
      await sink.stop();
    }
    const info = await consumerInfo("prediction");
    assert.equal(info.num_pending + info.num_ack_pending, 0);
    assert.equal(await count("SELECT count() n FROM predictions FINAL WHERE request_id LIKE 'req-outage-%'"), total * ITEMS_PER_PREDICTION);
    assert.equal(await count("SELECT uniqExact(request_id) n FROM predictions FINAL WHERE request_id LIKE 'req-outage-%'"), total);
  });

  it("loses nothing when the sink is stopped mid-stream and another one takes over", async () => {
    const total = 4000;
    const options = { kinds: ["outcome"] as LogKind[], maxBatchMessages: 200, ackWaitMs: 1500 };
    const clickhouse = async () => current!;
    const first = await startSink({ ...runtime, clickhouse }, options);
    const publishing = publishSteadily("outcome", total, "restart", 50, 10);
    try {
      await waitFor("first sink under way", () => first.stats().messagesWritten >= 500, 30_000, 10);
    } finally {
      await first.stop();
    }
    const byFirst = first.stats().messagesWritten;
    assert.ok(byFirst < total, "stopped mid-stream");

    const second = await startSink({ ...runtime, clickhouse }, options);
    try {
      await publishing;
      await waitFor(
        "the second sink drained the rest",
        async () => {
          const info = await consumerInfo("outcome");
          return info.num_pending + info.num_ack_pending === 0;
        },
        60_000,
        100,
      );
    } finally {
      await second.stop();
    }
    // What the first stop left in flight is redelivered to the second, so together they wrote at least everything.
    assert.ok(byFirst + second.stats().messagesWritten >= total);
    assert.equal(await count("SELECT count() n FROM outcomes FINAL WHERE outcome_id LIKE 'out-restart-%'"), total);
  });
});
