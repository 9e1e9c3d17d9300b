// The commit pipeline: how a batch's sub-batches get from their events to committed Redis
// transactions, overlapping, with the store version telling each writer whether it was alone.
//
// A batch is cut into sub-batches sized to hold Redis for about maxTransactionMs each. For each:
//   1. its snapshot is read (reader connection): the store version, the newest event time, each
//      view's window list, which of its event ids were already applied, its entities' window
//      aggregates and distinct values, its items' trend activity;
//   2. it is planned (batch-planner.ts) and encoded (write-encoder.ts) here, in the worker;
//   3. it commits (writer connection): MULTI, TIME, every write, INCR version, TIME, EXEC.
// Sub-batches overlap: the next ones' reads go out a few ahead, and one is computed while Redis
// executes the previous one's transaction, from its snapshot completed (overlay) with the writes
// of our transactions still landing. At commit, under WATCH of the version, the version must be
// the one our own last commit produced and the snapshot must have seen a version of our own
// unbroken run; otherwise (another worker, the window closer) it is read and computed again
// under WATCH, one transaction at a time, until one commits.
// Partitioned, the fresh reads also compare the partition's lease epoch in Redis with ours: a
// worker whose lease moved on (its successor raised the epoch and the version) cannot commit.
// The projection (public hashes, trending set), when written apart, follows each commit.
import { setTimeout as sleep } from "node:timers/promises";
import { RespError, type RespArg, type RespCommand, type RespConnection, type RespReply, type RespWriter } from "../lib/resp.js";
import { connectResp } from "../lib/resp-client.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";
import { distinctField, LeaseLostError, trendOf, unpack, WindowStoreError, type StoreKeys, type WindowStatus } from "./store-keys.js";
import {
  distinctSet,
  noteNewer,
  overlay,
  planView,
  planWrites,
  trendPlanOf,
  type PlanContext,
  type Snapshot,
  type ViewCounts,
  type ViewPlan,
  type WriteSet,
} from "./batch-planner.js";
import type { WriteEncoder } from "./write-encoder.js";
import { NodeProjection, type ProjectionSink } from "./projection.js";
import { contributionOf, windowStart } from "./windows.js";

/** Sub-batches read ahead of the one being computed (each its own snapshot, completed by overlay). */
const CHUNKS_AHEAD = 3;
/** Fewest events in a transaction, however slow Redis seems (a preempted Redis is not the batch's cost). */
const MIN_CHUNK_EVENTS = 16;
/** Events in the first transaction, before any was measured. */
const FIRST_CHUNK_EVENTS = 512;
/** Redis-measured transaction times kept to size the next ones. */
const COST_SAMPLES = 16;

export interface ApplyResult {
  counts: Record<string, ViewCounts>;
  /** The newest event time any worker has seen, this batch included (−∞ before any). */
  eventTimeHigh: number;
  /** How long each transaction that committed the batch held Redis, ms, as Redis's clock measured it. */
  transactionMs: number[];
  /** Sub-batches computed again because another writer had written in between (0 when a partition has one owner). */
  conflicts: number;
}

/** The pipeline's settings (WindowStore passes its own). */
export interface CommitPipelineOptions {
  redisUrl: string;
  keys: StoreKeys;
  views: readonly FeatureView[];
  plan: PlanContext;
  encoder: WriteEncoder;
  /** Redis time one transaction may take, ms. */
  maxTransactionMs: number;
  /** Per view, which events are this store's (partitioned: their key maps to its partition); all when absent. */
  include?: ReadonlyMap<FeatureView, (e: ActivityEvent) => boolean>;
  /** Where the projection goes when written apart (plan.reproject). @default one connection to redisUrl */
  projection?: ProjectionSink;
}

export class CommitPipeline {
  private readonly keys: StoreKeys;
  private readonly ctx: PlanContext;
  private readonly encoder: WriteEncoder;
  private readonly opts: { maxTransactionMs: number };
  /** Transactions (WATCH state belongs to a connection). */
  private readonly writer: RespConnection;
  /** Snapshot reads, sent while the writer's transaction is still executing. */
  private readonly reader: RespConnection;
  private readonly views: readonly FeatureView[];
  /** Windows each view had at the last read: which newer windows to read an entity's state from. */
  private readonly knownWindows = new Map<FeatureView, Map<number, WindowStatus>>();
  private readonly bucketMs: number;
  /** Batches compute one at a time, in call order. */
  private computeTurn: Promise<void> = Promise.resolve();
  /** WATCH … EXEC sections on the writer connection, one at a time. */
  private writerTurn: Promise<void> = Promise.resolve();
  /** Our own recent batches, and the range of store versions that only we wrote. */
  private landings: Landing[] = [];
  private ours?: { from: number; to: number };
  /** The WATCH of the store version the last transaction left on the writer, and the version then. */
  private watched?: { connection: number; version: Promise<number | undefined> };
  /** Sub-batches are cut, in call order, one apply() after the other. */
  private issueTurn: Promise<void> = Promise.resolve();
  /** Sub-batches read ahead and not yet computed, and who waits for a slot. */
  private chunksAhead = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /** Redis time per event (ms) of the recent transactions. */
  private readonly costs: number[] = [];
  private readonly include?: ReadonlyMap<FeatureView, (e: ActivityEvent) => boolean>;
  /** The public hashes and trending set, written after each commit (projectSeparately), in commit order. */
  private readonly projector?: ProjectionSink;
  /** The projector this pipeline made (one it was given is its giver's to close). */
  private ownProjector?: ProjectionSink;
  /** The lease epoch this store commits under (partitioned); undefined: no fence. */
  private epoch?: number;

  constructor(o: CommitPipelineOptions) {
    this.keys = o.keys;
    this.ctx = o.plan;
    this.encoder = o.encoder;
    this.opts = { maxTransactionMs: o.maxTransactionMs };
    this.views = o.views;
    this.bucketMs = o.plan.bucketMs;
    this.writer = connectResp(o.redisUrl, { name: "streamserve-features" });
    this.reader = connectResp(o.redisUrl, { name: "streamserve-features-reader" });
    if (o.plan.reproject) this.projector = o.projection ?? (this.ownProjector = new NodeProjection(o.redisUrl));
    this.include = o.include;
    for (const v of o.views) this.knownWindows.set(v, new Map());
  }

  close(): void {
    this.writer.close();
    this.reader.close();
    this.ownProjector?.close();
  }

  /**
   * Takes the partition for a lease epoch: raises its epoch in Redis (refused if it already holds
   * a later one) and its version, so that a previous owner's next commit fails, then commits
   * under this epoch.
   */
  claim(epoch: number): Promise<void> {
    return this.writerSection(async () => {
      const k = this.keys;
      for (;;) {
        const [, current] = await this.writer.send([
          ["WATCH", k.epoch],
          ["GET", k.epoch],
        ]);
        if (current !== null && Number(current) > epoch) {
          await this.writer.send([["UNWATCH"]]);
          // Epochs are the lease bucket's revisions: a bucket deleted and made again starts them over.
          throw new LeaseLostError(
            `partition epoch ${current} in Redis (${k.epoch}) is newer than the lease's ${epoch}: another worker took the partition, ` +
              "or the leases bucket was deleted and made again (then delete the partitions' epoch keys too)",
          );
        }
        const replies = await this.writer.send([["MULTI"], ["SET", k.epoch, epoch], ["INCR", k.version], ["EXEC"]]);
        throwIfError(replies, "claiming the partition");
        if (replies.at(-1) !== null) break;
      }
      this.epoch = epoch;
      this.watched = undefined;
      this.ours = undefined;
      this.landings = [];
    });
  }

  /**
   * Commits a batch as sub-batches (see the file header), each one transaction, atomic and
   * idempotent on its own. Resolves once all of them landed; rejects if any failed (those that
   * landed are recognised as applied when the batch is repeated).
   */
  apply(events: readonly ActivityEvent[], now = Date.now()): Promise<ApplyResult> {
    // Sub-batches are issued in call order, a few ahead of the one being computed.
    const turn = this.issueTurn;
    let issued!: () => void;
    this.issueTurn = new Promise<void>((r) => (issued = r));
    return (async () => {
      const parts: Promise<ApplyResult>[] = [];
      try {
        await turn;
        if (events.length > this.chunkEvents()) events = this.groupedForChunks(events);
        let from = 0;
        do {
          await this.chunkSlot();
          const n = Math.min(events.length - from, this.chunkEvents());
          const part = this.applyChunk(events.slice(from, from + n), now);
          part.catch(() => undefined);
          parts.push(part);
          from += n;
        } while (from < events.length);
      } finally {
        issued();
      }
      return mergeResults(await Promise.all(parts));
    })();
  }

  /**
   * The batch with the events of each entity of its most repeated view side by side, entities in
   * the order they first appear (so none is always committed last): each sub-batch then writes an
   * entity's state and public hash once, not once per sub-batch. The folds do not depend on event order.
   */
  private groupedForChunks(events: readonly ActivityEvent[]): readonly ActivityEvent[] {
    let key: FeatureView["key"] | undefined;
    let fewest = Infinity;
    for (const v of this.views) {
      const distinct = new Set(events.map((e) => e[v.key])).size;
      if (distinct < fewest) [fewest, key] = [distinct, v.key];
    }
    if (!key || fewest === events.length) return events;
    const byEntity = new Map<string, ActivityEvent[]>();
    for (const e of events) {
      const list = byEntity.get(e[key]);
      if (list) list.push(e);
      else byEntity.set(e[key], [e]);
    }
    return [...byEntity.values()].flat();
  }

  /** Waits for a sub-batch slot: at most CHUNKS_AHEAD are read and not yet computed. */
  private async chunkSlot(): Promise<void> {
    while (this.chunksAhead >= CHUNKS_AHEAD) await new Promise<void>((r) => this.slotWaiters.push(r));
    this.chunksAhead++;
  }

  private freeChunkSlot(): void {
    this.chunksAhead--;
    this.slotWaiters.shift()?.();
  }

  /**
   * Events in the next transaction: the time budget over the Redis time per event of the recent
   * transactions, their lower quartile: Redis's clock is the wall clock, and a Redis that the
   * machine preempts is not busy for other clients either; shrinking the transactions then would
   * only add round trips, each waiting for Redis to be scheduled.
   */
  private chunkEvents(): number {
    if (this.costs.length === 0) return FIRST_CHUNK_EVENTS;
    const perEvent = [...this.costs].sort((a, b) => a - b)[this.costs.length >> 2]!;
    return Math.max(MIN_CHUNK_EVENTS, Math.floor((0.8 * this.opts.maxTransactionMs) / perEvent));
  }

  /** Notes a committed transaction's Redis time (ms) for `events` events. */
  private noteCost(ms: number, events: number): void {
    if (events === 0 || !(ms >= 0)) return;
    this.costs.push(ms / events);
    if (this.costs.length > COST_SAMPLES) this.costs.shift();
  }

  /** One sub-batch: one transaction (the pipeline below overlaps consecutive ones). */
  private applyChunk(events: readonly ActivityEvent[], now: number): Promise<ApplyResult> {
    const snapshot = this.read(events, this.reader, false);
    snapshot.catch(() => undefined);
    const turn = this.computeTurn;
    let release!: () => void;
    this.computeTurn = new Promise<void>((r) => (release = r));
    let freed = false;
    const releaseAll = () => {
      if (freed) return;
      freed = true;
      this.freeChunkSlot();
      release();
    };
    return (async () => {
      try {
        await turn;
        return await this.run(events, snapshot, now, releaseAll);
      } finally {
        releaseAll();
      }
    })();
  }

  private async run(events: readonly ActivityEvent[], pending: Promise<Snapshot>, now: number, release: () => void): Promise<ApplyResult> {
    let conflicts = 0;
    const snap = await pending.catch((err) => {
      if (err instanceof LeaseLostError) throw err;
      return undefined;
    });
    if (snap) {
      const overlays = this.landings.filter((l) => l.version === undefined || l.version > snap.version);
      for (const l of overlays) overlay(snap, l.writes, events);
      const batch = await this.compute(events, snap, now, this.reader);
      // Nothing to write (every event a duplicate or late): true whatever others wrote since.
      if (batch.writes.count === 0) {
        await this.project(batch);
        return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [], conflicts: 0 };
      }
      const hadRun = this.ours !== undefined;
      const done = await this.commitOverlapped(snap, overlays, batch, release);
      if (done) {
        await done.projected;
        return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [this.committedMs(done, events.length)], conflicts: 0 };
      }
      // Computed again below: somebody else wrote since (not so for the first commit, which starts a run of ours).
      if (hadRun) conflicts++;
    }
    // Fresh reads under WATCH, one transaction at a time until one commits. (A WATCH left by
    // the last transaction only makes it stricter: it began before these reads.)
    return this.writerSection(async () => {
      for (let retries = 1; ; retries++) {
        this.watched = undefined;
        const fresh = await this.read(events, this.writer, true);
        const connection = this.writer.connection;
        const batch = await this.compute(events, fresh, now, this.writer);
        if (batch.writes.count === 0) {
          await this.writer.send([["UNWATCH"]]);
          await this.project(batch);
          return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [], conflicts };
        }
        const tx = await this.transaction(batch.writes, connection);
        if (tx !== undefined) {
          const { version } = tx;
          this.landings = [{ writes: batch.writeSet, version, committed: Promise.resolve(true) }];
          this.ours = { from: version, to: version };
          await this.project(batch);
          return { counts: batch.counts, eventTimeHigh: batch.high, transactionMs: [this.committedMs(tx, events.length)], conflicts };
        }
        conflicts++;
        // Another writer committed first: back off a little (a random bit, so two workers do
        // not collide in step) and compute again from what it wrote.
        await sleep(Math.random() * Math.min(20, 1 + retries));
      }
    });
  }

  /**
   * Commits a batch computed from an overlaid snapshot if that was valid: every batch it was
   * completed with committed, the snapshot saw a version in our own unbroken run, and nobody has
   * written since. Lets the next batch compute as soon as the transaction is sent. Returns false
   * when the batch must be recomputed.
   */
  private async commitOverlapped(
    snap: Snapshot,
    overlays: Landing[],
    batch: Computed,
    release: () => void,
  ): Promise<(Committed & { projected: Promise<void> }) | undefined> {
    let landing: Landing | undefined;
    let exec: Promise<Committed | undefined> | undefined;
    let projected: Promise<void> = Promise.resolve();
    await this.writerSection(async () => {
      // The WATCH our last transaction left, and the version then; else one now.
      const pre = this.watched;
      this.watched = undefined;
      let cur = await pre?.version;
      let connection = pre?.connection;
      if (cur === undefined || connection !== this.writer.connection) {
        const [, current] = await this.writer.send([
          ["WATCH", this.keys.version],
          ["GET", this.keys.version],
        ]);
        cur = current === null ? 0 : Number(current);
        connection = this.writer.connection;
      }
      const allLanded = (await Promise.all(overlays.map((l) => l.committed))).every(Boolean);
      const ours = this.ours;
      // Every commit of ours the snapshot may lack must be among those it was completed with: a
      // batch recomputed after a refused EXEC commits after this one was computed.
      const missing = this.landings.some((l) => l.version !== undefined && l.version > snap.version && !overlays.includes(l));
      if (!allLanded || missing || !ours || snap.version < ours.from - 1 || snap.version > ours.to || cur !== ours.to) {
        await this.writer.send([["UNWATCH"]]);
        return;
      }
      let committed!: (ok: boolean) => void;
      landing = { writes: batch.writeSet, committed: new Promise<boolean>((r) => (committed = r)) };
      this.landings.push(landing);
      if (this.landings.length > 8) {
        this.landings.shift();
        // A snapshot older than the oldest batch kept could not be completed: it must read afresh.
        const oldest = this.landings[0]!.version;
        if (oldest !== undefined && this.ours) this.ours.from = Math.max(this.ours.from, oldest);
      }
      exec = this.transaction(batch.writes, connection!);
      // Sent as soon as EXEC answers, so projections go out in commit order.
      projected = exec.then((tx) => (tx ? this.project(batch) : undefined));
      projected.catch(() => undefined);
      exec.then(
        (tx) => {
          const version = tx?.version;
          if (version !== undefined) {
            landing!.version = version;
            if (this.ours && version === this.ours.to + 1) this.ours.to = version;
            else this.ours = { from: version, to: version };
          } else this.ours = undefined;
          committed(version !== undefined);
        },
        () => {
          // The caller, awaiting the same promise, reports the error.
          this.ours = undefined;
          committed(false);
        },
      );
    });
    if (!exec || !landing) return undefined;
    release();
    const tx = await exec;
    if (tx === undefined) this.landings = this.landings.filter((l) => l !== landing);
    return tx && { ...tx, projected };
  }

  /** Writes a batch's projection (projectSeparately): after its commit, or for a redelivered batch that commits nothing. */
  private async project(batch: Computed): Promise<void> {
    await batch.projection?.();
  }

  /** A committed transaction's Redis time, noted to size the next ones. */
  private committedMs(tx: Committed, events: number): number {
    this.noteCost(tx.redisMs, events);
    return tx.redisMs;
  }

  /** Runs a WATCH … EXEC section on the writer connection, after the ones before it. */
  private writerSection<T>(section: () => Promise<T>): Promise<T> {
    const turn = this.writerTurn;
    let done!: () => void;
    this.writerTurn = new Promise<void>((r) => (done = r));
    return turn.then(section).finally(done);
  }

  /**
   * MULTI, TIME, the writes, INCR version, TIME, EXEC: the new version and how long Redis spent
   * executing it (by its own clock), or undefined if a watched key changed. Sent only on the
   * connection whose WATCH it relies on. Then WATCH and GET the version for the next one: it
   * saves that one a round trip, and its GET tells whether anybody wrote in between.
   */
  private async transaction(writes: RespWriter, connection: number): Promise<Committed | undefined> {
    const v = this.keys.version;
    const sent = this.writer.send([["MULTI"], ["TIME"], writes, ["INCR", v], ["TIME"], ["EXEC"], ["WATCH", v], ["GET", v]], { onConnection: connection });
    this.watched = {
      connection,
      version: sent.then(
        (r) => (r.at(-1) === null ? 0 : typeof r.at(-1) === "string" ? Number(r.at(-1)) : undefined),
        () => undefined,
      ),
    };
    const replies = await sent;
    return execResult(replies.slice(0, -2));
  }

  /** Reads what a batch depends on (under WATCH of the store version when `watch`). */
  private async read(events: readonly ActivityEvent[], conn: RespConnection, watch: boolean): Promise<Snapshot> {
    const k = this.keys;
    const plans = this.views.map((view) => planView(view, events, this.include?.get(view)));
    const reads = new Reads();
    const snap: Snapshot = {
      version: 0,
      plans,
      high: -Infinity,
      status: new Map(),
      applied: new Set(),
      distinct: new Map(),
      trend: new Map(),
      newerRead: new Map(),
    };
    reads.add(["GET", k.version], (r) => (snap.version = r === null ? 0 : Number(r)));
    let epoch: number | undefined;
    if (this.epoch !== undefined) reads.add(["GET", k.epoch], (r) => (epoch = r === null ? undefined : Number(r)));
    reads.add(["GET", k.eventTimeHigh], (r) => (snap.high = r === null ? -Infinity : Number(r)));
    for (const v of this.views) {
      reads.add(["HGETALL", k.windows(v.entity)], (r) => {
        const m = new Map<number, WindowStatus>();
        const flat = r as string[];
        for (let i = 0; i < flat.length; i += 2) m.set(Number(flat[i]), flat[i + 1] as WindowStatus);
        snap.status.set(v, m);
        this.knownWindows.set(v, m);
      });
    }
    const byBucket = new Map<number, string[]>();
    for (const e of events) {
      const b = windowStart(e.event_time, this.bucketMs);
      let ids = byBucket.get(b);
      if (!ids) byBucket.set(b, (ids = [k.seen(b)]));
      ids.push(e.event_id);
    }
    for (const ids of byBucket.values()) {
      reads.add(["HMGET", ...ids], (r) => {
        const found = r as (string | null)[];
        for (let i = 0; i < found.length; i++) if (found[i] !== null) snap.applied.add(ids[i + 1]!);
      });
    }
    for (const p of plans) {
      const aggs = p.view.aggregations;
      for (const [ws, groups] of p.byWindow) {
        const list = [...groups.values()];
        const cmd: RespArg[] = ["HMGET", k.state(p.view.entity, ws)];
        for (const g of list) cmd.push(g.entityId);
        reads.add(cmd, (r) => {
          const found = r as (string | null)[];
          for (let i = 0; i < found.length; i++) {
            if (found[i] === null) continue;
            list[i]!.state = unpack(found[i]!, p.view);
            noteNewer(p, list[i]!.entityId, ws);
          }
        });
        if (p.distinctAggs.length === 0) continue;
        const dkey = k.distinct(p.view.entity, ws);
        const fields = new Set<string>();
        for (const g of list) {
          for (let e = g.first; e !== -1; e = p.next[e]!) {
            for (const i of p.distinctAggs) {
              const v = contributionOf(aggs[i]!, events[e]!);
              if (v !== false) fields.add(distinctField(g.entityId, i, v as string));
            }
          }
        }
        const flist = [...fields];
        if (flist.length > 0) {
          reads.add(["HMGET", dkey, ...flist], (r) => {
            const found = r as (string | null)[];
            for (let i = 0; i < found.length; i++) if (found[i] !== null) distinctSet(snap.distinct, dkey).add(flist[i]!);
          });
        }
      }
      this.readNewer(reads, snap, p, this.knownWindows.get(p.view)!.keys());
    }
    const tplan = trendPlanOf(plans, this.ctx);
    if (tplan && events.length > 0) {
      const items = [...new Set(tplan.groupOf.flatMap((g) => (g ? [g.entityId] : [])))];
      // Partitioned, a batch may hold no event of this partition's items.
      if (items.length > 0)
        reads.add(["HMGET", k.trend, ...items], (r) =>
          (r as (string | null)[]).forEach((x, i) => {
            if (x !== null) snap.trend.set(items[i]!, trendOf(x));
          }),
        );
    }
    await reads.run(conn, watch ? [k.version] : []);
    // Under WATCH of the version, which a new owner raises with the epoch: the fence.
    if (this.epoch !== undefined && epoch !== this.epoch) {
      if (watch) await conn.send([["UNWATCH"]]);
      throw new LeaseLostError(`the partition's lease moved on (epoch ${epoch} in Redis, ours ${this.epoch})`);
    }
    return snap;
  }

  /**
   * Whether an older window's group is its entity's newest: reads the entity in the view's newer
   * windows (events out of order within the watermark).
   */
  private readNewer(into: Reads, snap: Snapshot, p: ViewPlan, windows: Iterable<number>): void {
    const all = new Set([...windows, ...p.byWindow.keys()]);
    if (all.size < 2) return; // one window: no group is older than another's
    for (const ws of all) {
      const key = this.keys.state(p.view.entity, ws);
      const here = p.byWindow.get(ws);
      let read = snap.newerRead.get(key);
      const older: string[] = [];
      for (const [bws, groups] of p.byWindow) {
        if (bws >= ws) continue;
        for (const id of groups.keys()) {
          if (here?.has(id) || read?.has(id)) continue;
          if (!read) snap.newerRead.set(key, (read = new Set()));
          read.add(id);
          older.push(id);
        }
      }
      if (older.length === 0) continue;
      into.add(["HMGET", key, ...older], (r) => (r as (string | null)[]).forEach((x, i) => x !== null && noteNewer(p, older[i]!, ws)));
    }
  }

  /** What the batch does, from its snapshot: counts, the writes, and what they set. */
  private async compute(events: readonly ActivityEvent[], snap: Snapshot, now: number, conn: RespConnection): Promise<Computed> {
    // A window that appeared since the previous batch may hold an older group's newer state.
    const late = new Reads();
    for (const p of snap.plans) this.readNewer(late, snap, p, snap.status.get(p.view)!.keys());
    await late.run(conn, []);
    const { counts, writeSet } = planWrites(events, snap, now, this.ctx);
    const projection = this.projector?.prepare(writeSet, this.encoder);
    return { counts, high: writeSet.high, writes: this.encoder.encode(writeSet), projection, writeSet };
  }
}

/** Reads sent in one round trip (after a WATCH, when given keys to watch). */
class Reads {
  private readonly list: { cmd: RespCommand; use(reply: RespReply): void }[] = [];

  add(cmd: RespCommand, use: (reply: RespReply) => void): void {
    this.list.push({ cmd, use });
  }

  async run(conn: RespConnection, watch: readonly string[]): Promise<void> {
    if (this.list.length === 0) return;
    const head: RespCommand[] = watch.length > 0 ? [["WATCH", ...watch]] : [];
    const replies = await conn.send([...head, ...this.list.map((r) => r.cmd)]);
    throwIfError(replies, "reading the window state");
    this.list.forEach((r, i) => r.use(replies[i + head.length]!));
  }
}

/** The outcome of computing a batch. */
interface Computed {
  counts: Record<string, ViewCounts>;
  high: number;
  writes: RespWriter;
  /** Sends the public hashes and trending scores, when written after the transaction. */
  projection?: () => Promise<void>;
  writeSet: WriteSet;
}

/** A batch of ours whose writes later snapshots may lack: its version once EXEC answered. */
interface Landing {
  writes: WriteSet;
  version?: number;
  /** Resolves true once committed, false if EXEC refused it. */
  committed: Promise<boolean>;
}

/** A transaction that landed: the store version it made, and its Redis time. */
interface Committed {
  version: number;
  redisMs: number;
}

/**
 * The store version after a MULTI TIME … INCR version TIME EXEC and the time between its two
 * TIMEs, or undefined if EXEC refused it (WATCH).
 */
function execResult(replies: readonly RespReply[]): Committed | undefined {
  const exec = replies[replies.length - 1]!;
  if (exec === null) return undefined;
  if (exec instanceof RespError) throw new WindowStoreError(`Redis refused the feature batch: ${exec.message}`, { cause: exec });
  const results = exec as RespReply[];
  throwIfError(results, "writing the feature batch");
  const micros = (t: RespReply) => Number((t as string[])[0]) * 1e6 + Number((t as string[])[1]);
  return { version: Number(results[results.length - 2]), redisMs: (micros(results[results.length - 1]!) - micros(results[0]!)) / 1000 };
}

/** One batch's result from its sub-batches' (in order). */
function mergeResults(parts: readonly ApplyResult[]): ApplyResult {
  if (parts.length === 1) return parts[0]!;
  const counts: Record<string, ViewCounts> = {};
  let eventTimeHigh = -Infinity;
  const transactionMs: number[] = [];
  let conflicts = 0;
  for (const p of parts) {
    conflicts += p.conflicts;
    for (const [entity, c] of Object.entries(p.counts)) {
      const into = (counts[entity] ??= { applied: 0, duplicates: 0, late: 0 });
      into.applied += c.applied;
      into.duplicates += c.duplicates;
      into.late += c.late;
    }
    if (p.eventTimeHigh > eventTimeHigh) eventTimeHigh = p.eventTimeHigh;
    transactionMs.push(...p.transactionMs);
  }
  return { counts, eventTimeHigh, transactionMs, conflicts };
}

function throwIfError(replies: readonly RespReply[], what: string): void {
  for (const r of replies) if (r instanceof RespError) throw new WindowStoreError(`Redis refused ${what}: ${r.message}`, { cause: r });
}
