// `streamserve up` as a user runs it: one command, three processes. The serving process answers gRPC
// and the HTTP port; its children, at lower CPU priorities, are the features worker (nice 5) and the
// analytics process (embedded ClickHouse, sink, trainer, monitor, dashboard queries; nice 10, SCHED_IDLE). Killing the
// analytics process leaves gRPC serving, and it comes back; Ctrl-C (SIGINT) stops them all.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { freePort, procStat as stat, testRuntime, threadNices, threadPolicies, waitFor, type TestRuntime } from "../helpers.js";
import { createServiceClient } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";

let rt: TestRuntime;
let up: ChildProcess;
let out = "";
let exited: Promise<number | null>;

/** Live processes whose parent is `pid`. */
function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      const f = stat(`/proc/${d}/stat`);
      return f && f[0] !== "Z" && Number(f[1]) === pid;
    })
    .map(Number);
}

const alive = (pid: number) => {
  const f = stat(`/proc/${pid}/stat`);
  return f !== undefined && f[0] !== "Z";
};

const cmdline = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "";
  }
};
/** The platform's child processes (under tsx, the parent has an esbuild child too). */
const platformChildren = () => childrenOf(up.pid!).filter((pid) => /cli\/\w+-process\./.test(cmdline(pid)));
/** The child running cli/<name>-process. */
const childNamed = (name: string) => platformChildren().find((pid) => cmdline(pid).includes(`cli/${name}-process.`));

/** The TCP ports a process listens on (its socket inodes in /proc/net/tcp and tcp6, state 0A). */
const listeningPorts = (pid: number): number[] => {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {}
  }
  return ["tcp", "tcp6"].flatMap((f) =>
    readFileSync(`/proc/${pid}/net/${f}`, "utf8")
      .split("\n")
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .filter((c) => c[3] === "0A" && inodes.has(c[9]!))
      .map((c) => Number.parseInt(c[1]!.split(":")[1]!, 16)),
  );
};

before(async () => {
  rt = testRuntime();
  const httpPort = await freePort();
  up = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "cli/main.ts",
      "up",
      "--grpc-port",
      "0",
      "--http-port",
      String(httpPort),
      "--no-local-services",
      "--namespace",
      rt.config.namespace,
      "--data-dir",
      rt.config.dataDir,
    ],
    { env: { ...process.env, LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn" }, stdio: ["ignore", "pipe", "inherit"] },
  );
  up.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  exited = new Promise((resolve) => up.once("exit", (code) => resolve(code)));
  await waitFor(() => /streamserve is up/.test(out), 120_000, "the banner");
});

after(async () => {
  if (up.exitCode === null) up.kill("SIGKILL");
  await rt?.cleanup();
});

const ports = () => ({
  grpc: Number(/gRPC\s+127\.0\.0\.1:(\d+)/.exec(out)![1]),
  http: Number(/dashboard\s+http:\/\/127\.0\.0\.1:(\d+)/.exec(out)![1]),
});

it("serves gRPC in one process, features and analytics in lower-priority children; the dashboard answers on the main port", async () => {
  assert.equal(platformChildren().length, 2, "two child processes");
  const analytics = childNamed("analytics");
  assert.ok(analytics && childNamed("features"), "an analytics and a features process");
  const nices = threadNices(analytics);
  assert.ok(
    nices.every((n) => n >= 10),
    `every thread of the analytics process at nice >= 10: ${nices.join(" ")}`,
  );
  assert.ok(
    threadNices(up.pid!).every((n) => n === 0),
    "the serving process keeps its priority",
  );
  assert.ok(
    threadNices(childNamed("features")!).every((n) => n === 5),
    "the features process runs just below serving",
  );
  assert.deepEqual(new Set(threadPolicies(up.pid!)), new Set([0]), "serving keeps the normal scheduling class");
  assert.deepEqual(new Set(threadPolicies(childNamed("features")!)), new Set([3]), "features run as batch: they never preempt a waking request");
  assert.deepEqual(new Set(threadPolicies(analytics)), new Set([5]), "analytics run as idle: only on CPU time the others leave");

  const { http } = ports();
  const res = await fetch(`http://127.0.0.1:${http}/api/models`);
  assert.equal(res.status, 200);
  assert.ok(Array.isArray(await res.json()), "the model timeline is a JSON array");
  const page = await fetch(`http://127.0.0.1:${http}/`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<html/i);
  // /metrics shows every process: the server's, the features worker's and the sink's, and the children's state.
  const metrics = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
  assert.match(metrics, /^# TYPE grpc_server_handled_total counter/m);
  assert.match(metrics, /^# TYPE streamserve_features_messages_total counter/m);
  assert.match(metrics, /^# TYPE streamserve_sink_rows_written_total counter/m);
  assert.match(metrics, /^streamserve_process_up\{process="analytics"\} 1$/m);
  assert.match(metrics, /^streamserve_process_up\{process="features"\} 1$/m);
  assert.equal(metrics.match(/^# TYPE grpc_server_handled_total /gm)?.length, 1, "each family once");
  // The analytics process's own port serves only up: nothing there answers without its secret.
  const privatePorts = listeningPorts(analytics);
  assert.ok(privatePorts.length > 0, "the analytics process listens on a private port");
  for (const port of privatePorts) {
    const direct = await fetch(`http://127.0.0.1:${port}/api/models`);
    assert.equal(direct.status, 401, `port ${port} refuses a request without up's secret`);
    assert.match(await direct.text(), /use up's own HTTP port/);
  }
});

it("keeps serving gRPC while the analytics process is killed, and restarts it", async () => {
  const { grpc, http } = ports();
  const client = createServiceClient(RecommendationService, `127.0.0.1:${grpc}`);
  const first = childNamed("analytics");
  let ok = 0;
  const failures: string[] = [];
  let calling = true;
  const loop = (async () => {
    while (calling) {
      try {
        const r = await client.recommend({ userId: `u${ok % 50}`, candidates: ["p1", "p2", "p3"] }, { deadlineMs: 2000 });
        assert.equal(r.recommendations.length, 3);
        ok++;
      } catch (err) {
        failures.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    await waitFor(() => ok >= 20, 30_000, "calls before the kill");
    process.kill(first!, "SIGKILL");
    await waitFor(() => !alive(first!), 10_000, "the child to die");
    const atKill = ok;
    // While it is down the dashboard says why instead of hanging.
    const down = await fetch(`http://127.0.0.1:${http}/api/models`);
    if (down.status !== 200) {
      assert.equal(down.status, 503);
      assert.match(((await down.json()) as { error: string }).error, /analytics process is (restarting|starting)/);
    }
    const second = await waitFor(() => (childNamed("analytics") !== first ? childNamed("analytics") : undefined), 30_000, "a new analytics process");
    await waitFor(async () => (await fetch(`http://127.0.0.1:${http}/api/models`)).status === 200, 120_000, "the dashboard answering again");
    assert.ok(ok > atKill, `calls succeeded during the outage (${ok - atKill})`);
    assert.notEqual(second, first);
    const metrics = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
    assert.match(metrics, /^streamserve_process_restarts_total\{process="analytics"\} 1$/m);
    assert.match(metrics, /^streamserve_process_up\{process="analytics"\} 1$/m);
  } finally {
    calling = false;
    await loop;
    client.close();
  }
  assert.deepEqual(failures, [], "no gRPC call failed");
});

it("stops everything on SIGINT, leaving no child process", async () => {
  const kids = platformChildren();
  assert.equal(kids.length, 2);
  up.kill("SIGINT");
  assert.equal(await exited, 0);
  await waitFor(() => kids.every((p) => !alive(p)), 10_000, "the analytics process to exit");
});
