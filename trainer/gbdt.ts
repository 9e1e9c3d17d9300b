// Histogram-based gradient-boosted decision trees for binary classification (log-loss): the
// options, the model, the boosting loop and prediction. The pieces: gbdt-binning.ts (quantise each
// feature once into a byte), gbdt-histogram.ts (the row passes: gradients, histograms, moving rows
// to children), gbdt-split.ts (best split from a histogram), gbdt-grow.ts (one tree, level by
// level), gbdt-threads.ts (the row passes on several threads over shared memory).
//
// Float32 parity: the exported ONNX model compares float32 inputs with float32 thresholds, so
// binning, thresholds and prediction all work on Math.fround(x). A split "bin <= t" is exactly
// "fround(x) <= edge[t]" because the edges are float32 values taken from the data.
// Same data, options and seed give the same model; `threads` is one of the options, since
// summing a histogram in two halves rounds differently from one pass (README, Training).

import { emitWarning } from "node:process";
import { binColumns } from "./gbdt-binning.js";
import { startTree, growTree, type GrowContext } from "./gbdt-grow.js";
import { allocateArena, rootCounts } from "./gbdt-histogram.js";
import { soloTeam, startTeam, type Team } from "./gbdt-threads.js";

export { MAX_CATEGORY_CODE, MISSING_BIN } from "./gbdt-histogram.js";
export { quantileEdges } from "./gbdt-binning.js";

/** Below this many rows per thread, a worker thread costs more than it saves. */
export const MIN_ROWS_PER_THREAD = 50_000;
/** How long training waits for its worker threads to start before going on alone. */
const THREAD_START_TIMEOUT_MS = 30_000;

/** Training options. Every field is optional; defaults are in {@link GBDT_DEFAULTS}. */
export interface GbdtOptions {
  /** Number of boosting rounds. @default 100 */
  numTrees?: number;
  /** Maximum depth of each tree (a depth-1 tree is a stump). @default 5 */
  maxDepth?: number;
  /** Shrinkage applied to every leaf value. @default 0.1 */
  learningRate?: number;
  /** Minimum number of training rows in a leaf. @default 20 */
  minSamplesLeaf?: number;
  /** Minimum sum of hessians in a leaf; guards against leaves of near-certain rows. @default 1e-3 */
  minHessianLeaf?: number;
  /** L2 regularisation on leaf values. @default 1 */
  lambda?: number;
  /** Minimum gain for a split to be made. @default 0 */
  minSplitGain?: number;
  /** Maximum number of value bins per numeric feature (1..255; NaN has its own bin besides). @default 255 */
  maxBins?: number;
  /** Rows sampled to find the quantile bin edges (all rows when fewer). @default 200000 */
  binSampleSize?: number;
  /** Seed for every random choice (the binning sample). Same data, options and seed → same model. @default 42 */
  seed?: number;
  /**
   * Threads building histograms (this one included), at most one per MIN_ROWS_PER_THREAD rows; the
   * model records the number used. Not the core count, so that a model is reproducible anywhere.
   * @default 1 (on a shared 2-core machine a second thread had no idle core to run on: README, Training)
   */
  threads?: number;
}

export type ResolvedGbdtOptions = Required<GbdtOptions>;

export const GBDT_DEFAULTS: Readonly<ResolvedGbdtOptions> = Object.freeze({
  numTrees: 100,
  maxDepth: 5,
  learningRate: 0.1,
  minSamplesLeaf: 20,
  minHessianLeaf: 1e-3,
  lambda: 1,
  minSplitGain: 0,
  maxBins: 255,
  binSampleSize: 200_000,
  seed: 42,
  threads: 1,
});

export function resolveGbdtOptions(options: GbdtOptions = {}): ResolvedGbdtOptions {
  const o = { ...GBDT_DEFAULTS } as ResolvedGbdtOptions;
  for (const [k, v] of Object.entries(options)) if (v !== undefined) (o as unknown as Record<string, number>)[k] = v as number;
  const intAtLeast = (name: keyof ResolvedGbdtOptions, min: number, max = Infinity) => {
    const v = o[name];
    if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`gbdt option ${name} must be an integer in [${min}, ${max}], got ${v}`);
  };
  intAtLeast("numTrees", 1);
  intAtLeast("maxDepth", 1, 20);
  intAtLeast("minSamplesLeaf", 1);
  intAtLeast("maxBins", 2, 255);
  intAtLeast("binSampleSize", 1000);
  intAtLeast("threads", 1, 64);
  if (!(o.learningRate > 0)) throw new RangeError(`gbdt option learningRate must be > 0, got ${o.learningRate}`);
  if (!(o.lambda >= 0)) throw new RangeError(`gbdt option lambda must be >= 0, got ${o.lambda}`);
  if (!(o.minHessianLeaf >= 0)) throw new RangeError(`gbdt option minHessianLeaf must be >= 0, got ${o.minHessianLeaf}`);
  return Object.freeze(o);
}

/** Training data, one typed array per feature (column-major), all of the same length as labels. */
export interface GbdtData {
  columns: ArrayLike<number>[];
  /** 0 or 1 per row. */
  labels: ArrayLike<number>;
  /** Feature names in column order; default f0, f1, … */
  featureNames?: string[];
  /** true for a categorical column: its values are vocabulary codes 0..k-1 (NaN = unknown). */
  categorical?: boolean[];
}

/**
 * One tree as parallel arrays indexed by node id; node 0 is the root.
 * A split node sends a row to `left` when `x <= threshold` (numeric) or `x == threshold`
 * (categorical), to `right` otherwise, and a NaN to `left` when `missingLeft` is 1.
 */
export interface GbdtTree {
  /** Feature index, or -1 for a leaf. */
  feature: Int32Array;
  /** Float32 threshold (numeric) or category code (categorical). */
  threshold: Float32Array;
  /** 1 when the split is "equals a category code". */
  categorical: Uint8Array;
  missingLeft: Uint8Array;
  left: Int32Array;
  right: Int32Array;
  /** Leaf value (already multiplied by the learning rate, rounded to float32 as exported); 0 for split nodes. */
  value: Float64Array;
  /** Training rows that reached each node. */
  count: Float64Array;
}

export interface GbdtModel {
  featureNames: string[];
  categorical: boolean[];
  /** Log-odds of the training prior, rounded to float32 as exported. */
  baseScore: number;
  trees: GbdtTree[];
  params: ResolvedGbdtOptions;
  /** Total split gain per feature, a rough importance. */
  featureGain: number[];
}

export interface GbdtProgress {
  tree: number;
  numTrees: number;
  /** Training log-loss before this tree was added. */
  trainLogLoss: number;
  elapsedMs: number;
}

/** Small deterministic PRNG (splitmix32): uniform in [0, 1). */
export function createRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  };
}

export function sigmoid(x: number): number {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

// ---------------------------------------------------------------------------------------------
// Training

/**
 * Trains a binary classifier. Labels must contain both classes. `onProgress` is called once per
 * tree, before it is grown, with the training log-loss so far.
 */
export function trainGbdt(data: GbdtData, options: GbdtOptions = {}, onProgress?: (p: GbdtProgress) => void): GbdtModel {
  const resolved = resolveGbdtOptions(options);
  const F = data.columns.length;
  const n = data.labels.length;
  if (F === 0) throw new Error("gbdt: no feature columns");
  if (F > 65535) throw new Error("gbdt: too many features");
  for (let f = 0; f < F; f++) {
    if (data.columns[f].length !== n) throw new Error(`gbdt: column ${f} has ${data.columns[f].length} rows, labels have ${n}`);
  }
  const featureNames = data.featureNames ?? Array.from({ length: F }, (_, f) => `f${f}`);
  if (featureNames.length !== F) throw new Error(`gbdt: ${featureNames.length} feature names for ${F} columns`);
  const categorical = data.categorical ?? new Array<boolean>(F).fill(false);
  if (categorical.length !== F) throw new Error(`gbdt: ${categorical.length} categorical flags for ${F} columns`);
  const y = new Uint8Array(n);
  let positives = 0;
  for (let r = 0; r < n; r++) {
    const v = data.labels[r];
    if (v !== 0 && v !== 1) throw new Error(`gbdt: label at row ${r} is ${v}, expected 0 or 1`);
    y[r] = v;
    positives += v;
  }
  if (positives === 0 || positives === n) {
    throw new Error(`gbdt: labels need both classes (${positives} positives of ${n} rows)`);
  }

  const started = performance.now();
  const threads = Math.max(1, Math.min(resolved.threads, Math.floor(n / MIN_ROWS_PER_THREAD)));
  const { maxDepth, minSamplesLeaf } = resolved;
  // A tree has at most n / minSamplesLeaf leaves and 2^maxDepth leaves, so this many nodes.
  const capacity = Math.min(2 ** (maxDepth + 1) - 1, 2 * Math.floor(n / minSamplesLeaf) + 1);
  const slots = Math.min(2 ** (maxDepth - 1), 64);
  const arena = allocateArena(n, F, threads, slots, threads > 1);
  arena.y.set(y);
  // The workers start while this thread bins the data.
  const starting = threads > 1 ? startTeam(arena) : null;
  let team: Team = starting ?? soloTeam(arena);
  try {
    const { edges, numBins } = binColumns(
      data.columns,
      categorical,
      n,
      arena.bins,
      arena.colBins,
      resolved.maxBins,
      resolved.binSampleSize,
      createRandom(resolved.seed),
    );
    if (starting && !starting.ready(THREAD_START_TIMEOUT_MS)) {
      emitWarning(`gbdt: ${threads - 1} worker thread(s) did not start within ${THREAD_START_TIMEOUT_MS / 1000} s; training on one thread`);
      starting.close();
      arena.threads = 1;
      team = soloTeam(arena);
    }
    const opts: ResolvedGbdtOptions = Object.freeze({ ...resolved, threads: arena.threads });
    const prior = positives / n;
    const baseScore = Math.fround(Math.log(prior / (1 - prior)));
    arena.expNeg.fill(Math.exp(-baseScore));
    const ctx: GrowContext = {
      arena,
      team,
      rules: { lambda: opts.lambda, minSamplesLeaf, minHessianLeaf: opts.minHessianLeaf, minSplitGain: opts.minSplitGain, numBins, categorical },
      edges,
      maxDepth,
      learningRate: opts.learningRate,
      capacity,
      featureGain: new Array<number>(F).fill(0),
      pool: [],
      rootCounts: rootCounts(arena),
    };
    const trees: GbdtTree[] = [];
    for (let t = 0; t < opts.numTrees; t++) {
      const { loss, rootHist } = startTree(ctx, onProgress !== undefined);
      onProgress?.({ tree: t, numTrees: opts.numTrees, trainLogLoss: loss, elapsedMs: performance.now() - started });
      trees.push(growTree(ctx, rootHist));
    }
    return { featureNames: [...featureNames], categorical: [...categorical], baseScore, trees, params: opts, featureGain: ctx.featureGain };
  } finally {
    team.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Prediction

function treeValue(tree: GbdtTree, row: ArrayLike<number>): number {
  let i = 0;
  while (tree.feature[i] >= 0) {
    const x = Math.fround(row[tree.feature[i]]);
    const goLeft = Number.isNaN(x) ? tree.missingLeft[i] === 1 : tree.categorical[i] === 1 ? x === tree.threshold[i] : x <= tree.threshold[i];
    i = goLeft ? tree.left[i] : tree.right[i];
  }
  return tree.value[i];
}

/** Raw score (log-odds) of one row given in the model's feature order. */
export function predictMargin(model: GbdtModel, row: ArrayLike<number>): number {
  if (row.length !== model.featureNames.length) {
    throw new Error(`gbdt: row has ${row.length} values, model expects ${model.featureNames.length}`);
  }
  let s = model.baseScore;
  for (const tree of model.trees) s += treeValue(tree, row);
  return s;
}

/** P(positive) for one row, or for each of several rows. */
export function predictProba(model: GbdtModel, row: ArrayLike<number>): number;
export function predictProba(model: GbdtModel, rows: ArrayLike<number>[]): Float64Array;
export function predictProba(model: GbdtModel, input: ArrayLike<number> | ArrayLike<number>[]): number | Float64Array {
  if (input.length > 0 && typeof input[0] === "object") {
    const rows = input as ArrayLike<number>[];
    const out = new Float64Array(rows.length);
    for (let i = 0; i < rows.length; i++) out[i] = sigmoid(predictMargin(model, rows[i]));
    return out;
  }
  return sigmoid(predictMargin(model, input as ArrayLike<number>));
}

/** P(positive) for every row of column-major data (the layout trainGbdt takes). */
export function predictProbaColumns(model: GbdtModel, columns: ArrayLike<number>[]): Float64Array {
  const F = model.featureNames.length;
  if (columns.length !== F) throw new Error(`gbdt: ${columns.length} columns, model expects ${F}`);
  const n = F === 0 ? 0 : columns[0].length;
  const out = new Float64Array(n);
  const row = new Float64Array(F);
  for (let r = 0; r < n; r++) {
    for (let f = 0; f < F; f++) row[f] = columns[f][r];
    out[r] = sigmoid(predictMargin(model, row));
  }
  return out;
}
