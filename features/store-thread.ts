// The window store's batch path on a worker thread of its own. A batch costs the store tens of
// microseconds of CPU per event (folding, encoding the Redis transaction, parsing replies): on
// the main thread that time is taken from reading NATS and, in `streamserve up`, from answering
// gRPC requests. The thread has its own Redis connections; the main thread keeps the window
// closer and the readers (ioredis), which write through the same store version, so the two
// stay consistent as two workers would.
//
// Batches cross as the raw messages (features/message-batch.ts) and are parsed on the thread.
// Feature views cross as data: a derived feature's compute() cannot, so the thread evaluates its
// declared formula (features/formula.ts, checked to agree with compute()). A view with a derived
// feature lacking a formula, a parser with a clock of its own, or a thread that does not start
// keeps the batches on the main thread, with the same results.
// This file is both the main thread's API and the thread's entry point (recognised by its workerData).
import { isMainThread, parentPort, workerData, type Worker } from "node:worker_threads";
import { names as namesOf } from "../lib/config.js";
import type { Redis } from "../lib/redis.js";
import { startModuleWorker } from "../lib/worker-thread.js";
import type { FeatureView } from "./definitions.js";
import { createEventParser, type EventParser, type EventParserOptions } from "./event-parser.js";
import { evaluateFormula, parseFormula } from "./formula.js";
import { batchTransferList, parseMessages, type MessageBatch, type RefusedMessage } from "./message-batch.js";
import { WindowStore, WindowStoreError, type ApplyResult, type ClosedWindow, type TrendingSpec, type WindowStoreOptions } from "./window-store.js";

const MARK = "streamserve-window-store";

/** What the features worker needs of a store: batches, the watermark's source, closing, reading. */
export interface FeatureStore {
  /** Parses a batch of messages and applies its events (WindowStore.apply); says which messages were refused. */
  applyMessages(batch: MessageBatch, now?: number): Promise<AppliedMessages>;
  eventTimeHigh(): Promise<number>;
  closeDue(view: FeatureView, high: number, publish: (rows: ClosedWindow[]) => Promise<void>, chunk?: number): Promise<number>;
  readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined>;
  /** Partitioned: commit under this lease epoch from now on (WindowStore.claim). */
  claim?(epoch: number): Promise<void>;
  close(): void;
}

export interface AppliedMessages {
  /** Undefined when no message held a valid event. */
  result?: ApplyResult;
  refused: RefusedMessage[];
}

export interface StoreThreadOptions {
  /** Run the batches on a thread of their own. @default true */
  thread?: boolean;
  parser?: EventParserOptions;
  /** Told why batches run on the main thread, when they do although a thread was asked for. */
  onFallback?(why: string): void;
}

interface Init {
  mark: typeof MARK;
  parser: Omit<EventParserOptions, "now">;
  redisUrl: string;
  namespace: string;
  views: FeatureView[];
  trending: { view: number; spec: TrendingSpec } | null;
  options: WindowStoreOptions;
}

type ToThread = { type: "apply"; id: number; batch: MessageBatch; now: number } | { type: "claim"; id: number; epoch: number } | { type: "close" };
type FromThread =
  | { type: "ready" }
  | { type: "applied"; id: number; applied: AppliedMessages }
  | { type: "claimed"; id: number }
  | { type: "failed"; id: number; message: string; name: string };

export class ThreadedWindowStore implements FeatureStore {
  /** The closer and readers, and the batch path itself when there is no thread. */
  private readonly local: WindowStore;
  private thread?: Worker;
  private readonly parse: EventParser;
  private readonly pending = new Map<number, { resolve(r: AppliedMessages | undefined): void; reject(err: Error): void }>();
  private nextId = 0;

  constructor(
    redis: Redis,
    redisUrl: string,
    namespace: string,
    views: readonly FeatureView[],
    trending: { view: FeatureView; spec: TrendingSpec } | null,
    options: WindowStoreOptions = {},
    threadOptions: StoreThreadOptions = {},
  ) {
    this.local = new WindowStore(redis, redisUrl, namesOf({ namespace }), views, trending, options);
    const { parser = {}, onFallback = () => undefined } = threadOptions;
    this.parse = createEventParser(parser);
    if (threadOptions.thread === false || options.projection) return;
    const noFormula = views.flatMap((v) => v.derived.filter((d) => !d.formula).map((d) => d.name));
    if (noFormula.length > 0) {
      onFallback(`derived features without a formula (${noFormula.join(", ")}) cannot be computed on a thread`);
      return;
    }
    const { now, ...parserData } = parser;
    if (now) {
      onFallback("an event parser with a clock of its own cannot run on a thread");
      return;
    }
    const init: Init = {
      mark: MARK,
      parser: parserData,
      redisUrl,
      namespace,
      views: views.map((v) => ({ ...v, derived: v.derived.map(({ compute: _, ...rest }) => rest) })) as FeatureView[],
      trending: trending ? { view: views.indexOf(trending.view), spec: trending.spec } : null,
      options,
    };
    try {
      this.start(init, onFallback);
    } catch (err) {
      onFallback((err as Error).message);
    }
  }

  private start(init: Init, onFallback: (why: string) => void): void {
    const thread = startModuleWorker(import.meta.url, init);
    this.thread = thread;
    let ready = false;
    thread.on("message", (m: FromThread) => {
      if (m.type === "ready") ready = true;
      else if (m.type === "applied") this.settle(m.id)?.resolve(m.applied);
      else if (m.type === "claimed") this.settle(m.id)?.resolve(undefined);
      else if (m.type === "failed") this.settle(m.id)?.reject(Object.assign(new WindowStoreError(m.message), { name: m.name }));
    });
    const gone = (why: string) => {
      if (this.thread !== thread) return;
      this.thread = undefined;
      // Batches in flight fail (the worker redelivers them); the next ones run here.
      for (const [id, p] of this.pending) {
        this.pending.delete(id);
        p.reject(new WindowStoreError(`the window store thread stopped: ${why}`));
      }
      onFallback(ready ? `the window store thread stopped (${why})` : `the window store thread did not start (${why})`);
    };
    thread.on("error", (err) => gone(err.message));
    thread.on("exit", (code) => gone(`exit code ${code}`));
  }

  private settle(id: number) {
    const p = this.pending.get(id);
    this.pending.delete(id);
    return p;
  }

  /** The batch's buffers move to the thread (they are unusable here afterwards). */
  applyMessages(batch: MessageBatch, now = Date.now()): Promise<AppliedMessages> {
    const thread = this.thread;
    if (!thread) return applyParsed(this.local, batch, this.parse, now);
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve: (r) => resolve(r!), reject });
      thread.postMessage({ type: "apply", id, batch, now } satisfies ToThread, batchTransferList(batch));
    });
  }

  /** On the thread when there is one (its pipeline commits), else here. */
  claim(epoch: number): Promise<void> {
    const thread = this.thread;
    if (!thread) return this.local.claim(epoch);
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve: () => resolve(), reject });
      thread.postMessage({ type: "claim", id, epoch } satisfies ToThread);
    });
  }

  eventTimeHigh(): Promise<number> {
    return this.local.eventTimeHigh();
  }

  closeDue(view: FeatureView, high: number, publish: (rows: ClosedWindow[]) => Promise<void>, chunk?: number): Promise<number> {
    return this.local.closeDue(view, high, publish, chunk);
  }

  readFeatures(view: FeatureView, entityId: string): Promise<Record<string, number> | undefined> {
    return this.local.readFeatures(view, entityId);
  }

  close(): void {
    const thread = this.thread;
    this.thread = undefined;
    if (thread) {
      thread.postMessage({ type: "close" } satisfies ToThread);
      // It exits once its connections are closed; a stuck one is not waited for.
      setTimeout(() => void thread.terminate(), 2000).unref();
    }
    this.local.close();
  }
}

async function applyParsed(store: WindowStore, batch: MessageBatch, parse: EventParser, now: number): Promise<AppliedMessages> {
  const { events, refused } = parseMessages(batch, parse);
  return { result: events.length > 0 ? await store.apply(events, now) : undefined, refused };
}

if (!isMainThread && (workerData as { mark?: string } | null)?.mark === MARK && parentPort) {
  const port = parentPort;
  const init = workerData as Init;
  const views: FeatureView[] = init.views.map((v) => ({
    ...v,
    derived: v.derived.map((d) => {
      const f = parseFormula(d.formula!);
      return { ...d, compute: (values: Readonly<Record<string, number>>) => evaluateFormula(f, values) };
    }),
  }));
  const trending = init.trending ? { view: views[init.trending.view]!, spec: init.trending.spec } : null;
  // No ioredis here: the thread only applies batches, which go through its own RESP connections.
  const store = new WindowStore(undefined as unknown as Redis, init.redisUrl, namesOf({ namespace: init.namespace }), views, trending, init.options);
  const parse = createEventParser(init.parser);
  port.on("message", (m: ToThread) => {
    if (m.type === "close") {
      store.close();
      port.close();
      return;
    }
    if (m.type === "claim") {
      store.claim(m.epoch).then(
        () => port.postMessage({ type: "claimed", id: m.id } satisfies FromThread),
        (err: Error) => port.postMessage({ type: "failed", id: m.id, message: err.message, name: err.name } satisfies FromThread),
      );
      return;
    }
    applyParsed(store, m.batch, parse, m.now).then(
      (applied) => port.postMessage({ type: "applied", id: m.id, applied } satisfies FromThread),
      (err: Error) => port.postMessage({ type: "failed", id: m.id, message: err.message, name: err.name } satisfies FromThread),
    );
  });
  port.postMessage({ type: "ready" } satisfies FromThread);
}
