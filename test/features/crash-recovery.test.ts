// kill -9 of a `streamserve features` process while it works through the stream, twice, then a
// restart: Redis and the closed windows on LOGS must equal the aggregates computed from the events.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
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
} from "./helpers.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;
const ACK_WAIT_MS = 1000;

interface Worker {
  child: ChildProcess;
  stderr: string[];
  exited: Promise<number | null>;
}

function startWorker(namespace: string): Worker {
  const child = spawn(
    process.execPath,
    [
      "--import", "tsx", "cli/main.ts", "features",
      "--namespace", namespace,
      "--http-port", "0",
      "--batch-size", "200",
      "--ack-wait", `${ACK_WAIT_MS}ms`,
      "--close-interval", "100ms",
      "--progress", "0",
      "--log-level", "info",
    ],
    { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] },
  );
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on("data", (s: string) => stderr.push(s));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stderr, exited };
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

test("kill -9 mid-stream twice, restart: features and closed windows as if nothing happened", async () => {
  const { nc, js, runtime } = env;
  const names = runtime.names;
  const jsm = await nc.jetstreamManager();
  const consumer = () => jsm.consumers.info(names.eventsStream, names.consumer("features"));
  // Eight minutes of event time: no event can fall behind the watermark, whatever the
  // redelivery order after a crash, so the expected result is simply every event once.
  const events = makeEvents({ count: 20_000, users: 200, pages: 50, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 99 });
  const flush: TestEvent = { event_id: "flush", user_id: "flush-user", event_type: "view", page_id: "flush-page", session_duration: 0, amount: 0, event_time: T0 + 40 * MIN };

  // A backlog, so the worker is saturated and a kill most likely lands inside a batch (between
  // its Redis writes and its acks) rather than while it waits for messages.
  await publishEvents(js, names, events, { encodings: ["json-ms", "protobuf"] });

  const killWhenAcked = async (w: Worker, ackFloor: number) => {
    const info = await waitFor(`worker to ack ${ackFloor} events`, async () => {
      const i = await consumer();
      return i.ack_floor.stream_seq >= ackFloor && i.num_ack_pending > 0 ? i : undefined;
    }, 60_000, 5);
    w.child.kill("SIGKILL");
    await w.exited;
    return info;
  };

  running.push(startWorker(names.redisPrefix.slice(0, -1)));
  const first = await killWhenAcked(running[0]!, 4000);
  // Wait out the ack wait, as a real restart would take: the dead worker's unacked events are
  // then due for redelivery before the restarted worker moves far ahead in event time.
  await sleep(2.5 * ACK_WAIT_MS);
  running.push(startWorker(names.redisPrefix.slice(0, -1)));
  const second = await killWhenAcked(running[1]!, 12_000);
  await sleep(2.5 * ACK_WAIT_MS);
  const last = startWorker(names.redisPrefix.slice(0, -1));
  running.push(last);

  await waitConsumerDrained(nc, names, 60_000);
  await publishEvents(js, names, [flush]);
  await waitConsumerDrained(nc, names);
  const expected = expectedWindows([...events, flush]);
  const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
  await waitFor("the restarted worker to close every window", async () => (await readFeatureWindowLogs(nc, names)).length >= closed.length, 30_000, 200);

  last.child.kill("SIGTERM");
  assert.equal(await last.exited, 0, `clean exit after SIGTERM\n${last.stderr.join("").slice(-2000)}`);
  assert.ok(first.num_ack_pending > 0 && second.num_ack_pending > 0, "both kills left delivered, unacked events behind");

  await assertOnlineStore(runtime, expected);
  assertClosedWindows(await readFeatureWindowLogs(nc, names), closed);

  // The last worker's summary: it saw the killed workers' unfinished batches again.
  const summary = last.stderr
    .join("")
    .split("\n")
    .filter((l) => l.includes("features worker stopped"))
    .map((l) => JSON.parse(l) as { messages: number; duplicates: Record<string, number> })[0];
  assert.ok(summary, "the worker logged its summary on stopping");
  // With a saturated worker a kill lands inside a batch nearly every time (each run so far saw
  // hundreds); exactly-once.test.ts covers that path deterministically too.
  assert.ok((summary.duplicates.user ?? 0) > 0, "some killed batch had reached Redis before its acks: the path under test");
  console.log(
    `# kill -9 at ack floor ${first.ack_floor.stream_seq} (${first.num_ack_pending} unacked) and ${second.ack_floor.stream_seq} (${second.num_ack_pending} unacked); ` +
      `restarted worker: ${summary.messages} messages, duplicates ${JSON.stringify(summary.duplicates)}`,
  );
});
