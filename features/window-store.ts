// The window store: event-time window state, the online feature hashes and the trending set, all
// in Redis, written in ONE transaction per batch of events.
//
// A batch is two round trips on the store's own connection:
//   1. WATCH the keys the batch depends on, and read them: the newest event time, each view's
//      window list, which of the batch's event ids were already applied, the batch's entities'
//      window aggregates and distinct values, the items' trend activity.
//   2. MULTI, every write the batch implies (computed here, in the worker), EXEC.
// If another worker (or the window closer) wrote a watched key in between, EXEC does nothing and
// the batch is read and computed again. So:
// - Exactly once: an event id's marker is written in the same transaction as its effect; a
//   redelivered or republished event finds its marker and changes nothing. A kill -9 anywhere
//   leaves either all of a batch's writes or none.
// - Several workers on one consumer produce what one does: every batch is computed from the state
//   it commits on top of. (They share the work; Redis, single-threaded, is what bounds them.)
// - Redis does only plain hash, sorted-set and string commands, no Lua: on our machines a Lua
//   script spends ~4 µs more per redis.call than the same command sent natively, and Redis is the
//   bound of the whole pipeline (bench/features.ts: Redis CPU per event).
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
import { numberString, RespConnection, RespError, type RespCommand, type RespReply } from "../lib/resp.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { contributions, featuresOf, foldEvent, isWindowClosed, stateFields, stateOp, watermarkOf, windowStart, type Contribution, type WindowState } from "./windows.js";

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
}

export const DEFAULT_WINDOW_STORE_OPTIONS: Readonly<Required<Omit<WindowStoreOptions, "trendTtlMs">>> = Object.freeze({
  featureTtlMs: 3_600_000,
  openWindowTtlMs: 7 * 24 * 3_600_000,
  closedWindowTtlMs: 3_600_000,
});

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
  /** Times the batch was computed again because another writer committed first. */
  retries: number;
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
  view: FeatureView;
  entityId: string;
  windowStart: number;
  events: ActivityEvent[];
  /** Each event's contributions to the view's aggregations (windows.ts), computed once. */
  contributions: Contribution[][];
  /** The window's state before the batch (undefined: none); folded in place. */
  state?: (number | undefined)[];
}

interface ViewPlan {
  view: FeatureView;
  /** window start → entity id → group */
  byWindow: Map<number, Map<string, Group>>;
  /** Indexes of the view's distinct-count aggregations. */
  distinctAggs: number[];
}

const NUL = "\u0000";

export class WindowStore {
  readonly keys: StoreKeys;
  private readonly opts: Required<WindowStoreOptions>;
  private readonly writer: RespConnection;
  private readonly views: readonly FeatureView[];
  /** Windows each view had at the last read: which newer windows to read an entity's state from. */
  private readonly knownWindows = new Map<FeatureView, Map<number, WindowStatus>>();
  private readonly bucketMs: number;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly featureTtl: string;

  /**
   * @param redis for the window closer and readers (ioredis)
   * @param redisUrl the writer's own connection: WATCH state belongs to a connection
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
    this.bucketMs = Math.min(...views.map((v) => v.windowMs));
    this.featureTtl = numberString(this.opts.featureTtlMs);
    for (const v of views) this.knownWindows.set(v, new Map());
  }

  close(): void {
    this.writer.close();
  }

  /**
   * Folds a batch of events into their windows, the online hashes and the trending set, exactly
   * once per event id, and raises the shared newest event time. Lateness is judged against the
   * watermark as it stood before the batch (as Spark does per micro-batch). Safe to repeat: that
   * is how a redelivered batch is handled. Batches are applied one at a time, in call order.
   */
  apply(events: readonly ActivityEvent[], now = Date.now()): Promise<ApplyResult> {
    const run = this.queue.then(async () => {
      for (let retries = 0; ; retries++) {
        const result = await this.tryApply(events, now);
        if (result) return { ...result, retries };
        // Another writer committed first: back off a little (a random bit, so two workers do
        // not collide in step) and compute again from what it wrote.
        await sleep(Math.random() * Math.min(20, 1 + retries));
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async tryApply(events: readonly ActivityEvent[], now: number): Promise<Omit<ApplyResult, "retries"> | undefined> {
    const k = this.keys;
    const plans = this.views.map((view) => plan(view, events));

    // Round trip 1: watch what the batch depends on, and read it.
    const reads = new Reads();
    let high0 = -Infinity;
    reads.add(k.eventTimeHigh, ["GET", k.eventTimeHigh], (r) => (high0 = r === null ? -Infinity : Number(r)));
    const status = new Map<FeatureView, Map<number, WindowStatus>>();
    for (const v of this.views) {
      reads.add(k.windows(v.entity), ["HGETALL", k.windows(v.entity)], (r) => {
        const m = new Map<number, WindowStatus>();
        const flat = r as string[];
        for (let i = 0; i < flat.length; i += 2) m.set(Number(flat[i]), flat[i + 1] as WindowStatus);
        status.set(v, m);
        this.knownWindows.set(v, m);
      });
    }
    const applied = new Set<string>(); // event ids applied before this batch
    const byBucket = new Map<number, Set<string>>();
    for (const e of events) {
      const b = windowStart(e.event_time, this.bucketMs);
      let set = byBucket.get(b);
      if (!set) byBucket.set(b, (set = new Set()));
      set.add(e.event_id);
    }
    for (const [b, set] of byBucket) {
      const ids = [...set];
      reads.add(k.seen(b), ["HMGET", k.seen(b), ...ids], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && applied.add(ids[i]!)));
    }
    // entity → the newest window it has state in (this batch's windows, and newer ones it read)
    const newest = new Map<string, number>();
    const noteState = (view: FeatureView, entityId: string, ws: number) => {
      const key = view.entity + NUL + entityId;
      if ((newest.get(key) ?? -Infinity) < ws) newest.set(key, ws);
    };
    const distinctSeen = new Set<string>(); // distinct key NUL field
    for (const p of plans) {
      const n = stateFields(p.view).length;
      for (const [ws, groups] of p.byWindow) {
        const list = [...groups.values()];
        reads.add(k.state(p.view.entity, ws), ["HMGET", k.state(p.view.entity, ws), ...list.map((g) => g.entityId)], (r) =>
          (r as (string | null)[]).forEach((x, i) => {
            if (x === null) return;
            list[i]!.state = unpack(x, n);
            noteState(p.view, list[i]!.entityId, ws);
          }),
        );
        if (p.distinctAggs.length === 0) continue;
        const dkey = k.distinct(p.view.entity, ws);
        const fields = new Set<string>();
        for (const g of list) for (const c of g.contributions) for (const i of p.distinctAggs) {
          if (c[i] !== false) fields.add(distinctField(g.entityId, i, String(c[i])));
        }
        const flist = [...fields];
        if (flist.length > 0) reads.add(dkey, ["HMGET", dkey, ...flist], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && distinctSeen.add(dkey + NUL + flist[i]!)));
      }
    }
    // Whether an older window's group is its entity's newest: read the entity in the view's newer
    // windows (events out of order within the watermark). Which windows exist is known from the
    // previous batch; one that appeared since is read in an extra step below.
    const newerRead = new Set<string>(); // state key NUL entity id
    const readNewer = (into: Reads, p: ViewPlan, windows: Iterable<number>) => {
      for (const ws of new Set([...windows, ...p.byWindow.keys()])) {
        const key = k.state(p.view.entity, ws);
        const here = p.byWindow.get(ws);
        const older = new Set<string>();
        for (const [bws, groups] of p.byWindow) {
          if (bws >= ws) continue;
          for (const id of groups.keys()) if (!here?.has(id) && !newerRead.has(key + NUL + id)) older.add(id);
        }
        if (older.size === 0) continue;
        const list = [...older];
        for (const id of list) newerRead.add(key + NUL + id);
        into.add(key, ["HMGET", key, ...list], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && noteState(p.view, list[i]!, ws)));
      }
    };
    for (const p of plans) readNewer(reads, p, this.knownWindows.get(p.view)!.keys());
    const trendBefore = new Map<string, [number, number]>();
    const tplan = this.trending ? plans.find((x) => x.view === this.trending!.view) : undefined;
    if (tplan) {
      const items = [...new Set([...tplan.byWindow.values()].flatMap((m) => [...m.keys()]))];
      reads.add(k.trend, ["HMGET", k.trend, ...items], (r) =>
        (r as (string | null)[]).forEach((x, i) => {
          if (x === null) return;
          const [s, ref] = x.split(" ");
          trendBefore.set(items[i]!, [Number(s), Number(ref)]);
        }),
      );
    }
    await reads.run(this.writer);
    const late = new Reads();
    for (const p of plans) readNewer(late, p, status.get(p.view)!.keys());
    await late.run(this.writer);

    // Compute, here.
    const counts: Record<string, ViewCounts> = {};
    for (const v of this.views) counts[v.entity] = { applied: 0, duplicates: 0, late: 0 };
    const appliedNow = new Set<string>();
    const marks = new Map<number, string[]>();
    const folded = new Map<Group, number[]>(); // group → indexes of its events applied now
    const trendEvents = new Map<string, ActivityEvent[]>();
    let high1 = high0;
    for (const e of events) {
      if (e.event_time > high1) high1 = e.event_time;
      let any = false;
      for (const p of plans) {
        const c = counts[p.view.entity]!;
        const ws = windowStart(e.event_time, p.view.windowMs);
        const st = status.get(p.view)!.get(ws);
        if (isWindowClosed(ws + p.view.windowMs, watermarkOf(p.view, high0)) || (st !== undefined && st !== "open")) {
          c.late++;
        } else if (applied.has(e.event_id) || appliedNow.has(e.event_id)) {
          c.duplicates++;
        } else {
          c.applied++;
          any = true;
          const g = p.byWindow.get(ws)!.get(e[p.view.key])!;
          let list = folded.get(g);
          if (!list) folded.set(g, (list = []));
          list.push(g.events.indexOf(e, list.length > 0 ? list[list.length - 1]! + 1 : 0));
          if (p === tplan && this.trending!.spec.weights[e.event_type]) {
            let t = trendEvents.get(g.entityId);
            if (!t) trendEvents.set(g.entityId, (t = []));
            t.push(e);
          }
        }
      }
      if (any) {
        appliedNow.add(e.event_id);
        const b = windowStart(e.event_time, this.bucketMs);
        let list = marks.get(b);
        if (!list) marks.set(b, (list = []));
        list.push(e.event_id);
      }
    }

    const writes: RespCommand[] = [];
    const openTtl = numberString(this.opts.openWindowTtlMs);
    for (const [b, ids] of marks) {
      const cmd: RespArgList = ["HSET", k.seen(b)];
      for (const id of ids) cmd.push(id, "1");
      writes.push(cmd, ["PEXPIRE", k.seen(b), openTtl]);
    }
    const nowStr = numberString(now);
    for (const p of plans) {
      const view = p.view;
      const fields = stateFields(view);
      for (const [ws, groups] of p.byWindow) {
        const stateKey = k.state(view.entity, ws);
        const dkey = k.distinct(view.entity, ws);
        const stateWrites: RespArgList = ["HSET", stateKey];
        const distinctWrites: RespArgList = ["HSET", dkey];
        const changed: Group[] = [];
        for (const g of groups.values()) {
          const applied = folded.get(g);
          if (!applied) continue;
          const s = (g.state ??= new Array<number | undefined>(fields.length).fill(undefined));
          for (const j of applied) {
            foldEvent(view, s, g.events[j]!.event_time, g.contributions[j]!, (i, value) => {
              const field = distinctField(g.entityId, i, value);
              if (distinctSeen.has(dkey + NUL + field)) return false;
              distinctSeen.add(dkey + NUL + field);
              distinctWrites.push(field, "1");
              return true;
            });
          }
          stateWrites.push(g.entityId, pack(s));
          noteState(view, g.entityId, ws);
          changed.push(g);
        }
        if (changed.length === 0) continue;
        writes.push(stateWrites, ["PEXPIRE", stateKey, openTtl]);
        if (distinctWrites.length > 2) writes.push(distinctWrites, ["PEXPIRE", dkey, openTtl]);
        if (!status.get(view)!.has(ws)) writes.push(["HSET", k.windows(view.entity), ws, "open"]);
        // The public hash shows the entity's newest window: an older one still open (events out
        // of order within the watermark) updates its state but leaves the hash alone.
        const window = [numberString(ws), numberString(ws + view.windowMs)] as const;
        for (const g of changed) {
          if (newest.get(view.entity + NUL + g.entityId)! > ws) continue;
          this.publicWrites(writes, view, g.entityId, window, toState(fields, g.state!), nowStr);
        }
      }
    }
    if (this.trending) writes.push(...this.trendWrites(trendEvents, trendBefore));
    if (high1 > high0) writes.push(["SET", k.eventTimeHigh, high1]);

    const result = { counts, eventTimeHigh: high1 };
    if (writes.length === 0) {
      await this.writer.send([["UNWATCH"]]);
      return result;
    }
    // Round trip 2: the transaction. EXEC answers null when a watched key changed since its WATCH.
    const replies = await this.writer.send([["MULTI"], ...writes, ["EXEC"]]);
    const exec = replies[replies.length - 1]!;
    if (exec === null) return undefined;
    if (exec instanceof RespError) throw new WindowStoreError(`Redis refused the feature batch: ${exec.message}`, { cause: exec });
    throwIfError(exec as RespReply[], "writing the feature batch");
    return result;
  }

  /** Writes an entity's public hash: its newest window's features and when they were computed. */
  private publicWrites(out: RespCommand[], view: FeatureView, entityId: string, window: readonly [string, string], state: WindowState, now: string): void {
    const f = featuresOf(view, state);
    const key = view.entity === "user" ? this.names.userFeaturesKey(entityId) : this.names.itemFeaturesKey(entityId);
    const hash: RespArgList = ["HSET", key];
    for (const name in f) hash.push(name, f[name]!);
    hash.push("window_start", window[0], "window_end", window[1], "event_count", state.n ?? 0, "feature_time", state.t ?? 0, "updated_at", now);
    out.push(hash, ["PEXPIRE", key, this.featureTtl]);
  }

  /** Each item's decayed activity with the batch's events, and its trending score. */
  private trendWrites(byItem: Map<string, ActivityEvent[]>, before: Map<string, [number, number]>): RespCommand[] {
    const { spec } = this.trending!;
    const H = spec.halfLifeMs;
    const activity: RespArgList = [];
    const ranked: RespArgList = [];
    for (const [item, evs] of byItem) {
      let [s, ref] = before.get(item) ?? [0, -Infinity];
      for (const e of evs) {
        const w = spec.weights[e.event_type]!;
        // Kept relative to the newest event time seen (ref), so it never overflows and the
        // result does not depend on arrival order.
        if (ref === -Infinity) {
          s = w;
          ref = e.event_time;
        } else if (e.event_time > ref) {
          s = s * 2 ** (-(e.event_time - ref) / H) + w;
          ref = e.event_time;
        } else s += w * 2 ** (-(ref - e.event_time) / H);
      }
      activity.push(item, `${s} ${ref}`);
      // log2 of the activity decayed to the epoch: items compare like their activity at any
      // common instant, and more activity only raises a score, so ZADD GT is order-free.
      if (s > 0) ranked.push(ref / H + Math.log2(s), item);
    }
    const out: RespCommand[] = [];
    if (activity.length > 0) out.push(["HSET", this.keys.trend, ...activity]);
    if (ranked.length > 0) out.push(["ZADD", this.names.trendingKey, "GT", ...ranked], ["ZREMRANGEBYRANK", this.names.trendingKey, 0, -(spec.maxItems + 1)]);
    return out;
  }

  /** The newest event time any worker has seen (−∞ before the first event). */
  async eventTimeHigh(): Promise<number> {
    const v = await this.redis.get(this.keys.eventTimeHigh);
    return v === null ? -Infinity : Number(v);
  }

  /** A view's windows and their status. */
  async windows(view: FeatureView): Promise<Map<number, WindowStatus>> {
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
    const fields = stateFields(view);
    for (const ws of due) {
      // From here on every writer sees the window closed: a batch that read it open fails its EXEC.
      await this.redis.hset(k.windows(view.entity), String(ws), "closed");
      let cursor = "0";
      do {
        const [next, flat] = await this.redis.hscan(k.state(view.entity, ws), cursor, "COUNT", chunk);
        cursor = next;
        const out: ClosedWindow[] = [];
        for (let i = 0; i < flat.length; i += 2) {
          const state = toState(fields, unpack(flat[i + 1]!, fields.length));
          out.push({ view, entityId: flat[i]!, windowStart: ws, windowEnd: ws + view.windowMs, features: featuresOf(view, state), eventCount: state.n ?? 0 });
        }
        if (out.length > 0) await publish(out);
        rows += out.length;
      } while (cursor !== "0");
      await this.redis.multi().hset(k.windows(view.entity), String(ws), "published").del(k.state(view.entity, ws), k.distinct(view.entity, ws)).exec();
    }
    await this.forget(view, windows, high);
    return rows;
  }

  /** Drops what no event can need any more: old window entries, applied-event markers, stale trend activity. */
  private async forget(view: FeatureView, windows: Map<number, WindowStatus>, high: number): Promise<void> {
    const k = this.keys;
    const watermark = watermarkOf(view, high);
    const old = [...windows].filter(([ws, s]) => s === "published" && ws + view.windowMs <= watermark - this.opts.closedWindowTtlMs).map(([ws]) => String(ws));
    if (old.length > 0) await this.redis.hdel(k.windows(view.entity), ...old);
    // A marker bucket is needed while any view may still apply its events.
    const closedByAll = (b: number) => this.views.every((v) => isWindowClosed(windowStart(b, v.windowMs) + v.windowMs, watermarkOf(v, high)));
    const buckets: string[] = [];
    for (const [ws] of windows) {
      for (let b = windowStart(ws, this.bucketMs); b < ws + view.windowMs; b += this.bucketMs) if (closedByAll(b)) buckets.push(k.seen(b));
    }
    if (buckets.length > 0) await this.redis.del(...buckets);
    if (this.trending?.view === view && this.opts.trendTtlMs > 0 && old.length > 0) {
      let cursor = "0";
      do {
        const [next, flat] = await this.redis.hscan(k.trend, cursor, "COUNT", 1000);
        cursor = next;
        const stale: string[] = [];
        for (let i = 0; i < flat.length; i += 2) if (Number(flat[i + 1]!.split(" ")[1]) + this.opts.trendTtlMs < high) stale.push(flat[i]!);
        if (stale.length > 0) await this.redis.multi().hdel(k.trend, ...stale).zrem(this.names.trendingKey, ...stale).exec();
      } while (cursor !== "0");
    }
  }

  /** An entity's public feature hash as numbers (for tests and tools; the server reads its own way). */
  async readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined> {
    const key = view.entity === "user" ? this.names.userFeaturesKey(entityId) : this.names.itemFeaturesKey(entityId);
    const h = await this.redis.hgetall(key);
    if (Object.keys(h).length === 0) return undefined;
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }
}

type RespArgList = (string | number)[];

/** Reads sent in one round trip after a WATCH of the keys they read. */
class Reads {
  private readonly keys = new Set<string>();
  private readonly list: { cmd: RespCommand; use(reply: RespReply): void }[] = [];

  add(key: string, cmd: RespCommand, use: (reply: RespReply) => void): void {
    this.keys.add(key);
    this.list.push({ cmd, use });
  }

  async run(conn: RespConnection): Promise<void> {
    if (this.list.length === 0) return;
    const replies = await conn.send([["WATCH", ...this.keys], ...this.list.map((r) => r.cmd)]);
    throwIfError(replies, "reading the window state");
    this.list.forEach((r, i) => r.use(replies[i + 1]!));
  }
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
  };
}

/** Groups a batch's events of one view by window and entity. */
function plan(view: FeatureView, events: readonly ActivityEvent[]): ViewPlan {
  const byWindow = new Map<number, Map<string, Group>>();
  for (const e of events) {
    const ws = windowStart(e.event_time, view.windowMs);
    let groups = byWindow.get(ws);
    if (!groups) byWindow.set(ws, (groups = new Map()));
    const id = e[view.key];
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { view, entityId: id, windowStart: ws, events: [], contributions: [] }));
    g.events.push(e);
    g.contributions.push(contributions(view, e));
  }
  const distinctAggs = view.aggregations.flatMap((a, i) => (stateOp(a) === "distinct" ? [i] : []));
  return { view, byWindow, distinctAggs };
}

function pack(s: readonly (number | undefined)[]): string {
  let out = s[0] === undefined ? "" : numberString(s[0]);
  for (let i = 1; i < s.length; i++) out += s[i] === undefined ? "," : "," + numberString(s[i]!);
  return out;
}

function unpack(packed: string, n: number): (number | undefined)[] {
  const parts = packed.split(",");
  const out = new Array<number | undefined>(n);
  for (let i = 0; i < n; i++) out[i] = parts[i] === undefined || parts[i] === "" ? undefined : Number(parts[i]);
  return out;
}

function toState(fields: readonly string[], s: readonly (number | undefined)[]): WindowState {
  const state: Record<string, number | undefined> = {};
  fields.forEach((f, i) => (state[f] = s[i]));
  return state;
}

function throwIfError(replies: readonly RespReply[], what: string): void {
  for (const r of replies) if (r instanceof RespError) throw new WindowStoreError(`Redis refused ${what}: ${r.message}`, { cause: r });
}
