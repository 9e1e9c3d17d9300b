// Partition leases in NATS KV: which features worker owns which partition.
//
// The invariant: a partition has at most one lease at a time (created with KV create, renewed with
// a revision-checked update), and its epoch (the KV revision that created it) only grows, so
// whoever holds a newer lease can fence out an older holder (the window store compares the epoch
// inside its Redis transaction). The bucket's TTL expires what nobody renews: a dead worker's
// membership and leases are gone ttlMs after its last renewal (nats-server 2.9 has a TTL per
// bucket, not per message; every write is one message, so each entry lives ttlMs from its last
// renewal). Every rebalanceMs each worker renews what it holds, reads who is alive, gives up what
// is above its fair share and takes free partitions up to it: ranked by worker id, the first
// P mod N workers take ceil(P/N), the others floor(P/N). So a partition moves within
// ttlMs + rebalanceMs of its owner dying, and within about two rebalance rounds of a join or a leave.
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import type { KV, KvEntry, NatsConnection, QueuedIterator } from "nats";
import type { Logger } from "../lib/logger.js";
import { partitionLabel } from "./partitions.js";

export interface LeaseOptions {
  /** The deployment's partition count (the same for every worker). */
  partitions: number;
  /** How long a lease or a membership lives without renewal. @default 6_000 */
  ttlMs?: number;
  /** How often leases are renewed and shares recomputed. @default 1_000 */
  rebalanceMs?: number;
  /**
   * How long stop() waits for its partitions to be started and released; past it stop() resolves and
   * what is left is released as it finishes (after a start that hangs on Redis, say). @default 15_000
   */
  stopTimeoutMs?: number;
  /** This worker's id in the bucket. @default host-pid-random */
  workerId?: string;
}

/** What the worker does when it gains or gives up a partition. */
export interface LeaseHandlers {
  /** The lease is ours under `epoch`: start processing (claim the partition in Redis first). */
  acquired(partition: number, epoch: number): Promise<void>;
  /** The lease is given up (rebalance, stop): finish what is in hand; resolves before the lease is deleted. */
  releasing(partition: number): Promise<void>;
  /** The lease was lost (another worker holds it, or it could not be renewed in time): stop at once. */
  lost(partition: number): Promise<void>;
}

interface Held {
  epoch: number;
  revision: number;
  renewedAt: number;
  /** The renewal in flight: a release deletes the lease under the revision it leaves. */
  renewing?: Promise<void>;
}

export class PartitionLeases {
  readonly workerId: string;
  private readonly ttlMs: number;
  private readonly rebalanceMs: number;
  private readonly held = new Map<number, Held>();
  /**
   * Per partition, its start, release or loss in progress: the next one waits for it, so a
   * partition's handlers never overlap, and stop() waits for every one (none is left running).
   */
  private readonly ops = new Map<number, Promise<void>>();
  private kv?: KV;
  private timer?: NodeJS.Timeout;
  private round?: Promise<void>;
  private stopping = false;
  private watcher?: QueuedIterator<KvEntry>;
  /** Member id → when its membership was last seen written (local clock: no skew with the server's). */
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly bucket: string,
    private readonly opts: LeaseOptions,
    private readonly handlers: LeaseHandlers,
    private readonly log: Logger,
  ) {
    this.ttlMs = opts.ttlMs ?? 6_000;
    this.rebalanceMs = opts.rebalanceMs ?? 1_000;
    this.workerId = (opts.workerId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`).replace(/[^A-Za-z0-9_-]/g, "_");
  }

  /** The partitions this worker holds now. */
  partitions(): number[] {
    return [...this.held.keys()].sort((a, b) => a - b);
  }

  async start(): Promise<void> {
    const kv = (this.kv = await this.nc.jetstream().views.kv(this.bucket, { history: 1, ttl: this.ttlMs }));
    // Members are followed with a watch: listing keys while others write them misses some.
    let ready!: () => void;
    const initialized = new Promise<void>((r) => (ready = r));
    this.watcher = await kv.watch({ key: "members.>", initializedFn: () => ready() });
    void (async () => {
      for await (const e of this.watcher!) {
        const id = e.key.slice("members.".length);
        if (e.operation === "PUT") this.seen.set(id, Date.now());
        else this.seen.delete(id);
      }
    })().catch((err) => this.log.warn({ err }, "partition lease watch ended"));
    await initialized;
    this.round = this.rebalance();
    await this.round;
    const tick = () => {
      if (this.stopping) return;
      this.round = this.rebalance()
        .catch((err) => this.log.warn({ err }, "partition lease round failed; retrying"))
        .finally(() => {
          if (!this.stopping) this.timer = setTimeout(tick, this.rebalanceMs);
        });
    };
    this.timer = setTimeout(tick, this.rebalanceMs);
  }

  /**
   * Gives up every lease (after `releasing` finished each) and leaves. A partition being started
   * is started first, then released; the leases are renewed while their partitions drain.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.round?.catch(() => undefined);
    let draining = true;
    let wake: () => void = () => undefined;
    const keepAlive = (async () => {
      while (draining) {
        await Promise.all(this.partitions().map((p) => this.renew(p)));
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, this.rebalanceMs);
        });
      }
    })();
    const released = (async () => {
      await Promise.all(this.partitions().map((p) => this.release(p)));
      // Losses and failed starts still in progress (their partitions are no longer held).
      while (this.ops.size > 0) await Promise.all(this.ops.values());
      return true;
    })();
    const timeoutMs = this.opts.stopTimeoutMs ?? 15_000;
    try {
      if (!(await Promise.race([released, sleep(timeoutMs, false, { ref: false })])))
        this.log.warn({ partitions: [...this.ops.keys()], timeoutMs }, "partitions not released in time on stop; each is released once started");
    } finally {
      draining = false;
      wake();
    }
    await keepAlive;
    await this.kv?.delete(memberKey(this.workerId)).catch(() => undefined);
    this.watcher?.stop();
  }

  /** Runs a partition's start, release or loss after the one in progress. */
  private serially(p: number, op: () => Promise<void>): Promise<void> {
    const next = (this.ops.get(p) ?? Promise.resolve())
      .then(op)
      .catch((err) => this.log.warn({ err, partition: p }, "partition lease handler failed"))
      .finally(() => {
        if (this.ops.get(p) === next) this.ops.delete(p);
      });
    this.ops.set(p, next);
    return next;
  }

  /** One round: renew, read the members, give up above the fair share, take up to it. */
  private async rebalance(): Promise<void> {
    const kv = this.kv!;
    const now = Date.now();
    await kv.put(memberKey(this.workerId), JSON.stringify({ pid: process.pid, host: hostname(), at: now }));
    await Promise.all(this.partitions().map((p) => this.renew(p)));
    const members = await this.members();
    if (!members.includes(this.workerId)) members.push(this.workerId);
    members.sort();
    const P = this.opts.partitions;
    const rank = members.indexOf(this.workerId);
    const share = Math.floor(P / members.length) + (rank < P % members.length ? 1 : 0);
    const mine = this.partitions().filter((p) => !this.ops.has(p));
    // Above the share: give up the highest partitions (drained first, then deleted for the next owner).
    for (const p of mine.slice(share).reverse()) void this.release(p);
    let missing = share - this.held.size;
    if (missing <= 0) return;
    // Start where this worker's share would begin, so that workers joining together try different partitions first.
    const start = Math.floor((rank * P) / members.length);
    for (let i = 0; i < P && missing > 0; i++) {
      const p = (start + i) % P;
      if (this.held.has(p) || this.ops.has(p)) continue;
      if (this.stopping) return;
      const revision = await kv.create(leaseKey(p), this.workerId).catch(() => undefined);
      if (revision === undefined) continue;
      missing--;
      const h: Held = { epoch: revision, revision, renewedAt: Date.now() };
      this.held.set(p, h);
      void this.serially(p, async () => {
        try {
          await this.handlers.acquired(p, revision);
        } catch (err) {
          this.log.warn({ err, partition: p }, "could not start a leased partition; giving it up");
          if (this.held.get(p) === h) this.held.delete(p);
          await kv.delete(leaseKey(p), { previousSeq: h.revision }).catch(() => undefined);
        }
      });
    }
  }

  /** Live members: written within the TTL (an expiry by the bucket's TTL sends no event). */
  private async members(): Promise<string[]> {
    const now = Date.now();
    return [...this.seen].filter(([, at]) => now - at < this.ttlMs).map(([id]) => id);
  }

  private renew(p: number): Promise<void> {
    const h = this.held.get(p);
    if (!h) return Promise.resolve();
    h.renewing ??= this.renewHeld(p, h).finally(() => (h.renewing = undefined));
    return h.renewing;
  }

  private async renewHeld(p: number, h: Held): Promise<void> {
    try {
      h.revision = await this.kv!.update(leaseKey(p), this.workerId, h.revision);
      h.renewedAt = Date.now();
    } catch (err) {
      // Someone else's now, or gone: or NATS did not answer, which is fatal only once the TTL could have passed.
      const expired = Date.now() - h.renewedAt >= this.ttlMs - this.rebalanceMs;
      const taken = /wrong last sequence/i.test((err as Error).message);
      if (!taken && !expired) return;
      if (this.held.get(p) !== h) return;
      this.held.delete(p);
      this.log.warn({ partition: p, err: (err as Error).message }, "partition lease lost");
      // After a start in progress: the partition it started is stopped.
      void this.serially(p, () => this.handlers.lost(p));
    }
  }

  /** Releases the partition once what is in progress on it is done, if it is still held then. */
  private release(p: number): Promise<void> {
    return this.serially(p, async () => {
      const h = this.held.get(p);
      if (!h) return;
      await this.handlers.releasing(p).catch((err) => this.log.warn({ err, partition: p }, "releasing a partition failed"));
      // Deleted under the revision of the last renewal (renewals go on while the partition drains).
      if (this.held.get(p) !== h) return;
      this.held.delete(p);
      await h.renewing;
      await this.kv!.delete(leaseKey(p), { previousSeq: h.revision }).catch(() => undefined);
    });
  }
}

function memberKey(id: string): string {
  return `members.${id}`;
}

function leaseKey(p: number): string {
  return `lease.${partitionLabel(p)}`;
}
