// A features worker while its NATS is killed (SIGKILL) mid-backlog and restarted on the same port
// and store: the worker pulls again by itself, nothing is lost or counted twice, and the windows
// the watermark closes reach LOGS once each.
import { after, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import {
  assertClosedWindows,
  assertOnlineStore,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  waitConsumerDrained,
  waitFor,
  type TestEvent,
  closingEvent,
} from "../features/helpers.js";
import { OwnService } from "./own-services.js";
import assert from "node:assert/strict";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;

let nats: OwnService | undefined;
let rt: TestRuntime | undefined;
let worker: FeaturesWorker | undefined;

after(async () => {
  if (nats && !nats.alive) await nats.start().catch(() => undefined);
  await worker?.stop();
  await rt?.cleanup();
  await nats?.remove();
});

it("pulls again after NATS comes back: every event once, every closed window logged once", async () => {
  nats = await OwnService.nats();
  rt = testRuntime({ natsUrl: nats.url });
  const nc = await rt.nats();
  // Eight minutes of event time: nothing falls behind the watermark whatever the redelivery order.
  const events = makeEvents({ count: 6000, users: 100, pages: 30, startMs: T0, spanMs: 8 * MIN, jitterMs: 30_000, seed: 31 });
  const flush: TestEvent = closingEvent(T0 + 40 * MIN);

  await publishEvents(nc.jetstream(), rt.names, events.slice(0, 3000));
  worker = await startFeaturesWorker(rt, { progressIntervalMs: 0, maxBatch: 200, ackWaitMs: 2000 });
  await waitFor("the worker under way", async () => worker!.stats.messages >= 600, 20_000);
  await nats.kill();
  await sleep(1000);
  const during = worker.stats.messages;
  await nats.start();
  // The client reconnects at once; JetStream answers once it has recovered its streams.
  await waitFor(
    "JetStream back",
    async () => (await nc.jetstreamManager().then((m) => m.streams.info(rt!.names.eventsStream))).config.name !== undefined,
    20_000,
    200,
  );
  await publishEvents(nc.jetstream(), rt.names, events.slice(3000));
  await waitConsumerDrained(nc, rt.names, 60_000);
  await publishEvents(nc.jetstream(), rt.names, [flush]);
  await waitConsumerDrained(nc, rt.names, 30_000);
  const expected = expectedWindows([...events, flush]);
  const closed = expected.filter((w) => w.id !== "flush-user" && w.id !== "flush-page");
  await waitFor("every window closed", async () => (await readFeatureWindowLogs(nc, rt!.names)).length >= closed.length, 30_000, 200);

  assert.ok(during < 6000, `killed mid-stream (${during} messages before)`);
  await assertOnlineStore(rt, expected);
  assertClosedWindows(await readFeatureWindowLogs(nc, rt.names), closed);
  console.log(`# NATS killed after ${during} messages; worker: ${worker.stats.messages} messages, duplicates ${JSON.stringify(worker.stats.duplicates)}`);
});
