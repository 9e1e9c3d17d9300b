// The native scorer: evaluates a tree-ensemble ONNX model (ai.onnx.ml TreeEnsembleRegressor, then
// element-wise steps such as the trainer's Sigmoid and Concat) synchronously in TypeScript, from
// flat typed arrays read out of the graph once at load. Invariant: a model is compiled only when
// every step from the feature input to the score column is one this file implements with the
// ONNX op's semantics (float32 arithmetic, the branch modes, NaN on the missing-value track);
// anything else is reported unsupported and onnxruntime scores it. Why it exists: README, "Scorers".
import { fromBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, TensorProto_DataType, type AttributeProto, type GraphProto, type NodeProto, type TensorProto } from "../gen/onnx/onnx_pb.js";

/** Why a model cannot be scored natively (onnxruntime scores it instead). */
export class UnsupportedModel extends Error {
  override name = "UnsupportedModel";
}

/** Branch codes: mode × whether NaN takes the true branch, chosen so each is one comparison but EQ with NaN. */
const LEAF = 0;
const LEQ = 1;
const LEQ_NAN = 2;
const LT = 3;
const LT_NAN = 4;
const GTE = 5;
const GTE_NAN = 6;
const GT = 7;
const GT_NAN = 8;
const EQ = 9;
const EQ_NAN = 10;
const NEQ = 11;

const MODE_CODES: Record<string, number> = { BRANCH_LEQ: LEQ, BRANCH_LT: LT, BRANCH_GTE: GTE, BRANCH_GT: GT, BRANCH_EQ: EQ, BRANCH_NEQ: NEQ };

/** One element-wise step after the ensemble, in float32 like onnxruntime. */
type Step = { op: "sigmoid" } | { op: "add" | "mul" | "subFrom" | "sub" | "div" | "divFrom"; c: number };

/** The flat form of every tree: node i's branch code, feature, threshold and children; a leaf's value. */
interface Forest {
  roots: Int32Array;
  code: Uint8Array;
  feature: Int32Array;
  threshold: Float64Array;
  whenTrue: Int32Array;
  whenFalse: Int32Array;
  leafValue: Float64Array;
  /** Added after the trees (float32). */
  base: number;
  /** AVERAGE divides the sum by the tree count. */
  average: boolean;
}

/**
 * The same trees padded to one depth D and stored as perfect binary trees, each node as an interval
 * test (BRANCH_LEQ v is [-inf, v], BRANCH_GT v is [next float32 after v, inf], BRANCH_EQ v is [v, v],
 * ...) whose "inside" child is on the left: descending is arithmetic with no unpredictable branch.
 * A leaf above depth D becomes a node that always goes left, over copies of its value.
 */
interface PerfectForest {
  depth: number;
  trees: number;
  /** Per tree 2^D - 1 nodes, breadth first. */
  lo: Float64Array;
  hi: Float64Array;
  feature: Int32Array;
  /** 1 when NaN goes to the inside (left) child. */
  nanInside: Uint8Array;
  /** Per tree 2^D leaves. */
  leafValue: Float64Array;
  base: number;
  average: boolean;
  /** Every interval starts at -inf (BRANCH_LEQ and BRANCH_LT only): one compare a step. */
  oneSided: boolean;
}

export class TreeScorer {
  private readonly perfect: PerfectForest | undefined;
  private readonly after: (scores: Float64Array) => void;
  /** The sums of the trees plus the base value, into `out`. */
  private readonly kernel: (matrix: Float32Array, rows: number, stride: number, out: Float64Array) => void;

  constructor(
    private readonly forest: Forest,
    steps: readonly Step[],
    readonly featureCount: number,
    /** What was compiled, for the load log line. */
    readonly description: string,
    layout: "auto" | "nodes" = "auto",
  ) {
    const perfect = layout === "auto" ? perfectForest(forest) : undefined;
    this.perfect = perfect;
    const width = featureCount;
    this.kernel = perfect
      ? (matrix, rows, stride, out) => scorePerfect(perfect, stride, matrix, rows, width, out)
      : (matrix, rows, stride, out) => scoreNodes(forest, stride, matrix, rows, out);
    this.after = compileSteps(steps);
  }

  /** "perfect depth D" or "nodes": how the trees are laid out. */
  get layout(): string {
    return this.perfect ? `perfect binary trees of depth ${this.perfect.depth}` : "node arrays";
  }

  /**
   * Rows that visit every kind of branch: per feature its default, a threshold it is split on,
   * the float32 just beside one, NaN, or a value drawn around its thresholds (seeded: the same
   * rows every load).
   */
  checkRows(rows: number, defaults: readonly number[]): Float32Array {
    const { code, feature, threshold } = this.forest;
    const width = this.featureCount;
    const cuts: number[][] = Array.from({ length: width }, () => []);
    for (let i = 0; i < code.length; i++) if (code[i] !== LEAF && Number.isFinite(threshold[i]!)) cuts[feature[i]!]!.push(threshold[i]!);
    let seed = 0x2545f491;
    const rand = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 4294967296;
    };
    const matrix = new Float32Array(rows * width);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < width; j++) {
        const c = cuts[j]!;
        const cut = c.length ? c[Math.floor(rand() * c.length)]! : 0;
        const pick = r === 0 ? 0 : rand();
        matrix[r * width + j] =
          pick < 0.15
            ? (defaults[j] ?? 0)
            : pick < 0.4
              ? cut
              : pick < 0.55
                ? nextFloat32(cut, rand() < 0.5)
                : pick < 0.7
                  ? Number.NaN
                  : cut + (rand() - 0.5) * 2 * (Math.abs(cut) + 1);
      }
    }
    return matrix;
  }

  /**
   * Scores `rows` feature vectors (row-major float32, NaN for missing; a row is `stride` values,
   * the model's first): the model's score column.
   */
  score(matrix: Float32Array, rows: number, stride = this.featureCount): Float64Array {
    if (stride < this.featureCount || matrix.length < rows * stride) throw new RangeError(`${rows} rows of ${stride} do not fit a matrix of ${matrix.length}`);
    const out = new Float64Array(rows);
    this.kernel(matrix, rows, stride, out);
    this.after(out);
    return out;
  }
}

/** The element-wise steps as one function over the scores (the trainer's models: one sigmoid). */
function compileSteps(steps: readonly Step[]): (scores: Float64Array) => void {
  if (!steps.length) return () => undefined;
  if (steps.length === 1 && steps[0]!.op === "sigmoid") {
    return (scores) => {
      for (let r = 0; r < scores.length; r++) scores[r] = Math.fround(1 / (1 + Math.exp(-scores[r]!)));
    };
  }
  return (scores) => {
    for (let r = 0; r < scores.length; r++) for (const step of steps) scores[r] = applyStep(step, scores[r]!);
  };
}

/** The sum over trees (float32, in tree order, as onnxruntime adds) plus the base value. */
function finish(sum: number, trees: number, base: number, average: boolean): number {
  return average ? Math.fround(Math.fround(sum / trees) + base) : Math.fround(sum + base);
}

/**
 * Row by row, tree by tree. A step goes left (2i + 1) when x is inside the node's interval, else
 * right (2i + 2). A row without NaN takes the short test (one compare when every interval starts
 * at -inf, as with BRANCH_LEQ only); a row with a NaN also asks where NaN goes.
 */
function scorePerfect(p: PerfectForest, width: number, matrix: Float32Array, rows: number, featureCount: number, out: Float64Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    let nan = false;
    for (let j = o, end = o + featureCount; j < end; j++) if (matrix[j] !== matrix[j]) nan = true;
    const sum = nan ? sumWithNaN(p, matrix, o) : p.oneSided ? sumOneSided(p, matrix, o) : sumIntervals(p, matrix, o);
    out[r] = finish(sum, p.trees, p.base, p.average);
  }
}

function sumOneSided(p: PerfectForest, matrix: Float32Array, o: number): number {
  const { depth, trees, hi, feature, leafValue } = p;
  const inner = (1 << depth) - 1;
  let sum = 0;
  for (let t = 0, first = 0, firstLeaf = -inner; t < trees; t++, first += inner, firstLeaf += inner + 1) {
    let i = 0;
    for (let d = 0; d < depth; d++) {
      const k = first + i;
      i = 2 * i + (matrix[o + feature[k]!]! <= hi[k]! ? 1 : 2);
    }
    sum = Math.fround(sum + leafValue[firstLeaf + i]!);
  }
  return sum;
}

function sumIntervals(p: PerfectForest, matrix: Float32Array, o: number): number {
  const { depth, trees, lo, hi, feature, leafValue } = p;
  const inner = (1 << depth) - 1;
  let sum = 0;
  for (let t = 0, first = 0, firstLeaf = -inner; t < trees; t++, first += inner, firstLeaf += inner + 1) {
    let i = 0;
    for (let d = 0; d < depth; d++) {
      const k = first + i;
      const x = matrix[o + feature[k]!]!;
      i = 2 * i + (x <= hi[k]! && x >= lo[k]! ? 1 : 2);
    }
    sum = Math.fround(sum + leafValue[firstLeaf + i]!);
  }
  return sum;
}

function sumWithNaN(p: PerfectForest, matrix: Float32Array, o: number): number {
  const { depth, trees, lo, hi, feature, nanInside, leafValue } = p;
  const inner = (1 << depth) - 1;
  let sum = 0;
  for (let t = 0, first = 0, firstLeaf = -inner; t < trees; t++, first += inner, firstLeaf += inner + 1) {
    let i = 0;
    for (let d = 0; d < depth; d++) {
      const k = first + i;
      const x = matrix[o + feature[k]!]!;
      i = 2 * i + ((x <= hi[k]! && x >= lo[k]!) || (x !== x && nanInside[k] === 1) ? 1 : 2);
    }
    sum = Math.fround(sum + leafValue[firstLeaf + i]!);
  }
  return sum;
}

function scoreNodes(forest: Forest, width: number, matrix: Float32Array, rows: number, out: Float64Array): void {
  const { roots, code, feature, threshold, whenTrue, whenFalse, leafValue, base, average } = forest;
  const trees = roots.length;
  for (let r = 0; r < rows; r++) {
    const offset = r * width;
    let sum = 0;
    for (let t = 0; t < trees; t++) {
      let i = roots[t]!;
      let c = code[i]!;
      while (c !== LEAF) {
        const x = matrix[offset + feature[i]!]!;
        const v = threshold[i]!;
        let go: boolean;
        switch (c) {
          case LEQ:
            go = x <= v;
            break;
          case LEQ_NAN:
            go = !(x > v);
            break;
          case LT:
            go = x < v;
            break;
          case LT_NAN:
            go = !(x >= v);
            break;
          case GTE:
            go = x >= v;
            break;
          case GTE_NAN:
            go = !(x < v);
            break;
          case GT:
            go = x > v;
            break;
          case GT_NAN:
            go = !(x <= v);
            break;
          case EQ:
            go = x === v;
            break;
          case EQ_NAN:
            go = x === v || x !== x;
            break;
          default:
            go = x !== v;
        }
        i = go ? whenTrue[i]! : whenFalse[i]!;
        c = code[i]!;
      }
      sum = Math.fround(sum + leafValue[i]!);
    }
    out[r] = finish(sum, trees, base, average);
  }
}

/** Padded trees stay this small: 2^depth leaves per tree, at most this many nodes in all. */
const PERFECT_MAX_DEPTH = 12;
const PERFECT_MAX_NODES = 1 << 20;
/** ...and at most this many times the nodes the trees really have (deep, sparse trees stay node arrays). */
const PERFECT_MAX_GROWTH = 16;

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
/** The next float32 above (up = true) or below a finite float32. */
function nextFloat32(v: number, up: boolean): number {
  if (v === 0) return up ? 1.401298464324817e-45 : -1.401298464324817e-45;
  F32[0] = v;
  U32[0]! += v > 0 === up ? 1 : -1;
  return F32[0]!;
}

/** A branch as the interval of x that takes its "inside" child, and which original branch that is. */
function interval(code: number, v: number): { lo: number; hi: number; insideIsTrue: boolean } {
  const none = { lo: Infinity, hi: -Infinity };
  switch (code) {
    case LEQ:
    case LEQ_NAN:
      return { lo: -Infinity, hi: v, insideIsTrue: true };
    case LT:
    case LT_NAN:
      return { ...(v === -Infinity ? none : { lo: -Infinity, hi: v === Infinity ? 3.4028234663852886e38 : nextFloat32(v, false) }), insideIsTrue: true };
    case GTE:
    case GTE_NAN:
      return { lo: v, hi: Infinity, insideIsTrue: true };
    case GT:
    case GT_NAN:
      return { ...(v === Infinity ? none : { lo: v === -Infinity ? -3.4028234663852886e38 : nextFloat32(v, true), hi: Infinity }), insideIsTrue: true };
    case EQ:
    case EQ_NAN:
      return { lo: v, hi: v, insideIsTrue: true };
    default:
      // NEQ: inside [v, v] is its false branch.
      return { lo: v, hi: v, insideIsTrue: false };
  }
}

/** The perfect layout of a forest, or undefined when it would be too large. */
function perfectForest(forest: Forest): PerfectForest | undefined {
  const { roots, code, feature, threshold, whenTrue, whenFalse, leafValue } = forest;
  const depthOf = (i: number): number => (code[i] === LEAF ? 0 : 1 + Math.max(depthOf(whenTrue[i]!), depthOf(whenFalse[i]!)));
  let depth = 0;
  for (const root of roots) depth = Math.max(depth, depthOf(root));
  const padded = roots.length * (1 << depth);
  if (depth === 0 || depth > PERFECT_MAX_DEPTH || padded > PERFECT_MAX_NODES || padded > PERFECT_MAX_GROWTH * code.length) return undefined;
  const inner = (1 << depth) - 1;
  const trees = roots.length;
  const p: PerfectForest = {
    depth,
    trees,
    lo: new Float64Array(trees * inner).fill(-Infinity),
    hi: new Float64Array(trees * inner).fill(Infinity),
    feature: new Int32Array(trees * inner),
    nanInside: new Uint8Array(trees * inner).fill(1),
    leafValue: new Float64Array(trees << depth),
    base: forest.base,
    average: forest.average,
    oneSided: false,
  };
  // Fills slot `k` (breadth-first index within tree t) at level `d` from original node `i`.
  const fill = (t: number, k: number, d: number, i: number): void => {
    if (d === depth) {
      p.leafValue[t * (inner + 1) + k - inner] = leafValue[i]!;
      return;
    }
    if (code[i] === LEAF) {
      // Padding: always inside (left); both children are this leaf.
      fill(t, 2 * k + 1, d + 1, i);
      fill(t, 2 * k + 2, d + 1, i);
      return;
    }
    const at = t * inner + k;
    const c = code[i]!;
    const { lo, hi, insideIsTrue } = interval(c, threshold[i]!);
    p.lo[at] = lo;
    p.hi[at] = hi;
    p.feature[at] = feature[i]!;
    // NaN takes the true branch on the missing track (and NEQ's true branch always).
    const nanTrue = c === LEQ_NAN || c === LT_NAN || c === GTE_NAN || c === GT_NAN || c === EQ_NAN || c === NEQ;
    p.nanInside[at] = nanTrue === insideIsTrue ? 1 : 0;
    fill(t, 2 * k + 1, d + 1, insideIsTrue ? whenTrue[i]! : whenFalse[i]!);
    fill(t, 2 * k + 2, d + 1, insideIsTrue ? whenFalse[i]! : whenTrue[i]!);
  };
  roots.forEach((root, t) => fill(t, 0, 0, root));
  p.oneSided = p.lo.every((v) => v === -Infinity);
  return p;
}

function applyStep(step: Step, x: number): number {
  switch (step.op) {
    case "sigmoid":
      return Math.fround(1 / (1 + Math.exp(-x)));
    case "add":
      return Math.fround(x + step.c);
    case "mul":
      return Math.fround(x * step.c);
    case "sub":
      return Math.fround(x - step.c);
    case "subFrom":
      return Math.fround(step.c - x);
    case "div":
      return Math.fround(x / step.c);
    case "divFrom":
      return Math.fround(step.c / x);
  }
}

/**
 * Compiles the model's score (the last column of `outputName`, as the server reads it) fed by a
 * [N, featureCount] float32 `inputName`. Throws UnsupportedModel naming the first step it cannot take.
 */
export function compileTreeScorer(
  bytes: Uint8Array,
  io: { inputName: string; outputName: string },
  featureCount: number,
  layout: "auto" | "nodes" = "auto",
): TreeScorer {
  let graph: GraphProto | undefined;
  try {
    graph = fromBinary(ModelProtoSchema, bytes).graph;
  } catch (err) {
    throw new UnsupportedModel(`not a readable ONNX model: ${(err as Error).message}`);
  }
  if (!graph) throw new UnsupportedModel("the model has no graph");
  const producers = new Map<string, NodeProto>();
  for (const node of graph.node) for (const out of node.output) producers.set(out, node);
  const constants = new Map<string, TensorProto>();
  for (const t of graph.initializer) constants.set(t.name, t);
  for (const node of graph.node) {
    const value = node.opType === "Constant" && node.domain === "" ? node.attribute.find((a) => a.name === "value")?.t : undefined;
    if (value) constants.set(node.output[0]!, value);
  }
  const tracer = new Tracer(producers, constants, io.inputName, featureCount);
  const { ensemble, target, steps } = tracer.column(io.outputName, tracer.width(io.outputName) - 1);
  const forest = compileForest(ensemble, target, featureCount);
  const description = `${forest.roots.length} trees, ${forest.code.length} nodes${steps.length ? `, then ${steps.map((s) => s.op).join(", ")}` : ""}`;
  return new TreeScorer(forest, steps, featureCount, description, layout);
}

/** Follows one output column back through the graph to the ensemble target it comes from. */
class Tracer {
  constructor(
    private readonly producers: Map<string, NodeProto>,
    private readonly constants: Map<string, TensorProto>,
    private readonly input: string,
    private readonly featureCount: number,
  ) {}

  private producer(name: string): NodeProto {
    const node = this.producers.get(name);
    if (!node) throw new UnsupportedModel(`"${name}" is ${name === this.input ? "the feature input itself" : "not produced by any node"}`);
    if (node.domain !== "" && node.domain !== "ai.onnx" && node.domain !== "ai.onnx.ml")
      throw new UnsupportedModel(`${node.opType} is in domain "${node.domain}"`);
    return node;
  }

  /** Columns of a [N, k] (or [N]) tensor. */
  width(name: string, depth = 0): number {
    if (depth > 64) throw new UnsupportedModel("the graph is too deep");
    if (name === this.input) return this.featureCount;
    const node = this.producer(name);
    switch (node.opType) {
      case "TreeEnsembleRegressor":
        return Number(intAttr(node, "n_targets", 1));
      case "Sigmoid":
      case "Identity":
        return this.width(node.input[0]!, depth + 1);
      case "Add":
      case "Sub":
      case "Mul":
      case "Div": {
        const [a, b] = node.input as [string, string];
        return this.scalar(a) !== undefined ? this.width(b, depth + 1) : this.width(a, depth + 1);
      }
      case "Concat":
        this.concatAxis(node);
        return node.input.reduce((sum, i) => sum + this.width(i, depth + 1), 0);
      default:
        throw new UnsupportedModel(`the score passes through ${node.opType}, which the native scorer does not implement`);
    }
  }

  column(name: string, col: number, depth = 0): { ensemble: NodeProto; target: number; steps: Step[] } {
    if (depth > 64) throw new UnsupportedModel("the graph is too deep");
    const node = this.producer(name);
    const inner = (input: string, c = col) => this.column(input, c, depth + 1);
    const then = (input: string, step: Step) => {
      const r = inner(input);
      r.steps.push(step);
      return r;
    };
    switch (node.opType) {
      case "TreeEnsembleRegressor": {
        if (node.input[0] !== this.input) throw new UnsupportedModel("the tree ensemble does not read the feature input directly");
        const steps: Step[] = [];
        const post = stringAttr(node, "post_transform", "NONE");
        if (post === "LOGISTIC") steps.push({ op: "sigmoid" });
        else if (post !== "NONE") throw new UnsupportedModel(`post_transform ${post} is not implemented`);
        return { ensemble: node, target: col, steps };
      }
      case "Identity":
        return inner(node.input[0]!);
      case "Sigmoid":
        return then(node.input[0]!, { op: "sigmoid" });
      case "Add":
      case "Mul":
      case "Sub":
      case "Div": {
        const [a, b] = node.input as [string, string];
        const ca = this.scalar(a);
        const cb = this.scalar(b);
        if ((ca === undefined) === (cb === undefined)) throw new UnsupportedModel(`${node.opType} needs one scalar constant operand`);
        const c = (ca ?? cb)!;
        const variable = ca === undefined ? a : b;
        const op =
          node.opType === "Add"
            ? "add"
            : node.opType === "Mul"
              ? "mul"
              : node.opType === "Sub"
                ? ca === undefined
                  ? "sub"
                  : "subFrom"
                : ca === undefined
                  ? "div"
                  : "divFrom";
        return then(variable, { op, c });
      }
      case "Concat": {
        let c = col;
        for (const input of node.input) {
          const w = this.width(input, depth + 1);
          if (c < w) return inner(input, c);
          c -= w;
        }
        throw new UnsupportedModel("Concat has fewer columns than its output");
      }
      default:
        throw new UnsupportedModel(`the score passes through ${node.opType}, which the native scorer does not implement`);
    }
  }

  private concatAxis(node: NodeProto): void {
    const axis = Number(intAttr(node, "axis", 0));
    if (axis !== 1 && axis !== -1) throw new UnsupportedModel(`Concat on axis ${axis} (only the column axis is implemented)`);
  }

  /** The value of a float32 constant with one element, else undefined. */
  private scalar(name: string): number | undefined {
    const t = this.constants.get(name);
    if (!t) return undefined;
    if (t.dataType !== TensorProto_DataType.FLOAT) throw new UnsupportedModel(`constant "${name}" is not float32`);
    if (t.dims.reduce((n, d) => n * Number(d), 1) !== 1) throw new UnsupportedModel(`constant "${name}" is not a scalar`);
    if (t.floatData.length) return t.floatData[0]!;
    if (t.rawData.length === 4) return new DataView(t.rawData.buffer, t.rawData.byteOffset, 4).getFloat32(0, true);
    throw new UnsupportedModel(`constant "${name}" has no value`);
  }
}

function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}
function intAttr(node: NodeProto, name: string, fallback: number): bigint {
  return attr(node, name)?.i ?? BigInt(fallback);
}
function stringAttr(node: NodeProto, name: string, fallback: string): string {
  const a = attr(node, name);
  return a ? new TextDecoder().decode(a.s) : fallback;
}
const ints = (node: NodeProto, name: string): number[] => (attr(node, name)?.ints ?? []).map(Number);
const floats = (node: NodeProto, name: string): number[] => attr(node, name)?.floats ?? [];
const strings = (node: NodeProto, name: string): string[] => (attr(node, name)?.strings ?? []).map((s) => new TextDecoder().decode(s));

/** The TreeEnsembleRegressor's attributes as flat arrays, for one target column. */
function compileForest(node: NodeProto, target: number, featureCount: number): Forest {
  for (const a of node.attribute) {
    if (a.name.endsWith("_as_tensor")) throw new UnsupportedModel(`attribute ${a.name} (double thresholds or weights) is not implemented`);
  }
  const aggregate = stringAttr(node, "aggregate_function", "SUM");
  if (aggregate !== "SUM" && aggregate !== "AVERAGE") throw new UnsupportedModel(`aggregate_function ${aggregate} is not implemented`);
  const treeIds = ints(node, "nodes_treeids");
  const nodeIds = ints(node, "nodes_nodeids");
  const featureIds = ints(node, "nodes_featureids");
  const modes = strings(node, "nodes_modes");
  const values = floats(node, "nodes_values");
  const trueIds = ints(node, "nodes_truenodeids");
  const falseIds = ints(node, "nodes_falsenodeids");
  const missingTrue = ints(node, "nodes_missing_value_tracks_true");
  const n = treeIds.length;
  if (!n) throw new UnsupportedModel("the tree ensemble has no nodes");
  for (const [name, arr] of [
    ["nodes_nodeids", nodeIds],
    ["nodes_featureids", featureIds],
    ["nodes_modes", modes],
    ["nodes_values", values],
    ["nodes_truenodeids", trueIds],
    ["nodes_falsenodeids", falseIds],
  ] as const) {
    if (arr.length !== n) throw new UnsupportedModel(`${name} has ${arr.length} entries for ${n} nodes`);
  }
  if (missingTrue.length && missingTrue.length !== n)
    throw new UnsupportedModel(`nodes_missing_value_tracks_true has ${missingTrue.length} entries for ${n} nodes`);

  // Global index of (tree, node id); trees in the order they first appear (onnxruntime's summation order).
  const index = new Map<string, number>();
  const key = (tree: number, id: number) => `${tree}:${id}`;
  const treeOrder: number[] = [];
  const seenTrees = new Set<number>();
  for (let i = 0; i < n; i++) {
    if (!seenTrees.has(treeIds[i]!)) {
      seenTrees.add(treeIds[i]!);
      treeOrder.push(treeIds[i]!);
    }
    const k = key(treeIds[i]!, nodeIds[i]!);
    if (index.has(k)) throw new UnsupportedModel(`node ${nodeIds[i]} of tree ${treeIds[i]} is listed twice`);
    index.set(k, i);
  }
  const code = new Uint8Array(n);
  const feature = new Int32Array(n);
  const threshold = new Float64Array(n);
  const whenTrue = new Int32Array(n);
  const whenFalse = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    if (modes[i] === "LEAF") continue;
    const base = MODE_CODES[modes[i]!];
    if (base === undefined) throw new UnsupportedModel(`node mode ${modes[i]} is not an ONNX branch mode`);
    const nanTrue = missingTrue[i] === 1;
    code[i] = base === EQ ? (nanTrue ? EQ_NAN : EQ) : base === NEQ ? NEQ : nanTrue ? base + 1 : base;
    const f = featureIds[i]!;
    if (f < 0 || f >= featureCount) throw new UnsupportedModel(`node ${nodeIds[i]} of tree ${treeIds[i]} reads feature ${f} of ${featureCount}`);
    feature[i] = f;
    threshold[i] = Math.fround(values[i]!);
    const t = index.get(key(treeIds[i]!, trueIds[i]!));
    const e = index.get(key(treeIds[i]!, falseIds[i]!));
    if (t === undefined || e === undefined) throw new UnsupportedModel(`node ${nodeIds[i]} of tree ${treeIds[i]} points to a node that does not exist`);
    whenTrue[i] = t;
    whenFalse[i] = e;
  }
  const roots = Int32Array.from(treeOrder, (tree) => {
    const root = index.get(key(tree, 0));
    if (root === undefined) throw new UnsupportedModel(`tree ${tree} has no node 0`);
    return root;
  });
  // Every path must end at a leaf: no cycles.
  for (const root of roots) {
    const stack = [[root, 0]];
    while (stack.length) {
      const [i, depth] = stack.pop()! as [number, number];
      if (depth > n) throw new UnsupportedModel("a tree has a cycle");
      if (code[i] !== LEAF) stack.push([whenTrue[i]!, depth + 1], [whenFalse[i]!, depth + 1]);
    }
  }

  const nTargets = Number(intAttr(node, "n_targets", 1));
  const leafValue = new Float64Array(n);
  const tTrees = ints(node, "target_treeids");
  const tNodes = ints(node, "target_nodeids");
  const tIds = ints(node, "target_ids");
  const tWeights = floats(node, "target_weights");
  if (tNodes.length !== tTrees.length || tIds.length !== tTrees.length || tWeights.length !== tTrees.length) {
    throw new UnsupportedModel("the target_* attributes differ in length");
  }
  for (let w = 0; w < tTrees.length; w++) {
    if (tIds[w]! < 0 || tIds[w]! >= nTargets) throw new UnsupportedModel(`target_ids has ${tIds[w]} for ${nTargets} targets`);
    if (tIds[w] !== target) continue;
    const i = index.get(key(tTrees[w]!, tNodes[w]!));
    if (i === undefined || code[i] !== LEAF) throw new UnsupportedModel(`a target weight is on node ${tNodes[w]} of tree ${tTrees[w]}, which is no leaf`);
    leafValue[i] = Math.fround(leafValue[i]! + tWeights[w]!);
  }
  const baseValues = floats(node, "base_values");
  if (baseValues.length && baseValues.length !== nTargets) throw new UnsupportedModel(`base_values has ${baseValues.length} entries for ${nTargets} targets`);
  return { roots, code, feature, threshold, whenTrue, whenFalse, leafValue, base: Math.fround(baseValues[target] ?? 0), average: aggregate === "AVERAGE" };
}
