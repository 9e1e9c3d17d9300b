// Evaluation of binary classifiers: exact AUC (ties get average ranks), log-loss, calibration by
// decile, and the deterministic train/validation split every cycle uses.
import { rankAuc } from "../lib/auc.js";
import { withDefaults } from "../lib/options.js";

/**
 * Area under the ROC curve, exactly: the Mann–Whitney statistic with average ranks for tied
 * scores, so a tie between a positive and a negative counts one half. NaN when either class is
 * absent or a score is NaN (a broken model must not look good).
 */
export function auc(labels: ArrayLike<number>, scores: ArrayLike<number>): number {
  const n = labels.length;
  if (scores.length !== n) throw new Error(`auc: ${scores.length} scores for ${n} labels`);
  for (let i = 0; i < n; i++) if (Number.isNaN(scores[i])) return NaN;
  return rankAuc(scores, (i) => labels[i] === 1);
}

/** Mean negative log-likelihood; probabilities are clipped to [eps, 1 - eps]. NaN if any is NaN. */
export function logLoss(labels: ArrayLike<number>, probs: ArrayLike<number>, eps = 1e-15): number {
  const n = labels.length;
  if (probs.length !== n) throw new Error(`logLoss: ${probs.length} probabilities for ${n} labels`);
  if (n === 0) return NaN;
  let s = 0;
  for (let i = 0; i < n; i++) {
    const p = Math.min(Math.max(probs[i], eps), 1 - eps);
    s -= labels[i] === 1 ? Math.log(p) : Math.log(1 - p);
  }
  return s / n;
}

/** A calibration bin of (nearly) equal row count: a quantile of the predictions. */
export interface QuantileCalibrationBin {
  /** Lowest and highest predicted probability in the bin. */
  lower: number;
  upper: number;
  count: number;
  meanPredicted: number;
  observedRate: number;
}

/**
 * Calibration by quantile of the prediction: rows sorted by predicted probability and cut into
 * `bins` groups of (nearly) equal size, each with its mean prediction and observed positive rate.
 */
export function calibration(labels: ArrayLike<number>, probs: ArrayLike<number>, bins = 10): QuantileCalibrationBin[] {
  const n = labels.length;
  if (probs.length !== n) throw new Error(`calibration: ${probs.length} probabilities for ${n} labels`);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => (probs[a] < probs[b] ? -1 : probs[a] > probs[b] ? 1 : a - b));
  const out: QuantileCalibrationBin[] = [];
  for (let b = 0; b < bins; b++) {
    const start = Math.floor((b * n) / bins);
    const end = Math.floor(((b + 1) * n) / bins);
    if (end <= start) continue;
    let sp = 0;
    let sy = 0;
    for (let k = start; k < end; k++) {
      sp += probs[order[k]];
      sy += labels[order[k]] === 1 ? 1 : 0;
    }
    const count = end - start;
    out.push({ lower: probs[order[start]], upper: probs[order[end - 1]], count, meanPredicted: sp / count, observedRate: sy / count });
  }
  return out;
}

export interface Evaluation {
  rows: number;
  positives: number;
  auc: number;
  logLoss: number;
  /** Mean prediction minus observed rate: a global calibration bias. */
  calibrationBias: number;
  calibration: QuantileCalibrationBin[];
}

export function evaluate(labels: ArrayLike<number>, probs: ArrayLike<number>): Evaluation {
  let positives = 0;
  let sp = 0;
  for (let i = 0; i < labels.length; i++) {
    positives += labels[i] === 1 ? 1 : 0;
    sp += probs[i];
  }
  const rows = labels.length;
  return {
    rows,
    positives,
    auc: auc(labels, probs),
    logLoss: logLoss(labels, probs),
    calibrationBias: rows === 0 ? NaN : (sp - positives) / rows,
    calibration: calibration(labels, probs),
  };
}

/** FNV-1a over the UTF-16 code units, then a final avalanche so nearby keys spread. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

export interface SplitOptions {
  /** Share of rows (or groups) sent to validation. @default 0.1 */
  validFraction?: number;
  /** @default 42 */
  seed?: number;
}

export const SPLIT_DEFAULTS: Readonly<Required<SplitOptions>> = Object.freeze({ validFraction: 0.1, seed: 42 });

export interface TrainValidSplit {
  train: Uint32Array;
  valid: Uint32Array;
}

/**
 * Deterministic train/validation split. Each row goes to validation when hash(seed, key) falls in
 * the first `validFraction` of the hash range, so a row's side depends only on its key and the
 * seed — not on the other rows or their order. Keys default to the row index; pass group keys
 * (e.g. the request id) to keep every row of a group on the same side, so the candidates of one
 * request cannot leak between training and validation.
 */
export function splitTrainValid(n: number, options: SplitOptions = {}, keys?: ArrayLike<string>): TrainValidSplit {
  const { validFraction, seed } = withDefaults(SPLIT_DEFAULTS, options);
  if (!(validFraction > 0 && validFraction < 1)) throw new RangeError(`validFraction must be in (0, 1), got ${validFraction}`);
  if (keys && keys.length !== n) throw new Error(`splitTrainValid: ${keys.length} keys for ${n} rows`);
  const cut = validFraction * 4294967296;
  const isValid = new Uint8Array(n);
  let nValid = 0;
  for (let i = 0; i < n; i++) {
    const key = keys ? keys[i] : String(i);
    if (hash32(`${seed}:${key}`) < cut) (isValid[i] = 1), nValid++;
  }
  const train = new Uint32Array(n - nValid);
  const valid = new Uint32Array(nValid);
  for (let i = 0, t = 0, v = 0; i < n; i++) {
    if (isValid[i]) valid[v++] = i;
    else train[t++] = i;
  }
  return { train, valid };
}
