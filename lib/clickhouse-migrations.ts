// Versioned ClickHouse schema. Each migration runs once, in order, and is recorded in
// schema_migrations; a new schema change is a new entry at the end, never an edit of an old one.
//
// The log tables are ReplacingMergeTree keyed by the message's natural id, so a message that the
// sink writes twice (redelivery after a crash) collapses into one row; exact queries use FINAL.
// Their ORDER BY starts with the columns the trainer and monitor filter on.

export interface Migration {
  version: number;
  name: string;
  statements: string[];
}

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: "log tables",
    statements: [
      `CREATE TABLE IF NOT EXISTS predictions (
        request_id String,
        time DateTime64(3, 'UTC'),
        user_id String,
        item_id String,
        position UInt16,
        score Float64,
        model_name LowCardinality(String),
        model_version LowCardinality(String),
        experiment LowCardinality(String),
        variant LowCardinality(String),
        current_page String,
        device_type LowCardinality(String),
        features Map(LowCardinality(String), Float64),
        missing_features Array(LowCardinality(String)),
        latency_ms Float32
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMMDD(time)
      ORDER BY (model_name, toStartOfHour(time), request_id, item_id)
      TTL toDateTime(time) + INTERVAL 90 DAY`,
      `CREATE TABLE IF NOT EXISTS exposures (
        request_id String,
        time DateTime64(3, 'UTC'),
        experiment LowCardinality(String),
        variant LowCardinality(String),
        user_id String,
        model_name LowCardinality(String),
        model_version LowCardinality(String)
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMM(time)
      ORDER BY (experiment, variant, request_id)
      TTL toDateTime(time) + INTERVAL 180 DAY`,
      `CREATE TABLE IF NOT EXISTS outcomes (
        outcome_id String,
        request_id String,
        item_id String,
        time DateTime64(3, 'UTC'),
        clicked UInt8,
        converted UInt8,
        revenue Float64
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMM(time)
      ORDER BY (request_id, item_id, outcome_id)
      TTL toDateTime(time) + INTERVAL 180 DAY`,
      `CREATE TABLE IF NOT EXISTS user_features (
        user_id String,
        window_start DateTime64(3, 'UTC'),
        window_end DateTime64(3, 'UTC'),
        features Map(LowCardinality(String), Float64),
        event_count UInt64
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMM(window_start)
      ORDER BY (user_id, window_start)
      TTL toDateTime(window_start) + INTERVAL 90 DAY`,
      `CREATE TABLE IF NOT EXISTS item_features (
        item_id String,
        window_start DateTime64(3, 'UTC'),
        window_end DateTime64(3, 'UTC'),
        features Map(LowCardinality(String), Float64),
        event_count UInt64
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMM(window_start)
      ORDER BY (item_id, window_start)
      TTL toDateTime(window_start) + INTERVAL 90 DAY`,
      `CREATE TABLE IF NOT EXISTS model_events (
        event_id String,
        time DateTime64(3, 'UTC'),
        model_name LowCardinality(String),
        kind LowCardinality(String),
        alias LowCardinality(String),
        from_version String,
        to_version String,
        actor String,
        reason String,
        details String
      ) ENGINE = ReplacingMergeTree
      ORDER BY (model_name, time, event_id)`,
      `CREATE TABLE IF NOT EXISTS monitoring (
        time DateTime64(3, 'UTC'),
        model_name LowCardinality(String),
        model_version LowCardinality(String),
        kind LowCardinality(String),
        subject String,
        statistic LowCardinality(String),
        value Float64,
        p_value Float64,
        threshold Float64,
        verdict LowCardinality(String),
        details String
      ) ENGINE = MergeTree
      PARTITION BY toYYYYMM(time)
      ORDER BY (kind, model_name, subject, time)
      TTL toDateTime(time) + INTERVAL 365 DAY`,
    ],
  },
];
