// Reports: what the SQL views say, as typed rows for `streamserve report`, the dashboard's JSON API
// and scripts. Everything here reads views and tables; nothing computes statistics again.
import type { ClickHouse } from "../lib/clickhouse.js";
import { floatIn, fromClickHouseTime, toClickHouseTime } from "./store.js";
import type { DriftDistribution } from "./drift.js";

export interface DriftReportRow {
  time: string;
  model: string;
  version: string;
  kind: "feature_drift" | "prediction_drift";
  feature: string;
  featureType: string;
  statistic: string;
  value: number;
  pValue: number;
  threshold: number;
  verdict: string;
  referenceN: number;
  currentN: number;
  dropped: number;
}

export interface QualityReportRow {
  hour: string;
  model: string;
  version: string;
  variant: string;
  auc: number;
  accuracy: number;
  ece: number;
  brier: number;
  meanPredicted: number;
  observedRate: number;
  n: number;
  positives: number;
  verdict: string;
}

export interface AbReportRow {
  time: string;
  experiment: string;
  variant: string;
  model: string;
  version: string;
  control: boolean;
  users: number;
  exposures: number;
  conversions: number;
  conversionRate: number;
  avgRevenue: number;
  lift: number;
  liftLower: number;
  liftUpper: number;
  pValue: number;
  revenuePValue: number;
  srm: boolean;
  /** Always-valid (mSPRT) p-value and confidence sequence of the rate difference, treatment − control. */
  sequentialPValue: number;
  sequentialLower: number;
  sequentialUpper: number;
  /** CUPED-adjusted rate difference with its interval and p-value, and the variance reduction. */
  cupedDiff: number;
  cupedLower: number;
  cupedUpper: number;
  cupedPValue: number;
  varianceReduction: number;
  /** CTR: items shown, clicks, clicks per shown item; the treatment's difference against control (delta method). */
  shown: number;
  clicks: number;
  ctr: number;
  ctrLift: number;
  ctrDiff: number;
  ctrLower: number;
  ctrUpper: number;
  ctrPValue: number;
  ctrSequentialPValue: number;
  ctrSequentialLower: number;
  ctrSequentialUpper: number;
  ctrCupedPValue: number;
  ctrVarianceReduction: number;
  verdict: string;
  note: string;
}

export interface TrafficRow {
  minute: string;
  /** Versions that answered in the minute. */
  versions: string[];
  requests: number;
  p50: number;
  p95: number;
  p99: number;
}

export interface ModelEventRow {
  time: string;
  model: string;
  kind: string;
  alias: string;
  from: string;
  to: string;
  actor: string;
  reason: string;
}

export interface AlertRow {
  time: string;
  key: string;
  kind: string;
  severity: string;
  status: string;
  message: string;
}

type Raw = Record<string, unknown>;
const str = (v: unknown) => (v === null || v === undefined ? "" : String(v));
const iso = (v: unknown) => fromClickHouseTime(str(v)).toISOString();

async function rows(ch: ClickHouse, query: string, params: Record<string, unknown> = {}): Promise<Raw[]> {
  const result = await ch.client.query({ query, query_params: params, format: "JSONEachRow" });
  return result.json<Raw>();
}

/** The latest drift cycle of a model (every model when `model` is undefined). */
export async function readDriftReport(ch: ClickHouse, model?: string): Promise<DriftReportRow[]> {
  const raw = await rows(ch, `SELECT * FROM drift_report WHERE {model:String} = '' OR model_name = {model:String}`, { model: model ?? "" });
  return raw.map((r) => ({
    time: iso(r.time),
    model: str(r.model_name),
    version: str(r.model_version),
    kind: str(r.kind) as DriftReportRow["kind"],
    feature: str(r.feature),
    featureType: str(r.feature_type),
    statistic: str(r.statistic),
    value: floatIn(r.value),
    pValue: floatIn(r.p_value),
    threshold: floatIn(r.threshold),
    verdict: str(r.verdict),
    referenceN: Number(r.reference_n),
    currentN: Number(r.current_n),
    dropped: Number(r.dropped),
  }));
}

/**
 * The distributions behind the largest PSI values of the latest cycle (PSI rows carry them in their
 * details): what a person looks at to see what changed.
 */
export async function readDriftDistributions(
  ch: ClickHouse,
  model: string,
  limit = 2,
): Promise<{ feature: string; kind: string; psi: number; verdict: string; distribution: DriftDistribution }[]> {
  const raw = await rows(
    ch,
    `SELECT subject, kind, value, verdict, JSONExtractRaw(details, 'distribution') AS distribution
     FROM monitoring
     WHERE model_name = {model:String} AND kind IN ('feature_drift', 'prediction_drift') AND statistic = 'psi' AND NOT isNaN(value)
       AND time = (SELECT max(time) FROM monitoring WHERE model_name = {model:String} AND kind IN ('feature_drift', 'prediction_drift'))
     ORDER BY value DESC
     LIMIT {limit:UInt32}`,
    { model, limit },
  );
  return raw
    .filter((r) => str(r.distribution).startsWith("{"))
    .map((r) => ({
      feature: str(r.subject),
      kind: str(r.kind),
      psi: floatIn(r.value),
      verdict: str(r.verdict),
      distribution: JSON.parse(str(r.distribution)) as DriftDistribution,
    }));
}

export async function readQualityReport(ch: ClickHouse, options: { model?: string; since?: Date } = {}): Promise<QualityReportRow[]> {
  const raw = await rows(ch, `SELECT * FROM quality_report WHERE ({model:String} = '' OR model_name = {model:String}) AND hour >= {since:DateTime64(3)}`, {
    model: options.model ?? "",
    since: toClickHouseTime(options.since ?? new Date(0)),
  });
  return raw.map((r) => ({
    hour: iso(r.hour),
    model: str(r.model_name),
    version: str(r.model_version),
    variant: str(r.variant),
    auc: floatIn(r.auc),
    accuracy: floatIn(r.accuracy),
    ece: floatIn(r.ece),
    brier: floatIn(r.brier),
    meanPredicted: floatIn(r.mean_predicted),
    observedRate: floatIn(r.observed_rate),
    n: Number(r.n),
    positives: Number(r.positives),
    verdict: str(r.verdict),
  }));
}

export async function readAbReport(ch: ClickHouse, experiment?: string): Promise<AbReportRow[]> {
  const raw = await rows(ch, `SELECT * FROM ab_report WHERE {experiment:String} = '' OR experiment = {experiment:String}`, { experiment: experiment ?? "" });
  return raw.map((r) => ({
    time: iso(r.time),
    experiment: str(r.experiment),
    variant: str(r.variant),
    model: str(r.model_name),
    version: str(r.model_version),
    control: Boolean(r.is_control),
    users: Number(r.users),
    exposures: Number(r.exposures),
    conversions: Number(r.conversions),
    conversionRate: floatIn(r.conversion_rate),
    avgRevenue: floatIn(r.avg_revenue),
    lift: floatIn(r.lift),
    liftLower: floatIn(r.lift_lower),
    liftUpper: floatIn(r.lift_upper),
    pValue: floatIn(r.p_value),
    revenuePValue: floatIn(r.revenue_p_value),
    srm: Boolean(r.srm),
    sequentialPValue: floatIn(r.seq_p_value),
    sequentialLower: floatIn(r.seq_lower),
    sequentialUpper: floatIn(r.seq_upper),
    cupedDiff: floatIn(r.cuped_diff),
    cupedLower: floatIn(r.cuped_lower),
    cupedUpper: floatIn(r.cuped_upper),
    cupedPValue: floatIn(r.cuped_p_value),
    varianceReduction: floatIn(r.cuped_variance_reduction),
    shown: floatIn(r.shown),
    clicks: floatIn(r.clicks),
    ctr: floatIn(r.ctr),
    ctrLift: floatIn(r.ctr_lift),
    ctrDiff: floatIn(r.ctr_diff),
    ctrLower: floatIn(r.ctr_lower),
    ctrUpper: floatIn(r.ctr_upper),
    ctrPValue: floatIn(r.ctr_p_value),
    ctrSequentialPValue: floatIn(r.ctr_seq_p_value),
    ctrSequentialLower: floatIn(r.ctr_seq_lower),
    ctrSequentialUpper: floatIn(r.ctr_seq_upper),
    ctrCupedPValue: floatIn(r.ctr_cuped_p_value),
    ctrVarianceReduction: floatIn(r.ctr_cuped_variance_reduction),
    verdict: str(r.verdict),
    note: str(r.note),
  }));
}

/** Requests and latency percentiles per minute since `since`. */
export async function readTraffic(ch: ClickHouse, model: string, since: Date): Promise<TrafficRow[]> {
  const raw = await rows(ch, `SELECT * FROM serving_traffic WHERE model_name = {model:String} AND minute >= {since:DateTime64(3)} ORDER BY minute`, {
    model,
    since: toClickHouseTime(since),
  });
  return raw.map((r) => ({
    minute: iso(r.minute),
    versions: (r.versions as string[]) ?? [],
    requests: Number(r.requests),
    p50: floatIn(r.p50_ms),
    p95: floatIn(r.p95_ms),
    p99: floatIn(r.p99_ms),
  }));
}

export async function readModelTimeline(ch: ClickHouse, model: string): Promise<ModelEventRow[]> {
  const raw = await rows(ch, `SELECT * FROM model_timeline WHERE model_name = {model:String} ORDER BY time`, { model });
  return raw.map((r) => ({
    time: iso(r.time),
    model: str(r.model_name),
    kind: str(r.kind),
    alias: str(r.alias),
    from: str(r.from_version),
    to: str(r.to_version),
    actor: str(r.actor),
    reason: str(r.reason),
  }));
}

export async function readRecentAlerts(ch: ClickHouse, limit = 20): Promise<AlertRow[]> {
  const raw = await rows(ch, `SELECT time, key, kind, severity, status, message FROM alert_log ORDER BY time DESC LIMIT {limit:UInt32}`, { limit });
  return raw.map((r) => ({ time: iso(r.time), key: str(r.key), kind: str(r.kind), severity: str(r.severity), status: str(r.status), message: str(r.message) }));
}
