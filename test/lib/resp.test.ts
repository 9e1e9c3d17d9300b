// The features store's Redis connection, both clients (the hand-written RESP one and ioredis)
// against the real Redis: every reply type, replies split over many socket reads, non-ASCII
// arguments, transactions refused by WATCH, and a server that dies and comes back.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { RespConnectionError, RespError, RespWriter, encodeCommandHeader } from "../../lib/resp.js";
import { connectResp, REDIS_CLIENTS } from "../../lib/resp-client.js";
import { decodeCommands } from "../../lib/resp-ioredis.js";
import { parseRedisUrl } from "../../lib/redis-url.js";
import { OwnService } from "../faults/own-services.js";

const URL_ = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const P = `t_resp_${randomBytes(4).toString("hex")}:`;

for (const client of REDIS_CLIENTS)
  describe(`${client}: against the shared Redis`, () => {
    const conn = connectResp(URL_, { client });
    const other = new Redis(URL_);
    after(async () => {
      const keys = await other.keys(`${P}*`);
      if (keys.length) await other.del(...keys);
      conn.close();
      other.disconnect();
    });

    test("every reply type, in order, errors as values", async () => {
      const replies = await conn.send([
        ["SET", `${P}s`, "héllo ✓"],
        ["GET", `${P}s`],
        ["GET", `${P}missing`],
        ["INCRBY", `${P}n`, -5],
        ["HSET", `${P}h`, "a", 1, "b", 2.5],
        ["HMGET", `${P}h`, "a", "nope", "b"],
        ["HGETALL", `${P}empty`],
        ["LPUSH", `${P}s`, "x"], // wrong type: an error reply, not a thrown error
        ["PING"],
        ["ZADD", `${P}z`, 1.5, "m"],
        ["ZRANGE", `${P}z`, 0, -1, "WITHSCORES"],
      ]);
      assert.equal(replies[0], "OK");
      assert.equal(replies[1], "héllo ✓", "UTF-8 arguments and replies, lengths in bytes");
      assert.equal(replies[2], null);
      assert.equal(replies[3], -5);
      assert.equal(replies[4], 2);
      assert.deepEqual(replies[5], ["1", null, "2.5"]);
      assert.deepEqual(replies[6], []);
      assert.ok(replies[7] instanceof RespError && /WRONGTYPE/.test(replies[7].message), String(replies[7]));
      assert.equal(replies[8], "PONG");
      assert.deepEqual(replies[10], ["m", "1.5"], "RESP2 shapes: WITHSCORES flat, scores as strings");
      assert.equal(await other.get(`${P}s`), "héllo ✓", "what ioredis reads back");
    });

    test("a reply far larger than one socket read, and a batch of thousands of commands", async () => {
      const value = "v".repeat(1000) + "é";
      const fields = Array.from({ length: 5000 }, (_, i) => `f${i}`);
      await conn.send([["HSET", `${P}big`, ...fields.flatMap((f) => [f, value])]]);
      const [all] = await conn.send([["HMGET", `${P}big`, ...fields]]);
      assert.equal((all as string[]).length, 5000);
      assert.ok((all as string[]).every((v) => v === value));
      const many = await conn.send(fields.map((f, i) => ["HSET", `${P}many`, f, i]));
      assert.equal(many.length, 5000);
      assert.ok(many.every((r) => r === 1));
    });

    test("commands written with a RespWriter count as the commands they hold", async () => {
      const w = new RespWriter(8);
      w.command(4).string("HSET").string(`${P}pre`).string("a").number(7);
      w.raw(encodeCommandHeader("PEXPIRE", 3), 1).string(`${P}pre`).number(60_000);
      const mark = w.command(4).string("HSET").string(`${P}pre`).string("packed").beginValue();
      w.valueNumber(1_796_160_000_123).valueAscii(",").valueNumber(2.5).valueAscii(",").endValue(mark);
      assert.equal(w.count, 3);
      const replies = await conn.send([["PING"], w, ["HMGET", `${P}pre`, "a", "packed"]]);
      assert.deepEqual(replies, ["PONG", 1, 1, 1, ["7", "1796160000123,2.5,"]]);
      assert.ok((await other.pttl(`${P}pre`)) > 0);
    });

    test("EXEC answers nil when a watched key changed, and commits otherwise", async () => {
      await conn.send([["WATCH", `${P}w`]]);
      await other.set(`${P}w`, "changed by another client");
      const refused = await conn.send([["MULTI"], ["SET", `${P}w`, "mine"], ["EXEC"]]);
      assert.deepEqual(refused, ["OK", "QUEUED", null]);
      assert.equal(await other.get(`${P}w`), "changed by another client");
      const [, , , exec] = await conn.send([["WATCH", `${P}w`], ["MULTI"], ["SET", `${P}w`, "mine"], ["EXEC"]]);
      assert.deepEqual(exec, ["OK"]);
      assert.equal(await other.get(`${P}w`), "mine");
    });
  });

test("one URL reader for every client: URLs as ioredis reads them, and a clear error for a bad one", () => {
  assert.deepEqual(parseRedisUrl("redis://127.0.0.1:6380/2"), { host: "127.0.0.1", port: 6380, tls: false, db: 2 });
  assert.deepEqual(parseRedisUrl("rediss://:s3cr%40t@cache.internal"), { host: "cache.internal", port: 6379, tls: true, db: 0, password: "s3cr@t" });
  assert.deepEqual(parseRedisUrl("redis://app:pw@[::1]:7000"), { host: "::1", port: 7000, tls: false, db: 0, user: "app", password: "pw" });
  assert.throws(() => parseRedisUrl("localhost:6379"), /redis:\/\/ or rediss:\/\//);
  assert.throws(() => parseRedisUrl("redis://:pw1234@h/x"), /redis:\/\/:\*\*\*@h\/x": the database "x" after the host must be a number/);
});

describe("the writer", () => {
  test("the writer encodes as RESP says: byte lengths, numbers as String() prints them", () => {
    // The reference: every argument as `$<bytes>\r\n<utf-8>\r\n`.
    const resp = (...args: (string | number)[]) => `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("");
    const numbers = [
      0,
      7,
      9,
      10,
      99,
      4096,
      2 ** 31 - 1,
      2 ** 31,
      1_796_160_000_000,
      1e15,
      999_999_999_999_999,
      Number.MAX_SAFE_INTEGER,
      2 ** 53,
      1.5,
      -3,
      0.1 + 0.2,
      1e21,
      NaN,
      Infinity,
    ];
    let seed = 7;
    for (let i = 0; i < 2000; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      numbers.push(Math.floor((seed / 2 ** 32) * Number.MAX_SAFE_INTEGER), Math.floor(seed / 1000), seed / 1000);
    }
    for (const x of numbers) assert.equal(new RespWriter(1).command(1).number(x).bytes.toString(), resp(x), String(x));
    const strings = [
      "",
      "a",
      "x".repeat(64),
      "y".repeat(65),
      "é",
      "ascii then é",
      "✓".repeat(40),
      "long then non-ASCII ".repeat(10) + "ü",
      "\u0000nul\u0000",
      "😀 surrogate pairs 😀",
    ];
    for (const x of strings) assert.equal(new RespWriter(1).command(1).string(x).bytes.toString(), resp(x), JSON.stringify(x));
    // A composed value whose length crosses each digit count (its header is written after it).
    for (const n of [0, 1, 9, 10, 99, 100, 999, 1000, 1001, 12_345]) {
      const w = new RespWriter(1);
      const mark = w.command(1).beginValue();
      for (let i = 0; i < n; i++) w.valueAscii("z");
      w.endValue(mark);
      w.command(1).number(42);
      assert.equal(w.bytes.toString(), resp("z".repeat(n)) + resp(42), `a value of ${n} bytes`);
    }
  });

  test("encoded commands decode back to their arguments (what the ioredis client sends)", () => {
    const w = new RespWriter(1).args(["HSET", "k", "é", 12]).args(["PING"]);
    const mark = w.command(2).string("SET").beginValue();
    w.valueNumber(7).valueAscii(",").endValue(mark);
    assert.deepEqual(
      decodeCommands(w.bytes, w.count).map((c) => c.map((b) => b.toString())),
      [["HSET", "k", "é", "12"], ["PING"], ["SET", "7,"]],
    );
    assert.throws(() => decodeCommands(w.bytes, 4), /hold 3 commands, not the 4/);
  });
});

for (const client of REDIS_CLIENTS)
  describe(`${client}: connection handling`, () => {
    let redis: OwnService;
    before(async () => {
      redis = await OwnService.redis();
    });
    after(async () => {
      await redis?.remove();
    });

    test("commands in flight fail when the server dies; the next send connects again", async () => {
      const conn = connectResp(redis.url, { client });
      try {
        assert.deepEqual(await conn.send([["SET", "k", "before"]]), ["OK"]);
        await redis.kill();
        await assert.rejects(conn.send([["GET", "k"]]), RespConnectionError);
        await redis.start();
        assert.deepEqual(
          await conn.send([
            ["SET", "k", "after"],
            ["GET", "k"],
          ]),
          ["OK", "after"],
        );
      } finally {
        conn.close();
      }
    });

    test("a send tied to a connection fails on a newer one: a WATCH does not survive a reconnect", async () => {
      const conn = connectResp(redis.url, { client, name: "watch-holder" });
      const other = connectResp(redis.url, { client });
      try {
        await conn.send([
          ["SET", "v", "1"],
          ["WATCH", "v"],
        ]);
        const watching = conn.connection;
        // The server drops the connection (as a restart or a network blip would); a foreign write follows.
        await other.send([["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]]);
        await other.send([["SET", "v", "2"]]);
        await new Promise((r) => setTimeout(r, 100)); // the client has seen its socket close
        await assert.rejects(conn.send([["MULTI"], ["SET", "v", "mine"], ["EXEC"]], { onConnection: watching }), RespConnectionError);
        assert.deepEqual(await other.send([["GET", "v"]]), ["2"], "the unwatched transaction was not sent");
        assert.deepEqual(await conn.send([["PING"]]), ["PONG"]);
        assert.notEqual(conn.connection, watching);
        assert.deepEqual(await conn.send([["PING"]], { onConnection: conn.connection }), ["PONG"], "the new connection serves sends tied to it");
      } finally {
        conn.close();
        other.close();
      }
    });

    test("a server that refuses AUTH is reported, not retried silently", async () => {
      const admin = new Redis(redis.url);
      await admin.config("SET", "requirepass", "right-one");
      const conn = connectResp(`redis://:wrong@127.0.0.1:${redis.port}`, { client });
      try {
        await assert.rejects(conn.send([["PING"]]), /Redis refused the connection: WRONGPASS/);
      } finally {
        conn.close();
        await admin.config("SET", "requirepass", "");
        admin.disconnect();
      }
    });
  });
