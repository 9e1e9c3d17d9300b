// The monitor's public surface: the loop, its options, the checks, the reports and the statistics.
export { createMonitor, type Monitor, type CycleReport } from "./monitor.js";
export { MONITOR_DEFAULTS, PREDICTION_REFERENCE_KEY, resolveMonitorOptions, type MonitorOptions, type MonitorOverrides } from "./options.js";
export { checkDrift, compareSamples, type DriftFeature, type DriftReport, type FeatureDrift } from "./drift.js";
export { checkQuality, qualityHours, type QualityGroup, type QualityReport } from "./quality.js";
export { analyzeExperiment, checkExperiments, type ExperimentResult, type ExperimentsReport } from "./experiments.js";
export { conditionsFromRows, dispatchAlerts, type AlertNotification, type Condition } from "./alerts.js";
export { mountDashboard, dashboardData } from "./dashboard.js";
export { readAbReport, readDriftReport, readQualityReport, readTraffic, readModelTimeline, readRecentAlerts } from "./reports.js";
export { type MonitoringRow, type Verdict } from "./store.js";
export * as stats from "./stats/index.js";
