// `npm run bench -- serving-up`: Recommend at concurrency 1, loaded from outside, against
// `streamserve up` (the whole platform, a black box started by its CLI in its own namespace and
// data directory) without and then with `streamserve simulate --rate 1000` running against it, next
// to `streamserve serve` alone measured the same way in the same run: does analytics stall serving?
import { defaultModelFeatures } from "../features/definitions.js";
import { measure, pickLoadGenerator, type LoadFigures, type LoadShape } from "./load.js";
import { fmt, header } from "./measure.js";
import { readdirSync, readFileSync } from "node:fs";
import { cpuSeconds, descendants, startChild, type Child } from "./processes.js";
import { programArgs, programsLine } from "./built-cli.js";
import { DURATION_MS, machineLine, printFigures, printHeaderRow, WARMUP_MS } from "./serving.js";
import {
  prepareNamespace,
  RECOMMEND_PATH,
  recommendRequest,
  startStreamserve,
  syntheticModel,
  unaryCall,
  type RunningStreamserve,
} from "./streamserve-process.js";

/** Tail percentiles need samples: each row here runs twice as long as a `serving` row. */
const UP_DURATION_MS = 2 * DURATION_MS;
const SIM_RATE = 1000;
const C1: LoadShape = { connections: 1, streams: 1 };

async function recommendC1(server: RunningStreamserve, load: ReturnType<typeof pickLoadGenerator>): Promise<LoadFigures> {
  const request = recommendRequest();
  const reply = await unaryCall(server.address, RECOMMEND_PATH, request);
  return measure(
    load,
    { address: server.address, path: RECOMMEND_PATH, request, replyBytes: reply.length, pid: server.child.pid },
    C1,
    UP_DURATION_MS,
    WARMUP_MS,
  );
}

/**
 * The processes whose CPU a row shows: up's own (serving) and each of its children by role, the
 * simulator, and the shared redis-server / nats-server (other work on the machine counts there too).
 * The CPU µs/call column counts the server's whole tree: for up, serving + features + analytics (not the simulator).
 */
function rowProcesses(up: RunningStreamserve, sim: Child | undefined): Record<string, number[]> {
  const cmd = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8");
    } catch {
      return "";
    }
  };
  const kids = descendants(up.child.pid);
  const named = (needle: string) => kids.filter((p) => cmd(p).includes(needle));
  const all = readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .map(Number);
  return {
    serving: [up.child.pid],
    features: named("features-process"),
    analytics: named("analytics-process"),
    ...(sim && { simulator: [sim.pid, ...descendants(sim.pid)] }),
    "redis-server": all.filter((p) => cmd(p).startsWith("redis-server")),
    "nats-server": all.filter((p) => /(^|\/)nats-server\0/.test(cmd(p))),
  };
}

/** Runs `row`; also returns a line with each process's CPU over it, in % of one core. */
async function withCpuShares<T>(procs: Record<string, number[]>, row: () => Promise<T>): Promise<[T, string]> {
  const sum = (pids: number[]) => pids.reduce((s, p) => s + cpuSeconds(p), 0);
  const before = Object.fromEntries(Object.entries(procs).map(([k, pids]) => [k, sum(pids)]));
  const started = performance.now();
  const result = await row();
  const seconds = (performance.now() - started) / 1000;
  const shares = Object.entries(procs)
    .filter(([, pids]) => pids.length > 0)
    .map(([k, pids]) => `${k} ${fmt(((sum(pids) - before[k]!) / seconds) * 100, 0)}%`);
  return [result, `    CPU over the row with its warm-up, % of one core: ${shares.join(", ")}`];
}

/** Mean events/s of the simulator's progress lines printed after `from` (an offset in its output). */
function simulatedRate(sim: Child, from: number): number {
  const rates = [
    ...sim
      .output()
      .slice(from)
      .matchAll(/events\s+(\d+)\/s/g),
  ].map((m) => Number(m[1]));
  return rates.length ? rates.reduce((a, b) => a + b, 0) / rates.length : NaN;
}

export async function benchServingUp(): Promise<void> {
  header(`serving-up: Recommend at c=1 against \`streamserve up\` with the simulator at ${SIM_RATE} events/s, vs \`streamserve serve\` alone`);
  const load = pickLoadGenerator();
  console.log(`load: ${load.description}; ${WARMUP_MS} ms warm-up + ${UP_DURATION_MS} ms measured per row (2 x BENCH_DURATION_MS)`);
  console.log(machineLine());
  console.log(programsLine());
  const artifact = syntheticModel(defaultModelFeatures().length);

  const serveNs = await prepareNamespace(artifact);
  let alone: LoadFigures;
  try {
    const server = await startStreamserve(serveNs, "serve");
    try {
      printHeaderRow();
      let cpu: string;
      [alone, cpu] = await withCpuShares(rowProcesses(server, undefined), () => recommendC1(server, load));
      printFigures("serve alone", C1, alone);
      console.log(cpu);
    } finally {
      await server.stop();
    }
  } finally {
    await serveNs.cleanup();
  }

  const upNs = await prepareNamespace(artifact);
  let up: RunningStreamserve | undefined;
  let sim: Child | undefined;
  try {
    up = await startStreamserve(upNs, "up", ["--no-local-services"]);
    // Serving answers before its children are up; measured once the banner says they are (their start-up is not serving's cost).
    await up.child.waitForOutput(/streamserve is up/, 180_000);
    const [quiet, quietCpu] = await withCpuShares(rowProcesses(up, undefined), () => recommendC1(up!, load));
    printFigures("up, no simulator", C1, quiet);
    console.log(quietCpu);
    // BENCH_SIM_NICE=N runs the simulator (every thread) at nice N: traffic that in production comes from other machines.
    const simNice = process.env.BENCH_SIM_NICE;
    sim = startChild("streamserve simulate", simNice ? "nice" : process.execPath, [
      ...(simNice ? ["-n", simNice, process.execPath] : []),
      ...programArgs("cli/main.ts"),
      ...["simulate", "--rate", String(SIM_RATE), "--duration", `${Math.ceil((WARMUP_MS + UP_DURATION_MS) / 1000) + 120}s`],
      ...[
        "--grpc-address",
        up.address,
        "--progress",
        "1s",
        "--namespace",
        upNs.rt.config.namespace,
        "--data-dir",
        upNs.rt.config.dataDir,
        "--log-level",
        "warn",
      ],
      // To take the simulator's own Recommend calls out (e.g. "--recommend-share 0"): which part of it costs the tail.
      ...(process.env.BENCH_SIM_ARGS ?? "").split(" ").filter(Boolean),
    ]);
    // Measured once the simulator is publishing and the features worker has had a moment with it.
    await sim.waitForOutput(/events\s+\d+\/s/, 60_000);
    const from = sim.output().length;
    const [busy, busyCpu] = await withCpuShares(rowProcesses(up, sim), () => recommendC1(up!, load));
    printFigures(`up + simulate ${SIM_RATE}/s`, C1, busy);
    console.log(busyCpu);
    console.log(
      `simulator: ${fmt(simulatedRate(sim, from), 0)} events/s while measured (asked ${SIM_RATE}); it also calls Recommend on up${simNice ? `; at nice ${simNice} (BENCH_SIM_NICE)` : ""}`,
    );
    console.log(`up + simulator p99 / serve alone's: ${fmt(busy.p99Ms, 2)} / ${fmt(alone.p99Ms, 2)} ms = ${fmt(busy.p99Ms / alone.p99Ms, 2)} (target ≤ 1.5)`);
    console.log(
      `up + simulator p99.9 / serve alone's: ${fmt(busy.p999Ms, 2)} / ${fmt(alone.p999Ms, 2)} ms = ${fmt(busy.p999Ms / alone.p999Ms, 2)} (target ≤ 2)`,
    );
    console.log(
      `max: up + simulator ${fmt(busy.maxMs, 1)} ms, serve alone ${fmt(alone.maxMs, 1)} ms (from ${busy.samples} and ${alone.samples} calls; a call still running when a row ends is not counted)`,
    );
    console.log(machineLine());
  } finally {
    await sim?.stop();
    await up?.stop(30_000);
    await upNs.cleanup();
  }
}
