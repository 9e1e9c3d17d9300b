// What REDIS_URL names: one Redis (redis://, rediss:// for TLS) or a Redis Cluster given by its seed
// nodes (redis+cluster://[user:password@]host:port,host:port,...; rediss+cluster:// for TLS).
// A cluster URL has no database: a Redis Cluster only has database 0.
import { redactUrl } from "./redact.js";

export interface ClusterTarget {
  nodes: { host: string; port: number }[];
  username?: string;
  password?: string;
  tls: boolean;
}

export class RedisUrlError extends Error {
  override name = "RedisUrlError";
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
