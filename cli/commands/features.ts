// `streamserve features`: the streaming feature worker on its own, until SIGINT/SIGTERM.
// With --workers N it forks N features processes (cli/features-process.ts), each a whole worker
// with its own leases, supervised and restarted when one dies.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Command } from "../command.js";
import { runPartUntilSignal, untilSignal } from "../command.js";
import { durationFlag, numberFlag, UsageError, type CommandArgs } from "../args.js";
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from "prom-client";
import { sendJson, sendText } from "../../lib/http.js";
import { lowerOwnPriority, superviseChild, type SchedulingPolicy } from "../../lib/supervisor.js";
import { startFeaturesWorker, type FeaturesWorkerOptions } from "../../features/worker.js";
import { MAX_PARTITIONS } from "../../features/partitions.js";
import type { FeaturesInfo, FeaturesStart } from "../features-process.js";

/**
 * Nice value of a features worker, in \`up\` and alone: below Redis, NATS and serving, so that a
 * draining worker does not take the core a Redis command or a request waits for (README).
 */
export const FEATURES_NICE = 5;
/** Scheduling class of a features worker: it takes its share but never preempts a waking Redis or request. */
export const FEATURES_POLICY: SchedulingPolicy = "batch";

export const FEATURES_FLAGS = `  --batch-size N        most events taken and acked as one batch (default 2000)
  --in-flight N         batches taken at once: one committing in Redis, one computed, the rest waiting (default 3)
  --max-transaction-ms N  Redis time one feature transaction may take; batches are committed in as many
                        transactions as keep each under it (default 2)
  --ack-wait DUR        JetStream ack deadline: how soon a crashed worker's events are redelivered (default 30s).
                        Keep it well under the watermark (10m) so redelivered events are not late.
  --close-interval DUR  how often windows the watermark has passed are closed and published (default 250ms)
  --progress DUR        progress line in the log every DUR; 0 for none (default 10s)
  --partitions P        partitions of the feature state, fixed for a deployment: every worker must be given
                        the same P (default 1: one store that workers take turns on). With P > 1 workers
                        lease partitions from NATS KV and each partition has one writer (README: Deployment)
  --lease-ttl DUR       how long a dead worker's partition leases live before others take them (default 6s)
  --workers N           run N worker processes here, supervised (default 1)
  --nice N              the worker's nice value, with SCHED_BATCH (default 5, as in up and for --workers N's
                        processes: Redis, NATS and serving on this machine get a core first); 0 keeps the caller's`;

export function featuresOptionsFromFlags(args: CommandArgs): FeaturesWorkerOptions {
  const positiveInt = (name: string): number | undefined => {
    const v = numberFlag(args, name);
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new UsageError(`--${name} must be a positive integer, got ${v}`);
    return v;
  };
  const ackWaitMs = durationFlag(args, "ack-wait");
  if (ackWaitMs !== undefined && ackWaitMs < 1000) throw new UsageError(`--ack-wait must be at least 1s, got ${ackWaitMs} ms`);
  const maxTransactionMs = numberFlag(args, "max-transaction-ms");
  if (maxTransactionMs !== undefined && !(maxTransactionMs > 0))
    throw new UsageError(`--max-transaction-ms must be a positive number, got ${maxTransactionMs}`);
  const partitions = positiveInt("partitions");
  if (partitions !== undefined && partitions > MAX_PARTITIONS) throw new UsageError(`--partitions must be at most ${MAX_PARTITIONS}, got ${partitions}`);
  const leaseTtlMs = durationFlag(args, "lease-ttl");
  if (leaseTtlMs !== undefined && leaseTtlMs < 2000) throw new UsageError(`--lease-ttl must be at least 2s, got ${leaseTtlMs} ms`);
  return {
    ...(maxTransactionMs !== undefined ? { store: { maxTransactionMs } } : {}),
    partitions,
    leaseTtlMs,
    maxBatch: positiveInt("batch-size"),
    maxInFlightBatches: positiveInt("in-flight"),
    ackWaitMs,
    closeIntervalMs: durationFlag(args, "close-interval"),
    progressIntervalMs: durationFlag(args, "progress"),
  };
}

const command: Command = {
  name: "features",
  summary: "compute windowed features from EVENTS into Redis (online) and LOGS (closed windows, for ClickHouse)",
  usage: `Usage: streamserve features [flags]

A durable JetStream consumer on ${"`events.activity`"} keeps per-user and per-item features over 5-minute
event-time windows (watermark 10 minutes) in Redis hashes user_features:{id} / item_features:{id},
the trending_items sorted set, and publishes each window to LOGS once the watermark has passed it.
Redelivered events count once, and several workers may share the consumer. Events that cannot be
parsed go to events.dead_letter with the reason in a header. Late events are counted and dropped.
Stops on SIGINT/SIGTERM after finishing the batches in hand. /metrics and /healthz on --http-port.

${FEATURES_FLAGS}

Examples:
  streamserve features
  streamserve features --namespace staging --batch-size 5000 --http-port 9101
  streamserve features --partitions 16 --workers 4`,
  async run(args, runtime) {
    const options = featuresOptionsFromFlags(args);
    const workers = numberFlag(args, "workers") ?? 1;
    if (!Number.isInteger(workers) || workers < 1) throw new UsageError(`--workers must be a whole number of at least 1, got ${workers}`);
    const nice = numberFlag(args, "nice") ?? FEATURES_NICE;
    if (!Number.isInteger(nice) || nice < 0 || nice > 19) throw new UsageError(`--nice must be a whole number from 0 to 19, got ${nice}`);
    if (workers > 1) return superviseFeatureWorkers(runtime, workers, options);
    if (nice > 0) runtime.log.info({ nice: lowerOwnPriority(nice, FEATURES_POLICY), policy: FEATURES_POLICY }, "features worker priority lowered");
    const worker = await startFeaturesWorker(runtime, options);
    return runPartUntilSignal(runtime, { name: "features", health: () => worker.stats, stop: () => worker.stop() });
  },
};

/**
 * N features processes, each a whole worker (its own connections and leases, so it fails alone as
 * a host would), restarted when one dies; this one answers /healthz with each child's state and
 * /metrics with their series combined (each metric's aggregator: sums for counts).
 */
async function superviseFeatureWorkers(runtime: Parameters<Command["run"]>[1], workers: number, options: FeaturesWorkerOptions): Promise<number> {
  const js = fileURLToPath(new URL("../features-process.js", import.meta.url));
  const module = existsSync(js) ? js : fileURLToPath(new URL("../features-process.ts", import.meta.url));
  const children = Array.from({ length: workers }, (_, i) =>
    superviseChild<FeaturesStart, FeaturesInfo>({ name: `features-${i + 1}`, module, log: runtime.log, start: () => ({ config: runtime.config, options }) }),
  );
  runtime.http.route("GET", "/healthz", (_req, res) =>
    sendJson(res, children.some((c) => c.state === "ready") ? 200 : 503, {
      workers: children.map((c) => ({ pid: c.pid, state: c.state, restarts: c.restarts, metricsPort: c.info?.httpPort })),
    }),
  );
  runtime.http.route("GET", "/metrics", async (_req, res) => {
    const ready = children.filter((c) => c.state === "ready");
    const each = await Promise.all(ready.map((c) => c.call<MetricObjectWithValues<MetricValue<string>>[]>("metricsJson").catch(() => undefined)));
    const combined = AggregatorRegistry.aggregate(each.filter((m) => m !== undefined));
    sendText(res, 200, await combined.metrics(), combined.contentType);
  });
  await runtime.listenHttp().catch((err: Error) => runtime.log.warn({ err: err.message }, "no HTTP port for /healthz"));
  const signal = await untilSignal();
  runtime.log.info({ signal }, "stopping the features workers");
  await Promise.all(children.map((c) => c.stop()));
  return 0;
}

export default command;
