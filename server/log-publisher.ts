// Publishes prediction, exposure and outcome logs to JetStream without ever holding up a response.
//
// publish() only appends to an in-memory queue. One pump sends the queue to JetStream in batches
// (a batch's messages concurrently, batches one after another), so messages reach the stream in
// the order they were accepted. When NATS is unreachable, publishing fails or times out, or the
// queue outgrows `maxBuffered`, the pipeline switches to the spill: a writer appends the queue to
// files on disk, and the pump replays those files oldest first once JetStream answers. While
// anything is on disk, new messages go to disk behind it; only when the last spilled message is
// acknowledged does the in-memory path take over again. Memory stays bounded however long NATS is
// away; the disk is the buffer. Files left by a previous run (crash, restart) are replayed first.
//
// Every message carries a Nats-Msg-Id, so sending one again after an ambiguous failure (a timeout
// whose ack was lost) is stored once as long as the retry falls within the stream's duplicate
// window.
import { mkdir, unlink } from "node:fs/promises";
import { headers as natsHeaders, type JetStreamClient, type NatsConnection } from "nats";
import type { Logger } from "../lib/logger.js";
import type { Counter, MetricsRegistry } from "../lib/metrics.js";
import { encodeRecords, listSpillFiles, setAside, SpillFormatError, SpillReader, SpillWriter, type SpillRecord } from "./spill-file.js";

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
  /** Messages sent concurrently per batch. @default 256 */
  batchSize?: number;
  /** How long an idle pipeline waits for a batch to fill before sending what it has. @default 20 */
  flushIntervalMs?: number;
  /** Wait for a JetStream ack (and for a connection) before spilling; also close()'s grace period. @default 2000 */
  publishTimeoutMs?: number;
  /** Size at which a spill file is closed (fsync) and a new one started. @default 32 MiB */
  spillFileBytes?: number;
}

type ResolvedOptions = Required<Omit<LogPublisherOptions, "metrics">> & Pick<LogPublisherOptions, "metrics">;

const DEFAULTS = Object.freeze({
  maxBuffered: 10_000,
  batchSize: 256,
  flushIntervalMs: 20,
  publishTimeoutMs: 2000,
  spillFileBytes: 32 * 1024 * 1024,
});

function resolveOptions(options: LogPublisherOptions): ResolvedOptions {
  // An option passed as undefined (straight from an unset config field) keeps its default.
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const o = { ...DEFAULTS, ...given } as ResolvedOptions;
  for (const key of ["maxBuffered", "batchSize", "flushIntervalMs", "publishTimeoutMs", "spillFileBytes"] as const) {
    const v = o[key];
    if (!Number.isFinite(v) || v < (key === "flushIntervalMs" ? 0 : 1)) throw new RangeError(`LogPublisher ${key} must be a positive number, got ${v}`);
  }
  return o;
}

export const DEFAULT_CONTENT_TYPE = "application/protobuf";
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

/** Errors after which sending the same message again cannot succeed. */
const PERMANENT_CODES = new Set(["BAD_SUBJECT", "BAD_PAYLOAD", "BAD_HEADER", "MAX_PAYLOAD_EXCEEDED"]);
function isPermanent(err: unknown): boolean {
  const e = err as { code?: unknown; api_error?: { code?: number } } | undefined;
  // JetStream answers 400 to a message it will never store (e.g. larger than the stream's max_msg_size).
  return PERMANENT_CODES.has(String(e?.code)) || e?.api_error?.code === 400;
}

const validField = (s: unknown): s is string => typeof s === "string" && s.length > 0 && s.length <= MAX_FIELD_CHARS;

interface Queued extends SpillRecord {
  /** Acceptance number: flush() waits until everything up to its number is settled. */
  seq: number;
}

interface SpillFile {
  seq: number;
  path: string;
  /** Records not yet acknowledged. */
  records: number;
}

interface BatchOutcome {
  /** Index of the first message that must be sent again; -1 when every message was settled. */
  firstRetry: number;
  retry: number[];
  acked: boolean[];
  dropped: number;
  /** Messages JetStream stored although an earlier one in the same batch must be sent again. */
  outOfOrder: number;
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
}

export class LogPublisher {
  private readonly o: ResolvedOptions;
  private readonly log: Logger;
  private readonly m?: PublisherMetrics;

  // Accepted messages not yet in flight or on disk, in acceptance order.
  private queue: Queued[] = [];
  /** Messages taken off the queue and not yet settled: a batch awaiting acks, or a chunk being written. */
  private inflight = 0;
  private mode: "memory" | "spill" = "memory";
  private backToBack = false;
  private accepted = 0;
  /** Every message accepted up to this number is acknowledged, dropped or written to disk. */
  private settled = 0;
  private flushWaiters: { seq: number; resolve: () => void }[] = [];
  private batchAbort?: AbortController;

  private nc?: NatsConnection;
  private js?: JetStreamClient;
  private connected = false;
  private connecting = false;
  private connectFailures = 0;
  private connectTimer?: NodeJS.Timeout;

  /** Closed spill files waiting for replay, oldest first. */
  private files: SpillFile[] = [];
  private active?: { writer: SpillWriter; records: number };
  private reader?: { file: SpillFile; reader: SpillReader };
  private nextFileSeq = 1;
  private onDisk = 0;
  private unsynced = false;
  private writing = false;
  private spillFailing = false;
  private rotateRequested = false;
  private retryDelay = RETRY_MIN_MS;
  private writeRetryDelay = RETRY_MIN_MS;
  private episode?: { reason: string; since: number; spilled: number; replayed: number };
  private readonly reported = new Set<string>();

  private readonly listed: Promise<void>;
  private readonly scanned: Promise<void>;
  private readonly loops: Promise<void>[];
  private closing = false;
  private graceOver = false;
  private stopped = false;
  private closePromise?: Promise<void>;
  private readonly wake = { pump: new Wake(), writer: new Wake(), retry: new Wake() };

  constructor(options: LogPublisherOptions) {
    this.o = resolveOptions(options);
    this.log = options.log;
    this.m = options.metrics ? this.registerMetrics(options.metrics) : undefined;
    const listing = this.list();
    this.listed = listing;
    this.scanned = listing.then(() => this.scan());
    this.loops = [this.pump(), this.writer()].map((loop) =>
      loop.catch((err) => this.log.error({ err }, "log publisher: a loop stopped on an unexpected error")),
    );
    this.startConnecting();
  }

  /** Messages in memory: queued, awaiting an ack, or being written to disk. */
  get depth(): number {
    return this.queue.length + this.inflight;
  }

  /** Messages on disk waiting to be replayed to JetStream. */
  get spilled(): number {
    return this.onDisk;
  }

  /**
   * Accepts a message for JetStream. Never blocks, never throws: a message it cannot accept (after
   * close(), invalid arguments) is counted in `streamserve_log_dropped_total`. `payload` is kept by
   * reference and must not be modified afterwards.
   */
  publish(subject: string, msgId: string, payload: Uint8Array, contentType: string = DEFAULT_CONTENT_TYPE): void {
    try {
      if (this.closing) return this.drop("closed", 1);
      if (!validField(subject) || !validField(msgId) || !validField(contentType) || !(payload instanceof Uint8Array)) {
        return this.drop("invalid", 1);
      }
      if (this.spillFailing && this.depth >= this.o.maxBuffered * HARD_CAP_FACTOR) return this.drop("overflow", 1);
      const n = this.queue.push({ subject, msgId, contentType, payload, seq: ++this.accepted });
      if (this.mode === "spill") {
        this.wake.writer.notify();
      } else if (n >= this.o.maxBuffered) {
        // JetStream is slower than intake: stop waiting for the batch in flight and spill.
        this.batchAbort?.abort();
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
    if (this.unsynced && this.active) {
      this.unsynced = false;
      // A rotation may close the file meanwhile; it fsyncs on close, so a failure here loses nothing.
      await this.active.writer.sync().catch(() => undefined);
    }
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
    this.closing = true;
    const grace = setTimeout(() => {
      this.graceOver = true;
      this.batchAbort?.abort();
      this.notifyAll();
    }, this.o.publishTimeoutMs);
    this.notifyAll();
    try {
      await this.flush();
    } finally {
      clearTimeout(grace);
    }
    this.graceOver = true;
    this.stopped = true;
    this.batchAbort?.abort();
    this.notifyAll();
    await Promise.all(this.loops);
    if (this.connectTimer) clearTimeout(this.connectTimer);
    await this.reader?.reader.close().catch(() => undefined);
    this.reader = undefined;
    await this.closeActive();
    this.nc = this.js = undefined;
    if (this.onDisk > 0)
      this.log.info({ spilled: this.onDisk, spillDir: this.o.spillDir }, "log publisher closed; spilled logs stay on disk for the next start");
  }

  // ---- in-memory path and replay: the pump ----

  private async pump(): Promise<void> {
    await this.scanned;
    while (!this.stopped) {
      try {
        if (this.mode === "memory") await this.sendFromMemory();
        else if (this.closing) await this.wake.pump.wait();
        else await this.replay();
      } catch (err) {
        this.log.error({ err }, "log publisher: unexpected error in the publish loop; retrying");
        await this.wake.retry.wait(RETRY_MAX_MS);
      }
    }
  }

  private async sendFromMemory(): Promise<void> {
    if (this.queue.length === 0) {
      this.settle(this.accepted);
      this.backToBack = false;
      await this.wake.pump.wait();
      return;
    }
    // An idle pipeline lingers so that a batch can fill; one that just sent goes straight on, as
    // what queued meanwhile has already waited a round trip.
    if (!this.backToBack && this.queue.length < this.o.batchSize && !this.urgent()) {
      await this.wake.pump.wait(this.o.flushIntervalMs);
    }
    this.backToBack = false;
    if (this.queue.length === 0 || this.mode !== "memory") return;
    if (this.pressure() || this.graceOver) return this.enterSpill([], this.spillReason());
    const js = await this.jetstream(this.o.publishTimeoutMs, true);
    if (!js || this.pressure() || this.graceOver) return this.enterSpill([], this.spillReason());
    const batch = this.queue.splice(0, this.o.batchSize);
    this.inflight = batch.length;
    const out = await this.send(js, batch);
    this.inflight = 0;
    this.m?.published.inc(out.acked.filter(Boolean).length);
    if (out.firstRetry < 0) {
      this.settle(batch[batch.length - 1]!.seq);
      this.backToBack = true;
      return;
    }
    // Messages JetStream already acknowledged are not spilled: replayed after the duplicate window
    // they would be stored twice.
    this.enterSpill(
      out.retry.map((i) => batch[i]!),
      this.spillReason(),
      out.error,
    );
  }

  private async replay(): Promise<void> {
    const js = await this.jetstream(RETRY_MAX_MS);
    if (!js) return;
    const file = this.files[0];
    if (!file) return this.catchUp();
    const current = await this.openReader(file);
    if (!current) return;
    const { records: batch, unreadableBytes, done } = await current.reader.read(this.o.batchSize);
    if (batch.length > 0) {
      const out = await this.send(js, batch);
      // The file is settled up to the first message that must be sent again. Later ones JetStream
      // did take are sent again too: the stream's dedup stores them once, and they are counted then.
      const settledUpTo = out.firstRetry < 0 ? batch.length : out.firstRetry;
      const acked = out.acked.slice(0, settledUpTo).filter(Boolean).length;
      this.forget(file, settledUpTo);
      this.m?.published.inc(acked);
      this.m?.replayed.inc(acked);
      if (this.episode) this.episode.replayed += acked;
      if (out.firstRetry >= 0) {
        current.reader.seek(batch[out.firstRetry]!.start);
        await this.backoff();
        return;
      }
      this.retryDelay = RETRY_MIN_MS;
      return;
    }
    if (!done) return;
    if (unreadableBytes > 0) {
      this.log.warn(
        { file: file.path, bytes: unreadableBytes },
        "log publisher: skipped the unreadable end of a spill file (a write torn by a crash, or damage)",
      );
    }
    await current.reader.close();
    this.reader = undefined;
    await unlink(file.path);
    this.files.shift();
    this.forget(file, file.records);
  }

  /** No closed file is left: replay what the writer has on disk, or hand back to the in-memory path. */
  private async catchUp(): Promise<void> {
    if (this.writing || this.rotateRequested) return this.wake.pump.wait();
    if (this.active && this.active.records > 0) {
      this.rotateRequested = true;
      this.wake.writer.notify();
      return this.wake.pump.wait();
    }
    // Everything on disk is acknowledged. What is still queued was accepted after all of it, so
    // the in-memory path can take it from here without breaking the order.
    this.mode = "memory";
    this.retryDelay = RETRY_MIN_MS;
    const episode = this.episode;
    this.episode = undefined;
    if (episode) {
      this.log.info(
        { reason: episode.reason, spilled: episode.spilled, replayed: episode.replayed, seconds: Math.round((Date.now() - episode.since) / 1000) },
        "log publisher: spilled logs replayed to JetStream; publishing from memory again",
      );
    }
    this.wake.pump.notify();
    await this.closeActive();
  }

  private async openReader(file: SpillFile) {
    if (this.reader?.file === file) return this.reader;
    try {
      const reader = await SpillReader.open(file.path);
      this.reported.delete("open");
      if (reader) return (this.reader = { file, reader });
      await unlink(file.path); // created just before a crash: holds nothing
    } catch (err) {
      if (err instanceof SpillFormatError) {
        const kept = await setAside(file.path);
        this.log.error({ err, kept }, "log publisher: a spill file is not in a format this version reads; set aside");
      } else if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        // Unreadable for now (permissions, I/O): keep it and try again later rather than lose it.
        this.report("open", "error", { err, file: file.path }, "log publisher: cannot read a spill file; retrying");
        await this.backoff();
        return undefined;
      }
    }
    this.files.shift();
    this.forget(file, file.records);
    return undefined;
  }

  /** Sends a batch concurrently and waits until every message is settled or the batch is abandoned. */
  private async send(js: JetStreamClient, batch: readonly SpillRecord[]): Promise<BatchOutcome> {
    const PENDING = 0,
      ACKED = 1,
      DROPPED = 2,
      FAILED = 3;
    const state = new Array<number>(batch.length).fill(PENDING);
    let firstError: unknown;
    let dropError: unknown;
    const abort = (this.batchAbort = new AbortController());
    const abandoned = new Promise<void>((resolve) => abort.signal.addEventListener("abort", () => resolve(), { once: true }));
    const all = Promise.all(
      batch.map((r, i) => {
        const h = natsHeaders();
        h.set("Content-Type", r.contentType);
        return js.publish(r.subject, r.payload, { msgID: r.msgId, headers: h, timeout: this.o.publishTimeoutMs }).then(
          () => {
            state[i] = ACKED;
          },
          (err: unknown) => {
            if (isPermanent(err)) {
              state[i] = DROPPED;
              dropError ??= err;
            } else {
              state[i] = FAILED;
              firstError ??= err;
            }
          },
        );
      }),
    );
    // Abandoned on disconnect, on close()'s deadline, or (in-memory path) when the queue fills up:
    // what is unacknowledged by then is sent again later, and the stream's dedup absorbs late acks.
    await Promise.race([all, abandoned]);
    if (this.batchAbort === abort) this.batchAbort = undefined;

    const out: BatchOutcome = { firstRetry: -1, retry: [], acked: state.map((s) => s === ACKED), dropped: 0, outOfOrder: 0, error: firstError };
    for (let i = 0; i < state.length; i++) {
      const s = state[i];
      if (s === PENDING || s === FAILED) {
        if (out.firstRetry < 0) out.firstRetry = i;
        out.retry.push(i);
      } else if (s === DROPPED) {
        out.dropped++;
      } else if (out.firstRetry >= 0) {
        out.outOfOrder++;
      }
    }
    if (out.retry.length) this.m?.failures.inc(out.retry.length);
    if (out.outOfOrder) this.m?.outOfOrder.inc(out.outOfOrder);
    if (out.dropped) this.drop("rejected", out.dropped, dropError);
    return out;
  }

  // ---- the spill writer ----

  private async writer(): Promise<void> {
    await this.listed;
    for (;;) {
      if (this.rotateRequested) {
        await this.rotate();
        this.rotateRequested = false;
        this.wake.pump.notify();
        continue;
      }
      if (this.mode !== "spill" || this.queue.length === 0) {
        if (this.stopped) return;
        await this.wake.writer.wait();
        continue;
      }
      this.writing = true;
      const chunk = this.queue.splice(0, WRITE_CHUNK);
      this.inflight = chunk.length;
      try {
        await this.write(chunk);
        this.spillFailing = false;
        this.writeRetryDelay = RETRY_MIN_MS;
        this.settle(chunk[chunk.length - 1]!.seq);
      } catch (err) {
        this.queue.unshift(...chunk);
        this.inflight = 0;
        this.spillFailing = true;
        this.m?.failures.inc(chunk.length);
        if (this.graceOver) {
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
        this.inflight = 0;
        this.writing = false;
        this.wake.pump.notify();
      }
    }
  }

  private async write(chunk: Queued[]): Promise<void> {
    const data = encodeRecords(chunk);
    if (this.active && this.active.writer.bytes >= this.o.spillFileBytes) await this.rotate();
    if (!this.active) this.active = { writer: await SpillWriter.create(this.o.spillDir, this.nextFileSeq++), records: 0 };
    await this.active.writer.append(data);
    this.active.records += chunk.length;
    this.onDisk += chunk.length;
    this.unsynced = true;
    this.m?.spilled.inc(chunk.length);
    if (this.episode) this.episode.spilled += chunk.length;
    this.reported.delete("write");
  }

  /** Closes (fsync) the file being written and queues it for replay. */
  private async rotate(): Promise<void> {
    const active = this.active;
    if (!active) return;
    this.active = undefined;
    try {
      await active.writer.close();
    } catch (err) {
      // The records were written; only their durability against power loss is in doubt.
      this.log.warn({ err, file: active.writer.path }, "log publisher: fsync of a spill file failed");
    }
    if (active.records === 0) {
      await unlink(active.writer.path).catch(() => undefined);
      return;
    }
    this.files.push({ seq: active.writer.seq, path: active.writer.path, records: active.records });
    this.files.sort((a, b) => a.seq - b.seq);
  }

  private async closeActive(): Promise<void> {
    const active = this.active;
    if (!active) return;
    this.active = undefined;
    await active.writer.close().catch((err) => this.log.warn({ err }, "log publisher: closing a spill file failed"));
    if (active.records === 0) await unlink(active.writer.path).catch(() => undefined);
  }

  /** Lists the spill directory: files from a previous run mean starting on the spill path. */
  private async list(): Promise<void> {
    try {
      await mkdir(this.o.spillDir, { recursive: true });
      const found = await listSpillFiles(this.o.spillDir);
      this.files = found.map((f) => ({ ...f, records: 0 }));
      this.nextFileSeq = (found[found.length - 1]?.seq ?? 0) + 1;
      if (found.length) {
        this.mode = "spill";
        this.episode = { reason: "previous run", since: Date.now(), spilled: 0, replayed: 0 };
      }
    } catch (err) {
      // The writer will meet the same error and report it; memory keeps working meanwhile.
      this.log.error({ err, spillDir: this.o.spillDir }, "log publisher: cannot use the spill directory");
    }
  }

  /** Counts the records in a previous run's files, so that `spilled` is right from the start. */
  private async scan(): Promise<void> {
    for (const file of [...this.files]) {
      if (this.stopped) return;
      try {
        const reader = await SpillReader.open(file.path);
        if (!reader) continue;
        try {
          for (;;) {
            const { records, done } = await reader.read(WRITE_CHUNK);
            file.records += records.length;
            this.onDisk += records.length;
            if (done) break;
          }
        } finally {
          await reader.close();
        }
      } catch {
        // The replay meets the same file and deals with it (sets it aside or retries).
      }
    }
    if (this.files.length) {
      this.log.info(
        { files: this.files.length, messages: this.files.reduce((n, f) => n + f.records, 0), spillDir: this.o.spillDir },
        "log publisher: replaying logs spilled by a previous run",
      );
    }
  }

  // ---- shared helpers ----

  private enterSpill(retry: Queued[], reason: string, err?: unknown): void {
    if (retry.length) this.queue.unshift(...retry);
    this.mode = "spill";
    this.wake.writer.notify();
    if (!this.episode) {
      this.episode = { reason, since: Date.now(), spilled: 0, replayed: 0 };
      this.log.warn({ reason, err, spillDir: this.o.spillDir }, "log publisher: JetStream not taking logs; spilling them to disk until it does");
    }
  }

  private spillReason(): string {
    if (this.graceOver) return "closing";
    if (!this.nc) return "NATS unreachable";
    if (!this.connected) return "NATS disconnected";
    if (this.pressure()) return "buffer full";
    return "publish failed";
  }

  private pressure(): boolean {
    return this.mode === "memory" && this.queue.length >= this.o.maxBuffered;
  }

  private urgent(): boolean {
    return this.flushWaiters.length > 0 || this.closing;
  }

  /**
   * A JetStream client on a connected connection, waiting up to `waitMs` for one. With
   * `failFast`, a connection known to be down (it reported a disconnect) answers at once: the
   * in-memory path spills right away rather than hold messages while the client reconnects.
   */
  private async jetstream(waitMs: number, failFast = false): Promise<JetStreamClient | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      if (this.js && this.connected) return this.js;
      const left = deadline - Date.now();
      if (left <= 0 || this.stopped || this.graceOver || this.pressure() || (failFast && this.nc)) return undefined;
      this.startConnecting();
      await this.wake.pump.wait(left);
    }
  }

  private startConnecting(): void {
    if (this.nc || this.connecting || this.connectTimer || this.stopped) return;
    this.connecting = true;
    let attempt: Promise<NatsConnection>;
    try {
      attempt = this.o.connect();
    } catch (err) {
      attempt = Promise.reject(err);
    }
    const failed = (err: unknown) => {
      this.connecting = false;
      this.connectFailures++;
      if (this.connectFailures === 1) this.log.warn({ err }, "log publisher: cannot connect to NATS; retrying");
      if (this.stopped) return;
      const delay = Math.min(RETRY_MIN_MS * 2 ** (this.connectFailures - 1), RETRY_MAX_MS);
      this.connectTimer = setTimeout(() => {
        this.connectTimer = undefined;
        this.startConnecting();
      }, delay);
    };
    attempt.then((nc) => {
      // A factory that hands back a connection already closed would otherwise be asked again at once, forever.
      if (nc.isClosed()) return failed(new Error("connect() returned a closed NATS connection"));
      this.connecting = false;
      if (!this.stopped) this.adopt(nc);
    }, failed);
  }

  private adopt(nc: NatsConnection): void {
    this.nc = nc;
    this.js = nc.jetstream();
    this.connected = true;
    this.connectFailures = 0;
    void (async () => {
      for await (const s of nc.status()) {
        if (this.stopped || this.nc !== nc) break;
        if (s.type === "disconnect") {
          this.connected = false;
          // Acks for what is in flight will not come; do not sit out the timeout.
          this.batchAbort?.abort();
        } else if (s.type === "reconnect") {
          this.connected = true;
          this.notifyAll();
        }
      }
    })().catch(() => undefined);
    void nc.closed().then(() => {
      if (this.nc !== nc) return;
      this.nc = this.js = undefined;
      this.connected = false;
      this.batchAbort?.abort();
      this.startConnecting();
      this.notifyAll();
    });
    this.notifyAll();
  }

  private async backoff(): Promise<void> {
    await this.wake.retry.wait(this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
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

  /** `n` records of `file` are acknowledged or dropped: no longer waiting on disk. */
  private forget(file: SpillFile, n: number): void {
    const k = Math.min(n, file.records);
    file.records -= k;
    this.onDisk = Math.max(0, this.onDisk - k);
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
    return {
      published: registry.counter("streamserve_log_published_total", "Log messages acknowledged by JetStream, replayed ones included"),
      spilled: registry.counter("streamserve_log_spilled_total", "Log messages written to spill files"),
      replayed: registry.counter("streamserve_log_replayed_total", "Spilled log messages acknowledged by JetStream"),
      failures: registry.counter("streamserve_log_publish_failures_total", "Log messages whose publish (or spill write) failed or timed out and is retried"),
      dropped: registry.counter("streamserve_log_dropped_total", "Log messages given up on, by reason", { labelNames: ["reason"] }),
      outOfOrder: registry.counter("streamserve_log_out_of_order_total", "Log messages JetStream stored ahead of an earlier one that had to be sent again"),
    };
  }
}
