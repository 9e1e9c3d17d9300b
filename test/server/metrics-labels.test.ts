// /metrics on a serving process: what an operator scrapes, and series that stay bounded whatever
// clients send (a model name or version nobody published adds no series).
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServing, type Serving } from "./harness.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { GRPCInferenceService } from "../../gen/inference/grpc_predict_v2_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;
let serving: Serving;
let oip: Client<typeof GRPCInferenceService.method>;
let httpPort: number;

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const mv = await registry.publish({
    name: "recommender",
    artifact: logisticModel([0.5], 0),
    features: [{ name: "clicks_last_5min", source: "user", type: "numeric", default: 0 }],
    inputName: "features",
    outputName: "score",
  });
  await registry.setAlias("recommender", "production", mv.version);
  serving = await startServing(rt);
  httpPort = await rt.listenHttp();
  oip = createServiceClient(GRPCInferenceService, `127.0.0.1:${serving.server.port}`);
  await waitFor(() => serving.server.models.servedVersion("recommender") === mv.version, 15_000, "model loaded");
});

after(async () => {
  oip?.close();
  await serving?.close();
  await rt?.cleanup();
});

const scrape = async () => {
  const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return res.text();
};
const series = (text: string) =>
  new Set(
    text
      .split("\n")
      .filter((l) => l && !l.startsWith("#"))
      .map((l) => l.slice(0, l.lastIndexOf(" "))),
  );
const random = () => `m-${randomBytes(6).toString("hex")}`;

async function callsWithUnknownNames(): Promise<string[]> {
  const names = [random(), random()];
  for (const name of names) {
    await oip.modelInfer({ modelName: name, modelVersion: "7", inputs: [] }).catch(() => undefined);
    await oip.modelReady({ name, version: random() }).catch(() => undefined);
    await oip.modelMetadata({ name }).catch(() => undefined);
  }
  return names;
}

it("serves request metrics and the default Node.js metrics on /metrics", async () => {
  await serving.client.recommend({ userId: "u1", candidates: ["a", "b"] });
  const text = await scrape();
  assert.match(text, /^grpc_server_handled_total\{method="\/streamserve\.v1\.RecommendationService\/Recommend",code="OK"\} [1-9]/m);
  assert.match(text, /^grpc_server_handling_seconds_count\{method="\/streamserve\.v1\.RecommendationService\/Recommend"\} [1-9]/m);
  assert.match(text, /^streamserve_recommend_requests_total\{model="recommender",version="\d+",variant=""\} [1-9]/m);
  assert.match(text, /^process_cpu_seconds_total \d/m);
  assert.match(text, /^nodejs_eventloop_lag_seconds \d/m);
});

it("a call naming a model or version nobody published adds no series", async () => {
  await callsWithUnknownNames(); // the first NOT_FOUND of each method is a new (bounded) series
  const before = series(await scrape());
  const names = await callsWithUnknownNames();
  const afterText = await scrape();
  const added = [...series(afterText)].filter((s) => !before.has(s));
  assert.deepEqual(added, [], "no new series");
  for (const n of names) assert.ok(!afterText.includes(n), `no label carries ${n}`);
  assert.match(afterText, /grpc_server_handled_total\{method="\/inference\.GRPCInferenceService\/ModelInfer",code="NOT_FOUND"\} [4-9]/);
});
