// The feature read on the hand-written RESP client (the default for one Redis), against a Redis
// of its own: the same rows as ioredis, one write for reads started together, the script loaded
// again after SCRIPT FLUSH, a pipeline where scripts are refused, and a stalled or restarted Redis
// costing reads their features for a moment, not forever.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { Redis } from "ioredis";
import { freePort, uniqueNamespace, waitFor } from "../helpers.js";
import { lookupFeatures, parseScriptBytes } from "../../server/feature-lookup.js";
import { FeatureConnection } from "../../server/feature-connection.js";
import { names as namesOf, loadConfig } from "../../lib/config.js";
import { createLogger } from "../../lib/logger.js";
import type { FeatureSpec } from "../../lib/registry.js";

const SPECS: FeatureSpec[] = [
  { name: "item_views_5min", source: "item", type: "numeric", default: 0 },
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "device_type", source: "request", type: "categorical", default: -1, vocabulary: ["desktop", "mobile"] },
  { name: "engagement_score", source: "user", type: "numeric", default: 7 },
];
const CTX = { userId: "u1", currentPage: "", deviceType: "mobile" };
const EXPECTED = [10, 3, 1, 12.5, 0, 3, 1, 12.5];

let port: number;
let server: ChildProcess;
let admin: Redis;
let conn: FeatureConnection;
const names = namesOf(loadConfig({ namespace: uniqueNamespace("resp") }));

function startRedis(): ChildProcess {
  return spawn("redis-server", ["--port", String(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"], { stdio: "ignore" });
}

async function seed(): Promise<void> {
  await admin.hset(names.userFeaturesKey("u1"), { clicks_last_5min: "3", engagement_score: "12.5" });
  await admin.hset(names.itemFeaturesKey("i1"), { item_views_5min: "10" });
}

before(async () => {
  port = await freePort();
  server = startRedis();
  admin = new Redis({ port, host: "127.0.0.1", lazyConnect: true, retryStrategy: () => 100 });
  admin.on("error", () => undefined); // down on purpose below
  await waitFor(
    () =>
      admin.connect().then(
        () => true,
        () => false,
      ),
    10_000,
    "own redis-server",
  );
  await seed();
  conn = new FeatureConnection(`redis://127.0.0.1:${port}`, createLogger("silent"));
});

after(async () => {
  conn?.close();
  admin?.disconnect();
  server?.kill("SIGKILL");
});

const read = (items = ["i1", "i2"]) => lookupFeatures(conn, names, SPECS, CTX, items);

it("reads the rows ioredis reads, reads started together in one write", async () => {
  const single = new Redis({ port, host: "127.0.0.1" });
  try {
    const viaIoredis = await lookupFeatures(single, names, SPECS, CTX, ["i1", "i2"]);
    let sends = 0;
    const send = conn.send;
    conn.send = function (this: FeatureConnection, ...args: Parameters<typeof send>) {
      sends++;
      return send.apply(this, args);
    };
    let results;
    try {
      results = await Promise.all(Array.from({ length: 10 }, () => read()));
    } finally {
      conn.send = send;
    }
    assert.equal(sends, 1, "one send for the ten reads");
    for (const m of results) {
      assert.equal(m.unavailable, false);
      assert.deepEqual(Array.from(m.matrix), EXPECTED);
      assert.deepEqual(Array.from(m.matrix), Array.from(viaIoredis.matrix));
      assert.deepEqual(m.missing, viaIoredis.missing);
    }
  } finally {
    single.disconnect();
  }
});

// Plain decimals (read from the reply's bytes) and other forms (the reply then goes through JSON.parse).
const PLAIN = ["0", "-0", "3", "007.50", ".5", "-.25", "123456789012345", "0.1", "-12.125", ""];
for (let i = 0; i < 200; i++) PLAIN.push((Math.random() * 10 ** (i % 8) * (i % 2 ? -1 : 1)).toFixed(i % 8));
const ODD = [" 3 ", "1e3", "0x10", "Infinity", "1.", "+7", "12345678901234567", "3.141592653589793", "1/2", "é", '"q"', "\\", "NaN", "-", "1e-320", "abc"];
const numberOf = (v: string) => {
  const n = v === "" ? NaN : Number(v);
  return Number.isFinite(n) ? n : null;
};

it("parses a reply of plain decimals from its bytes to the numbers Number makes of them", () => {
  const rows = [PLAIN.slice(0, 7), [], PLAIN.slice(7)];
  const bytes = Buffer.from(JSON.stringify(rows.map((r) => (r.length ? r : {}))).replace('"", ', "false, "));
  const parsed = parseScriptBytes(bytes);
  assert.ok(parsed, "read from the bytes");
  const expected = (JSON.parse(bytes.toString()) as (string | false)[][] | object[]).map((r) =>
    Array.isArray(r) ? r.map((v) => (v === false ? false : numberOf(v))) : [],
  );
  assert.equal(parsed.length, expected.length);
  parsed.forEach((row, i) => row.forEach((v, j) => assert.ok(Object.is(v, expected[i]![j]), `row ${i} value ${j}: ${v} vs ${expected[i]![j]}`)));
  for (const odd of ODD) assert.equal(parseScriptBytes(Buffer.from(JSON.stringify([[odd]]))), undefined, odd);
});

for (const [label, values] of [
  ["plain decimals", PLAIN],
  ["odd values", [...ODD, ...PLAIN.slice(0, 20)]],
] as const) {
  it(`reads ${label} as ioredis and Number do`, async () => {
    const items = values.map((_, i) => `odd${i}`);
    for (const [i, v] of values.entries()) await admin.hset(names.itemFeaturesKey(items[i]!), { item_views_5min: v });
    const single = new Redis({ port, host: "127.0.0.1" });
    try {
      const viaIoredis = await lookupFeatures(single, names, SPECS, CTX, items);
      const viaResp = await read(items);
      assert.equal(viaResp.unavailable, false);
      assert.deepEqual(Array.from(viaResp.matrix), Array.from(viaIoredis.matrix));
      assert.deepEqual(viaResp.missing, viaIoredis.missing);
      // Checked against Number itself, not only against the other client.
      values.forEach((v, i) => assert.ok(Object.is(viaResp.matrix[i * SPECS.length], Math.fround(numberOf(v) ?? 0)), `"${v}"`));
    } finally {
      single.disconnect();
      await admin.del(...items.map((i) => names.itemFeaturesKey(i)));
    }
  });
}

it("loads the script again after SCRIPT FLUSH (NOSCRIPT)", async () => {
  await admin.script("FLUSH");
  const cached = async () => Number(/number_of_cached_scripts:(\d+)/.exec(await admin.info("memory"))?.[1]);
  assert.equal(await cached(), 0);
  const m = await read();
  assert.equal(m.unavailable, false);
  assert.deepEqual(Array.from(m.matrix), EXPECTED);
  assert.equal(await cached(), 1, "the read ran the script (EVAL loaded it), not the pipeline");
});

it("reads with a pipeline where scripts are refused (NOPERM)", async () => {
  const url = `redis://reader:pw@127.0.0.1:${port}`;
  await admin.call("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@all", "-@scripting");
  const limited = new FeatureConnection(url, createLogger("silent"));
  try {
    for (let i = 0; i < 2; i++) {
      const m = await lookupFeatures(limited, names, SPECS, CTX, ["i1", "i2"]);
      assert.equal(m.unavailable, false);
      assert.deepEqual(Array.from(m.matrix), EXPECTED);
    }
  } finally {
    limited.close();
  }
});

it("a stalled Redis fails reads within the command timeout, and they work again once it answers", async () => {
  server.kill("SIGSTOP");
  try {
    const t = performance.now();
    const m = await read();
    assert.equal(m.unavailable, true);
    assert.ok(performance.now() - t < 1000, `failed in ${performance.now() - t} ms`);
  } finally {
    server.kill("SIGCONT");
  }
  await waitFor(async () => !(await read()).unavailable, 10_000, "reads working after SIGCONT");
});

it("reconnects after Redis restarts", async () => {
  server.kill("SIGKILL");
  await new Promise((r) => server.once("exit", r));
  assert.equal((await read()).unavailable, true);
  server = startRedis();
  await waitFor(
    () =>
      admin.ping().then(
        () => true,
        () => false,
      ),
    10_000,
    "redis-server back",
  );
  await seed();
  const m = await waitFor(
    async () => {
      const r = await read();
      return r.unavailable ? undefined : r;
    },
    10_000,
    "reads after the restart",
  );
  assert.deepEqual(Array.from(m.matrix), EXPECTED);
});
