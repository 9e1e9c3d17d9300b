// The features worker on the library paths (ioredis for the store, nats.js fetch() for the pull),
// as `--redis-client ioredis --pull library` runs it: the same features, once per event id, as on
// the hand-written paths the other feature tests run on. This file's process (and the store's
// thread, which inherits its environment) chooses them.
process.env.STREAMSERVE_REDIS_CLIENT = "ioredis";
process.env.STREAMSERVE_PULL = "library";

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import {
  assertClosedWindows,
  assertOnlineStore,
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
} from "./helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;

let env: Awaited<ReturnType<typeof testRuntime>>;
const workers: FeaturesWorker[] = [];

before(async () => {
  env = await testRuntime(uniqueNamespace("feat_lib"));
});
after(async () => {
  for (const w of workers) await w.stop();
  await env?.cleanup();
});

test("seed features online and closed, each event once though every tenth is published twice", async () => {
  const base = makeEvents({ count: 3000, users: 40, pages: 20, startMs: T0, spanMs: 40 * MIN, jitterMs: MIN, seed: 21 });
  const stream: TestEvent[] = base.flatMap((e, i) => (i % 10 === 0 ? [e, e] : [e]));
  await publishEvents(env.js, env.runtime.names, stream);
  // Small batches and a short pull-ahead, so the pull pauses and resumes many times.
  const w = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, maxBatch: 200, pullAhead: 400 });
  workers.push(w);
  await waitConsumerDrained(env.nc, env.runtime.names);
  await w.closeDueWindows();
  const twice = base.filter((_, i) => i % 10 === 0).length;
  assert.equal(w.stats.messages, stream.length);
  assert.deepEqual(w.stats.applied, { user: base.length, item: base.length });
  assert.deepEqual(w.stats.duplicates, { user: twice, item: twice });
  await assertOnlineStore(env.runtime, expectedWindows(base));
  const high = Math.max(...base.map((e) => e.event_time));
  assertClosedWindows(
    await readFeatureWindowLogs(env.nc, env.runtime.names),
    expectedWindows(base).filter((x) => x.windowStart + WINDOW_MS <= high - WATERMARK_MS),
  );
});
