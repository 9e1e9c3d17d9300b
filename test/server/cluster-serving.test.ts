// Serving on a real Redis Cluster of the test's own (3 masters): trending and the features Recommend
// scores with are read from the cluster, the feature read is one pipeline per master holding some
// of the request's keys, all sent before any answers, and a dead master costs requests their
// features (defaults, flagged), never their answer, until it is back.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import calculateSlot from "cluster-key-slot";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServing, type Serving } from "./harness.js";
import { startRedisCluster, type OwnCluster } from "../redis-cluster.js";
import { lookupFeatures } from "../../server/feature-lookup.js";
import { type Command, Redis as SingleRedis } from "ioredis";
import { connectRedis, isCluster, waitReady, type Cluster } from "../../lib/redis.js";
import { createLogger } from "../../lib/logger.js";
import { logisticModel, sigmoid } from "../fixtures/onnx-models.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile", "tablet"] },
];
const WEIGHTS = [0.5, 0.25, 1];
const BIAS = -1;
const ITEMS = Array.from({ length: 12 }, (_, i) => `page_${i}`);
const clicksOf = (item: string) => Number(item.slice(5)) + 1;

describe("serving on a Redis Cluster", () => {
  let cluster: OwnCluster;
  let rt: TestRuntime;
  let serving: Serving;

  /**
   * The tests of the read's shape use a serving client with a patient timeout: they are about calls,
   * not the 100 ms budget, and the machine may be loaded. The budget is the dead master test's.
   */
  let reader: Cluster;
  /** The port of the master that serves a key, as the cluster client sees the topology. */
  const masterPort = (key: string) => Number(reader.slots[calculateSlot(key)]![0]!.split(":").pop());

  before(async () => {
    cluster = await startRedisCluster();
    rt = testRuntime({ redisUrl: cluster.url });
    const redis = rt.redis();
    assert.ok(isCluster(redis), "REDIS_URL redis+cluster:// gives a cluster client");
    await redis.zadd(rt.names.trendingKey, 30, "page_3", 20, "page_1", 10, "page_7");
    await redis.hset(rt.names.userFeaturesKey("u1"), { clicks_last_5min: "4" });
    for (const item of ITEMS) await redis.hset(rt.names.itemFeaturesKey(item), { item_clicks_5min: String(clicksOf(item)) });
    serving = await startServing(rt);
    assert.ok(await waitReady(rt.servingRedis(), 10_000));
    reader = connectRedis(cluster.url, createLogger("silent"), { mode: "serving", commandTimeoutMs: 2000 }) as Cluster;
    assert.ok(await waitReady(reader, 10_000));
  });

  after(async () => {
    reader?.disconnect();
    await serving?.close();
    await rt?.cleanup();
    await cluster?.stop();
  });

  it("the request's keys live on all three masters", () => {
    const ports = new Set([rt.names.userFeaturesKey("u1"), ...ITEMS.map((i) => rt.names.itemFeaturesKey(i))].map(masterPort));
    assert.deepEqual([...ports].sort(), cluster.nodes.map((n) => n.port).sort());
  });

  it("serves trending items from the cluster before any model exists", async () => {
    await waitFor(() => serving.server.models.ready, 10_000, "server ready");
    await waitFor(async () => (await serving.client.recommend({ userId: "u1" })).recommendations.length === 3, 10_000, "trending read");
    const res = await serving.client.recommend({ userId: "u1" });
    assert.equal(res.modelVersion, "fallback");
    assert.deepEqual(
      res.recommendations.map((r) => r.itemId),
      ["page_3", "page_1", "page_7"],
    );
  });

  it("reads a request's features with one script call per master, all sent before any answer", async () => {
    const serving_ = reader;
    const read = () => lookupFeatures(serving_, rt.names, FEATURES, { userId: "u1", currentPage: "", deviceType: "mobile" }, [...ITEMS, "page_none"]);
    await read(); // every master has the script now: a first call sends EVAL after EVALSHA's NOSCRIPT
    // Every command the client sends, and when its answer comes (a spy on the real client; Redis answers for real).
    const events: string[] = [];
    const cluster_ = serving_;
    const sendCommand = cluster_.sendCommand;
    cluster_.sendCommand = function (this: Cluster, command: Command, ...rest: Parameters<typeof sendCommand> extends [unknown, ...infer R] ? R : never) {
      events.push(`sent ${command.name}`);
      command.promise.finally(() => events.push("answered")).catch(() => undefined);
      return sendCommand.call(this, command, ...rest);
    } as typeof sendCommand;
    await cluster.resetStats();
    let m;
    try {
      m = await read();
    } finally {
      cluster_.sendCommand = sendCommand;
    }
    assert.equal(m.unavailable, false);
    assert.deepEqual(
      Array.from(m.matrix),
      [...ITEMS, "page_none"].flatMap((item) => [4, item === "page_none" ? 0 : clicksOf(item), 1]),
    );
    assert.deepEqual(m.missing, ["item_clicks_5min"], "page_none has no hash");
    assert.deepEqual(events, ["sent evalsha", "sent evalsha", "sent evalsha", "answered", "answered", "answered"], "three script calls, in parallel");
    // What each master ran: one script call, and in it one HMGET per key it holds.
    const expected = new Map<number, number>(cluster.nodes.map((n) => [n.port, 0]));
    for (const key of [rt.names.userFeaturesKey("u1"), ...[...ITEMS, "page_none"].map((i) => rt.names.itemFeaturesKey(i))]) {
      expected.set(masterPort(key), expected.get(masterPort(key))! + 1);
    }
    const calls = await cluster.commandCalls();
    for (const [port, hmgets] of expected) {
      assert.equal(calls.get(port)?.hmget ?? 0, hmgets, `HMGETs on the master at ${port}`);
      assert.equal(calls.get(port)?.evalsha ?? 0, 1, `one script call on the master at ${port}`);
      assert.equal(calls.get(port)?.eval ?? 0, 0);
    }
  });

  it("lookups started together share one script call per master, and each gets its own rows", async () => {
    const serving_ = reader;
    const users = Array.from({ length: 40 }, (_, i) => `batch-u${i}`);
    for (const [i, u] of users.entries()) await rt.redis().hset(rt.names.userFeaturesKey(u), { clicks_last_5min: String(i) });
    const itemOf = (i: number) => ITEMS[i % ITEMS.length]!;
    await cluster.resetStats();
    // Started in one turn of the event loop, as concurrent requests are.
    const results = await Promise.all(
      users.map((u, i) => lookupFeatures(serving_, rt.names, FEATURES, { userId: u, currentPage: "", deviceType: "desktop" }, [itemOf(i)])),
    );
    results.forEach((m, i) => {
      assert.equal(m.unavailable, false);
      assert.deepEqual(Array.from(m.matrix), [i, clicksOf(itemOf(i)), 0], `user ${i} got its own values`);
    });
    const hmgets = new Map<number, number>(cluster.nodes.map((n) => [n.port, 0]));
    for (const [i, u] of users.entries()) {
      for (const key of [rt.names.userFeaturesKey(u), rt.names.itemFeaturesKey(itemOf(i))]) hmgets.set(masterPort(key), hmgets.get(masterPort(key))! + 1);
    }
    const calls = await cluster.commandCalls();
    for (const [port, n] of hmgets) {
      assert.equal(calls.get(port)?.evalsha ?? 0, 1, `one script call for the 40 lookups on the master at ${port}`);
      assert.equal(calls.get(port)?.hmget ?? 0, n, `in it, one HMGET per key on the master at ${port}`);
    }
  });

  it("a busy turn's script calls read at most 1000 keys each, so none holds a master up for long", async () => {
    const serving_ = reader;
    const lookups = Array.from({ length: 4 }, (_, r) => Array.from({ length: 1000 }, (_, k) => `split-${r}-${k}`));
    await cluster.resetStats();
    const results = await Promise.all(
      lookups.map((items) => lookupFeatures(serving_, rt.names, FEATURES, { userId: "u1", currentPage: "", deviceType: "" }, items)),
    );
    for (const m of results) {
      assert.equal(m.unavailable, false);
      assert.equal(m.matrix[0], 4, "the user's value");
    }
    const perMaster = new Map<number, number>(cluster.nodes.map((n) => [n.port, 0]));
    for (const key of lookups.flatMap((items) => [rt.names.userFeaturesKey("u1"), ...items.map((i) => rt.names.itemFeaturesKey(i))])) {
      perMaster.set(masterPort(key), perMaster.get(masterPort(key))! + 1);
    }
    const calls = await cluster.commandCalls();
    for (const [port, keys] of perMaster) {
      assert.ok(keys > 1000, `${keys} keys on the master at ${port}`);
      assert.equal(calls.get(port)?.evalsha ?? 0, Math.ceil(keys / 1000), `script calls on the master at ${port} for ${keys} keys`);
    }
  });

  it("where scripts are denied (ACL), reads by HMGET pipelines with the URL's user and password", async () => {
    const perNode = async (f: (r: SingleRedis) => Promise<unknown>) =>
      Promise.all(
        cluster.nodes.map(async (n) => {
          const r = new SingleRedis(n.port, "127.0.0.1");
          try {
            await f(r);
          } finally {
            r.disconnect();
          }
        }),
      );
    await perNode((r) => r.acl("SETUSER", "reader", "on", ">s3cret", "~*", "+@all", "-@scripting"));
    const url = cluster.url.replace("redis+cluster://", "redis+cluster://reader:s3cret@");
    // A generous timeout: this is about the fallback, not the budget, and the machine may be loaded.
    const reader = connectRedis(url, createLogger("silent"), { mode: "serving", commandTimeoutMs: 2000 });
    try {
      assert.ok(await waitReady(reader, 10_000));
      for (let round = 0; round < 2; round++) {
        const m = await lookupFeatures(reader, rt.names, FEATURES, { userId: "u1", currentPage: "", deviceType: "mobile" }, ITEMS);
        assert.equal(m.unavailable, false, `round ${round}`);
        assert.deepEqual(
          Array.from(m.matrix),
          ITEMS.flatMap((item) => [4, clicksOf(item), 1]),
        );
      }
    } finally {
      reader.disconnect();
      await perNode((r) => r.acl("DELUSER", "reader"));
    }
  });

  it("scores candidates with the production model from features on every master", async () => {
    const registry = await rt.registry();
    const mv = await registry.publish({
      name: "recommender",
      artifact: logisticModel(WEIGHTS, BIAS),
      features: FEATURES,
      inputName: "features",
      outputName: "score",
    });
    await registry.setAlias("recommender", "production", mv.version);
    await waitFor(() => serving.server.models.servedVersion("recommender") === mv.version, 15_000, "swap to the pushed model");
    const res = await serving.client.recommend({ userId: "u1", deviceType: "mobile", candidates: ITEMS, limit: ITEMS.length });
    assert.equal(res.modelVersion, mv.version);
    const expected = (item: string) => sigmoid(4 * 0.5 + clicksOf(item) * 0.25 + 1 * 1 + BIAS);
    assert.deepEqual(
      res.recommendations.map((r) => r.itemId),
      [...ITEMS].sort((a, b) => clicksOf(b) - clicksOf(a)),
    );
    for (const r of res.recommendations) assert.ok(Math.abs(r.score - expected(r.itemId)) < 1e-6, `${r.itemId}: ${r.score} vs ${expected(r.itemId)}`);
  });

  it("a read right after a slot moved to another master (resharding) still gets its features", async () => {
    const serving_ = reader;
    const item = "page_0";
    const itemKey = rt.names.itemFeaturesKey(item);
    const src = masterPort(itemKey);
    // A user whose hash is on the same master, in another slot: the read's call to that master carries both keys.
    const u = Array.from({ length: 40 }, (_, i) => i).find(
      (i) => masterPort(rt.names.userFeaturesKey(`batch-u${i}`)) === src && calculateSlot(rt.names.userFeaturesKey(`batch-u${i}`)) !== calculateSlot(itemKey),
    )!;
    const dst = cluster.nodes.find((n) => n.port !== src)!.port;
    const node = (port: number) => new SingleRedis(port, "127.0.0.1");
    const [a, b, c] = [node(src), node(dst), node(cluster.nodes.find((n) => n.port !== src && n.port !== dst)!.port)];
    try {
      const slot = calculateSlot(itemKey);
      const [srcId, dstId] = [(await a.cluster("MYID")) as string, (await b.cluster("MYID")) as string];
      await b.cluster("SETSLOT", slot, "IMPORTING", srcId);
      await a.cluster("SETSLOT", slot, "MIGRATING", dstId);
      const keys = (await a.cluster("GETKEYSINSLOT", slot, 1000)) as string[];
      await a.migrate("127.0.0.1", dst, "", 0, 5000, "KEYS", ...keys);
      for (const r of [b, a, c]) await r.cluster("SETSLOT", slot, "NODE", dstId);
      // The client still routes the slot to its old master: the script there finds the key gone.
      assert.equal(masterPort(itemKey), src);
      const m = await lookupFeatures(serving_, rt.names, FEATURES, { userId: `batch-u${u}`, currentPage: "", deviceType: "desktop" }, [item]);
      assert.equal(m.unavailable, false);
      assert.deepEqual(Array.from(m.matrix), [u, clicksOf(item), 0]);
      assert.equal(masterPort(itemKey), dst, "the client learned the new owner");
    } finally {
      for (const r of [a, b, c]) r.disconnect();
    }
  });

  it("a dead master costs requests their features, not their answers, until it is back", async () => {
    const victim = cluster.nodes.find((n) => n.port === masterPort(rt.names.itemFeaturesKey("page_0")))!;
    const base = sigmoid(4 * 0.5 + 0 + 1 * 1 + BIAS);
    // Keys of the masters that stay up: a read of only those must not suffer.
    const liveItem = ITEMS.find((i) => masterPort(rt.names.itemFeaturesKey(i)) !== victim.port)!;
    const liveUser = Array.from({ length: 40 }, (_, i) => i).find((i) => masterPort(rt.names.userFeaturesKey(`batch-u${i}`)) !== victim.port)!;
    const deadUser = Array.from({ length: 40 }, (_, i) => i).find((i) => masterPort(rt.names.userFeaturesKey(`batch-u${i}`)) === victim.port)!;
    await victim.kill();
    try {
      // In one turn, so that they share a batch: only the read that needs the dead master fails.
      const ctx = (i: number) => ({ userId: `batch-u${i}`, currentPage: "", deviceType: "desktop" });
      const [live, dead] = await Promise.all([
        lookupFeatures(rt.servingRedis(), rt.names, FEATURES, ctx(liveUser), [liveItem]),
        lookupFeatures(rt.servingRedis(), rt.names, FEATURES, ctx(deadUser), [liveItem]),
      ]);
      assert.equal(live.unavailable, false);
      assert.deepEqual(Array.from(live.matrix), [liveUser, clicksOf(liveItem), 0]);
      assert.equal(dead.unavailable, true);
      assert.deepEqual(Array.from(dead.matrix), [0, 0, 0]);
      const res = await serving.client.recommend({ userId: "u1", deviceType: "mobile", candidates: ["page_0"] }, { deadlineMs: 5000 });
      assert.equal(res.recommendations.length, 1);
      assert.ok(res.latencyMs < 1000, `answered in ${res.latencyMs} ms`);
      // The user's hash may or may not live on the dead master: either way the item feature took its default.
      const score = res.recommendations[0]!.score;
      assert.ok(Math.abs(score - base) < 1e-6 || Math.abs(score - sigmoid(0 + 0 + 1 * 1 + BIAS)) < 1e-6, `score ${score} is from defaults`);
    } finally {
      await victim.start();
    }
    await cluster.waitOk();
    // The restarted master kept its slots (nodes.conf) but not its data (no persistence): write it again.
    for (const item of ITEMS) await rt.redis().hset(rt.names.itemFeaturesKey(item), { item_clicks_5min: String(clicksOf(item)) });
    await rt.redis().hset(rt.names.userFeaturesKey("u1"), { clicks_last_5min: "4" });
    const healed = await waitFor(
      async () => {
        const res = await serving.client.recommend({ userId: "u1", deviceType: "mobile", candidates: ["page_0"] });
        const want = sigmoid(4 * 0.5 + clicksOf("page_0") * 0.25 + 1 * 1 + BIAS);
        return Math.abs(res.recommendations[0]!.score - want) < 1e-6 ? res : undefined;
      },
      20_000,
      "features read again from the restarted master",
    );
    assert.equal(healed.recommendations[0]!.itemId, "page_0");
  });
});
