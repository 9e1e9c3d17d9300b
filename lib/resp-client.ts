// Which Redis client the features store writes with: the hand-written RESP connection (lib/resp.ts,
// the default: ~1 µs of client CPU per command where ioredis takes ~10) or ioredis (lib/resp-ioredis.ts).
import { FAST_PATHS, fastPathChoice, type FastPathChoice } from "./fast-paths.js";
import { IoredisRespConnection } from "./resp-ioredis.js";
import { RespSocketConnection, type RespConnection, type RespOptions } from "./resp.js";

export const REDIS_CLIENTS = FAST_PATHS.redisClient.choices;
export type RedisClientKind = FastPathChoice<"redisClient">;

export function connectResp(url: string, options: RespOptions & { client?: RedisClientKind } = {}): RespConnection {
  const client = options.client ?? fastPathChoice("redisClient");
  return client === "ioredis" ? new IoredisRespConnection(url, options) : new RespSocketConnection(url, options);
}
