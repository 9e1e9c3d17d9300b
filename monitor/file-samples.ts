// Samples from files, for `streamserve drift --reference A --current B`: any format ClickHouse's
// file() reads (CSV with a header, Parquet, JSON lines, ...), one column per feature. The files are
// read by an in-memory embedded engine of their own, so an ad hoc check touches no data directory
// and needs no server (a server's file() would look for the path on the server's disk).
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { createClient, type ClickHouseClient } from "@clickhouse/client";
import type { SampleValues } from "./drift.js";

export interface FileColumn {
  name: string;
  /** ClickHouse's inferred type, e.g. Nullable(Float64), Nullable(String). */
  clickhouseType: string;
  kind: "numeric" | "categorical" | "unsupported";
  values: SampleValues;
}

export class SampleFileError extends Error {
  override name = "SampleFileError";
}

/** A client on an in-memory chDB session; close it when done. */
export async function openFileReader(): Promise<ClickHouseClient> {
  const { createChdbConnection } = await import("chdb/connection");
  return createClient({ connection: createChdbConnection({ path: ":memory:" }) } as never) as ClickHouseClient;
}

const NUMERIC = /^(Nullable\()?(U?Int\d+|Float\d+|Decimal.*)\)?$/;
const TEXT = /^(Nullable\()?(LowCardinality\()?(Nullable\()?(String|FixedString.*|Enum.*|Bool|UUID)\)*$/;

/** Every column of a file with its values; text and boolean columns are categorical. */
export async function readSampleFile(client: ClickHouseClient, path: string, format?: string): Promise<FileColumn[]> {
  const full = resolve(path);
  if (!existsSync(full)) throw new SampleFileError(`no such file: ${path}`);
  const source = format ? "file({path:String}, {format:String})" : "file({path:String})";
  const params = { path: full, format: format ?? "" };
  let described: { name: string; type: string }[];
  try {
    const r = await client.query({
      query: `DESCRIBE ${source}`,
      query_params: params,
      format: "JSONEachRow",
      clickhouse_settings: { input_format_try_infer_exponent_floats: 1 },
    });
    described = await r.json();
  } catch (err) {
    const first = (err as Error).message.split("\n")[0];
    throw new SampleFileError(
      `cannot read ${path}: ${first}. Use a file ClickHouse reads by its extension (.csv with a header row, .parquet, .jsonl), or pass --format`,
      { cause: err },
    );
  }
  const result = await client.query({
    query: `SELECT * FROM ${source}`,
    query_params: params,
    format: "JSONColumnsWithMetadata",
    // NaN and ±Infinity come back as "nan"/"inf" strings instead of null, so they are counted as non-finite.
    clickhouse_settings: { output_format_json_quote_denormals: 1, input_format_try_infer_exponent_floats: 1, output_format_json_quote_64bit_integers: 0 },
  });
  const { data } = JSON.parse(await result.text()) as { data: Record<string, unknown[]> };
  return described.map((d) => {
    const raw = data[d.name] ?? [];
    if (NUMERIC.test(d.type)) return { name: d.name, clickhouseType: d.type, kind: "numeric", values: raw.map(numberOf) };
    if (TEXT.test(d.type)) return { name: d.name, clickhouseType: d.type, kind: "categorical", values: raw.map((v) => (v === null ? null : String(v))) };
    return { name: d.name, clickhouseType: d.type, kind: "unsupported", values: [] };
  });
}

function numberOf(v: unknown): number {
  if (typeof v === "number") return v;
  if (v === "inf" || v === "+inf") return Infinity;
  if (v === "-inf") return -Infinity;
  return v === null || v === undefined ? NaN : Number(v);
}
