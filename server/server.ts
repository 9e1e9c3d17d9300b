// The gRPC server: hosts the Open Inference Protocol, the recommendation API, health and
// reflection; follows the registry for hot swaps; serves /healthz and /metrics over HTTP; drains
// cleanly on stop (health NOT_SERVING, in-flight calls finish, the log buffer is flushed).
import { readFileSync } from "node:fs";
import { setMaxListeners } from "node:events";
import { join } from "node:path";
import { grpc, serviceDefinition, unaryImplementation, ServiceError, Code, type CallHooks } from "../lib/grpc.js";
import type { Part, Runtime } from "../lib/runtime.js";
import { sendText } from "../lib/http.js";
import { OTHER_LABEL, childCache } from "../lib/metrics.js";
import { waitReady } from "../lib/redis.js";
import { GRPCInferenceService } from "../gen/inference/grpc_predict_v2_pb.js";
import { RecommendationService } from "../gen/streamserve/v1/recommendation_pb.js";
import { file_streamserve_v1_logs } from "../gen/streamserve/v1/logs_pb.js";
import { file_streamserve_v1_events } from "../gen/streamserve/v1/events_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { ModelManager, type ModelManagerOptions } from "./model-manager.js";
import type { ScorerChoice } from "./onnx-model.js";
import { TrendingCache } from "./trending.js";
import { FeatureConnection, featureSource } from "./feature-connection.js";
import { LogPublisher } from "./log-publisher.js";
import { HealthService } from "./health.js";
import { addReflection } from "./reflection.js";
import { inferenceHandlers } from "./inference-service.js";
import { mountHttpInference } from "./http-inference.js";
import { recommendationHandlers, type LogFeatures } from "./recommendation-service.js";
import { DEFAULT_LIMITS, type ServingLimits } from "./limits.js";
import { precheckModelInfer } from "./infer-precheck.js";
import { CallGuard, grpcServerOptions, listenGrpc } from "./transport-limits.js";
import { httpGuard, serverCredentials, tokenChecker, type SecurityOptions } from "./security.js";

export interface ServerOptions {
  limits?: Partial<ServingLimits>;
  security?: SecurityOptions;
  /** How long stop() lets in-flight calls finish before cancelling them. @default 10000 ms */
  drainTimeoutMs?: number;
  /** Mount /healthz, /metrics and the REST inference API (/v2) on the runtime's HTTP server. @default true */
  http?: boolean;
  /** When versions loaded on demand are unloaded (see ModelManagerOptions). */
  models?: Pick<ModelManagerOptions, "onDemandIdleMs" | "onDemandBudgetBytes">;
  /**
   * Bind the gRPC port only once the registry's models are loaded, so that no connection reaches a
   * server still warming up (`serve --workers`: the others keep serving meanwhile). @default false
   */
  listenWhenReady?: boolean;
  /** Where logs JetStream cannot take wait on disk; one publisher per directory. @default <data-dir>/spill/<namespace> */
  spillDir?: string;
  /** Features each prediction log carries: every pipeline feature, or only the model's (see LogFeatures). @default "all" */
  logFeatures?: LogFeatures;
  /** Which scorer Recommend uses (see ScorerChoice). @default "auto" */
  scorer?: ScorerChoice;
}

export interface RunningServer extends Part {
  /** The bound gRPC port (useful with --grpc-port 0). */
  port: number;
  models: ModelManager;
  logs: LogPublisher;
  health: HealthService;
}

const SERVICES = [GRPCInferenceService.typeName, RecommendationService.typeName];

export function serverVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
    return pkg.version;
  } catch {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
    return pkg.version;
  }
}

/** The log publisher's spill directory for a namespace (one per serving process). */
export function defaultSpillDir(config: Pick<Runtime["config"], "dataDir" | "namespace">): string {
  return join(config.dataDir, "spill", config.namespace || "default");
}

export async function startServer(runtime: Runtime, options: ServerOptions = {}): Promise<RunningServer> {
  const { config, names, log: rootLog, metrics } = runtime;
  const log = rootLog.child({ part: "server" });
  const limits: ServingLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const shutdown = new AbortController();
  // Every service and every Watch stream listens on this signal; the default cap of 10 listeners is for leak hunting.
  setMaxListeners(0, shutdown.signal);
  let draining = false;

  const models = new ModelManager(log, metrics, {
    ...options.models,
    session: { scorer: options.scorer ?? "auto" },
    servingAlias: config.servingAlias,
    onLoadFailure: (model, version, error) => {
      // Every failed load is an operator-visible event and an alert, not just a log line.
      void models.registryClient?.recordEvent({ model_name: model, kind: "load_failed", to_version: version, reason: error.message }).catch(() => undefined);
      void runtime
        .nats()
        .then((nc) =>
          nc.publish(
            names.alertsSubject("model"),
            JSON.stringify({ kind: "model_load_failed", model, version, reason: error.message, time: new Date().toISOString() }),
          ),
        )
        .catch(() => undefined);
    },
  });
  const modelsRun = models.run(() => runtime.registry(), shutdown.signal);

  // The serving client fails fast while disconnected; give it a moment to connect first.
  if (!(await waitReady(runtime.servingRedis()))) log.warn("Redis is not reachable yet: serving with default features until it is");
  const trending = new TrendingCache(runtime.servingRedis(), names.trendingKey, log);
  await trending.start();
  const features = featureSource(config.redisUrl, runtime.servingRedis(), log);

  const logs = new LogPublisher({
    connect: () => runtime.nats(),
    spillDir: options.spillDir ?? defaultSpillDir(config),
    log,
    metrics,
  });

  // ---- admission and accounting for every unary call ----
  const handled = metrics.counter("grpc_server_handled_total", "gRPC calls completed, by method and status code", { labelNames: ["method", "code"] });
  const latency = metrics.histogram("grpc_server_handling_seconds", "gRPC call latency, by method", { labelNames: ["method"] });
  const shed = metrics.counter("grpc_server_shed_total", "Calls refused with RESOURCE_EXHAUSTED because too many were running", { labelNames: ["method"] });
  let inflight = 0;
  metrics.gauge("grpc_server_inflight", "gRPC calls running now", { collect: (g) => g.set(inflight) });
  // A call holds its slot and its bytes until its response has left the server (see transport-limits.ts).
  // Children bound once per method (the server's own: grpc-js answers unknown ones) and code.
  const handledBy = childCache((method, code) => handled.labels({ method, code }));
  const latencyBy = childCache((method) => latency.labels({ method }));
  const shedBy = childCache((method) => shed.labels({ method }));
  const checkToken = tokenChecker(options.security);
  const guard = new CallGuard(limits, checkToken);
  metrics.gauge("grpc_server_held_bytes", "Request and response bytes of calls not yet finished, unread answers included", {
    collect: (g) => g.set(guard.heldBytes),
  });
  metrics.gauge("grpc_server_unread_cancelled", "Answers cancelled since start because their clients did not read them and others needed the room", {
    collect: (g) => g.set(guard.reclaimed),
  });
  const hooks: CallHooks = {
    begin(path, metadata) {
      checkToken(path, metadata);
      const room = guard.reclaim(inflight, limits);
      if (room.calls >= limits.maxInflight || room.bytes > limits.maxHeldBytes) {
        shedBy(path).inc();
        const why =
          room.calls >= limits.maxInflight
            ? `${inflight} calls in flight (limit ${limits.maxInflight})`
            : `calls in flight hold ${room.bytes} bytes (limit ${limits.maxHeldBytes})`;
        throw new ServiceError(Code.RESOURCE_EXHAUSTED, `server busy: ${why}; retry with backoff`);
      }
      inflight++;
      const started = performance.now();
      return (code) => {
        handledBy(path, Code[code] ?? OTHER_LABEL).inc();
        latencyBy(path).observe((performance.now() - started) / 1000);
        guard.whenClosed(metadata, () => inflight--);
      };
    },
  };

  const server = new grpc.Server(grpcServerOptions(limits, guard));
  const inference = inferenceHandlers({
    models,
    limits,
    metrics,
    server: { name: "streamserve", version: serverVersion() },
    isReady: () => models.ready && !draining,
  });
  server.addService(
    // Shapes and counts are checked on the bytes, before a refused batch costs a decode.
    serviceDefinition(GRPCInferenceService, { modelInfer: (bytes) => precheckModelInfer(bytes, limits) }),
    unaryImplementation(GRPCInferenceService, inference, hooks, shutdown.signal),
  );
  server.addService(
    serviceDefinition(RecommendationService),
    unaryImplementation(
      RecommendationService,
      recommendationHandlers({
        modelName: config.modelName,
        logFeatures: options.logFeatures,
        names,
        redis: features,
        models,
        trending,
        logs,
        limits,
        log,
        metrics,
      }),
      hooks,
      shutdown.signal,
    ),
  );
  const health = new HealthService(Object.fromEntries(["", ...SERVICES].map((s) => [s, HealthCheckResponse_ServingStatus.NOT_SERVING])), {
    maxWatchers: limits.maxWatchStreams,
  });
  server.addService(serviceDefinition(Health), health.implementation(shutdown.signal));
  // Reflection also describes the log and event messages, so `buf curl`/grpcurl users can decode them.
  addReflection(server, {
    services: [GRPCInferenceService, RecommendationService, Health],
    files: [file_streamserve_v1_logs, file_streamserve_v1_events],
    shutdown: shutdown.signal,
  });

  const untilReady = async () => {
    while (!models.ready && !shutdown.signal.aborted) await new Promise((r) => setTimeout(r, 50));
  };
  if (options.listenWhenReady) await untilReady();
  const listener = await listenGrpc(server, config.host, config.grpcPort, serverCredentials(options.security), limits);
  const port = listener.port;
  metrics.gauge("grpc_server_connections", "TCP connections to the gRPC port", { collect: (g) => g.set(listener.connections()) });
  log.info({ port, model: config.modelName, alias: config.servingAlias }, "gRPC listening");

  // SERVING once the registry's current state is loaded, or known unreachable (fallback serving).
  void (async () => {
    await untilReady();
    if (!draining) health.setAll(HealthCheckResponse_ServingStatus.SERVING);
    log.info({ served: models.servedVersion(config.modelName) ?? "fallback" }, "ready");
  })();

  if (options.http !== false) {
    // With a token, every HTTP endpoint of the process (the dashboard's too) needs it but /healthz.
    const http = httpGuard(options.security);
    if (http) runtime.http.setGuard(http);
    runtime.http.route("GET", "/healthz", (_req, res) => {
      const ok = models.ready && !draining;
      sendText(
        res,
        ok ? 200 : 503,
        JSON.stringify({ status: ok ? "SERVING" : "NOT_SERVING", model: config.modelName, version: models.servedVersion(config.modelName) ?? "fallback" }),
        "application/json",
      );
    });
    runtime.http.route("GET", "/metrics", async (_req, res) => sendText(res, 200, await metrics.render(), metrics.contentType));
    // The same inference service as REST (KServe v2 / Triton HTTP), behind the same admission.
    mountHttpInference(runtime.http, { handlers: inference, hooks, limits, shutdown: shutdown.signal });
  }

  return {
    name: "server",
    port,
    models,
    logs,
    health,
    async stop() {
      draining = true;
      health.setAll(HealthCheckResponse_ServingStatus.NOT_SERVING);
      log.info("draining: health NOT_SERVING, waiting for in-flight calls");
      listener.close();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          log.warn("drain timeout: cancelling remaining calls");
          shutdown.abort();
          server.forceShutdown();
          listener.destroy();
          resolve();
        }, options.drainTimeoutMs ?? 10_000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      shutdown.abort();
      trending.stop();
      if (features instanceof FeatureConnection) features.close();
      await logs.close();
      await modelsRun.catch(() => undefined);
      await models.close();
      log.info("server stopped");
    },
  };
}
