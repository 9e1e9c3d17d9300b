// Window maths and the meaning of the declared aggregations (no services needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  contributions,
  emptyState,
  featuresOf,
  foldEvent,
  isLate,
  isWindowClosed,
  stateFields,
  watermarkOf,
  windowEnd,
  windowStart,
} from "../../features/windows.js";
import { storeKeys } from "../../features/window-store.js";
import { ITEM_FEATURES, USER_FEATURES, type ActivityEvent, type FeatureView } from "../../features/definitions.js";

const MIN = 60_000;
const T0 = Date.UTC(2024, 2, 10, 12, 0, 0); // a window boundary

test("tumbling windows start at multiples of the length since the epoch", () => {
  assert.equal(windowStart(T0, 5 * MIN), T0);
  assert.equal(windowStart(T0 + 5 * MIN - 1, 5 * MIN), T0, "the last millisecond belongs to the window");
  assert.equal(windowStart(T0 + 5 * MIN, 5 * MIN), T0 + 5 * MIN, "the end is exclusive");
  assert.equal(windowStart(T0 + 2 * MIN + 17, 5 * MIN), T0);
  assert.equal(windowEnd(T0 + 1, 5 * MIN), T0 + 5 * MIN);
  // Before the epoch floor() matters: -1 ms is in [-5 min, 0), not [0, 5 min).
  assert.equal(windowStart(-1, 5 * MIN), -5 * MIN);
});

test("the watermark trails the newest event time and closes windows at their end", () => {
  const view = { windowMs: 5 * MIN, watermarkMs: 10 * MIN };
  assert.equal(watermarkOf(view, T0 + 30 * MIN), T0 + 20 * MIN);
  assert.equal(watermarkOf(view, -Infinity), -Infinity, "no event yet: nothing is closed");
  assert.equal(isWindowClosed(T0 + 20 * MIN, T0 + 20 * MIN), true, "closed when the watermark reaches the end");
  assert.equal(isWindowClosed(T0 + 20 * MIN + 1, T0 + 20 * MIN), false);
  // Newest event at 12:30 → watermark 12:20: the window [12:15, 12:20) is closed, [12:20, 12:25) open.
  assert.equal(isLate(view, T0 + 19 * MIN, T0 + 30 * MIN), true);
  assert.equal(isLate(view, T0 + 20 * MIN, T0 + 30 * MIN), false);
  assert.equal(isLate(view, T0 + 15 * MIN, T0 + 30 * MIN - 1), false, "12:29:59.999 → watermark before 12:20");
  assert.equal(isLate(view, T0, -Infinity), false);
});

function event(over: Partial<ActivityEvent>): ActivityEvent {
  return { event_id: "e", user_id: "u", event_type: "view", page_id: "p", session_duration: 10, amount: 0, event_time: T0, ...over };
}

test("contributions follow each aggregation's condition", () => {
  // clicks_last_5min (count click), avg_session_duration, unique_pages_viewed, purchase_amount (sum amount of purchases)
  assert.deepEqual(contributions(USER_FEATURES, event({ event_type: "click", page_id: "p9", session_duration: 12.5, amount: 3 })), [1, 12.5, "p9", false]);
  assert.deepEqual(contributions(USER_FEATURES, event({ event_type: "purchase", amount: 19.99 })), [false, 10, "p", 19.99]);
  assert.deepEqual(contributions(ITEM_FEATURES, event({ event_type: "view" })), [1, false, false]);
  assert.deepEqual(contributions(ITEM_FEATURES, event({ event_type: "share" })), [false, false, false]);
});

test("state fields: averages keep a sum and a count", () => {
  assert.deepEqual(stateFields(USER_FEATURES), ["n", "t", "a0", "a1s", "a1n", "a2", "a3"]);
  assert.deepEqual(stateFields(ITEM_FEATURES), ["n", "t", "a0", "a1", "a2"]);
});

test("features from a window state, with the seed's engagement score", () => {
  const f = featuresOf(USER_FEATURES, { n: 4, a0: 2, a1s: 90, a1n: 4, a2: 3, a3: 25.5 });
  assert.deepEqual(f, {
    clicks_last_5min: 2,
    avg_session_duration: 22.5,
    unique_pages_viewed: 3,
    purchase_amount: 25.5,
    engagement_score: 2 * 0.3 + 3 * 0.4 + 30,
  });
  const noPurchase = featuresOf(USER_FEATURES, { n: 1, a0: 0, a1s: 5, a1n: 1, a2: 1 });
  assert.equal(noPurchase.purchase_amount, 0);
  assert.equal(noPurchase.engagement_score, 0.4);
  const item = featuresOf(ITEM_FEATURES, { n: 5, a0: 4, a1: 1 });
  assert.deepEqual(item, { item_views_5min: 4, item_clicks_5min: 1, item_purchases_5min: 0, item_ctr_5min: 0.25 });
  assert.equal(featuresOf(ITEM_FEATURES, { n: 1, a1: 1 }).item_ctr_5min, 0, "no views: ctr 0, not Infinity");
});

/** A user view of these aggregations, 5-minute windows. */
function userView(aggregations: FeatureView["aggregations"], derived: FeatureView["derived"] = []): FeatureView {
  return { entity: "user", key: "user_id", windowMs: 5 * MIN, watermarkMs: 0, aggregations, derived };
}

const MAX_AND_MIN: FeatureView["aggregations"] = [
  { name: "longest", kind: "max", field: "session_duration" },
  { name: "smallest_purchase", kind: "min", field: "amount", where: { event_type: "purchase" } },
];

test("max and min aggregations read 0 when nothing matched", () => {
  const view = userView(MAX_AND_MIN);
  assert.deepEqual(contributions(view, event({ session_duration: 7 })), [7, false]);
  assert.deepEqual(featuresOf(view, { n: 1, a0: 7 }), { longest: 7, smallest_purchase: 0 });
});

test("folding events one by one gives the features computed from the whole window", () => {
  const view = userView(
    [
      ...MAX_AND_MIN,
      { name: "clicks", kind: "count", where: { event_type: "click" } },
      { name: "spent", kind: "sum", field: "amount" },
      { name: "avg_session", kind: "avg", field: "session_duration" },
      { name: "pages", kind: "count_distinct", field: "page_id" },
    ],
    [{ name: "clicks_per_page", description: "", compute: (v) => (v.pages! > 0 ? v.clicks! / v.pages! : 0) }],
  );
  const events = [
    event({ event_type: "view", page_id: "a", session_duration: 4, event_time: T0 + 30_000 }),
    event({ event_type: "purchase", page_id: "b", amount: 12.5, session_duration: 9, event_time: T0 + 10_000 }),
    event({ event_type: "click", page_id: "a", session_duration: 2, event_time: T0 + 50_000 }),
    event({ event_type: "purchase", page_id: "c", amount: 3.25, session_duration: 1, event_time: T0 + 20_000 }),
  ];
  const s = emptyState(view);
  const seen = new Set<string>();
  for (const e of events) foldEvent(view, s, e, (agg, value) => !seen.has(`${agg}:${value}`) && !!seen.add(`${agg}:${value}`));
  assert.equal(s[0], 4, "events counted");
  assert.equal(s[1], T0 + 50_000, "the newest event time, whatever the order");
  assert.deepEqual(featuresOf(view, s), { longest: 9, smallest_purchase: 3.25, clicks: 1, spent: 15.75, avg_session: 4, pages: 3, clicks_per_page: 1 / 3 });
  const quiet = emptyState(view);
  foldEvent(view, quiet, event({ event_type: "view", page_id: "", session_duration: 0 }), () => true);
  assert.deepEqual(
    featuresOf(view, quiet),
    { longest: 0, smallest_purchase: 0, clicks: 0, spent: 0, avg_session: 0, pages: 0, clicks_per_page: 0 },
    "nothing matched: zeros, not NaN",
  );
});

test("internal keys live under the namespace prefix, so cleanup finds them", () => {
  const keys = storeKeys("ns:");
  for (const k of [keys.windows("user"), keys.state("user", T0), keys.distinct("item", T0), keys.seen(T0), keys.trend, keys.eventTimeHigh]) {
    assert.ok(k.startsWith("ns:features:"), k);
  }
  assert.notEqual(keys.state("user", T0), keys.state("item", T0), "views do not share window state");
});
