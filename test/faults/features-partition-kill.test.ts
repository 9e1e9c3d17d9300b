// Partitioned features under failure: three `streamserve features --partitions 8` processes work
// through a stream; one is killed with SIGKILL mid-stream and a fourth joins. The dead worker's
// partitions must move to live workers (within lease TTL + a rebalance round; the time is
// printed) and the features must then equal the independent computation exactly: nothing lost,
// nothing applied twice. Once on one Redis, once on a Redis Cluster of the test's own (3 masters).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
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
  spawnFeaturesProcess,
  type FeaturesProcess,
  type TestEvent,
} from "../features/helpers.js";
import { partitionLabel } from "../../features/partitions.js";
import { startRedisCluster, type OwnCluster } from "../redis-cluster.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;
const P = 8;
const LEASE_TTL_MS = 3000;

type Worker = FeaturesProcess;

function startWorker(namespace: string, redisUrl: string): Worker {
  return spawnFeaturesProcess(
    namespace,
    ["--partitions", String(P), "--lease-ttl", `${LEASE_TTL_MS}ms`, "--batch-size", "200", "--ack-wait", "3s", "--close-interval", "100ms"],
    { REDIS_URL: redisUrl },
  );
}

for (const cluster of [false, true]) {
  describe(cluster ? "on a Redis Cluster (3 masters)" : "on one Redis", () => {
    let env: Awaited<ReturnType<typeof testRuntime>>;
    let own: OwnCluster | undefined;
    const running: Worker[] = [];

    before(async () => {
      if (cluster) own = await startRedisCluster();
      env = await testRuntime(uniqueNamespace("feat_pkill"), own ? { redisUrl: own.url } : {});
    });
    after(async () => {
      for (const w of running) w.child.kill("SIGKILL");
      await env?.cleanup();
      await own?.stop();
    });

    test("SIGKILL one of three partitioned workers mid-stream, add a fourth: partitions move, features exact", async () => {
      const { nc, js, runtime } = env;
      const names = runtime.names;
      const ns = runtime.config.namespace;
      const events = makeEvents({ count: 20_000, users: 300, pages: 60, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 77 });
      const flush: TestEvent = closingEvent(T0 + 40 * MIN);
      const url = runtime.config.redisUrl;
      for (let i = 0; i < 3; i++) running.push(startWorker(ns, url));

      const kv = await nc.jetstream().views.kv(names.featureLeasesBucket, { history: 1, ttl: LEASE_TTL_MS });
      /** Partition → the pid of its lease holder (worker ids are host-pid-random). */
      const holders = async () => {
        const out = new Map<number, number>();
        for (let p = 0; p < P; p++) {
          const e = await kv.get(`lease.${partitionLabel(p)}`).catch(() => null);
          if (e && e.operation === "PUT") out.set(p, Number(/-(\d+)-[0-9a-f]+$/.exec(e.string())?.[1]));
        }
        return out;
      };
      const pids = () => new Set(running.filter((w) => w.child.exitCode === null && w.child.signalCode === null).map((w) => w.child.pid!));
      await waitFor(
        "the three workers to share the 8 partitions",
        async () => {
          const h = await holders();
          return h.size === P && new Set(h.values()).size === 3;
        },
        60_000,
        100,
      );

      // A backlog keeps every worker busy, so the kill lands inside batches.
      const publishing = publishEvents(js, names, events, { encodings: ["json-ms", "protobuf"] });
      const jsm = await nc.jetstreamManager();
      await waitFor(
        "the router to have passed 5000 events on",
        async () => (await jsm.consumers.info(names.eventsStream, names.consumer("features-router"))).ack_floor.stream_seq >= 5000,
        60_000,
        20,
      );
      const victim = running[1]!;
      const victimPartitions = [...(await holders())].filter(([, pid]) => pid === victim.child.pid).map(([p]) => p);
      victim.child.kill("SIGKILL");
      const killedAt = Date.now();
      await victim.exited;
      running.push(startWorker(ns, url));

      const moved = await waitFor(
        "the dead worker's partitions to be held by live workers",
        async () => {
          const h = await holders();
          const live = pids();
          return victimPartitions.every((p) => live.has(h.get(p)!)) && Date.now() - killedAt;
        },
        60_000,
        50,
      );
      await publishing;
      await waitPartitionsDrained(nc, names, P, 120_000).catch((err) => {
        const warnings = running.map((w) =>
          w.stderr
            .join("")
            .split("\n")
            .filter((l) => /"level":(40|50|60)/.test(l))
            .slice(-5)
            .join("\n"),
        );
        throw new Error(`${(err as Error).message}\n${warnings.join("\n--\n")}`);
      });
      await publishEvents(js, names, [flush]);
      await waitPartitionsDrained(nc, names, P);
      const expected = expectedWindows([...events, flush]);
      const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
      await waitFor("every window closed and logged", async () => (await readFeatureWindowLogs(nc, names)).length >= closed.length, 30_000, 200);

      await assertOnlineStore(runtime, expected);
      assertClosedWindows(await readFeatureWindowLogs(nc, names), closed);
      const final = await holders();
      assert.equal(final.size, P, "every partition held");
      assert.equal(new Set(final.values()).size, 3, `the three live workers share them: ${JSON.stringify([...final])}`);
      for (const pid of final.values()) assert.ok(pids().has(pid), "only live workers hold leases");

      for (const w of running.filter((w) => w !== victim)) w.child.kill("SIGTERM");
      for (const w of running.filter((w) => w !== victim)) assert.equal(await w.exited, 0, `clean exit\n${w.stderr.join("").slice(-2000)}`);
      console.log(
        `# ${cluster ? "Redis Cluster" : "one Redis"}: killed a worker holding ${victimPartitions.map(partitionLabel).join(",")}; all of them held by live workers ${moved} ms later ` +
          `(lease TTL ${LEASE_TTL_MS} ms + rebalance 1000 ms)`,
      );
      await sleep(0);
    });
  });
}
