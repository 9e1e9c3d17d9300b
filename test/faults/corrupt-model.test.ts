// Broken artifacts promoted to production while clients call Recommend: bytes that are not ONNX,
// a valid ONNX model whose input width does not match its declared features, and an artifact
// damaged in the object store after it was published. Each is rejected, the previous version
// keeps serving every call, an alert goes out on NATS and a load_failed row reaches ClickHouse.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import type { Subscription } from "nats";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startSink, type Sink } from "../../sink/sink.js";
import { queryRows, type ClickHouse } from "../../lib/clickhouse.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { garbageModel, logisticModel, sigmoid } from "../fixtures/onnx-models.js";
import type { FeatureSpec, PublishInput } from "../../lib/registry.js";
import { recommendLoad, type Answer, type Load } from "./own-services.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
];
const WEIGHTS = [0.5, 0.25];
const BIAS = -1;
const ITEM_CLICKS: Record<string, number> = { a: 1, b: 8, c: 2 };
const USER_CLICKS = 4;
const goodScore = (userClicks: number, itemClicks: number) => sigmoid(userClicks * WEIGHTS[0]! + itemClicks * WEIGHTS[1]! + BIAS);
/**
 * The good version's scores, computed by hand: what every answer must carry. From the features in
 * Redis, or from the defaults when a read misses its 100 ms budget on a loaded machine; no other
 * model gives either.
 */
const fromGoodVersion = (a: Answer) =>
  Object.entries(ITEM_CLICKS).every(([item, clicks]) => Math.abs(a.scores.get(item)! - goodScore(USER_CLICKS, clicks)) < 1e-6) ||
  Object.keys(ITEM_CLICKS).every((item) => Math.abs(a.scores.get(item)! - goodScore(0, 0)) < 1e-6);

interface Alert {
  kind: string;
  model: string;
  version: string;
  reason: string;
}

let rt: TestRuntime;
let ch: ClickHouse;
let server: RunningServer | undefined;
let sink: Sink | undefined;
let client: Client<typeof RecommendationService.method> | undefined;
let load: Load | undefined;
let alertSub: Subscription | undefined;

before(async () => {
  rt = testRuntime();
  ch = await rt.clickhouse();
  const redis = rt.redis();
  await redis.hset(rt.names.userFeaturesKey("u1"), { clicks_last_5min: String(USER_CLICKS) });
  for (const [item, clicks] of Object.entries(ITEM_CLICKS)) await redis.hset(rt.names.itemFeaturesKey(item), { item_clicks_5min: String(clicks) });
});

after(async () => {
  await load?.stop();
  client?.close();
  alertSub?.unsubscribe();
  await server?.stop();
  await sink?.stop();
  await rt.cleanup();
});

it("rejects corrupt and incompatible artifacts, keeps the previous version serving, alerts and records load_failed", async () => {
  const nc = await rt.nats();
  // Subscribed before any promotion: core NATS alerts reach only those listening when they go out.
  const alerts: Alert[] = [];
  alertSub = nc.subscribe(rt.names.alertsSubject("model"));
  void (async () => {
    for await (const m of alertSub!) alerts.push(JSON.parse(new TextDecoder().decode(m.data)) as Alert);
  })();

  const registry = await rt.registry();
  const model = (artifact: Uint8Array, features = FEATURES): PublishInput => ({
    name: "recommender",
    artifact,
    features,
    inputName: "features",
    outputName: "score",
  });
  const good = await registry.publish(model(logisticModel(WEIGHTS, BIAS)));
  await registry.setAlias("recommender", "production", good.version);
  sink = await startSink(rt, { kinds: ["model_event"] });
  server = await startServer(rt, { http: false });
  await waitFor(() => server!.models.servedVersion("recommender") === good.version, 15_000, "the good version served");
  client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);
  load = recommendLoad(client, (loop, i) => ({ userId: "u1", candidates: Object.keys(ITEM_CLICKS), requestId: `r${loop}-${i}` }), 4);

  const cases: { what: string; publish(): Promise<string>; reason: RegExp }[] = [
    { what: "bytes that are not ONNX", publish: async () => (await registry.publish(model(garbageModel()))).version, reason: /onnxruntime cannot load/ },
    {
      what: "an ONNX model taking 2 features declared with 3",
      publish: async () =>
        (await registry.publish(model(logisticModel(WEIGHTS, BIAS), [...FEATURES, { name: "extra", source: "user", type: "numeric", default: 0 }]))).version,
      reason: /takes 2 features but 3 were declared/,
    },
    {
      what: "an artifact damaged in the object store after publication",
      publish: async () => {
        const mv = await registry.publish(model(logisticModel([1, 1], 0)));
        const objects = await nc.jetstream().views.os(rt.names.artifactsBucket);
        const bytes = logisticModel([1, 1], 0);
        await objects.putBlob({ name: mv.artifact.key }, bytes.subarray(0, bytes.length - 7));
        return mv.version;
      },
      reason: /is corrupt: sha256/,
    },
  ];

  const broken: string[] = [];
  for (const c of cases) {
    const version = await c.publish();
    broken.push(version);
    const promotedAt = Date.now();
    await registry.setAlias("recommender", "production", version);
    await waitFor(() => server!.models.states("recommender").get(version)?.state === "failed", 15_000, `${c.what}: rejected`);
    const alert = await waitFor(() => alerts.find((a) => a.version === version), 10_000, `${c.what}: alert`);
    assert.equal(alert.kind, "model_load_failed");
    assert.equal(alert.model, "recommender");
    assert.match(alert.reason, c.reason, c.what);
    assert.equal(server.models.servedVersion("recommender"), good.version, `${c.what}: the previous version keeps serving`);
    // Calls keep flowing after the rejection, all from the good version.
    const seen = load.answers.length;
    await waitFor(() => load!.answers.length >= seen + 50, 10_000, "answers after the rejection");
    const since = load.answersSince(promotedAt);
    assert.ok(
      since.every((a) => a.modelVersion === good.version && fromGoodVersion(a)),
      `${c.what}: every answer came from version ${good.version}`,
    );
  }
  await sleep(200);
  await load.stop();
  assert.equal(load.failures.length, 0, `zero failed calls (first: ${(load.failures[0] as Error | undefined)?.message})`);
  assert.ok(
    load.answers.every((a) => a.modelVersion === good.version && fromGoodVersion(a)),
    "no broken version ever answered",
  );
  for (const v of broken) {
    assert.equal(
      await rt.metrics.value("streamserve_model_load_failures_total", { model: "recommender", version: v }),
      1,
      `version ${v} counted as a load failure`,
    );
  }

  // The operator's record: one load_failed event per broken version, with the reason.
  const rows = await waitFor(
    async () => {
      const r = await queryRows<{ to_version: string; reason: string }>(
        ch,
        "SELECT to_version, reason FROM model_events FINAL WHERE model_name = 'recommender' AND kind = 'load_failed' ORDER BY to_version",
      );
      return r.length >= broken.length ? r : undefined;
    },
    30_000,
    "load_failed rows in ClickHouse",
  );
  assert.deepEqual(
    rows.map((r) => r.to_version),
    [...broken].sort(),
  );
  cases.forEach((c, i) => assert.match(rows.find((r) => r.to_version === broken[i])!.reason, c.reason));
});
