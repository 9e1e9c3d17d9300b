// A/B analysis per experiment and variant, per user (the unit the router randomizes): counts, rates
// and revenue, each treatment against control (z-test, lift interval, Welch's t on revenue), the
// sample-ratio-mismatch check, the always-valid mSPRT (stats/sequential.ts) and CUPED (stats/cuped.ts),
// for conversion and for CTR (clicks per shown item, users as clusters: stats/ratio.ts).
// What each figure means and when it is valid: monitor/README.md.
import type { ClickHouse } from "../lib/clickhouse.js";
import type { Experiment, Registry } from "../lib/registry.js";
import type { ExperimentOptions } from "./options.js";
import {
  adjustPValues,
  proportionArm,
  relativeLift,
  requiredSampleSize,
  sampleRatioMismatch,
  twoProportionZTest,
  welchTTest,
  type LiftResult,
  type SrmResult,
  type WelchResult,
} from "./stats/ab-tests.js";
import { alwaysValidPValue, defaultTau2, msprt, sequentialProportionTest, type SequentialResult } from "./stats/sequential.js";
import { cuped, type CupedSums } from "./stats/cuped.js";
import { ratioArm, ratioCuped, type RatioSums } from "./stats/ratio.js";
import { normalQuantile, normalSf } from "./stats/special-functions.js";
import { floatIn, toClickHouseTime, type MonitoringRow, type Verdict } from "./store.js";

/** Per-variant figures as ClickHouse aggregates them (per user first, then per variant). */
export interface VariantCounts {
  variant: string;
  users: number;
  exposures: number;
  conversions: number;
  revenue: number;
  /** Mean and sample variance of revenue per user. */
  avgRevenue: number;
  revenueVariance: number;
  /** Users of this variant who were also exposed to another one (should be 0 with hash routing). */
  crossovers: number;
  /** Per-user sums of Y = converted (0/1) and X = pre-exposure activity (events), for CUPED. */
  cupedSums?: CupedSums;
  /** Per-user sums of clicks (c), shown items (s) and X, for the CTR (delta method) and its CUPED. */
  ctrSums?: RatioSums;
}

/** A treatment's CTR (clicks per shown item, users as clusters) against control's. */
export interface CtrComparison {
  /** Treatment − control, with its fixed-horizon interval and z-test (delta-method variance). */
  difference: number;
  lower: number;
  upper: number;
  pValue: number;
  /** Relative lift of the CTR. */
  lift: number;
  /** The always-valid test of the difference at this look, and its running minimum p over looks. */
  sequential: SequentialResult;
  sequentialPValue: number;
  sequentialSignificant: boolean;
  /** CUPED on the ratio metric with the same covariate as conversion's. */
  cuped?: Omit<CupedComparison, "sequential"> & { sequential: SequentialResult };
}

/** CUPED-adjusted comparison of a treatment's conversion rate against control. */
export interface CupedComparison {
  theta: number;
  /** 1 − Var(adjusted difference) / Var(raw difference). */
  varianceReduction: number;
  /** Adjusted rate difference (treatment − control) with its fixed-horizon interval and z-test. */
  difference: number;
  lower: number;
  upper: number;
  pValue: number;
  /** The always-valid test on the adjusted difference. */
  sequential: SequentialResult;
}

export interface VariantResult extends VariantCounts {
  traffic: number;
  target: string;
  control: boolean;
  conversionRate: number;
  /** Items shown to the variant's users, clicks on them, and their ratio. */
  shown: number;
  clicks: number;
  ctr: number;
  /** Treatments only: against control. */
  z?: number;
  pValue?: number;
  /** Holm-adjusted over the treatments of the experiment. */
  pAdjusted?: number;
  lift?: LiftResult;
  revenueLift?: LiftResult;
  revenueTest?: WelchResult;
  significant?: boolean;
  /** Always-valid test of the conversion-rate difference (treatment − control). */
  sequential?: SequentialResult;
  /** The sequential p-value's running minimum over the analyses so far (always valid). */
  sequentialPValue?: number;
  sequentialSignificant?: boolean;
  cuped?: CupedComparison;
  ctrTest?: CtrComparison;
  verdict: Verdict;
}

export interface ExperimentResult {
  experiment: string;
  model: string;
  status: Experiment["status"];
  window: { from: Date; to: Date };
  control: string;
  variants: VariantResult[];
  srm: SrmResult;
  /** Users per variant needed to see the minimum detectable lift at the wanted power. */
  requiredUsers: number;
  tooSmall: boolean;
  verdict: Verdict;
  notes: string[];
}

/**
 * The statistics of one experiment from its per-variant counts; pure. `previousSequential` holds
 * each treatment's always-valid p-value from earlier analyses (its running minimum is kept).
 */
export function analyzeExperiment(
  experiment: Pick<Experiment, "name" | "model" | "variants" | "status">,
  counts: readonly VariantCounts[],
  window: { from: Date; to: Date },
  options: ExperimentOptions,
  previousSequential: ReadonlyMap<string, PreviousSequential> = new Map(),
): ExperimentResult {
  const byName = new Map(counts.map((c) => [c.variant, c]));
  const controlName = experiment.variants.find((v) => v.name === "control")?.name ?? experiment.variants[0]!.name;
  const empty = (variant: string): VariantCounts => ({
    variant,
    users: 0,
    exposures: 0,
    conversions: 0,
    revenue: 0,
    avgRevenue: NaN,
    revenueVariance: NaN,
    crossovers: 0,
  });
  const variants: VariantResult[] = experiment.variants.map((v) => {
    const c = byName.get(v.name) ?? empty(v.name);
    const shown = c.ctrSums?.sumS ?? 0;
    const clicks = c.ctrSums?.sumC ?? 0;
    return {
      ...c,
      traffic: v.traffic,
      target: v.target,
      control: v.name === controlName,
      conversionRate: c.users > 0 ? c.conversions / c.users : NaN,
      shown,
      clicks,
      ctr: shown > 0 ? clicks / shown : NaN,
      verdict: "ok",
    };
  });
  const notes: string[] = [];
  const unknown = counts.filter((c) => !experiment.variants.some((v) => v.name === c.variant));
  if (unknown.length) notes.push(`exposures to variants not in the configuration: ${unknown.map((c) => `${c.variant} (${c.users} users)`).join(", ")}`);
  const crossovers = counts.reduce((s, c) => s + c.crossovers, 0);
  if (crossovers > 0) notes.push(`${crossovers} users were exposed to more than one variant (counted in their first)`);

  const control = variants.find((v) => v.control)!;
  const treatments = variants.filter((v) => !v.control);
  for (const t of treatments) {
    const z = twoProportionZTest(control.conversions, control.users, t.conversions, t.users);
    t.z = z.z;
    t.pValue = z.pValue;
    t.lift = relativeLift(proportionArm(control.conversions, control.users), proportionArm(t.conversions, t.users), options.confidence);
    const revenueA = { n: control.users, mean: control.avgRevenue, variance: control.revenueVariance };
    const revenueB = { n: t.users, mean: t.avgRevenue, variance: t.revenueVariance };
    t.revenueTest = welchTTest(revenueA, revenueB);
    t.revenueLift = relativeLift(revenueA, revenueB, options.confidence);
    // Tuned to the smallest lift worth detecting; with no control conversions yet there is nothing to scale by.
    const tau2 = defaultTau2(control.conversionRate, options.minimumDetectableLift);
    const seqAlpha = 1 - options.confidence;
    t.sequential = sequentialProportionTest(control.conversions, control.users, t.conversions, t.users, tau2, seqAlpha);
    const previous = previousSequential.get(t.variant);
    t.sequentialPValue = alwaysValidPValue(previous?.conversion, t.sequential.pValue);
    t.sequentialSignificant = t.sequentialPValue < options.alpha;
    if (control.cupedSums && t.cupedSums) t.cuped = cupedComparison(control.cupedSums, t.cupedSums, tau2, options);
    if (control.ctrSums && t.ctrSums) t.ctrTest = ctrComparison(control.ctrSums, t.ctrSums, previous?.ctr, options);
  }
  // Several treatments against one control are several tests: Holm keeps the family-wise error at alpha.
  const adjusted = adjustPValues(
    treatments.map((t) => t.pValue ?? NaN),
    "holm",
  );
  treatments.forEach((t, i) => {
    t.pAdjusted = adjusted[i];
    t.significant = (t.pAdjusted ?? NaN) < options.alpha;
  });

  const srm = sampleRatioMismatch(
    variants.map((v) => v.users),
    variants.map((v) => v.traffic),
    options.srmAlpha,
  );
  const requiredUsers = requiredSampleSize(control.conversionRate, options.minimumDetectableLift, options.alpha, options.power);
  const smallest = Math.min(...variants.map((v) => v.users));
  // A difference already significant has been detected; "too small" warns against reading a
  // non-significant result as "no effect" while the sample could not have shown one.
  const detected = treatments.some((t) => t.significant || t.sequentialSignificant || t.ctrTest?.sequentialSignificant);
  const tooSmall = !detected && (!(smallest >= requiredUsers) || control.conversions < 10);
  let verdict: Verdict = "ok";
  if (srm.mismatch) {
    verdict = "alert";
    const observed = variants.map((v) => `${v.variant} ${v.users}`).join(", ");
    const expected = variants.map((v) => `${v.variant} ${v.traffic}%`).join(", ");
    notes.push(
      `sample ratio mismatch (p = ${srm.pValue.toExponential(2)} < ${options.srmAlpha}): users ${observed} against the configured ${expected}; the assignment or logging is broken, so the results cannot be trusted`,
    );
  } else if (tooSmall) {
    verdict = "warning";
    notes.push(
      Number.isFinite(requiredUsers)
        ? `too small to conclude: ${smallest} users in the smallest variant, about ${requiredUsers} needed per variant to detect a ${Math.round(options.minimumDetectableLift * 100)} % lift with ${Math.round(options.power * 100)} % power`
        : `too small to conclude: the control has ${control.conversions} conversions`,
    );
  }
  for (const v of variants) v.verdict = verdict;
  return {
    experiment: experiment.name,
    model: experiment.model,
    status: experiment.status,
    window,
    control: controlName,
    variants,
    srm,
    requiredUsers,
    tooSmall,
    verdict,
    notes,
  };
}

function cupedComparison(control: CupedSums, treatment: CupedSums, tau2: number, options: ExperimentOptions): CupedComparison {
  const r = cuped([control, treatment]);
  const [a, b] = r.arms as [{ n: number; mean: number; variance: number }, { n: number; mean: number; variance: number }];
  const difference = b.mean - a.mean;
  const variance = a.variance / a.n + b.variance / b.n;
  const se = Math.sqrt(variance);
  const z = normalQuantile(1 - (1 - options.confidence) / 2);
  return {
    theta: r.theta,
    varianceReduction: r.varianceReduction,
    difference,
    lower: difference - z * se,
    upper: difference + z * se,
    pValue: se > 0 ? Math.min(1, 2 * normalSf(Math.abs(difference) / se)) : NaN,
    sequential: msprt(difference, variance, tau2, 1 - options.confidence),
  };
}

/** The CTR comparison: delta-method variance per arm, z-test, mSPRT (tuned to the minimum detectable lift of control's CTR), CUPED. */
function ctrComparison(control: RatioSums, treatment: RatioSums, previousP: number | undefined, options: ExperimentOptions): CtrComparison {
  const a = ratioArm(control);
  const b = ratioArm(treatment);
  const difference = b.mean - a.mean;
  const variance = a.variance / a.n + b.variance / b.n;
  const se = Math.sqrt(variance);
  const z = normalQuantile(1 - (1 - options.confidence) / 2);
  const seqAlpha = 1 - options.confidence;
  const tau2 = defaultTau2(a.mean, options.minimumDetectableLift);
  const sequential = msprt(difference, variance, tau2, seqAlpha);
  const sequentialPValue = alwaysValidPValue(previousP, sequential.pValue);
  const out: CtrComparison = {
    difference,
    lower: difference - z * se,
    upper: difference + z * se,
    pValue: se > 0 ? Math.min(1, 2 * normalSf(Math.abs(difference) / se)) : NaN,
    lift: a.mean > 0 ? difference / a.mean : NaN,
    sequential,
    sequentialPValue,
    sequentialSignificant: sequentialPValue < options.alpha,
  };
  const r = ratioCuped([control, treatment]);
  const [ca, cb] = r.arms as [{ n: number; mean: number; variance: number }, { n: number; mean: number; variance: number }];
  if (Number.isFinite(r.theta)) {
    const d = cb.mean - ca.mean;
    const v = ca.variance / ca.n + cb.variance / cb.n;
    const s = Math.sqrt(v);
    out.cuped = {
      theta: r.theta,
      varianceReduction: r.varianceReduction,
      difference: d,
      lower: d - z * s,
      upper: d + z * s,
      pValue: s > 0 ? Math.min(1, 2 * normalSf(Math.abs(d) / s)) : NaN,
      sequential: msprt(d, v, tau2, seqAlpha),
    };
  }
  return out;
}

/**
 * Per-variant counts of an experiment in a window, per user first (converted if any request
 * converted), with the CUPED sums: X is the user's events in the `user_features` windows that
 * closed within `cupedLookbackMs` before their first exposure (0 for a user without any).
 */
export async function readVariantCounts(
  ch: ClickHouse,
  experiment: string,
  window: { from: Date; to: Date },
  cupedLookbackMs = 7 * 24 * 3_600_000,
): Promise<VariantCounts[]> {
  const result = await ch.client.query({
    query: `
      SELECT variant, count() AS users, sum(requests) AS exposures, sum(user_converted) AS conversions, sum(user_revenue) AS revenue,
        avg(user_revenue) AS avg_revenue, varSamp(user_revenue) AS var_revenue, countIf(variants > 1) AS crossovers,
        sum(user_converted * user_converted) AS sum_y2, sum(pre) AS sum_x, sum(pre * pre) AS sum_x2, sum(pre * user_converted) AS sum_xy,
        sum(user_clicks) AS sum_c, sum(user_shown) AS sum_s, sum(user_clicks * user_clicks) AS sum_c2, sum(user_shown * user_shown) AS sum_s2,
        sum(user_clicks * user_shown) AS sum_cs, sum(user_clicks * pre) AS sum_cx, sum(user_shown * pre) AS sum_sx
      FROM (
        SELECT u.*, toFloat64(arraySum(arrayMap(w -> if(w.1 <= u.first_seen AND w.1 > u.first_seen - toIntervalMillisecond({lookback:UInt64}), w.2, 0), f.windows))) AS pre
        FROM (
        SELECT e.user_id AS user_id, argMin(e.variant, e.time) AS variant, uniqExact(e.variant) AS variants, count() AS requests,
          min(e.time) AS first_seen, toFloat64(max(o.request_converted)) AS user_converted, sum(o.request_revenue) AS user_revenue,
          toFloat64(sum(o.request_clicks)) AS user_clicks, toFloat64(sum(p.request_shown)) AS user_shown
        FROM (
          SELECT request_id, user_id, variant, time FROM exposures FINAL
          WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)}) AS e
        LEFT JOIN (
          SELECT request_id, max(converted) AS request_converted, sum(revenue) AS request_revenue, uniqExactIf(item_id, clicked = 1) AS request_clicks
          FROM outcomes FINAL
          WHERE time >= {from:DateTime64(3)} GROUP BY request_id) AS o
        USING (request_id)
        LEFT JOIN (
          SELECT request_id, countIf(position > 0) AS request_shown FROM predictions FINAL
          WHERE time >= {from:DateTime64(3)} - INTERVAL 1 MINUTE AND time < {to:DateTime64(3)} + INTERVAL 1 MINUTE
            AND request_id IN (SELECT request_id FROM exposures WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)})
          GROUP BY request_id) AS p
        USING (request_id)
        GROUP BY user_id) AS u
        LEFT JOIN (
          SELECT user_id, groupArray((window_end, event_count)) AS windows FROM user_features FINAL
          WHERE window_end > {from:DateTime64(3)} - toIntervalMillisecond({lookback:UInt64}) AND window_end < {to:DateTime64(3)}
            AND user_id IN (SELECT user_id FROM exposures WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)})
          GROUP BY user_id) AS f
        USING (user_id))
      GROUP BY variant
      ORDER BY variant`,
    query_params: { experiment, from: toClickHouseTime(window.from), to: toClickHouseTime(window.to), lookback: Math.round(cupedLookbackMs) },
    format: "JSONEachRow",
  });
  const rows = await result.json<Record<string, string | number | null>>();
  return rows.map((r) => ({
    variant: String(r.variant),
    users: Number(r.users),
    exposures: Number(r.exposures),
    conversions: Number(r.conversions),
    revenue: floatIn(r.revenue),
    avgRevenue: floatIn(r.avg_revenue),
    revenueVariance: floatIn(r.var_revenue),
    crossovers: Number(r.crossovers),
    cupedSums: {
      n: Number(r.users),
      sumY: Number(r.conversions),
      sumY2: floatIn(r.sum_y2),
      sumX: floatIn(r.sum_x),
      sumX2: floatIn(r.sum_x2),
      sumXY: floatIn(r.sum_xy),
    },
    ctrSums: {
      n: Number(r.users),
      sumC: floatIn(r.sum_c),
      sumS: floatIn(r.sum_s),
      sumC2: floatIn(r.sum_c2),
      sumS2: floatIn(r.sum_s2),
      sumCS: floatIn(r.sum_cs),
      sumX: floatIn(r.sum_x),
      sumX2: floatIn(r.sum_x2),
      sumCX: floatIn(r.sum_cx),
      sumSX: floatIn(r.sum_sx),
    },
  }));
}

export interface ExperimentsReport {
  time: Date;
  experiments: ExperimentResult[];
  rows: MonitoringRow[];
}

/**
 * Every running experiment, and those stopped within the grace period, analysed from start to now
 * (or stop). Experiments are found in the registry and also among the recent exposures, so one the
 * registry listing misses is still analysed as long as its configuration can be read.
 */
export async function checkExperiments(
  ch: ClickHouse,
  registry: Pick<Registry, "listExperiments" | "getExperiment" | "resolve">,
  now: Date,
  options: ExperimentOptions,
): Promise<ExperimentsReport> {
  const names = new Set((await registry.listExperiments()).map((e) => e.name));
  for (const name of await recentExperimentNames(ch, new Date(now.getTime() - options.stoppedGraceMs))) names.add(name);
  const results: ExperimentResult[] = [];
  const rows: MonitoringRow[] = [];
  for (const name of [...names].sort()) {
    const e = await registry.getExperiment(name);
    if (!e) continue; // exposures of an experiment whose configuration is gone: no split to test against
    const live = e.status === "running" || (e.stoppedAt !== undefined && now.getTime() - Date.parse(e.stoppedAt) < options.stoppedGraceMs);
    if (!live) continue;
    const window = { from: new Date(e.createdAt), to: e.stoppedAt ? new Date(Math.min(Date.parse(e.stoppedAt), now.getTime())) : now };
    const previous = await previousSequentialPValues(ch, e.name, window.from);
    const result = analyzeExperiment(e, await readVariantCounts(ch, e.name, window, options.cupedLookbackMs), window, options, previous);
    const versions = new Map<string, string>();
    for (const v of e.variants) versions.set(v.name, (await registry.resolve(e.model, v.target).catch(() => undefined)) ?? v.target);
    results.push(result);
    rows.push(...experimentRows(result, now, versions, options));
  }
  return { time: now, experiments: results, rows };
}

/** A treatment's smallest always-valid p-values so far, per metric. */
export interface PreviousSequential {
  conversion?: number;
  ctr?: number;
}

/** Each treatment's smallest always-valid p-values in the analyses stored since the experiment started. */
async function previousSequentialPValues(ch: ClickHouse, experiment: string, since: Date): Promise<Map<string, PreviousSequential>> {
  const result = await ch.client.query({
    query: `SELECT JSONExtractString(details, 'variant') AS variant, min(JSONExtract(details, 'seq_p_value', 'Nullable(Float64)')) AS p,
        min(JSONExtract(details, 'ctr_seq_p_value', 'Nullable(Float64)')) AS ctr_p
      FROM monitoring
      WHERE kind = 'ab' AND statistic = 'variant' AND time >= {since:DateTime64(3)}
        AND JSONExtractString(details, 'experiment') = {experiment:String}
      GROUP BY variant
      HAVING p IS NOT NULL OR ctr_p IS NOT NULL`,
    query_params: { experiment, since: toClickHouseTime(since) },
    format: "JSONEachRow",
  });
  const rows = await result.json<{ variant: string; p: number | string | null; ctr_p: number | string | null }>();
  const finite = (v: number | string | null) => (v === null ? undefined : Number.isFinite(floatIn(v)) ? floatIn(v) : undefined);
  return new Map(rows.map((r) => [r.variant, { conversion: finite(r.p), ctr: finite(r.ctr_p) }]));
}

async function recentExperimentNames(ch: ClickHouse, since: Date): Promise<string[]> {
  const result = await ch.client.query({
    query: "SELECT DISTINCT experiment FROM exposures WHERE time >= {since:DateTime64(3)} AND experiment != ''",
    query_params: { since: toClickHouseTime(since) },
    format: "JSONEachRow",
  });
  return (await result.json<{ experiment: string }>()).map((r) => r.experiment);
}

/** One `variant` row per variant (details carry every figure) and one `srm` row per experiment. */
export function experimentRows(r: ExperimentResult, now: Date, versions: Map<string, string>, options: ExperimentOptions): MonitoringRow[] {
  const rows: MonitoringRow[] = r.variants.map((v) => ({
    time: now,
    model_name: r.model,
    model_version: versions.get(v.variant) ?? v.target,
    kind: "ab",
    subject: `${r.experiment}/${v.variant}`,
    statistic: "variant",
    value: v.conversionRate,
    p_value: v.pAdjusted ?? NaN,
    threshold: options.alpha,
    verdict: v.verdict,
    details: {
      experiment: r.experiment,
      variant: v.variant,
      control: v.control,
      target: v.target,
      traffic: v.traffic,
      users: v.users,
      exposures: v.exposures,
      conversions: v.conversions,
      revenue: v.revenue,
      avg_revenue: v.avgRevenue,
      z: v.z,
      p_raw: v.pValue,
      lift: v.lift?.lift,
      lift_lower: v.lift?.lower,
      lift_upper: v.lift?.upper,
      revenue_lift: v.revenueLift?.lift,
      revenue_lift_lower: v.revenueLift?.lower,
      revenue_lift_upper: v.revenueLift?.upper,
      revenue_t: v.revenueTest?.t,
      revenue_df: v.revenueTest?.df,
      revenue_p_value: v.revenueTest?.pValue,
      significant: v.significant ?? false,
      seq_p_value: v.sequentialPValue,
      seq_p_look: v.sequential?.pValue,
      seq_significant: v.sequentialSignificant ?? false,
      seq_diff: v.sequential?.estimate,
      seq_lower: v.sequential?.lower,
      seq_upper: v.sequential?.upper,
      cuped_theta: v.cuped?.theta,
      cuped_variance_reduction: v.cuped?.varianceReduction,
      cuped_diff: v.cuped?.difference,
      cuped_lower: v.cuped?.lower,
      cuped_upper: v.cuped?.upper,
      cuped_p_value: v.cuped?.pValue,
      cuped_seq_p_value: v.cuped?.sequential.pValue,
      cuped_seq_lower: v.cuped?.sequential.lower,
      cuped_seq_upper: v.cuped?.sequential.upper,
      shown: v.shown,
      clicks: v.clicks,
      ctr: v.ctr,
      ctr_diff: v.ctrTest?.difference,
      ctr_lower: v.ctrTest?.lower,
      ctr_upper: v.ctrTest?.upper,
      ctr_p_value: v.ctrTest?.pValue,
      ctr_lift: v.ctrTest?.lift,
      ctr_seq_p_value: v.ctrTest?.sequentialPValue,
      ctr_seq_p_look: v.ctrTest?.sequential.pValue,
      ctr_seq_significant: v.ctrTest?.sequentialSignificant ?? false,
      ctr_seq_lower: v.ctrTest?.sequential.lower,
      ctr_seq_upper: v.ctrTest?.sequential.upper,
      ctr_cuped_variance_reduction: v.ctrTest?.cuped?.varianceReduction,
      ctr_cuped_diff: v.ctrTest?.cuped?.difference,
      ctr_cuped_p_value: v.ctrTest?.cuped?.pValue,
      ctr_cuped_seq_p_value: v.ctrTest?.cuped?.sequential.pValue,
      ctr_cuped_seq_lower: v.ctrTest?.cuped?.sequential.lower,
      ctr_cuped_seq_upper: v.ctrTest?.cuped?.sequential.upper,
      srm: r.srm.mismatch,
      too_small: r.tooSmall,
      required_users: r.requiredUsers,
      confidence: options.confidence,
      note: r.notes.join("; "),
      window_from: r.window.from.toISOString(),
      window_to: r.window.to.toISOString(),
    },
  }));
  rows.push({
    time: now,
    model_name: r.model,
    model_version: "",
    kind: "ab",
    subject: r.experiment,
    statistic: "srm",
    value: r.srm.statistic,
    p_value: r.srm.pValue,
    threshold: r.srm.alpha,
    verdict: r.srm.mismatch ? "alert" : "ok",
    details: {
      experiment: r.experiment,
      df: r.srm.df,
      users: Object.fromEntries(r.variants.map((v) => [v.variant, v.users])),
      traffic: Object.fromEntries(r.variants.map((v) => [v.variant, v.traffic])),
    },
  });
  return rows;
}
