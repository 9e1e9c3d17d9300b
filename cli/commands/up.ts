// `streamserve up`: every part in one process (server, features worker, sink, trainer, monitor)
// with the embedded ClickHouse in the data directory. What `npm start` runs.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { durationFlag, type CommandArgs } from "../args.js";
import type { Part, Runtime } from "../../lib/runtime.js";
import { ensureLocalServices, MissingServiceError, type LocalService } from "../../lib/local-services.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startFeaturesWorker, type FeaturesWorkerOptions } from "../../features/worker.js";
import { startSink } from "../../sink/sink.js";
import { startTrainingSchedule, type ScheduleOptions, type TrainingSchedule } from "../../trainer/schedule.js";
import { createMonitor, type Monitor } from "../../monitor/monitor.js";
import type { MonitorOverrides } from "../../monitor/options.js";
import { serverOptionsFromFlags, SERVE_FLAGS } from "./serve.js";

export interface PlatformOptions {
  /** Time between training cycles. @default 6 h */
  trainEveryMs?: number;
  /** Time between monitoring cycles. @default 1 h */
  monitorEveryMs?: number;
  /** Further trainer settings (the demo's compressed schedule). */
  trainer?: ScheduleOptions;
  /** Further monitor settings. */
  monitor?: MonitorOverrides;
  /** Further features worker settings (the demo's compressed windows). */
  features?: FeaturesWorkerOptions;
  /** Start private Redis/NATS when none answers. @default true */
  localServices?: boolean;
}

export interface Platform {
  parts: Part[];
  server: RunningServer;
  trainer: TrainingSchedule;
  monitor: Monitor;
  grpcPort: number;
  httpPort: number;
  stop(): Promise<void>;
}

/** Starts the whole platform on one runtime; used by `up` and `demo`. */
export async function startPlatform(runtime: Runtime, args: CommandArgs, options: PlatformOptions = {}): Promise<Platform> {
  const { log, config } = runtime;
  let local: LocalService[] = [];
  if (options.localServices !== false) local = await ensureLocalServices(config, config.dataDir, log);
  const parts: Part[] = [];
  try {
    // Downstream first, so nothing the server logs waits for a consumer that is not there yet.
    // Small batches: an embedded ClickHouse insert blocks the event loop (about 6 ms per 500
    // rows), and in this process the event loop also serves gRPC.
    parts.push(await startSink(runtime, { maxBatchMessages: 500 }));
    parts.push(await startFeaturesWorker(runtime, options.features));
    const server = await startServer(runtime, serverOptionsFromFlags(args));
    parts.push(server);
    const trainer = startTrainingSchedule(runtime, { ...options.trainer, intervalMs: options.trainEveryMs });
    parts.push(trainer);
    const monitor = createMonitor(runtime, { ...options.monitor, ...(options.monitorEveryMs && { intervalMs: options.monitorEveryMs }) });
    monitor.start();
    parts.push(monitor);
    const httpPort = await runtime.listenHttp();
    return {
      parts,
      server,
      trainer,
      monitor,
      grpcPort: server.port,
      httpPort,
      async stop() {
        // The server drains and flushes its logs before the sink and the rest stop.
        const order = [...parts.filter((p) => p.name === "server"), ...parts.filter((p) => p.name !== "server").reverse()];
        for (const part of order) {
          await part.stop().catch((err: Error) => log.error({ part: part.name, err: err.message }, "stop failed"));
        }
        await runtime.close();
        await Promise.all(local.map((s) => s.stop()));
      },
    };
  } catch (err) {
    for (const part of parts.reverse()) await part.stop().catch(() => undefined);
    await Promise.all(local.map((s) => s.stop()));
    throw err;
  }
}

export function banner(grpcPort: number, httpPort: number, modelName: string): string {
  return `
streamserve is up
  gRPC       127.0.0.1:${grpcPort}   (inference.GRPCInferenceService, streamserve.v1.RecommendationService, health, reflection)
  dashboard  http://127.0.0.1:${httpPort}/      metrics http://127.0.0.1:${httpPort}/metrics
  try        buf curl --protocol grpc --http2-prior-knowledge --data '{"user_id":"u1"}' http://127.0.0.1:${grpcPort}/streamserve.v1.RecommendationService/Recommend
             grpcurl -plaintext -d '{"user_id":"u1"}' 127.0.0.1:${grpcPort} streamserve.v1.RecommendationService/Recommend
  model      ${modelName} (popularity fallback until the trainer promotes a version)
Ctrl-C stops everything.
`;
}

const command: Command = {
  name: "up",
  summary: "run every part in one process: server, features, sink, trainer, monitor",
  booleans: ["no-local-services", "metrics-open"],
  usage: `Usage: streamserve up [flags]

Runs the whole platform in one process with the embedded ClickHouse in --data-dir. When Redis or
NATS does not answer at its URL on this machine and redis-server / nats-server is installed, a
private instance is started under the data directory.

  --train-every DURATION     time between training cycles (default 6h)
  --monitor-every DURATION   time between monitoring cycles (default 1h)
  --no-local-services        never start private Redis/NATS instances
${SERVE_FLAGS}`,
  async run(args, runtime) {
    let platform;
    try {
      platform = await startPlatform(runtime, args, {
        trainEveryMs: durationFlag(args, "train-every"),
        monitorEveryMs: durationFlag(args, "monitor-every"),
        localServices: !args.flags["no-local-services"],
      });
    } catch (err) {
      if (err instanceof MissingServiceError) {
        console.error(`streamserve up: ${err.message}`);
        return 1;
      }
      throw err;
    }
    console.log(banner(platform.grpcPort, platform.httpPort, runtime.config.modelName));
    const signal = await untilSignal();
    runtime.log.info({ signal }, "stopping every part");
    await platform.stop();
    return 0;
  },
};

export default command;
