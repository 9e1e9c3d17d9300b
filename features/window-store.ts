// The window store: event-time window state, the online feature hashes and the trending set, all
// in Redis, kept by the features worker.
//
// The invariant: every event id's effect (window state, online hash, trending activity) lands in
// the same Redis transaction as its applied-event marker, and a transaction commits only on top of
// the state it was computed from. So a redelivered or republished event finds its marker and
// changes nothing, a kill -9 leaves each transaction all or nothing, and several workers on one
// consumer produce what one does. Where it is enforced:
//   - batch-planner.ts: an event whose marker the snapshot holds is a duplicate, one whose window is
//     closed is late; the markers of the rest go into the write set with their effects;
//   - write-encoder.ts: the write set becomes one transaction's commands;
//   - commit-pipeline.ts: MULTI/EXEC under WATCH of the store version that every transaction raises,
//     committed only when the version is our own last one (else read and computed again);
//   - window-closer.ts: a window is marked closed (raising the version) before its rows are read,
//     so no transaction can add to it afterwards.
// Keys: store-keys.ts. Plain hash, sorted-set and string commands, no Lua; transactions of bounded
// Redis time (maxTransactionMs), since every other client waits while one runs.
// Partitioned (`partition`), the store holds one partition's state: only the events whose view key
// maps to it, its keys under one hash tag (one Redis Cluster slot), its own version and a lease
// epoch that fences its commits; the public hashes and trending set are then written after each
// transaction (commit-pipeline.ts), as absolute values, so a replay rewrites the same values.
// Unpartitioned (the default), one store holds everything and its transactions write the public
// hashes too.
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { storeKeys, type StoreKeys } from "./store-keys.js";
import { belongsTo, partitionLabel } from "./partitions.js";
import type { ProjectionSink } from "./projection.js";
import { CommitPipeline, type ApplyResult } from "./commit-pipeline.js";
import { WriteEncoder, publicKey } from "./write-encoder.js";
import { WindowCloser, type ClosedWindow } from "./window-closer.js";
import { definedFields } from "../lib/options.js";

export { storeKeys, LeaseLostError, WindowStoreError, type StoreKeys, type WindowStatus } from "./store-keys.js";
export type { ViewCounts } from "./batch-planner.js";
export type { ApplyResult } from "./commit-pipeline.js";
export type { ClosedWindow } from "./window-closer.js";

/** The trending sorted set's scoring. */
export interface TrendingSpec {
  weights: Record<string, number>;
  halfLifeMs: number;
  maxItems: number;
}

export interface WindowStoreOptions {
  /** TTL of the public feature hashes, ms. @default 3_600_000 (config.featureTtlSeconds) */
  featureTtlMs?: number;
  /**
   * TTL of an open window's state, refreshed as it is written. Windows are deleted when they
   * close; the TTL only reclaims state if the stream stops for good. @default 7 days (the streams' retention)
   */
  openWindowTtlMs?: number;
  /** How long (event time) a published window stays listed, refusing stragglers from slower workers. @default 3_600_000 */
  closedWindowTtlMs?: number;
  /** How long (event time) an item's trend activity is kept after its last event; after ten half-lives it weighs 1/1024. @default 10 half-lives */
  trendTtlMs?: number;
  /**
   * Redis time one transaction may hold the server, ms: a batch is committed in as many
   * transactions as keep each under it, sized from the time Redis reports for the recent ones
   * (other clients, the server's feature reads among them, wait while an EXEC runs). @default 2
   */
  maxTransactionMs?: number;
  /** The one partition of `count` this store holds (features/partitions.ts); absent: the whole, unpartitioned store. */
  partition?: { index: number; count: number };
  /** Partitioned: where the projection goes (a Redis Cluster's masters). Main thread only. @default the store's Redis */
  projection?: ProjectionSink;
}

export const DEFAULT_WINDOW_STORE_OPTIONS: Readonly<Required<Omit<WindowStoreOptions, "trendTtlMs" | "partition" | "projection">>> = Object.freeze({
  featureTtlMs: 3_600_000,
  openWindowTtlMs: 7 * 24 * 3_600_000,
  closedWindowTtlMs: 3_600_000,
  maxTransactionMs: 2,
});

export class WindowStore {
  private readonly keys: StoreKeys;
  private readonly pipeline: CommitPipeline;
  private readonly closer: WindowCloser;

  /**
   * @param redis for the window closer and readers (ioredis)
   * @param redisUrl the store's own two connections (a writer and a reader)
   * @param trending the trending set, scored from the events of `trending.view` (null: none)
   */
  constructor(
    private readonly redis: Redis,
    redisUrl: string,
    private readonly names: Names,
    views: readonly FeatureView[],
    trending: { view: FeatureView; spec: TrendingSpec } | null,
    options: WindowStoreOptions = {},
  ) {
    const defined = definedFields(options);
    const opts = { ...DEFAULT_WINDOW_STORE_OPTIONS, ...defined, trendTtlMs: defined.trendTtlMs ?? 10 * (trending?.spec.halfLifeMs ?? 0) };
    const part = options.partition;
    const keys = (this.keys = storeKeys(names.redisPrefix, part && partitionLabel(part.index)));
    const bucketMs = Math.min(...views.map((v) => v.windowMs));
    const separate = part !== undefined;
    const encoder = new WriteEncoder({
      keys,
      names,
      views,
      trending,
      featureTtlMs: opts.featureTtlMs,
      openWindowTtlMs: opts.openWindowTtlMs,
      projectSeparately: separate,
    });
    const include = part && new Map(views.map((v) => [v, (e: ActivityEvent) => belongsTo(v, e, part.index, part.count)]));
    this.pipeline = new CommitPipeline({
      redisUrl,
      keys,
      views,
      plan: { keys, bucketMs, trending, reproject: separate },
      encoder,
      maxTransactionMs: opts.maxTransactionMs,
      include,
      projection: options.projection,
    });
    this.closer = new WindowCloser({ redis, keys, names, views, trending, bucketMs, closedWindowTtlMs: opts.closedWindowTtlMs, trendTtlMs: opts.trendTtlMs });
  }

  close(): void {
    this.pipeline.close();
  }

  /** The Redis keys of this store (of its partition, when partitioned). */
  get storeKeys(): StoreKeys {
    return this.keys;
  }

  /** Takes this partition for a lease epoch: from now on only commits under it land (CommitPipeline.claim). */
  claim(epoch: number): Promise<void> {
    return this.pipeline.claim(epoch);
  }

  /**
   * Folds a batch of events into their windows, the online hashes and the trending set, exactly
   * once per event id, and raises the shared newest event time. Safe to repeat: that is how a
   * redelivered batch is handled. Resolves once every event of the batch is committed, in
   * transactions of bounded Redis time (commit-pipeline.ts); rejects if any part failed (the
   * parts that landed are recognised as applied when it is repeated). Lateness is judged against
   * the watermark as it stood before the transaction that applies the event.
   */
  apply(events: readonly ActivityEvent[], now = Date.now()): Promise<ApplyResult> {
    return this.pipeline.apply(events, now);
  }

  /** The newest event time any worker has seen (−∞ before the first event). */
  async eventTimeHigh(): Promise<number> {
    const v = await this.redis.get(this.keys.eventTimeHigh);
    return v === null ? -Infinity : Number(v);
  }

  /** Closes the view's windows that the watermark has passed (window-closer.ts); returns the rows published. */
  closeDue(view: FeatureView, high: number, publish: (rows: ClosedWindow[]) => Promise<void>, chunk = 1000): Promise<number> {
    return this.closer.closeDue(view, high, publish, chunk);
  }

  /** An entity's public feature hash as numbers (for tests and tools; the server reads its own way). */
  async readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined> {
    const h = await this.redis.hgetall(publicKey(this.names, view, entityId));
    if (Object.keys(h).length === 0) return undefined;
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }
}
