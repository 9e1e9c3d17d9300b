// The window store: event-time window state, the online feature hashes and the trending set, all
// in Redis, written in ONE transaction per batch of events.
//
// A batch:
//   1. reads what it depends on: the store version, the newest event time, each view's window
//      list, which of its event ids were already applied, its entities' window aggregates and
//      distinct values, its items' trend activity;
//   2. is computed here, in the worker;
//   3. commits: MULTI, every write, INCR version, EXEC.
// Every transaction that changes feature state raises the store version, so a writer knows
// whether it was alone. Batches overlap: the next batch's reads go out at once (on a second
// connection) and it is computed while Redis executes this one's transaction, from its snapshot
// completed with the writes of our batches still landing. At commit, under WATCH of the version,
// the version must be the one our own last commit produced and the snapshot must have seen a
// version of our own unbroken run; otherwise (another worker, the window closer) the batch is
// read and computed again under WATCH, one transaction at a time, until one commits. So:
// - Exactly once: an event id's marker is written in the same transaction as its effect; a
//   redelivered or republished event finds its marker and changes nothing. A kill -9 anywhere
//   leaves either all of a batch's writes or none.
// - Several workers on one consumer produce what one does: every batch is computed from the state
//   it commits on top of. (They take turns: Redis, single-threaded, orders them.)
// - Redis does only plain hash, sorted-set and string commands, no Lua: on our machines a Lua
//   script spends ~4 µs more per redis.call than the same command sent natively, and Lua scripts
//   holding Redis for milliseconds delay every other client (the server's feature reads).
//
// Keys (P = the namespace's Redis prefix, V = a view's entity):
//   P features:V:windows        hash    window start → "open" | "closed" (rows being logged) | "published"
//   P features:V:w:<start>      hash    entity id → the window's aggregates (n, t, then each
//                                        aggregation's fields; windows.ts stateFields), comma-packed
//   P features:V:d:<start>      hash    entity id NUL aggregation NUL value → 1 (distinct counts)
//   P features:seen:<bucket>    hash    event id → 1, the events applied (bucket: event time by the
//                                        shortest window, dropped once every view closed it)
//   P features:trend            hash    item → "s r": decayed activity s as of event time r
//   P features:event_time_high  string  newest event time any worker has seen (the watermark's source)
// and the public keys of ARCHITECTURE.md: user_features:{id}, item_features:{id}, trending_items.
//
// Redis Cluster: not supported by this store (a transaction spans keys of many slots).
import { setTimeout as sleep } from "node:timers/promises";
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import { encodeArgs, encodeCommandHeader, RespConnection, RespError, RespWriter, type RespArg, type RespCommand, type RespReply } from "../lib/resp.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { contributionOf, emptyState, featureNames, featuresOf, featureValues, foldEvent, isWindowClosed, stateOp, watermarkOf, windowStart, type StateValues } from "./windows.js";

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
}

export const DEFAULT_WINDOW_STORE_OPTIONS: Readonly<Required<Omit<WindowStoreOptions, "trendTtlMs">>> = Object.freeze({
  featureTtlMs: 3_600_000,
  openWindowTtlMs: 7 * 24 * 3_600_000,
  closedWindowTtlMs: 3_600_000,
  maxTransactionMs: 2,
});

/** Sub-batches read ahead of the one being computed (each its own snapshot, completed by overlay). */
const CHUNKS_AHEAD = 3;
/** Fewest events in a transaction, however slow Redis seems (a preempted Redis is not the batch's cost). */
const MIN_CHUNK_EVENTS = 16;
/** Events in the first transaction, before any was measured. */
const FIRST_CHUNK_EVENTS = 512;
/** Redis-measured transaction times kept to size the next ones. */
const COST_SAMPLES = 16;

/** What one batch did, per view entity. */
export interface ViewCounts {
  /** Events folded into their window. */
  applied: number;
  /** Events already applied (redelivered, or republished with the same event id). */
  duplicates: number;
  /** Events whose window the watermark had closed: dropped. */
  late: number;
}

export interface ApplyResult {
  counts: Record<string, ViewCounts>;
  /** The newest event time any worker has seen, this batch included (−∞ before any). */
  eventTimeHigh: number;
  /** How long each transaction that committed the batch held Redis, ms, as Redis's clock measured it. */
  transactionMs: number[];
}

/** A window whose final row was read to be logged. */
export interface ClosedWindow {
  view: FeatureView;
  entityId: string;
  windowStart: number;
  windowEnd: number;
  features: Record<string, number>;
  eventCount: number;
}

export type WindowStatus = "open" | "closed" | "published";

/** One entity's events in one window of one view, within a batch. */
interface Group {
  entityId: string;
  /** Its first event (index in the batch); the others follow through ViewPlan.next. */
  first: number;
  last: number;
  /** The window's state before the batch (undefined: none); folded in place. */
  state: StateValues | undefined;
  /** Its window refuses events (the watermark passed it, or it is being closed). */
  late: boolean;
  /** The batch applies some of its events (then `state` is what it writes). */
  changed: boolean;
  /** The entity has state in a newer window: the public hash shows that one, not this. */
  newer: boolean;
}

interface ViewPlan {
  view: FeatureView;
  /** window start → entity id → group */
  byWindow: Map<number, Map<string, Group>>;
  /** Each event's group, by its index in the batch. */
  groupOf: Group[];
  /** The next event of the same group (−1: none). */
  next: Int32Array;
  /** 1 for the events this batch applies in this view. */
  applied: Uint8Array;
  /** Indexes of the view's distinct-count aggregations. */
  distinctAggs: number[];
  counts: ViewCounts;
}

const NUL = "\u0000";
const HSET = encodeArgs("HSET");
const PEXPIRE = encodeCommandHeader("PEXPIRE", 3);
const ONE = encodeArgs("1");

/** Distinct-count values known to be in their window: distinct key → fields (distinctField). */
type DistinctValues = Map<string, Set<string>>;

/** A snapshot of what a batch depends on, read from Redis (and completed by in-flight writes). */
interface Snapshot {
  /** The store version the reads saw (every committed write raises it by one). */
  version: number;
  plans: ViewPlan[];
  high: number;
  status: Map<FeatureView, Map<number, WindowStatus>>;
  /** Event ids of the batch applied before it. */
  applied: Set<string>;
  distinct: DistinctValues;
  trend: Map<string, [number, number]>;
  /** State key → entity ids whose state in that (newer) window was already read. */
  newerRead: Map<string, Set<string>>;
}

/** What a committed (or in-flight) batch wrote, to complete a snapshot read before it landed. */
interface WriteSet {
  high: number;
  opened: Map<FeatureView, Set<number>>;
  marks: Set<string>;
  /** Its plans: the groups it changed hold the states it wrote. */
  plans: ViewPlan[];
  /** distinct key → fields added */
  distinct: Map<string, string[]>;
  trend: Map<string, [number, number]>;
}

/** A batch of ours whose writes later snapshots may lack: its version once EXEC answered. */
interface Landing {
  writes: WriteSet;
  version?: number;
  /** Resolves true once committed, false if EXEC refused it. */
  committed: Promise<boolean>;
}

/** Pre-encoded pieces of a view's public-hash HSET: its header and feature names. */
interface PublicTemplate {
  head: Buffer;
  fields: Buffer[];
}

/** The public hash's fields after the features, the same for every view. */
const PUBLIC_FIELDS = {
  windowStart: encodeArgs("window_start"),
  windowEnd: encodeArgs("window_end"),
  eventCount: encodeArgs("event_count"),
  featureTime: encodeArgs("feature_time"),
  updatedAt: encodeArgs("updated_at"),
};

export class WindowStore {
  private readonly keys: StoreKeys;
  private readonly opts: Required<WindowStoreOptions>;
  /** Transactions (WATCH state belongs to a connection). */
  private readonly writer: RespConnection;
  /** Snapshot reads, sent while the writer's transaction is still executing. */
  private readonly reader: RespConnection;
  private readonly views: readonly FeatureView[];
  /** Windows each view had at the last read: which newer windows to read an entity's state from. */
  private readonly knownWindows = new Map<FeatureView, Map<number, WindowStatus>>();
  private readonly bucketMs: number;
  private readonly featureTtl: Buffer;
  private readonly openTtl: Buffer;
  private readonly templates = new Map<FeatureView, PublicTemplate>();
  private readonly featureScratch: number[] = [];
  /** The size of the last batch's writes: the next one's buffer starts there. */
  private writeBytes = 64 * 1024;
  /** Batches compute one at a time, in call order. */
  private computeTurn: Promise<void> = Promise.resolve();
  /** WATCH … EXEC sections on the writer connection, one at a time. */
  private writerTurn: Promise<void> = Promise.resolve();
  /** Our own recent batches, and the range of store versions that only we wrote. */
  private landings: Landing[] = [];
  private ours?: { from: number; to: number };
  /** The WATCH of the store version the last transaction left on the writer, and the version then. */
  private watched?: { connection: number; version: Promise<number | undefined> };
  /** Sub-batches are cut, in call order, one apply() after the other. */
  private issueTurn: Promise<void> = Promise.resolve();
  /** Sub-batches read ahead and not yet computed, and who waits for a slot. */
  private chunksAhead = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /** Redis time per event (ms) of the recent transactions. */
  private readonly costs: number[] = [];

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
    private readonly trending: { view: FeatureView; spec: TrendingSpec } | null,
    options: WindowStoreOptions = {},
  ) {
    const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as WindowStoreOptions;
    const merged = { ...DEFAULT_WINDOW_STORE_OPTIONS, ...defined };
    this.opts = { ...merged, trendTtlMs: defined.trendTtlMs ?? 10 * (trending?.spec.halfLifeMs ?? 0) };
    this.views = views;
    this.keys = storeKeys(names.redisPrefix);
    this.writer = new RespConnection(redisUrl, { name: "streamserve-features" });
    this.reader = new RespConnection(redisUrl, { name: "streamserve-features-reader" });
    this.bucketMs = Math.min(...views.map((v) => v.windowMs));
    this.featureTtl = encodeArgs(this.opts.featureTtlMs);
    this.openTtl = encodeArgs(this.opts.openWindowTtlMs);
    for (const v of views) {
      const names = featureNames(v);
      this.templates.set(v, {
        head: encodeCommandHeader("HSET", 2 + 2 * (names.length + Object.keys(PUBLIC_FIELDS).length)),
        fields: names.map((n) => encodeArgs(n)),
      });
      this.knownWindows.set(v, new Map());
    }
  }

  close(): void {
    this.writer.close();
    this.reader.close();
  }

  /**
   * Folds a batch of events into their windows, the online hashes and the trending set, exactly
   * once per event id, and raises the shared newest event time. Safe to repeat: that is how a
   * redelivered batch is handled. Resolves once every event of the batch is committed; rejects
   * if any part failed (the parts that landed are recognised as applied when it is repeated).
   *
   * A batch is committed in sub-batches, one transaction each, sized so that each holds Redis
   * for about maxTransactionMs at most. Each is atomic and idempotent on its own: its events'
   * markers land with their effects. Lateness is judged against the watermark as it stood
   * before the transaction that applies the event (as Spark does per micro-batch).
   */
  apply(events: readonly ActivityEvent[], now = Date.now()): Promise<ApplyResult> {
    // Sub-batches are issued in call order, a few ahead of the one being computed.
    const turn = this.issueTurn;
    let issued!: () => void;
    this.issueTurn = new Promise<void>((r) => (issued = r));
    return (async () => {
      const parts: Promise<ApplyResult>[] = [];
      try {
        await turn;
        if (events.length > this.chunkEvents()) events = this.groupedForChunks(events);
        let from = 0;
        do {
          await this.chunkSlot();
          const n = Math.min(events.length - from, this.chunkEvents());
          const part = this.applyChunk(events.slice(from, from + n), now);
          part.catch(() => undefined);
          parts.push(part);
          from += n;
        } while (from < events.length);
      } finally {
        issued();
      }
      return mergeResults(await Promise.all(parts));
    })();
  }

  /**
   * The batch with the events of each entity of its most repeated view side by side (stably):
   * each sub-batch then writes an entity's state and public hash once, not once per sub-batch.
   * The folds do not depend on event order.
   */
  private groupedForChunks(events: readonly ActivityEvent[]): readonly ActivityEvent[] {
    let key: FeatureView["key"] | undefined;
    let fewest = Infinity;
    for (const v of this.views) {
      const distinct = new Set(events.map((e) => e[v.key])).size;
      if (distinct < fewest) [fewest, key] = [distinct, v.key];
    }
    if (!key || fewest === events.length) return events;
    const k = key;
    return events.map((e, i) => ({ e, i })).sort((a, b) => (a.e[k] < b.e[k] ? -1 : a.e[k] > b.e[k] ? 1 : a.i - b.i)).map((x) => x.e);
  }

  /** Waits for a sub-batch slot: at most CHUNKS_AHEAD are read and not yet computed. */
  private async chunkSlot(): Promise<void> {
    while (this.chunksAhead >= CHUNKS_AHEAD) await new Promise<void>((r) => this.slotWaiters.push(r));
    this.chunksAhead++;
  }

  private freeChunkSlot(): void {
    this.chunksAhead--;
    this.slotWaiters.shift()?.();
  }

  /**
   * Events in the next transaction: the time budget over the Redis time per event of the recent
   * transactions, their lower quartile: Redis's clock is the wall clock, and a Redis that the
   * machine preempts is not busy for other clients either; shrinking the transactions then would
   * only add round trips, each waiting for Redis to be scheduled.
   */
  private chunkEvents(): number {
    if (this.costs.length === 0) return FIRST_CHUNK_EVENTS;
    const perEvent = [...this.costs].sort((a, b) => a - b)[this.costs.length >> 2]!;
    return Math.max(MIN_CHUNK_EVENTS, Math.floor((0.8 * this.opts.maxTransactionMs) / perEvent));
  }

  /** Notes a committed transaction's Redis time (ms) for `events` events. */
  private noteCost(ms: number, events: number): void {
    if (events === 0 || !(ms >= 0)) return;
    this.costs.push(ms / events);
    if (this.costs.length > COST_SAMPLES) this.costs.shift();
  }

  /** One sub-batch: one transaction (the pipeline below overlaps consecutive ones). */
  private applyChunk(events: readonly ActivityEvent[], now: number): Promise<ApplyResult> {
    const snapshot = this.read(events, this.reader, false);
    snapshot.catch(() => undefined);
    const turn = this.computeTurn;
    let release!: () => void;
    this.computeTurn = new Promise<void>((r) => (release = r));
    let freed = false;
    const releaseAll = () => {
      if (freed) return;
      freed = true;
      this.freeChunkSlot();
      release();
    };
    return (async () => {
      try {
        await turn;
        return await this.run(events, snapshot, now, releaseAll);
      } finally {
        releaseAll();
      }
    })();
  }

  private async run(events: readonly ActivityEvent[], pending: Promise<Snapshot>, now: number, release: () => void): Promise<ApplyResult> {
    const snap = await pending.catch(() => undefined);
    if (snap) {
      const overlays = this.landings.filter((l) => l.version === undefined || l.version > snap.version);
      for (const l of overlays) overlay(snap, l.writes, events);
      const batch = await this.compute(events, snap, now, this.reader);
      // Nothing to write (every event a duplicate or late): true whatever others wrote since.
      if (batch.writes.count === 0) return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [] };
      const done = await this.commitOverlapped(snap, overlays, batch, release);
      if (done) return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [this.committedMs(done, events.length)] };
    }
    // Fresh reads under WATCH, one transaction at a time until one commits. (A WATCH left by
    // the last transaction only makes it stricter: it began before these reads.)
    return this.writerSection(async () => {
      for (let retries = 1; ; retries++) {
        this.watched = undefined;
        const fresh = await this.read(events, this.writer, true);
        const connection = this.writer.connection;
        const batch = await this.compute(events, fresh, now, this.writer);
        if (batch.writes.count === 0) {
          await this.writer.send([["UNWATCH"]]);
          return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [] };
        }
        const tx = await this.transaction(batch.writes, connection);
        if (tx !== undefined) {
          const { version } = tx;
          this.landings = [{ writes: batch.writeSet, version, committed: Promise.resolve(true) }];
          this.ours = { from: version, to: version };
          return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [this.committedMs(tx, events.length)] };
        }
        // Another writer committed first: back off a little (a random bit, so two workers do
        // not collide in step) and compute again from what it wrote.
        await sleep(Math.random() * Math.min(20, 1 + retries));
      }
    });
  }

  /**
   * Commits a batch computed from an overlaid snapshot if that was valid: every batch it was
   * completed with committed, the snapshot saw a version in our own unbroken run, and nobody has
   * written since. Lets the next batch compute as soon as the transaction is sent. Returns false
   * when the batch must be recomputed.
   */
  private async commitOverlapped(snap: Snapshot, overlays: Landing[], batch: Computed, release: () => void): Promise<Committed | undefined> {
    let landing: Landing | undefined;
    let exec: Promise<Committed | undefined> | undefined;
    await this.writerSection(async () => {
      // The WATCH our last transaction left, and the version then; else one now.
      const pre = this.watched;
      this.watched = undefined;
      let cur = await pre?.version;
      let connection = pre?.connection;
      if (cur === undefined) {
        const [, current] = await this.writer.send([["WATCH", this.keys.version], ["GET", this.keys.version]]);
        cur = current === null ? 0 : Number(current);
        connection = this.writer.connection;
      }
      const allLanded = (await Promise.all(overlays.map((l) => l.committed))).every(Boolean);
      const ours = this.ours;
      // Every commit of ours the snapshot may lack must be among those it was completed with: a
      // batch recomputed after a refused EXEC commits after this one was computed.
      const missing = this.landings.some((l) => l.version !== undefined && l.version > snap.version && !overlays.includes(l));
      if (!allLanded || missing || !ours || snap.version < ours.from - 1 || snap.version > ours.to || cur !== ours.to) {
        await this.writer.send([["UNWATCH"]]);
        return;
      }
      let committed!: (ok: boolean) => void;
      landing = { writes: batch.writeSet, committed: new Promise<boolean>((r) => (committed = r)) };
      this.landings.push(landing);
      if (this.landings.length > 8) {
        this.landings.shift();
        // A snapshot older than the oldest batch kept could not be completed: it must read afresh.
        const oldest = this.landings[0]!.version;
        if (oldest !== undefined && this.ours) this.ours.from = Math.max(this.ours.from, oldest);
      }
      exec = this.transaction(batch.writes, connection!);
      exec.then(
        (tx) => {
          const version = tx?.version;
          if (version !== undefined) {
            landing!.version = version;
            if (this.ours && version === this.ours.to + 1) this.ours.to = version;
            else this.ours = { from: version, to: version };
          } else this.ours = undefined;
          committed(version !== undefined);
        },
        () => {
          // The caller, awaiting the same promise, reports the error.
          this.ours = undefined;
          committed(false);
        },
      );
    });
    if (!exec || !landing) return undefined;
    release();
    const tx = await exec;
    if (tx === undefined) this.landings = this.landings.filter((l) => l !== landing);
    return tx;
  }

  /** A committed transaction's Redis time, noted to size the next ones. */
  private committedMs(tx: Committed, events: number): number {
    this.noteCost(tx.redisMs, events);
    return tx.redisMs;
  }

  /** Runs a WATCH … EXEC section on the writer connection, after the ones before it. */
  private writerSection<T>(section: () => Promise<T>): Promise<T> {
    const turn = this.writerTurn;
    let done!: () => void;
    this.writerTurn = new Promise<void>((r) => (done = r));
    return turn.then(section).finally(done);
  }

  /**
   * MULTI, TIME, the writes, INCR version, TIME, EXEC: the new version and how long Redis spent
   * executing it (by its own clock), or undefined if a watched key changed. Sent only on the
   * connection whose WATCH it relies on. Then WATCH and GET the version for the next one: it
   * saves that one a round trip, and its GET tells whether anybody wrote in between.
   */
  private async transaction(writes: RespWriter, connection: number): Promise<Committed | undefined> {
    const v = this.keys.version;
    const sent = this.writer.send([["MULTI"], ["TIME"], writes, ["INCR", v], ["TIME"], ["EXEC"], ["WATCH", v], ["GET", v]], { onConnection: connection });
    this.watched = {
      connection,
      version: sent.then(
        (r) => (r.at(-1) === null ? 0 : typeof r.at(-1) === "string" ? Number(r.at(-1)) : undefined),
        () => undefined,
      ),
    };
    const replies = await sent;
    return execResult(replies.slice(0, -2));
  }

  /** Reads what a batch depends on (under WATCH of the store version when `watch`). */
  private async read(events: readonly ActivityEvent[], conn: RespConnection, watch: boolean): Promise<Snapshot> {
    const k = this.keys;
    const plans = this.views.map((view) => plan(view, events));
    const reads = new Reads();
    const snap: Snapshot = { version: 0, plans, high: -Infinity, status: new Map(), applied: new Set(), distinct: new Map(), trend: new Map(), newerRead: new Map() };
    reads.add(["GET", k.version], (r) => (snap.version = r === null ? 0 : Number(r)));
    reads.add(["GET", k.eventTimeHigh], (r) => (snap.high = r === null ? -Infinity : Number(r)));
    for (const v of this.views) {
      reads.add(["HGETALL", k.windows(v.entity)], (r) => {
        const m = new Map<number, WindowStatus>();
        const flat = r as string[];
        for (let i = 0; i < flat.length; i += 2) m.set(Number(flat[i]), flat[i + 1] as WindowStatus);
        snap.status.set(v, m);
        this.knownWindows.set(v, m);
      });
    }
    const byBucket = new Map<number, string[]>();
    for (const e of events) {
      const b = windowStart(e.event_time, this.bucketMs);
      let ids = byBucket.get(b);
      if (!ids) byBucket.set(b, (ids = [k.seen(b)]));
      ids.push(e.event_id);
    }
    for (const ids of byBucket.values()) {
      reads.add(["HMGET", ...ids], (r) => {
        const found = r as (string | null)[];
        for (let i = 0; i < found.length; i++) if (found[i] !== null) snap.applied.add(ids[i + 1]!);
      });
    }
    for (const p of plans) {
      const aggs = p.view.aggregations;
      for (const [ws, groups] of p.byWindow) {
        const list = [...groups.values()];
        const cmd: RespArg[] = ["HMGET", k.state(p.view.entity, ws)];
        for (const g of list) cmd.push(g.entityId);
        reads.add(cmd, (r) => {
          const found = r as (string | null)[];
          for (let i = 0; i < found.length; i++) {
            if (found[i] === null) continue;
            list[i]!.state = unpack(found[i]!, p.view);
            noteNewer(p, list[i]!.entityId, ws);
          }
        });
        if (p.distinctAggs.length === 0) continue;
        const dkey = k.distinct(p.view.entity, ws);
        const fields = new Set<string>();
        for (const g of list) {
          for (let e = g.first; e !== -1; e = p.next[e]!) {
            for (const i of p.distinctAggs) {
              const v = contributionOf(aggs[i]!, events[e]!);
              if (v !== false) fields.add(distinctField(g.entityId, i, v as string));
            }
          }
        }
        const flist = [...fields];
        if (flist.length > 0) {
          reads.add(["HMGET", dkey, ...flist], (r) => {
            const found = r as (string | null)[];
            for (let i = 0; i < found.length; i++) if (found[i] !== null) distinctSet(snap.distinct, dkey).add(flist[i]!);
          });
        }
      }
      this.readNewer(reads, snap, p, this.knownWindows.get(p.view)!.keys());
    }
    const tplan = this.trendPlan(plans);
    if (tplan && events.length > 0) {
      const items = [...new Set(tplan.groupOf.map((g) => g.entityId))];
      reads.add(["HMGET", k.trend, ...items], (r) =>
        (r as (string | null)[]).forEach((x, i) => {
          if (x !== null) snap.trend.set(items[i]!, trendOf(x));
        }),
      );
    }
    await reads.run(conn, watch ? [k.version] : []);
    return snap;
  }

  /** The plan of the view that scores the trending set (none without one). */
  private trendPlan(plans: readonly ViewPlan[]): ViewPlan | undefined {
    return this.trending ? plans.find((x) => x.view === this.trending!.view) : undefined;
  }

  /**
   * Whether an older window's group is its entity's newest: reads the entity in the view's newer
   * windows (events out of order within the watermark).
   */
  private readNewer(into: Reads, snap: Snapshot, p: ViewPlan, windows: Iterable<number>): void {
    const all = new Set([...windows, ...p.byWindow.keys()]);
    if (all.size < 2) return; // one window: no group is older than another's
    for (const ws of all) {
      const key = this.keys.state(p.view.entity, ws);
      const here = p.byWindow.get(ws);
      let read = snap.newerRead.get(key);
      const older: string[] = [];
      for (const [bws, groups] of p.byWindow) {
        if (bws >= ws) continue;
        for (const id of groups.keys()) {
          if (here?.has(id) || read?.has(id)) continue;
          if (!read) snap.newerRead.set(key, (read = new Set()));
          read.add(id);
          older.push(id);
        }
      }
      if (older.length === 0) continue;
      into.add(["HMGET", key, ...older], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && noteNewer(p, older[i]!, ws)));
    }
  }

  /** What the batch does, from its snapshot: counts, the writes, and what they set. */
  private async compute(events: readonly ActivityEvent[], snap: Snapshot, now: number, conn: RespConnection): Promise<Computed> {
    const k = this.keys;
    const { plans, status } = snap;
    // A window that appeared since the previous batch may hold an older group's newer state.
    const late = new Reads();
    for (const p of plans) this.readNewer(late, snap, p, status.get(p.view)!.keys());
    await late.run(conn, []);

    const counts: Record<string, ViewCounts> = {};
    for (const p of plans) {
      counts[p.view.entity] = p.counts;
      // Lateness is judged against the watermark before the batch, so per window.
      const watermark = watermarkOf(p.view, snap.high);
      const st = status.get(p.view)!;
      for (const [ws, groups] of p.byWindow) {
        const s = st.get(ws);
        const refused = isWindowClosed(ws + p.view.windowMs, watermark) || (s !== undefined && s !== "open");
        for (const g of groups.values()) g.late = refused;
      }
    }
    const writeSet: WriteSet = { high: snap.high, opened: new Map(), marks: new Set(), plans, distinct: new Map(), trend: new Map() };
    const marks = new Map<number, string[]>();
    const trendEvents = new Map<string, ActivityEvent[]>();
    const tplan = this.trendPlan(plans);
    const weights = this.trending?.spec.weights ?? {};
    let high = snap.high;
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      if (e.event_time > high) high = e.event_time;
      const duplicate = snap.applied.has(e.event_id) || writeSet.marks.has(e.event_id);
      let any = false;
      for (const p of plans) {
        const g = p.groupOf[i]!;
        if (g.late) p.counts.late++;
        else if (duplicate) p.counts.duplicates++;
        else {
          p.counts.applied++;
          any = true;
          p.applied[i] = 1;
          g.changed = true;
          if (p === tplan && weights[e.event_type]) {
            let t = trendEvents.get(g.entityId);
            if (!t) trendEvents.set(g.entityId, (t = []));
            t.push(e);
          }
        }
      }
      if (any) {
        writeSet.marks.add(e.event_id);
        const b = windowStart(e.event_time, this.bucketMs);
        let list = marks.get(b);
        if (!list) marks.set(b, (list = []));
        list.push(e.event_id);
      }
    }

    const w = new RespWriter(this.writeBytes);
    for (const [b, ids] of marks) {
      const key = k.seen(b);
      w.command(2 + 2 * ids.length).raw(HSET).string(key);
      for (const id of ids) w.string(id).raw(ONE);
      w.raw(PEXPIRE, 1).string(key).raw(this.openTtl);
    }
    const nowBytes = encodeArgs(now);
    for (const p of plans) {
      const view = p.view;
      for (const [ws, groups] of p.byWindow) {
        const dkey = k.distinct(view.entity, ws);
        let known = snap.distinct.get(dkey);
        const added: string[] = [];
        let entityId = "";
        const isNewValue = (i: number, value: string): boolean => {
          const f = distinctField(entityId, i, value);
          if (known?.has(f)) return false;
          (known ??= distinctSet(snap.distinct, dkey)).add(f);
          added.push(f);
          return true;
        };
        const changed: Group[] = [];
        for (const g of groups.values()) {
          if (!g.changed) continue;
          const s = (g.state ??= emptyState(view));
          entityId = g.entityId;
          for (let e = g.first; e !== -1; e = p.next[e]!) if (p.applied[e]) foldEvent(view, s, events[e]!, isNewValue);
          changed.push(g);
        }
        if (changed.length === 0) continue;
        const stateKey = k.state(view.entity, ws);
        w.command(2 + 2 * changed.length).raw(HSET).string(stateKey);
        for (const g of changed) pack(w.string(g.entityId), g.state!);
        w.raw(PEXPIRE, 1).string(stateKey).raw(this.openTtl);
        if (added.length > 0) {
          writeSet.distinct.set(dkey, added);
          w.command(2 + 2 * added.length).raw(HSET).string(dkey);
          for (const f of added) w.string(f).raw(ONE);
          w.raw(PEXPIRE, 1).string(dkey).raw(this.openTtl);
        }
        if (!status.get(view)!.has(ws)) {
          w.args(["HSET", k.windows(view.entity), ws, "open"]);
          let opened = writeSet.opened.get(view);
          if (!opened) writeSet.opened.set(view, (opened = new Set()));
          opened.add(ws);
        }
        // The public hash shows the entity's newest window: an older one still open (events out
        // of order within the watermark) updates its state but leaves the hash alone.
        const window = [encodeArgs(ws), encodeArgs(ws + view.windowMs)] as const;
        for (const g of changed) if (!g.newer) this.publicWrites(w, view, g.entityId, window, g.state!, nowBytes);
      }
    }
    if (this.trending) this.trendWrites(w, trendEvents, snap.trend, writeSet.trend);
    if (high > snap.high) w.args(["SET", k.eventTimeHigh, high]);
    writeSet.high = high;
    this.writeBytes = Math.max(64 * 1024, w.bytes.length);
    return { counts, high, writes: w, writeSet };
  }

  /**
   * Writes an entity's public hash (its newest window's features and when they were computed)
   * and its TTL, from the view's pre-encoded template: these are most of the bytes a batch sends.
   */
  private publicWrites(w: RespWriter, view: FeatureView, entityId: string, window: readonly [Buffer, Buffer], s: StateValues, now: Buffer): void {
    const t = this.templates.get(view)!;
    const key = this.publicKey(view, entityId);
    const f = featureValues(view, s, this.featureScratch);
    w.raw(t.head, 1).string(key);
    for (let i = 0; i < f.length; i++) w.raw(t.fields[i]!).number(f[i]!);
    const p = PUBLIC_FIELDS;
    w.raw(p.windowStart).raw(window[0]).raw(p.windowEnd).raw(window[1]).raw(p.eventCount).number(s[0]!).raw(p.featureTime).number(s[1]!).raw(p.updatedAt).raw(now);
    w.raw(PEXPIRE, 1).string(key).raw(this.featureTtl);
  }

  /** `user_features:{id}` or `item_features:{id}`. */
  private publicKey(view: FeatureView, entityId: string): string {
    return view.entity === "user" ? this.names.userFeaturesKey(entityId) : this.names.itemFeaturesKey(entityId);
  }

  /** Each item's decayed activity with the batch's events, and its trending score. */
  private trendWrites(w: RespWriter, byItem: Map<string, ActivityEvent[]>, before: Map<string, [number, number]>, after: Map<string, [number, number]>): void {
    if (byItem.size === 0) return;
    const { spec } = this.trending!;
    const H = spec.halfLifeMs;
    let ranked = 0;
    w.command(2 + 2 * byItem.size).raw(HSET).string(this.keys.trend);
    for (const [item, evs] of byItem) {
      let [s, ref] = before.get(item) ?? [0, -Infinity];
      for (const e of evs) {
        const weight = spec.weights[e.event_type]!;
        // Kept relative to the newest event time seen (ref), so it never overflows and the
        // result does not depend on arrival order.
        if (ref === -Infinity) {
          s = weight;
          ref = e.event_time;
        } else if (e.event_time > ref) {
          s = s * 2 ** (-(e.event_time - ref) / H) + weight;
          ref = e.event_time;
        } else s += weight * 2 ** (-(ref - e.event_time) / H);
      }
      const value = w.string(item).beginValue();
      w.valueNumber(s).valueAscii(" ").valueNumber(ref).endValue(value);
      after.set(item, [s, ref]);
      if (s > 0) ranked++;
    }
    if (ranked === 0) return;
    // log2 of the activity decayed to the epoch: items compare like their activity at any
    // common instant, and more activity only raises a score, so ZADD GT is order-free.
    w.command(3 + 2 * ranked).string("ZADD").string(this.names.trendingKey).string("GT");
    for (const [item, [s, ref]] of after) if (s > 0) w.number(ref / H + Math.log2(s)).string(item);
    w.args(["ZREMRANGEBYRANK", this.names.trendingKey, 0, -(spec.maxItems + 1)]);
  }

  /** The newest event time any worker has seen (−∞ before the first event). */
  async eventTimeHigh(): Promise<number> {
    const v = await this.redis.get(this.keys.eventTimeHigh);
    return v === null ? -Infinity : Number(v);
  }

  /** A view's windows and their status. */
  private async windows(view: FeatureView): Promise<Map<number, WindowStatus>> {
    const h = await this.redis.hgetall(this.keys.windows(view.entity));
    return new Map(Object.entries(h).map(([ws, s]) => [Number(ws), s as WindowStatus]));
  }

  /**
   * Closes the view's windows that the watermark has passed: refuses further events for each,
   * hands its final rows to `publish` (in chunks; the rows carry ids that make a repeat harmless),
   * then forgets its state. Returns the number of rows published. A close cut short is finished
   * by the next call, here or in another worker.
   */
  async closeDue(view: FeatureView, high: number, publish: (rows: ClosedWindow[]) => Promise<void>, chunk = 1000): Promise<number> {
    const watermark = watermarkOf(view, high);
    if (!Number.isFinite(watermark)) return 0;
    const k = this.keys;
    let rows = 0;
    const windows = await this.windows(view);
    const due = [...windows].filter(([ws, s]) => s !== "published" && isWindowClosed(ws + view.windowMs, watermark)).map(([ws]) => ws).sort((a, b) => a - b);
    for (const ws of due) {
      // From here on every writer sees the window closed: a batch that read it open fails its EXEC.
      await this.redis.multi().hset(k.windows(view.entity), String(ws), "closed").incr(k.version).exec();
      let cursor = "0";
      do {
        const [next, flat] = await this.redis.hscan(k.state(view.entity, ws), cursor, "COUNT", chunk);
        cursor = next;
        const out: ClosedWindow[] = [];
        for (let i = 0; i < flat.length; i += 2) {
          const state = unpack(flat[i + 1]!, view);
          out.push({ view, entityId: flat[i]!, windowStart: ws, windowEnd: ws + view.windowMs, features: featuresOf(view, state), eventCount: state[0]! || 0 });
        }
        if (out.length > 0) await publish(out);
        rows += out.length;
      } while (cursor !== "0");
      await this.redis
        .multi()
        .hset(k.windows(view.entity), String(ws), "published")
        .del(k.state(view.entity, ws), k.distinct(view.entity, ws), ...this.spentMarkers([ws], view, high))
        .incr(k.version)
        .exec();
    }
    await this.forget(view, windows, high);
    return rows;
  }

  /**
   * The applied-event marker buckets within these windows of a view that no view can apply an
   * event of any more (every view's window around them closed). Dropped when a window is
   * published, and again when it is forgotten (for a view that closed last without a window there).
   */
  private spentMarkers(windows: readonly number[], view: FeatureView, high: number): string[] {
    const closedByAll = (b: number) => this.views.every((v) => isWindowClosed(windowStart(b, v.windowMs) + v.windowMs, watermarkOf(v, high)));
    const out: string[] = [];
    for (const ws of windows) {
      for (let b = windowStart(ws, this.bucketMs); b < ws + view.windowMs; b += this.bucketMs) if (closedByAll(b)) out.push(this.keys.seen(b));
    }
    return out;
  }

  /** Drops what no event can need any more: old window entries (and their markers), stale trend activity. */
  private async forget(view: FeatureView, windows: Map<number, WindowStatus>, high: number): Promise<void> {
    const k = this.keys;
    const watermark = watermarkOf(view, high);
    const old = [...windows].filter(([ws, s]) => s === "published" && ws + view.windowMs <= watermark - this.opts.closedWindowTtlMs).map(([ws]) => ws);
    if (old.length > 0) {
      const markers = this.spentMarkers(old, view, high);
      const tx = this.redis.multi().hdel(k.windows(view.entity), ...old.map(String));
      if (markers.length > 0) tx.del(...markers);
      await tx.incr(k.version).exec();
    }
    if (this.trending?.view === view && this.opts.trendTtlMs > 0 && old.length > 0) {
      let cursor = "0";
      do {
        const [next, flat] = await this.redis.hscan(k.trend, cursor, "COUNT", 1000);
        cursor = next;
        const stale: string[] = [];
        for (let i = 0; i < flat.length; i += 2) if (trendOf(flat[i + 1]!)[1] + this.opts.trendTtlMs < high) stale.push(flat[i]!);
        if (stale.length > 0) await this.redis.multi().hdel(k.trend, ...stale).zrem(this.names.trendingKey, ...stale).incr(k.version).exec();
      } while (cursor !== "0");
    }
  }

  /** An entity's public feature hash as numbers (for tests and tools; the server reads its own way). */
  async readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined> {
    const h = await this.redis.hgetall(this.publicKey(view, entityId));
    if (Object.keys(h).length === 0) return undefined;
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }
}

/** Reads sent in one round trip (after a WATCH, when given keys to watch). */
class Reads {
  private readonly list: { cmd: RespCommand; use(reply: RespReply): void }[] = [];

  add(cmd: RespCommand, use: (reply: RespReply) => void): void {
    this.list.push({ cmd, use });
  }

  async run(conn: RespConnection, watch: readonly string[]): Promise<void> {
    if (this.list.length === 0) return;
    const head: RespCommand[] = watch.length > 0 ? [["WATCH", ...watch]] : [];
    const replies = await conn.send([...head, ...this.list.map((r) => r.cmd)]);
    throwIfError(replies, "reading the window state");
    this.list.forEach((r, i) => r.use(replies[i + head.length]!));
  }
}

/** The outcome of computing a batch. */
interface Computed {
  counts: Record<string, ViewCounts>;
  high: number;
  writes: RespWriter;
  writeSet: WriteSet;
}

/** The entity has state in window ws: its groups in older windows are not its newest. */
function noteNewer(p: ViewPlan, entityId: string, ws: number): void {
  for (const [at, groups] of p.byWindow) {
    if (at >= ws) continue;
    const g = groups.get(entityId);
    if (g) g.newer = true;
  }
}

/** An item's trend activity as stored ("s r", trendWrites): decayed activity s as of event time r. */
function trendOf(value: string): [number, number] {
  const sp = value.indexOf(" ");
  return [Number(value.slice(0, sp)), Number(value.slice(sp + 1))];
}

function distinctSet(values: DistinctValues, dkey: string): Set<string> {
  let set = values.get(dkey);
  if (!set) values.set(dkey, (set = new Set()));
  return set;
}

/**
 * Completes a snapshot with what one of our batches wrote, in case the reads ran before it
 * landed. Idempotent (the writes are values, not increments), so applying one that the reads
 * already saw changes nothing.
 */
function overlay(snap: Snapshot, w: WriteSet, events: readonly ActivityEvent[]): void {
  if (w.high > snap.high) snap.high = w.high;
  for (const [view, opened] of w.opened) {
    const st = snap.status.get(view)!;
    for (const ws of opened) if (!st.has(ws)) st.set(ws, "open");
  }
  for (const e of events) if (w.marks.has(e.event_id)) snap.applied.add(e.event_id);
  for (let v = 0; v < snap.plans.length; v++) {
    const p = snap.plans[v]!;
    for (const [ws, theirs] of w.plans[v]!.byWindow) {
      const groups = p.byWindow.get(ws);
      for (const g of theirs.values()) {
        if (!g.changed) continue;
        const mine = groups?.get(g.entityId);
        if (mine) mine.state = g.state!.slice();
        noteNewer(p, g.entityId, ws);
      }
    }
  }
  for (const [dkey, fields] of w.distinct) {
    const set = distinctSet(snap.distinct, dkey);
    for (const f of fields) set.add(f);
  }
  for (const [item, t] of w.trend) snap.trend.set(item, t);
}

/** A transaction that landed: the store version it made, and its Redis time. */
interface Committed {
  version: number;
  redisMs: number;
}

/**
 * The store version after a MULTI TIME … INCR version TIME EXEC and the time between its two
 * TIMEs, or undefined if EXEC refused it (WATCH).
 */
function execResult(replies: readonly RespReply[]): Committed | undefined {
  const exec = replies[replies.length - 1]!;
  if (exec === null) return undefined;
  if (exec instanceof RespError) throw new WindowStoreError(`Redis refused the feature batch: ${exec.message}`, { cause: exec });
  const results = exec as RespReply[];
  throwIfError(results, "writing the feature batch");
  const micros = (t: RespReply) => Number((t as string[])[0]) * 1e6 + Number((t as string[])[1]);
  return { version: Number(results[results.length - 2]), redisMs: (micros(results[results.length - 1]!) - micros(results[0]!)) / 1000 };
}

/** One batch's result from its sub-batches' (in order). */
function mergeResults(parts: readonly ApplyResult[]): ApplyResult {
  if (parts.length === 1) return parts[0]!;
  const counts: Record<string, ViewCounts> = {};
  let eventTimeHigh = -Infinity;
  const transactionMs: number[] = [];
  for (const p of parts) {
    for (const [entity, c] of Object.entries(p.counts)) {
      const into = (counts[entity] ??= { applied: 0, duplicates: 0, late: 0 });
      into.applied += c.applied;
      into.duplicates += c.duplicates;
      into.late += c.late;
    }
    if (p.eventTimeHigh > eventTimeHigh) eventTimeHigh = p.eventTimeHigh;
    transactionMs.push(...p.transactionMs);
  }
  return { counts, eventTimeHigh, transactionMs };
}

function distinctField(entityId: string, agg: number, value: string): string {
  return entityId + NUL + agg + NUL + value;
}

export class WindowStoreError extends Error {
  override name = "WindowStoreError";
}

/** Internal keys of the feature pipeline, all under the namespace's Redis prefix. */
export interface StoreKeys {
  windows(entity: string): string;
  state(entity: string, windowStart: number): string;
  distinct(entity: string, windowStart: number): string;
  seen(bucket: number): string;
  trend: string;
  eventTimeHigh: string;
  /** Raised by every transaction that changes feature state: how a writer knows it was alone. */
  version: string;
}

export function storeKeys(redisPrefix: string): StoreKeys {
  const base = `${redisPrefix}features:`;
  return {
    windows: (entity) => `${base}${entity}:windows`,
    state: (entity, ws) => `${base}${entity}:w:${ws}`,
    distinct: (entity, ws) => `${base}${entity}:d:${ws}`,
    seen: (bucket) => `${base}seen:${bucket}`,
    trend: `${base}trend`,
    eventTimeHigh: `${base}event_time_high`,
    version: `${base}version`,
  };
}

/** Groups a batch's events of one view by window and entity. */
function plan(view: FeatureView, events: readonly ActivityEvent[]): ViewPlan {
  const byWindow = new Map<number, Map<string, Group>>();
  const groupOf: Group[] = new Array(events.length);
  const next = new Int32Array(events.length).fill(-1);
  let multiWindow = false;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const ws = windowStart(e.event_time, view.windowMs);
    let groups = byWindow.get(ws);
    if (!groups) {
      byWindow.set(ws, (groups = new Map()));
      multiWindow = byWindow.size > 1;
    }
    const id = e[view.key];
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { entityId: id, first: i, last: i, state: undefined, late: false, changed: false, newer: false }));
    else {
      next[g.last] = i;
      g.last = i;
    }
    groupOf[i] = g;
  }
  const p: ViewPlan = { view, byWindow, groupOf, next, applied: new Uint8Array(events.length), distinctAggs: [], counts: { applied: 0, duplicates: 0, late: 0 } };
  p.distinctAggs = view.aggregations.flatMap((a, i) => (stateOp(a) === "distinct" ? [i] : []));
  // An entity with events in several windows shows the newest in its public hash.
  if (multiWindow) for (const [ws, groups] of byWindow) for (const id of groups.keys()) noteNewer(p, id, ws);
  return p;
}

/** A window's state as its Redis value: the state values, comma-separated ("" where absent). */
function pack(w: RespWriter, s: StateValues): void {
  const mark = w.beginValue();
  for (let i = 0; i < s.length; i++) {
    if (i > 0) w.valueAscii(",");
    if (s[i] === s[i]) w.valueNumber(s[i]!);
  }
  w.endValue(mark);
}

function unpack(packed: string, view: FeatureView): StateValues {
  const out = emptyState(view);
  let from = 0;
  for (let i = 0; i < out.length && from <= packed.length; i++) {
    let to = packed.indexOf(",", from);
    if (to === -1) to = packed.length;
    if (to > from) out[i] = Number(packed.slice(from, to));
    from = to + 1;
  }
  return out;
}

function throwIfError(replies: readonly RespReply[], what: string): void {
  for (const r of replies) if (r instanceof RespError) throw new WindowStoreError(`Redis refused ${what}: ${r.message}`, { cause: r });
}
