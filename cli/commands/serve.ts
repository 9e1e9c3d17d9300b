// `streamserve serve`: the gRPC inference server on its own.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { numberFlag, stringFlag, UsageError, type CommandArgs } from "../args.js";
import { startServer, type ServerOptions } from "../../server/server.js";
import type { SecurityOptions } from "../../server/security.js";
import { isServingWorker, runServingWorker, superviseWorkers } from "../../server/workers.js";
import { LOG_FEATURES, type LogFeatures } from "../../server/recommendation-service.js";
import { SCORER_CHOICES, type ScorerChoice } from "../../server/onnx-model.js";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";

/** The token flags of every command with a dashboard (serve, up, monitor). */
export const TOKEN_FLAGS = `  --auth-token-file FILE           require "authorization: Bearer <token>" on every RPC but Health/Check
                                   and every HTTP endpoint but /healthz (the dashboard asks for it)
                                   [STREAMSERVE_AUTH_TOKEN holds the token itself]
  --metrics-token-file FILE        with a token: /metrics takes this one instead (a scraper's credential)
  --metrics-open                   with a token: /metrics needs none`;

export const SERVE_FLAGS = `  --tls-cert FILE --tls-key FILE   serve gRPC over TLS
  --tls-client-ca FILE             also require client certificates signed by this CA (mTLS)
${TOKEN_FLAGS}
  --max-connections N              TCP connections to the gRPC port (default 1024)
  --max-inflight N                 calls running at once before RESOURCE_EXHAUSTED (default 1024)
  --max-candidates N               candidates per Recommend (default 1000)
  --log-features all|model         features each prediction log carries: every pipeline feature (all,
                                   the default) or only the served model's inputs (model)
  --scorer auto|onnxruntime|native how Recommend scores: auto (the default) evaluates tree ensembles in
                                   TypeScript, checked against onnxruntime at load, and anything else
                                   with onnxruntime; native refuses to load other models`;

/** --auth-token-file (or STREAMSERVE_AUTH_TOKEN), --metrics-token-file and --metrics-open. */
export function tokensFromFlags(args: CommandArgs): Pick<SecurityOptions, "authToken" | "metrics"> {
  const tokenFile = stringFlag(args, "auth-token-file");
  const authToken = tokenFile ? readFileSync(tokenFile, "utf8").trim() : process.env.STREAMSERVE_AUTH_TOKEN || undefined;
  const metricsTokenFile = stringFlag(args, "metrics-token-file");
  const metrics = metricsTokenFile ? { token: readFileSync(metricsTokenFile, "utf8").trim() } : args.flags["metrics-open"] ? ("open" as const) : undefined;
  return { authToken, metrics };
}

export function serverOptionsFromFlags(args: CommandArgs): ServerOptions {
  const logFeatures = stringFlag(args, "log-features");
  if (logFeatures !== undefined && !LOG_FEATURES.includes(logFeatures as LogFeatures)) {
    throw new UsageError(`--log-features must be one of ${LOG_FEATURES.join(", ")}, got "${logFeatures}"`);
  }
  const scorer = stringFlag(args, "scorer");
  if (scorer !== undefined && !SCORER_CHOICES.includes(scorer as ScorerChoice)) {
    throw new UsageError(`--scorer must be one of ${SCORER_CHOICES.join(", ")}, got "${scorer}"`);
  }
  return {
    ...(logFeatures !== undefined && { logFeatures: logFeatures as LogFeatures }),
    ...(scorer !== undefined && { scorer: scorer as ScorerChoice }),
    security: {
      tlsCert: stringFlag(args, "tls-cert"),
      tlsKey: stringFlag(args, "tls-key"),
      tlsClientCa: stringFlag(args, "tls-client-ca"),
      ...tokensFromFlags(args),
    },
    limits: {
      ...(numberFlag(args, "max-inflight") !== undefined && { maxInflight: numberFlag(args, "max-inflight") }),
      ...(numberFlag(args, "max-candidates") !== undefined && { maxCandidates: numberFlag(args, "max-candidates") }),
      ...(numberFlag(args, "max-connections") !== undefined && { maxConnections: numberFlag(args, "max-connections") }),
    },
  };
}

const WORKERS_FLAG = `  --workers N|auto                 serving event loops (processes) on the one gRPC port (default 1;
                                   auto: one per CPU). 1 by default because every worker loads its
                                   own copy of each model and its own Redis/NATS connections, the CPU
                                   count ignores container quotas, and where Redis and NATS share the
                                   host they need cores too. Workers hot-swap on their own; /metrics
                                   and /healthz answer for all; a worker that dies is restarted`;

/** --workers: a count, or "auto" for one per CPU. @default 1 */
export function workersFromFlags(args: CommandArgs): number {
  const v = stringFlag(args, "workers");
  if (v === undefined) return 1;
  if (v === "auto") return availableParallelism();
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--workers must be a whole number of at least 1, or auto; got "${v}"`);
  return n;
}

const command: Command = {
  name: "serve",
  summary: "run the gRPC inference server (Open Inference Protocol + Recommend)",
  usage: `Usage: streamserve serve [flags]

Serves inference.GRPCInferenceService and streamserve.v1.RecommendationService on --grpc-port,
with health and reflection, and /healthz and /metrics on --http-port. Models come from the
registry (NATS JetStream) and are hot-swapped when an alias moves.

${WORKERS_FLAG}
${SERVE_FLAGS}`,
  booleans: ["metrics-open"],
  async run(args, runtime) {
    const options = serverOptionsFromFlags(args);
    if (isServingWorker()) return runServingWorker(runtime, options);
    const workers = workersFromFlags(args);
    if (workers > 1) return superviseWorkers(runtime, { workers, server: options, stop: untilSignal() });
    const server = await startServer(runtime, options);
    await runtime.listenHttp();
    const signal = await untilSignal();
    runtime.log.info({ signal }, "stopping");
    await server.stop();
    return 0;
  },
};

export default command;
