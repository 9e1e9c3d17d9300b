// `streamserve up`'s features process, and each of `streamserve features --workers N`'s: the features worker (JetStream EVENTS → windows → Redis,
// closed windows → LOGS), forked and supervised by `up` (cli/commands/up.ts) so that parsing and
// folding events never take the serving event loop's time. It runs a little below serving
// (nice 5: requests first when both want a core) and well above analytics (nice 10): fresh
// features are part of serving. Its HTTP server on a private loopback port gives `up` its metrics.
import { createRuntime } from "../lib/runtime.js";
import { createLogger } from "../lib/logger.js";
import { sendText } from "../lib/http.js";
import { serveSupervisor } from "../lib/supervisor.js";
import type { Config } from "../lib/config.js";
import { startFeaturesWorker, type FeaturesWorkerOptions } from "../features/worker.js";
import { FEATURE_VIEWS } from "../features/definitions.js";
// Measured against nice 0 with `up` + the simulator at 1000 events/s, and with a draining worker against Redis's other clients (README).
import { FEATURES_NICE, FEATURES_POLICY } from "./commands/features.js";

/** The windows of every view, when not the definitions' (the demo's compressed schedule). */
export interface FeatureWindows {
  /** Tumbling window length. @default each view's */
  windowMs?: number;
  /** Watermark. @default each view's */
  watermarkMs?: number;
}

export interface FeaturesStart {
  config: Config;
  windows?: FeatureWindows;
  /** The worker's options from `features` flags (data only: the views come from the definitions). */
  options?: Omit<FeaturesWorkerOptions, "views" | "trending">;
}

export interface FeaturesInfo {
  pid: number;
  httpPort: number;
  /** Partitioned: the partitions it held when it became ready. */
  partitions?: number[];
}

const log = createLogger(process.env.LOG_LEVEL).child({ process: "features" });

serveSupervisor<FeaturesStart, FeaturesInfo>(
  async ({ config, windows = {}, options = {} }) => {
    const runtime = createRuntime({ ...config, httpPort: 0, host: "127.0.0.1" }, log);
    try {
      const views = FEATURE_VIEWS.map((v) => ({ ...v, windowMs: windows.windowMs ?? v.windowMs, watermarkMs: windows.watermarkMs ?? v.watermarkMs }));
      const worker = await startFeaturesWorker(runtime, { ...options, views });
      runtime.http.route("GET", "/metrics", async (_req, res) => sendText(res, 200, await runtime.metrics.render(), runtime.metrics.contentType));
      const httpPort = await runtime.listenHttp();
      return {
        info: { pid: process.pid, httpPort, partitions: worker.partitions?.() },
        // `features --workers N` sums every child's series into its one /metrics (prom-client's aggregation, as `serve --workers`).
        methods: { metricsJson: () => runtime.metrics.registry.getMetricsAsJSON() },
        async stop() {
          await worker.stop().catch((err: Error) => log.error({ err: err.message }, "stop failed"));
          await runtime.close();
        },
      };
    } catch (err) {
      await runtime.close().catch(() => undefined);
      throw err;
    }
  },
  { nice: FEATURES_NICE, policy: FEATURES_POLICY, log },
);
