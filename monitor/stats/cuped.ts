// CUPED (Deng, Xu, Kohavi, Walker 2013): each user's metric Y adjusted by a pre-exposure covariate X,
// Y' = Y − θ(X − X̄), θ = Cov(X, Y)/Var(X) pooled within arms (monitor/README.md, "CUPED").
// Invariant: everything comes from per-arm sums, so ClickHouse aggregates and no row is read here.
import type { MeanArm } from "./sequential.js";

/** Per-arm sums of Y, X and their squares and product over the arm's users. */
export interface CupedSums {
  n: number;
  sumY: number;
  sumY2: number;
  sumX: number;
  sumX2: number;
  sumXY: number;
}

export interface CupedResult {
  theta: number;
  /** Adjusted arms, in input order: mean of Y', within-arm variance of Y'. */
  arms: MeanArm[];
  /** Unadjusted arms, in input order. */
  raw: MeanArm[];
  /**
   * 1 − Var(adjusted difference) / Var(raw difference), for the difference of the last arm against
   * the first (0 when X says nothing about Y; the adjusted variance is never above the raw one by
   * more than estimation noise).
   */
  varianceReduction: number;
}

/** Sums of an array of (x, y) pairs: for tests and small samples. */
export function cupedSums(x: ArrayLike<number>, y: ArrayLike<number>): CupedSums {
  const s: CupedSums = { n: 0, sumY: 0, sumY2: 0, sumX: 0, sumX2: 0, sumXY: 0 };
  for (let i = 0; i < y.length; i++) {
    const xi = x[i]!;
    const yi = y[i]!;
    s.n++;
    s.sumY += yi;
    s.sumY2 += yi * yi;
    s.sumX += xi;
    s.sumX2 += xi * xi;
    s.sumXY += xi * yi;
  }
  return s;
}

/** CUPED over arms given by their sums; arms with fewer than 2 users make every figure NaN. */
export function cuped(arms: readonly CupedSums[]): CupedResult {
  const moments = arms.map((a) => {
    const my = a.sumY / a.n;
    const mx = a.sumX / a.n;
    const d = a.n - 1;
    return { n: a.n, my, mx, vy: (a.sumY2 - a.n * my * my) / d, vx: (a.sumX2 - a.n * mx * mx) / d, cxy: (a.sumXY - a.n * mx * my) / d };
  });
  const raw = moments.map((m) => ({ n: m.n, mean: m.my, variance: m.vy }));
  if (arms.length < 2 || arms.some((a) => !(a.n >= 2))) {
    return { theta: NaN, arms: raw.map((r) => ({ ...r, mean: NaN, variance: NaN })), raw, varianceReduction: NaN };
  }
  return adjustArms(moments, raw);
}

/** One arm's moments: y the metric (or its linearization), x the covariate, per-user (co)variances. */
export interface ArmMoments {
  n: number;
  my: number;
  mx: number;
  vy: number;
  vx: number;
  cxy: number;
}

/**
 * The CUPED step shared by means and ratios: θ from the pooled within-arm covariance and variance
 * (degrees of freedom as weights), each arm's mean moved by θ times its covariate's distance from
 * the overall covariate mean, and the variance reduction of the last arm against the first.
 */
export function adjustArms(moments: readonly ArmMoments[], raw: MeanArm[]): CupedResult {
  let cov = 0;
  let varX = 0;
  let n = 0;
  let sumX = 0;
  for (const m of moments) {
    cov += (m.n - 1) * m.cxy;
    varX += (m.n - 1) * m.vx;
    n += m.n;
    sumX += m.n * m.mx;
  }
  const theta = varX > 0 ? cov / varX : 0;
  const meanX = sumX / n;
  const adjusted = moments.map((m) => ({
    n: m.n,
    mean: m.my - theta * (m.mx - meanX),
    variance: Math.max(0, m.vy - 2 * theta * m.cxy + theta * theta * m.vx),
  }));
  const last = moments.length - 1;
  const varOf = (a: MeanArm[]) => a[0]!.variance / a[0]!.n + a[last]!.variance / a[last]!.n;
  const rawVar = varOf(raw);
  return { theta, arms: adjusted, raw, varianceReduction: rawVar > 0 ? 1 - varOf(adjusted) / rawVar : 0 };
}
