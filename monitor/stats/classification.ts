// Quality of served scores against observed outcomes: exact AUC (ties count one half), accuracy at a
// threshold, Brier score, and calibration (reliability bins and the expected calibration error).
import { rankAuc } from "../../lib/auc.js";
import { withDefaults } from "../../lib/options.js";

/**
 * Exact ROC AUC by the Mann–Whitney rank sum with mid-ranks for ties: the probability that a random
 * positive scores above a random negative, ties counting ½. NaN without both classes.
 * Pairs whose score is not finite are skipped.
 */
export function auc(scores: ArrayLike<number>, labels: ArrayLike<number | boolean>): number {
  const kept: number[] = [];
  const positive: boolean[] = [];
  for (let i = 0; i < scores.length; i++) {
    if (!Number.isFinite(scores[i]!)) continue;
    kept.push(scores[i]!);
    positive.push(Boolean(labels[i]));
  }
  return rankAuc(kept, (i) => positive[i]!);
}

/** Options of {@link classificationQuality}. */
export interface QualityOptions {
  /**
   * Score at or above which a prediction counts as positive for accuracy.
   * @default 0.5
   */
  threshold?: number;
  /**
   * Equal-width calibration bins over [0, 1].
   * @default 10
   */
  calibrationBins?: number;
}

export const QUALITY_DEFAULTS: Readonly<Required<QualityOptions>> = Object.freeze({ threshold: 0.5, calibrationBins: 10 });

/** A calibration bin of fixed width: scores in [lower, upper), the k bins splitting [0, 1] evenly (some may be empty). */
export interface EqualWidthCalibrationBin {
  lower: number;
  upper: number;
  count: number;
  meanPredicted: number;
  observedRate: number;
}

export interface QualityResult {
  n: number;
  positives: number;
  auc: number;
  accuracy: number;
  /** Mean squared error of the score as a probability. */
  brier: number;
  /** Σ (count/n)·|meanPredicted − observedRate| over the calibration bins. */
  ece: number;
  meanPredicted: number;
  observedRate: number;
  bins: EqualWidthCalibrationBin[];
  /** Pairs skipped because the score was not finite. */
  dropped: number;
  /** Scores outside [0, 1]: calibration treats them as clipped, and says so here. */
  outOfRange: number;
}

/** AUC, accuracy, Brier score and calibration of scores (probabilities) against 0/1 outcomes. */
export function classificationQuality(scores: ArrayLike<number>, labels: ArrayLike<number | boolean>, options: QualityOptions = {}): QualityResult {
  const opts = withDefaults(QUALITY_DEFAULTS, options);
  const k = opts.calibrationBins;
  const count = new Array<number>(k).fill(0);
  const predicted = new Array<number>(k).fill(0);
  const observed = new Array<number>(k).fill(0);
  let n = 0;
  let positives = 0;
  let correct = 0;
  let brier = 0;
  let sumScore = 0;
  let dropped = 0;
  let outOfRange = 0;
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i]!;
    if (!Number.isFinite(s)) {
      dropped++;
      continue;
    }
    const y = labels[i] ? 1 : 0;
    if (s < 0 || s > 1) outOfRange++;
    const p = Math.min(1, Math.max(0, s));
    n++;
    positives += y;
    correct += (s >= opts.threshold ? 1 : 0) === y ? 1 : 0;
    brier += (p - y) * (p - y);
    sumScore += p;
    const b = Math.min(k - 1, Math.floor(p * k));
    count[b]!++;
    predicted[b]! += p;
    observed[b]! += y;
  }
  const bins: EqualWidthCalibrationBin[] = [];
  let ece = 0;
  for (let b = 0; b < k; b++) {
    const c = count[b]!;
    bins.push({ lower: b / k, upper: (b + 1) / k, count: c, meanPredicted: c ? predicted[b]! / c : NaN, observedRate: c ? observed[b]! / c : NaN });
    if (c) ece += (c / n) * Math.abs(predicted[b]! / c - observed[b]! / c);
  }
  return {
    n,
    positives,
    auc: auc(scores, labels),
    accuracy: n ? correct / n : NaN,
    brier: n ? brier / n : NaN,
    ece: n ? ece : NaN,
    meanPredicted: n ? sumScore / n : NaN,
    observedRate: n ? positives / n : NaN,
    bins,
    dropped,
    outOfRange,
  };
}
