import { test } from "node:test";
import assert from "node:assert/strict";
import { createRandom, predictProba, predictProbaColumns, quantileEdges, trainGbdt, type GbdtData } from "../../trainer/gbdt.js";
import { auc } from "../../trainer/metrics.js";

/** n rows of `features` uniform(-1, 1) columns, labelled by `label(row, rand)`. */
function makeData(n: number, features: number, seed: number, label: (x: number[], rand: () => number) => number): GbdtData & { probs?: number[] } {
  const rand = createRandom(seed);
  const columns = Array.from({ length: features }, () => new Float64Array(n));
  const labels = new Uint8Array(n);
  const x = new Array<number>(features);
  for (let r = 0; r < n; r++) {
    for (let f = 0; f < features; f++) x[f] = columns[f][r] = rand() * 2 - 1;
    labels[r] = label(x, rand);
  }
  return { columns, labels };
}

test("learns a separable rule to AUC ≈ 1 on held-out rows", () => {
  const rule = (x: number[]) => (x[0] + 0.5 * x[1] > 0.1 ? 1 : 0);
  const train = makeData(5000, 3, 1, rule);
  const valid = makeData(2000, 3, 2, rule);
  const model = trainGbdt(train, { numTrees: 60, maxDepth: 4, learningRate: 0.3 });
  const a = auc(valid.labels, predictProbaColumns(model, valid.columns));
  assert.ok(a > 0.995, `AUC ${a}`);
});

test("learns a noisy logistic function to near its Bayes AUC", () => {
  const truth = (x: number[]) => 1 / (1 + Math.exp(-(2 * x[0] - 1.5 * x[1] + x[2] * x[2] - 0.3)));
  const label = (x: number[], rand: () => number) => (rand() < truth(x) ? 1 : 0);
  const train = makeData(20000, 4, 3, label);
  const valid = makeData(5000, 4, 4, label);
  const model = trainGbdt(train);
  // The Bayes AUC: ranking the validation rows by their true probability.
  const trueProbs = Array.from({ length: 5000 }, (_, r) => truth(valid.columns.map((c) => c[r])));
  const bayes = auc(valid.labels, trueProbs);
  const got = auc(valid.labels, predictProbaColumns(model, valid.columns));
  assert.ok(bayes > 0.75, `the task is informative (Bayes AUC ${bayes})`);
  assert.ok(got > bayes - 0.015, `model AUC ${got} vs Bayes ${bayes}`);
  assert.ok(got <= bayes + 0.01, `no model beats the Bayes ranking by more than noise (${got} vs ${bayes})`);
});

test("one stump with learning rate 1 and lambda 0: split and leaf values are -G/H", () => {
  // prior 3/4 → base score log(3); p = 0.75 everywhere, g = p - y, h = p(1 - p) = 0.1875.
  // Split x <= 1: left G = 0.75, H = 0.1875 (gain 3 + 1 = 4) beats x <= 2 (gain 4/3) and x <= 3.
  const data: GbdtData = { columns: [Float64Array.of(1, 2, 3, 4)], labels: Uint8Array.of(0, 1, 1, 1) };
  const model = trainGbdt(data, { numTrees: 1, maxDepth: 1, learningRate: 1, lambda: 0, minSamplesLeaf: 1 });
  assert.equal(model.baseScore, Math.fround(Math.log(3)));
  const [tree] = model.trees;
  assert.equal(tree.feature[0], 0);
  assert.equal(tree.threshold[0], 1);
  assert.equal(tree.categorical[0], 0);
  const left = tree.value[tree.left[0]];
  const right = tree.value[tree.right[0]];
  assert.ok(Math.abs(left - -0.75 / 0.1875) < 1e-6, `left leaf ${left}`);
  assert.ok(Math.abs(right - 0.75 / 0.5625) < 1e-6, `right leaf ${right}`);
  assert.deepEqual(Array.from(tree.count), [4, 1, 3]);
  // The prediction is base + leaf.
  const p = predictProba(model, [1]);
  assert.ok(Math.abs(p - 1 / (1 + Math.exp(-(Math.log(3) - 4)))) < 1e-6);
});

test("lambda shrinks leaves to -G/(H + lambda) and learning rate scales them", () => {
  const data: GbdtData = { columns: [Float64Array.of(1, 2, 3, 4)], labels: Uint8Array.of(0, 0, 1, 1) };
  // base 0 → p = 0.5, g = ±0.5, h = 0.25; the split x <= 2 puts G = 1, H = 0.5 on the left.
  const model = trainGbdt(data, { numTrees: 1, maxDepth: 1, learningRate: 0.5, lambda: 1, minSamplesLeaf: 1 });
  const tree = model.trees[0];
  assert.equal(tree.threshold[0], 2);
  assert.ok(Math.abs(tree.value[tree.left[0]] - 0.5 * (-1 / 1.5)) < 1e-6);
  assert.ok(Math.abs(tree.value[tree.right[0]] - 0.5 * (1 / 1.5)) < 1e-6);
});

test("min samples and min hessian per leaf block splits", () => {
  const data: GbdtData = { columns: [Float64Array.of(1, 2, 3, 4)], labels: Uint8Array.of(0, 0, 1, 1) };
  const blocked = trainGbdt(data, { numTrees: 1, maxDepth: 1, minSamplesLeaf: 3 });
  assert.equal(blocked.trees[0].feature[0], -1, "no split leaves 3 rows on both sides");
  const byHessian = trainGbdt(data, { numTrees: 1, maxDepth: 1, minSamplesLeaf: 1, minHessianLeaf: 0.6 });
  assert.equal(byHessian.trees[0].feature[0], -1, "each side has hessian 0.5 < 0.6");
});

test("deterministic for a seed; the seed drives the binning sample", () => {
  const data = makeData(6000, 3, 5, (x, rand) => (rand() < 1 / (1 + Math.exp(-3 * x[0])) ? 1 : 0));
  const opts = { numTrees: 10, binSampleSize: 1000, maxBins: 32 };
  const a = trainGbdt(data, { ...opts, seed: 7 });
  const b = trainGbdt(data, { ...opts, seed: 7 });
  const c = trainGbdt(data, { ...opts, seed: 8 });
  assert.deepEqual(a.trees, b.trees);
  assert.equal(a.baseScore, b.baseScore);
  assert.notDeepEqual(
    a.trees.map((t) => Array.from(t.threshold)),
    c.trees.map((t) => Array.from(t.threshold)),
    "another seed samples other bin edges",
  );
});

test("NaN gets its own bin and a learned default direction", () => {
  // Positive iff x > 0.5, and every missing x is positive: the split must send NaN with the high side.
  const rand = createRandom(9);
  const n = 2000;
  const x = new Float64Array(n);
  const labels = new Uint8Array(n);
  for (let r = 0; r < n; r++) {
    x[r] = r % 5 === 0 ? NaN : rand();
    labels[r] = Number.isNaN(x[r]) || x[r] > 0.5 ? 1 : 0;
  }
  const model = trainGbdt({ columns: [x], labels }, { numTrees: 10, maxDepth: 1, learningRate: 1 });
  const tree = model.trees[0];
  assert.equal(tree.feature[0], 0);
  assert.ok(Math.abs(tree.threshold[0] - 0.5) < 0.01, `threshold ${tree.threshold[0]}`);
  assert.equal(tree.missingLeft[0], 0, "x <= 0.5 is negative, so NaN goes right");
  assert.ok(predictProba(model, [NaN]) > 0.9);
  assert.ok(predictProba(model, [0.2]) < 0.1);

  // Mirror: low x positive and missing rows positive too → NaN goes left, with the x <= t side.
  const flipped = Uint8Array.from(labels, (_, r) => (Number.isNaN(x[r]) ? 1 : 1 - labels[r]));
  const m2 = trainGbdt({ columns: [x], labels: flipped }, { numTrees: 10, maxDepth: 1, learningRate: 1 });
  assert.equal(m2.trees[0].missingLeft[0], 1);
  assert.ok(predictProba(m2, [NaN]) > 0.9);
  assert.ok(predictProba(m2, [0.8]) < 0.1);
});

test("a split can separate missing from present values", () => {
  const n = 1000;
  const x = Float64Array.from({ length: n }, (_, r) => (r % 2 ? NaN : r / n));
  const labels = Uint8Array.from({ length: n }, (_, r) => (r % 2 ? 1 : 0));
  const model = trainGbdt({ columns: [x], labels }, { numTrees: 10, maxDepth: 1, learningRate: 1 });
  assert.equal(model.trees[0].threshold[0], Infinity, "every value left, NaN right");
  assert.ok(predictProba(model, [NaN]) > 0.9 && predictProba(model, [0.3]) < 0.1);
});

test("categorical features split as code == c, unknown codes go right", () => {
  // Positive iff the code is 3; a numeric threshold would need two splits to isolate it.
  const rand = createRandom(11);
  const n = 3000;
  const code = new Float64Array(n);
  const noise = new Float64Array(n);
  const labels = new Uint8Array(n);
  for (let r = 0; r < n; r++) {
    code[r] = Math.floor(rand() * 6);
    noise[r] = rand();
    labels[r] = code[r] === 3 ? 1 : 0;
  }
  const model = trainGbdt(
    { columns: [noise, code], labels, categorical: [false, true], featureNames: ["noise", "page"] },
    { numTrees: 1, maxDepth: 1, learningRate: 1 },
  );
  const tree = model.trees[0];
  assert.equal(tree.feature[0], 1);
  assert.equal(tree.categorical[0], 1);
  assert.equal(tree.threshold[0], 3);
  assert.ok(predictProba(model, [0.5, 3]) > 0.9);
  for (const c of [0, 2, 5, 250]) assert.ok(predictProba(model, [0.5, c]) < 0.1, `code ${c}`);
  assert.deepEqual(model.featureNames, ["noise", "page"]);
});

test("quantile edges: at most maxBins bins, last edge +Infinity, heavy values keep their own bin", () => {
  const values = Float64Array.from({ length: 10000 }, (_, i) => (i < 5000 ? 0 : i));
  const edges = quantileEdges(values, 16);
  assert.ok(edges.length <= 16);
  assert.equal(edges[0], 0, "the heavy value 0 is a bin by itself");
  assert.equal(edges[edges.length - 1], Infinity);
  for (let i = 1; i < edges.length; i++) assert.ok(edges[i] > edges[i - 1]);
  assert.deepEqual(Array.from(quantileEdges(Float64Array.of(1, 1, 2, 3), 255)), [1, 2, Infinity]);
});

test("rejects bad input with a clear message", () => {
  assert.throws(() => trainGbdt({ columns: [Float64Array.of(1, 2)], labels: Uint8Array.of(1, 1) }), /both classes/);
  assert.throws(() => trainGbdt({ columns: [Float64Array.of(1, 2)], labels: Uint8Array.of(1, 0) }, { maxDepth: 0 }), /maxDepth/);
  assert.throws(() => trainGbdt({ columns: [Float64Array.of(1)], labels: Uint8Array.of(1, 0) }), /column 0 has 1 rows/);
  assert.throws(() => trainGbdt({ columns: [Float64Array.of(1, 2)], labels: Float64Array.of(1, 0.5) }), /expected 0 or 1/);
});

test("two threads: the same splits as one, reproducible, and the model records the threads used", () => {
  // Enough rows for two threads (MIN_ROWS_PER_THREAD each); the sums are rounded in two halves,
  // so only the last bits may differ from one thread.
  const data = makeData(120_000, 4, 12, (x, rand) => (rand() < 1 / (1 + Math.exp(-(2 * x[0] - x[1] + x[2] * x[3]))) ? 1 : 0));
  const opts = { numTrees: 15, maxDepth: 4 };
  const one = trainGbdt(data, { ...opts, threads: 1 });
  const two = trainGbdt(data, { ...opts, threads: 2 });
  assert.equal(one.params.threads, 1);
  assert.equal(two.params.threads, 2);
  assert.deepEqual(trainGbdt(data, { ...opts, threads: 2 }).trees, two.trees, "two threads are deterministic");
  for (let t = 0; t < opts.numTrees; t++) {
    assert.deepEqual(Array.from(two.trees[t].feature), Array.from(one.trees[t].feature), `tree ${t} features`);
    assert.deepEqual(Array.from(two.trees[t].threshold), Array.from(one.trees[t].threshold), `tree ${t} thresholds`);
    assert.deepEqual(Array.from(two.trees[t].count), Array.from(one.trees[t].count), `tree ${t} counts`);
    for (let i = 0; i < one.trees[t].value.length; i++) assert.ok(Math.abs(two.trees[t].value[i] - one.trees[t].value[i]) < 1e-6);
  }
  // Small data trains on one thread whatever is asked: a worker would cost more than it saves.
  assert.equal(
    trainGbdt(
      makeData(5000, 2, 1, (x) => (x[0] > 0 ? 1 : 0)),
      { numTrees: 2, threads: 2 },
    ).params.threads,
    1,
  );
  assert.throws(() => trainGbdt(data, { numTrees: 1, threads: 0 }), /threads must be an integer/);
});
