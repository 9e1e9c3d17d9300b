// kill -9 of a `streamserve features` process while it works through the stream, several times, then a
// restart: Redis and the closed windows on LOGS must equal the aggregates computed from the events.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import {
  assertClosedWindows,
  assertOnlineStore,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  testRuntime,
  uniqueNamespace,
  waitConsumerDrained,
  waitFor,
  type TestEvent,
  closingEvent,
  spawnFeaturesProcess,
  type FeaturesProcess,
} from "./helpers.js";
import { storeKeys } from "../../features/window-store.js";
import { threadNices, threadPolicies } from "../helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;
const ACK_WAIT_MS = 1000;

type Worker = FeaturesProcess;

function startWorker(namespace: string, env: NodeJS.ProcessEnv = {}): Worker {
  return spawnFeaturesProcess(namespace, ["--batch-size", "200", "--ack-wait", `${ACK_WAIT_MS}ms`, "--close-interval", "100ms"], env);
}

let env: Awaited<ReturnType<typeof testRuntime>>;
const running: Worker[] = [];

before(async () => {
  env = await testRuntime(uniqueNamespace("feat_kill"));
});
after(async () => {
  for (const w of running) w.child.kill("SIGKILL");
  await env?.cleanup();
});

test("kill -9 between commit and acks and at arbitrary points, restart: features and closed windows as if nothing happened", async () => {
  const { nc, js, runtime } = env;
  const names = runtime.names;
  const jsm = await nc.jetstreamManager();
  const consumer = () => jsm.consumers.info(names.eventsStream, names.consumer("features"));
  // Eight minutes of event time: no event can fall behind the watermark, whatever the
  // redelivery order after a crash, so the expected result is simply every event once.
  const events = makeEvents({ count: 20_000, users: 200, pages: 50, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 99 });
  const flush: TestEvent = closingEvent(T0 + 40 * MIN);

  // A backlog, so the worker is saturated and a kill most likely lands inside a batch (between
  // its Redis writes and its acks) rather than while it waits for messages.
  await publishEvents(js, names, events, { encodings: ["json-ms", "protobuf"] });

  const killWhenAcked = async (w: Worker, ackFloor: number) => {
    await waitFor(
      `worker to ack ${ackFloor} events`,
      async () => {
        const i = await consumer();
        return i.ack_floor.stream_seq >= ackFloor && i.num_ack_pending > 0;
      },
      60_000,
      5,
    );
    w.child.kill("SIGKILL");
    await w.exited;
    await sleep(200); // let the server take in the acks the worker sent before dying
  };
  /** Distinct events in the user windows' state: what reached Redis, acked or not. */
  const appliedEvents = async () => {
    const redis = runtime.redis();
    let cursor = "0";
    let total = 0;
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", storeKeys(names.redisPrefix).state("user", 0).replace(/0$/, "*"), "COUNT", 1000);
      cursor = next;
      // Each field is a user's window state, packed with its event count first.
      for (const values of await Promise.all(keys.map((k) => redis.hvals(k)))) for (const v of values) total += Number(v.split(",")[0]);
    } while (cursor !== "0");
    return total;
  };

  const kills: { acked: number; applied: number }[] = [];
  const recordKill = async () => {
    const info = await consumer();
    kills.push({ acked: info.delivered.stream_seq - info.num_ack_pending, applied: await appliedEvents() });
    // Wait out the ack wait, as a real restart would take: the dead worker's unacked events are
    // then due for redelivery before the restarted worker moves far ahead in event time.
    await sleep(2.5 * ACK_WAIT_MS);
  };
  // The crash a random kill almost never hits: right after a batch's transaction committed,
  // before its acks went out (the worker's failpoint kills it there).
  const failing = startWorker(names.redisPrefix.slice(0, -1), { STREAMSERVE_FAILPOINT: "features-after-commit:12" });
  running.push(failing);
  await failing.exited;
  await sleep(200);
  await recordKill();
  assert.ok(kills[0]!.applied > kills[0]!.acked, `the failpoint left committed, unacked events: ${JSON.stringify(kills[0])}`);
  // Then kills at arbitrary points (reading, computing, in the transaction, acking), at ever later places in the stream.
  for (let target = 3000; kills.length < 4; target += 3000) {
    const w = startWorker(names.redisPrefix.slice(0, -1));
    running.push(w);
    await killWhenAcked(w, target);
    await recordKill();
  }
  const last = startWorker(names.redisPrefix.slice(0, -1));
  running.push(last);

  await waitConsumerDrained(nc, names, 60_000);
  // `features` runs below Redis, NATS and serving: every thread at nice 5, SCHED_BATCH (3) on Linux.
  if (process.platform === "linux") {
    assert.ok(
      threadNices(last.child.pid!).every((n) => n >= 5),
      `every thread at nice >= 5: ${threadNices(last.child.pid!).join(" ")}`,
    );
    assert.ok(
      threadPolicies(last.child.pid!).every((p) => p === 3),
      `every thread SCHED_BATCH: ${threadPolicies(last.child.pid!).join(" ")}`,
    );
  }
  await publishEvents(js, names, [flush]);
  await waitConsumerDrained(nc, names);
  const expected = expectedWindows([...events, flush]);
  const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
  await waitFor("the restarted worker to close every window", async () => (await readFeatureWindowLogs(nc, names)).length >= closed.length, 30_000, 200);

  last.child.kill("SIGTERM");
  assert.equal(await last.exited, 0, `clean exit after SIGTERM\n${last.stderr.join("").slice(-2000)}`);

  await assertOnlineStore(runtime, expected);
  assertClosedWindows(await readFeatureWindowLogs(nc, names), closed);

  const summary = last.stderr
    .join("")
    .split("\n")
    .filter((l) => l.includes("features worker stopped"))
    .map((l) => JSON.parse(l) as { messages: number; duplicates: Record<string, number> })[0];
  assert.ok(summary, "the worker logged its summary on stopping");
  console.log(
    `# kills (acked / in Redis): ${kills.map((k) => `${k.acked}/${k.applied}`).join(", ")}; ` +
      `last worker: ${summary.messages} messages, duplicates ${JSON.stringify(summary.duplicates)}`,
  );
});
