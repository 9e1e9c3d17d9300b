// Which Redis client the features store writes with: the hand-written RESP connection (lib/resp.ts,
// the default: a few µs of client CPU per command where ioredis takes ~13) or ioredis (lib/resp-ioredis.ts).
import { IoredisRespConnection } from "./resp-ioredis.js";
import { RespSocketConnection, type RespConnection, type RespOptions } from "./resp.js";

export const REDIS_CLIENTS = ["resp", "ioredis"] as const;
export type RedisClientKind = (typeof REDIS_CLIENTS)[number];

/** The client STREAMSERVE_REDIS_CLIENT names (set by --redis-client); "resp" when unset. */
export function redisClientFromEnv(env: NodeJS.ProcessEnv = process.env): RedisClientKind {
  const v = env.STREAMSERVE_REDIS_CLIENT || "resp";
  if (!(REDIS_CLIENTS as readonly string[]).includes(v)) {
    throw new Error(`STREAMSERVE_REDIS_CLIENT (--redis-client) must be ${REDIS_CLIENTS.join(" or ")}, got "${v}"`);
  }
  return v as RedisClientKind;
}

export function connectResp(url: string, options: RespOptions & { client?: RedisClientKind } = {}): RespConnection {
  const client = options.client ?? redisClientFromEnv();
  return client === "ioredis" ? new IoredisRespConnection(url, options) : new RespSocketConnection(url, options);
}
