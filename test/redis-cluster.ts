// A real Redis Cluster of the test's own: N masters (3 by default, no replicas) on free loopback
// ports, each a redis-server with --cluster-enabled in its own temporary directory, joined by
// `redis-cli --cluster create`. Ready once every node reports cluster_state:ok with all 16384 slots.
// Node ports are kept <= 22767 so that each cluster bus port (port + 10000) is below both the
// kernel's ephemeral range and Redis's 65535 limit.
import { execFile } from "node:child_process";
import { createServer } from "node:net";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { OwnService } from "./faults/own-services.js";

const run = promisify(execFile);

export interface OwnCluster {
  /** `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`: what REDIS_URL names. */
  url: string;
  /** The masters, in port order; each can be killed and restarted (`OwnService`). */
  nodes: OwnService[];
  /** Per node, how many times each command ran since the last `resetStats` (INFO commandstats). */
  commandCalls(): Promise<Map<number, Record<string, number>>>;
  /** CONFIG RESETSTAT on every node. */
  resetStats(): Promise<void>;
  /** Resolves once every node reports cluster_state:ok again (after a node was killed and restarted). */
  waitOk(timeoutMs?: number): Promise<void>;
  /** Kills every node and removes its files. */
  stop(): Promise<void>;
}

export async function startRedisCluster(options: { masters?: number } = {}): Promise<OwnCluster> {
  const masters = options.masters ?? 3;
  const nodes: OwnService[] = [];
  try {
    for (let i = 0; i < masters; i++) nodes.push(await startNode());
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
    await run("redis-cli", ["--cluster", "create", ...addresses, "--cluster-replicas", "0", "--cluster-yes"], { timeout: 30_000 });
    await waitClusterOk(nodes, 30_000);
  } catch (err) {
    await Promise.all(nodes.map((n) => n.remove()));
    throw err;
  }
  const perNode = async <T>(f: (r: Redis, node: OwnService) => Promise<T>): Promise<T[]> =>
    Promise.all(
      nodes.map(async (node) => {
        const r = new Redis(node.port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 1 });
        try {
          await r.connect();
          return await f(r, node);
        } finally {
          r.disconnect();
        }
      }),
    );
  return {
    url: `redis+cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(",")}`,
    nodes,
    async commandCalls() {
      const stats = await perNode(async (r, node) => [node.port, parseCommandStats(await r.info("commandstats"))] as const);
      return new Map(stats);
    },
    async resetStats() {
      await perNode((r) => r.config("RESETSTAT"));
    },
    waitOk: (timeoutMs = 30_000) => waitClusterOk(nodes, timeoutMs),
    async stop() {
      await Promise.all(nodes.map((n) => n.remove()));
    },
  };
}

/** `cmdstat_hmget:calls=3,usec=...` lines as { hmget: 3 }. */
export function parseCommandStats(info: string): Record<string, number> {
  const calls: Record<string, number> = {};
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls[m[1]!] = Number(m[2]);
  return calls;
}

/** A cluster node on a free port whose bus port is free too; another test taking the port first means another try. */
async function startNode(): Promise<OwnService> {
  let last: unknown;
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * 12_767);
    if (!(await bindable(port)) || !(await bindable(port + 10_000))) continue;
    try {
      return await OwnService.redis({ clusterNode: true, port });
    } catch (err) {
      last = err;
    }
  }
  throw new Error(`could not start a Redis Cluster node on a free port: ${(last as Error | undefined)?.message ?? "no free port"}`);
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

async function waitClusterOk(nodes: OwnService[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const infos = await Promise.all(
      nodes.map((n) =>
        run("redis-cli", ["-h", "127.0.0.1", "-p", String(n.port), "cluster", "info"], { timeout: 5000 }).then(
          (r) => r.stdout,
          (err: Error) => err.message,
        ),
      ),
    );
    const ok = infos.every(
      (info) => /cluster_state:ok/.test(info) && /cluster_slots_ok:16384/.test(info) && new RegExp(`cluster_known_nodes:${nodes.length}\\b`).test(info),
    );
    if (ok) return;
    last = infos.join("\n");
    if (Date.now() > deadline) throw new Error(`Redis Cluster did not reach cluster_state:ok in ${timeoutMs} ms:\n${last}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
