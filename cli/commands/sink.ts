// `streamserve sink`: the LOGS → ClickHouse sink on its own, until SIGINT/SIGTERM.
import type { Command } from "../command.js";
import { runPartUntilSignal } from "../command.js";
import { durationFlag, listFlag, numberFlag, UsageError, type CommandArgs } from "../args.js";
import { LOG_KINDS } from "../../sink/log-rows.js";
import { startSink, type SinkOptions } from "../../sink/sink.js";
import type { LogKind } from "../../lib/config.js";

export const SINK_FLAGS = `  --kinds a,b           log kinds to write (default all: ${LOG_KINDS.join(", ")})
  --batch-size N        most messages per insert (default 5000)
  --batch-wait DUR      longest a batch collects before it is written (default 1s, at least 1s)
  --ack-wait DUR        JetStream ack deadline: how soon a crashed sink's batch is redelivered (default 30s)`;

export function sinkOptionsFromFlags(args: CommandArgs): SinkOptions {
  const kinds = listFlag(args, "kinds")
    .flatMap((v) => v.split(","))
    .map((k) => k.trim())
    .filter(Boolean);
  for (const k of kinds) if (!LOG_KINDS.includes(k as LogKind)) throw new UsageError(`--kinds: unknown kind "${k}" (known: ${LOG_KINDS.join(", ")})`);
  const batchSize = numberFlag(args, "batch-size");
  if (batchSize !== undefined && (!Number.isInteger(batchSize) || batchSize < 1))
    throw new UsageError(`--batch-size must be a positive integer, got ${batchSize}`);
  return {
    kinds: kinds.length ? (kinds as LogKind[]) : undefined,
    maxBatchMessages: batchSize,
    maxBatchWaitMs: durationFlag(args, "batch-wait"),
    ackWaitMs: durationFlag(args, "ack-wait"),
  };
}

const command: Command = {
  name: "sink",
  summary: "write the LOGS stream (predictions, exposures, outcomes, feature windows, model events) into ClickHouse",
  usage: `Usage: streamserve sink [flags]

Durable JetStream consumers on LOGS, one per log kind, insert batches into ClickHouse and ack them
only once ClickHouse accepted them. While ClickHouse is away the messages wait in JetStream and
the sink retries with backoff. Tables deduplicate by natural id; query them with FINAL.
Stops on SIGINT/SIGTERM after writing the batch in hand. /metrics and /healthz on --http-port.

${SINK_FLAGS}

Examples:
  streamserve sink
  CLICKHOUSE_URL=http://clickhouse:8123 streamserve sink --kinds prediction,outcome --batch-size 20000`,
  async run(args, runtime) {
    const options = sinkOptionsFromFlags(args);
    // Apply migrations now; if ClickHouse is down the sink starts anyway and retries each batch.
    await runtime.clickhouse().catch((err) => runtime.log.warn({ err }, "ClickHouse not reachable yet; the sink will retry"));
    const sink = await startSink(runtime, options);
    return runPartUntilSignal(runtime, { name: "sink", health: () => sink.stats(), stop: () => sink.stop() });
  },
};

export default command;
