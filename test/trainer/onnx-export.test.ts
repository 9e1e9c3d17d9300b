import { test } from "node:test";
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { fromBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../gen/onnx/onnx_pb.js";
import { createRandom, predictProba, trainGbdt, type GbdtData } from "../../trainer/gbdt.js";
import { ONNX_INPUT_NAME, ONNX_LABEL_NAME, ONNX_PROBABILITIES_NAME, exportOnnx, logisticOnnx } from "../../trainer/onnx-export.js";

/** Numeric, heavy-tailed, partly missing and categorical features with a known logistic target. */
function mixedData(n: number, seed: number): GbdtData {
  const rand = createRandom(seed);
  const cols = [new Float64Array(n), new Float64Array(n), new Float64Array(n), new Float64Array(n)];
  const labels = new Uint8Array(n);
  for (let r = 0; r < n; r++) {
    const a = rand() * 2 - 1;
    const b = rand() < 0.15 ? NaN : Math.exp(rand() * 6) - 1; // skewed, with missing values
    const page = rand() < 0.05 ? NaN : Math.floor(rand() * 8); // vocabulary code, NaN = unknown
    const c = Math.round(rand() * 4) / 4; // few distinct values: thresholds land exactly on data
    cols[0][r] = a;
    cols[1][r] = b;
    cols[2][r] = page;
    cols[3][r] = c;
    const z = 1.5 * a + (Number.isNaN(b) ? 0.8 : Math.log1p(b) / 3 - 1) + (page === 2 ? 1.2 : page === 5 ? -1 : 0) + c;
    labels[r] = rand() < 1 / (1 + Math.exp(-z)) ? 1 : 0;
  }
  return { columns: cols, labels, categorical: [false, false, true, false], featureNames: ["a", "b", "page", "c"] };
}

test("the exported model gives the TypeScript model's probabilities (±1e-5) on held-out rows", async () => {
  const model = trainGbdt(mixedData(8000, 1), { numTrees: 60, maxDepth: 5 });
  assert.ok(
    model.trees.some((t) => t.categorical.some((c, i) => c === 1 && t.feature[i] >= 0)),
    "a categorical split was learned",
  );
  assert.ok(
    model.trees.some((t) => t.missingLeft.some((m, i) => m === 1 && t.feature[i] >= 0)),
    "some split sends NaN left",
  );
  const bytes = exportOnnx(model);
  const session = await ort.InferenceSession.create(bytes);
  try {
    assert.deepEqual(session.inputNames, [ONNX_INPUT_NAME]);
    assert.deepEqual([...session.outputNames].sort(), [ONNX_LABEL_NAME, ONNX_PROBABILITIES_NAME].sort());
    const held = mixedData(3000, 2);
    const n = held.labels.length;
    const F = held.columns.length;
    // Add rows the training data never had: unknown codes, all-missing, values outside the range.
    const extra = [
      [0.1, NaN, NaN, NaN],
      [0.3, 5, 99, 0.5],
      [-5, 1e9, 2, -3],
      [NaN, 0, 7, 0.25],
    ];
    const rows = Array.from({ length: n }, (_, r) => held.columns.map((c) => c[r])).concat(extra);
    const x = new Float32Array(rows.length * F);
    rows.forEach((row, i) => row.forEach((v, f) => (x[i * F + f] = v)));
    const out = await session.run({ [ONNX_INPUT_NAME]: new ort.Tensor("float32", x, [rows.length, F]) });
    const probs = out[ONNX_PROBABILITIES_NAME];
    const label = out[ONNX_LABEL_NAME];
    assert.deepEqual(probs.dims, [rows.length, 2]);
    assert.deepEqual(label.dims, [rows.length]);
    assert.equal(label.type, "int64");
    const ts = predictProba(model, rows);
    let maxDiff = 0;
    let nanRows = 0;
    for (let i = 0; i < rows.length; i++) {
      const p1 = (probs.data as Float32Array)[2 * i + 1];
      const p0 = (probs.data as Float32Array)[2 * i];
      maxDiff = Math.max(maxDiff, Math.abs(p1 - ts[i]), Math.abs(p0 - (1 - ts[i])));
      assert.equal((label.data as BigInt64Array)[i], ts[i] > 0.5 ? 1n : 0n, `label of row ${i}`);
      if (rows[i].some(Number.isNaN)) nanRows++;
    }
    assert.ok(maxDiff < 1e-5, `max |onnx - ts| = ${maxDiff}`);
    assert.ok(nanRows > 300, `held-out rows with NaN: ${nanRows}`);
  } finally {
    await session.release();
  }
});

test("the ONNX model records feature names, categorical features and opsets", () => {
  const model = trainGbdt(mixedData(2000, 3), { numTrees: 3 });
  const decoded = fromBinary(ModelProtoSchema, exportOnnx(model, { description: "test model", metadata: { model_name: "m" } }));
  const meta = Object.fromEntries(decoded.metadataProps.map((e) => [e.key, e.value]));
  assert.deepEqual(JSON.parse(meta.feature_names), ["a", "b", "page", "c"]);
  assert.deepEqual(JSON.parse(meta.categorical_features), ["page"]);
  assert.equal(meta.model_name, "m");
  assert.equal(decoded.docString, "test model");
  assert.deepEqual(
    decoded.opsetImport.map((o) => [o.domain, o.version]),
    [
      ["", 13n],
      ["ai.onnx.ml", 3n],
    ],
  );
});

test("logisticOnnx: p = sigmoid(x · w + b) with the trained models' input and outputs", async () => {
  const session = await ort.InferenceSession.create(logisticOnnx([2, -1], 0.5));
  try {
    const out = await session.run({ [ONNX_INPUT_NAME]: new ort.Tensor("float32", new Float32Array([1, 3, 0, 0]), [2, 2]) });
    const p = out[ONNX_PROBABILITIES_NAME]!.data as Float32Array;
    const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));
    // Row 1: 2·1 − 1·3 + 0.5 = −0.5; row 2: 0.5.
    assert.ok(Math.abs(p[1]! - sigmoid(-0.5)) < 1e-6 && Math.abs(p[0]! - (1 - sigmoid(-0.5))) < 1e-6);
    assert.ok(Math.abs(p[3]! - sigmoid(0.5)) < 1e-6);
  } finally {
    await session.release();
  }
});
