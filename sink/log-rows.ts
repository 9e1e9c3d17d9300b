// How one LOGS message becomes ClickHouse rows: which table each log kind lands in, and the
// decoding of the protobuf (or JSON) body into JSONEachRow objects whose columns match the
// migrations in lib/clickhouse-migrations.ts. Pure functions, so the mapping is tested without
// NATS or ClickHouse and the sink loop stays about delivery.
import { fromBinary, fromJsonString, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { ExposureLogSchema, FeatureWindowLogSchema, ModelEventLogSchema, OutcomeLogSchema, PredictionLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import type { LogKind } from "../lib/config.js";

/** Every log kind the sink consumes, one durable consumer each. */
export const LOG_KINDS: readonly LogKind[] = Object.freeze(["prediction", "shadow", "exposure", "outcome", "feature_window", "model_event"]);

/** The tables a kind can write to (feature windows split by entity type). */
export const KIND_TABLES: Readonly<Record<LogKind, readonly string[]>> = Object.freeze({
  prediction: ["predictions"],
  // Shadow scores have a table of their own: training, drift and quality read only what was served.
  shadow: ["shadow_predictions"],
  exposure: ["exposures"],
  outcome: ["outcomes"],
  feature_window: ["user_features", "item_features"],
  model_event: ["model_events"],
});

export type Row = Record<string, unknown>;

/** The rows one message contributes to one table. */
export interface TableRows {
  table: string;
  rows: Row[];
}

/** A message the sink cannot turn into rows; it is terminated, never retried. */
export class UndecodableLogError extends Error {
  override name = "UndecodableLogError";
}

/** What the decoder needs from a JetStream message. */
export interface LogMessage {
  data: Uint8Array;
  /** Content-Type header; absent or application/protobuf means protobuf. */
  contentType?: string;
  /** When JetStream stored the message (ms): the time of last resort for a log without one. */
  storedAtMs: number;
}

/**
 * Decodes a message of `kind` into rows. Throws UndecodableLogError for a body that is not the
 * kind's message, or that lacks what a row needs to be found again (its natural id).
 */
export function decodeLog(kind: LogKind, message: LogMessage): TableRows {
  switch (kind) {
    case "prediction":
      return predictionRows(decode(PredictionLogSchema, message), message.storedAtMs);
    case "shadow":
      return { table: "shadow_predictions", rows: predictionRows(decode(PredictionLogSchema, message), message.storedAtMs).rows };
    case "exposure":
      return exposureRows(decode(ExposureLogSchema, message), message.storedAtMs);
    case "outcome":
      return outcomeRows(decode(OutcomeLogSchema, message), message.storedAtMs);
    case "feature_window":
      return featureWindowRows(decode(FeatureWindowLogSchema, message));
    case "model_event":
      return modelEventRows(decode(ModelEventLogSchema, message), message.storedAtMs);
    default:
      throw new UndecodableLogError(`unknown log kind "${kind as string}"`);
  }
}

function decode<D extends DescMessage>(schema: D, message: LogMessage): MessageShape<D> {
  const type = (message.contentType ?? "application/protobuf").split(";")[0]!.trim().toLowerCase();
  try {
    if (type === "application/json") return fromJsonString(schema, new TextDecoder().decode(message.data), { ignoreUnknownFields: true });
    if (type === "application/protobuf" || type === "application/x-protobuf" || type === "") return fromBinary(schema, message.data);
  } catch (err) {
    throw new UndecodableLogError(`not a valid ${schema.typeName} (${type}): ${(err as Error).message}`, { cause: err });
  }
  throw new UndecodableLogError(`unsupported Content-Type "${message.contentType}"`);
}

function required(value: string, field: string, typeName: string): string {
  if (!value) throw new UndecodableLogError(`${typeName} without ${field}`);
  return value;
}

/** Timestamp → the ISO text DateTime64(3) parses; a missing one takes `fallbackMs`. */
export function timeText(ts: Timestamp | undefined, fallbackMs?: number): string {
  let ms: number;
  if (ts) ms = Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6);
  else if (fallbackMs !== undefined) ms = fallbackMs;
  else throw new UndecodableLogError("timestamp missing");
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) throw new UndecodableLogError(`timestamp out of range (${ms} ms)`);
  return d.toISOString();
}

/**
 * JSON has no NaN or infinities (JSON.stringify turns them into null, which ClickHouse would store
 * as 0). ClickHouse reads the strings "nan", "inf" and "-inf" into Float64, so a missing feature
 * stays distinguishable from a zero.
 */
export function float(v: number): number | string {
  if (Number.isFinite(v)) return v;
  if (Number.isNaN(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

function predictionRows(p: MessageShape<typeof PredictionLogSchema>, storedAtMs: number): TableRows {
  const t = PredictionLogSchema.typeName;
  required(p.requestId, "request_id", t);
  const time = timeText(p.time, storedAtMs);
  const names = p.featureNames;
  if (p.modelFeatureCount > names.length) {
    throw new UndecodableLogError(`${t} ${p.requestId}: model_feature_count ${p.modelFeatureCount} exceeds the ${names.length} feature names`);
  }
  // The leading entries are the model's input vector; 0 is the shape before every feature was logged.
  const modelFeatures = p.modelFeatureCount > 0 ? names.slice(0, p.modelFeatureCount) : names;
  const rows: Row[] = new Array(p.items.length);
  for (let i = 0; i < p.items.length; i++) {
    const item = p.items[i]!;
    required(item.itemId, "items[].item_id", t);
    if (item.features.length !== 0 && item.features.length !== names.length) {
      throw new UndecodableLogError(`${t} ${p.requestId}: item ${item.itemId} has ${item.features.length} features for ${names.length} feature names`);
    }
    // Insertion order of the object is the feature_names order, which the Map column keeps.
    const features: Record<string, number | string> = {};
    for (let f = 0; f < item.features.length; f++) features[names[f]!] = float(item.features[f]!);
    rows[i] = {
      request_id: p.requestId,
      time,
      user_id: p.userId,
      item_id: item.itemId,
      position: item.position,
      score: float(item.score),
      model_name: p.modelName,
      model_version: p.modelVersion,
      experiment: p.experiment,
      variant: p.variant,
      current_page: p.currentPage,
      device_type: p.deviceType,
      features,
      missing_features: p.missingFeatures,
      model_features: modelFeatures,
      latency_ms: float(p.latencyMs),
    };
  }
  return { table: "predictions", rows };
}

function exposureRows(e: MessageShape<typeof ExposureLogSchema>, storedAtMs: number): TableRows {
  required(e.requestId, "request_id", ExposureLogSchema.typeName);
  return {
    table: "exposures",
    rows: [
      {
        request_id: e.requestId,
        time: timeText(e.time, storedAtMs),
        experiment: e.experiment,
        variant: e.variant,
        user_id: e.userId,
        model_name: e.modelName,
        model_version: e.modelVersion,
      },
    ],
  };
}

function outcomeRows(o: MessageShape<typeof OutcomeLogSchema>, storedAtMs: number): TableRows {
  const t = OutcomeLogSchema.typeName;
  required(o.outcomeId, "outcome_id", t);
  required(o.requestId, "request_id", t);
  return {
    table: "outcomes",
    rows: [
      {
        outcome_id: o.outcomeId,
        request_id: o.requestId,
        item_id: o.itemId,
        time: timeText(o.time, storedAtMs),
        clicked: o.clicked ? 1 : 0,
        converted: o.converted ? 1 : 0,
        revenue: float(o.revenue),
      },
    ],
  };
}

function featureWindowRows(w: MessageShape<typeof FeatureWindowLogSchema>): TableRows {
  const t = FeatureWindowLogSchema.typeName;
  const id = required(w.entityId, "entity_id", t);
  // The window start is part of the row's identity: without it a replay could not collapse.
  if (!w.windowStart) throw new UndecodableLogError(`${t} for ${w.entityType} ${id} without window_start`);
  const features: Record<string, number | string> = {};
  for (const [name, value] of Object.entries(w.features)) features[name] = float(value);
  const common = {
    window_start: timeText(w.windowStart),
    window_end: timeText(w.windowEnd ?? w.windowStart),
    features,
    event_count: Number(w.eventCount),
  };
  if (w.entityType === "user") return { table: "user_features", rows: [{ user_id: id, ...common }] };
  if (w.entityType === "item") return { table: "item_features", rows: [{ item_id: id, ...common }] };
  throw new UndecodableLogError(`${t}: entity_type must be "user" or "item", got "${w.entityType}"`);
}

function modelEventRows(m: MessageShape<typeof ModelEventLogSchema>, storedAtMs: number): TableRows {
  required(m.eventId, "event_id", ModelEventLogSchema.typeName);
  return {
    table: "model_events",
    rows: [
      {
        event_id: m.eventId,
        time: timeText(m.time, storedAtMs),
        model_name: m.modelName,
        kind: m.kind,
        alias: m.alias,
        from_version: m.fromVersion,
        to_version: m.toVersion,
        actor: m.actor,
        reason: m.reason,
        details: m.detailsJson,
      },
    ],
  };
}
