// The whole loop in one process, against the real Redis, NATS and the embedded ClickHouse, on a
// compressed schedule (10-second windows instead of 5-minute ones, seconds instead of hours):
//
//   simulator events → features worker → Redis → Recommend (fallback) → LOGS → sink → ClickHouse
//   → training cycle → registry → hot swap under load → a candidate in an A/B experiment
//   → monitor (A/B result, drift after the simulator's shift) → closed windows in ClickHouse.
//
// The steps run in order and share state; each checks what a user of the platform would check:
// gRPC answers, rows through SQL, registry aliases, the monitor's results and alerts. The three
// simulation runs share one seed, so they are the same world (users, pages, hidden truth);
// stopping between them gives quiet moments where counts can be compared exactly.
import { after, before, describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import type { Subscription } from "nats";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startFeaturesWorker, type FeaturesWorker } from "../../features/worker.js";
import { FEATURE_VIEWS, type FeatureView } from "../../features/definitions.js";
import { startSink, type Sink } from "../../sink/sink.js";
import { LOG_KINDS } from "../../sink/log-rows.js";
import { runTrainingCycle, type CycleReport as TrainingReport } from "../../trainer/cycle.js";
import { createMonitor, type CycleReport, type Monitor } from "../../monitor/monitor.js";
import type { FeatureDrift } from "../../monitor/drift.js";
import type { VariantResult } from "../../monitor/experiments.js";
import { ksTwoSample } from "../../monitor/stats/distribution-tests.js";
import { startSimulation, type Simulation, type SimulationCounters, type SimulationOptions } from "../../simulator/simulation.js";
import type { SimEvent } from "../../simulator/clickstream.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { assignVariant } from "../../lib/experiments.js";
import { queryRows, type ClickHouse } from "../../lib/clickhouse.js";
import type { Experiment } from "../../lib/registry.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { PredictionLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { fromBinary } from "@bufbuild/protobuf";

const MODEL = "recommender";
const SECOND = 1000;
/** Compressed windows: events at wall-clock time must pass the watermark within the test. */
const WINDOW_MS = 10 * SECOND;
const WATERMARK_MS = 5 * SECOND;
/**
 * The seed's views with only the timing changed. The feature names (clicks_last_5min, ...) stay
 * as the model and the logs know them; here they count over 10 seconds.
 */
const VIEWS: FeatureView[] = FEATURE_VIEWS.map((v) => ({ ...v, windowMs: WINDOW_MS, watermarkMs: WATERMARK_MS }));
/**
 * Modest load for a loaded 2-core machine (every part runs in this one process), yet enough
 * sessions for drift to stand out: the simulator runs 50 sessions at a time, so neighbouring
 * requests are alike and a smaller sample swings widely. 500 users make each user's windows hold
 * several events and bring users back for the A/B analysis.
 */
const SIM: SimulationOptions = { users: 500, pages: 120, rate: 200, seed: 11 };
/** The monitor compares the last 45 s of served traffic (1 h by default) with the reference. */
const DRIFT_WINDOW_MS = 45 * SECOND;
/**
 * A simulation starts with every session at 0 s: its first seconds are a cold start, not the
 * steady traffic a model will serve, so the first model's data (and drift reference) begins after.
 */
const WARM_UP_MS = 6 * SECOND;
/** Time the sessions running at the shift need to show it in their windows. */
const SHIFT_SETTLE_MS = 5 * SECOND;
const SHIFT_AT_MS = 3 * SECOND;

let rt: TestRuntime;
let ch: ClickHouse;
let sink: Sink;
let features: FeaturesWorker;
let server: RunningServer;
let monitor: Monitor;
let address: string;
let httpPort: number;
/** Simulations and probes still running, stopped by `after` if a step fails midway. */
const running = new Set<{ stop(): Promise<unknown> }>();
let client: Client<typeof RecommendationService.method>;
let alerts: Subscription;
const driftAlerts: { key: string; severity: string; status: string }[] = [];

/** What later steps need from earlier ones. */
const state: {
  failed?: string;
  sim1?: SimulationCounters;
  sim2Counters?: SimulationCounters;
  sim3?: SimulationCounters;
  sim1Events: SimEvent[];
  sim2?: Simulation;
  sim1StartMs?: number;
  sim2StartMs?: number;
  probe?: ProbeResult;
  probeStopMs?: number;
  checkRequests: number;
  first?: TrainingReport;
  second?: TrainingReport;
  experiment?: Experiment;
  beforeShift?: CycleReport;
  afterShift?: CycleReport;
  shiftMs?: number;
} = { sim1Events: [], checkRequests: 0 };

const timings: Record<string, number> = {};

/** Runs one step; once a step has failed, the later ones fail at once with that reason. */
function step(name: string, body: (t: TestContext) => Promise<void>) {
  it(name, async (t) => {
    if (state.failed) throw new Error(`not run: the step "${state.failed}" failed`);
    const started = performance.now();
    try {
      await body(t);
    } catch (err) {
      state.failed = name;
      throw err;
    } finally {
      timings[name] = Math.round(performance.now() - started);
      t.diagnostic(`${(timings[name]! / 1000).toFixed(1)} s`);
    }
  });
}

before(async () => {
  rt = testRuntime();
  ch = await rt.clickhouse();
  const nc = await rt.nats();
  alerts = nc.subscribe(rt.names.alertsSubject("drift"), {
    callback: (_err, msg) => driftAlerts.push(msg.json<{ key: string; severity: string; status: string }>()),
  });
  // Downstream first, as `streamserve up` starts them, with the same small sink batches.
  sink = await startSink(rt, { maxBatchMessages: 500 });
  features = await startFeaturesWorker(rt, { views: VIEWS, progressIntervalMs: 0 });
  server = await startServer(rt);
  address = `127.0.0.1:${server.port}`;
  client = createServiceClient(RecommendationService, address);
  monitor = createMonitor(rt, { drift: { windowMs: DRIFT_WINDOW_MS } });
  httpPort = await rt.listenHttp();
  await waitFor(() => server.models.ready, 15_000, "the server to be ready");
});

after(async () => {
  console.log(`e2e step timings (ms): ${JSON.stringify(timings)}`);
  for (const r of running) await r.stop();
  alerts?.unsubscribe();
  client?.close();
  // The server drains and flushes its logs before the sink and the rest stop (as `up` does).
  await server?.stop();
  await monitor?.stop();
  await features?.stop();
  await sink?.stop();
  await rt?.cleanup();
});

describe("the whole loop on a compressed schedule", () => {
  step("events become online features; Recommend serves the popularity fallback", async (t) => {
    // Every event the simulator publishes, as it published it (a plain subscription beside JetStream).
    const nc = await rt.nats();
    const sub = nc.subscribe(rt.names.eventsSubject, { callback: (_err, msg) => state.sim1Events.push(msg.json<SimEvent>()) });
    state.sim1StartMs = Date.now();
    // 36 s: after the warm-up, 30 s of traffic to learn from and to draw the drift reference from.
    const sim1 = await startSimulation(rt, { ...SIM, grpcAddress: address, durationMs: 36 * SECOND });
    state.sim1 = await sim1.done;
    await drain();
    sub.unsubscribe();
    const c = state.sim1;
    t.diagnostic(`simulation 1: ${JSON.stringify(c)}`);
    assert.equal(c.publishErrors, 0);
    assert.equal(state.sim1Events.length, c.events);
    assert.ok(c.events > 6000, `${c.events} events in 36 s at 200/s`);
    assert.equal(c.requestErrors, 0);
    assert.equal(c.outcomeErrors, 0);
    assert.ok(c.requests > 200, `${c.requests} Recommend calls`);
    assert.equal(c.fallbackResponses, c.requests, "no model yet: every answer comes from the fallback");
    assert.ok(c.outcomes > 20, `${c.outcomes} clicks recorded`);
    assert.deepEqual(features.stats.late, {}, "no event was late");
    assert.equal(features.stats.deadLetters, 0);

    // Each user's online hash shows their newest window, computed here from the events sent.
    const expected = latestUserWindows(state.sim1Events);
    assert.ok(expected.size > 150, `${expected.size} users active`);
    const redis = rt.redis();
    for (const [user, w] of expected) {
      const key = rt.names.userFeaturesKey(user);
      const hash = await redis.hgetall(key);
      assert.equal(Number(hash.window_start), w.windowStart, `${user}: the hash shows another window`);
      assert.equal(Number(hash.event_count), w.eventCount, `${user}: event_count`);
      assert.equal(Number(hash.feature_time), w.featureTime, `${user}: feature_time`);
      for (const [name, value] of Object.entries(w.features)) assertNear(Number(hash[name]), value, `${user} ${name}`);
      const ttl = await redis.pttl(key);
      assert.ok(ttl > 0 && ttl <= rt.config.featureTtlSeconds * 1000, `${user}: TTL ${ttl} ms`);
    }
  });

  step("prediction logs land in ClickHouse: one row per scored candidate, with the vector served", async () => {
    const c = state.sim1!;
    const logs = await readPredictionLogs();
    assert.equal(logs.length, c.requests, "one prediction log per Recommend call");
    const [counts] = await queryRows<{ rows: string; requests: string; shown: string; fallback: string; outcomes: string }>(
      ch,
      `SELECT count() AS rows, uniqExact(request_id) AS requests, countIf(position > 0) AS shown, countIf(model_version = 'fallback') = count() AS fallback,
         (SELECT count() FROM outcomes FINAL) AS outcomes
       FROM predictions FINAL WHERE model_name = {m:String}`,
      { m: MODEL },
    );
    assert.equal(Number(counts!.rows), sum(logs.map((l) => l.scored)), "one row per scored candidate");
    // A request for trending items before the pipeline had ranked any scored nothing: no rows.
    assert.equal(Number(counts!.requests), logs.filter((l) => l.scored > 0).length);
    assert.equal(Number(counts!.shown), c.recommendations, "one row at a position > 0 per recommendation returned");
    assert.equal(Number(counts!.fallback), 1);
    assert.equal(Number(counts!.outcomes), c.outcomes, "one outcome row per RecordOutcome call");

    // A request of our own, while nothing else moves: its rows carry exactly what Redis held.
    const user = [...latestUserWindows(state.sim1Events).entries()].sort((a, b) => b[1].eventCount - a[1].eventCount)[0]![0];
    const pages = [...new Set(state.sim1Events.map((e) => e.page_id))].slice(0, 5);
    const res = await client.recommend({
      userId: user,
      currentPage: pages[0]!,
      deviceType: "mobile",
      candidates: pages,
      limit: 2,
      requestId: "e2e-vector-check",
    });
    state.checkRequests++;
    assert.equal(res.modelVersion, "fallback");
    assert.equal(res.recommendations.length, 2);
    await drain();
    const rows = await queryRows<{ item_id: string; position: number; features: Record<string, number> }>(
      ch,
      "SELECT item_id, position, features FROM predictions FINAL WHERE request_id = 'e2e-vector-check' ORDER BY item_id",
    );
    assert.deepEqual(rows.map((r) => r.item_id).sort(), [...pages].sort(), "every candidate scored is a row");
    assert.deepEqual(
      rows
        .filter((r) => r.position > 0)
        .map((r) => r.item_id)
        .sort(),
      res.recommendations.map((r) => r.itemId).sort(),
    );
    const userHash = await rt.redis().hgetall(rt.names.userFeaturesKey(user));
    for (const row of rows) {
      const itemHash = await rt.redis().hgetall(rt.names.itemFeaturesKey(row.item_id));
      // The served matrix is float32: the logged value is the Redis value rounded to float32.
      for (const name of ["clicks_last_5min", "avg_session_duration", "unique_pages_viewed", "purchase_amount", "engagement_score"]) {
        assert.equal(row.features[name], Math.fround(Number(userHash[name])), `${row.item_id} ${name}`);
      }
      for (const name of ["item_views_5min", "item_clicks_5min", "item_ctr_5min"]) {
        assert.equal(row.features[name], Math.fround(Number(itemHash[name] ?? 0)), `${row.item_id} ${name}`);
      }
      assert.equal(row.features.device_type, 1, "device_type is its vocabulary code (mobile)");
    }
  });

  step("a training cycle promotes version 1 and the server swaps to it with zero failed requests", async (t) => {
    // The first model learns from the fallback phase: what was logged from the end of the warm-up
    // until now. An explicit end (instead of the default 5 min label delay) keeps the schedule
    // short; the outcomes of the last predictions reach ClickHouse within the sink's 1 s batches,
    // well inside the 3 s the cycle waits below.
    const trainEnd = Date.now();
    const trainStart = state.sim1StartMs! + WARM_UP_MS;
    state.sim2StartMs = trainEnd;
    // Runs on through the swap and the experiment; the next step stops it.
    const sim2 = (state.sim2 = await startSimulation(rt, { ...SIM, grpcAddress: address, durationMs: 0 }));
    running.add(sim2);
    // A client calling Recommend back to back throughout the swap, recording every answer.
    const probe = startProbe(client, pickUser(state.sim1Events), [...new Set(state.sim1Events.map((e) => e.page_id))].slice(0, 6));
    running.add(probe);
    await new Promise((r) => setTimeout(r, 3 * SECOND));

    state.first = await runTrainingCycle(rt, { data: { kind: "logs", endMs: trainEnd, windowMs: trainEnd - trainStart } });
    const r = state.first;
    t.diagnostic(`cycle 1: ${r.data.rows} rows, ${r.data.positives} positives, AUC ${r.candidate?.auc.toFixed(3)}, ${r.decision.action}: ${r.decision.reason}`);
    assert.equal(r.decision.action, "promote", r.decision.reason);
    assert.equal(r.version?.version, "1");
    assert.ok(r.data.rows >= 1000, `${r.data.rows} rows: the default promotion floor holds without lowering it`);
    const registry = await rt.registry();
    assert.equal((await registry.aliases(MODEL)).production?.version, "1");
    // The drift reference stored with the version describes what a model is served: every scored
    // candidate, shown or not, not only the rows the fallback chose to show (which it picked for
    // their activity, so their item counts run far higher).
    const reference = (await registry.fetchReference(r.version!))!;
    const window = { from: chTime(new Date(trainStart)), to: chTime(new Date(trainEnd)) };
    const itemViews = async (where: string) =>
      (
        await queryRows<{ v: number }>(
          ch,
          `SELECT features['item_views_5min'] AS v FROM predictions FINAL WHERE time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)} AND ${where}`,
          window,
        )
      ).map((x) => x.v);
    const toScored = ksTwoSample(reference.item_views_5min!, await itemViews("1")).statistic;
    const toShown = ksTwoSample(reference.item_views_5min!, await itemViews("position > 0")).statistic;
    t.diagnostic(`reference item_views_5min: KS ${toScored.toFixed(3)} to all scored candidates, ${toShown.toFixed(3)} to the shown ones`);
    assert.ok(toScored < 0.08 && toShown > 3 * toScored, `KS to scored ${toScored}, to shown ${toShown}`);

    await waitFor(() => server.models.servedVersion(MODEL) === "1", 30_000, "the server to swap to version 1");
    await waitFor(() => probe.versions.includes("1"), 10_000, "a response from version 1");
    await new Promise((r) => setTimeout(r, 2 * SECOND));
    state.probe = await probe.stop();
    running.delete(probe);
    state.probeStopMs = Date.now();

    const p = state.probe!;
    assert.deepEqual(p.errors, [], "no failed call during the swap");
    assert.ok(p.versions.length > 50, `${p.versions.length} probe calls`);
    // Fallback until the swap, version 1 after it, never back.
    assert.deepEqual(runs(p.versions), ["fallback", "1"]);
    const c = sim2.counters();
    assert.equal(c.requestErrors, 0, "no failed Recommend from the simulated site");
    assert.equal(c.outcomeErrors, 0);
    assert.ok(c.fallbackResponses < c.requests, "the simulated site is served by version 1 too");
    const health = await fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.json());
    assert.deepEqual(health, { status: "SERVING", model: MODEL, version: "1" });
  });

  step("a second model is tried against production in an A/B experiment", async (t) => {
    const sim2 = state.sim2!;
    const registry = await rt.registry();
    // Version 1 serves for a while first: the second model learns from its traffic too.
    await new Promise((r) => setTimeout(r, 8 * SECOND));
    // Published as a candidate whatever its AUC (`train --no-promote`): the experiment decides.
    // A 3 s label delay instead of 5 min: outcomes follow their predictions within the sink's 1 s
    // batches here, and the default would leave out every prediction of this test.
    state.second = await runTrainingCycle(rt, { data: { kind: "logs", labelDelayMs: 3 * SECOND }, promote: false });
    const r = state.second;
    t.diagnostic(
      `cycle 2: ${r.data.rows} rows, AUC ${r.candidate?.auc.toFixed(3)} vs production ${r.production?.evaluation?.auc.toFixed(3)}, ${r.decision.action}: ${r.decision.reason}`,
    );
    assert.equal(r.decision.action, "keep_candidate");
    assert.equal(r.version?.version, "2");
    assert.ok(r.data.rows > state.first!.data.rows, "the second cycle saw more data");
    assert.ok(Number.isFinite(r.production?.evaluation?.auc), "production was scored on the same validation rows");
    const aliases = await registry.aliases(MODEL);
    assert.equal(aliases.production?.version, "1");
    assert.equal(aliases.candidate?.version, "2");

    state.experiment = await registry.createExperiment({
      name: "ranker_v2",
      model: MODEL,
      variants: [
        { name: "control", traffic: 50, target: "production" },
        { name: "treatment", traffic: 50, target: "candidate" },
      ],
      actor: "e2e",
    });
    await waitFor(
      () => server.models.experimentFor(MODEL) && server.models.states(MODEL).get("2")?.state === "ready",
      30_000,
      "the server to load the candidate",
    );
    // Each user sees the variant the hash assigns, served by that variant's version.
    const users = [...new Set(state.sim1Events.map((e) => e.user_id))];
    for (const variant of ["control", "treatment"]) {
      const user = users.find((u) => assignVariant(state.experiment!, u).name === variant)!;
      const res = await client.recommend({ userId: user, candidates: ["p1", "p2", "p3"] });
      state.checkRequests++;
      assert.equal(res.variant, variant);
      assert.equal(res.modelVersion, variant === "control" ? "1" : "2");
    }
    // Long enough for a result, and for the monitor's window before the shift to hold site
    // traffic only: the probe's calls (one user, over and over) would otherwise weigh in on drift.
    await new Promise((r) => setTimeout(r, Math.max(20 * SECOND, state.probeStopMs! + DRIFT_WINDOW_MS + SECOND - Date.now())));
    state.sim2Counters = await sim2.stop();
    running.delete(sim2);
    await drain();
    const c = state.sim2Counters;
    t.diagnostic(`simulation 2: ${JSON.stringify(c)}`);
    assert.equal(c.requestErrors, 0, "no failed Recommend through the swap and the experiment");
    assert.equal(c.outcomeErrors, 0);
    assert.equal(c.publishErrors, 0);

    // The monitor's A/B analysis, next to the same figures computed here from the raw tables.
    state.beforeShift = await monitor.runCycle(new Date());
    assert.deepEqual(state.beforeShift.errors, []);
    const result = state.beforeShift.experiments!.experiments.find((e) => e.experiment === "ranker_v2");
    assert.ok(result, "the experiment is analysed");
    const raw = await queryRows<{ variant: string; users: string; conversions: string; exposures: string }>(
      ch,
      `SELECT variant, uniqExact(user_id) AS users, count() AS exposures,
         uniqExactIf(user_id, request_id IN (SELECT request_id FROM outcomes FINAL WHERE converted)) AS conversions
       FROM exposures FINAL WHERE experiment = 'ranker_v2' GROUP BY variant ORDER BY variant`,
    );
    assert.deepEqual(
      raw.map((v) => v.variant),
      ["control", "treatment"],
    );
    for (const row of raw) {
      const v: VariantResult = result.variants.find((x) => x.variant === row.variant)!;
      t.diagnostic(`${v.variant}: ${v.users} users, ${v.exposures} exposures, ${v.conversions} conversions (rate ${v.conversionRate.toFixed(3)})`);
      assert.equal(v.users, Number(row.users), `${row.variant} users`);
      assert.equal(v.exposures, Number(row.exposures), `${row.variant} exposures`);
      assert.equal(v.conversions, Number(row.conversions), `${row.variant} conversions`);
      assert.ok(v.users > 50, `${v.variant}: ${v.users} users`);
      assert.ok(v.conversions > 0, `${v.variant}: no conversion`);
    }
    // Hash routing splits users as configured.
    assert.equal(result.srm.mismatch, false, `sample ratio mismatch: p ${result.srm.pValue}`);
    const treatment = result.variants.find((v) => !v.control)!;
    assert.ok(treatment.lift && Number.isFinite(treatment.pValue), "the treatment has a lift and a p-value against control");
    const report = await queryRows<{ experiment: string; variant: string; users: string }>(
      ch,
      "SELECT experiment, variant, users FROM ab_report ORDER BY variant",
    );
    assert.deepEqual(
      report.map((x) => [x.experiment, x.variant, Number(x.users)]),
      raw.map((x) => ["ranker_v2", x.variant, Number(x.users)]),
    );
  });

  step("the monitor flags drift once the simulated behaviour shifts", async (t) => {
    const before = state.beforeShift!.drift!;
    t.diagnostic(`before the shift: ${describeDrift(before.features)}`);
    assert.equal(before.version, "1");
    assert.equal(before.reason, undefined);
    // No assertion on the verdicts before the shift: version 1 itself changes the traffic (its
    // better recommendations get more clicks, and a followed click lengthens the session), and
    // 50 concurrent sessions make neighbouring requests alike, so KS sometimes flags
    // avg_session_duration or device_type already. The shift is shown by what follows.
    const sessionBefore = before.features.find((f) => f.feature === "avg_session_duration")!;
    assert.equal(sessionBefore.reason, undefined, "judged on enough served values");

    // The experiment is over: all traffic back to production, so drift sees all of it.
    await (await rt.registry()).stopExperiment("ranker_v2");
    await waitFor(() => !server.models.experimentFor(MODEL), 10_000, "the server to end the experiment");

    state.shiftMs = Date.now() + SHIFT_AT_MS;
    const sim3 = await startSimulation(rt, {
      ...SIM,
      grpcAddress: address,
      shiftAtMs: SHIFT_AT_MS,
      durationMs: SHIFT_AT_MS + SHIFT_SETTLE_MS + DRIFT_WINDOW_MS + SECOND,
    });
    running.add(sim3);
    state.sim3 = await sim3.done;
    running.delete(sim3);
    await drain();
    const c = state.sim3;
    assert.equal(c.shifted, true);
    assert.equal(c.requestErrors, 0);
    assert.equal(c.outcomeErrors, 0);
    // The monitor's window then holds only traffic after the shift had settled.
    const now = new Date();
    assert.ok(now.getTime() - DRIFT_WINDOW_MS >= state.shiftMs + SHIFT_SETTLE_MS, "the drift window starts after the shift settled");
    state.afterShift = await monitor.runCycle(now);
    await (await rt.nats()).flush();
    const drift = state.afterShift.drift!;
    t.diagnostic(`after the shift: ${describeDrift(drift.features)}`);
    assert.deepEqual(state.afterShift.errors, []);
    assert.equal(drift.version, "1");
    const shifted = drift.features.find((f) => f.feature === "avg_session_duration")!;
    assert.equal(shifted.verdict, "alert", JSON.stringify({ ...shifted, distribution: undefined }));

    // What moved, as an analyst would check it in SQL: mobile sessions got much longer, desktop
    // ones did not (the shift is mobile-only; the rest of the traffic stays comparable).
    const medians = await queryRows<{ period: string; device: string; n: string; median: number }>(
      ch,
      `SELECT if(served >= {shift:DateTime64(3)}, 'after', 'before') AS period, device, count() AS n, median(session) AS median
       FROM (SELECT request_id, any(time) AS served, any(device_type) AS device, any(features['avg_session_duration']) AS session
             FROM predictions FINAL WHERE model_version = '1' AND time >= {from:DateTime64(3)} GROUP BY request_id)
       WHERE served < {pre_end:DateTime64(3)} OR served >= {shift:DateTime64(3)}
       GROUP BY period, device ORDER BY period, device`,
      {
        from: chTime(state.beforeShift!.drift!.window.from),
        pre_end: chTime(state.beforeShift!.drift!.window.to),
        shift: chTime(new Date(state.shiftMs + SHIFT_SETTLE_MS)),
      },
    );
    t.diagnostic(`median avg_session_duration per request: ${JSON.stringify(medians)}`);
    const median = (period: string, device: string) => medians.find((m) => m.period === period && m.device === device)!.median;
    assert.ok(median("after", "mobile") > 2 * median("before", "mobile"), "mobile sessions lengthened");
    const desktop = median("after", "desktop") / median("before", "desktop");
    assert.ok(desktop > 0.5 && desktop < 2, `desktop sessions changed by a factor ${desktop.toFixed(2)}`);

    // Stored for the dashboard and the SQL report, and announced on NATS (already announced if
    // the cycle before the shift flagged it too: alerts do not repeat every cycle).
    const rows = await queryRows<{ verdict: string }>(ch, "SELECT verdict FROM drift_report WHERE feature = 'avg_session_duration' AND statistic = 'ks'");
    assert.deepEqual(
      rows.map((r) => r.verdict),
      ["alert"],
    );
    const key = `drift:${MODEL}:1:avg_session_duration`;
    const { sent, suppressed } = state.afterShift.alerts;
    assert.ok(sent.some((n) => n.key === key) || suppressed.includes(key), `${key} not among the alerts`);
    assert.ok(
      driftAlerts.some((a) => a.key === key && a.status === "firing"),
      JSON.stringify(driftAlerts),
    );
  });

  step("closed windows reach ClickHouse user_features, equal to the events sent", async () => {
    // Windows of the first simulation that ended before the second began hold its events only.
    const expected = userWindows(state.sim1Events).filter((w) => w.windowStart + WINDOW_MS <= state.sim2StartMs!);
    assert.ok(expected.length > 200, `${expected.length} windows`);
    const rows = await queryRows<{ user_id: string; start: string; end: string; features: Record<string, number>; event_count: string }>(
      ch,
      `SELECT user_id, toUnixTimestamp64Milli(window_start) AS start, toUnixTimestamp64Milli(window_end) AS end, features, event_count
       FROM user_features FINAL WHERE window_end <= fromUnixTimestamp64Milli({until:Int64})`,
      { until: state.sim2StartMs },
    );
    const byKey = new Map(rows.map((r) => [`${r.user_id}@${r.start}`, r]));
    assert.equal(rows.length, expected.length, "one row per closed window, no more");
    for (const w of expected) {
      const row = byKey.get(`${w.userId}@${w.windowStart}`);
      assert.ok(row, `window ${w.userId}@${new Date(w.windowStart).toISOString()} missing`);
      assert.equal(Number(row.end), w.windowStart + WINDOW_MS);
      assert.equal(Number(row.event_count), w.eventCount);
      for (const [name, value] of Object.entries(w.features)) assertNear(row.features[name]!, value, `${w.userId}@${w.windowStart} ${name}`);
    }
  });

  step("every call is accounted for in ClickHouse, and the model timeline tells the story", async () => {
    const sims = [state.sim1!, state.sim2Counters!, state.sim3!];
    const requests = sims.reduce((n, c) => n + c.requests, 0) + state.probe!.versions.length + state.checkRequests;
    const outcomes = sims.reduce((n, c) => n + c.outcomes, 0);
    const logs = await readPredictionLogs();
    assert.equal(logs.length, requests, "one prediction log per Recommend call");
    const [counts] = await queryRows<{ rows: string; outcomes: string; matched: string; exposures: string; probe_rows: string; probe_requests: string }>(
      ch,
      `SELECT
         (SELECT count() FROM predictions FINAL) AS rows,
         (SELECT count() FROM outcomes FINAL) AS outcomes,
         (SELECT count() FROM outcomes FINAL WHERE (request_id, item_id) IN (SELECT request_id, item_id FROM predictions FINAL WHERE position > 0)) AS matched,
         (SELECT count() FROM exposures FINAL) AS exposures,
         (SELECT count() FROM predictions FINAL WHERE request_id LIKE 'e2e-probe-%') AS probe_rows,
         (SELECT uniqExact(request_id) FROM predictions FINAL WHERE request_id LIKE 'e2e-probe-%') AS probe_requests`,
    );
    assert.equal(Number(counts!.rows), sum(logs.map((l) => l.scored)), "one row per scored candidate");
    assert.equal(Number(counts!.outcomes), outcomes);
    assert.equal(Number(counts!.matched), outcomes, "every outcome belongs to a shown recommendation");
    assert.equal(Number(counts!.exposures), logs.filter((l) => l.experiment === "ranker_v2").length, "one exposure per request routed by the experiment");
    // The probe sends 6 candidates per call: 6 scored rows each.
    assert.equal(Number(counts!.probe_requests), state.probe!.versions.length);
    assert.equal(Number(counts!.probe_rows), 6 * state.probe!.versions.length);

    const timeline = await queryRows<{ kind: string; alias: string; to_version: string }>(
      ch,
      "SELECT kind, alias, to_version FROM model_timeline WHERE model_name = {m:String}",
      { m: MODEL },
    );
    assert.ok(
      timeline.some((e) => e.alias === "production" && e.to_version === "1"),
      JSON.stringify(timeline),
    );
    assert.ok(
      timeline.some((e) => e.alias === "candidate" && e.to_version === "2"),
      JSON.stringify(timeline),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Helpers

/** Every prediction log on LOGS (what the server published), with its number of scored candidates. */
async function readPredictionLogs(): Promise<{ requestId: string; scored: number; experiment: string }[]> {
  const nc = await rt.nats();
  const subject = rt.names.logsSubject("prediction");
  const info = await (await nc.jetstreamManager()).streams.info(rt.names.logsStream, { subjects_filter: subject });
  const total = info.state.subjects?.[subject] ?? 0;
  const out: { requestId: string; scored: number; experiment: string }[] = [];
  if (total === 0) return out;
  // One subject as a string: a list becomes filter_subjects, which nats-server 2.9 ignores.
  const consumer = await nc.jetstream().consumers.get(rt.names.logsStream, { filterSubjects: subject });
  const messages = await consumer.consume();
  const timer = setTimeout(() => void messages.stop(), 30_000);
  for await (const m of messages) {
    const log = fromBinary(PredictionLogSchema, m.data);
    out.push({ requestId: log.requestId, scored: log.items.length, experiment: log.experiment });
    if (out.length >= total) break;
  }
  clearTimeout(timer);
  assert.equal(out.length, total, "every prediction log on LOGS was read");
  return out;
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

/** Waits until the server's logs are on LOGS and the sink and features worker have written everything. */
async function drain(): Promise<void> {
  await server.logs.flush();
  const jsm = await (await rt.nats()).jetstreamManager();
  const consumers: [string, string][] = [
    [rt.names.eventsStream, rt.names.consumer("features")],
    ...LOG_KINDS.map((k): [string, string] => [rt.names.logsStream, rt.names.consumer(`sink-${k}`)]),
  ];
  await waitFor(
    async () => {
      for (const [stream, name] of consumers) {
        const info = await jsm.consumers.info(stream, name);
        if (info.num_pending > 0 || info.num_ack_pending > 0) return false;
      }
      return true;
    },
    60_000,
    "the features worker and the sink to catch up",
  );
}

interface ProbeResult {
  versions: string[];
  errors: string[];
}

/** Calls Recommend back to back (ids e2e-probe-N) until stopped. */
function startProbe(
  c: Client<typeof RecommendationService.method>,
  userId: string,
  candidates: string[],
): { versions: string[]; stop(): Promise<ProbeResult> } {
  const result: ProbeResult = { versions: [], errors: [] };
  let stopped = false;
  const loop = (async () => {
    for (let n = 0; !stopped; n++) {
      try {
        const res = await c.recommend({ userId, candidates, limit: 3, requestId: `e2e-probe-${n}` }, { deadlineMs: 2000 });
        result.versions.push(res.modelVersion);
      } catch (err) {
        result.errors.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    versions: result.versions,
    async stop() {
      stopped = true;
      await loop;
      return result;
    },
  };
}

/** A user the simulator knows, so the probe's features are realistic. */
function pickUser(events: readonly SimEvent[]): string {
  return events[0]!.user_id;
}

/** The distinct values of a sequence in order of their runs: [a, a, b, b, a] → [a, b, a]. */
function runs(values: readonly string[]): string[] {
  return values.filter((v, i) => i === 0 || v !== values[i - 1]);
}

interface UserWindow {
  userId: string;
  windowStart: number;
  eventCount: number;
  featureTime: number;
  features: Record<string, number>;
}

/** The seed's user features per user and window, from the events as sent (written out independently of features/). */
function userWindows(events: readonly SimEvent[]): UserWindow[] {
  const groups = new Map<string, SimEvent[]>();
  for (const e of events) {
    const start = Math.floor(Date.parse(e.event_time) / WINDOW_MS) * WINDOW_MS;
    const key = `${e.user_id}@${start}`;
    let list = groups.get(key);
    if (!list) groups.set(key, (list = []));
    list.push(e);
  }
  return [...groups.entries()].map(([key, list]) => {
    const clicks = list.filter((e) => e.event_type === "click").length;
    const unique = new Set(list.map((e) => e.page_id)).size;
    const purchase = list.filter((e) => e.event_type === "purchase").reduce((s, e) => s + e.amount, 0);
    return {
      userId: key.slice(0, key.indexOf("@")),
      windowStart: Number(key.slice(key.indexOf("@") + 1)),
      eventCount: list.length,
      featureTime: Math.max(...list.map((e) => Date.parse(e.event_time))),
      features: {
        clicks_last_5min: clicks,
        avg_session_duration: list.reduce((s, e) => s + e.session_duration, 0) / list.length,
        unique_pages_viewed: unique,
        purchase_amount: purchase,
        engagement_score: clicks * 0.3 + unique * 0.4 + (purchase > 0 ? 30 : 0),
      },
    };
  });
}

function latestUserWindows(events: readonly SimEvent[]): Map<string, UserWindow> {
  const latest = new Map<string, UserWindow>();
  for (const w of userWindows(events)) {
    const cur = latest.get(w.userId);
    if (!cur || w.windowStart > cur.windowStart) latest.set(w.userId, w);
  }
  return latest;
}

/** A time as ClickHouse's DateTime64(3) parameters take it (UTC, no zone suffix). */
function chTime(d: Date): string {
  return d.toISOString().replace("T", " ").replace("Z", "");
}

function assertNear(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)), `${what}: expected ${expected}, got ${actual}`);
}

function describeDrift(features: readonly FeatureDrift[]): string {
  return features
    .map(
      (f) => `${f.feature} ${f.verdict} (${f.test} ${f.testStatistic.toFixed(3)}, p ${f.pAdjusted.toPrecision(2)}, PSI ${f.psi.toFixed(2)}, n ${f.currentN})`,
    )
    .join("; ");
}
