// `streamserve features`: the streaming feature worker on its own, until SIGINT/SIGTERM.
import type { Command } from "../command.js";
import { runPartUntilSignal } from "../command.js";
import { durationFlag, numberFlag, UsageError, type CommandArgs } from "../args.js";
import { startFeaturesWorker, type FeaturesWorkerOptions } from "../../features/worker.js";

export const FEATURES_FLAGS = `  --batch-size N        most events taken and acked as one batch (default 2000)
  --in-flight N         batches taken at once: one committing in Redis, one computed, the rest waiting (default 3)
  --max-transaction-ms N  Redis time one feature transaction may take; batches are committed in as many
                        transactions as keep each under it (default 2)
  --ack-wait DUR        JetStream ack deadline: how soon a crashed worker's events are redelivered (default 30s).
                        Keep it well under the watermark (10m) so redelivered events are not late.
  --close-interval DUR  how often windows the watermark has passed are closed and published (default 250ms)
  --progress DUR        progress line in the log every DUR; 0 for none (default 10s)`;

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
  return {
    ...(maxTransactionMs !== undefined ? { store: { maxTransactionMs } } : {}),
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
  streamserve features --namespace staging --batch-size 5000 --http-port 9101`,
  async run(args, runtime) {
    const options = featuresOptionsFromFlags(args);
    const worker = await startFeaturesWorker(runtime, options);
    return runPartUntilSignal(runtime, { name: "features", health: () => worker.stats, stop: () => worker.stop() });
  },
};

export default command;
