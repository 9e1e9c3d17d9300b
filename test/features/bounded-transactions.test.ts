// A large backlog is committed in transactions of bounded Redis time, each landing its events'
// markers with their effects, and still gives exactly the independently computed windows.
// Measured by Redis itself: a private redis-server logs every command in its SLOWLOG (Redis 7
// logs the commands a transaction executes one by one, back to back, with their durations).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import { OwnService } from "../faults/own-services.js";
import {
  assertClosedWindows,
  assertOnlineStore,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  uniqueNamespace,
  waitConsumerDrained,
  waitFor,
  type TestEvent,
  closingEvent,
} from "./helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;
const BOUND_MS = 1;
const MAX_BATCH = 2000;

/** One transaction of the store as Redis executed it: its commands' total time and the events it marked applied. */
interface Executed {
  micros: number;
  commands: number;
  markers: number;
}

/** SLOWLOG entries, oldest first: [id, time, micros, args, client address, client name]. */
type Entry = [number, number, number, string[], string, string];

/** The store's transactions (they open and close with TIME) in the slowlog, with what they did. */
function transactions(entries: readonly Entry[], prefix: string): Executed[] {
  const out: Executed[] = [];
  let cur: Executed | undefined;
  for (const [, , micros, args, , client] of entries) {
    if (client !== "streamserve-features") continue;
    const name = args[0]!.toUpperCase();
    if (!cur) {
      if (name === "TIME") cur = { micros, commands: 1, markers: 0 };
      continue;
    }
    cur.micros += micros;
    cur.commands++;
    if (name === "HSET" && args[1]!.startsWith(`${prefix}features:seen:`)) {
      // Long argument lists are cut at 32, the last saying how many more there were.
      const more = /^\.\.\. \((\d+) more arguments\)$/.exec(args.at(-1)!);
      const argc = more ? args.length - 1 + Number(more[1]) : args.length;
      cur.markers += (argc - 2) / 2;
    }
    if (name === "TIME") {
      out.push(cur);
      cur = undefined;
    }
  }
  return out;
}

describe("a large backlog in bounded transactions", () => {
  let redis: OwnService;
  let runtime: Runtime;
  let worker: FeaturesWorker | undefined;
  const events = makeEvents({ count: 3 * MAX_BATCH, users: 400, pages: 40, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 31 });
  // Published once the others are applied: it closes every window.
  const flush: TestEvent = closingEvent(T0 + 40 * MIN);
  let executed: Executed[] = [];
  let batches = 0;

  before(async () => {
    redis = await OwnService.redis();
    runtime = createRuntime({ namespace: uniqueNamespace("feat_bounded"), redisUrl: redis.url, logLevel: process.env.TEST_LOG_LEVEL ?? "silent" });
    const nc = await runtime.nats();
    await publishEvents(nc.jetstream(), runtime.names, events);
    const r = runtime.redis();
    await r.config("SET", "slowlog-log-slower-than", "0");
    await r.config("SET", "slowlog-max-len", "1000000");
    await r.slowlog("RESET");
    // The whole backlog waits in the stream: the worker takes full batches from the start.
    worker = await startFeaturesWorker(runtime, {
      progressIntervalMs: 0,
      maxBatch: MAX_BATCH,
      closeIntervalMs: 3_600_000,
      store: { maxTransactionMs: BOUND_MS },
    });
    await waitConsumerDrained(nc, runtime.names);
    batches = worker.stats.batches;
    const log = ((await r.slowlog("GET", -1)) as Entry[]).reverse();
    executed = transactions(log, runtime.names.redisPrefix);
    await r.config("SET", "slowlog-log-slower-than", "10000");
    await publishEvents(nc.jetstream(), runtime.names, [flush]);
    await waitConsumerDrained(nc, runtime.names);
    await worker.closeDueWindows();
  });

  after(async () => {
    await worker?.stop();
    if (runtime) {
      await deleteNamespace(await runtime.nats(), runtime.names).catch(() => undefined);
      await runtime.close();
    }
    await redis?.remove();
  });

  test("every batch is split into transactions of bounded Redis time", () => {
    assert.ok(events.length / batches >= 500, `the backlog came in large batches (${batches} batches)`);
    assert.ok(executed.length >= 2 * batches, `${executed.length} transactions for ${batches} batches`);
    const markers = executed.map((t) => t.markers);
    assert.ok(Math.max(...markers) < MAX_BATCH / 2, `most events in one transaction: ${Math.max(...markers)}`);
    const micros = executed.map((t) => t.micros).sort((a, b) => a - b);
    const median = micros[micros.length >> 1]!;
    // Redis's clock is the wall clock: a shared machine that preempts Redis inflates some (the
    // store sizes its transactions by the same clock, so they shrink when Redis is slow).
    assert.ok(
      median <= 2 * BOUND_MS * 1000,
      `half the transactions within ${2 * BOUND_MS} ms, got ${(median / 1000).toFixed(2)} ms (max ${(micros.at(-1)! / 1000).toFixed(2)} ms, ${executed.length} transactions)`,
    );
  });

  test("each event's marker is written once, in the transaction that applies it", () => {
    assert.equal(
      executed.reduce((n, t) => n + t.markers, 0),
      events.length,
    );
    assert.deepEqual(worker!.stats.applied, { user: events.length + 1, item: events.length + 1 });
  });

  test("the windows equal the independent computation", async () => {
    const expected = expectedWindows([...events, flush]);
    await assertOnlineStore(runtime, expected);
    const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
    const logged = await waitFor("every window closed", async () => {
      const l = await readFeatureWindowLogs(await runtime.nats(), runtime.names);
      return l.length >= closed.length && l;
    });
    assertClosedWindows(logged, closed);
  });
});
