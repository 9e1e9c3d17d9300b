// The JetStream pull consumer on nats.js's public API: the library path beside
// lib/jetstream-pull-fast.ts (chosen with --pull library). It uses fetch(), the bounded pull,
// rather than consume(): consume() asks for more as soon as messages arrive and cannot pause, so a
// worker held up (Redis away) would keep receiving, and the messages it holds past the ack wait
// would come again, into the same growing buffer. Invariant, as in the fast one: at most
// `maxWaiting` messages asked for and not yet delivered, none asked for while paused or disconnected.
import type { Consumer, ConsumerMessages, JsMsg, MsgHdrs, NatsConnection } from "nats";
import type { PullConsumer, PulledMessage, PullStatus, ResolvedPullOptions } from "./jetstream-pull.js";

/** How long to wait before asking again after a fetch failed (a missing consumer, missed heartbeats). */
const RETRY_MS = 500;

export class LibraryPullConsumer implements PullConsumer {
  private consumer?: Consumer;
  /** Messages asked for by the fetches in flight and not yet delivered. */
  private asked = 0;
  private paused = false;
  private stopped = false;
  private connected = true;
  private retryAt = 0;
  /** Wakes fill() at retryAt; one at a time. */
  private retryTimer?: ReturnType<typeof setTimeout>;
  /** The fetches in flight, stopped with the consumer. */
  private readonly fetches = new Set<ConsumerMessages>();
  private readonly status: AsyncIterable<{ type: string }> & { stop?(): void };

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: ResolvedPullOptions,
  ) {
    // A pull sent while disconnected reaches the server after its fetch gave up, and the messages
    // it asked for go to an inbox nobody reads until the ack wait: no fetch starts while disconnected.
    this.status = nc.status();
    const status = this.status;
    void (async () => {
      for await (const s of status) {
        if (s.type === "disconnect") this.connected = false;
        if (s.type === "reconnect") {
          this.connected = true;
          this.fill();
        }
      }
    })().catch(() => undefined);
    void this.start();
  }

  ackAll(msgs: readonly PulledMessage[]): void {
    for (const m of msgs) m.ack();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.fill();
  }

  stop(): void {
    this.stopped = true;
    this.status.stop?.();
    clearTimeout(this.retryTimer);
    for (const f of this.fetches) f.stop();
  }

  /** Finds the consumer (consumers.get asks the server), retrying while it is missing. */
  private async start(): Promise<void> {
    while (!this.stopped && !this.nc.isClosed()) {
      try {
        this.consumer = await this.nc.jetstream().consumers.get(this.opts.stream, this.opts.consumer);
        this.fill();
        return;
      } catch {
        this.opts.onStatus?.("consumer_missing");
        await sleep(RETRY_MS);
      }
    }
  }

  private fill(): void {
    while (this.consumer && !this.stopped && !this.paused && this.connected && this.asked + this.opts.batch <= this.opts.maxWaiting) {
      if (this.nc.isClosed()) return;
      // The timer is armed here, from the same clock as the check: a timer set beside retryAt can
      // fire a few ms before Date.now() reaches it (libuv's cached loop time), and fill() would then
      // do nothing with nothing left to wake it.
      const wait = this.retryAt - Date.now();
      if (wait > 0) {
        this.retryTimer ??= setTimeout(() => {
          this.retryTimer = undefined;
          this.fill();
        }, wait).unref();
        return;
      }
      this.asked += this.opts.batch;
      void this.fetch(this.consumer);
    }
  }

  /** One bounded pull: up to `batch` messages, or fewer when it expires. */
  private async fetch(consumer: Consumer): Promise<void> {
    let got = 0;
    let messages: ConsumerMessages | undefined;
    try {
      messages = await consumer.fetch({
        max_messages: this.opts.batch,
        expires: this.opts.expiresMs,
        idle_heartbeat: this.opts.heartbeatMs,
      });
      this.fetches.add(messages);
      if (this.stopped) messages.stop();
      for await (const m of messages) {
        got++;
        this.asked--;
        if (!this.stopped) this.opts.onMessage(new Fetched(m));
      }
    } catch (err) {
      if (!this.stopped) this.opts.onStatus?.(statusOf(err));
      this.retryAt = Date.now() + RETRY_MS;
    } finally {
      if (messages) this.fetches.delete(messages);
      this.asked -= this.opts.batch - got;
      this.fill();
    }
  }
}

/** What a failed fetch says about the consumer. */
function statusOf(err: unknown): PullStatus {
  const e = err as { code?: string; message?: string };
  const message = (e?.message ?? "").toLowerCase();
  if (message.includes("consumer deleted")) return "consumer_deleted";
  if (e?.code === "503" || e?.code === "404" || message.includes("no responders") || message.includes("not found")) return "consumer_missing";
  return "silent";
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

class Fetched implements PulledMessage {
  constructor(private readonly m: JsMsg) {}

  get subject(): string {
    return this.m.subject;
  }
  get data(): Uint8Array {
    return this.m.data;
  }
  get headers(): MsgHdrs | undefined {
    return this.m.headers;
  }

  info(): { streamSequence: number; deliveryCount: number; timestampNanos: number } {
    const i = this.m.info;
    return { streamSequence: i.streamSequence, deliveryCount: i.redeliveryCount, timestampNanos: i.timestampNanos };
  }

  ack(): void {
    this.m.ack();
  }

  nak(delayMs = 0): void {
    this.m.nak(delayMs > 0 ? delayMs : undefined);
  }
}
