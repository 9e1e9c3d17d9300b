// The JetStream pull consumer the features worker reads with, as one small interface with two
// implementations: the hand-written one (lib/jetstream-pull-fast.ts, the default: it pauses, and acks
// a batch in one write) and nats.js's fetch() (lib/jetstream-pull-library.ts); docs/fast-paths.md.
// Chosen with --pull fast|library (STREAMSERVE_PULL). The fast one leans on a nats.js internal, so it
// runs only on the nats releases it was checked against (NATS_INTERNALS_CHECKED), else the library one.
import { createRequire } from "node:module";
import type { MsgHdrs, NatsConnection } from "nats";
import { FAST_PATHS, fastPathChoice, type FastPathChoice } from "./fast-paths.js";
import { FastPullConsumer } from "./jetstream-pull-fast.js";
import { LibraryPullConsumer } from "./jetstream-pull-library.js";

export { parseAckSubject } from "./jetstream-pull-fast.js";

export interface PulledMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  /** Stream sequence, delivery count (1 on first delivery) and time stored. */
  info(): { streamSequence: number; deliveryCount: number; timestampNanos: number };
  ack(): void;
  /** Asks for redelivery after delayMs (0: as soon as possible). */
  nak(delayMs?: number): void;
}

/**
 * consumer_missing: it does not exist. consumer_deleted: the server said so. silent: no message
 * nor heartbeat for two heartbeats while pulls were outstanding (a missing consumer, or a server
 * that forgot the pulls); they are asked again.
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
  /** Which implementation. @default STREAMSERVE_PULL, else "fast" */
  implementation?: PullImplementation;
}

/** The options with every default filled in, as the implementations receive them. */
export type ResolvedPullOptions = Required<Omit<PullConsumerOptions, "onStatus" | "implementation">> & Pick<PullConsumerOptions, "onStatus">;

/** Fills in the defaults (in one place for both implementations) and checks the sizes. */
export function resolvePullOptions(o: PullConsumerOptions): ResolvedPullOptions {
  const batch = o.batch ?? (o.maxWaiting ? Math.max(1, Math.ceil(o.maxWaiting / 4)) : 500);
  const maxWaiting = o.maxWaiting ?? 4 * batch;
  if (!(batch >= 1 && maxWaiting >= batch)) throw new RangeError(`pull consumer: batch (${batch}) must be at least 1 and at most maxWaiting (${maxWaiting})`);
  return {
    stream: o.stream,
    consumer: o.consumer,
    batch,
    maxWaiting,
    expiresMs: o.expiresMs ?? 30_000,
    heartbeatMs: o.heartbeatMs ?? 5_000,
    onMessage: o.onMessage,
    onStatus: o.onStatus,
  };
}

/** Messages pushed to a callback as nats.js consume() does, with flow control (pause) the owner drives. */
export interface PullConsumer {
  /** Acks messages this consumer delivered. */
  ackAll(msgs: readonly PulledMessage[]): void;
  /** Asks for no more messages (those already asked for still arrive). The library one cannot: see its file. */
  pause(): void;
  resume(): void;
  /** Stops; messages delivered but not acked are redelivered after the ack wait. */
  stop(): void;
}

export const PULL_IMPLEMENTATIONS = FAST_PATHS.pull.choices;
export type PullImplementation = FastPathChoice<"pull">;

/**
 * The nats releases whose internals the fast consumer was checked against (its use of nc.protocol;
 * test/lib/jetstream-pull.test.ts checks them). nats.js 2.29 is the last 2.x line.
 */
export const NATS_INTERNALS_CHECKED = { major: 2, minor: 29 } as const;

/** The installed nats package's version. */
export function installedNatsVersion(): string {
  return (createRequire(import.meta.url)("nats/package.json") as { version: string }).version;
}

/** Whether the fast consumer may run on this nats version. */
export function fastPullSupported(version = installedNatsVersion()): boolean {
  const [major, minor] = version.split(".").map(Number);
  return major === NATS_INTERNALS_CHECKED.major && minor === NATS_INTERNALS_CHECKED.minor;
}

let warned = false;

/** Starts pulling: the fast consumer unless the library one is asked for or nats is not a checked release. */
export function createPullConsumer(nc: NatsConnection, options: PullConsumerOptions): PullConsumer {
  const wanted = options.implementation ?? fastPathChoice("pull");
  if (wanted === "fast" && !fastPullSupported()) {
    if (!warned) {
      const { major, minor } = NATS_INTERNALS_CHECKED;
      process.emitWarning(
        `nats ${installedNatsVersion()} is not the ${major}.${minor} release the fast JetStream pull was checked against; using nats.js fetch()`,
      );
      warned = true;
    }
    return new LibraryPullConsumer(nc, resolvePullOptions(options));
  }
  const resolved = resolvePullOptions(options);
  return wanted === "fast" ? new FastPullConsumer(nc, resolved) : new LibraryPullConsumer(nc, resolved);
}
