// Shadow traffic: when the running experiment names a shadow version, a deterministic share of
// requests (a hash of experiment and request id, as lib/experiments.ts hashes users) is scored
// again by it after the response is on its way. The shadow's features are looked up for it, its
// scores and own ranking go to LOGS as a `shadow` PredictionLog (table shadow_predictions), and
// nothing of it reaches the caller: a shadow that is slow, missing or failing costs the request
// nothing. A bounded number run at once, so a slow shadow cannot pile up work.
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Names } from "../lib/config.js";
import type { Logger } from "../lib/logger.js";
import type { MetricsRegistry } from "../lib/metrics.js";
import type { Experiment } from "../lib/registry.js";
import { assignmentBucket, BUCKETS } from "../lib/experiments.js";
import { PredictionLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { lookupFeatures, type FeatureSource, type RequestContext } from "./feature-lookup.js";
import type { ModelManager } from "./model-manager.js";

/** What the shadow needs from the answered request. */
export interface ShadowRequest {
  requestId: string;
  timeMs: number;
  context: RequestContext;
  candidates: readonly string[];
  /** How many items the response returned: the shadow's own ranking is cut at the same size. */
  returned: number;
}

export interface ShadowScorerDeps {
  modelName: string;
  names: Names;
  redis: FeatureSource;
  models: ModelManager;
  logs: { publish(subject: string, msgId: string, payload: Uint8Array): void };
  log: Logger;
  metrics: MetricsRegistry;
  /** Shadow scorings in flight at most; more are skipped (and counted). @default 64 */
  maxInFlight?: number;
}

/** Is this request in the experiment's shadow share? */
export function inShadowShare(experiment: Pick<Experiment, "name" | "shadow">, requestId: string): boolean {
  if (!experiment.shadow) return false;
  return assignmentBucket(`${experiment.name}:shadow`, requestId) < (experiment.shadow.percent / 100) * BUCKETS;
}

export function createShadowScorer(deps: ShadowScorerDeps): (experiment: Experiment | undefined, request: ShadowRequest) => void {
  const maxInFlight = deps.maxInFlight ?? 64;
  const outcomes = deps.metrics.counter(
    "streamserve_shadow_requests_total",
    "Requests scored by a shadow version, by outcome (logged, skipped_busy, not_loaded, features_unavailable, failed)",
    { labelNames: ["outcome"] },
  );
  let inFlight = 0;
  let lastWarning = 0;

  async function score(experiment: Experiment, req: ShadowRequest): Promise<void> {
    const model = deps.models.acquire(deps.modelName, experiment.shadow!.target);
    if (!model) return outcomes.inc({ outcome: "not_loaded" });
    try {
      const started = performance.now();
      const features = await lookupFeatures(deps.redis, deps.names, model.features, req.context, req.candidates);
      // Scores on default features would compare the shadow with nothing it would serve: skip, counted.
      if (features.unavailable) return outcomes.inc({ outcome: "features_unavailable" });
      const scores = await model.score(features.matrix, features.rows);
      const order = req.candidates.map((_, i) => i).sort((a, b) => scores[b]! - scores[a]! || a - b);
      const positions = new Map(order.slice(0, req.returned).map((idx, p) => [idx, p + 1]));
      const width = model.features.length;
      const log = create(PredictionLogSchema, {
        requestId: req.requestId,
        time: timestampFromMs(req.timeMs),
        userId: req.context.userId,
        modelName: deps.modelName,
        modelVersion: model.version.version,
        experiment: experiment.name,
        variant: "shadow",
        currentPage: req.context.currentPage,
        deviceType: req.context.deviceType,
        featureNames: model.features.map((s) => s.name),
        modelFeatureCount: width,
        items: req.candidates.map((item, i) => ({
          itemId: item,
          score: scores[i]!,
          position: positions.get(i) ?? 0,
          features: Array.from(features.matrix.subarray(i * width, (i + 1) * width)),
        })),
        missingFeatures: features.missing,
        latencyMs: performance.now() - started,
      });
      deps.logs.publish(deps.names.logsSubject("shadow"), `shadow:${experiment.name}:${req.requestId}`, toBinary(PredictionLogSchema, log));
      outcomes.inc({ outcome: "logged" });
    } finally {
      deps.models.release(model);
    }
  }

  return (experiment, req) => {
    if (!experiment?.shadow || !req.candidates.length || !inShadowShare(experiment, req.requestId)) return;
    if (inFlight >= maxInFlight) return outcomes.inc({ outcome: "skipped_busy" });
    inFlight++;
    // After the current turn: the response is sent before any shadow work starts.
    setImmediate(() => {
      score(experiment, req)
        .catch((err: unknown) => {
          outcomes.inc({ outcome: "failed" });
          if (Date.now() - lastWarning > 10_000) {
            lastWarning = Date.now();
            deps.log.warn({ err, experiment: experiment.name }, "shadow scoring failed (the response was not affected)");
          }
        })
        .finally(() => inFlight--);
    });
  };
}
