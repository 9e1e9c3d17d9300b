// The loop never locks itself out of its own features. Production serves a 4-feature model; the
// predictions it logs carry every pipeline and request feature (model's first, as the server
// logs them, PredictionLog.model_feature_count saying how many were the model's). A training
// cycle on that traffic learns a 10-feature model with a value in every column, which beats
// production on the same validation rows; the vector production was served stays exactly
// recoverable from the row. Real NATS JetStream, the sink and the embedded ClickHouse.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startSink, type Sink } from "../../sink/index.js";
import { queryRows } from "../../lib/clickhouse.js";
import { OutcomeLogSchema, PredictionLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { allFeatureSpecs } from "../../features/definitions.js";
import { createRandom } from "../../trainer/gbdt.js";
import { runTrainingCycle, type CycleReport } from "../../trainer/cycle.js";
import { loadLoggedDataset } from "../../trainer/dataset.js";
import { publishLogs, type LogMessage } from "../sink/fixtures/logs.js";

const USERS = 60;
const ITEMS = 20;
const CANDIDATES = 5;
/** Production's inputs: the user aggregates only. What decides clicks most, item CTR, is not one. */
const PRODUCTION_FEATURES = ["clicks_last_5min", "avg_session_duration", "unique_pages_viewed", "purchase_amount"];
const ALL = allFeatureSpecs().map((s) => s.name);
const HOUR = 3_600_000;

let rt: TestRuntime;
let sink: Sink;
let production: CycleReport;
let now: number;
const rand = createRandom(13);
const users = Array.from({ length: USERS }, () => {
  const clicks = Math.floor(rand() * 8);
  const pages = 1 + Math.floor(rand() * 6);
  const purchase = rand() < 0.2 ? Math.round(rand() * 100) : 0;
  return {
    clicks_last_5min: clicks,
    avg_session_duration: Math.round(rand() * 300),
    unique_pages_viewed: pages,
    purchase_amount: purchase,
    engagement_score: clicks * 0.3 + pages * 0.4 + (purchase > 0 ? 30 : 0),
  } as Record<string, number>;
});
const items = Array.from({ length: ITEMS }, () => {
  const views = 50 + Math.floor(rand() * 100);
  const ctr = Math.round(rand() * 60) / 100;
  return { item_views_5min: views, item_clicks_5min: Math.round(views * ctr), item_purchases_5min: Math.floor(rand() * 5), item_ctr_5min: ctr } as Record<
    string,
    number
  >;
});
const clickProbability = (u: Record<string, number>, i: Record<string, number>) =>
  1 / (1 + Math.exp(-(-3.2 + 0.25 * u.clicks_last_5min! + 7 * i.item_ctr_5min!)));

/**
 * `requests` Recommend logs from `startMs`, one per 100 ms, with the clicks the true model draws.
 * `logged`: the feature names logged, `modelCount` of them the model's (0: the old shape).
 */
function traffic(tag: string, startMs: number, requests: number, version: string, logged: string[], modelCount: number): LogMessage[] {
  const out: LogMessage[] = [];
  for (let r = 0; r < requests; r++) {
    const u = r % USERS;
    const device = r % 3;
    const time = startMs + r * 100;
    const candidates = Array.from({ length: CANDIDATES }, (_, k) => (r * 7 + k * 3) % ITEMS);
    const featureValue = (name: string, item: number) => (name === "device_type" ? device : (users[u]![name] ?? items[item]![name]!));
    const requestId = `${tag}-${r}`;
    const log = create(PredictionLogSchema, {
      requestId,
      time: timestampFromMs(time),
      userId: `u${u}`,
      modelName: "recommender",
      modelVersion: version,
      deviceType: ["desktop", "mobile", "tablet"][device]!,
      featureNames: logged,
      modelFeatureCount: modelCount,
      items: candidates.map((item, k) => ({ itemId: `item${item}`, score: 0.5, position: k + 1, features: logged.map((n) => featureValue(n, item)) })),
    });
    out.push({ kind: "prediction", id: `p-${requestId}`, data: toBinary(PredictionLogSchema, log) });
    for (const item of candidates) {
      if (rand() >= clickProbability(users[u]!, items[item]!)) continue;
      const outcomeId = `o-${requestId}-${item}`;
      const outcome = create(OutcomeLogSchema, { outcomeId, requestId, itemId: `item${item}`, time: timestampFromMs(time + 1000), clicked: true });
      out.push({ kind: "outcome", id: outcomeId, data: toBinary(OutcomeLogSchema, outcome) });
    }
  }
  return out;
}

async function count(where: string): Promise<number> {
  return Number((await queryRows<{ n: string }>(await rt.clickhouse(), `SELECT count() AS n FROM predictions FINAL WHERE ${where}`))[0]!.n);
}

before(async () => {
  rt = testRuntime();
  sink = await startSink(rt, { kinds: ["prediction", "outcome", "model_event"], maxBatchWaitMs: 500 });
  now = Date.now();
  // Three hours ago, before any model: only production's four features were logged (the old
  // shape), so the first model can only learn those. That is the registry the issue started from.
  const early = traffic("early", now - 3 * HOUR, 400, "fallback", PRODUCTION_FEATURES, 0);
  await publishLogs((await rt.nats()).jetstream(), rt.names, early);
  await waitFor(async () => (await count("request_id LIKE 'early-%'")) === 400 * CANDIDATES, 60_000, "the early traffic in ClickHouse");
  production = await runTrainingCycle(rt, { data: { kind: "logs", endMs: now - 2 * HOUR, windowMs: 2 * HOUR, labelDelayMs: 0 }, gbdt: { numTrees: 40 } });
  assert.equal(production.decision.action, "promote", production.decision.reason);
  assert.deepEqual(
    production.version!.features.map((f) => f.name),
    PRODUCTION_FEATURES,
  );
});

after(async () => {
  await sink?.stop();
  await rt?.cleanup();
});

it("a 10-feature model trained on production's full-feature logs has no all-NaN column and beats the 4-feature production", async (t) => {
  // Production v1 serves; the server logs its four inputs first, then every other feature.
  const logged = [...PRODUCTION_FEATURES, ...ALL.filter((n) => !PRODUCTION_FEATURES.includes(n))];
  const served = traffic("full", now - HOUR, 800, production.version!.version, logged, PRODUCTION_FEATURES.length);
  await publishLogs((await rt.nats()).jetstream(), rt.names, served);
  await waitFor(async () => (await count("request_id LIKE 'full-%'")) === 800 * CANDIDATES, 60_000, "the full-feature traffic in ClickHouse");

  const window = { endMs: now, windowMs: 1.5 * HOUR, labelDelayMs: 0 };
  const ch = await rt.clickhouse();
  const dataset = await loadLoggedDataset(ch.client, { modelName: "recommender", featureNames: ALL, ...window });
  assert.equal(dataset.featureNames.length, 10);
  for (let f = 0; f < ALL.length; f++) {
    assert.ok(
      dataset.columns[f]!.some((v) => !Number.isNaN(v)),
      `column ${ALL[f]} is all NaN`,
    );
  }
  assert.equal(dataset.counts.notes.rows_with_features_beyond_served_model, dataset.counts.rows);

  const next = await runTrainingCycle(rt, { data: { kind: "logs", ...window }, gbdt: { numTrees: 40 } });
  assert.deepEqual([...next.data.features].sort(), [...ALL].sort());
  assert.equal(next.version!.features.length, 10);
  assert.equal(next.production?.version, production.version!.version);
  const prodAuc = next.production!.evaluation!.auc;
  t.diagnostic(`validation AUC: 10-feature ${next.candidate!.auc.toFixed(4)}, 4-feature production ${prodAuc.toFixed(4)}`);
  assert.ok(next.candidate!.auc > prodAuc + 0.03, `new ${next.candidate!.auc} vs production ${prodAuc}`);
  assert.equal(next.decision.action, "promote", next.decision.reason);
});

it("the vector production was served stays recoverable exactly from the full-feature row", async () => {
  const rows = await queryRows<{ model_features: string[]; served: number[]; keys: number }>(
    await rt.clickhouse(),
    `SELECT model_features, arrayMap(n -> features[n], model_features) AS served, length(mapKeys(features)) AS keys
     FROM predictions FINAL WHERE request_id = 'full-7' AND item_id = 'item${(7 * 7) % ITEMS}'`,
  );
  assert.equal(rows.length, 1);
  assert.deepEqual(rows[0]!.model_features, PRODUCTION_FEATURES);
  const u = users[7 % USERS]!;
  assert.deepEqual(
    rows[0]!.served.map(Number),
    PRODUCTION_FEATURES.map((n) => u[n]),
  );
  assert.equal(Number(rows[0]!.keys), 10);
  // Old-shape rows: every logged entry was the model's.
  const early = await queryRows<{ model_features: string[] }>(
    await rt.clickhouse(),
    "SELECT model_features FROM predictions FINAL WHERE request_id = 'early-0' LIMIT 1",
  );
  assert.deepEqual(early[0]!.model_features, PRODUCTION_FEATURES);
  // A row written without the column (by a writer older than the migration) reads the old meaning too.
  const ch = await rt.clickhouse();
  await ch.client.insert({
    table: "predictions",
    columns: ["request_id", "time", "item_id", "model_name", "features"],
    values: [{ request_id: "legacy", time: new Date(now).toISOString(), item_id: "i", model_name: "recommender", features: { a: 1, b: 2 } }],
    format: "JSONEachRow",
  });
  const legacy = await queryRows<{ model_features: string[] }>(ch, "SELECT model_features FROM predictions WHERE request_id = 'legacy'");
  assert.deepEqual(legacy[0]!.model_features, ["a", "b"]);
});
