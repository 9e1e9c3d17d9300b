// Tests that compare a served distribution with a reference: two-sample Kolmogorov–Smirnov and the
// population stability index for numeric features, Pearson's chi-square for categorical ones (and its
// goodness-of-fit form, which the A/B sample-ratio check uses).
import { chiSquareSf } from "./special-functions.js";
import { cleanSorted, quantileSorted, upperBound } from "./sample.js";
import { withDefaults } from "../../lib/options.js";

// ---------------------------------------------------------------------------------------------------
// Kolmogorov–Smirnov

/** Options of {@link ksTwoSample}. */
export interface KsOptions {
  /**
   * Largest n·m for which the p-value comes from the exact distribution (a lattice-path recursion
   * with n·m steps); above it, the asymptotic Kolmogorov distribution.
   * @default 1_000_000
   */
  exactMaxProduct?: number;
}

export const KS_DEFAULTS: Readonly<Required<KsOptions>> = Object.freeze({ exactMaxProduct: 1_000_000 });

export interface KsResult {
  /** sup |F_a(x) − F_b(x)| over the pooled sample, ties handled by stepping past equal values together. */
  statistic: number;
  /** P(D ≥ statistic) under H0 (same continuous distribution); NaN when a sample is empty. */
  pValue: number;
  method: "exact" | "asymptotic" | "undefined";
  /** Finite values used from each sample. */
  n: number;
  m: number;
  /** Non-finite values dropped (both samples). */
  dropped: number;
}

/**
 * Two-sample KS test, two-sided. The exact p-value assumes no ties (continuous data); with ties the
 * test is conservative, which is the safe side for an alert.
 */
export function ksTwoSample(a: ArrayLike<number>, b: ArrayLike<number>, options: KsOptions = {}): KsResult {
  const opts = withDefaults(KS_DEFAULTS, options);
  const x = cleanSorted(a);
  const y = cleanSorted(b);
  const n = x.values.length;
  const m = y.values.length;
  const dropped = x.dropped + y.dropped;
  if (n === 0 || m === 0) return { statistic: NaN, pValue: NaN, method: "undefined", n, m, dropped };

  // Walk both sorted samples; the statistic is kept as the integer |i·m − j·n| so that the exact
  // recursion can compare lattice points against it without rounding.
  let i = 0;
  let j = 0;
  let maxGap = 0;
  while (i < n && j < m) {
    const v = Math.min(x.values[i]!, y.values[j]!);
    i = upperBound(x.values, v, i);
    j = upperBound(y.values, v, j);
    maxGap = Math.max(maxGap, Math.abs(i * m - j * n));
  }
  const statistic = maxGap / (n * m);
  if (maxGap === 0) return { statistic: 0, pValue: 1, method: n * m <= opts.exactMaxProduct ? "exact" : "asymptotic", n, m, dropped };

  if (n * m <= opts.exactMaxProduct) {
    return { statistic, pValue: ksExactSf(n, m, maxGap), method: "exact", n, m, dropped };
  }
  const en = Math.sqrt((n * m) / (n + m));
  // Stephens' small-sample correction of the effective n, which makes the asymptotic law usable from n ≈ 4.
  const lambda = (en + 0.12 + 0.11 / en) * statistic;
  return { statistic, pValue: kolmogorovSf(lambda), method: "asymptotic", n, m, dropped };
}

/**
 * Exact P(D ≥ gap/(n·m)) for samples of sizes n and m with no ties. Every arrangement of the pooled
 * sample is a monotone lattice path from (0,0) to (n,m), all C(n+m, n) equally likely under H0; D is
 * the largest |i/n − j/m| along the path. u(i,j) is the fraction of paths to (i,j) that stay strictly
 * inside the band; dividing the path count by C(i+j, i) turns Pascal's rule into
 * u(i,j) = u(i−1,j)·i/(i+j) + u(i,j−1)·j/(i+j), which stays in [0,1] and never overflows.
 */
export function ksExactSf(n: number, m: number, gap: number): number {
  const u = new Float64Array(m + 1);
  for (let j = 0; j <= m; j++) u[j] = j * n < gap ? 1 : 0;
  for (let i = 1; i <= n; i++) {
    u[0] = i * m < gap ? u[0]! : 0;
    for (let j = 1; j <= m; j++) {
      u[j] = Math.abs(i * m - j * n) >= gap ? 0 : (u[j]! * i + u[j - 1]! * j) / (i + j);
    }
  }
  return Math.min(1, Math.max(0, 1 - u[m]!));
}

/** Survival function of the Kolmogorov distribution, Q(λ) = P(K > λ). */
export function kolmogorovSf(lambda: number): number {
  if (Number.isNaN(lambda)) return NaN;
  if (lambda <= 0) return 1;
  if (lambda < 1.18) {
    // Small λ: the alternating series converges slowly; use the Jacobi-theta form of the CDF.
    const f = (-Math.PI * Math.PI) / (8 * lambda * lambda);
    let sum = 0;
    for (let k = 1; k < 50; k += 2) {
      const term = Math.exp(k * k * f);
      sum += term;
      if (term < 1e-17 * sum) break;
    }
    return Math.min(1, Math.max(0, 1 - (Math.sqrt(2 * Math.PI) / lambda) * sum));
  }
  let sum = 0;
  for (let k = 1; k < 100; k++) {
    const term = Math.exp(-2 * k * k * lambda * lambda);
    sum += k % 2 === 1 ? term : -term;
    if (term < 1e-17) break;
  }
  return Math.min(1, Math.max(0, 2 * sum));
}

// ---------------------------------------------------------------------------------------------------
// Population stability index

/** Options of {@link psi}. */
export interface PsiOptions {
  /**
   * Number of bins, cut at the reference quantiles (equal-frequency bins); ties in the reference may
   * merge some, so a discrete feature can end up with fewer.
   * @default 10
   */
  bins?: number;
  /**
   * Smallest proportion a bin may take; an empty bin would make ln(p/q) infinite.
   * @default 1e-4
   */
  floor?: number;
}

export const PSI_DEFAULTS: Readonly<Required<PsiOptions>> = Object.freeze({ bins: 10, floor: 1e-4 });

/** One bin of a PSI comparison: (lower, upper], proportions before flooring. */
export interface PsiBin {
  lower: number;
  upper: number;
  reference: number;
  current: number;
}

export interface PsiResult {
  /** Σ (cur − ref)·ln(cur / ref) over bins; NaN when a sample is empty. */
  value: number;
  bins: PsiBin[];
  n: number;
  m: number;
  dropped: number;
}

/** PSI of `current` against `reference`, bins from the reference's quantiles. */
export function psi(reference: ArrayLike<number>, current: ArrayLike<number>, options: PsiOptions = {}): PsiResult {
  const opts = withDefaults(PSI_DEFAULTS, options);
  const ref = cleanSorted(reference);
  const cur = cleanSorted(current);
  const n = ref.values.length;
  const m = cur.values.length;
  const dropped = ref.dropped + cur.dropped;
  if (n === 0 || m === 0) return { value: NaN, bins: [], n, m, dropped };

  const edges: number[] = [];
  for (let k = 1; k < opts.bins; k++) {
    const e = quantileSorted(ref.values, k / opts.bins);
    // The top edge must leave something above it, or the last bin is empty by construction.
    if ((edges.length === 0 || e > edges[edges.length - 1]!) && e < ref.values[n - 1]!) edges.push(e);
  }
  const bins: PsiBin[] = [];
  let prevRef = 0;
  let prevCur = 0;
  for (let k = 0; k <= edges.length; k++) {
    const upper = k < edges.length ? edges[k]! : Infinity;
    const r = k < edges.length ? upperBound(ref.values, upper) : n;
    const c = k < edges.length ? upperBound(cur.values, upper) : m;
    bins.push({ lower: k === 0 ? -Infinity : edges[k - 1]!, upper, reference: (r - prevRef) / n, current: (c - prevCur) / m });
    prevRef = r;
    prevCur = c;
  }
  return { value: psiOfProportions(bins, opts.floor), bins, n, m, dropped };
}

/** PSI between two categorical distributions given as counts per category. */
export function psiCategorical(
  reference: Map<string | number, number>,
  current: Map<string | number, number>,
  options: Pick<PsiOptions, "floor"> = {},
): number {
  const floor = options.floor ?? PSI_DEFAULTS.floor;
  const refTotal = sum(reference.values());
  const curTotal = sum(current.values());
  if (refTotal === 0 || curTotal === 0) return NaN;
  const keys = new Set([...reference.keys(), ...current.keys()]);
  return psiOfProportions(
    [...keys].map((k) => ({ reference: (reference.get(k) ?? 0) / refTotal, current: (current.get(k) ?? 0) / curTotal })),
    floor,
  );
}

function psiOfProportions(bins: { reference: number; current: number }[], floor: number): number {
  let value = 0;
  for (const b of bins) {
    const r = Math.max(b.reference, floor);
    const c = Math.max(b.current, floor);
    value += (c - r) * Math.log(c / r);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------
// Chi-square

export interface ChiSquareResult {
  statistic: number;
  df: number;
  /** NaN when there is nothing to test (no observations, or a single category). */
  pValue: number;
}

/** Counts per distinct finite value; non-finite values are counted apart. */
export function countCategories(values: ArrayLike<number>): { counts: Map<number, number>; dropped: number } {
  const counts = new Map<number, number>();
  let dropped = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) dropped++;
    else counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  return { counts, dropped };
}

/**
 * Pearson's chi-square test of homogeneity on the 2 × k table (reference counts, current counts):
 * do both samples come from the same categorical distribution? df = k − 1 over the categories seen in
 * either sample.
 */
export function chiSquareHomogeneity(reference: Map<string | number, number>, current: Map<string | number, number>): ChiSquareResult {
  const refTotal = sum(reference.values());
  const curTotal = sum(current.values());
  const total = refTotal + curTotal;
  const keys = [...new Set([...reference.keys(), ...current.keys()])].filter((k) => (reference.get(k) ?? 0) + (current.get(k) ?? 0) > 0);
  if (refTotal === 0 || curTotal === 0 || keys.length < 2) return { statistic: NaN, df: Math.max(0, keys.length - 1), pValue: NaN };
  let statistic = 0;
  for (const k of keys) {
    const r = reference.get(k) ?? 0;
    const c = current.get(k) ?? 0;
    const column = r + c;
    const er = (column * refTotal) / total;
    const ec = (column * curTotal) / total;
    statistic += ((r - er) * (r - er)) / er + ((c - ec) * (c - ec)) / ec;
  }
  const df = keys.length - 1;
  return { statistic, df, pValue: chiSquareSf(statistic, df) };
}

/**
 * Pearson's chi-square goodness of fit: observed counts against expected proportions (weights that
 * need not sum to 1, e.g. traffic percentages). df = k − 1.
 */
export function chiSquareGoodnessOfFit(observed: readonly number[], weights: readonly number[]): ChiSquareResult {
  if (observed.length !== weights.length) throw new RangeError(`chiSquareGoodnessOfFit: ${observed.length} observed counts but ${weights.length} weights`);
  const total = observed.reduce((s, v) => s + v, 0);
  const weightTotal = weights.reduce((s, v) => s + v, 0);
  if (total === 0 || observed.length < 2 || !(weightTotal > 0)) return { statistic: NaN, df: Math.max(0, observed.length - 1), pValue: NaN };
  let statistic = 0;
  for (let i = 0; i < observed.length; i++) {
    const expected = (total * weights[i]!) / weightTotal;
    if (expected === 0) {
      // Traffic configured at 0 % yet observed: the split is certainly not the configured one.
      if (observed[i]! > 0) return { statistic: Infinity, df: observed.length - 1, pValue: 0 };
      continue;
    }
    statistic += (observed[i]! - expected) ** 2 / expected;
  }
  const df = observed.length - 1;
  return { statistic, df, pValue: chiSquareSf(statistic, df) };
}

function sum(values: Iterable<number>): number {
  let s = 0;
  for (const v of values) s += v;
  return s;
}
