// The hand-written RecommendResponse encoder writes exactly the bytes protobuf-es writes, for the
// shapes Recommend answers with and for the edge values (empty strings, zero, -0 and non-finite
// scores, multi-byte text, no recommendations, a limit below the candidates).
import { it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { RecommendResponseSchema } from "../../gen/streamserve/v1/recommendation_pb.js";
import { encodeRecommendResponse, recommendResponseInit, type RecommendResponseFields } from "../../server/recommend-response.js";

const base: RecommendResponseFields = {
  requestId: "req-1",
  itemIds: ["page_a", "page_b", "page_c"],
  scores: Float64Array.from([0.25, 0.875, 0.5]),
  order: [1, 2, 0],
  modelName: "recommender",
  modelVersion: "3",
  variant: "",
  latencyMs: 0.8125,
};

const cases: [string, RecommendResponseFields][] = [
  ["a typical response", base],
  ["a limit below the candidates", { ...base, order: [1] }],
  ["no recommendations, zero latency", { ...base, order: [], latencyMs: 0 }],
  ["empty strings, zero and -0 scores", { ...base, requestId: "", modelVersion: "", itemIds: ["", "b", "c"], scores: [0, -0, 1], order: [0, 1, 2] }],
  ["non-finite scores", { ...base, scores: [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY] }],
  ["multi-byte text, a variant", { ...base, requestId: "请求-ü", variant: "treatment-💡", itemIds: ["é", "💡", "x".repeat(300)] }],
  [
    "many items",
    {
      ...base,
      itemIds: Array.from({ length: 1000 }, (_, i) => `item-${i}`),
      scores: Float64Array.from({ length: 1000 }, (_, i) => i / 7),
      order: Array.from({ length: 1000 }, (_, i) => 999 - i),
    },
  ],
];

for (const [name, fields] of cases) {
  it(`writes the bytes protobuf-es writes: ${name}`, () => {
    const expected = toBinary(RecommendResponseSchema, create(RecommendResponseSchema, recommendResponseInit(fields)));
    assert.deepEqual(new Uint8Array(encodeRecommendResponse(fields)), expected);
  });
}
