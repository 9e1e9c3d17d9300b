// A/B analysis: per experiment and variant, users, exposures, conversions, conversion rate and
// revenue; each treatment against control with a two-proportion z-test, the relative lift with its
// confidence interval and Welch's t-test on revenue per user; the sample-ratio-mismatch check of the
// users seen against the configured split; and a warning while the sample is too small to conclude.
// The unit of analysis is the user, because users (not requests) are what the router randomizes.
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
}

export interface VariantResult extends VariantCounts {
  traffic: number;
  target: string;
  control: boolean;
  conversionRate: number;
  /** Treatments only: against control. */
  z?: number;
  pValue?: number;
  /** Holm-adjusted over the treatments of the experiment. */
  pAdjusted?: number;
  lift?: LiftResult;
  revenueLift?: LiftResult;
  revenueTest?: WelchResult;
  significant?: boolean;
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

/** The statistics of one experiment from its per-variant counts; pure. */
export function analyzeExperiment(experiment: Pick<Experiment, "name" | "model" | "variants" | "status">, counts: readonly VariantCounts[], window: { from: Date; to: Date }, options: ExperimentOptions): ExperimentResult {
  const byName = new Map(counts.map((c) => [c.variant, c]));
  const controlName = experiment.variants.find((v) => v.name === "control")?.name ?? experiment.variants[0]!.name;
  const empty = (variant: string): VariantCounts => ({ variant, users: 0, exposures: 0, conversions: 0, revenue: 0, avgRevenue: NaN, revenueVariance: NaN, crossovers: 0 });
  const variants: VariantResult[] = experiment.variants.map((v) => {
    const c = byName.get(v.name) ?? empty(v.name);
    return { ...c, traffic: v.traffic, target: v.target, control: v.name === controlName, conversionRate: c.users > 0 ? c.conversions / c.users : NaN, verdict: "ok" };
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
  }
  // Several treatments against one control are several tests: Holm keeps the family-wise error at alpha.
  const adjusted = adjustPValues(treatments.map((t) => t.pValue ?? NaN), "holm");
  treatments.forEach((t, i) => {
    t.pAdjusted = adjusted[i];
    t.significant = (t.pAdjusted ?? NaN) < options.alpha;
  });

  const srm = sampleRatioMismatch(variants.map((v) => v.users), variants.map((v) => v.traffic), options.srmAlpha);
  const requiredUsers = requiredSampleSize(control.conversionRate, options.minimumDetectableLift, options.alpha, options.power);
  const smallest = Math.min(...variants.map((v) => v.users));
  // A difference already significant has been detected; "too small" warns against reading a
  // non-significant result as "no effect" while the sample could not have shown one.
  const tooSmall = !treatments.some((t) => t.significant) && (!(smallest >= requiredUsers) || control.conversions < 10);
  let verdict: Verdict = "ok";
  if (srm.mismatch) {
    verdict = "alert";
    const observed = variants.map((v) => `${v.variant} ${v.users}`).join(", ");
    const expected = variants.map((v) => `${v.variant} ${v.traffic}%`).join(", ");
    notes.push(`sample ratio mismatch (p = ${srm.pValue.toExponential(2)} < ${options.srmAlpha}): users ${observed} against the configured ${expected}; the assignment or logging is broken, so the results cannot be trusted`);
  } else if (tooSmall) {
    verdict = "warning";
    notes.push(
      Number.isFinite(requiredUsers)
        ? `too small to conclude: ${smallest} users in the smallest variant, about ${requiredUsers} needed per variant to detect a ${Math.round(options.minimumDetectableLift * 100)} % lift with ${Math.round(options.power * 100)} % power`
        : `too small to conclude: the control has ${control.conversions} conversions`,
    );
  }
  for (const v of variants) v.verdict = verdict;
  return { experiment: experiment.name, model: experiment.model, status: experiment.status, window, control: controlName, variants, srm, requiredUsers, tooSmall, verdict, notes };
}

/** Per-variant counts of an experiment in a window, per user first (converted if any request converted). */
export async function readVariantCounts(ch: ClickHouse, experiment: string, window: { from: Date; to: Date }): Promise<VariantCounts[]> {
  const result = await ch.client.query({
    query: `
      SELECT variant, count() AS users, sum(requests) AS exposures, sum(user_converted) AS conversions, sum(user_revenue) AS revenue,
        avg(user_revenue) AS avg_revenue, varSamp(user_revenue) AS var_revenue, countIf(variants > 1) AS crossovers
      FROM (
        SELECT e.user_id AS user_id, argMin(e.variant, e.time) AS variant, uniqExact(e.variant) AS variants, count() AS requests,
          max(o.request_converted) AS user_converted, sum(o.request_revenue) AS user_revenue
        FROM (
          SELECT request_id, user_id, variant, time FROM exposures FINAL
          WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)}) AS e
        LEFT JOIN (
          SELECT request_id, max(converted) AS request_converted, sum(revenue) AS request_revenue FROM outcomes FINAL
          WHERE time >= {from:DateTime64(3)} GROUP BY request_id) AS o
        USING (request_id)
        GROUP BY user_id)
      GROUP BY variant
      ORDER BY variant`,
    query_params: { experiment, from: toClickHouseTime(window.from), to: toClickHouseTime(window.to) },
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
export async function checkExperiments(ch: ClickHouse, registry: Pick<Registry, "listExperiments" | "getExperiment" | "resolve">, now: Date, options: ExperimentOptions): Promise<ExperimentsReport> {
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
    const result = analyzeExperiment(e, await readVariantCounts(ch, e.name, window), window, options);
    const versions = new Map<string, string>();
    for (const v of e.variants) versions.set(v.name, (await registry.resolve(e.model, v.target).catch(() => undefined)) ?? v.target);
    results.push(result);
    rows.push(...experimentRows(result, now, versions, options));
  }
  return { time: now, experiments: results, rows };
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
    details: { experiment: r.experiment, df: r.srm.df, users: Object.fromEntries(r.variants.map((v) => [v.variant, v.users])), traffic: Object.fromEntries(r.variants.map((v) => [v.variant, v.traffic])) },
  });
  return rows;
}
