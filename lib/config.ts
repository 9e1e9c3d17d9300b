// Settings for every part, resolved in one place: explicit overrides (CLI flags) win over the
// environment, which wins over the defaults below.
import { resolve } from "node:path";
import { registerSecret, registerUrlSecrets } from "./redact.js";
import { isClusterUrl, parseClusterUrl, parseRedisUrl, RedisUrlError } from "./redis-url.js";
import { FAST_PATHS, fastPathChoice, type FastPath } from "./fast-paths.js";

export interface Config {
  /**
   * Prefix that isolates one deployment (or one test run) from others sharing the same Redis,
   * NATS and ClickHouse: stream, subject, bucket, consumer and key names all carry it.
   * @default "" (the names in ARCHITECTURE.md: EVENTS, LOGS, user_features:{id}, ...)
   */
  namespace: string;
  /** One Redis, or a Redis Cluster as redis+cluster://host:port,host:port (lib/redis-url.ts). @default "redis://127.0.0.1:6379" (env REDIS_URL) */
  redisUrl: string;
  /** @default "nats://127.0.0.1:4222" (env NATS_URL) */
  natsUrl: string;
  /** A ClickHouse server over HTTP; unset means the embedded chDB engine in `dataDir`. (env CLICKHOUSE_URL) */
  clickhouseUrl: string | undefined;
  /** ClickHouse database. @default "streamserve" (env CLICKHOUSE_DATABASE) */
  clickhouseDatabase: string;
  /** @default "./data" (env STREAMSERVE_DATA_DIR) */
  dataDir: string;
  /** @default 50051 */
  grpcPort: number;
  /** @default 8080 */
  httpPort: number;
  /** Interface the servers bind to. @default "0.0.0.0" */
  host: string;
  /** Registry model that Recommend serves. @default "recommender" */
  modelName: string;
  /** Alias served when no experiment routes a user elsewhere. @default "production" */
  servingAlias: string;
  /** TTL of online feature hashes in seconds. @default 3600 */
  featureTtlSeconds: number;
  /** pino level. @default "info" (env LOG_LEVEL) */
  logLevel: string;
}

export const DEFAULT_CONFIG: Readonly<Config> = Object.freeze({
  namespace: "",
  redisUrl: "redis://127.0.0.1:6379",
  natsUrl: "nats://127.0.0.1:4222",
  clickhouseUrl: undefined,
  clickhouseDatabase: "streamserve",
  dataDir: "./data",
  grpcPort: 50051,
  httpPort: 8080,
  host: "0.0.0.0",
  modelName: "recommender",
  servingAlias: "production",
  featureTtlSeconds: 3600,
  logLevel: "info",
});

/** Merges overrides, environment and defaults; validates what a typo would silently break. */
export function loadConfig(overrides: Partial<Config> = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const fromEnv: Partial<Config> = {
    namespace: env.STREAMSERVE_NAMESPACE,
    redisUrl: env.REDIS_URL,
    natsUrl: env.NATS_URL,
    clickhouseUrl: env.CLICKHOUSE_URL || undefined,
    clickhouseDatabase: env.CLICKHOUSE_DATABASE,
    dataDir: env.STREAMSERVE_DATA_DIR,
    logLevel: env.LOG_LEVEL,
  };
  const config: Config = { ...DEFAULT_CONFIG };
  for (const source of [fromEnv, overrides]) {
    for (const [key, value] of Object.entries(source)) {
      if (value !== undefined && value !== "") (config as unknown as Record<string, unknown>)[key] = value;
    }
  }
  config.dataDir = resolve(config.dataDir);
  // Before any check can echo them: passwords in these URLs are masked in every log line from now on.
  for (const url of [config.redisUrl, config.natsUrl, config.clickhouseUrl]) registerUrlSecrets(url);
  registerSecret(env.NATS_TOKEN);
  if (!/^[A-Za-z0-9_]*$/.test(config.namespace)) {
    throw new ConfigError(`namespace "${config.namespace}" may only contain letters, digits and "_"`);
  }
  if (!/^[A-Za-z0-9_-]+$/.test(config.modelName)) {
    throw new ConfigError(`model name "${config.modelName}" may only contain letters, digits, "_" and "-"`);
  }
  checkRedisUrl(config.redisUrl);
  for (const kind of Object.keys(FAST_PATHS) as FastPath[]) {
    try {
      fastPathChoice(kind, env);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  for (const key of ["grpcPort", "httpPort", "featureTtlSeconds"] as const) {
    const n = Number(config[key]);
    if (!Number.isInteger(n) || n < 0) throw new ConfigError(`${key} must be a non-negative integer, got "${config[key]}"`);
    config[key] = n;
  }
  return config;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * What a Redis client would otherwise reject later, from inside its connection (an uncaught error,
 * with the URL and its password in it): lib/redis-url.ts reads the URL, here, once at start.
 */
function checkRedisUrl(url: string): void {
  try {
    if (isClusterUrl(url)) parseClusterUrl(url);
    else parseRedisUrl(url);
  } catch (err) {
    if (err instanceof RedisUrlError) throw new ConfigError(err.message);
    throw err;
  }
}

/** Every name the parts agree on, derived from the namespace so tests and deployments can coexist. */
export interface Names {
  eventsStream: string;
  /** Subject clients publish activity events on. */
  eventsSubject: string;
  /** Subject of events that could not be processed, with the reason in a header. */
  deadLetterSubject: string;
  logsStream: string;
  logsSubject(kind: LogKind): string;
  /** Subject filter that matches every log kind. */
  logsWildcard: string;
  /** Subject of the alerts of one kind (drift, quality, ab, model). */
  alertsSubject(kind: string): string;
  registryBucket: string;
  artifactsBucket: string;
  /** KV bucket of the partitioned features workers' leases (features/leases.ts). */
  featureLeasesBucket: string;
  /** Durable consumer name for a part (features, sink-predictions, ...). */
  consumer(part: string): string;
  userFeaturesKey(userId: string): string;
  itemFeaturesKey(itemId: string): string;
  trendingKey: string;
  /** Prefix of every Redis key, for cleanup. */
  redisPrefix: string;
}

/** "shadow": a shadow version's scores of a request production answered (never returned to the caller). */
export type LogKind = "prediction" | "shadow" | "exposure" | "outcome" | "feature_window" | "model_event";

export function names(config: Pick<Config, "namespace">): Names {
  const ns = config.namespace;
  const subject = (s: string) => (ns ? `${ns}.${s}` : s);
  const upper = (s: string) => (ns ? `${ns}_${s}` : s);
  const lower = (s: string) => (ns ? `${ns}-${s}` : s);
  const redisPrefix = ns ? `${ns}:` : "";
  return {
    eventsStream: upper("EVENTS"),
    eventsSubject: subject("events.activity"),
    deadLetterSubject: subject("events.dead_letter"),
    logsStream: upper("LOGS"),
    logsSubject: (kind) => subject(`logs.${kind}`),
    logsWildcard: subject("logs.>"),
    alertsSubject: (kind) => subject(`alerts.${kind}`),
    registryBucket: lower("streamserve-registry"),
    artifactsBucket: lower("streamserve-models"),
    featureLeasesBucket: lower("features-leases"),
    consumer: (part) => upper(part),
    // Plain keys, as users query them (HGETALL user_features:42). No script touches two of them,
    // so they need no hash tag to live on Redis Cluster.
    userFeaturesKey: (id) => `${redisPrefix}user_features:${id}`,
    itemFeaturesKey: (id) => `${redisPrefix}item_features:${id}`,
    trendingKey: `${redisPrefix}trending_items`,
    redisPrefix,
  };
}
