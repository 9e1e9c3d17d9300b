// Histogram-based gradient-boosted decision trees for binary classification (log-loss).
//
// How it stays fast on one core: every feature value is binned once into a byte (up to 255 value
// bins, bin 255 for missing), stored row-major so that one row's bins share a cache line; a tree
// grows level by level, and each level is one sequential pass over all rows that moves every row
// to its child (a node id per row) and builds the histogram of the smaller child of each split;
// the larger child's histogram is the parent's minus it, computed in the parent's buffer.
// Histogram buffers are pooled across nodes and trees.
//
// Float32 parity: the exported ONNX model compares float32 inputs with float32 thresholds, so
// binning, thresholds and prediction all work on Math.fround(x). A split "bin <= t" is exactly
// "fround(x) <= edge[t]" because the edges are float32 values taken from the data.

/** Bin index reserved for NaN (a missing value) in every feature. */
export const MISSING_BIN = 255;
/** Categorical codes at or above this share one "other" bin, never a split candidate (so it always goes right, as in ONNX). */
export const MAX_CATEGORY_CODE = 253;
const OTHER_BIN = 254;
const HIST_STRIDE = 256 * 3; // per feature: 256 bins × (gradient, hessian, count)

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
// Binning

/**
 * Upper edges of the value bins of one numeric feature: bin b holds fround(x) <= edges[b]
 * (and > edges[b-1]); the last edge is +Infinity. `sorted` holds non-NaN float32 values in order.
 */
export function quantileEdges(sorted: Float64Array, maxBins: number): Float64Array {
  if (sorted.length === 0) return Float64Array.of(Infinity);
  const values: number[] = [];
  const counts: number[] = [];
  for (let i = 0; i < sorted.length; i++) {
    if (values.length > 0 && values[values.length - 1] === sorted[i]) counts[counts.length - 1]++;
    else values.push(sorted[i]), counts.push(1);
  }
  const edges: number[] = [];
  if (values.length <= maxBins) {
    for (let i = 0; i < values.length - 1; i++) edges.push(values[i]);
  } else {
    // Equal-frequency bins; the target is recomputed after each cut so that a heavy value
    // (taking a whole bin by itself) does not leave a run of tiny bins behind it.
    let remaining = sorted.length;
    let binsLeft = maxBins;
    let inBin = 0;
    for (let i = 0; i < values.length - 1 && binsLeft > 1; i++) {
      inBin += counts[i];
      if (inBin >= remaining / binsLeft) {
        edges.push(values[i]);
        remaining -= inBin;
        binsLeft--;
        inBin = 0;
      }
    }
  }
  edges.push(Infinity);
  return Float64Array.from(edges);
}

interface Binned {
  /** Row-major bins: bins[row * F + f]. */
  bins: Uint8Array;
  /** Per feature: bin edges (numeric) or null (categorical). */
  edges: (Float64Array | null)[];
  /** Per feature: number of value bins in use (split candidates are below this). */
  numBins: Int32Array;
}

function binData(data: GbdtData, n: number, opts: ResolvedGbdtOptions, categorical: boolean[]): Binned {
  const F = data.columns.length;
  const bins = new Uint8Array(n * F);
  const edges: (Float64Array | null)[] = [];
  const numBins = new Int32Array(F);
  // One sample of rows for all features, drawn with the seed.
  const rand = createRandom(opts.seed);
  const sampleSize = Math.min(n, opts.binSampleSize);
  const sample = new Uint32Array(sampleSize);
  for (let i = 0; i < sampleSize; i++) sample[i] = sampleSize === n ? i : Math.floor(rand() * n);
  const scratch = new Float64Array(sampleSize);
  for (let f = 0; f < F; f++) {
    const col = data.columns[f];
    if (categorical[f]) {
      edges.push(null);
      numBins[f] = OTHER_BIN;
      for (let r = 0, o = f; r < n; r++, o += F) {
        const v = col[r];
        bins[o] = Number.isNaN(v) ? MISSING_BIN : Number.isInteger(v) && v >= 0 && v <= MAX_CATEGORY_CODE ? v : OTHER_BIN;
      }
      continue;
    }
    let m = 0;
    for (let i = 0; i < sampleSize; i++) {
      const v = Math.fround(col[sample[i]]);
      if (!Number.isNaN(v)) scratch[m++] = v;
    }
    const sorted = scratch.subarray(0, m).sort();
    const e = quantileEdges(sorted, opts.maxBins);
    edges.push(e);
    numBins[f] = e.length;
    const last = e.length - 1;
    for (let r = 0, o = f; r < n; r++, o += F) {
      const v = Math.fround(col[r]);
      if (Number.isNaN(v)) {
        bins[o] = MISSING_BIN;
        continue;
      }
      // first b with v <= e[b]; e[last] is +Infinity so the search always lands
      let lo = 0;
      let hi = last;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (v <= e[mid]) hi = mid;
        else lo = mid + 1;
      }
      bins[o] = lo;
    }
  }
  return { bins, edges, numBins };
}

// ---------------------------------------------------------------------------------------------
// Histograms

/**
 * The root's histogram: gradient, hessian and count per (feature, bin) over every row. A
 * module-level function with everything passed in, because V8 keeps such loops tight.
 */
function buildRootHistogram(hist: Float64Array, bins: Uint8Array, F: number, grad: Float64Array, hess: Float64Array, n: number): void {
  hist.fill(0);
  for (let r = 0, o = 0; r < n; r++) {
    const g = grad[r];
    const h = hess[r];
    for (let base = 0; base < hist.length; base += HIST_STRIDE, o++) {
      const k = base + bins[o] * 3;
      hist[k] += g;
      hist[k + 1] += h;
      hist[k + 2] += 1;
    }
  }
}

/**
 * One sequential pass over all rows for a level: each row in a node split at this level moves to
 * its child (nodeOf), and a row that lands in a child marked in `buildInto` is added to that
 * child's histogram. Sequential access (rather than gathering each node's rows) keeps the
 * memory prefetcher busy, which is what this loop is bound by.
 */
function routeRows(
  n: number,
  F: number,
  bins: Uint8Array,
  grad: Float64Array,
  hess: Float64Array,
  nodeOf: Int32Array,
  tree: GbdtTree,
  splitBin: Int32Array,
  buildInto: (Float64Array | null)[],
): void {
  const { feature, categorical, missingLeft, left, right } = tree;
  for (let r = 0; r < n; r++) {
    const id = nodeOf[r];
    const f = feature[id];
    if (f < 0) continue; // a leaf: the row stays
    const b = bins[r * F + f];
    const goLeft = b === MISSING_BIN ? missingLeft[id] === 1 : categorical[id] === 1 ? b === splitBin[id] : b <= splitBin[id];
    const child = goLeft ? left[id] : right[id];
    nodeOf[r] = child;
    const hist = buildInto[child];
    if (hist === null) continue;
    const g = grad[r];
    const h = hess[r];
    let o = r * F;
    for (let base = 0; base < hist.length; base += HIST_STRIDE, o++) {
      const k = base + bins[o] * 3;
      hist[k] += g;
      hist[k + 1] += h;
      hist[k + 2] += 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Split search

interface Split {
  gain: number;
  feature: number;
  /** numeric: last bin on the left; categorical: the category code that goes left */
  bin: number;
  categorical: boolean;
  missingLeft: boolean;
  gl: number;
  hl: number;
  cl: number;
}

interface NodeWork {
  id: number;
  g: number;
  h: number;
  c: number;
  hist: Float64Array | null;
}

// ---------------------------------------------------------------------------------------------
// Training

/**
 * Trains a binary classifier. Labels must contain both classes. `onProgress` is called once per
 * tree, before it is grown, with the training log-loss so far.
 */
export function trainGbdt(data: GbdtData, options: GbdtOptions = {}, onProgress?: (p: GbdtProgress) => void): GbdtModel {
  const opts = resolveGbdtOptions(options);
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
  const { bins, edges, numBins } = binData(data, n, opts, categorical);
  const prior = positives / n;
  const baseScore = Math.fround(Math.log(prior / (1 - prior)));
  const { lambda, minSamplesLeaf, minHessianLeaf, minSplitGain, learningRate, maxDepth } = opts;

  const score = new Float64Array(n).fill(baseScore);
  const grad = new Float64Array(n);
  const hess = new Float64Array(n);
  /** The node each row is in, for the level being grown; a leaf's id once the tree is done. */
  const nodeOf = new Int32Array(n);
  const featureGain = new Array<number>(F).fill(0);
  const pool: Float64Array[] = [];
  const takeHist = () => pool.pop() ?? new Float64Array(F * HIST_STRIDE);
  const trees: GbdtTree[] = [];
  // A tree has at most n / minSamplesLeaf leaves and 2^maxDepth leaves, so this many nodes.
  const capacity = Math.min(2 ** (maxDepth + 1) - 1, 2 * Math.floor(n / minSamplesLeaf) + 1);
  const splitBin = new Int32Array(capacity);
  const buildInto: (Float64Array | null)[] = new Array(capacity).fill(null);

  const leafScore = (g: number, h: number) => (g * g) / (h + lambda);

  const findSplit = (node: NodeWork): Split | null => {
    const hist = node.hist!;
    const parentScore = leafScore(node.g, node.h);
    let best: Split | null = null;
    const consider = (gain: number, feature: number, bin: number, cat: boolean, missingLeft: boolean, gl: number, hl: number, cl: number) => {
      if (gain > minSplitGain && (best === null || gain > best.gain)) {
        best = { gain, feature, bin, categorical: cat, missingLeft, gl, hl, cl };
      }
    };
    const valid = (hl: number, cl: number, hr: number, cr: number) =>
      cl >= minSamplesLeaf && cr >= minSamplesLeaf && hl >= minHessianLeaf && hr >= minHessianLeaf;
    for (let f = 0; f < F; f++) {
      const base = f * HIST_STRIDE;
      const mk = base + MISSING_BIN * 3;
      const gm = hist[mk],
        hm = hist[mk + 1],
        cm = hist[mk + 2];
      const nb = numBins[f];
      if (categorical[f]) {
        for (let b = 0; b < nb; b++) {
          const k = base + b * 3;
          const cb = hist[k + 2];
          if (cb === 0) continue;
          const gb = hist[k],
            hb = hist[k + 1];
          // the category alone on the left, missing on the right …
          if (valid(hb, cb, node.h - hb, node.c - cb)) {
            const ml = cm === 0 && cb >= node.c - cb;
            consider(leafScore(gb, hb) + leafScore(node.g - gb, node.h - hb) - parentScore, f, b, true, ml, gb, hb, cb);
          }
          // … or missing with it
          if (cm > 0) {
            const gl = gb + gm,
              hl = hb + hm,
              cl = cb + cm;
            if (valid(hl, cl, node.h - hl, node.c - cl)) {
              consider(leafScore(gl, hl) + leafScore(node.g - gl, node.h - hl) - parentScore, f, b, true, true, gl, hl, cl);
            }
          }
        }
        continue;
      }
      let gc = 0,
        hc = 0,
        cc = 0;
      // The last value bin is a candidate only when there are missing values: it splits
      // "has a value" from "missing".
      const lastCandidate = cm > 0 ? nb - 1 : nb - 2;
      for (let b = 0; b <= lastCandidate; b++) {
        const k = base + b * 3;
        gc += hist[k];
        hc += hist[k + 1];
        cc += hist[k + 2];
        if (valid(hc, cc, node.h - hc, node.c - cc)) {
          // With no missing value at this node, NaN at inference follows the larger side.
          const ml = cm === 0 && cc >= node.c - cc;
          consider(leafScore(gc, hc) + leafScore(node.g - gc, node.h - hc) - parentScore, f, b, false, ml, gc, hc, cc);
        }
        if (cm > 0 && b < nb - 1) {
          const gl = gc + gm,
            hl = hc + hm,
            cl = cc + cm;
          if (valid(hl, cl, node.h - hl, node.c - cl)) {
            consider(leafScore(gl, hl) + leafScore(node.g - gl, node.h - hl) - parentScore, f, b, false, true, gl, hl, cl);
          }
        }
      }
    }
    return best;
  };

  for (let t = 0; t < opts.numTrees; t++) {
    // p = 1 / (1 + e^-s); log-loss = log(1 + e^-s) + (1 - y)·s, with s clamped so e^-s stays finite.
    let loss = 0;
    const wantLoss = onProgress !== undefined;
    for (let r = 0; r < n; r++) {
      const sc = Math.min(Math.max(score[r], -35), 35);
      const e = Math.exp(-sc);
      const p = 1 / (1 + e);
      grad[r] = p - y[r];
      hess[r] = p * (1 - p);
      if (wantLoss) loss += Math.log1p(e) + (1 - y[r]) * sc;
    }
    onProgress?.({ tree: t, numTrees: opts.numTrees, trainLogLoss: loss / n, elapsedMs: performance.now() - started });

    const tree: GbdtTree = {
      feature: new Int32Array(capacity).fill(-1),
      threshold: new Float32Array(capacity),
      categorical: new Uint8Array(capacity),
      missingLeft: new Uint8Array(capacity),
      left: new Int32Array(capacity).fill(-1),
      right: new Int32Array(capacity).fill(-1),
      value: new Float64Array(capacity),
      count: new Float64Array(capacity),
    };
    let nodes = 1;
    tree.count[0] = n;
    nodeOf.fill(0);
    const makeLeaf = (node: NodeWork) => {
      tree.value[node.id] = Math.fround((-node.g / (node.h + lambda)) * learningRate);
      if (node.hist) pool.push(node.hist), (node.hist = null);
    };

    const rootHist = takeHist();
    buildRootHistogram(rootHist, bins, F, grad, hess, n);
    let g0 = 0,
      h0 = 0;
    for (let b = 0; b < 256; b++) (g0 += rootHist[b * 3]), (h0 += rootHist[b * 3 + 1]);
    let level: NodeWork[] = [{ id: 0, g: g0, h: h0, c: n, hist: rootHist }];

    for (let depth = 0; depth < maxDepth && level.length > 0; depth++) {
      const next: NodeWork[] = [];
      const childrenAreLeaves = depth + 1 === maxDepth;
      const pending: [parent: Float64Array, small: NodeWork, large: NodeWork][] = [];
      for (const node of level) {
        const s = findSplit(node);
        if (s === null) {
          makeLeaf(node);
          continue;
        }
        featureGain[s.feature] += s.gain;
        const L: NodeWork = { id: nodes++, g: s.gl, h: s.hl, c: s.cl, hist: null };
        const R: NodeWork = { id: nodes++, g: node.g - s.gl, h: node.h - s.hl, c: node.c - s.cl, hist: null };
        const id = node.id;
        tree.feature[id] = s.feature;
        tree.categorical[id] = s.categorical ? 1 : 0;
        tree.threshold[id] = s.categorical ? s.bin : edges[s.feature]![s.bin];
        tree.missingLeft[id] = s.missingLeft ? 1 : 0;
        tree.left[id] = L.id;
        tree.right[id] = R.id;
        tree.count[L.id] = L.c;
        tree.count[R.id] = R.c;
        splitBin[id] = s.bin;
        if (childrenAreLeaves) {
          pool.push(node.hist!);
        } else {
          // The smaller child's histogram is built in the routing pass; the larger one's is
          // the parent's minus it, computed in the parent's buffer afterwards.
          const [small, large] = L.c <= R.c ? [L, R] : [R, L];
          const sh = takeHist();
          sh.fill(0);
          buildInto[small.id] = sh;
          small.hist = sh;
          pending.push([node.hist!, small, large]);
        }
        node.hist = null;
        next.push(L, R);
      }
      if (next.length === 0) break;
      routeRows(n, F, bins, grad, hess, nodeOf, tree, splitBin, buildInto);
      for (const [parentHist, small, large] of pending) {
        const sh = small.hist!;
        for (let k = 0; k < sh.length; k++) parentHist[k] -= sh[k];
        large.hist = parentHist;
        buildInto[small.id] = null;
      }
      level = next;
    }
    for (const node of level) makeLeaf(node);
    for (let r = 0; r < n; r++) score[r] += tree.value[nodeOf[r]];

    trees.push({
      feature: tree.feature.slice(0, nodes),
      threshold: tree.threshold.slice(0, nodes),
      categorical: tree.categorical.slice(0, nodes),
      missingLeft: tree.missingLeft.slice(0, nodes),
      left: tree.left.slice(0, nodes),
      right: tree.right.slice(0, nodes),
      value: tree.value.slice(0, nodes),
      count: tree.count.slice(0, nodes),
    });
  }

  return { featureNames: [...featureNames], categorical: [...categorical], baseScore, trees, params: opts, featureGain };
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
