// Redis connections, to one Redis or a Redis Cluster (REDIS_URL redis+cluster://..., lib/redis-url.ts).
// The serving client fails fast (no offline queue, short timeouts) so a slow or dead Redis costs a
// request its features, not its answer; writers retry instead. On a cluster no command may name
// keys of two slots, and what walks the key space (SCAN) runs on every master.
import { Cluster, type ClusterOptions, Redis as SingleRedis, type RedisOptions } from "ioredis";
import type { Logger } from "./logger.js";
import { redactUrl } from "./logger.js";
import { ioredisTargetOptions, isClusterUrl, parseClusterUrl, parseRedisUrl } from "./redis-url.js";

/** A client of one Redis or of a Redis Cluster: the commands both take. */
export type Redis = SingleRedis | Cluster;
export type { Cluster, SingleRedis };

export function isCluster(redis: Redis): redis is Cluster {
  return (redis as Cluster).isCluster === true;
}

export interface RedisConnectOptions {
  /**
   * "serving": commands fail at once while disconnected and after `commandTimeoutMs`.
   * "writer": commands queue while reconnecting and are retried.
   * @default "writer"
   */
  mode?: "serving" | "writer";
  /** Serving mode only. @default 100 */
  commandTimeoutMs?: number;
}

export function connectRedis(url: string, log: Logger, options: RedisConnectOptions = {}): Redis {
  const serving = options.mode === "serving";
  // Back off up to 2 s between attempts and never give up: Redis coming back must heal us.
  const backoff = (times: number) => Math.min(50 * times, 2000);
  const perConnection = {
    maxRetriesPerRequest: serving ? 0 : null,
    commandTimeout: serving ? (options.commandTimeoutMs ?? 100) : undefined,
    connectionName: "streamserve",
  };
  let redis: Redis;
  if (isClusterUrl(url)) {
    const target = parseClusterUrl(url);
    const clusterOptions: ClusterOptions = {
      lazyConnect: false,
      enableOfflineQueue: !serving,
      clusterRetryStrategy: backoff,
      // A master that restarts (same slots) is reconnected to, not only found again through MOVED.
      clusterNodeRetryStrategy: backoff,
      redisOptions: { ...perConnection, username: target.username, password: target.password, tls: target.tls ? {} : undefined },
    };
    redis = new Cluster(target.nodes, clusterOptions);
  } else {
    const redisOptions: RedisOptions = {
      ...ioredisTargetOptions(parseRedisUrl(url)),
      ...perConnection,
      lazyConnect: false,
      enableOfflineQueue: !serving,
      retryStrategy: backoff,
    };
    redis = new SingleRedis(redisOptions);
  }
  let down = false;
  redis.on("error", (err) => {
    if (!down) log.warn({ err: err.message, url: redactUrl(url) }, "Redis unavailable");
    down = true;
  });
  redis.on("ready", () => {
    if (down) log.info({ url: redactUrl(url) }, "Redis back");
    down = false;
  });
  if (isCluster(redis)) {
    // One master down leaves the cluster client ready: say so per node, at most every 10 s.
    const warned = new Map<string, number>();
    redis.on("node error", (err: Error, node: string) => {
      if (Date.now() - (warned.get(node) ?? 0) < 10_000) return;
      warned.set(node, Date.now());
      log.warn({ err: err.message, node }, "Redis Cluster node unavailable");
    });
  }
  return redis;
}

/**
 * The connections that hold the data: the client itself, or every master of a cluster (once the
 * cluster is ready, so that none is missed; throws if it is not ready within `timeoutMs`).
 */
export async function masters(redis: Redis, timeoutMs = 5000): Promise<SingleRedis[]> {
  if (!isCluster(redis)) return [redis];
  if (!(await waitReady(redis, timeoutMs))) throw new Error(`Redis Cluster not ready after ${timeoutMs} ms (status ${redis.status})`);
  return redis.nodes("master");
}

/** The keys matching a SCAN pattern, a page at a time, from every master of a cluster. */
export async function* scanKeys(redis: Redis, match: string, count = 1000): AsyncGenerator<string[]> {
  for (const node of await masters(redis)) {
    let cursor = "0";
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", match, "COUNT", count);
      cursor = next;
      if (keys.length) yield keys;
    } while (cursor !== "0");
  }
}

/** Deletes every key under a prefix (tests and `streamserve reset`); refuses an empty prefix. */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  if (!prefix) throw new Error("refusing to delete every key: give a non-empty prefix");
  let deleted = 0;
  for await (const keys of scanKeys(redis, `${prefix}*`)) {
    if (!isCluster(redis)) {
      deleted += await redis.del(...keys);
      continue;
    }
    // A cluster refuses one DEL of keys in several slots: one DEL per key, in one pipeline (one master's keys).
    const pipeline = redis.pipeline();
    for (const key of keys) pipeline.del(key);
    for (const [err, n] of (await pipeline.exec()) ?? []) if (!err) deleted += n as number;
  }
  return deleted;
}

/**
 * Waits until the client is connected, up to `timeoutMs`; resolves false instead of failing, so a
 * server can start (and degrade) while Redis is down.
 */
export function waitReady(redis: Redis, timeoutMs = 2000): Promise<boolean> {
  if (redis.status === "ready") return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      redis.off("ready", onReady);
      resolve(ok);
    };
    const onReady = () => done(true);
    const timer = setTimeout(() => done(false), timeoutMs);
    redis.once("ready", onReady);
  });
}
