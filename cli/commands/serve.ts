// `streamserve serve`: the gRPC inference server on its own.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { numberFlag, stringFlag, type CommandArgs } from "../args.js";
import { startServer, type ServerOptions } from "../../server/server.js";
import { readFileSync } from "node:fs";

export const SERVE_FLAGS = `  --tls-cert FILE --tls-key FILE   serve gRPC over TLS
  --tls-client-ca FILE             also require client certificates signed by this CA (mTLS)
  --auth-token-file FILE           require "authorization: Bearer <token>" on every RPC but Health/Check
                                   and every HTTP endpoint but /healthz (the dashboard asks for it)
                                   [STREAMSERVE_AUTH_TOKEN holds the token itself]
  --metrics-token-file FILE        with a token: /metrics takes this one instead (a scraper's credential)
  --metrics-open                   with a token: /metrics needs none
  --max-connections N              TCP connections to the gRPC port (default 1024)
  --max-inflight N                 calls running at once before RESOURCE_EXHAUSTED (default 1024)
  --max-candidates N               candidates per Recommend (default 1000)`;

export function serverOptionsFromFlags(args: CommandArgs): ServerOptions {
  const tokenFile = stringFlag(args, "auth-token-file");
  const authToken = tokenFile ? readFileSync(tokenFile, "utf8").trim() : process.env.STREAMSERVE_AUTH_TOKEN || undefined;
  const metricsTokenFile = stringFlag(args, "metrics-token-file");
  const metrics = metricsTokenFile ? { token: readFileSync(metricsTokenFile, "utf8").trim() } : args.flags["metrics-open"] ? ("open" as const) : undefined;
  return {
    security: {
      tlsCert: stringFlag(args, "tls-cert"),
      tlsKey: stringFlag(args, "tls-key"),
      tlsClientCa: stringFlag(args, "tls-client-ca"),
      authToken,
      metrics,
    },
    limits: {
      ...(numberFlag(args, "max-inflight") !== undefined && { maxInflight: numberFlag(args, "max-inflight") }),
      ...(numberFlag(args, "max-candidates") !== undefined && { maxCandidates: numberFlag(args, "max-candidates") }),
      ...(numberFlag(args, "max-connections") !== undefined && { maxConnections: numberFlag(args, "max-connections") }),
    },
  };
}

const command: Command = {
  name: "serve",
  summary: "run the gRPC inference server (Open Inference Protocol + Recommend)",
  usage: `Usage: streamserve serve [flags]

Serves inference.GRPCInferenceService and streamserve.v1.RecommendationService on --grpc-port,
with health and reflection, and /healthz and /metrics on --http-port. Models come from the
registry (NATS JetStream) and are hot-swapped when an alias moves.

${SERVE_FLAGS}`,
  booleans: ["metrics-open"],
  async run(args, runtime) {
    const server = await startServer(runtime, serverOptionsFromFlags(args));
    await runtime.listenHttp();
    const signal = await untilSignal();
    runtime.log.info({ signal }, "stopping");
    await server.stop();
    return 0;
  },
};

export default command;
