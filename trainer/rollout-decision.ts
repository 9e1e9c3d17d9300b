// The guarded rollout's decision at one look, as a pure function of the stage's per-arm figures:
// roll back on a significant regression, advance when the stage has held long enough, hold
// otherwise. Every test is an always-valid mSPRT confidence sequence (monitor/stats/sequential.ts),
// so the controller may look as often as it likes:
//   - online CTR per user (clicks / shown items) and conversion per user, rollout − baseline:
//     a regression when the whole sequence lies below 0;
//   - guardrails: error rate (requests the arm's version did not answer) and mean latency: a
//     regression when the whole sequence lies above the tolerated margin.
// The false-rollback budget alpha is split evenly (Bonferroni) over the 4 tests and the stages that
// are tested (all but the last, which is the promotion), so an A/A rollout rolls back with
// probability at most alpha over its whole course.
import { sequentialMeanTest, type MeanArm, type SequentialResult } from "../monitor/stats/sequential.js";

/** What the stage's traffic showed for one arm (users are the unit, as the router assigns them). */
export interface RolloutArmStats {
  users: number;
  /** Users with at least one shown item, and the sum and sum of squares of their CTR. */
  ctrUsers: number;
  ctrSum: number;
  ctrSumSq: number;
  /** Users who converted at least once. */
  conversions: number;
  requests: number;
  /** Requests not answered by the arm's target version (it failed to load, or was still loading). */
  errors: number;
  /** Sum and sum of squares of request latency (ms) over the requests whose prediction was logged. */
  latencySum: number;
  latencySumSq: number;
  latencyRequests: number;
}

export interface RolloutPolicy {
  /** Probability of rolling back a candidate that is no worse, over the whole rollout. @default 0.05 */
  alpha: number;
  /** A stage advances after at least this long… @default 1 h */
  minStageMs: number;
  /** …and at least this many users in each arm. @default 200 */
  minUsers: number;
  /** The tests start once each arm has this many users (the normal approximation needs them). @default 50 */
  minTestUsers: number;
  /** Relative change in CTR or conversion the tests are tuned to detect (the mixture's spread). @default 0.1 */
  minimumDetectableChange: number;
  /** Error-rate increase tolerated before it counts as a regression (absolute). @default 0.01 */
  errorRateMargin: number;
  /** Mean latency increase tolerated, relative to the baseline's mean… @default 0.25 */
  latencyMarginRatio: number;
  /** …and at least this many milliseconds. @default 2 */
  latencyMarginMs: number;
}

export const ROLLOUT_POLICY_DEFAULTS: Readonly<RolloutPolicy> = Object.freeze({
  alpha: 0.05,
  minStageMs: 3_600_000,
  minUsers: 200,
  minTestUsers: 50,
  minimumDetectableChange: 0.1,
  errorRateMargin: 0.01,
  latencyMarginRatio: 0.25,
  latencyMarginMs: 2,
});

export const ROLLOUT_TESTS = ["ctr", "conversion", "error_rate", "latency"] as const;
export type RolloutTestName = (typeof ROLLOUT_TESTS)[number];

export interface RolloutTest extends SequentialResult {
  name: RolloutTestName;
  rollout: number;
  baseline: number;
  /** The bound the sequence must pass for a regression (0, or the guardrail's margin). */
  margin: number;
  regression: boolean;
}

export interface StageDecision {
  action: "hold" | "advance" | "rollback";
  reason: string;
  /** The level of each test (alpha split over tests and stages). */
  testAlpha: number;
  tests: RolloutTest[];
}

const meanArm = (n: number, sum: number, sumSq: number): MeanArm => {
  const mean = n > 0 ? sum / n : NaN;
  return { n, mean, variance: n > 1 ? Math.max(0, (sumSq - n * mean * mean) / (n - 1)) : NaN };
};
/**
 * Two 0/1 arms with the pooled variance p̄(1 − p̄) (the variance under "no difference"): with rare
 * events the per-arm estimate of a small arm is often 0 and would make a chance gap look certain.
 */
function binaryArms(nA: number, xA: number, nB: number, xB: number): [MeanArm, MeanArm] {
  const pooled = nA + nB > 0 ? (xA + xB) / (nA + nB) : NaN;
  const variance = pooled * (1 - pooled);
  return [
    { n: nA, mean: nA > 0 ? xA / nA : NaN, variance },
    { n: nB, mean: nB > 0 ? xB / nB : NaN, variance },
  ];
}

/**
 * The decision at one look of stage `stage` (index into `stages`), `elapsedMs` after it started.
 * `rollout` is the candidate's arm, `baseline` the previous production's.
 */
export function decideStage(
  input: { rollout: RolloutArmStats; baseline: RolloutArmStats; stages: readonly number[]; stage: number; elapsedMs: number },
  policy: RolloutPolicy,
): StageDecision {
  const { rollout: r, baseline: b } = input;
  const testedStages = Math.max(1, input.stages.length - 1);
  const testAlpha = policy.alpha / (ROLLOUT_TESTS.length * testedStages);
  const tests: RolloutTest[] = [];
  const add = (name: RolloutTestName, a: MeanArm, c: MeanArm, tau2: number, margin: number, worseIsHigher: boolean) => {
    const s = sequentialMeanTest(a, c, tau2, testAlpha);
    const enough = r.users >= policy.minTestUsers && b.users >= policy.minTestUsers;
    const regression = enough && (worseIsHigher ? s.lower > margin : s.upper < -margin);
    tests.push({ name, ...s, rollout: c.mean, baseline: a.mean, margin, regression });
  };
  const ctrA = meanArm(b.ctrUsers, b.ctrSum, b.ctrSumSq);
  const ctrB = meanArm(r.ctrUsers, r.ctrSum, r.ctrSumSq);
  add("ctr", ctrA, ctrB, spread(ctrA.mean * policy.minimumDetectableChange), 0, false);
  const [convA, convB] = binaryArms(b.users, b.conversions, r.users, r.conversions);
  add("conversion", convA, convB, spread(convA.mean * policy.minimumDetectableChange), 0, false);
  const [errA, errB] = binaryArms(b.requests, b.errors, r.requests, r.errors);
  add("error_rate", errA, errB, spread(policy.errorRateMargin), policy.errorRateMargin, true);
  const latA = meanArm(b.latencyRequests, b.latencySum, b.latencySumSq);
  const latB = meanArm(r.latencyRequests, r.latencySum, r.latencySumSq);
  const latencyMargin = Math.max(policy.latencyMarginMs, policy.latencyMarginRatio * (Number.isFinite(latA.mean) ? latA.mean : 0));
  add("latency", latA, latB, spread(latencyMargin), latencyMargin, true);

  const regressions = tests.filter((t) => t.regression);
  if (regressions.length) {
    return {
      action: "rollback",
      reason: `significant regression at ${input.stages[input.stage]} %: ${regressions.map(describe).join("; ")}`,
      testAlpha,
      tests,
    };
  }
  const waiting: string[] = [];
  if (input.elapsedMs < policy.minStageMs) waiting.push(`${Math.round(input.elapsedMs / 1000)} s of ${Math.round(policy.minStageMs / 1000)} s`);
  if (r.users < policy.minUsers || b.users < policy.minUsers) waiting.push(`users ${r.users} rollout / ${b.users} baseline of ${policy.minUsers} each`);
  if (waiting.length) return { action: "hold", reason: `stage ${input.stages[input.stage]} % holding: ${waiting.join(", ")}`, testAlpha, tests };
  const next = input.stages[input.stage + 1];
  return {
    action: "advance",
    reason: `stage ${input.stages[input.stage]} % held (${r.users} rollout / ${b.users} baseline users, no regression at level ${testAlpha.toPrecision(2)} per test): ${next === undefined ? "done" : `advance to ${next} %`}`,
    testAlpha,
    tests,
  };
}

/** The mixture spread for an effect of size `effect`; no effect scale (0, NaN) leaves the test undefined. */
function spread(effect: number): number {
  return Number.isFinite(effect) && effect > 0 ? effect * effect : NaN;
}

function describe(t: RolloutTest): string {
  const f = (v: number) => (Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));
  return `${t.name} ${f(t.rollout)} vs ${f(t.baseline)} (difference in [${f(t.lower)}, ${f(t.upper)}]${t.margin ? `, margin ${f(t.margin)}` : ""})`;
}

/** The tests as the JSON model_events carry. */
export function testsForEvent(tests: readonly RolloutTest[]): Record<string, Record<string, number | boolean>> {
  return Object.fromEntries(
    tests.map((t) => [
      t.name,
      {
        rollout: t.rollout,
        baseline: t.baseline,
        difference: t.estimate,
        lower: t.lower,
        upper: t.upper,
        p_value: t.pValue,
        margin: t.margin,
        regression: t.regression,
      },
    ]),
  );
}

export type { SequentialResult };
