// The steps of a training cycle on their own, without services: split, train, evaluate, and the
// reasons a cycle stops early.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { FeatureSpec, ModelVersion } from "../../lib/registry.js";
import type { Dataset } from "../../trainer/dataset.js";
import { createRandom } from "../../trainer/gbdt.js";
import { evaluateModels, splitRows, trainCandidate, unusableRows, type LoadedRows, type SplitRows } from "../../trainer/cycle-steps.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME } from "../../trainer/onnx-export.js";

const SPECS: FeatureSpec[] = [
  { name: "x", type: "numeric" },
  { name: "noise", type: "numeric" },
] as FeatureSpec[];

/** n rows in groups of 4 (one request's candidates), positive mostly when x > 0. */
function loaded(n: number, positive = (x: number, u: number) => u < 1 / (1 + Math.exp(-4 * x))): LoadedRows {
  const rand = createRandom(3);
  const x = new Float64Array(n);
  const noise = new Float64Array(n);
  const extra = new Float64Array(n);
  const labels = new Uint8Array(n);
  let positives = 0;
  for (let r = 0; r < n; r++) {
    x[r] = rand() * 2 - 1;
    noise[r] = rand();
    extra[r] = x[r] * 2;
    labels[r] = positive(x[r], rand()) ? 1 : 0;
    positives += labels[r];
  }
  const dataset: Dataset = {
    featureNames: ["x", "noise", "extra"],
    columns: [x, noise, extra],
    labels,
    groups: Array.from({ length: n }, (_, r) => `req${Math.floor(r / 4)}`),
    counts: { rows: n, positives, dropped: {}, notes: {} },
    source: { kind: "file", path: "rows.csv", label: "y" },
  };
  return { dataset, specs: SPECS };
}

test("split: whole requests on one side, training columns in the model's feature order", () => {
  const l = loaded(4000);
  const split = splitRows(l, 0.2, 42);
  assert.ok("rows" in split);
  const { train, validLabels } = split.rows;
  assert.equal(train.labels.length + validLabels.length, 4000);
  assert.ok(Math.abs(validLabels.length / 4000 - 0.2) < 0.05, `${validLabels.length} validation rows`);
  assert.equal(train.labels.length % 4, 0, "groups of 4 stay together");
  assert.deepEqual(train.featureNames, ["x", "noise"]);
  assert.deepEqual(train.categorical, [false, false]);
  // The same split for the same seed; validation columns of a feature the model does not use too.
  const again = splitRows(l, 0.2, 42) as { rows: SplitRows };
  assert.deepEqual(again.rows.train.columns, train.columns);
  assert.deepEqual(
    Array.from(split.rows.validColumn("extra")),
    Array.from(split.rows.validColumn("x"), (v) => v * 2),
  );
  assert.throws(() => split.rows.validColumn("nope"), /nope is not in the data/);
});

test("split: a side without both classes is a skip with its reason", () => {
  // One request: all its rows land on one side, so the other side is empty.
  const l = loaded(4);
  l.dataset.labels.set([1, 0, 1, 0]);
  l.dataset.counts.positives = 2;
  const split = splitRows(l, 0.1, 42);
  assert.ok("skip" in split);
  assert.equal(split.skip.action, "skip");
  assert.match(split.skip.reason, /without both classes/);
});

test("unusable rows: no rows, no features, one class", () => {
  const none = loaded(8);
  none.dataset.counts = { rows: 0, positives: 0, dropped: {}, notes: {} };
  assert.match(unusableRows(none, "m")!.reason, /no labelled rows in rows.csv/);
  assert.match(unusableRows({ ...loaded(100), specs: [] }, "m")!.reason, /nothing to learn from/);
  const oneClass = loaded(100);
  oneClass.dataset.counts.positives = 0;
  assert.match(unusableRows(oneClass, "m")!.reason, /need both classes/);
  assert.equal(unusableRows(loaded(100), "m"), undefined);
});

test("train and evaluate: the candidate learns x, production is scored on the same rows or says why not", async () => {
  const l = loaded(6000);
  const { rows } = splitRows(l, 0.2, 42) as { rows: SplitRows };
  const trained = await trainCandidate(rows.train, "m", { numTrees: 30 });
  assert.equal(trained.model.trees.length, 30);
  assert.ok(trained.model.featureGain[0] > trained.model.featureGain[1] * 10, "x matters, noise does not");
  assert.ok(trained.artifact.length > 0 && trained.trainMs > 0);

  // "Production" is the candidate's own artifact here: on the same rows it scores the same.
  const version = { version: "7", features: SPECS, inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME } as ModelVersion;
  const e = await evaluateModels({ artifact: trained.artifact, features: ["x", "noise"] }, rows, {
    version,
    fetchArtifact: async () => trained.artifact,
  });
  assert.ok(e.candidate.auc > 0.8, `AUC ${e.candidate.auc}`);
  assert.equal(e.candidate.rows, rows.validLabels.length);
  assert.equal(e.production?.version, "7");
  assert.equal(e.production?.evaluation?.auc, e.candidate.auc);

  const missing = await evaluateModels(
    { artifact: trained.artifact, features: ["x", "noise"] },
    rows,
    { version: { ...version, features: [{ name: "gone", type: "numeric" } as FeatureSpec] }, fetchArtifact: async () => trained.artifact },
    l.dataset.featureNames,
  );
  assert.equal(missing.production?.evaluation, undefined);
  assert.match(missing.production?.error ?? "", /its features gone are not in the data/);
});
