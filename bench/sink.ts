// Sink benchmark: rows per second from LOGS into the embedded ClickHouse through `startSink`
// (fetch, decode, insert, ack), and in the same run the floor it is measured against: direct
// `client.insert` of the same rows, already decoded, in the same batch sizes.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { PredictionLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { publishLogBytes } from "../lib/log-message.js";
import { createRuntime } from "../lib/runtime.js";
import { deleteNamespace } from "../lib/nats.js";
import { decodeLog, type Row } from "../sink/log-rows.js";
import { startSink } from "../sink/sink.js";
import { withDefaults } from "../lib/options.js";

export interface SinkBenchOptions {
  /** Prediction logs published (each becomes `items` rows). @default 20_000 */
  messages?: number;
  /** Scored items per prediction log. @default 5 */
  items?: number;
  /** Messages per batch, for the sink and the direct inserts alike. @default 5000 */
  batch?: number;
}

export const SINK_BENCH_DEFAULTS: Readonly<Required<SinkBenchOptions>> = Object.freeze({ messages: 20_000, items: 5, batch: 5000 });

const FEATURES = [
  "clicks_last_5min",
  "avg_session_duration",
  "unique_pages_viewed",
  "purchase_amount",
  "engagement_score",
  "item_views_5min",
  "item_clicks_5min",
  "device_type",
];

function predictionLog(run: string, i: number, items: number): Uint8Array {
  return toBinary(
    PredictionLogSchema,
    create(PredictionLogSchema, {
      requestId: `${run}-${i}`,
      time: timestampFromMs(Date.now() - 60_000 + (i % 60_000)),
      userId: `u${i % 5000}`,
      modelName: "recommender",
      modelVersion: "7",
      experiment: "",
      variant: "",
      currentPage: `p${i % 300}`,
      deviceType: i % 3 ? "desktop" : "mobile",
      featureNames: FEATURES,
      items: Array.from({ length: items }, (_, k) => ({
        itemId: `p${(i * 7 + k) % 300}`,
        score: Math.random(),
        position: k + 1,
        features: FEATURES.map((_, f) => (i + f * k) % 97),
      })),
      latencyMs: 2.5,
    }),
  );
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

export async function benchSink(options: SinkBenchOptions = {}): Promise<void> {
  const o: Required<SinkBenchOptions> = withDefaults(SINK_BENCH_DEFAULTS, options);
  const rowsTotal = o.messages * o.items;
  console.log(
    `\n## sink: ${fmt(o.messages)} prediction logs × ${o.items} items = ${fmt(rowsTotal)} rows into embedded ClickHouse, batches of ${fmt(o.batch)} messages`,
  );
  const dataDir = mkdtempSync(join(tmpdir(), "bench-sink-"));
  const runtime = createRuntime({ namespace: `bench_sink_${process.pid}`, dataDir, logLevel: "warn" });
  try {
    const nc = await runtime.nats();
    const ch = await runtime.clickhouse();
    const js = nc.jetstream();
    const payloads = Array.from({ length: o.messages }, (_, i) => predictionLog("sink", i, o.items));
    for (let i = 0; i < payloads.length; i += 1000) {
      await Promise.all(payloads.slice(i, i + 1000).map((data, k) => publishLogBytes(js, runtime.names.logsSubject("prediction"), `bench-${i + k}`, data)));
    }

    // The sink: everything is waiting in LOGS; time from start to the last row acknowledged.
    const t0 = performance.now();
    const sink = await startSink(runtime, { kinds: ["prediction"], maxBatchMessages: o.batch });
    while (sink.stats().messagesWritten < o.messages) await new Promise((r) => setTimeout(r, 5));
    const sinkSeconds = (performance.now() - t0) / 1000;
    await sink.stop();
    const sinkRate = rowsTotal / sinkSeconds;

    // The floor: the same rows (fresh request ids so nothing collapses), decoded beforehand.
    const batches: Row[][] = [];
    for (let i = 0; i < o.messages; i += o.batch) {
      batches.push(
        Array.from(
          { length: Math.min(o.batch, o.messages - i) },
          (_, k) => decodeLog("prediction", { data: predictionLog("direct", i + k, o.items), storedAtMs: Date.now() }).rows,
        ).flat(),
      );
    }
    const t1 = performance.now();
    for (const values of batches) await ch.client.insert({ table: "predictions", values, format: "JSONEachRow" });
    const directSeconds = (performance.now() - t1) / 1000;
    const directRate = rowsTotal / directSeconds;

    console.log(
      `sink (fetch + decode + insert + ack)     ${fmt(sinkRate).padStart(10)} rows/s  (${fmt(o.messages / sinkSeconds)} messages/s, ${fmt(sinkSeconds, 2)} s)`,
    );
    console.log(`floor: direct client.insert, same rows   ${fmt(directRate).padStart(10)} rows/s  (${fmt(directSeconds, 2)} s)`);
    console.log(`ratio sink / direct insert                ${fmt((100 * sinkRate) / directRate, 1).padStart(9)} %`);
    await deleteNamespace(nc, runtime.names);
  } finally {
    await runtime.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await benchSink();
