// Publishes prediction, exposure and outcome logs to JetStream without ever holding up a response.
//
// publish() only appends to an in-memory queue. A pump sends it to JetStream in batches (a batch's
// messages in order on one connection, batches one after another) and a writer appends it to the
// spill on disk (spill-queue.ts). Which of the two takes the queue is the publisher's state:
//   starting   listing the spill directory (a previous run's files mean replaying first)
//   memory     the pump sends the queue to JetStream
//   spilling   NATS is unreachable, or JetStream did not take a batch in time: the writer spills
//   replaying  NATS is up: the pump replays the spill oldest first while the writer appends new logs
//              behind it; once nothing is left on disk, memory again
//   closing    close(): publishTimeoutMs for the queue to reach JetStream, the rest to disk (fsynced)
//   closed
// Every change goes through setState(), which logs it (one warning per outage) and is the state
// gauge. The connection is NatsLink's (nats.js reconnects it); how a batch is sent is LogSender's.
//
// Invariant: a log leaves memory or the spill only once JetStream acknowledged it (or it is
// dropped and counted), and logs reach the stream in the order publish() accepted them. Every
// message carries a Nats-Msg-Id, so one sent again after an ambiguous failure (a timeout whose ack
// was lost) is stored once within the stream's duplicate window. README "Logs" says what a crash
// can lose.
import type { NatsConnection } from "nats";
import { LOG_CONTENT_TYPE } from "../lib/log-message.js";
import type { Logger } from "../lib/logger.js";
import type { Counter, MetricsRegistry } from "../lib/metrics.js";
import { ACKED, DROPPED, PENDING, PUBLISH_PATHS, type LogSender, type PublishPath } from "./log-sender.js";
import { NatsLink } from "./nats-link.js";
import type { SpillRecord } from "./spill-file.js";
import { SpillQueue } from "./spill-queue.js";
import { withDefaults } from "../lib/options.js";

export interface LogPublisherOptions {
  /**
   * Resolves to a connected NatsConnection; may reject or hang while NATS is down (a rejection is
   * retried with backoff). The connection stays the caller's and may be shared (the server passes
   * the runtime's): close() does not close it. Should it close, this is called again for another.
   */
  connect: () => Promise<NatsConnection>;
  /** Directory for spill files, e.g. `<dataDir>/spill/<namespace or "default">`; created if missing. One publisher per directory. */
  spillDir: string;
  log: Logger;
  /** Where buffer depth, spilled messages and publish/spill/replay/failure/drop counts are exposed. */
  metrics?: MetricsRegistry;
  /** Messages held in memory before the queue goes to disk instead. @default 10_000 */
  maxBuffered?: number;
  /** Messages sent per batch. @default 256 */
  batchSize?: number;
  /** How long an idle pipeline waits for a batch to fill before sending what it has. @default 20 */
  flushIntervalMs?: number;
  /** Wait for a JetStream ack (and for a connection) before spilling; also close()'s grace period. @default 2000 */
  publishTimeoutMs?: number;
  /** Size at which a spill file is closed (fsync) and a new one started. @default 32 MiB */
  spillFileBytes?: number;
  /** How a batch is sent (see log-sender.ts): core publishes with muxed acks, or nats.js's js.publish. @default "reply-mux" */
  publishPath?: PublishPath;
}

type ResolvedOptions = Required<Omit<LogPublisherOptions, "metrics">> & Pick<LogPublisherOptions, "metrics">;

const DEFAULTS = Object.freeze({
  maxBuffered: 10_000,
  batchSize: 256,
  flushIntervalMs: 20,
  publishTimeoutMs: 2000,
  spillFileBytes: 32 * 1024 * 1024,
  publishPath: "reply-mux" as PublishPath,
});

function resolveOptions(options: LogPublisherOptions): ResolvedOptions {
  // An option passed as undefined (straight from an unset config field) keeps its default.
  const o = withDefaults(DEFAULTS, options) as ResolvedOptions;
  for (const key of ["maxBuffered", "batchSize", "flushIntervalMs", "publishTimeoutMs", "spillFileBytes"] as const) {
    const v = o[key];
    if (!Number.isFinite(v) || v < (key === "flushIntervalMs" ? 0 : 1)) throw new RangeError(`LogPublisher ${key} must be a positive number, got ${v}`);
  }
  if (!PUBLISH_PATHS.includes(o.publishPath)) throw new RangeError(`LogPublisher publishPath must be one of ${PUBLISH_PATHS.join(", ")}, got ${o.publishPath}`);
  return o;
}

/** @deprecated the name lib/log-message.ts gives it: LOG_CONTENT_TYPE. */
export const DEFAULT_CONTENT_TYPE = LOG_CONTENT_TYPE;
/** The episode of a start that finds spill files: not an outage, nothing to warn about. */
const PREVIOUS_RUN = "previous run";
/** Records written to disk per write call. */
const WRITE_CHUNK = 4096;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5000;
/**
 * While the spill cannot be written (disk full, directory gone) nothing drains the queue. Past this
 * many times maxBuffered, new messages are then dropped and counted rather than growing memory
 * until the process dies. (A synchronous burst may exceed it while the disk is healthy: the writer
 * catches up on the next turn of the event loop.)
 */
const HARD_CAP_FACTOR = 10;
/** Subjects, msg ids and content types longer than this are refused at publish(): they are bugs. */
const MAX_FIELD_CHARS = 1024;

const validField = (s: unknown): s is string => typeof s === "string" && s.length > 0 && s.length <= MAX_FIELD_CHARS;

interface Queued extends SpillRecord {
  /** Acceptance number: flush() waits until everything up to its number is settled. */
  seq: number;
}

/** One stretch of logs going through the disk: from the first spill to the last replayed message. */
interface Episode {
  reason: string;
  since: number;
  spilled: number;
  replayed: number;
}

type State =
  | { kind: "starting" }
  | { kind: "memory" }
  | { kind: "spilling"; episode: Episode }
  | { kind: "replaying"; episode: Episode; retryDelay: number }
  /** toDisk: the queue goes to the spill; graceOver: publishTimeoutMs has passed, give up on what cannot be written. */
  | { kind: "closing"; toDisk: boolean; graceOver: boolean }
  | { kind: "closed" };

const STATE_KINDS: readonly State["kind"][] = ["starting", "memory", "spilling", "replaying", "closing", "closed"];

interface BatchOutcome {
  /** Index of the first message that must be sent again; -1 when every message was settled. */
  firstRetry: number;
  retry: number[];
  /** Messages acknowledged before firstRetry (all of them when firstRetry is -1). */
  ackedInOrder: number;
  acked: number;
  error?: unknown;
}

/** Lets a loop sleep until something it waits for may have changed, or a timeout passes. */
class Wake {
  private sleepers = new Set<() => void>();
  notify(): void {
    if (this.sleepers.size === 0) return;
    const sleepers = [...this.sleepers];
    this.sleepers.clear();
    for (const wake of sleepers) wake();
  }
  wait(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        if (timer) clearTimeout(timer);
        this.sleepers.delete(done);
        resolve();
      };
      this.sleepers.add(done);
      if (ms !== undefined) timer = setTimeout(done, Math.max(0, ms));
    });
  }
}

interface PublisherMetrics {
  published: Counter;
  spilled: Counter;
  replayed: Counter;
  failures: Counter;
  dropped: Counter<"reason">;
  outOfOrder: Counter;
  stateChanges: Counter<"to">;
}

export class LogPublisher {
  private readonly o: ResolvedOptions;
  private readonly log: Logger;
  private readonly m?: PublisherMetrics;
  private state: State = { kind: "starting" };

  /** Accepted messages not yet in flight or on disk, in acceptance order. */
  private queue: Queued[] = [];
  /** Messages of the in-memory batch awaiting acks. */
  private sending = 0;
  /** The chunk the writer is putting on disk. */
  private writing?: Queued[];
  private accepted = 0;
  /** Every message accepted up to this number is acknowledged, dropped or written to disk. */
  private settled = 0;
  private flushWaiters: { seq: number; resolve: () => void }[] = [];
  /** The spill refuses writes (disk full, directory gone): the hard cap applies, and the writer backs off. */
  private diskFailing = false;
  private writeRetryDelay = RETRY_MIN_MS;

  private readonly spill: SpillQueue;
  private readonly link: NatsLink;
  private readonly listed: Promise<void>;
  private readonly scanned: Promise<void>;
  private readonly loops: Promise<void>[];
  private closePromise?: Promise<void>;
  private readonly wake = { pump: new Wake(), writer: new Wake(), retry: new Wake() };
  private readonly reported = new Set<string>();

  constructor(options: LogPublisherOptions) {
    this.o = resolveOptions(options);
    this.log = options.log;
    this.m = options.metrics ? this.registerMetrics(options.metrics) : undefined;
    this.spill = new SpillQueue(this.o.spillDir, this.log, this.o.spillFileBytes);
    this.listed = this.spill.list().then((found) => {
      const s = this.state;
      if (s.kind === "starting") {
        this.setState(found ? { kind: "spilling", episode: { reason: PREVIOUS_RUN, since: Date.now(), spilled: 0, replayed: 0 } } : { kind: "memory" });
      } else if (s.kind === "closing" && found) {
        // Closed before the listing came back: new logs go behind the old ones.
        this.setState({ ...s, toDisk: true }, { reason: PREVIOUS_RUN });
      }
    });
    this.scanned = this.listed
      .then(() => this.spill.scan(() => this.state.kind === "closed"))
      .then(({ files, messages }) => {
        if (files) this.log.info({ files, messages, spillDir: this.o.spillDir }, "log publisher: replaying logs spilled by a previous run");
      });
    this.link = new NatsLink(this.o.connect, this.o.publishPath, this.log, () => this.linkChanged());
    this.loops = [this.pump(), this.writer()].map((loop) =>
      loop.catch((err) => this.log.error({ err }, "log publisher: a loop stopped on an unexpected error")),
    );
  }

  /** Messages in memory: queued, awaiting an ack, or being written to disk. */
  get depth(): number {
    return this.queue.length + this.sending + (this.writing?.length ?? 0);
  }

  /** Messages on disk waiting to be replayed to JetStream. */
  get spilled(): number {
    return this.spill.size;
  }

  /**
   * Accepts a message for JetStream. Never blocks, never throws: a message it cannot accept (after
   * close(), invalid arguments) is counted in `streamserve_log_dropped_total`. `payload` is kept by
   * reference and must not be modified afterwards.
   */
  publish(subject: string, msgId: string, payload: Uint8Array, contentType: string = LOG_CONTENT_TYPE): void {
    try {
      const kind = this.state.kind;
      if (kind === "closing" || kind === "closed") return this.drop("closed", 1);
      if (!validField(subject) || !validField(msgId) || !validField(contentType) || !(payload instanceof Uint8Array)) {
        return this.drop("invalid", 1);
      }
      if (this.diskFailing && this.depth >= this.o.maxBuffered * HARD_CAP_FACTOR) return this.drop("overflow", 1);
      const n = this.queue.push({ subject, msgId, contentType, payload, seq: ++this.accepted });
      if (kind === "spilling" || kind === "replaying") {
        this.wake.writer.notify();
      } else if (n >= this.o.maxBuffered) {
        // JetStream is slower than intake: stop waiting for the batch in flight and spill.
        this.link.abandon();
        this.wake.pump.notify();
      } else if (n === 1 || n === this.o.batchSize) {
        this.wake.pump.notify();
      }
    } catch (err) {
      this.drop("error", 1, err);
    }
  }

  /** Resolves when everything accepted so far is acknowledged by JetStream or written (and fsynced) to a spill file. */
  async flush(): Promise<void> {
    const target = this.accepted;
    if (this.settled < target) {
      await new Promise<void>((resolve) => {
        this.flushWaiters.push({ seq: target, resolve });
        this.wake.pump.notify();
        this.wake.writer.notify();
      });
    }
    await this.spill.sync();
  }

  /**
   * Stops accepting, gives JetStream up to publishTimeoutMs to take what is in memory and spills
   * the rest (fsynced). What is on disk is replayed by the next publisher on the same spillDir.
   * The NATS connection is left open: it is the caller's.
   */
  close(): Promise<void> {
    this.closePromise ??= this.shutdown();
    return this.closePromise;
  }

  private async shutdown(): Promise<void> {
    // Only from memory may the queue still go to JetStream: anywhere else, older logs wait on disk.
    const kind = this.state.kind;
    this.setState({ kind: "closing", toDisk: kind !== "memory" && kind !== "starting", graceOver: false });
    const grace = setTimeout(() => this.endGrace(), this.o.publishTimeoutMs);
    try {
      await this.flush();
    } finally {
      clearTimeout(grace);
    }
    this.setState({ kind: "closed" });
    this.link.abandon();
    await Promise.all(this.loops);
    this.link.stop();
    await this.spill.close();
    if (this.spill.size > 0) {
      this.log.info({ spilled: this.spill.size, spillDir: this.o.spillDir }, "log publisher closed; spilled logs stay on disk for the next start");
    }
  }

  private endGrace(): void {
    if (this.state.kind !== "closing") return;
    this.setState({ kind: "closing", toDisk: true, graceOver: true }, { reason: "closing" });
    this.link.abandon();
  }

  // ---- the state ----

  /** The one place the state changes: logs and counts the change, and wakes the loops. */
  private setState(next: State, why: { reason?: string; err?: unknown } = {}): void {
    const from = this.state;
    this.state = next;
    const spillDir = this.o.spillDir;
    if (next.kind !== from.kind) this.m?.stateChanges.inc({ to: next.kind });
    const wasFromMemory = from.kind === "memory" || (from.kind === "closing" && !from.toDisk);
    const isToDisk = next.kind === "spilling" || (next.kind === "closing" && next.toDisk);
    if (wasFromMemory && isToDisk && why.reason !== PREVIOUS_RUN) {
      this.log.warn({ reason: why.reason, err: why.err, spillDir }, "log publisher: JetStream not taking logs; spilling them to disk until it does");
    } else if (next.kind === "memory" && from.kind === "replaying") {
      const { reason, spilled, replayed, since } = from.episode;
      this.log.info(
        { reason, spilled, replayed, seconds: Math.round((Date.now() - since) / 1000) },
        "log publisher: spilled logs replayed to JetStream; publishing from memory again",
      );
    } else if (next.kind !== from.kind) {
      this.log.debug({ from: from.kind, to: next.kind, reason: why.reason }, "log publisher: state");
    }
    this.notifyAll();
  }

  /** The writer takes the queue to disk. */
  private get toDisk(): boolean {
    const s = this.state;
    return s.kind === "spilling" || s.kind === "replaying" || (s.kind === "closing" && s.toDisk) || s.kind === "closed";
  }

  /** The pump sends the queue to JetStream. */
  private get fromMemory(): boolean {
    return this.state.kind === "memory" || (this.state.kind === "closing" && !this.state.toDisk);
  }

  /** The pump could not get a batch to JetStream: put back what must be sent again, and let the writer take the queue. */
  private enterSpill(retry: Queued[], reason: string, err?: unknown): void {
    if (retry.length) this.queue.unshift(...retry);
    const s = this.state;
    if (s.kind === "memory") this.setState({ kind: "spilling", episode: { reason, since: Date.now(), spilled: 0, replayed: 0 } }, { reason, err });
    else if (s.kind === "closing" && !s.toDisk) this.setState({ ...s, toDisk: true }, { reason, err });
  }

  private linkChanged(): void {
    const s = this.state;
    if (s.kind === "replaying" && !this.link.sender) this.setState({ kind: "spilling", episode: s.episode }, { reason: this.link.reason });
    else this.notifyAll();
  }

  // ---- the pump: memory path and replay ----

  private async pump(): Promise<void> {
    await this.scanned;
    let backToBack = false;
    for (;;) {
      const s = this.state;
      try {
        switch (s.kind) {
          case "closed":
            return;
          case "memory":
            backToBack = await this.sendFromMemory(s, backToBack);
            break;
          case "closing":
            if (s.toDisk) await this.wake.pump.wait();
            else backToBack = await this.sendFromMemory(s, backToBack);
            break;
          case "spilling":
            if (this.link.sender) this.setState({ kind: "replaying", episode: s.episode, retryDelay: RETRY_MIN_MS });
            else await this.wake.pump.wait();
            break;
          case "replaying":
            await this.replay(s);
            break;
          case "starting":
            await this.wake.pump.wait();
            break;
        }
      } catch (err) {
        this.log.error({ err }, "log publisher: unexpected error in the publish loop; retrying");
        await this.wake.retry.wait(RETRY_MAX_MS);
      }
    }
  }

  /** Sends one batch from the queue; true when a full round went out (what queued meanwhile has already waited). */
  private async sendFromMemory(s: State, backToBack: boolean): Promise<boolean> {
    if (this.queue.length === 0) {
      this.settle(this.accepted);
      await this.wake.pump.wait();
      return false;
    }
    // An idle pipeline lingers so that a batch can fill.
    if (!backToBack && this.queue.length < this.o.batchSize && !this.urgent()) await this.wake.pump.wait(this.o.flushIntervalMs);
    if (this.state !== s || this.queue.length === 0) return false;
    if (this.pressure()) {
      this.enterSpill([], "buffer full");
      return false;
    }
    const sender = await this.readySender(this.o.publishTimeoutMs);
    if (this.state !== s) return false;
    if (!sender || this.pressure()) {
      this.enterSpill([], this.spillReason());
      return false;
    }
    const batch = this.queue.splice(0, this.o.batchSize);
    this.sending = batch.length;
    let out: BatchOutcome;
    try {
      out = await this.send(sender, batch);
    } finally {
      this.sending = 0;
    }
    this.m?.published.inc(out.acked);
    if (out.firstRetry < 0) {
      this.settle(batch[batch.length - 1]!.seq);
      return true;
    }
    // Messages JetStream already acknowledged are not spilled: replayed after the duplicate window
    // they would be stored twice.
    this.enterSpill(
      out.retry.map((i) => batch[i]!),
      this.spillReason(),
      out.error,
    );
    return false;
  }

  /**
   * The sender of a connection that is up, waiting up to `waitMs` for one. A connection known to
   * be down (nats.js is reconnecting it) answers at once: the in-memory path spills right away
   * rather than hold messages meanwhile.
   */
  private async readySender(waitMs: number): Promise<LogSender | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const sender = this.link.sender;
      if (sender) return sender;
      const left = deadline - Date.now();
      if (left <= 0 || !this.fromMemory || this.pressure() || this.link.state.kind === "down") return undefined;
      await this.wake.pump.wait(left);
    }
  }

  private async replay(s: Extract<State, { kind: "replaying" }>): Promise<void> {
    const sender = this.link.sender;
    if (!sender) return this.linkChanged();
    let batch: readonly SpillRecord[];
    try {
      batch = await this.spill.peek(this.o.batchSize);
      this.reported.delete("read");
    } catch (err) {
      // Unreadable for now (permissions, I/O): keep the file and try again later rather than lose it.
      this.report("read", "error", { err, spillDir: this.o.spillDir }, "log publisher: cannot read a spill file; retrying");
      return this.backoff(s);
    }
    if (batch.length === 0) return this.catchUp();
    if (this.state !== s) return this.spill.ack(0);
    const out = await this.send(sender, batch);
    // The file is settled up to the first message that must be sent again. Later ones JetStream
    // did take are sent again too: the stream's dedup stores them once, and they are counted then.
    const settledUpTo = out.firstRetry < 0 ? batch.length : out.firstRetry;
    this.spill.ack(settledUpTo);
    this.m?.published.inc(out.ackedInOrder);
    this.m?.replayed.inc(out.ackedInOrder);
    s.episode.replayed += out.ackedInOrder;
    if (out.firstRetry >= 0) await this.backoff(s);
    else s.retryDelay = RETRY_MIN_MS;
  }

  /** No closed spill file is left: replay what the writer has on disk, or hand back to the in-memory path. */
  private async catchUp(): Promise<void> {
    if (this.writing) return this.wake.pump.wait();
    if (this.spill.appending) return this.spill.rotate();
    // Everything on disk is acknowledged. What is still queued was accepted after all of it, so
    // the in-memory path can take it from here without breaking the order.
    this.setState({ kind: "memory" });
  }

  private async backoff(s: Extract<State, { kind: "replaying" }>): Promise<void> {
    await this.wake.retry.wait(s.retryDelay);
    s.retryDelay = Math.min(s.retryDelay * 2, RETRY_MAX_MS);
  }

  /** Sends a batch and sorts out what JetStream stored, refused for good, or must be sent again. */
  private async send(sender: LogSender, batch: readonly SpillRecord[]): Promise<BatchOutcome> {
    const { state, failError, dropError } = await sender.send(batch, this.o.publishTimeoutMs);
    const out: BatchOutcome = { firstRetry: -1, retry: [], ackedInOrder: 0, acked: 0, error: failError };
    let dropped = 0;
    let outOfOrder = 0;
    for (let i = 0; i < state.length; i++) {
      const s = state[i];
      if (s === ACKED) {
        out.acked++;
        if (out.firstRetry < 0) out.ackedInOrder++;
        else outOfOrder++;
      } else if (s === DROPPED) {
        dropped++;
      } else {
        if (out.firstRetry < 0) out.firstRetry = i;
        out.retry.push(i);
      }
    }
    if (out.retry.length) this.m?.failures.inc(out.retry.length);
    if (outOfOrder) this.m?.outOfOrder.inc(outOfOrder);
    if (dropped) this.drop("rejected", dropped, dropError);
    if (out.retry.length && !failError && state[out.firstRetry] === PENDING) out.error = new Error(`no JetStream ack within ${this.o.publishTimeoutMs} ms`);
    return out;
  }

  // ---- the spill writer ----

  private async writer(): Promise<void> {
    await this.listed;
    for (;;) {
      if (!this.toDisk || this.queue.length === 0) {
        if (this.state.kind === "closed") return;
        await this.wake.writer.wait();
        continue;
      }
      const chunk = this.queue.splice(0, WRITE_CHUNK);
      this.writing = chunk;
      try {
        await this.spill.append(chunk);
        this.writing = undefined;
        this.diskFailing = false;
        this.writeRetryDelay = RETRY_MIN_MS;
        this.reported.delete("write");
        this.m?.spilled.inc(chunk.length);
        const s = this.state;
        if (s.kind === "spilling" || s.kind === "replaying") s.episode.spilled += chunk.length;
        this.settle(chunk[chunk.length - 1]!.seq);
      } catch (err) {
        this.writing = undefined;
        this.queue.unshift(...chunk);
        this.diskFailing = true;
        this.m?.failures.inc(chunk.length);
        const s = this.state;
        if ((s.kind === "closing" && s.graceOver) || s.kind === "closed") {
          // Shutting down and the disk refuses: give up rather than hang the exit.
          const lost = this.queue.length;
          this.queue = [];
          this.drop("spill-failed", lost, err);
          this.settle(this.accepted);
        } else {
          this.report("write", "error", { err, spillDir: this.o.spillDir }, "log publisher: cannot write the spill; holding logs in memory and retrying");
          await this.wake.retry.wait(this.writeRetryDelay);
          this.writeRetryDelay = Math.min(this.writeRetryDelay * 2, RETRY_MAX_MS);
        }
      } finally {
        this.wake.pump.notify();
      }
    }
  }

  // ---- shared helpers ----

  private spillReason(): string {
    const s = this.state;
    if (s.kind === "closing" && s.graceOver) return "closing";
    if (this.pressure()) return "buffer full";
    return this.link.reason;
  }

  private pressure(): boolean {
    return this.fromMemory && this.queue.length >= this.o.maxBuffered;
  }

  private urgent(): boolean {
    return this.flushWaiters.length > 0 || this.state.kind === "closing";
  }

  private settle(seq: number): void {
    if (seq > this.settled) this.settled = seq;
    if (this.flushWaiters.length === 0) return;
    const waiting: typeof this.flushWaiters = [];
    for (const w of this.flushWaiters) {
      if (w.seq <= this.settled) w.resolve();
      else waiting.push(w);
    }
    this.flushWaiters = waiting;
  }

  private drop(reason: string, n: number, err?: unknown): void {
    this.m?.dropped.inc({ reason }, n);
    // One line per reason, the first time: the counter has the rest.
    this.report(`drop:${reason}`, "error", { reason, count: n, err }, "log publisher: dropped logs");
  }

  /** Logs a condition once until it is cleared (`reported.delete`), never once per message. */
  private report(key: string, level: "warn" | "error", fields: object, message: string): void {
    if (this.reported.has(key)) return;
    this.reported.add(key);
    this.log[level](fields, message);
  }

  private notifyAll(): void {
    this.wake.pump.notify();
    this.wake.writer.notify();
    this.wake.retry.notify();
  }

  private registerMetrics(registry: MetricsRegistry): PublisherMetrics {
    registry.gauge("streamserve_log_buffer_depth", "Log messages held in memory, queued or awaiting a JetStream ack", { collect: (g) => g.set(this.depth) });
    registry.gauge("streamserve_log_spill_messages", "Log messages in spill files waiting to be replayed to JetStream", {
      collect: (g) => g.set(this.spilled),
    });
    registry.gauge("streamserve_log_publisher_state", "1 for the log publisher's current state (memory, spilling, replaying, ...), 0 for the others", {
      labelNames: ["state"],
      collect: (g) => {
        for (const kind of STATE_KINDS) g.set({ state: kind }, this.state.kind === kind ? 1 : 0);
      },
    });
    return {
      published: registry.counter("streamserve_log_published_total", "Log messages acknowledged by JetStream, replayed ones included"),
      spilled: registry.counter("streamserve_log_spilled_total", "Log messages written to spill files"),
      replayed: registry.counter("streamserve_log_replayed_total", "Spilled log messages acknowledged by JetStream"),
      failures: registry.counter("streamserve_log_publish_failures_total", "Log messages whose publish (or spill write) failed or timed out and is retried"),
      dropped: registry.counter("streamserve_log_dropped_total", "Log messages given up on, by reason", { labelNames: ["reason"] }),
      outOfOrder: registry.counter("streamserve_log_out_of_order_total", "Log messages JetStream stored ahead of an earlier one that had to be sent again"),
      stateChanges: registry.counter("streamserve_log_publisher_state_changes_total", "Changes of the log publisher's state, by the state entered", {
        labelNames: ["to"],
      }),
    };
  }
}
