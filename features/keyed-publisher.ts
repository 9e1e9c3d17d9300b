// Publishes a batch of messages to JetStream and resolves once the stream stored every one: each
// is a plain NATS publish whose reply subject is one inbox of ours, where JetStream answers with
// its PubAck. nats.js's js.publish() does the same with a request, a promise and a timer per
// message, which costs several times the CPU of the rest of the router's work per event.
// The invariant: publish() resolves only when every message of the batch has a PubAck without
// error; otherwise it rejects (timeout, a refused message), and the caller publishes again
// (repeats are harmless: the partitions' event-id markers drop them).
import { createInbox, headers as natsHeaders, type MsgHdrs, type NatsConnection, type Subscription } from "nats";

export interface KeyedMessage {
  subject: string;
  data: Uint8Array;
  /** Sent with Content-Type: application/protobuf (else none: JSON). */
  protobuf: boolean;
}

interface Pending {
  left: number;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** PubAck JSON starts {"stream":…; a refusal {"error":… (byte 2 tells them apart). */
const S = "s".charCodeAt(0);

export class KeyedPublisher {
  private readonly prefix: string;
  private readonly sub: Subscription;
  private readonly pending = new Map<number, Pending>();
  private nextBatch = 0;
  private readonly protobufHeaders: MsgHdrs;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs = 10_000,
  ) {
    this.prefix = createInbox();
    this.protobufHeaders = natsHeaders();
    this.protobufHeaders.set("Content-Type", "application/protobuf");
    this.sub = nc.subscribe(`${this.prefix}.*`, {
      callback: (err, m) => {
        if (err) return;
        const id = Number(m.subject.slice(this.prefix.length + 1));
        const p = this.pending.get(id);
        if (!p) return;
        const d = m.data;
        if (d.length < 3 || d[2] !== S) return this.fail(id, new Error(`JetStream refused a keyed event: ${new TextDecoder().decode(d)}`));
        if (--p.left === 0) {
          this.pending.delete(id);
          clearTimeout(p.timer);
          p.resolve();
        }
      },
    });
  }

  /** Publishes every message; resolves once JetStream stored them all. */
  publish(msgs: readonly KeyedMessage[]): Promise<void> {
    if (msgs.length === 0) return Promise.resolve();
    const id = this.nextBatch++;
    const reply = `${this.prefix}.${id}`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(id, new Error(`JetStream did not acknowledge keyed events within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending.set(id, { left: msgs.length, resolve, reject, timer });
      try {
        for (const m of msgs) this.nc.publish(m.subject, m.data, m.protobuf ? { reply, headers: this.protobufHeaders } : { reply });
      } catch (err) {
        this.fail(id, err as Error);
      }
    });
  }

  close(): void {
    this.sub.unsubscribe();
    for (const id of [...this.pending.keys()]) this.fail(id, new Error("keyed publisher closed"));
  }

  private fail(id: number, err: Error): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.reject(err);
  }
}
