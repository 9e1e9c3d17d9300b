// Log publisher benchmark: the serving process's CPU per prediction log handed to LogPublisher and
// acknowledged by JetStream, for each publish path (server/log-sender.ts), and in the same run the
// floor: the same messages as bare core publishes with the same headers, no acks awaited.
// CPU is process.cpuUsage() (user + system, every thread of this process); nats-server's is not in it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { PredictionLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { logHeaders } from "../lib/log-message.js";
import { createLogger } from "../lib/logger.js";
import { deleteNamespace } from "../lib/nats.js";
import { createRuntime } from "../lib/runtime.js";
import { LogPublisher } from "../server/log-publisher.js";
import type { PublishPath } from "../server/log-sender.js";
import { withDefaults } from "../lib/options.js";

export interface LogPublisherBenchOptions {
  /** Messages per run. @default 20_000 */
  messages?: number;
  /** Messages published per 1 ms tick, as requests would between turns of the event loop. @default 5 */
  perTick?: number;
  /** Runs of each path, interleaved; the best (least CPU) is reported next to each run's figure. @default 2 */
  rounds?: number;
}

const DEFAULTS: Readonly<Required<LogPublisherBenchOptions>> = Object.freeze({ messages: 20_000, perTick: 5, rounds: 2 });

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** A Recommend's prediction log: 20 scored candidates with 8 features each. */
function predictionLog(i: number): Uint8Array {
  return toBinary(
    PredictionLogSchema,
    create(PredictionLogSchema, {
      requestId: `bench-${i}`,
      time: timestampFromMs(Date.now()),
      userId: `u${i % 5000}`,
      modelName: "recommender",
      modelVersion: "7",
      featureNames: ["a", "b", "c", "d", "e", "f", "g", "h"],
      items: Array.from({ length: 20 }, (_, k) => ({
        itemId: `p${(i * 7 + k) % 300}`,
        score: Math.random(),
        position: k + 1,
        features: [1, 2, 3, 4, 5, 6, 7, 8],
      })),
      latencyMs: 2.5,
    }),
  );
}

interface Figures {
  cpuUs: number;
  seconds: number;
}

export async function benchLogPublisher(options: LogPublisherBenchOptions = {}): Promise<void> {
  const o: Required<LogPublisherBenchOptions> = withDefaults(DEFAULTS, options);
  const dataDir = mkdtempSync(join(tmpdir(), "bench-log-publisher-"));
  const runtime = createRuntime({ namespace: `bench_logpub_${process.pid}`, dataDir, logLevel: "warn" });
  const log = createLogger("warn");
  try {
    const nc = await runtime.nats();
    const subject = runtime.names.logsSubject("prediction");
    const payloads = Array.from({ length: 1000 }, (_, i) => predictionLog(i));
    console.log(
      `\n## log-publisher: ${fmt(o.messages)} prediction logs (${fmt(payloads[0]!.length)} bytes) per run, ${o.perTick} per 1 ms tick; ` +
        `CPU of this process per message (load ${(await import("node:os"))
          .loadavg()
          .map((x) => x.toFixed(2))
          .join(" ")})`,
    );
    let run = 0;

    /** Feeds `o.messages` through `publish` at the set pace, then waits for `done`; the process's CPU per message. */
    const measure = async (publish: (i: number, msgId: string) => void, done: () => Promise<void>): Promise<Figures> => {
      const prefix = `r${++run}`;
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < o.messages; i++) {
        publish(i, `${prefix}-${i}`);
        if ((i + 1) % o.perTick === 0) await sleep(1);
      }
      await done();
      const cpu = process.cpuUsage(cpu0);
      return { cpuUs: (cpu.user + cpu.system) / o.messages, seconds: (performance.now() - t0) / 1000 };
    };

    const floor = () =>
      measure(
        (i, msgId) => nc.publish(subject, payloads[i % payloads.length]!, { headers: logHeaders(msgId) }),
        () => nc.flush(),
      );
    const publisher = async (publishPath: PublishPath) => {
      const p = new LogPublisher({ connect: async () => nc, spillDir: join(dataDir, `spill-${run}`), log, publishPath });
      await sleep(50); // listed and connected: startup is not what is measured
      try {
        return await measure(
          (i, msgId) => p.publish(subject, msgId, payloads[i % payloads.length]!),
          () => p.flush(),
        );
      } finally {
        if (p.spilled > 0) console.log(`  (${publishPath}: ${p.spilled} messages went to the spill: NATS was slow)`);
        await p.close();
      }
    };

    const results: Record<string, Figures[]> = { floor: [], jetstream: [], "reply-mux": [] };
    for (let r = 0; r < o.rounds; r++) {
      results.floor!.push(await floor());
      results.jetstream!.push(await publisher("jetstream"));
      results["reply-mux"]!.push(await publisher("reply-mux"));
    }
    const best = (k: string) => Math.min(...results[k]!.map((f) => f.cpuUs));
    const line = (label: string, k: string) =>
      console.log(
        `${label.padEnd(52)} ${fmt(best(k), 1).padStart(6)} µs CPU/message  (runs: ${results[k]!.map((f) => `${fmt(f.cpuUs, 1)} µs in ${fmt(f.seconds, 1)} s`).join(", ")})`,
      );
    line("floor: core publish + headers, no acks", "floor");
    line('LogPublisher, publishPath "jetstream" (js.publish)', "jetstream");
    line('LogPublisher, publishPath "reply-mux" (default)', "reply-mux");
    const over = (k: string) => best(k) - best("floor");
    console.log(
      `above the floor: jetstream ${fmt(over("jetstream"), 1)} µs, reply-mux ${fmt(over("reply-mux"), 1)} µs per message ` +
        `(reply-mux saves ${fmt(best("jetstream") - best("reply-mux"), 1)} µs, ${fmt((100 * (best("jetstream") - best("reply-mux"))) / best("jetstream"), 0)} %)`,
    );
    await deleteNamespace(nc, runtime.names);
  } finally {
    await runtime.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await benchLogPublisher();
