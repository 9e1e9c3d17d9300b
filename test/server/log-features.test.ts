// --log-features: with a 4-feature model in production, each prediction log carries every feature
// the pipeline defines (so a later model can learn from them), the model's own 4 first and exactly
// as the model saw them; `model` logs only those 4; the fallback logs everything.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServing, type Serving } from "./harness.js";
import { readPredictionLogs } from "../faults/own-services.js";
import { logisticModel, sigmoid } from "../fixtures/onnx-models.js";
import { allFeatureSpecs } from "../../features/definitions.js";
import { serverOptionsFromFlags } from "../../cli/commands/serve.js";
import { parseArgs, UsageError } from "../../cli/args.js";
import type { FeatureSpec } from "../../lib/registry.js";
import type { PredictionLog } from "../../gen/streamserve/v1/logs_pb.js";

// The model's order differs from the pipeline's, so "first, in the model's order" is checked.
const MODEL: FeatureSpec[] = [
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile", "tablet"] },
  { name: "engagement_score", source: "user", type: "numeric", default: 0 },
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
];
const WEIGHTS = [0.25, 0.5, 0.01, 0.125];
const BIAS = -1;
const ITEMS = ["page_a", "page_b", "page_c"];

// Every pipeline feature gets a distinct value, except one user and one item feature left absent.
const ABSENT = ["purchase_amount", "item_purchases_5min"];
const userValues: Record<string, number> = {};
const itemValues: Record<string, Record<string, number>> = {};
allFeatureSpecs().forEach((s, j) => {
  if (ABSENT.includes(s.name)) return;
  if (s.source === "user") userValues[s.name] = 10 + j;
  if (s.source === "item") ITEMS.forEach((item, r) => ((itemValues[item] ??= {})[s.name] = 100 * (r + 1) + j));
});
const DEVICE = "tablet";

/** The value a feature should have for an item's row: what Redis holds, the request's code, or the default. */
function expected(spec: FeatureSpec, item: string): number {
  if (spec.source === "request") return spec.vocabulary!.indexOf(DEVICE);
  const v = spec.source === "user" ? userValues[spec.name] : itemValues[item]![spec.name];
  return v ?? spec.default;
}

describe("--log-features", () => {
  let rt: TestRuntime;

  before(async () => {
    rt = testRuntime();
    const redis = rt.redis();
    await redis.hset(rt.names.userFeaturesKey("u1"), Object.fromEntries(Object.entries(userValues).map(([k, v]) => [k, String(v)])));
    for (const item of ITEMS)
      await redis.hset(rt.names.itemFeaturesKey(item), Object.fromEntries(Object.entries(itemValues[item]!).map(([k, v]) => [k, String(v)])));
  });
  after(async () => {
    await rt?.cleanup();
  });

  async function recommendAndRead(serving: Serving, requestId: string): Promise<PredictionLog> {
    const res = await serving.client.recommend({ userId: "u1", deviceType: DEVICE, candidates: ITEMS, requestId });
    assert.equal(res.recommendations.length, ITEMS.length);
    await serving.server.logs.flush();
    const logs = await readPredictionLogs(await rt.nats(), rt.names, new Set([requestId]));
    const log = logs.get(requestId);
    assert.ok(log, `the prediction log of ${requestId} is in LOGS`);
    return log;
  }

  it("the fallback logs every pipeline feature", async () => {
    const serving = await startServing(rt, { http: false });
    try {
      await waitFor(() => serving.server.models.ready, 10_000, "server ready");
      const log = await recommendAndRead(serving, "fallback-1");
      assert.equal(log.modelVersion, "fallback");
      const all = allFeatureSpecs();
      assert.deepEqual(
        log.featureNames,
        all.map((s) => s.name),
      );
      assert.equal(log.modelFeatureCount, all.length);
      for (const item of log.items)
        assert.deepEqual(
          item.features,
          all.map((s) => expected(s, item.itemId)),
        );
      assert.deepEqual([...log.missingFeatures].sort(), [...ABSENT].sort());
    } finally {
      await serving.close();
    }
  });

  it("all (the default): the model's 4 features first, exactly the vector it scored, then every other pipeline feature", async () => {
    const registry = await rt.registry();
    const mv = await registry.publish({
      name: "recommender",
      artifact: logisticModel(WEIGHTS, BIAS),
      features: MODEL,
      inputName: "features",
      outputName: "score",
    });
    await registry.setAlias("recommender", "production", mv.version);
    const serving = await startServing(rt, { http: false });
    try {
      await waitFor(() => serving.server.models.servedVersion("recommender") === mv.version, 15_000, "model served");
      const log = await recommendAndRead(serving, "all-1");
      assert.equal(log.modelVersion, mv.version);
      assert.equal(log.modelFeatureCount, 4);
      const others = allFeatureSpecs().filter((s) => !MODEL.some((m) => m.name === s.name));
      assert.ok(others.length >= 6, "the pipeline defines features the model does not use");
      assert.deepEqual(
        log.featureNames,
        [...MODEL, ...others].map((s) => s.name),
      );
      assert.equal(log.items.length, ITEMS.length);
      for (const item of log.items) {
        assert.equal(item.features.length, log.featureNames.length, "features stay parallel to feature_names");
        const vector = item.features.slice(0, 4);
        assert.deepEqual(
          vector,
          MODEL.map((s) => expected(s, item.itemId)),
          `${item.itemId}: the model's inputs`,
        );
        // The score is the model's output on exactly those 4 values.
        const z = vector.reduce((sum, v, j) => sum + v * WEIGHTS[j]!, BIAS);
        assert.ok(Math.abs(item.score - sigmoid(z)) < 1e-6, `${item.itemId}: scored from the logged vector`);
        assert.deepEqual(
          item.features.slice(4),
          others.map((s) => expected(s, item.itemId)),
          `${item.itemId}: the other pipeline features`,
        );
      }
      // Absent features are flagged among everything logged, not only among the model's.
      assert.deepEqual([...log.missingFeatures].sort(), [...ABSENT].sort());
    } finally {
      await serving.close();
    }
  });

  it("model: only the model's 4 features", async () => {
    const serving = await startServing(rt, { http: false, logFeatures: "model" });
    try {
      await waitFor(() => serving.server.models.servedVersion("recommender"), 15_000, "model served");
      const log = await recommendAndRead(serving, "model-1");
      assert.deepEqual(
        log.featureNames,
        MODEL.map((s) => s.name),
      );
      assert.equal(log.modelFeatureCount, 4);
      for (const item of log.items)
        assert.deepEqual(
          item.features,
          MODEL.map((s) => expected(s, item.itemId)),
        );
      assert.deepEqual(log.missingFeatures, [], "none of the model's features is absent");
    } finally {
      await serving.close();
    }
  });

  it("the serve flag takes all or model and names the choices otherwise", () => {
    assert.equal(serverOptionsFromFlags(parseArgs(["--log-features", "model"])).logFeatures, "model");
    assert.equal(serverOptionsFromFlags(parseArgs(["--log-features", "all"])).logFeatures, "all");
    assert.equal(serverOptionsFromFlags(parseArgs([])).logFeatures, undefined);
    assert.throws(
      () => serverOptionsFromFlags(parseArgs(["--log-features", "some"])),
      (e: Error) => e instanceof UsageError && /all, model/.test(e.message),
    );
  });
});
