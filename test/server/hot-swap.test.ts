// Hot swap under continuous load: ten promotions (one of them a broken artifact, one a model
// whose input does not match its declared features) while clients call Recommend nonstop.
// Zero calls may fail, every answer must come from a version that was live during the call, and a
// broken version must never serve.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import type { RunningServer } from "../../server/server.js";
import { startServing, type Serving } from "./harness.js";
import { createServiceClient } from "../../lib/grpc.js";
import { GRPCInferenceService } from "../../gen/inference/grpc_predict_v2_pb.js";
import { garbageModel, logisticModel } from "../fixtures/onnx-models.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
];

let rt: TestRuntime;
let serving: Serving;
let server: RunningServer;
let client: Serving["client"];

before(async () => {
  rt = testRuntime();
  serving = await startServing(rt);
  ({ server, client } = serving);
});

after(async () => {
  await serving?.close();
  await rt?.cleanup();
});

it("swaps ten times under load with zero failed requests", async () => {
  const registry = await rt.registry();
  const first = await registry.publish({
    name: "recommender",
    artifact: logisticModel([0.1, 0.1], 0),
    features: FEATURES,
    inputName: "features",
    outputName: "score",
  });
  await registry.setAlias("recommender", "production", first.version);
  await waitFor(() => server.models.servedVersion("recommender") === first.version, 15_000, "first model");

  let stop = false;
  let ok = 0;
  const failures: unknown[] = [];
  const wrongVersion: string[] = [];
  const served = new Set<string>();
  const workers = Array.from({ length: 8 }, async (_, w) => {
    let i = 0;
    while (!stop) {
      const before = server.models.servedVersion("recommender");
      try {
        const res = await client.recommend({ userId: `u${w}-${i++ % 50}`, candidates: ["a", "b", "c", "d", "e"] });
        const afterVersion = server.models.servedVersion("recommender");
        // The version that answered was live when the call started or when it ended.
        if (res.modelVersion !== before && res.modelVersion !== afterVersion) wrongVersion.push(`${res.modelVersion} not in {${before}, ${afterVersion}}`);
        served.add(res.modelVersion);
        ok++;
      } catch (err) {
        failures.push(err);
      }
    }
  });

  const promoted: string[] = [first.version];
  const broken: string[] = [];
  for (let n = 1; n <= 10; n++) {
    let artifact = logisticModel([0.1 * n, -0.05 * n], n / 10);
    let features = FEATURES;
    if (n === 4) artifact = garbageModel(); // not ONNX at all
    if (n === 7) features = [...FEATURES, { name: "extra", source: "user", type: "numeric", default: 0 }]; // 3 declared, model takes 2
    const mv = await registry.publish({ name: "recommender", artifact, features, inputName: "features", outputName: "score" });
    const previous = server.models.servedVersion("recommender");
    await registry.setAlias("recommender", "production", mv.version);
    if (n === 4 || n === 7) {
      broken.push(mv.version);
      await waitFor(() => server.models.states("recommender").get(mv.version)?.state === "failed", 15_000, `version ${mv.version} to fail`);
      assert.equal(server.models.servedVersion("recommender"), previous, "a broken version leaves the previous one serving");
    } else {
      await waitFor(() => server.models.servedVersion("recommender") === mv.version, 15_000, `swap to ${mv.version}`);
      promoted.push(mv.version);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  stop = true;
  await Promise.all(workers);

  assert.deepEqual(failures, [], "no request failed");
  assert.deepEqual(wrongVersion, []);
  assert.ok(ok > 200, `load kept running (${ok} calls)`);
  for (const v of broken) assert.ok(!served.has(v), `broken version ${v} never served`);
  assert.ok(
    [...served].every((v) => promoted.includes(v)),
    `served ${[...served]} ⊆ promoted ${promoted}`,
  );
  assert.ok(served.size >= 6, `several versions answered (${[...served]})`);

  // The failure is visible to operators: ModelReady is false for the broken version, metrics count it.
  const oip = createServiceClient(GRPCInferenceService, `127.0.0.1:${server.port}`);
  try {
    assert.equal((await oip.modelReady({ name: "recommender", version: broken[0]! })).ready, false);
    assert.equal((await oip.modelReady({ name: "recommender" })).ready, true);
  } finally {
    oip.close();
  }
  assert.match(await rt.metrics.render(), /streamserve_model_load_failures_total\{model="recommender",version="\d+"\} 1/);
});
