// The learning half of the loop, end to end on real services: the server scores requests with
// features from Redis and logs them, the sink writes predictions and outcomes to the embedded
// ClickHouse, a training cycle learns from them and publishes to the registry on NATS, the alias
// moves, the server swaps to the new version; the decisions land in model_events with reasons.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startSink, type Sink } from "../../sink/index.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { queryRows } from "../../lib/clickhouse.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { createRandom } from "../../trainer/gbdt.js";
import { runTrainingCycle, type CycleReport } from "../../trainer/cycle.js";
import { startTrainingSchedule } from "../../trainer/schedule.js";
import { acquireCycleLock, isHeld, lockBucket } from "../../trainer/cycle-lock.js";

const USERS = 40;
const ITEMS = 12;
const REQUESTS = 450;
const CANDIDATES = 5;

let rt: TestRuntime;
let server: RunningServer;
let sink: Sink;
let client: Client<typeof RecommendationService.method>;
let first: CycleReport;

/** The true click model the trainer should recover: user engagement × item click-through. */
const clickProbability = (userClicks: number, itemCtr: number) => 1 / (1 + Math.exp(-(-3 + 0.35 * userClicks + 5 * itemCtr)));

async function countRows(table: string, where = "1"): Promise<number> {
  const rows = await queryRows<{ n: string }>(await rt.clickhouse(), `SELECT count() AS n FROM ${table} FINAL WHERE ${where}`);
  return Number(rows[0]!.n);
}

before(async () => {
  rt = testRuntime();
  server = await startServer(rt, { http: false });
  sink = await startSink(rt, { kinds: ["prediction", "outcome", "model_event"], maxBatchWaitMs: 1000 });
  client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);

  // Online features, as the feature pipeline would keep them.
  const redis = rt.redis();
  const rand = createRandom(5);
  const userClicks: number[] = [];
  const itemCtr: number[] = [];
  for (let u = 0; u < USERS; u++) {
    userClicks.push(Math.floor(rand() * 10));
    await redis.hset(rt.names.userFeaturesKey(`u${u}`), { clicks_last_5min: userClicks[u], engagement_score: userClicks[u] * 0.3 });
  }
  for (let i = 0; i < ITEMS; i++) {
    itemCtr.push(Math.round(rand() * 50) / 100);
    await redis.hset(rt.names.itemFeaturesKey(`item${i}`), { item_ctr_5min: itemCtr[i], item_views_5min: 100 });
  }
  // Traffic, and clicks drawn from the true model.
  let clicks = 0;
  for (let r = 0; r < REQUESTS; r++) {
    const u = r % USERS;
    const candidates = Array.from({ length: CANDIDATES }, (_, k) => `item${(r * 7 + k * 5) % ITEMS}`);
    const res = await client.recommend({ userId: `u${u}`, candidates, requestId: `req-${r}` });
    for (const rec of res.recommendations) {
      const i = Number(rec.itemId.slice(4));
      if (rand() < clickProbability(userClicks[u]!, itemCtr[i]!)) {
        await client.recordOutcome({ requestId: res.requestId, itemId: rec.itemId, clicked: true, revenue: 0 });
        clicks++;
      }
    }
  }
  await server.logs.flush();
  await waitFor(
    async () => (await countRows("predictions")) === REQUESTS * CANDIDATES && (await countRows("outcomes")) === clicks,
    30_000,
    "the sink to write the logs",
  );
  // What the dataset must clean up: a row written twice (a redelivered log) and a candidate that
  // was scored but never shown (position 0) and so has no outcome.
  const ch = await rt.clickhouse();
  // No background merge may collapse the duplicate before the dataset counts it.
  await ch.client.command({ query: "SYSTEM STOP MERGES predictions" });
  await ch.client.command({ query: "INSERT INTO predictions SELECT * FROM predictions WHERE request_id = 'req-0' ORDER BY item_id LIMIT 1" });
  await ch.client.command({
    query: "INSERT INTO predictions SELECT * REPLACE ('never-shown' AS item_id, 0 AS position) FROM predictions WHERE request_id = 'req-1' LIMIT 1",
  });
});

after(async () => {
  client?.close();
  await sink?.stop();
  await server?.stop();
  const nc = await rt?.nats().catch(() => undefined);
  await (await nc?.jetstreamManager())?.streams.delete(`KV_${lockBucket(rt.names)}`).catch(() => undefined);
  await rt?.cleanup();
});

const logsNow = () => ({ kind: "logs" as const, labelDelayMs: 0, endMs: Date.now() + 1000 });

it("first cycle: learns from the logged vectors, publishes, promotes, and the server swaps", async () => {
  first = await runTrainingCycle(rt, { data: logsNow(), minRows: 1000 });
  assert.equal(first.decision.action, "promote", first.decision.reason);
  assert.match(first.decision.reason, /no production version/);
  assert.equal(first.data.rows, REQUESTS * CANDIDATES);
  assert.equal(first.data.positives, await countRows("outcomes"));
  assert.equal(first.data.notes.logged_rows, REQUESTS * CANDIDATES + 2);
  assert.equal(first.data.notes.duplicates_collapsed, 1);
  assert.deepEqual(first.data.dropped, { not_shown: 1 });
  // Trained on the features that were served and carry values (all pipeline features are logged).
  assert.ok(first.data.features.includes("clicks_last_5min") && first.data.features.includes("item_ctr_5min"));
  assert.ok(first.candidate!.auc > 0.68, `validation AUC ${first.candidate!.auc}`);
  assert.ok(first.data.validRows! > 100 && first.data.validRows! < 400);

  const registry = await rt.registry();
  const mv = first.version!;
  assert.equal((await registry.getAlias("recommender", "production"))?.version, mv.version);
  assert.equal(mv.inputName, "features");
  assert.equal(mv.outputName, "probabilities");
  assert.deepEqual(
    mv.features.map((f) => f.name),
    first.data.features,
  );
  assert.ok(Math.abs(mv.metrics.auc! - first.candidate!.auc) < 1e-12);
  assert.equal(mv.data?.rows, REQUESTS * CANDIDATES);
  assert.equal(mv.params.numTrees, 100);
  const reference = await registry.fetchReference(mv);
  assert.deepEqual(Object.keys(reference!).sort(), [...first.data.features].sort());
  assert.ok(Object.values(reference!).every((v) => v.length > 0 && v.length <= 2000));

  await waitFor(() => server.models.servedVersion("recommender") === mv.version, 20_000, "the server to swap to the trained version");
  const res = await client.recommend({ userId: "u1", candidates: ["item1", "item2"], requestId: "after-swap" });
  assert.equal(res.modelVersion, mv.version);
});

it("second cycle on the same rows: production scored on the same validation rows, no 1 % gain → candidate", async () => {
  const second = await runTrainingCycle(rt, { data: logsNow(), minRows: 1000 });
  assert.equal(second.decision.action, "keep_candidate", second.decision.reason);
  assert.equal(second.production?.version, first.version!.version);
  const prodAuc = second.production!.evaluation!.auc;
  assert.ok(Number.isFinite(prodAuc));
  assert.match(second.decision.reason, /< .* needed \(production v/);
  const registry = await rt.registry();
  assert.equal((await registry.getAlias("recommender", "production"))?.version, first.version!.version, "production unchanged");
  assert.equal((await registry.getAlias("recommender", "candidate"))?.version, second.version!.version);
  assert.equal(server.models.servedVersion("recommender"), first.version!.version);

  // Both decisions, with their reasons, reach model_events through LOGS and the sink.
  const events = await waitFor(
    async () => {
      const rows = await queryRows<{ kind: string; alias: string; to_version: string; reason: string }>(
        await rt.clickhouse(),
        "SELECT kind, alias, to_version, reason FROM model_events FINAL WHERE model_name = 'recommender' AND kind = 'train_decision' ORDER BY time",
      );
      return rows.length === 2 ? rows : undefined;
    },
    20_000,
    "train decisions in model_events",
  );
  assert.deepEqual(
    events.map((e) => [e.alias, e.to_version]),
    [
      ["production", first.version!.version],
      ["candidate", second.version!.version],
    ],
  );
  assert.match(events[1]!.reason, /needed/);
});

it("the schedule runs one cycle at a time and skips when nothing new was logged", async () => {
  const reports: unknown[] = [];
  const schedule = startTrainingSchedule(rt, { initialDelayMs: 3_600_000, labelDelayMs: 0, minRows: 1000, onReport: (r) => reports.push(r) });
  try {
    // The newest version was trained on everything logged so far.
    const [a, b] = await Promise.all([schedule.runNow(), schedule.runNow()]);
    assert.deepEqual(b, { skipped: true, reason: "a training cycle is already running" });
    assert.ok("skipped" in a && /no new predictions logged since/.test(a.reason), JSON.stringify(a));

    // New traffic → the next run trains. The cycles before trained on windows ending a second
    // ahead (logsNow), so traffic only counts as new once the newest of them has passed.
    const versions = await (await rt.registry()).listVersions("recommender");
    const trainedUntil = Date.parse(String(versions.at(-1)!.data!.window_end));
    await sleep(Math.max(0, trainedUntil - Date.now() + 10));
    await client.recommend({ userId: "u2", candidates: ["item3", "item4"], requestId: "fresh" });
    await server.logs.flush();
    // Its own rows, not a total that other tests' traffic could reach first.
    await waitFor(async () => (await countRows("predictions", "request_id = 'fresh'")) === 2, 20_000, "the new predictions");
    const c = await schedule.runNow();
    assert.ok(!("skipped" in c), JSON.stringify(c));
    assert.ok(["promote", "keep_candidate"].includes(c.decision.action));
    assert.equal(reports.length, 2);
  } finally {
    await schedule.stop();
  }
});

it("stopping the schedule mid-cycle cancels the cycle, reported as such rather than as a failure", async () => {
  const reports: unknown[] = [];
  const schedule = startTrainingSchedule(rt, { initialDelayMs: 3_600_000, labelDelayMs: 0, minRows: 1000, onReport: (r) => reports.push(r) });
  const running = schedule.runNow();
  await schedule.stop();
  assert.deepEqual(await running, { skipped: true, reason: "cancelled: the trainer stopped" });
  assert.deepEqual(reports, [{ skipped: true, reason: "cancelled: the trainer stopped" }]);
});

it("a cycle is refused while another process holds the model's training lock", async () => {
  const held = await acquireCycleLock(await rt.nats(), rt.names, "recommender");
  assert.ok(!isHeld(held));
  try {
    const again = await acquireCycleLock(await rt.nats(), rt.names, "recommender");
    assert.ok(isHeld(again), "a second holder is refused");
    const report = await runTrainingCycle(rt, { data: logsNow(), minRows: 1000 });
    assert.equal(report.decision.action, "skip");
    assert.match(report.decision.reason, /another training cycle of recommender is running \(.+:\d+, since /);
    assert.equal(report.version, undefined);
  } finally {
    await held.release();
  }
  const after = await acquireCycleLock(await rt.nats(), rt.names, "recommender");
  assert.ok(!isHeld(after), "released locks can be taken again");
  await after.release();
});

it("a cycle over an empty window is skipped with its reason", async () => {
  const report = await runTrainingCycle(rt, { modelName: "nobody", data: logsNow() });
  assert.equal(report.decision.action, "skip");
  assert.equal(report.data.rows, 0);
  assert.equal(report.version, undefined);
  const registry = await rt.registry();
  assert.equal(await registry.getAlias("nobody", "production"), undefined);
});
