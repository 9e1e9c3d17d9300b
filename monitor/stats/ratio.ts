// Ratio metrics with users as clusters: CTR = Σclicks / Σshown when the router randomizes users,
// not items. Delta-method variance (Deng, Knoblich, Lu 2018) and CUPED on the linearized values
// L = (c − R·s)/s̄ (monitor/README.md, "CTR, clustered by user").
// Invariant: everything comes from per-arm sums, so ClickHouse aggregates and no row is read here.
import type { MeanArm } from "./sequential.js";
import { adjustArms, type CupedResult } from "./cuped.js";

/** Per-arm sums over users of the numerator c, the denominator s, a covariate x, and their products. */
export interface RatioSums {
  n: number;
  sumC: number;
  sumS: number;
  sumC2: number;
  sumS2: number;
  sumCS: number;
  /** Covariate sums (CUPED); 0 when there is no covariate. */
  sumX: number;
  sumX2: number;
  sumCX: number;
  sumSX: number;
}

/** Sums of per-user (c, s, x) triples: for tests and small samples. */
export function ratioSums(c: ArrayLike<number>, s: ArrayLike<number>, x?: ArrayLike<number>): RatioSums {
  const r: RatioSums = { n: 0, sumC: 0, sumS: 0, sumC2: 0, sumS2: 0, sumCS: 0, sumX: 0, sumX2: 0, sumCX: 0, sumSX: 0 };
  for (let i = 0; i < c.length; i++) {
    const ci = c[i]!;
    const si = s[i]!;
    const xi = x ? x[i]! : 0;
    r.n++;
    r.sumC += ci;
    r.sumS += si;
    r.sumC2 += ci * ci;
    r.sumS2 += si * si;
    r.sumCS += ci * si;
    r.sumX += xi;
    r.sumX2 += xi * xi;
    r.sumCX += ci * xi;
    r.sumSX += si * xi;
  }
  return r;
}

interface RatioMoments {
  n: number;
  ratio: number;
  meanS: number;
  meanX: number;
  /** Sample variance of L and of X, and their covariance. */
  varL: number;
  varX: number;
  covLX: number;
}

function moments(a: RatioSums): RatioMoments {
  const n = a.n;
  const d = n - 1;
  const mc = a.sumC / n;
  const ms = a.sumS / n;
  const mx = a.sumX / n;
  const ratio = a.sumS > 0 ? a.sumC / a.sumS : NaN;
  const vc = (a.sumC2 - n * mc * mc) / d;
  const vs = (a.sumS2 - n * ms * ms) / d;
  const ccs = (a.sumCS - n * mc * ms) / d;
  const ccx = (a.sumCX - n * mc * mx) / d;
  const csx = (a.sumSX - n * ms * mx) / d;
  return {
    n,
    ratio,
    meanS: ms,
    meanX: mx,
    varL: Math.max(0, vc - 2 * ratio * ccs + ratio * ratio * vs) / (ms * ms),
    varX: Math.max(0, (a.sumX2 - n * mx * mx) / d),
    covLX: (ccx - ratio * csx) / ms,
  };
}

/**
 * The arm as a mean of linearized values: `mean` is R, `variance` the per-user variance of L, so
 * that variance / n is the delta-method Var(R) (sequential.ts's tests take it as it is).
 * Fewer than 2 users or no denominator: NaN.
 */
export function ratioArm(a: RatioSums): MeanArm {
  if (!(a.n >= 2) || !(a.sumS > 0)) return { n: a.n, mean: a.sumS > 0 ? a.sumC / a.sumS : NaN, variance: NaN };
  const m = moments(a);
  return { n: a.n, mean: m.ratio, variance: m.varL };
}

/** As CupedResult, the adjusted arms being the ratio R' and the per-user variance of the adjusted linearization L. */
export type RatioCupedResult = CupedResult;

/** CUPED on a ratio metric over arms given by their sums; arms with fewer than 2 users make every figure NaN. */
export function ratioCuped(arms: readonly RatioSums[]): RatioCupedResult {
  const raw = arms.map(ratioArm);
  if (arms.length < 2 || arms.some((a) => !(a.n >= 2) || !(a.sumS > 0))) {
    return { theta: NaN, arms: raw.map((r) => ({ ...r, mean: NaN, variance: NaN })), raw, varianceReduction: NaN };
  }
  return adjustArms(
    arms.map(moments).map((m) => ({ n: m.n, my: m.ratio, mx: m.meanX, vy: m.varL, vx: m.varX, cxy: m.covLX })),
    raw,
  );
}
