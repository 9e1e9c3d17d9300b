// Training data for the trainer, from either source, in one shape (column-major Float64Arrays):
//  - the logs: the prediction rows of a time window joined to their outcomes by (request, item).
//    Every feature the pipeline defines is logged with each prediction, whichever ones the served
//    model used (`model_features` names those), so a new model can ask for any feature set; the
//    values are read from the logged map by name, as the server looked them up, so training and
//    serving cannot skew;
//  - a file of labelled rows (CSV, Parquet, anything ClickHouse's file() reads), for bootstrapping.
// Both count what they keep, the positives, and what they drop and why.

import type { ClickHouseClient } from "@clickhouse/client";
import type { FeatureSpec } from "../lib/registry.js";
import { createRandom } from "./gbdt.js";
import { withDefaults } from "../lib/options.js";

export type LabelKind = "clicked" | "converted";

export interface Dataset {
  featureNames: string[];
  /** One column per feature name; NaN where the value is missing. */
  columns: Float64Array[];
  labels: Uint8Array;
  /** Split key per row: the request id (logs), so one request's candidates stay on one side. */
  groups: string[];
  /**
   * Logs only, when asked for (`scoredSample`): a uniform sample of every scored candidate of the
   * window, shown or not, one column per feature name. That is the population a model is served
   * (and the monitor reads), whereas the labelled rows are the ones the previous ranking chose to show.
   */
  scored?: Float64Array[];
  counts: DatasetCounts;
  /** Where the rows came from, as recorded in the model version. */
  source: Record<string, string | number>;
}

export interface DatasetCounts {
  rows: number;
  positives: number;
  /** Rows read but not used, by reason. */
  dropped: Record<string, number>;
  /**
   * Informational counts: logged rows, duplicates collapsed by FINAL (those that background
   * merges had not already removed), rows whose logged vector lacked a feature.
   */
  notes: Record<string, number>;
}

/** Options for {@link loadLoggedDataset}. */
export interface LoggedDatasetOptions {
  /** predictions.model_name to read (the served model). */
  modelName: string;
  /**
   * Features to read from the logged map, by name, whether or not the served model used them;
   * absent ones become NaN.
   */
  featureNames: string[];
  /** Label column of outcomes. @default "clicked" */
  label?: LabelKind;
  /** Length of the window. @default 24 h */
  windowMs?: number;
  /** End of the window (exclusive), ms since epoch. @default now − labelDelayMs */
  endMs?: number;
  /**
   * Predictions younger than this are left out: their outcomes may not have arrived yet, and
   * counting them as negatives would bias the labels. @default 5 min
   */
  labelDelayMs?: number;
  /** Also keep a uniform sample of up to this many scored rows, labelled or not ({@link Dataset.scored}). @default 0 */
  scoredSample?: number;
  /** Seed of that sample. @default 42 */
  seed?: number;
  signal?: AbortSignal;
}

export const LOGGED_DATASET_DEFAULTS = Object.freeze({
  label: "clicked" as LabelKind,
  windowMs: 24 * 3_600_000,
  labelDelayMs: 5 * 60_000,
});

/** JSON output writes NaN and infinities as strings (output_format_json_quote_denormals). */
export function toNumber(v: unknown): number {
  if (typeof v === "number") return v;
  if (v === null || v === undefined || v === "") return NaN;
  if (typeof v === "boolean") return v ? 1 : 0;
  const s = String(v).trim().toLowerCase();
  if (s === "nan") return NaN;
  if (s === "inf" || s === "+inf") return Infinity;
  if (s === "-inf") return -Infinity;
  return Number(s);
}

const JSON_SETTINGS = { output_format_json_quote_denormals: 1 } as const;
/** Schema inference for files: "4.8e-05" is a number (ClickHouse infers it as text by default). */
const FILE_SETTINGS = { input_format_try_infer_exponent_floats: 1 } as const;

/** Grows column arrays as rows stream in, then trims them. */
class ColumnBuilder {
  columns: Float64Array[];
  labels: Uint8Array;
  groups: string[] = [];
  length = 0;
  constructor(private readonly width: number) {
    this.columns = Array.from({ length: width }, () => new Float64Array(1024));
    this.labels = new Uint8Array(1024);
  }
  push(values: ArrayLike<number>, label: number, group: string): void {
    if (this.length === this.labels.length) {
      const cap = this.labels.length * 2;
      this.columns = this.columns.map((c) => {
        const next = new Float64Array(cap);
        next.set(c);
        return next;
      });
      const labels = new Uint8Array(cap);
      labels.set(this.labels);
      this.labels = labels;
    }
    for (let f = 0; f < this.width; f++) this.columns[f][this.length] = values[f];
    this.labels[this.length] = label;
    this.groups.push(group);
    this.length++;
  }
  finish(): { columns: Float64Array[]; labels: Uint8Array; groups: string[] } {
    return { columns: this.columns.map((c) => c.slice(0, this.length)), labels: this.labels.slice(0, this.length), groups: this.groups };
  }
}

/**
 * Reads the labelled rows of a window from ClickHouse: `predictions FINAL` (one row per request
 * and item even if the sink wrote a message twice) left-joined to the outcomes of the same
 * request and item (several outcome records collapse into one label: clicked if any click).
 * Candidates that were scored but not shown (position 0) and have no outcome are dropped: the
 * user never saw them, so their missing click says nothing.
 */
export async function loadLoggedDataset(client: ClickHouseClient, options: LoggedDatasetOptions): Promise<Dataset> {
  const o = withDefaults(LOGGED_DATASET_DEFAULTS, options);
  const endMs = o.endMs ?? Date.now() - o.labelDelayMs;
  const startMs = endMs - o.windowMs;
  const params = { model: o.modelName, start: startMs / 1000, end: endMs / 1000, names: o.featureNames };
  const where =
    "model_name = {model:String} AND time >= fromUnixTimestamp64Milli(toInt64({start:Float64} * 1000)) AND time < fromUnixTimestamp64Milli(toInt64({end:Float64} * 1000))";

  const rawRows = await scalar(client, `SELECT count() FROM predictions WHERE ${where}`, params, o.signal);
  const label = o.label === "converted" ? "converted" : "clicked";
  const query = `
    WITH labelled AS (
      SELECT request_id, item_id, max(clicked) AS clicked, max(converted) AS converted
      FROM outcomes FINAL
      WHERE time >= fromUnixTimestamp64Milli(toInt64({start:Float64} * 1000))
      GROUP BY request_id, item_id
    )
    SELECT
      p.request_id,
      p.position,
      arrayMap(n -> if(mapContains(p.features, n), p.features[n], nan), {names:Array(String)}) AS x,
      arrayCount(n -> NOT mapContains(p.features, n), {names:Array(String)}) AS absent,
      arrayExists(n -> mapContains(p.features, n) AND NOT has(p.model_features, n), {names:Array(String)}) AS beyond_model,
      o.request_id != '' AS has_outcome,
      o.${label} AS label
    FROM (SELECT * FROM predictions FINAL WHERE ${where}) AS p
    LEFT JOIN labelled AS o ON p.request_id = o.request_id AND p.item_id = o.item_id
    ORDER BY p.time, p.request_id, p.item_id`;
  const result = await client.query({ query, query_params: params, format: "JSONCompactEachRow", clickhouse_settings: JSON_SETTINGS, abort_signal: o.signal });
  const builder = new ColumnBuilder(o.featureNames.length);
  const dropped: Record<string, number> = {};
  let positives = 0;
  let rowsWithAbsent = 0;
  let rowsBeyondModel = 0;
  let distinctRows = 0;
  const x = new Float64Array(o.featureNames.length);
  const sample = new RowReservoir(o.scoredSample ?? 0, o.seed ?? 42);
  for await (const batch of result.stream()) {
    for (const row of batch as { json<T>(): T }[]) {
      const [requestId, position, values, absent, beyondModel, hasOutcome, y] =
        row.json<[string, number, unknown[], number, number | boolean, number | boolean, number]>();
      distinctRows++;
      const valid = values.length === o.featureNames.length;
      if (valid) {
        for (let f = 0; f < values.length; f++) x[f] = toNumber(values[f]);
        sample.offer(x);
      }
      if (!toNumber(hasOutcome) && Number(position) === 0) {
        dropped.not_shown = (dropped.not_shown ?? 0) + 1;
        continue;
      }
      if (!valid) {
        dropped.bad_vector = (dropped.bad_vector ?? 0) + 1;
        continue;
      }
      if (Number(absent) > 0) rowsWithAbsent++;
      if (toNumber(beyondModel)) rowsBeyondModel++;
      const yy = toNumber(y) > 0 ? 1 : 0;
      positives += yy;
      builder.push(x, yy, requestId);
    }
  }
  const { columns, labels, groups } = builder.finish();
  return {
    featureNames: [...o.featureNames],
    columns,
    labels,
    groups,
    ...(o.scoredSample ? { scored: sample.columns(o.featureNames.length) } : {}),
    counts: {
      rows: labels.length,
      positives,
      dropped,
      notes: {
        logged_rows: rawRows,
        duplicates_collapsed: rawRows - distinctRows,
        rows_with_absent_features: rowsWithAbsent,
        rows_with_features_beyond_served_model: rowsBeyondModel,
      },
    },
    source: { kind: "logs", model: o.modelName, label, window_start: new Date(startMs).toISOString(), window_end: new Date(endMs).toISOString() },
  };
}

/** A uniform sample of up to `size` rows from a stream of unknown length (Algorithm R), seeded. */
class RowReservoir {
  private rows: Float64Array[] = [];
  private seen = 0;
  private readonly rand: () => number;
  constructor(
    private readonly size: number,
    seed: number,
  ) {
    this.rand = createRandom(seed);
  }
  offer(row: Float64Array): void {
    if (this.size <= 0) return;
    const i = this.seen++;
    if (i < this.size) this.rows.push(Float64Array.from(row));
    else {
      const j = Math.floor(this.rand() * (i + 1));
      if (j < this.size) this.rows[j] = Float64Array.from(row);
    }
  }
  columns(width: number): Float64Array[] {
    return Array.from({ length: width }, (_, f) => Float64Array.from(this.rows, (r) => r[f]!));
  }
}

/** Number of logged predictions of `modelName` newer than `sinceMs` (for "is there new data?"). */
export async function countPredictionsSince(client: ClickHouseClient, modelName: string, sinceMs: number, signal?: AbortSignal): Promise<number> {
  return scalar(
    client,
    "SELECT count() FROM predictions WHERE model_name = {model:String} AND time >= fromUnixTimestamp64Milli(toInt64({since:Float64}))",
    { model: modelName, since: sinceMs },
    signal,
  );
}

async function scalar(client: ClickHouseClient, query: string, params: Record<string, unknown>, signal?: AbortSignal): Promise<number> {
  const r = await client.query({ query, query_params: params, format: "JSONCompactEachRow", abort_signal: signal });
  const rows = await r.json<unknown[]>();
  return Number((rows[0] as unknown[] | undefined)?.[0] ?? 0);
}

/** Options for {@link loadFileDataset}. */
export interface FileDatasetOptions {
  /** Path of the file (absolute, or relative to the working directory). */
  path: string;
  /** Column holding the 0/1 label (true/false and yes/no are accepted). */
  label: string;
  /** ClickHouse input format; by default inferred from the extension (CSV with header, Parquet, ...). */
  format?: string;
  /**
   * Known specs by column name. A column with a spec takes its type and vocabulary; any other
   * numeric column is a numeric feature; any other text column is categorical with a
   * vocabulary of its most frequent values.
   */
  specs?: Record<string, FeatureSpec>;
  /** Source recorded for columns that have no spec. @default "user" */
  defaultSource?: FeatureSpec["source"];
  signal?: AbortSignal;
}

/** At most this many vocabulary entries are learned for a text column (the GBDT splits codes < 254). */
export const MAX_LEARNED_VOCABULARY = 254;

/** The dataset plus the serving specs of its columns, which the model version records. */
export interface FileDataset extends Dataset {
  specs: FeatureSpec[];
}

/**
 * Reads a file of labelled rows through ClickHouse's file() table function (the embedded engine
 * reads local paths). Every column but the label is a feature.
 */
export async function loadFileDataset(client: ClickHouseClient, options: FileDatasetOptions): Promise<FileDataset> {
  const path = options.path;
  const source = options.format ? `file({path:String}, {format:String})` : `file({path:String})`;
  const params = { path, format: options.format ?? "" };
  let described: { name: string; type: string }[];
  try {
    described = await (
      await client.query({
        query: `DESCRIBE ${source}`,
        query_params: params,
        format: "JSONEachRow",
        clickhouse_settings: FILE_SETTINGS,
        abort_signal: options.signal,
      })
    ).json();
  } catch (err) {
    throw new DatasetError(`cannot read ${path}: ${(err as Error).message.split("\n")[0]}`, { cause: err });
  }
  const columnNames = described.map((d) => d.name);
  if (!columnNames.includes(options.label)) {
    throw new DatasetError(`${path} has no column "${options.label}" for the label; its columns are ${columnNames.join(", ")}`);
  }
  const featureCols = described.filter((d) => d.name !== options.label);
  if (featureCols.length === 0) throw new DatasetError(`${path} has no feature columns besides the label "${options.label}"`);
  const isText = (type: string) => /String|Enum|UUID|Date/.test(type);
  const specs: FeatureSpec[] = [];
  for (const col of featureCols) {
    const known = options.specs?.[col.name];
    if (known) {
      specs.push(known);
    } else if (isText(col.type)) {
      const top = await (
        await client.query({
          query: `SELECT toString(c) AS v FROM ${source} ARRAY JOIN [${quoteColumn(col.name)}] AS c WHERE c IS NOT NULL GROUP BY v ORDER BY count() DESC, v LIMIT ${MAX_LEARNED_VOCABULARY}`,
          query_params: params,
          format: "JSONCompactEachRow",
          clickhouse_settings: FILE_SETTINGS,
          abort_signal: options.signal,
        })
      ).json<[string]>();
      // default -1: an unseen value is no vocabulary code, as the server encodes unknown values
      specs.push({ name: col.name, source: options.defaultSource ?? "user", type: "categorical", default: -1, vocabulary: top.map((r) => r[0]) });
    } else {
      specs.push({ name: col.name, source: options.defaultSource ?? "user", type: "numeric", default: 0 });
    }
  }
  const select = [quoteColumn(options.label), ...featureCols.map((c) => (isText(c.type) ? `toString(${quoteColumn(c.name)})` : quoteColumn(c.name)))].join(
    ", ",
  );
  const result = await client.query({
    query: `SELECT ${select} FROM ${source}`,
    query_params: params,
    format: "JSONCompactEachRow",
    clickhouse_settings: JSON_SETTINGS,
    abort_signal: options.signal,
  });
  const vocabIndex = specs.map((s) => (s.type === "categorical" ? new Map((s.vocabulary ?? []).map((v, i) => [v, i])) : null));
  const unknownCode = specs.map((s) => (Number.isFinite(s.default) ? s.default : NaN));
  const builder = new ColumnBuilder(specs.length);
  const dropped: Record<string, number> = {};
  let positives = 0;
  let read = 0;
  const x = new Float64Array(specs.length);
  for await (const batch of result.stream()) {
    for (const row of batch as { json<T>(): T }[]) {
      const values = row.json<unknown[]>();
      const y = parseLabel(values[0]);
      read++;
      if (y === undefined) {
        dropped.bad_label = (dropped.bad_label ?? 0) + 1;
        continue;
      }
      for (let f = 0; f < specs.length; f++) {
        const v = values[f + 1];
        const index = vocabIndex[f];
        // Categorical: the vocabulary index, as the server encodes it; an unknown value takes
        // the spec's default, as at serving time; an empty cell is missing (NaN).
        x[f] = index ? (v === null || v === "" ? NaN : (index.get(String(v)) ?? unknownCode[f])) : toNumber(v);
      }
      positives += y;
      builder.push(x, y, String(read));
    }
  }
  const { columns, labels, groups } = builder.finish();
  return {
    featureNames: specs.map((s) => s.name),
    specs,
    columns,
    labels,
    groups,
    counts: { rows: labels.length, positives, dropped, notes: { file_rows: read } },
    source: { kind: "file", path, label: options.label },
  };
}

/** 0/1, true/false, yes/no; anything else is not a label. */
function parseLabel(v: unknown): 0 | 1 | undefined {
  if (v === 1 || v === true || v === "1" || v === "true" || v === "yes") return 1;
  if (v === 0 || v === false || v === "0" || v === "false" || v === "no") return 0;
  return undefined;
}

function quoteColumn(name: string): string {
  return "`" + name.replace(/\\/g, "\\\\").replace(/`/g, "\\`") + "`";
}

export class DatasetError extends Error {
  override name = "DatasetError";
}
