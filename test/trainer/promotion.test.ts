import { test } from "node:test";
import assert from "node:assert/strict";
import { decidePromotion, referenceSample } from "../../trainer/cycle.js";

const candidate = (auc: number, rows = 2000, positives = 300) => ({ auc, logLoss: 0.4, rows, positives });

test("promotes when there is no production version", () => {
  const d = decidePromotion({ rows: 20000, candidate: candidate(0.7) });
  assert.equal(d.action, "promote");
  assert.match(d.reason, /no production version/);
});

test("promotes at ≥ 1 % relative AUC gain, keeps the candidate below it", () => {
  const production = { version: "3", auc: 0.8 };
  assert.equal(decidePromotion({ rows: 20000, candidate: candidate(0.808), production }).action, "promote", "exactly +1 %");
  const kept = decidePromotion({ rows: 20000, candidate: candidate(0.8079), production });
  assert.equal(kept.action, "keep_candidate");
  assert.match(kept.reason, /AUC 0\.8079 < 0\.8080 needed \(production v3 0\.8000/);
  assert.equal(decidePromotion({ rows: 20000, candidate: candidate(0.75), production }).action, "keep_candidate", "worse");
});

test("the gain threshold is configurable", () => {
  const production = { version: "1", auc: 0.8 };
  assert.equal(decidePromotion({ rows: 20000, candidate: candidate(0.81), production }, { minRelativeGain: 0.05 }).action, "keep_candidate");
  assert.equal(decidePromotion({ rows: 20000, candidate: candidate(0.8), production }, { minRelativeGain: 0 }).action, "promote");
});

test("never promotes with too few rows, too few validation rows of a class, or a broken metric", () => {
  const tooFew = decidePromotion({ rows: 999, candidate: candidate(0.99) });
  assert.equal(tooFew.action, "keep_candidate");
  assert.match(tooFew.reason, /too few rows: 999 < 1000/);
  assert.equal(decidePromotion({ rows: 999, candidate: candidate(0.99) }, { minRows: 500 }).action, "promote");
  const fewPositives = decidePromotion({ rows: 5000, candidate: candidate(0.99, 500, 5) });
  assert.match(fewPositives.reason, /too few validation rows per class: 5 positive/);
  const nan = decidePromotion({ rows: 5000, candidate: candidate(NaN) });
  assert.equal(nan.action, "keep_candidate");
  assert.match(nan.reason, /broken metric/);
  assert.equal(decidePromotion({ rows: 5000, candidate: { ...candidate(0.9), logLoss: Infinity } }).action, "keep_candidate");
});

test("keeps the candidate when production could not be evaluated, or promotion is off", () => {
  const d = decidePromotion({ rows: 5000, candidate: candidate(0.9), production: { version: "2", auc: NaN, error: "its features x are not in the data" } });
  assert.equal(d.action, "keep_candidate");
  assert.match(d.reason, /production v2 could not be evaluated.*features x/);
  const off = decidePromotion({ rows: 5000, candidate: candidate(0.9) }, { promote: false });
  assert.equal(off.action, "keep_candidate");
  assert.match(off.reason, /--no-promote/);
});

test("reference sample: at most N finite values per feature, deterministic, drawn from the column", () => {
  const col = Float64Array.from({ length: 10000 }, (_, i) => (i % 10 === 0 ? NaN : i));
  const specs = [{ name: "x", source: "user" as const, type: "numeric" as const, default: 0 }];
  const a = referenceSample([col], specs, 2000, 1);
  assert.equal(a.x.length, 2000);
  assert.ok(a.x.every((v) => Number.isFinite(v) && v % 10 !== 0));
  assert.equal(new Set(a.x).size, 2000, "without replacement");
  assert.deepEqual(referenceSample([col], specs, 2000, 1), a);
  assert.equal(referenceSample([Float64Array.of(1, NaN, 2)], specs, 2000, 1).x.length, 2);
});
