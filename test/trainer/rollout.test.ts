// Guarded rollouts on the real loop: the server routes users by the rollout's experiment from the
// registry (NATS KV), logs exposures, predictions and outcomes through JetStream and the sink into
// the embedded ClickHouse, and each look of the controller judges the stage from those rows.
// A better model advances 10 % → 50 % → 100 % and becomes production; a deliberately worse one is
// rolled back at 10 %; a training cycle with --rollout guarded hands its promotion to this path.
// Every step is in model_events with its statistics.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { startSink, type Sink } from "../../sink/index.js";
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { queryRows } from "../../lib/clickhouse.js";
import { assignVariant } from "../../lib/experiments.js";
import type { Experiment, FeatureSpec } from "../../lib/registry.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import { createRandom } from "../../trainer/gbdt.js";
import { rolloutLock } from "../../trainer/cycle-lock.js";
import { checkRollouts, rolloutName, startGuardedRollout } from "../../trainer/rollout.js";
import { runTrainingCycle } from "../../trainer/cycle.js";

const MODEL = "recommender";
const ITEMS = 10;
const USERS = 400;
/** Item quality: the chance a user clicks it when shown. A model that ranks by it shows better items. */
const QUALITY = Array.from({ length: ITEMS }, (_, i) => 0.05 + (0.85 * i) / (ITEMS - 1));
const FEATURES: FeatureSpec[] = [{ name: "item_ctr_5min", source: "item", type: "numeric", default: 0 }];
/** Fast looks: a stage may advance once it has 30 users per arm. */
const POLICY = { minStageMs: 0, minUsers: 30, minTestUsers: 20 };

let rt: TestRuntime;
let server: RunningServer;
let sink: Sink;
let client: Client<typeof RecommendationService.method>;
const versions: Record<"flat" | "good" | "bad", string> = { flat: "", good: "", bad: "" };
const random = createRandom(21);

async function count(sql: string): Promise<number> {
  return Number((await queryRows<{ n: string }>(await rt.clickhouse(), sql))[0]!.n);
}

/** One request per user: 3 of the 10 items shown; clicks by item quality, a third of clicks convert. */
async function traffic(tag: string): Promise<void> {
  const candidates = Array.from({ length: ITEMS }, (_, i) => `item${i}`);
  const user = async (u: number) => {
    const res = await client.recommend({ userId: `u${u}`, candidates, limit: 3, requestId: `${tag}-${u}` });
    for (const rec of res.recommendations) {
      if (random() < QUALITY[Number(rec.itemId.slice(4))]!) {
        await client.recordOutcome({ requestId: res.requestId, itemId: rec.itemId, clicked: true, converted: random() < 0.33, revenue: 0 });
      }
    }
  };
  // 20 users at a time, as concurrent clients would be.
  for (let u = 0; u < USERS; u += 20) await Promise.all(Array.from({ length: Math.min(20, USERS - u) }, (_, k) => user(u + k)));
  await server.logs.flush();
  await waitFor(
    async () => (await count(`SELECT count() AS n FROM exposures FINAL WHERE request_id LIKE '${tag}-%'`)) === USERS,
    60_000,
    `the ${tag} exposures in ClickHouse`,
  );
  await waitFor(
    async () => (await count(`SELECT uniqExact(request_id) AS n FROM predictions FINAL WHERE request_id LIKE '${tag}-%'`)) === USERS,
    60_000,
    `the ${tag} predictions`,
  );
  // Outcomes trail: wait until no more arrive.
  let last = -1;
  await waitFor(
    async () => {
      const n = await count(`SELECT count() AS n FROM outcomes FINAL WHERE request_id LIKE '${tag}-%'`);
      const settled = n === last;
      last = n;
      if (!settled) await new Promise((r) => setTimeout(r, 300));
      return settled;
    },
    30_000,
    `the ${tag} outcomes`,
  );
}

/** Waits until the server routes by `experiment` at the given share and answers its rollout users with `version`. */
async function routed(experiment: Experiment, share: number, version: string): Promise<void> {
  await waitFor(
    () => server.models.experimentFor(MODEL)?.name === experiment.name && server.models.experimentFor(MODEL)?.variants[0]?.traffic === share,
    20_000,
    `the server to route ${experiment.name} at ${share} %`,
  );
  const user = Array.from({ length: USERS }, (_, u) => `u${u}`).find((u) => assignVariant(server.models.experimentFor(MODEL)!, u).name === "rollout")!;
  await waitFor(
    async () =>
      (await client.recommend({ userId: user, candidates: ["item0"], requestId: `probe-${experiment.name}-${share}-${Date.now()}` })).modelVersion === version,
    20_000,
    `v${version} to answer rollout users`,
  );
}

async function events(kindPrefix: string): Promise<{ kind: string; from_version: string; to_version: string; reason: string; details: string }[]> {
  return queryRows(
    await rt.clickhouse(),
    `SELECT kind, from_version, to_version, reason, details FROM model_events FINAL WHERE kind LIKE '${kindPrefix}%' ORDER BY time`,
  );
}

before(async () => {
  rt = testRuntime();
  server = await startServer(rt, { http: false });
  sink = await startSink(rt, { kinds: ["prediction", "exposure", "outcome", "model_event"], maxBatchWaitMs: 300 });
  client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);
  const redis = rt.redis();
  for (let i = 0; i < ITEMS; i++) await redis.hset(rt.names.itemFeaturesKey(`item${i}`), { item_ctr_5min: QUALITY[i]! });
  const registry = await rt.registry();
  const publish = async (weight: number) =>
    (
      await registry.publish({
        name: MODEL,
        artifact: logisticModel([weight], 0),
        features: FEATURES,
        inputName: "features",
        outputName: "score",
        actor: "test",
      })
    ).version;
  // flat: every item scores alike (the caller's order, the worst items first); good ranks by quality; bad against it.
  versions.flat = await publish(0);
  versions.good = await publish(8);
  versions.bad = await publish(-8);
  await registry.setAlias(MODEL, "production", versions.flat, { actor: "test" });
  await waitFor(() => server.models.servedVersion(MODEL) === versions.flat, 20_000, "the server to serve the flat model");
});

after(async () => {
  client?.close();
  await sink?.stop();
  await server?.stop();
  await rt?.cleanup();
});

describe("guarded rollout", () => {
  it("a better model advances 10 % → 50 % → 100 % and becomes production; each step in model_events", async () => {
    const registry = await rt.registry();
    const e = await startGuardedRollout(registry, { model: MODEL, candidate: versions.good, policy: POLICY, actor: "test" });
    assert.equal(e.name, rolloutName(MODEL, versions.good));
    assert.deepEqual(
      e.variants.map((v) => [v.name, v.traffic, v.target]),
      [
        ["rollout", 10, versions.good],
        ["control", 90, versions.flat],
      ],
    );
    await routed(e, 10, versions.good);
    await traffic("good10");

    // Two monitors look at once: one decides and advances; the other waits its turn or sees the
    // new stage, and never advances it again (one rollout_advance event below).
    const deps = { ch: await rt.clickhouse(), registry, lock: rolloutLock(rt) };
    const looks = (await Promise.all([checkRollouts(deps), checkRollouts(deps)])).flat();
    const advanced = looks.filter((s) => s.action === "advance");
    assert.equal(advanced.length, 1, JSON.stringify(looks.map((s) => [s.percent, s.action, s.reason])));
    const first = advanced[0];
    assert.ok(
      looks.every((s) => s === first || (s.percent === 50 && s.action === "hold")),
      "the other look, if any, is at 50 % and holds",
    );
    assert.ok(first!.stats.rollout.users >= 30 && first!.stats.baseline.users >= 300, JSON.stringify(first!.stats));
    const ctr = first!.decision.tests.find((t) => t.name === "ctr")!;
    assert.ok(ctr.rollout > ctr.baseline, `rollout CTR ${ctr.rollout} vs ${ctr.baseline}`);
    const at50 = (await registry.getExperiment(e.name))!;
    assert.deepEqual(
      at50.variants.map((v) => v.traffic),
      [50, 50],
    );
    // The same hash: everyone who had the candidate at 10 % still has it at 50 %.
    for (let u = 0; u < USERS; u++) if (assignVariant(e, `u${u}`).name === "rollout") assert.equal(assignVariant(at50, `u${u}`).name, "rollout", `u${u}`);

    await routed(at50, 50, versions.good);
    await traffic("good50");
    const [second] = await checkRollouts({ ch: await rt.clickhouse(), registry });
    assert.equal(second!.action, "promoted", second!.reason);
    assert.equal((await registry.getAlias(MODEL, "production"))?.version, versions.good);
    assert.equal((await registry.getExperiment(e.name))?.status, "stopped");
    await waitFor(
      () => server.models.servedVersion(MODEL) === versions.good && !server.models.experimentFor(MODEL),
      20_000,
      "the server to serve the promoted model to everyone",
    );

    const steps = await waitFor(
      async () => {
        const rows = await events("rollout_");
        return rows.length === 3 ? rows : undefined;
      },
      20_000,
      "three rollout events",
    );
    assert.deepEqual(
      steps.map((s) => s.kind),
      ["rollout_start", "rollout_advance", "rollout_complete"],
    );
    const advance = JSON.parse(steps[1]!.details);
    assert.equal(advance.percent, 10);
    assert.equal(advance.next_percent, 50);
    assert.deepEqual(Object.keys(advance.tests).sort(), ["conversion", "ctr", "error_rate", "latency"]);
    assert.equal(advance.stats.rollout.users, first!.stats.rollout.users);
    assert.equal(JSON.parse(steps[2]!.details).percent, 50);
  });

  it("a deliberately worse model is rolled back at 10 %: production and routing unchanged", async () => {
    const registry = await rt.registry();
    const e = await startGuardedRollout(registry, { model: MODEL, candidate: versions.bad, policy: POLICY, actor: "test" });
    assert.deepEqual(
      e.variants.map((v) => v.target),
      [versions.bad, versions.good],
    );
    await routed(e, 10, versions.bad);
    await traffic("bad10");
    const [step] = await checkRollouts({ ch: await rt.clickhouse(), registry });
    assert.equal(step!.action, "rollback", step!.reason);
    assert.match(step!.reason, /significant regression at 10 %: .*ctr/);
    assert.equal((await registry.getAlias(MODEL, "production"))?.version, versions.good);
    assert.equal((await registry.getExperiment(e.name))?.status, "stopped");
    await waitFor(() => !server.models.experimentFor(MODEL), 20_000, "the server to stop routing to the rollout");
    const rollback = await waitFor(async () => (await events("rollout_rollback"))[0], 20_000, "the rollback event");
    assert.equal(rollback.from_version, versions.bad);
    assert.equal(rollback.to_version, versions.good);
    const details = JSON.parse(rollback.details);
    assert.equal(details.tests.ctr.regression, true);
    assert.ok(details.tests.ctr.upper < 0, JSON.stringify(details.tests.ctr));
  });

  it("a training cycle with rollout: guarded starts a rollout instead of moving production", async () => {
    // The traffic so far is labelled: a cycle learns a model from it; the promotion policy is set to
    // pass anything (min gain −100 %), so the only question is where the promotion goes.
    const report = await runTrainingCycle(rt, {
      data: { kind: "logs", labelDelayMs: 0, endMs: Date.now() + 1000 },
      minRows: 100,
      minRelativeGain: -1,
      minValidationClassRows: 5,
      rollout: "guarded",
      rolloutPolicy: POLICY,
      gbdt: { numTrees: 10 },
    });
    assert.equal(report.decision.action, "rollout", report.decision.reason);
    const registry = await rt.registry();
    assert.equal((await registry.getAlias(MODEL, "production"))?.version, versions.good, "production unchanged");
    assert.equal((await registry.getAlias(MODEL, "candidate"))?.version, report.version!.version);
    const e = (await registry.getExperiment(report.rollout!.experiment))!;
    assert.equal(e.status, "running");
    assert.deepEqual(e.rollout?.stages, [10, 50, 100]);
    assert.equal(e.rollout?.candidate, report.version!.version);
    await registry.stopExperiment(e.name);
  });
});
