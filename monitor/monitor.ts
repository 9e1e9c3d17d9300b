// The monitoring loop: one cycle checks drift of the production model, quality from feedback and
// every live experiment, takes one look at each guarded rollout (trainer/rollout.ts), stores the
// figures in ClickHouse `monitoring`, and announces what changed.
// `start()` runs a cycle now and then every `intervalMs` (hourly by default); cycles never overlap.
// Nothing here is on the request path: the monitor only reads what the sink wrote.
import type { Part, Runtime } from "../lib/runtime.js";
import { checkDrift, type DriftReport } from "./drift.js";
import { checkQuality, type QualityReport } from "./quality.js";
import { checkExperiments, type ExperimentsReport } from "./experiments.js";
import { conditionsFromRows, dispatchAlerts, type AlertKind, type DispatchResult } from "./alerts.js";
import { resolveMonitorOptions, type MonitorOptions, type MonitorOverrides } from "./options.js";
import { writeMonitoringRows, type MonitoringRow } from "./store.js";
import { mountDashboard } from "./dashboard.js";
import { checkRollouts, type RolloutStep } from "../trainer/rollout.js";
import { rolloutLock } from "../trainer/cycle-lock.js";
import { readOnlineFigures, type OnlineFigures } from "./online.js";
import { compareShadow, type ShadowComparison } from "./shadow.js";

export interface CycleReport {
  time: Date;
  model: string;
  drift?: DriftReport;
  quality?: QualityReport;
  experiments?: ExperimentsReport;
  /** One look at each guarded rollout, and what it did (hold, advance, promote, roll back). */
  rollouts?: RolloutStep[];
  /** CTR and conversion per served version over the online window, from outcomes. */
  online?: OnlineFigures[];
  /** Each shadow version against the answering one over the online window (experiments --shadow). */
  shadow?: ShadowComparison[];
  alerts: DispatchResult;
  /** Parts of the cycle that failed; the others still ran and were stored. */
  errors: { part: "drift" | "quality" | "experiments" | "rollouts" | "online" | "shadow" | "alerts"; message: string }[];
  rowsWritten: number;
}

export interface Monitor extends Part {
  readonly options: MonitorOptions;
  /** One cycle as of `now` (default: the current time). */
  runCycle(now?: Date): Promise<CycleReport>;
  /** Runs a cycle now and then on the interval, until `stop()`. */
  start(): void;
}

/**
 * The monitor of the runtime's model. Creating it mounts the dashboard and its JSON API on the
 * runtime's HTTP server (served once the process calls `listenHttp`).
 */
export function createMonitor(runtime: Runtime, overrides: MonitorOverrides = {}): Monitor {
  // `streamserve up` passes no webhook; the environment can still name one.
  const webhookUrl = overrides.alerts?.webhookUrl ?? (process.env.STREAMSERVE_ALERT_WEBHOOK || undefined);
  const options = resolveMonitorOptions({ ...overrides, alerts: { ...overrides.alerts, webhookUrl } });
  const log = runtime.log.child({ part: "monitor" });
  const model = runtime.config.modelName;
  const cycles = runtime.metrics.counter("streamserve_monitor_cycles_total", "Monitoring cycles run, by outcome", { labelNames: ["outcome"] });
  const firing = runtime.metrics.gauge("streamserve_monitor_conditions", "Conditions judged in the last cycle, by kind and severity", {
    labelNames: ["kind", "severity"],
  });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<CycleReport> | undefined;
  let stopped = false;

  // Opening ClickHouse applies every migration, the monitor's tables and views included.
  const clickhouse = () => runtime.clickhouse();

  mountDashboard(runtime.http, { clickhouse, model, options });

  async function cycle(now: Date): Promise<CycleReport> {
    const ch = await clickhouse();
    const report: CycleReport = { time: now, model, alerts: { sent: [], suppressed: [] }, errors: [], rowsWritten: 0 };
    const rows: MonitoringRow[] = [];
    // Each part stands alone: NATS being down stops drift and A/B (they need the registry), not quality.
    const attempt = async <T>(part: CycleReport["errors"][number]["part"], fn: () => Promise<T>): Promise<T | undefined> => {
      try {
        return await fn();
      } catch (err) {
        log.error({ err, part }, `monitor: ${part} check failed`);
        report.errors.push({ part, message: (err as Error).message });
        return undefined;
      }
    };
    report.drift = await attempt("drift", async () =>
      checkDrift({ ch, registry: await runtime.registry() }, model, runtime.config.servingAlias, now, options.drift),
    );
    report.quality = await attempt("quality", () => checkQuality(ch, model, now, options.quality));
    report.experiments = await attempt("experiments", async () => checkExperiments(ch, await runtime.registry(), now, options.experiments));
    // Guarded rollouts look at their stage's outcomes every cycle; the decision acts on the registry.
    report.rollouts = await attempt("rollouts", async () => checkRollouts({ ch, registry: await runtime.registry(), log, lock: rolloutLock(runtime) }, now));
    const recent = { from: new Date(now.getTime() - options.online.windowMs), to: now };
    report.online = await attempt("online", () => readOnlineFigures(ch, model, recent));
    report.shadow = await attempt("shadow", () => compareShadow(ch, recent));
    for (const r of [report.drift, report.quality, report.experiments]) if (r) rows.push(...r.rows);
    await writeMonitoringRows(ch, rows);
    report.rowsWritten = rows.length;

    const conditions = conditionsFromRows(rows);
    const alerts = await attempt("alerts", () =>
      dispatchAlerts({ ch, nats: () => runtime.nats(), subject: (kind: AlertKind) => runtime.names.alertsSubject(kind), log }, conditions, now, options.alerts),
    );
    if (alerts) report.alerts = alerts;
    for (const kind of ["drift", "quality", "ab"] as const) {
      for (const severity of ["ok", "warning", "alert"] as const)
        firing.set({ kind, severity }, conditions.filter((c) => c.kind === kind && c.severity === severity).length);
    }
    cycles.inc({ outcome: report.errors.length ? "partial" : "ok" });
    log.info({ rows: rows.length, sent: report.alerts.sent.length, errors: report.errors.length }, "monitoring cycle done");
    return report;
  }

  const monitor: Monitor = {
    name: "monitor",
    options,
    runCycle(now = new Date()) {
      // Serialized: a manual cycle during a scheduled one waits for it instead of interleaving writes.
      const next = (running ?? Promise.resolve()).catch(() => undefined).then(() => cycle(now));
      running = next;
      return next;
    },
    start() {
      stopped = false;
      const tick = async () => {
        timer = undefined;
        try {
          await monitor.runCycle();
        } catch (err) {
          cycles.inc({ outcome: "failed" });
          log.error({ err }, "monitoring cycle failed; retrying at the next interval");
        }
        if (!stopped) timer = setTimeout(tick, options.intervalMs);
      };
      void tick();
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
  return monitor;
}
