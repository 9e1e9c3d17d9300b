// The LOGS → ClickHouse sink: one durable pull consumer per log kind takes batches bounded by size and
// time, turns them into rows, inserts them, and acks only once ClickHouse accepted them.
// Invariant: a message is acked only after its rows are in ClickHouse, and a row written twice
// collapses under FINAL (ReplacingMergeTree by natural id). Why, and why no insert tokens: README,
// "ClickHouse: what is kept".
import { AckPolicy, DeliverPolicy, type Consumer, type ConsumerMessages, type JsMsg, type NatsConnection, type QueuedIterator, type Status } from "nats";
import type { ClickHouseClient } from "@clickhouse/client";
import type { LogKind, Names } from "../lib/config.js";
import type { ClickHouse } from "../lib/clickhouse.js";
import type { Logger } from "../lib/logger.js";
import type { MetricsRegistry } from "../lib/metrics.js";
import type { Part } from "../lib/runtime.js";
import { ensureConsumer } from "../lib/durable-consumer.js";
import { decodeLog, LOG_KINDS, UndecodableLogError, type Row } from "./log-rows.js";
import { withDefaults } from "../lib/options.js";

export interface SinkOptions {
  /** Log kinds to consume, one durable consumer each. @default every kind */
  kinds?: readonly LogKind[];
  /** Most messages in one batch. @default 5000 */
  maxBatchMessages?: number;
  /**
   * Longest a batch collects before it is written, in ms. JetStream pull requests expire no sooner
   * than 1 s, so smaller values are raised to 1000. @default 1000
   */
  maxBatchWaitMs?: number;
  /**
   * The consumer's ack deadline (ms): how long a crashed sink's messages wait before JetStream
   * redelivers them. A live sink extends it while it retries. @default 30000
   */
  ackWaitMs?: number;
  /** First delay after a failed insert (ms); it doubles up to `retryMaxMs`, with jitter. @default 200 */
  retryInitialMs?: number;
  /** @default 10000 */
  retryMaxMs?: number;
  /**
   * How long `stop()` keeps trying to write the batch in hand (ms). Past it the batch is left
   * unacked (nak'd) for JetStream to redeliver. @default 15000
   */
  stopTimeoutMs?: number;
  /** How often the consumer lag gauge is refreshed while idle (ms). @default 5000 */
  lagIntervalMs?: number;
}

export const SINK_DEFAULTS: Readonly<Required<SinkOptions>> = Object.freeze({
  kinds: LOG_KINDS,
  maxBatchMessages: 5000,
  maxBatchWaitMs: 1000,
  ackWaitMs: 30_000,
  retryInitialMs: 200,
  retryMaxMs: 10_000,
  stopTimeoutMs: 15_000,
  lagIntervalMs: 5_000,
});

export function resolveSinkOptions(options: SinkOptions = {}): Required<SinkOptions> {
  const o: Required<SinkOptions> = withDefaults(SINK_DEFAULTS, options);
  o.maxBatchWaitMs = Math.max(1000, o.maxBatchWaitMs);
  for (const key of ["maxBatchMessages", "ackWaitMs", "retryInitialMs", "retryMaxMs", "stopTimeoutMs", "lagIntervalMs"] as const) {
    if (!Number.isFinite(o[key]) || o[key] <= 0) throw new RangeError(`sink option ${key} must be a positive number, got ${o[key]}`);
  }
  for (const kind of o.kinds) if (!LOG_KINDS.includes(kind)) throw new RangeError(`unknown log kind "${kind}" (known: ${LOG_KINDS.join(", ")})`);
  return o;
}

/** What the sink needs from its process; a Runtime provides all of it. */
export interface SinkContext {
  names: Names;
  log: Logger;
  metrics: MetricsRegistry;
  nats(): Promise<NatsConnection>;
  /**
   * Asked before every insert attempt rather than once, so a client that was replaced (an
   * embedded engine reopened after a failure) is picked up by the retry.
   */
  clickhouse(): Promise<ClickHouse | ClickHouseClient>;
}

export interface SinkStats {
  /** Rows inserted per table (what was accepted; duplicates collapse later). */
  rowsWritten: Record<string, number>;
  /** Messages acked after their rows were written. */
  messagesWritten: number;
  /** Messages that could not be decoded or that ClickHouse rejected as data; terminated. */
  messagesRejected: number;
  /** Insert attempts that failed (each retry counts). */
  insertFailures: number;
  batches: number;
  /** Messages not yet written, per kind (not yet delivered plus delivered and unacked). */
  lag: Partial<Record<LogKind, number>>;
}

export interface Sink extends Part {
  stats(): SinkStats;
}

/** One decoded message: its rows, or the reason it cannot be written. */
interface Entry {
  msg: JsMsg;
  table: string;
  rows: Row[];
  /** Terminated because ClickHouse refused its rows. */
  rejected?: boolean;
}

/** ClickHouse error codes that mean the data itself is wrong, so retrying cannot help. */
const DATA_ERROR_CODES = new Set(["6", "26", "27", "38", "41", "53", "69", "70", "72", "117", "130", "131", "321", "386"]);

function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return code !== undefined && DATA_ERROR_CODES.has(String(code));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Creates (or updates) the durable consumers and starts one loop per kind. */
export async function startSink(ctx: SinkContext, options: SinkOptions = {}): Promise<Sink> {
  const o = resolveSinkOptions(options);
  const log = ctx.log.child({ part: "sink" });
  const m = {
    rows: ctx.metrics.counter("streamserve_sink_rows_written_total", "Rows the sink inserted into ClickHouse, by table", { labelNames: ["table"] }),
    messages: ctx.metrics.counter("streamserve_sink_messages_total", "LOGS messages the sink finished, by kind and result (written, undecodable, rejected)", {
      labelNames: ["kind", "result"],
    }),
    failures: ctx.metrics.counter("streamserve_sink_insert_failures_total", "Failed ClickHouse insert attempts, by table (each is retried)", {
      labelNames: ["table"],
    }),
    batch: ctx.metrics.histogram("streamserve_sink_batch_seconds", "From a batch in hand to its messages acked, by kind", { labelNames: ["kind"] }),
    batchSize: ctx.metrics.histogram("streamserve_sink_batch_messages", "Messages per batch, by kind", {
      labelNames: ["kind"],
      buckets: [1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000],
    }),
    lag: ctx.metrics.gauge("streamserve_sink_consumer_lag", "LOGS messages not yet written (pending plus unacked), by kind", { labelNames: ["kind"] }),
  };
  const stats: SinkStats = { rowsWritten: {}, messagesWritten: 0, messagesRejected: 0, insertFailures: 0, batches: 0, lag: {} };

  const nc = await ctx.nats();
  const jsm = await nc.jetstreamManager();
  const js = nc.jetstream();
  const consumers = new Map<LogKind, Consumer>();
  for (const kind of o.kinds) {
    const durable = ctx.names.consumer(`sink-${kind}`);
    await ensureConsumer(jsm, ctx.names.logsStream, {
      durable_name: durable,
      filter_subject: ctx.names.logsSubject(kind),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: o.ackWaitMs * 1_000_000,
      // Room for a full batch in hand per sink instance, with a few instances sharing the durable.
      max_ack_pending: Math.max(1000, o.maxBatchMessages * 4),
      max_deliver: -1,
    });
    consumers.set(kind, await js.consumers.get(ctx.names.logsStream, durable));
  }

  let stopping = false;
  let stopDeadline = Infinity;
  const fetches = new Set<ConsumerMessages>();
  let rejectedLogged = 0;

  // While NATS is away the client queues what is published and sends it on reconnect. A pull
  // request queued so reaches the server after its fetch has given up, and the server hands the
  // messages it asked for to an inbox nobody reads, where they wait out the ack deadline (30 s by
  // default) before anyone gets them. So no fetch starts while disconnected.
  let connected = true;
  const connectWaiters = new Set<() => void>();
  const wakeConnectWaiters = () => {
    for (const wake of connectWaiters) wake();
    connectWaiters.clear();
  };
  const statuses = nc.status() as QueuedIterator<Status>;
  void (async () => {
    for await (const s of statuses) {
      if (s.type === "disconnect") {
        connected = false;
      } else if (s.type === "reconnect") {
        connected = true;
        wakeConnectWaiters();
      }
    }
  })().catch(() => undefined);

  const client = async (): Promise<ClickHouseClient> => {
    const ch = await ctx.clickhouse();
    return "client" in ch ? ch.client : ch;
  };

  /** Inserts until ClickHouse accepts, or until stop() gives up; data errors are thrown. */
  async function insert(table: string, rows: Row[]): Promise<boolean> {
    let delay = o.retryInitialMs;
    for (let attempt = 1; ; attempt++) {
      try {
        await (await client()).insert({ table, values: rows, format: "JSONEachRow" });
        if (attempt > 1) log.info({ table, attempt }, "ClickHouse insert succeeded after retries");
        return true;
      } catch (err) {
        if (isDataError(err)) throw err;
        m.failures.inc({ table });
        stats.insertFailures++;
        if (attempt === 1 || attempt % 10 === 0)
          log.warn({ err, table, rows: rows.length, attempt, retryInMs: delay }, "ClickHouse insert failed; retrying, messages stay in JetStream");
        const wait = Math.min(delay * (0.75 + Math.random() * 0.5), stopDeadline - Date.now());
        if (wait <= 0) return false;
        await sleep(wait);
        delay = Math.min(delay * 2, o.retryMaxMs);
      }
    }
  }

  function reject(kind: LogKind, msg: JsMsg, reason: string, result: "undecodable" | "rejected"): void {
    m.messages.inc({ kind, result });
    stats.messagesRejected++;
    // A flood of bad messages must not flood the log: the first few, then every thousandth.
    if (rejectedLogged++ < 20 || rejectedLogged % 1000 === 0) {
      log.warn({ kind, subject: msg.subject, seq: msg.seq, reason, rejectedSoFar: rejectedLogged }, "terminating a LOGS message that cannot be written");
    }
    // No reason on the TERM: nats-server 2.9 does not parse "+TERM <reason>" and would leave the
    // message pending; the reason is in the log line above.
    msg.term();
  }

  /** Writes one batch: decode, insert per table, ack. Returns false when stop() gave up on it. */
  async function writeBatch(kind: LogKind, batch: JsMsg[], firstAt = performance.now()): Promise<boolean> {
    const started = performance.now();
    const entries: Entry[] = [];
    for (const msg of batch) {
      try {
        const { table, rows } = decodeLog(kind, {
          data: msg.data,
          contentType: msg.headers?.get("Content-Type") || undefined,
          storedAtMs: Math.floor(msg.info.timestampNanos / 1e6),
        });
        entries.push({ msg, table, rows });
      } catch (err) {
        if (!(err instanceof UndecodableLogError)) throw err;
        reject(kind, msg, err.message, "undecodable");
      }
    }
    // Keep the batch's ack deadline from passing while ClickHouse is slow or away. Its deadline runs
    // from its first message's delivery, which may have waited out most of the fetch: renew it at once then.
    const every = Math.max(250, Math.floor(o.ackWaitMs / 3));
    const keepAliveAll = () => entries.forEach((e) => e.msg.working());
    if (performance.now() - firstAt >= every) keepAliveAll();
    const keepAlive = setInterval(keepAliveAll, every);
    try {
      const byTable = new Map<string, Entry[]>();
      for (const e of entries) {
        const list = byTable.get(e.table);
        if (list) list.push(e);
        else byTable.set(e.table, [e]);
      }
      for (const [table, list] of byTable) {
        const rows = list.length === 1 ? list[0]!.rows : list.flatMap((e) => e.rows);
        if (rows.length === 0) continue;
        let written: number | false;
        try {
          written = (await insert(table, rows)) && rows.length;
        } catch (err) {
          // ClickHouse refused the data: find the message(s) at fault one by one, write the rest.
          log.warn({ err, table, messages: list.length }, "ClickHouse rejected a batch's data; writing its messages one by one");
          written = await insertOneByOne(kind, table, list);
        }
        if (written === false) {
          for (const e of entries) if (!e.rejected) e.msg.nak();
          return false;
        }
        m.rows.inc({ table }, written);
        stats.rowsWritten[table] = (stats.rowsWritten[table] ?? 0) + written;
      }
    } finally {
      clearInterval(keepAlive);
    }
    const acked = entries.filter((e) => !e.rejected);
    for (const e of acked) e.msg.ack();
    m.messages.inc({ kind, result: "written" }, acked.length);
    stats.messagesWritten += acked.length;
    stats.batches++;
    m.batch.observe({ kind }, (performance.now() - started) / 1000);
    m.batchSize.observe({ kind }, batch.length);
    const last = batch.at(-1)!;
    setLag(kind, last.info.pending);
    return true;
  }

  /** Data-error fallback: each message alone; those ClickHouse still refuses are terminated. */
  async function insertOneByOne(kind: LogKind, table: string, list: Entry[]): Promise<number | false> {
    let written = 0;
    for (const e of list) {
      if (e.rows.length === 0) continue;
      try {
        if (!(await insert(table, e.rows))) return false;
        written += e.rows.length;
      } catch (err) {
        e.rejected = true;
        reject(kind, e.msg, `ClickHouse rejected the rows: ${(err as Error).message}`, "rejected");
      }
    }
    return written;
  }

  function setLag(kind: LogKind, pending: number): void {
    stats.lag[kind] = pending;
    m.lag.set({ kind }, pending);
  }

  /** One bounded pull; `firstAt` is when its first message arrived (its ack deadline runs from then). */
  async function fetchBatch(consumer: Consumer): Promise<{ batch: JsMsg[]; firstAt: number }> {
    const messages = await consumer.fetch({ max_messages: o.maxBatchMessages, expires: o.maxBatchWaitMs });
    fetches.add(messages);
    const batch: JsMsg[] = [];
    let firstAt = 0;
    try {
      if (stopping) messages.stop();
      for await (const msg of messages) if (batch.push(msg) === 1) firstAt = performance.now();
    } finally {
      fetches.delete(messages);
    }
    return { batch, firstAt };
  }

  // One batch at a time, no prefetch: an embedded (chDB) insert of a large batch holds the event
  // loop for hundreds of ms, and a pull request open meanwhile expires client-side while the server
  // still delivers to it, so those messages would sit unacked until their ack deadline.
  async function run(kind: LogKind, consumer: Consumer): Promise<void> {
    let errorDelay = o.retryInitialMs;
    while (!stopping) {
      if (!connected) {
        await new Promise<void>((resolve) => connectWaiters.add(resolve));
        continue;
      }
      let batch: JsMsg[];
      let firstAt: number;
      try {
        ({ batch, firstAt } = await fetchBatch(consumer));
        errorDelay = o.retryInitialMs;
      } catch (err) {
        // NATS away or the consumer missing: the client reconnects by itself; wait and ask again.
        if (stopping) break;
        log.warn({ err, kind }, "fetching from LOGS failed; retrying");
        await sleep(errorDelay);
        errorDelay = Math.min(errorDelay * 2, o.retryMaxMs);
        continue;
      }
      if (batch.length === 0) continue;
      if (!(await writeBatch(kind, batch, firstAt))) break;
    }
  }

  // Between batches the per-message pending count is not seen; ask the server now and then.
  const lagTimer = setInterval(() => {
    for (const [kind, consumer] of consumers) {
      consumer
        .info()
        .then((info) => setLag(kind, info.num_pending + info.num_ack_pending))
        .catch(() => undefined);
    }
  }, o.lagIntervalMs);
  lagTimer.unref();

  const loops = [...consumers].map(([kind, consumer]) =>
    run(kind, consumer).catch((err) => {
      log.error({ err, kind }, "sink loop failed");
      throw err;
    }),
  );
  const done = Promise.allSettled(loops);
  log.info({ kinds: o.kinds, stream: ctx.names.logsStream, maxBatchMessages: o.maxBatchMessages, maxBatchWaitMs: o.maxBatchWaitMs }, "sink started");

  return {
    name: "sink",
    stats: () => structuredClone(stats),
    async stop() {
      if (stopping) return void (await done);
      stopping = true;
      stopDeadline = Date.now() + o.stopTimeoutMs;
      // End the pull requests now; what they already delivered is written and acked below.
      for (const f of fetches) f.stop();
      wakeConnectWaiters();
      await done;
      statuses.stop();
      clearInterval(lagTimer);
      // Acks are fire-and-forget: make sure they left before the caller closes the connection.
      await nc.flush().catch(() => undefined);
      log.info({ messagesWritten: stats.messagesWritten, rowsWritten: stats.rowsWritten }, "sink stopped");
    },
  };
}
