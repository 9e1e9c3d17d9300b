// The features worker's Prometheus metrics, registered once in the process's shared registry.
import type { Counter, Gauge, Histogram, MetricsRegistry } from "../lib/metrics.js";

export interface FeaturesMetrics {
  messages: Counter;
  applied: Counter<"entity">;
  duplicates: Counter<"entity">;
  late: Counter<"entity">;
  deadLetters: Counter<"reason">;
  windowsClosed: Counter<"entity">;
  batchSeconds: Histogram;
  batchSize: Histogram;
  transactionSeconds: Histogram;
  conflicts: Counter;
  staleness: Histogram;
  pending: Gauge<"state">;
  watermarkLag: Gauge;
}

const ENTITY = { labelNames: ["entity"] } as const;

const BATCH_SIZE_BUCKETS = [1, 10, 50, 100, 250, 500, 1000, 2000, 5000];
const TRANSACTION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1];

export function createFeaturesMetrics(registry: MetricsRegistry): FeaturesMetrics {
  return {
    messages: registry.counter("streamserve_features_messages_total", "Messages consumed from EVENTS and acknowledged"),
    applied: registry.counter("streamserve_features_events_applied_total", "Events folded into a window, per entity view", ENTITY),
    duplicates: registry.counter(
      "streamserve_features_duplicate_events_total",
      "Events a window had already applied (redeliveries, republished event ids), per entity view",
      ENTITY,
    ),
    late: registry.counter("streamserve_features_late_events_total", "Events dropped because the watermark had closed their window, per entity view", ENTITY),
    deadLetters: registry.counter("streamserve_features_dead_letters_total", "Events sent to the dead-letter subject, by reason", { labelNames: ["reason"] }),
    windowsClosed: registry.counter("streamserve_features_windows_closed_total", "Closed windows published to LOGS, per entity view", ENTITY),
    batchSeconds: registry.histogram("streamserve_features_batch_seconds", "Time to apply, publish and ack one batch"),
    batchSize: registry.histogram("streamserve_features_batch_size", "Messages per batch", { buckets: BATCH_SIZE_BUCKETS }),
    transactionSeconds: registry.histogram(
      "streamserve_features_transaction_redis_seconds",
      "How long each feature transaction held Redis, by Redis's clock (other clients wait meanwhile)",
      { buckets: TRANSACTION_BUCKETS },
    ),
    conflicts: registry.counter(
      "streamserve_features_conflict_retries_total",
      "Feature sub-batches computed again because another writer changed the store in between (0 when each partition has one writer)",
    ),
    staleness: registry.histogram(
      "streamserve_features_batch_staleness_seconds",
      "From the oldest message of a batch reaching the stream to its features being written to Redis",
    ),
    pending: registry.gauge("streamserve_features_consumer_pending", "Messages of the features consumer not yet delivered / delivered but unacked", {
      labelNames: ["state"],
    }),
    watermarkLag: registry.gauge("streamserve_features_watermark_lag_seconds", "Wall clock minus the newest event time seen"),
  };
}
