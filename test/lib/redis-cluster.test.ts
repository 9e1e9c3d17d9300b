// REDIS_URL naming a Redis Cluster: the URL form and its errors, and the key-space helpers that
// must visit every master (cleanup deletes keys on all of them), on a real 3-master cluster.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { Redis as SingleRedis } from "ioredis";
import { clusterNodeUrl, parseClusterUrl, isClusterUrl } from "../../lib/redis-url.js";
import { ConfigError, loadConfig } from "../../lib/config.js";
import { connectRedis, deleteKeysWithPrefix, isCluster, masters, scanKeys, type Redis } from "../../lib/redis.js";
import { createLogger } from "../../lib/logger.js";
import { ensureLocalServices, MissingServiceError } from "../../lib/local-services.js";
import { startRedisCluster, type OwnCluster } from "../redis-cluster.js";
import { freePort, uniqueNamespace } from "../helpers.js";

describe("a cluster REDIS_URL", () => {
  it("names the seed nodes, the credentials and TLS", () => {
    assert.ok(isClusterUrl("redis+cluster://h1:7000"));
    assert.ok(!isClusterUrl("redis://h1:7000"));
    assert.deepEqual(parseClusterUrl("redis+cluster://h1:7000,10.0.0.2:7001,[::1]:7002"), {
      nodes: [
        { host: "h1", port: 7000 },
        { host: "10.0.0.2", port: 7001 },
        { host: "::1", port: 7002 },
      ],
      tls: false,
    });
    assert.deepEqual(parseClusterUrl("rediss+cluster://app:p%40ss@h1:7000/0"), {
      nodes: [{ host: "h1", port: 7000 }],
      tls: true,
      username: "app",
      password: "p@ss",
    });
    assert.deepEqual(parseClusterUrl("redis+cluster://:secret@h1:7000"), { nodes: [{ host: "h1", port: 7000 }], tls: false, password: "secret" });
  });

  it("clusterNodeUrl names one node with the cluster's credentials and TLS", () => {
    assert.equal(clusterNodeUrl("rediss+cluster://app:p%40ss@h1:7000,h2:7001", "10.0.0.5:7002"), "rediss://app:p%40ss@10.0.0.5:7002");
    assert.equal(clusterNodeUrl("redis+cluster://h1:7000", "::1:7000"), "redis://[::1]:7000");
    assert.equal(clusterNodeUrl("redis+cluster://:pw@h1:7000", "h1:7000"), "redis://:pw@h1:7000");
  });

  it("a node without a port, a database or an empty list is a configuration error that shows the form", () => {
    for (const [url, reason] of [
      ["redis+cluster://h1:7000,h2", /"h2" is not host:port/],
      ["redis+cluster://h1:7000/2", /only database 0/],
      ["redis+cluster://", /"" is not host:port/],
      ["redis+cluster://h1:99999", /"h1:99999" is not host:port/],
    ] as const) {
      assert.throws(
        () => loadConfig({ redisUrl: url }, {}),
        (err: Error) => err instanceof ConfigError && reason.test(err.message) && err.message.includes("expected redis+cluster://host:port,host:port"),
        url,
      );
    }
  });

  it("masks the password in its errors", () => {
    assert.throws(
      () => loadConfig({ redisUrl: "redis+cluster://app:hunter2@h1:7000,h2" }, {}),
      (err: Error) => !err.message.includes("hunter2") && err.message.includes("app:***@"),
    );
  });

  it("a wrong scheme names the cluster form too", () => {
    assert.throws(() => loadConfig({ redisUrl: "cluster://h1:7000" }, {}), /or redis\+cluster:\/\/ for a Redis Cluster/);
  });

  it("the CLI refuses a bad cluster URL (exit 2), and `features` on a cluster (exit 1), saying what to do", async () => {
    const cli = (command: string, url: string) =>
      new Promise<{ code: number | null; output: string }>((resolve) => {
        execFile(
          process.execPath,
          ["--import", "tsx", "cli/main.ts", command, "--namespace", uniqueNamespace("cluster"), "--grpc-port", "0", "--http-port", "0"],
          { env: { ...process.env, REDIS_URL: url }, timeout: 60_000 },
          (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, output: stdout + stderr }),
        );
      });
    const bad = await cli("serve", "redis+cluster://127.0.0.1:7000,127.0.0.1");
    assert.equal(bad.code, 2, bad.output);
    assert.match(bad.output, /"127\.0\.0\.1" is not host:port .* expected redis\+cluster:\/\/host:port,host:port/);
    const features = await cli("features", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001");
    assert.equal(features.code, 1, features.output);
    assert.match(features.output, /the features worker does not run on a Redis Cluster yet: give it one Redis/);
  });

  it("`up` starts no private Redis for a cluster that does not answer, and says what to do", async () => {
    const port = await freePort();
    await assert.rejects(
      ensureLocalServices({ redisUrl: `redis+cluster://127.0.0.1:${port}`, natsUrl: "nats://127.0.0.1:4222" }, "/nonexistent", createLogger("silent")),
      (err: Error) => err instanceof MissingServiceError && /no node of the Redis Cluster answers/.test(err.message),
    );
  });
});

describe("on a real Redis Cluster", () => {
  let cluster: OwnCluster;
  let redis: Redis;

  before(async () => {
    cluster = await startRedisCluster();
    redis = connectRedis(cluster.url, createLogger("silent"));
  });

  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  it("connectRedis gives a cluster client that knows all three masters", async () => {
    assert.ok(isCluster(redis));
    const nodes = await masters(redis);
    assert.deepEqual(nodes.map((n) => n.options.port).sort(), cluster.nodes.map((n) => n.port).sort());
  });

  it("scanKeys and deleteKeysWithPrefix find and delete the prefix's keys on every master and nothing else", async () => {
    const prefix = `${uniqueNamespace()}:`;
    const keys = Array.from({ length: 60 }, (_, i) => `${prefix}k${i}`);
    for (const k of keys) await redis.set(k, "1");
    await redis.set("other:keep", "1");
    const perNode = async () =>
      Promise.all(
        cluster.nodes.map(async (n) => {
          const r = new SingleRedis(n.port, "127.0.0.1");
          try {
            return (await r.keys(`${prefix}*`)).length;
          } finally {
            r.disconnect();
          }
        }),
      );
    assert.ok(
      (await perNode()).every((n) => n > 0),
      "the keys are spread over every master",
    );
    const scanned: string[] = [];
    for await (const page of scanKeys(redis, `${prefix}*`)) scanned.push(...page);
    assert.deepEqual(scanned.sort(), [...keys].sort(), "scanKeys finds them on every master");
    assert.equal(await deleteKeysWithPrefix(redis, prefix), keys.length);
    assert.deepEqual(await perNode(), [0, 0, 0]);
    assert.equal(await redis.get("other:keep"), "1");
    await redis.del("other:keep");
  });
});
