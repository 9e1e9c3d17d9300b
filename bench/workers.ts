// `serve --workers N` scaling, measured from outside: `streamserve serve` runs as its own process
// tree and h2load (Debian's nghttp2-client) drives Recommend over gRPC (20 candidates, features in
// Redis, a 100-tree depth-5 model, logs on) at 64 connections. The floor is `--workers 1` measured
// the same way in the same run; rounds alternate 1 and N so drift in a shared machine's load hits
// both. Calls are counted by the server's own /metrics (an h2load 200 can carry a gRPC error).
// Knobs: BENCH_WORKERS (2), BENCH_ROUNDS (3), BENCH_CONNECTIONS (64), BENCH_DURATION_S (10),
// BENCH_WARMUP_S (10: shorter leaves JIT compilation in the measured CPU), BENCH_RPS (per
// connection; unset: as fast as the server answers).
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadavg } from "node:os";
import { get as httpGet } from "node:http";
import { create, toBinary } from "@bufbuild/protobuf";
import { freePort, testRuntime, waitFor } from "../test/helpers.js";
import { RecommendRequestSchema } from "../gen/streamserve/v1/recommendation_pb.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { trainGbdt, createRandom } from "../trainer/gbdt.js";
import { exportOnnx } from "../trainer/onnx-export.js";
import { fmt, header, row } from "./measure.js";

const WORKERS = Number(process.env.BENCH_WORKERS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 64);
const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 10);
const WARMUP_S = Number(process.env.BENCH_WARMUP_S ?? 10);
const TARGET = 1.3;

function syntheticModel(featureCount: number): Uint8Array {
  const rand = createRandom(7);
  const n = 20_000;
  const columns = Array.from({ length: featureCount }, () => Float64Array.from({ length: n }, () => rand() * 10));
  const labels = Float64Array.from({ length: n }, (_, i) => (columns[0]![i]! + columns[1]![i]! * rand() > 8 ? 1 : 0));
  return exportOnnx(trainGbdt({ columns, labels }, { numTrees: 100, maxDepth: 5 }));
}

/** A gRPC message frame: uncompressed flag, 4-byte big-endian length, the message. */
function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

interface Run {
  workers: number;
  perSecond: number;
  ok: number;
  /** Calls ending in another code than OK (h2load cancels the calls in flight when its time is up). */
  failed: number;
  /** Calls served with default features because Redis was slower than the feature budget. */
  degraded: number;
  cpuPerCallUs: number;
  load: number;
}

/** GET on a fresh connection (a kept-alive one can time out server-side during a long run). */
const get = (url: string) =>
  new Promise<string>((resolve, reject) => {
    httpGet(url, { agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (d: string) => (text += d)).on("end", () => resolve(text));
    }).on("error", reject);
  });

const scrape = async (httpPort: number) => {
  const text = await get(`http://127.0.0.1:${httpPort}/metrics`);
  const ok = Number(/^grpc_server_handled_total\{method="\/streamserve\.v1\.RecommendationService\/Recommend",code="OK"\} (\d+)/m.exec(text)?.[1] ?? 0);
  const all = [...text.matchAll(/^grpc_server_handled_total\{method="\/streamserve\.v1\.RecommendationService\/Recommend",code="\w+"\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
  const degraded = Number(/^streamserve_feature_lookup_degraded_total ([\d.e+]+)/m.exec(text)?.[1] ?? 0);
  const cpu = Number(/^process_cpu_seconds_total ([\d.e+-]+)/m.exec(text)?.[1] ?? NaN);
  return { ok, failed: all - ok, cpu, degraded };
};

async function measure(workers: number, namespace: string, dataDir: string, body: string): Promise<Run> {
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", "cli/main.ts", "serve", "--workers", String(workers), "--namespace", namespace, "--grpc-port", String(grpcPort), "--http-port", String(httpPort), "--data-dir", dataDir, "--host", "127.0.0.1", "--max-inflight", "4096"],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, LOG_LEVEL: "warn" } },
  );
  const exited = new Promise((r) => child.once("exit", r));
  try {
    await waitFor(async () => {
      const h = JSON.parse(await get(`http://127.0.0.1:${httpPort}/healthz`)) as { status: string; version: string; workers?: { ready: boolean }[] };
      return h.status === "SERVING" && h.version !== "fallback" && (h.workers ?? [{ ready: true }]).every((w) => w.ready);
    }, 60_000, `serve --workers ${workers} ready`);
    const h2load = (seconds: number) =>
      execFileSync("h2load", ["-c", String(CONNECTIONS), "-m", "1", "-D", String(seconds), ...(process.env.BENCH_RPS ? [`--rps=${process.env.BENCH_RPS}`] : []), "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers", `http://127.0.0.1:${grpcPort}/streamserve.v1.RecommendationService/Recommend`], { encoding: "utf8", maxBuffer: 1 << 24 });
    h2load(WARMUP_S); // warm-up: JIT, connections, Redis and NATS clients
    const before = await scrape(httpPort);
    const t = performance.now();
    const out = h2load(DURATION_S);
    const seconds = (performance.now() - t) / 1000;
    const after = await scrape(httpPort);
    if (!/requests: \d+ total/.test(out)) throw new Error(`h2load printed no summary:\n${out}`);
    const ok = after.ok - before.ok;
    return { workers, perSecond: ok / seconds, ok, failed: after.failed - before.failed, degraded: after.degraded - before.degraded, cpuPerCallUs: ((after.cpu - before.cpu) / ok) * 1e6, load: loadavg()[0]! };
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
}

export async function benchWorkers(): Promise<void> {
  header(`serve --workers ${WORKERS} vs --workers 1: Recommend calls/s at ${CONNECTIONS} connections (h2load, from outside)`);
  try {
    execFileSync("h2load", ["--version"], { stdio: "ignore" });
  } catch {
    console.log("h2load is not installed (apt-get install -y nghttp2-client): skipped");
    return;
  }
  const rt = testRuntime({ logLevel: "silent" });
  try {
    const features = defaultModelFeatures();
    const items = Array.from({ length: 20 }, (_, i) => `item${i}`);
    const redis = rt.redis();
    await redis.hset(rt.names.userFeaturesKey("bench-user"), Object.fromEntries(features.filter((f) => f.source === "user").map((f, i) => [f.name, String(i + 1)])));
    for (const item of items) await redis.hset(rt.names.itemFeaturesKey(item), Object.fromEntries(features.filter((f) => f.source === "item").map((f, i) => [f.name, String(i * 2)])));
    const registry = await rt.registry();
    const mv = await registry.publish({ name: "recommender", artifact: syntheticModel(features.length), features, inputName: "features", outputName: "probabilities" });
    await registry.setAlias("recommender", "production", mv.version);
    const body = join(rt.config.dataDir, "recommend.grpc");
    writeFileSync(body, grpcFrame(toBinary(RecommendRequestSchema, create(RecommendRequestSchema, { userId: "bench-user", deviceType: "mobile", candidates: items, limit: 10 }))));

    console.log(`${DURATION_S} s per run after a ${WARMUP_S} s warm-up; ${ROUNDS} rounds alternating 1 and ${WORKERS} workers; load average before: ${loadavg().map((l) => fmt(l, 2)).join(" ")}`);
    const widths = [6, 8, 9, 7, 9, 12, 8];
    row(["round", "workers", "calls/s", "not OK", "defaults", "CPU µs/call", "load 1m"], widths);
    const runs: Run[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      for (const n of [1, WORKERS]) {
        const r = await measure(n, rt.config.namespace, rt.config.dataDir, body);
        runs.push(r);
        row([round, n, Math.round(r.perSecond), r.failed, r.degraded, Math.round(r.cpuPerCallUs), fmt(r.load, 2)], widths);
      }
    }
    const ratios = Array.from({ length: ROUNDS }, (_, i) => runs[2 * i + 1]!.perSecond / runs[2 * i]!.perSecond);
    const median = [...ratios].sort((a, b) => a - b)[Math.floor(ratios.length / 2)]!;
    console.log(`--workers ${WORKERS} / --workers 1 calls/s per round: ${ratios.map((r) => fmt(r, 2)).join(", ")}; median ${fmt(median, 2)} (target ≥ ${TARGET})`);
  } finally {
    await rt.cleanup();
  }
}
