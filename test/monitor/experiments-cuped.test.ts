// The A/B analysis on the embedded ClickHouse: each user's pre-exposure activity is read from
// user_features (only windows that closed before the user's first exposure and within the
// lookback), the CUPED sums match a hand computation over the same users, and the stored analysis
// reaches `ab_report` with its always-valid p-value, confidence sequence and variance reduction.
// A second analysis keeps the running minimum of the sequential p-value. The CTR sums (clicks and
// shown items per user, from outcomes and predictions) match a hand computation too.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { analyzeExperiment, experimentRows, readVariantCounts } from "../../monitor/experiments.js";
import { checkExperiments } from "../../monitor/experiments.js";
import { readAbReport } from "../../monitor/reports.js";
import { writeMonitoringRows } from "../../monitor/store.js";
import { MONITOR_DEFAULTS } from "../../monitor/options.js";
import { cuped, cupedSums } from "../../monitor/stats/cuped.js";
import { ratioSums } from "../../monitor/stats/ratio.js";
import { assignVariant } from "../../lib/experiments.js";
import type { ClickHouse } from "../../lib/clickhouse.js";
import type { Experiment } from "../../lib/registry.js";
import { seededRandom } from "./fixtures/random.js";

const MINUTE = 60_000;
const USERS = 600;
let rt: TestRuntime;
let ch: ClickHouse;
const start = Date.now() - 60 * MINUTE;
const experiment: Experiment = {
  name: "cuped-exp",
  model: "recommender",
  status: "running",
  createdAt: new Date(start).toISOString(),
  createdBy: "test",
  variants: [
    { name: "control", traffic: 50, target: "production" },
    { name: "treatment", traffic: 50, target: "candidate" },
  ],
};
/** What the analysis must find: per variant, the (X, Y) of each user. */
const truth = new Map<string, { x: number[]; y: number[]; clicks: number[]; shown: number[] }>([
  ["control", { x: [], y: [], clicks: [], shown: [] }],
  ["treatment", { x: [], y: [], clicks: [], shown: [] }],
]);

const iso = (ms: number) => new Date(ms).toISOString();

before(async () => {
  rt = testRuntime();
  ch = await rt.clickhouse();
  const random = seededRandom(17);
  const exposures = [];
  const outcomes = [];
  const windows = [];
  const predictions = [];
  for (let u = 0; u < USERS; u++) {
    const user = `u${u}`;
    const variant = assignVariant(experiment, user).name;
    const firstSeen = start + u * 5000;
    // Activity before exposure: two windows that count, one after the exposure and one older than
    // the lookback that must not.
    const a = Math.floor(random() * 10);
    const b = Math.floor(random() * 10);
    windows.push({ user_id: user, window_start: iso(firstSeen - 20 * MINUTE), window_end: iso(firstSeen - 15 * MINUTE), features: {}, event_count: a });
    windows.push({ user_id: user, window_start: iso(firstSeen - 6 * MINUTE), window_end: iso(firstSeen - 1 * MINUTE), features: {}, event_count: b });
    windows.push({ user_id: user, window_start: iso(firstSeen), window_end: iso(firstSeen + 5 * MINUTE), features: {}, event_count: 50 });
    windows.push({
      user_id: user,
      window_start: iso(firstSeen - 9 * 24 * 60 * MINUTE),
      window_end: iso(firstSeen - 9 * 24 * 60 * MINUTE + 5 * MINUTE),
      features: {},
      event_count: 70,
    });
    const x = a + b;
    const converted = random() < Math.min(0.9, 0.02 + 0.04 * x) * (variant === "treatment" ? 1.15 : 1) ? 1 : 0;
    truth.get(variant)!.x.push(x);
    truth.get(variant)!.y.push(converted);
    let userClicks = 0;
    let userShown = 0;
    for (let r = 0; r < 2; r++) {
      const requestId = `${user}-r${r}`;
      exposures.push({
        request_id: requestId,
        time: iso(firstSeen + r * 1000),
        experiment: experiment.name,
        variant,
        user_id: user,
        model_name: "recommender",
        model_version: "1",
      });
      // Three items shown and one scored but not shown; the converting request clicked item i0,
      // the other request clicks i1 (twice: one distinct click) with a probability that grows with x.
      for (let k = 0; k < 4; k++) {
        predictions.push({
          request_id: requestId,
          time: iso(firstSeen + r * 1000),
          user_id: user,
          item_id: `i${k}`,
          position: k < 3 ? k + 1 : 0,
          score: 0.5,
          model_name: "recommender",
          model_version: "1",
          experiment: experiment.name,
          variant,
          current_page: "p",
          device_type: "desktop",
          features: {},
          missing_features: [],
          latency_ms: 1,
        });
      }
      userShown += 3;
      if (converted && r === 1) {
        outcomes.push({
          outcome_id: `o-${requestId}`,
          request_id: requestId,
          item_id: "i0",
          time: iso(firstSeen + 2000),
          clicked: 1,
          converted: 1,
          revenue: 5,
        });
        userClicks++;
      } else if (random() < 0.1 + 0.03 * x) {
        for (const n of [0, 1]) {
          outcomes.push({
            outcome_id: `c${n}-${requestId}`,
            request_id: requestId,
            item_id: "i1",
            time: iso(firstSeen + 2000),
            clicked: 1,
            converted: 0,
            revenue: 0,
          });
        }
        userClicks++;
      }
    }
    truth.get(variant)!.clicks.push(userClicks);
    truth.get(variant)!.shown.push(userShown);
  }
  await ch.client.insert({ table: "exposures", values: exposures, format: "JSONEachRow" });
  await ch.client.insert({ table: "outcomes", values: outcomes, format: "JSONEachRow" });
  await ch.client.insert({ table: "predictions", values: predictions, format: "JSONEachRow" });
  await ch.client.insert({ table: "user_features", values: windows, format: "JSONEachRow" });
});

after(async () => {
  await rt?.cleanup();
});

it("reads each user's pre-exposure activity into the CUPED sums, as computed by hand", async () => {
  const window = { from: new Date(start), to: new Date() };
  const counts = await readVariantCounts(ch, experiment.name, window, MONITOR_DEFAULTS.experiments.cupedLookbackMs);
  assert.deepEqual(
    counts.map((c) => c.variant),
    ["control", "treatment"],
  );
  for (const c of counts) {
    const t = truth.get(c.variant)!;
    const expected = cupedSums(t.x, t.y);
    assert.equal(c.users, t.y.length);
    assert.deepEqual(c.cupedSums, expected, c.variant);
    assert.deepEqual(c.ctrSums, ratioSums(t.clicks, t.shown, t.x), `${c.variant}: CTR sums`);
  }
  const result = analyzeExperiment(experiment, counts, window, MONITOR_DEFAULTS.experiments);
  const treatment = result.variants.find((v) => !v.control)!;
  const byHand = cuped([cupedSums(truth.get("control")!.x, truth.get("control")!.y), cupedSums(truth.get("treatment")!.x, truth.get("treatment")!.y)]);
  assert.ok(Math.abs(treatment.cuped!.varianceReduction - byHand.varianceReduction) < 1e-12);
  assert.ok(treatment.cuped!.varianceReduction > 0.1, `variance reduction ${treatment.cuped!.varianceReduction}`);
  // The adjusted interval is narrower than the raw one by the variance reduction.
  const rawWidth = treatment.sequential!.upper - treatment.sequential!.lower;
  const adjustedWidth = treatment.cuped!.sequential.upper - treatment.cuped!.sequential.lower;
  assert.ok(adjustedWidth < rawWidth, `${adjustedWidth} ≥ ${rawWidth}`);
});

it("the analysis lands in ab_report with the sequential and CUPED figures; a later one keeps the smallest sequential p", async () => {
  const registry = {
    listExperiments: async () => [experiment],
    getExperiment: async () => experiment,
    resolve: async () => "1",
  };
  const first = await checkExperiments(ch, registry, new Date(), MONITOR_DEFAULTS.experiments);
  await writeMonitoringRows(ch, first.rows);
  const t1 = first.experiments[0]!.variants.find((v) => !v.control)!;
  const [row] = (await readAbReport(ch, experiment.name)).filter((r) => !r.control);
  assert.ok(Math.abs(row!.sequentialPValue - t1.sequentialPValue!) < 1e-12);
  assert.ok(Math.abs(row!.varianceReduction - t1.cuped!.varianceReduction) < 1e-12);
  assert.ok(row!.sequentialLower < row!.sequentialUpper && row!.cupedLower < row!.cupedUpper);
  assert.ok(Number.isFinite(row!.cupedPValue));
  // The CTR side: what report ab prints comes from the same analysis.
  assert.equal(row!.shown, t1.shown);
  assert.equal(row!.clicks, t1.clicks);
  assert.ok(Math.abs(row!.ctr - t1.ctr) < 1e-12 && Math.abs(row!.ctrSequentialPValue - t1.ctrTest!.sequentialPValue) < 1e-12);
  assert.ok(
    row!.ctrSequentialLower < row!.ctrLower && row!.ctrUpper < row!.ctrSequentialUpper,
    "the always-valid interval is wider than the fixed-horizon one",
  );
  assert.ok(Number.isFinite(row!.ctrVarianceReduction) && Number.isFinite(row!.ctrCupedPValue));

  // A stored earlier analysis with a smaller p: the always-valid p-value never goes back up.
  const earlier = experimentRows(
    {
      ...first.experiments[0]!,
      variants: first.experiments[0]!.variants.map((v) =>
        v.control ? v : { ...v, sequentialPValue: 1e-6, ctrTest: { ...v.ctrTest!, sequentialPValue: 2e-6 } },
      ),
    },
    new Date(Date.now() - 1000),
    new Map(),
    MONITOR_DEFAULTS.experiments,
  );
  await writeMonitoringRows(ch, earlier);
  const second = await checkExperiments(ch, registry, new Date(), MONITOR_DEFAULTS.experiments);
  const t2 = second.experiments[0]!.variants.find((v) => !v.control)!;
  assert.equal(t2.sequentialPValue, 1e-6);
  assert.equal(t2.ctrTest!.sequentialPValue, 2e-6);
  assert.equal(t2.ctrTest!.sequentialSignificant, true);
});
