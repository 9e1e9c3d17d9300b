// `streamserve train`: continuous training on a schedule, one cycle with --once, or a bootstrap
// model from a file of labelled rows with --data.
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { durationFlag, numberFlag, stringFlag, UsageError, type CommandArgs } from "../args.js";
import { formatTable } from "../table.js";
import { runTrainingCycle, type CycleOptions, type CycleReport } from "../../trainer/cycle.js";
import { startTrainingSchedule, type SkippedRun } from "../../trainer/schedule.js";
import type { GbdtOptions, GbdtProgress } from "../../trainer/gbdt.js";
import type { Evaluation } from "../../trainer/metrics.js";

const USAGE = `Usage:
  streamserve train [--every 6h] [--window 24h] [--label clicked|converted] [--rollout guarded]
  streamserve train --once [--window 24h] [--label clicked|converted] [--no-promote] [--rollout guarded]
  streamserve train --once --data FILE --label COLUMN [--no-promote | --no-publish]
  streamserve train --once --data FILE --label COLUMN --output model.onnx [--publish [--no-promote]]

Trains gradient-boosted trees on the logged predictions joined to their outcomes (the exact
feature vectors served), evaluates the new model and the production model on the same
validation rows (90/10 split by request, fixed seed), publishes a version to the registry and
promotes it to "production" when its AUC beats production's by --min-gain; otherwise it becomes
the "candidate". Without --once it runs every --every and skips a cycle when nothing new was logged.

With --data, the rows come from a file instead (CSV with a header, Parquet, JSON lines: anything
ClickHouse's file() reads). --label names its 0/1 column; every other column is a feature: numeric,
or categorical when it holds text (or when it is a pipeline feature with a vocabulary).

Flags:
  --once               run one cycle, print the report, exit: 0 when a version was trained
                       (promoted or not), 1 when the cycle was skipped (no usable data)
  --data FILE          train from this file instead of the logs (needs --once)
  --label NAME         logs: clicked (default) or converted; --data: the label column (required)
  --features A,B,C     logs: the features the new model learns from (default: every pipeline and
                       request feature; all are logged with each prediction, whatever was served)
  --output FILE        write the ONNX model here; with --once the registry is left alone (no
                       NATS needed) unless --publish is given too
  --publish            with --output: also publish the version to the registry
  --no-promote         publish the version as "candidate" whatever its metrics
  --rollout MODE       immediate (default): a promotion moves the production alias at once;
                       guarded: it goes out in stages to a growing share of users, each stage
                       judged online against production by always-valid sequential tests on CTR
                       and conversion with error-rate and latency guardrails; a regression rolls
                       it back, a stage that holds advances (the monitor looks every cycle;
                       \`streamserve experiments rollout-check\` looks now)
  --rollout-stages P,Q percent of users per stage (default 10,50,100)
  --no-publish         do not touch the registry (no NATS needed)
  --every DURATION     time between cycles (default 6h)
  --window DURATION    logged data per cycle (default 24h)
  --min-gain RATIO     relative AUC gain over production needed to promote (default 0.01 = 1 %)
  --min-rows N         never promote a model trained on fewer rows (default 1000)
  --trees N --depth N --learning-rate X --min-leaf N --lambda X --seed N   GBDT parameters
                       (defaults 100, 5, 0.1, 20, 1, 42)
  --threads N          threads building histograms, 1 or more (default 1; one per 50,000 rows
                       at most); the model records it, as it changes the last bits of the sums
  --json               print the report as JSON

Examples:
  streamserve train --once
  streamserve train --once --data history.parquet --label clicked --output model.onnx
  streamserve train --once --data history.parquet --label clicked --output model.onnx --publish`;

function gbdtOptions(args: CommandArgs): GbdtOptions {
  const positive = (name: string) => {
    const v = numberFlag(args, name);
    if (v !== undefined && !(v > 0)) throw new UsageError(`--${name} must be positive, got ${v}`);
    return v;
  };
  return {
    numTrees: positive("trees"),
    maxDepth: positive("depth"),
    learningRate: positive("learning-rate"),
    minSamplesLeaf: positive("min-leaf"),
    lambda: numberFlag(args, "lambda"),
    seed: numberFlag(args, "seed"),
    threads: positive("threads"),
  };
}

/**
 * Whether a run touches the registry: --publish and --no-publish say so; otherwise a one-off run
 * that writes --output is about the file, and every other run publishes.
 */
export function publishes(args: CommandArgs): boolean {
  if (args.flags.publish && args.flags["no-publish"]) throw new UsageError("--publish and --no-publish contradict each other; pass one of them");
  if (args.flags.publish) return true;
  if (args.flags["no-publish"]) return false;
  return !(args.flags.once && stringFlag(args, "output"));
}

function cycleOptions(args: CommandArgs): CycleOptions {
  const output = stringFlag(args, "output");
  const publish = publishes(args);
  if (args.flags["no-promote"] && !publish && !args.flags["no-publish"]) {
    throw new UsageError("--output alone leaves the registry alone, so --no-promote has nothing to do: add --publish to publish the version as candidate");
  }
  return {
    gbdt: gbdtOptions(args),
    minRelativeGain: numberFlag(args, "min-gain"),
    minRows: numberFlag(args, "min-rows"),
    promote: !args.flags["no-promote"],
    publish,
    outputPath: output ? resolve(output) : undefined,
    seed: numberFlag(args, "seed"),
    features: stringFlag(args, "features")
      ?.split(",")
      .map((f) => f.trim())
      .filter(Boolean),
    rollout: rolloutFlag(args),
    rolloutStages: rolloutStagesFlag(args),
  };
}

/** --rollout immediate|guarded, shared with `up` (whose continuous trainer takes the same choice). */
export function rolloutFlag(args: CommandArgs): CycleOptions["rollout"] {
  const v = stringFlag(args, "rollout");
  if (v === undefined || v === "immediate" || v === "guarded") return v;
  throw new UsageError(`--rollout must be immediate or guarded, got "${v}"`);
}

export function rolloutStagesFlag(args: CommandArgs): number[] | undefined {
  return stringFlag(args, "rollout-stages")?.split(",").map(Number);
}

/** A progress line on stderr, rewritten in place on a terminal, every 10 trees otherwise. */
function progressPrinter(): (p: GbdtProgress) => void {
  const tty = process.stderr.isTTY;
  return (p) => {
    const line = `training: tree ${p.tree + 1}/${p.numTrees}  train log-loss ${p.trainLogLoss.toFixed(4)}  ${(p.elapsedMs / 1000).toFixed(1)} s`;
    if (tty) process.stderr.write(`\r${line}${p.tree + 1 === p.numTrees ? "\n" : ""}`);
    else if (p.tree % 10 === 0 || p.tree + 1 === p.numTrees) process.stderr.write(`${line}\n`);
  };
}

const num = (v: number | undefined, digits = 4) => (v === undefined ? "—" : Number.isFinite(v) ? v.toFixed(digits) : String(v));

/** The report a person reads: data, metrics side by side with production, the decision. */
export function formatReport(r: CycleReport): string {
  const lines: string[] = [];
  const src = r.data.source;
  lines.push(`Training report: model ${r.model}  (${r.startedAt}, ${(r.durationMs / 1000).toFixed(1)} s)`);
  lines.push("");
  if (src.kind === undefined) {
    lines.push("Data: not read", "", `Decision: SKIPPED: ${r.decision.reason}`);
    return lines.join("\n");
  }
  lines.push(
    src.kind === "file"
      ? `Data: file ${src.path}, label column "${src.label}"`
      : `Data: logged predictions of ${src.model}, ${src.window_start} → ${src.window_end}, label ${src.label}`,
  );
  const negatives = r.data.rows - r.data.positives;
  lines.push(
    `  rows ${r.data.rows}  positives ${r.data.positives} (${r.data.rows ? ((100 * r.data.positives) / r.data.rows).toFixed(2) : "0"} %)  negatives ${negatives}`,
  );
  if (r.data.trainRows !== undefined) lines.push(`  train ${r.data.trainRows}  validation ${r.data.validRows}`);
  const dropped = Object.entries(r.data.dropped);
  lines.push(`  dropped: ${dropped.length ? dropped.map(([k, v]) => `${v} ${k.replace(/_/g, " ")}`).join(", ") : "none"}`);
  const notes = Object.entries(r.data.notes).filter(([, v]) => v !== 0);
  if (notes.length) lines.push(`  notes: ${notes.map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(", ")}`);
  lines.push(`  features (${r.data.features.length}): ${r.data.features.join(", ") || "none"}`);
  if (r.trainMs !== undefined) lines.push(`  trained in ${(r.trainMs / 1000).toFixed(1)} s`);
  if (r.candidate) {
    lines.push("");
    const prodEval = r.production?.evaluation;
    const prodName = r.production ? `production v${r.production.version}` : "production";
    const row = (metric: string, get: (e: Evaluation) => number, digits = 4) => ({
      metric,
      new: num(get(r.candidate!), digits),
      [prodName]: prodEval ? num(get(prodEval), digits) : r.production ? "n/a" : "none",
    });
    lines.push("Validation (same rows for both):");
    lines.push(
      formatTable([
        row("AUC", (e) => e.auc),
        row("log-loss", (e) => e.logLoss),
        row("calibration bias", (e) => e.calibrationBias),
        row("rows", (e) => e.rows, 0),
        row("positives", (e) => e.positives, 0),
      ])
        .split("\n")
        .map((l) => `  ${l}`)
        .join("\n"),
    );
    if (r.production?.error) lines.push(`  production not evaluated: ${r.production.error}`);
    lines.push("  calibration by decile (mean predicted / observed):");
    lines.push(`    ${r.candidate.calibration.map((b) => `${(b.meanPredicted * 100).toFixed(1)}/${(b.observedRate * 100).toFixed(1)}%`).join("  ")}`);
  }
  if (r.featureGain) {
    const total = Object.values(r.featureGain).reduce((a, b) => a + b, 0) || 1;
    const top = Object.entries(r.featureGain)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 5);
    lines.push(`  top features by gain: ${top.map(([k, v]) => `${k} ${((100 * v) / total).toFixed(0)}%`).join(", ")}`);
  }
  lines.push("");
  if (r.version)
    lines.push(`Published: ${r.model} version ${r.version.version} (sha256 ${r.version.artifact.sha256.slice(0, 12)}, ${r.version.artifact.size} bytes)`);
  if (r.outputPath) lines.push(`ONNX written to ${r.outputPath}`);
  const verb = { promote: "PROMOTED to production", rollout: "ROLLING OUT in stages (guarded)", keep_candidate: "kept as candidate", skip: "SKIPPED" }[
    r.decision.action
  ];
  lines.push(`Decision: ${verb}: ${r.decision.reason}`);
  return lines.join("\n");
}

const command: Command = {
  name: "train",
  summary: "train, evaluate and publish a model (every 6 h, --once, or from a file with --data)",
  usage: USAGE,
  booleans: ["no-promote", "no-publish", "publish"],
  printsReport: (args) => Boolean(args.flags.once),
  async run(args, runtime) {
    const label = stringFlag(args, "label");
    const data = stringFlag(args, "data");
    if (args.flags["no-publish"] && args.flags["no-promote"]) throw new UsageError("--no-publish already implies no promotion; pass one of them");
    if (data) {
      if (!args.flags.once) throw new UsageError("--data trains once: add --once");
      if (!label) throw new UsageError("--data needs --label COLUMN, the file's 0/1 label column");
      if (!existsSync(data)) throw new UsageError(`--data ${data}: no such file`);
    } else if (label !== undefined && label !== "clicked" && label !== "converted") {
      throw new UsageError(`--label for logged data is clicked or converted, got "${label}" (a file's column needs --data FILE)`);
    }
    const windowMs = durationFlag(args, "window");
    const options = cycleOptions(args);

    if (args.flags.once) {
      const report = await runTrainingCycle(runtime, {
        ...options,
        data: data ? { kind: "file", path: resolve(data), label: label! } : { kind: "logs", label: label as "clicked" | "converted" | undefined, windowMs },
        onProgress: args.flags.json ? undefined : progressPrinter(),
      });
      console.log(args.flags.json ? JSON.stringify(report, null, 2) : formatReport(report));
      return report.decision.action === "skip" ? 1 : 0;
    }

    if (args.flags["no-publish"]) throw new UsageError("--no-publish only makes sense with --once");
    const schedule = startTrainingSchedule(runtime, {
      ...options,
      label: label as "clicked" | "converted" | undefined,
      windowMs,
      intervalMs: durationFlag(args, "every"),
      onReport: (r: CycleReport | SkippedRun) => console.log("skipped" in r ? `training skipped: ${r.reason}` : formatReport(r)),
    });
    const signal = await untilSignal();
    runtime.log.info({ signal }, "stopping the trainer");
    await schedule.stop();
    return 0;
  },
};

export default command;
