// One training cycle: dataset → train → evaluate the new model and the current production model on
// the same validation rows → publish the version (artifact, schema, metrics, parameters, data
// window and counts, reference sample) → promotion decision, recorded with its reason in
// model_events and the log.

import { writeFileSync } from "node:fs";
import type { Runtime } from "../lib/runtime.js";
import type { ModelVersion, Registry } from "../lib/registry.js";
import type { GbdtOptions, GbdtProgress } from "./gbdt.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME } from "./onnx-export.js";
import type { Evaluation } from "./metrics.js";
import { acquireCycleLock, isHeld } from "./cycle-lock.js";
import type { RolloutPolicy } from "./rollout-decision.js";
import {
  applyDecision,
  evaluateModels,
  loadRows,
  referenceSample,
  splitRows,
  trainCandidate,
  unusableRows,
  type CycleData,
  type LoadedRows,
} from "./cycle-steps.js";
import { withDefaults } from "../lib/options.js";

export { referenceSample, scoreOnnx, type CycleData } from "./cycle-steps.js";

/** When a new version may replace production. */
export interface PromotionPolicy {
  /** Promote when new AUC ≥ production AUC × (1 + minRelativeGain). @default 0.01 */
  minRelativeGain?: number;
  /** Never promote a model trained and validated on fewer rows. @default 1000 */
  minRows?: number;
  /** Never promote on fewer validation positives or negatives: AUC on a handful is noise. @default 20 */
  minValidationClassRows?: number;
  /** false: publish as candidate whatever the metrics (`--no-promote`). @default true */
  promote?: boolean;
}

export const PROMOTION_DEFAULTS: Readonly<Required<PromotionPolicy>> = Object.freeze({
  minRelativeGain: 0.01,
  minRows: 1000,
  minValidationClassRows: 20,
  promote: true,
});

/** "rollout": the policy would promote, and the promotion was handed to a guarded rollout (trainer/rollout.ts). */
export type DecisionAction = "promote" | "rollout" | "keep_candidate" | "skip";

export interface Decision {
  action: DecisionAction;
  reason: string;
}

export interface PromotionInput {
  rows: number;
  candidate: Pick<Evaluation, "auc" | "logLoss" | "rows" | "positives">;
  /** undefined: there is no production version. */
  production?: { version: string; auc: number; error?: string };
}

/** The promotion policy as a pure function, every branch with the reason a person reads. */
export function decidePromotion(input: PromotionInput, policy: PromotionPolicy = {}): Decision {
  const p = withDefaults(PROMOTION_DEFAULTS, policy);
  const { candidate, production } = input;
  const keep = (reason: string): Decision => ({ action: "keep_candidate", reason });
  if (!Number.isFinite(candidate.auc) || !Number.isFinite(candidate.logLoss)) {
    return keep(`broken metric: validation AUC ${candidate.auc}, log-loss ${candidate.logLoss}`);
  }
  if (input.rows < p.minRows) return keep(`too few rows: ${input.rows} < ${p.minRows}`);
  const negatives = candidate.rows - candidate.positives;
  if (candidate.positives < p.minValidationClassRows || negatives < p.minValidationClassRows) {
    return keep(`too few validation rows per class: ${candidate.positives} positive, ${negatives} negative (< ${p.minValidationClassRows})`);
  }
  if (!p.promote) return keep("promotion disabled (--no-promote)");
  if (!production) return { action: "promote", reason: `no production version yet; validation AUC ${fmt(candidate.auc)}` };
  if (!Number.isFinite(production.auc)) {
    // Promoting blind could replace a good model: an operator decides (`models promote`).
    return keep(`production v${production.version} could not be evaluated on the same rows${production.error ? ` (${production.error})` : ""}`);
  }
  const needed = production.auc * (1 + p.minRelativeGain);
  const gain = production.auc > 0 ? candidate.auc / production.auc - 1 : Infinity;
  if (candidate.auc >= needed) {
    return {
      action: "promote",
      reason: `AUC ${fmt(candidate.auc)} ≥ ${fmt(needed)} (production v${production.version} ${fmt(production.auc)} + ${pct(p.minRelativeGain)}): ${pct(gain)} better`,
    };
  }
  return keep(
    `AUC ${fmt(candidate.auc)} < ${fmt(needed)} needed (production v${production.version} ${fmt(production.auc)} + ${pct(p.minRelativeGain)}; change ${pct(gain)})`,
  );
}

const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(4) : String(v));
const pct = (v: number) => (Number.isFinite(v) ? `${(v * 100).toFixed(2)} %` : String(v));

export interface CycleOptions extends PromotionPolicy {
  /** Registry model to publish (and whose served predictions are read). @default config.modelName */
  modelName?: string;
  /** @default { kind: "logs" } (the last 24 h of logged predictions and outcomes) */
  data?: CycleData;
  /**
   * Logs only: the features the new model learns from, by name (pipeline or request features).
   * Every feature is logged with each prediction, so these need not be production's.
   * @default every pipeline and request feature, plus production's own
   */
  features?: string[];
  /** GBDT parameters; the defaults are the seed's (100 trees, depth 5). */
  gbdt?: GbdtOptions;
  /** Share of rows for validation. @default 0.1 */
  validFraction?: number;
  /** Seed of the split and of the reference sample. @default 42 */
  seed?: number;
  /** Values per feature kept as the monitor's reference sample. @default 2000 */
  referenceSize?: number;
  /** Publish to the registry. false: train, evaluate, write `outputPath`, touch nothing. @default true */
  publish?: boolean;
  /** Also write the ONNX model here. */
  outputPath?: string;
  /**
   * How a promotion goes out. "immediate": the production alias moves at once. "guarded": the
   * version goes out in stages to a growing share of users, each judged online against
   * production, rolled back on a regression (trainer/rollout.ts); with no production yet there is
   * nothing to compare with and it is promoted at once. @default "immediate"
   */
  rollout?: "immediate" | "guarded";
  /** Guarded rollouts: the stages (percent of users). @default [10, 50, 100] */
  rolloutStages?: number[];
  /** Guarded rollouts: the decision's settings. */
  rolloutPolicy?: Partial<RolloutPolicy>;
  /** Recorded as the version's author and the events' actor. @default "trainer" */
  actor?: string;
  onProgress?: (p: GbdtProgress) => void;
  signal?: AbortSignal;
}

type CycleDefaults = Required<Pick<CycleOptions, "validFraction" | "seed" | "referenceSize" | "publish" | "actor">>;

export const CYCLE_DEFAULTS: Readonly<CycleDefaults> = Object.freeze({
  validFraction: 0.1,
  seed: 42,
  referenceSize: 2000,
  publish: true,
  actor: "trainer",
});

export interface CycleReport {
  model: string;
  startedAt: string;
  durationMs: number;
  trainMs?: number;
  data: {
    source: Record<string, string | number>;
    rows: number;
    positives: number;
    dropped: Record<string, number>;
    notes: Record<string, number>;
    trainRows?: number;
    validRows?: number;
    features: string[];
  };
  candidate?: Evaluation;
  production?: { version: string; evaluation?: Evaluation; error?: string };
  decision: Decision;
  version?: ModelVersion;
  /** Set when the promotion was handed to a guarded rollout: its routing experiment and stages. */
  rollout?: { experiment: string; stages: number[] };
  outputPath?: string;
  params?: Record<string, unknown>;
  featureGain?: Record<string, number>;
}

/**
 * Runs one cycle against the runtime's ClickHouse and registry; a decision (skip included) is a
 * report, not an exception. Publishing cycles of one model never overlap, across processes too.
 */
export async function runTrainingCycle(runtime: Runtime, options: CycleOptions = {}): Promise<CycleReport> {
  const o: CycleOptions & CycleDefaults = withDefaults(CYCLE_DEFAULTS, options);
  const modelName = o.modelName ?? runtime.config.modelName;
  if (!o.publish) return runCycle(runtime, o, modelName, undefined);
  const registry = await runtime.registry();
  const lock = await acquireCycleLock(await runtime.nats(), runtime.names, modelName);
  if (isHeld(lock)) {
    const reason = `another training cycle of ${modelName} is running (${lock.holder}, since ${lock.since})`;
    runtime.log.warn({ part: "trainer", model: modelName }, `training cycle: skip: ${reason}`);
    return {
      model: modelName,
      startedAt: new Date().toISOString(),
      durationMs: 0,
      data: { source: {}, rows: 0, positives: 0, dropped: {}, notes: {}, features: [] },
      decision: { action: "skip", reason },
    };
  }
  try {
    return await runCycle(runtime, o, modelName, registry);
  } finally {
    await lock.release();
  }
}

/** The cycle's steps in order (cycle-steps.ts); every early stop is a decision, recorded like the others. */
async function runCycle(runtime: Runtime, o: CycleOptions & CycleDefaults, modelName: string, registry: Registry | undefined): Promise<CycleReport> {
  const log = runtime.log.child({ part: "trainer", model: modelName });
  const started = Date.now();
  const production = registry ? await currentProduction(registry, modelName) : undefined;

  const loaded = await loadRows((await runtime.clickhouse()).client, modelName, production, {
    data: o.data ?? { kind: "logs" },
    features: o.features,
    referenceSize: o.referenceSize,
    seed: o.seed,
    signal: o.signal,
  });
  const { dataset, specs } = loaded;
  const report: CycleReport = {
    model: modelName,
    startedAt: new Date(started).toISOString(),
    durationMs: 0,
    data: { source: dataset.source, ...dataset.counts, features: specs.map((s) => s.name) },
    decision: { action: "skip", reason: "" },
  };
  const finish = (decision: Decision) => recordDecision(runtime, registry, o, loaded, report, production, decision, started);

  const unusable = unusableRows(loaded, modelName);
  if (unusable) return finish(unusable);
  const split = splitRows(loaded, o.validFraction, o.seed);
  if ("skip" in split) return finish(split.skip);
  const rows = split.rows;
  report.data.trainRows = rows.train.labels.length;
  report.data.validRows = rows.validLabels.length;

  const trained = await trainCandidate(rows.train, modelName, o.gbdt ?? {}, o.onProgress);
  const { model, artifact } = trained;
  report.trainMs = trained.trainMs;
  report.params = { ...model.params, label: String(dataset.source.label), validFraction: o.validFraction, splitSeed: o.seed };
  report.featureGain = Object.fromEntries(model.featureNames.map((n, f) => [n, model.featureGain[f]]));
  if (o.outputPath) {
    writeFileSync(o.outputPath, artifact);
    report.outputPath = o.outputPath;
  }

  // Both models scored by onnxruntime on the same validation rows: what would be served.
  const evaluations = await evaluateModels(
    { artifact, features: model.featureNames },
    rows,
    production && registry ? { version: production, fetchArtifact: (v) => registry.fetchArtifact(v) } : undefined,
    dataset.featureNames,
  );
  report.candidate = evaluations.candidate;
  if (evaluations.production) {
    report.production = evaluations.production;
    if (evaluations.production.error) {
      log.warn({ err: evaluations.production.error, version: production!.version }, "could not evaluate the production model on the validation rows");
    }
  }

  const decision = decidePromotion(
    {
      rows: dataset.counts.rows,
      candidate: report.candidate,
      production: production && { version: production.version, auc: report.production?.evaluation?.auc ?? NaN, error: report.production?.error },
    },
    o,
  );
  if (!registry)
    return finish({
      action: decision.action === "skip" ? "skip" : "keep_candidate",
      reason: `not published to the registry; the policy would ${decision.action === "promote" ? "promote" : "keep it as candidate"}: ${decision.reason}`,
    });

  report.version = await registry.publish({
    name: modelName,
    artifact,
    features: specs,
    inputName: ONNX_INPUT_NAME,
    outputName: ONNX_PROBABILITIES_NAME,
    metrics: finiteOnly({
      auc: report.candidate.auc,
      log_loss: report.candidate.logLoss,
      calibration_bias: report.candidate.calibrationBias,
      valid_rows: report.candidate.rows,
      valid_positives: report.candidate.positives,
      train_rows: rows.train.labels.length,
      production_auc: report.production?.evaluation?.auc ?? NaN,
    }),
    params: report.params,
    data: { ...dataset.source, rows: dataset.counts.rows, positives: dataset.counts.positives, dropped: dataset.counts.dropped, notes: dataset.counts.notes },
    // The monitor compares this with every candidate the version scores, shown or not: from logs,
    // the reference is drawn from that same population, not from the rows the last ranking showed.
    reference: referenceSample(
      dataset.scored ? specs.map((s) => dataset.scored![dataset.featureNames.indexOf(s.name)]!) : rows.train.columns,
      specs,
      o.referenceSize,
      o.seed,
    ),
    description: `trained on ${dataset.counts.rows} rows (${dataset.source.kind}); ${decision.reason}`,
    actor: o.actor,
  });
  const applied = await applyDecision(registry, decision, {
    model: modelName,
    version: report.version.version,
    hasProduction: production !== undefined,
    rollout: o.rollout,
    rolloutStages: o.rolloutStages,
    rolloutPolicy: o.rolloutPolicy,
    actor: o.actor,
  });
  if (applied.rollout) report.rollout = applied.rollout;
  return finish(applied.decision);
}

/** The decision into the report, the log and model_events. */
async function recordDecision(
  runtime: Runtime,
  registry: Registry | undefined,
  o: CycleOptions & CycleDefaults,
  { dataset }: LoadedRows,
  report: CycleReport,
  production: ModelVersion | undefined,
  decision: Decision,
  started: number,
): Promise<CycleReport> {
  report.decision = decision;
  report.durationMs = Date.now() - started;
  const details = {
    action: decision.action,
    rows: dataset.counts.rows,
    positives: dataset.counts.positives,
    candidate_auc: report.candidate?.auc,
    production_auc: report.production?.evaluation?.auc,
    production_version: report.production?.version,
    source: dataset.source,
  };
  runtime.log
    .child({ part: "trainer", model: report.model })
    [decision.action === "skip" ? "warn" : "info"]({ ...details, version: report.version?.version }, `training cycle: ${decision.action}: ${decision.reason}`);
  if (registry) {
    await registry.recordEvent({
      model_name: report.model,
      kind: decision.action === "skip" ? "train_skipped" : "train_decision",
      alias: decision.action === "promote" ? "production" : decision.action === "keep_candidate" || decision.action === "rollout" ? "candidate" : "",
      from_version: production?.version,
      to_version: report.version?.version,
      actor: o.actor,
      reason: decision.reason,
      details,
    });
  }
  return report;
}

async function currentProduction(registry: Registry, name: string): Promise<ModelVersion | undefined> {
  const alias = await registry.getAlias(name, "production");
  return alias ? registry.getVersion(name, alias.version) : undefined;
}

function finiteOnly(values: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => Number.isFinite(v)));
}
