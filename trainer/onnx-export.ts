// Writes a trained GbdtModel as an ONNX model that onnxruntime (and any ONNX runtime with the
// ai.onnx.ml domain) runs, using the protobuf-es messages generated from proto/onnx/onnx.proto.
//
// Graph: features ─TreeEnsembleRegressor─▶ margin ─Sigmoid─▶ p1 ─┬─ Concat(1 - p1, p1) ─▶ probabilities
//                                                                 └─ Greater(p1, 0.5) ─Cast─Reshape─▶ label
// TreeEnsembleRegressor + Sigmoid rather than TreeEnsembleClassifier: the classifier's binary case
// with one score column has runtime-specific rules for the second column and the label, while
// this graph states every step, so the probabilities equal the TypeScript model's.

import { create, toBinary } from "@bufbuild/protobuf";
import {
  AttributeProto_AttributeType as AttrType,
  AttributeProtoSchema,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataType as DataType,
  TensorProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type NodeProto,
  type TensorShapeProto_Dimension,
} from "../gen/onnx/onnx_pb.js";
import type { GbdtModel } from "./gbdt.js";
import { withDefaults } from "../lib/options.js";

/** Input tensor: float32 [N, F], features in the model's order, NaN for missing. */
export const ONNX_INPUT_NAME = "features";
/** Output tensor: float32 [N, 2]; column 1 is P(positive). */
export const ONNX_PROBABILITIES_NAME = "probabilities";
/** Output tensor: int64 [N]; 1 when P(positive) > 0.5. */
export const ONNX_LABEL_NAME = "label";

export interface OnnxExportOptions {
  /** Graph name. @default "streamserve_gbdt" */
  graphName?: string;
  /** Free text stored as the model's doc_string. @default "" */
  description?: string;
  /** Extra metadata_props entries (the feature names and kinds are always written). @default {} */
  metadata?: Record<string, string>;
}

export const ONNX_EXPORT_DEFAULTS: Readonly<Required<OnnxExportOptions>> = Object.freeze({
  graphName: "streamserve_gbdt",
  description: "",
  metadata: {},
});

const utf8 = new TextEncoder();

function attrInts(name: string, values: Iterable<number>): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttrType.INTS, ints: Array.from(values, (v) => BigInt(v)) });
}
function attrFloats(name: string, values: Iterable<number>): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttrType.FLOATS, floats: Array.from(values) });
}
function attrStrings(name: string, values: Iterable<string>): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttrType.STRINGS, strings: Array.from(values, (v) => utf8.encode(v)) });
}
function attrString(name: string, value: string): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttrType.STRING, s: utf8.encode(value) });
}
function attrInt(name: string, value: number): AttributeProto {
  return create(AttributeProtoSchema, { name, type: AttrType.INT, i: BigInt(value) });
}

function node(opType: string, inputs: string[], outputs: string[], attribute: AttributeProto[] = [], domain = ""): NodeProto {
  return create(NodeProtoSchema, { opType, input: inputs, output: outputs, attribute, domain, name: outputs[0] });
}

function dim(d: number | string): TensorShapeProto_Dimension {
  return typeof d === "number"
    ? ({ value: { case: "dimValue", value: BigInt(d) } } as TensorShapeProto_Dimension)
    : ({ value: { case: "dimParam", value: d } } as TensorShapeProto_Dimension);
}

function valueInfo(name: string, elemType: DataType, dims: (number | string)[]) {
  return create(ValueInfoProtoSchema, {
    name,
    type: { value: { case: "tensorType", value: { elemType, shape: { dim: dims.map(dim) } } } },
  });
}

/** The tree arrays flattened into the TreeEnsembleRegressor attributes (ai.onnx.ml opset 3). */
function treeEnsembleAttributes(model: GbdtModel): AttributeProto[] {
  const treeIds: number[] = [];
  const nodeIds: number[] = [];
  const featureIds: number[] = [];
  const modes: string[] = [];
  const values: number[] = [];
  const trueIds: number[] = [];
  const falseIds: number[] = [];
  const missingTrue: number[] = [];
  const targetTree: number[] = [];
  const targetNode: number[] = [];
  const targetWeight: number[] = [];
  model.trees.forEach((tree, t) => {
    for (let i = 0; i < tree.feature.length; i++) {
      treeIds.push(t);
      nodeIds.push(i);
      const leaf = tree.feature[i] < 0;
      featureIds.push(leaf ? 0 : tree.feature[i]);
      modes.push(leaf ? "LEAF" : tree.categorical[i] ? "BRANCH_EQ" : "BRANCH_LEQ");
      values.push(leaf ? 0 : tree.threshold[i]);
      trueIds.push(leaf ? 0 : tree.left[i]);
      falseIds.push(leaf ? 0 : tree.right[i]);
      missingTrue.push(leaf ? 0 : tree.missingLeft[i]);
      if (leaf) {
        targetTree.push(t);
        targetNode.push(i);
        targetWeight.push(tree.value[i]);
      }
    }
  });
  return [
    attrInt("n_targets", 1),
    attrInts("nodes_treeids", treeIds),
    attrInts("nodes_nodeids", nodeIds),
    attrInts("nodes_featureids", featureIds),
    attrStrings("nodes_modes", modes),
    attrFloats("nodes_values", values),
    attrInts("nodes_truenodeids", trueIds),
    attrInts("nodes_falsenodeids", falseIds),
    attrInts("nodes_missing_value_tracks_true", missingTrue),
    attrInts("target_treeids", targetTree),
    attrInts("target_nodeids", targetNode),
    attrInts(
      "target_ids",
      targetTree.map(() => 0),
    ),
    attrFloats("target_weights", targetWeight),
    attrFloats("base_values", [model.baseScore]),
    attrString("aggregate_function", "SUM"),
    attrString("post_transform", "NONE"),
  ];
}

/** Serialises the model to ONNX bytes (ir_version 8, opsets "" 13 and ai.onnx.ml 3). */
export function exportOnnx(model: GbdtModel, options: OnnxExportOptions = {}): Uint8Array {
  const o = withDefaults(ONNX_EXPORT_DEFAULTS, options);
  const F = model.featureNames.length;
  const scalar = (name: string, dataType: DataType, v: number) =>
    dataType === DataType.INT64
      ? create(TensorProtoSchema, { name, dataType, dims: [1n], int64Data: [BigInt(v)] })
      : create(TensorProtoSchema, { name, dataType, dims: [], floatData: [v] });
  const graph = create(GraphProtoSchema, {
    name: o.graphName,
    input: [valueInfo(ONNX_INPUT_NAME, DataType.FLOAT, ["N", F])],
    output: [valueInfo(ONNX_LABEL_NAME, DataType.INT64, ["N"]), valueInfo(ONNX_PROBABILITIES_NAME, DataType.FLOAT, ["N", 2])],
    initializer: [scalar("one", DataType.FLOAT, 1), scalar("half", DataType.FLOAT, 0.5), scalar("flat_shape", DataType.INT64, -1)],
    node: [
      node("TreeEnsembleRegressor", [ONNX_INPUT_NAME], ["margin"], treeEnsembleAttributes(model), "ai.onnx.ml"),
      node("Sigmoid", ["margin"], ["p_positive"]),
      node("Sub", ["one", "p_positive"], ["p_negative"]),
      node("Concat", ["p_negative", "p_positive"], [ONNX_PROBABILITIES_NAME], [attrInt("axis", 1)]),
      node("Greater", ["p_positive", "half"], ["is_positive"]),
      node("Cast", ["is_positive"], ["label_column"], [attrInt("to", DataType.INT64)]),
      node("Reshape", ["label_column", "flat_shape"], [ONNX_LABEL_NAME]),
    ],
  });
  const metadata: Record<string, string> = {
    feature_names: JSON.stringify(model.featureNames),
    categorical_features: JSON.stringify(model.featureNames.filter((_, f) => model.categorical[f])),
    trees: String(model.trees.length),
    params: JSON.stringify(model.params),
    ...o.metadata,
  };
  const bytes = toBinary(
    ModelProtoSchema,
    create(ModelProtoSchema, {
      irVersion: 8n,
      producerName: "streamserve-trainer",
      producerVersion: "1",
      docString: o.description,
      graph,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 13n }), create(OperatorSetIdProtoSchema, { domain: "ai.onnx.ml", version: 3n })],
      metadataProps: Object.entries(metadata).map(([key, value]) => create(StringStringEntryProtoSchema, { key, value })),
    }),
  );
  return bytes;
}

/**
 * A hand-set logistic scorer, p = sigmoid(x · weights + bias), with the trained models' input and
 * outputs: for drills that need a model of known behaviour (the demo's deliberately worse model).
 */
export function logisticOnnx(weights: readonly number[], bias: number, description = ""): Uint8Array {
  const F = weights.length;
  const tensor = (name: string, dims: bigint[], floatData: number[]) => create(TensorProtoSchema, { name, dataType: DataType.FLOAT, dims, floatData });
  const graph = create(GraphProtoSchema, {
    name: "streamserve_logistic",
    input: [valueInfo(ONNX_INPUT_NAME, DataType.FLOAT, ["N", F])],
    output: [valueInfo(ONNX_PROBABILITIES_NAME, DataType.FLOAT, ["N", 2])],
    initializer: [tensor("w", [BigInt(F), 1n], [...weights]), tensor("b", [1n], [bias]), tensor("one", [], [1])],
    node: [
      node("MatMul", [ONNX_INPUT_NAME, "w"], ["z0"]),
      node("Add", ["z0", "b"], ["margin"]),
      node("Sigmoid", ["margin"], ["p_positive"]),
      node("Sub", ["one", "p_positive"], ["p_negative"]),
      node("Concat", ["p_negative", "p_positive"], [ONNX_PROBABILITIES_NAME], [attrInt("axis", 1)]),
    ],
  });
  return toBinary(
    ModelProtoSchema,
    create(ModelProtoSchema, {
      irVersion: 8n,
      producerName: "streamserve-trainer",
      docString: description,
      graph,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 13n })],
    }),
  );
}
