// CTR as a ratio metric clustered by user (delta method) and its CUPED: against a hand computation,
// then against simulations where users differ in how much they click (so items of one user are
// correlated): an A/A rejects at the nominal rate where the per-item binomial test does not, a
// known effect is found, CUPED with a covariate that predicts the user's CTR narrows the test
// without moving the estimate, and the always-valid test read at every look holds its level.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { ratioArm, ratioCuped, ratioSums } from "../../monitor/stats/ratio.js";
import { msprt, defaultTau2 } from "../../monitor/stats/sequential.js";
import { analyzeExperiment, type VariantCounts } from "../../monitor/experiments.js";
import { MONITOR_DEFAULTS } from "../../monitor/options.js";
import { normalSf } from "../../monitor/stats/special-functions.js";
import { seededRandom, normalSampler } from "./fixtures/random.js";

describe("delta-method ratio", () => {
  it("matches a hand computation", () => {
    // Users (clicks, shown): (1, 3), (0, 2), (2, 4), (1, 1).
    const a = ratioArm(ratioSums([1, 0, 2, 1], [3, 2, 4, 1]));
    const r = 4 / 10;
    const mc = 1;
    const ms = 2.5;
    const vc = ((1 - mc) ** 2 + (0 - mc) ** 2 + (2 - mc) ** 2 + (1 - mc) ** 2) / 3;
    const vs = ((3 - ms) ** 2 + (2 - ms) ** 2 + (4 - ms) ** 2 + (1 - ms) ** 2) / 3;
    const cov = ((1 - mc) * (3 - ms) + (0 - mc) * (2 - ms) + (2 - mc) * (4 - ms) + (1 - mc) * (1 - ms)) / 3;
    assert.equal(a.mean, r);
    assert.ok(Math.abs(a.variance - (vc - 2 * r * cov + r * r * vs) / (ms * ms)) < 1e-12);
    // The same as the sample variance of the linearized values (c − R s) / s̄.
    const l = [1, 0, 2, 1].map((c, i) => (c - r * [3, 2, 4, 1][i]!) / ms);
    const ml = l.reduce((x, y) => x + y) / 4;
    assert.ok(Math.abs(a.variance - l.reduce((x, y) => x + (y - ml) ** 2, 0) / 3) < 1e-12);
  });

  it("CUPED on a ratio matches CUPED on the linearized values", () => {
    const c = [
      [1, 0, 2, 1, 3],
      [0, 1, 1, 2, 2],
    ];
    const s = [
      [3, 2, 4, 1, 5],
      [2, 2, 3, 4, 3],
    ];
    const x = [
      [2, 0, 5, 1, 6],
      [1, 2, 2, 4, 3],
    ];
    const r = ratioCuped([ratioSums(c[0]!, s[0]!, x[0]!), ratioSums(c[1]!, s[1]!, x[1]!)]);
    // By hand: L per arm, pooled θ = Σ(n−1)Cov(L,X) / Σ(n−1)Var(X).
    const stats = [0, 1].map((k) => {
      const n = 5;
      const R = c[k]!.reduce((p, q) => p + q) / s[k]!.reduce((p, q) => p + q);
      const sbar = s[k]!.reduce((p, q) => p + q) / n;
      const l = c[k]!.map((ci, i) => (ci - R * s[k]![i]!) / sbar);
      const ml = l.reduce((p, q) => p + q) / n;
      const mx = x[k]!.reduce((p, q) => p + q) / n;
      const cov = l.reduce((acc, li, i) => acc + (li - ml) * (x[k]![i]! - mx), 0) / (n - 1);
      const vx = x[k]!.reduce((acc, xi) => acc + (xi - mx) ** 2, 0) / (n - 1);
      return { R, mx, cov, vx };
    });
    const theta = (4 * stats[0]!.cov + 4 * stats[1]!.cov) / (4 * stats[0]!.vx + 4 * stats[1]!.vx);
    assert.ok(Math.abs(r.theta - theta) < 1e-12);
    const meanX = (stats[0]!.mx + stats[1]!.mx) / 2;
    assert.ok(Math.abs(r.arms[0]!.mean - (stats[0]!.R - theta * (stats[0]!.mx - meanX))) < 1e-12);
  });
});

/** A user of an arm: a CTR of their own (the cluster effect), a covariate that predicts it, 3 items per request. */
function arm(random: () => number, users: number, lift: number) {
  const normal = normalSampler(random);
  const c: number[] = [];
  const s: number[] = [];
  const x: number[] = [];
  for (let u = 0; u < users; u++) {
    const propensity = normal();
    const p = Math.min(0.95, Math.max(0.005, 0.15 * Math.exp(0.6 * propensity) * (1 + lift)));
    const requests = 1 + Math.floor(random() * 8);
    let clicks = 0;
    for (let i = 0; i < requests * 3; i++) if (random() < p) clicks++;
    c.push(clicks);
    s.push(requests * 3);
    x.push(Math.max(0, 10 + 6 * propensity + 3 * normal()));
  }
  return ratioSums(c, s, x);
}

const counts = (variant: string, sums: ReturnType<typeof arm>): VariantCounts => ({
  variant,
  users: sums.n,
  exposures: 0,
  conversions: 0,
  revenue: 0,
  avgRevenue: NaN,
  revenueVariance: NaN,
  crossovers: 0,
  ctrSums: sums,
});

const config = {
  name: "ctr",
  model: "m",
  status: "running" as const,
  variants: [
    { name: "control", traffic: 50, target: "a" },
    { name: "treatment", traffic: 50, target: "b" },
  ],
};
const window = { from: new Date(0), to: new Date(1) };

describe("CTR clustered by user, simulated", () => {
  const RUNS = 400;

  it("A/A: the delta-method z-test rejects near 5 %; the per-item binomial test rejects far more", () => {
    const random = seededRandom(21);
    let delta = 0;
    let binomial = 0;
    for (let run = 0; run < RUNS; run++) {
      const a = arm(random, 1000, 0);
      const b = arm(random, 1000, 0);
      const t = analyzeExperiment(config, [counts("control", a), counts("treatment", b)], window, MONITOR_DEFAULTS.experiments).variants[1]!;
      if (t.ctrTest!.pValue < 0.05) delta++;
      const pa = a.sumC / a.sumS;
      const pb = b.sumC / b.sumS;
      const pooled = (a.sumC + b.sumC) / (a.sumS + b.sumS);
      const z = (pb - pa) / Math.sqrt(pooled * (1 - pooled) * (1 / a.sumS + 1 / b.sumS));
      if (2 * normalSf(Math.abs(z)) < 0.05) binomial++;
    }
    assert.ok(delta >= 8 && delta <= 34, `delta method rejected ${delta}/${RUNS} A/A runs`);
    assert.ok(binomial > delta * 1.5, `binomial rejected ${binomial}/${RUNS}, delta ${delta}/${RUNS}`);
  });

  it("a known +10 % CTR lift is found, more often with CUPED, and CUPED does not move the estimate", () => {
    const random = seededRandom(8);
    let raw = 0;
    let adjusted = 0;
    let rawMean = 0;
    let adjustedMean = 0;
    let reduction = 0;
    for (let run = 0; run < RUNS; run++) {
      const t = analyzeExperiment(
        config,
        [counts("control", arm(random, 1000, 0)), counts("treatment", arm(random, 1000, 0.1))],
        window,
        MONITOR_DEFAULTS.experiments,
      ).variants[1]!;
      if (t.ctrTest!.pValue < 0.05) raw++;
      if (t.ctrTest!.cuped!.pValue < 0.05) adjusted++;
      rawMean += t.ctrTest!.difference / RUNS;
      adjustedMean += t.ctrTest!.cuped!.difference / RUNS;
      reduction += t.ctrTest!.cuped!.varianceReduction / RUNS;
    }
    assert.ok(raw > RUNS * 0.3, `raw found the lift in ${raw}/${RUNS}`);
    assert.ok(adjusted > raw, `CUPED found it in ${adjusted}/${RUNS}, raw in ${raw}`);
    assert.ok(reduction > 0.1, `mean variance reduction ${reduction}`);
    assert.ok(Math.abs(adjustedMean - rawMean) < 0.002, `mean difference raw ${rawMean}, CUPED ${adjustedMean}`);
  });

  it("A/A read at ten looks: the always-valid test rejects in at most 5 % of runs", () => {
    const random = seededRandom(3);
    let rejected = 0;
    const runs = 200;
    for (let run = 0; run < runs; run++) {
      // Ten looks at growing samples of the same users (each look adds 200 users per arm).
      const a: number[][] = [[], []];
      const b: number[][] = [[], []];
      let minP = 1;
      for (let k = 0; k < 10; k++) {
        const add = (target: number[][]) => {
          const normal = normalSampler(random);
          for (let u = 0; u < 200; u++) {
            const p = Math.min(0.95, 0.15 * Math.exp(0.6 * normal()));
            const shown = 3 * (1 + Math.floor(random() * 8));
            let clicks = 0;
            for (let i = 0; i < shown; i++) if (random() < p) clicks++;
            target[0]!.push(clicks);
            target[1]!.push(shown);
          }
        };
        add(a);
        add(b);
        const ra = ratioArm(ratioSums(a[0]!, a[1]!));
        const rb = ratioArm(ratioSums(b[0]!, b[1]!));
        const seq = msprt(rb.mean - ra.mean, ra.variance / ra.n + rb.variance / rb.n, defaultTau2(ra.mean, 0.1), 0.05);
        minP = Math.min(minP, seq.pValue);
      }
      if (minP < 0.05) rejected++;
    }
    assert.ok(rejected <= runs * 0.05 + 4, `always-valid test rejected ${rejected}/${runs} peeked A/A runs`);
  });
});
