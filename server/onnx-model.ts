// One loaded ONNX model version: an onnxruntime session plus what serving needs to know about it
// (the input that takes the feature matrix, the output that holds the score), checked and warmed
// up before it may serve.
import * as ort from "onnxruntime-node";
import type { FeatureSpec, ModelVersion } from "../lib/registry.js";

export { ort };

export interface SessionSettings {
  /** Threads per inference. One keeps latency flat when many requests run at once. @default 1 */
  intraOpThreads?: number;
}

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
  readonly featureCount: number;

  constructor(
    readonly version: ModelVersion,
    readonly session: ort.InferenceSession,
    readonly inputName: string,
    readonly outputName: string,
  ) {
    this.featureCount = version.features.length;
  }

  get name(): string {
    return this.version.name;
  }
  get features(): FeatureSpec[] {
    return this.version.features;
  }

  /** Scores `rows` feature vectors (row-major) in one onnxruntime run. */
  async score(matrix: Float32Array, rows: number): Promise<Float64Array> {
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
    return model;
  } catch (err) {
    await session.release().catch(() => undefined);
    if (err instanceof ModelLoadError) throw err;
    throw new ModelLoadError(`warm-up failed: ${(err as Error).message}`, { cause: err });
  }
}
