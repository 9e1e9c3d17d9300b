// Partitioned features benchmark: 1, 2 and 4 `streamserve features --partitions 16` processes on
// one stream, next to one unpartitioned worker measured the same way. Each run warms every worker
// process up on WARMUP events' worth of work of its own (N workers get N × WARMUP warm-up events,
// so each routes and applies as many as the one worker did: a process's JIT and heap settle per
// process), stops them (SIGSTOP; leases outlive the pause), publishes the measured events as a
// backlog, resumes them and measures the drain: events/s, the conflict retries the workers counted
// (their /metrics: 0 when each partition has one writer), the workers' CPU per event and events
// per worker CPU-second, judged against the one-worker run's (target: within 10 %), and Redis
// commands and CPU per event (for the capacity model in the README). Worker CPU is the worker
// processes' only (every thread, from /proc), the same set in every row; nats-server and Redis
// are reported apart (both are shared with other clients on this machine). Then 2 workers on a
// 3-master Redis Cluster of the benchmark's own, next to the 2 workers on one Redis (Redis figures
// summed over the masters). On a 2-core machine the wall-clock rate cannot grow with workers; what
// must hold is that adding workers costs no efficiency.
import { availableParallelism, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import type { ActivityEvent } from "../features/definitions.js";
import { partitionConsumerPart, partitionLabel } from "../features/partitions.js";
import { createRuntime, type Runtime } from "../lib/runtime.js";
import { deleteNamespace } from "../lib/nats.js";
import { deleteKeysWithPrefix } from "../lib/redis.js";
import { readdirSync, readFileSync } from "node:fs";
import { checkApplied, cpuSeconds, makeEvents, publishAll, redisCpuSeconds, startWorker, type WorkerProcess } from "./features.js";
import { fmt, header, row } from "./measure.js";
import { Redis as SingleRedis } from "ioredis";
import { startRedisCluster } from "../test/redis-cluster.js";

const P = 16;
/** BENCH_FEATURE_PARTITIONED_WORKERS=1,4 and BENCH_FEATURE_PARTITIONED_CLUSTER=0 shorten a run while iterating. */
const WORKERS = (process.env.BENCH_FEATURE_PARTITIONED_WORKERS ?? "1,2,4").split(",").map(Number);
const CLUSTER_RUN = process.env.BENCH_FEATURE_PARTITIONED_CLUSTER !== "0";
const EVENTS = Number(process.env.BENCH_FEATURE_PARTITIONED_EVENTS ?? 100_000);
const WARMUP = Number(process.env.BENCH_FEATURE_PARTITIONED_WARMUP ?? 50_000);
/** Events per worker CPU-second of N workers against one worker's: the target. */
const EFFICIENCY_TARGET = 0.9;
/** Leases outlive the pause while the backlog is published. */
const LEASE_TTL = "120s";

type Child = WorkerProcess;

interface RunResult {
  workers: number;
  rate: number;
  conflicts: number;
  workerCpuUs: number;
  perCpuSecond: number;
  redisCommands: number;
  redisCpuUs: number;
  natsCpuUs: number;
  drainSeconds: number;
  /** Per 1000 events: the batches of every loop (router and partitions) and the store's transactions. */
  batchesPerK: number;
  transactionsPerK: number;
  /** Per event, summed over the worker processes: read and write syscalls, context switches, and the system CPU share. */
  syscalls: number;
  switches: number;
  systemShare: number;
  /** Worker CPU per event (µs): the processes' main threads, and their other threads (V8's GC helpers and compiler, libuv). */
  mainThreadUs: number;
  otherThreadsUs: number;
}

export async function benchPartitioned(): Promise<void> {
  header(`features, partitioned: ${WORKERS.join(", ")} workers on P = ${P} partitions (router + per-partition leases)`);
  console.log(
    `${EVENTS} events drained as a backlog after ${WARMUP} warm-up events per worker process; worker CPU from /proc (the worker processes, every thread), ` +
      `Redis commands from INFO stats; machine load average ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} cores`,
  );
  const unpartitioned = await run(1, false);
  const results: RunResult[] = [];
  for (const n of WORKERS) results.push(await run(n, true));
  let onCluster: RunResult | undefined;
  if (CLUSTER_RUN) {
    const cluster = await startRedisCluster();
    try {
      onCluster = await run(2, true, { url: cluster.url, ports: cluster.nodes.map((n) => n.port) });
    } finally {
      await cluster.stop();
    }
  }
  const base = results[0]!;
  const W = [10, 10, 10, 16, 22, 18, 16, 16];
  row(["workers", "events/s", "conflicts", "worker CPU/event", "events per worker CPU-s", "vs 1 worker", "Redis cmds/event", "Redis CPU/event"], W);
  /** One table row: a run's figures, its ratio to one partitioned worker's as `ratio` says it. */
  const runRow = (label: string | number, r: typeof base, ratio: string) =>
    row(
      [
        label,
        Math.round(r.rate),
        r.conflicts,
        `${fmt(r.workerCpuUs, 1)} µs`,
        Math.round(r.perCpuSecond),
        ratio,
        fmt(r.redisCommands, 1),
        `${fmt(r.redisCpuUs, 1)} µs`,
      ],
      W,
    );
  const vsBase = (r: typeof base) => fmt(r.perCpuSecond / base.perCpuSecond, 2);
  const u = unpartitioned;
  runRow("1 (P = 1)", u, `${vsBase(u)} (floor)`);
  for (const r of results) {
    const verdict = r === base ? "" : r.perCpuSecond / base.perCpuSecond >= EFFICIENCY_TARGET ? " (met)" : " (NOT met)";
    runRow(r.workers, r, `${vsBase(r)}${verdict}`);
  }
  const c = onCluster;
  if (c) {
    runRow("2, cluster", c, vsBase(c));
    console.log(
      `"2, cluster": the 2 workers on a 3-master Redis Cluster (own instances on this machine), Redis commands and CPU summed over the masters; ` +
        `against 2 workers on one Redis: ${fmt(c.perCpuSecond / (results.find((r) => r.workers === 2) ?? base).perCpuSecond, 2)} of its events per worker CPU-second`,
    );
  }
  console.log(
    `target: conflict retries 0 and events per worker CPU-second of 2 and 4 workers within ${Math.round((1 - EFFICIENCY_TARGET) * 100)} % of one worker's; ` +
      `nats-server CPU per event ${[u, ...results].map((r) => `${fmt(r.natsCpuUs, 1)} µs`).join(" / ")} (P = 1, then ${WORKERS.join(", ")} workers); ` +
      `the P = 1 row is today's unpartitioned worker, measured the same way: what the router's hop and per-partition batches cost; load average now ${loadavg()[0]!.toFixed(1)}`,
  );
  console.log(
    `per 1000 events, batches (every loop's: router and partitions) / store transactions: ${[u, ...results]
      .map((r) => `${fmt(r.batchesPerK, 1)} / ${fmt(r.transactionsPerK, 1)}`)
      .join(", ")} (P = 1, then ${WORKERS.join(", ")} workers); worker + nats-server CPU per event ${[u, ...results]
      .map((r) => `${fmt(r.workerCpuUs + r.natsCpuUs, 1)} µs`)
      .join(" / ")}; worker syscalls / context switches per event, system share of worker CPU: ${[u, ...results]
      .map((r) => `${fmt(r.syscalls, 2)} / ${fmt(r.switches, 3)}, ${Math.round(r.systemShare * 100)} %`)
      .join("; ")}`,
  );
  console.log(
    `worker CPU per event, main threads + other threads (GC helpers, compiler): ${[u, ...results]
      .map((r) => `${fmt(r.mainThreadUs, 1)} + ${fmt(r.otherThreadsUs, 1)} µs`)
      .join(" / ")} (P = 1, whose other threads include its store thread; then ${WORKERS.join(", ")} workers)`,
  );
}

async function run(workers: number, partitioned: boolean, cluster?: { url: string; ports: number[] }): Promise<RunResult> {
  const namespace = `bench_fpart_${process.pid}_${workers}${partitioned ? "" : "u"}${cluster ? "c" : ""}`;
  const rt = createRuntime({ namespace, logLevel: "silent", ...(cluster ? { redisUrl: cluster.url } : {}) });
  const redisCpu = () => (cluster ? nodeStats(cluster.ports).then((s) => s.cpu) : redisCpuSeconds(rt));
  const redisCommands = () => (cluster ? nodeStats(cluster.ports).then((s) => s.commands) : singleCommands(rt));
  const nc = await rt.nats();
  const js = nc.jetstream();
  const children: Child[] = [];
  try {
    for (let i = 0; i < workers; i++) children.push(await startPartitionWorker(namespace, partitioned, rt.config.redisUrl));
    if (partitioned) await waitLeasesShared(rt, workers);
    const drain = () => (partitioned ? waitDrained(rt) : waitUnpartitionedDrained(rt));
    const start = Date.now() - 4 * 60_000;
    // As many warm-up events per worker process as the one worker gets (see the file header).
    const warmup = makeEvents(WARMUP * workers, start, 4 * 60_000, "w");
    const events = makeEvents(EVENTS, start, 4 * 60_000);
    const encode = (e: ActivityEvent) => new TextEncoder().encode(JSON.stringify(e));
    await publishAll(js, rt.names.eventsSubject, warmup.map(encode));
    await drain();
    const conflicts0 = await conflicts(children);
    const loops0 = await loopCounts(children);
    for (const c of children) c.child.kill("SIGSTOP");
    await publishAll(js, rt.names.eventsSubject, events.map(encode));
    const natsPid = sharedNatsPid();
    const cpu = () => children.reduce((a, c) => a + cpuSeconds(c.child.pid!), 0);
    const cpu0 = cpu();
    const os0 = osCounts(children);
    const threads0 = threadCpu(children);
    const redis0 = await redisCpu();
    const cmds0 = await redisCommands();
    const nats0 = natsPid ? safeCpu(natsPid) : NaN;
    const t = performance.now();
    for (const c of children) c.child.kill("SIGCONT");
    await drain();
    const drainSeconds = (performance.now() - t) / 1000;
    const workerCpu = cpu() - cpu0;
    const os1 = osCounts(children);
    const threads1 = threadCpu(children);
    const redisCpuUsed = (await redisCpu()) - redis0;
    const cmds = (await redisCommands()) - cmds0;
    const natsCpu = natsPid ? safeCpu(natsPid) - nats0 : NaN;
    const conflictCount = (await conflicts(children)) - conflicts0;
    const loops1 = await loopCounts(children);
    await checkApplied(rt, events);
    return {
      workers,
      rate: EVENTS / drainSeconds,
      conflicts: conflictCount,
      workerCpuUs: (workerCpu * 1e6) / EVENTS,
      perCpuSecond: EVENTS / workerCpu,
      redisCommands: cmds / EVENTS,
      redisCpuUs: (redisCpuUsed * 1e6) / EVENTS,
      natsCpuUs: (natsCpu * 1e6) / EVENTS,
      drainSeconds,
      batchesPerK: ((loops1.batches - loops0.batches) * 1000) / EVENTS,
      transactionsPerK: ((loops1.transactions - loops0.transactions) * 1000) / EVENTS,
      syscalls: (os1.syscalls - os0.syscalls) / EVENTS,
      switches: (os1.switches - os0.switches) / EVENTS,
      systemShare: (os1.system - os0.system) / workerCpu,
      mainThreadUs: ((threads1.main - threads0.main) * 1e6) / EVENTS,
      otherThreadsUs: ((threads1.others - threads0.others) * 1e6) / EVENTS,
    };
  } finally {
    for (const c of children) c.child.kill("SIGCONT");
    for (const c of children) c.child.kill("SIGTERM");
    await Promise.all(children.map((c) => Promise.race([c.exited, sleep(15_000)])));
    for (const c of children) c.child.kill("SIGKILL");
    await deleteNamespace(nc, rt.names).catch(() => undefined);
    await deleteKeysWithPrefix(rt.redis(), rt.names.redisPrefix).catch(() => undefined);
    await rt.close();
  }
}

function startPartitionWorker(namespace: string, partitioned: boolean, redisUrl: string): Promise<Child> {
  return startWorker(namespace, partitioned ? ["--partitions", String(P), "--lease-ttl", LEASE_TTL] : [], { REDIS_URL: redisUrl });
}

/** Until every partition is leased and the workers hold fair shares (at most one apart). */
async function waitLeasesShared(rt: Runtime, workers: number): Promise<void> {
  const kv = await (await rt.nats()).jetstream().views.kv(rt.names.featureLeasesBucket);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const byHolder = new Map<string, number>();
    for (let p = 0; p < P; p++) {
      const e = await kv.get(`lease.${partitionLabel(p)}`).catch(() => null);
      if (e?.operation === "PUT") byHolder.set(e.string(), (byHolder.get(e.string()) ?? 0) + 1);
    }
    const counts = [...byHolder.values()];
    if (counts.reduce((a, b) => a + b, 0) === P && counts.length === workers && Math.max(...counts) - Math.min(...counts) <= 1) return;
    if (Date.now() > deadline) throw new Error(`partitions not shared among ${workers} workers in time: ${JSON.stringify([...byHolder])}`);
    await sleep(200);
  }
}

/**
 * Until the router has acked every published event, and then every partition all it was given
 * (read after the router's: the router acks only once its keyed copies are stored).
 */
async function waitDrained(rt: Runtime): Promise<void> {
  const jsm = await (await rt.nats()).jetstreamManager();
  const info = (c: string) => jsm.consumers.info(rt.names.eventsStream, c).catch(() => undefined);
  const partitions = Array.from({ length: P }, (_, p) => rt.names.consumer(partitionConsumerPart(p)));
  const drained = (i: Awaited<ReturnType<typeof info>>) => i !== undefined && i.num_pending === 0 && i.num_ack_pending === 0;
  const deadline = Date.now() + 600_000;
  // Polled twice a second: each consumer info makes nats-server count the pending messages, CPU that would be booked per event.
  for (;;) {
    if (drained(await info(rt.names.consumer("features-router"))) && (await Promise.all(partitions.map(info))).every(drained)) return;
    if (Date.now() > deadline) throw new Error("the partitioned workers did not drain the stream in time");
    await sleep(500);
  }
}

async function waitUnpartitionedDrained(rt: Runtime): Promise<void> {
  const jsm = await (await rt.nats()).jetstreamManager();
  const deadline = Date.now() + 600_000;
  for (;;) {
    const i = await jsm.consumers.info(rt.names.eventsStream, rt.names.consumer("features")).catch(() => undefined);
    if (i && i.num_pending === 0 && i.num_ack_pending === 0) return;
    if (Date.now() > deadline) throw new Error("the worker did not drain the stream in time");
    await sleep(500);
  }
}

/** The shared nats-server: the oldest one (tests of other work start and stop their own). */
function sharedNatsPid(): number | undefined {
  let best: { pid: number; start: number } | undefined;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, "utf8").trim() !== "nats-server") continue;
      const start = Number(readFileSync(`/proc/${entry}/stat`, "utf8").split(") ")[1]!.split(" ")[19]);
      if (!best || start < best.start) best = { pid: Number(entry), start };
    } catch {
      /* gone meanwhile */
    }
  }
  return best?.pid;
}

function safeCpu(pid: number): number {
  try {
    return cpuSeconds(pid);
  } catch {
    return NaN;
  }
}

async function singleCommands(rt: Runtime): Promise<number> {
  return Number(/total_commands_processed:(\d+)/.exec(await rt.redis().info("stats"))![1]);
}

/** CPU seconds and commands of a cluster's masters, summed. */
async function nodeStats(ports: readonly number[]): Promise<{ cpu: number; commands: number }> {
  let cpu = 0;
  let commands = 0;
  for (const port of ports) {
    const r = new SingleRedis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await r.connect();
      const info = await r.info();
      cpu += Number(/used_cpu_user:([\d.]+)/.exec(info)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]);
      commands += Number(/total_commands_processed:(\d+)/.exec(info)![1]);
    } finally {
      r.disconnect();
    }
  }
  return { cpu, commands };
}

/** The worker processes' CPU seconds so far: their main threads', and their other threads' (those that ended are not counted). */
function threadCpu(children: readonly Child[]): { main: number; others: number } {
  let main = 0;
  let others = 0;
  for (const c of children) {
    const pid = c.child.pid!;
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        if (Number(t) === pid) main += cpuSeconds(pid, pid);
        else others += cpuSeconds(pid, Number(t));
      } catch {
        /* ended meanwhile */
      }
    }
  }
  return { main, others };
}

/** The worker processes' read and write syscalls, context switches and system CPU seconds so far (/proc). */
function osCounts(children: readonly Child[]): { syscalls: number; switches: number; system: number } {
  let syscalls = 0;
  let switches = 0;
  let system = 0;
  for (const c of children) {
    const io = readFileSync(`/proc/${c.child.pid}/io`, "utf8");
    syscalls += Number(/^syscr: (\d+)/m.exec(io)![1]) + Number(/^syscw: (\d+)/m.exec(io)![1]);
    const status = readFileSync(`/proc/${c.child.pid}/status`, "utf8");
    switches += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)![1]) + Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status)![1]);
    system += Number(readFileSync(`/proc/${c.child.pid}/stat`, "utf8").split(") ")[1]!.split(" ")[12]) / 100;
  }
  return { syscalls, switches, system };
}

/** The workers' batches (every loop's) and store transactions so far, from their /metrics. */
async function loopCounts(children: readonly Child[]): Promise<{ batches: number; transactions: number }> {
  let batches = 0;
  let transactions = 0;
  for (const c of children) {
    const text = await (await fetch(`http://127.0.0.1:${c.httpPort}/metrics`)).text();
    batches += Number(/^streamserve_features_batch_size_count (\S+)$/m.exec(text)?.[1] ?? 0);
    transactions += Number(/^streamserve_features_transaction_redis_seconds_count (\S+)$/m.exec(text)?.[1] ?? 0);
  }
  return { batches, transactions };
}

/** The workers' conflict retries so far (streamserve_features_conflict_retries_total on each /metrics). */
async function conflicts(children: readonly Child[]): Promise<number> {
  let total = 0;
  for (const c of children) {
    const text = await (await fetch(`http://127.0.0.1:${c.httpPort}/metrics`)).text();
    total += Number(/^streamserve_features_conflict_retries_total (\S+)$/m.exec(text)?.[1] ?? 0);
  }
  return total;
}
