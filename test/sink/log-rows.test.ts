// The message → rows mapping, without NATS or ClickHouse: every kind's columns, values JSON
// cannot carry, and the messages the sink must refuse rather than write.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { FeatureWindowLogSchema, OutcomeLogSchema, PredictionLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { decodeLog, float, UndecodableLogError } from "../../sink/log-rows.js";
import { BASE_MS, FEATURE_NAMES, logMessage } from "./fixtures/logs.js";

const stored = BASE_MS + 123_456;

describe("decodeLog", () => {
  it("turns a prediction log into one row per scored item, features keyed in feature_names order", () => {
    const { table, rows } = decodeLog("prediction", { data: logMessage("prediction", 4).data, storedAtMs: stored });
    assert.equal(table, "predictions");
    assert.equal(rows.length, 3);
    assert.deepEqual(rows[1], {
      request_id: "req-r-4",
      time: new Date(BASE_MS + 4000).toISOString(),
      user_id: "u4",
      item_id: "item1",
      position: 2,
      score: 0.9,
      model_name: "recommender",
      model_version: "fallback",
      experiment: "exp1",
      variant: "control",
      current_page: "p4",
      device_type: "mobile",
      features: { clicks_last_5min: 4, engagement_score: 3, device_type: 1 },
      missing_features: ["device_type"],
      // model_feature_count 0 (the shape before every feature was logged): all entries were the model's.
      model_features: FEATURE_NAMES,
      latency_ms: 1.5,
    });
    assert.deepEqual(Object.keys(rows[0]!.features as object), FEATURE_NAMES);
    // A NaN feature (a missing categorical) must stay NaN, not become JSON null → 0.
    assert.equal((rows[2]!.features as Record<string, unknown>).device_type, "nan");
  });

  it("keeps every logged feature and names the leading model_feature_count entries as the model's vector", () => {
    const msg = create(PredictionLogSchema, {
      requestId: "q-all",
      time: timestampFromMs(BASE_MS),
      modelVersion: "4",
      featureNames: ["item_ctr_5min", "clicks_last_5min", "engagement_score", "device_type"],
      modelFeatureCount: 2,
      items: [{ itemId: "i1", position: 1, features: [0.25, 3, 0.9, 1] }],
      missingFeatures: ["engagement_score"],
    });
    const [row] = decodeLog("prediction", { data: toBinary(PredictionLogSchema, msg), storedAtMs: stored }).rows;
    assert.deepEqual(row!.features, { item_ctr_5min: 0.25, clicks_last_5min: 3, engagement_score: 0.9, device_type: 1 });
    assert.deepEqual(row!.model_features, ["item_ctr_5min", "clicks_last_5min"]);
    assert.deepEqual(row!.missing_features, ["engagement_score"]);
  });

  it("writes a shadow log, a PredictionLog on its own subject, to shadow_predictions with the same columns", () => {
    const shadow = decodeLog("shadow", { data: logMessage("shadow", 4).data, storedAtMs: stored });
    const prediction = decodeLog("prediction", { data: logMessage("prediction", 4).data, storedAtMs: stored });
    assert.equal(shadow.table, "shadow_predictions");
    assert.deepEqual(shadow.rows, prediction.rows);
  });

  it("maps exposures, outcomes and model events column for column", () => {
    assert.deepEqual(decodeLog("exposure", { data: logMessage("exposure", 1).data, storedAtMs: stored }), {
      table: "exposures",
      rows: [
        {
          request_id: "req-r-1",
          time: new Date(BASE_MS + 1000).toISOString(),
          experiment: "exp1",
          variant: "control",
          user_id: "u1",
          model_name: "recommender",
          model_version: "2",
        },
      ],
    });
    assert.deepEqual(decodeLog("outcome", { data: logMessage("outcome", 3).data, storedAtMs: stored }).rows, [
      { outcome_id: "out-r-3", request_id: "req-r-3", item_id: "item0", time: new Date(BASE_MS + 3000).toISOString(), clicked: 1, converted: 1, revenue: 9.5 },
    ]);
    const ev = decodeLog("model_event", { data: logMessage("model_event", 0).data, storedAtMs: stored });
    assert.equal(ev.table, "model_events");
    assert.equal(ev.rows[0]!.details, JSON.stringify({ auc: 0.71, i: 0 }));
    assert.equal(ev.rows[0]!.to_version, "2");
  });

  it("routes feature windows to user_features or item_features by entity type", () => {
    const user = decodeLog("feature_window", { data: logMessage("feature_window", 2).data, storedAtMs: stored });
    assert.equal(user.table, "user_features");
    assert.deepEqual(user.rows[0], {
      user_id: "e2",
      window_start: new Date(BASE_MS + 600_000).toISOString(),
      window_end: new Date(BASE_MS + 900_000).toISOString(),
      features: { clicks_last_5min: 2, engagement_score: 2 * 0.3 },
      event_count: 3,
    });
    const item = decodeLog("feature_window", { data: logMessage("feature_window", 3).data, storedAtMs: stored });
    assert.equal(item.table, "item_features");
    assert.equal(item.rows[0]!.item_id, "e3");
  });

  it("accepts the JSON form of a message under Content-Type application/json", () => {
    const msg = create(OutcomeLogSchema, { outcomeId: "o1", requestId: "q1", itemId: "i", clicked: true, time: timestampFromMs(BASE_MS) });
    const { rows } = decodeLog("outcome", {
      data: new TextEncoder().encode(toJsonString(OutcomeLogSchema, msg)),
      contentType: "application/json",
      storedAtMs: stored,
    });
    assert.equal(rows[0]!.outcome_id, "o1");
    assert.equal(rows[0]!.clicked, 1);
  });

  it("takes the stored time when a log carries none", () => {
    const data = toBinary(OutcomeLogSchema, create(OutcomeLogSchema, { outcomeId: "o1", requestId: "q1" }));
    assert.equal(decodeLog("outcome", { data, storedAtMs: stored }).rows[0]!.time, new Date(stored).toISOString());
  });

  it("refuses garbage, wrong content types, missing ids and mismatched feature vectors", () => {
    const bad: [string, () => unknown][] = [
      ["garbage bytes", () => decodeLog("prediction", { data: new Uint8Array([0xff, 0xff, 0xff, 0x01]), storedAtMs: stored })],
      ["bad JSON", () => decodeLog("outcome", { data: new TextEncoder().encode("{nope"), contentType: "application/json", storedAtMs: stored })],
      ["unknown content type", () => decodeLog("outcome", { data: logMessage("outcome", 1).data, contentType: "text/csv", storedAtMs: stored })],
      ["no outcome_id", () => decodeLog("outcome", { data: toBinary(OutcomeLogSchema, create(OutcomeLogSchema, { requestId: "q" })), storedAtMs: stored })],
      [
        "feature count mismatch",
        () =>
          decodeLog("prediction", {
            data: toBinary(
              PredictionLogSchema,
              create(PredictionLogSchema, { requestId: "q", featureNames: ["a", "b"], items: [{ itemId: "i", features: [1] }] }),
            ),
            storedAtMs: stored,
          }),
      ],
      [
        "model_feature_count beyond the names",
        () =>
          decodeLog("prediction", {
            data: toBinary(
              PredictionLogSchema,
              create(PredictionLogSchema, { requestId: "q", featureNames: ["a"], modelFeatureCount: 2, items: [{ itemId: "i", features: [1] }] }),
            ),
            storedAtMs: stored,
          }),
      ],
      [
        "unknown entity type",
        () =>
          decodeLog("feature_window", {
            data: toBinary(
              FeatureWindowLogSchema,
              create(FeatureWindowLogSchema, { entityType: "session", entityId: "x", windowStart: timestampFromMs(BASE_MS) }),
            ),
            storedAtMs: stored,
          }),
      ],
      [
        "window without start",
        () =>
          decodeLog("feature_window", {
            data: toBinary(FeatureWindowLogSchema, create(FeatureWindowLogSchema, { entityType: "user", entityId: "x" })),
            storedAtMs: stored,
          }),
      ],
    ];
    for (const [what, fn] of bad) assert.throws(fn, UndecodableLogError, what);
  });

  it("writes non-finite floats as the strings ClickHouse reads", () => {
    assert.deepEqual([float(1.5), float(Number.NaN), float(Infinity), float(-Infinity)], [1.5, "nan", "inf", "-inf"]);
  });
});
