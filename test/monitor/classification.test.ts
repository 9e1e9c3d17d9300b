import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { auc, classificationQuality } from "../../monitor/stats/classification.js";
import { seededRandom } from "./fixtures/random.js";

function close(actual: number, expected: number, tolerance: number, what = "") {
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what} ${actual} is not within ${tolerance} of ${expected}`);
}

/** O(n²) definition, independent of the rank computation: P(s⁺ > s⁻) + ½·P(s⁺ = s⁻). */
function pairwiseAuc(scores: number[], labels: number[]): number {
  let wins = 0;
  let pairs = 0;
  for (let i = 0; i < scores.length; i++) {
    if (!labels[i]) continue;
    for (let j = 0; j < scores.length; j++) {
      if (labels[j]) continue;
      pairs++;
      wins += scores[i]! > scores[j]! ? 1 : scores[i] === scores[j] ? 0.5 : 0;
    }
  }
  return wins / pairs;
}

describe("AUC", () => {
  it("the classic four-point example is 0.75", () => {
    // Positives 0.35 and 0.8, negatives 0.1 and 0.4: of four pairs only 0.35 < 0.4 is misordered.
    assert.equal(auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 0.75);
  });

  it("ties count one half", () => {
    // Positives {0.5, 0.9}, negatives {0.2, 0.5, 0.5}: 0.5⁺ wins 1 + ½ + ½, 0.9⁺ wins 3 → 5/6.
    close(auc([0.2, 0.5, 0.5, 0.5, 0.9], [0, 0, 1, 0, 1]), 5 / 6, 1e-15);
    assert.equal(auc([0.5, 0.5], [0, 1]), 0.5);
  });

  it("equals the pairwise definition on random data with many ties", () => {
    const random = seededRandom(21);
    const scores = Array.from({ length: 300 }, () => Math.round(random() * 20) / 20);
    const labels = scores.map((s) => (random() < s ? 1 : 0));
    close(auc(scores, labels), pairwiseAuc(scores, labels), 1e-12);
  });

  it("is NaN with one class or no data, and skips non-finite scores", () => {
    assert.ok(Number.isNaN(auc([], [])));
    assert.ok(Number.isNaN(auc([0.1, 0.9], [1, 1])));
    assert.equal(auc([0.1, NaN, 0.9, Infinity], [0, 1, 1, 0]), 1);
  });
});

describe("calibration and accuracy", () => {
  it("matches a hand computation", () => {
    // Scores 0.05, 0.15, 0.15, 0.95 with outcomes 0, 0, 1, 1 in 10 bins:
    // bin 0: predicted 0.05, observed 0 (1 of 4); bin 1: predicted 0.15, observed 0.5 (2 of 4);
    // bin 9: predicted 0.95, observed 1 (1 of 4). ECE = ¼·0.05 + ½·0.35 + ¼·0.05 = 0.2.
    // Brier = (0.05² + 0.15² + 0.85² + 0.05²)/4 = (0.0025 + 0.0225 + 0.7225 + 0.0025)/4 = 0.1875.
    // Accuracy at 0.5: predicted 0, 0, 0, 1 against 0, 0, 1, 1 → 3/4.
    const q = classificationQuality([0.05, 0.15, 0.15, 0.95], [0, 0, 1, 1]);
    close(q.ece, 0.2, 1e-15);
    close(q.brier, 0.1875, 1e-15);
    assert.equal(q.accuracy, 0.75);
    assert.equal(q.auc, 0.875);
    assert.equal(q.bins[1]!.count, 2);
    close(q.bins[1]!.observedRate, 0.5, 0);
    close(q.meanPredicted, 0.325, 1e-15);
    assert.equal(q.observedRate, 0.5);
  });

  it("well-calibrated scores have a small ECE; inflated scores a large one", () => {
    const random = seededRandom(8);
    const scores = Array.from({ length: 20000 }, () => random());
    const labels = scores.map((s) => (random() < s ? 1 : 0));
    assert.ok(classificationQuality(scores, labels).ece < 0.02);
    const inflated = scores.map((s) => Math.min(1, s + 0.3));
    assert.ok(classificationQuality(inflated, labels).ece > 0.2);
  });

  it("counts dropped and out-of-range scores", () => {
    const q = classificationQuality([NaN, 1.5, -0.5, 0.5], [1, 1, 0, 1]);
    assert.equal(q.dropped, 1);
    assert.equal(q.outOfRange, 2);
    assert.equal(q.n, 3);
    assert.ok(Number.isNaN(classificationQuality([], []).accuracy));
  });
});
