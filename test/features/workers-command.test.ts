// `streamserve features` answers /healthz and /metrics on --http-port; with --workers N, N
// supervised processes sit behind that port, whose /healthz shows each child and whose /metrics
// sums their series (each event applied once across them).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { makeEvents, publishEvents, testRuntime, uniqueNamespace, waitFor } from "./helpers.js";
import { freePort } from "../helpers.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const EVENTS = 400;

let env: Awaited<ReturnType<typeof testRuntime>>;
let child: ChildProcess | undefined;

before(async () => {
  env = await testRuntime(uniqueNamespace("feat_workers_cmd"));
});
after(async () => {
  if (child && child.exitCode === null) child.kill("SIGKILL");
  await env?.cleanup();
});

/** The value of a sample line (name and labels as written), summed when it appears more than once. */
function sample(text: string, series: string): number {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${series} `))
    .reduce((sum, l) => sum + Number(l.slice(series.length + 1)), 0);
}

test("two workers behind one port: /healthz lists both, /metrics adds their counts up", async () => {
  const port = await freePort();
  child = spawn(
    process.execPath,
    ["--import", "tsx", "cli/main.ts", "features", "--namespace", env.runtime.config.namespace, "--http-port", String(port)].concat([
      "--partitions",
      "4",
      "--workers",
      "2",
      "--lease-ttl",
      "3s",
      "--progress",
      "0",
    ]),
    { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, LOG_LEVEL: "warn" } },
  );
  const exited = new Promise((r) => child!.once("exit", r));
  const base = `http://127.0.0.1:${port}`;
  const health = await waitFor(
    "both workers ready",
    async () => {
      const res = await fetch(`${base}/healthz`).catch(() => undefined);
      const body = res?.ok ? ((await res.json()) as { workers: { state: string; pid: number }[] }) : undefined;
      return body && body.workers.length === 2 && body.workers.every((w) => w.state === "ready") ? body : undefined;
    },
    120_000,
    200,
  );
  assert.equal(new Set(health.workers.map((w) => w.pid)).size, 2, "two processes");

  const t0 = Date.now() - 60_000;
  await publishEvents(env.js, env.runtime.names, makeEvents({ count: EVENTS, users: 40, pages: 10, startMs: t0, spanMs: 30_000, seed: 5 }));
  // Each event feeds the user view once and the item view once, whichever worker held its partitions.
  const metrics = await waitFor(
    "every event applied to both views",
    async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      return sample(text, 'streamserve_features_events_applied_total{entity="user"}') === EVENTS &&
        sample(text, 'streamserve_features_events_applied_total{entity="item"}') === EVENTS
        ? text
        : undefined;
    },
    60_000,
    200,
  );
  assert.equal(metrics.match(/^# TYPE streamserve_features_events_applied_total counter$/gm)?.length, 1, "one family, the workers' series combined");
  assert.match(metrics, /^# TYPE process_cpu_seconds_total counter$/m);
  child.kill("SIGTERM");
  await exited;
});

test("one worker answers /healthz and /metrics on its --http-port", async () => {
  const port = await freePort();
  const one = spawn(
    process.execPath,
    ["--import", "tsx", "cli/main.ts", "features", "--namespace", env.runtime.config.namespace, "--http-port", String(port), "--progress", "0"],
    { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, LOG_LEVEL: "warn" } },
  );
  const exited = new Promise((r) => one.once("exit", r));
  try {
    const health = await waitFor("/healthz", async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.json(), 60_000, 200);
    assert.equal((health as { status: string }).status, "ok");
    assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^# TYPE streamserve_features_messages_total counter$/m);
  } finally {
    one.kill("SIGTERM");
    await exited;
  }
});
