// Hostile input: thousands of malformed, oversized and absurd gRPC messages and events. Every one
// gets a clean error (or a dead letter), the server stays up and its memory stays bounded.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import { createServiceClient, grpc, Code } from "../../lib/grpc.js";
import { GRPCInferenceService } from "../../gen/inference/grpc_predict_v2_pb.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import { createRandom } from "../../simulator/random.js";

let rt: TestRuntime;
let server: RunningServer;
let worker: FeaturesWorker;

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const mv = await registry.publish({
    name: "recommender",
    artifact: logisticModel([0.5, 0.25], 0),
    features: [
      { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
      { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
    ],
    inputName: "features",
    outputName: "score",
  });
  await registry.setAlias("recommender", "production", mv.version);
  server = await startServer(rt, { http: false, limits: { maxMessageBytes: 4 * 1024 * 1024 } });
  await waitFor(() => server.models.servedVersion("recommender"), 15_000, "model");
});
after(async () => {
  await worker?.stop();
  await server?.stop();
  await rt?.cleanup();
});

/** Codes a malformed call may get. Never INTERNAL or UNKNOWN: those mean the server broke. */
const CLEAN = new Set([Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE]);

it("answers thousands of malformed calls cleanly and stays up with bounded memory", async () => {
  const address = `127.0.0.1:${server.port}`;
  const raw = new grpc.Client(address, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": 64 * 1024 * 1024 });
  const identity = (b: Buffer) => b;
  const call = (path: string, body: Buffer) =>
    new Promise<number>((resolve) => raw.makeUnaryRequest(path, identity, identity, body, (err) => resolve(err ? (err.code as number) : Code.OK)));
  const oip = createServiceClient(GRPCInferenceService, address, undefined, { "grpc.max_send_message_length": 64 * 1024 * 1024 });
  const rec = createServiceClient(RecommendationService, address);
  const rand = createRandom(2026);
  const paths = [
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/streamserve.v1.RecommendationService/Recommend",
    "/streamserve.v1.RecommendationService/RecordOutcome",
  ];
  const codes = new Map<number, number>();
  const count = (code: number) => codes.set(code, (codes.get(code) ?? 0) + 1);
  const rssBefore = process.memoryUsage().rss;

  // Random bytes to every method.
  for (let round = 0; round < 25; round++) {
    await Promise.all(
      Array.from({ length: 80 }, (_, i) => call(paths[i % paths.length]!, randomBytes(Math.floor(rand.next() * 512)))).map((p) => p.then(count)),
    );
  }
  // Oversized messages: refused before they are read.
  for (let i = 0; i < 5; i++) count(await call(paths[0]!, randomBytes(5 * 1024 * 1024)));
  // Huge strings, NaN and infinities, absurd shapes, deep batches.
  const big = "x".repeat(1024 * 1024);
  const weird: Promise<unknown>[] = [
    rec.recommend({ userId: big }),
    rec.recommend({ userId: "u", candidates: Array.from({ length: 5000 }, (_, i) => `c${i}`) }),
    rec.recommend({ userId: "u", candidates: ["a"], limit: 4_000_000_000 }),
    rec.recordOutcome({ requestId: "r", itemId: "i", revenue: Number.NaN }),
    rec.recordOutcome({ requestId: "r", itemId: "i", revenue: Number.POSITIVE_INFINITY }),
    oip.modelInfer({
      modelName: "recommender",
      inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [Number.NaN, Number.POSITIVE_INFINITY] } }],
    }),
    oip.modelInfer({
      modelName: "recommender",
      inputs: [{ name: "features", datatype: "FP32", shape: [1_000_000_000n, 2n] }],
      rawInputContents: [new Uint8Array(8)],
    }),
    oip.modelInfer({ modelName: "recommender", inputs: [{ name: "features", datatype: "FP32", shape: [9_223_372_036_854_775_807n, 2n] }] }),
    oip.modelInfer({ modelName: "recommender", inputs: [{ name: "features", datatype: "FP32", shape: Array.from({ length: 64 }, () => 2n) }] }),
    oip.modelInfer({
      modelName: "recommender",
      inputs: [{ name: "features", datatype: "FP32", shape: [60_000n, 2n] }],
      rawInputContents: [new Uint8Array(60_000 * 2 * 4)],
    }),
    oip.modelInfer({
      modelName: "recommender",
      inputs: [{ name: "features", datatype: "FP32", shape: [100_000n, 2n] }],
      rawInputContents: [new Uint8Array(100_000 * 2 * 4)],
    }),
    oip.modelInfer({ modelName: "recommender", modelVersion: "v".repeat(100_000), inputs: [] }),
    rec.recommend({ userId: "u", candidates: ["y".repeat(100_000)] }),
    oip.modelInfer({ modelName: "x".repeat(100_000), inputs: [] }),
  ];
  for (const r of await Promise.allSettled(weird)) count(r.status === "fulfilled" ? Code.OK : (r.reason as { code: number }).code);

  const total = [...codes.values()].reduce((a, b) => a + b, 0);
  assert.equal(total, 2000 + 5 + weird.length, "every call was answered");
  const unclean = [...codes.entries()].filter(([c]) => !CLEAN.has(c));
  assert.deepEqual(unclean, [], `codes: ${JSON.stringify(Object.fromEntries(codes))}`);
  assert.ok((codes.get(Code.INVALID_ARGUMENT) ?? 0) > 1000, "random bytes are refused as invalid requests");
  assert.ok((codes.get(Code.RESOURCE_EXHAUSTED) ?? 0) >= 5, "oversized messages are refused");

  // Still up and serving correct answers.
  assert.equal((await oip.serverLive({})).live, true);
  const ok = await rec.recommend({ userId: "u1", candidates: ["a", "b"] });
  assert.equal(ok.recommendations.length, 2);
  const grownMb = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
  assert.ok(grownMb < 400, `memory grew by ${grownMb.toFixed(0)} MB`);
  raw.close();
  oip.close();
  rec.close();
});

it("dead-letters thousands of malformed events and keeps consuming", async () => {
  worker = await startFeaturesWorker(rt);
  const nc = await rt.nats();
  const js = nc.jetstream();
  const rand = createRandom(7);
  const now = Date.now();
  const payloads: Uint8Array[] = [];
  for (let i = 0; i < 1500; i++) {
    const kind = i % 6;
    if (kind === 0) payloads.push(randomBytes(Math.floor(rand.next() * 300)));
    else if (kind === 1)
      payloads.push(
        new TextEncoder().encode(JSON.stringify({ event_id: `e${i}`, user_id: "u".repeat(100_000), event_type: "click", page_id: "p", event_time: now })),
      );
    else if (kind === 2)
      payloads.push(
        new TextEncoder().encode(JSON.stringify({ event_id: `e${i}`, user_id: 42, event_type: ["click"], page_id: null, event_time: "yesterday" })),
      );
    else if (kind === 3)
      payloads.push(
        new TextEncoder().encode(`{"event_id":"e${i}","user_id":"u","event_type":"view","page_id":"p","session_duration":NaN,"event_time":${now}}`),
      );
    else if (kind === 4)
      payloads.push(
        new TextEncoder().encode(
          JSON.stringify({ event_id: `e${i}`, user_id: "u", event_type: "purchase", page_id: "p", amount: 1e308 * 10, event_time: 1e20 }),
        ),
      );
    else payloads.push(new TextEncoder().encode("[".repeat(10_000)));
  }
  // One good event at the end proves the stream was never stalled.
  payloads.push(
    new TextEncoder().encode(
      JSON.stringify({ event_id: "good-1", user_id: "fuzz-user", event_type: "click", page_id: "p1", session_duration: 3, amount: 0, event_time: now }),
    ),
  );
  for (const p of payloads) await js.publish(rt.names.eventsSubject, p);
  await waitFor(() => worker.stats.messages >= payloads.length, 60_000, "every event handled");
  assert.ok(worker.stats.deadLetters >= 1400, `dead letters: ${worker.stats.deadLetters}`);
  await waitFor(async () => (await rt.redis().hget(rt.names.userFeaturesKey("fuzz-user"), "clicks_last_5min")) === "1", 10_000, "the good event's features");
});
