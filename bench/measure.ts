// Helpers shared by the benchmarks: percentiles, a median timing of an in-process call, and
// printing figures next to the baseline they are judged by.

/** The value at percentile `p` (0–100) of ascending `sorted` values (nearest rank); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (!sorted.length) return NaN;
  // The epsilon keeps 99.9 % of 1000 at rank 999: (99.9 / 100) * 1000 is 999.0000000000001.
  const rank = Math.ceil((p / 100) * sorted.length - 1e-9);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** Times `fn` sequentially `n` times; returns the median in ms. */
export async function medianMs(fn: () => Promise<unknown> | unknown, n = 500): Promise<number> {
  for (let i = 0; i < Math.min(50, n); i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    await fn();
    t.push(performance.now() - s);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(n / 2)]!;
}

export function fmt(n: number, digits = 3): string {
  return Number.isFinite(n) ? n.toFixed(digits) : "n/a";
}

export function header(title: string): void {
  console.log(`\n=== ${title} ===`);
}

export function row(cells: (string | number)[], widths: number[]): void {
  console.log(cells.map((c, i) => String(c).padStart(widths[i] ?? 10)).join(" "));
}
