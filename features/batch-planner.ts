// The pure half of applying a batch: from its events and a snapshot of what they depend on, what
// the batch does: which events are late or already applied, each window's folded state, the
// event-id markers, new distinct values, trend activity, which public hashes to write. No I/O:
// the commit pipeline (commit-pipeline.ts) reads the snapshot and commits the result, the write
// encoder (write-encoder.ts) turns it into Redis commands.
import type { ActivityEvent, FeatureView } from "./definitions.js";
import type { TrendingSpec } from "./window-store.js";
import { distinctField, type StoreKeys, type WindowStatus } from "./store-keys.js";
import { emptyState, foldEvent, isWindowClosed, stateOp, watermarkOf, windowStart, type StateValues } from "./windows.js";

/** What one batch did, per view entity. */
export interface ViewCounts {
  /** Events folded into their window. */
  applied: number;
  /** Events already applied (redelivered, or republished with the same event id). */
  duplicates: number;
  /** Events whose window the watermark had closed: dropped. */
  late: number;
}

/** One entity's events in one window of one view, within a batch. */
export interface Group {
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
  /** Some of its events were applied before (a redelivery): its public hash is written again from its state. */
  replayed: boolean;
}

export interface ViewPlan {
  view: FeatureView;
  /** window start → entity id → group */
  byWindow: Map<number, Map<string, Group>>;
  /** Each event's group, by its index in the batch (undefined: the event's key is another partition's). */
  groupOf: (Group | undefined)[];
  /** The next event of the same group (−1: none). */
  next: Int32Array;
  /** 1 for the events this batch applies in this view. */
  applied: Uint8Array;
  /** Indexes of the view's distinct-count aggregations. */
  distinctAggs: number[];
  counts: ViewCounts;
}

/** Distinct-count values known to be in their window: distinct key → fields (distinctField). */
export type DistinctValues = Map<string, Set<string>>;

/** A snapshot of what a batch depends on, read from Redis (and completed by in-flight writes). */
export interface Snapshot {
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

/** One window's writes: the groups the batch changed there, and what else it adds. */
export interface WindowWrites {
  view: FeatureView;
  windowStart: number;
  changed: Group[];
  /** Distinct-count fields new to the window. */
  added: string[];
  /** The window is new: it is listed as open. */
  opened: boolean;
  /** Unchanged groups with redelivered events, whose public hash is projected again (PlanContext.reproject). */
  replayed: Group[];
}

/** Everything a batch writes (and, for a later snapshot read before it landed, what it set). */
export interface WriteSet {
  /** The newest event time after the batch, and whether the batch raises it. */
  high: number;
  raisesHigh: boolean;
  /** Event ids applied, all, and by marker bucket. */
  marks: Set<string>;
  markBuckets: Map<number, string[]>;
  opened: Map<FeatureView, Set<number>>;
  /** Its plans: the groups it changed hold the states it wrote. */
  plans: ViewPlan[];
  windows: WindowWrites[];
  /** distinct key → fields added */
  distinct: Map<string, string[]>;
  /** item → its decayed activity after the batch [s, as of event time r] */
  trend: Map<string, [number, number]>;
  /** Items with redelivered events only: their trending score projected again, from the stored activity. */
  trendReplayed: Map<string, [number, number]>;
  /** When the features were computed (the public hashes' updated_at). */
  now: number;
}

export interface PlanContext {
  keys: StoreKeys;
  /** Width of an event-id marker bucket (the shortest window). */
  bucketMs: number;
  trending: { view: FeatureView; spec: TrendingSpec } | null;
  /**
   * The public hashes and the trending set are written after the transaction, not in it
   * (partitioned: they live in other Redis Cluster slots): a redelivered event's entity is then
   * projected again, in case the worker died between its transaction and its projection.
   */
  reproject: boolean;
}

/** Groups a batch's events of one view by window and entity (only those `include` accepts, when given). */
export function planView(view: FeatureView, events: readonly ActivityEvent[], include?: (e: ActivityEvent) => boolean): ViewPlan {
  const byWindow = new Map<number, Map<string, Group>>();
  const groupOf: (Group | undefined)[] = new Array(events.length);
  const next = new Int32Array(events.length).fill(-1);
  let multiWindow = false;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (include && !include(e)) continue;
    const ws = windowStart(e.event_time, view.windowMs);
    let groups = byWindow.get(ws);
    if (!groups) {
      byWindow.set(ws, (groups = new Map()));
      multiWindow = byWindow.size > 1;
    }
    const id = e[view.key];
    let g = groups.get(id);
    if (!g) groups.set(id, (g = { entityId: id, first: i, last: i, state: undefined, late: false, changed: false, newer: false, replayed: false }));
    else {
      next[g.last] = i;
      g.last = i;
    }
    groupOf[i] = g;
  }
  const p: ViewPlan = {
    view,
    byWindow,
    groupOf,
    next,
    applied: new Uint8Array(events.length),
    distinctAggs: [],
    counts: { applied: 0, duplicates: 0, late: 0 },
  };
  p.distinctAggs = view.aggregations.flatMap((a, i) => (stateOp(a) === "distinct" ? [i] : []));
  // An entity with events in several windows shows the newest in its public hash.
  if (multiWindow) for (const [ws, groups] of byWindow) for (const id of groups.keys()) noteNewer(p, id, ws);
  return p;
}

/** The entity has state in window ws: its groups in older windows are not its newest. */
export function noteNewer(p: ViewPlan, entityId: string, ws: number): void {
  for (const [at, groups] of p.byWindow) {
    if (at >= ws) continue;
    const g = groups.get(entityId);
    if (g) g.newer = true;
  }
}

/** The plan of the view that scores the trending set (none without one). */
export function trendPlanOf(plans: readonly ViewPlan[], ctx: PlanContext): ViewPlan | undefined {
  return ctx.trending ? plans.find((x) => x.view === ctx.trending!.view) : undefined;
}

/**
 * What the batch does, from its complete snapshot (folded in place: the snapshot's groups end
 * holding the states written). Lateness is judged against the watermark before the batch.
 */
export function planWrites(
  events: readonly ActivityEvent[],
  snap: Snapshot,
  now: number,
  ctx: PlanContext,
): { counts: Record<string, ViewCounts>; writeSet: WriteSet } {
  const { plans, status } = snap;
  const counts: Record<string, ViewCounts> = {};
  for (const p of plans) {
    counts[p.view.entity] = p.counts;
    const watermark = watermarkOf(p.view, snap.high);
    const st = status.get(p.view)!;
    for (const [ws, groups] of p.byWindow) {
      const s = st.get(ws);
      const refused = isWindowClosed(ws + p.view.windowMs, watermark) || (s !== undefined && s !== "open");
      for (const g of groups.values()) g.late = refused;
    }
  }
  const w: WriteSet = {
    high: snap.high,
    raisesHigh: false,
    marks: new Set(),
    markBuckets: new Map(),
    opened: new Map(),
    plans,
    windows: [],
    distinct: new Map(),
    trend: new Map(),
    trendReplayed: new Map(),
    now,
  };
  const trendEvents = new Map<string, ActivityEvent[]>();
  const trendReplayed = new Set<string>();
  const tplan = trendPlanOf(plans, ctx);
  const weights = ctx.trending?.spec.weights ?? {};
  let high = snap.high;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.event_time > high) high = e.event_time;
    const duplicate = snap.applied.has(e.event_id) || w.marks.has(e.event_id);
    let any = false;
    for (const p of plans) {
      const g = p.groupOf[i];
      if (!g) continue;
      if (g.late) p.counts.late++;
      else if (duplicate) {
        p.counts.duplicates++;
        if (ctx.reproject) {
          g.replayed = true;
          if (p === tplan && weights[e.event_type]) trendReplayed.add(g.entityId);
        }
      } else {
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
      w.marks.add(e.event_id);
      const b = windowStart(e.event_time, ctx.bucketMs);
      let list = w.markBuckets.get(b);
      if (!list) w.markBuckets.set(b, (list = []));
      list.push(e.event_id);
    }
  }
  for (const p of plans) {
    const view = p.view;
    for (const [ws, groups] of p.byWindow) {
      const dkey = ctx.keys.distinct(view.entity, ws);
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
      const replayed: Group[] = [];
      for (const g of groups.values()) {
        if (!g.changed) {
          if (g.replayed && g.state && !g.newer) replayed.push(g);
          continue;
        }
        const s = (g.state ??= emptyState(view));
        entityId = g.entityId;
        for (let e = g.first; e !== -1; e = p.next[e]!) if (p.applied[e]) foldEvent(view, s, events[e]!, isNewValue);
        changed.push(g);
      }
      if (changed.length === 0) {
        if (replayed.length > 0) w.windows.push({ view, windowStart: ws, changed, added, opened: false, replayed });
        continue;
      }
      if (added.length > 0) w.distinct.set(dkey, added);
      const opened = !status.get(view)!.has(ws);
      if (opened) {
        let set = w.opened.get(view);
        if (!set) w.opened.set(view, (set = new Set()));
        set.add(ws);
      }
      w.windows.push({ view, windowStart: ws, changed, added, opened, replayed });
    }
  }
  if (ctx.trending) for (const [item, evs] of trendEvents) w.trend.set(item, decayed(snap.trend.get(item) ?? [0, -Infinity], evs, ctx.trending.spec));
  for (const item of trendReplayed) {
    const t = snap.trend.get(item);
    if (t && !w.trend.has(item)) w.trendReplayed.set(item, t);
  }
  w.raisesHigh = high > snap.high;
  w.high = high;
  return { counts, writeSet: w };
}

/**
 * An item's activity with these events added: each weighs its event type's weight, halved every
 * half-life. Kept relative to the newest event time seen (ref), so it never overflows and the
 * result does not depend on arrival order.
 */
function decayed([s, ref]: [number, number], events: readonly ActivityEvent[], spec: TrendingSpec): [number, number] {
  const H = spec.halfLifeMs;
  for (const e of events) {
    const weight = spec.weights[e.event_type]!;
    if (ref === -Infinity) {
      s = weight;
      ref = e.event_time;
    } else if (e.event_time > ref) {
      s = s * 2 ** (-(e.event_time - ref) / H) + weight;
      ref = e.event_time;
    } else s += weight * 2 ** (-(ref - e.event_time) / H);
  }
  return [s, ref];
}

export function distinctSet(values: DistinctValues, dkey: string): Set<string> {
  let set = values.get(dkey);
  if (!set) values.set(dkey, (set = new Set()));
  return set;
}

/**
 * Completes a snapshot with what one of our batches wrote, in case the reads ran before it
 * landed. Idempotent (the writes are values, not increments), so applying one that the reads
 * already saw changes nothing.
 */
export function overlay(snap: Snapshot, w: WriteSet, events: readonly ActivityEvent[]): void {
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
