// The hand-written JetStream pull consumer (the default; why: docs/fast-paths.md): pull requests to
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> on a plain subscription, messages to a callback,
// acks to each message's reply subject, a batch's acks as one protocol write.
// Invariant: at most `maxWaiting` messages are asked for and not yet delivered, and none while paused.
// The one nats.js internal it uses (nc.protocol, for ackAll) is fenced by NATS_INTERNALS_CHECKED
// (lib/jetstream-pull.ts) and test/lib/jetstream-pull.test.ts.
import { createInbox, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "nats";
import type { PullConsumer, PulledMessage, ResolvedPullOptions } from "./jetstream-pull.js";

const ACK = new TextEncoder().encode("+ACK");
const NAK = new TextEncoder().encode("-NAK");
const enc = new TextEncoder();
/** "PUB " + " 4\r\n+ACK\r\n": an ack frame's bytes besides its subject. */
const ACK_FRAME_BYTES = 14;

/** The part of nats.js's connection (its protocol handler, an internal) that writes raw protocol frames. */
export interface RawProtocol {
  sendCommand(frame: Uint8Array): void;
  outMsgs: number;
  outBytes: number;
}

/** nc.protocol if it has the shape ackAll writes through (nats.js 2.29), else undefined. */
export function rawProtocol(nc: NatsConnection): RawProtocol | undefined {
  const p = (nc as unknown as { protocol?: Partial<RawProtocol> }).protocol;
  return typeof p?.sendCommand === "function" && typeof p.outMsgs === "number" && typeof p.outBytes === "number" ? (p as RawProtocol) : undefined;
}

export class FastPullConsumer implements PullConsumer {
  private readonly sub: Subscription;
  private readonly inbox = createInbox();
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
    private readonly opts: ResolvedPullOptions,
  ) {
    this.status = nc.status();
    this.request = enc.encode(JSON.stringify({ batch: opts.batch, expires: opts.expiresMs * 1e6, idle_heartbeat: opts.heartbeatMs * 1e6 }));
    this.sub = nc.subscribe(this.inbox, { callback: (_err, m) => this.onMsg(m) });
    // A pull the server no longer knows sends nothing, not even heartbeats: ask again.
    this.timer = setInterval(() => {
      if (!this.stopped && this.waiting > 0 && Date.now() - this.lastHeard > 2 * this.opts.heartbeatMs) {
        this.reset();
        this.opts.onStatus?.("silent");
      }
    }, opts.heartbeatMs);
    this.timer.unref();
    const status = this.status;
    void (async () => {
      for await (const s of status) if (s.type === "reconnect" && !this.stopped) this.reset();
    })().catch(() => undefined);
    this.fill();
  }

  /**
   * Acks messages of this consumer in one write handed to nats.js's protocol layer, counted in
   * nc.stats() as publish() would (publish() leaves ~1 KB of garbage and a few µs per ack).
   * Without that internal, each message is acked by publish().
   */
  ackAll(msgs: readonly PulledMessage[]): void {
    const protocol = rawProtocol(this.nc);
    if (!protocol || this.nc.isClosed()) {
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
    while (!this.stopped && !this.paused && this.waiting + this.opts.batch <= this.opts.maxWaiting && !this.nc.isClosed()) {
      this.waiting += this.opts.batch;
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
    this.waiting = Math.max(0, this.waiting - (Number.isFinite(pending) ? pending : this.opts.batch));
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
