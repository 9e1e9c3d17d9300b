// Shadow traffic on the real loop: an experiment names a shadow version and a share of requests;
// the server answers every request with production, scores the requests in the share (by the
// hash of experiment and request id) with the shadow after answering, and logs those scores
// through LOGS and the sink into shadow_predictions, never into predictions or a response.
// `report shadow` then compares scores, rankings and AUC on production's shown items.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { inShadowShare } from "../../server/shadow-scoring.js";
import { startSink, type Sink } from "../../sink/index.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { queryRows } from "../../lib/clickhouse.js";
import type { Experiment, FeatureSpec } from "../../lib/registry.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import { createRandom } from "../../trainer/gbdt.js";
import { compareShadow, summarize, type ShadowPair } from "../../monitor/shadow.js";
import { report } from "../../cli/commands/report.js";
import { createMonitor } from "../../monitor/monitor.js";

const MODEL = "recommender";
const ITEMS = 10;
const REQUESTS = 300;
const QUALITY = Array.from({ length: ITEMS }, (_, i) => 0.05 + (0.85 * i) / (ITEMS - 1));
const FEATURES: FeatureSpec[] = [{ name: "item_ctr_5min", source: "item", type: "numeric", default: 0 }];

let rt: TestRuntime;
let server: RunningServer;
let sink: Sink;
let client: Client<typeof RecommendationService.method>;
let experiment: Experiment;
const versions = { flat: "", good: "" };
const started = new Date(Date.now() - 60_000);

const count = async (sql: string) => Number((await queryRows<{ n: string }>(await rt.clickhouse(), sql))[0]!.n);

before(async () => {
  rt = testRuntime();
  server = await startServer(rt, { http: false });
  sink = await startSink(rt, { kinds: ["prediction", "shadow", "exposure", "outcome"], maxBatchWaitMs: 300 });
  client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);
  for (let i = 0; i < ITEMS; i++) await rt.redis().hset(rt.names.itemFeaturesKey(`item${i}`), { item_ctr_5min: QUALITY[i]! });
  const registry = await rt.registry();
  const publish = async (w: number) =>
    (await registry.publish({ name: MODEL, artifact: logisticModel([w], 0), features: FEATURES, inputName: "features", outputName: "score", actor: "test" }))
      .version;
  versions.flat = await publish(0);
  versions.good = await publish(8);
  await registry.setAlias(MODEL, "production", versions.flat, { actor: "test" });
  experiment = await registry.createExperiment({
    name: "shadow-good",
    model: MODEL,
    variants: [{ name: "control", traffic: 100, target: "production" }],
    shadow: { target: versions.good, percent: 40 },
  });
  await waitFor(
    () => server.models.experimentFor(MODEL)?.shadow?.target === versions.good && server.models.states(MODEL).get(versions.good)?.state === "ready",
    20_000,
    "the shadow version loaded",
  );
  await waitFor(() => server.models.servedVersion(MODEL) === versions.flat, 20_000, "production served");

  const random = createRandom(3);
  const candidates = Array.from({ length: ITEMS }, (_, i) => `item${i}`);
  for (let r = 0; r < REQUESTS; r += 20) {
    await Promise.all(
      Array.from({ length: 20 }, async (_, k) => {
        const res = await client.recommend({ userId: `u${(r + k) % 50}`, candidates, limit: 3, requestId: `req-${r + k}` });
        // What the caller gets is production's answer, shadow or not.
        assert.equal(res.modelVersion, versions.flat);
        for (const rec of res.recommendations) {
          if (random() < QUALITY[Number(rec.itemId.slice(4))]!)
            await client.recordOutcome({ requestId: res.requestId, itemId: rec.itemId, clicked: true, revenue: 0 });
        }
      }),
    );
  }
  await server.logs.flush();
});

after(async () => {
  client?.close();
  await sink?.stop();
  await server?.stop();
  await rt?.cleanup();
});

describe("shadow traffic", () => {
  it("scores exactly the requests in the shadow share, logs them to shadow_predictions only", async () => {
    const expected = Array.from({ length: REQUESTS }, (_, r) => `req-${r}`).filter((id) => inShadowShare(experiment, id));
    assert.ok(expected.length > 0.3 * REQUESTS && expected.length < 0.5 * REQUESTS, `${expected.length} of ${REQUESTS} in a 40 % share`);
    // A shadow whose feature read timed out (the serving Redis client's 100 ms budget, on a loaded
    // machine) is skipped rather than logged with defaults: nearly all, and only those, arrive.
    const logged = () => count("SELECT uniqExact(request_id) AS n FROM shadow_predictions FINAL");
    await waitFor(async () => (await logged()) >= 0.9 * expected.length, 30_000, "the shadow scores in ClickHouse");
    await server.logs.flush();
    let last = -1;
    await waitFor(
      async () => {
        const n = await logged();
        const settled = n === last;
        last = n;
        if (!settled) await new Promise((r) => setTimeout(r, 500));
        return settled;
      },
      30_000,
      "the last shadow scores",
    );
    const ids = (
      await queryRows<{ request_id: string }>(await rt.clickhouse(), "SELECT DISTINCT request_id FROM shadow_predictions FINAL ORDER BY request_id")
    ).map((r) => r.request_id);
    const share = new Set(expected);
    assert.deepEqual(
      ids.filter((id) => !share.has(id)),
      [],
      "shadow scores outside the share",
    );
    assert.equal(await count("SELECT count() AS n FROM shadow_predictions FINAL"), ids.length * ITEMS);
    assert.equal(
      await count(
        `SELECT count() AS n FROM shadow_predictions FINAL WHERE model_version != '${versions.good}' OR variant != 'shadow' OR experiment != 'shadow-good'`,
      ),
      0,
    );
    // The shadow ranks by its own scores: its position 1 is the best item of the ten.
    assert.equal(await count("SELECT count() AS n FROM shadow_predictions FINAL WHERE position = 1 AND item_id != 'item9'"), 0);
    // Never in predictions, which training, drift and quality read.
    await waitFor(async () => (await count("SELECT count() AS n FROM predictions FINAL")) === REQUESTS * ITEMS, 30_000, "every prediction");
    assert.equal(await count(`SELECT count() AS n FROM predictions FINAL WHERE model_version = '${versions.good}'`), 0);
  });

  it("report shadow: scores, rankings and AUC on production's shown items, against the version that answered", async () => {
    let last = -1;
    await waitFor(
      async () => {
        const n = await count("SELECT count() AS n FROM outcomes FINAL");
        const settled = n === last;
        last = n;
        return settled && n > 0;
      },
      20_000,
      "the outcomes",
    );
    const [c] = await compareShadow(await rt.clickhouse(), { from: started, to: new Date(Date.now() + 60_000) });
    assert.ok(c);
    assert.equal(c.experiment, "shadow-good");
    assert.equal(c.shadowVersion, versions.good);
    assert.deepEqual(c.servedVersions, [versions.flat]);
    assert.equal(c.requests, await count("SELECT uniqExact(request_id) AS n FROM shadow_predictions FINAL"));
    assert.equal(c.items, c.requests * ITEMS);
    // The flat model returns the caller's first three (the worst items); the shadow would return the best three.
    assert.equal(c.topKOverlap, 0);
    assert.equal(c.sameFirstItem, 0);
    assert.equal(c.shown, c.requests * 3);
    assert.equal(c.servedAuc, 0.5, "flat scores: no ranking at all");
    assert.ok(c.shadowAuc > 0.55, `shadow AUC ${c.shadowAuc} on the shown items`);

    // The monitor's cycle carries the same comparison, and each served version's online CTR.
    const cycle = await createMonitor(rt).runCycle();
    assert.equal(cycle.shadow?.[0]?.requests, c.requests);
    const clicks = await count("SELECT countIf(clicked = 1) AS n FROM outcomes FINAL");
    assert.deepEqual(
      cycle.online?.map((o) => [o.version, o.requests, o.shown, o.clicks]),
      [[versions.flat, REQUESTS, REQUESTS * 3, clicks]],
    );
    assert.ok(Math.abs(cycle.online![0]!.ctr - clicks / (REQUESTS * 3)) < 1e-12);

    const lines: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => void lines.push(a.join(" "));
    try {
      assert.equal(await report.run({ flags: {}, positionals: ["shadow"] }, rt), 0);
    } finally {
      console.log = log;
    }
    const out = lines.join("\n");
    assert.match(out, /shadow-good/);
    assert.match(out, /AUC shadow/);
  });
});

describe("shadow summary by hand", () => {
  it("overlap, first item, rank correlation and AUC of two requests", () => {
    const p = (request: string, item: string, served: number, servedPosition: number, shadow: number, clicked: number): ShadowPair => ({
      request,
      item,
      servedVersion: "1",
      served,
      servedPosition,
      shadow,
      shadowPosition: 0,
      clicked,
    });
    const pairs = [
      // r1: served a > b > c, shows a, b; shadow c > a > b: top-2 {c, a}, overlap 1/2, first differs; ranks reversed-ish: ρ = −0.5.
      p("r1", "a", 0.9, 1, 0.5, 1),
      p("r1", "b", 0.8, 2, 0.4, 0),
      p("r1", "c", 0.1, 0, 0.7, 0),
      // r2: both put x first and show one item: overlap 1, same first; ρ = 1.
      p("r2", "x", 0.6, 1, 0.9, 0),
      p("r2", "y", 0.2, 0, 0.1, 0),
    ];
    const s = summarize("e", "2", pairs);
    assert.equal(s.requests, 2);
    assert.equal(s.topKOverlap, (0.5 + 1) / 2);
    assert.equal(s.sameFirstItem, 0.5);
    assert.ok(Math.abs(s.rankCorrelation - (-0.5 + 1) / 2) < 1e-12);
    // Shown: a (clicked), b, x. Served AUC: a 0.9 above b 0.8 and x 0.6 → 1; shadow: a 0.5 above b 0.4, below x 0.9 → 0.5.
    assert.equal(s.shown, 3);
    assert.equal(s.servedAuc, 1);
    assert.equal(s.shadowAuc, 0.5);
  });
});
