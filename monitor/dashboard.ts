// The dashboard's HTTP side: the page at / and /dashboard, and JSON under /api/ built from the
// report views. Mounted on the process's shared HTTP server; reads ClickHouse only when asked.
import type { ServerResponse } from "node:http";
import type { ClickHouse } from "../lib/clickhouse.js";
import { sendJson, sendText, type HttpServer } from "../lib/http.js";
import { DASHBOARD_HTML } from "./dashboard-page.js";
import type { MonitorOptions } from "./options.js";
import { readAbReport, readDriftDistributions, readDriftReport, readModelTimeline, readQualityReport, readRecentAlerts, readTraffic } from "./reports.js";

export interface DashboardDeps {
  /** ClickHouse with the monitor's views in place. */
  clickhouse: () => Promise<ClickHouse>;
  /** Model shown when the request names none. */
  model: string;
  options: Pick<MonitorOptions, "drift" | "quality">;
}

const HOUR = 3_600_000;

/** Everything the page draws, in one response. */
export async function dashboardData(ch: ClickHouse, deps: DashboardDeps, model: string, hours: number) {
  const now = new Date();
  const since = new Date(now.getTime() - hours * HOUR);
  const [timeline, traffic, drift, distributions, quality, ab, alerts] = await Promise.all([
    readModelTimeline(ch, model),
    readTraffic(ch, model, since),
    readDriftReport(ch, model),
    readDriftDistributions(ch, model, 2),
    readQualityReport(ch, { model, since }),
    readAbReport(ch),
    readRecentAlerts(ch, 20),
  ]);
  const production = [...timeline].reverse().find((e) => e.alias === "production" && e.to)?.to ?? drift[0]?.version;
  return {
    generatedAt: now.toISOString(),
    model,
    hours,
    production,
    thresholds: {
      alpha: deps.options.drift.alpha,
      psiWarning: deps.options.drift.psiWarning,
      psiAlert: deps.options.drift.psiAlert,
      aucFloor: deps.options.quality.aucFloor,
    },
    timeline,
    traffic,
    drift,
    distributions,
    quality,
    // Every experiment, whatever its model: there are few, and a person looks for them here.
    ab,
    alerts,
  };
}

export function mountDashboard(http: HttpServer, deps: DashboardDeps): void {
  const page = (_req: unknown, res: ServerResponse) => sendText(res, 200, DASHBOARD_HTML, "text/html; charset=utf-8");
  http.route("GET", "/", page);
  http.route("GET", "/dashboard", page);

  const api = (path: string, handler: (ch: ClickHouse, url: URL, model: string) => Promise<unknown>) =>
    http.route("GET", path, async (_req, res, url) => {
      const model = url.searchParams.get("model") || deps.model;
      try {
        sendJson(res, 200, await handler(await deps.clickhouse(), url, model));
      } catch (err) {
        sendJson(res, 500, { error: (err as Error).message });
      }
    });
  const hoursOf = (url: URL) => {
    const h = Number(url.searchParams.get("hours") ?? 24);
    return Number.isFinite(h) && h > 0 ? Math.min(h, 24 * 90) : 24;
  };
  api("/api/dashboard", (ch, url, model) => dashboardData(ch, deps, model, hoursOf(url)));
  api("/api/drift", (ch, _url, model) => readDriftReport(ch, model));
  api("/api/quality", (ch, url, model) => readQualityReport(ch, { model, since: new Date(Date.now() - hoursOf(url) * HOUR) }));
  api("/api/ab", (ch, url) => readAbReport(ch, url.searchParams.get("experiment") ?? undefined));
  api("/api/traffic", (ch, url, model) => readTraffic(ch, model, new Date(Date.now() - hoursOf(url) * HOUR)));
  api("/api/models", (ch, _url, model) => readModelTimeline(ch, model));
  api("/api/alerts", (ch) => readRecentAlerts(ch, 100));
}
