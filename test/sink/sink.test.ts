// The sink against real NATS JetStream and the embedded ClickHouse: every log kind lands in its
// table with the right columns; duplicates (republished messages, redelivery after a crash, an
// insert retried after an ambiguous failure) collapse in FINAL queries; undecodable messages are
// terminated without holding up the rest.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import type { ClickHouseClient } from "@clickhouse/client";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { queryRows } from "../../lib/clickhouse.js";
import { decodeLog } from "../../sink/log-rows.js";
import { startSink } from "../../sink/sink.js";
import { ITEMS_PER_PREDICTION, logMessage, publishLogs, tempDir, uniqueNamespace, waitFor, type LogMessage } from "./fixtures/logs.js";
import type { LogKind } from "../../lib/config.js";

const KINDS: LogKind[] = ["prediction", "exposure", "outcome", "feature_window", "model_event"];
const dir = tempDir("sink-test");
let runtime: Runtime;
let ch: ClickHouseClient;

const count = async (sql: string) => Number((await queryRows<{ n: string }>(ch, sql))[0]!.n);
const range = (n: number, kind: LogKind, runId: string): LogMessage[] => Array.from({ length: n }, (_, i) => logMessage(kind, i, runId));

async function consumerIdle(kind: LogKind): Promise<boolean> {
  const jsm = await (await runtime.nats()).jetstreamManager();
  const info = await jsm.consumers.info(runtime.names.logsStream, runtime.names.consumer(`sink-${kind}`));
  return info.num_pending === 0 && info.num_ack_pending === 0;
}

describe("sink", () => {
  before(async () => {
    runtime = createRuntime({ namespace: uniqueNamespace("sinkt"), dataDir: dir.path, logLevel: "error" });
    await runtime.nats();
    ch = (await runtime.clickhouse()).client;
  });

  after(async () => {
    await deleteNamespace(await runtime.nats(), runtime.names).catch(() => undefined);
    await runtime.close();
    dir.remove();
  });

  it("writes every log kind into its table with the right columns", async () => {
    const n = 40;
    await publishLogs(
      (await runtime.nats()).jetstream(),
      runtime.names,
      KINDS.flatMap((k) => range(n, k, "all")),
    );
    const sink = await startSink(runtime, { ackWaitMs: 5000 });
    try {
      await waitFor("all kinds written", () => sink.stats().messagesWritten === n * KINDS.length, 30_000);
    } finally {
      await sink.stop();
    }
    assert.deepEqual(sink.stats().rowsWritten, {
      predictions: n * ITEMS_PER_PREDICTION,
      exposures: n,
      outcomes: n,
      user_features: n / 2,
      item_features: n / 2,
      model_events: n,
    });
    assert.equal(await count("SELECT count() n FROM predictions FINAL WHERE request_id LIKE 'req-all-%'"), n * ITEMS_PER_PREDICTION);
    const [p] = await queryRows<Record<string, unknown>>(
      ch,
      `SELECT request_id, toString(time) t, user_id, item_id, position, score, model_version, variant, current_page, device_type,
              features['clicks_last_5min'] c, features['engagement_score'] e, isNaN(features['device_type']) nan_device,
              mapKeys(features) keys, missing_features, latency_ms
       FROM predictions FINAL WHERE request_id = 'req-all-7' AND item_id = 'item2'`,
    );
    assert.deepEqual(p, {
      request_id: "req-all-7",
      t: "2030-01-15 12:00:07.000",
      user_id: "u7",
      item_id: "item2",
      position: 3,
      score: 0.8,
      model_version: "3",
      variant: "treatment",
      current_page: "p2",
      device_type: "mobile",
      c: 7,
      e: 5.5,
      nan_device: 1,
      keys: ["clicks_last_5min", "engagement_score", "device_type"],
      missing_features: ["device_type"],
      latency_ms: 1.5,
    });
    assert.equal(await count("SELECT count() n FROM exposures FINAL WHERE request_id LIKE 'req-all-%' AND variant = 'control' AND model_version = '2'"), n);
    assert.deepEqual(
      await queryRows(
        ch,
        "SELECT toFloat64(countIf(clicked = 1)) clicks, toFloat64(countIf(converted = 1)) conversions, sum(revenue) revenue FROM outcomes FINAL WHERE outcome_id LIKE 'out-all-%'",
      ),
      [{ clicks: 40, conversions: 14, revenue: 14 * 9.5 }],
    );
    assert.deepEqual(
      await queryRows(
        ch,
        "SELECT user_id, toString(window_start) s, toString(window_end) e, features, toFloat64(event_count) event_count FROM user_features FINAL WHERE user_id = 'e4'",
      ),
      [{ user_id: "e4", s: "2030-01-15 12:20:00.000", e: "2030-01-15 12:25:00.000", features: { clicks_last_5min: 4, engagement_score: 1.2 }, event_count: 5 }],
    );
    assert.equal(await count("SELECT count() n FROM item_features FINAL WHERE item_id LIKE 'e%'"), n / 2);
    assert.deepEqual(
      await queryRows(
        ch,
        "SELECT kind, alias, from_version, to_version, actor, reason, toFloat64(JSONExtractInt(details, 'i')) i FROM model_events FINAL WHERE event_id = 'ev-all-3'",
      ),
      [{ kind: "promote", alias: "production", from_version: "1", to_version: "2", actor: "trainer", reason: "auc +2%", i: 3 }],
    );
    for (const kind of KINDS) assert.ok(await consumerIdle(kind), `consumer of ${kind} has nothing pending`);
    const metrics = await runtime.metrics.render();
    assert.match(metrics, /streamserve_sink_rows_written_total\{table="predictions"\} 120/);
    assert.match(metrics, /streamserve_sink_messages_total\{kind="outcome",result="written"\} 40/);
    assert.match(metrics, /streamserve_sink_batch_seconds_count\{kind="exposure"\} [1-9]/);
  });

  it("collapses republished messages and a batch re-inserted after an ambiguous failure", async () => {
    // Merges would hide the physical duplicates this test needs to see before FINAL collapses them.
    await ch.command({ query: "SYSTEM STOP MERGES outcomes" });
    const n = 30;
    const js = (await runtime.nats()).jetstream();
    const messages = range(n, "outcome", "dup");
    await publishLogs(js, runtime.names, messages);
    // The same logs again under new message ids, as a publisher past the duplicate window would.
    await publishLogs(js, runtime.names, messages, { msgIdSuffix: "-again" });
    let ambiguous = 0;
    // The insert reaches ClickHouse, then the caller sees a failure (a connection reset after the
    // server committed): the sink must retry, writing the same rows twice.
    const flaky = {
      insert: async (params: Parameters<ClickHouseClient["insert"]>[0]) => {
        const result = await ch.insert(params);
        if (params.table === "outcomes" && ambiguous++ === 0) throw Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
        return result;
      },
    } as unknown as ClickHouseClient;
    const sink = await startSink({ ...runtime, clickhouse: async () => flaky }, { kinds: ["outcome"], retryInitialMs: 50, ackWaitMs: 5000 });
    try {
      await waitFor("duplicates written", () => sink.stats().messagesWritten === 2 * n, 30_000);
    } finally {
      await sink.stop();
    }
    assert.equal(sink.stats().insertFailures, 1);
    const raw = await count("SELECT count() n FROM outcomes WHERE outcome_id LIKE 'out-dup-%'");
    // Each insert collapses its own duplicates (optimize_on_insert), so the physical copies come
    // from the two inserts of the retried batch.
    assert.ok(raw >= 2 * n, `the duplicates really were written (${raw} physical rows)`);
    assert.equal(await count("SELECT count() n FROM outcomes FINAL WHERE outcome_id LIKE 'out-dup-%'"), n);
    assert.equal(await count("SELECT uniqExact(outcome_id) n FROM outcomes FINAL WHERE outcome_id LIKE 'out-dup-%'"), n);
    await ch.command({ query: "SYSTEM START MERGES outcomes" });
  });

  it("writes once what JetStream redelivers after a sink died between insert and ack", async () => {
    await ch.command({ query: "SYSTEM STOP MERGES exposures" });
    const nc = await runtime.nats();
    // Creates the durable with a 1 s ack deadline, so the redelivery comes quickly.
    await (await startSink(runtime, { kinds: ["exposure"], ackWaitMs: 1000 })).stop();
    const n = 25;
    await publishLogs(nc.jetstream(), runtime.names, range(n, "exposure", "redeliver"));
    // The sink that dies: takes the batch, inserts it, and never acks.
    const consumer = await nc.jetstream().consumers.get(runtime.names.logsStream, runtime.names.consumer("sink-exposure"));
    const taken = [];
    for await (const m of await consumer.fetch({ max_messages: n, expires: 2000 })) taken.push(m);
    assert.equal(taken.length, n);
    const rows = taken.flatMap((m) => decodeLog("exposure", { data: m.data, storedAtMs: 0 }).rows);
    await ch.insert({ table: "exposures", values: rows, format: "JSONEachRow" });

    const sink = await startSink(runtime, { kinds: ["exposure"], ackWaitMs: 1000 });
    try {
      await waitFor("redelivered batch written", () => sink.stats().messagesWritten === n, 30_000);
      await waitFor("consumer idle", () => consumerIdle("exposure"), 10_000);
    } finally {
      await sink.stop();
    }
    assert.equal(await count("SELECT count() n FROM exposures WHERE request_id LIKE 'req-redeliver-%'"), 2 * n);
    assert.equal(await count("SELECT count() n FROM exposures FINAL WHERE request_id LIKE 'req-redeliver-%'"), n);
    await ch.command({ query: "SYSTEM START MERGES exposures" });
  });

  it("terminates undecodable messages, counts them, and writes the rest", async () => {
    const nc = await runtime.nats();
    const js = nc.jetstream();
    const good = range(20, "model_event", "mixed");
    const garbage = [
      new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]),
      new TextEncoder().encode('{"not":"protobuf"}'),
      // Valid protobuf of the wrong shape: no event_id, so the row could never be found again.
      new Uint8Array([0x1a, 0x03, 0x61, 0x62, 0x63]),
    ];
    await publishLogs(js, runtime.names, good.slice(0, 10));
    for (const [i, data] of garbage.entries()) await js.publish(runtime.names.logsSubject("model_event"), data, { msgID: `garbage-${i}` });
    await publishLogs(js, runtime.names, good.slice(10));
    const sink = await startSink(runtime, { kinds: ["model_event"], ackWaitMs: 5000 });
    try {
      await waitFor("good ones written", () => sink.stats().messagesWritten === good.length, 30_000);
      await waitFor("consumer idle", () => consumerIdle("model_event"), 10_000);
    } finally {
      await sink.stop();
    }
    assert.equal(sink.stats().messagesRejected, garbage.length);
    assert.match(await runtime.metrics.render(), /streamserve_sink_messages_total\{kind="model_event",result="undecodable"\} 3/);
    assert.equal(await count("SELECT count() n FROM model_events FINAL WHERE event_id LIKE 'ev-mixed-%'"), good.length);
  });
});
