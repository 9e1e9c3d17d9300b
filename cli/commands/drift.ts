// `streamserve drift --reference A --current B`: the monitor's drift statistics between two files,
// for ad hoc checks outside the loop. Needs no service: the files are read by an in-memory
// embedded ClickHouse.
import type { Command } from "../command.js";
import { listFlag, numberFlag, stringFlag, UsageError, type CommandArgs } from "../args.js";
import { printTable } from "../table.js";
import { compareSamples, type DriftFeature } from "../../monitor/drift.js";
import { MONITOR_DEFAULTS } from "../../monitor/options.js";
import { openFileReader, readSampleFile, SampleFileError, type FileColumn } from "../../monitor/file-samples.js";
import { featureDriftRows } from "../../monitor/text-report.js";
import type { Correction } from "../../monitor/stats/ab-tests.js";

/** Exit code when at least one feature is at alert level, so scripts can branch on drift. */
export const EXIT_DRIFT = 3;

const USAGE = `Usage:
  streamserve drift --reference FILE --current FILE [--json] [--columns a,b] [--categorical a,b]
                    [--alpha 0.05] [--correction holm|bonferroni|none] [--psi-warning 0.1]
                    [--psi-alert 0.25] [--bins 10] [--min-samples 100] [--format FORMAT]

Compares each column of --current with the same column of --reference: numeric columns with the
two-sample Kolmogorov–Smirnov test and the population stability index (bins at the reference's
deciles), text columns with a chi-square test and PSI over categories. p-values are corrected for
the number of columns tested. NaN and infinite values are left out of the tests and counted.

Files: anything ClickHouse's file() reads by its extension: .csv (with a header row), .tsv,
.parquet, .jsonl / .ndjson; --format overrides (e.g. CSVWithNames).

Flags:
  --columns a,b        only these columns (default: every column both files have)
  --categorical a,b    treat these numeric columns as categories (codes, ids)
  --alpha X            significance level after correction (default 0.05)
  --correction NAME    holm (default), bonferroni or none
  --psi-warning X      PSI at which a column is a warning (default 0.1)
  --psi-alert X        PSI at which a column is an alert (default 0.25)
  --bins N             PSI bins (default 10)
  --min-samples N      fewer current values: the column is skipped (default 100)
  --json               the full result as JSON (with the binned distributions)

Exit status: 0 no column at alert level, ${EXIT_DRIFT} drift found, 1 an error, 2 a usage error.

Examples:
  streamserve drift --reference train.parquet --current today.csv
  streamserve drift --reference a.csv --current b.csv --columns age,income --json`;

function thresholds(args: CommandArgs) {
  const d = MONITOR_DEFAULTS.drift;
  const correction = (stringFlag(args, "correction") ?? d.correction) as Correction;
  if (!["holm", "bonferroni", "none"].includes(correction)) throw new UsageError(`--correction must be holm, bonferroni or none, got "${correction}"`);
  const t = {
    ...d,
    correction,
    alpha: numberFlag(args, "alpha", d.alpha)!,
    psiWarning: numberFlag(args, "psi-warning", d.psiWarning)!,
    psiAlert: numberFlag(args, "psi-alert", d.psiAlert)!,
    psiBins: numberFlag(args, "bins", d.psiBins)!,
    minSamples: numberFlag(args, "min-samples", d.minSamples)!,
  };
  if (!(t.alpha > 0 && t.alpha < 1)) throw new UsageError(`--alpha must be between 0 and 1, got ${t.alpha}`);
  if (!(t.psiWarning <= t.psiAlert)) throw new UsageError(`--psi-warning (${t.psiWarning}) must not exceed --psi-alert (${t.psiAlert})`);
  if (!Number.isInteger(t.psiBins) || t.psiBins < 2) throw new UsageError(`--bins must be an integer of at least 2, got ${t.psiBins}`);
  return t;
}

function listOf(args: CommandArgs, name: string): string[] {
  return listFlag(args, name)
    .flatMap((v) => v.split(","))
    .map((s) => s.trim())
    .filter(Boolean);
}

export const drift: Command = {
  name: "drift",
  summary: "drift statistics (KS, PSI, chi-square) between two files of samples",
  printsReport: true,
  usage: USAGE,
  async run(args) {
    const referencePath = stringFlag(args, "reference");
    const currentPath = stringFlag(args, "current");
    if (!referencePath || !currentPath) throw new UsageError("--reference and --current are both required");
    const t = thresholds(args);
    const format = stringFlag(args, "format");
    const wanted = listOf(args, "columns");
    const forcedCategorical = new Set(listOf(args, "categorical"));

    const client = await openFileReader();
    let reference: FileColumn[];
    let current: FileColumn[];
    try {
      reference = await readSampleFile(client, referencePath, format);
      current = await readSampleFile(client, currentPath, format);
    } catch (err) {
      if (err instanceof SampleFileError) {
        console.error(`streamserve drift: ${err.message}`);
        return 1;
      }
      throw err;
    } finally {
      await client.close();
    }

    const byName = (cols: FileColumn[]) => new Map(cols.map((c) => [c.name, c]));
    const ref = byName(reference);
    const cur = byName(current);
    const shared = reference.map((c) => c.name).filter((n) => cur.has(n));
    for (const name of [...wanted, ...forcedCategorical]) {
      if (!ref.has(name) || !cur.has(name)) {
        throw new UsageError(`column "${name}" is not in both files; shared columns: ${shared.join(", ") || "none"}`);
      }
    }
    const names = wanted.length ? wanted : shared;
    if (names.length === 0) {
      console.error(
        `streamserve drift: the files share no column (reference: ${reference.map((c) => c.name).join(", ")}; current: ${current.map((c) => c.name).join(", ")})`,
      );
      return 1;
    }
    const ignored: string[] = [];
    const features: DriftFeature[] = [];
    for (const name of names) {
      const r = ref.get(name)!;
      const c = cur.get(name)!;
      if (r.kind === "unsupported" || c.kind === "unsupported") {
        ignored.push(`${name} (${r.kind === "unsupported" ? r.clickhouseType : c.clickhouseType})`);
        continue;
      }
      // Text on either side makes the column categorical: a number and its spelling are one category.
      const categorical = forcedCategorical.has(name) || r.kind === "categorical" || c.kind === "categorical";
      features.push({ name, type: categorical ? "categorical" : "numeric" });
    }
    const results = compareSamples(
      features,
      Object.fromEntries(features.map((f) => [f.name, ref.get(f.name)!.values])),
      Object.fromEntries(features.map((f) => [f.name, cur.get(f.name)!.values])),
      t,
    );
    const alert = results.some((r) => r.verdict === "alert");

    if (args.flags.json) {
      console.log(JSON.stringify({ reference: referencePath, current: currentPath, thresholds: t, features: results, ignored, drift: alert }, null, 2));
    } else {
      printTable(featureDriftRows(results));
      if (ignored.length) console.log(`\nnot compared (unsupported type): ${ignored.join(", ")}`);
      const onlyOne = [...reference, ...current].map((c) => c.name).filter((n) => !(ref.has(n) && cur.has(n)));
      if (!wanted.length && onlyOne.length) console.log(`\nin one file only: ${[...new Set(onlyOne)].join(", ")}`);
      console.log(
        `\n${alert ? "drift" : "no drift at alert level"}: KS/chi-square p below ${t.alpha} after ${t.correction} correction over ${results.filter((r) => !r.reason).length} columns, or PSI at or above ${t.psiAlert}`,
      );
    }
    return alert ? EXIT_DRIFT : 0;
  },
};

export default drift;
