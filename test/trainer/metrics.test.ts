import { test } from "node:test";
import assert from "node:assert/strict";
import { auc, calibration, evaluate, logLoss, splitTrainValid } from "../../trainer/metrics.js";

test("AUC with ties counts a tied positive/negative pair as one half", () => {
  // Pairs (positive score vs negative score): 0.8 vs 0.8 → ½, 0.8 vs 0.1 → 1, 0.3 vs 0.8 → 0, 0.3 vs 0.1 → 1.
  assert.equal(auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]), 2.5 / 4);
  assert.equal(auc([1, 1, 0, 0], [0.9, 0.7, 0.2, 0.1]), 1);
  assert.equal(auc([0, 0, 1, 1], [0.9, 0.7, 0.2, 0.1]), 0);
  assert.equal(auc([1, 0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5, 0.5]), 0.5, "all tied");
  assert.equal(auc([0, 1, 0, 1], [-Infinity, Infinity, 0, 1]), 1);
});

test("AUC matches brute-force pair counting on random scores with many ties", () => {
  let seed = 3;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const labels = Array.from({ length: 300 }, () => (rand() < 0.3 ? 1 : 0));
  const scores = labels.map(() => Math.floor(rand() * 10) / 10);
  let wins = 0;
  let pairs = 0;
  for (let i = 0; i < labels.length; i++) {
    for (let j = 0; j < labels.length; j++) {
      if (labels[i] === 1 && labels[j] === 0) {
        pairs++;
        wins += scores[i] > scores[j] ? 1 : scores[i] === scores[j] ? 0.5 : 0;
      }
    }
  }
  assert.ok(Math.abs(auc(labels, scores) - wins / pairs) < 1e-12);
});

test("AUC is NaN when a class is missing or a score is NaN", () => {
  assert.ok(Number.isNaN(auc([1, 1], [0.2, 0.3])));
  assert.ok(Number.isNaN(auc([1, 0], [NaN, 0.3])));
});

test("log-loss by hand, clipped at the extremes", () => {
  const expected = -(Math.log(0.9) + Math.log(1 - 0.2)) / 2;
  assert.ok(Math.abs(logLoss([1, 0], [0.9, 0.2]) - expected) < 1e-15);
  assert.ok(Number.isFinite(logLoss([1], [0])), "p = 0 for a positive is clipped, not Infinity");
  assert.ok(Number.isNaN(logLoss([1], [NaN])));
});

test("calibration by decile: equal-count bins ordered by prediction", () => {
  const probs = Array.from({ length: 100 }, (_, i) => i / 100);
  const labels = probs.map((_, i) => (i % 10 < Math.floor(i / 10) ? 1 : 0));
  const bins = calibration(labels, probs);
  assert.equal(bins.length, 10);
  assert.deepEqual(
    bins.map((b) => b.count),
    new Array(10).fill(10),
  );
  assert.ok(Math.abs(bins[0].meanPredicted - 0.045) < 1e-12);
  assert.equal(bins[0].lower, 0);
  assert.equal(bins[9].upper, 0.99);
  assert.deepEqual(
    bins.map((b) => b.observedRate),
    [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
  );
  const e = evaluate(labels, probs);
  assert.equal(e.rows, 100);
  assert.equal(e.positives, 45);
  assert.ok(Math.abs(e.calibrationBias - (49.5 - 45) / 100) < 1e-12);
});

test("train/validation split: deterministic, about 10 %, disjoint, seed-dependent, groups stay together", () => {
  const a = splitTrainValid(20000, { seed: 1 });
  const b = splitTrainValid(20000, { seed: 1 });
  const c = splitTrainValid(20000, { seed: 2 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.valid, c.valid);
  assert.equal(a.train.length + a.valid.length, 20000);
  assert.ok(Math.abs(a.valid.length / 20000 - 0.1) < 0.01, `valid share ${a.valid.length / 20000}`);
  const inValid = new Set(a.valid);
  assert.ok(a.train.every((i) => !inValid.has(i)));

  const keys = Array.from({ length: 5000 }, (_, i) => `req-${Math.floor(i / 5)}`);
  const g = splitTrainValid(keys.length, {}, keys);
  const side = new Map<string, boolean>();
  for (const i of g.valid) side.set(keys[i], true);
  for (const i of g.train) assert.ok(!side.has(keys[i]), `request ${keys[i]} split across sides`);
  assert.ok(g.valid.length > 0 && g.valid.length % 5 === 0);
  assert.throws(() => splitTrainValid(10, { validFraction: 1 }), /validFraction/);
});
