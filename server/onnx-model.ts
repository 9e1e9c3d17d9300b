// One loaded ONNX model version: an onnxruntime session plus what serving needs to know about it
// (the input that takes the feature matrix, the output that holds the score), checked and warmed
// up before it may serve. A tree ensemble also gets the native scorer (tree-scorer.ts), which
// scores Recommend's rows synchronously; it is used only after it agreed with onnxruntime at load.
import * as ort from "onnxruntime-node";
import type { FeatureSpec, ModelVersion } from "../lib/registry.js";
import { compileTreeScorer, type TreeScorer } from "./tree-scorer.js";

export { ort };

/** Which scorer Recommend uses: native when the model is a supported tree ensemble (auto), or always the one named. */
export type ScorerChoice = "auto" | "onnxruntime" | "native";
export const SCORER_CHOICES: readonly ScorerChoice[] = ["auto", "onnxruntime", "native"];

export interface SessionSettings {
  /** Threads per inference. One keeps latency flat when many requests run at once. @default 1 */
  intraOpThreads?: number;
  /** @default "auto" */
  scorer?: ScorerChoice;
}

/** The largest difference from onnxruntime the native scorer may show on the load-time check rows. */
export const NATIVE_TOLERANCE = 1e-5;

export class ModelLoadError extends Error {
  override name = "ModelLoadError";
}

/** Describes an ONNX model's signature, for `models push` checks and ModelMetadata. */
export interface TensorInfo {
  name: string;
  /** onnxruntime type: float32, float64, int64, bool, ... */
  type: string;
  /** -1 for a dynamic dimension. */
  shape: number[];
}

export async function createSession(bytes: Uint8Array, settings: SessionSettings = {}): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(bytes, {
      intraOpNumThreads: settings.intraOpThreads ?? 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      executionMode: "sequential",
    });
  } catch (err) {
    throw new ModelLoadError(`onnxruntime cannot load the model: ${(err as Error).message}`, { cause: err });
  }
}

export function signature(session: ort.InferenceSession): { inputs: TensorInfo[]; outputs: TensorInfo[] } {
  const info = (m: ort.InferenceSession.ValueMetadata): TensorInfo =>
    m.isTensor
      ? { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === "number" && d >= 0 ? d : -1)) }
      : { name: m.name, type: "non-tensor", shape: [] };
  return { inputs: session.inputMetadata.map(info), outputs: session.outputMetadata.map(info) };
}

/**
 * Picks the input that takes the [batch, features] matrix and the output that holds the score,
 * and checks that the model's input width matches the declared features.
 */
export function resolveIo(
  sig: { inputs: TensorInfo[]; outputs: TensorInfo[] },
  featureCount: number,
  wanted: { inputName?: string; outputName?: string } = {},
): { inputName: string; outputName: string } {
  const input = wanted.inputName ? sig.inputs.find((i) => i.name === wanted.inputName) : sig.inputs.length === 1 ? sig.inputs[0] : undefined;
  if (!input) {
    throw new ModelLoadError(
      wanted.inputName
        ? `the model has no input named "${wanted.inputName}" (inputs: ${sig.inputs.map((i) => i.name).join(", ")})`
        : `the model has ${sig.inputs.length} inputs (${sig.inputs.map((i) => i.name).join(", ")}); streamserve feeds one [batch, features] matrix`,
    );
  }
  if (input.type !== "float32") throw new ModelLoadError(`input "${input.name}" is ${input.type}; streamserve feeds float32 features`);
  if (input.shape.length !== 2) throw new ModelLoadError(`input "${input.name}" has shape [${input.shape}]; expected [batch, features]`);
  const width = input.shape[1]!;
  if (width !== -1 && width !== featureCount) {
    throw new ModelLoadError(`input "${input.name}" takes ${width} features but ${featureCount} were declared`);
  }
  const scoreOutputs = sig.outputs.filter((o) => o.type === "float32" || o.type === "float64");
  const output = wanted.outputName
    ? sig.outputs.find((o) => o.name === wanted.outputName)
    : (scoreOutputs.find((o) => o.name === "probabilities") ?? scoreOutputs[0]);
  if (!output) {
    throw new ModelLoadError(wanted.outputName ? `the model has no output named "${wanted.outputName}"` : "the model has no float output to use as the score");
  }
  return { inputName: input.name, outputName: output.name };
}

/** A model version ready to serve. Requests hold a reference while they run; see ModelManager. */
export class OnnxModel {
  /** Requests running on this version; the session is released when it is retired and this is 0. */
  inflight = 0;
  retired = false;
  /** When it last served a request (ModelManager unloads idle on-demand versions). */
  lastUsedMs = 0;
  /** Scores Recommend's rows when set (ModelInfer and REST inference always run onnxruntime). */
  native: TreeScorer | undefined;
  /** Why a model loaded with --scorer auto is scored by onnxruntime rather than natively (for the load log). */
  nativeUnavailable: string | undefined;
  readonly featureCount: number;

  constructor(
    readonly version: ModelVersion,
    readonly session: ort.InferenceSession,
    readonly inputName: string,
    readonly outputName: string,
  ) {
    this.featureCount = version.features.length;
  }

  /** Which scorer `score` uses. */
  get scorer(): "native" | "onnxruntime" {
    return this.native ? "native" : "onnxruntime";
  }

  get name(): string {
    return this.version.name;
  }
  get features(): FeatureSpec[] {
    return this.version.features;
  }

  /**
   * Scores `rows` feature vectors, row-major with `stride` values a row of which the first
   * featureCount are the model's: at once with the native scorer, else in one onnxruntime run.
   */
  score(matrix: Float32Array, rows: number, stride = this.featureCount): Float64Array | Promise<Float64Array> {
    if (this.native) return this.native.score(matrix, rows, stride);
    return this.scoreWithOnnxruntime(stride === this.featureCount ? matrix : leadingColumns(matrix, rows, stride, this.featureCount), rows);
  }

  async scoreWithOnnxruntime(matrix: Float32Array, rows: number): Promise<Float64Array> {
    const input = new ort.Tensor("float32", matrix, [rows, this.featureCount]);
    const out = await this.session.run({ [this.inputName]: input }, [this.outputName]);
    return scoresFrom(out[this.outputName]!, rows);
  }

  /** Runs the model on a few rows of default features so the first real request is not slow, and proves it works. */
  async warmUp(): Promise<void> {
    for (const rows of [1, 16]) {
      const matrix = new Float32Array(rows * this.featureCount);
      for (let r = 0; r < rows; r++) this.features.forEach((f, j) => (matrix[r * this.featureCount + j] = f.default));
      const scores = await this.score(matrix, rows);
      if (scores.length !== rows) throw new ModelLoadError(`warm-up returned ${scores.length} scores for ${rows} rows`);
    }
  }

  async release(): Promise<void> {
    await this.session.release().catch(() => undefined);
  }
}

/** The first `width` columns of a row-major matrix whose rows are `stride` long. */
function leadingColumns(matrix: Float32Array, rows: number, stride: number, width: number): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) out.set(matrix.subarray(r * stride, r * stride + width), r * width);
  return out;
}

/** [N], [N,1] → the values; [N,k] with k ≥ 2 → the last column (P(positive) of a classifier). */
export function scoresFrom(tensor: ort.Tensor, rows: number): Float64Array {
  const data = tensor.data as Float32Array | Float64Array;
  const dims = tensor.dims;
  const width = dims.length >= 2 ? Number(dims[dims.length - 1]) : 1;
  if (dims[0] !== undefined && Number(dims[0]) !== rows) throw new ModelLoadError(`the model returned ${dims[0]} rows for ${rows}`);
  const out = new Float64Array(rows);
  for (let i = 0; i < rows; i++) out[i] = data[i * width + (width - 1)]!;
  return out;
}

export async function loadModel(version: ModelVersion, bytes: Uint8Array, settings: SessionSettings = {}): Promise<OnnxModel> {
  const session = await createSession(bytes, settings);
  try {
    const io = resolveIo(signature(session), version.features.length, { inputName: version.inputName, outputName: version.outputName });
    const model = new OnnxModel(version, session, io.inputName, io.outputName);
    await model.warmUp();
    const native = await nativeScorer(model, bytes, settings.scorer ?? "auto");
    model.native = native.scorer;
    model.nativeUnavailable = native.reason;
    return model;
  } catch (err) {
    await session.release().catch(() => undefined);
    if (err instanceof ModelLoadError) throw err;
    throw new ModelLoadError(`warm-up failed: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The native scorer for a model, once it has matched onnxruntime on check rows (the model's
 * defaults, every threshold, just beside them, NaN, random values); with "auto", the reason it
 * is not used instead of an error.
 */
async function nativeScorer(model: OnnxModel, bytes: Uint8Array, choice: ScorerChoice): Promise<{ scorer?: TreeScorer; reason?: string }> {
  if (choice === "onnxruntime") return { reason: "--scorer onnxruntime" };
  try {
    const scorer = compileTreeScorer(bytes, model, model.featureCount);
    const rows = 256;
    const matrix = scorer.checkRows(
      rows,
      model.features.map((f) => f.default),
    );
    const expected = await model.scoreWithOnnxruntime(matrix, rows);
    const got = scorer.score(matrix, rows);
    for (let r = 0; r < rows; r++) {
      const diff = Math.abs(got[r]! - expected[r]!);
      if (!(diff <= NATIVE_TOLERANCE)) throw new Error(`the native scorer gives ${got[r]} where onnxruntime gives ${expected[r]} (check row ${r})`);
    }
    return { scorer };
  } catch (err) {
    if (choice === "native") throw new ModelLoadError(`--scorer native cannot score this model: ${(err as Error).message}`, { cause: err });
    return { reason: (err as Error).message };
  }
}
