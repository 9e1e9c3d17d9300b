// `streamserve up`: the whole platform from one command, in three processes. This one serves
// gRPC and the HTTP server users see (dashboard, /metrics, /healthz); two supervised children do
// the rest, so that nothing but requests runs on the serving event loop:
//   features   (cli/features-process.ts) the features worker: EVENTS → windows → Redis;
//   analytics  (cli/analytics-process.ts) the embedded ClickHouse and everything that uses it:
//              sink, trainer, monitor and the dashboard's queries, at a lower CPU priority.
// A child that dies is restarted with backoff while serving goes on. What `npm start` runs.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { durationFlag, type CommandArgs } from "../args.js";
import type { Part, Runtime } from "../../lib/runtime.js";
import { ensureLocalServices, MissingServiceError, type LocalService } from "../../lib/local-services.js";
import { CHILD_SECRET_HEADER, proxyTo, sendText } from "../../lib/http.js";
import { superviseChild, type SupervisedChild } from "../../lib/supervisor.js";
import { startServer, type RunningServer } from "../../server/server.js";
import type { CycleReport as TrainingReport } from "../../trainer/cycle.js";
import type { SkippedRun } from "../../trainer/schedule.js";
import type { CycleReport as MonitoringReport } from "../../monitor/monitor.js";
import type { AbReportRow } from "../../monitor/reports.js";
import type { ShadowComparison, ShadowQuery } from "../../monitor/shadow.js";
import type { OnlineFigures } from "../../monitor/online.js";
import type { AnalyticsInfo, AnalyticsOptions, AnalyticsStart } from "../analytics-process.js";
import type { FeaturesInfo, FeaturesStart, FeatureWindows } from "../features-process.js";
import { serverOptionsFromFlags, SERVE_FLAGS } from "./serve.js";
import { rolloutFlag, rolloutStagesFlag } from "./train.js";

export interface PlatformOptions extends AnalyticsOptions {
  /** The features' windows when not the definitions' (the demo's compressed schedule). */
  featureWindows?: FeatureWindows;
  /** Start private Redis/NATS when none answers. @default true */
  localServices?: boolean;
  /** First restart delay of a child process. @default 1 s */
  restartDelayMs?: number;
}

export interface Platform {
  /** The parts in this (the serving) process. */
  parts: Part[];
  server: RunningServer;
  /** The analytics process's training schedule, called over IPC. */
  trainer: { runNow(): Promise<TrainingReport | SkippedRun> };
  /** The analytics process's monitor, called over IPC. */
  monitor: { runCycle(now?: Date): Promise<MonitoringReport> };
  /** What `report ab` and `report shadow` print, and the online figures per version, read in the analytics process. */
  abReport(experiment?: string): Promise<AbReportRow[]>;
  shadowReport(query: ShadowQuery): Promise<ShadowComparison[]>;
  online(window: { from: Date; to: Date }): Promise<OnlineFigures[]>;
  /** The analytics process itself (pid, restarts, state). */
  analytics: SupervisedChild<AnalyticsInfo>;
  /** The features process. */
  features: SupervisedChild<FeaturesInfo>;
  grpcPort: number;
  httpPort: number;
  stop(): Promise<void>;
}

/** A child process's entry (cli/<name>-process): .js when built, .ts under tsx. */
function childModule(name: string): string {
  const js = fileURLToPath(new URL(`../${name}-process.js`, import.meta.url));
  return existsSync(js) ? js : fileURLToPath(new URL(`../${name}-process.ts`, import.meta.url));
}

/** Two Prometheus expositions as one; a family the first already has is not repeated. */
export function mergeExpositions(own: string, other: string): string {
  const known = new Set([...own.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]));
  const families = other.split(/^(?=# HELP )/m).filter((f) => f.trim() && !known.has(/^# TYPE (\S+)/m.exec(f)?.[1] ?? ""));
  return own + families.join("");
}

/** Starts the whole platform: serving here, features and analytics in supervised children. Used by `up` and `demo`. */
export async function startPlatform(runtime: Runtime, args: CommandArgs, options: PlatformOptions = {}): Promise<Platform> {
  const { log, config } = runtime;
  let local: LocalService[] = [];
  if (options.localServices !== false) local = await ensureLocalServices(config, config.dataDir, log);
  // HTTP first: a port in use fails here, before anything else has started. Routes are mounted
  // below, as the parts come.
  let httpPort: number;
  try {
    httpPort = await runtime.listenHttp();
  } catch (err) {
    await Promise.all(local.map((s) => s.stop()));
    throw err;
  }
  const parts: Part[] = [];
  const up = runtime.metrics.gauge(
    "streamserve_process_up",
    "1 while the child process is ready, by process (analytics: sink, trainer, monitor, dashboard queries; features: the features worker)",
    {
      labelNames: ["process"],
    },
  );
  const restarts = runtime.metrics.counter("streamserve_process_restarts_total", "Times a child process died and was restarted, by process", {
    labelNames: ["process"],
  });
  const supervise = <Start, Info>(name: string, start: () => Start) => {
    let counted = 0;
    return superviseChild<Start, Info>({
      name,
      module: childModule(name),
      log,
      start,
      restartDelayMs: options.restartDelayMs,
      onState: (state, n) => {
        up.set({ process: name }, state === "ready" ? 1 : 0);
        if (n > counted) restarts.inc({ process: name }, n - counted);
        counted = n;
      },
    });
  };
  // Downstream first, so nothing the server logs waits for a consumer that is not there yet.
  const analytics = supervise<AnalyticsStart, AnalyticsInfo>("analytics", () => ({
    config,
    options: { trainEveryMs: options.trainEveryMs, monitorEveryMs: options.monitorEveryMs, trainer: options.trainer, monitor: options.monitor },
  }));
  const features = supervise<FeaturesStart, FeaturesInfo>("features", () => ({ config, windows: options.featureWindows }));
  const children = [features, analytics];
  try {
    const server = await startServer(runtime, serverOptionsFromFlags(args));
    parts.push(server);
    // After the server's routes: this /metrics (every process's) replaces its own.
    mountChildRoutes(runtime, analytics, children);
    // Serving does not wait on the children; the banner does, so that its dashboard URL answers.
    for (const [name, child] of [
      ["features", features],
      ["analytics", analytics],
    ] as const) {
      if (!(await child.firstStart)) log.warn(`the ${name} process failed to start; it is restarted with backoff while serving goes on`);
    }
    return {
      parts,
      server,
      analytics,
      features,
      trainer: {
        runNow: () =>
          analytics.call<TrainingReport | SkippedRun>("trainNow").catch((err: Error): SkippedRun => ({ skipped: true, reason: `failed: ${err.message}` })),
      },
      monitor: { runCycle: (now?: Date) => analytics.call<MonitoringReport>("monitorCycle", now) },
      abReport: (experiment?: string) => analytics.call<AbReportRow[]>("abReport", experiment),
      shadowReport: (query: ShadowQuery) => analytics.call<ShadowComparison[]>("shadowReport", query),
      online: (window: { from: Date; to: Date }) => analytics.call<OnlineFigures[]>("onlineFigures", window),
      grpcPort: server.port,
      httpPort,
      async stop() {
        // The server drains and flushes its logs first, then the features worker stops, then the
        // analytics process (its sink writes what reached LOGS meanwhile).
        for (const part of [...parts].reverse()) {
          await part.stop().catch((err: Error) => log.error({ part: part.name, err: err.message }, "stop failed"));
        }
        for (const child of children) await child.stop();
        await runtime.close();
        await Promise.all(local.map((s) => s.stop()));
      },
    };
  } catch (err) {
    for (const part of parts.reverse()) await part.stop().catch(() => undefined);
    for (const child of children) await child.stop();
    await Promise.all(local.map((s) => s.stop()));
    throw err;
  }
}

/**
 * The dashboard (/, /dashboard, /api/*) is forwarded to the analytics process, and /metrics shows
 * every process's metrics, so users see the same URLs as when everything ran in one process.
 */
function mountChildRoutes(runtime: Runtime, analytics: SupervisedChild<AnalyticsInfo>, children: SupervisedChild<{ httpPort: number }>[]): void {
  const unavailable = () =>
    analytics.state === "stopping" || analytics.state === "stopped"
      ? "the analytics process is stopping"
      : `the analytics process is ${analytics.state === "starting" ? "starting" : "restarting"} (restarts so far: ${analytics.restarts}); serving is not affected, try again shortly`;
  const proxy = proxyTo({ port: () => analytics.info?.httpPort, unavailable, headers: () => ({ [CHILD_SECRET_HEADER]: analytics.secret }) });
  for (const path of ["/", "/dashboard", "/api/*"]) runtime.http.route("GET", path, proxy);
  runtime.http.route("GET", "/metrics", async (_req, res) => {
    const theirs = await Promise.all(children.map((c) => childMetrics(c.info?.httpPort, c.secret)));
    // A family every process has (prom-client's process_* and nodejs_* metrics) shows this process's.
    sendText(res, 200, theirs.reduce(mergeExpositions, await runtime.metrics.render()), runtime.metrics.contentType);
  });
}

/** A child process's /metrics, or "" when it does not answer within 3 s (a scrape waits up to 10 s by default). */
async function childMetrics(port: number | undefined, secret: string): Promise<string> {
  if (port === undefined) return "";
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { [CHILD_SECRET_HEADER]: secret }, signal: AbortSignal.timeout(3000) });
    return res.ok ? await res.text() : "";
  } catch {
    return "";
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
  summary: "run the whole platform: the server, with the features worker and the analytics (sink, trainer, monitor) in supervised processes",
  booleans: ["no-local-services", "metrics-open"],
  usage: `Usage: streamserve up [flags]

Runs the whole platform from one command. This process serves gRPC and HTTP (dashboard, /metrics,
/healthz); a child process runs the features worker, and another, at a lower CPU priority, holds
the embedded ClickHouse in --data-dir with the sink, the trainer, the monitor and the dashboard's
queries. A child that dies is restarted with backoff while serving goes on. When Redis or
NATS does not answer at its URL on this machine and redis-server / nats-server is installed, a
private instance is started under the data directory.

  --train-every DURATION     time between training cycles (default 6h)
  --monitor-every DURATION   time between monitoring cycles (default 1h)
  --rollout MODE             how the trainer's promotions go out: immediate (default) moves the
                             production alias at once; guarded rolls the new version out in stages,
                             each judged online against production (as \`train --rollout guarded\`)
  --rollout-stages P,Q       guarded: percent of users per stage (default 10,50,100)
  --no-local-services        never start private Redis/NATS instances
${SERVE_FLAGS}`,
  async run(args, runtime) {
    let platform;
    try {
      platform = await startPlatform(runtime, args, {
        trainEveryMs: durationFlag(args, "train-every"),
        monitorEveryMs: durationFlag(args, "monitor-every"),
        localServices: !args.flags["no-local-services"],
        trainer: { ...(rolloutFlag(args) && { rollout: rolloutFlag(args) }), ...(rolloutStagesFlag(args) && { rolloutStages: rolloutStagesFlag(args) }) },
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
