// The features worker: a durable JetStream pull consumer on the activity events that keeps the
// window state, the online feature hashes and the trending set in Redis, dead-letters what it
// cannot parse, and publishes each window to LOGS once the watermark has passed it.
//
// Flow of one batch:
//   pull (lib/jetstream-pull.ts) → the raw messages to the store's thread (features/store-thread.ts)
//   → parse → WindowStore.apply: Redis transactions of bounded Redis time (maxTransactionMs),
//   each with its events' late drops, duplicates, window state, online hashes and trending
//   → what did not parse to the dead-letter subject → ack every message of the batch.
// Acks come last: a crash anywhere before them means redelivery, which the store turns into a
// no-op for what was already applied. The next batch is parsed while one is in Redis; several
// workers may share the consumer (the store's transactions keep them consistent).
// With partitions > 1 the same loop runs once as the router and once per leased partition
// (features/partitioned-worker.ts).
import { performance } from "node:perf_hooks";
import { setImmediate as nextMacrotask, setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AckPolicy, DeliverPolicy, headers as natsHeaders, nanos, type JetStreamClient } from "nats";
import type { Runtime, Part } from "../lib/runtime.js";
import { ensureConsumer } from "../lib/durable-consumer.js";
import { publishLogMessage } from "../lib/log-message.js";
import { definedFields } from "../lib/options.js";
import { createPullConsumer, type PullConsumer, type PulledMessage, type PullStatus } from "../lib/jetstream-pull.js";
import type { Logger } from "../lib/logger.js";
import { ConfigError } from "../lib/config.js";
import { isClusterUrl } from "../lib/redis-url.js";
import { FeatureWindowLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { FEATURE_VIEWS, TRENDING, type FeatureView } from "./definitions.js";
import type { DeadLetterReason, EventParserOptions } from "./event-parser.js";
import { packMessages } from "./message-batch.js";
import type { ClosedWindow, TrendingSpec, ViewCounts, WindowStoreOptions } from "./window-store.js";
import { ThreadedWindowStore, type FeatureStore } from "./store-thread.js";
import { createFeaturesMetrics, type FeaturesMetrics } from "./metrics.js";
import { progressPacer } from "../lib/progress-pacer.js";
import { startPartitionedWorker } from "./partitioned-worker.js";

/** Header of a dead letter that says why the event was refused (a DeadLetterReason). */
export const DEAD_LETTER_REASON_HEADER = "Streamserve-Dead-Letter-Reason";
/** Header of a dead letter with the human-readable detail. */
export const DEAD_LETTER_DETAIL_HEADER = "Streamserve-Dead-Letter-Detail";
/** Headers of a dead letter that locate the original message in EVENTS. */
export const DEAD_LETTER_SUBJECT_HEADER = "Streamserve-Original-Subject";
export const DEAD_LETTER_SEQUENCE_HEADER = "Streamserve-Original-Sequence";

export interface FeaturesWorkerOptions {
  /** The feature views to maintain. @default FEATURE_VIEWS (user and item) */
  views?: readonly FeatureView[];
  /** The trending set, scored from the item view's events; null turns it off. @default TRENDING */
  trending?: TrendingSpec | null;
  /** Most messages taken as one batch (acked together; committed in transactions of store.maxTransactionMs each). @default 2000 */
  maxBatch?: number;
  /**
   * Batches taken from the buffer at once: one in Redis, one being computed, the others parsed
   * and waiting (a third smooths the pauses of a shared machine). @default 3
   */
  maxInFlightBatches?: number;
  /**
   * Messages the consumer asks the server for ahead of processing. Kept small relative to the
   * event rate: what is pulled but unacked when a worker dies comes back only after ackWaitMs.
   * @default 2 × maxBatch
   */
  pullAhead?: number;
  /** JetStream ack wait: how long a delivered, unacked message waits before redelivery. @default 30_000 */
  ackWaitMs?: number;
  /** Most delivered-but-unacked messages across all workers of the consumer. @default 20_000 */
  maxAckPending?: number;
  /** How often due windows are looked for and closed. @default 250 */
  closeIntervalMs?: number;
  /** Rows of a closing window read and published at a time. @default 1000 */
  closeBatch?: number;
  /** Progress line in the log every so often; 0 turns it off. @default 10_000 */
  progressIntervalMs?: number;
  /** How often the consumer's backlog is read for the lag gauge. @default 5_000 */
  lagIntervalMs?: number;
  /** Durable consumer part name (names.consumer(part)). @default "features" */
  consumerPart?: string;
  /**
   * How long stop() lets the batches in hand finish; past it the store is closed, which fails
   * what still waits on Redis (unacked, so redelivered), and stop() resolves soon after. @default 10_000
   */
  stopTimeoutMs?: number;
  /**
   * Apply batches on a worker thread of their own (features/store-thread.ts), leaving this
   * thread to NATS, parsing and acks (and, in `up`, to the gRPC server). @default true
   */
  storeThread?: boolean;
  /**
   * Partitions of the feature state (fixed for a deployment; README: partitions). 1: one store and
   * one consumer that every worker shares, taking turns. More: workers lease partitions (NATS KV)
   * and each partition has one writer. @default 1
   */
  partitions?: number;
  /** Partitioned: how long a dead worker's leases live (and its partitions wait). @default 6_000 */
  leaseTtlMs?: number;
  /** Partitioned: how often leases are renewed and shares recomputed. @default 1_000 */
  rebalanceMs?: number;
  parser?: EventParserOptions;
  store?: WindowStoreOptions;
}

type Unmerged = "parser" | "store" | "trending" | "pullAhead" | "storeThread" | "partitions" | "leaseTtlMs" | "rebalanceMs";

export const DEFAULT_FEATURES_WORKER_OPTIONS: Readonly<Required<Omit<FeaturesWorkerOptions, Unmerged>>> = Object.freeze({
  views: FEATURE_VIEWS,
  maxBatch: 2000,
  maxInFlightBatches: 3,
  ackWaitMs: 30_000,
  maxAckPending: 20_000,
  closeIntervalMs: 250,
  closeBatch: 1000,
  progressIntervalMs: 10_000,
  lagIntervalMs: 5_000,
  consumerPart: "features",
  stopTimeoutMs: 10_000,
});

/** Counters of one worker since it started (the metrics registry has the same, process-wide). */
export interface FeaturesWorkerStats {
  messages: number;
  batches: number;
  /** Per view entity: events folded into windows. */
  applied: Record<string, number>;
  duplicates: Record<string, number>;
  late: Record<string, number>;
  deadLetters: number;
  windowsClosed: Record<string, number>;
  /** Sub-batches computed again because another writer had written in between. */
  conflicts: number;
}

export interface FeaturesWorker extends Part {
  readonly stats: Readonly<FeaturesWorkerStats>;
  readonly store: FeatureStore;
  /** The newest event time this worker knows of (−∞ before any). */
  eventTimeHigh(): number;
  /** Looks for due windows now and closes them (the closer also runs on its own timer). */
  closeDueWindows(): Promise<number>;
  /** Partitioned: the partitions this worker holds now. */
  partitions?(): number[];
}

/** Starts a features worker on the runtime's connections; resolves once it is consuming. */
export async function startFeaturesWorker(runtime: Runtime, options: FeaturesWorkerOptions = {}): Promise<FeaturesWorker> {
  // Unpartitioned, a transaction names keys of many slots (README: Redis Cluster).
  if ((options.partitions ?? 1) > 1) return startPartitionedWorker(runtime, options);
  if (isClusterUrl(runtime.config.redisUrl))
    throw new ConfigError("the unpartitioned features worker does not run on a Redis Cluster: give it --partitions 2 or more (or one Redis)");
  const opts = loopOptions(options);
  const trendingSpec = options.trending === undefined ? TRENDING : options.trending;
  const itemView = opts.views.find((v) => v.entity === "item");
  const trending = trendingSpec && itemView ? { view: itemView, spec: trendingSpec } : null;
  const storeOptions = { featureTtlMs: runtime.config.featureTtlSeconds * 1000, ...options.store };
  const store: FeatureStore = new ThreadedWindowStore(runtime.redis(), runtime.config.redisUrl, runtime.config.namespace, opts.views, trending, storeOptions, {
    thread: options.storeThread,
    parser: options.parser,
    onFallback: (why) => runtime.log.warn({ why }, "feature batches run on the main thread"),
  });
  const nc = await runtime.nats();
  const js = nc.jetstream();
  const worker = await startWorkerLoop(runtime, js, store, opts, runtime.names.eventsSubject);
  runtime.log.info({ consumer: runtime.names.consumer(opts.consumerPart), maxBatch: opts.maxBatch }, "features worker consuming");
  return worker;
}

/** The worker loop's settings from a worker's options, defaults filled in. */
export function loopOptions(options: FeaturesWorkerOptions): Opts {
  const defined = definedFields(options);
  const { parser: _p, store: _s, trending: _t, storeThread: _st, partitions: _n, leaseTtlMs: _l, rebalanceMs: _r, ...rest } = defined;
  const merged = { ...DEFAULT_FEATURES_WORKER_OPTIONS, ...rest };
  return { ...merged, pullAhead: defined.pullAhead ?? 2 * merged.maxBatch };
}

/**
 * Runs the worker loop on a store: pulls from the durable consumer opts.consumerPart (created on
 * `filterSubject` if missing), applies, dead-letters, acks, closes due windows.
 */
export async function startWorkerLoop(runtime: Runtime, js: JetStreamClient, store: FeatureStore, opts: Opts, filterSubject: string): Promise<FeaturesWorker> {
  const nc = await runtime.nats();
  const durable = runtime.names.consumer(opts.consumerPart);
  const stream = runtime.names.eventsStream;
  const jsm = await nc.jetstreamManager();
  const consumer = {
    durable_name: durable,
    filter_subject: filterSubject,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    // Redelivery is retried until it succeeds: what cannot ever succeed is dead-lettered instead.
    max_deliver: -1,
    ack_wait: nanos(opts.ackWaitMs),
    max_ack_pending: opts.maxAckPending,
  };
  await ensureConsumer(jsm, stream, consumer);
  const source: MessageSource = {
    pull(onMessage, onStatus) {
      return createPullConsumer(nc, { stream, consumer: durable, maxWaiting: opts.pullAhead, onMessage, onStatus });
    },
    ensure: () => ensureConsumer(jsm, stream, consumer),
    async info() {
      return (await nc.jetstreamManager()).consumers.info(stream, durable);
    },
  };
  const worker = new Worker(runtime, js, store, opts);
  await worker.init();
  worker.start(source);
  return worker;
}

/** Where the worker's messages come from: the durable consumer, recreated if it disappears. */
interface MessageSource {
  pull(onMessage: (m: PulledMessage) => void, onStatus: (s: PullStatus) => void): PullConsumer;
  /** Creates the consumer if it is missing. */
  ensure(): Promise<void>;
  info(): Promise<{ num_pending: number; num_ack_pending: number }>;
}

export type Opts = Required<Omit<FeaturesWorkerOptions, Exclude<Unmerged, "pullAhead">>>;

/**
 * A failpoint for the crash tests: STREAMSERVE_FAILPOINT=features-after-commit:N kills the process
 * (SIGKILL, nothing cleaned up) once its Nth batch is committed to Redis and before its acks go
 * out, the one crash a random kill almost never hits (the gap is microseconds).
 */
const KILL_AFTER_COMMIT = Number(/^features-after-commit:(\d+)$/.exec(process.env.STREAMSERVE_FAILPOINT ?? "")?.[1] ?? 0);

/** How long stop() still waits once it closed the store of a worker that did not drain in time. */
const STOP_GRACE_MS = 2000;

class Worker implements FeaturesWorker {
  readonly name = "features";
  readonly stats: FeaturesWorkerStats = { messages: 0, batches: 0, applied: {}, duplicates: {}, late: {}, deadLetters: 0, windowsClosed: {}, conflicts: 0 };
  private readonly log: Logger;
  private readonly metrics: FeaturesMetrics;
  private high = -Infinity;
  private buffer: PulledMessage[] = [];
  private wakeProcessor?: () => void;
  private stopping = false;
  private stopped?: Promise<void>;
  private loops: Promise<void>[] = [];
  private consumer?: PullConsumer;
  private ensuring?: Promise<void>;
  private readonly abort = new AbortController();
  private closing?: Promise<number>;
  private commits = 0;
  private storeClosed = false;

  constructor(
    private readonly runtime: Runtime,
    private readonly js: JetStreamClient,
    readonly store: FeatureStore,
    private readonly opts: Opts,
  ) {
    this.log = runtime.log.child({ part: "features" });
    this.metrics = createFeaturesMetrics(runtime.metrics);
  }

  async init(): Promise<void> {
    this.high = await this.store.eventTimeHigh();
  }

  eventTimeHigh(): number {
    return this.high;
  }

  start(source: MessageSource): void {
    this.runtime.metrics.collect(this.metrics.watermarkLag, (g) => {
      if (Number.isFinite(this.high)) g.set((Date.now() - this.high) / 1000);
    });
    this.consumer = source.pull(
      (m) => {
        this.buffer.push(m);
        // Hold back (pull no more) while the buffer is full; processLoop resumes.
        if (this.buffer.length >= this.highWater()) this.consumer?.pause();
        this.wakeProcessor?.();
      },
      (status) => this.onConsumerStatus(status, source),
    );
    this.loops.push(
      this.processLoop(),
      this.every(this.opts.closeIntervalMs, () => this.closeDueWindows().then(() => undefined)),
      this.every(this.opts.lagIntervalMs, async () => {
        const info = await source.info();
        this.metrics.pending.set({ state: "undelivered" }, info.num_pending);
        this.metrics.pending.set({ state: "unacked" }, info.num_ack_pending);
      }),
    );
    if (this.opts.progressIntervalMs > 0) this.loops.push(this.progressLoop(() => source.info()));
  }

  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping = true;
      this.abort.abort();
      this.consumer?.stop();
      this.wakeProcessor?.();
      const drained = Promise.all(this.loops).then(() => true);
      if (!(await Promise.race([drained, sleep(this.opts.stopTimeoutMs, false, { ref: false })]))) {
        // Closing the store fails its Redis commands in flight (nothing of theirs is acked); what
        // still waits on another connection (the closer's ioredis, NATS) is not waited for long.
        this.log.warn({ stopTimeoutMs: this.opts.stopTimeoutMs, buffered: this.buffer.length }, "features worker did not drain in time; closing its store");
        this.closeStore();
        for (const m of this.buffer.splice(0)) m.nak(1000);
        const left = await Promise.race([drained, sleep(STOP_GRACE_MS, false, { ref: false })]);
        if (!left) this.log.warn("features worker stopped with work still waiting on Redis or NATS; none of it will be acked");
      }
      this.closeStore();
      this.log.info({ ...this.stats, eventTimeHigh: this.high }, "features worker stopped");
    })();
    return this.stopped;
  }

  private closeStore(): void {
    if (this.storeClosed) return;
    this.storeClosed = true;
    this.store.close();
  }

  private highWater(): number {
    return this.opts.maxBatch * (this.opts.maxInFlightBatches + 1);
  }

  /**
   * The consumer was deleted (by an operator, or with its stream) or does not answer: create it
   * again; pulling resumes by itself. Whatever is delivered twice that way is recognised by the store.
   */
  private onConsumerStatus(status: PullStatus, source: MessageSource): void {
    if (this.stopping || this.ensuring) return;
    this.log.warn({ status }, "features consumer needs attention; making sure it exists");
    this.ensuring = source
      .ensure()
      .catch((err) => this.log.warn({ err }, "cannot create the features consumer yet; retrying"))
      .finally(() => (this.ensuring = undefined));
  }

  /** Takes whatever has arrived (up to maxBatch) as one batch, keeping up to maxInFlightBatches going. */
  private async processLoop(): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    for (;;) {
      if (this.buffer.length === 0) {
        if (this.stopping) break;
        await new Promise<void>((r) => (this.wakeProcessor = r));
        this.wakeProcessor = undefined;
        continue;
      }
      if (inFlight.size >= this.opts.maxInFlightBatches) {
        await Promise.race(inFlight);
        continue;
      }
      // Let the consumer hand over what has already reached the client, so a busy stream forms
      // big batches while a quiet one is processed message by message.
      if (this.buffer.length < this.opts.maxBatch) await nextMacrotask();
      const batch = this.buffer.splice(0, this.opts.maxBatch);
      if (!this.stopping && this.buffer.length < this.highWater()) this.consumer?.resume();
      const p = this.processBatch(batch).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await Promise.all(inFlight);
  }

  private async processBatch(msgs: PulledMessage[]): Promise<void> {
    const started = performance.now();
    try {
      // Parsed and applied by the store (on its thread); what it refuses is dead-lettered.
      const { result, refused } = await this.store.applyMessages(packMessages(msgs));
      if (result && result.eventTimeHigh > this.high) this.high = result.eventTimeHigh;
      await this.deadLetter(refused.map(({ index, reason, detail }) => ({ m: msgs[index]!, reason, detail })));
      // Only batches that wrote count (a redelivered batch of duplicates commits nothing).
      if (result && result.transactionMs.length > 0 && KILL_AFTER_COMMIT > 0 && ++this.commits === KILL_AFTER_COMMIT) process.kill(process.pid, "SIGKILL");
      this.consumer!.ackAll(msgs);
      this.record(msgs, result?.counts ?? {}, refused.length, started);
      for (const ms of result?.transactionMs ?? []) this.metrics.transactionSeconds.observe(ms / 1000);
      if (result?.conflicts) {
        this.stats.conflicts += result.conflicts;
        this.metrics.conflicts.inc(result.conflicts);
      }
    } catch (err) {
      // Nothing was acked: ask for the batch again shortly. Whatever part of it reached Redis
      // will be recognised as already applied.
      this.log.error({ err, messages: msgs.length }, "feature batch failed; messages will be redelivered");
      for (const m of msgs) m.nak(1000);
      await sleep(200);
    }
  }

  private async deadLetter(dead: readonly { m: PulledMessage; reason: DeadLetterReason; detail: string }[]): Promise<void> {
    await Promise.all(
      dead.map(({ m, reason, detail }) => {
        const h = natsHeaders();
        for (const [k, v] of m.headers ?? []) if (k.toLowerCase() !== "nats-msg-id") for (const x of v) h.append(k, x);
        h.set(DEAD_LETTER_REASON_HEADER, reason);
        h.set(DEAD_LETTER_DETAIL_HEADER, detail.replace(/[\r\n]+/g, " ").slice(0, 512));
        h.set(DEAD_LETTER_SUBJECT_HEADER, m.subject);
        const seq = m.info().streamSequence;
        h.set(DEAD_LETTER_SEQUENCE_HEADER, String(seq));
        this.metrics.deadLetters.inc({ reason });
        // The id makes a redelivered bad message a duplicate dead letter that JetStream drops.
        return this.js.publish(this.runtime.names.deadLetterSubject, m.data, { msgID: `dl:${seq}`, headers: h });
      }),
    );
  }

  /** Closes every window the watermark has passed and publishes its final row to LOGS. */
  closeDueWindows(): Promise<number> {
    // One round at a time per worker, each starting after the previous one so that it sees the
    // newest watermark. Other workers may close the same windows concurrently, which costs a
    // duplicate publish that JetStream's Nats-Msg-Id dedup drops.
    const round = (this.closing ?? Promise.resolve(0)).catch(() => 0).then(() => this.closeRound());
    this.closing = round;
    void round
      .catch(() => undefined)
      .finally(() => {
        if (this.closing === round) this.closing = undefined;
      });
    return round;
  }

  private async closeRound(): Promise<number> {
    const high = await this.store.eventTimeHigh();
    if (high > this.high) this.high = high;
    let closed = 0;
    for (const view of this.opts.views) {
      const n = await this.store.closeDue(
        view,
        this.high,
        (rows) => Promise.all(rows.map((w) => this.publishWindow(w))).then(() => undefined),
        this.opts.closeBatch,
      );
      closed += n;
      add(this.stats.windowsClosed, view.entity, n);
      this.metrics.windowsClosed.inc({ entity: view.entity }, n);
    }
    return closed;
  }

  private async publishWindow(w: ClosedWindow): Promise<void> {
    const log = create(FeatureWindowLogSchema, {
      entityType: w.view.entity,
      entityId: w.entityId,
      windowStart: timestampFromMs(w.windowStart),
      windowEnd: timestampFromMs(w.windowEnd),
      features: w.features,
      eventCount: BigInt(w.eventCount),
    });
    await publishLogMessage(
      this.js,
      this.runtime.names.logsSubject("feature_window"),
      featureWindowMsgId(w.view.entity, w.entityId, w.windowStart),
      FeatureWindowLogSchema,
      log,
    );
  }

  private record(msgs: readonly PulledMessage[], counts: Record<string, ViewCounts>, dead: number, started: number): void {
    const m = this.metrics;
    this.stats.messages += msgs.length;
    this.stats.batches++;
    this.stats.deadLetters += dead;
    m.messages.inc(msgs.length);
    m.batchSeconds.observe((performance.now() - started) / 1000);
    m.batchSize.observe(msgs.length);
    for (const [entity, c] of Object.entries(counts)) {
      add(this.stats.applied, entity, c.applied);
      add(this.stats.duplicates, entity, c.duplicates);
      add(this.stats.late, entity, c.late);
      if (c.applied) m.applied.inc({ entity }, c.applied);
      if (c.duplicates) m.duplicates.inc({ entity }, c.duplicates);
      if (c.late) m.late.inc({ entity }, c.late);
    }
    // The first message of a batch is its oldest: it bounds how stale anything in it was when written.
    const oldest = msgs[0]!.info().timestampNanos;
    m.staleness.observe(Math.max(0, Date.now() - oldest / 1e6) / 1000);
  }

  private async every(intervalMs: number, task: () => Promise<void>): Promise<void> {
    while (!this.stopping) {
      try {
        await sleep(intervalMs, undefined, { signal: this.abort.signal });
      } catch {
        break;
      }
      try {
        await task();
      } catch (err) {
        if (!this.stopping) this.log.warn({ err }, "features background task failed; retrying");
      }
    }
  }

  private async progressLoop(consumerInfo: () => Promise<{ num_pending: number; num_ack_pending: number }>): Promise<void> {
    let last = { at: performance.now(), messages: 0 };
    // A line when something moved; an idle worker writes one every 30 intervals (5 min by default).
    const due = progressPacer({ idleEveryMs: 30 * this.opts.progressIntervalMs });
    await this.every(this.opts.progressIntervalMs, async () => {
      const now = performance.now();
      const info = await consumerInfo().catch(() => undefined);
      const { messages, late, duplicates, deadLetters, windowsClosed } = this.stats;
      if (!due({ messages, late, duplicates, deadLetters, windowsClosed, backlog: info?.num_pending, unacked: info?.num_ack_pending })) return;
      const rate = ((this.stats.messages - last.messages) * 1000) / (now - last.at);
      last = { at: now, messages: this.stats.messages };
      this.log.info(
        {
          eventsPerSecond: Math.round(rate),
          messages: this.stats.messages,
          late: this.stats.late,
          duplicates: this.stats.duplicates,
          deadLetters: this.stats.deadLetters,
          windowsClosed: this.stats.windowsClosed,
          backlog: info?.num_pending,
          unacked: info?.num_ack_pending,
          watermarkLagSeconds: Number.isFinite(this.high) ? Math.round((Date.now() - this.high) / 1000) : undefined,
        },
        "features progress",
      );
    });
  }
}

/** The Nats-Msg-Id of a closed window's row: the same window always gets the same id. */
export function featureWindowMsgId(entity: string, entityId: string, windowStart: number): string {
  return `fw:${entity}:${entityId}:${windowStart}`;
}

function add(into: Record<string, number>, key: string, n: number): void {
  if (n) into[key] = (into[key] ?? 0) + n;
}
