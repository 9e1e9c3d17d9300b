// The row passes of one boosting round, run by every training thread on its share of the rows:
// gradients plus the root histogram, moving a node's rows to its children while building the
// smaller child's histogram, and adding leaf values to the scores.
// Invariant: each pass touches a node's rows in ascending row order (a node's segment of `idx`
// stays sorted, as the partition is stable), so one thread sums a histogram in exactly the order
// a plain loop over the rows would.

/** Bin index reserved for NaN (a missing value) in every feature. */
export const MISSING_BIN = 255;
/** Categorical codes at or above this share one "other" bin, never a split candidate (so it always goes right, as in ONNX). */
export const MAX_CATEGORY_CODE = 253;
export const OTHER_BIN = 254;
/** Per bin: gradient, hessian, count and a pad, so that one bin never straddles a cache line. */
export const BIN_FIELDS = 4;
/** Per feature: 256 bins × BIN_FIELDS. */
export const HIST_STRIDE = 256 * BIN_FIELDS;

/** Fields of one node in `plan`. */
export const PLAN_START = 0;
export const PLAN_END = 1;
export const PLAN_FEATURE = 2;
export const PLAN_BIN = 3;
export const PLAN_CATEGORICAL = 4;
export const PLAN_MISSING_LEFT = 5;
/** 0: no histogram; 1: build the left child's; 2: the right child's. */
export const PLAN_BUILD = 6;
export const PLAN_STRIDE = 7;

export const TASK_ROOT = 1;
export const TASK_PARTITION = 2;
export const TASK_SCORE = 3;
/** Moves each row of a node split into two leaves straight to its leaf's score (the last level). */
export const TASK_ROUTE_SCORE = 4;
export const TASK_EXIT = 5;

/** Bounds of e^-score in the gradients (a score clamped to ±35). */
const EXP_35 = Math.exp(35);
const EXP_MINUS_35 = Math.exp(-35);

/**
 * The memory every thread shares (SharedArrayBuffers when there are workers). `plan` and
 * `planValue` describe the current task's nodes, written by the main thread before each task.
 */
export interface Arena {
  n: number;
  F: number;
  threads: number;
  /** Nodes per task (the partial histogram slots per thread). */
  slots: number;
  /** Row-major bins: bins[row * F + f], for the histograms (one row's bins share a cache line). */
  bins: Uint8Array;
  /** The same bins column-major: colBins[f * n + row], for moving rows (one feature's bins are dense). */
  colBins: Uint8Array;
  y: Uint8Array;
  /**
   * e^-score of each row, the score being the model's log-odds so far. Adding a leaf value v is a
   * multiplication by e^-v, so the gradients need no Math.exp per row (p = 1 / (1 + e^-score)).
   */
  expNeg: Float64Array;
  /** Gradient and hessian of row r at 2r and 2r + 1. */
  gh: Float64Array;
  /** Row ids grouped by node: each node owns a segment, sorted ascending. */
  idx: Int32Array;
  /** Per thread's chunk of a node: the rows going right, in order, from the chunk's start (those going left stay in idx). */
  toRight: Int32Array;
  /** Histograms built by each thread: thread t, slot k at ((t * slots) + k) * F * HIST_STRIDE. */
  partial: Float64Array;
  plan: Int32Array;
  /** TASK_SCORE: the value of leaf k; TASK_ROUTE_SCORE: of node k's left and right leaf at 2k, 2k + 1. TASK_ROOT: [0] is 1 when the loss is wanted. */
  planValue: Float64Array;
  /** Rows of each thread's chunk of node k that went left, at t * slots + k. */
  nLeft: Int32Array;
  /** Each thread's part of the training log-loss (TASK_ROOT). */
  loss: Float64Array;
}

export type ArenaBuffers = { [K in keyof Arena]: Arena[K] extends number ? number : ArrayBufferLike };

export function allocateArena(n: number, F: number, threads: number, slots: number, shared: boolean): Arena {
  const mem = (bytes: number) => (shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  return {
    n,
    F,
    threads,
    slots,
    bins: new Uint8Array(mem(n * F)),
    colBins: new Uint8Array(mem(n * F)),
    y: new Uint8Array(mem(n)),
    expNeg: new Float64Array(mem(n * 8)),
    gh: new Float64Array(mem(n * 16)),
    idx: new Int32Array(mem(n * 4)),
    toRight: new Int32Array(mem(n * 4)),
    partial: new Float64Array(mem(threads * slots * F * HIST_STRIDE * 8)),
    plan: new Int32Array(mem(slots * PLAN_STRIDE * 4)),
    planValue: new Float64Array(mem(slots * 16)),
    nLeft: new Int32Array(mem(threads * slots * 4)),
    loss: new Float64Array(mem(threads * 8)),
  };
}

/** The buffers behind an arena, to hand to a worker, and back. */
export function arenaBuffers(a: Arena): ArenaBuffers {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(a)) out[k] = typeof v === "number" ? v : (v as Uint8Array).buffer;
  return out as ArenaBuffers;
}

export function arenaFromBuffers(b: ArenaBuffers): Arena {
  return {
    n: b.n,
    F: b.F,
    threads: b.threads,
    slots: b.slots,
    bins: new Uint8Array(b.bins),
    colBins: new Uint8Array(b.colBins),
    y: new Uint8Array(b.y),
    expNeg: new Float64Array(b.expNeg),
    gh: new Float64Array(b.gh),
    idx: new Int32Array(b.idx),
    toRight: new Int32Array(b.toRight),
    partial: new Float64Array(b.partial),
    plan: new Int32Array(b.plan),
    planValue: new Float64Array(b.planValue),
    nLeft: new Int32Array(b.nLeft),
    loss: new Float64Array(b.loss),
  };
}

/** Thread t's share [from, to) of the segment [start, end) (the same split on every thread). */
export function chunkStart(start: number, end: number, t: number, threads: number): number {
  return start + Math.floor(((end - start) * t) / threads);
}

/** Offset of thread t's histogram slot k in `partial`. */
export function partialOffset(a: Arena, t: number, k: number): number {
  return (t * a.slots + k) * a.F * HIST_STRIDE;
}

/** Runs thread t's share of a task over `count` plan entries. */
export function runTask(a: Arena, kind: number, count: number, t: number): void {
  if (kind === TASK_ROOT) rootPass(a, t);
  else if (kind === TASK_PARTITION) for (let k = 0; k < count; k++) partitionNode(a, k, t);
  else if (kind === TASK_SCORE) for (let k = 0; k < count; k++) scoreLeaf(a, k, t);
  else if (kind === TASK_ROUTE_SCORE) for (let k = 0; k < count; k++) routeToLeaves(a, k, t);
}

/**
 * Gradients and hessians of the log-loss from the scores, the loss itself when wanted, every row
 * into the root's segment, and the root's histogram (slot 0) without its counts: those are the
 * same every round (rootCounts).
 */
function rootPass(a: Arena, t: number): void {
  const { expNeg, y, gh, idx, bins, partial, F } = a;
  const from = chunkStart(0, a.n, t, a.threads);
  const to = chunkStart(0, a.n, t + 1, a.threads);
  const wantLoss = a.planValue[0] === 1;
  const base = partialOffset(a, t, 0);
  partial.fill(0, base, base + F * HIST_STRIDE);
  // p = 1 / (1 + e^-s), with e^-s clamped to e^±35 so that it stays finite. log-loss: log(1 + e^-s)
  // for y = 1, log(1 + e^s) for y = 0, in a loop of its own so that the histogram loop makes no
  // call (with Math.exp in it, that loop was slower than two loops). g and h go in from registers.
  let loss = 0;
  for (let r = from; r < to; r++) {
    const e = Math.min(Math.max(expNeg[r], EXP_MINUS_35), EXP_35);
    const p = 1 / (1 + e);
    const g = p - y[r];
    const h = p * (1 - p);
    gh[2 * r] = g;
    gh[2 * r + 1] = h;
    idx[r] = r;
    // Unrolled as in addRows.
    const o = r * F;
    let j = 0;
    (j = base + 0 * HIST_STRIDE + bins[o + 0] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 1) (j = base + 1 * HIST_STRIDE + bins[o + 1] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 2) (j = base + 2 * HIST_STRIDE + bins[o + 2] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 3) (j = base + 3 * HIST_STRIDE + bins[o + 3] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 4) (j = base + 4 * HIST_STRIDE + bins[o + 4] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 5) (j = base + 5 * HIST_STRIDE + bins[o + 5] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 6) (j = base + 6 * HIST_STRIDE + bins[o + 6] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 7) (j = base + 7 * HIST_STRIDE + bins[o + 7] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 8) (j = base + 8 * HIST_STRIDE + bins[o + 8] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 9) (j = base + 9 * HIST_STRIDE + bins[o + 9] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 10) (j = base + 10 * HIST_STRIDE + bins[o + 10] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 11) (j = base + 11 * HIST_STRIDE + bins[o + 11] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 12) (j = base + 12 * HIST_STRIDE + bins[o + 12] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 13) (j = base + 13 * HIST_STRIDE + bins[o + 13] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 14) (j = base + 14 * HIST_STRIDE + bins[o + 14] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    if (F > 15) (j = base + 15 * HIST_STRIDE + bins[o + 15] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
    for (let f = UNROLLED; f < F; f++) (j = base + f * HIST_STRIDE + bins[o + f] * BIN_FIELDS), (partial[j] += g), (partial[j + 1] += h);
  }
  if (wantLoss) {
    for (let r = from; r < to; r++) {
      const e = Math.min(Math.max(expNeg[r], EXP_MINUS_35), EXP_35);
      loss += y[r] === 1 ? Math.log1p(e) : Math.log1p(1 / e);
    }
  }
  a.loss[t] = loss;
}

/** The row count per (feature, bin) over all rows, at the count positions of a histogram. */
export function rootCounts(a: Arena): Float64Array {
  const { bins, F, n } = a;
  const counts = new Float64Array(F * HIST_STRIDE);
  for (let r = 0, o = 0; r < n; r++) for (let k = 0; k < counts.length; k += HIST_STRIDE, o++) counts[k + bins[o] * BIN_FIELDS + 2] += 1;
  return counts;
}

/** Features whose histogram adds are written out one by one in the row loops; the rest loop. */
const UNROLLED = 16;

/** Adds rows rows[from..to) to the histogram at `base`. */
function addRows(hist: Float64Array, base: number, bins: Uint8Array, F: number, gh: Float64Array, rows: Int32Array, from: number, to: number): void {
  // The first UNROLLED features written out, each behind a test the branch predictor always gets
  // right: constant offsets and no inner loop made this ~20 % faster than a loop over the features.
  for (let i = from; i < to; i++) {
    const r = rows[i];
    const g = gh[2 * r];
    const h = gh[2 * r + 1];
    const o = r * F;
    let j = 0;
    (j = base + 0 * HIST_STRIDE + bins[o + 0] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 1) (j = base + 1 * HIST_STRIDE + bins[o + 1] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 2) (j = base + 2 * HIST_STRIDE + bins[o + 2] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 3) (j = base + 3 * HIST_STRIDE + bins[o + 3] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 4) (j = base + 4 * HIST_STRIDE + bins[o + 4] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 5) (j = base + 5 * HIST_STRIDE + bins[o + 5] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 6) (j = base + 6 * HIST_STRIDE + bins[o + 6] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 7) (j = base + 7 * HIST_STRIDE + bins[o + 7] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 8) (j = base + 8 * HIST_STRIDE + bins[o + 8] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 9) (j = base + 9 * HIST_STRIDE + bins[o + 9] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 10) (j = base + 10 * HIST_STRIDE + bins[o + 10] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 11) (j = base + 11 * HIST_STRIDE + bins[o + 11] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 12) (j = base + 12 * HIST_STRIDE + bins[o + 12] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 13) (j = base + 13 * HIST_STRIDE + bins[o + 13] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 14) (j = base + 14 * HIST_STRIDE + bins[o + 14] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    if (F > 15) (j = base + 15 * HIST_STRIDE + bins[o + 15] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
    for (let f = UNROLLED; f < F; f++) (j = base + f * HIST_STRIDE + bins[o + f] * BIN_FIELDS), (hist[j] += g), (hist[j + 1] += h), (hist[j + 2] += 1);
  }
}

/**
 * Thread t's chunk of node k's segment: its rows going left are packed, in order, at the chunk's
 * start in idx (the write never passes the read), those going right written to toRight from the
 * chunk's start; then the rows of the child named by PLAN_BUILD are added to slot k. Two passes,
 * because "which side" is a coin flip the branch predictor cannot learn.
 */
function partitionNode(a: Arena, k: number, t: number): void {
  const { plan, idx, bins, colBins, F, gh, toRight, partial } = a;
  const p = k * PLAN_STRIDE;
  const from = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t, a.threads);
  const to = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t + 1, a.threads);
  const col = plan[p + PLAN_FEATURE] * a.n;
  const build = plan[p + PLAN_BUILD];
  // goLeft(bin) as a table over the 256 bins keeps the loop free of branches.
  const side = sideTable(a, k);
  let l = from;
  let rt = from;
  for (let i = from; i < to; i++) {
    const r = idx[i];
    const left = side[colBins[col + r]];
    idx[l] = r;
    toRight[rt] = r;
    l += left;
    rt += 1 - left;
  }
  const nl = l - from;
  const nr = rt - from;
  a.nLeft[t * a.slots + k] = nl;
  if (build === 0) return;
  const base = partialOffset(a, t, k);
  partial.fill(0, base, base + F * HIST_STRIDE);
  if (build === 1) addRows(partial, base, bins, F, gh, idx, from, from + nl);
  else addRows(partial, base, bins, F, gh, toRight, from, from + nr);
}

const sides = new Uint8Array(256);
/** e^-value of [right leaf, left leaf], indexed by the side table. */
const leafValues = new Float64Array(2);

/** 1 for the bins of node k's split that go left. */
function sideTable(a: Arena, k: number): Uint8Array {
  const p = k * PLAN_STRIDE;
  const bin = a.plan[p + PLAN_BIN];
  const cat = a.plan[p + PLAN_CATEGORICAL] === 1;
  for (let b = 0; b < MISSING_BIN; b++) sides[b] = (cat ? b === bin : b <= bin) ? 1 : 0;
  sides[MISSING_BIN] = a.plan[p + PLAN_MISSING_LEFT];
  return sides;
}

/** Thread t's chunk of node k, whose children are leaves: each row's score gets its leaf's value. */
function routeToLeaves(a: Arena, k: number, t: number): void {
  const { plan, idx, colBins, expNeg } = a;
  const p = k * PLAN_STRIDE;
  const from = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t, a.threads);
  const to = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t + 1, a.threads);
  const col = plan[p + PLAN_FEATURE] * a.n;
  const side = sideTable(a, k);
  leafValues[0] = Math.exp(-a.planValue[2 * k + 1]);
  leafValues[1] = Math.exp(-a.planValue[2 * k]);
  for (let i = from; i < to; i++) {
    const r = idx[i];
    expNeg[r] *= leafValues[side[colBins[col + r]]];
  }
}

/** Adds leaf k's value to the scores of thread t's chunk of its rows. */
function scoreLeaf(a: Arena, k: number, t: number): void {
  const { plan, idx, expNeg } = a;
  const p = k * PLAN_STRIDE;
  const from = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t, a.threads);
  const to = chunkStart(plan[p + PLAN_START], plan[p + PLAN_END], t + 1, a.threads);
  const m = Math.exp(-a.planValue[k]);
  for (let i = from; i < to; i++) expNeg[idx[i]] *= m;
}

/** Main thread, after TASK_ROOT or TASK_PARTITION: the histogram of slot k summed over the threads into `out`. */
export function mergePartials(a: Arena, k: number, out: Float64Array): void {
  const size = a.F * HIST_STRIDE;
  const first = partialOffset(a, 0, k);
  out.set(a.partial.subarray(first, first + size));
  for (let t = 1; t < a.threads; t++) {
    const base = partialOffset(a, t, k);
    for (let j = 0; j < size; j++) out[j] += a.partial[base + j];
  }
}

/**
 * Main thread, after TASK_PARTITION: node k's segment rewritten as its left rows then its right
 * rows, each in ascending order (thread chunks are consecutive). Returns the number of left rows.
 */
export function collectPartition(a: Arena, k: number): number {
  const { plan, idx, toRight, nLeft, threads, slots } = a;
  const p = k * PLAN_STRIDE;
  const start = plan[p + PLAN_START];
  const end = plan[p + PLAN_END];
  // Thread 0's left rows are in place; each later thread's move down (copyWithin allows the overlap,
  // and never reaches the next thread's rows, which start at or after this one's end).
  let at = start + nLeft[k];
  for (let t = 1; t < threads; t++) {
    const from = chunkStart(start, end, t, threads);
    idx.copyWithin(at, from, from + nLeft[t * slots + k]);
    at += nLeft[t * slots + k];
  }
  const lefts = at - start;
  for (let t = 0; t < threads; t++) {
    const from = chunkStart(start, end, t, threads);
    const to = chunkStart(start, end, t + 1, threads);
    const nr = to - from - nLeft[t * slots + k];
    idx.set(toRight.subarray(from, from + nr), at);
    at += nr;
  }
  return lefts;
}
