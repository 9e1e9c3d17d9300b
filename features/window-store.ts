// The window store: event-time window state, the online feature hashes and the trending set, all
// in Redis. Every call is one pipelined round trip for a whole batch, never one per event. See
// redis-scripts.ts for why replays and concurrent workers cannot count an event twice.
import { createHash } from "node:crypto";
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { contributions, featuresOf, stateFields, windowEnd, type WindowState } from "./windows.js";
import {
  ADVANCE_EVENT_TIME_SCRIPT,
  MARK_PUBLISHED_SCRIPT,
  PUBLISH_FEATURES_SCRIPT,
  closeScript,
  eventStride,
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
  /** Most events per script call; a bigger group is split (Lua's unpack has limits). @default 1000 */
  maxEventsPerCall?: number;
}

export const DEFAULT_WINDOW_STORE_OPTIONS: Readonly<Required<Omit<WindowStoreOptions, "trendTtlMs">>> = Object.freeze({
  featureTtlMs: 3_600_000,
  openWindowTtlMs: 7 * 24 * 3_600_000,
  closedWindowTtlMs: 3_600_000,
  maxEventsPerCall: 1000,
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
  /** The window's state after the call, applied or not. */
  state: WindowState;
  /** The item's trending score after the call (item view only). */
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
  /** The row already reached the LOGS stream (a previous close crashed before unindexing it). */
  published: boolean;
}

export interface WindowRef {
  entityId: string;
  windowStart: number;
}

interface ViewScripts {
  view: FeatureView;
  trending: TrendingSpec | null;
  update: Script;
  close: Script;
  fields: string[];
  publicKey: (id: string) => string;
}

interface Script {
  source: string;
  sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash("sha1").update(source).digest("hex") });

const PUBLISH = script(PUBLISH_FEATURES_SCRIPT);
const ADVANCE = script(ADVANCE_EVENT_TIME_SCRIPT);
const MARK_PUBLISHED = script(MARK_PUBLISHED_SCRIPT);

export class WindowStore {
  readonly keys: StateKeys;
  private readonly opts: Required<WindowStoreOptions>;
  private readonly views = new Map<FeatureView, ViewScripts>();
  private readonly scripts: Script[];

  /**
   * @param views the feature views kept
   * @param trending the trending set, kept from the events of `trendingView` (null: none)
   */
  constructor(
    private readonly redis: Redis,
    private readonly names: Names,
    views: readonly FeatureView[],
    private readonly trending: { view: FeatureView; spec: TrendingSpec } | null,
    options: WindowStoreOptions = {},
  ) {
    const merged = { ...DEFAULT_WINDOW_STORE_OPTIONS, ...options };
    this.opts = { ...merged, trendTtlMs: options.trendTtlMs ?? 10 * (trending?.spec.halfLifeMs ?? 0) };
    this.keys = stateKeys(names.redisPrefix);
    for (const view of views) {
      const t = trending?.view === view ? trending.spec : null;
      this.views.set(view, {
        view,
        trending: t,
        update: script(updateScript(view, t)),
        close: script(closeScript(view)),
        fields: stateFields(view),
        publicKey: view.entity === "user" ? names.userFeaturesKey : names.itemFeaturesKey,
      });
    }
    this.scripts = [PUBLISH, ADVANCE, MARK_PUBLISHED, ...[...this.views.values()].flatMap((v) => [v.update, v.close])];
  }

  /** Loads the scripts (again after a Redis restart flushed them). */
  async loadScripts(): Promise<void> {
    const pipe = this.redis.pipeline();
    for (const s of this.scripts) pipe.script("LOAD", s.source);
    for (const [err] of (await pipe.exec()) ?? []) if (err) throw err;
  }

  /**
   * Folds the groups into their windows and raises the shared newest event time to at least
   * `newestEventTime`. Returns each group's result (in order) and the newest event time any
   * worker has seen. Safe to repeat: that is how a redelivered batch is handled.
   */
  async apply(groups: readonly WindowGroup[], newestEventTime: number): Promise<{ results: GroupResult[]; eventTimeHigh: number }> {
    return this.withScripts(async () => {
      const pipe = this.redis.pipeline();
      const calls: { group: number }[] = [];
      groups.forEach((g, gi) => {
        const vs = this.viewScripts(g.view);
        const publicKey = vs.publicKey(g.entityId);
        const keys = vs.trending ? [this.keys.window(publicKey, g.windowStart), this.keys.trend(publicKey)] : [this.keys.window(publicKey, g.windowStart)];
        for (let from = 0; from < g.events.length; from += this.opts.maxEventsPerCall) {
          const args: string[] = [String(this.opts.openWindowTtlMs), String(this.opts.trendTtlMs)];
          for (const e of g.events.slice(from, from + this.opts.maxEventsPerCall)) {
            args.push(e.event_id, String(e.event_time), ...contributions(g.view, e));
            if (vs.trending) {
              const w = vs.trending.weights[e.event_type];
              args.push(w ? String(w) : "");
            }
          }
          pipe.evalsha(vs.update.sha, keys.length, ...keys, ...args);
          calls.push({ group: gi });
        }
      });
      pipe.evalsha(ADVANCE.sha, 1, this.keys.eventTimeHigh, Number.isFinite(newestEventTime) ? String(newestEventTime) : "");
      const replies = await execAll(pipe);
      const results: GroupResult[] = groups.map(() => ({ status: "open", applied: 0, duplicates: 0, state: {} }));
      calls.forEach(({ group }, i) => {
        const r = parseUpdateReply(replies[i] as string[], this.viewScripts(groups[group]!.view).fields);
        const acc = results[group]!;
        // A group split over several calls: add the counts, keep the last call's state.
        if (r.status === "closed") acc.status = "closed";
        acc.applied += r.applied;
        acc.duplicates += r.duplicates;
        acc.state = r.state;
        if (r.trendScore !== undefined) acc.trendScore = r.trendScore;
      });
      const high = replies[calls.length] as string;
      return { results, eventTimeHigh: high === "" ? -Infinity : Number(high) };
    });
  }

  /**
   * Writes the public feature hashes and trending scores from the states `apply` returned.
   * Conditional on each window's revision, so a slower worker cannot roll features back.
   */
  async publish(groups: readonly WindowGroup[], results: readonly GroupResult[], now = Date.now()): Promise<number> {
    return this.withScripts(async () => {
      const pipe = this.redis.pipeline();
      let trendingWrites = 0;
      groups.forEach((g, i) => {
        const r = results[i]!;
        const n = r.state.n ?? 0;
        if (n === 0) return;
        const vs = this.viewScripts(g.view);
        const features = featuresOf(g.view, r.state);
        const args: string[] = [String(g.windowStart), String(r.state.rev ?? 0), String(this.opts.featureTtlMs)];
        for (const [name, value] of Object.entries(features)) args.push(name, String(value));
        args.push(
          "window_start", String(g.windowStart),
          "window_end", String(windowEnd(g.windowStart, g.view.windowMs)),
          "event_count", String(n),
          "feature_time", String(r.state.t ?? 0),
          "window_rev", String(r.state.rev ?? 0),
          "updated_at", String(now),
        );
        pipe.evalsha(PUBLISH.sha, 1, vs.publicKey(g.entityId), ...args);
        if (vs.trending && r.trendScore !== undefined) {
          pipe.zadd(this.names.trendingKey, "GT", r.trendScore, g.entityId);
          trendingWrites++;
        }
      });
      if (trendingWrites > 0 && this.trending) {
        // Keep the top maxItems: the lowest scores are the items whose activity decayed most.
        pipe.zremrangebyrank(this.names.trendingKey, 0, -(this.trending.spec.maxItems + 1));
      }
      const replies = await execAll(pipe);
      return replies.filter((r) => r === 1).length;
    });
  }

  /** Adds windows to their view's open-window index (idempotent). */
  async indexOpenWindows(windows: readonly { view: FeatureView; entityId: string; windowStart: number }[]): Promise<void> {
    if (windows.length === 0) return;
    const pipe = this.redis.pipeline();
    for (const w of windows) {
      pipe.zadd(this.keys.openWindows(w.view.entity), windowEnd(w.windowStart, w.view.windowMs), encodeRef(w));
    }
    await execAll(pipe);
  }

  /** The newest event time any worker has seen (−∞ before the first event). */
  async eventTimeHigh(): Promise<number> {
    const v = (await this.redis.evalsha(ADVANCE.sha, 1, this.keys.eventTimeHigh, "").catch(async (err: Error) => {
      if (!isNoScript(err)) throw err;
      await this.loadScripts();
      return this.redis.evalsha(ADVANCE.sha, 1, this.keys.eventTimeHigh, "");
    })) as string;
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
      const pipe = this.redis.pipeline();
      for (const w of windows) pipe.evalsha(vs.close.sha, 1, this.keys.window(vs.publicKey(w.entityId), w.windowStart), String(this.opts.closedWindowTtlMs));
      const replies = await execAll(pipe);
      return windows.map((w, i) => {
        const reply = replies[i] as string[] | null;
        if (!reply) return undefined;
        const state = stateOf(vs.fields, reply, 1);
        return {
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
  }

  /** Records that closed windows reached the LOGS stream and drops them from the open index. */
  async markPublished(view: FeatureView, windows: readonly WindowRef[]): Promise<void> {
    if (windows.length === 0) return;
    await this.withScripts(async () => {
      const vs = this.viewScripts(view);
      const pipe = this.redis.pipeline();
      for (const w of windows) pipe.evalsha(MARK_PUBLISHED.sha, 1, this.keys.window(vs.publicKey(w.entityId), w.windowStart));
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

  private viewScripts(view: FeatureView): ViewScripts {
    const vs = this.views.get(view);
    if (!vs) throw new Error(`feature view "${view.entity}" is not kept by this store`);
    return vs;
  }

  /** Runs a pipeline step, reloading the scripts once if Redis lost them (restart, SCRIPT FLUSH). */
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

function parseUpdateReply(reply: readonly string[], fields: readonly string[]): GroupResult {
  const score = reply[3 + fields.length];
  const result: GroupResult = {
    status: reply[0] === "closed" ? "closed" : "open",
    applied: Number(reply[1]),
    duplicates: Number(reply[2]),
    state: stateOf(fields, reply, 3),
  };
  if (score !== undefined && score !== "") result.trendScore = Number(score);
  return result;
}

export class WindowStoreError extends Error {
  override name = "WindowStoreError";
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
