// streamserve.v1.RecommendationService: rank candidates for a user with the served model.
// The request path touches Redis (one read) and onnxruntime (one run), nothing else: logs go to
// an in-memory buffer that publishes to JetStream in the background.
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Names } from "../lib/config.js";
import type { Logger } from "../lib/logger.js";
import { childCache, type MetricsRegistry } from "../lib/metrics.js";
import type { FeatureSpec } from "../lib/registry.js";
import { assignVariant } from "../lib/experiments.js";
import { Code, EncodedReply, ServiceError, invalidArgument, type CallContext, type UnaryHandlers } from "../lib/grpc.js";
import { RecommendationService, type RecommendRequest, type RecordOutcomeRequest } from "../gen/streamserve/v1/recommendation_pb.js";
import { ExposureLogSchema, OutcomeLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { allFeatureSpecs, defaultModelFeatures } from "../features/definitions.js";
import { assemble, lookupFeatures, type FeatureSource } from "./feature-lookup.js";
import { encodePredictionLog } from "./prediction-log.js";
import { encodeRecommendResponse } from "./recommend-response.js";
import type { ModelManager } from "./model-manager.js";
import type { OnnxModel } from "./onnx-model.js";
import type { TrendingCache } from "./trending.js";
import type { ServingLimits } from "./limits.js";
import { createShadowScorer } from "./shadow-scoring.js";

/** Where logs go; the server's LogPublisher. publish() must never block or throw. */
export interface LogSink {
  publish(subject: string, msgId: string, payload: Uint8Array): void;
}

/**
 * Which features a prediction log carries. "all": the served model's features, then every other
 * feature the pipeline defines (features/definitions.ts) and the request features, so that a later
 * model can train on features this one does not use. "model": the model's input vector only.
 */
export type LogFeatures = "all" | "model";
export const LOG_FEATURES: readonly LogFeatures[] = ["all", "model"];

export interface RecommendationDeps {
  modelName: string;
  /** @default "all" */
  logFeatures?: LogFeatures;
  names: Names;
  redis: FeatureSource;
  models: ModelManager;
  trending: TrendingCache;
  logs: LogSink;
  limits: ServingLimits;
  log: Logger;
  metrics: MetricsRegistry;
}

export const FALLBACK_VERSION = "fallback";

/** The features one served feature list reads and logs: the model's first, in its order. */
interface LogLayout {
  logged: readonly FeatureSpec[];
  names: string[];
  /** The leading `modelCount` logged features are the model's input vector. */
  modelCount: number;
}

export function recommendationHandlers(deps: RecommendationDeps): UnaryHandlers<typeof RecommendationService.method, EncodedReply> {
  const { names, limits, log } = deps;
  const logFeatures = deps.logFeatures ?? "all";
  if (!LOG_FEATURES.includes(logFeatures)) throw new RangeError(`logFeatures must be one of ${LOG_FEATURES.join(", ")}, got "${logFeatures}"`);
  const fallbackFeatures = defaultModelFeatures();
  const pipelineFeatures = allFeatureSpecs();
  // Label values name registry versions and experiment variants, never anything a caller sent.
  const requests = deps.metrics.counter("streamserve_recommend_requests_total", "Recommend calls answered, by model, version and variant", {
    labelNames: ["model", "version", "variant"],
  });
  const requestsBy = childCache((version, variant) => requests.labels({ model: deps.modelName, version, variant }));
  const degraded = deps.metrics.counter("streamserve_feature_lookup_degraded_total", "Requests served with default features because Redis was unavailable");
  const inference = deps.metrics.histogram("streamserve_inference_duration_seconds", "onnxruntime time per request, by model and version", {
    labelNames: ["model", "version"],
  });
  const inferenceBy = childCache((model, version) => inference.labels({ model, version }));
  let lastRedisWarning = 0;
  const predictionSubject = names.logsSubject("prediction");
  const shadow = createShadowScorer(deps);

  // One layout per served feature list (a model version's, or the fallback's), worked out once.
  const layouts = new WeakMap<readonly FeatureSpec[], LogLayout>();
  function layoutFor(model: readonly FeatureSpec[]): LogLayout {
    let layout = layouts.get(model);
    if (!layout) {
      const own = new Set(model.map((s) => s.name));
      const logged = logFeatures === "all" ? [...model, ...pipelineFeatures.filter((s) => !own.has(s.name))] : model;
      layout = { logged, names: logged.map((s) => s.name), modelCount: model.length };
      layouts.set(model, layout);
    }
    return layout;
  }

  async function recommend(req: RecommendRequest, ctx: CallContext) {
    const started = performance.now();
    validateRecommend(req, limits);
    const requestId = req.requestId || randomUUID();

    const experiment = deps.models.experimentFor(deps.modelName);
    const variant = experiment ? assignVariant(experiment, req.userId) : undefined;
    let model: OnnxModel | undefined = variant ? deps.models.acquire(deps.modelName, variant.target) : undefined;
    // The variant's model may still be loading or have failed: serve production meanwhile.
    model ??= deps.models.acquire(deps.modelName);
    try {
      const candidates = req.candidates.length ? req.candidates : deps.trending.top(Math.max(req.limit || limits.defaultTrendingLimit, 1) * 5);
      const layout = layoutFor(model?.features ?? fallbackFeatures);
      const specs = layout.logged;
      const context = { userId: req.userId, currentPage: req.currentPage, deviceType: req.deviceType };
      const features = await withTimeout(
        lookupFeatures(deps.redis, names, specs, context, candidates),
        limits.featureTimeoutMs,
        // Too slow counts as unavailable: the same assembly as a failed read, defaults for stored features.
        () => assemble(specs, context, candidates, [], [], true),
      );
      if (features.unavailable) {
        degraded.inc();
        if (Date.now() - lastRedisWarning > 10_000) {
          lastRedisWarning = Date.now();
          log.warn({ requestId }, "Redis unavailable or slower than the feature budget: serving with default features (logged as missing_features)");
        }
      }
      if (ctx.cancelled) throw new ServiceError(Code.CANCELLED, "the call was cancelled");

      let scores: Float64Array;
      if (model && candidates.length) {
        const t = performance.now();
        const scored = model.score(features.matrix, features.rows, specs.length);
        scores = scored instanceof Float64Array ? scored : await scored;
        inferenceBy(model.name, model.version.version).observe((performance.now() - t) / 1000);
      } else {
        // No model yet: rank by popularity (trending score), ties in the caller's order.
        scores = Float64Array.from(candidates, (c) => deps.trending.score(c));
      }

      const order = new Array<number>(candidates.length);
      for (let i = 0; i < order.length; i++) order[i] = i;
      order.sort((a, b) => scores[b]! - scores[a]! || a - b);
      const limit = req.limit || (req.candidates.length ? candidates.length : limits.defaultTrendingLimit);
      const top = order.length > limit ? order.slice(0, limit) : order;
      const modelVersion = model?.version.version ?? FALLBACK_VERSION;
      const latencyMs = performance.now() - started;
      requestsBy(modelVersion, variant?.name).inc();

      // Log every scored candidate with the exact vector served (and the other logged features), then the exposure.
      const positions = new Uint32Array(candidates.length);
      for (let p = 0; p < top.length; p++) positions[top[p]!] = p + 1;
      const now = Date.now();
      const prediction = encodePredictionLog({
        requestId,
        timeMs: now,
        userId: req.userId,
        modelName: deps.modelName,
        modelVersion,
        experiment: experiment?.name ?? "",
        variant: variant?.name ?? "",
        currentPage: req.currentPage,
        deviceType: req.deviceType,
        featureNames: layout.names,
        modelFeatureCount: layout.modelCount,
        itemIds: candidates,
        scores,
        positions,
        matrix: features.matrix,
        missingFeatures: features.missing,
        latencyMs,
      });
      deps.logs.publish(predictionSubject, `prediction:${requestId}`, prediction);
      if (experiment && variant) {
        const exposure = create(ExposureLogSchema, {
          requestId,
          time: timestampFromMs(now),
          experiment: experiment.name,
          variant: variant.name,
          userId: req.userId,
          modelName: deps.modelName,
          modelVersion,
        });
        deps.logs.publish(names.logsSubject("exposure"), `exposure:${experiment.name}:${requestId}`, toBinary(ExposureLogSchema, exposure));
      }
      // Off the request's path (it starts after this turn); never part of the response.
      shadow(experiment, { requestId, timeMs: now, context, candidates, returned: top.length });

      return new EncodedReply(
        encodeRecommendResponse({
          requestId,
          itemIds: candidates,
          scores,
          order: top,
          modelName: deps.modelName,
          modelVersion,
          variant: variant?.name ?? "",
          latencyMs,
        }),
      );
    } finally {
      if (model) deps.models.release(model);
    }
  }

  function recordOutcome(req: RecordOutcomeRequest) {
    if (!req.requestId) throw invalidArgument("request_id", "is required (the request_id of the Recommend response)");
    if (req.requestId.length > limits.maxIdLength) throw invalidArgument("request_id", `is longer than ${limits.maxIdLength} characters`);
    if (!req.itemId) throw invalidArgument("item_id", "is required");
    if (req.itemId.length > limits.maxIdLength) throw invalidArgument("item_id", `is longer than ${limits.maxIdLength} characters`);
    if (!Number.isFinite(req.revenue) || req.revenue < 0) throw invalidArgument("revenue", "must be a finite number ≥ 0");
    const outcomeId = randomUUID();
    const outcome = create(OutcomeLogSchema, {
      outcomeId,
      requestId: req.requestId,
      itemId: req.itemId,
      time: timestampFromMs(Date.now()),
      clicked: req.clicked,
      converted: req.converted,
      revenue: req.revenue,
    });
    deps.logs.publish(names.logsSubject("outcome"), `outcome:${outcomeId}`, toBinary(OutcomeLogSchema, outcome));
    return { outcomeId };
  }

  return { recommend, recordOutcome };
}

export function validateRecommend(req: RecommendRequest, limits: ServingLimits): void {
  if (!req.userId) throw invalidArgument("user_id", "is required");
  if (req.userId.length > limits.maxIdLength) throw invalidArgument("user_id", `is longer than ${limits.maxIdLength} characters`);
  if (req.candidates.length > limits.maxCandidates) {
    throw invalidArgument("candidates", `has ${req.candidates.length} items; the limit is ${limits.maxCandidates}`);
  }
  const seen = new Set<string>();
  for (let i = 0; i < req.candidates.length; i++) {
    const c = req.candidates[i]!;
    if (!c) throw invalidArgument(`candidates[${i}]`, "is empty");
    if (c.length > limits.maxIdLength) throw invalidArgument(`candidates[${i}]`, `is longer than ${limits.maxIdLength} characters`);
    if (seen.has(c)) throw invalidArgument(`candidates[${i}]`, `"${c}" is listed twice`);
    seen.add(c);
  }
  if (req.limit > limits.maxCandidates) throw invalidArgument("limit", `must be at most ${limits.maxCandidates}`);
  if (req.requestId.length > limits.maxIdLength) throw invalidArgument("request_id", `is longer than ${limits.maxIdLength} characters`);
  if (req.currentPage.length > limits.maxIdLength) throw invalidArgument("current_page", `is longer than ${limits.maxIdLength} characters`);
  if (req.deviceType.length > 64) throw invalidArgument("device_type", "is longer than 64 characters");
}

/** Resolves with the fallback when the work takes longer than `ms` (the work is left to finish). */
function withTimeout<T>(work: Promise<T>, ms: number, fallback: () => T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => resolve(fallback()), ms);
    work.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (err: unknown) => (clearTimeout(timer), reject(err)),
    );
  });
}
