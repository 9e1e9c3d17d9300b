// For `streamserve up` on a laptop: when Redis or NATS does not answer at its URL and the URL
// points at this machine, start a private instance (data under the data directory) and say so.
// When that is impossible, stop with a message that says exactly what to install or set.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, openSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import type { Logger } from "./logger.js";
import { isClusterUrl, parseClusterUrl } from "./redis-url.js";

export interface LocalService {
  name: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export class MissingServiceError extends Error {
  override name = "MissingServiceError";
}

export function answers(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

function hasBinary(name: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${name}`]).status === 0;
}

const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

interface ServiceSpec {
  name: string;
  url: string;
  defaultPort: number;
  binary: string;
  install: string;
  args(port: number, dir: string): string[];
}

async function ensure(spec: ServiceSpec, dataDir: string, log: Logger): Promise<LocalService | undefined> {
  const u = new URL(spec.url.split(",")[0]!);
  const host = u.hostname;
  const port = Number(u.port || spec.defaultPort);
  if (await answers(host === "localhost" ? "127.0.0.1" : host.replace(/^\[|\]$/g, ""), port)) return undefined;
  if (!LOCAL_HOSTS.has(host)) {
    throw new MissingServiceError(`${spec.name} does not answer at ${host}:${port}. Start it there, or point the URL at a running ${spec.name}.`);
  }
  if (!hasBinary(spec.binary)) {
    throw new MissingServiceError(
      `${spec.name} does not answer at ${host}:${port} and \`${spec.binary}\` is not installed. Install it (${spec.install}) or set the URL to a running ${spec.name}.`,
    );
  }
  const dir = join(dataDir, "services", spec.name.toLowerCase());
  mkdirSync(dir, { recursive: true });
  const logFile = openSync(join(dir, `${spec.binary}.log`), "a");
  const child = spawn(spec.binary, spec.args(port, dir), { stdio: ["ignore", logFile, logFile] });
  for (let i = 0; i < 100 && !(await answers("127.0.0.1", port)); i++) await new Promise((r) => setTimeout(r, 100));
  if (!(await answers("127.0.0.1", port))) {
    child.kill("SIGKILL");
    throw new MissingServiceError(`started ${spec.binary} on port ${port} but it does not answer; see ${join(dir, `${spec.binary}.log`)}`);
  }
  log.warn({ port, dir }, `${spec.name} was not running: started a private ${spec.binary} for this process`);
  return {
    name: spec.name,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
        setTimeout(() => child.kill("SIGKILL"), 3000).unref();
      }),
  };
}

/** Starts whatever is missing; returns the instances this process owns. */
export async function ensureLocalServices(urls: { redisUrl: string; natsUrl: string }, dataDir: string, log: Logger): Promise<LocalService[]> {
  const started: LocalService[] = [];
  if (isClusterUrl(urls.redisUrl)) await clusterAnswers(urls.redisUrl);
  const redis = isClusterUrl(urls.redisUrl)
    ? undefined
    : await ensure(
        {
          name: "Redis",
          url: urls.redisUrl,
          defaultPort: 6379,
          binary: "redis-server",
          install: "Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis",
          args: (port, dir) => ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no"],
        },
        dataDir,
        log,
      );
  if (redis) started.push(redis);
  const nats = await ensure(
    {
      name: "NATS",
      url: urls.natsUrl,
      defaultPort: 4222,
      binary: "nats-server",
      install: "Debian/Ubuntu: apt-get install nats-server; macOS: brew install nats-server",
      args: (port, dir) => ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir],
    },
    dataDir,
    log,
  ).catch(async (err) => {
    await Promise.all(started.map((s) => s.stop()));
    throw err;
  });
  if (nats) started.push(nats);
  return started;
}

/** A private instance cannot stand in for a Redis Cluster: one of its seed nodes must answer. */
async function clusterAnswers(url: string): Promise<void> {
  const { nodes } = parseClusterUrl(url);
  for (const n of nodes) if (await answers(n.host === "localhost" ? "127.0.0.1" : n.host, n.port)) return;
  throw new MissingServiceError(
    `no node of the Redis Cluster answers (${nodes.map((n) => `${n.host}:${n.port}`).join(", ")}). Start the cluster, or point REDIS_URL at one Redis (redis://host:port).`,
  );
}
