// `npm run bench -- serving`: `streamserve serve` in its own process, loaded from outside
// (h2load over gRPC, or a grpc-js client in a child process), next to its floor measured the
// same way in the same run: a bare grpc-js server (its own process too) answering the same path
// with the bytes of a real reply. Recommend (20 candidates with features in Redis, a 100-tree
// depth-5 model, logs on) at 1, 16 and 64 connections and 4 connections x 16 streams, ModelInfer
// at 1 and 64 rows, the server's CPU per call beside the floor's, and, when `serve` has
// --workers, 64 connections with --workers 1 and 2.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import * as ort from "onnxruntime-node";
import { defaultModelFeatures } from "../features/definitions.js";
import type { FloorReplies } from "./floor-server.js";
import { measure, pickLoadGenerator, shapeLabel, type CallTarget, type LoadFigures, type LoadShape } from "./load.js";
import { fmt, header, medianMs, row } from "./measure.js";
import { nodeFlags, startChild, type Child } from "./processes.js";
import { programArgs, programsLine } from "./built-cli.js";
import {
  BENCH_ITEMS,
  BENCH_USER,
  MODEL_INFER_PATH,
  modelInferRequest,
  prepareNamespace,
  RECOMMEND_PATH,
  recommendRequest,
  startStreamserve,
  syntheticModel,
  unaryCall,
  type BenchNamespace,
  type RunningStreamserve,
} from "./streamserve-process.js";

export const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 4000);
export const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 1000);
const SHAPES: LoadShape[] = [
  { connections: 1, streams: 1 },
  { connections: 16, streams: 1 },
  { connections: 64, streams: 1 },
  { connections: 4, streams: 16 },
];
const INFER_SHAPES: LoadShape[] = [SHAPES[0]!, SHAPES[1]!];
const WIDTHS = [26, 6, 8, 7, 7, 7, 7, 6, 9, 9];

export function machineLine(): string {
  return `machine: ${availableParallelism()} cores, load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`;
}

export function printHeaderRow(): void {
  row(["call", "load", "calls/s", "p50 ms", "p99", "p99.9", "max", "errors", "CPU µs/c", "vs floor"], WIDTHS);
}

/** One table row; `floor` adds the calls/s ratio to it. */
export function printFigures(label: string, shape: LoadShape, f: LoadFigures, floor?: LoadFigures): void {
  row(
    [
      label,
      shapeLabel(shape),
      Math.round(f.perSecond),
      fmt(f.p50Ms, 2),
      fmt(f.p99Ms, 2),
      fmt(f.p999Ms, 2),
      fmt(f.maxMs, 1),
      f.errors,
      fmt(f.cpuUsPerCall, 0),
      floor ? `${fmt(f.perSecond / floor.perSecond, 2)}x` : "",
    ],
    WIDTHS,
  );
}

/** A target on the server's gRPC address, with the length of the reply it gave to a probe. */
async function target(address: string, pid: number, path: string, request: Uint8Array): Promise<CallTarget & { reply: Buffer }> {
  const reply = await unaryCall(address, path, request);
  return { address, path, request, replyBytes: reply.length, pid, reply };
}

/** The floor server, answering each path with the real replies captured from the server under test. */
async function startFloor(replies: FloorReplies): Promise<{ child: Child; address: string }> {
  const dir = mkdtempSync(join(tmpdir(), "streamserve-floor-"));
  try {
    const file = join(dir, "replies.json");
    writeFileSync(file, JSON.stringify(replies));
    const child = startChild("floor server", process.execPath, [...nodeFlags(), ...programArgs("bench/floor-server.ts"), file]);
    const [, port] = await child.waitForOutput(/listening (\d+)/, 60_000);
    return { child, address: `127.0.0.1:${port}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether `streamserve serve --help` lists --workers. */
function serveHasWorkers(): boolean {
  const r = spawnSync(process.execPath, [...programArgs("cli/main.ts"), "serve", "--help"], { cwd: new URL("../", import.meta.url), encoding: "utf8" });
  return /--workers\b/.test(r.stdout);
}

/** In-process costs of the request path's parts, for reading the figures (not a floor). */
async function componentCosts(ns: BenchNamespace, artifact: Uint8Array): Promise<string> {
  const { rt } = ns;
  const redis = rt.redis();
  const read = () => {
    const p = redis.pipeline();
    p.hgetall(rt.names.userFeaturesKey(BENCH_USER));
    for (const item of BENCH_ITEMS) p.hgetall(rt.names.itemFeaturesKey(item));
    return p.exec();
  };
  const width = defaultModelFeatures().length;
  const session = await ort.InferenceSession.create(artifact, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: "sequential",
    graphOptimizationLevel: "all",
  });
  const runOf = (rows: number) => {
    const t = new ort.Tensor(
      "float32",
      Float32Array.from({ length: rows * width }, (_, i) => i % 7),
      [rows, width],
    );
    return () => session.run({ features: t });
  };
  const figures = `Redis pipeline of the 21 hashes ${fmt(await medianMs(read, 1000))} ms, onnxruntime 20 rows ${fmt(await medianMs(runOf(20), 1000))} ms, 1 row ${fmt(await medianMs(runOf(1), 1000))} ms`;
  await session.release();
  return figures;
}

export async function benchServing(): Promise<void> {
  header("serving: `streamserve serve` in its own process, loaded from outside, vs a bare grpc-js server (the floor)");
  const load = pickLoadGenerator();
  console.log(`load: ${load.description}; ${WARMUP_MS} ms warm-up + ${DURATION_MS} ms measured per row (BENCH_DURATION_MS, BENCH_WARMUP_MS)`);
  console.log(machineLine());
  console.log(programsLine());
  const artifact = syntheticModel(defaultModelFeatures().length);
  const workers = serveHasWorkers();
  const ns = await prepareNamespace(artifact);
  let server: RunningStreamserve | undefined;
  let floor: { child: Child; address: string } | undefined;
  try {
    // Like for like with the one-event-loop floor; --workers 2 is measured on its own below.
    server = await startStreamserve(ns, "serve", workers ? ["--workers", "1"] : []);
    console.log(
      `server: streamserve serve${workers ? " --workers 1" : ""} (pid ${server.child.pid}), model ${ns.modelVersion} (100 trees, depth 5), namespace ${ns.rt.config.namespace}`,
    );
    console.log(`in-process, median: ${await componentCosts(ns, artifact)}`);

    const rec = await target(server.address, server.child.pid, RECOMMEND_PATH, recommendRequest());
    const infer = [
      await target(server.address, server.child.pid, MODEL_INFER_PATH, modelInferRequest(1)),
      await target(server.address, server.child.pid, MODEL_INFER_PATH, modelInferRequest(64)),
    ];
    floor = await startFloor({
      [RECOMMEND_PATH]: [{ requestBytes: rec.request.length, reply: rec.reply.toString("base64") }],
      [MODEL_INFER_PATH]: infer.map((t) => ({ requestBytes: t.request.length, reply: t.reply.toString("base64") })),
    });
    const onFloor = (t: CallTarget): CallTarget => ({ ...t, address: floor!.address, pid: floor!.child.pid });
    console.log(
      `floor: bare grpc-js server (pid ${floor.child.pid}) answering the same paths with the same reply bytes (Recommend ${rec.replyBytes} B, ModelInfer ${infer.map((t) => t.replyBytes).join(" / ")} B)`,
    );

    printHeaderRow();
    const recBy = new Map<string, LoadFigures>();
    const floorBy = new Map<string, LoadFigures>();
    for (const shape of SHAPES) {
      const f = await measure(load, onFloor(rec), shape, DURATION_MS, WARMUP_MS);
      printFigures("floor (bare grpc-js)", shape, f);
      const r = await measure(load, rec, shape, DURATION_MS, WARMUP_MS);
      printFigures("Recommend 20 candidates", shape, r, f);
      floorBy.set(shapeLabel(shape), f);
      recBy.set(shapeLabel(shape), r);
    }
    for (const [i, rows] of [1, 64].entries()) {
      for (const shape of INFER_SHAPES) {
        const f = await measure(load, onFloor(infer[i]!), shape, DURATION_MS, WARMUP_MS);
        printFigures(`floor, ModelInfer reply`, shape, f);
        printFigures(`ModelInfer ${rows} row${rows > 1 ? "s" : ""}`, shape, await measure(load, infer[i]!, shape, DURATION_MS, WARMUP_MS), f);
      }
    }

    const r16 = recBy.get("c=16")!;
    const f16 = floorBy.get("c=16")!;
    const r1 = recBy.get("c=1")!;
    const f1 = floorBy.get("c=1")!;
    console.log(
      `Recommend calls/s at 16 connections / floor's: ${Math.round(r16.perSecond)} / ${Math.round(f16.perSecond)} = ${fmt(r16.perSecond / f16.perSecond, 2)} (target ≥ 0.5)`,
    );
    console.log(
      `server CPU per call at 16 connections / floor's: ${fmt(r16.cpuUsPerCall, 0)} / ${fmt(f16.cpuUsPerCall, 0)} µs = ${fmt(r16.cpuUsPerCall / f16.cpuUsPerCall, 2)} (target ≤ 2.5)`,
    );
    console.log(`Recommend p50 at c=1 minus floor's: ${fmt(r1.p50Ms)} − ${fmt(f1.p50Ms)} = ${fmt(r1.p50Ms - f1.p50Ms)} ms (target ≤ 0.5 ms)`);

    if (!workers) {
      console.log("workers: `streamserve serve --help` lists no --workers flag; the --workers 1 vs 2 comparison is skipped");
    } else {
      const c64 = SHAPES[2]!;
      const one = await measure(load, rec, c64, DURATION_MS, WARMUP_MS);
      printFigures("Recommend, --workers 1", c64, one);
      await server.stop();
      server = await startStreamserve(ns, "serve", ["--workers", "2"]);
      const two = await measure(load, { ...rec, address: server.address, pid: server.child.pid }, c64, DURATION_MS, WARMUP_MS);
      printFigures("Recommend, --workers 2", c64, two);
      console.log(`--workers 2 / --workers 1 calls/s at 64 connections: ${fmt(two.perSecond / one.perSecond, 2)} (target ≥ 1.3)`);
    }
    console.log(machineLine());
  } finally {
    await floor?.child.stop();
    await server?.stop();
    await ns.cleanup();
  }
}
