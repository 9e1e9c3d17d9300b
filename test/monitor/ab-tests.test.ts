import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  adjustPValues,
  proportionArm,
  relativeLift,
  requiredSampleSize,
  sampleRatioMismatch,
  summarize,
  twoProportionZTest,
  welchTTest,
} from "../../monitor/stats/ab-tests.js";

function close(actual: number, expected: number, tolerance: number, what = "") {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} is not within ${tolerance} of ${expected}`);
}

describe("two-proportion z-test", () => {
  it("matches a hand computation: 200/1000 against 250/1000", () => {
    // Pooled p = 450/2000 = 0.225; SE = √(0.225·0.775·(1/1000 + 1/1000)) = √0.00034875 = 0.0186748;
    // z = 0.05 / 0.0186748 = 2.677398; p = 2·(1 − Φ(2.677398)) = 0.0074196.
    const r = twoProportionZTest(200, 1000, 250, 1000);
    close(r.z, 2.6773977630083294, 1e-12);
    close(r.pValue, 0.007419649261025672, 1e-12);
    assert.equal(r.rateA, 0.2);
    assert.equal(r.rateB, 0.25);
  });

  it("edge cases: equal rates, no conversions at all, empty arm", () => {
    assert.equal(twoProportionZTest(50, 500, 100, 1000).pValue, 1);
    assert.deepEqual(twoProportionZTest(0, 100, 0, 100), { rateA: 0, rateB: 0, z: 0, pValue: 1 });
    assert.ok(Number.isNaN(twoProportionZTest(0, 0, 5, 10).pValue));
  });
});

describe("relative lift (delta method on the log ratio)", () => {
  it("matches the Katz interval worked by hand", () => {
    // Lift = 0.25/0.2 − 1 = 0.25. SE of ln ratio = √((1−0.2)/200 + (1−0.25)/250) = √0.007 = 0.0836660;
    // ln 1.25 = 0.2231436 ± 1.959964·0.0836660 = [0.0591618, 0.3871254]; exp − 1 = [0.0609463, 0.4727419].
    const r = relativeLift(proportionArm(200, 1000), proportionArm(250, 1000));
    close(r.lift, 0.25, 1e-15);
    close(r.lower, 0.06094625083756312, 1e-12);
    close(r.upper, 0.47274190258600346, 1e-12);
  });

  it("is undefined without a positive control mean, and never below −100 %", () => {
    const none = relativeLift(proportionArm(0, 100), proportionArm(5, 100));
    assert.ok(Number.isNaN(none.lift) && Number.isNaN(none.lower));
    const r = relativeLift(proportionArm(30, 100), proportionArm(1, 100));
    assert.ok(r.lower > -1 && r.upper < 0);
  });
});

describe("Welch's t-test", () => {
  it("reproduces the textbook example (unequal variances)", () => {
    // The first worked example in the Welch's t-test literature (also on Wikipedia): t = −2.46,
    // Welch–Satterthwaite df = 24.99, two-sided p = 0.021.
    const a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4];
    const a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4];
    const r = welchTTest(summarize(a2), summarize(a1));
    close(r.t, -2.46, 0.005);
    close(r.df, 24.99, 0.005);
    close(r.pValue, 0.021, 0.0005);
  });

  it("matches a hand computation on summaries", () => {
    // a: n 10, mean 5, s² 4; b: n 20, mean 6.5, s² 9. SE² = 0.4 + 0.45 = 0.85, t = 1.5/√0.85 = 1.626978;
    // df = 0.85² / (0.4²/9 + 0.45²/19) = 0.7225 / (0.0177778 + 0.0106579) = 25.40837.
    const r = welchTTest({ n: 10, mean: 5, variance: 4 }, { n: 20, mean: 6.5, variance: 9 });
    close(r.t, 1.5 / Math.sqrt(0.85), 1e-12);
    close(r.df, 0.7225 / (0.16 / 9 + 0.2025 / 19), 1e-10);
    assert.ok(r.pValue > 0.1 && r.pValue < 0.12, `p ${r.pValue}`);
  });

  it("edge cases: constant arms, too few observations, non-finite revenue", () => {
    assert.deepEqual(welchTTest(summarize([3, 3, 3]), summarize([3, 3])), { t: 0, df: 3, pValue: 1, meanDifference: 0 });
    assert.equal(welchTTest(summarize([3, 3, 3]), summarize([4, 4])).pValue, 0);
    assert.ok(Number.isNaN(welchTTest(summarize([1]), summarize([1, 2, 3])).pValue));
    const dirty = summarize([1, NaN, 3, Infinity]);
    assert.deepEqual(dirty, { n: 2, mean: 2, variance: 2 });
  });
});

describe("sample-ratio mismatch", () => {
  it("a 50/50 split observed as 10000/10300 is not flagged; 10000/10600 is", () => {
    // Expected 10150 each: χ² = 2·150²/10150 = 4.4335, p = 0.0352 — above 0.001.
    const mild = sampleRatioMismatch([10000, 10300], [50, 50]);
    close(mild.statistic, 4.433497536945813, 1e-10);
    close(mild.pValue, 0.035240223824274594, 1e-10);
    assert.equal(mild.mismatch, false);
    // Expected 10300 each: χ² = 2·300²/10300 = 17.4757, p = 2.9e-5 < 0.001.
    const bad = sampleRatioMismatch([10000, 10600], [50, 50]);
    close(bad.pValue, 2.909992111576433e-5, 1e-12);
    assert.equal(bad.mismatch, true);
  });

  it("uses the configured split, not an even one", () => {
    assert.equal(sampleRatioMismatch([900, 100], [90, 10]).statistic, 0);
    assert.equal(sampleRatioMismatch([500, 500], [90, 10]).mismatch, true);
    // Traffic at 0 % yet users seen: certainly a mismatch.
    assert.equal(sampleRatioMismatch([10, 1], [100, 0]).pValue, 0);
  });
});

describe("sample size", () => {
  it("matches a hand computation: 10 % base rate, +10 % relative, α 0.05, power 0.8", () => {
    // (1.959964 + 0.841621)² = 7.848880; p₁(1−p₁) + p₂(1−p₂) = 0.09 + 0.0979 = 0.1879; (p₂−p₁)² = 0.0001;
    // n = 7.848880·0.1879/0.0001 = 14748.05 → 14749 per arm.
    assert.equal(requiredSampleSize(0.1, 0.1), 14749);
    assert.ok(Number.isNaN(requiredSampleSize(0, 0.1)));
  });
});

describe("multiple-testing correction", () => {
  it("Holm and Bonferroni on a hand example", () => {
    // Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (step-down).
    const p = [0.01, 0.04, 0.03, 0.005];
    adjustPValues(p, "holm").forEach((v, i) => close(v, [0.03, 0.06, 0.06, 0.02][i]!, 1e-15));
    adjustPValues(p, "bonferroni").forEach((v, i) => close(v, [0.04, 0.16, 0.12, 0.02][i]!, 1e-15));
    assert.deepEqual(adjustPValues(p, "none"), p);
  });

  it("caps at 1 and leaves NaN out of the family", () => {
    const r = adjustPValues([0.5, NaN, 0.01], "bonferroni");
    assert.equal(r[0], 1);
    assert.ok(Number.isNaN(r[1]!));
    assert.equal(r[2], 0.02);
  });
});
