// Partitioned features (--partitions P): the router, per-partition state under hash tags, leases
// shared by workers, the lease epoch fencing a stale owner, and the features equal to the
// independent computation whichever workers held which partitions.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import { WindowStore, LeaseLostError } from "../../features/window-store.js";
import { FEATURE_VIEWS, ITEM_FEATURES, TRENDING } from "../../features/definitions.js";
import { partitionOf, partitionsOfEvent } from "../../features/partitions.js";
import { scanKeys } from "../../lib/redis.js";
import { startRedisCluster, type OwnCluster } from "../redis-cluster.js";
import {
  assertClosedWindows,
  assertOnlineStore,
  closingEvent,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  testRuntime,
  uniqueNamespace,
  waitFor,
  waitPartitionsDrained,
  type TestEvent,
} from "./helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;
/** Resolves as `f` does, or rejects once `ms` passed. */
async function withinMs<T>(ms: number, what: string, f: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)));
  try {
    return await Promise.race([f(), late]);
  } finally {
    clearTimeout(timer);
  }
}

const FAST = { progressIntervalMs: 0, leaseTtlMs: 3000, rebalanceMs: 250, ackWaitMs: 10_000 };

test("partitionOf is stable and spreads ids", () => {
  assert.equal(partitionOf("u1", 16), partitionOf("u1", 16));
  const counts = new Array(16).fill(0);
  for (let i = 0; i < 16_000; i++) counts[partitionOf(`u${i}`, 16)]++;
  for (const c of counts) assert.ok(c > 800 && c < 1200, `partition sizes ${counts}`);
  assert.deepEqual(partitionsOfEvent({ user_id: "a", page_id: "a" }, 16), [partitionOf("a", 16)]);
});

/** Three workers on 8 partitions, on one Redis or (cluster) on a Redis Cluster of the test's own. */
function threeWorkers(title: string, cluster: boolean): void {
  describe(title, () => {
    let env: Awaited<ReturnType<typeof testRuntime>>;
    let own: OwnCluster | undefined;
    const workers: FeaturesWorker[] = [];
    const runtimes: Runtime[] = [];
    const P = 8;
    const base = makeEvents({ count: 3000, users: 60, pages: 25, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 31 });
    // Every 10th event published twice (no Nats-Msg-Id): the partitions' markers count it once.
    const stream: TestEvent[] = base.flatMap((e, i) => (i % 10 === 0 ? [e, e] : [e]));
    const flush = closingEvent(T0 + 40 * MIN);
    let conflictsBeforeClosing = -1;

    before(async () => {
      if (cluster) own = await startRedisCluster();
      env = await testRuntime(uniqueNamespace("feat_part"), own ? { redisUrl: own.url } : {});
      for (let i = 0; i < 3; i++) {
        const rt =
          i === 0 ? env.runtime : createRuntime({ namespace: env.runtime.config.namespace, logLevel: "silent", redisUrl: env.runtime.config.redisUrl });
        if (i > 0) runtimes.push(rt);
        workers.push(await startFeaturesWorker(rt, { ...FAST, partitions: P, maxBatch: 200 }));
      }
      await waitFor("every partition leased, shared 3/3/2", async () => {
        const held = workers.map((w) => w.partitions!().length).sort();
        return held.join() === "2,3,3";
      });
      await publishEvents(env.js, env.runtime.names, stream);
      await waitPartitionsDrained(env.nc, env.runtime.names, P);
      // Before any window closes: a partition's closer raising its version (at the flush) may make the
      // partition's next commit compute again, which counts too; that is its own worker, not another.
      conflictsBeforeClosing = workers.reduce((a, w) => a + w.stats.conflicts, 0);
      await publishEvents(env.js, env.runtime.names, [flush]);
      await waitPartitionsDrained(env.nc, env.runtime.names, P);
      await Promise.all(workers.map((w) => w.closeDueWindows()));
    });
    after(async () => {
      // Bounded: a stop that never resolves fails here, not as the whole file's timeout.
      await withinMs(30_000, "the workers' stop", async () => {
        for (const w of workers) await w.stop();
      }).finally(async () => {
        for (const rt of runtimes) await rt.close();
        await env?.cleanup();
        await own?.stop();
      });
    });

    test("each partition had one owner: no conflict retries, nothing applied twice", () => {
      const held = workers.flatMap((w) => w.partitions!()).sort((a, b) => a - b);
      assert.deepEqual(held, [0, 1, 2, 3, 4, 5, 6, 7]);
      const sum = (k: "applied" | "duplicates", entity: string) => workers.reduce((a, w) => a + (w.stats[k][entity] ?? 0), 0);
      assert.equal(sum("applied", "user"), base.length + 1);
      assert.equal(sum("applied", "item"), base.length + 1);
      // At least the republished ones (a loaded machine may also redeliver what was not acked within the ack wait).
      assert.ok(sum("duplicates", "user") >= stream.length - base.length, `duplicates ${sum("duplicates", "user")}`);
      assert.equal(conflictsBeforeClosing, 0, "no sub-batch computed again: each partition had one writer");
    });

    test("the features equal the independent computation", async () => {
      const expected = expectedWindows([...base, flush]);
      await assertOnlineStore(env.runtime, expected);
      assertClosedWindows(
        await readFeatureWindowLogs(env.nc, env.runtime.names),
        expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page"),
      );
    });

    test("a partition's state lives under its hash tag", async () => {
      const keys: string[] = [];
      for await (const page of scanKeys(env.runtime.redis(), `${env.runtime.names.redisPrefix}features:*`)) keys.push(...page);
      assert.ok(keys.length > 0);
      for (const k of keys) assert.match(k, new RegExp(`^${env.runtime.names.redisPrefix}features:\\{${env.runtime.names.redisPrefix}p0[0-7]\\}:`), k);
    });

    test("a worker that stops hands its partitions to the others", async () => {
      const leaving = workers.pop()!;
      await leaving.stop();
      await waitFor("the 8 partitions held by the two left", async () => workers.flatMap((w) => w.partitions!()).length === 8, 20_000);
    });
  });
}

threeWorkers("three workers on 8 partitions", false);

describe("a worker stopped while it is still starting its partitions", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_part_stop"));
  });
  after(async () => env?.cleanup());

  test("starts them, then releases every one: no lease left, nothing running", async () => {
    const w = await startFeaturesWorker(env.runtime, { ...FAST, partitions: 8 });
    // Its first round took the 8 leases; their partitions are being started as it is stopped.
    await withinMs(20_000, "stop()", () => w.stop());
    assert.deepEqual(w.partitions!(), []);
    const kv = await env.nc.jetstream().views.kv(env.runtime.names.featureLeasesBucket);
    const leases: string[] = [];
    for await (const k of await kv.keys("lease.>")) leases.push(k);
    assert.deepEqual(leases, [], "every lease deleted");
  });
});
threeWorkers("three workers on 8 partitions, on a Redis Cluster (3 masters)", true);

describe("the lease epoch fences a stale owner", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_fence"));
  });
  after(async () => env?.cleanup());

  test("a commit under an older epoch is refused once a newer one claimed the partition", async () => {
    const { runtime } = env;
    const opts = { partition: { index: 0, count: 1 } };
    const trending = { view: ITEM_FEATURES, spec: TRENDING };
    const old = new WindowStore(runtime.redis(), runtime.config.redisUrl, runtime.names, FEATURE_VIEWS, trending, opts);
    const next = new WindowStore(runtime.redis(), runtime.config.redisUrl, runtime.names, FEATURE_VIEWS, trending, opts);
    try {
      const [a, b] = [
        makeEvents({ count: 50, users: 5, pages: 5, startMs: T0, spanMs: MIN, seed: 1 }),
        makeEvents({ count: 50, users: 5, pages: 5, startMs: T0, spanMs: MIN, seed: 2, idPrefix: "x" }),
      ];
      await old.claim(10);
      await old.apply(a);
      await next.claim(11);
      await assert.rejects(old.apply(b), LeaseLostError);
      await assert.rejects(old.claim(10), LeaseLostError, "an older epoch cannot claim back");
      const r = await next.apply(b);
      assert.equal(r.counts.user!.applied, 50);
      await assertOnlineStore(runtime, expectedWindows([...a, ...b]));
    } finally {
      old.close();
      next.close();
    }
  });
});
