// Redis URLs, read in one place for every Redis client of the project (ioredis in lib/redis.ts and
// lib/resp-ioredis.ts, the hand-written connection in lib/resp.ts): redis://[user:password@]host[:port][/db],
// rediss:// for TLS. A new URL form is one more case in parseRedisUrl and one more field in RedisTarget.
import type { RedisOptions } from "ioredis";
import { redactUrl } from "./redact.js";

/** Where one Redis is and how to log in, as a URL names it. */
export interface RedisTarget {
  host: string;
  port: number;
  tls: boolean;
  user?: string;
  password?: string;
  db: number;
}

/** How long a connection attempt may take, for every client. */
export const REDIS_CONNECT_TIMEOUT_MS = 5000;

export class RedisUrlError extends Error {
  override name = "RedisUrlError";
}

/** Reads a Redis URL; the errors name the fix and show the URL with its password masked. */
export function parseRedisUrl(url: string): RedisTarget {
  const shown = redactUrl(url);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisUrlError(`redis URL "${shown}" is not a URL; expected redis://[user:password@]host:port[/db]`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
    throw new RedisUrlError(`redis URL "${shown}" must start with redis:// or rediss:// (TLS)`);
  }
  const path = u.pathname.replace(/^\//, "");
  if (path !== "" && !/^\d+$/.test(path)) {
    throw new RedisUrlError(`redis URL "${shown}": the database "${path}" after the host must be a number (e.g. redis://127.0.0.1:6379/0)`);
  }
  const target: RedisTarget = {
    host: u.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1",
    port: u.port ? Number(u.port) : 6379,
    tls: u.protocol === "rediss:",
    db: path === "" ? 0 : Number(path),
  };
  // As ioredis has always read them: redis://:password@host (no user), redis://user:password@host, ?password=.
  if (u.password) {
    target.password = decodeURIComponent(u.password);
    if (u.username) target.user = decodeURIComponent(u.username);
  } else if (u.searchParams.get("password")) {
    target.password = u.searchParams.get("password")!;
  }
  return target;
}

/** The ioredis options that reach a target (the rest of an ioredis client's options are its caller's). */
export function ioredisTargetOptions(target: RedisTarget): RedisOptions {
  return {
    host: target.host,
    port: target.port,
    username: target.user,
    password: target.password,
    db: target.db,
    tls: target.tls ? { servername: target.host } : undefined,
    connectTimeout: REDIS_CONNECT_TIMEOUT_MS,
  };
}
