// Shared test setup: an isolated runtime per test file (a unique namespace for streams, buckets,
// consumers and Redis keys; a temporary data directory for the embedded ClickHouse and spill
// files) and the cleanup that removes it from the shared Redis and NATS afterwards.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { createRuntime, type Runtime } from "../lib/runtime.js";
import { createLogger } from "../lib/logger.js";
import { deleteNamespace } from "../lib/nats.js";
import { deleteKeysWithPrefix } from "../lib/redis.js";
import type { Config } from "../lib/config.js";

export interface TestRuntime extends Runtime {
  /** Closes connections and deletes everything the namespace created. */
  cleanup(): Promise<void>;
}

export function uniqueNamespace(prefix = "t"): string {
  return `${prefix}_${randomBytes(4).toString("hex")}`;
}

export function testRuntime(overrides: Partial<Config> = {}): TestRuntime {
  const dataDir = mkdtempSync(join(tmpdir(), "streamserve-test-"));
  const runtime = createRuntime(
    { namespace: uniqueNamespace(), dataDir, grpcPort: 0, httpPort: 0, host: "127.0.0.1", ...overrides },
    createLogger(process.env.TEST_LOG_LEVEL ?? "silent"),
  );
  return Object.assign(runtime, {
    async cleanup() {
      const nc = await runtime.nats().catch(() => undefined);
      if (nc) await deleteNamespace(nc, runtime.names).catch(() => undefined);
      await deleteKeysWithPrefix(runtime.redis(), runtime.names.redisPrefix).catch(() => undefined);
      await runtime.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** Polls until `check` returns a truthy value or the timeout passes. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 10_000, what = "condition"): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Node arguments that run a `streamserve` command from source in a test runtime's namespace and data directory, on loopback. */
export function cliArgs(rt: Runtime, command: string, ...flags: string[]): string[] {
  return ["--import", "tsx", "cli/main.ts", command, "--namespace", rt.config.namespace, "--data-dir", rt.config.dataDir, "--host", "127.0.0.1", ...flags];
}

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces). */
export function procStat(path: string): string[] | undefined {
  try {
    const text = readFileSync(path, "utf8");
    return text.slice(text.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** The nice value of every thread of a process (field 19 of stat; 17 after the name). */
export const threadNices = (pid: number) => readdirSync(`/proc/${pid}/task`).map((t) => Number(procStat(`/proc/${pid}/task/${t}/stat`)?.[16]));
/** The scheduling policy of every thread (field 41 of stat): 0 normal, 3 batch, 5 idle. */
export const threadPolicies = (pid: number) => readdirSync(`/proc/${pid}/task`).map((t) => Number(procStat(`/proc/${pid}/task/${t}/stat`)?.[38]));
