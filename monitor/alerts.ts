// Alerts: turns each cycle's judged conditions into notifications on NATS `alerts.<kind>`
// (namespaced), the log, and an optional webhook. A condition is announced when it starts, when it
// gets worse, when it clears, and again only after `repeatAfterMs` while it persists; the state
// lives in ClickHouse `alert_log`, so a `monitor --once` run from cron does not repeat itself either.
import type { NatsConnection } from "nats";
import type { ClickHouse } from "../lib/clickhouse.js";
import type { Logger } from "../lib/logger.js";
import type { AlertOptions } from "./options.js";
import { fromClickHouseTime, toClickHouseTime, type MonitoringRow } from "./store.js";
import { num, pvalue } from "./text-report.js";

export type AlertKind = "drift" | "quality" | "ab";
export type Severity = "warning" | "alert";

/** A condition the cycle judged: firing with a severity, or fine. Conditions not judged are absent. */
export interface Condition {
  /** Stable across cycles: identifies "the same condition". */
  key: string;
  kind: AlertKind;
  severity: Severity | "ok";
  model: string;
  version: string;
  subject: string;
  message: string;
  details: Record<string, unknown>;
}

/** What subscribers and the webhook receive. */
export interface AlertNotification {
  key: string;
  kind: AlertKind;
  status: "firing" | "resolved";
  severity: Severity;
  model: string;
  version: string;
  subject: string;
  message: string;
  time: string;
  details: Record<string, unknown>;
}

export interface AlertSinks {
  ch: ClickHouse;
  /** Opened on demand; an unreachable NATS is logged and the other sinks still get the alert. */
  nats?: () => Promise<NatsConnection>;
  /** Subject of a kind, namespaced: names(config).alertsSubject. */
  subject: (kind: AlertKind) => string;
  log: Logger;
}

export interface DispatchResult {
  sent: AlertNotification[];
  /** Conditions still firing that were not announced again this cycle. */
  suppressed: string[];
}

interface PreviousState {
  status: "firing" | "resolved";
  severity: Severity;
  time: Date;
}

/** Decides which conditions to announce, announces them, and records them in alert_log. */
export async function dispatchAlerts(sinks: AlertSinks, conditions: readonly Condition[], now: Date, options: AlertOptions): Promise<DispatchResult> {
  const previous = await readAlertState(
    sinks.ch,
    conditions.map((c) => c.key),
  );
  const sent: AlertNotification[] = [];
  const suppressed: string[] = [];
  for (const c of conditions) {
    const prev = previous.get(c.key);
    const wasFiring = prev?.status === "firing";
    if (c.severity === "ok") {
      if (wasFiring) sent.push(notification(c, "resolved", prev!.severity, now));
      continue;
    }
    const worsened = wasFiring && prev!.severity === "warning" && c.severity === "alert";
    const due = wasFiring && options.repeatAfterMs > 0 && now.getTime() - prev!.time.getTime() >= options.repeatAfterMs;
    if (!wasFiring || worsened || due) sent.push(notification(c, "firing", c.severity, now));
    else suppressed.push(c.key);
  }
  if (sent.length === 0) return { sent, suppressed };

  for (const n of sent) {
    if (n.status === "firing") sinks.log.warn({ alert: n.key, severity: n.severity, details: n.details }, n.message);
    else sinks.log.info({ alert: n.key }, n.message);
  }
  await publishNats(sinks, sent);
  if (options.webhookUrl) await postWebhook(sinks.log, options.webhookUrl, sent, options.webhookTimeoutMs);
  await sinks.ch.client.insert({
    table: "alert_log",
    format: "JSONEachRow",
    values: sent.map((n) => ({
      time: toClickHouseTime(now),
      key: n.key,
      kind: n.kind,
      severity: n.severity,
      status: n.status,
      model_name: n.model,
      model_version: n.version,
      subject: n.subject,
      message: n.message,
      details: JSON.stringify(n.details),
    })),
  });
  return { sent, suppressed };
}

function notification(c: Condition, status: AlertNotification["status"], severity: Severity, now: Date): AlertNotification {
  return {
    key: c.key,
    kind: c.kind,
    status,
    severity,
    model: c.model,
    version: c.version,
    subject: c.subject,
    message: status === "resolved" ? `resolved: ${c.message}` : c.message,
    time: now.toISOString(),
    details: c.details,
  };
}

async function readAlertState(ch: ClickHouse, keys: string[]): Promise<Map<string, PreviousState>> {
  if (keys.length === 0) return new Map();
  const result = await ch.client.query({
    query: `SELECT key, argMax(status, time) AS last_status, argMax(severity, time) AS last_severity, max(time) AS last_time
            FROM alert_log WHERE key IN {keys:Array(String)} GROUP BY key`,
    query_params: { keys },
    format: "JSONEachRow",
  });
  const rows = await result.json<{ key: string; last_status: PreviousState["status"]; last_severity: Severity; last_time: string }>();
  return new Map(rows.map((r) => [r.key, { status: r.last_status, severity: r.last_severity, time: fromClickHouseTime(r.last_time) }]));
}

async function publishNats(sinks: AlertSinks, sent: AlertNotification[]): Promise<void> {
  if (!sinks.nats) return;
  try {
    const nc = await sinks.nats();
    const encoder = new TextEncoder();
    for (const n of sent) nc.publish(sinks.subject(n.kind), encoder.encode(JSON.stringify(n)));
    await nc.flush();
  } catch (err) {
    sinks.log.error({ err }, "could not publish alerts on NATS; they are in the log and alert_log");
  }
}

/** POSTs each notification as JSON; `text` carries the message so chat webhooks show it as is. */
async function postWebhook(log: Logger, url: string, sent: AlertNotification[], timeoutMs: number): Promise<void> {
  for (const n of sent) {
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ text: `[${n.severity}] ${n.message}`, ...n }),
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (!res.ok) log.error({ status: res.status, alert: n.key }, "alert webhook answered with an error");
      await res.body?.cancel();
    } catch (err) {
      log.error({ err, alert: n.key }, "alert webhook failed");
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// From monitoring rows to conditions

/**
 * Conditions judged in a cycle's rows. Drift: one per model version and feature (its worst verdict
 * over KS/chi-square and PSI). Quality: one per version, variant and metric, judged on the latest
 * hour evaluated. A/B: one per experiment for the sample-ratio mismatch (the only A/B finding that
 * means something is broken). Skipped rows judge nothing and leave a condition's state alone.
 */
export function conditionsFromRows(rows: readonly MonitoringRow[]): Condition[] {
  const out = new Map<string, Condition>();
  const rank = { ok: 0, warning: 1, alert: 2 } as const;
  for (const r of rows) {
    if (r.verdict === "skipped") continue;
    const severity = r.verdict;
    if (r.kind === "feature_drift" || r.kind === "prediction_drift") {
      const key = `drift:${r.model_name}:${r.model_version}:${r.kind === "prediction_drift" ? "prediction" : r.subject}`;
      const what = r.kind === "prediction_drift" ? "predicted scores" : `feature ${r.subject}`;
      const figure =
        r.statistic === "psi"
          ? `PSI ${num(r.value)} (alert at ${r.threshold})`
          : r.statistic === "non_finite"
            ? `${num(r.value * 100, 1)} % of served values NaN or infinite (warning above ${r.threshold * 100} %)`
            : `${r.statistic.toUpperCase()} ${num(r.value)}, corrected p ${pvalue(r.p_value)} (alert below ${r.threshold})`;
      const condition: Condition = out.get(key) ?? {
        key,
        kind: "drift",
        severity: "ok",
        model: r.model_name,
        version: r.model_version,
        subject: r.subject,
        message: "",
        details: { figures: [] as string[], failing: [] as string[] },
      };
      (condition.details.figures as string[]).push(figure);
      if (severity !== "ok") (condition.details.failing as string[]).push(figure);
      if (rank[severity] > rank[condition.severity]) condition.severity = severity;
      const shown = condition.severity === "ok" ? (condition.details.figures as string[]) : (condition.details.failing as string[]);
      condition.message = `${condition.severity === "ok" ? "no drift" : "drift"} in ${what} of ${r.model_name} version ${r.model_version}: ${shown.join("; ")}`;
      out.set(key, condition);
    } else if (r.kind === "quality") {
      const key = `quality:${r.model_name}:${r.model_version}:${r.subject}:${r.statistic}`;
      const prev = out.get(key);
      // Several hours in one cycle: the latest one decides.
      if (prev && Date.parse(String(prev.details.hour)) > r.time.getTime()) continue;
      out.set(key, {
        key,
        kind: "quality",
        severity,
        model: r.model_name,
        version: r.model_version,
        subject: `${r.subject}:${r.statistic}`,
        message: `${r.statistic} of ${r.model_name} version ${r.model_version} (${r.subject === "all" ? "all traffic" : `variant ${r.subject}`}) was ${num(r.value)} in the hour from ${r.time.toISOString()}; threshold ${r.threshold}`,
        details: { hour: r.time.toISOString(), value: r.value, threshold: r.threshold, notes: r.details.notes },
      });
    } else if (r.kind === "ab" && r.statistic === "srm") {
      out.set(`ab:${r.subject}:srm`, {
        key: `ab:${r.subject}:srm`,
        kind: "ab",
        severity,
        model: r.model_name,
        version: "",
        subject: r.subject,
        message:
          severity === "ok"
            ? `experiment ${r.subject}: users match the configured split`
            : `experiment ${r.subject}: sample ratio mismatch, χ² ${num(r.value)}, p ${pvalue(r.p_value)} < ${r.threshold}; users ${JSON.stringify(r.details.users)} against traffic ${JSON.stringify(r.details.traffic)}`,
        details: { statistic: r.value, p_value: r.p_value, users: r.details.users, traffic: r.details.traffic },
      });
    }
  }
  return [...out.values()];
}
