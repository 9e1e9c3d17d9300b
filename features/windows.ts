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
  return view.aggregations.map((a) => {
    if (a.kind === "count_distinct") return e[a.field] ? String(e[a.field]) : false;
    if (!matches(a, e)) return false;
    if (a.kind === "count") return 1;
    return e[a.field];
  });
}

/** A window's state as numbers, keyed by state field (missing fields read as absent). */
export type WindowState = Readonly<Record<string, number | undefined>>;

/**
 * The features of a window from its state: every aggregation by name, then the derived features
 * computed from those. Empty aggregates read as 0 (an average over no events, a max of nothing),
 * the default a model sees for a missing feature.
 */
export function featuresOf(view: FeatureView, state: WindowState): Record<string, number> {
  const out: Record<string, number> = {};
  view.aggregations.forEach((a, i) => {
    switch (stateOp(a)) {
      case "avg": {
        const n = state[`a${i}n`] ?? 0;
        out[a.name] = n > 0 ? (state[`a${i}s`] ?? 0) / n : 0;
        break;
      }
      default:
        out[a.name] = state[`a${i}`] ?? 0;
    }
  });
  for (const d of view.derived) out[d.name] = d.compute(out);
  return out;
}

/** The names of a view's features in the order they are written: aggregations, then derived. */
export function featureNames(view: FeatureView): string[] {
  return [...view.aggregations.map((a) => a.name), ...view.derived.map((d) => d.name)];
}

/**
 * Folds one event (its time and `contributions`) into a window's state, given as values in
 * `stateFields(view)` order (missing: undefined). `isNewValue` tells whether a distinct-count
 * value is new to the window, and remembers it.
 */
export function foldEvent(
  view: FeatureView,
  s: (number | undefined)[],
  eventTime: number,
  c: readonly Contribution[],
  isNewValue: (agg: number, value: string) => boolean,
): void {
  s[0] = (s[0] ?? 0) + 1;
  if (s[1] === undefined || eventTime > s[1]) s[1] = eventTime;
  let at = 2;
  view.aggregations.forEach((a, i) => {
    const v = c[i]!;
    switch (stateOp(a)) {
      case "add":
        s[at] = (s[at] ?? 0) + (v === false ? 0 : (v as number));
        at += 1;
        break;
      case "avg":
        if (v !== false) {
          s[at] = (s[at] ?? 0) + (v as number);
          s[at + 1] = (s[at + 1] ?? 0) + 1;
        }
        at += 2;
        break;
      case "max":
        if (v !== false && (s[at] === undefined || (v as number) > s[at]!)) s[at] = v as number;
        at += 1;
        break;
      case "min":
        if (v !== false && (s[at] === undefined || (v as number) < s[at]!)) s[at] = v as number;
        at += 1;
        break;
      case "distinct":
        s[at] = (s[at] ?? 0) + (v !== false && isNewValue(i, String(v)) ? 1 : 0);
        at += 1;
        break;
    }
  });
}
