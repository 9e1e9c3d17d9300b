// The native tree scorer against onnxruntime: models our trainer exports and hand-built tree
// ensembles with every branch mode, missing-value track, base value, aggregate and post transform
// give the same scores (within 1e-6) on random rows with NaN and values on and beside every
// threshold; models it does not implement are refused, and loadModel picks the scorer as told.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { compileTreeScorer, UnsupportedModel, type TreeScorer } from "../../server/tree-scorer.js";
import { loadModel, ModelLoadError } from "../../server/onnx-model.js";
import { createRandom, trainGbdt } from "../../trainer/gbdt.js";
import { exportOnnx, ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME } from "../../trainer/onnx-export.js";
import { logisticModel, treeEnsembleModel, type TreeEnsembleSpec, type TreeNodeSpec } from "../fixtures/onnx-models.js";
import type { FeatureSpec, ModelVersion } from "../../lib/registry.js";
import { testRuntime, waitFor } from "../helpers.js";
import { startServing } from "./harness.js";
import { serverOptionsFromFlags } from "../../cli/commands/serve.js";
import { parseArgs, UsageError } from "../../cli/args.js";

async function onnxruntimeScores(bytes: Uint8Array, output: string, matrix: Float32Array, rows: number, width: number): Promise<Float64Array> {
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  try {
    const out = (await session.run({ features: new ort.Tensor("float32", matrix, [rows, width]) }))[output]!;
    const cols = out.dims.length > 1 ? Number(out.dims[1]) : 1;
    const data = out.data as Float32Array;
    return Float64Array.from({ length: rows }, (_, r) => data[r * cols + cols - 1]!);
  } finally {
    await session.release();
  }
}

/** Rows of uniform values in [lo, hi), with NaN and the given cut points (and the float32 next to them) mixed in. */
function randomRows(seed: number, rows: number, width: number, cuts: number[], lo = -2, hi = 12, nanShare = 0.15): Float32Array {
  const rand = createRandom(seed);
  const f32 = new Float32Array(1);
  return Float32Array.from({ length: rows * width }, () => {
    const p = rand();
    if (p < nanShare) return Number.NaN;
    if (p < 0.15) return lo + rand() * (hi - lo);
    if (p < 0.35 && cuts.length) {
      f32[0] = cuts[Math.floor(rand() * cuts.length)]!;
      const u = new Uint32Array(f32.buffer);
      if (rand() < 0.5 && f32[0] !== 0) u[0]! += rand() < 0.5 ? 1 : -1;
      return f32[0]!;
    }
    if (p < 0.45) return Math.floor(rand() * 6);
    return lo + rand() * (hi - lo);
  });
}

async function assertParity(scorer: TreeScorer, bytes: Uint8Array, output: string, matrix: Float32Array, rows: number, width: number): Promise<void> {
  const expected = await onnxruntimeScores(bytes, output, matrix, rows, width);
  const got = scorer.score(matrix, rows);
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    const diff = Math.abs(got[r]! - expected[r]!);
    assert.ok(diff <= 1e-6, `row ${r}: native ${got[r]} vs onnxruntime ${expected[r]} (${scorer.layout})`);
    worst = Math.max(worst, diff);
  }
  assert.ok(Number.isFinite(worst));
}

function trainedModel(seed: number, options: { trees: number; depth: number; minLeaf?: number; numericOnly?: boolean }) {
  const rand = createRandom(seed);
  const F = 6;
  const n = 6000;
  const columns = Array.from({ length: F }, (_, f) =>
    Float64Array.from({ length: n }, () => (f === 2 ? Math.floor(rand() * 5) : rand() < 0.12 ? Number.NaN : rand() * 10)),
  );
  const labels = Float64Array.from({ length: n }, (_, i) => (columns[0]![i]! + (columns[1]![i]! || 5) * rand() + (columns[2]![i] === 3 ? 4 : 0) > 9 ? 1 : 0));
  const model = trainGbdt(
    { columns, labels, categorical: columns.map((_, f) => f === 2 && !options.numericOnly) },
    { numTrees: options.trees, maxDepth: options.depth, minSamplesLeaf: options.minLeaf ?? 20 },
  );
  const cuts = model.trees.flatMap((t) => [...t.threshold].filter((_, i) => t.feature[i]! >= 0));
  return { bytes: exportOnnx(model), F, cuts };
}

describe("native tree scorer: parity with onnxruntime", () => {
  for (const [seed, opts] of [
    [1, { trees: 100, depth: 5 }],
    [2, { trees: 40, depth: 8, minLeaf: 200 }],
    [3, { trees: 7, depth: 2 }],
  ] as const) {
    it(`scores trainer models like onnxruntime (${opts.trees} trees, depth ${opts.depth}), both layouts`, async () => {
      const { bytes, F, cuts } = trainedModel(seed, opts);
      const io = { inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME };
      const rows = 3000;
      const matrix = randomRows(seed + 100, rows, F, cuts);
      const perfect = compileTreeScorer(bytes, io, F);
      assert.match(perfect.layout, /perfect binary trees of depth \d+/);
      await assertParity(perfect, bytes, ONNX_PROBABILITIES_NAME, matrix, rows, F);
      await assertParity(compileTreeScorer(bytes, io, F, "nodes"), bytes, ONNX_PROBABILITIES_NAME, matrix, rows, F);
    });
  }

  it("scores rows without NaN of a numeric-only model (one compare a step) like onnxruntime", async () => {
    const { bytes, F, cuts } = trainedModel(8, { trees: 60, depth: 5, numericOnly: true });
    const io = { inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME };
    const rows = 3000;
    await assertParity(compileTreeScorer(bytes, io, F), bytes, ONNX_PROBABILITIES_NAME, randomRows(81, rows, F, cuts, -2, 12, 0), rows, F);
  });

  const branch = (mode: Exclude<TreeNodeSpec["mode"], "LEAF">, feature: number, value: number, t: number, f: number, nanTrue = false): TreeNodeSpec => ({
    mode,
    feature,
    value,
    true: t,
    false: f,
    nanTrue,
  });
  const leaf = (...weights: number[]): TreeNodeSpec => ({ mode: "LEAF", weights });
  const modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"] as const;
  // An unbalanced tree per mode and missing track, thresholds on small integers so EQ and the boundaries are hit.
  const trees: TreeNodeSpec[][] = modes.flatMap((mode, m) =>
    [false, true].map((nanTrue) => [
      branch(mode, m % 3, 2, 1, 2, nanTrue),
      branch(modes[(m + 1) % 6]!, (m + 1) % 3, 3, 3, 4, !nanTrue),
      leaf(0.5 + m, -0.25),
      leaf(-1.5, 2 - m),
      branch(mode, 2, 1, 5, 6, nanTrue),
      leaf(0.125, 0.75),
      leaf(-0.375 * m, 1.25),
    ]),
  );
  const cases: [string, TreeEnsembleSpec, string][] = [
    ["every branch mode and missing track, SUM, base value", { features: 3, trees, baseValues: [0.3] }, "score"],
    [
      "two targets (the last column scores), AVERAGE, LOGISTIC",
      { features: 3, trees, nTargets: 2, baseValues: [0.1, -0.2], aggregate: "AVERAGE", postTransform: "LOGISTIC" },
      "score",
    ],
    ["the trainer's Sigmoid and Concat after the ensemble", { features: 3, trees, after: "sigmoid-concat" }, "probabilities"],
    ["Mul, Add and Identity by constants", { features: 3, trees, nTargets: 2, after: "affine" }, "score"],
  ];
  for (const [name, spec, output] of cases) {
    it(`scores a hand-built ensemble like onnxruntime: ${name}`, async () => {
      const bytes = treeEnsembleModel(spec);
      const rows = 4000;
      const matrix = randomRows(7, rows, spec.features, [1, 2, 3], -1, 5);
      const io = { inputName: "features", outputName: output };
      await assertParity(compileTreeScorer(bytes, io, spec.features), bytes, output, matrix, rows, spec.features);
      await assertParity(compileTreeScorer(bytes, io, spec.features, "nodes"), bytes, output, matrix, rows, spec.features);
    });
  }

  it("reads rows of a wider matrix (the logged features after the model's)", async () => {
    const { bytes, F, cuts } = trainedModel(4, { trees: 20, depth: 4 });
    const scorer = compileTreeScorer(bytes, { inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME }, F);
    const rows = 50;
    const narrow = randomRows(9, rows, F, cuts);
    const wide = new Float32Array(rows * (F + 3)).fill(123);
    for (let r = 0; r < rows; r++) wide.set(narrow.subarray(r * F, (r + 1) * F), r * (F + 3));
    assert.deepEqual(scorer.score(wide, rows, F + 3), scorer.score(narrow, rows));
  });
});

describe("native tree scorer: what it refuses", () => {
  const io = { inputName: "features", outputName: "score" };
  const simple: TreeNodeSpec[][] = [
    [
      { mode: "BRANCH_LEQ", feature: 0, value: 1, true: 1, false: 2 },
      { mode: "LEAF", weights: [1] },
      { mode: "LEAF", weights: [2] },
    ],
  ];

  it("refuses models that are no tree ensemble, naming the op", () => {
    assert.throws(
      () => compileTreeScorer(logisticModel([1, 2], 0), io, 2),
      (err: Error) => err instanceof UnsupportedModel && /Sigmoid|Add|MatMul/.test(err.message),
    );
  });
  it("refuses post transforms and aggregates it does not implement", () => {
    assert.throws(() => compileTreeScorer(treeEnsembleModel({ features: 1, trees: simple, postTransform: "SOFTMAX" }), io, 1), /post_transform SOFTMAX/);
    assert.throws(() => compileTreeScorer(treeEnsembleModel({ features: 1, trees: simple, aggregate: "MAX" }), io, 1), /aggregate_function MAX/);
  });
  it("refuses a tree that reads a feature beyond the input", () => {
    assert.throws(() => compileTreeScorer(treeEnsembleModel({ features: 1, trees: simple }), io, 0), /reads feature 0 of 0/);
  });
});

describe("loadModel's scorer choice", () => {
  const version = (features: number): ModelVersion =>
    ({
      name: "m",
      version: "1",
      features: Array.from({ length: features }, (_, i): FeatureSpec => ({ name: `f${i}`, source: "user", type: "numeric", default: 0 })),
      artifact: { size: 0 },
    }) as unknown as ModelVersion;

  it("auto scores a trainer model natively, and a logistic model with onnxruntime (saying why)", async () => {
    const { bytes, F, cuts } = trainedModel(5, { trees: 30, depth: 5 });
    const trees = await loadModel({ ...version(F), inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME }, bytes);
    const logistic = await loadModel({ ...version(2), inputName: "features", outputName: "score" }, logisticModel([1, -1], 0));
    try {
      assert.equal(trees.scorer, "native");
      const rows = 200;
      const matrix = randomRows(11, rows, F, cuts);
      const native = (await trees.score(matrix, rows)) as Float64Array;
      const reference = await trees.scoreWithOnnxruntime(matrix, rows);
      for (let r = 0; r < rows; r++) assert.ok(Math.abs(native[r]! - reference[r]!) <= 1e-6);
      assert.equal(logistic.scorer, "onnxruntime");
      assert.match(logistic.nativeUnavailable ?? "", /MatMul|Sigmoid|Add/);
    } finally {
      await trees.release();
      await logistic.release();
    }
  });

  it("onnxruntime is used when asked; native refuses a model it cannot score", async () => {
    const { bytes, F } = trainedModel(6, { trees: 10, depth: 3 });
    const m = await loadModel({ ...version(F), inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME }, bytes, { scorer: "onnxruntime" });
    assert.equal(m.scorer, "onnxruntime");
    await m.release();
    await assert.rejects(
      loadModel({ ...version(2), inputName: "features", outputName: "score" }, logisticModel([1, -1], 0), { scorer: "native" }),
      (err: Error) => err instanceof ModelLoadError && /--scorer native cannot score this model/.test(err.message),
    );
  });
});

describe("Recommend with each scorer", () => {
  it("answers the same ranking and scores natively as with --scorer onnxruntime, and serve names the choices", async () => {
    const { bytes, F } = trainedModel(12, { trees: 50, depth: 5 });
    const features = Array.from(
      { length: F },
      (_, i): FeatureSpec => ({ name: `f${i}`, source: i < 2 ? "user" : "item", type: "numeric", default: i === 3 ? Number.NaN : 1 }),
    );
    const rt = testRuntime();
    try {
      const registry = await rt.registry();
      const mv = await registry.publish({ name: "recommender", artifact: bytes, features, inputName: ONNX_INPUT_NAME, outputName: ONNX_PROBABILITIES_NAME });
      await registry.setAlias("recommender", "production", mv.version);
      const redis = rt.redis();
      await redis.hset(rt.names.userFeaturesKey("u1"), { f0: "3.5", f1: "7" });
      const items = Array.from({ length: 12 }, (_, i) => `item${i}`);
      for (const [i, item] of items.entries())
        if (i % 4 !== 0) await redis.hset(rt.names.itemFeaturesKey(item), { f2: String(i % 5), f3: String(i * 0.7), f4: String(10 - i), f5: String(i) });
      const answers: { itemId: string; score: number }[][] = [];
      for (const scorer of ["native", "onnxruntime"] as const) {
        const serving = await startServing(rt, { http: false, scorer });
        try {
          await waitFor(() => serving.server.models.servedVersion("recommender") === mv.version, 15_000, "model loaded");
          const served = serving.server.models.acquire("recommender")!;
          serving.server.models.release(served);
          assert.equal(served.scorer, scorer);
          answers.push((await serving.client.recommend({ userId: "u1", candidates: items })).recommendations);
        } finally {
          await serving.close();
        }
      }
      assert.deepEqual(
        answers[0]!.map((r) => r.itemId),
        answers[1]!.map((r) => r.itemId),
      );
      answers[0]!.forEach((r, i) => assert.ok(Math.abs(r.score - answers[1]![i]!.score) <= 1e-6, `${r.itemId}: ${r.score} vs ${answers[1]![i]!.score}`));
    } finally {
      await rt.cleanup();
    }
    assert.equal(serverOptionsFromFlags(parseArgs(["--scorer", "native"])).scorer, "native");
    assert.equal(serverOptionsFromFlags(parseArgs([])).scorer, undefined);
    assert.throws(
      () => serverOptionsFromFlags(parseArgs(["--scorer", "fast"])),
      (e: Error) => e instanceof UsageError && /auto, onnxruntime, native/.test(e.message),
    );
  });
});
