// Streaming feature engineering: activity events from JetStream into event-time windows, the
// online feature hashes and trending set in Redis, and closed windows on LOGS.
export * from "./definitions.js";
export * from "./windows.js";
export * from "./event-parser.js";
export * from "./window-store.js";
export * from "./store-thread.js";
export * from "./worker.js";
export * from "./metrics.js";
