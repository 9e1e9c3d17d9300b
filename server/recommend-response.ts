// The RecommendResponse of one Recommend, encoded by hand from the ranked candidates: the same bytes
// as protobuf-es's toBinary(RecommendResponseSchema, create(..., recommendResponseInit(f)))
// (test/server/recommend-response.test.ts checks byte equality) without building a message per
// item and walking them by reflection on the request's tick. lib/grpc.ts sends the bytes as they are.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { RecommendResponseSchema } from "../gen/streamserve/v1/recommendation_pb.js";
import { doubleSet, I64, LEN, utf8Length, varintSize, Writer } from "../lib/proto-writer.js";

export interface RecommendResponseFields {
  requestId: string;
  itemIds: readonly string[];
  scores: ArrayLike<number>;
  /** Indices into itemIds/scores, best first: the recommendations in order. */
  order: ArrayLike<number>;
  modelName: string;
  modelVersion: string;
  variant: string;
  latencyMs: number;
}

/** The library path: the message init protobuf-es would encode. */
export function recommendResponseInit(f: RecommendResponseFields): MessageInitShape<typeof RecommendResponseSchema> {
  return {
    requestId: f.requestId,
    recommendations: Array.from(f.order, (i) => ({ itemId: f.itemIds[i]!, score: f.scores[i]! })),
    modelName: f.modelName,
    modelVersion: f.modelVersion,
    variant: f.variant,
    latencyMs: f.latencyMs,
  };
}

const stringSize = (bytes: number) => (bytes === 0 ? 0 : 1 + varintSize(bytes) + bytes);

export function encodeRecommendResponse(f: RecommendResponseFields): Uint8Array {
  const { itemIds, scores, order } = f;
  const n = order.length;
  const requestIdBytes = utf8Length(f.requestId);
  const modelNameBytes = utf8Length(f.modelName);
  const modelVersionBytes = utf8Length(f.modelVersion);
  const variantBytes = utf8Length(f.variant);
  let size = stringSize(requestIdBytes) + stringSize(modelNameBytes) + stringSize(modelVersionBytes) + stringSize(variantBytes);
  if (doubleSet(f.latencyMs)) size += 9;
  const itemBytes = new Array<number>(n);
  const itemSizes = new Array<number>(n);
  for (let k = 0; k < n; k++) {
    const i = order[k]!;
    const b = (itemBytes[k] = utf8Length(itemIds[i]!));
    const s = (itemSizes[k] = stringSize(b) + (doubleSet(scores[i]!) ? 9 : 0));
    size += 1 + varintSize(s) + s;
  }
  const w = new Writer(Buffer.allocUnsafe(size));
  w.optionalString(1, f.requestId, requestIdBytes);
  for (let k = 0; k < n; k++) {
    const i = order[k]!;
    w.tag(2, LEN);
    w.varint(itemSizes[k]!);
    w.optionalString(1, itemIds[i]!, itemBytes[k]!);
    if (doubleSet(scores[i]!)) w.tag(2, I64), w.double(scores[i]!);
  }
  w.optionalString(3, f.modelName, modelNameBytes);
  w.optionalString(4, f.modelVersion, modelVersionBytes);
  w.optionalString(5, f.variant, variantBytes);
  if (doubleSet(f.latencyMs)) w.tag(6, I64), w.double(f.latencyMs);
  if (w.pos !== size) throw new Error(`RecommendResponse encoder wrote ${w.pos} bytes, expected ${size}`);
  return w.buf;
}
