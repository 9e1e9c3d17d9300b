// Drift: is the traffic the production model serves still distributed like the data it was trained
// on? Per numeric feature a two-sample KS test and PSI against the reference the trainer stored with
// the version; per categorical feature chi-square and PSI over categories; and the drift of the
// predicted scores. `compareSamples` is the pure core, shared with `streamserve drift` on files.
import type { ClickHouse } from "../lib/clickhouse.js";
import type { FeatureSpec, ModelVersion, Registry } from "../lib/registry.js";
import type { DriftOptions } from "./options.js";
import { PREDICTION_REFERENCE_KEY } from "./options.js";
import { adjustPValues } from "./stats/ab-tests.js";
import { chiSquareHomogeneity, ksTwoSample, psi, psiCategorical } from "./stats/distribution-tests.js";
import { cleanSorted, quantileSorted } from "./stats/sample.js";
import { floatIn, toClickHouseTime, worst, type MonitoringRow, type Verdict } from "./store.js";

/** What drift needs to know about a feature. */
export interface DriftFeature {
  name: string;
  type: "numeric" | "categorical";
  /** Categorical values are indices into this list (unknown values are NaN). */
  vocabulary?: string[];
}

/** A sample as read from ClickHouse or a file: numbers, category strings, null for "no value". */
export type SampleValues = ArrayLike<number | string | null>;

/** The two distributions behind a drift figure, for people: bins or categories with proportions. */
export interface DriftDistribution {
  labels: string[];
  reference: number[];
  current: number[];
  /** Numeric only: both samples' quantiles at 0, 2 %, ..., 100 % (their empirical CDFs, where KS measures the gap). */
  quantiles?: { p: number[]; reference: number[]; current: number[] };
}

export interface FeatureDrift {
  feature: string;
  type: "numeric" | "categorical";
  referenceN: number;
  currentN: number;
  /** Non-finite served values (numeric) that were dropped and counted. */
  dropped: number;
  /** "ks" for numeric features, "chi2" for categorical ones. */
  test: "ks" | "chi2";
  testStatistic: number;
  pValue: number;
  /** After the family-wise correction over the features tested together. */
  pAdjusted: number;
  psi: number;
  /** Numeric only: share of served values that were NaN or ±Infinity. */
  nonFiniteRate: number;
  testVerdict: Verdict;
  psiVerdict: Verdict;
  nonFiniteVerdict: Verdict;
  verdict: Verdict;
  /** Why the feature was not judged (too few values, no reference). */
  reason?: string;
  distribution?: DriftDistribution;
  /** Extra figures: KS method, chi-square df, missing rate. */
  extra: Record<string, unknown>;
}

type Thresholds = Pick<DriftOptions, "alpha" | "correction" | "psiWarning" | "psiAlert" | "psiBins" | "psiFloor" | "minSamples" | "maxNonFiniteRate">;

/**
 * Compares each feature's current sample with its reference. The KS and chi-square p-values are
 * corrected together for the number of features tested (Holm by default), so that with twenty
 * unshifted features the chance of any false alarm stays near alpha rather than 1 − 0.95²⁰ = 64 %.
 */
export function compareSamples(
  features: readonly DriftFeature[],
  reference: Readonly<Record<string, SampleValues | undefined>>,
  current: Readonly<Record<string, SampleValues | undefined>>,
  thresholds: Thresholds,
): FeatureDrift[] {
  const results = features.map((f) => compareOne(f, reference[f.name], current[f.name], thresholds));
  const tested = results.map((r) => (r.reason ? NaN : r.pValue));
  const adjusted = adjustPValues(tested, thresholds.correction);
  for (const [i, r] of results.entries()) {
    if (r.reason) continue;
    r.pAdjusted = adjusted[i]!;
    r.testVerdict = r.pAdjusted < thresholds.alpha ? "alert" : "ok";
    r.verdict = worst(worst(r.testVerdict, r.psiVerdict), r.nonFiniteVerdict);
  }
  return results;
}

function compareOne(feature: DriftFeature, reference: SampleValues | undefined, current: SampleValues | undefined, t: Thresholds): FeatureDrift {
  const test = feature.type === "categorical" ? "chi2" : "ks";
  const base: FeatureDrift = {
    feature: feature.name,
    type: feature.type,
    referenceN: reference?.length ?? 0,
    currentN: current?.length ?? 0,
    dropped: 0,
    test,
    testStatistic: NaN,
    pValue: NaN,
    pAdjusted: NaN,
    psi: NaN,
    nonFiniteRate: NaN,
    testVerdict: "skipped",
    psiVerdict: "skipped",
    nonFiniteVerdict: "skipped",
    verdict: "skipped",
    extra: {},
  };
  if (!reference || reference.length === 0) return { ...base, reason: "no reference values for this feature" };
  if (!current || current.length < t.minSamples) {
    return { ...base, reason: `${current?.length ?? 0} served values, fewer than the ${t.minSamples} needed to judge` };
  }
  const psiVerdict = (value: number): Verdict => (value >= t.psiAlert ? "alert" : value >= t.psiWarning ? "warning" : "ok");

  if (feature.type === "categorical") {
    const ref = countLabels(reference, feature.vocabulary);
    const cur = countLabels(current, feature.vocabulary);
    const chi = chiSquareHomogeneity(ref, cur);
    const value = psiCategorical(ref, cur, { floor: t.psiFloor });
    const labels = [...new Set([...ref.keys(), ...cur.keys()])].sort();
    const refTotal = sumOf(ref);
    const curTotal = sumOf(cur);
    // A single category on both sides cannot drift in distribution: nothing to test, nothing wrong.
    const pValue = Number.isNaN(chi.pValue) ? 1 : chi.pValue;
    return {
      ...base,
      testStatistic: Number.isNaN(chi.statistic) ? 0 : chi.statistic,
      pValue,
      psi: value,
      psiVerdict: psiVerdict(value),
      distribution: {
        labels,
        reference: labels.map((l) => (ref.get(l) ?? 0) / refTotal),
        current: labels.map((l) => (cur.get(l) ?? 0) / curTotal),
      },
      extra: { df: chi.df },
    };
  }

  const refNumbers = toNumbers(reference);
  const curNumbers = toNumbers(current);
  const ks = ksTwoSample(refNumbers, curNumbers);
  const p = psi(refNumbers, curNumbers, { bins: t.psiBins, floor: t.psiFloor });
  const nonFiniteRate = (curNumbers.length - ks.m) / curNumbers.length;
  const nonFiniteVerdict: Verdict = nonFiniteRate > t.maxNonFiniteRate ? "warning" : "ok";
  if (ks.m < t.minSamples || ks.n === 0) {
    return {
      ...base,
      dropped: ks.dropped,
      nonFiniteRate,
      nonFiniteVerdict,
      verdict: nonFiniteVerdict,
      reason: ks.n === 0 ? "the reference has no finite values" : `${ks.m} finite served values, fewer than the ${t.minSamples} needed to judge`,
    };
  }
  return {
    ...base,
    referenceN: ks.n,
    currentN: ks.m,
    dropped: ks.dropped,
    testStatistic: ks.statistic,
    pValue: ks.pValue,
    psi: p.value,
    psiVerdict: psiVerdict(p.value),
    nonFiniteRate,
    nonFiniteVerdict,
    distribution: {
      labels: p.bins.map((b) => binLabel(b.lower, b.upper)),
      reference: p.bins.map((b) => b.reference),
      current: p.bins.map((b) => b.current),
      quantiles: ecdfQuantiles(refNumbers, curNumbers),
    },
    extra: { method: ks.method },
  };
}

/** Counts of each category; a missing or unknown value is a category of its own, since a surge of them is drift. */
function countLabels(values: SampleValues, vocabulary?: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    let label: string;
    if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) label = "(missing)";
    else if (typeof v === "number" && vocabulary) label = vocabulary[v] ?? `(unknown ${v})`;
    else label = String(v);
    counts.set(label, (counts.get(label) ?? 0) + 1);
  }
  return counts;
}

function toNumbers(values: SampleValues): Float64Array {
  const out = new Float64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatIn(values[i]);
  return out;
}

function sumOf(m: Map<string, number>): number {
  let s = 0;
  for (const v of m.values()) s += v;
  return s;
}

function binLabel(lower: number, upper: number): string {
  const f = (x: number) => (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 0.01) ? x.toPrecision(3) : String(Math.round(x * 1000) / 1000));
  if (lower === -Infinity) return `≤ ${f(upper)}`;
  if (upper === Infinity) return `> ${f(lower)}`;
  return `${f(lower)} – ${f(upper)}`;
}

function ecdfQuantiles(reference: ArrayLike<number>, current: ArrayLike<number>): DriftDistribution["quantiles"] {
  const r = cleanSorted(reference).values;
  const c = cleanSorted(current).values;
  const p = Array.from({ length: 51 }, (_, i) => i / 50);
  return { p, reference: p.map((q) => quantileSorted(r, q)), current: p.map((q) => quantileSorted(c, q)) };
}

// ---------------------------------------------------------------------------------------------------
// Served traffic from ClickHouse

export interface ServedSampleQuery {
  model: string;
  version: string;
  from: Date;
  to: Date;
  maxSamples: number;
}

/**
 * Served feature values for a version in a window. Features of the user and of the request repeat
 * on every candidate of a request, so they are read once per request; item features once per
 * candidate. Counting a user's features ten times would shrink the KS p-values as if there were
 * ten times the independent evidence. Above `maxSamples` a deterministic hash sample is taken.
 */
export async function readServedFeatures(
  ch: ClickHouse,
  query: ServedSampleQuery,
  features: readonly FeatureSpec[],
): Promise<{ values: Record<string, number[]>; missingRate: Record<string, number> }> {
  const values: Record<string, number[]> = {};
  const perRequest = features.filter((f) => f.source !== "item");
  const perCandidate = features.filter((f) => f.source === "item");
  for (const [group, oncePerRequest] of [
    [perRequest, true],
    [perCandidate, false],
  ] as const) {
    if (group.length === 0) continue;
    const params: Record<string, unknown> = windowParams(query);
    const columns = group.map((f, i) => {
      params[`f${i}`] = f.name;
      // A feature absent from the logged map was not served to this version: no value, not 0.
      return `if(mapContains(features, {f${i}:String}), features[{f${i}:String}], nan) AS c${i}`;
    });
    const rows = oncePerRequest
      ? `(SELECT request_id, item_id, features FROM predictions FINAL WHERE ${WINDOW} ORDER BY request_id, item_id LIMIT 1 BY request_id)`
      : `(SELECT request_id, item_id, features FROM predictions FINAL WHERE ${WINDOW})`;
    const sql = `SELECT ${columns.join(", ")} FROM ${rows} ORDER BY cityHash64(request_id, item_id) LIMIT {max:UInt32}`;
    const result = await ch.client.query({ query: sql, query_params: params, format: "JSONColumnsWithMetadata" });
    const { data } = JSON.parse(await result.text()) as { data: Record<string, (number | null)[]> };
    group.forEach((f, i) => (values[f.name] = (data[`c${i}`] ?? []).map(floatIn)));
  }
  const missing = await ch.client.query({
    query: `SELECT count() AS rows, sumForEach(arrayMap(f -> toUInt64(has(missing_features, f)), {names:Array(String)})) AS missing
            FROM predictions FINAL WHERE ${WINDOW}`,
    query_params: { ...windowParams(query), names: features.map((f) => f.name) },
    format: "JSONEachRow",
  });
  const [m] = await missing.json<{ rows: string | number; missing: (string | number)[] }>();
  const rows = Number(m?.rows ?? 0);
  const missingRate: Record<string, number> = {};
  features.forEach((f, i) => (missingRate[f.name] = rows > 0 ? Number(m?.missing[i] ?? 0) / rows : NaN));
  return { values, missingRate };
}

/** Served scores of a version in a window (one per scored candidate, hash-sampled above the cap). */
export async function readServedScores(ch: ClickHouse, query: ServedSampleQuery): Promise<number[]> {
  const result = await ch.client.query({
    query: `SELECT score FROM predictions FINAL WHERE ${WINDOW} ORDER BY cityHash64(request_id, item_id) LIMIT {max:UInt32}`,
    query_params: windowParams(query),
    format: "JSONColumnsWithMetadata",
  });
  const { data } = JSON.parse(await result.text()) as { data: { score?: (number | null)[] } };
  return (data.score ?? []).map(floatIn);
}

const WINDOW = "model_name = {model:String} AND model_version = {version:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)}";

function windowParams(q: ServedSampleQuery): Record<string, unknown> {
  return { model: q.model, version: q.version, from: toClickHouseTime(q.from), to: toClickHouseTime(q.to), max: q.maxSamples };
}

// ---------------------------------------------------------------------------------------------------
// One drift check of the production model

export interface DriftReport {
  model: string;
  version?: string;
  time: Date;
  window: { from: Date; to: Date };
  features: FeatureDrift[];
  prediction?: FeatureDrift;
  /** Why nothing was checked (no production alias, no reference). */
  reason?: string;
  rows: MonitoringRow[];
}

export interface DriftDeps {
  ch: ClickHouse;
  registry: Pick<Registry, "getAlias" | "getVersion" | "fetchReference">;
}

/** Drift of the model's production version over the window that ends at `now`. */
export async function checkDrift(deps: DriftDeps, model: string, alias: string, now: Date, options: DriftOptions): Promise<DriftReport> {
  const window = { from: new Date(now.getTime() - options.windowMs), to: now };
  const report: DriftReport = { model, time: now, window, features: [], rows: [] };
  const target = await deps.registry.getAlias(model, alias);
  if (!target) return { ...report, reason: `model ${model} has no "${alias}" alias yet: nothing to compare` };
  const mv = await deps.registry.getVersion(model, target.version);
  if (!mv) return { ...report, version: target.version, reason: `alias ${alias} points at version ${target.version}, which the registry does not have` };
  report.version = mv.version;
  const reference = await deps.registry.fetchReference(mv);
  const query = { model, version: mv.version, ...window, maxSamples: options.maxSamples };

  if (!reference) {
    report.reason = `version ${mv.version} has no stored reference sample: feature drift needs one (the trainer stores it)`;
  } else {
    const served = await readServedFeatures(deps.ch, query, mv.features);
    report.features = compareSamples(specsOf(mv), reference, served.values, options);
    for (const f of report.features) f.extra.missingRate = served.missingRate[f.feature];
  }
  report.prediction = await predictionDrift(deps.ch, query, reference?.[PREDICTION_REFERENCE_KEY], options);
  report.rows = driftRows(report, options);
  return report;
}

function specsOf(mv: ModelVersion): DriftFeature[] {
  return mv.features.map((f) => ({ name: f.name, type: f.type, vocabulary: f.vocabulary }));
}

/**
 * Drift of the scores: against reference scores when the trainer stored them, otherwise against the
 * same version's scores in the baseline period before the window (a sudden change in what the
 * model outputs, whatever its cause).
 */
async function predictionDrift(ch: ClickHouse, query: ServedSampleQuery, referenceScores: number[] | undefined, options: DriftOptions): Promise<FeatureDrift> {
  const current = await readServedScores(ch, query);
  let baseline = referenceScores;
  let against = "reference";
  if (!baseline) {
    baseline = await readServedScores(ch, { ...query, from: new Date(query.from.getTime() - options.predictionBaselineMs), to: query.from });
    against = `the ${Math.round(options.predictionBaselineMs / 3_600_000)} h before the window`;
  }
  // One test alone: no family to correct for.
  const [result] = compareSamples([{ name: "score", type: "numeric" }], { score: baseline }, { score: current }, { ...options, correction: "none" });
  result!.extra.against = against;
  if (result!.reason && baseline.length === 0) result!.reason = `no baseline scores (${against} is empty)`;
  return result!;
}

/**
 * The report as `monitoring` rows: per feature one row for the test (ks or chi2), one for PSI and,
 * for numeric features, one for the share of non-finite values.
 */
export function driftRows(report: Omit<DriftReport, "rows">, t: Pick<DriftOptions, "alpha" | "psiWarning" | "psiAlert" | "maxNonFiniteRate">): MonitoringRow[] {
  const rows: MonitoringRow[] = [];
  const emit = (kind: MonitoringRow["kind"], f: FeatureDrift) => {
    const common = { time: report.time, model_name: report.model, model_version: report.version ?? "", kind, subject: f.feature };
    const details = {
      type: f.type,
      reference_n: f.referenceN,
      current_n: f.currentN,
      dropped: f.dropped,
      reason: f.reason,
      window_from: report.window.from.toISOString(),
      window_to: report.window.to.toISOString(),
      ...f.extra,
    };
    rows.push({
      ...common,
      statistic: f.test,
      value: f.testStatistic,
      p_value: f.pAdjusted,
      threshold: t.alpha,
      verdict: f.testVerdict,
      details: { ...details, p_raw: f.pValue },
    });
    rows.push({
      ...common,
      statistic: "psi",
      value: f.psi,
      p_value: NaN,
      threshold: t.psiAlert,
      verdict: f.psiVerdict,
      details: { ...details, warning: t.psiWarning, distribution: f.distribution },
    });
    if (f.type === "numeric") {
      rows.push({
        ...common,
        statistic: "non_finite",
        value: f.nonFiniteRate,
        p_value: NaN,
        threshold: t.maxNonFiniteRate,
        verdict: f.nonFiniteVerdict,
        details,
      });
    }
  };
  for (const f of report.features) emit("feature_drift", f);
  if (report.prediction) emit("prediction_drift", report.prediction);
  return rows;
}
