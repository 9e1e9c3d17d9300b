import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  chiSquareGoodnessOfFit,
  chiSquareHomogeneity,
  countCategories,
  kolmogorovSf,
  ksExactSf,
  ksTwoSample,
  psi,
  psiCategorical,
} from "../../monitor/stats/distribution-tests.js";
import { normals, seededRandom } from "./fixtures/random.js";

function close(actual: number, expected: number, tolerance: number, what = "") {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} is not within ${tolerance} of ${expected}`);
}

/**
 * Independent check of the exact KS distribution: enumerate every arrangement of n x's and m y's
 * (all C(n+m, n) equally likely under H0) and compute D for each by brute force.
 */
function bruteForceGaps(n: number, m: number): number[] {
  const gaps: number[] = [];
  const walk = (i: number, j: number, max: number) => {
    const here = Math.max(max, Math.abs(i * m - j * n));
    if (i === n && j === m) return void gaps.push(here);
    if (i < n) walk(i + 1, j, here);
    if (j < m) walk(i, j + 1, here);
  };
  walk(0, 0, 0);
  return gaps;
}

describe("two-sample Kolmogorov–Smirnov", () => {
  it("identical samples give D = 0 and p = 1", () => {
    const x = [3, 1, 4, 1, 5, 9, 2, 6];
    assert.deepEqual(ksTwoSample(x, x), { statistic: 0, pValue: 1, method: "exact", n: 8, m: 8, dropped: 0 });
    const big = normals(seededRandom(1), 5000);
    const r = ksTwoSample(big, big);
    assert.equal(r.statistic, 0);
    assert.equal(r.pValue, 1);
  });

  it("separated samples of three: D = 1 and p = 2 / C(6,3) = 0.1", () => {
    // Of the 20 equally likely orderings of three x's and three y's, only xxxyyy and yyyxxx reach D = 1.
    const r = ksTwoSample([1, 2, 3], [4, 5, 6]);
    assert.equal(r.statistic, 1);
    close(r.pValue, 0.1, 1e-15);
  });

  it("the exact p-value equals a brute-force count over all orderings", () => {
    for (const [n, m] of [
      [4, 5],
      [5, 5],
      [3, 7],
      [6, 4],
      [1, 6],
    ] as const) {
      const gaps = bruteForceGaps(n, m);
      for (const gap of new Set(gaps)) {
        if (gap === 0) continue;
        const expected = gaps.filter((g) => g >= gap).length / gaps.length;
        close(ksExactSf(n, m, gap), expected, 1e-14, `n=${n} m=${m} gap=${gap}`);
      }
    }
  });

  it("handles ties by stepping past equal values: [1,2,2,3,5] vs [2,2,4,6,7,8]", () => {
    // F_x − F_y at 1: 1/5 − 0; at 2: 3/5 − 2/6 = 0.2667; at 3: 4/5 − 2/6 = 0.4667; at 4: 4/5 − 3/6 = 0.3;
    // at 5: 1 − 3/6 = 0.5 (the maximum); afterwards F_x = 1 and the gap shrinks.
    const r = ksTwoSample([1, 2, 2, 3, 5], [2, 2, 4, 6, 7, 8]);
    close(r.statistic, 0.5, 1e-15);
    // scipy.stats.ks_2samp(..., method="exact") gives 0.35714285714285715 = 5/14.
    close(r.pValue, 5 / 14, 1e-12);
  });

  it("Kolmogorov survival matches the printed critical values", () => {
    // K(α): 1.2238 at 0.10, 1.3581 at 0.05, 1.6276 at 0.01 (tables of the Kolmogorov distribution).
    close(kolmogorovSf(1.2238), 0.1, 1e-4);
    close(kolmogorovSf(1.3581), 0.05, 1e-4);
    close(kolmogorovSf(1.6276), 0.01, 1e-4);
    // Both series agree where the implementation switches between them.
    close(kolmogorovSf(1.18 - 1e-12), kolmogorovSf(1.18 + 1e-12), 1e-10);
    assert.equal(kolmogorovSf(0), 1);
    assert.ok(kolmogorovSf(0.2) > 0.999999);
  });

  it("the asymptotic p-value (effective n) is close to the exact one for large samples", () => {
    const random = seededRandom(11);
    const a = normals(random, 400);
    const b = normals(random, 300, 0.15);
    const exact = ksTwoSample(a, b);
    const asymptotic = ksTwoSample(a, b, { exactMaxProduct: 0 });
    assert.equal(exact.method, "exact");
    assert.equal(asymptotic.method, "asymptotic");
    assert.equal(exact.statistic, asymptotic.statistic);
    close(asymptotic.pValue / exact.pValue, 1, 0.1, "asymptotic/exact");
  });

  it("detects a shift and not its absence (fixed seeds)", () => {
    const random = seededRandom(5);
    const reference = normals(random, 2000);
    assert.ok(ksTwoSample(reference, normals(random, 3000, 0.3)).pValue < 1e-6);
    assert.ok(ksTwoSample(reference, normals(random, 3000)).pValue > 0.05);
  });

  it("edge cases: empty, single values, all equal, non-finite values", () => {
    const empty = ksTwoSample([], [1, 2]);
    assert.ok(Number.isNaN(empty.statistic) && Number.isNaN(empty.pValue));
    assert.equal(empty.method, "undefined");
    // One value each: D = 1 when they differ, but with n = m = 1 every ordering gives D = 1, so p = 1.
    assert.deepEqual(ksTwoSample([1], [2]), { statistic: 1, pValue: 1, method: "exact", n: 1, m: 1, dropped: 0 });
    assert.equal(ksTwoSample([7], [7]).pValue, 1);
    // All-equal samples: constant 4 against constant 4 is no drift; against constant 5 it is total.
    assert.equal(ksTwoSample([4, 4, 4, 4], [4, 4, 4]).statistic, 0);
    const apart = ksTwoSample(Array(20).fill(4), Array(20).fill(5));
    assert.equal(apart.statistic, 1);
    // 2 / C(40, 20) ≈ 1.45e-11.
    assert.ok(apart.pValue < 1e-10);
    // NaN and ±Infinity are dropped and counted.
    const dirty = ksTwoSample([1, NaN, 2, Infinity, 3], [1, 2, -Infinity, 3]);
    assert.equal(dirty.dropped, 3);
    assert.equal(dirty.n, 3);
    assert.equal(dirty.m, 3);
    assert.equal(dirty.statistic, 0);
  });
});

describe("population stability index", () => {
  it("matches a hand computation: two bins, 50/50 against 30/70", () => {
    // Reference 1..10, 2 bins: the edge is the median as a reference value, 5, so 0.5/0.5.
    // Current: 3 of 10 values ≤ 5, 7 above.
    // PSI = (0.3 − 0.5)·ln(0.3/0.5) + (0.7 − 0.5)·ln(0.7/0.5) = 0.2·0.510826 + 0.2·0.336472 = 0.169460.
    const r = psi([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 6, 7, 8, 9, 10, 11, 12], { bins: 2 });
    close(r.value, 0.16945957207744072, 1e-12);
    assert.deepEqual(
      r.bins.map((b) => [b.lower, b.upper, b.reference, b.current]),
      [
        [-Infinity, 5, 0.5, 0.3],
        [5, Infinity, 0.5, 0.7],
      ],
    );
  });

  it("floors an empty bin at 1e-4 instead of returning infinity", () => {
    // Reference [1,2,3,4], edge 2, proportions 0.5/0.5; current [3,4,5,6] all above: 0 → 1e-4, 1.
    // PSI = (1e-4 − 0.5)·ln(1e-4/0.5) + (1 − 0.5)·ln(1/0.5) = 0.4999·8.517193 + 0.5·0.693147 = 4.604318.
    close(psi([1, 2, 3, 4], [3, 4, 5, 6], { bins: 2 }).value, 4.60431846666895, 1e-10);
  });

  it("identical samples give 0; a shifted sample crosses the alert level", () => {
    const random = seededRandom(3);
    const reference = normals(random, 2000);
    assert.equal(psi(reference, reference).value, 0);
    // A one-standard-deviation shift is far beyond 0.25 (theory: ≈ 1.0 for normal data).
    assert.ok(psi(reference, normals(random, 5000, 1)).value > 0.25);
    assert.ok(psi(reference, normals(random, 5000)).value < 0.1);
  });

  it("merges bins that ties in the reference make identical", () => {
    // Reference eight 0s and two 1s: every decile up to the 80th is 0, the 90th is 1 = the maximum
    // (nothing above it), so the only usable edge is 0: bins (−∞, 0] and (0, ∞).
    const r = psi([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 1, 1]);
    assert.equal(r.bins.length, 2);
    assert.deepEqual(
      r.bins.map((b) => [b.reference, b.current]),
      [
        [0.8, 0.25],
        [0.2, 0.75],
      ],
    );
  });

  it("edge cases: empty, all-equal, non-finite", () => {
    assert.ok(Number.isNaN(psi([], [1]).value));
    assert.ok(Number.isNaN(psi([1], []).value));
    // All-equal reference: one bin, nothing can differ.
    const flat = psi([2, 2, 2], [2, 9, 9]);
    assert.equal(flat.bins.length, 1);
    assert.equal(flat.value, 0);
    const dirty = psi([1, 2, NaN, 3, 4], [Infinity, 1, 2, 3, 4]);
    assert.equal(dirty.dropped, 2);
    assert.equal(dirty.value, 0);
  });

  it("categorical PSI: a category that appears from nowhere", () => {
    // ref a 50 %, b 50 %, c 0 → 1e-4; cur a 25 %, b 25 %, c 50 %.
    // (0.25−0.5)ln(0.5) ·2 = 0.346574; (0.5 − 1e-4)ln(0.5/1e-4) = 0.4999·8.517193 = 4.257745. Sum 4.604318.
    const value = psiCategorical(
      new Map([
        ["a", 5],
        ["b", 5],
      ]),
      new Map([
        ["a", 1],
        ["b", 1],
        ["c", 2],
      ]),
    );
    close(value, 2 * 0.25 * Math.log(2) + 0.4999 * Math.log(5000), 1e-12);
  });
});

describe("chi-square", () => {
  it("goodness of fit: Mendel's peas against 9:3:3:1", () => {
    // 315 round-yellow, 108 round-green, 101 wrinkled-yellow, 32 wrinkled-green (n = 556); the textbook
    // result is χ² = 0.470 with 3 df, p = 0.925.
    const r = chiSquareGoodnessOfFit([315, 108, 101, 32], [9, 3, 3, 1]);
    close(r.statistic, 0.4700239808153477, 1e-12);
    assert.equal(r.df, 3);
    close(r.pValue, 0.9254, 1e-4);
  });

  it("homogeneity on a 2 × 2 table: χ² = 4, p = 2Φ(−2)", () => {
    // Reference a 20, b 30; current a 30, b 20. Every expected count is 25, each cell contributes
    // 5²/25 = 1, so χ² = 4 with 1 df; χ²₁ = Z², p = 2·(1 − Φ(2)) = 0.0455003.
    const r = chiSquareHomogeneity(
      new Map([
        ["a", 20],
        ["b", 30],
      ]),
      new Map([
        ["a", 30],
        ["b", 20],
      ]),
    );
    assert.equal(r.statistic, 4);
    assert.equal(r.df, 1);
    close(r.pValue, 0.04550026389635857, 1e-12);
  });

  it("identical distributions give χ² = 0 and p = 1; a single category cannot be tested", () => {
    const same = chiSquareHomogeneity(
      new Map([
        [0, 10],
        [1, 30],
      ]),
      new Map([
        [0, 100],
        [1, 300],
      ]),
    );
    assert.equal(same.statistic, 0);
    assert.equal(same.pValue, 1);
    assert.ok(Number.isNaN(chiSquareHomogeneity(new Map([[1, 5]]), new Map([[1, 9]])).pValue));
    assert.ok(Number.isNaN(chiSquareHomogeneity(new Map(), new Map([[1, 9]])).pValue));
  });

  it("counts categories and drops non-finite values", () => {
    const { counts, dropped } = countCategories([1, 2, 2, NaN, 3, -Infinity, 2]);
    assert.deepEqual(
      [...counts],
      [
        [1, 1],
        [2, 3],
        [3, 1],
      ],
    );
    assert.equal(dropped, 2);
  });

  it("rejects mismatched lengths with a clear message", () => {
    assert.throws(() => chiSquareGoodnessOfFit([1, 2], [1]), /2 observed counts but 1 weights/);
  });
});
