// Open Inference Protocol tensors ↔ onnxruntime tensors: datatype names, typed and raw contents,
// and the checks that turn a malformed tensor into INVALID_ARGUMENT naming the field.
import { invalidArgument } from "../lib/grpc.js";
import type { InferTensorContents } from "../gen/inference/grpc_predict_v2_pb.js";
import { ort } from "./onnx-model.js";

type OrtNumeric = "float32" | "float64" | "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" | "uint64" | "bool";

/** OIP datatype → onnxruntime type and element size in raw contents. */
const DATATYPES: Record<string, { ort: OrtNumeric; bytes: number }> = {
  BOOL: { ort: "bool", bytes: 1 },
  UINT8: { ort: "uint8", bytes: 1 },
  UINT16: { ort: "uint16", bytes: 2 },
  UINT32: { ort: "uint32", bytes: 4 },
  UINT64: { ort: "uint64", bytes: 8 },
  INT8: { ort: "int8", bytes: 1 },
  INT16: { ort: "int16", bytes: 2 },
  INT32: { ort: "int32", bytes: 4 },
  INT64: { ort: "int64", bytes: 8 },
  FP32: { ort: "float32", bytes: 4 },
  FP64: { ort: "float64", bytes: 8 },
};

const ORT_TO_OIP: Record<string, string> = Object.fromEntries(Object.entries(DATATYPES).map(([k, v]) => [v.ort, k]));

export function oipDatatype(ortType: string): string {
  return ORT_TO_OIP[ortType] ?? (ortType === "string" ? "BYTES" : ortType.toUpperCase());
}

export interface DecodedInput {
  /** Values as doubles (BOOL → 0/1), converted to the model's type by `toOrtTensor`. */
  values: Float64Array | BigInt64Array | BigUint64Array;
  shape: number[];
}

/** Decodes one input tensor from typed contents or its raw bytes; `field` names it in errors. */
export function decodeInput(
  field: string,
  datatype: string,
  shape: readonly bigint[],
  contents: InferTensorContents | undefined,
  raw: Uint8Array | undefined,
): DecodedInput {
  // Own keys only: "__proto__", "constructor" and "toString" are on every object's prototype.
  const dt = Object.hasOwn(DATATYPES, datatype) ? DATATYPES[datatype] : undefined;
  if (!dt) throw invalidArgument(`${field}.datatype`, `"${datatype}" is not supported (use one of ${Object.keys(DATATYPES).join(", ")})`);
  const dims = shape.map((d, i) => {
    if (d < 0n || d > 2n ** 31n) throw invalidArgument(`${field}.shape[${i}]`, `must be between 0 and 2^31, got ${d}`);
    return Number(d);
  });
  if (dims.length === 0) throw invalidArgument(`${field}.shape`, "is empty; give at least the batch dimension");
  const count = dims.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(count)) throw invalidArgument(`${field}.shape`, "describes too many elements");

  if (raw !== undefined) {
    if (raw.byteLength !== count * dt.bytes) {
      throw invalidArgument(`raw_input_contents for ${field}`, `has ${raw.byteLength} bytes; shape [${dims}] of ${datatype} needs ${count * dt.bytes}`);
    }
    return { values: fromRaw(dt.ort, raw, count), shape: dims };
  }
  const typed = typedContents(datatype, contents);
  if (typed.length !== count) {
    throw invalidArgument(`${field}.contents`, `has ${typed.length} ${datatype} values; shape [${dims}] needs ${count}`);
  }
  if (datatype === "INT64" || datatype === "UINT64") {
    return { values: datatype === "INT64" ? BigInt64Array.from(typed as bigint[]) : BigUint64Array.from(typed as bigint[]), shape: dims };
  }
  return { values: Float64Array.from(typed as (number | boolean)[], Number), shape: dims };
}

function typedContents(datatype: string, c: InferTensorContents | undefined): readonly (number | bigint | boolean)[] {
  if (!c) return [];
  switch (datatype) {
    case "BOOL":
      return c.boolContents;
    case "INT8":
    case "INT16":
    case "INT32":
      return c.intContents;
    case "INT64":
      return c.int64Contents;
    case "UINT8":
    case "UINT16":
    case "UINT32":
      return c.uintContents;
    case "UINT64":
      return c.uint64Contents;
    case "FP32":
      return c.fp32Contents;
    case "FP64":
      return c.fp64Contents;
    default:
      return [];
  }
}

function fromRaw(type: OrtNumeric, raw: Uint8Array, count: number): Float64Array | BigInt64Array | BigUint64Array {
  // Copy into a buffer of its own: decoded byte fields are views into the whole request (and a
  // Node Buffer's slice() is a view too), at any offset.
  const buf = new Uint8Array(raw).buffer;
  const view = new DataView(buf);
  if (type === "int64") return new BigInt64Array(Array.from({ length: count }, (_, i) => view.getBigInt64(i * 8, true)));
  if (type === "uint64") return new BigUint64Array(Array.from({ length: count }, (_, i) => view.getBigUint64(i * 8, true)));
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    switch (type) {
      case "float32":
        out[i] = view.getFloat32(i * 4, true);
        break;
      case "float64":
        out[i] = view.getFloat64(i * 8, true);
        break;
      case "int8":
        out[i] = view.getInt8(i);
        break;
      case "int16":
        out[i] = view.getInt16(i * 2, true);
        break;
      case "int32":
        out[i] = view.getInt32(i * 4, true);
        break;
      case "uint8":
        out[i] = view.getUint8(i);
        break;
      case "uint16":
        out[i] = view.getUint16(i * 2, true);
        break;
      case "uint32":
        out[i] = view.getUint32(i * 4, true);
        break;
      case "bool":
        out[i] = view.getUint8(i) ? 1 : 0;
        break;
    }
  }
  return out;
}

/** Builds the onnxruntime tensor of the type the model declares, converting numeric types. */
export function toOrtTensor(field: string, input: DecodedInput, modelType: string): ort.Tensor {
  const v = input.values;
  const asNumbers = () => (v instanceof Float64Array ? v : Float64Array.from(v as ArrayLike<bigint>, Number));
  switch (modelType) {
    case "float32":
      return new ort.Tensor("float32", Float32Array.from(asNumbers()), input.shape);
    case "float64":
      return new ort.Tensor("float64", Float64Array.from(asNumbers()), input.shape);
    case "int32":
      return new ort.Tensor("int32", Int32Array.from(asNumbers()), input.shape);
    case "int64":
      return new ort.Tensor("int64", v instanceof BigInt64Array ? v : BigInt64Array.from(asNumbers(), (x) => BigInt(Math.trunc(x))), input.shape);
    case "bool":
      return new ort.Tensor(
        "bool",
        Uint8Array.from(asNumbers(), (x) => (x ? 1 : 0)),
        input.shape,
      );
    default:
      throw invalidArgument(field, `the model's input type ${modelType} is not supported by this server`);
  }
}

/** An onnxruntime output as OIP typed contents, or as raw little-endian bytes. */
export function encodeOutput(
  tensor: ort.Tensor,
  raw: boolean,
): { datatype: string; shape: bigint[]; contents?: Partial<InferTensorContents>; raw?: Uint8Array } {
  const datatype = oipDatatype(tensor.type);
  const shape = tensor.dims.map((d) => BigInt(d));
  const data = tensor.data as ArrayLike<number | bigint | boolean> & { buffer?: ArrayBufferLike; byteOffset?: number; byteLength?: number };
  if (raw) {
    if (ArrayBuffer.isView(data)) return { datatype, shape, raw: new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice() };
    throw new Error(`cannot encode a ${tensor.type} output as raw bytes`);
  }
  const values = Array.from(data as ArrayLike<number | bigint>);
  switch (tensor.type) {
    case "float32":
      return { datatype, shape, contents: { fp32Contents: values as number[] } };
    case "float64":
      return { datatype, shape, contents: { fp64Contents: values as number[] } };
    case "int64":
      return { datatype, shape, contents: { int64Contents: values as bigint[] } };
    case "uint64":
      return { datatype, shape, contents: { uint64Contents: values as bigint[] } };
    case "bool":
      return { datatype, shape, contents: { boolContents: values.map(Boolean) } };
    case "int8":
    case "int16":
    case "int32":
      return { datatype, shape, contents: { intContents: values as number[] } };
    case "uint8":
    case "uint16":
    case "uint32":
      return { datatype, shape, contents: { uintContents: values as number[] } };
    default:
      throw new Error(`cannot encode a ${tensor.type} output`);
  }
}
