// A JetStream pull consumer on a plain NATS subscription: pull requests go to
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with a reply inbox, messages reach a callback,
// acks are published to each message's reply subject. It is the protocol nats.js's consume()
// speaks, without its per-message async iterator and promise: on our machines consume() costs
// ~25 µs of client CPU per message and this ~5 µs (bench/features.ts measures both).
//
// Flow control: at most `maxWaiting` messages are asked for and not yet delivered; the owner
// pauses pulling while it is busy. Pull requests carry an idle heartbeat, so a pull the server
// forgot (a NATS restart, a reconnect) is noticed and asked again.
import { createInbox, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "nats";

export interface PulledMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  /** Stream sequence, delivery count (1 on first delivery) and time stored, from the reply subject. */
  info(): { streamSequence: number; deliveryCount: number; timestampNanos: number };
  ack(): void;
  /** Asks for redelivery after delayMs (0: as soon as possible). */
  nak(delayMs?: number): void;
}

/**
 * consumer_deleted: the server said so. silent: no message nor heartbeat for two heartbeats while
 * pulls were outstanding, as when the consumer does not exist (a pull to a missing consumer gets
 * no answer at all) or the server forgot the pulls; they are asked again.
 */
export type PullStatus = "consumer_missing" | "consumer_deleted" | "silent";

export interface PullConsumerOptions {
  stream: string;
  consumer: string;
  /** Messages asked for per pull request. @default a quarter of maxWaiting, else 500 */
  batch?: number;
  /** Most messages asked for and not yet delivered. @default 4 × batch */
  maxWaiting?: number;
  /** How long a pull request waits at the server. @default 30_000 */
  expiresMs?: number;
  /** Idle heartbeat the server sends while a request waits. @default 5_000 */
  heartbeatMs?: number;
  onMessage(m: PulledMessage): void;
  /** Something the owner may act on (recreate the consumer); pulling goes on by itself. */
  onStatus?(status: PullStatus): void;
}

const ACK = new TextEncoder().encode("+ACK");
const NAK = new TextEncoder().encode("-NAK");
const enc = new TextEncoder();
/** "PUB " + " 4\r\n+ACK\r\n": an ack frame's bytes besides its subject. */
const ACK_FRAME_BYTES = 14;

/** The part of nats.js's connection (its protocol handler) that writes raw protocol frames. */
interface RawProtocol {
  sendCommand(frame: Uint8Array): void;
  outMsgs: number;
  outBytes: number;
}

export class PullConsumer {
  private readonly sub: Subscription;
  private readonly inbox = createInbox();
  private readonly batch: number;
  private readonly maxWaiting: number;
  private readonly expiresMs: number;
  private readonly heartbeatMs: number;
  private waiting = 0;
  private paused = false;
  private stopped = false;
  private lastHeard = Date.now();
  private readonly timer: NodeJS.Timeout;
  private readonly request: Uint8Array;
  /** Connection events (typed as an iterable; nats.js's iterator also has stop()). */
  private readonly status: AsyncIterable<{ type: string }> & { stop?(): void };

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: PullConsumerOptions,
  ) {
    this.batch = opts.batch ?? (opts.maxWaiting ? Math.max(1, Math.ceil(opts.maxWaiting / 4)) : 500);
    this.maxWaiting = opts.maxWaiting ?? 4 * this.batch;
    this.expiresMs = opts.expiresMs ?? 30_000;
    this.heartbeatMs = opts.heartbeatMs ?? 5_000;
    this.status = nc.status();
    this.request = enc.encode(JSON.stringify({ batch: this.batch, expires: this.expiresMs * 1e6, idle_heartbeat: this.heartbeatMs * 1e6 }));
    this.sub = nc.subscribe(this.inbox, { callback: (_err, m) => this.onMsg(m) });
    // A pull the server no longer knows sends nothing, not even heartbeats: ask again.
    this.timer = setInterval(() => {
      if (!this.stopped && this.waiting > 0 && Date.now() - this.lastHeard > 2 * this.heartbeatMs) {
        this.reset();
        this.opts.onStatus?.("silent");
      }
    }, this.heartbeatMs);
    this.timer.unref();
    const status = this.status;
    void (async () => {
      for await (const s of status) if (s.type === "reconnect" && !this.stopped) this.reset();
    })().catch(() => undefined);
    this.fill();
  }

  /**
   * Acks messages of this consumer in one write. nats.js's publish() leaves ~1 KB of garbage
   * and a few µs of CPU per ack; here a batch's acks are one buffer handed to nats.js's protocol
   * layer (an internal of nats.js 2.x: without it, each message is acked by publish()).
   */
  ackAll(msgs: readonly PulledMessage[]): void {
    const protocol = (this.nc as unknown as { protocol?: RawProtocol }).protocol;
    if (typeof protocol?.sendCommand !== "function" || this.nc.isClosed()) {
      for (const m of msgs) m.ack();
      return;
    }
    let size = 0;
    for (const m of msgs) size += 3 * (m as Pulled).reply.length + ACK_FRAME_BYTES;
    const buf = Buffer.allocUnsafe(size);
    let at = 0;
    for (const m of msgs) {
      at += buf.write("PUB ", at, "latin1");
      at += buf.write((m as Pulled).reply, at, "utf8");
      at += buf.write(" 4\r\n+ACK\r\n", at, "latin1");
    }
    protocol.outMsgs += msgs.length;
    protocol.outBytes += 4 * msgs.length;
    protocol.sendCommand(buf.subarray(0, at));
  }

  /** Stops asking for messages (those already asked for still arrive). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.fill();
  }

  /** Unsubscribes; messages delivered but not acked are redelivered after the ack wait. */
  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.status.stop?.(); // ends the reconnect watch above
    this.sub.unsubscribe();
  }

  /** Forgets the outstanding pulls and asks again (after a reconnect or silence). */
  private reset(): void {
    this.waiting = 0;
    this.lastHeard = Date.now();
    this.fill();
  }

  private fill(): void {
    while (!this.stopped && !this.paused && this.waiting + this.batch <= this.maxWaiting && !this.nc.isClosed()) {
      this.waiting += this.batch;
      this.nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${this.opts.stream}.${this.opts.consumer}`, this.request, { reply: this.inbox });
    }
  }

  private onMsg(m: Msg): void {
    this.lastHeard = Date.now();
    if (m.reply?.startsWith("$JS.ACK.")) {
      this.waiting = Math.max(0, this.waiting - 1);
      this.opts.onMessage(new Pulled(this.nc, m));
      this.fill();
      return;
    }
    if (m.headers) this.onStatusMessage(m, m.headers.code);
  }

  private onStatusMessage(m: Msg, code: number): void {
    if (code === 100) {
      // Idle heartbeat (or flow control, which wants an answer).
      if (m.reply) this.nc.publish(m.reply);
      return;
    }
    const description = (m.headers?.description ?? "").toLowerCase();
    if (code === 503 || description.includes("consumer deleted") || description.includes("no responders")) {
      // No consumer answers (never created, or deleted): drop the pulls, tell the owner, retry.
      this.waiting = 0;
      this.opts.onStatus?.(code === 503 ? "consumer_missing" : "consumer_deleted");
      setTimeout(() => this.fill(), 500).unref();
      return;
    }
    // 404 no messages, 408 request expired, 409 limits: the request ended with this many unfilled.
    const pending = Number(m.headers?.get("Nats-Pending-Messages") || NaN);
    this.waiting = Math.max(0, this.waiting - (Number.isFinite(pending) ? pending : this.batch));
    this.fill();
  }
}

class Pulled implements PulledMessage {
  constructor(
    private readonly nc: NatsConnection,
    private readonly m: Msg,
  ) {}

  get subject(): string {
    return this.m.subject;
  }
  get data(): Uint8Array {
    return this.m.data;
  }
  get headers(): MsgHdrs | undefined {
    return this.m.headers;
  }
  get reply(): string {
    return this.m.reply!;
  }

  info(): { streamSequence: number; deliveryCount: number; timestampNanos: number } {
    return parseAckSubject(this.m.reply!);
  }

  ack(): void {
    this.nc.publish(this.m.reply!, ACK);
  }

  nak(delayMs = 0): void {
    this.nc.publish(this.m.reply!, delayMs > 0 ? enc.encode(`-NAK ${JSON.stringify({ delay: Math.round(delayMs * 1e6) })}`) : NAK);
  }
}

/**
 * The metadata JetStream puts in a delivered message's reply subject:
 * $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>, or
 * with domain and account hash after $JS.ACK (and a token at the end) on newer servers.
 */
export function parseAckSubject(reply: string): { streamSequence: number; deliveryCount: number; timestampNanos: number } {
  const t = reply.split(".");
  const at = t.length === 9 ? 4 : 6;
  return { deliveryCount: Number(t[at]), streamSequence: Number(t[at + 1]), timestampNanos: Number(t[at + 3]) };
}
