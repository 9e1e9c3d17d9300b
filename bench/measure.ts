// Timing helpers shared by the benchmarks: run a call at a given concurrency for a while and
// report percentiles and throughput, and print figures next to the baseline they are judged by.

export interface LoadResult {
  calls: number;
  errors: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
}

/** Calls `fn` from `concurrency` loops for `durationMs` (after a short warm-up). */
export async function runLoad(fn: () => Promise<unknown>, concurrency: number, durationMs = 3000, warmupMs = 500): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let recording = false;
  const stopAt = Date.now() + warmupMs + durationMs;
  setTimeout(() => (recording = true), warmupMs);
  let started = 0;
  const loops = Array.from({ length: concurrency }, async () => {
    while (Date.now() < stopAt) {
      const t = performance.now();
      try {
        await fn();
        if (recording) latencies.push(performance.now() - t);
      } catch {
        if (recording) errors++;
      }
    }
  });
  await new Promise((r) => setTimeout(r, warmupMs));
  started = performance.now();
  await Promise.all(loops);
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? NaN;
  return { calls: latencies.length, errors, seconds, perSecond: latencies.length / seconds, p50Ms: pct(50), p99Ms: pct(99) };
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
