// Growing one tree, level by level, from the gradients of the current scores.
// Invariant: a node's histogram is either built from its own rows (the smaller child) or is its
// parent's minus its sibling's (the larger child), and every node owns one contiguous, ascending
// segment of the arena's row ids.

import {
  BIN_FIELDS,
  HIST_STRIDE,
  PLAN_BIN,
  PLAN_BUILD,
  PLAN_CATEGORICAL,
  PLAN_END,
  PLAN_FEATURE,
  PLAN_MISSING_LEFT,
  PLAN_START,
  PLAN_STRIDE,
  TASK_PARTITION,
  TASK_ROOT,
  TASK_ROUTE_SCORE,
  TASK_SCORE,
  collectPartition,
  mergePartials,
  type Arena,
} from "./gbdt-histogram.js";
import { findSplit, type Split, type SplitRules } from "./gbdt-split.js";
import type { Team } from "./gbdt-threads.js";
import type { GbdtTree } from "./gbdt.js";

export interface GrowContext {
  arena: Arena;
  team: Team;
  rules: SplitRules;
  /** Per feature: bin edges (numeric) or null (categorical). */
  edges: (Float64Array | null)[];
  maxDepth: number;
  learningRate: number;
  /** Nodes a tree can have. */
  capacity: number;
  /** Total split gain per feature, added to. */
  featureGain: number[];
  /** Histogram buffers reused across nodes and trees. */
  pool: Float64Array[];
  /** The root's row counts per (feature, bin), the same every round (rootCounts). */
  rootCounts: Float64Array;
}

interface NodeWork {
  id: number;
  g: number;
  h: number;
  c: number;
  /** The node's rows: arena.idx[start..end). */
  start: number;
  end: number;
  hist: Float64Array | null;
}

/** A split node waiting for its rows to be moved, and the child whose histogram is built then. */
interface PendingSplit {
  node: NodeWork;
  split: Split;
  left: NodeWork;
  right: NodeWork;
  /** null when the children are leaves. */
  small: NodeWork | null;
}

function takeHist(ctx: GrowContext): Float64Array {
  return ctx.pool.pop() ?? new Float64Array(ctx.arena.F * HIST_STRIDE);
}

/**
 * Computes gradients from the arena's scores and the root histogram; returns the training
 * log-loss before this tree (0 unless `wantLoss`). Call growTree next.
 */
export function startTree(ctx: GrowContext, wantLoss: boolean): { loss: number; rootHist: Float64Array } {
  const a = ctx.arena;
  a.planValue[0] = wantLoss ? 1 : 0;
  ctx.team.run(TASK_ROOT, 1);
  let loss = 0;
  for (let t = 0; t < a.threads; t++) loss += a.loss[t];
  const rootHist = takeHist(ctx);
  mergePartials(a, 0, rootHist);
  const counts = ctx.rootCounts;
  for (let j = 2; j < counts.length; j += BIN_FIELDS) rootHist[j] = counts[j];
  return { loss: loss / a.n, rootHist };
}

/** Grows one tree from the root histogram of startTree and adds its leaf values to the scores. */
export function growTree(ctx: GrowContext, rootHist: Float64Array): GbdtTree {
  const { arena: a, capacity, maxDepth, rules, edges, featureGain, learningRate } = ctx;
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
  const leaves: NodeWork[] = [];
  const leafValue = (node: NodeWork) => (tree.value[node.id] = Math.fround((-node.g / (node.h + rules.lambda)) * learningRate));
  const makeLeaf = (node: NodeWork) => {
    leafValue(node);
    if (node.hist) ctx.pool.push(node.hist), (node.hist = null);
    leaves.push(node);
  };
  let nodes = 1;
  tree.count[0] = a.n;
  let g0 = 0;
  let h0 = 0;
  for (let b = 0; b < 256; b++) (g0 += rootHist[b * BIN_FIELDS]), (h0 += rootHist[b * BIN_FIELDS + 1]);
  let level: NodeWork[] = [{ id: 0, g: g0, h: h0, c: a.n, start: 0, end: a.n, hist: rootHist }];

  for (let depth = 0; depth < maxDepth && level.length > 0; depth++) {
    const childrenAreLeaves = depth + 1 === maxDepth;
    const pending: PendingSplit[] = [];
    for (const node of level) {
      const s = findSplit(node.hist!, node, rules);
      if (s === null) {
        makeLeaf(node);
        continue;
      }
      featureGain[s.feature] += s.gain;
      const left: NodeWork = { id: nodes++, g: s.gl, h: s.hl, c: s.cl, start: 0, end: 0, hist: null };
      const right: NodeWork = { id: nodes++, g: node.g - s.gl, h: node.h - s.hl, c: node.c - s.cl, start: 0, end: 0, hist: null };
      const id = node.id;
      tree.feature[id] = s.feature;
      tree.categorical[id] = s.categorical ? 1 : 0;
      tree.threshold[id] = s.categorical ? s.bin : edges[s.feature]![s.bin];
      tree.missingLeft[id] = s.missingLeft ? 1 : 0;
      tree.left[id] = left.id;
      tree.right[id] = right.id;
      tree.count[left.id] = left.c;
      tree.count[right.id] = right.c;
      if (childrenAreLeaves) ctx.pool.push(node.hist!), (node.hist = null);
      // The smaller child's histogram is built from its rows once they have moved; the larger
      // one's is the parent's minus it.
      pending.push({ node, split: s, left, right, small: childrenAreLeaves ? null : left.c <= right.c ? left : right });
    }
    if (pending.length === 0) {
      level = [];
      break;
    }
    if (childrenAreLeaves) {
      for (const { left, right } of pending) leafValue(left), leafValue(right);
      routeToLeaves(ctx, pending, tree.value);
      level = [];
      break;
    }
    moveRows(ctx, pending);
    const next: NodeWork[] = [];
    for (const { left, right } of pending) next.push(left, right);
    level = next;
  }
  for (const node of level) makeLeaf(node);
  addLeafValues(ctx, leaves, tree.value);

  return {
    feature: tree.feature.slice(0, nodes),
    threshold: tree.threshold.slice(0, nodes),
    categorical: tree.categorical.slice(0, nodes),
    missingLeft: tree.missingLeft.slice(0, nodes),
    left: tree.left.slice(0, nodes),
    right: tree.right.slice(0, nodes),
    value: tree.value.slice(0, nodes),
    count: tree.count.slice(0, nodes),
  };
}

/**
 * Moves the rows of every pending split to its children, building the smaller children's
 * histograms on the way, in batches of the arena's slots.
 */
function moveRows(ctx: GrowContext, pending: PendingSplit[]): void {
  const a = ctx.arena;
  for (let first = 0; first < pending.length; first += a.slots) {
    const count = Math.min(a.slots, pending.length - first);
    for (let k = 0; k < count; k++) {
      const { node, split, left, small } = pending[first + k];
      writeSplit(a, k, node, split);
      a.plan[k * PLAN_STRIDE + PLAN_BUILD] = small === null ? 0 : small === left ? 1 : 2;
    }
    ctx.team.run(TASK_PARTITION, count);
    for (let k = 0; k < count; k++) {
      const { node, left, right, small } = pending[first + k];
      const lefts = collectPartition(a, k);
      if (lefts !== left.c) throw new Error(`gbdt: internal error: ${lefts} rows went left, the histogram counted ${left.c}`);
      left.start = node.start;
      left.end = right.start = node.start + lefts;
      right.end = node.end;
      if (small === null) continue;
      const large = small === left ? right : left;
      const sh = takeHist(ctx);
      mergePartials(a, k, sh);
      small.hist = sh;
      const parentHist = node.hist!;
      for (let j = 0; j < sh.length; j++) parentHist[j] -= sh[j];
      large.hist = parentHist;
      node.hist = null;
    }
  }
}

/** The last level: the rows of each split go straight to their leaf's score, without moving. */
function routeToLeaves(ctx: GrowContext, pending: PendingSplit[], value: Float64Array): void {
  const a = ctx.arena;
  for (let first = 0; first < pending.length; first += a.slots) {
    const count = Math.min(a.slots, pending.length - first);
    for (let k = 0; k < count; k++) {
      const { node, split, left, right } = pending[first + k];
      writeSplit(a, k, node, split);
      a.planValue[2 * k] = value[left.id];
      a.planValue[2 * k + 1] = value[right.id];
    }
    ctx.team.run(TASK_ROUTE_SCORE, count);
  }
}

function writeSplit(a: Arena, k: number, node: NodeWork, split: Split): void {
  const p = k * PLAN_STRIDE;
  a.plan[p + PLAN_START] = node.start;
  a.plan[p + PLAN_END] = node.end;
  a.plan[p + PLAN_FEATURE] = split.feature;
  a.plan[p + PLAN_BIN] = split.bin;
  a.plan[p + PLAN_CATEGORICAL] = split.categorical ? 1 : 0;
  a.plan[p + PLAN_MISSING_LEFT] = split.missingLeft ? 1 : 0;
}

/** Adds every leaf's value to the scores of its rows. */
function addLeafValues(ctx: GrowContext, leaves: NodeWork[], value: Float64Array): void {
  const a = ctx.arena;
  for (let first = 0; first < leaves.length; first += a.slots) {
    const count = Math.min(a.slots, leaves.length - first);
    for (let k = 0; k < count; k++) {
      const leaf = leaves[first + k];
      a.plan[k * PLAN_STRIDE + PLAN_START] = leaf.start;
      a.plan[k * PLAN_STRIDE + PLAN_END] = leaf.end;
      a.planValue[k] = value[leaf.id];
    }
    ctx.team.run(TASK_SCORE, count);
  }
}
