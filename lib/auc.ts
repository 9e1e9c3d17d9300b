// Exact ROC AUC, shared by the trainer (validation) and the monitor (quality from feedback); each
// decides what a non-finite score means before calling it.

/**
 * Area under the ROC curve by the Mann–Whitney rank sum with mid-ranks for ties: the probability
 * that a random positive scores above a random negative, a tie counting one half. Scores must be
 * comparable (no NaN; ±Infinity are fine). NaN when either class is absent.
 */
export function rankAuc(scores: ArrayLike<number>, isPositive: (i: number) => boolean): number {
  const n = scores.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  // Comparisons, not subtraction: Infinity − Infinity is NaN.
  order.sort((a, b) => (scores[a]! < scores[b]! ? -1 : scores[a]! > scores[b]! ? 1 : 0));
  let positives = 0;
  let rankSum = 0;
  for (let i = 0; i < n; ) {
    let j = i + 1;
    while (j < n && scores[order[j]!] === scores[order[i]!]) j++;
    const midRank = (i + 1 + j) / 2; // ranks i+1 … j share their mean
    for (let k = i; k < j; k++) {
      if (isPositive(order[k]!)) {
        positives++;
        rankSum += midRank;
      }
    }
    i = j;
  }
  const negatives = n - positives;
  if (positives === 0 || negatives === 0) return NaN;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}
