// Always-valid sequential tests (mSPRT) and CUPED: against hand computations, then against
// simulations with fixed seeds: A/A experiments peeked at every few hundred users keep their false
// alarm rate at or below the nominal 5 % (where the fixed-horizon z-test read at every peek does
// not), a known effect is found and covered by the confidence sequence, and CUPED with a
// predictive pre-exposure covariate shrinks the variance without false alarms.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { alwaysValidPValue, msprt, sequentialProportionTest } from "../../monitor/stats/sequential.js";
import { cuped, cupedSums } from "../../monitor/stats/cuped.js";
import { twoProportionZTest } from "../../monitor/stats/ab-tests.js";
import { normalSf } from "../../monitor/stats/special-functions.js";
import { analyzeExperiment, type VariantCounts } from "../../monitor/experiments.js";
import { MONITOR_DEFAULTS } from "../../monitor/options.js";
import { seededRandom } from "./fixtures/random.js";

const close = (a: number, b: number, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} ≠ ${b}`);

describe("mSPRT by hand", () => {
  it("θ̂ 0.02, V 1e-4, τ² 4e-4, α 0.05: Λ, p and the confidence sequence", () => {
    // Λ = √(1e-4 / 5e-4) · exp(4e-4 · 0.02² / (2 · 1e-4 · 5e-4)) = √0.2 · e^1.6 = 2.215063439
    // half-width = √(1e-4 · 5e-4 / 4e-4 · (ln 5 − 2 ln 0.05)) = 0.030823900
    const r = msprt(0.02, 1e-4, 4e-4, 0.05);
    close(r.likelihoodRatio, 2.215063439141613);
    close(r.pValue, 0.451454338656559);
    close(r.lower, 0.02 - 0.03082389993889093);
    close(r.upper, 0.02 + 0.03082389993889093);
    // At the same look the fixed-horizon z-test would already call it (z = 2, p = 0.0455):
    // the price of being allowed to look at every step.
    close(2 * normalSf(0.02 / Math.sqrt(1e-4)), 0.0455, 1e-4);
  });

  it("proportions: θ̂ and V from the two rates; no data and no spread give NaN, not a verdict", () => {
    const r = sequentialProportionTest(100, 1000, 130, 1000, 1e-4);
    close(r.estimate, 0.03);
    close(r.variance, (0.1 * 0.9) / 1000 + (0.13 * 0.87) / 1000);
    assert.ok(Number.isNaN(sequentialProportionTest(0, 0, 1, 10, 1e-4).pValue));
    assert.ok(Number.isNaN(msprt(0.1, 0, 1e-4).pValue));
    assert.ok(Number.isNaN(msprt(0.1, 1e-4, 0).pValue));
  });

  it("the always-valid p-value is the running minimum over looks", () => {
    assert.equal(alwaysValidPValue(undefined, 0.4), 0.4);
    assert.equal(alwaysValidPValue(0.2, 0.4), 0.2);
    assert.equal(alwaysValidPValue(0.2, 0.1), 0.1);
    assert.equal(alwaysValidPValue(0.2, NaN), 0.2);
  });
});

describe("CUPED by hand", () => {
  it("two small arms: θ, adjusted means and variances, variance reduction", () => {
    // Computed by hand (within-arm moments pooled by degrees of freedom):
    // θ = Σ(n−1)Cov / Σ(n−1)Var(X) = 1/11, X̄ = 42/11; control Y' mean 0.6 − θ(3 − X̄) = 0.674380,
    // treatment 0.833… − θ(4.5 − X̄) = 0.771350; reduction 1 − 0.0755 / 0.0878 = 0.139659.
    const r = cuped([cupedSums([1, 2, 3, 4, 5], [0, 1, 0, 1, 1]), cupedSums([2, 3, 4, 5, 6, 7], [1, 1, 0, 1, 1, 1])]);
    close(r.theta, 1 / 11);
    close(r.arms[0]!.mean, 0.6743801652892562);
    close(r.arms[1]!.mean, 0.7713498622589532);
    close(r.arms[0]!.variance, 0.22975206611570254);
    close(r.arms[1]!.variance, 0.17741046831955926);
    close(r.varianceReduction, 0.1396589601422742);
    close(r.raw[0]!.mean, 0.6);
  });

  it("a covariate that says nothing leaves the estimate as it was; too few users give NaN", () => {
    const r = cuped([cupedSums([1, 1, 1], [0, 1, 1]), cupedSums([1, 1, 1, 1], [1, 0, 0, 1])]);
    assert.equal(r.theta, 0);
    assert.equal(r.varianceReduction, 0);
    close(r.arms[1]!.mean, 0.5);
    assert.ok(Number.isNaN(cuped([cupedSums([1], [1]), cupedSums([1, 2], [0, 1])]).varianceReduction));
  });
});

/** One simulated experiment peeked every `step` users per arm up to `maxUsers`. */
function peekedExperiment(random: () => number, rateA: number, rateB: number, step: number, maxUsers: number, tau2: number) {
  let xA = 0;
  let xB = 0;
  let sequentialRejected = false;
  let fixedRejected = false;
  let covered = true;
  for (let n = step; n <= maxUsers; n += step) {
    for (let i = 0; i < step; i++) {
      if (random() < rateA) xA++;
      if (random() < rateB) xB++;
    }
    const s = sequentialProportionTest(xA, n, xB, n, tau2, 0.05);
    if (s.pValue < 0.05) sequentialRejected = true;
    if (!(s.lower <= rateB - rateA && rateB - rateA <= s.upper)) covered = false;
    if (twoProportionZTest(xA, n, xB, n).pValue < 0.05) fixedRejected = true;
  }
  return { sequentialRejected, fixedRejected, covered };
}

describe("sequential tests over repeated seeds, peeking 25 times", () => {
  const RUNS = 400;
  const TAU2 = (0.1 * 0.1) ** 2; // tuned to a 10 % lift on a 10 % rate

  it("A/A: the mSPRT raises a false alarm in at most 5 % of runs; the fixed z-test read at every peek does far more", () => {
    const random = seededRandom(2024);
    let sequential = 0;
    let fixed = 0;
    let covered = 0;
    for (let run = 0; run < RUNS; run++) {
      const r = peekedExperiment(random, 0.1, 0.1, 200, 5000, TAU2);
      if (r.sequentialRejected) sequential++;
      if (r.fixedRejected) fixed++;
      if (r.covered) covered++;
    }
    // Binomial(400, 0.05): mean 20, sd 4.4. The guarantee is ≤ 5 %; allow 3 sd of noise above it.
    assert.ok(sequential <= 33, `mSPRT false alarms in ${sequential}/${RUNS} peeked A/A runs`);
    // Peeking 25 times at the fixed-horizon test rejects about a quarter of A/A runs.
    assert.ok(fixed >= 2 * 33, `the peeked z-test rejected only ${fixed}/${RUNS} A/A runs`);
    assert.ok(covered >= RUNS - 33, `the confidence sequence covered 0 at every look in ${covered}/${RUNS} runs`);
  });

  it("a known +30 % lift (10 % → 13 %) is found in most runs, and the sequence covers the true difference", () => {
    const random = seededRandom(7);
    let found = 0;
    let covered = 0;
    for (let run = 0; run < RUNS; run++) {
      const r = peekedExperiment(random, 0.1, 0.13, 200, 5000, TAU2);
      if (r.sequentialRejected) found++;
      if (r.covered) covered++;
    }
    assert.ok(found >= 0.9 * RUNS, `the +30 % lift was found in ${found}/${RUNS} runs`);
    assert.ok(covered >= RUNS - 33, `the sequence covered the true difference at every look in ${covered}/${RUNS} runs`);
  });
});

describe("CUPED over repeated seeds", () => {
  /** Users whose conversion depends on their pre-exposure activity X (events), as active users convert more. */
  function arm(random: () => number, users: number, lift: number) {
    const x: number[] = [];
    const y: number[] = [];
    for (let i = 0; i < users; i++) {
      const activity = Math.floor(-Math.log(1 - random()) * 8); // exponential, mean ~7.5 events
      const p = Math.min(0.9, 0.01 + 0.06 * activity) * (1 + lift);
      x.push(activity);
      y.push(random() < p ? 1 : 0);
    }
    return cupedSums(x, y);
  }
  const counts = (variant: string, s: ReturnType<typeof cupedSums>): VariantCounts => ({
    variant,
    users: s.n,
    exposures: s.n,
    conversions: s.sumY,
    revenue: 0,
    avgRevenue: NaN,
    revenueVariance: NaN,
    crossovers: 0,
    cupedSums: s,
  });
  const config = {
    name: "cuped",
    model: "m",
    status: "running" as const,
    variants: [
      { name: "control", traffic: 50, target: "production" },
      { name: "treatment", traffic: 50, target: "candidate" },
    ],
  };
  const window = { from: new Date(0), to: new Date(1) };
  const RUNS = 400;

  it("A/A: the adjusted z-test rejects near 5 %, with a large variance reduction", (t) => {
    const random = seededRandom(99);
    let rejected = 0;
    let reduction = 0;
    for (let run = 0; run < RUNS; run++) {
      const r = analyzeExperiment(
        config,
        [counts("control", arm(random, 2000, 0)), counts("treatment", arm(random, 2000, 0))],
        window,
        MONITOR_DEFAULTS.experiments,
      );
      const t = r.variants[1]!;
      if (t.cuped!.pValue < 0.05) rejected++;
      reduction += t.cuped!.varianceReduction / RUNS;
    }
    assert.ok(rejected >= 8 && rejected <= 34, `CUPED rejected ${rejected}/${RUNS} A/A runs`);
    t.diagnostic(`mean variance reduction ${(100 * reduction).toFixed(1)} %`);
    assert.ok(reduction > 0.25, `mean variance reduction ${reduction}`);
  });

  it("a known +10 % lift: CUPED finds it more often than the raw z-test on the same users", () => {
    const random = seededRandom(5);
    let raw = 0;
    let adjusted = 0;
    for (let run = 0; run < RUNS; run++) {
      const r = analyzeExperiment(
        config,
        [counts("control", arm(random, 2000, 0)), counts("treatment", arm(random, 2000, 0.1))],
        window,
        MONITOR_DEFAULTS.experiments,
      );
      const t = r.variants[1]!;
      if (t.pValue! < 0.05) raw++;
      if (t.cuped!.pValue < 0.05) adjusted++;
      // Unbiased: the adjusted difference is centred on the raw one's expectation, not shifted by X.
    }
    assert.ok(adjusted > raw + 0.1 * RUNS, `CUPED found the lift in ${adjusted}/${RUNS} runs, the raw test in ${raw}`);
  });
});
