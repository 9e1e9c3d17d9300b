// The log publisher's hold on NATS: asks connect() for a connection (again after a backoff while it
// rejects), then follows that connection's status. nats.js reconnects by itself (lib/nats.ts asks it
// never to give up), so a disconnect only marks the link down until nats.js reports it back; only a
// connection closed by its owner makes the link ask connect() for another.
// Invariant: `sender` is there only while the connection is up, and is the only one publishing.
import type { NatsConnection } from "nats";
import type { Logger } from "../lib/logger.js";
import { createSender, type LogSender, type PublishPath } from "./log-sender.js";

export type LinkState =
  | { kind: "connecting"; failures: number }
  /** connect() rejected (or gave back a closed connection); asks again when the timer fires. */
  | { kind: "waiting"; failures: number; timer: NodeJS.Timeout }
  | { kind: "up"; nc: NatsConnection; sender: LogSender }
  /** Disconnected; nats.js is reconnecting. */
  | { kind: "down"; nc: NatsConnection; sender: LogSender }
  | { kind: "stopped" };

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5000;

export class NatsLink {
  private s: LinkState = { kind: "connecting", failures: 0 };

  constructor(
    private readonly connect: () => Promise<NatsConnection>,
    private readonly path: PublishPath,
    private readonly log: Logger,
    /** Called after every change of state. */
    private readonly changed: () => void,
  ) {
    this.attempt(0);
  }

  get state(): LinkState {
    return this.s;
  }

  /** The sender of a connection that is up; undefined otherwise. */
  get sender(): LogSender | undefined {
    return this.s.kind === "up" ? this.s.sender : undefined;
  }

  /** Why logs cannot be sent now, for the log line that starts a spill. */
  get reason(): string {
    return this.s.kind === "down" ? "NATS disconnected" : this.s.kind === "up" ? "publish failed" : "NATS unreachable";
  }

  /** Ends the batch in flight, if any (see LogSender.abandon). */
  abandon(): void {
    if (this.s.kind === "up" || this.s.kind === "down") this.s.sender.abandon();
  }

  /** Lets go of the connection (which stays open: it is the caller's) and asks for no other. */
  stop(): void {
    const s = this.s;
    if (s.kind === "waiting") clearTimeout(s.timer);
    if (s.kind === "up" || s.kind === "down") s.sender.close();
    this.set({ kind: "stopped" });
  }

  private set(next: LinkState): void {
    this.s = next;
    this.changed();
  }

  private attempt(failures: number): void {
    let pending: Promise<NatsConnection>;
    try {
      pending = this.connect();
    } catch (err) {
      pending = Promise.reject(err);
    }
    this.s = { kind: "connecting", failures };
    pending.then(
      (nc) => {
        if (this.s.kind === "stopped") return;
        // A factory that hands back a closed connection would otherwise be asked again at once, forever.
        if (nc.isClosed()) this.failed(failures, new Error("connect() returned a closed NATS connection"));
        else this.adopt(nc);
      },
      (err) => {
        if (this.s.kind !== "stopped") this.failed(failures, err);
      },
    );
  }

  private failed(failures: number, err: unknown): void {
    if (failures === 0) this.log.warn({ err }, "log publisher: cannot connect to NATS; retrying");
    const delay = Math.min(RETRY_MIN_MS * 2 ** failures, RETRY_MAX_MS);
    const timer = setTimeout(() => {
      if (this.s.kind === "waiting") this.attempt(failures + 1);
    }, delay);
    this.set({ kind: "waiting", failures: failures + 1, timer });
  }

  private adopt(nc: NatsConnection): void {
    const sender = createSender(nc, this.path);
    const mine = () => (this.s.kind === "up" || this.s.kind === "down") && this.s.nc === nc;
    void (async () => {
      for await (const status of nc.status()) {
        if (!mine()) break;
        if (status.type === "disconnect" && this.s.kind === "up") {
          // The acks of what is in flight will not come: do not sit out the timeout.
          sender.abandon();
          this.set({ kind: "down", nc, sender });
        } else if (status.type === "reconnect" && this.s.kind === "down") {
          this.set({ kind: "up", nc, sender });
        }
      }
    })().catch(() => undefined);
    void nc.closed().then(() => {
      if (!mine()) return;
      sender.close();
      this.attempt(0);
      this.changed();
    });
    this.set({ kind: "up", nc, sender });
  }
}
