// Features benchmark: events through one `streamserve features` worker (a child process, as
// deployed, measured once warm) from JetStream into Redis, and freshness (publish → visible in
// Redis) at steady rates, judged against floors measured in the same run on the same events:
// raw JetStream publish, raw consume+ack (with nats.js's consume() and with the pull consumer
// the worker uses), a raw Redis pipeline of the same online writes (HSET + PEXPIRE per entity,
// ZINCRBY trending: the seed's foreachBatch, without window state or exactly-once), and the
// window store alone (its transactions, no NATS).
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism, getPriority, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, DeliverPolicy, type JetStreamClient } from "nats";
import { createRuntime, type Runtime } from "../lib/runtime.js";
import { deleteNamespace } from "../lib/nats.js";
import { connectRedis, deleteKeysWithPrefix } from "../lib/redis.js";
import { FEATURE_VIEWS, ITEM_FEATURES, TRENDING, USER_FEATURES, type ActivityEvent } from "../features/definitions.js";
import { WindowStore } from "../features/window-store.js";
import { featuresOf, windowStart } from "../features/windows.js";
import { createPullConsumer, type PullConsumer, type PulledMessage } from "../lib/jetstream-pull.js";
import { connectResp } from "../lib/resp-client.js";
import type { RespCommand } from "../lib/resp.js";
import { fmt, header, row } from "./measure.js";
import { programArgs, programsLine } from "./built-cli.js";
import { nodeFlags } from "./processes.js";
import { benchPartitioned } from "./features-partitioned.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const EVENTS = Number(process.env.BENCH_FEATURE_EVENTS ?? 200_000);
/**
 * Events the worker handles before the measurement starts (users and pages of their own): a
 * fresh process spends its first seconds compiling its hot paths, on helper threads that would
 * otherwise be booked against every event measured.
 */
const WARMUP = Number(process.env.BENCH_FEATURE_WARMUP ?? 100_000);
const USERS = Number(process.env.BENCH_FEATURE_USERS ?? 20_000);
const PAGES = Number(process.env.BENCH_FEATURE_PAGES ?? 2_000);
const BATCH = 2000;
/** Fixed offered rates, then fractions of the worker's capacity measured in the same run (its drain rate). */
const STEADY_RATES = [1_000, 10_000];
const CAPACITY_FRACTIONS = [0.5, 0.8, 0.95];
/** The targets (issue 11): other Redis clients during a full-speed drain, and freshness up to 80 % of capacity. */
const PING_P99_TARGET_MS = 5;
const FRESHNESS_P99_TARGET_MS = 100;
const FRESHNESS_TARGET_FRACTION = 0.8;
const STEADY_SECONDS = Number(process.env.BENCH_FEATURE_STEADY_SECONDS ?? 4);

export async function benchFeatures(): Promise<void> {
  // BENCH_FEATURES_PARTITIONED_ONLY=1: only the partitioned runs (bench/features-partitioned.ts).
  if (process.env.BENCH_FEATURES_PARTITIONED_ONLY !== "1") await benchOneWorker();
  await benchPartitioned();
}

async function benchOneWorker(): Promise<void> {
  header("features: events → one features worker → Redis, vs raw JetStream and raw Redis floors");
  console.log(programsLine());
  const namespace = `bench_features_${process.pid}`;
  const rt = createRuntime({ namespace, logLevel: "silent" });
  const nc = await rt.nats();
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();
  let worker: ChildProcess | undefined;
  try {
    const warmup = makeEvents(WARMUP, Date.now() - 4 * 60_000, 4 * 60_000, "w");
    const events = makeEvents(EVENTS, Date.now() - 4 * 60_000, 4 * 60_000);
    const encode = (e: ActivityEvent) => new TextEncoder().encode(JSON.stringify(e));
    console.log(
      `${EVENTS} events, ${USERS} users, ${PAGES} pages, event times within the last 4 minutes; worker batch ${BATCH}; ` +
        `measured after ${WARMUP} warm-up events (users and pages of their own); floors over all ${WARMUP + EVENTS}`,
    );

    // Floor 1: raw JetStream publish (acked), then durable consumers acking each message.
    let t = performance.now();
    await publishAll(js, rt.names.eventsSubject, [...warmup.map(encode), ...events.map(encode)]);
    const allEvents = WARMUP + EVENTS;
    const publishRate = allEvents / ((performance.now() - t) / 1000);
    const consumeRate = await rawConsume(rt, js, jsm, allEvents);
    const natsPid = natsServerPid();
    const natsPull0 = natsPid ? cpuSeconds(natsPid) : NaN;
    const pullRate = await rawPull(rt, nc, jsm, allEvents);
    const natsPullCpu = ((natsPid ? cpuSeconds(natsPid) - natsPull0 : NaN) * EVENTS) / allEvents;

    // The worker: a separate process on the same stream, measured from the end of the warm-up
    // events until its consumer is drained.
    // The floor for the drain's PING figures: the same probe with no worker running.
    const idlePings = pingLatencies(rt);
    await sleep(3000);
    const idlePing = await idlePings.stop();
    // BENCH_FEATURE_WORKER_FLAGS: more flags for the worker (e.g. "--nice 0 --max-transaction-ms 2" for an A/B).
    const extra = (process.env.BENCH_FEATURE_WORKER_FLAGS ?? "").split(" ").filter(Boolean);
    const w = await startWorker(namespace, ["--batch-size", String(BATCH), ...extra]);
    worker = w.child;
    // `features` lowers its own priority (--nice, default 5 with SCHED_BATCH) before it consumes.
    const workerNice = getPriority(w.child.pid!);
    await waitAcked(jsm, rt, WARMUP, 600_000);
    const cpu0 = cpuSeconds(w.child.pid!);
    const threads0 = threadCpuSeconds(w.child.pid!);
    const nats0 = natsPid ? cpuSeconds(natsPid) : NaN;
    const redis0 = await redisCpuSeconds(rt);
    const exec0 = await execStats(rt);
    const tx0 = await transactionHistogram(w.httpPort);
    const pings = pingLatencies(rt);
    t = performance.now();
    await waitDrained(jsm, rt, 600_000);
    const ping = await pings.stop();
    const drainSeconds = (performance.now() - t) / 1000;
    const workerCpu = cpuSeconds(w.child.pid!) - cpu0;
    const split = threadSplit(w.child.pid!, threads0, EVENTS);
    const natsCpu = natsPid ? cpuSeconds(natsPid) - nats0 : NaN;
    const workerRedisCpu = (await redisCpuSeconds(rt)) - redis0;
    const exec1 = await execStats(rt);
    const exec = { calls: exec1.calls - exec0.calls, usecPerCall: (exec1.usec - exec0.usec) / Math.max(1, exec1.calls - exec0.calls) };
    const tx = transactionsBetween(tx0, await transactionHistogram(w.httpPort));
    const workerRate = EVENTS / drainSeconds;
    await checkApplied(rt, events);

    // Freshness under steady load, same worker: fixed rates, then fractions of its capacity.
    const freshness: ({ rate: number; fraction?: number } & Awaited<ReturnType<typeof steadyLoad>>)[] = [];
    for (const rate of STEADY_RATES) freshness.push({ rate, ...(await steadyLoad(rt, nc, jsm, rate)) });
    for (const fraction of CAPACITY_FRACTIONS) {
      const rate = Math.round(fraction * workerRate);
      freshness.push({ rate, fraction, ...(await steadyLoad(rt, nc, jsm, rate)) });
    }
    w.child.kill("SIGTERM");
    await w.exited;
    worker = undefined;

    // Floors 2 and 3, alone on the machine now.
    const r0 = await redisCpuSeconds(rt);
    const rawRedisRate = await rawRedisPipeline(rt, events);
    const rawRedisCpu = (await redisCpuSeconds(rt)) - r0;
    const { rate: storeRate, redisCpu: storeRedisCpu } = await storeOnly(rt, warmup, events);

    const us = (cpu: number) => `${fmt((cpu * 1e6) / EVENTS, 1)} µs`;
    const W = [44, 10, 16, 30];
    row(["", "events/s", "Redis CPU/event", "ratio"], W);
    row(["raw JetStream publish (acked)", Math.round(publishRate), "", ""], W);
    row(["raw JetStream consume + ack (nats.js)", Math.round(consumeRate), "", ""], W);
    row(["raw JetStream pull + ack (lib/jetstream-pull)", Math.round(pullRate), "", `nats-server ${fmt((natsPullCpu * 1e6) / EVENTS, 1)} µs/event`], W);
    row(["raw Redis pipeline of the online writes", Math.round(rawRedisRate), us(rawRedisCpu), ""], W);
    row(["window store alone (exactly-once)", Math.round(storeRate), us(storeRedisCpu), `${fmt(storeRate / rawRedisRate, 2)} of raw Redis`], W);
    row(
      [
        "features worker, JetStream → Redis",
        Math.round(workerRate),
        us(workerRedisCpu),
        `${fmt(workerRate / pullRate, 2)} of raw pull, ${fmt(workerRate / consumeRate, 2)} of nats.js`,
      ],
      W,
    );
    console.log(
      `worker process (nice ${workerNice}): ${fmt(workerCpu, 2)} CPU-s in ${fmt(drainSeconds, 2)} s (${fmt(workerCpu / drainSeconds, 2)} cores), ` +
        `${Math.round(EVENTS / workerCpu)} events per worker CPU-second; ${fmt(workerRate / rawRedisRate, 2)} of the raw Redis pipeline; ` +
        `machine load average ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} cores`,
    );
    // Where the CPU goes, per event: on a machine this small the sum bounds the rate whatever runs where.
    const perEvent = { worker: (workerCpu * 1e6) / EVENTS, redis: (workerRedisCpu * 1e6) / EVENTS, nats: (natsCpu * 1e6) / EVENTS };
    const total = perEvent.worker + perEvent.redis + (Number.isFinite(perEvent.nats) ? perEvent.nats : 0);
    console.log(
      `CPU per event: worker ${fmt(perEvent.worker, 1)} µs + Redis ${fmt(perEvent.redis, 1)} µs + nats-server ${fmt(perEvent.nats, 1)} µs = ${fmt(total, 1)} µs; ` +
        `${availableParallelism()} cores bound this machine at ${Math.round((availableParallelism() * 1e6) / total)} events/s; the worker does ${Math.round(1e6 / perEvent.worker)} events per CPU-second of its own`,
    );
    console.log(`worker CPU per event by thread: ${split}`);
    const verdict = (ok: boolean) => (ok ? "met" : "NOT met");
    console.log(
      `Redis as other clients saw it during the drain (PING every 5 ms): p50 ${fmt(ping.p50, 2)} ms, p99 ${fmt(ping.p99, 2)} ms, max ${fmt(ping.max, 2)} ms; ` +
        `target p99 <= ${PING_P99_TARGET_MS} ms: ${verdict(ping.p99 <= PING_P99_TARGET_MS)}`,
    );
    console.log(
      `Redis PING floor, same run, no worker running: p50 ${fmt(idlePing.p50, 2)} ms, p99 ${fmt(idlePing.p99, 2)} ms, max ${fmt(idlePing.max, 2)} ms ` +
        `(the drain added p99 ${fmt(ping.p99 - idlePing.p99, 2)} ms)`,
    );
    console.log(
      `the worker's transactions during the drain, by Redis's clock (its /metrics): ${tx.count} transactions, mean ${fmt(tx.meanMs, 2)} ms, ` +
        `99 % within ${fmt(tx.p99Ms, 1)} ms, all within ${Number.isFinite(tx.maxMs) ? `${fmt(tx.maxMs, 1)} ms` : "> 100 ms (the largest bucket)"} (histogram bucket bounds)`,
    );
    console.log(
      `EXECs during the drain, every client's (INFO commandstats; others sharing this Redis count too): ${exec.calls} EXECs, ${fmt(EVENTS / exec.calls, 0)} events each, ` +
        `${fmt(exec.usecPerCall / 1000, 2)} ms each on average`,
    );
    console.log(
      `worker capacity (drain rate above): ${Math.round(workerRate)} events/s; freshness target p99 <= ${FRESHNESS_P99_TARGET_MS} ms up to ${FRESHNESS_TARGET_FRACTION * 100} % of it`,
    );
    for (const f of freshness) {
      const share = f.fraction === undefined ? "" : ` = ${Math.round(f.fraction * 100)} % of capacity`;
      const judged = f.fraction !== undefined && f.fraction <= FRESHNESS_TARGET_FRACTION ? `; target ${verdict(f.p99 <= FRESHNESS_P99_TARGET_MS)}` : "";
      console.log(
        `freshness at ${f.rate} events/s offered${share} (${Math.round(f.achieved)} achieved): publish → visible in Redis p50 ${fmt(f.p50, 1)} ms, p99 ${fmt(f.p99, 1)} ms, max ${fmt(f.max, 1)} ms (${f.probes} probes)${judged}`,
      );
    }
  } finally {
    worker?.kill("SIGKILL");
    await deleteNamespace(nc, rt.names).catch(() => undefined);
    await deleteKeysWithPrefix(rt.redis(), rt.names.redisPrefix).catch(() => undefined);
    await rt.close();
  }
}

export function makeEvents(n: number, startMs: number, spanMs: number, prefix = ""): ActivityEvent[] {
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296;
  return Array.from({ length: n }, (_, i) => {
    const r = rnd();
    const type = r < 0.6 ? "view" : r < 0.9 ? "click" : "purchase";
    return {
      event_id: `${prefix}b${i}`,
      user_id: `${prefix}u${Math.floor(rnd() * USERS)}`,
      event_type: type,
      page_id: `${prefix}p${Math.floor(rnd() * rnd() * PAGES)}`,
      session_duration: Math.round(rnd() * 30000) / 100,
      amount: type === "purchase" ? Math.round(rnd() * 10000) / 100 : 0,
      event_time: Math.round(startMs + (i / n) * spanMs),
    };
  });
}

export async function publishAll(js: JetStreamClient, subject: string, payloads: readonly Uint8Array[], window = 2000): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: window }, async () => {
      while (next < payloads.length) await js.publish(subject, payloads[next++]!);
    }),
  );
}

type Jsm = Awaited<ReturnType<Awaited<ReturnType<Runtime["nats"]>>["jetstreamManager"]>>;

/** A durable consumer on the events like the worker's: explicit acks, from the first message. */
async function addRawConsumer(rt: Runtime, jsm: Jsm, durable: string): Promise<void> {
  await jsm.consumers.add(rt.names.eventsStream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: rt.names.eventsSubject,
    max_ack_pending: 20_000,
  });
}

async function rawConsume(rt: Runtime, js: JetStreamClient, jsm: Jsm, total: number): Promise<number> {
  const durable = "bench_raw";
  await addRawConsumer(rt, jsm, durable);
  const consumer = await js.consumers.get(rt.names.eventsStream, durable);
  const messages = await consumer.consume({ max_messages: 2 * BATCH });
  const t = performance.now();
  let n = 0;
  for await (const m of messages) {
    m.ack();
    if (++n === total) break;
  }
  const seconds = (performance.now() - t) / 1000;
  // Breaking out of the loop has stopped the iterator already (close() would wait forever).
  await jsm.consumers.delete(rt.names.eventsStream, durable);
  return total / seconds;
}

/** The same with the pull consumer the worker uses, asking as far ahead and acking batches as the worker does. */
async function rawPull(rt: Runtime, nc: Awaited<ReturnType<Runtime["nats"]>>, jsm: Jsm, total: number): Promise<number> {
  const durable = "bench_pull";
  await addRawConsumer(rt, jsm, durable);
  const t = performance.now();
  let n = 0;
  let pc: PullConsumer | undefined;
  let batch: PulledMessage[] = [];
  await new Promise<void>((resolve) => {
    pc = createPullConsumer(nc, {
      implementation: "fast",
      stream: rt.names.eventsStream,
      consumer: durable,
      batch: BATCH,
      maxWaiting: 4 * BATCH,
      onMessage: (m) => {
        batch.push(m);
        if (++n === total || batch.length === BATCH) {
          pc!.ackAll(batch);
          batch = [];
        }
        if (n === total) resolve();
      },
    });
  });
  const seconds = (performance.now() - t) / 1000;
  pc!.stop();
  await nc.flush();
  await jsm.consumers.delete(rt.names.eventsStream, durable);
  return total / seconds;
}

export interface WorkerProcess {
  child: ChildProcess;
  exited: Promise<unknown>;
  httpPort: number;
}

/** Starts `streamserve features` in a namespace with extra flags (and environment), once it consumes and listens. */
export async function startWorker(namespace: string, flags: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<WorkerProcess> {
  const child = spawn(
    process.execPath,
    [
      ...nodeFlags(),
      ...programArgs("cli/main.ts"),
      ...["features", "--namespace", namespace, "--http-port", "0", ...flags],
      ...["--progress", "0", "--log-level", "info"],
    ],
    { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } },
  );
  const exited = new Promise((r) => child.on("exit", r));
  let log = "";
  await new Promise<void>((resolve, reject) => {
    child.stderr!.setEncoding("utf8").on("data", (s: string) => {
      log += s;
      if (log.includes("features worker consuming") && log.includes("HTTP listening")) resolve();
    });
    child.on("exit", (code) => reject(new Error(`features worker exited with ${code}:\n${log.slice(-2000)}`)));
  });
  const httpPort = Number(/"port":(\d+),"msg":"HTTP listening/.exec(log)?.[1] ?? 0);
  return { child, exited, httpPort };
}

/** The worker's transaction histogram (streamserve_features_transaction_redis_seconds) from its /metrics. */
async function transactionHistogram(port: number): Promise<{ count: number; sum: number; buckets: [number, number][] }> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`)
    .then((r) => r.text())
    .catch(() => "");
  const buckets: [number, number][] = [];
  for (const m of text.matchAll(/^streamserve_features_transaction_redis_seconds_bucket\{le="([^"]+)"\} (\d+)/gm))
    buckets.push([m[1] === "+Inf" ? Infinity : Number(m[1]), Number(m[2])]);
  const one = (name: string) => Number(new RegExp(`^streamserve_features_transaction_redis_seconds_${name} ([\\d.e+-]+)`, "m").exec(text)?.[1] ?? NaN);
  return { count: one("count"), sum: one("sum"), buckets };
}

/** Between two readings of the histogram: count, mean (ms), and the bucket bounds (ms) under which 99 % and all fell. */
function transactionsBetween(a: Awaited<ReturnType<typeof transactionHistogram>>, b: Awaited<ReturnType<typeof transactionHistogram>>) {
  const count = b.count - a.count;
  const within = (q: number) => {
    for (let i = 0; i < b.buckets.length; i++) if (b.buckets[i]![1] - (a.buckets[i]?.[1] ?? 0) >= q * count) return b.buckets[i]![0] * 1000;
    return NaN;
  };
  return { count, meanMs: ((b.sum - a.sum) * 1000) / count, p99Ms: within(0.99), maxMs: within(1) };
}

/** Round-trip times of a PING every 5 ms on a connection of its own, until stopped. */
function pingLatencies(rt: Runtime): { stop(): Promise<{ p50: number; p99: number; max: number }> } {
  const redis = connectRedis(rt.config.redisUrl, rt.log);
  const samples: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t = performance.now();
      await redis.ping();
      samples.push(performance.now() - t);
      await sleep(5);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      redis.disconnect();
      samples.sort((a, b) => a - b);
      const pct = (p: number) => samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))] ?? NaN;
      return { p50: pct(50), p99: pct(99), max: samples.at(-1) ?? NaN };
    },
  };
}

/** EXEC calls and their total time (µs) so far, as Redis counts them (every client's: the drain's are most of them). */
async function execStats(rt: Runtime): Promise<{ calls: number; usec: number }> {
  const m = /cmdstat_exec:calls=(\d+),usec=(\d+)/.exec(await rt.redis().info("commandstats"));
  return { calls: Number(m?.[1] ?? 0), usec: Number(m?.[2] ?? 0) };
}

/** CPU seconds Redis has used (INFO cpu): contention on a shared machine distorts it less than wall time. */
export async function redisCpuSeconds(rt: Runtime): Promise<number> {
  const info = await rt.redis().info("cpu");
  return Number(/used_cpu_user:([\d.]+)/.exec(info)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]);
}

/** The local nats-server's pid (for its CPU time), if one runs on this machine. */
export function natsServerPid(): number | undefined {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, "utf8").trim() === "nats-server") return Number(entry);
    } catch {
      /* gone meanwhile */
    }
  }
  return undefined;
}

/** CPU seconds (user + system) a process has used, from /proc. */
export function cpuSeconds(pid: number, task?: number): number {
  const fields = readFileSync(task === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${task}/stat`, "utf8")
    .split(") ")[1]!
    .split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

/** CPU seconds of each thread of a process (Linux /proc), by thread id. */
function threadCpuSeconds(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) out.set(Number(t), cpuSeconds(pid, Number(t)));
  return out;
}

/** Per event: the main thread, the busiest other thread (the store's), and all the rest (GC helpers, libuv). */
function threadSplit(pid: number, before: Map<number, number>, events: number): string {
  const used = [...threadCpuSeconds(pid)].map(([tid, s]) => [tid, s - (before.get(tid) ?? 0)] as const);
  const main = used.find(([tid]) => tid === pid)?.[1] ?? 0;
  const others = used
    .filter(([tid]) => tid !== pid)
    .map(([, s]) => s)
    .sort((a, b) => b - a);
  const us = (s: number) => `${fmt((s * 1e6) / events, 1)} µs`;
  return `main thread ${us(main)}, store thread ${us(others[0] ?? 0)}, other threads (GC, libuv) ${us(others.slice(1).reduce((a, b) => a + b, 0))}`;
}

type ConsumerInfo = Awaited<ReturnType<Jsm["consumers"]["info"]>>;

/** Polls the worker's consumer every pollMs until `done` holds. */
async function waitConsumer(jsm: Jsm, rt: Runtime, what: string, done: (info: ConsumerInfo) => boolean, timeoutMs: number, pollMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await jsm.consumers.info(rt.names.eventsStream, rt.names.consumer("features")).catch(() => undefined);
    if (info && done(info)) return;
    if (Date.now() > deadline) throw new Error(`the features worker did not ${what} in time`);
    await sleep(pollMs);
  }
}

/**
 * Until the worker has acked everything. Polled not much more often: consumer info counts the
 * pending messages, work nats-server would otherwise book against the worker's CPU per event.
 */
function waitDrained(jsm: Jsm, rt: Runtime, timeoutMs: number): Promise<void> {
  return waitConsumer(jsm, rt, "drain the stream", (i) => i.num_pending === 0 && i.num_ack_pending === 0 && i.delivered.stream_seq > 0, timeoutMs, 50);
}

/** Until the worker has acked the first `count` messages of the stream (polled often: it starts a measurement). */
function waitAcked(jsm: Jsm, rt: Runtime, count: number, timeoutMs: number): Promise<void> {
  return waitConsumer(jsm, rt, "get through the warm-up events", (i) => i.ack_floor.stream_seq >= count, timeoutMs, 10);
}

/** A sanity check that the run measured real work: a sample of users has the right event counts. */
export async function checkApplied(rt: Runtime, events: readonly ActivityEvent[]): Promise<void> {
  const counts = new Map<string, Map<number, number>>();
  for (const e of events) {
    const ws = windowStart(e.event_time, 300_000);
    const m = counts.get(e.user_id) ?? new Map<number, number>();
    m.set(ws, (m.get(ws) ?? 0) + 1);
    counts.set(e.user_id, m);
  }
  for (const user of [...counts.keys()].slice(0, 50)) {
    const h = await rt.redis().hgetall(rt.names.userFeaturesKey(user));
    const latest = Math.max(...counts.get(user)!.keys());
    if (Number(h.window_start) !== latest || Number(h.event_count) !== counts.get(user)!.get(latest)) {
      throw new Error(`benchmark sanity check failed for ${user}: ${JSON.stringify(h)}`);
    }
  }
}

/**
 * Publishes at `rate` events/s for STEADY_SECONDS, with a probe event (a user of its own) every
 * 10 ms whose online hash is polled for: publish → first seen in Redis. Core NATS publishes (the
 * stream captures the subject): an acked publish per event would cost this process more CPU than
 * the worker spends on it, and the machine has two cores.
 */
async function steadyLoad(rt: Runtime, nc: Awaited<ReturnType<Runtime["nats"]>>, jsm: Jsm, rate: number) {
  const redis = connectRedis(rt.config.redisUrl, rt.log);
  const pending = new Map<string, number>();
  const seen: number[] = [];
  let done = false;
  const poller = (async () => {
    while (!done || pending.size > 0) {
      // The oldest probes only (they show up first): polling every pending one would load Redis
      // most exactly when the worker is behind, and so measure the harness.
      const keys = [...pending.keys()].slice(0, 50);
      if (keys.length === 0) {
        await sleep(1);
        continue;
      }
      const pipe = redis.pipeline();
      for (const k of keys) pipe.exists(k);
      const res = (await pipe.exec())!;
      const now = performance.now();
      keys.forEach((k, i) => {
        if (res[i]![1] === 1) {
          seen.push(now - pending.get(k)!);
          pending.delete(k);
        }
      });
      // Polling every millisecond resolves freshness to ~1 ms without stealing the CPU the
      // worker needs (a tight loop would).
      await sleep(1);
    }
  })();
  const started = performance.now();
  let sent = 0;
  let probe = 0;
  const tickMs = 10;
  const perTick = Math.max(1, Math.round((rate * tickMs) / 1000));
  for (let tick = 0; performance.now() - started < STEADY_SECONDS * 1000; tick++) {
    const now = Date.now();
    for (let i = 0; i < perTick; i++) {
      const e: ActivityEvent = {
        event_id: `s${rate}-${sent}`,
        user_id: `u${sent % USERS}`,
        event_type: i % 3 === 0 ? "click" : "view",
        page_id: `p${sent % PAGES}`,
        session_duration: 10,
        amount: 0,
        event_time: now,
      };
      nc.publish(rt.names.eventsSubject, JSON.stringify(e));
      sent++;
    }
    const user = `probe-${rate}-${probe++}`;
    const probeEvent = {
      event_id: `probe-${rate}-${probe}`,
      user_id: user,
      event_type: "view",
      page_id: "probe",
      session_duration: 1,
      amount: 0,
      event_time: now,
    };
    pending.set(rt.names.userFeaturesKey(user), performance.now());
    nc.publish(rt.names.eventsSubject, JSON.stringify(probeEvent));
    const next = started + (tick + 1) * tickMs;
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
  }
  const achieved = sent / ((performance.now() - started) / 1000);
  await nc.flush();
  await waitDrained(jsm, rt, 120_000);
  done = true;
  await Promise.race([poller, sleep(5000)]);
  redis.disconnect();
  seen.sort((a, b) => a - b);
  const pct = (p: number) => seen[Math.min(seen.length - 1, Math.floor((p / 100) * seen.length))] ?? NaN;
  return { achieved, probes: seen.length, p50: pct(50), p99: pct(99), max: seen.at(-1) ?? NaN };
}

/** The seed's kind of sink: per batch, HSET each entity's features + PEXPIRE, ZINCRBY trending. */
async function rawRedisPipeline(rt: Runtime, events: readonly ActivityEvent[]): Promise<number> {
  // The client the window store writes with, so the two differ only in what they write.
  const redis = connectResp(rt.config.redisUrl);
  const prefix = `${rt.names.redisPrefix}raw:`;
  const t = performance.now();
  for (let i = 0; i < events.length; i += BATCH) {
    const groups = new Map<string, { entity: string; id: string; windowStart: number; events: ActivityEvent[] }>();
    for (const e of events.slice(i, i + BATCH)) {
      for (const view of FEATURE_VIEWS) {
        const ws = windowStart(e.event_time, view.windowMs);
        const k = `${view.entity}|${e[view.key]}|${ws}`;
        let g = groups.get(k);
        if (!g) groups.set(k, (g = { entity: view.entity, id: e[view.key], windowStart: ws, events: [] }));
        g.events.push(e);
      }
    }
    const cmds: RespCommand[] = [];
    for (const g of groups.values()) {
      // Features computed from the batch alone (what a stateless sink could do).
      const view = g.entity === "user" ? USER_FEATURES : ITEM_FEATURES;
      const key = `${prefix}${g.entity}_features:${g.id}`;
      const fields: (string | number)[] = [];
      for (const [k, v] of Object.entries(featuresOf(view, { n: g.events.length, a0: g.events.length, a1s: 1, a1n: 1, a2: 1, a3: 0 }))) fields.push(k, v);
      fields.push("window_start", g.windowStart, "event_count", g.events.length, "feature_time", g.events.at(-1)!.event_time, "updated_at", Date.now());
      cmds.push(["HSET", key, ...fields], ["PEXPIRE", key, 3_600_000]);
      if (view === ITEM_FEATURES) cmds.push(["ZINCRBY", `${prefix}trending`, g.events.length, g.id]);
    }
    await redis.send(cmds);
  }
  const rate = events.length / ((performance.now() - t) / 1000);
  redis.close();
  return rate;
}

/** The window store alone: one apply per batch, as the worker does, without NATS. */
async function storeOnly(rt: Runtime, warmup: readonly ActivityEvent[], events: readonly ActivityEvent[]): Promise<{ rate: number; redisCpu: number }> {
  const ns = `${rt.config.namespace}_store`;
  const storeRt = createRuntime({ namespace: ns, logLevel: "silent" });
  const store = new WindowStore(storeRt.redis(), storeRt.config.redisUrl, storeRt.names, FEATURE_VIEWS, { view: ITEM_FEATURES, spec: TRENDING });
  // Three batches handed over at once, as the worker does (the store applies them in turn).
  const run = async (list: readonly ActivityEvent[]) => {
    let inflight: Promise<unknown>[] = [];
    for (let i = 0; i < list.length; i += BATCH) {
      inflight.push(store.apply(list.slice(i, i + BATCH)));
      if (inflight.length >= 3) await inflight.shift();
    }
    await Promise.all(inflight);
    inflight = [];
  };
  await run(warmup);
  const r0 = await redisCpuSeconds(rt);
  const t = performance.now();
  await run(events);
  const rate = events.length / ((performance.now() - t) / 1000);
  const redisCpu = (await redisCpuSeconds(rt)) - r0;
  store.close();
  await deleteKeysWithPrefix(storeRt.redis(), storeRt.names.redisPrefix);
  await storeRt.close();
  return { rate, redisCpu };
}
