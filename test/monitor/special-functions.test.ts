import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  betaIncomplete,
  chiSquareSf,
  gammaP,
  gammaQ,
  logGamma,
  normalCdf,
  normalQuantile,
  normalSf,
  studentTCdf,
  studentTTwoSided,
} from "../../monitor/stats/special-functions.js";

function close(actual: number, expected: number, tolerance: number, what = "") {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} is not within ${tolerance} of ${expected}`);
}

describe("special functions", () => {
  it("log-gamma matches factorials and Γ(1/2) = √π", () => {
    // Γ(n) = (n−1)!: Γ(10) = 362880, Γ(1) = Γ(2) = 1.
    close(logGamma(10), Math.log(362880), 1e-12);
    close(logGamma(1), 0, 1e-14);
    close(logGamma(2), 0, 1e-14);
    close(logGamma(0.5), Math.log(Math.sqrt(Math.PI)), 1e-14);
    // Γ(0.1) = 9.513507698668732 (reflection branch).
    close(logGamma(0.1), Math.log(9.513507698668732), 1e-13);
    assert.equal(logGamma(0), Infinity);
    assert.ok(Number.isNaN(logGamma(-1)));
  });

  it("incomplete gamma has the closed form of a = 1 and P + Q = 1", () => {
    // P(1, x) = 1 − e^(−x).
    for (const x of [0.01, 0.5, 1, 2, 5, 30]) close(gammaP(1, x), -Math.expm1(-x), 1e-14, `P(1, ${x})`);
    for (const [a, x] of [
      [0.5, 0.2],
      [3, 2],
      [3, 7],
      [50, 45],
      [50, 60],
    ] as const)
      close(gammaP(a, x) + gammaQ(a, x), 1, 1e-13);
    assert.equal(gammaP(2, 0), 0);
    assert.equal(gammaQ(2, Infinity), 0);
  });

  it("chi-square survival matches its df = 2 closed form and printed critical values", () => {
    // With 2 degrees of freedom the chi-square survival is exactly e^(−x/2).
    for (const x of [0.1, 1, 5.991, 13.8155]) close(chiSquareSf(x, 2), Math.exp(-x / 2), 1e-14, `x=${x}`);
    // Table critical values: χ²₁(0.95) = 3.841459, χ²₁₀(0.99) = 23.209251.
    close(chiSquareSf(3.841459, 1), 0.05, 1e-7);
    close(chiSquareSf(23.209251, 10), 0.01, 1e-7);
    assert.equal(chiSquareSf(0, 3), 1);
    // Far tail keeps relative precision: Q(5, 100) ≈ 1.614e-37 (scipy.stats.chi2.sf(200, 10)).
    close(chiSquareSf(200, 10) / 1.6139305336977317e-37, 1, 1e-10);
  });

  it("normal CDF, survival and quantile agree with the printed z values", () => {
    close(normalCdf(1.959963984540054), 0.975, 1e-15);
    close(normalCdf(0), 0.5, 1e-16);
    close(normalCdf(-1.5), 0.0668072012688581, 1e-15);
    close(normalSf(8) / 6.22096057427174e-16, 1, 1e-10);
    close(normalQuantile(0.975), 1.959963984540054, 1e-13);
    close(normalQuantile(0.8), 0.8416212335729143, 1e-13);
    assert.equal(normalQuantile(0.5), 0);
    // Round trips through both tails.
    for (const p of [1e-12, 1e-6, 0.01, 0.3, 0.7, 0.99, 1 - 1e-9]) close(normalCdf(normalQuantile(p)), p, 1e-14 + p * 1e-12, `p=${p}`);
    assert.equal(normalQuantile(0), -Infinity);
    assert.ok(Number.isNaN(normalQuantile(1.5)));
  });

  it("Student t matches the closed forms for 1 and 2 degrees of freedom", () => {
    // ν = 1 is the Cauchy distribution: F(t) = ½ + atan(t)/π.
    // ν = 2: F(t) = ½ + t / (2√(2 + t²)).
    for (const t of [-30, -2, -0.3, 0, 0.7, 4, 100]) {
      close(studentTCdf(t, 1), 0.5 + Math.atan(t) / Math.PI, 1e-13, `ν=1 t=${t}`);
      close(studentTCdf(t, 2), 0.5 + t / (2 * Math.sqrt(2 + t * t)), 1e-13, `ν=2 t=${t}`);
    }
    // Table: t₁₀(0.975) = 2.228139; two-sided p of t = 2.228139 is 0.05.
    close(studentTCdf(2.228139, 10), 0.975, 1e-7);
    close(studentTTwoSided(2.228139, 10), 0.05, 1e-7);
    // Large ν approaches the normal.
    close(studentTCdf(1.959963984540054, 1e7), 0.975, 1e-7);
    assert.equal(studentTTwoSided(Infinity, 5), 0);
  });

  it("incomplete beta matches I_x(1, b) = 1 − (1 − x)^b and its symmetry", () => {
    for (const [x, b] of [
      [0.2, 3],
      [0.9, 0.5],
      [0.5, 10],
    ] as const)
      close(betaIncomplete(x, 1, b), 1 - (1 - x) ** b, 1e-14);
    close(betaIncomplete(0.3, 2.5, 7) + betaIncomplete(0.7, 7, 2.5), 1, 1e-14);
    assert.equal(betaIncomplete(0, 2, 3), 0);
    assert.equal(betaIncomplete(1, 2, 3), 1);
  });
});
