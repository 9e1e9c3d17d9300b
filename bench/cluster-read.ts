// `npm run bench -- cluster-read`: the server's feature read (lookupFeatures, a user and 20
// candidates) on a Redis Cluster of 3 masters next to one Redis, both started by the benchmark
// (own ports, nobody else's load on them), in the same run. Per shape (1 lookup at a time, and 64
// started in one turn as concurrent requests start them): lookups/s, this process's CPU per lookup
// (the client's cost, which is the request path's) and the Redis servers' CPU per lookup (summed
// over the nodes). The single Redis is the baseline: there one script call per turn reads
// everything; on the cluster one HMGET pipeline per master does.
import { availableParallelism, loadavg } from "node:os";
import { cpuUsage } from "node:process";
import { performance } from "node:perf_hooks";
import { Redis as SingleRedis } from "ioredis";
import { createLogger } from "../lib/logger.js";
import { names as namesOf } from "../lib/config.js";
import { connectRedis, waitReady, type Redis } from "../lib/redis.js";
import type { FeatureSpec } from "../lib/registry.js";
import { lookupFeatures } from "../server/feature-lookup.js";
import { OwnService } from "../test/faults/own-services.js";
import { startRedisCluster } from "../test/redis-cluster.js";
import { fmt, header, row } from "./measure.js";

const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);
const CANDIDATES = 20;
const ITEMS = 500;
const SPECS: FeatureSpec[] = [
  ...["clicks_last_5min", "avg_session_duration", "unique_pages_viewed", "purchase_amount", "engagement_score"].map(
    (name): FeatureSpec => ({ name, source: "user", type: "numeric", default: 0 }),
  ),
  ...["item_views_5min", "item_clicks_5min", "trend_score"].map((name): FeatureSpec => ({ name, source: "item", type: "numeric", default: 0 })),
];
const WIDTHS = [22, 10, 10, 12, 12];

export async function benchClusterRead(): Promise<void> {
  header(`feature read: a user and ${CANDIDATES} candidates, 3-master Redis Cluster vs one Redis (both own instances)`);
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ");
  console.log(`machine: ${availableParallelism()} cores, load average ${load()}`);
  const single = await OwnService.redis();
  const cluster = await startRedisCluster();
  const log = createLogger("silent");
  try {
    const targets: [string, Redis, () => Promise<number>][] = [
      ["one Redis", connectRedis(single.url, log, { mode: "serving", commandTimeoutMs: 2000 }), () => serverCpuMs([single.port])],
      ["Redis Cluster (3)", connectRedis(cluster.url, log, { mode: "serving", commandTimeoutMs: 2000 }), () => serverCpuMs(cluster.nodes.map((n) => n.port))],
    ];
    row(["target", "in a turn", "lookups/s", "client µs/l", "Redis µs/l"], WIDTHS);
    for (const concurrency of [1, 64]) {
      for (const [label, redis, serverCpu] of targets) {
        const f = await measure(redis, concurrency, serverCpu);
        row([label, concurrency, Math.round(f.perSecond), fmt(f.clientUs, 1), fmt(f.serverUs, 1)], WIDTHS);
      }
    }
    for (const [, redis] of targets) redis.disconnect();
    console.log(`load average after: ${load()}`);
  } finally {
    await cluster.stop();
    await single.remove();
  }
}

async function measure(redis: Redis, concurrency: number, serverCpu: () => Promise<number>) {
  if (!(await waitReady(redis, 10_000))) throw new Error("Redis not ready");
  const names = namesOf({ namespace: "bench" });
  for (let i = 0; i < ITEMS; i++) await redis.hset(names.itemFeaturesKey(`i${i}`), { item_views_5min: i, item_clicks_5min: i % 7, trend_score: i / 3 });
  for (let u = 0; u < 64; u++) await redis.hset(names.userFeaturesKey(`u${u}`), { clicks_last_5min: u, engagement_score: u * 2 });
  const round = async (r: number) => {
    await Promise.all(
      Array.from({ length: concurrency }, (_, c) => {
        const items = Array.from({ length: CANDIDATES }, (_, k) => `i${(r * 31 + c * 7 + k * 13) % ITEMS}`);
        return lookupFeatures(redis, names, SPECS, { userId: `u${c}`, currentPage: "", deviceType: "" }, items).then((m) => {
          if (m.unavailable) throw new Error("a lookup found Redis unavailable");
        });
      }),
    );
  };
  for (let r = 0; r < 200 / concurrency + 20; r++) await round(r); // warm-up
  const cpu0 = cpuUsage();
  const server0 = await serverCpu();
  const t0 = performance.now();
  let lookups = 0;
  for (let r = 0; performance.now() - t0 < DURATION_MS; r++) {
    await round(r);
    lookups += concurrency;
  }
  const elapsed = performance.now() - t0;
  const cpu = cpuUsage(cpu0);
  const serverMs = (await serverCpu()) - server0;
  return { perSecond: (lookups * 1000) / elapsed, clientUs: (cpu.user + cpu.system) / lookups, serverUs: (serverMs * 1000) / lookups };
}

/** CPU the Redis servers at `ports` have used (INFO cpu), in ms. */
async function serverCpuMs(ports: number[]): Promise<number> {
  let total = 0;
  for (const port of ports) {
    const r = new SingleRedis(port, "127.0.0.1");
    try {
      const info = await r.info("cpu");
      for (const m of info.matchAll(/^used_cpu_(?:sys|user):([\d.]+)/gm)) total += Number(m[1]) * 1000;
    } finally {
      r.disconnect();
    }
  }
  return total;
}
