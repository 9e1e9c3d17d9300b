// `streamserve monitor`: drift, quality and A/B checks every hour (or once with --once), alerts on
// NATS alerts.<kind>, and the dashboard on the HTTP port.
import type { Command } from "../command.js";
import { runPartUntilSignal } from "../command.js";
import { durationFlag, numberFlag, stringFlag, UsageError, type CommandArgs } from "../args.js";
import { printTable } from "../table.js";
import { createMonitor, type CycleReport } from "../../monitor/monitor.js";
import { MONITOR_DEFAULTS, type MonitorOverrides } from "../../monitor/options.js";
import { experimentCtrRows, experimentRows, featureDriftRows, qualityGroupRows, shadowRows } from "../../monitor/text-report.js";
import { explainClickHouseError } from "../../monitor/store.js";
import { httpGuard } from "../../server/security.js";
import { TOKEN_FLAGS, tokensFromFlags } from "./serve.js";

const USAGE = `Usage:
  streamserve monitor [--every 1h] [--window 1h] [--webhook URL] [thresholds]
  streamserve monitor --once [--json] [--window 1h] [--webhook URL] [thresholds]

Each cycle checks the production model's served features (last --window) against the reference
stored with the version (KS and PSI per numeric feature, chi-square and PSI per categorical one,
drift of the predicted scores), the hourly AUC and calibration of the served scores from
feedback, and every running experiment (z-test, lift with its 95 % interval, Welch's t-test on
revenue, sample-ratio mismatch). Figures go to ClickHouse \`monitoring\`; alerts go to NATS
alerts.drift / alerts.quality / alerts.ab (namespaced), the log and --webhook, once per condition
(again when it worsens, clears, or after --repeat-after). Without --once it runs every --every and
serves the dashboard at http://HOST:HTTP_PORT/.

Flags:
  --once                 one cycle: print the findings, exit 0 (1 when a check failed)
  --every DURATION       time between cycles (default 1h)
  --window DURATION      served traffic compared with the reference (default 1h)
  --webhook URL          also POST each alert as JSON here [STREAMSERVE_ALERT_WEBHOOK]
  --repeat-after DURATION  announce a lasting condition again after this long (default 24h; 0: never)
  --alpha X              KS / chi-square level after Holm correction (default 0.05)
  --psi-warning X        (default 0.1)      --psi-alert X     (default 0.25)
  --auc-floor X          hourly AUC below this is an alert (default 0.6)
  --label NAME           clicked (default) or converted: the outcome quality is judged on
  --json                 with --once: the findings as JSON
${TOKEN_FLAGS}

Examples:
  streamserve monitor --once
  streamserve monitor --every 30m --webhook https://hooks.example.com/T000/B000`;

function overrides(args: CommandArgs): MonitorOverrides {
  const label = stringFlag(args, "label");
  if (label !== undefined && label !== "clicked" && label !== "converted") throw new UsageError(`--label must be clicked or converted, got "${label}"`);
  const webhook = stringFlag(args, "webhook");
  if (webhook !== undefined && !/^https?:\/\//.test(webhook)) throw new UsageError(`--webhook must be an http:// or https:// URL, got "${webhook}"`);
  const every = durationFlag(args, "every");
  const window = durationFlag(args, "window");
  if (every !== undefined && !(every > 0)) throw new UsageError("--every must be longer than 0");
  if (window !== undefined && !(window > 0)) throw new UsageError("--window must be longer than 0");
  return {
    intervalMs: every,
    drift: { windowMs: window, alpha: numberFlag(args, "alpha"), psiWarning: numberFlag(args, "psi-warning"), psiAlert: numberFlag(args, "psi-alert") },
    quality: { aucFloor: numberFlag(args, "auc-floor"), label },
    alerts: { webhookUrl: webhook, repeatAfterMs: durationFlag(args, "repeat-after") },
  };
}

function printCycle(report: CycleReport): void {
  const d = report.drift;
  console.log(
    `Drift of ${report.model}${d?.version ? ` version ${d.version}` : ""}, served ${d ? `${d.window.from.toISOString()} – ${d.window.to.toISOString()}` : ""}`,
  );
  if (d?.reason) console.log(`  ${d.reason}`);
  const features = [...(d?.features ?? []), ...(d?.prediction ? [{ ...d.prediction, feature: "(score)" }] : [])];
  if (features.length) printTable(featureDriftRows(features));

  const q = report.quality;
  console.log(`\nQuality from feedback, ${q ? `${q.hours.from.toISOString()} – ${q.hours.to.toISOString()}` : ""}`);
  if (q?.groups.length) printTable(qualityGroupRows(q.groups));
  else if (q) console.log("  no shown predictions in these hours");

  const e = report.experiments;
  console.log("\nExperiments");
  if (e?.experiments.length) {
    printTable(experimentRows(e.experiments));
    console.log("CTR (clicks per shown item; users as clusters, delta method)");
    printTable(experimentCtrRows(e.experiments));
    for (const x of e.experiments) for (const note of x.notes) console.log(`  ${x.experiment}: ${note}`);
  } else if (e) console.log("  no running experiment");

  if (report.rollouts?.length) {
    console.log("\nGuarded rollouts");
    printTable(
      report.rollouts.map((r) => ({
        experiment: r.experiment,
        stage: `${r.percent} %`,
        users: `${r.stats.rollout.users} / ${r.stats.baseline.users}`,
        action: r.action,
        reason: r.reason,
      })),
    );
  }
  if (report.online?.length) {
    console.log("\nOnline, per served version");
    printTable(
      report.online.map((v) => ({
        version: v.version,
        requests: v.requests,
        shown: v.shown,
        clicks: v.clicks,
        ctr: `${(100 * v.ctr).toFixed(2)}%`,
        "converted requests": v.conversions,
      })),
    );
  }
  if (report.shadow?.length) {
    console.log("\nShadow versions");
    printTable(shadowRows(report.shadow));
  }

  console.log(`\nAlerts: ${report.alerts.sent.length} sent, ${report.alerts.suppressed.length} still firing (already announced)`);
  for (const a of report.alerts.sent) console.log(`  [${a.status === "resolved" ? "resolved" : a.severity}] ${a.message}`);
  for (const err of report.errors) console.log(`\n${err.part} check failed: ${err.message}`);
}

/** The cycle as JSON: rows left out (they repeat the figures), dates as ISO strings, NaN as null. */
function cycleJson(report: CycleReport): unknown {
  const strip = <T extends { rows?: unknown }>(r: T | undefined) => (r ? { ...r, rows: undefined } : undefined);
  return { ...report, drift: strip(report.drift), quality: strip(report.quality), experiments: strip(report.experiments) };
}

export const monitor: Command = {
  name: "monitor",
  summary: "drift, quality and A/B checks on a schedule (--once: one cycle), alerts, dashboard",
  printsReport: (args) => Boolean(args.flags.once),
  booleans: ["metrics-open"],
  usage: USAGE,
  async run(args, runtime) {
    const o = overrides(args);
    let m;
    try {
      m = createMonitor(runtime, o);
    } catch (err) {
      if (err instanceof RangeError) throw new UsageError(err.message);
      throw err;
    }
    if (args.flags.once) {
      let report: CycleReport;
      try {
        report = await m.runCycle();
      } catch (err) {
        const hint = explainClickHouseError(err, runtime.config);
        if (!hint) throw err;
        console.error(`streamserve monitor: ${hint}`);
        return 1;
      }
      if (args.flags.json) console.log(JSON.stringify(cycleJson(report), null, 2));
      else printCycle(report);
      return report.errors.length ? 1 : 0;
    }
    // The dashboard shows what was served: with a token, it asks for it as serve's does.
    const guard = httpGuard(tokensFromFlags(args));
    if (guard) runtime.http.setGuard(guard);
    m.start();
    const everyMs = o.intervalMs ?? MONITOR_DEFAULTS.intervalMs;
    return runPartUntilSignal(runtime, { name: "monitor", health: () => ({ model: runtime.config.modelName, everyMs }), stop: () => m.stop() }, (port) =>
      console.log(`monitoring ${runtime.config.modelName} every ${Math.round(everyMs / 60_000)} min; dashboard http://127.0.0.1:${port}/`),
    );
  },
};

export default monitor;
