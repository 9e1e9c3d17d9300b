// Feature lookup: the one-command script and the pipeline fallback read the same values, and
// assembly puts them in the model's order with defaults for what is missing.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { assemble, lookupFeatures, readWithPipeline, readWithScript } from "../../server/feature-lookup.js";
import type { FeatureSpec } from "../../lib/registry.js";
import { waitReady } from "../../lib/redis.js";

let rt: TestRuntime;
before(() => {
  rt = testRuntime();
});
after(async () => {
  await rt?.cleanup();
});

const SPECS: FeatureSpec[] = [
  { name: "item_views_5min", source: "item", type: "numeric", default: 0 },
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile"] },
  { name: "engagement_score", source: "user", type: "numeric", default: 7 },
];

it("script and pipeline read the same rows", async () => {
  const redis = rt.redis();
  await redis.hset(rt.names.userFeaturesKey("u1"), { clicks_last_5min: "3", engagement_score: "12.5", other: "x" });
  await redis.hset(rt.names.itemFeaturesKey("i1"), { item_views_5min: "10" });
  await redis.hset(rt.names.itemFeaturesKey("i3"), { item_views_5min: "not a number" });
  const keys = [rt.names.userFeaturesKey("u1"), ...["i1", "i2", "i3"].map((i) => rt.names.itemFeaturesKey(i))];
  const script = await readWithScript(redis, keys, ["clicks_last_5min", "engagement_score"], ["item_views_5min"]);
  const pipeline = await readWithPipeline(redis, keys, ["clicks_last_5min", "engagement_score"], ["item_views_5min"]);
  assert.deepEqual(script, [["3", "12.5"], ["10"], [null], ["not a number"]]);
  assert.deepEqual(pipeline, script);
});

it("assembles the matrix in the model's order with defaults, and names what was missing", async () => {
  // The serving client fails fast while it is still connecting.
  assert.ok(await waitReady(rt.servingRedis()));
  const m = await lookupFeatures(rt.servingRedis(), rt.names, SPECS, { userId: "u1", currentPage: "", deviceType: "mobile" }, ["i1", "i2", "i3"]);
  assert.equal(m.rows, 3);
  assert.equal(m.unavailable, false);
  assert.deepEqual(Array.from(m.matrix), [10, 3, 1, 12.5, 0, 3, 1, 12.5, 0, 3, 1, 12.5]);
  assert.deepEqual(m.missing.sort(), ["item_views_5min"]);
  const unknownDevice = assemble(SPECS, { userId: "u", currentPage: "", deviceType: "toaster" }, ["a"], [], [], false);
  assert.deepEqual(Array.from(unknownDevice.matrix), [0, 0, -1, 7]);
  assert.deepEqual(unknownDevice.missing.sort(), ["clicks_last_5min", "device_type", "engagement_score", "item_views_5min"]);
});

it("lookups started together share one pipelined read and each gets its own rows", async () => {
  assert.ok(await waitReady(rt.servingRedis()));
  const redis = rt.redis();
  const users = Array.from({ length: 40 }, (_, i) => `batch-u${i}`);
  for (const [i, u] of users.entries()) {
    await redis.hset(rt.names.userFeaturesKey(u), { clicks_last_5min: String(i), engagement_score: String(i / 2) });
    await redis.hset(rt.names.itemFeaturesKey(`batch-i${i}`), { item_views_5min: String(1000 + i) });
  }
  const serving = rt.servingRedis();
  // Count the pipelines the lookups open (a spy on the real client; Redis answers for real).
  const pipeline = serving.pipeline;
  let pipelines = 0;
  serving.pipeline = function (this: typeof serving, ...args: Parameters<typeof pipeline>) {
    pipelines++;
    return pipeline.apply(this, args);
  } as typeof pipeline;
  let results;
  try {
    // Started in one turn of the event loop, as concurrent requests are.
    results = await Promise.all(
      users.map((u, i) => lookupFeatures(serving, rt.names, SPECS, { userId: u, currentPage: "", deviceType: "desktop" }, [`batch-i${i}`, "batch-none"])),
    );
  } finally {
    serving.pipeline = pipeline;
  }
  assert.equal(pipelines, 1, "one pipeline (one socket write) for the 40 lookups");
  results.forEach((m, i) => {
    assert.equal(m.unavailable, false);
    assert.deepEqual(Array.from(m.matrix), [1000 + i, i, 0, i / 2, 0, i, 0, i / 2], `user ${i} got its own values`);
    assert.deepEqual(m.missing, ["item_views_5min"], "batch-none has no hash");
  });
});
