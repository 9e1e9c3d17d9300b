// inference.GRPCInferenceService, the Open Inference Protocol (KServe v2 / Triton): health,
// metadata and ModelInfer over the models in the registry. An empty model_version means the
// version the serving alias points to.
import { Code, ServiceError, invalidArgument, type CallContext, type UnaryHandlers } from "../lib/grpc.js";
import { childCache, type MetricsRegistry } from "../lib/metrics.js";
import { GRPCInferenceService, type ModelInferRequest, type ModelInferResponse_InferOutputTensor } from "../gen/inference/grpc_predict_v2_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ModelManager } from "./model-manager.js";
import type { OnnxModel } from "./onnx-model.js";
import { signature } from "./onnx-model.js";
import { decodeInput, encodeOutput, oipDatatype, toOrtTensor } from "./tensors.js";
import type { ServingLimits } from "./limits.js";
import { ModelInferResponse_InferOutputTensorSchema, InferTensorContentsSchema } from "../gen/inference/grpc_predict_v2_pb.js";

/** How long a model or version that was not found is answered without asking the registry again. */
const MISS_TTL_MS = 1000;

export interface InferenceDeps {
  models: ModelManager;
  limits: ServingLimits;
  metrics: MetricsRegistry;
  /** Server name and version for ServerMetadata. */
  server: { name: string; version: string };
  /** False while starting or draining. */
  isReady(): boolean;
}

export function inferenceHandlers(deps: InferenceDeps): UnaryHandlers<typeof GRPCInferenceService.method> {
  const { models } = deps;
  const misses = new Map<string, { until: number; error: ServiceError }>();
  const lookups = new Map<string, Promise<string | ServiceError>>();
  // Observed only once acquire() found the model: a name the registry does not know adds no series.
  const inferDuration = deps.metrics.histogram("streamserve_model_infer_duration_seconds", "ModelInfer onnxruntime time, by model and version", {
    labelNames: ["model", "version"],
  });
  const inferDurationBy = childCache((model, version) => inferDuration.labels({ model, version }));

  /** The version a name and ref resolve to, or the NOT_FOUND to answer (remembered for MISS_TTL_MS). */
  async function resolveOrExplain(registry: NonNullable<ModelManager["registryClient"]>, name: string, version: string): Promise<string | ServiceError> {
    const resolved = await registry.resolve(name, version || "production");
    if (resolved) return resolved;
    const known = models.knowsRegistry() ? models.mayHaveModel(name) : (await registry.listVersions(name)).length > 0;
    const error = !known
      ? new ServiceError(Code.NOT_FOUND, `model "${name}" is not in the registry`)
      : new ServiceError(Code.NOT_FOUND, version ? `model "${name}" has no version or alias "${version}"` : `model "${name}" has no production version yet`);
    if (misses.size >= 10_000) misses.clear();
    misses.set(`${name}\u0000${version}`, { until: Date.now() + MISS_TTL_MS, error });
    return error;
  }

  /** Finds (and if needed loads) the model a request names; the caller must release it. */
  async function acquire(name: string, version: string): Promise<OnnxModel> {
    if (!name) throw invalidArgument("model_name", "is required");
    if (name.length > 256 || version.length > 256) throw invalidArgument(name.length > 256 ? "model_name" : "model_version", "is longer than 256 characters");
    const registry = models.registryClient;
    let m = models.acquire(name, version);
    if (m) return m;
    if (!registry) throw new ServiceError(Code.UNAVAILABLE, "the model registry is not reachable yet");
    // Unknown names are answered from the watched registry state, and misses are remembered
    // briefly: a client naming random models must not cost a KV lookup (or a key listing) each.
    const notInRegistry = () => new ServiceError(Code.NOT_FOUND, `model "${name}" is not in the registry`);
    if (!models.mayHaveModel(name)) throw notInRegistry();
    if (/^\d+$/.test(version) && !models.mayHaveVersion(name, version))
      throw new ServiceError(Code.NOT_FOUND, `model "${name}" has no version or alias "${version}"`);
    const missKey = `${name}\u0000${version}`;
    const missed = misses.get(missKey);
    if (missed && missed.until > Date.now()) throw missed.error;
    // Concurrent calls for the same name and version share one lookup.
    let lookup = lookups.get(missKey);
    if (!lookup) {
      lookup = resolveOrExplain(registry, name, version).finally(() => lookups.delete(missKey));
      lookups.set(missKey, lookup);
    }
    const found = await lookup;
    if (found instanceof ServiceError) throw found;
    const resolved = found;
    try {
      await models.load(name, resolved);
    } catch (err) {
      throw new ServiceError(Code.UNAVAILABLE, `model "${name}" version ${resolved} failed to load: ${(err as Error).message}`);
    }
    m = models.acquire(name, resolved);
    if (!m) throw new ServiceError(Code.UNAVAILABLE, `model "${name}" version ${resolved} is not ready`);
    return m;
  }

  async function modelInfer(req: ModelInferRequest, ctx: CallContext) {
    const model = await acquire(req.modelName, req.modelVersion);
    try {
      const sig = signature(model.session);
      const useRaw = req.rawInputContents.length > 0;
      if (useRaw && req.rawInputContents.length !== req.inputs.length) {
        throw invalidArgument("raw_input_contents", `has ${req.rawInputContents.length} entries for ${req.inputs.length} inputs`);
      }
      const feeds: Record<string, InstanceType<typeof import("onnxruntime-node").Tensor>> = {};
      req.inputs.forEach((input, i) => {
        const field = `inputs[${i}]`;
        const spec = sig.inputs.find((s) => s.name === input.name);
        if (!spec) throw invalidArgument(`${field}.name`, `model has no input "${input.name}" (inputs: ${sig.inputs.map((s) => s.name).join(", ")})`);
        if (feeds[input.name]) throw invalidArgument(`${field}.name`, `input "${input.name}" is given twice`);
        if (useRaw && input.contents) throw invalidArgument(`${field}.contents`, "must be empty when raw_input_contents is used");
        const decoded = decodeInput(field, input.datatype, input.shape, input.contents, useRaw ? req.rawInputContents[i] : undefined);
        if (decoded.shape.length !== spec.shape.length) {
          throw invalidArgument(`${field}.shape`, `has ${decoded.shape.length} dimensions; the model takes [${spec.shape.map((d) => (d < 0 ? "-1" : d))}]`);
        }
        decoded.shape.forEach((d, k) => {
          if (spec.shape[k]! >= 0 && spec.shape[k] !== d) throw invalidArgument(`${field}.shape[${k}]`, `is ${d}; the model takes ${spec.shape[k]}`);
        });
        if ((decoded.shape[0] ?? 0) > deps.limits.maxBatchRows)
          throw invalidArgument(`${field}.shape[0]`, `batch of ${decoded.shape[0]} exceeds ${deps.limits.maxBatchRows}`);
        feeds[input.name] = toOrtTensor(field, decoded, spec.type);
      });
      for (const spec of sig.inputs) if (!feeds[spec.name]) throw invalidArgument("inputs", `missing input "${spec.name}"`);

      const requested = req.outputs.map((o, i) => {
        if (!sig.outputs.some((s) => s.name === o.name)) {
          throw invalidArgument(`outputs[${i}].name`, `model has no output "${o.name}" (outputs: ${sig.outputs.map((s) => s.name).join(", ")})`);
        }
        return o.name;
      });
      const outputNames = requested.length ? requested : sig.outputs.filter((o) => o.type !== "non-tensor").map((o) => o.name);
      if (ctx.cancelled) throw new ServiceError(Code.CANCELLED, "cancelled");
      const started = performance.now();
      let results;
      try {
        results = await model.session.run(feeds, outputNames);
      } catch (err) {
        throw invalidArgument("inputs", `onnxruntime rejected the inputs: ${(err as Error).message}`);
      }
      inferDurationBy(model.name, model.version.version).observe((performance.now() - started) / 1000);
      const outputs: MessageInitShape<typeof ModelInferResponse_InferOutputTensorSchema>[] = [];
      const rawOutputs: Uint8Array[] = [];
      for (const name of outputNames) {
        const enc = encodeOutput(results[name]!, useRaw);
        outputs.push({
          name,
          datatype: enc.datatype,
          shape: enc.shape,
          contents: enc.contents as MessageInitShape<typeof InferTensorContentsSchema> | undefined,
        });
        if (enc.raw) rawOutputs.push(enc.raw);
      }
      return {
        modelName: model.name,
        modelVersion: model.version.version,
        id: req.id,
        outputs: outputs as ModelInferResponse_InferOutputTensor[],
        rawOutputContents: rawOutputs,
      };
    } finally {
      models.release(model);
    }
  }

  return {
    serverLive: () => ({ live: true }),
    serverReady: () => ({ ready: deps.isReady() }),
    serverMetadata: () => ({ name: deps.server.name, version: deps.server.version, extensions: [] }),
    async modelReady(req) {
      if (!req.name) throw invalidArgument("name", "is required");
      if (req.name.length > 256) throw invalidArgument("name", "is longer than 256 characters");
      const m = models.acquire(req.name, req.version);
      if (m) models.release(m);
      return { ready: Boolean(m) };
    },
    async modelMetadata(req) {
      const model = await acquire(req.name, req.version);
      try {
        const sig = signature(model.session);
        const registry = models.registryClient;
        const versions = registry ? (await registry.listVersions(model.name)).map((v) => v.version) : [model.version.version];
        const tensor = (t: { name: string; type: string; shape: number[] }) => ({ name: t.name, datatype: oipDatatype(t.type), shape: t.shape.map(BigInt) });
        return { name: model.name, versions, platform: "onnxruntime_onnx", inputs: sig.inputs.map(tensor), outputs: sig.outputs.map(tensor) };
      } finally {
        models.release(model);
      }
    },
    modelInfer,
  };
}
