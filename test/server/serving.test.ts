// The serving core as a user meets it: Recommend with the popularity fallback, then with a model
// pushed to the registry; bad input; prediction logs in LOGS.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { fromBinary } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy } from "nats";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startServing, type Serving } from "./harness.js";
import { createServiceClient, Code } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { PredictionLogSchema, OutcomeLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { logisticModel, sigmoid } from "../fixtures/onnx-models.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile", "tablet"] },
];
const WEIGHTS = [0.5, 0.25, 1];
const BIAS = -1;

describe("Recommend", () => {
  let rt: TestRuntime;
  let serving: Serving;
  let server: RunningServer;
  let client: Serving["client"];

  before(async () => {
    rt = testRuntime();
    const redis = rt.redis();
    // The pipeline's state, as the features worker would leave it.
    await redis.zadd(rt.names.trendingKey, 30, "page_a", 20, "page_b", 10, "page_c");
    await redis.hset(rt.names.userFeaturesKey("u1"), { clicks_last_5min: "4" });
    await redis.hset(rt.names.itemFeaturesKey("page_a"), { item_clicks_5min: "1" });
    await redis.hset(rt.names.itemFeaturesKey("page_b"), { item_clicks_5min: "8" });
    serving = await startServing(rt);
    ({ server, client } = serving);
  });

  after(async () => {
    await serving?.close();
    await rt?.cleanup();
  });

  it("serves the popularity fallback before any model exists", async () => {
    await waitFor(() => server.models.ready, 10_000, "server ready");
    const res = await client.recommend({ userId: "u1" });
    assert.equal(res.modelVersion, "fallback");
    assert.deepEqual(
      res.recommendations.map((r) => r.itemId),
      ["page_a", "page_b", "page_c"],
    );
    assert.ok(res.requestId.length > 0);
    const ranked = await client.recommend({ userId: "u1", candidates: ["page_c", "page_x", "page_a"] });
    assert.deepEqual(
      ranked.recommendations.map((r) => r.itemId),
      ["page_a", "page_c", "page_x"],
    );
  });

  it("scores candidates with the production model, best first, from Redis features", async () => {
    const registry = await rt.registry();
    const mv = await registry.publish({
      name: "recommender",
      artifact: logisticModel(WEIGHTS, BIAS),
      features: FEATURES,
      inputName: "features",
      outputName: "score",
    });
    await registry.setAlias("recommender", "production", mv.version);
    await waitFor(() => server.models.servedVersion("recommender") === mv.version, 15_000, "swap to the pushed model");

    const res = await client.recommend({ userId: "u1", deviceType: "mobile", candidates: ["page_a", "page_b", "page_new"], limit: 2, requestId: "req-1" });
    assert.equal(res.requestId, "req-1");
    assert.equal(res.modelName, "recommender");
    assert.equal(res.modelVersion, mv.version);
    const expected = (itemClicks: number) => sigmoid(4 * 0.5 + itemClicks * 0.25 + 1 * 1 + BIAS);
    assert.deepEqual(
      res.recommendations.map((r) => r.itemId),
      ["page_b", "page_a"],
    );
    assert.ok(Math.abs(res.recommendations[0]!.score - expected(8)) < 1e-6);
    assert.ok(Math.abs(res.recommendations[1]!.score - expected(1)) < 1e-6);
    assert.ok(res.latencyMs > 0);
  });

  it("logs every scored candidate with the exact features served, and outcomes", async () => {
    await client.recordOutcome({ requestId: "req-1", itemId: "page_b", clicked: true, revenue: 0 });
    await server.logs.flush();
    const nc = await rt.nats();
    const js = nc.jetstream();
    const jsm = await nc.jetstreamManager();
    const name = `check_${Date.now()}`;
    await jsm.consumers.add(rt.names.logsStream, { durable_name: name, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
    const consumer = await js.consumers.get(rt.names.logsStream, name);
    const messages = await consumer.fetch({ max_messages: 100, expires: 1000 });
    const predictions = [];
    const outcomes = [];
    for await (const m of messages) {
      if (m.subject === rt.names.logsSubject("prediction")) predictions.push(fromBinary(PredictionLogSchema, m.data));
      if (m.subject === rt.names.logsSubject("outcome")) outcomes.push(fromBinary(OutcomeLogSchema, m.data));
    }
    const p = predictions.find((x) => x.requestId === "req-1");
    assert.ok(p, "the prediction of req-1 is in LOGS");
    // The model's features lead, in its order; the pipeline's other features follow (--log-features all).
    assert.equal(p.modelFeatureCount, FEATURES.length);
    assert.deepEqual(
      p.featureNames.slice(0, 3),
      FEATURES.map((f) => f.name),
    );
    assert.equal(p.items.length, 3, "every candidate is logged, returned or not");
    const newPage = p.items.find((i) => i.itemId === "page_new")!;
    assert.deepEqual(newPage.features.slice(0, 3), [4, 0, 1]);
    assert.equal(newPage.position, 0, "not returned (limit 2)");
    assert.ok(p.missingFeatures.includes("item_clicks_5min"), "page_new has no item hash: its feature took the default");
    assert.ok(!p.missingFeatures.includes("clicks_last_5min"), "the user's hash has it");
    assert.equal(p.items.find((i) => i.itemId === "page_b")!.position, 1);
    assert.equal(outcomes.length, 1);
    assert.equal(outcomes[0]!.itemId, "page_b");
    assert.equal(outcomes[0]!.clicked, true);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field", async () => {
    const cases: [Parameters<typeof client.recommend>[0], RegExp][] = [
      [{ userId: "" }, /^user_id/],
      [{ userId: "u", candidates: Array.from({ length: 1001 }, (_, i) => `p${i}`) }, /^candidates: has 1001 items/],
      [{ userId: "u", candidates: ["a", ""] }, /^candidates\[1\]/],
      [{ userId: "u", candidates: ["a", "a"] }, /^candidates\[1\].*twice/],
      [{ userId: "x".repeat(300) }, /^user_id: is longer/],
    ];
    for (const [req, message] of cases) {
      await assert.rejects(client.recommend(req), (err: { code: number; details: string }) => {
        assert.equal(err.code, Code.INVALID_ARGUMENT);
        assert.match(err.details, message);
        return true;
      });
    }
    await assert.rejects(
      client.recordOutcome({ requestId: "", itemId: "x" }),
      (err: { code: number; details: string }) => err.code === Code.INVALID_ARGUMENT && /^request_id/.test(err.details),
    );
  });

  it("answers with default features, flagged, while Redis cannot be read", async () => {
    const broken = testRuntime({ redisUrl: "redis://127.0.0.1:1", namespace: rt.config.namespace });
    const s2 = await startServer(broken, { http: false });
    const c2 = createServiceClient(RecommendationService, `127.0.0.1:${s2.port}`);
    try {
      await waitFor(() => s2.models.servedVersion("recommender"), 15_000, "model loaded");
      const res = await c2.recommend({ userId: "u1", candidates: ["page_a", "page_b"], requestId: "req-degraded" });
      assert.equal(res.recommendations.length, 2);
      const base = sigmoid(0 + 0 + -1 * 1 + BIAS); // every feature at its default, unknown device (-1)
      for (const r of res.recommendations) assert.ok(Math.abs(r.score - base) < 1e-6);
    } finally {
      c2.close();
      await s2.stop();
      await broken.close();
    }
  });
});

it("names the first repeated candidate, in short lists (pairwise) and long ones (a Set) alike", async () => {
  const { validateRecommend } = await import("../../server/recommendation-service.js");
  const { DEFAULT_LIMITS } = await import("../../server/limits.js");
  const { create } = await import("@bufbuild/protobuf");
  const { RecommendRequestSchema } = await import("../../gen/streamserve/v1/recommendation_pb.js");
  for (const n of [5, 32, 33, 200]) {
    const candidates = Array.from({ length: n }, (_, i) => `c${i}`);
    validateRecommend(create(RecommendRequestSchema, { userId: "u", candidates }), DEFAULT_LIMITS);
    candidates.push("c3", "c1");
    assert.throws(
      () => validateRecommend(create(RecommendRequestSchema, { userId: "u", candidates }), DEFAULT_LIMITS),
      new RegExp(`candidates\\[${n}\\]: "c3" is listed twice`),
    );
  }
});
