// `streamserve serve --workers 2`, driven from outside like an operator would: both workers serve
// Recommend on the one port, /metrics sums their counters and /healthz answers for both, promotions
// under continuous load fail no call, a killed worker is restarted, and SIGTERM drains them all.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { freePort, testRuntime, waitFor, type TestRuntime, cliArgs } from "../helpers.js";
import { createServiceClient, grpc, type Client } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { garbageModel, logisticModel } from "../fixtures/onnx-models.js";
import type { FeatureSpec, Registry } from "../../lib/registry.js";
import { Health, ServingStatus } from "../../server/health.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
];

interface HealthBody {
  status: string;
  version: string;
  workers: { worker: number; pid: number | null; ready: boolean; version: string | null }[];
}

let rt: TestRuntime;
let registry: Registry;
let child: ChildProcess;
let exited: Promise<number | null>;
let stderr = "";
let grpcPort: number;
let httpPort: number;
const clients: Client<typeof RecommendationService.method>[] = [];

/** A client on its own connection (grpc-js would otherwise share one between clients). */
const connect = () => {
  const c = createServiceClient(RecommendationService, `127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  clients.push(c);
  return c;
};
const health = async (): Promise<HealthBody> => (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json() as Promise<HealthBody>;
const metrics = async () => (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
const handledOk = (text: string) =>
  Number(/^grpc_server_handled_total\{method="\/streamserve\.v1\.RecommendationService\/Recommend",code="OK"\} (\d+)/m.exec(text)?.[1] ?? 0);
const allServe = async (version: string) => {
  const h = await health();
  return h.workers.length === 2 && h.workers.every((w) => w.ready && w.version === version);
};

before(async () => {
  rt = testRuntime();
  registry = await rt.registry();
  const first = await registry.publish({
    name: "recommender",
    artifact: logisticModel([0.1, 0.1], 0),
    features: FEATURES,
    inputName: "features",
    outputName: "score",
  });
  await registry.setAlias("recommender", "production", first.version);
  [grpcPort, httpPort] = [await freePort(), await freePort()];
  child = spawn(process.execPath, cliArgs(rt, "serve", "--workers", "2", "--grpc-port", String(grpcPort), "--http-port", String(httpPort)), {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, LOG_LEVEL: "info" },
  });
  child.stderr!.on("data", (d) => (stderr += d));
  exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  await waitFor(() => allServe(first.version), 60_000, "both workers serving the first version");
});

after(async () => {
  for (const c of clients) c.close();
  child?.kill("SIGKILL");
  await rt?.cleanup();
});

it("serves Recommend from both workers and /metrics sums their counters", async () => {
  const h = await health();
  assert.equal(h.status, "SERVING");
  assert.notEqual(h.workers[0]!.pid, h.workers[1]!.pid);
  // gRPC health on the shared port answers the same on every connection (each lands on a ready worker).
  for (let i = 0; i < 4; i++) {
    const hc = createServiceClient(Health, `127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
    try {
      assert.equal((await hc.check({ service: "" })).status, ServingStatus.SERVING);
      assert.equal((await hc.check({ service: "streamserve.v1.RecommendationService" })).status, ServingStatus.SERVING);
    } finally {
      hc.close();
    }
  }
  // Two log publishers never share a spill directory: worker 2 has its own.
  assert.ok(existsSync(join(rt.config.dataDir, "spill", rt.config.namespace, "worker-2")), "worker 2's spill directory");
  const before = handledOk(await metrics());
  // Connections are dealt round-robin: four of them land two on each worker.
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      const c = connect();
      for (let i = 0; i < 25; i++) await c.recommend({ userId: `u${i}`, candidates: ["a", "b", "c"] });
    }),
  );
  const text = await metrics();
  assert.equal(handledOk(text) - before, 100, "the aggregate counts every call, whichever worker took it");
  assert.match(text, /^process_cpu_seconds_total \d/m, "process metrics, summed over the workers");
  assert.match(text, /^streamserve_serve_workers\{state="ready"\} 2$/m);

  // Each worker holds part of the count: kill worker 1 and its share leaves the sum.
  const victim = h.workers[0]!.pid!;
  process.kill(victim, "SIGKILL");
  await waitFor(
    async () => {
      const w = (await health()).workers[0]!;
      return w.ready && w.pid !== victim;
    },
    60_000,
    "worker 1 restarted",
  );
  const afterKill = handledOk(await metrics());
  assert.ok(afterKill > 0 && afterKill < before + 100, `worker 2 kept its share only (${afterKill} of ${before + 100})`);
  assert.match(await metrics(), /^streamserve_serve_worker_restarts_total 1$/m);
  assert.match(stderr, /serving worker died; restarting it/);
});

it("promotions under continuous load at 2 workers fail no call", async () => {
  let stop = false;
  let ok = 0;
  const failures: string[] = [];
  const served = new Set<string>();
  const loaders = Array.from({ length: 8 }, async (_, w) => {
    const c = connect();
    let i = 0;
    while (!stop) {
      try {
        const res = await c.recommend({ userId: `u${w}-${i++ % 50}`, candidates: ["a", "b", "c", "d", "e"] });
        served.add(res.modelVersion);
        ok++;
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  });

  const promoted = [(await health()).version];
  const broken: string[] = [];
  for (let n = 1; n <= 6; n++) {
    const artifact = n === 3 ? garbageModel() : logisticModel([0.1 * n, -0.05 * n], n / 10);
    const mv = await registry.publish({ name: "recommender", artifact, features: FEATURES, inputName: "features", outputName: "score" });
    await registry.setAlias("recommender", "production", mv.version);
    if (n === 3) {
      broken.push(mv.version);
      const counted = new RegExp(`streamserve_model_load_failures_total\\{model="recommender",version="${mv.version}"\\} 2`);
      await waitFor(async () => counted.test(await metrics()), 30_000, `both workers to refuse version ${mv.version}`);
    } else {
      await waitFor(() => allServe(mv.version), 30_000, `both workers to serve ${mv.version}`);
      promoted.push(mv.version);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  stop = true;
  await Promise.all(loaders);

  assert.deepEqual(failures, [], "no call failed");
  assert.ok(ok > 200, `load kept running (${ok} calls)`);
  for (const v of broken) assert.ok(!served.has(v), `broken version ${v} never served`);
  assert.ok(
    [...served].every((v) => promoted.includes(v)),
    `served ${[...served]} ⊆ promoted ${promoted}`,
  );
  assert.ok(served.size >= 4, `several versions answered (${[...served]})`);
});

it("SIGTERM drains every worker and the supervisor exits 0", async () => {
  const c = connect();
  await c.recommend({ userId: "warm", candidates: ["a"] });
  const calls = Array.from({ length: 200 }, (_, i) =>
    c.recommend({ userId: `d${i}`, candidates: ["a", "b"] }).then(
      () => "ok",
      (e: { code: number }) => e.code,
    ),
  );
  await new Promise((r) => setTimeout(r, 5));
  child.kill("SIGTERM");
  const results = await Promise.all(calls);
  assert.equal(await exited, 0, `exit code 0 (stderr: ${stderr.slice(-2000)})`);
  assert.ok(results.includes("ok"), "calls in flight were answered");
  // Calls that arrive after the drain began are refused cleanly (UNAVAILABLE), never cut off.
  for (const r of results) assert.ok(r === "ok" || r === 14, `call ended with ${r}`);
  assert.match(stderr, /draining every serving worker/);
  assert.equal((stderr.match(/"msg":"server stopped"/g) ?? []).length, 2, "both workers drained");
  assert.match(stderr, /serving workers stopped/);
});

it("a gRPC port already taken: no worker can start, so serve exits 1 and says why", async () => {
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", () => r()));
  try {
    const port = (blocker.address() as { port: number }).port;
    const p = spawn(process.execPath, cliArgs(rt, "serve", "--workers", "2", "--grpc-port", String(port), "--http-port", String(await freePort())), {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    p.stderr!.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => p.once("exit", resolve));
    assert.equal(code, 1);
    assert.match(err, /EADDRINUSE/);
    assert.match(err, /before any worker was ready/);
  } finally {
    blocker.close();
  }
});
