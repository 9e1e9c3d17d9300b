// streamserve.v1.RecommendationService: rank candidates for a user with the served model.
// The request path touches Redis (one pipelined read) and onnxruntime (one run), nothing else:
// logs go to an in-memory buffer that publishes to JetStream in the background.
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Names } from "../lib/config.js";
import type { Logger } from "../lib/logger.js";
import type { MetricsRegistry } from "../lib/metrics.js";
import type { Redis } from "../lib/redis.js";
import type { FeatureSpec } from "../lib/registry.js";
import { assignVariant } from "../lib/experiments.js";
import { invalidArgument, type CallContext, type UnaryHandlers } from "../lib/grpc.js";
import { RecommendationService, type RecommendRequest, type RecordOutcomeRequest } from "../gen/streamserve/v1/recommendation_pb.js";
import { ExposureLogSchema, OutcomeLogSchema, PredictionLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { defaultModelFeatures } from "../features/definitions.js";
import { assemble, lookupFeatures } from "./feature-lookup.js";
import type { ModelManager } from "./model-manager.js";
import type { OnnxModel } from "./onnx-model.js";
import type { TrendingCache } from "./trending.js";
import type { ServingLimits } from "./limits.js";
import { createShadowScorer } from "./shadow-scoring.js";

/** Where logs go; the server's LogPublisher. publish() must never block or throw. */
export interface LogSink {
  publish(subject: string, msgId: string, payload: Uint8Array): void;
}

export interface RecommendationDeps {
  modelName: string;
  names: Names;
  redis: Redis;
  models: ModelManager;
  trending: TrendingCache;
  logs: LogSink;
  limits: ServingLimits;
  log: Logger;
  metrics: MetricsRegistry;
}

export const FALLBACK_VERSION = "fallback";

export function recommendationHandlers(deps: RecommendationDeps): UnaryHandlers<typeof RecommendationService.method> {
  const { names, limits, log } = deps;
  const fallbackFeatures = defaultModelFeatures();
  const requests = deps.metrics.counter("streamserve_recommend_requests_total", "Recommend calls answered, by model, version and variant");
  const degraded = deps.metrics.counter("streamserve_feature_lookup_degraded_total", "Requests served with default features because Redis was unavailable");
  const inference = deps.metrics.histogram("streamserve_inference_duration_seconds", "onnxruntime time per request, by model and version");
  let lastRedisWarning = 0;
  const shadow = createShadowScorer(deps);

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
      const specs: readonly FeatureSpec[] = model?.features ?? fallbackFeatures;
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
      if (ctx.signal.aborted) throw new Error("cancelled");

      let scores: Float64Array;
      if (model && candidates.length) {
        const t = performance.now();
        scores = await model.score(features.matrix, features.rows);
        inference.observe((performance.now() - t) / 1000, { model: model.name, version: model.version.version });
      } else {
        // No model yet: rank by popularity (trending score), ties in the caller's order.
        scores = Float64Array.from(candidates, (c) => deps.trending.score(c));
      }

      const order = candidates.map((_, i) => i).sort((a, b) => scores[b]! - scores[a]! || a - b);
      const limit = req.limit || (req.candidates.length ? candidates.length : limits.defaultTrendingLimit);
      const top = order.slice(0, limit);
      const modelVersion = model?.version.version ?? FALLBACK_VERSION;
      const latencyMs = performance.now() - started;
      requests.inc({ model: deps.modelName, version: modelVersion, variant: variant?.name ?? "" });

      // Log every scored candidate with the exact vector served, then the exposure.
      const positions = new Map(top.map((idx, p) => [idx, p + 1]));
      const now = Date.now();
      const prediction = create(PredictionLogSchema, {
        requestId,
        time: timestampFromMs(now),
        userId: req.userId,
        modelName: deps.modelName,
        modelVersion,
        experiment: experiment?.name ?? "",
        variant: variant?.name ?? "",
        currentPage: req.currentPage,
        deviceType: req.deviceType,
        featureNames: specs.map((s) => s.name),
        items: candidates.map((item, i) => ({
          itemId: item,
          score: scores[i]!,
          position: positions.get(i) ?? 0,
          features: Array.from(features.matrix.subarray(i * specs.length, (i + 1) * specs.length)),
        })),
        missingFeatures: features.missing,
        latencyMs,
      });
      deps.logs.publish(names.logsSubject("prediction"), `prediction:${requestId}`, toBinary(PredictionLogSchema, prediction));
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

      return {
        requestId,
        recommendations: top.map((i) => ({ itemId: candidates[i]!, score: scores[i]! })),
        modelName: deps.modelName,
        modelVersion,
        variant: variant?.name ?? "",
        latencyMs,
      };
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
  req.candidates.forEach((c, i) => {
    if (!c) throw invalidArgument(`candidates[${i}]`, "is empty");
    if (c.length > limits.maxIdLength) throw invalidArgument(`candidates[${i}]`, `is longer than ${limits.maxIdLength} characters`);
    if (seen.has(c)) throw invalidArgument(`candidates[${i}]`, `"${c}" is listed twice`);
    seen.add(c);
  });
  if (req.limit > limits.maxCandidates) throw invalidArgument("limit", `must be at most ${limits.maxCandidates}`);
  if (req.requestId.length > limits.maxIdLength) throw invalidArgument("request_id", `is longer than ${limits.maxIdLength} characters`);
  if (req.currentPage.length > limits.maxIdLength) throw invalidArgument("current_page", `is longer than ${limits.maxIdLength} characters`);
  if (req.deviceType.length > 64) throw invalidArgument("device_type", "is longer than 64 characters");
}

/** Resolves with the fallback when the work takes longer than `ms` (the work is left to finish). */
function withTimeout<T>(work: Promise<T>, ms: number, fallback: () => T): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    work.finally(() => clearTimeout(timer)),
    new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback()), ms))),
  ]);
}
