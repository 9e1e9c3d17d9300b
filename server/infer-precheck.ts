// Checks a ModelInferRequest's shapes, batch sizes and parameter counts on its wire bytes, before
// protobuf decodes it: decoding a [1000000,4] FP32 tensor takes seconds of the event loop that every
// other call shares, only to be refused for its batch size. The scan reads tags and lengths and
// skips contents, so it costs microseconds whatever the payload.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { invalidArgument } from "../lib/grpc.js";
import type { ServingLimits } from "./limits.js";

// Field numbers from inference/grpc_predict_v2.proto.
const REQUEST_PARAMETERS = 4;
const REQUEST_INPUTS = 5;
const REQUEST_OUTPUTS = 6;
const INPUT_SHAPE = 3;
const INPUT_PARAMETERS = 4;
const OUTPUT_PARAMETERS = 2;

export type PrecheckLimits = Pick<ServingLimits, "maxBatchRows" | "maxParameters" | "maxTensors">;

/**
 * Throws INVALID_ARGUMENT (naming the field) when the request's declared shapes or counts exceed
 * the limits. A body that is not valid protobuf is left for the decoder to report.
 */
export function precheckModelInfer(bytes: Uint8Array, limits: PrecheckLimits): void {
  let reader: BinaryReader;
  let params = 0;
  let inputs = 0;
  let outputs = 0;
  try {
    reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const [field, wire] = reader.tag();
      if (field === REQUEST_PARAMETERS && wire === WireType.LengthDelimited) {
        reader.skip(wire, field);
        if (++params > limits.maxParameters) throw invalidArgument("parameters", `has more than ${limits.maxParameters} entries`);
      } else if (field === REQUEST_INPUTS && wire === WireType.LengthDelimited) {
        const index = inputs++;
        if (inputs > limits.maxTensors) throw invalidArgument("inputs", `has more than ${limits.maxTensors} tensors`);
        checkInput(`inputs[${index}]`, reader.bytes(), limits);
      } else if (field === REQUEST_OUTPUTS && wire === WireType.LengthDelimited) {
        const index = outputs++;
        if (outputs > limits.maxTensors) throw invalidArgument("outputs", `has more than ${limits.maxTensors} tensors`);
        const count = countField(reader.bytes(), OUTPUT_PARAMETERS);
        if (count > limits.maxParameters) throw invalidArgument(`outputs[${index}].parameters`, `has more than ${limits.maxParameters} entries`);
      } else {
        reader.skip(wire, field);
      }
    }
  } catch (err) {
    if ((err as { name?: string }).name === "ServiceError") throw err;
    return; // not protobuf: the decoder says so with its own message
  }
}

function checkInput(field: string, bytes: Uint8Array, limits: PrecheckLimits): void {
  const reader = new BinaryReader(bytes);
  const shape: bigint[] = [];
  let params = 0;
  while (reader.pos < reader.len) {
    const [f, wire] = reader.tag();
    if (f === INPUT_SHAPE && wire === WireType.LengthDelimited) {
      // packed (what every encoder writes)
      const end = reader.uint32() + reader.pos;
      while (reader.pos < end) shape.push(BigInt(reader.int64()));
    } else if (f === INPUT_SHAPE && wire === WireType.Varint) {
      shape.push(BigInt(reader.int64()));
    } else if (f === INPUT_PARAMETERS && wire === WireType.LengthDelimited) {
      reader.skip(wire, f);
      if (++params > limits.maxParameters) throw invalidArgument(`${field}.parameters`, `has more than ${limits.maxParameters} entries`);
    } else {
      reader.skip(wire, f);
    }
    if (shape.length > 64) throw invalidArgument(`${field}.shape`, "has more than 64 dimensions");
  }
  shape.forEach((d, i) => {
    if (d < 0n || d > 2n ** 31n) throw invalidArgument(`${field}.shape[${i}]`, `must be between 0 and 2^31, got ${d}`);
  });
  const batch = shape[0];
  if (batch !== undefined && batch > BigInt(limits.maxBatchRows))
    throw invalidArgument(`${field}.shape[0]`, `batch of ${batch} exceeds ${limits.maxBatchRows}`);
}

function countField(bytes: Uint8Array, fieldNo: number): number {
  const reader = new BinaryReader(bytes);
  let n = 0;
  while (reader.pos < reader.len) {
    const [f, wire] = reader.tag();
    reader.skip(wire, f);
    if (f === fieldNo) n++;
  }
  return n;
}
