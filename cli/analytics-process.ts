// `streamserve up`'s analytics process: the embedded ClickHouse with everything that reads or
// writes it (the sink, the training schedule, the monitor and the dashboard's queries), forked
// and supervised by `up` (cli/commands/up.ts) so that none of it runs on the serving event loop.
// It runs at a lower CPU priority than serving, with the engine's thread pools bounded
// (lib/clickhouse.ts), and its HTTP server listens on a private loopback port that `up`'s own
// HTTP server forwards the dashboard routes to.
import { createRuntime } from "../lib/runtime.js";
import { createLogger } from "../lib/logger.js";
import { childOnlyGuard, sendText } from "../lib/http.js";
import { lowerOwnPriority, serveSupervisor } from "../lib/supervisor.js";
import type { Config } from "../lib/config.js";
import type { Part } from "../lib/runtime.js";
import { startSink } from "../sink/sink.js";
import { startTrainingSchedule, type ScheduleOptions } from "../trainer/schedule.js";
import { createMonitor } from "../monitor/monitor.js";
import type { MonitorOverrides } from "../monitor/options.js";
import { readOnlineFigures } from "../monitor/online.js";
import { readAbReport } from "../monitor/reports.js";
import { compareShadow, type ShadowQuery } from "../monitor/shadow.js";

export interface AnalyticsOptions {
  /** Time between training cycles. @default 6 h */
  trainEveryMs?: number;
  /** Time between monitoring cycles. @default 1 h */
  monitorEveryMs?: number;
  /** Further trainer settings (plain data: they cross a process boundary). */
  trainer?: Omit<ScheduleOptions, "onReport" | "onProgress" | "signal">;
  /** Further monitor settings. */
  monitor?: MonitorOverrides;
}

/** The start message `up` sends. */
export interface AnalyticsStart {
  config: Config;
  options: AnalyticsOptions;
}

/** What the process reports once it is ready. */
export interface AnalyticsInfo {
  pid: number;
  /** Its private HTTP port on 127.0.0.1 (dashboard, /api/*, its /metrics). */
  httpPort: number;
  /** Its nice value. */
  nice: number;
}

/** Nice value of the analytics process: serving (0) always runs first when both want a core. */
export const ANALYTICS_NICE = 10;
/** Scheduling class of the analytics process: it runs on the CPU time serving and features leave. */
export const ANALYTICS_POLICY = "idle";

const log = createLogger(process.env.LOG_LEVEL).child({ process: "analytics" });

serveSupervisor<AnalyticsStart, AnalyticsInfo>(
  async ({ config, options }, parent) => {
    const runtime = createRuntime({ ...config, httpPort: 0, host: "127.0.0.1" }, log);
    // The dashboard's data is read through up's port (and its token), not around it.
    runtime.http.setGuard(childOnlyGuard(parent.secret));
    const parts: Part[] = [];
    try {
      // Open (and migrate) ClickHouse first: ready means the dashboard can answer.
      await runtime.clickhouse();
      // The engine raises its memory worker thread to -20 when it may (as root); it joins the rest.
      const nice = lowerOwnPriority(ANALYTICS_NICE, ANALYTICS_POLICY);
      parts.push(await startSink(runtime));
      const trainer = startTrainingSchedule(runtime, { ...options.trainer, intervalMs: options.trainEveryMs });
      parts.push(trainer);
      const monitor = createMonitor(runtime, { ...options.monitor, ...(options.monitorEveryMs && { intervalMs: options.monitorEveryMs }) });
      monitor.start();
      parts.push(monitor);
      // `up` merges these into its own /metrics.
      runtime.http.route("GET", "/metrics", async (_req, res) => sendText(res, 200, await runtime.metrics.render(), runtime.metrics.contentType));
      const httpPort = await runtime.listenHttp();
      return {
        info: { pid: process.pid, httpPort, nice },
        methods: {
          trainNow: () => trainer.runNow(),
          monitorCycle: (now?: Date) => monitor.runCycle(now),
          // What `report ab`, `report shadow` and the monitor's online figures read, for `demo`.
          abReport: async (experiment?: string) => readAbReport(await runtime.clickhouse(), experiment),
          shadowReport: async (query: ShadowQuery) => compareShadow(await runtime.clickhouse(), query),
          onlineFigures: async (window: { from: Date; to: Date }) => readOnlineFigures(await runtime.clickhouse(), config.modelName, window),
        },
        async stop() {
          for (const part of parts.reverse()) await part.stop().catch((err: Error) => log.error({ part: part.name, err: err.message }, "stop failed"));
          await runtime.close();
        },
      };
    } catch (err) {
      for (const part of parts.reverse()) await part.stop().catch(() => undefined);
      await runtime.close().catch(() => undefined);
      throw err;
    }
  },
  { nice: ANALYTICS_NICE, policy: ANALYTICS_POLICY, log },
);
