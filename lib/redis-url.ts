// What REDIS_URL names, read in one place for every Redis client of the project (ioredis in
// lib/redis.ts and lib/resp-ioredis.ts, the hand-written connection in lib/resp.ts): one Redis
// (redis://[user:password@]host[:port][/db], rediss:// for TLS) or a Redis Cluster given by its seed
// nodes (redis+cluster://[user:password@]host:port,host:port,...; rediss+cluster:// for TLS).
// A cluster URL has no database: a Redis Cluster only has database 0.
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

export interface ClusterTarget {
  nodes: { host: string; port: number }[];
  username?: string;
  password?: string;
  tls: boolean;
}

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
    throw new RedisUrlError(`redis URL "${shown}" must start with redis:// or rediss:// (TLS), or redis+cluster:// for a Redis Cluster`);
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

const CLUSTER_SCHEME = /^(rediss?)\+cluster:\/\//i;
// Worded so that log redaction, which masks "scheme://user:password@", leaves the hint readable.
const CLUSTER_FORM = "redis+cluster://host:port,host:port,... (credentials as user:password@ before the hosts; rediss+cluster:// for TLS)";

export function isClusterUrl(url: string): boolean {
  return CLUSTER_SCHEME.test(url);
}

/** The seed nodes and credentials of a cluster URL; throws a RedisUrlError naming the expected form. */
export function parseClusterUrl(url: string): ClusterTarget {
  const scheme = CLUSTER_SCHEME.exec(url);
  const shown = redactUrl(url);
  if (!scheme) throw new RedisUrlError(`redis URL "${shown}" is not a cluster URL; expected ${CLUSTER_FORM}`);
  let rest = url.slice(scheme[0].length);
  const target: ClusterTarget = { nodes: [], tls: scheme[1]!.toLowerCase() === "rediss" };
  const at = rest.lastIndexOf("@");
  if (at >= 0) {
    const userinfo = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = userinfo.indexOf(":");
    const [user, password] = colon >= 0 ? [userinfo.slice(0, colon), userinfo.slice(colon + 1)] : [userinfo, ""];
    // ioredis's reading of redis://: "user:password@", ":password@" (no user); a lone name is a password too.
    if (password) {
      target.password = decode(password, shown);
      if (user) target.username = decode(user, shown);
    } else if (user) {
      target.password = decode(user, shown);
    }
  }
  const slash = rest.search(/[/?#]/);
  if (slash >= 0) {
    const tail = rest.slice(slash);
    if (!/^\/0?$/.test(tail)) {
      throw new RedisUrlError(`redis URL "${shown}": a Redis Cluster has only database 0 and takes no options; expected ${CLUSTER_FORM}`);
    }
    rest = rest.slice(0, slash);
  }
  for (const part of rest.split(",")) {
    const m = /^(\[[0-9a-f:.]+\]|[^:[\]\s]+):(\d{1,5})$/i.exec(part.trim());
    const port = m ? Number(m[2]) : Number.NaN;
    if (!m || port < 1 || port > 65535) {
      throw new RedisUrlError(`redis URL "${shown}": "${part}" is not host:port (every cluster node needs its port); expected ${CLUSTER_FORM}`);
    }
    target.nodes.push({ host: m[1]!.replace(/^\[|\]$/g, ""), port });
  }
  return target;
}

function decode(s: string, shown: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new RedisUrlError(`redis URL "${shown}": the user or password is not valid percent-encoding (write % as %25)`);
  }
}

/**
 * A redis:// URL for one node of a cluster ("host:port", as ioredis names nodes), with the cluster
 * URL's credentials and TLS: for a connection that must speak to the master of a given slot itself.
 */
export function clusterNodeUrl(clusterUrl: string, node: string): string {
  const target = parseClusterUrl(clusterUrl);
  const colon = node.lastIndexOf(":");
  const host = node.slice(0, colon);
  const auth = target.password ? `${target.username ? encodeURIComponent(target.username) : ""}:${encodeURIComponent(target.password)}@` : "";
  return `${target.tls ? "rediss" : "redis"}://${auth}${host.includes(":") ? `[${host}]` : host}:${node.slice(colon + 1)}`;
}
