// The feature definitions: the one place that says which features exist, how the streaming
// pipeline computes them from activity events, and how a model reads them at serving time.
// Reproduces the seed pipeline: per user, 5-minute tumbling event-time windows with a 10-minute
// watermark; per item (page), views and clicks in the window and a trending score.
import type { FeatureSpec } from "../lib/registry.js";

/** An activity event as the pipeline sees it after parsing (JSON or protobuf). */
export interface ActivityEvent {
  event_id: string;
  user_id: string;
  event_type: string;
  page_id: string;
  session_duration: number;
  amount: number;
  /** Milliseconds since epoch. */
  event_time: number;
  device_type?: string;
}

export type NumericField = "session_duration" | "amount";
export type KeyField = "user_id" | "page_id";

/** A windowed aggregation over the events of one entity. */
export type Aggregation =
  | { name: string; kind: "count"; where?: { event_type: string } }
  | { name: string; kind: "sum" | "avg" | "max" | "min"; field: NumericField; where?: { event_type: string } }
  | { name: string; kind: "count_distinct"; field: KeyField | "event_type" };

/** A feature computed from a window's aggregates. */
export interface DerivedFeature {
  name: string;
  description: string;
  compute(values: Readonly<Record<string, number>>): number;
  /**
   * The same computation as a formula over feature names (features/formula.ts: + - * /,
   * comparisons, c ? a : b): the definition as data, for people and tools that read it. Must
   * agree with `compute` (test/features/formula.test.ts checks).
   */
  formula?: string;
}

export interface FeatureView {
  /** Redis hash `user_features:{id}` or `item_features:{id}`; ClickHouse table `<entity>_features`. */
  entity: "user" | "item";
  /** Event field that identifies the entity. */
  key: KeyField;
  /** Tumbling window length by event time. */
  windowMs: number;
  /** How far behind the newest event time a window closes; later events are dropped as late. */
  watermarkMs: number;
  aggregations: Aggregation[];
  derived: DerivedFeature[];
}

const MINUTE = 60_000;

export const USER_FEATURES: FeatureView = {
  entity: "user",
  key: "user_id",
  windowMs: 5 * MINUTE,
  watermarkMs: 10 * MINUTE,
  aggregations: [
    { name: "clicks_last_5min", kind: "count", where: { event_type: "click" } },
    { name: "avg_session_duration", kind: "avg", field: "session_duration" },
    { name: "unique_pages_viewed", kind: "count_distinct", field: "page_id" },
    { name: "purchase_amount", kind: "sum", field: "amount", where: { event_type: "purchase" } },
  ],
  derived: [
    {
      name: "engagement_score",
      description: "clicks*0.3 + unique_pages*0.4 + (purchase_amount > 0 ? 30 : 0), as in the seed pipeline",
      compute: (v) => (v.clicks_last_5min ?? 0) * 0.3 + (v.unique_pages_viewed ?? 0) * 0.4 + ((v.purchase_amount ?? 0) > 0 ? 30 : 0),
      formula: "clicks_last_5min * 0.3 + unique_pages_viewed * 0.4 + (purchase_amount > 0 ? 30 : 0)",
    },
  ],
};

export const ITEM_FEATURES: FeatureView = {
  entity: "item",
  key: "page_id",
  windowMs: 5 * MINUTE,
  watermarkMs: 10 * MINUTE,
  aggregations: [
    { name: "item_views_5min", kind: "count", where: { event_type: "view" } },
    { name: "item_clicks_5min", kind: "count", where: { event_type: "click" } },
    { name: "item_purchases_5min", kind: "count", where: { event_type: "purchase" } },
  ],
  derived: [
    {
      name: "item_ctr_5min",
      description: "clicks / views in the window (0 without views)",
      compute: (v) => ((v.item_views_5min ?? 0) > 0 ? (v.item_clicks_5min ?? 0) / v.item_views_5min! : 0),
      formula: "item_views_5min > 0 ? item_clicks_5min / item_views_5min : 0",
    },
  ],
};

export const FEATURE_VIEWS: readonly FeatureView[] = [USER_FEATURES, ITEM_FEATURES];

/** The trending set: a sorted set of items scored by exponentially decayed activity. */
export const TRENDING = {
  /** Weight of each event type in an item's activity score. */
  weights: { view: 1, click: 3, purchase: 10 } as Record<string, number>,
  /** Activity loses half its weight every half-life (event time). */
  halfLifeMs: 30 * MINUTE,
  /** The set keeps this many items. */
  maxItems: 1000,
};

/** Request fields a model can read, with their vocabularies (unknown values take code -1). */
export const REQUEST_FEATURES: FeatureSpec[] = [
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile", "tablet"] },
];

/** Every feature the pipeline maintains, as serving specs (default 0 for windowed counts). */
export function allFeatureSpecs(): FeatureSpec[] {
  const fromView = (view: FeatureView): FeatureSpec[] =>
    [...view.aggregations.map((a) => a.name), ...view.derived.map((d) => d.name)].map((name) => ({
      name,
      source: view.entity,
      type: "numeric" as const,
      default: 0,
    }));
  return [...FEATURE_VIEWS.flatMap(fromView), ...REQUEST_FEATURES];
}

/**
 * The feature vector served (and logged) before any model exists, so the first training run has
 * every pipeline feature to learn from.
 */
export function defaultModelFeatures(): FeatureSpec[] {
  return allFeatureSpecs();
}

/** Looks up a known feature by name, for `models push --features a,b,c`. */
export function featureSpec(name: string): FeatureSpec | undefined {
  return allFeatureSpecs().find((f) => f.name === name);
}
