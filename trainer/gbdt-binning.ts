// Quantisation of the training data into one byte per (row, feature), done once before boosting.
// Invariant: bin b of a numeric feature holds exactly the rows with fround(x) <= edges[b] (and >
// edges[b-1]), so a split "bin <= b" is the exported float32 test "x <= edges[b]".

import { MAX_CATEGORY_CODE, MISSING_BIN, OTHER_BIN } from "./gbdt-histogram.js";

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

export interface BinEdges {
  /** Per feature: bin edges (numeric) or null (categorical). */
  edges: (Float64Array | null)[];
  /** Per feature: number of value bins in use (split candidates are below this). */
  numBins: Int32Array;
}

/**
 * Fills `bins` (row-major: bins[row * F + f]) and `colBins` (column-major: colBins[f * n + row])
 * and returns the edges. The quantiles come from `sampleSize` rows drawn with `rand` (all rows when that many).
 */
export function binColumns(
  columns: ArrayLike<number>[],
  categorical: boolean[],
  n: number,
  bins: Uint8Array,
  colBins: Uint8Array,
  maxBins: number,
  sampleSize: number,
  rand: () => number,
): BinEdges {
  const F = columns.length;
  const edges: (Float64Array | null)[] = [];
  const numBins = new Int32Array(F);
  // One sample of rows for all features, drawn with the seed.
  const m0 = Math.min(n, sampleSize);
  const sample = new Uint32Array(m0);
  for (let i = 0; i < m0; i++) sample[i] = m0 === n ? i : Math.floor(rand() * n);
  const scratch = new Float64Array(m0);
  for (let f = 0; f < F; f++) {
    const col = columns[f];
    if (categorical[f]) {
      edges.push(null);
      numBins[f] = OTHER_BIN;
      for (let r = 0, o = f; r < n; r++, o += F) {
        const v = col[r];
        bins[o] = Number.isNaN(v) ? MISSING_BIN : Number.isInteger(v) && v >= 0 && v <= MAX_CATEGORY_CODE ? v : OTHER_BIN;
      }
      transpose(bins, colBins, n, F, f);
      continue;
    }
    let m = 0;
    for (let i = 0; i < m0; i++) {
      const v = Math.fround(col[sample[i]]);
      if (!Number.isNaN(v)) scratch[m++] = v;
    }
    const e = quantileEdges(scratch.subarray(0, m).sort(), maxBins);
    edges.push(e);
    numBins[f] = e.length;
    binNumeric(col, e, n, F, f, bins);
    transpose(bins, colBins, n, F, f);
  }
  return { edges, numBins };
}

function transpose(bins: Uint8Array, colBins: Uint8Array, n: number, F: number, f: number): void {
  for (let r = 0, o = f, c = f * n; r < n; r++, o += F) colBins[c + r] = bins[o];
}

/** Order-preserving key of a float32 value: its bits, sign-flipped so that keys compare as the values do. */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function orderKey(v: number): number {
  f32[0] = v + 0; // -0 → +0: they are equal to <=, so they must share a key
  const bits = u32[0];
  return bits >= 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}

/** Buckets of the lookup that narrows each value's bin search: by the top 16 bits of the key. */
const BUCKETS = 65536;
const lookup = new Uint16Array(BUCKETS + 1);

function binNumeric(col: ArrayLike<number>, e: Float64Array, n: number, F: number, f: number, bins: Uint8Array): void {
  const last = e.length - 1;
  // lookup[B]: the first bin whose edge has a key in bucket B or later. A value in bucket B has its
  // bin in [lookup[B], lookup[B + 1]], so the binary search below runs over that range only
  // (the same answer as over all bins, in a step or two on most data).
  let b = 0;
  for (let B = 0; B < BUCKETS; B++) {
    while (b < last && orderKey(e[b]) >>> 16 < B) b++;
    lookup[B] = b;
  }
  lookup[BUCKETS] = last;
  for (let r = 0, o = f; r < n; r++, o += F) {
    const v = Math.fround(col[r]);
    if (Number.isNaN(v)) {
      bins[o] = MISSING_BIN;
      continue;
    }
    // first b with v <= e[b]; e[last] is +Infinity so the search always lands
    f32[0] = v + 0;
    const bits = u32[0];
    const B = (bits >= 0x80000000 ? ~bits : bits | 0x80000000) >>> 16;
    let lo = lookup[B];
    let hi = lookup[B + 1];
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (v <= e[mid]) hi = mid;
      else lo = mid + 1;
    }
    bins[o] = lo;
  }
}
