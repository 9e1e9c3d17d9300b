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
import { bulk, commandHeader, numberString, RespConnection, RespError, type RespCommand, type RespReply } from "../lib/resp.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { contributions, featureNames, featuresOf, foldEvent, isWindowClosed, stateFields, stateOp, watermarkOf, windowStart, type Contribution, type WindowState } from "./windows.js";

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
  entityId: string;
  events: ActivityEvent[];
  /** Each event's contributions to the view's aggregations (windows.ts), computed once. */
  contributions: Contribution[][];
  /** The window's state before the batch (undefined: none); folded in place. */
  state?: (number | undefined)[];
}

interface ViewPlan {
  view: FeatureView;
  /** The batch's entities of this view. */
  entities: Set<string>;
  /** window start → entity id → group */
  byWindow: Map<number, Map<string, Group>>;
  /** Indexes of the view's distinct-count aggregations. */
  distinctAggs: number[];
}

const NUL = "\u0000";
const PEXPIRE = commandHeader("PEXPIRE", 3);

/** A snapshot of what a batch depends on, read from Redis (and completed by in-flight writes). */
interface Snapshot {
  /** The store version the reads saw (every committed write raises it by one). */
  version: number;
  plans: ViewPlan[];
  high: number;
  status: Map<FeatureView, Map<number, WindowStatus>>;
  /** Event ids of the batch applied before it. */
  applied: Set<string>;
  /** Distinct values already in their window: distinct key NUL field. */
  distinct: Set<string>;
  /** View entity NUL entity id → the newest window start the entity has state in. */
  newest: Map<string, number>;
  trend: Map<string, [number, number]>;
  /** State key NUL entity id: newer-window state already read. */
  newerRead: Set<string>;
}

/** What a committed (or in-flight) batch wrote, to complete a snapshot read before it landed. */
interface WriteSet {
  high: number;
  opened: Map<FeatureView, Set<number>>;
  marks: Set<string>;
  /** view → window start → entity → state */
  states: Map<FeatureView, Map<number, Map<string, (number | undefined)[]>>>;
  distinct: Set<string>;
  trend: Map<string, [number, number]>;
}

/** A batch of ours whose writes later snapshots may lack: its version once EXEC answered. */
interface Landing {
  writes: WriteSet;
  version?: number;
  /** Resolves true once committed, false if EXEC refused it. */
  committed: Promise<boolean>;
}

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
  private readonly featureTtl: string;
  /** Pre-encoded pieces of each view's public-hash HSET. */
  private readonly templates = new Map<FeatureView, { head: string; names: string[]; fields: string[]; windowStart: string; windowEnd: string; eventCount: string; featureTime: string; updatedAt: string }>();
  /** Batches compute one at a time, in call order. */
  private computeTurn: Promise<void> = Promise.resolve();
  /** WATCH … EXEC sections on the writer connection, one at a time. */
  private writerTurn: Promise<void> = Promise.resolve();
  /** Our own recent batches, and the range of store versions that only we wrote. */
  private landings: Landing[] = [];
  private ours?: { from: number; to: number };

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
    this.featureTtl = bulk(this.opts.featureTtlMs);
    for (const v of views) {
      const names = featureNames(v);
      this.templates.set(v, {
        head: commandHeader("HSET", 2 + 2 * (names.length + 5)),
        names,
        fields: names.map((n) => bulk(n)),
        windowStart: bulk("window_start"),
        windowEnd: bulk("window_end"),
        eventCount: bulk("event_count"),
        featureTime: bulk("feature_time"),
        updatedAt: bulk("updated_at"),
      });
    }
    for (const v of views) this.knownWindows.set(v, new Map());
  }

  close(): void {
    this.writer.close();
    this.reader.close();
  }

  /**
   * Folds a batch of events into their windows, the online hashes and the trending set, exactly
   * once per event id, and raises the shared newest event time. Lateness is judged against the
   * watermark as it stood before the batch (as Spark does per micro-batch). Safe to repeat: that
   * is how a redelivered batch is handled. Resolves once the batch is committed.
   *
   * Batches overlap: the next batch's reads are sent at once, and it is computed while Redis
   * executes this one's transaction, from its snapshot completed with this batch's writes. That
   * is valid only if nobody else wrote in between, which the store version tells at commit; if
   * somebody did, the batch is read and computed again under WATCH.
   */
  apply(events: readonly ActivityEvent[], now = Date.now()): Promise<ApplyResult> {
    const snapshot = this.read(events, this.reader, false);
    snapshot.catch(() => undefined);
    const turn = this.computeTurn;
    let release!: () => void;
    this.computeTurn = new Promise<void>((r) => (release = r));
    return (async () => {
      try {
        await turn;
        return await this.run(events, snapshot, now, release);
      } finally {
        release();
      }
    })();
  }

  private async run(events: readonly ActivityEvent[], pending: Promise<Snapshot>, now: number, release: () => void): Promise<ApplyResult> {
    const snap = await pending.catch(() => undefined);
    if (snap) {
      const overlays = this.landings.filter((l) => l.version === undefined || l.version > snap.version);
      for (const l of overlays) overlay(snap, l.writes);
      const batch = await this.compute(events, snap, now, this.reader);
      // Nothing to write (every event a duplicate or late): true whatever others wrote since.
      if (batch.writes.length === 0) return { counts: batch.counts, eventTimeHigh: batch.high, retries: 0 };
      const done = await this.commitOverlapped(snap, overlays, batch, release);
      if (done) return { counts: batch.counts, eventTimeHigh: batch.high, retries: 0 };
    }
    // Fresh reads under WATCH, one transaction at a time until one commits.
    return this.writerSection(async () => {
      for (let retries = 1; ; retries++) {
        const fresh = await this.read(events, this.writer, true);
        const batch = await this.compute(events, fresh, now, this.writer);
        if (batch.writes.length === 0) {
          await this.writer.send([["UNWATCH"]]);
          return { counts: batch.counts, eventTimeHigh: batch.high, retries };
        }
        const version = await this.transaction(batch.writes);
        if (version !== undefined) {
          this.landings = [{ writes: batch.writeSet, version, committed: Promise.resolve(true) }];
          this.ours = { from: version, to: version };
          return { counts: batch.counts, eventTimeHigh: batch.high, retries };
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
  private async commitOverlapped(snap: Snapshot, overlays: Landing[], batch: Computed, release: () => void): Promise<boolean> {
    let landing: Landing | undefined;
    let exec: Promise<number | undefined> | undefined;
    await this.writerSection(async () => {
      const [, current] = await this.writer.send([["WATCH", this.keys.version], ["GET", this.keys.version]]);
      const allLanded = (await Promise.all(overlays.map((l) => l.committed))).every(Boolean);
      const cur = current === null ? 0 : Number(current);
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
      exec = this.transaction(batch.writes);
      exec.then(
        (version) => {
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
    if (!exec || !landing) return false;
    release();
    const version = await exec;
    if (version === undefined) this.landings = this.landings.filter((l) => l !== landing);
    return version !== undefined;
  }

  /** Runs a WATCH … EXEC section on the writer connection, after the ones before it. */
  private writerSection<T>(section: () => Promise<T>): Promise<T> {
    const turn = this.writerTurn;
    let done!: () => void;
    this.writerTurn = new Promise<void>((r) => (done = r));
    return turn.then(section).finally(done);
  }

  /** MULTI, the writes, INCR version, EXEC: the new version, or undefined if a watched key changed. */
  private async transaction(writes: RespCommand[]): Promise<number | undefined> {
    return execVersion(await this.writer.send([["MULTI"], ...writes, ["INCR", this.keys.version], ["EXEC"]]));
  }

  /** Reads what a batch depends on (under WATCH of the store version when `watch`). */
  private async read(events: readonly ActivityEvent[], conn: RespConnection, watch: boolean): Promise<Snapshot> {
    const k = this.keys;
    const plans = this.views.map((view) => plan(view, events));
    const reads = new Reads();
    const snap: Snapshot = { version: 0, plans, high: -Infinity, status: new Map(), applied: new Set(), distinct: new Set(), newest: new Map(), trend: new Map(), newerRead: new Set() };
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
    const byBucket = new Map<number, Set<string>>();
    for (const e of events) {
      const b = windowStart(e.event_time, this.bucketMs);
      let set = byBucket.get(b);
      if (!set) byBucket.set(b, (set = new Set()));
      set.add(e.event_id);
    }
    for (const [b, set] of byBucket) {
      const ids = [...set];
      reads.add(["HMGET", k.seen(b), ...ids], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && snap.applied.add(ids[i]!)));
    }
    for (const p of plans) {
      const n = stateFields(p.view).length;
      for (const [ws, groups] of p.byWindow) {
        const list = [...groups.values()];
        reads.add(["HMGET", k.state(p.view.entity, ws), ...list.map((g) => g.entityId)], (r) =>
          (r as (string | null)[]).forEach((x, i) => {
            if (x === null) return;
            list[i]!.state = unpack(x, n);
            noteState(snap, p.view, list[i]!.entityId, ws);
          }),
        );
        if (p.distinctAggs.length === 0) continue;
        const dkey = k.distinct(p.view.entity, ws);
        const fields = new Set<string>();
        for (const g of list) for (const c of g.contributions) for (const i of p.distinctAggs) {
          if (c[i] !== false) fields.add(distinctField(g.entityId, i, String(c[i])));
        }
        const flist = [...fields];
        if (flist.length > 0) reads.add(["HMGET", dkey, ...flist], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && snap.distinct.add(dkey + NUL + flist[i]!)));
      }
      this.readNewer(reads, snap, p, this.knownWindows.get(p.view)!.keys());
    }
    const tplan = this.trending ? plans.find((x) => x.view === this.trending!.view) : undefined;
    if (tplan && tplan.entities.size > 0) {
      const items = [...tplan.entities];
      reads.add(["HMGET", k.trend, ...items], (r) =>
        (r as (string | null)[]).forEach((x, i) => {
          if (x === null) return;
          const [s, ref] = x.split(" ");
          snap.trend.set(items[i]!, [Number(s), Number(ref)]);
        }),
      );
    }
    await reads.run(conn, watch ? [k.version] : []);
    return snap;
  }

  /**
   * Whether an older window's group is its entity's newest: reads the entity in the view's newer
   * windows (events out of order within the watermark).
   */
  private readNewer(into: Reads, snap: Snapshot, p: ViewPlan, windows: Iterable<number>): void {
    for (const ws of new Set([...windows, ...p.byWindow.keys()])) {
      const key = this.keys.state(p.view.entity, ws);
      const here = p.byWindow.get(ws);
      const older = new Set<string>();
      for (const [bws, groups] of p.byWindow) {
        if (bws >= ws) continue;
        for (const id of groups.keys()) if (!here?.has(id) && !snap.newerRead.has(key + NUL + id)) older.add(id);
      }
      if (older.size === 0) continue;
      const list = [...older];
      for (const id of list) snap.newerRead.add(key + NUL + id);
      into.add(["HMGET", key, ...list], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && noteState(snap, p.view, list[i]!, ws)));
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
    for (const v of this.views) counts[v.entity] = { applied: 0, duplicates: 0, late: 0 };
    const writeSet: WriteSet = { high: snap.high, opened: new Map(), marks: new Set(), states: new Map(), distinct: new Set(), trend: new Map() };
    const marks = new Map<number, string[]>();
    const folded = new Map<Group, number[]>(); // group → indexes of its events applied now
    const trendEvents = new Map<string, ActivityEvent[]>();
    const tplan = this.trending ? plans.find((x) => x.view === this.trending!.view) : undefined;
    let high = snap.high;
    for (const e of events) {
      if (e.event_time > high) high = e.event_time;
      let any = false;
      for (const p of plans) {
        const c = counts[p.view.entity]!;
        const ws = windowStart(e.event_time, p.view.windowMs);
        const st = status.get(p.view)!.get(ws);
        if (isWindowClosed(ws + p.view.windowMs, watermarkOf(p.view, snap.high)) || (st !== undefined && st !== "open")) {
          c.late++;
        } else if (snap.applied.has(e.event_id) || writeSet.marks.has(e.event_id)) {
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
        writeSet.marks.add(e.event_id);
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
    const nowStr = bulk(now);
    for (const p of plans) {
      const view = p.view;
      const fields = stateFields(view);
      const viewStates = new Map<number, Map<string, (number | undefined)[]>>();
      writeSet.states.set(view, viewStates);
      for (const [ws, groups] of p.byWindow) {
        const stateKey = k.state(view.entity, ws);
        const dkey = k.distinct(view.entity, ws);
        const stateWrites: RespArgList = ["HSET", stateKey];
        const distinctWrites: RespArgList = ["HSET", dkey];
        const changed: Group[] = [];
        const states = new Map<string, (number | undefined)[]>();
        for (const g of groups.values()) {
          const applied = folded.get(g);
          if (!applied) continue;
          const s = (g.state ??= new Array<number | undefined>(fields.length).fill(undefined));
          for (const j of applied) {
            foldEvent(view, s, g.events[j]!.event_time, g.contributions[j]!, (i, value) => {
              const key = dkey + NUL + distinctField(g.entityId, i, value);
              if (snap.distinct.has(key)) return false;
              snap.distinct.add(key);
              writeSet.distinct.add(key);
              distinctWrites.push(distinctField(g.entityId, i, value), "1");
              return true;
            });
          }
          stateWrites.push(g.entityId, pack(s));
          states.set(g.entityId, s);
          noteState(snap, view, g.entityId, ws);
          changed.push(g);
        }
        if (changed.length === 0) continue;
        viewStates.set(ws, states);
        writes.push(stateWrites, ["PEXPIRE", stateKey, openTtl]);
        if (distinctWrites.length > 2) writes.push(distinctWrites, ["PEXPIRE", dkey, openTtl]);
        if (!status.get(view)!.has(ws)) {
          writes.push(["HSET", k.windows(view.entity), ws, "open"]);
          let opened = writeSet.opened.get(view);
          if (!opened) writeSet.opened.set(view, (opened = new Set()));
          opened.add(ws);
        }
        // The public hash shows the entity's newest window: an older one still open (events out
        // of order within the watermark) updates its state but leaves the hash alone.
        const window = [bulk(ws), bulk(ws + view.windowMs)] as const;
        for (const g of changed) {
          if (snap.newest.get(view.entity + NUL + g.entityId)! > ws) continue;
          this.publicWrites(writes, view, g.entityId, window, toState(fields, g.state!), nowStr);
        }
      }
    }
    if (this.trending) writes.push(...this.trendWrites(trendEvents, snap.trend, writeSet.trend));
    if (high > snap.high) writes.push(["SET", k.eventTimeHigh, high]);
    writeSet.high = high;
    return { counts, high, writes, writeSet };
  }

  /**
   * Writes an entity's public hash (its newest window's features and when they were computed)
   * and its TTL, encoded from the view's template: these are most of the bytes a batch sends.
   * `window` and `now` come pre-encoded (bulk) as they are the same for many entities.
   */
  private publicWrites(out: RespCommand[], view: FeatureView, entityId: string, window: readonly [string, string], state: WindowState, now: string): void {
    const t = this.templates.get(view)!;
    const f = featuresOf(view, state);
    const key = bulk(this.publicKey(view, entityId));
    let resp = t.head + key;
    for (let i = 0; i < t.names.length; i++) resp += t.fields[i]! + bulk(f[t.names[i]!]!);
    resp += t.windowStart + window[0] + t.windowEnd + window[1] + t.eventCount + bulk(state.n ?? 0) + t.featureTime + bulk(state.t ?? 0) + t.updatedAt + now;
    out.push({ resp: resp + PEXPIRE + key + this.featureTtl, count: 2 });
  }

  /** `user_features:{id}` or `item_features:{id}`. */
  private publicKey(view: FeatureView, entityId: string): string {
    return view.entity === "user" ? this.names.userFeaturesKey(entityId) : this.names.itemFeaturesKey(entityId);
  }

  /** Each item's decayed activity with the batch's events, and its trending score. */
  private trendWrites(byItem: Map<string, ActivityEvent[]>, before: Map<string, [number, number]>, after: Map<string, [number, number]>): RespCommand[] {
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
      after.set(item, [s, ref]);
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
    const fields = stateFields(view);
    for (const ws of due) {
      // From here on every writer sees the window closed: a batch that read it open fails its EXEC.
      await this.redis.multi().hset(k.windows(view.entity), String(ws), "closed").incr(k.version).exec();
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
        for (let i = 0; i < flat.length; i += 2) if (Number(flat[i + 1]!.split(" ")[1]) + this.opts.trendTtlMs < high) stale.push(flat[i]!);
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

type RespArgList = (string | number)[];

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
  writes: RespCommand[];
  writeSet: WriteSet;
}

function noteState(snap: Snapshot, view: FeatureView, entityId: string, ws: number): void {
  const key = view.entity + NUL + entityId;
  if ((snap.newest.get(key) ?? -Infinity) < ws) snap.newest.set(key, ws);
}

/**
 * Completes a snapshot with what one of our batches wrote, in case the reads ran before it
 * landed. Idempotent (the writes are values, not increments), so applying one that the reads
 * already saw changes nothing.
 */
function overlay(snap: Snapshot, w: WriteSet): void {
  if (w.high > snap.high) snap.high = w.high;
  for (const [view, opened] of w.opened) {
    const st = snap.status.get(view)!;
    for (const ws of opened) if (!st.has(ws)) st.set(ws, "open");
  }
  // Every view's plan holds all the batch's events; the first one's will do.
  for (const groups of snap.plans[0]?.byWindow.values() ?? []) {
    for (const g of groups.values()) for (const e of g.events) if (w.marks.has(e.event_id)) snap.applied.add(e.event_id);
  }
  for (const p of snap.plans) {
    const states = w.states.get(p.view);
    if (!states) continue;
    for (const [ws, m] of states) {
      const groups = p.byWindow.get(ws);
      for (const [id, st] of m) {
        if (!p.entities.has(id)) continue;
        const g = groups?.get(id);
        if (g) g.state = st.slice();
        noteState(snap, p.view, id, ws);
      }
    }
  }
  for (const d of w.distinct) snap.distinct.add(d);
  for (const [item, t] of w.trend) snap.trend.set(item, t);
}

/** The store version after a MULTI … INCR version EXEC, or undefined if EXEC refused it (WATCH). */
function execVersion(replies: readonly RespReply[]): number | undefined {
  const exec = replies[replies.length - 1]!;
  if (exec === null) return undefined;
  if (exec instanceof RespError) throw new WindowStoreError(`Redis refused the feature batch: ${exec.message}`, { cause: exec });
  const results = exec as RespReply[];
  throwIfError(results, "writing the feature batch");
  return Number(results[results.length - 1]);
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
  for (const e of events) {
    const ws = windowStart(e.event_time, view.windowMs);
    let groups = byWindow.get(ws);
    if (!groups) byWindow.set(ws, (groups = new Map()));
    const id = e[view.key];
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { entityId: id, events: [], contributions: [] }));
    g.events.push(e);
    g.contributions.push(contributions(view, e));
  }
  const distinctAggs = view.aggregations.flatMap((a, i) => (stateOp(a) === "distinct" ? [i] : []));
  const entities = new Set<string>();
  for (const groups of byWindow.values()) for (const id of groups.keys()) entities.add(id);
  return { view, entities, byWindow, distinctAggs };
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
