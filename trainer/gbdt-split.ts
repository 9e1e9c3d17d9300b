// Split search: the best split of one node from its histogram.
// Invariant: candidates are visited in a fixed order (feature, then bin, then "missing right"
// before "missing left") and only a strictly larger gain replaces the best, so ties resolve the
// same way on every run.

import { BIN_FIELDS, HIST_STRIDE, MISSING_BIN } from "./gbdt-histogram.js";

export interface Split {
  gain: number;
  feature: number;
  /** numeric: last bin on the left; categorical: the category code that goes left */
  bin: number;
  categorical: boolean;
  missingLeft: boolean;
  /** Gradient, hessian and row count of the left child. */
  gl: number;
  hl: number;
  cl: number;
}

export interface SplitRules {
  lambda: number;
  minSamplesLeaf: number;
  minHessianLeaf: number;
  minSplitGain: number;
  /** Per feature: value bins in use (candidates are below this). */
  numBins: Int32Array;
  categorical: boolean[];
}

/** Sum of gradients, hessians and rows of a node. */
export interface NodeSums {
  g: number;
  h: number;
  c: number;
}

const leafScore = (g: number, h: number, lambda: number) => (g * g) / (h + lambda);

/** The best split of a node with histogram `hist` (feature-major, HIST_STRIDE per feature), or null. */
export function findSplit(hist: Float64Array, node: NodeSums, rules: SplitRules): Split | null {
  const { lambda, minSamplesLeaf, minHessianLeaf, minSplitGain, numBins, categorical } = rules;
  const parentScore = leafScore(node.g, node.h, lambda);
  let best: Split | null = null;
  const consider = (gl: number, hl: number, cl: number, feature: number, bin: number, cat: boolean, missingLeft: boolean) => {
    const hr = node.h - hl;
    const cr = node.c - cl;
    if (cl < minSamplesLeaf || cr < minSamplesLeaf || hl < minHessianLeaf || hr < minHessianLeaf) return;
    const gain = leafScore(gl, hl, lambda) + leafScore(node.g - gl, hr, lambda) - parentScore;
    if (gain > minSplitGain && (best === null || gain > best.gain)) best = { gain, feature, bin, categorical: cat, missingLeft, gl, hl, cl };
  };
  for (let f = 0; f < numBins.length; f++) {
    const base = f * HIST_STRIDE;
    const mk = base + MISSING_BIN * BIN_FIELDS;
    const gm = hist[mk];
    const hm = hist[mk + 1];
    const cm = hist[mk + 2];
    const nb = numBins[f];
    if (categorical[f]) {
      for (let b = 0; b < nb; b++) {
        const k = base + b * BIN_FIELDS;
        const cb = hist[k + 2];
        if (cb === 0) continue;
        const gb = hist[k];
        const hb = hist[k + 1];
        // the category alone on the left, missing on the right (with no missing value at this
        // node, NaN at inference follows the larger side) …
        consider(gb, hb, cb, f, b, true, cm === 0 && cb >= node.c - cb);
        // … or missing with it
        if (cm > 0) consider(gb + gm, hb + hm, cb + cm, f, b, true, true);
      }
      continue;
    }
    let gc = 0;
    let hc = 0;
    let cc = 0;
    // The last value bin is a candidate only when there are missing values: it splits
    // "has a value" from "missing".
    const lastCandidate = cm > 0 ? nb - 1 : nb - 2;
    for (let b = 0; b <= lastCandidate; b++) {
      const k = base + b * BIN_FIELDS;
      gc += hist[k];
      hc += hist[k + 1];
      cc += hist[k + 2];
      consider(gc, hc, cc, f, b, false, cm === 0 && cc >= node.c - cc);
      if (cm > 0 && b < nb - 1) consider(gc + gm, hc + hm, cc + cm, f, b, false, true);
    }
  }
  return best;
}
