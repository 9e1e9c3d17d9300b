// Soak: one `streamserve serve` process under normal traffic and, for a while, every hostile
// pattern from the probe at once: clients that stop reading, oversized length prefixes, requests
// that never finish, refused batches, 50k-entry parameter maps, unknown model names, Watch floods
// and silent TCP connections, in two rounds. Normal calls must keep their latency budget and all be
// answered; once the hostile clients leave, every call and connection they held is gone and the
// memory they used comes back, so a second round ends no higher than the first. Bounded to about
// two minutes.
//
// RSS does not fall all the way back to its level before the first round: with --expose-gc, the
// heap and ArrayBuffers do return to it (about 20 MB and 0 MB), and the rest is memory the
// allocator keeps for reuse, which is why the bound is "no growth round over round".
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { createServiceClient } from "../../lib/grpc.js";
import { GRPCInferenceService, ModelInferRequestSchema } from "../../gen/inference/grpc_predict_v2_pb.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { HealthCheckRequestSchema } from "../../gen/grpc/health/v1/health_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import { grpcFrame, GRPC_REQUEST_HEADERS } from "./raw-grpc.js";

const ROUND_MS = 30_000;
/** Normal calls while under attack; the probe saw p50 607 ms and p99 1.7 s from one refused-batch client. */
const P50_BUDGET_MS = 100;
const P99_BUDGET_MS = 1000;
/** RSS a second round may add over the first (none is expected; this is noise). */
const ROUND_GROWTH_MB = 100;
/** RSS above the level before any attack that may stay (the allocator's reuse pool, see above). */
const RSS_SLACK_MB = 500;

let rt: TestRuntime;
let child: ChildProcess;
let grpcPort = 0;
let httpPort = 0;

const rssMb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
const metric = async (name: string) =>
  Number(new RegExp(`^${name} (\\d+)`, "m").exec(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text())?.[1] ?? NaN);

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const features = [
    { name: "clicks_last_5min", source: "user" as const, type: "numeric" as const, default: 0 },
    { name: "item_clicks_5min", source: "item" as const, type: "numeric" as const, default: 0 },
  ];
  const mv = await registry.publish({ name: "recommender", artifact: logisticModel([0.5, 0.25], 0), features, inputName: "features", outputName: "score" });
  await registry.setAlias("recommender", "production", mv.version);
  const wide = [0, 1, 2, 3].map((i) => ({ name: `f${i}`, source: "user" as const, type: "numeric" as const, default: 0 }));
  const w = await registry.publish({ name: "wide", artifact: logisticModel([1, 1, 1, 1], 0), features: wide, inputName: "features", outputName: "score" });
  await registry.setAlias("wide", "production", w.version);

  child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "cli/main.ts",
      "serve",
      "--grpc-port",
      "0",
      "--http-port",
      "0",
      "--host",
      "127.0.0.1",
      "--namespace",
      rt.config.namespace,
      "--data-dir",
      rt.config.dataDir,
    ],
    {
      env: { ...process.env, LOG_LEVEL: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let log = "";
  child.stderr!.on("data", (d: Buffer) => {
    log += d.toString();
    for (const line of log.split("\n")) {
      if (line.includes('"gRPC listening"')) grpcPort = JSON.parse(line).port;
      if (line.includes('"HTTP listening')) httpPort = JSON.parse(line).port;
    }
    log = log.slice(log.lastIndexOf("\n") + 1);
  });
  await waitFor(() => grpcPort && httpPort, 30_000, "server listening");
  await waitFor(
    async () => ((await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json()) as { version: string }).version === mv.version,
    30_000,
    "model served",
  );
});
after(async () => {
  child?.kill("SIGTERM");
  await new Promise((r) => (child?.exitCode !== null ? r(null) : child.once("exit", r)));
  await rt?.cleanup();
});

const INFER = "/inference.GRPCInferenceService/ModelInfer";

/** Normal clients: Recommend and small ModelInfer calls, back to back, with their latencies. */
function normalTraffic(signal: AbortSignal) {
  const rec = createServiceClient(RecommendationService, `127.0.0.1:${grpcPort}`);
  const oip = createServiceClient(GRPCInferenceService, `127.0.0.1:${grpcPort}`);
  const latencies: number[] = [];
  const errors: string[] = [];
  const loop = async (i: number) => {
    for (let n = 0; !signal.aborted; n++) {
      const started = performance.now();
      try {
        if (i % 2) await rec.recommend({ userId: `u${n % 50}`, candidates: ["a", "b", "c"] }, { deadlineMs: 10_000 });
        else
          await oip.modelInfer(
            { modelName: "wide", inputs: [{ name: "features", datatype: "FP32", shape: [2n, 4n], contents: { fp32Contents: [1, 2, 3, 4, 5, 6, 7, 8] } }] },
            { deadlineMs: 10_000 },
          );
        latencies.push(performance.now() - started);
      } catch (err) {
        errors.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const done = Promise.all([0, 1, 2, 3].map(loop)).finally(() => (rec.close(), oip.close()));
  return { latencies, errors, done };
}

const p = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))] ?? NaN;

/** Every hostile pattern, repeated until the signal fires; returns how to make them leave. */
function hostileTraffic(signal: AbortSignal) {
  const url = `http://127.0.0.1:${grpcPort}`;
  const sessions: http2.ClientHttp2Session[] = [];
  const sockets: Socket[] = [];
  const session = () => {
    const s = http2.connect(url);
    s.on("error", () => undefined);
    sessions.push(s);
    return s;
  };
  const big = grpcFrame(
    toBinary(
      ModelInferRequestSchema,
      create(ModelInferRequestSchema, {
        modelName: "wide",
        inputs: [{ name: "features", datatype: "FP32", shape: [65536n, 4n] }],
        rawInputContents: [new Uint8Array(65536 * 16)],
      }),
    ),
  );
  const refusedBatch = grpcFrame(
    toBinary(
      ModelInferRequestSchema,
      create(ModelInferRequestSchema, {
        modelName: "wide",
        inputs: [{ name: "features", datatype: "FP32", shape: [1_000_000n, 4n] }],
        rawInputContents: [new Uint8Array(1_000_000 * 16)],
      }),
    ),
  );
  const params = grpcFrame(
    toBinary(
      ModelInferRequestSchema,
      create(ModelInferRequestSchema, {
        modelName: "wide",
        parameters: Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`p${i}`, { parameterChoice: { case: "boolParam" as const, value: true } }])),
        inputs: [{ name: "features", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } }],
      }),
    ),
  );
  const unknown = (i: number) => grpcFrame(toBinary(ModelInferRequestSchema, create(ModelInferRequestSchema, { modelName: `nope-${i}`, inputs: [] })));
  const prefix = Buffer.from([0, 0x7f, 0xff, 0xff, 0xff]);
  const stream = (s: http2.ClientHttp2Session, path = INFER) => {
    const st = s.request({ ...GRPC_REQUEST_HEADERS, ":path": path });
    st.on("error", () => undefined);
    return st;
  };

  const readers = Array.from({ length: 6 }, session);
  const partials = Array.from({ length: 4 }, session);
  const misc = session();
  const watchers = Array.from({ length: 12 }, session);
  const every = (ms: number, fn: () => void) => {
    const t = setInterval(() => !signal.aborted && fn(), ms);
    signal.addEventListener("abort", () => clearInterval(t), { once: true });
    fn();
  };
  let pausedOpen = 0;
  let partialOpen = 0;
  let n = 0;
  // Clients that stop reading: about 60 big answers left unread at any time.
  every(100, () => {
    while (pausedOpen < 60) {
      const st = stream(readers[n++ % readers.length]!);
      st.pause();
      st.end(big);
      pausedOpen++;
      st.on("close", () => pausedOpen--);
    }
  });
  // Requests that never finish arriving.
  every(200, () => {
    while (partialOpen < 300) {
      const st = stream(partials[n++ % partials.length]!);
      st.write(big.subarray(0, 64));
      partialOpen++;
      st.on("close", () => partialOpen--);
    }
  });
  // Oversized length prefixes followed by as much as the server will take.
  every(300, () => {
    const st = stream(misc);
    st.write(prefix);
    st.end(big);
  });
  // Refused batches (16 MB), 50k-entry parameter maps, unknown model names.
  every(500, () => stream(misc).end(refusedBatch));
  every(500, () => stream(misc).end(params));
  every(20, () => stream(misc).end(unknown(n++ % 5000)));
  // A Watch flood, over the cap.
  const watchBody = grpcFrame(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, {})));
  for (let i = 0; i < 1200; i++) stream(watchers[i % watchers.length]!, "/grpc.health.v1.Health/Watch").end(watchBody);
  // Silent TCP connections, kept at 300.
  every(1000, () => {
    for (let i = sockets.filter((s) => !s.destroyed).length; i < 300; i++) {
      const s = connect(grpcPort, "127.0.0.1");
      s.on("error", () => undefined);
      sockets.push(s);
    }
  });
  return () => {
    for (const s of sessions) s.destroy();
    for (const s of sockets) s.destroy();
  };
}

/** One round: normal traffic with every hostile pattern for ROUND_MS, then the hostile clients leave. */
async function round(): Promise<{ calls: number; p50: number; p99: number; errors: string[]; rssPeak: number; rssAfter: number }> {
  const stop = new AbortController();
  const normal = normalTraffic(stop.signal);
  const hostile = new AbortController();
  const leave = hostileTraffic(hostile.signal);
  let rssPeak = 0;
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, rssMb())), 500);
  await new Promise((r) => setTimeout(r, ROUND_MS));
  hostile.abort();
  leave();
  stop.abort();
  await normal.done;
  clearInterval(sampler);
  await waitFor(
    async () => (await metric("grpc_server_held_bytes")) === 0 && (await metric("grpc_server_connections")) === 0,
    20_000,
    "every hostile call and connection gone",
  );
  await new Promise((r) => setTimeout(r, 10_000)); // the server's collector and memory reducer run
  return { calls: normal.latencies.length, p50: p(normal.latencies, 0.5), p99: p(normal.latencies, 0.99), errors: normal.errors, rssPeak, rssAfter: rssMb() };
}

it("keeps normal calls within budget under hostile traffic, and memory comes back after", { timeout: 240_000 }, async () => {
  // Warm up, then the baseline.
  const warm = new AbortController();
  const warmup = normalTraffic(warm.signal);
  await new Promise((r) => setTimeout(r, 8000));
  warm.abort();
  await warmup.done;
  const rssBefore = rssMb();
  const baseline = { p50: p(warmup.latencies, 0.5), p99: p(warmup.latencies, 0.99) };

  const rounds = [await round(), await round()];
  console.log(
    `# soak: baseline p50 ${baseline.p50.toFixed(1)} ms p99 ${baseline.p99.toFixed(1)} ms, RSS ${rssBefore.toFixed(0)} MB; ` +
      rounds
        .map(
          (r, i) =>
            `round ${i + 1}: ${r.calls} normal calls p50 ${r.p50.toFixed(1)} ms p99 ${r.p99.toFixed(1)} ms, ${r.errors.length} errors, RSS peak ${r.rssPeak.toFixed(0)} MB after ${r.rssAfter.toFixed(0)} MB`,
        )
        .join("; ") +
      ` (budgets p50 ${P50_BUDGET_MS} ms, p99 ${P99_BUDGET_MS} ms, growth ${ROUND_GROWTH_MB} MB, slack ${RSS_SLACK_MB} MB)`,
  );
  for (const [i, r] of rounds.entries()) {
    assert.deepEqual(r.errors.slice(0, 5), [], `round ${i + 1}: ${r.errors.length} normal calls failed`);
    assert.ok(r.calls > 100, `round ${i + 1}: only ${r.calls} normal calls completed`);
    assert.ok(r.p50 <= P50_BUDGET_MS && r.p99 <= P99_BUDGET_MS, `round ${i + 1}: normal p50 ${r.p50.toFixed(0)} ms, p99 ${r.p99.toFixed(0)} ms under attack`);
  }
  assert.ok(
    rounds[1]!.rssAfter <= rounds[0]!.rssAfter + ROUND_GROWTH_MB,
    `RSS grew round over round: ${rounds[0]!.rssAfter.toFixed(0)} → ${rounds[1]!.rssAfter.toFixed(0)} MB`,
  );
  assert.ok(rounds[1]!.rssAfter <= rssBefore + RSS_SLACK_MB, `RSS ${rounds[1]!.rssAfter.toFixed(0)} MB after, ${rssBefore.toFixed(0)} MB before`);
  // Still serving.
  const rec = createServiceClient(RecommendationService, `127.0.0.1:${grpcPort}`);
  assert.equal((await rec.recommend({ userId: "u1", candidates: ["a"] })).recommendations.length, 1);
  rec.close();
});
