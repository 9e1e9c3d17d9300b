// Event-time window maths and the meaning of each declared aggregation, in plain functions.
//
// A view's windows are tumbling: [start, start + windowMs) with start a multiple of windowMs since
// the epoch. The watermark is the newest event time seen minus the view's watermarkMs; a window
// is closed once the watermark reaches its end, and an event whose window is closed is late.
//
// The state of one window is a flat list of numbers (what the window store keeps in Redis):
//   n   events applied          t   newest event time applied
//   a<i> count / sum / max / min / distinct count of aggregation i
//   a<i>s, a<i>n  sum and count of an average
// This file says how each event contributes to that state (`contributions`, `foldEvent`) and how
// the state becomes features (`featuresOf`).
import type { ActivityEvent, Aggregation, FeatureView } from "./definitions.js";

export function windowStart(eventTimeMs: number, windowMs: number): number {
  // Math.floor, not truncation: events before 1970 would otherwise land one window late.
  return Math.floor(eventTimeMs / windowMs) * windowMs;
}

export function windowEnd(eventTimeMs: number, windowMs: number): number {
  return windowStart(eventTimeMs, windowMs) + windowMs;
}

/** The view's watermark given the newest event time seen (−∞ before any event). */
export function watermarkOf(view: Pick<FeatureView, "watermarkMs">, newestEventTimeMs: number): number {
  return newestEventTimeMs - view.watermarkMs;
}

/** A window is closed once the watermark has reached its end. */
export function isWindowClosed(windowEndMs: number, watermarkMs: number): boolean {
  return windowEndMs <= watermarkMs;
}

/** An event is late when the watermark has already closed its window. */
export function isLate(view: Pick<FeatureView, "windowMs" | "watermarkMs">, eventTimeMs: number, newestEventTimeMs: number): boolean {
  return isWindowClosed(windowEnd(eventTimeMs, view.windowMs), watermarkOf(view, newestEventTimeMs));
}

/** How one aggregation's per-event contribution is folded into the window state. */
export type StateOp = "add" | "avg" | "max" | "min" | "distinct";

export function stateOp(a: Aggregation): StateOp {
  switch (a.kind) {
    case "count":
    case "sum":
      return "add";
    case "avg":
      return "avg";
    case "max":
      return "max";
    case "min":
      return "min";
    case "count_distinct":
      return "distinct";
  }
}

/** State fields holding aggregation i's state. */
export function stateFieldsOf(a: Aggregation, i: number): string[] {
  return stateOp(a) === "avg" ? [`a${i}s`, `a${i}n`] : [`a${i}`];
}

/** Every state field of a view: n, t, then each aggregation's fields. */
export function stateFields(view: FeatureView): string[] {
  return ["n", "t", ...view.aggregations.flatMap((a, i) => stateFieldsOf(a, i))];
}

function matches(a: Aggregation, e: ActivityEvent): boolean {
  return !("where" in a) || a.where === undefined || e.event_type === a.where.event_type;
}

/**
 * One event's contribution to each aggregation of the view: false
 * contributes nothing (the condition did not match), otherwise a number to add / average /
 * compare, or for a distinct count the value itself.
 */
export type Contribution = number | string | false;

export function contributions(view: FeatureView, e: ActivityEvent): Contribution[] {
  return view.aggregations.map((a) => contributionOf(a, e));
}

/** One event's contribution to one aggregation (see Contribution). */
export function contributionOf(a: Aggregation, e: ActivityEvent): Contribution {
  if (a.kind === "count_distinct") return e[a.field] ? String(e[a.field]) : false;
  if (!matches(a, e)) return false;
  if (a.kind === "count") return 1;
  return e[a.field];
}

/** A window's state as numbers, keyed by state field (missing fields read as absent). */
export type WindowState = Readonly<Record<string, number | undefined>>;

/**
 * A window's state as values in `stateFields(view)` order, NaN where absent (no event yet, or a
 * max of nothing): how the store keeps it. Numbers only, so V8 keeps them unboxed.
 */
export type StateValues = number[];

/** An empty window's state: every value absent (NaN), in an array of unboxed doubles. */
export function emptyState(view: FeatureView): StateValues {
  const out: number[] = [];
  for (let i = 0; i < layoutOf(view).size; i++) out.push(NaN);
  return out;
}

/** A state value, 0 where absent. */
function orZero(x: number | undefined): number {
  return x === undefined || x !== x ? 0 : x;
}

/** Each aggregation's state op and where its state starts among the view's state values. */
interface Layout {
  ops: StateOp[];
  at: number[];
  /** State values in all: n, t and the aggregations' (stateFields). */
  size: number;
  /** The aggregations by name, reused to hand them to derived features. */
  named: Record<string, number>;
}

const layouts = new WeakMap<FeatureView, Layout>();

function layoutOf(view: FeatureView): Layout {
  let l = layouts.get(view);
  if (!l) {
    const at: number[] = [];
    let next = 2; // after n and t
    view.aggregations.forEach((a, i) => {
      at.push(next);
      next += stateFieldsOf(a, i).length;
    });
    layouts.set(view, (l = { ops: view.aggregations.map(stateOp), at, size: next, named: {} }));
  }
  return l;
}

/**
 * The features of a window from its state values, in `featureNames(view)` order: every
 * aggregation, then the derived features computed from those. Empty aggregates read as 0 (an
 * average over no events, a max of nothing), the default a model sees for a missing feature.
 * `out` may be an array to reuse.
 */
export function featureValues(view: FeatureView, s: ArrayLike<number | undefined>, out: number[] = []): number[] {
  const { ops, at, named } = layoutOf(view);
  const aggs = view.aggregations;
  for (let i = 0; i < aggs.length; i++) {
    const o = at[i]!;
    if (ops[i] === "avg") {
      const n = orZero(s[o + 1]);
      out[i] = n > 0 ? orZero(s[o]) / n : 0;
    } else out[i] = orZero(s[o]);
  }
  if (view.derived.length > 0) {
    for (let i = 0; i < aggs.length; i++) named[aggs[i]!.name] = out[i]!;
    for (let j = 0; j < view.derived.length; j++) {
      const d = view.derived[j]!;
      out[aggs.length + j] = named[d.name] = d.compute(named);
    }
  }
  out.length = aggs.length + view.derived.length;
  return out;
}

/** The features of a window from its state (by field or as values), by name (see featureValues). */
export function featuresOf(view: FeatureView, state: WindowState | ArrayLike<number | undefined>): Record<string, number> {
  const values = featureValues(view, isValues(state) ? state : stateFields(view).map((f) => (state as WindowState)[f]));
  const out: Record<string, number> = {};
  featureNames(view).forEach((name, i) => (out[name] = values[i]!));
  return out;
}

function isValues(x: WindowState | ArrayLike<number | undefined>): x is ArrayLike<number | undefined> {
  return Array.isArray(x);
}

/** The names of a view's features in the order they are written: aggregations, then derived. */
export function featureNames(view: FeatureView): string[] {
  return [...view.aggregations.map((a) => a.name), ...view.derived.map((d) => d.name)];
}

/**
 * Folds one event (its `contributions`) into a window's state values. `isNewValue` tells whether
 * a distinct-count value is new to the window, and remembers it.
 */
export function foldEvent(view: FeatureView, s: StateValues, e: ActivityEvent, isNewValue: (agg: number, value: string) => boolean): void {
  s[0] = orZero(s[0]) + 1;
  if (!(e.event_time <= s[1]!)) s[1] = e.event_time; // NaN (no event yet) compares false
  const { ops, at } = layoutOf(view);
  const aggs = view.aggregations;
  for (let i = 0; i < ops.length; i++) {
    const v = contributionOf(aggs[i]!, e);
    const o = at[i]!;
    switch (ops[i]) {
      case "add":
        s[o] = orZero(s[o]) + (v === false ? 0 : (v as number)); // a sum or count of nothing is 0
        break;
      case "avg":
        if (v !== false) {
          s[o] = orZero(s[o]) + (v as number);
          s[o + 1] = orZero(s[o + 1]) + 1;
        }
        break;
      case "max":
        if (v !== false && !((v as number) <= s[o]!)) s[o] = v as number;
        break;
      case "min":
        if (v !== false && !((v as number) >= s[o]!)) s[o] = v as number;
        break;
      case "distinct":
        s[o] = orZero(s[o]) + (v !== false && isNewValue(i, v as string) ? 1 : 0);
        break;
    }
  }
}
