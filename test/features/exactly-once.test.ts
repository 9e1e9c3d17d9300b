// Exactly-once effect: redelivered and republished events count once, and several workers on one
// consumer produce what one worker does.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Runtime } from "../../lib/runtime.js";
import { createRuntime } from "../../lib/runtime.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import { WindowStore } from "../../features/window-store.js";
import { FEATURE_VIEWS, ITEM_FEATURES, TRENDING } from "../../features/definitions.js";
import {
  assertClosedWindows,
  assertNear,
  assertOnlineStore,
  expectedTrendingScores,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  testRuntime,
  uniqueNamespace,
  waitConsumerDrained,
  WATERMARK_MS,
  WINDOW_MS,
  type TestEvent,
  closingEvent,
} from "./helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;

/** Every online hash and the trending set, minus the write timestamp, for before/after comparisons. */
async function snapshot(runtime: Runtime): Promise<Record<string, unknown>> {
  const redis = runtime.redis();
  const out: Record<string, unknown> = {};
  for (const pattern of [runtime.names.userFeaturesKey("*"), runtime.names.itemFeaturesKey("*")]) {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      cursor = next;
      for (const k of keys) {
        const { updated_at: _, ...rest } = await redis.hgetall(k);
        void _;
        out[k.slice(runtime.names.redisPrefix.length)] = rest;
      }
    } while (cursor !== "0");
  }
  out.trending = await redis.zrevrange(runtime.names.trendingKey, 0, -1, "WITHSCORES");
  return out;
}

describe("redelivery and republishing", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  const workers: FeaturesWorker[] = [];
  const base = makeEvents({ count: 2000, users: 30, pages: 20, startMs: T0, spanMs: 40 * MIN, jitterMs: MIN, seed: 11 });
  // Every 10th event is published a second time right after itself, as a retrying client would
  // (no Nats-Msg-Id, so JetStream stores both); every 25th is retried with the same Nats-Msg-Id,
  // which JetStream itself drops.
  const stream: TestEvent[] = base.flatMap((e, i) => (i % 10 === 0 ? [e, e] : i % 25 === 0 ? [e, e] : [e]));
  const msgIdOf = (e: TestEvent) => (Number(e.event_id.slice(1)) % 25 === 0 && Number(e.event_id.slice(1)) % 10 !== 0 ? `pub-${e.event_id}` : undefined);
  const republished = base.filter((_, i) => i % 10 === 0).length;

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_once"));
    await publishEvents(env.js, env.runtime.names, stream, { msgId: msgIdOf, chunk: 1 });
  });
  after(async () => {
    for (const w of workers) await w.stop();
    await env?.cleanup();
  });

  test("a republished event id counts once", async () => {
    const w = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, maxBatch: 300 });
    workers.push(w);
    await waitConsumerDrained(env.nc, env.runtime.names);
    await w.closeDueWindows();
    assert.equal(w.stats.messages, base.length + republished, "JetStream dropped the same-Nats-Msg-Id retries");
    assert.deepEqual(w.stats.duplicates, { user: republished, item: republished });
    assert.deepEqual(w.stats.applied, { user: base.length, item: base.length });
    await assertOnlineStore(env.runtime, expectedWindows(base));
    const high = Math.max(...base.map((e) => e.event_time));
    assertClosedWindows(
      await readFeatureWindowLogs(env.nc, env.runtime.names),
      expectedWindows(base).filter((w) => w.windowStart + WINDOW_MS <= high - WATERMARK_MS),
    );
  });

  test("delivering the whole stream again changes nothing", async () => {
    const before = await snapshot(env.runtime);
    const loggedBefore = await readFeatureWindowLogs(env.nc, env.runtime.names);
    await workers.pop()!.stop();
    // A new durable consumer starts from the first message: every event is delivered again.
    const jsm = await env.nc.jetstreamManager();
    await jsm.consumers.delete(env.runtime.names.eventsStream, env.runtime.names.consumer("features"));
    const w = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, maxBatch: 300 });
    workers.push(w);
    await waitConsumerDrained(env.nc, env.runtime.names);
    await w.closeDueWindows();

    assert.equal(w.stats.messages, base.length + republished);
    assert.deepEqual(w.stats.applied, {}, "nothing applied a second time");
    const seen = (m: Record<string, number>, k: string) => m[k] ?? 0;
    for (const entity of ["user", "item"]) {
      // Events of closed windows are late now; the others are recognised as already applied.
      assert.equal(seen(w.stats.duplicates, entity) + seen(w.stats.late, entity), base.length + republished, entity);
      assert.ok(seen(w.stats.duplicates, entity) > 0 && seen(w.stats.late, entity) > 0, `${entity}: both paths exercised`);
    }
    assert.deepEqual(await snapshot(env.runtime), before);
    assert.deepEqual(await readFeatureWindowLogs(env.nc, env.runtime.names), loggedBefore, "no window logged again");
  });
});

describe("two workers on one consumer", () => {
  const events = makeEvents({ count: 4000, users: 50, pages: 30, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 23 });
  // Published once the others are applied, so it cannot overtake them: it closes every window.
  const flush: TestEvent = closingEvent(T0 + 40 * MIN);
  const single = { env: undefined as Awaited<ReturnType<typeof testRuntime>> | undefined, workers: [] as FeaturesWorker[] };
  const pair = { env: undefined as Awaited<ReturnType<typeof testRuntime>> | undefined, workers: [] as FeaturesWorker[], runtimes: [] as Runtime[] };

  async function run(target: typeof single, count: number, extra: Runtime[]): Promise<void> {
    const env = (target.env = await testRuntime(uniqueNamespace(`feat_w${count}`)));
    await publishEvents(env.js, env.runtime.names, events);
    for (let i = 0; i < count; i++) {
      // Separate runtimes: separate NATS and Redis connections, as separate processes would have.
      const rt = i === 0 ? env.runtime : createRuntime({ namespace: env.runtime.config.namespace, logLevel: "silent" });
      if (i > 0) extra.push(rt);
      // The second applies its batches on the main thread: both ways of running the store, side by side.
      target.workers.push(await startFeaturesWorker(rt, { progressIntervalMs: 0, maxBatch: 50, maxInFlightBatches: 2, storeThread: i === 0 }));
    }
    await waitConsumerDrained(env.nc, env.runtime.names);
    await publishEvents(env.js, env.runtime.names, [flush]);
    await waitConsumerDrained(env.nc, env.runtime.names);
    await Promise.all(target.workers.map((w) => w.closeDueWindows()));
  }

  before(async () => {
    await Promise.all([run(single, 1, []), run(pair, 2, pair.runtimes)]);
  });
  after(async () => {
    for (const w of [...single.workers, ...pair.workers]) await w.stop();
    for (const rt of pair.runtimes) await rt.close();
    await single.env?.cleanup();
    await pair.env?.cleanup();
  });

  test("both workers took part", () => {
    const [a, b] = pair.workers;
    assert.ok(a!.stats.messages > 200 && b!.stats.messages > 200, `split ${a!.stats.messages} / ${b!.stats.messages}`);
    assert.equal(a!.stats.messages + b!.stats.messages, events.length + 1);
  });

  test("the features equal the independent computation, for one worker and for two", async () => {
    const expected = expectedWindows([...events, flush]);
    for (const target of [single, pair]) {
      await assertOnlineStore(target.env!.runtime, expected);
      const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
      assertClosedWindows(await readFeatureWindowLogs(target.env!.nc, target.env!.runtime.names), closed);
    }
  });

  test("two workers leave Redis exactly as one does", async () => {
    const one = await snapshot(single.env!.runtime);
    const two = await snapshot(pair.env!.runtime);
    // Sums may be added in another order: compare numbers to 1e-9, everything else exactly.
    assert.deepEqual(Object.keys(two).sort(), Object.keys(one).sort());
    for (const [k, v] of Object.entries(one)) {
      if (k === "trending") {
        const a = v as string[];
        const b = two[k] as string[];
        assert.deepEqual(
          b.filter((_, i) => i % 2 === 0),
          a.filter((_, i) => i % 2 === 0),
          "trending order",
        );
        a.forEach((x, i) => i % 2 && assert.ok(Math.abs(Number(x) - Number(b[i])) < 1e-9, `trending score ${a[i - 1]}`));
        continue;
      }
      const h1 = v as Record<string, string>;
      const h2 = two[k] as Record<string, string>;
      assert.deepEqual(Object.keys(h2).sort(), Object.keys(h1).sort(), k);
      for (const f of Object.keys(h1)) {
        if (f === "window_rev") continue; // how many script calls it took, not a feature
        assert.ok(Math.abs(Number(h1[f]) - Number(h2[f])) <= 1e-9 * Math.max(1, Math.abs(Number(h1[f]))), `${k} ${f}: ${h1[f]} vs ${h2[f]}`);
      }
    }
  });
});

describe("a batch cut short between its Redis transaction and its acks", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let worker: FeaturesWorker | undefined;
  const events = makeEvents({ count: 300, users: 10, pages: 8, startMs: T0, spanMs: 4 * MIN, seed: 5 });
  const flush: TestEvent = closingEvent(T0 + 30 * MIN);

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_half"));
  });
  after(async () => {
    await worker?.stop();
    await env?.cleanup();
  });

  test("redelivery of a batch whose transaction committed but was never acked counts nothing again", async () => {
    const { runtime } = env;
    const redis = runtime.redis();
    await publishEvents(env.js, runtime.names, events);
    // What a worker killed right after its Redis transaction leaves behind: every write of the
    // batch, and nothing acked.
    const store = new WindowStore(redis, runtime.config.redisUrl, runtime.names, FEATURE_VIEWS, { view: ITEM_FEATURES, spec: TRENDING });
    const first = await store.apply(events);
    store.close();
    assert.deepEqual(first.counts, { user: { applied: events.length, duplicates: 0, late: 0 }, item: { applied: events.length, duplicates: 0, late: 0 } });
    const before = await snapshot(runtime);

    worker = await startFeaturesWorker(runtime, { progressIntervalMs: 0 });
    await waitConsumerDrained(env.nc, runtime.names);
    assert.deepEqual(worker.stats.applied, {}, "nothing counted a second time");
    assert.deepEqual(worker.stats.duplicates, { user: events.length, item: events.length });
    assert.deepEqual(await snapshot(runtime), before, "Redis unchanged by the redelivery");
    await assertOnlineStore(runtime, expectedWindows(events));
    const flat = await redis.zrevrange(runtime.names.trendingKey, 0, -1, "WITHSCORES");
    const expected = expectedTrendingScores(events);
    assert.equal(flat.length / 2, expected.size);
    for (let i = 0; i < flat.length; i += 2) assertNear(Number(flat[i + 1]), expected.get(flat[i]!)!, `trending ${flat[i]}`, 1e-12);

    // The windows are listed, so the watermark closes and logs them.
    await publishEvents(env.js, runtime.names, [flush]);
    await waitConsumerDrained(env.nc, runtime.names);
    await worker.closeDueWindows();
    assertClosedWindows(await readFeatureWindowLogs(env.nc, runtime.names), expectedWindows(events));
  });
});

describe("the consumer deleted under a running worker", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let worker: FeaturesWorker | undefined;
  const events = makeEvents({ count: 1000, users: 20, pages: 10, startMs: T0, spanMs: 4 * MIN, seed: 17 });

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_gone"));
  });
  after(async () => {
    await worker?.stop();
    await env?.cleanup();
  });

  test("is created again; the stream delivered anew counts once", async () => {
    const { runtime, nc } = env;
    const jsm = await nc.jetstreamManager();
    worker = await startFeaturesWorker(runtime, { progressIntervalMs: 0 });
    await publishEvents(env.js, runtime.names, events.slice(0, 500));
    await waitConsumerDrained(nc, runtime.names);
    await jsm.consumers.delete(runtime.names.eventsStream, runtime.names.consumer("features"));
    await publishEvents(env.js, runtime.names, events.slice(500));
    await waitConsumerDrained(nc, runtime.names);
    assert.deepEqual(worker.stats.applied, { user: 1000, item: 1000 });
    assert.deepEqual(worker.stats.duplicates, { user: 500, item: 500 }, "the recreated consumer started from the first event");
    await assertOnlineStore(runtime, expectedWindows(events));
  });
});
