// Sends one batch of log messages to JetStream and tells, per message, whether the stream stored it.
// Two ways, chosen by LogPublisherOptions.publishPath:
//   "reply-mux" (default): a core publish per message, its reply subject a token under one wildcard
//     subscription of the sender's; the acks (JetStream PubAck JSON) are matched to messages by token,
//     and one timer bounds the whole batch. No per-message inbox, timer or promise.
//   "jetstream": nats.js's js.publish per message, the library's own request path (kept to compare
//     against and to fall back on; it costs a request, a timer and a promise per message).
// Invariant: a message is ACKED only on a PubAck naming a stream (a duplicate's included).
import { createInbox, type JetStreamClient, type Msg, type NatsConnection, type NatsError, type Subscription } from "nats";
import { logHeaders, publishLogBytes } from "../lib/log-message.js";
import type { SpillRecord } from "./spill-file.js";

export type PublishPath = "reply-mux" | "jetstream";
export const PUBLISH_PATHS: readonly PublishPath[] = ["reply-mux", "jetstream"];

/** A message's fate in a batch. */
export const PENDING = 0;
export const ACKED = 1;
/** Refused for good (too large for the stream, a bad subject): sending it again cannot succeed. */
export const DROPPED = 2;
/** Failed or timed out: to be sent again. */
export const FAILED = 3;

export interface BatchResult {
  /** One of PENDING / ACKED / DROPPED / FAILED per message, in batch order. */
  state: Uint8Array;
  /** The first error of a FAILED message, and of a DROPPED one (for the log line). */
  failError?: unknown;
  dropError?: unknown;
}

export interface LogSender {
  /**
   * Publishes the batch in order and resolves once every message is settled, `timeoutMs` has
   * passed, or abandon() was called; what is PENDING then had no answer. One batch at a time.
   */
  send(batch: readonly SpillRecord[], timeoutMs: number): Promise<BatchResult>;
  /** Ends the batch in flight now (its acks will not come: a disconnect, or the caller gave up on it). */
  abandon(): void;
  /** Ends the batch in flight and releases what the sender holds on the connection (never closes it). */
  close(): void;
}

export function createSender(nc: NatsConnection, path: PublishPath): LogSender {
  return path === "jetstream" ? new JetStreamClientSender(nc.jetstream()) : new ReplyMuxSender(nc);
}

/** Errors after which sending the same message again cannot succeed. */
const PERMANENT_CODES = new Set(["BAD_SUBJECT", "BAD_PAYLOAD", "BAD_HEADER", "MAX_PAYLOAD_EXCEEDED"]);
export function isPermanent(err: unknown): boolean {
  const e = err as { code?: unknown; api_error?: { code?: number } } | undefined;
  // JetStream answers 400 to a message it will never store (e.g. larger than the stream's max_msg_size).
  return PERMANENT_CODES.has(String(e?.code)) || e?.api_error?.code === 400;
}

/** A JetStream API error as nats.js's own path reports it (code, api_error), so both paths log alike. */
class JetStreamAckError extends Error {
  override name = "JetStreamAckError";
  constructor(
    readonly code: string,
    readonly api_error?: { code: number; err_code?: number; description?: string },
  ) {
    super(api_error?.description ?? code);
  }
}

interface Batch {
  /** Reply token of the batch's first message; message i answers on token base + i. */
  base: number;
  state: Uint8Array;
  left: number;
  failError?: unknown;
  dropError?: unknown;
  timer?: NodeJS.Timeout;
  finish: () => void;
}

class ReplyMuxSender implements LogSender {
  private readonly inbox = `${createInbox()}.`;
  private readonly sub: Subscription;
  private next = 0;
  private batch?: Batch;

  constructor(private readonly nc: NatsConnection) {
    // nats.js subscribes again by itself after a reconnect.
    this.sub = nc.subscribe(`${this.inbox}*`, { callback: (err, msg) => this.answer(err, msg) });
  }

  send(records: readonly SpillRecord[], timeoutMs: number): Promise<BatchResult> {
    if (this.batch) throw new Error("ReplyMuxSender: a batch is already in flight");
    return new Promise((resolve) => {
      const b: Batch = {
        base: this.next,
        state: new Uint8Array(records.length),
        left: records.length,
        finish: () => {
          clearTimeout(b.timer);
          if (this.batch === b) this.batch = undefined;
          resolve({ state: b.state, failError: b.failError, dropError: b.dropError });
        },
      };
      this.next += records.length;
      this.batch = b;
      for (let i = 0; i < records.length; i++) {
        const r = records[i]!;
        try {
          this.nc.publish(r.subject, r.payload, { reply: this.inbox + (b.base + i), headers: logHeaders(r.msgId, r.contentType) });
        } catch (err) {
          // Thrown at once: too large for the server, a closed or draining connection.
          settle(b, i, isPermanent(err) ? DROPPED : FAILED, err);
        }
      }
      // settle() finished the batch already if every message failed at once.
      if (records.length === 0) b.finish();
      else if (this.batch === b) b.timer = setTimeout(b.finish, timeoutMs);
    });
  }

  abandon(): void {
    this.batch?.finish();
  }

  close(): void {
    this.abandon();
    if (!this.nc.isClosed()) this.sub.unsubscribe();
  }

  private answer(err: NatsError | null, msg: Msg): void {
    const b = this.batch;
    if (err || !b) return; // a late ack of an abandoned batch: its messages are sent again, and dedup absorbs them
    const i = Number(msg.subject.slice(this.inbox.length)) - b.base;
    if (!(i >= 0 && i < b.state.length) || b.state[i] !== PENDING) return;
    const status = msg.headers;
    if (status?.hasError) {
      // 503: no responders, the stream is not there (yet).
      settle(b, i, FAILED, new JetStreamAckError(String(status.code), { code: status.code, description: status.description }));
      return;
    }
    let ack: { stream?: unknown; error?: { code: number; err_code?: number; description?: string } };
    try {
      ack = JSON.parse(msg.string());
    } catch (e) {
      settle(b, i, FAILED, e);
      return;
    }
    if (ack.error) settle(b, i, ack.error.code === 400 ? DROPPED : FAILED, new JetStreamAckError(String(ack.error.code), ack.error));
    else if (typeof ack.stream === "string" && ack.stream !== "") settle(b, i, ACKED);
    else settle(b, i, FAILED, new JetStreamAckError("invalid ack"));
  }
}

function settle(b: Batch, i: number, to: number, err?: unknown): void {
  b.state[i] = to;
  if (to === FAILED) b.failError ??= err;
  else if (to === DROPPED) b.dropError ??= err;
  if (--b.left === 0) b.finish();
}

class JetStreamClientSender implements LogSender {
  private end?: () => void;

  constructor(private readonly js: JetStreamClient) {}

  async send(records: readonly SpillRecord[], timeoutMs: number): Promise<BatchResult> {
    if (this.end) throw new Error("JetStreamClientSender: a batch is already in flight");
    const b: Batch = { base: 0, state: new Uint8Array(records.length), left: records.length, finish: () => undefined };
    const abandoned = new Promise<void>((resolve) => (this.end = resolve));
    const all = Promise.all(
      records.map((r, i) =>
        publishLogBytes(this.js, r.subject, r.msgId, r.payload, { contentType: r.contentType, timeoutMs }).then(
          () => settle(b, i, ACKED),
          (err: unknown) => settle(b, i, isPermanent(err) ? DROPPED : FAILED, err),
        ),
      ),
    );
    await Promise.race([all, abandoned]);
    this.end = undefined;
    // A copy: the publishes of an abandoned batch still settle later.
    return { state: b.state.slice(), failError: b.failError, dropError: b.dropError };
  }

  abandon(): void {
    this.end?.();
  }

  close(): void {
    this.abandon();
  }
}
