// Redis connections. The serving client fails fast (no offline queue, short timeouts) so a slow or
// dead Redis costs a request its features, not its answer; writers retry instead.
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "./logger.js";
import { redactUrl } from "./logger.js";
import { ioredisTargetOptions, parseRedisUrl } from "./redis-url.js";

export type { Redis };

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
  const redisOptions: RedisOptions = {
    ...ioredisTargetOptions(parseRedisUrl(url)),
    lazyConnect: false,
    enableOfflineQueue: !serving,
    maxRetriesPerRequest: serving ? 0 : null,
    commandTimeout: serving ? (options.commandTimeoutMs ?? 100) : undefined,
    // Back off up to 2 s between attempts and never give up: Redis coming back must heal us.
    retryStrategy: (times) => Math.min(50 * times, 2000),
    connectionName: "streamserve",
  };
  const redis = new Redis(redisOptions);
  let down = false;
  redis.on("error", (err) => {
    if (!down) log.warn({ err: err.message, url: redactUrl(url) }, "Redis unavailable");
    down = true;
  });
  redis.on("ready", () => {
    if (down) log.info({ url: redactUrl(url) }, "Redis back");
    down = false;
  });
  return redis;
}

/** Deletes every key under a prefix (tests and `streamserve reset`); refuses an empty prefix. */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<number> {
  if (!prefix) throw new Error("refusing to delete every key: give a non-empty prefix");
  let deleted = 0;
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    cursor = next;
    if (keys.length) deleted += await redis.del(...keys);
  } while (cursor !== "0");
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
