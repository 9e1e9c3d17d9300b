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
  // Every feature is logged, not only the served model's: `features` holds them all, and
  // model_features names the entries that were the model's input vector, in model order, so the
  // exact vector served stays recoverable (arrayMap(n -> features[n], model_features)). Rows
  // written before it read the default, the old meaning: every logged feature was the model's.
  {
    version: 2,
    name: "predictions model_features",
    statements: [`ALTER TABLE predictions ADD COLUMN IF NOT EXISTS model_features Array(LowCardinality(String)) DEFAULT mapKeys(features)`],
  },
  // Shadow traffic: a shadow version's scores of requests production answered, one row per scored
  // candidate, keyed like predictions (plus the version) so the two join on (request_id, item_id).
  // position is the shadow's own ranking (1-based within the response size; 0 beyond it).
  {
    version: 3,
    name: "shadow predictions",
    statements: [
      `CREATE TABLE IF NOT EXISTS shadow_predictions (
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
        latency_ms Float32,
        model_features Array(LowCardinality(String))
      ) ENGINE = ReplacingMergeTree
      PARTITION BY toYYYYMMDD(time)
      ORDER BY (model_name, toStartOfHour(time), request_id, item_id, model_version)
      TTL toDateTime(time) + INTERVAL 30 DAY`,
    ],
  },
  // The monitor's additions: the alert log that keeps alerts from repeating every cycle, and the
  // SQL views behind `streamserve report`, the dashboard and the README's queries.
  {
    version: 100,
    name: "monitor alert log",
    statements: [
      // One row per notification sent and per condition that cleared. The latest row of a key says
      // whether the condition is firing and when it was last announced.
      `CREATE TABLE IF NOT EXISTS alert_log (
        time DateTime64(3, 'UTC'),
        key String,
        kind LowCardinality(String),
        severity LowCardinality(String),
        status LowCardinality(String),
        model_name LowCardinality(String),
        model_version LowCardinality(String),
        subject String,
        message String,
        details String
      ) ENGINE = MergeTree
      ORDER BY (key, time)
      TTL toDateTime(time) + INTERVAL 365 DAY`,
    ],
  },
  {
    version: 101,
    name: "monitor report views",
    statements: [
      // Drift of the latest cycle per model: one row per feature and statistic (ks, psi, chi2).
      `CREATE OR REPLACE VIEW drift_report AS
      SELECT time, model_name, model_version, kind, subject AS feature, statistic, value, p_value, threshold, verdict,
        JSONExtractString(details, 'type') AS feature_type,
        JSONExtractUInt(details, 'reference_n') AS reference_n,
        JSONExtractUInt(details, 'current_n') AS current_n,
        JSONExtractUInt(details, 'dropped') AS dropped
      FROM monitoring
      WHERE kind IN ('feature_drift', 'prediction_drift')
        AND (model_name, time) IN (
          SELECT model_name, max(time) FROM monitoring WHERE kind IN ('feature_drift', 'prediction_drift') GROUP BY model_name)
      ORDER BY model_name, kind, feature, statistic`,
      // Quality per hour, model version and variant; an hour computed twice keeps its latest figures.
      `CREATE OR REPLACE VIEW quality_report AS
      SELECT hour, model_name, model_version, variant,
        anyIf(value, statistic = 'auc') AS auc,
        anyIf(value, statistic = 'accuracy') AS accuracy,
        anyIf(value, statistic = 'ece') AS ece,
        anyIf(value, statistic = 'brier') AS brier,
        anyIf(JSONExtractFloat(details, 'mean_predicted'), statistic = 'auc') AS mean_predicted,
        anyIf(JSONExtractFloat(details, 'observed_rate'), statistic = 'auc') AS observed_rate,
        anyIf(JSONExtractUInt(details, 'n'), statistic = 'auc') AS n,
        anyIf(JSONExtractUInt(details, 'positives'), statistic = 'auc') AS positives,
        multiIf(has(groupArray(verdict), 'alert'), 'alert', has(groupArray(verdict), 'warning'), 'warning',
          has(groupArray(verdict), 'skipped'), 'skipped', 'ok') AS verdict
      FROM (
        SELECT time AS hour, model_name, model_version, subject AS variant, statistic, value, verdict, details
        FROM monitoring
        WHERE kind = 'quality'
        ORDER BY JSONExtractString(details, 'computed_at') DESC
        LIMIT 1 BY hour, model_name, model_version, variant, statistic)
      GROUP BY hour, model_name, model_version, variant
      ORDER BY hour DESC, model_name, model_version, variant`,
      // A/B results of the latest analysis per experiment: one row per variant.
      `CREATE OR REPLACE VIEW ab_report AS
      SELECT time, JSONExtractString(details, 'experiment') AS experiment, JSONExtractString(details, 'variant') AS variant,
        model_name, model_version,
        JSONExtractBool(details, 'control') AS is_control,
        JSONExtractUInt(details, 'users') AS users,
        JSONExtractUInt(details, 'exposures') AS exposures,
        JSONExtractUInt(details, 'conversions') AS conversions,
        value AS conversion_rate,
        JSONExtract(details, 'avg_revenue', 'Nullable(Float64)') AS avg_revenue,
        JSONExtract(details, 'lift', 'Nullable(Float64)') AS lift,
        JSONExtract(details, 'lift_lower', 'Nullable(Float64)') AS lift_lower,
        JSONExtract(details, 'lift_upper', 'Nullable(Float64)') AS lift_upper,
        if(isNaN(p_value), NULL, p_value) AS p_value,
        JSONExtract(details, 'revenue_p_value', 'Nullable(Float64)') AS revenue_p_value,
        JSONExtractBool(details, 'srm') AS srm,
        verdict,
        JSONExtractString(details, 'note') AS note
      FROM monitoring
      WHERE kind = 'ab' AND statistic = 'variant'
        AND (JSONExtractString(details, 'experiment'), time) IN (
          SELECT JSONExtractString(details, 'experiment'), max(time) FROM monitoring WHERE kind = 'ab' GROUP BY 1)
      ORDER BY experiment, is_control DESC, variant`,
      // Requests and latency percentiles per minute and model. Position 1 is the one row of each
      // answered request (there is a row per scored candidate), so latency counts once per request.
      `CREATE OR REPLACE VIEW serving_traffic AS
      SELECT toStartOfMinute(time) AS minute, model_name,
        count() AS requests,
        quantile(0.5)(latency_ms) AS p50_ms,
        quantile(0.95)(latency_ms) AS p95_ms,
        quantile(0.99)(latency_ms) AS p99_ms,
        arraySort(groupUniqArray(model_version)) AS versions
      FROM predictions FINAL
      WHERE position = 1
      GROUP BY minute, model_name`,
      `CREATE OR REPLACE VIEW model_timeline AS
      SELECT time, model_name, kind, alias, from_version, to_version, actor, reason
      FROM model_events FINAL
      ORDER BY model_name, time`,
      // Raw experiment figures per variant, straight from exposures and outcomes (no statistics):
      // per user, converted if any of their exposed requests converted, revenue summed.
      `CREATE OR REPLACE VIEW experiment_outcomes AS
      SELECT experiment, variant,
        count() AS users,
        sum(requests) AS exposures,
        sum(user_converted) AS conversions,
        avg(user_converted) AS conversion_rate,
        sum(user_revenue) AS revenue,
        avg(user_revenue) AS revenue_per_user
      FROM (
        SELECT e.experiment AS experiment, e.user_id AS user_id, any(e.variant) AS variant, count() AS requests,
          max(o.request_converted) AS user_converted, sum(o.request_revenue) AS user_revenue
        FROM (SELECT request_id, experiment, variant, user_id FROM exposures FINAL) AS e
        LEFT JOIN (SELECT request_id, max(converted) AS request_converted, sum(revenue) AS request_revenue FROM outcomes FINAL GROUP BY request_id) AS o
          USING (request_id)
        GROUP BY experiment, user_id)
      GROUP BY experiment, variant
      ORDER BY experiment, variant`,
    ],
  },
  {
    version: 102,
    name: "sequential and CUPED A/B columns",
    statements: [
      // ab_report with the always-valid (mSPRT) p-value and confidence sequence of the rate
      // difference, and the CUPED-adjusted difference with the variance reduction it achieved.
      `CREATE OR REPLACE VIEW ab_report AS
      SELECT time, JSONExtractString(details, 'experiment') AS experiment, JSONExtractString(details, 'variant') AS variant,
        model_name, model_version,
        JSONExtractBool(details, 'control') AS is_control,
        JSONExtractUInt(details, 'users') AS users,
        JSONExtractUInt(details, 'exposures') AS exposures,
        JSONExtractUInt(details, 'conversions') AS conversions,
        value AS conversion_rate,
        JSONExtract(details, 'avg_revenue', 'Nullable(Float64)') AS avg_revenue,
        JSONExtract(details, 'lift', 'Nullable(Float64)') AS lift,
        JSONExtract(details, 'lift_lower', 'Nullable(Float64)') AS lift_lower,
        JSONExtract(details, 'lift_upper', 'Nullable(Float64)') AS lift_upper,
        if(isNaN(p_value), NULL, p_value) AS p_value,
        JSONExtract(details, 'revenue_p_value', 'Nullable(Float64)') AS revenue_p_value,
        JSONExtractBool(details, 'srm') AS srm,
        JSONExtract(details, 'seq_p_value', 'Nullable(Float64)') AS seq_p_value,
        JSONExtract(details, 'seq_diff', 'Nullable(Float64)') AS seq_diff,
        JSONExtract(details, 'seq_lower', 'Nullable(Float64)') AS seq_lower,
        JSONExtract(details, 'seq_upper', 'Nullable(Float64)') AS seq_upper,
        JSONExtract(details, 'cuped_diff', 'Nullable(Float64)') AS cuped_diff,
        JSONExtract(details, 'cuped_lower', 'Nullable(Float64)') AS cuped_lower,
        JSONExtract(details, 'cuped_upper', 'Nullable(Float64)') AS cuped_upper,
        JSONExtract(details, 'cuped_p_value', 'Nullable(Float64)') AS cuped_p_value,
        JSONExtract(details, 'cuped_variance_reduction', 'Nullable(Float64)') AS cuped_variance_reduction,
        verdict,
        JSONExtractString(details, 'note') AS note
      FROM monitoring
      WHERE kind = 'ab' AND statistic = 'variant'
        AND (JSONExtractString(details, 'experiment'), time) IN (
          SELECT JSONExtractString(details, 'experiment'), max(time) FROM monitoring WHERE kind = 'ab' GROUP BY 1)
      ORDER BY experiment, is_control DESC, variant`,
    ],
  },
  {
    version: 103,
    name: "A/B CTR columns",
    statements: [
      // ab_report with each variant's CTR (clicks per shown item, clustered by user with the delta
      // method) and the treatment's CTR difference: fixed-horizon, always valid, CUPED-adjusted.
      `CREATE OR REPLACE VIEW ab_report AS
      SELECT time, JSONExtractString(details, 'experiment') AS experiment, JSONExtractString(details, 'variant') AS variant,
        model_name, model_version,
        JSONExtractBool(details, 'control') AS is_control,
        JSONExtractUInt(details, 'users') AS users,
        JSONExtractUInt(details, 'exposures') AS exposures,
        JSONExtractUInt(details, 'conversions') AS conversions,
        value AS conversion_rate,
        JSONExtract(details, 'avg_revenue', 'Nullable(Float64)') AS avg_revenue,
        JSONExtract(details, 'lift', 'Nullable(Float64)') AS lift,
        JSONExtract(details, 'lift_lower', 'Nullable(Float64)') AS lift_lower,
        JSONExtract(details, 'lift_upper', 'Nullable(Float64)') AS lift_upper,
        if(isNaN(p_value), NULL, p_value) AS p_value,
        JSONExtract(details, 'revenue_p_value', 'Nullable(Float64)') AS revenue_p_value,
        JSONExtractBool(details, 'srm') AS srm,
        JSONExtract(details, 'seq_p_value', 'Nullable(Float64)') AS seq_p_value,
        JSONExtract(details, 'seq_diff', 'Nullable(Float64)') AS seq_diff,
        JSONExtract(details, 'seq_lower', 'Nullable(Float64)') AS seq_lower,
        JSONExtract(details, 'seq_upper', 'Nullable(Float64)') AS seq_upper,
        JSONExtract(details, 'cuped_diff', 'Nullable(Float64)') AS cuped_diff,
        JSONExtract(details, 'cuped_lower', 'Nullable(Float64)') AS cuped_lower,
        JSONExtract(details, 'cuped_upper', 'Nullable(Float64)') AS cuped_upper,
        JSONExtract(details, 'cuped_p_value', 'Nullable(Float64)') AS cuped_p_value,
        JSONExtract(details, 'cuped_variance_reduction', 'Nullable(Float64)') AS cuped_variance_reduction,
        JSONExtract(details, 'shown', 'Nullable(Float64)') AS shown,
        JSONExtract(details, 'clicks', 'Nullable(Float64)') AS clicks,
        JSONExtract(details, 'ctr', 'Nullable(Float64)') AS ctr,
        JSONExtract(details, 'ctr_lift', 'Nullable(Float64)') AS ctr_lift,
        JSONExtract(details, 'ctr_diff', 'Nullable(Float64)') AS ctr_diff,
        JSONExtract(details, 'ctr_lower', 'Nullable(Float64)') AS ctr_lower,
        JSONExtract(details, 'ctr_upper', 'Nullable(Float64)') AS ctr_upper,
        JSONExtract(details, 'ctr_p_value', 'Nullable(Float64)') AS ctr_p_value,
        JSONExtract(details, 'ctr_seq_p_value', 'Nullable(Float64)') AS ctr_seq_p_value,
        JSONExtract(details, 'ctr_seq_lower', 'Nullable(Float64)') AS ctr_seq_lower,
        JSONExtract(details, 'ctr_seq_upper', 'Nullable(Float64)') AS ctr_seq_upper,
        JSONExtract(details, 'ctr_cuped_p_value', 'Nullable(Float64)') AS ctr_cuped_p_value,
        JSONExtract(details, 'ctr_cuped_variance_reduction', 'Nullable(Float64)') AS ctr_cuped_variance_reduction,
        verdict,
        JSONExtractString(details, 'note') AS note
      FROM monitoring
      WHERE kind = 'ab' AND statistic = 'variant'
        AND (JSONExtractString(details, 'experiment'), time) IN (
          SELECT JSONExtractString(details, 'experiment'), max(time) FROM monitoring WHERE kind = 'ab' GROUP BY 1)
      ORDER BY experiment, is_control DESC, variant`,
    ],
  },
];
