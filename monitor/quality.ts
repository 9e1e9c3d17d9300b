// Quality from feedback: how good were the served scores, judged by what users then did? Per hour,
// model version and experiment variant: AUC, accuracy, Brier score and calibration, from the
// predictions that were shown (position > 0) joined to their outcomes. A shown item without any
// outcome counts as not clicked; that is why an hour is only judged once `labelDelayMs` has passed.
import type { ClickHouse } from "../lib/clickhouse.js";
import type { QualityOptions } from "./options.js";
import { classificationQuality, type QualityResult } from "./stats/classification.js";
import { floatIn, fromClickHouseTime, toClickHouseTime, worst, type MonitoringRow, type Verdict } from "./store.js";

const HOUR = 3_600_000;
/** AUC needs both classes; below this many of either, an hour's AUC is noise. */
const MIN_PER_CLASS = 10;

export interface QualityGroup {
  hour: Date;
  version: string;
  /** Experiment variant, "" outside experiments. */
  variant: string;
  /** Shown predictions in the group (before any sampling cap). */
  shown: number;
  result: QualityResult;
  verdict: Verdict;
  /** What crossed a threshold, or why the group was not judged. */
  notes: string[];
}

export interface QualityReport {
  model: string;
  time: Date;
  hours: { from: Date; to: Date };
  groups: QualityGroup[];
  rows: MonitoringRow[];
}

/** The hours whose labels have had time to arrive: `hours` complete hours ending before now − labelDelay. */
export function qualityHours(now: Date, options: Pick<QualityOptions, "hours" | "labelDelayMs">): { from: Date; to: Date } {
  const to = Math.floor((now.getTime() - options.labelDelayMs) / HOUR) * HOUR;
  return { from: new Date(to - options.hours * HOUR), to: new Date(to) };
}

export async function checkQuality(ch: ClickHouse, model: string, now: Date, options: QualityOptions): Promise<QualityReport> {
  const hours = qualityHours(now, options);
  // The label column is one of two fixed names (checked in resolveMonitorOptions), never user text.
  const label = options.label === "converted" ? "converted" : "clicked";
  const result = await ch.client.query({
    query: `
      SELECT toStartOfHour(p.time) AS hour, p.model_version AS version, p.variant AS variant, count() AS shown,
        groupArraySample({max:UInt32}, 20240601)((p.score, o.label)) AS pairs
      FROM (
        SELECT request_id, item_id, time, score, model_version, variant FROM predictions FINAL
        WHERE model_name = {model:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)} AND position > 0) AS p
      LEFT JOIN (
        SELECT request_id, item_id, max(${label}) AS label FROM outcomes FINAL
        WHERE time >= {from:DateTime64(3)} GROUP BY request_id, item_id) AS o
      USING (request_id, item_id)
      GROUP BY hour, version, variant
      ORDER BY hour, version, variant`,
    query_params: { model, from: toClickHouseTime(hours.from), to: toClickHouseTime(hours.to), max: options.maxRows },
    format: "JSONEachRow",
  });
  const raw = await result.json<{ hour: string; version: string; variant: string; shown: string | number; pairs: [number | null, number][] }>();
  const groups = raw.map((g) => judge(g, options));
  const report: QualityReport = { model, time: now, hours, groups, rows: [] };
  report.rows = qualityRows(report, options);
  return report;
}

function judge(
  g: { hour: string; version: string; variant: string; shown: string | number; pairs: [number | null, number][] },
  options: QualityOptions,
): QualityGroup {
  const scores = g.pairs.map((p) => floatIn(p[0]));
  const labels = g.pairs.map((p) => Number(p[1]));
  const result = classificationQuality(scores, labels);
  const notes: string[] = [];
  let verdict: Verdict = "ok";
  const negatives = result.n - result.positives;
  if (result.n < options.minLabeled || result.positives < MIN_PER_CLASS || negatives < MIN_PER_CLASS) {
    notes.push(
      `${result.n} shown predictions with ${result.positives} positives: too few to judge (needs ${options.minLabeled}, and ${MIN_PER_CLASS} of each class)`,
    );
    verdict = "skipped";
  } else {
    if (result.auc < options.aucFloor) {
      notes.push(`AUC ${result.auc.toFixed(3)} is below the floor ${options.aucFloor}`);
      verdict = worst(verdict, "alert");
    }
    if (options.accuracyFloor > 0 && result.accuracy < options.accuracyFloor) {
      notes.push(`accuracy ${result.accuracy.toFixed(3)} is below the floor ${options.accuracyFloor}`);
      verdict = worst(verdict, "alert");
    }
    if (result.ece > options.eceCeiling) {
      notes.push(
        `calibration error ${result.ece.toFixed(3)} is above ${options.eceCeiling} (mean score ${result.meanPredicted.toFixed(3)}, observed rate ${result.observedRate.toFixed(3)})`,
      );
      verdict = worst(verdict, "warning");
    }
  }
  if (result.outOfRange > 0) notes.push(`${result.outOfRange} scores outside [0, 1]: calibration treats them as clipped`);
  return { hour: fromClickHouseTime(g.hour), version: g.version, variant: g.variant, shown: Number(g.shown), result, verdict, notes };
}

/** One row per metric per group; the row's time is the hour it describes. */
export function qualityRows(report: Omit<QualityReport, "rows">, options: QualityOptions): MonitoringRow[] {
  const computedAt = report.time.toISOString();
  return report.groups.flatMap((g) => {
    const r = g.result;
    const judged = g.verdict !== "skipped";
    const details = {
      computed_at: computedAt,
      hour: g.hour.toISOString(),
      variant: g.variant,
      label: options.label,
      n: r.n,
      shown: g.shown,
      positives: r.positives,
      mean_predicted: r.meanPredicted,
      observed_rate: r.observedRate,
      dropped: r.dropped,
      out_of_range: r.outOfRange,
      notes: g.notes,
    };
    const row = (statistic: string, value: number, threshold: number, failed: boolean, severity: Verdict): MonitoringRow => ({
      time: g.hour,
      model_name: report.model,
      model_version: g.version,
      kind: "quality",
      subject: g.variant || "all",
      statistic,
      value,
      p_value: NaN,
      threshold,
      verdict: judged ? (failed ? severity : "ok") : "skipped",
      details: statistic === "ece" ? { ...details, bins: r.bins } : details,
    });
    return [
      row("auc", r.auc, options.aucFloor, r.auc < options.aucFloor, "alert"),
      row("accuracy", r.accuracy, options.accuracyFloor, options.accuracyFloor > 0 && r.accuracy < options.accuracyFloor, "alert"),
      row("ece", r.ece, options.eceCeiling, r.ece > options.eceCeiling, "warning"),
      row("brier", r.brier, NaN, false, "ok"),
    ];
  });
}
