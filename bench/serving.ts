// Serving benchmark: Recommend (20 candidates, features in Redis, a 100-tree depth-5 model) and
// ModelInfer (1 and 64 rows) at concurrency 1, 16 and 64, judged against floors measured in the
// same run: a bare grpc-js echo call, a pipelined Redis read of the same 21 hashes, and a raw
// onnxruntime run of the same batch.
import * as ort from "onnxruntime-node";
import { testRuntime, waitFor } from "../test/helpers.js";
import { startServer } from "../server/server.js";
import { createServiceClient, grpc } from "../lib/grpc.js";
import { RecommendationService } from "../gen/streamserve/v1/recommendation_pb.js";
import { GRPCInferenceService } from "../gen/inference/grpc_predict_v2_pb.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { trainGbdt, createRandom } from "../trainer/gbdt.js";
import { exportOnnx } from "../trainer/onnx-export.js";
import { fmt, header, medianMs, row, runLoad, type LoadResult } from "./measure.js";

const CONCURRENCY = [1, 16, 64];
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);

function syntheticModel(featureCount: number): Uint8Array {
  const rand = createRandom(7);
  const n = 20_000;
  const columns = Array.from({ length: featureCount }, () => Float64Array.from({ length: n }, () => rand() * 10));
  const labels = Float64Array.from({ length: n }, (_, i) => (columns[0]![i]! + columns[1]![i]! * rand() > 8 ? 1 : 0));
  const model = trainGbdt({ columns, labels }, { numTrees: 100, maxDepth: 5 });
  return exportOnnx(model);
}

/** A grpc-js server and client that echo raw bytes: the transport's floor. */
async function echoFloor(): Promise<{ call: () => Promise<unknown>; close: () => void }> {
  const server = new grpc.Server();
  const identity = (b: Buffer) => b;
  server.addService(
    { echo: { path: "/bench.Echo/Echo", requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } },
    { echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request) },
  );
  const port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const payload = Buffer.alloc(64, 1);
  const call = () => new Promise((res, rej) => client.makeUnaryRequest("/bench.Echo/Echo", identity, identity, payload, (e, v) => (e ? rej(e) : res(v))));
  return { call, close: () => (client.close(), server.forceShutdown()) };
}

function printLoad(label: string, r: LoadResult, floor?: LoadResult): void {
  row([label, fmt(r.p50Ms), fmt(r.p99Ms), Math.round(r.perSecond), r.errors, floor ? fmt(r.perSecond / floor.perSecond, 2) : ""], [28, 9, 9, 9, 7, 14]);
}

export async function benchServing(): Promise<void> {
  header("serving: Recommend and ModelInfer vs grpc-js echo + Redis + onnxruntime floors");
  const rt = testRuntime({ logLevel: "silent" });
  const features = defaultModelFeatures();
  const artifact = syntheticModel(features.length);
  const items = Array.from({ length: 20 }, (_, i) => `item${i}`);
  const redis = rt.redis();
  await redis.hset(rt.names.userFeaturesKey("bench-user"), Object.fromEntries(features.filter((f) => f.source === "user").map((f, i) => [f.name, String(i + 1)])));
  for (const item of items) await redis.hset(rt.names.itemFeaturesKey(item), Object.fromEntries(features.filter((f) => f.source === "item").map((f, i) => [f.name, String(i * 2)])));

  const registry = await rt.registry();
  const mv = await registry.publish({ name: "recommender", artifact, features, inputName: "features", outputName: "probabilities" });
  await registry.setAlias("recommender", "production", mv.version);
  const server = await startServer(rt, { http: false, limits: { maxInflight: 4096 } });
  await waitFor(() => server.models.servedVersion("recommender") === mv.version, 30_000, "model loaded");
  const rec = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);
  const oip = createServiceClient(GRPCInferenceService, `127.0.0.1:${server.port}`);

  // ---- floors ----
  const echo = await echoFloor();
  const redisRead = () => {
    const p = redis.pipeline();
    p.hgetall(rt.names.userFeaturesKey("bench-user"));
    for (const item of items) p.hgetall(rt.names.itemFeaturesKey(item));
    return p.exec();
  };
  const session = await ort.InferenceSession.create(artifact, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: "sequential", graphOptimizationLevel: "all" });
  const batch = (rows: number) => new ort.Tensor("float32", Float32Array.from({ length: rows * features.length }, (_, i) => i % 7), [rows, features.length]);
  const ortRun = (rows: number) => {
    const t = batch(rows);
    return () => session.run({ features: t });
  };
  const floors = {
    echo: await medianMs(echo.call, 2000),
    redis: await medianMs(redisRead, 2000),
    ort20: await medianMs(ortRun(20), 2000),
    ort1: await medianMs(ortRun(1), 2000),
    ort64: await medianMs(ortRun(64), 2000),
  };
  console.log(`floors (median ms): grpc echo ${fmt(floors.echo)}, Redis pipeline of 21 hashes ${fmt(floors.redis)}, onnxruntime 20 rows ${fmt(floors.ort20)}, 1 row ${fmt(floors.ort1)}, 64 rows ${fmt(floors.ort64)}`);

  row(["call @ concurrency", "p50 ms", "p99 ms", "calls/s", "errors", "vs echo calls/s"], [28, 9, 9, 9, 7, 14]);
  const echoLoads = new Map<number, LoadResult>();
  for (const c of CONCURRENCY) {
    const r = await runLoad(echo.call, c, DURATION_MS);
    echoLoads.set(c, r);
    printLoad(`grpc echo (floor) @${c}`, r);
  }
  const recommend = () => rec.recommend({ userId: "bench-user", deviceType: "mobile", candidates: items, limit: 10 });
  const recLoads = new Map<number, LoadResult>();
  for (const c of CONCURRENCY) {
    const r = await runLoad(recommend, c, DURATION_MS);
    recLoads.set(c, r);
    printLoad(`Recommend 20 cand. @${c}`, r, echoLoads.get(c));
  }
  for (const rows of [1, 64]) {
    const values = Array.from({ length: rows * features.length }, (_, i) => i % 7);
    const raw = new Uint8Array(Float32Array.from(values).buffer);
    const infer = () => oip.modelInfer({ modelName: "recommender", inputs: [{ name: "features", datatype: "FP32", shape: [BigInt(rows), BigInt(features.length)] }], rawInputContents: [raw] });
    for (const c of CONCURRENCY) printLoad(`ModelInfer ${rows} row${rows > 1 ? "s" : ""} @${c}`, await runLoad(infer, c, DURATION_MS), echoLoads.get(c));
  }

  const floorSum = floors.echo + floors.redis + floors.ort20;
  const p50 = recLoads.get(1)!.p50Ms;
  console.log(`Recommend p50 @1 = ${fmt(p50)} ms vs echo+Redis+onnxruntime = ${fmt(floorSum)} ms: ratio ${fmt(p50 / floorSum, 2)} (target ≤ 2)`);
  const thr = recLoads.get(64)!.perSecond / echoLoads.get(64)!.perSecond;
  console.log(`Recommend calls/s @64 = ${Math.round(recLoads.get(64)!.perSecond)} vs echo ${Math.round(echoLoads.get(64)!.perSecond)}: ratio ${fmt(thr, 2)} (target ≥ 0.5)`);

  rec.close();
  oip.close();
  echo.close();
  await session.release();
  await server.stop();
  await rt.cleanup();
}
