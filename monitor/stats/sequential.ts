// Always-valid inference for a difference of means: the mixture sequential probability ratio test
// (mSPRT) with a normal mixture (Johari, Pekelis, Walsh 2017), as GrowthBook's and Optimizely's
// sequential engines use it. Invariant: the p-value (the running minimum of 1/Λ) and the confidence
// sequence hold at every look at once, so they may be read each cycle. Formulas and why they hold:
// monitor/README.md ("A/B you can read while it runs"). Normal approximation: a few hundred users per arm.

export interface SequentialResult {
  /** Observed difference θ̂ and its variance V. */
  estimate: number;
  variance: number;
  /** Λ at this look. */
  likelihoodRatio: number;
  /** min(1, 1/Λ) at this look; the always-valid p-value is its running minimum over looks. */
  pValue: number;
  /** Confidence sequence at level 1 − alpha. */
  lower: number;
  upper: number;
  alpha: number;
  tau2: number;
}

/** The mSPRT at one look, from θ̂ and V (see the formula above). */
export function msprt(estimate: number, variance: number, tau2: number, alpha = 0.05): SequentialResult {
  if (!Number.isFinite(estimate) || !(variance > 0) || !(tau2 > 0)) {
    return { estimate, variance, likelihoodRatio: NaN, pValue: NaN, lower: NaN, upper: NaN, alpha, tau2 };
  }
  const v = variance;
  const logLambda = 0.5 * Math.log(v / (v + tau2)) + (tau2 * estimate * estimate) / (2 * v * (v + tau2));
  const likelihoodRatio = Math.exp(logLambda);
  const pValue = Math.min(1, Math.exp(-logLambda));
  const half = Math.sqrt(((v * (v + tau2)) / tau2) * (Math.log((v + tau2) / v) - 2 * Math.log(alpha)));
  return { estimate, variance, likelihoodRatio, pValue, lower: estimate - half, upper: estimate + half, alpha, tau2 };
}

/** Sufficient statistics of one arm of a mean comparison. */
export interface MeanArm {
  n: number;
  mean: number;
  /** Unbiased variance of the individual observations. */
  variance: number;
}

/** mSPRT of mean(b) − mean(a), unpooled variance. */
export function sequentialMeanTest(a: MeanArm, b: MeanArm, tau2: number, alpha = 0.05): SequentialResult {
  if (!(a.n >= 2) || !(b.n >= 2)) return msprt(NaN, NaN, tau2, alpha);
  return msprt(b.mean - a.mean, a.variance / a.n + b.variance / b.n, tau2, alpha);
}

/** mSPRT of rate(b) − rate(a) for conversions xA of nA against xB of nB. */
export function sequentialProportionTest(xA: number, nA: number, xB: number, nB: number, tau2: number, alpha = 0.05): SequentialResult {
  const arm = (x: number, n: number): MeanArm => {
    const p = n > 0 ? x / n : NaN;
    return { n, mean: p, variance: p * (1 - p) };
  };
  return sequentialMeanTest(arm(xA, nA), arm(xB, nB), tau2, alpha);
}

/**
 * The default mixture spread for a relative minimum detectable effect `mde` on a base mean: the
 * test is tuned to detect differences of about mde·base. A base of 0 gives 0 (no test).
 */
export function defaultTau2(baseMean: number, mde: number): number {
  const effect = Math.abs(baseMean * mde);
  return effect > 0 ? effect * effect : NaN;
}

/** The always-valid p-value over looks: the running minimum of each look's min(1, 1/Λ). */
export function alwaysValidPValue(previous: number | undefined, current: number): number {
  if (!Number.isFinite(current)) return previous ?? current;
  return previous !== undefined && Number.isFinite(previous) ? Math.min(previous, current) : current;
}
