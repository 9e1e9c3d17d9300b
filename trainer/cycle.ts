// One training cycle: dataset → train → evaluate the new model and the current production model on
// the same validation rows → publish the version (artifact, schema, metrics, parameters, data
// window and counts, reference sample) → promotion decision, recorded with its reason in
// model_events and the log.

import { writeFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import type { Runtime } from "../lib/runtime.js";
import type { FeatureSpec, ModelVersion, Registry } from "../lib/registry.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { createRandom, trainGbdt, type GbdtModel, type GbdtOptions, type GbdtProgress } from "./gbdt.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME, exportOnnx } from "./onnx-export.js";
import { evaluate, splitTrainValid, type Evaluation } from "./metrics.js";
import { loadFileDataset, loadLoggedDataset, type Dataset, type LabelKind } from "./dataset.js";
import { acquireCycleLock, isHeld } from "./cycle-lock.js";
import { startGuardedRollout } from "./rollout.js";
import type { RolloutPolicy } from "./rollout-decision.js";

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
  const p = { ...PROMOTION_DEFAULTS, ...stripUndefined(policy) };
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

/** Where the rows come from. */
export type CycleData =
  | { kind: "logs"; label?: LabelKind; windowMs?: number; endMs?: number; labelDelayMs?: number }
  | { kind: "file"; path: string; label: string; format?: string };

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
  const o: CycleOptions & CycleDefaults = { ...CYCLE_DEFAULTS, ...stripUndefined(options) };
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

async function runCycle(runtime: Runtime, o: CycleOptions & CycleDefaults, modelName: string, registry: Registry | undefined): Promise<CycleReport> {
  const log = runtime.log.child({ part: "trainer", model: modelName });
  const started = Date.now();
  const data: CycleData = o.data ?? { kind: "logs" };

  // The production version, if any: its features are read too, to score it on the same rows.
  const production = registry ? await currentProduction(registry, modelName) : undefined;

  const ch = await runtime.clickhouse();
  let dataset: Dataset;
  let specs: FeatureSpec[];
  if (data.kind === "file") {
    const known = Object.fromEntries([...defaultModelFeatures(), ...(production?.features ?? [])].map((s) => [s.name, s]));
    const file = await loadFileDataset(ch.client, { path: data.path, label: data.label, format: data.format, specs: known, signal: o.signal });
    dataset = file;
    specs = file.specs;
  } else {
    const wanted = o.features ? requestedSpecs(o.features, production) : uniqueSpecs([...(production?.features ?? []), ...defaultModelFeatures()]);
    // Production's features are read as well, to score it on the same rows.
    const read = uniqueSpecs([...wanted, ...(production?.features ?? [])]);
    dataset = await loadLoggedDataset(ch.client, {
      modelName,
      featureNames: read.map((s) => s.name),
      label: data.label,
      windowMs: data.windowMs,
      endMs: data.endMs,
      labelDelayMs: data.labelDelayMs,
      scoredSample: o.referenceSize,
      seed: o.seed,
      signal: o.signal,
    });
    // Train on the wanted features that were logged with a value in the window.
    const served = new Set(dataset.featureNames.filter((_, f) => dataset.columns[f].some((v) => !Number.isNaN(v))));
    specs = wanted.filter((s) => served.has(s.name));
  }

  const report: CycleReport = {
    model: modelName,
    startedAt: new Date(started).toISOString(),
    durationMs: 0,
    data: { source: dataset.source, ...dataset.counts, features: specs.map((s) => s.name) },
    decision: { action: "skip", reason: "" },
  };
  const finish = async (decision: Decision) => {
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
    log[decision.action === "skip" ? "warn" : "info"](
      { ...details, version: report.version?.version },
      `training cycle: ${decision.action}: ${decision.reason}`,
    );
    if (registry) {
      await registry.recordEvent({
        model_name: modelName,
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
  };

  const negatives = dataset.counts.rows - dataset.counts.positives;
  if (dataset.counts.rows === 0) {
    const where =
      dataset.source.kind === "file"
        ? `in ${dataset.source.path}`
        : `logged for ${modelName} between ${dataset.source.window_start} and ${dataset.source.window_end}`;
    return finish({ action: "skip", reason: `no labelled rows ${where}` });
  }
  if (specs.length === 0) return finish({ action: "skip", reason: "no feature was served with a value in the window: nothing to learn from" });
  if (dataset.counts.positives === 0 || negatives === 0) {
    return finish({ action: "skip", reason: `need both classes to train: ${dataset.counts.positives} positive, ${negatives} negative rows` });
  }

  // Split by request so one request's candidates never straddle train and validation.
  const split = splitTrainValid(dataset.counts.rows, { validFraction: o.validFraction, seed: o.seed }, dataset.groups);
  report.data.trainRows = split.train.length;
  report.data.validRows = split.valid.length;
  const columnOf = (name: string) => dataset.columns[dataset.featureNames.indexOf(name)];
  const trainCols = specs.map((s) => gather(columnOf(s.name), split.train));
  const trainLabels = gatherU8(dataset.labels, split.train);
  const validLabels = gatherU8(dataset.labels, split.valid);
  let trainPositives = 0;
  for (const y of trainLabels) trainPositives += y;
  if (trainPositives === 0 || trainPositives === trainLabels.length || split.valid.length === 0) {
    return finish({
      action: "skip",
      reason: `the split left a side without both classes (${trainLabels.length} train rows, ${split.valid.length} validation rows)`,
    });
  }

  const t0 = performance.now();
  const model = await trainOffThread(
    { columns: trainCols, labels: trainLabels, featureNames: specs.map((s) => s.name), categorical: specs.map((s) => s.type === "categorical") },
    o.gbdt ?? {},
    o.onProgress,
  );
  report.trainMs = performance.now() - t0;
  report.params = { ...model.params, label: String(dataset.source.label), validFraction: o.validFraction, splitSeed: o.seed };
  report.featureGain = Object.fromEntries(model.featureNames.map((n, f) => [n, model.featureGain[f]]));
  const artifact = exportOnnx(model, { description: `${modelName}: gradient-boosted trees trained by streamserve`, metadata: { model_name: modelName } });
  if (o.outputPath) {
    writeFileSync(o.outputPath, artifact);
    report.outputPath = o.outputPath;
  }

  // Both models scored by onnxruntime on the same validation rows: what would be served.
  report.candidate = evaluate(
    validLabels,
    await scoreOnnx(
      artifact,
      ONNX_INPUT_NAME,
      ONNX_PROBABILITIES_NAME,
      specs.map((s) => gather(columnOf(s.name), split.valid)),
    ),
  );
  if (production && registry) {
    report.production = { version: production.version };
    try {
      const missing = production.features.filter((s) => !dataset.featureNames.includes(s.name)).map((s) => s.name);
      if (missing.length) throw new Error(`its features ${missing.join(", ")} are not in the data`);
      const bytes = await registry.fetchArtifact(production);
      const cols = production.features.map((s) => gather(columnOf(s.name), split.valid));
      report.production.evaluation = evaluate(validLabels, await scoreOnnx(bytes, production.inputName, production.outputName, cols));
    } catch (err) {
      report.production.error = (err as Error).message;
      log.warn({ err, version: production.version }, "could not evaluate the production model on the validation rows");
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
      train_rows: split.train.length,
      production_auc: report.production?.evaluation?.auc ?? NaN,
    }),
    params: report.params,
    data: { ...dataset.source, rows: dataset.counts.rows, positives: dataset.counts.positives, dropped: dataset.counts.dropped, notes: dataset.counts.notes },
    // The monitor compares this with every candidate the version scores, shown or not: from logs,
    // the reference is drawn from that same population, not from the rows the last ranking showed.
    reference: referenceSample(
      dataset.scored ? specs.map((s) => dataset.scored![dataset.featureNames.indexOf(s.name)]!) : trainCols,
      specs,
      o.referenceSize,
      o.seed,
    ),
    description: `trained on ${dataset.counts.rows} rows (${dataset.source.kind}); ${decision.reason}`,
    actor: o.actor,
  });
  const version = report.version.version;
  if (decision.action === "promote" && o.rollout === "guarded" && production) {
    await registry.setAlias(modelName, "candidate", version, { actor: o.actor, reason: decision.reason, kind: "candidate" });
    try {
      const experiment = await startGuardedRollout(registry, {
        model: modelName,
        candidate: version,
        stages: o.rolloutStages,
        policy: o.rolloutPolicy,
        actor: o.actor,
        reason: decision.reason,
      });
      report.rollout = { experiment: experiment.name, stages: experiment.rollout!.stages };
      return finish({
        action: "rollout",
        reason: `${decision.reason}; guarded rollout ${experiment.name} started at ${experiment.rollout!.stages[0]} % of users`,
      });
    } catch (err) {
      return finish({ action: "keep_candidate", reason: `${decision.reason}, but the guarded rollout could not start: ${(err as Error).message}` });
    }
  }
  if (decision.action === "promote") {
    await registry.setAlias(modelName, "production", version, { actor: o.actor, reason: decision.reason, kind: "promote" });
  } else {
    await registry.setAlias(modelName, "candidate", version, { actor: o.actor, reason: decision.reason, kind: "candidate" });
  }
  return finish(decision);
}

async function currentProduction(registry: Registry, name: string): Promise<ModelVersion | undefined> {
  const alias = await registry.getAlias(name, "production");
  return alias ? registry.getVersion(name, alias.version) : undefined;
}

/**
 * P(positive) per row from an ONNX model: `outputName`'s last column (a [N, 2] probability output)
 * or its only value per row. Columns are in the model's feature order.
 */
export async function scoreOnnx(bytes: Uint8Array, inputName: string, outputName: string, columns: Float64Array[]): Promise<Float64Array> {
  const n = columns[0]?.length ?? 0;
  const F = columns.length;
  const out = new Float64Array(n);
  const session = await ort.InferenceSession.create(bytes);
  try {
    const batch = 8192;
    for (let start = 0; start < n; start += batch) {
      const m = Math.min(batch, n - start);
      const x = new Float32Array(m * F);
      for (let i = 0; i < m; i++) for (let f = 0; f < F; f++) x[i * F + f] = columns[f][start + i];
      const result = await session.run({ [inputName]: new ort.Tensor("float32", x, [m, F]) });
      const t = result[outputName];
      if (!t) throw new Error(`the model has no output "${outputName}"`);
      const width = t.dims.length > 1 ? Number(t.dims[t.dims.length - 1]) : 1;
      const data = t.data as Float32Array | Float64Array;
      for (let i = 0; i < m; i++) out[start + i] = Number(data[i * width + width - 1]);
    }
  } finally {
    await session.release();
  }
  return out;
}

/**
 * Trains in a worker thread so a long fit does not stall the event loop of a process that also
 * serves (streamserve up); falls back to this thread where workers are unavailable.
 */
async function trainOffThread(data: Parameters<typeof trainGbdt>[0], options: GbdtOptions, onProgress?: (p: GbdtProgress) => void): Promise<GbdtModel> {
  const { trainInWorker } = await import("./train-worker.js");
  return trainInWorker(data, options, onProgress);
}

/** Up to `size` finite values per feature, drawn from the training rows with the seed. */
export function referenceSample(columns: Float64Array[], specs: FeatureSpec[], size: number, seed: number): Record<string, number[]> {
  const rand = createRandom(seed ^ 0x5eed);
  const out: Record<string, number[]> = {};
  specs.forEach((spec, f) => {
    const finite = columns[f].filter(Number.isFinite);
    if (finite.length <= size) {
      out[spec.name] = Array.from(finite);
      return;
    }
    // Partial Fisher–Yates: the first `size` slots become a uniform sample without replacement.
    for (let i = 0; i < size; i++) {
      const j = i + Math.floor(rand() * (finite.length - i));
      const t = finite[i];
      finite[i] = finite[j];
      finite[j] = t;
    }
    out[spec.name] = Array.from(finite.subarray(0, size));
  });
  return out;
}

function gather(column: Float64Array, idx: Uint32Array): Float64Array {
  const out = new Float64Array(idx.length);
  for (let i = 0; i < idx.length; i++) out[i] = column[idx[i]];
  return out;
}

function gatherU8(column: Uint8Array, idx: Uint32Array): Uint8Array {
  const out = new Uint8Array(idx.length);
  for (let i = 0; i < idx.length; i++) out[i] = column[idx[i]];
  return out;
}

/** The specs of the features asked for by name: pipeline and request features, or production's own. */
function requestedSpecs(names: string[], production: ModelVersion | undefined): FeatureSpec[] {
  const known = new Map([...(production?.features ?? []), ...defaultModelFeatures()].map((s) => [s.name, s]));
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length) throw new Error(`unknown features ${unknown.join(", ")}; known: ${[...known.keys()].join(", ")}`);
  return uniqueSpecs(names.map((n) => known.get(n)!));
}

function uniqueSpecs(specs: FeatureSpec[]): FeatureSpec[] {
  const seen = new Set<string>();
  return specs.filter((s) => !seen.has(s.name) && (seen.add(s.name), true));
}

function finiteOnly(values: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => Number.isFinite(v)));
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
