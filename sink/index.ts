// The LOGS → ClickHouse sink: `startSink` runs it, `decodeLog` is its message → rows mapping.
export { startSink, resolveSinkOptions, SINK_DEFAULTS, type Sink, type SinkContext, type SinkOptions, type SinkStats } from "./sink.js";
export { decodeLog, float, timeText, KIND_TABLES, LOG_KINDS, UndecodableLogError, type LogMessage, type Row, type TableRows } from "./log-rows.js";
