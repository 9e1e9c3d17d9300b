// The monitor's side of ClickHouse: its schema additions, the `monitoring` rows it writes, and the
// conversions that keep NaN honest. JSON cannot carry NaN or ±Infinity: ClickHouse writes them as
// null and reads null into a Float64 as 0, which would turn "no value" into a real-looking zero.
// Floats therefore go out as the strings ClickHouse parses ("nan", "inf") and come back null → NaN.
import type { ClickHouse } from "../lib/clickhouse.js";

export type Verdict = "ok" | "warning" | "alert" | "skipped";
export type MonitoringKind = "feature_drift" | "prediction_drift" | "quality" | "ab";

/** One row of the `monitoring` table. */
export interface MonitoringRow {
  time: Date;
  model_name: string;
  model_version: string;
  kind: MonitoringKind;
  /** Feature or metric name; for A/B `experiment/variant`; for quality the variant ("all" outside experiments). */
  subject: string;
  /** ks, psi, chi2, auc, accuracy, ece, brier, variant, srm, ... */
  statistic: string;
  value: number;
  p_value: number;
  threshold: number;
  verdict: Verdict;
  details: Record<string, unknown>;
}

const VERDICT_RANK: Record<Verdict, number> = { skipped: 0, ok: 1, warning: 2, alert: 3 };

/** The more severe of two verdicts (skipped counts as the least). */
export function worst(a: Verdict, b: Verdict): Verdict {
  return VERDICT_RANK[a] >= VERDICT_RANK[b] ? a : b;
}

export async function writeMonitoringRows(ch: ClickHouse, rows: readonly MonitoringRow[]): Promise<void> {
  if (rows.length === 0) return;
  await ch.client.insert({
    table: "monitoring",
    format: "JSONEachRow",
    values: rows.map((r) => ({
      ...r,
      time: toClickHouseTime(r.time),
      value: floatOut(r.value),
      p_value: floatOut(r.p_value),
      threshold: floatOut(r.threshold),
      details: JSON.stringify(r.details), // NaN → null, read back as "no value"
    })),
  });
}

/** A float as ClickHouse's JSON input accepts it, non-finite values included. */
export function floatOut(v: number): number | string {
  if (Number.isFinite(v)) return v;
  return Number.isNaN(v) ? "nan" : v > 0 ? "inf" : "-inf";
}

/** A float read from ClickHouse JSON output, where NaN and ±Infinity arrive as null. */
export function floatIn(v: unknown): number {
  if (v === null || v === undefined) return NaN;
  return typeof v === "number" ? v : Number(v);
}

/** `YYYY-MM-DD hh:mm:ss.mmm` in UTC: the form DateTime64(3, 'UTC') query parameters parse. */
export function toClickHouseTime(d: Date): string {
  return d.toISOString().replace("T", " ").replace("Z", "");
}

/** Parses ClickHouse's DateTime64 text (UTC columns) back into a Date. */
export function fromClickHouseTime(s: string): Date {
  return new Date(`${s.replace(" ", "T")}Z`);
}

/**
 * A message that says how to get on when ClickHouse cannot be opened; undefined when there is
 * nothing better to say than the error itself. The common case: the embedded engine's data
 * directory is held by another process (chDB binds one process to a data path).
 */
export function explainClickHouseError(err: unknown, config: { dataDir: string; httpPort: number }): string | undefined {
  const e = err as { message?: string; code?: string } | undefined;
  // chDB prints "Cannot lock file .../status" on stderr and throws a generic connection error.
  if (e?.code === "CHDB_CONNECTION" || /Cannot lock file|Another server instance|Failed to create connection for path/i.test(e?.message ?? "")) {
    return (
      `cannot open the embedded ClickHouse in ${config.dataDir}: most likely another streamserve process (streamserve up?) holds it, ` +
      `as chDB allows one process per data directory. Read the same reports from that process: curl http://127.0.0.1:${config.httpPort}/api/drift ` +
      `(or /api/quality, /api/ab), open its dashboard, or run against a ClickHouse server with --clickhouse-url. ` +
      `If no other process runs, check that the directory is writable`
    );
  }
  return undefined;
}
