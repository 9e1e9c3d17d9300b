// Comparisons between experiment variants: two-proportion z-test for conversion, relative lift with a
// confidence interval, Welch's t-test for revenue, the sample-ratio-mismatch check, a sample-size
// estimate for the "too small to conclude" warning, and multiple-testing corrections.
import { chiSquareGoodnessOfFit, type ChiSquareResult } from "./distribution-tests.js";
import { normalQuantile, normalSf, studentTTwoSided } from "./special-functions.js";
import { meanVariance } from "./sample.js";

/** Summary of one arm for a mean comparison. */
export interface ArmSummary {
  n: number;
  mean: number;
  /** Unbiased variance of the individual observations (not of the mean). */
  variance: number;
}

/** Summary of a sample of raw values (non-finite values dropped). */
export function summarize(values: ArrayLike<number>): ArmSummary {
  const { n, mean, variance } = meanVariance(values);
  return { n, mean, variance };
}

// ---------------------------------------------------------------------------------------------------

export interface ZTestResult {
  /** Conversion rates of control (a) and treatment (b). */
  rateA: number;
  rateB: number;
  /** (rateB − rateA) / pooled standard error. */
  z: number;
  /** Two-sided p-value. */
  pValue: number;
}

/**
 * Two-proportion z-test with the pooled standard error (the H0 form): successes xA of nA against xB of
 * nB. With no variation at all (pooled rate 0 or 1) there is no evidence of a difference: z 0, p 1.
 */
export function twoProportionZTest(xA: number, nA: number, xB: number, nB: number): ZTestResult {
  if (!(nA > 0) || !(nB > 0)) return { rateA: nA > 0 ? xA / nA : NaN, rateB: nB > 0 ? xB / nB : NaN, z: NaN, pValue: NaN };
  const rateA = xA / nA;
  const rateB = xB / nB;
  const pooled = (xA + xB) / (nA + nB);
  const se = Math.sqrt(pooled * (1 - pooled) * (1 / nA + 1 / nB));
  if (se === 0) return { rateA, rateB, z: 0, pValue: 1 };
  const z = (rateB - rateA) / se;
  return { rateA, rateB, z, pValue: Math.min(1, 2 * normalSf(Math.abs(z))) };
}

// ---------------------------------------------------------------------------------------------------

export interface LiftResult {
  /** meanB / meanA − 1. */
  lift: number;
  lower: number;
  upper: number;
  confidence: number;
}

/**
 * Relative lift of b over a with a confidence interval by the delta method on the log of the ratio:
 * Var(ln m̂) ≈ s² / (n·m²) for each arm, independent arms, so
 * ln(mB/mA) ± z·√(sB²/(nB·mB²) + sA²/(nA·mA²)), then exp(·) − 1. For conversion rates this is the
 * Katz log-ratio interval (s²/(n·p²) = (1−p)/x). The interval is asymmetric and never below −100 %,
 * unlike the linear delta method. It is undefined (NaN bounds) when either mean is not positive.
 */
export function relativeLift(a: ArmSummary, b: ArmSummary, confidence = 0.95): LiftResult {
  const lift = a.mean > 0 ? b.mean / a.mean - 1 : NaN;
  if (!(a.mean > 0) || !(b.mean > 0) || !(a.n > 0) || !(b.n > 0)) return { lift, lower: NaN, upper: NaN, confidence };
  const z = normalQuantile(1 - (1 - confidence) / 2);
  const se = Math.sqrt(a.variance / (a.n * a.mean * a.mean) + b.variance / (b.n * b.mean * b.mean));
  const center = Math.log(b.mean / a.mean);
  return { lift, lower: Math.expm1(center - z * se), upper: Math.expm1(center + z * se), confidence };
}

/** Summary of a conversion rate as an arm: Bernoulli variance p(1−p) (the MLE, as the Katz interval uses). */
export function proportionArm(successes: number, n: number): ArmSummary {
  const p = n > 0 ? successes / n : NaN;
  return { n, mean: p, variance: p * (1 - p) };
}

// ---------------------------------------------------------------------------------------------------

export interface WelchResult {
  /** (meanB − meanA) / √(sA²/nA + sB²/nB). */
  t: number;
  /** Welch–Satterthwaite degrees of freedom. */
  df: number;
  /** Two-sided p-value. */
  pValue: number;
  meanDifference: number;
}

/** Welch's unequal-variance t-test of b against a. Needs at least two observations per arm. */
export function welchTTest(a: ArmSummary, b: ArmSummary): WelchResult {
  const meanDifference = b.mean - a.mean;
  if (!(a.n >= 2) || !(b.n >= 2)) return { t: NaN, df: NaN, pValue: NaN, meanDifference };
  const va = a.variance / a.n;
  const vb = b.variance / b.n;
  const se2 = va + vb;
  if (se2 === 0) {
    // Both arms constant: either identical (no evidence) or different with certainty.
    const df = a.n + b.n - 2;
    return meanDifference === 0 ? { t: 0, df, pValue: 1, meanDifference } : { t: Math.sign(meanDifference) * Infinity, df, pValue: 0, meanDifference };
  }
  const t = meanDifference / Math.sqrt(se2);
  const df = (se2 * se2) / ((va * va) / (a.n - 1) + (vb * vb) / (b.n - 1));
  return { t, df, pValue: studentTTwoSided(t, df), meanDifference };
}

// ---------------------------------------------------------------------------------------------------

export interface SrmResult extends ChiSquareResult {
  /** True when p < alpha: the observed split is not the configured one, and the results are suspect. */
  mismatch: boolean;
  alpha: number;
}

/**
 * Sample-ratio mismatch: chi-square goodness of fit of the users seen per variant against the
 * configured traffic split (percentages or any weights). The conventional threshold is strict
 * (p < 0.001) because with large samples tiny, harmless imbalances are "significant" otherwise.
 */
export function sampleRatioMismatch(observed: readonly number[], traffic: readonly number[], alpha = 0.001): SrmResult {
  const r = chiSquareGoodnessOfFit(observed, traffic);
  return { ...r, alpha, mismatch: r.pValue < alpha };
}

/**
 * Users per arm needed to detect a relative lift `mde` over a base conversion rate with a two-sided
 * two-proportion test at level alpha and the given power (normal approximation, unpooled variance):
 * n = (z_{1−α/2} + z_{power})² · (p₁(1−p₁) + p₂(1−p₂)) / (p₂ − p₁)².
 */
export function requiredSampleSize(baseRate: number, mde: number, alpha = 0.05, power = 0.8): number {
  const p1 = baseRate;
  const p2 = baseRate * (1 + mde);
  if (!(p1 > 0 && p1 < 1) || !(p2 > 0 && p2 < 1) || p1 === p2) return NaN;
  const z = normalQuantile(1 - alpha / 2) + normalQuantile(power);
  return Math.ceil((z * z * (p1 * (1 - p1) + p2 * (1 - p2))) / ((p2 - p1) * (p2 - p1)));
}

// ---------------------------------------------------------------------------------------------------

export type Correction = "holm" | "bonferroni" | "none";

/**
 * Family-wise error correction of a set of p-values, returned as adjusted p-values in the input
 * order (compare them with the unadjusted alpha). NaN entries are not tests: they stay NaN and do not
 * count towards the family size. Holm is uniformly more powerful than Bonferroni with the same guarantee.
 */
export function adjustPValues(pValues: readonly number[], method: Correction = "holm"): number[] {
  const tested = pValues.map((p, i) => ({ p, i })).filter((e) => !Number.isNaN(e.p));
  const m = tested.length;
  const out = pValues.map(() => NaN);
  if (method === "none") return pValues.slice();
  if (method === "bonferroni") {
    for (const { p, i } of tested) out[i] = Math.min(1, p * m);
    return out;
  }
  tested.sort((x, y) => x.p - y.p);
  let running = 0;
  tested.forEach(({ p, i }, rank) => {
    // Step-down: each adjusted value is at least the previous one, so rejections stay nested.
    running = Math.max(running, Math.min(1, (m - rank) * p));
    out[i] = running;
  });
  return out;
}
