// `streamserve report drift|quality|ab|shadow`: the monitor's latest findings from the ClickHouse
// report views (shadow: computed now from shadow_predictions), as tables for people or JSON for scripts.
import type { Command } from "../command.js";
import { numberFlag, stringFlag, UsageError } from "../args.js";
import { formatTable, printTable } from "../table.js";
import { readAbReport, readDriftReport, readQualityReport, type AbReportRow } from "../../monitor/reports.js";
import { abReportRows, abReportText, driftReportRows, num, qualityReportRows, shadowRows } from "../../monitor/text-report.js";
import { compareShadow } from "../../monitor/shadow.js";
import { explainClickHouseError } from "../../monitor/store.js";
import type { ClickHouse } from "../../lib/clickhouse.js";

const USAGE = `Usage:
  streamserve report drift [--model NAME] [--json]
  streamserve report quality [--model NAME] [--hours 24] [--json]
  streamserve report ab [--experiment NAME] [--json]
  streamserve report shadow [--experiment NAME] [--hours 24] [--json]
  streamserve report sql "SELECT ..." [--json]

Prints what the monitor stored in ClickHouse (it computes nothing itself; run
\`streamserve monitor --once\` or \`streamserve up\` first):
  drift     the latest drift check per model: KS or chi-square and PSI per feature, the share of
            NaN/infinite values, prediction-score drift, each with its threshold and verdict
  quality   hourly AUC, accuracy, calibration error per model version and variant
  ab        the latest analysis per experiment: users, conversions, rate, revenue per user,
            lift with its 95 % interval, z-test and Welch p-values, sample-ratio mismatch; the
            always-valid (mSPRT) p-value and interval of the rate difference, safe to read every
            cycle; the CUPED-adjusted p-value and the variance reduction it achieved; then the
            same for CTR (clicks per shown item, users as clusters by the delta method)
  shadow    computed now from shadow_predictions (experiments create --shadow VERSION:PERCENT):
            on the requests the shadow scored, its scores against the answering version's (mean
            absolute difference, correlation), rankings (Spearman per request, top-k overlap with
            the items returned, same first item), and both versions' AUC on the items production
            showed, by their clicks

The same figures are SQL views (drift_report, quality_report, ab_report, serving_traffic,
model_timeline, experiment_outcomes): query them with \`clickhouse client\` on a server, or with
\`streamserve report sql\` on the embedded engine (read-only; monitor/README.md has examples). JSON
is also at /api/drift, /api/quality and /api/ab on the HTTP port.

Flags:
  --model NAME         drift, quality: only this model (default: every model)
  --hours N            quality, shadow: hours back from now (default 24)
  --experiment NAME    ab, shadow: only this experiment
  --json               rows as JSON`;

const KINDS = ["drift", "quality", "ab", "shadow", "sql"] as const;

export const report: Command = {
  name: "report",
  summary: "the monitor's latest drift, quality and A/B results, as tables or JSON",
  printsReport: true,
  usage: USAGE,
  async run(args, runtime) {
    const kind = args.positionals[0];
    if (!kind || !(KINDS as readonly string[]).includes(kind)) throw new UsageError(`say which report: ${KINDS.join(", ")}`);
    const hours = numberFlag(args, "hours", 24)!;
    if (!(hours > 0)) throw new UsageError(`--hours must be positive, got ${hours}`);
    const model = stringFlag(args, "model");

    let ch: ClickHouse;
    try {
      ch = await runtime.clickhouse();
    } catch (err) {
      const hint = explainClickHouseError(err, runtime.config);
      if (!hint) throw err;
      console.error(`streamserve report: ${hint}`);
      return 1;
    }

    let rows: Record<string, string | number>[];
    let json: unknown[];
    if (kind === "sql") {
      const query = args.positionals.slice(1).join(" ").trim();
      if (!query) throw new UsageError('give the query as one argument: streamserve report sql "SELECT * FROM drift_report"');
      try {
        // readonly 2: no writes or DDL, while the client may still set its own per-query settings.
        const result = await ch.client.query({ query, format: "JSONEachRow", clickhouse_settings: { readonly: "2" } });
        json = await result.json<Record<string, unknown>>();
      } catch (err) {
        console.error(`streamserve report sql: ${(err as Error).message.split("\n")[0]}`);
        return 1;
      }
      rows = (json as Record<string, unknown>[]).map((r) =>
        Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === "number" ? num(v) : typeof v === "string" ? v : JSON.stringify(v)])),
      );
    } else if (kind === "drift") {
      const data = await readDriftReport(ch, model);
      [rows, json] = [driftReportRows(data), data];
    } else if (kind === "quality") {
      const data = await readQualityReport(ch, { model, since: new Date(Date.now() - hours * 3_600_000) });
      [rows, json] = [qualityReportRows(data), data];
    } else if (kind === "shadow") {
      const data = await compareShadow(ch, {
        experiment: stringFlag(args, "experiment"),
        from: new Date(Date.now() - hours * 3_600_000),
        to: new Date(Date.now() + 60_000),
      });
      [rows, json] = [shadowRows(data), data];
    } else {
      const data = await readAbReport(ch, stringFlag(args, "experiment"));
      [rows, json] = [abReportRows(data), data];
    }

    if (args.flags.json) {
      console.log(JSON.stringify(json, null, 2));
      return 0;
    }
    if (rows.length === 0) {
      if (kind === "sql") {
        console.log("(no rows)");
        return 0;
      }
      if (kind === "shadow") {
        console.log(`no shadow scores in the last ${hours} h: start one with streamserve experiments create --name NAME --shadow VERSION:PERCENT`);
        return 0;
      }
      const what =
        kind === "ab" ? `A/B results${stringFlag(args, "experiment") ? ` for experiment ${stringFlag(args, "experiment")}` : ""}` : `${kind} results`;
      console.log(`no ${what} yet: the monitor stores them each cycle (streamserve monitor --once, or streamserve up)`);
      return 0;
    }
    if (kind === "ab") console.log(abReportText(json as AbReportRow[], formatTable));
    else printTable(rows);
    return 0;
  },
};

export default report;
