// The features worker: a durable JetStream pull consumer on the activity events that keeps the
// window state, the online feature hashes and the trending set in Redis, dead-letters what it
// cannot parse, and publishes each window to LOGS once the watermark has passed it.
//
// Flow of one batch (one Redis round trip, whatever its size):
//   parse → dead letters | events → group by (view, entity, window) → drop late →
//   WindowStore.apply (scripts: window state, online hashes, trending; open-window index) and
//   dead letters stored → ack every message of the batch.
// Acks come last: a crash anywhere before them means redelivery, which the store turns into a
// no-op for what was already applied. Several batches may be in flight at once (and several
// workers may share the consumer); the store's scripts make their order irrelevant.
import { performance } from "node:perf_hooks";
import { setImmediate as nextMacrotask, setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AckPolicy, ConsumerEvents, DeliverPolicy, headers as natsHeaders, nanos, type ConsumerMessages, type JetStreamClient, type JsMsg } from "nats";
import type { Runtime, Part } from "../lib/runtime.js";
import { isNotFound } from "../lib/nats.js";
import type { Logger } from "../lib/logger.js";
import { FeatureWindowLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { FEATURE_VIEWS, TRENDING, type ActivityEvent, type FeatureView } from "./definitions.js";
import { createEventParser, type DeadLetterReason, type EventParser, type EventParserOptions } from "./event-parser.js";
import { windowStart, watermarkOf, isWindowClosed } from "./windows.js";
import { WindowStore, type ClosedWindow, type WindowGroup, type WindowStoreOptions } from "./window-store.js";
import type { TrendingSpec } from "./redis-scripts.js";
import { createFeaturesMetrics, type FeaturesMetrics } from "./metrics.js";

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
  /** Most messages applied in one batch. @default 2000 */
  maxBatch?: number;
  /** Batches whose Redis round trips may overlap. @default 2 */
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
  /** Most windows closed per round trip. @default 1000 */
  closeBatch?: number;
  /** Progress line in the log every so often; 0 turns it off. @default 10_000 */
  progressIntervalMs?: number;
  /** How often the consumer's backlog is read for the lag gauge. @default 5_000 */
  lagIntervalMs?: number;
  /** Durable consumer part name (names.consumer(part)). @default "features" */
  consumerPart?: string;
  parser?: EventParserOptions;
  store?: WindowStoreOptions;
}

export const DEFAULT_FEATURES_WORKER_OPTIONS: Readonly<Required<Omit<FeaturesWorkerOptions, "parser" | "store" | "trending" | "pullAhead">>> = Object.freeze({
  views: FEATURE_VIEWS,
  maxBatch: 2000,
  maxInFlightBatches: 2,
  ackWaitMs: 30_000,
  maxAckPending: 20_000,
  closeIntervalMs: 250,
  closeBatch: 1000,
  progressIntervalMs: 10_000,
  lagIntervalMs: 5_000,
  consumerPart: "features",
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
}

export interface FeaturesWorker extends Part {
  readonly stats: Readonly<FeaturesWorkerStats>;
  readonly store: WindowStore;
  /** The newest event time this worker knows of (−∞ before any). */
  eventTimeHigh(): number;
  /** Looks for due windows now and closes them (the closer also runs on its own timer). */
  closeDueWindows(): Promise<number>;
}

/** Starts a features worker on the runtime's connections; resolves once it is consuming. */
export async function startFeaturesWorker(runtime: Runtime, options: FeaturesWorkerOptions = {}): Promise<FeaturesWorker> {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as FeaturesWorkerOptions;
  const merged = { ...DEFAULT_FEATURES_WORKER_OPTIONS, ...defined };
  const opts: Opts = { ...merged, pullAhead: defined.pullAhead ?? 2 * merged.maxBatch };
  const trendingSpec = options.trending === undefined ? TRENDING : options.trending;
  const itemView = opts.views.find((v) => v.entity === "item");
  const store = new WindowStore(
    runtime.redis(),
    runtime.names,
    opts.views,
    trendingSpec && itemView ? { view: itemView, spec: trendingSpec } : null,
    { featureTtlMs: runtime.config.featureTtlSeconds * 1000, ...options.store },
  );
  await store.loadScripts();
  const nc = await runtime.nats();
  const js = nc.jetstream();
  const durable = runtime.names.consumer(opts.consumerPart);
  const stream = runtime.names.eventsStream;
  await ensureConsumer(runtime, durable, opts);
  const source: MessageSource = {
    async consume() {
      await ensureConsumer(runtime, durable, opts);
      const consumer = await js.consumers.get(stream, durable);
      return consumer.consume({ max_messages: opts.pullAhead });
    },
    async info() {
      return (await nc.jetstreamManager()).consumers.info(stream, durable);
    },
  };
  const worker = new Worker(runtime, js, store, opts, options.parser ?? {});
  await worker.init();
  worker.start(source);
  runtime.log.info({ consumer: durable, stream, maxBatch: opts.maxBatch }, "features worker consuming");
  return worker;
}

/** Where the worker's messages come from: the durable consumer, recreated if it disappears. */
interface MessageSource {
  consume(): Promise<ConsumerMessages>;
  info(): Promise<{ num_pending: number; num_ack_pending: number }>;
}

async function ensureConsumer(runtime: Runtime, durable: string, opts: Opts): Promise<void> {
  const jsm = await (await runtime.nats()).jetstreamManager();
  const stream = runtime.names.eventsStream;
  const tunable = { ack_wait: nanos(opts.ackWaitMs), max_ack_pending: opts.maxAckPending };
  try {
    await jsm.consumers.info(stream, durable);
    await jsm.consumers.update(stream, durable, tunable);
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  try {
    await jsm.consumers.add(stream, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: runtime.names.eventsSubject,
      // Redelivery is retried until it succeeds: what cannot ever succeed is dead-lettered instead.
      max_deliver: -1,
      ...tunable,
    });
  } catch (err) {
    // Another worker created it between our info and add: fine if it now exists.
    await jsm.consumers.info(stream, durable).catch(() => {
      throw err;
    });
  }
}

type Opts = Required<Omit<FeaturesWorkerOptions, "parser" | "store" | "trending">>;

class Worker implements FeaturesWorker {
  readonly name = "features";
  readonly stats: FeaturesWorkerStats = { messages: 0, batches: 0, applied: {}, duplicates: {}, late: {}, deadLetters: 0, windowsClosed: {} };
  private readonly log: Logger;
  private readonly metrics: FeaturesMetrics;
  private high = -Infinity;
  private buffer: JsMsg[] = [];
  private wakeProcessor?: () => void;
  private wakeReader?: () => void;
  private readerDone = false;
  private stopping = false;
  private stopped?: Promise<void>;
  private loops: Promise<void>[] = [];
  private messages?: ConsumerMessages;
  private readonly abort = new AbortController();
  /** Windows this process has put in the open index (a cache: the index itself is in Redis). */
  private readonly indexed = new Map<string, number>();
  private closing?: Promise<number>;
  private readonly parse: EventParser;

  constructor(
    private readonly runtime: Runtime,
    private readonly js: JetStreamClient,
    readonly store: WindowStore,
    private readonly opts: Opts,
    parserOptions: EventParserOptions,
  ) {
    this.parse = createEventParser(parserOptions);
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
    this.metrics.watermarkLag.collect((g) => {
      if (Number.isFinite(this.high)) g.set((Date.now() - this.high) / 1000);
    });
    this.loops.push(
      this.readLoop(source),
      this.processLoop(),
      this.every(this.opts.closeIntervalMs, () => this.closeDueWindows().then(() => undefined)),
      this.every(this.opts.lagIntervalMs, async () => {
        const info = await source.info();
        this.metrics.pending.set(info.num_pending, { state: "undelivered" });
        this.metrics.pending.set(info.num_ack_pending, { state: "unacked" });
      }),
    );
    if (this.opts.progressIntervalMs > 0) this.loops.push(this.progressLoop(() => source.info()));
  }

  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping = true;
      this.abort.abort();
      // stop(), not close(): close() resolves only once the read loop has drained the iterator,
      // which it cannot while it waits for buffer space (a deadlock on a busy stop).
      this.messages?.stop();
      this.wakeReader?.();
      this.wakeProcessor?.();
      await Promise.all(this.loops);
      this.log.info({ ...this.stats, eventTimeHigh: this.high }, "features worker stopped");
    })();
    return this.stopped;
  }

  /**
   * Moves delivered messages into the buffer, holding back (and so pulling no more) while it is
   * full. If the subscription ends or the consumer disappears (deleted by an operator, the stream
   * recreated), the consumer is created again and consumption resumes: whatever is delivered
   * twice that way is recognised by the store.
   */
  private async readLoop(source: MessageSource): Promise<void> {
    const highWater = this.opts.maxBatch * (this.opts.maxInFlightBatches + 1);
    while (!this.stopping) {
      let messages: ConsumerMessages;
      try {
        messages = this.messages = await source.consume();
      } catch (err) {
        this.log.warn({ err }, "cannot consume EVENTS yet; retrying");
        await sleep(1000, undefined, { signal: this.abort.signal }).catch(() => undefined);
        continue;
      }
      void this.watchConsumer(messages);
      try {
        for await (const m of messages) {
          this.buffer.push(m);
          this.wakeProcessor?.();
          while (this.buffer.length >= highWater && !this.stopping) await new Promise<void>((r) => (this.wakeReader = r));
          if (this.stopping) break;
        }
      } catch (err) {
        if (!this.stopping) this.log.warn({ err }, "consumer subscription failed");
      }
      if (!this.stopping) {
        this.log.warn("consumer subscription ended; consuming again");
        await sleep(500, undefined, { signal: this.abort.signal }).catch(() => undefined);
      }
    }
    this.readerDone = true;
    this.wakeProcessor?.();
  }

  /** Ends a subscription whose consumer is gone, so the read loop creates it again. */
  private async watchConsumer(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const s of await messages.status()) {
        if (s.type === ConsumerEvents.ConsumerDeleted || s.type === ConsumerEvents.ConsumerNotFound) {
          this.log.warn({ status: s.type }, "features consumer is gone; recreating it");
          messages.stop();
          return;
        }
      }
    } catch {
      /* the subscription closed */
    }
  }

  /** Takes whatever has arrived (up to maxBatch) as one batch, keeping up to maxInFlightBatches going. */
  private async processLoop(): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    for (;;) {
      if (this.buffer.length === 0) {
        if (this.readerDone) break;
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
      this.wakeReader?.();
      const p = this.processBatch(batch).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await Promise.all(inFlight);
  }

  private async processBatch(msgs: JsMsg[]): Promise<void> {
    const started = performance.now();
    try {
      const events: ActivityEvent[] = [];
      const dead: { m: JsMsg; reason: DeadLetterReason; detail: string }[] = [];
      for (const m of msgs) {
        const r = this.parse(m.data, m.headers?.get("Content-Type") || undefined);
        if (r.ok) events.push(r.event);
        else dead.push({ m, reason: r.reason, detail: r.detail });
      }
      // Dead letters are stored while Redis works; both finish before any ack.
      const deadLettered = this.deadLetter(dead);
      const { groups, late, newest } = this.group(events);
      // Windows this process has not indexed yet (after a restart: all of them, which re-indexes
      // whatever a crashed worker wrote but never got to index).
      const toIndex = groups.filter((g) => !this.indexed.has(indexKey(g)));
      const { results, eventTimeHigh } = await this.store.apply(groups, newest, toIndex);
      if (eventTimeHigh > this.high) this.high = eventTimeHigh;
      await deadLettered;
      for (const g of toIndex) this.indexed.set(indexKey(g), g.windowStart + g.view.windowMs);
      for (const m of msgs) m.ack();

      groups.forEach((g, i) => {
        const r = results[i]!;
        if (r.status === "closed") late[g.view.entity] = (late[g.view.entity] ?? 0) + g.events.length;
        add(this.stats.applied, g.view.entity, r.applied);
        add(this.stats.duplicates, g.view.entity, r.duplicates);
      });
      for (const [entity, n] of Object.entries(late)) add(this.stats.late, entity, n);
      this.record(msgs, groups, results, late, dead.length, started);
    } catch (err) {
      // Nothing was acked: ask for the batch again shortly. Whatever part of it reached Redis
      // will be recognised as already applied.
      this.log.error({ err, messages: msgs.length }, "feature batch failed; messages will be redelivered");
      for (const m of msgs) m.nak(1000);
      await sleep(200);
    }
  }

  private group(events: readonly ActivityEvent[]): { groups: WindowGroup[]; late: Record<string, number>; newest: number } {
    const groups = new Map<string, WindowGroup>();
    const late: Record<string, number> = {};
    let newest = -Infinity;
    for (const e of events) {
      if (e.event_time > newest) newest = e.event_time;
      for (const view of this.opts.views) {
        const ws = windowStart(e.event_time, view.windowMs);
        // Lateness against the watermark known before this batch, as Spark does per micro-batch.
        if (isWindowClosed(ws + view.windowMs, watermarkOf(view, this.high))) {
          late[view.entity] = (late[view.entity] ?? 0) + 1;
          continue;
        }
        const entityId = e[view.key];
        const k = `${view.entity}\u0000${entityId}\u0000${ws}`;
        let g = groups.get(k);
        if (!g) groups.set(k, (g = { view, entityId, windowStart: ws, events: [] }));
        g.events.push(e);
      }
    }
    return { groups: [...groups.values()], late, newest };
  }

  private async deadLetter(dead: readonly { m: JsMsg; reason: DeadLetterReason; detail: string }[]): Promise<void> {
    await Promise.all(
      dead.map(({ m, reason, detail }) => {
        const h = natsHeaders();
        for (const [k, v] of m.headers ?? []) if (k.toLowerCase() !== "nats-msg-id") for (const x of v) h.append(k, x);
        h.set(DEAD_LETTER_REASON_HEADER, reason);
        h.set(DEAD_LETTER_DETAIL_HEADER, detail.replace(/[\r\n]+/g, " ").slice(0, 512));
        h.set(DEAD_LETTER_SUBJECT_HEADER, m.subject);
        h.set(DEAD_LETTER_SEQUENCE_HEADER, String(m.seq));
        this.metrics.deadLetters.inc({ reason });
        // The id makes a redelivered bad message a duplicate dead letter that JetStream drops.
        return this.js.publish(this.runtime.names.deadLetterSubject, m.data, { msgID: `dl:${m.seq}`, headers: h });
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
    void round.catch(() => undefined).finally(() => {
      if (this.closing === round) this.closing = undefined;
    });
    return round;
  }

  private async closeRound(): Promise<number> {
    const high = await this.store.eventTimeHigh();
    if (high > this.high) this.high = high;
    let closed = 0;
    for (const view of this.opts.views) {
      const watermark = watermarkOf(view, this.high);
      for (;;) {
        const due = await this.store.dueWindows(view, watermark, this.opts.closeBatch);
        if (due.length === 0) break;
        const windows = await this.store.close(view, due);
        await Promise.all(windows.map((w) => (w && !w.published ? this.publishWindow(w) : undefined)));
        await this.store.markPublished(view, due);
        const n = windows.filter((w) => w && !w.published).length;
        closed += n;
        add(this.stats.windowsClosed, view.entity, n);
        this.metrics.windowsClosed.inc({ entity: view.entity }, n);
        if (due.length < this.opts.closeBatch) break;
      }
      for (const [k, end] of this.indexed) if (isWindowClosed(end, watermark) && k.startsWith(`${view.entity}\u0000`)) this.indexed.delete(k);
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
    const h = natsHeaders();
    h.set("Content-Type", "application/protobuf");
    await this.js.publish(this.runtime.names.logsSubject("feature_window"), toBinary(FeatureWindowLogSchema, log), {
      msgID: featureWindowMsgId(w.view.entity, w.entityId, w.windowStart),
      headers: h,
    });
  }

  private record(msgs: readonly JsMsg[], groups: readonly WindowGroup[], results: readonly { applied: number; duplicates: number }[], late: Record<string, number>, dead: number, started: number): void {
    const m = this.metrics;
    this.stats.messages += msgs.length;
    this.stats.batches++;
    this.stats.deadLetters += dead;
    m.messages.inc({}, msgs.length);
    m.batchSeconds.observe((performance.now() - started) / 1000);
    m.batchSize.observe(msgs.length);
    groups.forEach((g, i) => {
      m.applied.inc({ entity: g.view.entity }, results[i]!.applied);
      if (results[i]!.duplicates) m.duplicates.inc({ entity: g.view.entity }, results[i]!.duplicates);
    });
    for (const [entity, n] of Object.entries(late)) m.late.inc({ entity }, n);
    // The oldest message of the batch bounds how stale anything in it was when written.
    let oldest = Infinity;
    for (const msg of msgs) oldest = Math.min(oldest, msg.info.timestampNanos);
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
    await this.every(this.opts.progressIntervalMs, async () => {
      const now = performance.now();
      const info = await consumerInfo().catch(() => undefined);
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

function indexKey(g: { view: FeatureView; entityId: string; windowStart: number }): string {
  return `${g.view.entity}\u0000${g.entityId}\u0000${g.windowStart}`;
}

function add(into: Record<string, number>, key: string, n: number): void {
  if (n) into[key] = (into[key] ?? 0) + n;
}
