// The monitor's settings: one interface per concern with JSDoc defaults, one frozen object holding
// every default, one function that merges overrides into it.
import type { Correction } from "./stats/ab-tests.js";
import { withDefaults } from "../lib/options.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

export interface DriftOptions {
  /** Served traffic compared with the reference: the window that ends at the cycle's time. @default 1 h */
  windowMs: number;
  /** Significance level of the KS and chi-square tests, after correction. @default 0.05 */
  alpha: number;
  /** Family-wise correction over the features tested in one cycle. @default "holm" */
  correction: Correction;
  /** PSI at or above which a feature is a warning. @default 0.1 */
  psiWarning: number;
  /** PSI at or above which a feature is an alert. @default 0.25 */
  psiAlert: number;
  /** PSI bins, cut at reference quantiles. @default 10 */
  psiBins: number;
  /** Proportion given to an empty PSI bin. @default 1e-4 */
  psiFloor: number;
  /**
   * Share of served values of a numeric feature that may be NaN or ±Infinity before it is a warning.
   * Those values are left out of KS and PSI (they have no place on a number line), so a pipeline
   * that starts emitting them would otherwise go unnoticed.
   * @default 0.01
   */
  maxNonFiniteRate: number;
  /** Fewer served values than this: the feature is skipped, not judged. @default 100 */
  minSamples: number;
  /** At most this many served values per feature are read (a deterministic hash sample). @default 50_000 */
  maxSamples: number;
  /**
   * Scores of the same model version before the window form the baseline of prediction drift when
   * the reference has no scores ({@link PREDICTION_REFERENCE_KEY}).
   * @default 24 h
   */
  predictionBaselineMs: number;
}

export interface QualityOptions {
  /** Outcome that counts as the positive label. @default "clicked" */
  label: "clicked" | "converted";
  /** Complete hours evaluated per cycle, ending at the last hour whose labels have had time to arrive. @default 1 */
  hours: number;
  /** Time given to outcomes to arrive after a prediction: an hour is evaluated once it is this old. @default 10 min */
  labelDelayMs: number;
  /** AUC below this is an alert. @default 0.6 */
  aucFloor: number;
  /** Accuracy below this is an alert; 0 turns it off (with rare positives accuracy says little). @default 0 */
  accuracyFloor: number;
  /** Expected calibration error above this is a warning. @default 0.1 */
  eceCeiling: number;
  /** Fewer shown predictions than this in an hour (or fewer than 10 positives or negatives): not judged. @default 200 */
  minLabeled: number;
  /** At most this many (score, label) pairs per hour, version and variant (a random sample). @default 200_000 */
  maxRows: number;
}

export interface ExperimentOptions {
  /** Level of the z-test and Welch's t-test (treatments against control, Holm-corrected). @default 0.05 */
  alpha: number;
  /** Level of the sample-ratio-mismatch check. @default 0.001 */
  srmAlpha: number;
  /** Smallest relative lift worth detecting, for the "sample too small" warning. @default 0.1 */
  minimumDetectableLift: number;
  /** Power wanted at that lift. @default 0.8 */
  power: number;
  /** Confidence level of the lift intervals. @default 0.95 */
  confidence: number;
  /** Stopped experiments are still analysed for this long after they stop. @default 24 h */
  stoppedGraceMs: number;
  /**
   * CUPED: a user's pre-exposure activity is the events in their `user_features` windows that
   * closed in this period before their first exposure. @default 7 d
   */
  cupedLookbackMs: number;
}

export interface AlertOptions {
  /** POST every alert as JSON here as well (Slack-style incoming webhooks work). @default undefined */
  webhookUrl: string | undefined;
  /** A condition still firing is announced again after this long; 0: only when it starts or worsens. @default 24 h */
  repeatAfterMs: number;
  /** Webhook request timeout. @default 5 s */
  webhookTimeoutMs: number;
}

export interface OnlineOptions {
  /** CTR and conversion per served version (and shadow comparisons) over this window before the cycle. @default 1 h */
  windowMs: number;
}

export interface MonitorOptions {
  /** Time between cycles. @default 1 h */
  intervalMs: number;
  online: OnlineOptions;
  drift: DriftOptions;
  quality: QualityOptions;
  experiments: ExperimentOptions;
  alerts: AlertOptions;
}

export const MONITOR_DEFAULTS: Readonly<MonitorOptions> = Object.freeze({
  intervalMs: HOUR,
  online: Object.freeze({ windowMs: HOUR }),
  drift: Object.freeze({
    windowMs: HOUR,
    alpha: 0.05,
    correction: "holm" as Correction,
    psiWarning: 0.1,
    psiAlert: 0.25,
    psiBins: 10,
    psiFloor: 1e-4,
    maxNonFiniteRate: 0.01,
    minSamples: 100,
    maxSamples: 50_000,
    predictionBaselineMs: 24 * HOUR,
  }),
  quality: Object.freeze({
    label: "clicked" as const,
    hours: 1,
    labelDelayMs: 10 * MINUTE,
    aucFloor: 0.6,
    accuracyFloor: 0,
    eceCeiling: 0.1,
    minLabeled: 200,
    maxRows: 200_000,
  }),
  experiments: Object.freeze({
    alpha: 0.05,
    srmAlpha: 0.001,
    minimumDetectableLift: 0.1,
    power: 0.8,
    confidence: 0.95,
    stoppedGraceMs: 24 * HOUR,
    cupedLookbackMs: 7 * 24 * HOUR,
  }),
  alerts: Object.freeze({ webhookUrl: undefined, repeatAfterMs: 24 * HOUR, webhookTimeoutMs: 5000 }),
});

/** Overrides as the caller knows them: any subset, at any depth. */
export type MonitorOverrides = Partial<Omit<MonitorOptions, "online" | "drift" | "quality" | "experiments" | "alerts">> & {
  online?: Partial<OnlineOptions>;
  drift?: Partial<DriftOptions>;
  quality?: Partial<QualityOptions>;
  experiments?: Partial<ExperimentOptions>;
  alerts?: Partial<AlertOptions>;
};

/** Merges overrides into the defaults and rejects values that would make the monitor lie. */
export function resolveMonitorOptions(overrides: MonitorOverrides = {}): MonitorOptions {
  const o: MonitorOptions = {
    intervalMs: overrides.intervalMs ?? MONITOR_DEFAULTS.intervalMs,
    online: withDefaults(MONITOR_DEFAULTS.online, overrides.online),
    drift: withDefaults(MONITOR_DEFAULTS.drift, overrides.drift),
    quality: withDefaults(MONITOR_DEFAULTS.quality, overrides.quality),
    experiments: withDefaults(MONITOR_DEFAULTS.experiments, overrides.experiments),
    alerts: withDefaults(MONITOR_DEFAULTS.alerts, overrides.alerts),
  };
  const check = (ok: boolean, message: string) => {
    if (!ok) throw new RangeError(`monitor options: ${message}`);
  };
  check(o.intervalMs > 0, `the interval must be positive, got ${o.intervalMs} ms`);
  check(o.online.windowMs > 0, `the online window must be positive, got ${o.online.windowMs} ms`);
  check(o.drift.windowMs > 0, `the drift window must be positive, got ${o.drift.windowMs} ms`);
  for (const [name, v] of [
    ["drift alpha", o.drift.alpha],
    ["A/B alpha", o.experiments.alpha],
    ["SRM alpha", o.experiments.srmAlpha],
  ] as const) {
    check(v > 0 && v < 1, `${name} must be between 0 and 1, got ${v}`);
  }
  check(o.drift.psiWarning <= o.drift.psiAlert, `the PSI warning level (${o.drift.psiWarning}) must not exceed the alert level (${o.drift.psiAlert})`);
  check(["holm", "bonferroni", "none"].includes(o.drift.correction), `correction must be holm, bonferroni or none, got "${o.drift.correction}"`);
  check(["clicked", "converted"].includes(o.quality.label), `the quality label must be clicked or converted, got "${o.quality.label}"`);
  check(Number.isInteger(o.quality.hours) && o.quality.hours >= 1, `quality hours must be a positive integer, got ${o.quality.hours}`);
  if (o.alerts.webhookUrl !== undefined) {
    check(/^https?:\/\//.test(o.alerts.webhookUrl), `the webhook URL must start with http:// or https://, got "${o.alerts.webhookUrl}"`);
  }
  return o;
}

/**
 * Key under which a trainer may store reference prediction scores next to the features; when
 * present, prediction drift compares against it instead of the version's earlier traffic.
 */
export const PREDICTION_REFERENCE_KEY = "__prediction__";
