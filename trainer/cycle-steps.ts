// The steps of one training cycle, each a function of its inputs that runCycle (cycle.ts) calls in
// order: load, split, train, evaluate, decide (decidePromotion, cycle.ts), publish, apply.
// Invariant: the candidate and the production model are scored by onnxruntime on the same
// validation rows, the rows the candidate never saw.

import * as ort from "onnxruntime-node";
import type { ClickHouseClient } from "@clickhouse/client";
import type { FeatureSpec, ModelVersion, Registry } from "../lib/registry.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { createRandom, type GbdtData, type GbdtModel, type GbdtOptions, type GbdtProgress } from "./gbdt.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME, exportOnnx } from "./onnx-export.js";
import { evaluate, splitTrainValid, type Evaluation } from "./metrics.js";
import { loadFileDataset, loadLoggedDataset, type Dataset, type LabelKind } from "./dataset.js";
import { startGuardedRollout } from "./rollout.js";
import type { RolloutPolicy } from "./rollout-decision.js";
import type { Decision } from "./cycle.js";

/** Where the rows come from. */
export type CycleData =
  | { kind: "logs"; label?: LabelKind; windowMs?: number; endMs?: number; labelDelayMs?: number }
  | { kind: "file"; path: string; label: string; format?: string };

/** The rows of a cycle and the features the new model learns from. */
export interface LoadedRows {
  dataset: Dataset;
  specs: FeatureSpec[];
}

export interface LoadOptions {
  data: CycleData;
  /** Logs only: the features to learn from, by name (default: every pipeline and request feature, plus production's). */
  features?: string[];
  /** Logs only: scored candidates kept for the reference sample. */
  referenceSize: number;
  seed: number;
  signal?: AbortSignal;
}

/** Load: the labelled rows from the logs or a file; production's features are read too, to score it on the same rows. */
export async function loadRows(ch: ClickHouseClient, modelName: string, production: ModelVersion | undefined, o: LoadOptions): Promise<LoadedRows> {
  const data = o.data;
  if (data.kind === "file") {
    const known = Object.fromEntries([...defaultModelFeatures(), ...(production?.features ?? [])].map((s) => [s.name, s]));
    const file = await loadFileDataset(ch, { path: data.path, label: data.label, format: data.format, specs: known, signal: o.signal });
    return { dataset: file, specs: file.specs };
  }
  const wanted = o.features ? requestedSpecs(o.features, production) : uniqueSpecs([...(production?.features ?? []), ...defaultModelFeatures()]);
  const read = uniqueSpecs([...wanted, ...(production?.features ?? [])]);
  const dataset = await loadLoggedDataset(ch, {
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
  return { dataset, specs: wanted.filter((s) => served.has(s.name)) };
}

/** Why the loaded rows cannot train a model, or undefined when they can. */
export function unusableRows({ dataset, specs }: LoadedRows, modelName: string): Decision | undefined {
  const negatives = dataset.counts.rows - dataset.counts.positives;
  if (dataset.counts.rows === 0) {
    const where =
      dataset.source.kind === "file"
        ? `in ${dataset.source.path}`
        : `logged for ${modelName} between ${dataset.source.window_start} and ${dataset.source.window_end}`;
    return { action: "skip", reason: `no labelled rows ${where}` };
  }
  if (specs.length === 0) return { action: "skip", reason: "no feature was served with a value in the window: nothing to learn from" };
  if (dataset.counts.positives === 0 || negatives === 0) {
    return { action: "skip", reason: `need both classes to train: ${dataset.counts.positives} positive, ${negatives} negative rows` };
  }
  return undefined;
}

/** The training rows in the model's feature order, and the validation rows of any feature. */
export interface SplitRows {
  train: GbdtData & { columns: Float64Array[]; labels: Uint8Array };
  validLabels: Uint8Array;
  /** The validation rows' values of a feature of the dataset. */
  validColumn(name: string): Float64Array;
}

/**
 * Split: train and validation rows, by request so that one request's candidates never straddle
 * both; a skip decision when a side lacks a class.
 */
export function splitRows({ dataset, specs }: LoadedRows, validFraction: number, seed: number): { rows: SplitRows } | { skip: Decision } {
  const split = splitTrainValid(dataset.counts.rows, { validFraction, seed }, dataset.groups);
  const columnOf = (name: string) => {
    const f = dataset.featureNames.indexOf(name);
    if (f < 0) throw new Error(`feature ${name} is not in the data`);
    return dataset.columns[f];
  };
  const trainLabels = gatherU8(dataset.labels, split.train);
  let trainPositives = 0;
  for (const y of trainLabels) trainPositives += y;
  if (trainPositives === 0 || trainPositives === trainLabels.length || split.valid.length === 0) {
    return {
      skip: {
        action: "skip",
        reason: `the split left a side without both classes (${trainLabels.length} train rows, ${split.valid.length} validation rows)`,
      },
    };
  }
  return {
    rows: {
      train: {
        columns: specs.map((s) => gather(columnOf(s.name), split.train)),
        labels: trainLabels,
        featureNames: specs.map((s) => s.name),
        categorical: specs.map((s) => s.type === "categorical"),
      },
      validLabels: gatherU8(dataset.labels, split.valid),
      validColumn: (name) => gather(columnOf(name), split.valid),
    },
  };
}

export interface TrainedCandidate {
  model: GbdtModel;
  /** The ONNX model, as served. */
  artifact: Uint8Array;
  trainMs: number;
}

/** Train: the trees, off this thread (a fit must not stall a process that also serves), exported to ONNX. */
export async function trainCandidate(
  train: GbdtData,
  modelName: string,
  gbdt: GbdtOptions = {},
  onProgress?: (p: GbdtProgress) => void,
): Promise<TrainedCandidate> {
  const { trainInWorker } = await import("./train-worker.js");
  const t0 = performance.now();
  const model = await trainInWorker(train, gbdt, onProgress);
  const trainMs = performance.now() - t0;
  const artifact = exportOnnx(model, { description: `${modelName}: gradient-boosted trees trained by streamserve`, metadata: { model_name: modelName } });
  return { model, artifact, trainMs };
}

export interface Evaluations {
  candidate: Evaluation;
  /** Set when there is a production version: its evaluation, or why there is none. */
  production?: { version: string; evaluation?: Evaluation; error?: string };
}

/** Evaluate: the candidate and production (whose artifact `fetchArtifact` gets) on the same validation rows. */
export async function evaluateModels(
  candidate: { artifact: Uint8Array; features: string[] },
  rows: SplitRows,
  production?: { version: ModelVersion; fetchArtifact: (v: ModelVersion) => Promise<Uint8Array> },
  datasetFeatures?: string[],
): Promise<Evaluations> {
  const out: Evaluations = {
    candidate: evaluate(
      rows.validLabels,
      await scoreOnnx(
        candidate.artifact,
        ONNX_INPUT_NAME,
        ONNX_PROBABILITIES_NAME,
        candidate.features.map((name) => rows.validColumn(name)),
      ),
    ),
  };
  if (!production) return out;
  const v = production.version;
  out.production = { version: v.version };
  try {
    const missing = datasetFeatures ? v.features.filter((s) => !datasetFeatures.includes(s.name)).map((s) => s.name) : [];
    if (missing.length) throw new Error(`its features ${missing.join(", ")} are not in the data`);
    const bytes = await production.fetchArtifact(v);
    const cols = v.features.map((s) => rows.validColumn(s.name));
    out.production.evaluation = evaluate(rows.validLabels, await scoreOnnx(bytes, v.inputName, v.outputName, cols));
  } catch (err) {
    out.production.error = (err as Error).message;
  }
  return out;
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

/** Apply: move the alias the decision names, or hand a promotion to a guarded rollout. Returns the decision as carried out. */
export async function applyDecision(
  registry: Registry,
  decision: Decision,
  o: {
    model: string;
    version: string;
    /** There is a production version to compare a rollout with. */
    hasProduction: boolean;
    rollout?: "immediate" | "guarded";
    rolloutStages?: number[];
    rolloutPolicy?: Partial<RolloutPolicy>;
    actor: string;
  },
): Promise<{ decision: Decision; rollout?: { experiment: string; stages: number[] } }> {
  const { model, version, actor } = o;
  if (decision.action === "promote" && o.rollout === "guarded" && o.hasProduction) {
    await registry.setAlias(model, "candidate", version, { actor, reason: decision.reason, kind: "candidate" });
    try {
      const experiment = await startGuardedRollout(registry, {
        model,
        candidate: version,
        stages: o.rolloutStages,
        policy: o.rolloutPolicy,
        actor,
        reason: decision.reason,
      });
      return {
        decision: {
          action: "rollout",
          reason: `${decision.reason}; guarded rollout ${experiment.name} started at ${experiment.rollout!.stages[0]} % of users`,
        },
        rollout: { experiment: experiment.name, stages: experiment.rollout!.stages },
      };
    } catch (err) {
      return { decision: { action: "keep_candidate", reason: `${decision.reason}, but the guarded rollout could not start: ${(err as Error).message}` } };
    }
  }
  if (decision.action === "promote") {
    await registry.setAlias(model, "production", version, { actor, reason: decision.reason, kind: "promote" });
  } else {
    await registry.setAlias(model, "candidate", version, { actor, reason: decision.reason, kind: "candidate" });
  }
  return { decision };
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
