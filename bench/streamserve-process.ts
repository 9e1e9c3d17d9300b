// The server under test, run as a user runs it: `streamserve serve` or `streamserve up` in a
// process of its own, on free ports, in a namespace of its own (streams, buckets, Redis keys and
// a data directory, all removed afterwards), serving a synthetic 100-tree depth-5 model pushed
// with `streamserve models push` and promoted to production, with features in Redis for the
// benchmark's user and its 20 candidate items.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { freePort, testRuntime, waitFor, type TestRuntime } from "../test/helpers.js";
import { RecommendRequestSchema, RecommendResponseSchema } from "../gen/streamserve/v1/recommendation_pb.js";
import { ModelInferRequestSchema } from "../gen/inference/grpc_predict_v2_pb.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { trainGbdt, createRandom } from "../trainer/gbdt.js";
import { exportOnnx } from "../trainer/onnx-export.js";
import { atInterrupt, nodeFlags, startChild, type Child } from "./processes.js";
import { programArgs } from "./built-cli.js";

export const RECOMMEND_PATH = "/streamserve.v1.RecommendationService/Recommend";
export const MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer";
export const BENCH_USER = "bench-user";
export const BENCH_ITEMS = Array.from({ length: 20 }, (_, i) => `item${i}`);
const MODEL = "recommender";

/** A 100-tree depth-5 GBDT over the default features, trained on synthetic data, as ONNX. */
export function syntheticModel(featureCount: number): Uint8Array {
  const rand = createRandom(7);
  const n = 20_000;
  const columns = Array.from({ length: featureCount }, () => Float64Array.from({ length: n }, () => rand() * 10));
  const labels = Float64Array.from({ length: n }, (_, i) => (columns[0]![i]! + columns[1]![i]! * rand() > 8 ? 1 : 0));
  return exportOnnx(trainGbdt({ columns, labels }, { numTrees: 100, maxDepth: 5 }));
}

/** Recommend for the benchmark's user over all 20 candidates (every one ranked in the reply). */
export function recommendRequest(): Uint8Array {
  return toBinary(RecommendRequestSchema, create(RecommendRequestSchema, { userId: BENCH_USER, deviceType: "mobile", candidates: BENCH_ITEMS }));
}

/** ModelInfer of `rows` rows of the model's features, as raw FP32 contents. */
export function modelInferRequest(rows: number): Uint8Array {
  const width = defaultModelFeatures().length;
  const raw = new Uint8Array(Float32Array.from({ length: rows * width }, (_, i) => i % 7).buffer);
  return toBinary(
    ModelInferRequestSchema,
    create(ModelInferRequestSchema, {
      modelName: MODEL,
      inputs: [{ name: "features", datatype: "FP32", shape: [BigInt(rows), BigInt(width)] }],
      rawInputContents: [raw],
    }),
  );
}

/** A namespace with the model in its registry and the features in Redis; `cleanup` removes it all. */
export interface BenchNamespace {
  rt: TestRuntime;
  modelVersion: string;
  cleanup(): Promise<void>;
}

/** Creates the namespace: pushes `artifact` with the CLI, promotes it, writes the features. */
export async function prepareNamespace(artifact: Uint8Array): Promise<BenchNamespace> {
  const rt = testRuntime({ logLevel: "silent" });
  const undo = atInterrupt(() => rt.cleanup());
  const cleanup = async () => {
    undo();
    await rt.cleanup();
  };
  try {
    const features = defaultModelFeatures();
    const file = join(rt.config.dataDir, "bench-model.onnx");
    writeFileSync(file, artifact);
    const push = startChild("models push", process.execPath, [
      ...programArgs("cli/main.ts"),
      ...["models", "push", "--name", MODEL, "--file", file, "--alias", "production"],
      ...["--features", features.map((f) => f.name).join(","), ...namespaceFlags(rt)],
    ]);
    const code = await push.exited;
    const pushed = /pushed \S+ version (\S+)/.exec(push.output());
    if (code !== 0 || !pushed) throw new Error(`streamserve models push failed (${code}):\n${push.output().slice(-2000)}`);

    const redis = rt.redis();
    await redis.hset(
      rt.names.userFeaturesKey(BENCH_USER),
      Object.fromEntries(features.filter((f) => f.source === "user").map((f, i) => [f.name, String(i + 1)])),
    );
    for (const item of BENCH_ITEMS) {
      await redis.hset(rt.names.itemFeaturesKey(item), Object.fromEntries(features.filter((f) => f.source === "item").map((f, i) => [f.name, String(i * 2)])));
    }
    return { rt, modelVersion: pushed[1]!, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

const namespaceFlags = (rt: TestRuntime) => ["--namespace", rt.config.namespace, "--data-dir", rt.config.dataDir, "--log-level", "warn"];

export interface RunningStreamserve {
  child: Child;
  /** "127.0.0.1:PORT" of its gRPC server. */
  address: string;
  /** SIGTERM (it drains and flushes its logs), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `streamserve <command> [args]` in the namespace and waits until Recommend answers with
 * the namespace's model version.
 */
export async function startStreamserve(ns: BenchNamespace, command: "serve" | "up", args: string[] = []): Promise<RunningStreamserve> {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const child = startChild(`streamserve ${command}`, process.execPath, [
    ...[...nodeFlags(), ...programArgs("cli/main.ts"), command, ...args],
    ...["--grpc-port", String(grpcPort), "--http-port", String(httpPort), "--host", "127.0.0.1", ...namespaceFlags(ns.rt)],
  ]);
  const address = `127.0.0.1:${grpcPort}`;
  const exitedEarly = child.exited.then((code) => {
    throw new Error(`streamserve ${command} exited (${code}) while starting:\n${child.output().slice(-3000)}`);
  });
  try {
    await Promise.race([
      exitedEarly,
      waitFor(
        async () => fromBinary(RecommendResponseSchema, await unaryCall(address, RECOMMEND_PATH, recommendRequest())).modelVersion === ns.modelVersion,
        120_000,
        `streamserve ${command} serving ${MODEL} version ${ns.modelVersion}`,
      ),
    ]);
    // With several serving workers, health lists each: measure once all of them are ready.
    await Promise.race([exitedEarly, waitFor(() => allWorkersReady(httpPort), 120_000, `every worker of streamserve ${command} ready`)]);
  } catch (err) {
    await child.stop(2000);
    throw err;
  }
  exitedEarly.catch(() => undefined);
  return { child, address, stop: (graceMs) => child.stop(graceMs) };
}

/** True unless /healthz lists workers of which some are not ready yet. */
async function allWorkersReady(httpPort: number): Promise<boolean> {
  const body = (await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json().catch(() => ({}))) as { workers?: { ready?: boolean }[] };
  return !Array.isArray(body.workers) || body.workers.every((w) => w.ready === true);
}

/** One unary call with raw bytes both ways (a 5 s deadline): for probing, not for load. */
export function unaryCall(address: string, path: string, request: Uint8Array): Promise<Buffer> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const identity = (b: Buffer) => b;
  return new Promise<Buffer>((resolve, reject) =>
    client.makeUnaryRequest(path, identity, identity, Buffer.from(request), new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err, reply) =>
      err ? reject(err) : resolve(reply!),
    ),
  ).finally(() => client.close());
}
