// NATS connection and the JetStream streams every part relies on. The connection reconnects
// forever: a NATS outage makes parts wait (or spill to disk), never exit.
import { connect, RetentionPolicy, StorageType, DiscardPolicy, type NatsConnection, type ConnectionOptions } from "nats";
import type { Logger } from "./logger.js";
import { redactUrl } from "./logger.js";
import type { Names } from "./config.js";

export type { NatsConnection };

export interface NatsOptions {
  /** Name shown in the server's connection list. @default "streamserve" */
  name?: string;
  /**
   * Wait for the first connection instead of failing when the server is down.
   * @default false
   */
  waitOnFirstConnect?: boolean;
}

export async function connectNats(url: string, log: Logger, options: NatsOptions = {}): Promise<NatsConnection> {
  const connection: ConnectionOptions = {
    servers: url.split(",").map((s) => s.trim()),
    name: options.name ?? "streamserve",
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: options.waitOnFirstConnect ?? false,
    // Async stack traces cost a stack capture per request (every JetStream publish); they
    // roughly halve log throughput for error messages we never need.
    noAsyncTraces: true,
    ...credentialsFromUrl(url),
  };
  const nc = await connect(connection);
  log.info({ url: redactUrl(url) }, "connected to NATS");
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") log.warn({ status: s.type }, "NATS connection");
    }
  })().catch(() => undefined);
  return nc;
}

/** nats://user:pass@host or nats://token@host: the client reads these from options, not the URL. */
function credentialsFromUrl(url: string): Partial<ConnectionOptions> {
  try {
    const u = new URL(url.split(",")[0]!.trim());
    if (u.username && u.password) return { user: decodeURIComponent(u.username), pass: decodeURIComponent(u.password) };
    if (u.username) return { token: decodeURIComponent(u.username) };
  } catch {
    /* not a URL: let the client report it */
  }
  const token = process.env.NATS_TOKEN;
  return token ? { token } : {};
}

/** Limits of the streams streamserve creates. */
export interface StreamLimits {
  /** How long events and logs are kept. @default 7 days */
  maxAgeMs?: number;
  /**
   * Bytes per stream before the oldest messages go. @default -1 (no cap: max age bounds the
   * stream). A cap is reserved up front from the server's JetStream storage, so a generous default
   * would exhaust a small server with a few namespaces.
   */
  maxBytes?: number;
  /** Window in which a repeated Nats-Msg-Id is stored once. @default 5 minutes */
  duplicateWindowMs?: number;
}

const DAY_MS = 24 * 3600 * 1000;

/**
 * Creates EVENTS and LOGS when missing and updates their limits when they exist, so publishers
 * always find a stream and restarts are idempotent.
 */
export async function ensureStreams(nc: NatsConnection, names: Names, limits: StreamLimits = {}): Promise<void> {
  const jsm = await nc.jetstreamManager();
  const ns = (ms: number) => ms * 1_000_000;
  const common = {
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: ns(limits.maxAgeMs ?? 7 * DAY_MS),
    max_bytes: limits.maxBytes ?? -1,
    duplicate_window: ns(limits.duplicateWindowMs ?? 5 * 60_000),
    num_replicas: 1,
  };
  const eventsPrefix = names.eventsSubject.replace(/\.activity$/, "");
  const streams = [
    { name: names.eventsStream, subjects: [`${eventsPrefix}.>`], ...common },
    { name: names.logsStream, subjects: [names.logsWildcard], ...common },
  ];
  for (const config of streams) {
    try {
      await jsm.streams.info(config.name);
      await jsm.streams.update(config.name, config);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      await jsm.streams.add(config);
    }
  }
}

export function isNotFound(err: unknown): boolean {
  const e = err as { code?: string | number; api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10059 || e?.code === "404" || /not found/i.test(e?.message ?? "");
}

/** Deletes a namespace's streams and buckets: for tests and `streamserve reset`. */
export async function deleteNamespace(nc: NatsConnection, names: Names): Promise<void> {
  const jsm = await nc.jetstreamManager();
  const buckets = [`KV_${names.registryBucket}`, `KV_${names.registryBucket}-locks`, `OBJ_${names.artifactsBucket}`, `KV_${names.featureLeasesBucket}`];
  for (const stream of [names.eventsStream, names.logsStream, ...buckets]) {
    await jsm.streams.delete(stream).catch(() => undefined);
  }
}
