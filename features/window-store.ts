// The window store: event-time window state, the online feature hashes and the trending set, all
// in Redis. A batch costs a few pipelined script calls, each carrying many entity windows, never
// a call per event or per entity. See redis-scripts.ts for why replays and concurrent workers
// cannot count an event twice.
import { createHash } from "node:crypto";
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { contributions, featuresOf, stateFields, windowEnd, type WindowState } from "./windows.js";
import {
  ADVANCE_EVENT_TIME_SCRIPT,
  MARK_PUBLISHED_SCRIPT,
  closeScript,
  keySlot,
  stateKeys,
  updateScript,
  type StateKeys,
  type TrendingSpec,
} from "./redis-scripts.js";

export interface WindowStoreOptions {
  /** TTL of the public feature hashes, ms. @default 3_600_000 (config.featureTtlSeconds) */
  featureTtlMs?: number;
  /**
   * TTL of an open window's state. Windows close when the watermark passes them, so this only
   * reclaims state when the stream stops for good. @default 7 days (the streams' retention)
   */
  openWindowTtlMs?: number;
  /** How long a closed window's aggregates stay to refuse stragglers from slower workers. @default 3_600_000 */
  closedWindowTtlMs?: number;
  /** TTL of an item's decayed activity; after ten half-lives it weighs 1/1024. @default 10 half-lives */
  trendTtlMs?: number;
  /**
   * Most events per script call. Bounds how long one call holds Redis, during which every other
   * client (the server reading features) waits, and the size of Lua's unpack. @default 500
   */
  maxEventsPerCall?: number;
  /**
   * Most entity windows per script call, for the same reason: about 10–30 µs each, so the
   * default holds Redis for 1–3 ms; the per-call overhead it saves stops mattering well before.
   * @default 100
   */
  maxGroupsPerCall?: number;
  /**
   * Whether one script call may carry keys of different hash slots: fine on a single Redis, not
   * on a cluster. Unset: decided by `INFO cluster` when the scripts are loaded.
   */
  crossSlotCalls?: boolean;
}

export const DEFAULT_WINDOW_STORE_OPTIONS: Readonly<Required<Omit<WindowStoreOptions, "trendTtlMs" | "crossSlotCalls">>> = Object.freeze({
  featureTtlMs: 3_600_000,
  openWindowTtlMs: 7 * 24 * 3_600_000,
  closedWindowTtlMs: 3_600_000,
  maxEventsPerCall: 500,
  maxGroupsPerCall: 100,
});

/** The events of one entity in one window of one view, as one worker batch saw them. */
export interface WindowGroup {
  view: FeatureView;
  entityId: string;
  windowStart: number;
  events: ActivityEvent[];
}

/** What the update script reported for a group. */
export interface GroupResult {
  /** "closed": the window was closed before these events arrived; they are late. */
  status: "open" | "closed";
  /** Events folded into the state by this call. */
  applied: number;
  /** Events the window had already applied (redeliveries, republished ids). */
  duplicates: number;
  /** The item's trending score after the call (trending view only). */
  trendScore?: number;
}

/** A window whose final state was read by `close`. */
export interface ClosedWindow {
  view: FeatureView;
  entityId: string;
  windowStart: number;
  windowEnd: number;
  features: Record<string, number>;
  eventCount: number;
  /** The row already reached the LOGS stream (a previous close stopped before unindexing it). */
  published: boolean;
}

export interface WindowRef {
  entityId: string;
  windowStart: number;
}

interface Script {
  source: string;
  sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash("sha1").update(source).digest("hex") });

const ADVANCE = script(ADVANCE_EVENT_TIME_SCRIPT);
const MARK_PUBLISHED = script(MARK_PUBLISHED_SCRIPT);

interface ViewScripts {
  view: FeatureView;
  trending: TrendingSpec | null;
  /** Built by loadScripts, once it knows whether the trending set may be written inline. */
  update?: Script;
  close: Script;
  fields: string[];
  publicKey: (id: string) => string;
}

/** One group's share of a script call (a group with very many events is split in several). */
interface Entry<T> {
  /** The key whose slot decides which calls may carry it. */
  key: string;
  keys: string[];
  payload: T;
  events: number;
  index: number;
}

export class WindowStore {
  readonly keys: StateKeys;
  private readonly opts: Required<Omit<WindowStoreOptions, "crossSlotCalls">>;
  private crossSlot: boolean | undefined;
  private readonly views = new Map<FeatureView, ViewScripts>();

  /**
   * @param views the feature views kept
   * @param trending the trending set, scored from the events of `trending.view` (null: none)
   */
  constructor(
    private readonly redis: Redis,
    private readonly names: Names,
    views: readonly FeatureView[],
    private readonly trending: { view: FeatureView; spec: TrendingSpec } | null,
    options: WindowStoreOptions = {},
  ) {
    const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as WindowStoreOptions;
    const merged = { ...DEFAULT_WINDOW_STORE_OPTIONS, ...defined };
    this.opts = { ...merged, trendTtlMs: defined.trendTtlMs ?? 10 * (trending?.spec.halfLifeMs ?? 0) };
    this.crossSlot = defined.crossSlotCalls;
    this.keys = stateKeys(names.redisPrefix);
    for (const view of views) {
      this.views.set(view, {
        view,
        trending: trending?.view === view ? trending.spec : null,
        close: script(closeScript(view)),
        fields: stateFields(view),
        publicKey: view.entity === "user" ? names.userFeaturesKey : names.itemFeaturesKey,
      });
    }
  }

  /** Loads the scripts (again after a Redis restart flushed them), learning first whether Redis is a cluster. */
  async loadScripts(): Promise<void> {
    if (this.crossSlot === undefined) {
      const info = await this.redis.info("cluster");
      this.crossSlot = !/cluster_enabled:1/.test(info);
    }
    for (const vs of this.views.values()) vs.update ??= script(updateScript(vs.view, vs.trending, this.crossSlot ? "inline" : "returned"));
    const scripts = [ADVANCE, MARK_PUBLISHED, ...[...this.views.values()].flatMap((v) => [v.update!, v.close])];
    const pipe = this.redis.pipeline();
    for (const s of scripts) pipe.script("LOAD", s.source);
    for (const [err] of (await pipe.exec()) ?? []) if (err) throw err;
  }

  /**
   * Folds the groups into their windows, which updates the online feature hashes and the trending
   * set with them; indexes `newWindows` as open; raises the shared newest event time to at least
   * `newestEventTime`. Returns each group's result (in order) and the newest event time any
   * worker has seen. Safe to repeat: that is how a redelivered batch is handled.
   */
  async apply(
    groups: readonly WindowGroup[],
    newestEventTime: number,
    newWindows: readonly WindowGroup[] = [],
    now = Date.now(),
  ): Promise<{ results: GroupResult[]; eventTimeHigh: number }> {
    return this.withScripts(async () => {
      const pipe = this.redis.pipeline();
      const calls: { vs: ViewScripts; entries: Entry<unknown[]>[] }[] = [];
      for (const vs of this.views.values()) {
        const entries: Entry<unknown[]>[] = [];
        groups.forEach((g, index) => {
          if (g.view !== vs.view) return;
          const publicKey = vs.publicKey(g.entityId);
          const window = this.keys.window(publicKey, g.windowStart);
          const keys = vs.trending ? [window, publicKey, this.keys.trend(publicKey)] : [window, publicKey];
          for (let from = 0; from < g.events.length; from += this.opts.maxEventsPerCall) {
            const events = g.events.slice(from, from + this.opts.maxEventsPerCall).map((e) => {
              const ev: unknown[] = [e.event_id, e.event_time, ...contributions(g.view, e)];
              if (vs.trending) ev.push(vs.trending.weights[e.event_type] || false);
              return ev;
            });
            entries.push({ key: window, keys, payload: [g.windowStart, g.entityId, events], events: events.length, index });
          }
        });
        const inline = vs.trending !== null && this.crossSlot === true;
        for (const chunk of this.chunks(entries)) {
          const keys = chunk.flatMap((e) => e.keys);
          if (inline) keys.unshift(this.names.trendingKey);
          pipe.evalsha(
            vs.update!.sha,
            keys.length,
            ...keys,
            String(this.opts.openWindowTtlMs),
            String(this.opts.trendTtlMs),
            String(this.opts.featureTtlMs),
            String(now),
            String(vs.trending?.maxItems ?? 0),
            JSON.stringify(chunk.map((e) => e.payload)),
          );
          calls.push({ vs, entries: chunk });
        }
      }
      pipe.evalsha(ADVANCE.sha, 1, this.keys.eventTimeHigh, Number.isFinite(newestEventTime) ? String(newestEventTime) : "");
      // Indexed after the scripts, in the same round trip: a window is never in the index
      // without state, and a crash before the ack re-indexes it on redelivery.
      this.addOpenWindows(pipe, newWindows);
      const replies = await execAll(pipe);
      const results: GroupResult[] = groups.map(() => ({ status: "open", applied: 0, duplicates: 0 }));
      const trendPairs: (string | number)[] = [];
      calls.forEach(({ vs, entries }, i) => {
        const perGroup = JSON.parse(replies[i] as string) as [string, number, number, string][];
        entries.forEach((entry, j) => {
          const [status, applied, duplicates, score] = perGroup[j]!;
          const acc = results[entry.index]!;
          // A group split over several entries: add the counts, keep the last score.
          if (status === "closed") acc.status = "closed";
          acc.applied += applied;
          acc.duplicates += duplicates;
          if (score) acc.trendScore = Number(score);
        });
        if (vs.trending && !this.crossSlot) {
          for (const e of entries) if (results[e.index]!.trendScore !== undefined) trendPairs.push(results[e.index]!.trendScore!, groups[e.index]!.entityId);
        }
      });
      if (trendPairs.length > 0 && this.trending) {
        // On a cluster the trending set lives in its own slot: written here, from the scores the
        // scripts returned. GT keeps it correct whatever order workers and replays write in.
        await execAll(
          this.redis
            .pipeline()
            .zadd(this.names.trendingKey, "GT", ...trendPairs)
            .zremrangebyrank(this.names.trendingKey, 0, -(this.trending.spec.maxItems + 1)),
        );
      }
      const high = replies[calls.length] as string;
      return { results, eventTimeHigh: high === "" ? -Infinity : Number(high) };
    });
  }

  /** Adds windows to their view's open-window index (idempotent). */
  async indexOpenWindows(windows: readonly { view: FeatureView; entityId: string; windowStart: number }[]): Promise<void> {
    if (windows.length === 0) return;
    const pipe = this.redis.pipeline();
    this.addOpenWindows(pipe, windows);
    await execAll(pipe);
  }

  private addOpenWindows(pipe: ReturnType<Redis["pipeline"]>, windows: readonly { view: FeatureView; entityId: string; windowStart: number }[]): void {
    const byEntity = new Map<string, (string | number)[]>();
    for (const w of windows) {
      let pairs = byEntity.get(w.view.entity);
      if (!pairs) byEntity.set(w.view.entity, (pairs = []));
      pairs.push(windowEnd(w.windowStart, w.view.windowMs), encodeRef(w));
    }
    for (const [entity, pairs] of byEntity) pipe.zadd(this.keys.openWindows(entity), ...pairs);
  }

  /** The newest event time any worker has seen (−∞ before the first event). */
  async eventTimeHigh(): Promise<number> {
    const v = (await this.withScripts(() => this.redis.evalsha(ADVANCE.sha, 1, this.keys.eventTimeHigh, ""))) as string;
    return v === "" ? -Infinity : Number(v);
  }

  /** Open windows of a view whose end the watermark has reached, oldest first. */
  async dueWindows(view: FeatureView, watermark: number, limit: number): Promise<WindowRef[]> {
    if (!Number.isFinite(watermark)) return [];
    const members = await this.redis.zrangebyscore(this.keys.openWindows(view.entity), "-inf", watermark, "LIMIT", 0, limit);
    return members.map(decodeRef);
  }

  /**
   * Closes windows and returns their final features. A window with no state left (expired) comes
   * back undefined; the caller unindexes it.
   */
  async close(view: FeatureView, windows: readonly WindowRef[]): Promise<(ClosedWindow | undefined)[]> {
    if (windows.length === 0) return [];
    return this.withScripts(async () => {
      const vs = this.viewScripts(view);
      const entries = windows.map((w, index) => {
        const key = this.keys.window(vs.publicKey(w.entityId), w.windowStart);
        return { key, keys: [key], payload: null, events: 1, index };
      });
      const chunks = this.chunks(entries);
      const pipe = this.redis.pipeline();
      for (const chunk of chunks) pipe.evalsha(vs.close.sha, chunk.length, ...chunk.map((e) => e.key), String(this.opts.closedWindowTtlMs));
      const replies = await execAll(pipe);
      const out: (ClosedWindow | undefined)[] = new Array(windows.length);
      chunks.forEach((chunk, i) => {
        const perWindow = JSON.parse(replies[i] as string) as (string[] | false)[];
        chunk.forEach((entry, j) => {
          const reply = perWindow[j];
          const w = windows[entry.index]!;
          if (!reply) return;
          const state = stateOf(vs.fields, reply, 1);
          out[entry.index] = {
            view,
            entityId: w.entityId,
            windowStart: w.windowStart,
            windowEnd: windowEnd(w.windowStart, view.windowMs),
            features: featuresOf(view, state),
            eventCount: state.n ?? 0,
            published: reply[0] === "1",
          };
        });
      });
      return out;
    });
  }

  /** Records that closed windows reached the LOGS stream and drops them from the open index. */
  async markPublished(view: FeatureView, windows: readonly WindowRef[]): Promise<void> {
    if (windows.length === 0) return;
    await this.withScripts(async () => {
      const vs = this.viewScripts(view);
      const entries = windows.map((w, index) => {
        const key = this.keys.window(vs.publicKey(w.entityId), w.windowStart);
        return { key, keys: [key], payload: null, events: 1, index };
      });
      const pipe = this.redis.pipeline();
      for (const chunk of this.chunks(entries)) pipe.evalsha(MARK_PUBLISHED.sha, chunk.length, ...chunk.map((e) => e.key));
      pipe.zrem(this.keys.openWindows(view.entity), ...windows.map(encodeRef));
      await execAll(pipe);
    });
  }

  /** An entity's public feature hash as numbers (for tests and tools; the server reads its own way). */
  async readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined> {
    const h = await this.redis.hgetall(this.viewScripts(view).publicKey(entityId));
    if (Object.keys(h).length === 0) return undefined;
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }

  /**
   * Splits entries into script calls: bounded in groups and events, and on a cluster never
   * mixing hash slots.
   */
  private chunks<T extends { key: string; events: number }>(entries: readonly T[]): T[][] {
    const lists = this.crossSlot === false ? [...groupBy(entries, (e) => keySlot(e.key)).values()] : [entries];
    const out: T[][] = [];
    for (const list of lists) {
      let cur: T[] = [];
      let events = 0;
      for (const e of list) {
        if (cur.length > 0 && (cur.length >= this.opts.maxGroupsPerCall || events + e.events > this.opts.maxEventsPerCall)) {
          out.push(cur);
          cur = [];
          events = 0;
        }
        cur.push(e);
        events += e.events;
      }
      if (cur.length) out.push(cur);
    }
    return out;
  }

  private viewScripts(view: FeatureView): ViewScripts {
    const vs = this.views.get(view);
    if (!vs) throw new WindowStoreError(`feature view "${view.entity}" is not kept by this store`);
    return vs;
  }

  /** Runs a step, reloading the scripts once if Redis lost them (restart, SCRIPT FLUSH). */
  private async withScripts<T>(step: () => Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      if (!isNoScript(err)) throw err;
      await this.loadScripts();
      // Every step is idempotent, so running it again after a partial failure is safe.
      return step();
    }
  }
}

export class WindowStoreError extends Error {
  override name = "WindowStoreError";
}

function groupBy<T, K>(items: readonly T[], keyOf: (t: T) => K): Map<K, T[]> {
  const m = new Map<K, T[]>();
  for (const t of items) {
    const k = keyOf(t);
    let list = m.get(k);
    if (!list) m.set(k, (list = []));
    list.push(t);
  }
  return m;
}

function encodeRef(w: WindowRef): string {
  return JSON.stringify([w.entityId, w.windowStart]);
}

function decodeRef(member: string): WindowRef {
  const [entityId, windowStart] = JSON.parse(member) as [string, number];
  return { entityId, windowStart };
}

function stateOf(fields: readonly string[], reply: readonly string[], offset: number): WindowState {
  const state: Record<string, number | undefined> = {};
  fields.forEach((f, i) => {
    const v = reply[offset + i];
    state[f] = v === undefined || v === "" ? undefined : Number(v);
  });
  return state;
}

async function execAll(pipe: ReturnType<Redis["pipeline"]>): Promise<unknown[]> {
  const out = (await pipe.exec()) ?? [];
  const failed = out.find(([err]) => err);
  if (failed) {
    const err = failed[0] as Error;
    if (isNoScript(err)) throw err;
    throw new WindowStoreError(`Redis rejected a feature-store command: ${err.message}`, { cause: err });
  }
  return out.map(([, v]) => v);
}

function isNoScript(err: unknown): boolean {
  return /NOSCRIPT/.test((err as Error)?.message ?? "");
}
