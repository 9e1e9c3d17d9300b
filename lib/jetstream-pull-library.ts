// The JetStream pull consumer on nats.js's public API, consume() with a callback: the library path
// beside lib/jetstream-pull-fast.ts (chosen with --pull library). consume() keeps max_messages
// asked for and has no pause, so pause() does nothing here: what arrives unacked is bounded by the
// consumer's max_ack_pending instead of by maxWaiting.
import type { ConsumerMessages, JsMsg, MsgHdrs, NatsConnection } from "nats";
import type { PullConsumer, PullConsumerOptions, PulledMessage, PullStatus } from "./jetstream-pull.js";

/** How long to wait before looking for a consumer that was not there. */
const RETRY_MS = 500;

export class LibraryPullConsumer implements PullConsumer {
  private messages?: ConsumerMessages;
  private stopped = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: PullConsumerOptions,
  ) {
    void this.start();
  }

  ackAll(msgs: readonly PulledMessage[]): void {
    for (const m of msgs) m.ack();
  }

  pause(): void {}

  resume(): void {}

  stop(): void {
    this.stopped = true;
    void this.messages?.close().catch(() => undefined);
  }

  /** Finds the consumer (consumers.get asks the server) and consumes; retried while it is missing. */
  private async start(): Promise<void> {
    while (!this.stopped && !this.nc.isClosed()) {
      try {
        const consumer = await this.nc.jetstream().consumers.get(this.opts.stream, this.opts.consumer);
        if (this.stopped) return;
        const batch = this.opts.batch ?? (this.opts.maxWaiting ? Math.max(1, Math.ceil(this.opts.maxWaiting / 4)) : 500);
        const messages = await consumer.consume({
          max_messages: this.opts.maxWaiting ?? 4 * batch,
          expires: this.opts.expiresMs ?? 30_000,
          idle_heartbeat: this.opts.heartbeatMs ?? 5_000,
          callback: (m) => this.opts.onMessage(new Consumed(m)),
        });
        this.messages = messages;
        if (this.stopped) await messages.close();
        else void this.watch(messages);
        return;
      } catch {
        this.opts.onStatus?.("consumer_missing");
        await new Promise((r) => setTimeout(r, RETRY_MS).unref());
      }
    }
  }

  private async watch(messages: ConsumerMessages): Promise<void> {
    const statuses: Record<string, PullStatus> = {
      consumer_deleted: "consumer_deleted",
      consumer_not_found: "consumer_missing",
      no_responders: "consumer_missing",
      heartbeats_missed: "silent",
    };
    for await (const s of await messages.status()) {
      const status = statuses[s.type];
      if (status && !this.stopped) this.opts.onStatus?.(status);
    }
  }
}

class Consumed implements PulledMessage {
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
