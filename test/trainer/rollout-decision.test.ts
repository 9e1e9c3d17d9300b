// The guarded rollout's decision as a pure function: hand-made stage figures for each branch, then
// whole rollouts simulated over repeated seeds, looked at 30 times per stage: an A/A rollout
// (candidate no different) rolls back in at most the nominal 5 % of runs, a worse candidate is
// rolled back, a better one goes all the way.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { decideStage, ROLLOUT_POLICY_DEFAULTS, type RolloutArmStats, type RolloutPolicy } from "../../trainer/rollout-decision.js";
import { seededRandom, normalSampler } from "../monitor/fixtures/random.js";

const STAGES = [10, 50, 100];
const POLICY: RolloutPolicy = { ...ROLLOUT_POLICY_DEFAULTS, minStageMs: 30, minUsers: 200 };

function emptyArm(): RolloutArmStats {
  return { users: 0, ctrUsers: 0, ctrSum: 0, ctrSumSq: 0, conversions: 0, requests: 0, errors: 0, latencySum: 0, latencySumSq: 0, latencyRequests: 0 };
}

interface ArmTruth {
  ctr: number;
  conversion: number;
  errorRate: number;
  latencyMs: number;
}

/** Adds `users` users to an arm: 3 shown items each, clicks Binomial(3, ctr), one request each. */
function addUsers(arm: RolloutArmStats, users: number, truth: ArmTruth, random: () => number, normal: () => number): void {
  for (let u = 0; u < users; u++) {
    let clicks = 0;
    for (let k = 0; k < 3; k++) if (random() < truth.ctr) clicks++;
    const ctr = clicks / 3;
    arm.users++;
    arm.ctrUsers++;
    arm.ctrSum += ctr;
    arm.ctrSumSq += ctr * ctr;
    if (random() < truth.conversion) arm.conversions++;
    arm.requests++;
    if (random() < truth.errorRate) arm.errors++;
    const latency = Math.max(0.1, truth.latencyMs + 2 * normal());
    arm.latencySum += latency;
    arm.latencySumSq += latency * latency;
    arm.latencyRequests++;
  }
}

/** A whole rollout: 200 users arrive per look, split by the stage's share; returns how it ended. */
function simulate(seed: number, baseline: ArmTruth, candidate: ArmTruth): { outcome: "rollback" | "promoted" | "unfinished"; stage: number } {
  const random = seededRandom(seed);
  const normal = normalSampler(random);
  for (let stage = 0; stage < STAGES.length - 1; stage++) {
    const rollout = emptyArm();
    const control = emptyArm();
    const share = STAGES[stage]! / 100;
    for (let look = 1; look <= 200; look++) {
      const n = 200;
      const toRollout = Math.round(n * share);
      addUsers(rollout, toRollout, candidate, random, normal);
      addUsers(control, n - toRollout, baseline, random, normal);
      const d = decideStage({ rollout, baseline: control, stages: STAGES, stage, elapsedMs: look }, POLICY);
      if (d.action === "rollback") return { outcome: "rollback", stage };
      if (d.action === "advance") break;
      if (look === 200) return { outcome: "unfinished", stage };
    }
  }
  return { outcome: "promoted", stage: STAGES.length - 1 };
}

const BASE: ArmTruth = { ctr: 0.2, conversion: 0.05, errorRate: 0.001, latencyMs: 8 };

describe("decideStage on hand-made figures", () => {
  const arm = (truth: Partial<RolloutArmStats>): RolloutArmStats => ({ ...emptyArm(), ...truth });
  // 1000 users per arm; CTR sums for a per-user CTR of 0.3 (sd 0.25) and 0.15.
  const good = arm({
    users: 1000,
    ctrUsers: 1000,
    ctrSum: 300,
    ctrSumSq: 1000 * (0.3 * 0.3 + 0.0625),
    conversions: 50,
    requests: 1000,
    latencySum: 8000,
    latencySumSq: 1000 * (64 + 4),
    latencyRequests: 1000,
  });
  it("holds while the stage is young or small, advances once it held, names the next stage", () => {
    const young = decideStage({ rollout: good, baseline: good, stages: STAGES, stage: 0, elapsedMs: 10 }, POLICY);
    assert.equal(young.action, "hold");
    assert.match(young.reason, /^stage 10 % holding/);
    const small = decideStage({ rollout: arm({ ...good, users: 50 }), baseline: good, stages: STAGES, stage: 0, elapsedMs: 100 }, POLICY);
    assert.equal(small.action, "hold");
    assert.match(small.reason, /users 50 rollout \/ 1000 baseline of 200 each/);
    const held = decideStage({ rollout: good, baseline: good, stages: STAGES, stage: 0, elapsedMs: 100 }, POLICY);
    assert.equal(held.action, "advance");
    assert.match(held.reason, /advance to 50 %/);
    // Bonferroni: 4 tests × 2 tested stages.
    assert.equal(held.testAlpha, 0.05 / 8);
  });

  it("rolls back on a CTR regression, an error-rate guardrail and a latency guardrail, each named", () => {
    const worseCtr = arm({ ...good, ctrSum: 150, ctrSumSq: 1000 * (0.15 * 0.15 + 0.0625) });
    const d1 = decideStage({ rollout: worseCtr, baseline: good, stages: STAGES, stage: 0, elapsedMs: 0 }, POLICY);
    assert.equal(d1.action, "rollback");
    assert.match(d1.reason, /^significant regression at 10 %: ctr 0\.150 vs 0\.300/);
    assert.deepEqual(
      d1.tests.filter((t) => t.regression).map((t) => t.name),
      ["ctr"],
    );

    const errors = arm({ ...good, errors: 80 });
    const d2 = decideStage({ rollout: errors, baseline: good, stages: STAGES, stage: 1, elapsedMs: 0 }, POLICY);
    assert.equal(d2.action, "rollback");
    assert.deepEqual(
      d2.tests.filter((t) => t.regression).map((t) => t.name),
      ["error_rate"],
    );
    assert.match(d2.reason, /at 50 %: error_rate 0\.0800 vs 0\.00/);

    const slow = arm({ ...good, latencySum: 20_000, latencySumSq: 1000 * (400 + 4) });
    const d3 = decideStage({ rollout: slow, baseline: good, stages: STAGES, stage: 0, elapsedMs: 0 }, POLICY);
    assert.deepEqual(
      d3.tests.filter((t) => t.regression).map((t) => t.name),
      ["latency"],
    );
    // A latency increase inside the margin (25 % of 8 ms = 2 ms) is tolerated.
    const slightly = arm({ ...good, latencySum: 9000, latencySumSq: 1000 * (81 + 4) });
    assert.equal(decideStage({ rollout: slightly, baseline: good, stages: STAGES, stage: 0, elapsedMs: 100 }, POLICY).action, "advance");
  });
});

describe("whole rollouts over repeated seeds, 30+ looks per stage", () => {
  const RUNS = 300;
  it("A/A: the candidate is the same model; at most 5 % of rollouts roll back", (t) => {
    let rollbacks = 0;
    let promoted = 0;
    for (let seed = 1; seed <= RUNS; seed++) {
      const r = simulate(seed, BASE, BASE);
      if (r.outcome === "rollback") rollbacks++;
      if (r.outcome === "promoted") promoted++;
    }
    t.diagnostic(`A/A: ${rollbacks}/${RUNS} rolled back, ${promoted} promoted`);
    // Binomial(300, 0.05): mean 15, sd 3.8; the guarantee is ≤ 5 %, so ≤ 26 allows 3 sd of noise.
    assert.ok(rollbacks <= 26, `${rollbacks}/${RUNS} A/A rollouts rolled back`);
    assert.equal(promoted + rollbacks, RUNS, "every A/A rollout ends");
  });

  it("a candidate with 25 % lower CTR is rolled back in nearly every run, mostly at the first stage", () => {
    let rollbacks = 0;
    let atFirst = 0;
    for (let seed = 1; seed <= RUNS; seed++) {
      const r = simulate(1000 + seed, BASE, { ...BASE, ctr: 0.15 });
      if (r.outcome === "rollback") rollbacks++;
      if (r.outcome === "rollback" && r.stage === 0) atFirst++;
    }
    assert.ok(rollbacks >= 0.97 * RUNS, `rolled back ${rollbacks}/${RUNS}`);
    assert.ok(atFirst >= 0.8 * RUNS, `at 10 %: ${atFirst}/${RUNS}`);
  });

  it("a better candidate is promoted in nearly every run", () => {
    let promoted = 0;
    for (let seed = 1; seed <= RUNS; seed++) if (simulate(2000 + seed, BASE, { ...BASE, ctr: 0.25 }).outcome === "promoted") promoted++;
    assert.ok(promoted >= 0.97 * RUNS, `promoted ${promoted}/${RUNS}`);
  });
});
