// Trainer benchmark: training time and rows/s of the gradient-boosted trees on 1,000,000 rows ×
// 10 features (100 trees, depth 5), and batch inference of the exported ONNX model through
// onnxruntime-node, with per-row calls of the same session as the baseline measured in the run.

import * as ort from "onnxruntime-node";
import { createRandom, predictProbaColumns, trainGbdt, type GbdtData } from "../trainer/gbdt.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME, exportOnnx } from "../trainer/onnx-export.js";
import { auc } from "../trainer/metrics.js";

export interface TrainerBenchOptions {
  /** @default 1_000_000 */
  rows?: number;
  /** @default 10 */
  features?: number;
  /** @default 100 */
  trees?: number;
  /** @default 5 */
  depth?: number;
}

export const TRAINER_BENCH_DEFAULTS: Readonly<Required<TrainerBenchOptions>> = Object.freeze({
  rows: 1_000_000,
  features: 10,
  trees: 100,
  depth: 5,
});

/** A noisy logistic target over a mix of numeric, missing and categorical inputs. */
function syntheticData(rows: number, features: number, seed: number): GbdtData {
  const rand = createRandom(seed);
  const columns = Array.from({ length: features }, () => new Float32Array(rows));
  const categorical = Array.from({ length: features }, (_, f) => f === features - 1);
  const labels = new Uint8Array(rows);
  for (let r = 0; r < rows; r++) {
    let z = -0.5;
    for (let f = 0; f < features; f++) {
      if (categorical[f]) {
        const code = Math.floor(rand() * 20);
        columns[f][r] = code;
        z += code % 3 === 0 ? 0.8 : 0;
      } else {
        const v = rand() * 2 - 1;
        columns[f][r] = f === 1 && rand() < 0.05 ? NaN : v;
        z += (f % 2 === 0 ? 1.2 : -0.7) * v * (f < 4 ? 1 : 0.3) + (f === 2 ? v * v : 0);
      }
    }
    labels[r] = rand() < 1 / (1 + Math.exp(-z)) ? 1 : 0;
  }
  return { columns, labels, categorical, featureNames: columns.map((_, f) => `f${f}`) };
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

export async function benchTrainer(options: TrainerBenchOptions = {}): Promise<void> {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const o: Required<TrainerBenchOptions> = { ...TRAINER_BENCH_DEFAULTS, ...given };
  console.log(`\n## trainer: ${fmt(o.rows)} rows × ${o.features} features, ${o.trees} trees, depth ${o.depth} (one core)`);
  const data = syntheticData(o.rows, o.features, 7);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const model = trainGbdt(data, { numTrees: o.trees, maxDepth: o.depth });
  const trainMs = performance.now() - t0;
  // CPU time too: on a shared machine the wall clock includes waiting for a core.
  const cpu = process.cpuUsage(cpu0);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  console.log(
    `train        ${fmt(trainMs / 1000, 2)} s wall (${fmt(cpuS, 2)} s CPU)   ${fmt(o.rows / (trainMs / 1000))} rows/s   ${fmt((o.rows * o.trees) / (trainMs / 1000) / 1e6, 1)} M row-trees/s`,
  );

  const holdout = syntheticData(100_000, o.features, 8);
  const p = predictProbaColumns(model, holdout.columns);
  console.log(`holdout AUC  ${auc(holdout.labels, p).toFixed(4)}`);

  const bytes = exportOnnx(model);
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  console.log(`onnx model   ${fmt(bytes.length / 1024)} KiB`);
  const F = o.features;
  const run = async (start: number, count: number) => {
    const x = new Float32Array(count * F);
    for (let i = 0; i < count; i++) for (let f = 0; f < F; f++) x[i * F + f] = holdout.columns[f][start + i];
    const out = await session.run({ [ONNX_INPUT_NAME]: new ort.Tensor("float32", x, [count, F]) });
    return out[ONNX_PROBABILITIES_NAME].data as Float32Array;
  };
  await run(0, 100); // warm-up

  // Baseline: the same session called once per row (what a naive server loop would do).
  const perRowN = 2_000;
  let t = performance.now();
  for (let i = 0; i < perRowN; i++) await run(i, 1);
  const perRowUs = ((performance.now() - t) * 1000) / perRowN;
  console.log(`onnx per-row ${fmt(perRowUs, 1)} µs/row   (baseline: ${fmt(perRowN)} single-row calls)`);

  for (const batch of [100, 1_000, 10_000]) {
    const reps = Math.max(3, Math.floor(50_000 / batch));
    t = performance.now();
    for (let i = 0; i < reps; i++) await run((i * batch) % (100_000 - batch), batch);
    const ms = (performance.now() - t) / reps;
    console.log(
      `onnx batch ${String(batch).padStart(6)}  ${fmt(ms, 2)} ms/batch   ${fmt((ms * 1000) / batch, 2)} µs/row   ${fmt(perRowUs / ((ms * 1000) / batch), 1)}× per-row`,
    );
  }
  await session.release();
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = process.env.BENCH_TRAINER_ROWS ? Number(process.env.BENCH_TRAINER_ROWS) : undefined;
  await benchTrainer({ rows });
}
