// The hand-written PredictionLog encoder writes exactly the bytes protobuf-es writes, for the
// shapes the request path produces and for the edge values (empty strings, zero and non-finite
// scores, multi-byte text, no items, no features).
import { it } from "node:test";
import assert from "node:assert/strict";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { PredictionLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { encodePredictionLog, predictionLogMessage, type PredictionLogFields } from "../../server/prediction-log.js";

function fields(over: Partial<PredictionLogFields> = {}): PredictionLogFields {
  const featureNames = ["clicks_last_5min", "item_views_5min", "device_type"];
  const itemIds = ["page_a", "page_b", "page_c"];
  return {
    requestId: "req-1",
    timeMs: 1_796_323_057_275,
    userId: "u1",
    modelName: "recommender",
    modelVersion: "3",
    experiment: "",
    variant: "",
    currentPage: "home",
    deviceType: "mobile",
    featureNames,
    modelFeatureCount: 2,
    itemIds,
    scores: [0.75, 0, 0.125],
    positions: [1, 0, 2],
    matrix: Float32Array.from([4, 10, 1, 4, 0, 1, 4, 3.3, -1]),
    missingFeatures: ["item_views_5min"],
    latencyMs: 0.8125,
    ...over,
  };
}

const cases: [string, PredictionLogFields][] = [
  ["a typical request", fields()],
  [
    "experiment, variant and multi-byte text",
    fields({ experiment: "exp-ü", variant: "treatment", userId: "用户-7", itemIds: ["é", "💡", ""], currentPage: "" }),
  ],
  [
    "non-finite and negative values",
    fields({ scores: [NaN, -0, Infinity], matrix: Float32Array.from([NaN, -Infinity, -0, 1e30, -1e-30, 7, 0, 0, 0]), latencyMs: 0 }),
  ],
  ["no items", fields({ itemIds: [], scores: [], positions: [], matrix: new Float32Array(0), missingFeatures: [] })],
  ["no features", fields({ featureNames: [], modelFeatureCount: 0, matrix: new Float32Array(0), missingFeatures: [] })],
  ["an old-style log (every entry the model's) at time 0", fields({ timeMs: 0, modelFeatureCount: 0 })],
  ["large positions and a sub-second time", fields({ positions: [300, 70_000, 0], timeMs: 1_796_323_057_001 })],
];

for (const [name, f] of cases) {
  it(`encodes ${name} byte for byte as protobuf-es does`, () => {
    const expected = toBinary(PredictionLogSchema, predictionLogMessage(f));
    const actual = encodePredictionLog(f);
    assert.deepEqual(Buffer.from(actual).toString("hex"), Buffer.from(expected).toString("hex"));
  });
}

it("decodes to the fields given, features widened from the served float32 values", () => {
  const f = fields();
  const log = fromBinary(PredictionLogSchema, encodePredictionLog(f));
  assert.equal(log.requestId, "req-1");
  assert.equal(log.modelFeatureCount, 2);
  assert.deepEqual(log.featureNames, f.featureNames);
  assert.deepEqual(
    log.items.map((i) => i.position),
    [1, 0, 2],
  );
  assert.deepEqual(log.items[2]!.features, [4, Math.fround(3.3), -1]);
  assert.equal(Number(log.time!.seconds) * 1000 + log.time!.nanos / 1e6, f.timeMs);
});
