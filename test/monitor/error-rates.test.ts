// Repeated simulated experiments: under H0 (A/A) the tests reject at close to their nominal 5 %, and
// with a real difference they reject most of the time. Seeds are fixed, so a failure replays exactly.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { proportionArm, relativeLift, summarize, twoProportionZTest, welchTTest } from "../../monitor/stats/ab-tests.js";
import { ksTwoSample } from "../../monitor/stats/distribution-tests.js";
import { analyzeExperiment, type VariantCounts } from "../../monitor/experiments.js";
import { MONITOR_DEFAULTS } from "../../monitor/options.js";
import { normals, seededRandom } from "./fixtures/random.js";

const RUNS = 400;
// Binomial(400, 0.05): mean 20, sd 4.36; [8, 34] is beyond ±3 sd, so a correct test fails this only
// by a ~0.3 % fluke (and the seeds are fixed), while a test with a true 10 % error rate fails it surely.
const LOWEST = 8;
const HIGHEST = 34;

function conversions(random: () => number, users: number, rate: number): number {
  let x = 0;
  for (let i = 0; i < users; i++) if (random() < rate) x++;
  return x;
}

/** Revenue per user: most spend nothing, buyers spend a log-normal amount (a skewed, realistic shape). */
function revenue(random: () => number, users: number, buyRate: number, scale: number): number[] {
  const z = normals(random, users);
  return z.map((v) => (random() < buyRate ? scale * Math.exp(0.8 * v) : 0));
}

describe("error rates over repeated seeds", () => {
  it("A/A conversion: the z-test rejects near 5 % and the lift CI covers 0 near 95 %", () => {
    const random = seededRandom(1234);
    let rejections = 0;
    let misses = 0;
    for (let run = 0; run < RUNS; run++) {
      const xA = conversions(random, 2000, 0.1);
      const xB = conversions(random, 2000, 0.1);
      if (twoProportionZTest(xA, 2000, xB, 2000).pValue < 0.05) rejections++;
      const lift = relativeLift(proportionArm(xA, 2000), proportionArm(xB, 2000));
      if (lift.lower > 0 || lift.upper < 0) misses++;
    }
    assert.ok(rejections >= LOWEST && rejections <= HIGHEST, `z-test rejected ${rejections}/${RUNS} A/A runs`);
    assert.ok(misses >= LOWEST && misses <= HIGHEST, `lift CI excluded 0 in ${misses}/${RUNS} A/A runs`);
  });

  it("A/B conversion 10 % → 12 %: the z-test finds it in most runs", () => {
    // n = 5000 per arm: SE ≈ √(0.11·0.89·2/5000) = 0.00626, z ≈ 0.02/0.00626 = 3.2, power ≈ 0.89.
    const random = seededRandom(99);
    let found = 0;
    for (let run = 0; run < 100; run++) {
      if (twoProportionZTest(conversions(random, 5000, 0.1), 5000, conversions(random, 5000, 0.12), 5000).pValue < 0.05) found++;
    }
    assert.ok(found >= 78, `found the difference in only ${found}/100 runs`);
  });

  it("A/A revenue: Welch's t rejects near 5 % on skewed data", () => {
    const random = seededRandom(77);
    let rejections = 0;
    for (let run = 0; run < RUNS; run++) {
      const a = summarize(revenue(random, 1000, 0.2, 30));
      const b = summarize(revenue(random, 1000, 0.2, 30));
      if (welchTTest(a, b).pValue < 0.05) rejections++;
    }
    assert.ok(rejections >= LOWEST && rejections <= HIGHEST, `Welch rejected ${rejections}/${RUNS} A/A runs`);
  });

  it("KS on unshifted continuous data rejects at most near 5 %, on shifted data nearly always", () => {
    const random = seededRandom(4242);
    let falseAlarms = 0;
    let detections = 0;
    for (let run = 0; run < RUNS; run++) {
      const reference = normals(random, 200);
      if (ksTwoSample(reference, normals(random, 300)).pValue < 0.05) falseAlarms++;
      if (ksTwoSample(reference, normals(random, 300, 0.5)).pValue < 0.05) detections++;
    }
    assert.ok(falseAlarms >= LOWEST && falseAlarms <= HIGHEST, `KS rejected ${falseAlarms}/${RUNS} unshifted runs`);
    assert.ok(detections >= 0.95 * RUNS, `KS found a 0.5 sd shift in only ${detections}/${RUNS} runs`);
  });

  it("the monitor's experiment analysis: A/A/A with two treatments stays near 5 % family-wise (Holm)", () => {
    const random = seededRandom(31337);
    const config = {
      name: "aaa",
      model: "m",
      status: "running" as const,
      variants: ["control", "b", "c"].map((name) => ({ name, traffic: 100 / 3, target: "production" })),
    };
    const window = { from: new Date(0), to: new Date(1) };
    // More runs than above: family-wise rates of two correlated tests need a finer estimate.
    const runs = 1000;
    let anySignificant = 0;
    let srm = 0;
    for (let run = 0; run < runs; run++) {
      const counts: VariantCounts[] = config.variants.map((v) => {
        const users = 1500;
        const revenue = revenueOf(random, users);
        return {
          variant: v.name,
          users,
          exposures: users,
          conversions: revenue.filter((r) => r > 0).length,
          revenue: 0,
          avgRevenue: mean(revenue),
          revenueVariance: variance(revenue),
          crossovers: 0,
        };
      });
      const result = analyzeExperiment(config, counts, window, MONITOR_DEFAULTS.experiments);
      if (result.variants.some((v) => v.significant)) anySignificant++;
      if (result.srm.mismatch) srm++;
    }
    // Two comparisons at 5 % would reject about 9 % of runs uncorrected; Holm keeps it at most 5 %.
    // Binomial(1000, 0.05): mean 50, sd 6.9; [29, 71] is ±3 sd.
    assert.ok(anySignificant >= 29 && anySignificant <= 71, `a treatment was significant in ${anySignificant}/${runs} A/A/A runs`);
    // Equal users per variant: the split matches exactly.
    assert.equal(srm, 0);
  });
});

function revenueOf(random: () => number, users: number): number[] {
  return revenue(random, users, 0.1, 40);
}

function mean(v: number[]): number {
  return v.reduce((s, x) => s + x, 0) / v.length;
}

function variance(v: number[]): number {
  const m = mean(v);
  return v.reduce((s, x) => s + (x - m) ** 2, 0) / (v.length - 1);
}
