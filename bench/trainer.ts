// Trainer benchmark: training time of the gradient-boosted trees on 1,000,000 rows × 10 features
// (100 trees, depth 5) on one and on two threads, next to XGBoost hist on one thread trained on the
// same rows in the same run (bench/trainer-xgboost.py, when python3 has xgboost), with the holdout
// AUC of each; then batch inference of the exported ONNX model through onnxruntime-node, with
// per-row calls of the same session as the baseline.

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { createRandom, predictProbaColumns, trainGbdt, type GbdtData, type GbdtModel } from "../trainer/gbdt.js";
import { ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME, exportOnnx } from "../trainer/onnx-export.js";
import { auc } from "../trainer/metrics.js";
import { definedFields, withDefaults } from "../lib/options.js";

/** XGBoost 1.7.4 (Debian's python3-xgboost), hist, one thread, on this benchmark: recorded on the project's 2-core machine. */
const XGBOOST_REFERENCE_S = 9.1;
const HOLDOUT_ROWS = 100_000;
const LEARNING_RATE = 0.1;

export interface TrainerBenchOptions {
  /** @default 1_000_000 */
  rows?: number;
  /** @default 10 */
  features?: number;
  /** @default 100 */
  trees?: number;
  /** @default 5 */
  depth?: number;
  /** Runs of each trainer, to show the machine's noise. @default 3 */
  reps?: number;
}

export const TRAINER_BENCH_DEFAULTS: Readonly<Required<TrainerBenchOptions>> = Object.freeze({
  rows: 1_000_000,
  features: 10,
  trees: 100,
  depth: 5,
  reps: 3,
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

interface Run {
  wallS: number;
  cpuS: number;
}

/** "min – max (median)" of some runs' seconds. */
function range(values: number[]): string {
  const v = [...values].sort((x, y) => x - y);
  return `${fmt(v[0], 2)}–${fmt(v[v.length - 1], 2)} s (median ${fmt(median(v), 2)})`;
}

const median = (values: number[]) => {
  const v = [...values].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(", ");

function trainOurs(data: GbdtData, o: Required<TrainerBenchOptions>, threads: number): { run: Run; model: GbdtModel } {
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const model = trainGbdt(data, { numTrees: o.trees, maxDepth: o.depth, learningRate: LEARNING_RATE, threads });
  // CPU time too (every thread of the process): on a shared machine the wall clock includes waiting for a core.
  const cpu = process.cpuUsage(cpu0);
  return { run: { wallS: (performance.now() - t0) / 1000, cpuS: (cpu.user + cpu.system) / 1e6 }, model };
}

/** The python3 that has xgboost, or undefined. */
function pythonWithXgboost(): string | undefined {
  for (const python of ["python3", "/usr/bin/python3"]) {
    const r = spawnSync(python, ["-c", "import xgboost"], { stdio: "ignore" });
    if (r.status === 0) return python;
  }
  return undefined;
}

/** Row-major float32 features and uint8 labels, as the XGBoost script reads them. */
function writeRows(dir: string, name: string, data: GbdtData): void {
  const n = data.labels.length;
  const F = data.columns.length;
  const x = new Float32Array(n * F);
  for (let r = 0; r < n; r++) for (let f = 0; f < F; f++) x[r * F + f] = data.columns[f][r];
  writeFileSync(join(dir, `${name}-x.f32`), x);
  writeFileSync(join(dir, `${name}-y.u8`), Uint8Array.from(data.labels));
}

function trainXgboost(python: string, dir: string, o: Required<TrainerBenchOptions>): { run: Run; version: string; holdout: Float64Array } {
  const script = join(dirname(fileURLToPath(import.meta.url)), "trainer-xgboost.py");
  const args = [script, dir, o.rows, o.features, HOLDOUT_ROWS, o.trees, o.depth, LEARNING_RATE, 1].map(String);
  const out = JSON.parse(execFileSync(python, args, { encoding: "utf8" }).trim().split("\n").pop()!) as { version: string; wall_s: number; cpu_s: number };
  const p = readFileSync(join(dir, "holdout-p.f64"));
  return { run: { wallS: out.wall_s, cpuS: out.cpu_s }, version: out.version, holdout: new Float64Array(new Uint8Array(p).buffer) };
}

export async function benchTrainer(options: TrainerBenchOptions = {}): Promise<void> {
  const env = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
  const fromEnv = { rows: env("BENCH_TRAINER_ROWS"), reps: env("BENCH_TRAINER_REPS") };
  const o: Required<TrainerBenchOptions> = withDefaults(TRAINER_BENCH_DEFAULTS, { ...definedFields(fromEnv), ...definedFields(options) });
  console.log(
    `\n## trainer: ${fmt(o.rows)} rows × ${o.features} features, ${o.trees} trees, depth ${o.depth}, learning rate ${LEARNING_RATE}; ${o.reps} runs each`,
  );
  console.log(`load average before: ${load()} (2 cores here: above 2 the wall clock includes waiting for a core; CPU time is the fairer figure)`);
  const data = syntheticData(o.rows, o.features, 7);
  const holdout = syntheticData(HOLDOUT_ROWS, o.features, 8);

  const python = pythonWithXgboost();
  const dir = mkdtempSync(join(tmpdir(), "bench-trainer-"));
  const runs: Record<string, Run[]> = { ours1: [], ours2: [], xgb: [] };
  let model: GbdtModel | undefined;
  let model2: GbdtModel | undefined;
  let xgb: ReturnType<typeof trainXgboost> | undefined;
  try {
    if (python) {
      writeRows(dir, "train", data);
      writeRows(dir, "holdout", holdout);
    }
    // Interleaved, so that a burst of load from elsewhere falls on all of them alike.
    for (let i = 0; i < o.reps; i++) {
      const one = trainOurs(data, o, 1);
      runs.ours1.push(one.run);
      model = one.model;
      const two = trainOurs(data, o, 2);
      runs.ours2.push(two.run);
      model2 = two.model;
      if (python) {
        xgb = trainXgboost(python, dir, o);
        runs.xgb.push(xgb.run);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const aucOf = (m: GbdtModel) => auc(holdout.labels, predictProbaColumns(m, holdout.columns)).toFixed(4);
  const line = (name: string, r: Run[], extra: string) =>
    console.log(`${name.padEnd(22)} wall ${range(r.map((x) => x.wallS))}   CPU ${range(r.map((x) => x.cpuS))}   ${extra}`);
  line("ours, 1 thread", runs.ours1, `holdout AUC ${aucOf(model!)}`);
  line("ours, 2 threads", runs.ours2, `holdout AUC ${aucOf(model2!)}   (${model2!.params.threads} used)`);
  const ours1 = median(runs.ours1.map((r) => r.wallS));
  const ours1Cpu = median(runs.ours1.map((r) => r.cpuS));
  const ours2 = median(runs.ours2.map((r) => r.wallS));
  if (xgb) {
    line(`xgboost ${xgb.version}, 1 thread`, runs.xgb, `holdout AUC ${auc(holdout.labels, xgb.holdout).toFixed(4)}   (baseline, same rows, same run)`);
    const x = median(runs.xgb.map((r) => r.wallS));
    const xCpu = median(runs.xgb.map((r) => r.cpuS));
    console.log(
      `ratio to xgboost        1 thread: ${fmt(ours1 / x, 2)}× wall, ${fmt(ours1Cpu / xCpu, 2)}× CPU (target ≤ 1.5×)   2 threads: ${fmt(ours2 / x, 2)}× wall`,
    );
  } else {
    console.log(
      `xgboost                not installed for python3 (apt-get install -y python3-xgboost, or pip install xgboost); recorded reference: ${XGBOOST_REFERENCE_S} s on 1 thread`,
    );
    console.log(
      `ratio to the reference  1 thread: ${fmt(ours1 / XGBOOST_REFERENCE_S, 2)}× wall (target ≤ 1.5×)   2 threads: ${fmt(ours2 / XGBOOST_REFERENCE_S, 2)}× wall`,
    );
  }
  console.log(`2 threads vs 1         ${fmt(ours1 / ours2, 2)}× faster (median wall)`);
  console.log(`load average after: ${load()}`);

  const bytes = exportOnnx(model!);
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
  await benchTrainer();
}
