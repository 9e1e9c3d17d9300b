// Online figures per served version, straight from outcomes: of the items each version showed
// (position > 0) in a window, how many were clicked, and how many of its requests converted.
// What a person compares first ("does the model beat the popularity fallback?"), before any test.
import type { ClickHouse } from "../lib/clickhouse.js";
import { toClickHouseTime } from "./store.js";

export interface OnlineFigures {
  version: string;
  requests: number;
  users: number;
  /** Items shown (position > 0) and how many of them were clicked. */
  shown: number;
  clicks: number;
  ctr: number;
  /** Requests with at least one conversion. */
  conversions: number;
  conversionRate: number;
}

export async function readOnlineFigures(ch: ClickHouse, model: string, window: { from: Date; to: Date }): Promise<OnlineFigures[]> {
  const result = await ch.client.query({
    query: `
      SELECT p.model_version AS version, uniqExact(p.request_id) AS requests, uniqExact(p.user_id) AS users,
        count() AS shown, countIf(o.clicked = 1) AS clicks,
        uniqExactIf(p.request_id, o.converted = 1) AS conversions
      FROM (
        SELECT request_id, item_id, user_id, model_version FROM predictions FINAL
        WHERE model_name = {model:String} AND position > 0 AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)}) AS p
      LEFT JOIN (
        SELECT request_id, item_id, max(clicked) AS clicked, max(converted) AS converted FROM outcomes FINAL
        WHERE time >= {from:DateTime64(3)} GROUP BY request_id, item_id) AS o
        ON o.request_id = p.request_id AND o.item_id = p.item_id
      GROUP BY version
      ORDER BY version`,
    query_params: { model, from: toClickHouseTime(window.from), to: toClickHouseTime(window.to) },
    format: "JSONEachRow",
  });
  const rows = await result.json<Record<string, string | number>>();
  return rows.map((r) => {
    const shown = Number(r.shown);
    const requests = Number(r.requests);
    const clicks = Number(r.clicks);
    const conversions = Number(r.conversions);
    return {
      version: String(r.version),
      requests,
      users: Number(r.users),
      shown,
      clicks,
      ctr: shown > 0 ? clicks / shown : NaN,
      conversions,
      conversionRate: requests > 0 ? conversions / requests : NaN,
    };
  });
}
