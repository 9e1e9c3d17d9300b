// A features worker of a partitioned deployment (partitions > 1): the router and the partitions it leases.
//
//   events.activity ──router (durable FEATURES-ROUTER, shared by every worker)──▶ events.keyed.pNN
//   events.keyed.pNN ──partition pNN's loop (durable FEATURES-PNN, run by the lease holder)──▶ its store
//
// The invariant: a partition's store is written only by the holder of its lease, under the
// lease's epoch (features/leases.ts; the store refuses to commit under an older epoch), so each
// partition has one writer and workers never retry against each other. Each partition's loop is
// the features worker's own loop (features/worker.ts) on a store of that partition; its windows
// close by the newest event time of all partitions, so a quiet partition's windows close too.
import calculateSlot from "cluster-key-slot";
import type { Runtime } from "../lib/runtime.js";
import { isCluster } from "../lib/redis.js";
import { clusterNodeUrl } from "../lib/redis-url.js";
import { ClusterProjection } from "./projection.js";
import { FEATURE_VIEWS, TRENDING } from "./definitions.js";
import { EventRouter } from "./event-router.js";
import { PartitionLeases } from "./leases.js";
import { checkPartitionCount, partitionConsumerPart, partitionLabel, partitionSubject } from "./partitions.js";
import { storeKeys } from "./store-keys.js";
import { ThreadedWindowStore, type FeatureStore } from "./store-thread.js";
import { loopOptions, startWorkerLoop, type FeaturesWorker, type FeaturesWorkerOptions, type FeaturesWorkerStats } from "./worker.js";

/** How long the newest event time over all partitions is reused before it is read again. */
const HIGH_CACHE_MS = 100;

export async function startPartitionedWorker(runtime: Runtime, options: FeaturesWorkerOptions): Promise<FeaturesWorker> {
  const P = options.partitions ?? 1;
  checkPartitionCount(P);
  const log = runtime.log.child({ part: "features" });
  const routerOpts = loopOptions({ ...options, consumerPart: "features-router" });
  // A partition's batches are its share of the stream: smaller, and fewer pulled ahead each. Its
  // timers run less often than a lone worker's: there are P of them in a process, and each consumer
  // info makes nats-server count the partition's pending messages.
  const partOpts = loopOptions({
    ...options,
    maxBatch: Math.min(options.maxBatch ?? 1000, 1000),
    closeIntervalMs: Math.max(options.closeIntervalMs ?? 1000, 250),
    lagIntervalMs: Math.max(options.lagIntervalMs ?? 15_000, 5_000),
    progressIntervalMs: 0,
  });
  const views = options.views ?? FEATURE_VIEWS;
  const trendingSpec = options.trending === undefined ? TRENDING : options.trending;
  const itemView = views.find((v) => v.entity === "item");
  const trending = trendingSpec && itemView ? { view: itemView, spec: trendingSpec } : null;
  const storeOptions = { featureTtlMs: runtime.config.featureTtlSeconds * 1000, ...options.store };
  const nc = await runtime.nats();
  const js = nc.jetstream();
  const redis = runtime.redis();

  const highKeys = Array.from({ length: P }, (_, p) => storeKeys(runtime.names.redisPrefix, partitionLabel(p)).eventTimeHigh);
  let high: { at: number; value: Promise<number> } | undefined;
  const globalHigh = (): Promise<number> => {
    if (!high || Date.now() - high.at > HIGH_CACHE_MS) {
      // One GET per partition (each lives in its own slot on a cluster).
      const value = Promise.all(highKeys.map((k) => redis.get(k))).then((vs) => Math.max(-Infinity, ...vs.map((v) => (v === null ? -Infinity : Number(v)))));
      value.catch(() => (high = undefined));
      high = { at: Date.now(), value };
    }
    return high.value;
  };

  // On a Redis Cluster: a partition's RESP connections go to its slot's master, its projection to every master.
  const projection = isCluster(redis) ? new ClusterProjection(redis, runtime.config.redisUrl) : undefined;
  const storeUrl = async (p: number): Promise<string> => {
    if (!isCluster(redis)) return runtime.config.redisUrl;
    const key = storeKeys(runtime.names.redisPrefix, partitionLabel(p)).version;
    await redis.get(key); // connected, with the slot table
    const node = redis.slots[calculateSlot(key)]?.[0];
    if (!node) throw new Error(`no Redis Cluster master known for partition ${partitionLabel(p)}`);
    return clusterNodeUrl(runtime.config.redisUrl, node);
  };

  const runners = new Map<number, FeaturesWorker>();
  const retired: FeaturesWorkerStats[] = [];
  const stopRunner = async (p: number) => {
    const r = runners.get(p);
    if (!r) return;
    runners.delete(p);
    await r.stop();
    retired.push(r.stats);
  };
  const leases = new PartitionLeases(
    nc,
    runtime.names.featureLeasesBucket,
    // A partition's loop stops within stopTimeoutMs and 2 s (worker.ts); a start gets as long again.
    { partitions: P, ttlMs: options.leaseTtlMs, rebalanceMs: options.rebalanceMs, stopTimeoutMs: 2 * partOpts.stopTimeoutMs + 5_000 },
    {
      async acquired(p, epoch) {
        const store = new ThreadedWindowStore(
          redis,
          await storeUrl(p),
          runtime.config.namespace,
          views,
          trending,
          { ...storeOptions, partition: { index: p, count: P }, projection },
          // One thread per partition would be P threads: the partitions share this process's thread.
          { thread: false, parser: options.parser },
        );
        try {
          await store.claim(epoch);
        } catch (err) {
          store.close();
          throw err;
        }
        const partStore: FeatureStore = {
          applyMessages: (b, now) => store.applyMessages(b, now),
          eventTimeHigh: globalHigh,
          closeDue: (view, h, publish, chunk) => store.closeDue(view, h, publish, chunk),
          readFeatures: (view, id) => store.readFeatures(view, id),
          close: () => store.close(),
        };
        const runner = await startWorkerLoop(
          runtime,
          js,
          partStore,
          { ...partOpts, consumerPart: partitionConsumerPart(p) },
          partitionSubject(runtime.names, p),
        );
        runners.set(p, runner);
        log.info({ partition: partitionLabel(p), epoch, holding: leases.partitions().length }, "partition acquired");
      },
      async releasing(p) {
        await stopRunner(p);
        log.info({ partition: partitionLabel(p) }, "partition released");
      },
      async lost(p) {
        await stopRunner(p);
      },
    },
    log,
  );

  const routerStore = new EventRouter(nc, runtime.names, P, options.parser);
  const router = await startWorkerLoop(runtime, js, routerStore, routerOpts, runtime.names.eventsSubject);
  await leases.start();
  log.info({ partitions: P, worker: leases.workerId, holding: leases.partitions() }, "partitioned features worker consuming");

  const sumStats = (): FeaturesWorkerStats => {
    const out: FeaturesWorkerStats = { messages: 0, batches: 0, applied: {}, duplicates: {}, late: {}, deadLetters: 0, windowsClosed: {}, conflicts: 0 };
    const add = (into: Record<string, number>, from: Record<string, number>) => {
      for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
    };
    for (const s of [...retired, ...[...runners.values()].map((r) => r.stats)]) {
      out.batches += s.batches;
      add(out.applied, s.applied);
      add(out.duplicates, s.duplicates);
      add(out.late, s.late);
      add(out.windowsClosed, s.windowsClosed);
      out.conflicts += s.conflicts;
    }
    // Messages and dead letters are the router's: what came from events.activity.
    out.messages = router.stats.messages;
    out.deadLetters = router.stats.deadLetters;
    return out;
  };

  let stopped: Promise<void> | undefined;
  return {
    name: "features",
    get stats() {
      return sumStats();
    },
    store: routerStore,
    eventTimeHigh: () => Math.max(-Infinity, ...[...runners.values()].map((r) => r.eventTimeHigh())),
    async closeDueWindows() {
      high = undefined; // asked for now: by the newest event time now, not the cached one
      const n = await Promise.all([...runners.values()].map((r) => r.closeDueWindows()));
      return n.reduce((a, b) => a + b, 0);
    },
    partitions: () => leases.partitions(),
    stop() {
      stopped ??= (async () => {
        await router.stop();
        await leases.stop();
        projection?.close();
      })();
      return stopped;
    },
  };
}
