// Served data can carry NaN or ±Infinity (a feature computed from an empty window, a division by
// zero upstream). The tests below are defined on finite values only, so every entry point cleans its
// input here and reports how many values it dropped: a monitor that silently ignored them would hide
// a broken feature pipeline.

/** Finite values of a sample, sorted ascending, and how many non-finite values were dropped. */
export interface CleanSample {
  values: Float64Array;
  dropped: number;
}

/** Drops NaN and ±Infinity and sorts what is left. */
export function cleanSorted(raw: ArrayLike<number>): CleanSample {
  const values = new Float64Array(raw.length);
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i]!;
    if (Number.isFinite(v)) values[n++] = v;
  }
  const kept = values.subarray(0, n).sort();
  return { values: kept, dropped: raw.length - n };
}

/** Mean and unbiased variance of a sample (finite values only; NaN when undefined). */
export function meanVariance(raw: ArrayLike<number>): { n: number; mean: number; variance: number; dropped: number } {
  // Welford's update: one pass, no catastrophic cancellation for revenue-sized values.
  let n = 0;
  let mean = 0;
  let m2 = 0;
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i]!;
    if (!Number.isFinite(v)) continue;
    n++;
    const delta = v - mean;
    mean += delta / n;
    m2 += delta * (v - mean);
  }
  return { n, mean: n > 0 ? mean : NaN, variance: n > 1 ? m2 / (n - 1) : NaN, dropped: raw.length - n };
}

/**
 * Quantile of a sorted sample as the inverse of its empirical CDF (Hyndman–Fan type 1): always one of
 * the sample's own values. PSI cuts its bins there, so every bin holds at least one reference value;
 * interpolated quantiles would put edges between the values of a discrete feature and leave bins empty.
 */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  return sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!;
}

/** Index of the first element of a sorted array that is greater than x (upper bound). */
export function upperBound(sorted: ArrayLike<number>, x: number, from = 0): number {
  let lo = from;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
