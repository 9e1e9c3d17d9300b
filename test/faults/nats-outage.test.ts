// NATS killed with SIGKILL under load, then restarted on the same port and store directory. The
// server keeps answering; its prediction logs spill to disk and are replayed once NATS is back;
// the sink and the registry watch reconnect by themselves. In the end ClickHouse holds exactly one
// prediction row per scored candidate of every answered request: nothing lost, nothing doubled.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startSink, type Sink } from "../../sink/sink.js";
import { queryRows, type ClickHouse } from "../../lib/clickhouse.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import type { FeatureSpec, Registry } from "../../lib/registry.js";
import { OwnService, recommendLoad, type Load } from "./own-services.js";

const FEATURES: FeatureSpec[] = [
  { name: "clicks_last_5min", source: "user", type: "numeric", default: 0 },
  { name: "item_clicks_5min", source: "item", type: "numeric", default: 0 },
];
const ITEMS = ["a", "b", "c", "d", "e"];

let nats: OwnService;
let rt: TestRuntime;
let ch: ClickHouse;
let server: RunningServer | undefined;
let sink: Sink | undefined;
let client: Client<typeof RecommendationService.method> | undefined;
let load: Load | undefined;

before(async () => {
  nats = await OwnService.nats();
  // The private NATS for the registry and LOGS; the shared Redis; ClickHouse embedded in the data dir.
  rt = testRuntime({ natsUrl: nats.url });
  ch = await rt.clickhouse();
});

after(async () => {
  await load?.stop();
  client?.close();
  // Stopping the parts and cleaning up talk to NATS: after a failure mid-outage, bring it back first.
  if (!nats.alive) await nats.start().catch(() => undefined);
  await server?.stop();
  await sink?.stop();
  await rt.cleanup();
  await nats.remove();
});

async function publishModel(registry: Registry, bias: number): Promise<string> {
  const mv = await registry.publish({
    name: "recommender",
    artifact: logisticModel([0.5, 0.25], bias),
    features: FEATURES,
    inputName: "features",
    outputName: "score",
  });
  await registry.setAlias("recommender", "production", mv.version);
  return mv.version;
}

it("keeps serving through a NATS crash and ends with exactly one prediction row per scored candidate", async () => {
  const registry = await rt.registry();
  const v1 = await publishModel(registry, -1);
  server = await startServer(rt, { http: false });
  sink = await startSink(rt, { kinds: ["prediction"], maxBatchMessages: 1000 });
  await waitFor(() => server!.models.servedVersion("recommender") === v1, 15_000, "model served");
  client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);

  // 1 to 5 candidates per request, so a lost or doubled row shows in the per-request counts.
  load = recommendLoad(
    client,
    (loop, i) => ({ userId: `u${loop}`, candidates: ITEMS.slice(0, 1 + ((loop + i) % ITEMS.length)), requestId: `r${loop}-${i}` }),
    8,
  );
  await waitFor(() => sink!.stats().messagesWritten >= 100, 20_000, "logs flowing into ClickHouse");

  // ---- the outage ----
  const killedAt = Date.now();
  await nats.kill();
  await waitFor(() => server!.logs.spilled > 0, 10_000, "prediction logs spilled to disk");
  // Long enough for the sink to have tried several fetches while NATS was away.
  await sleep(5000);
  const restartedAt = Date.now();
  const during = load.answers.filter((a) => a.at > killedAt && a.at < restartedAt);
  assert.ok(during.length >= 50, `the server kept answering while NATS was down (${during.length} answers)`);
  assert.ok(
    during.every((a) => a.modelVersion === v1),
    "the loaded model kept serving without its registry",
  );
  const spilledTotal = await rt.metrics.value("streamserve_log_spilled_total");
  assert.ok(spilledTotal > 0, "the spill shows in the metrics");

  // ---- NATS back, with its streams (same store directory) ----
  await nats.start();
  // JetStream answers about a second after the server is up; a request sent sooner waits out its
  // whole timeout, so ask with a short one until it does.
  await waitFor(async () => (await rt.nats()).jetstreamManager({ timeout: 500 }), 20_000, "JetStream answering again");
  const jetStreamAfterMs = Date.now() - restartedAt;
  // The registry watch must be back too: a promotion made as soon as NATS is reaches the server
  // promptly. (The watch's consumer does not survive the restart, and nats.js alone notices only
  // after two missed heartbeats, some 10 s: the registry restarts the watch on reconnect.)
  const promotedAt = Date.now();
  const v2 = await publishModel(registry, -0.5);
  await waitFor(() => server!.models.servedVersion("recommender") === v2, 20_000, "the server follows the registry again");
  const swapMs = Date.now() - promotedAt;
  assert.ok(swapMs < 3000, `a promotion made as NATS returned took ${swapMs} ms to reach the server`);
  // Fresh traffic while the spill is replayed: the two must interleave without loss.
  await waitFor(() => load!.answers.filter((a) => a.modelVersion === v2).length >= 300, 20_000, "answers from the new version");
  await load.stop();
  assert.equal(load.failures.length, 0, `zero failed calls (first: ${(load.failures[0] as Error | undefined)?.message})`);

  // ---- everything delivered ----
  await server.logs.flush();
  await waitFor(() => server!.logs.spilled === 0 && server!.logs.depth === 0, 30_000, "the spill replayed to JetStream");
  const replayedAfterMs = Date.now() - restartedAt;
  const expected = new Map(load.answers.map((a) => [a.requestId, a.candidates]));
  const expectedRows = load.answers.reduce((n, a) => n + a.candidates, 0);
  const count = async () => Number((await queryRows<{ n: string }>(ch, "SELECT count() AS n FROM predictions FINAL"))[0]!.n);
  await waitFor(async () => (await count()) >= expectedRows, 40_000, `${expectedRows} prediction rows in ClickHouse`);
  const writtenAfterMs = Date.now() - restartedAt;
  // Delivered promptly, not after the messages' ack deadline (30 s) has passed.
  assert.ok(writtenAfterMs - replayedAfterMs < 10_000, `the rows reached ClickHouse ${writtenAfterMs - replayedAfterMs} ms after the spill was replayed`);
  // A moment for anything extra (a redelivery written twice would still collapse; a stray row would not).
  await sleep(1500);
  assert.equal(await count(), expectedRows, "one row per scored candidate, exactly");

  const perRequest = await queryRows<{ request_id: string; n: string }>(ch, "SELECT request_id, count() AS n FROM predictions FINAL GROUP BY request_id");
  const found = new Map(perRequest.map((r) => [r.request_id, Number(r.n)]));
  const missing = [...expected.keys()].filter((id) => !found.has(id));
  assert.deepEqual(missing.slice(0, 10), [], `${missing.length} answered requests have no prediction rows`);
  const wrong = [...expected].filter(([id, n]) => found.get(id) !== n);
  assert.deepEqual(wrong.slice(0, 10), [], "each request has one row per candidate it scored");
  assert.equal(found.size, expected.size, "no rows for requests that were never answered");
  const answeredDuring = during.filter((a) => found.get(a.requestId) === a.candidates).length;
  assert.equal(answeredDuring, during.length, "the requests answered during the outage are all there");
  console.log(
    `# ${load.answers.length} answers (${during.length} during the outage), ${spilledTotal}+ logs spilled, ${expectedRows} rows; after the restart: ` +
      `JetStream answering ${jetStreamAfterMs} ms, promotion served ${swapMs} ms later, spill replayed ${replayedAfterMs} ms, rows in ClickHouse ${writtenAfterMs} ms`,
  );
});
