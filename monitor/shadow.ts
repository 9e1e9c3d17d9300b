// Shadow comparison (`streamserve report shadow`): on the requests a shadow version scored, how its
// scores and rankings differ from those of the version that answered, and how well each ranks
// the items production showed, judged by their outcomes. Read from shadow_predictions joined to
// predictions and outcomes on (request_id, item_id); computed on demand, nothing is stored.
import type { ClickHouse } from "../lib/clickhouse.js";
import { auc } from "./stats/classification.js";
import { toClickHouseTime } from "./store.js";

export interface ShadowComparison {
  experiment: string;
  shadowVersion: string;
  /** Versions that answered the compared requests. */
  servedVersions: string[];
  requests: number;
  /** Scored candidates present on both sides. */
  items: number;
  meanServedScore: number;
  meanShadowScore: number;
  meanAbsScoreDifference: number;
  /** Pearson correlation of the two scores over every compared candidate. */
  scoreCorrelation: number;
  /** Mean over requests of Spearman's rank correlation of the two scorings of its candidates (2+). */
  rankCorrelation: number;
  /** Mean over requests of |served top k ∩ shadow top k| / k, k the number of items returned. */
  topKOverlap: number;
  /** Share of requests whose first item is the same. */
  sameFirstItem: number;
  /** Items production showed (position > 0): how many, how many were clicked, each side's AUC on them. */
  shown: number;
  clicked: number;
  servedAuc: number;
  shadowAuc: number;
}

export interface ShadowQuery {
  /** Only this experiment (default: every experiment with shadow scores in the window). */
  experiment?: string;
  from: Date;
  to: Date;
  /** At most this many compared candidates are read. @default 500_000 */
  maxRows?: number;
}

/** One candidate scored by both the answering version and the shadow. */
export interface ShadowPair {
  request: string;
  item: string;
  servedVersion: string;
  served: number;
  servedPosition: number;
  shadow: number;
  shadowPosition: number;
  clicked: number;
}

export async function compareShadow(ch: ClickHouse, q: ShadowQuery): Promise<ShadowComparison[]> {
  const params = { experiment: q.experiment ?? "", from: toClickHouseTime(q.from), to: toClickHouseTime(q.to), limit: q.maxRows ?? 500_000 };
  const shadowWhere = "time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)} AND ({experiment:String} = '' OR experiment = {experiment:String})";
  const result = await ch.client.query({
    query: `
      SELECT s.experiment AS experiment, s.model_version AS shadow_version, s.request_id AS request_id, s.item_id AS item_id,
        p.model_version AS served_version, p.score AS served, p.position AS served_position, s.score AS shadow, s.position AS shadow_position,
        o.clicked AS clicked
      FROM (SELECT experiment, model_version, request_id, item_id, score, position FROM shadow_predictions FINAL WHERE ${shadowWhere}) AS s
      INNER JOIN (
        SELECT request_id, item_id, model_version, score, position FROM predictions FINAL
        WHERE time >= {from:DateTime64(3)} - INTERVAL 1 MINUTE AND request_id IN (SELECT request_id FROM shadow_predictions WHERE ${shadowWhere})) AS p
        ON p.request_id = s.request_id AND p.item_id = s.item_id
      LEFT JOIN (
        SELECT request_id, item_id, max(clicked) AS clicked FROM outcomes FINAL WHERE time >= {from:DateTime64(3)} GROUP BY request_id, item_id) AS o
        ON o.request_id = s.request_id AND o.item_id = s.item_id
      ORDER BY experiment, shadow_version, request_id, item_id
      LIMIT {limit:UInt64}`,
    query_params: params,
    format: "JSONEachRow",
    clickhouse_settings: { output_format_json_quote_denormals: 1 },
  });
  const rows = await result.json<Record<string, string | number>>();
  const groups = new Map<string, { experiment: string; shadowVersion: string; pairs: ShadowPair[] }>();
  for (const r of rows) {
    const key = `${r.experiment}\u0000${r.shadow_version}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { experiment: String(r.experiment), shadowVersion: String(r.shadow_version), pairs: [] }));
    g.pairs.push({
      request: String(r.request_id),
      item: String(r.item_id),
      servedVersion: String(r.served_version),
      served: Number(r.served),
      servedPosition: Number(r.served_position),
      shadow: Number(r.shadow),
      shadowPosition: Number(r.shadow_position),
      clicked: Number(r.clicked),
    });
  }
  return [...groups.values()].map((g) => summarize(g.experiment, g.shadowVersion, g.pairs));
}

/** The comparison of one shadow version from its (served, shadow) pairs; pure. */
export function summarize(experiment: string, shadowVersion: string, pairs: readonly ShadowPair[]): ShadowComparison {
  const byRequest = new Map<string, ShadowPair[]>();
  for (const p of pairs) {
    const list = byRequest.get(p.request);
    if (list) list.push(p);
    else byRequest.set(p.request, [p]);
  }
  let overlap = 0;
  let overlapRequests = 0;
  let sameFirst = 0;
  let rankSum = 0;
  let rankRequests = 0;
  for (const items of byRequest.values()) {
    const servedTop = items.filter((p) => p.servedPosition > 0);
    const k = servedTop.length;
    if (k > 0) {
      const shadowTop = [...items].sort((a, b) => b.shadow - a.shadow).slice(0, k);
      const inShadow = new Set(shadowTop.map((p) => p.item));
      overlap += servedTop.filter((p) => inShadow.has(p.item)).length / k;
      overlapRequests++;
      const first = servedTop.find((p) => p.servedPosition === 1);
      if (first && shadowTop[0]?.item === first.item) sameFirst++;
    }
    if (items.length >= 2) {
      const rho = pearson(ranks(items.map((p) => p.served)), ranks(items.map((p) => p.shadow)));
      if (Number.isFinite(rho)) {
        rankSum += rho;
        rankRequests++;
      }
    }
  }
  const shown = pairs.filter((p) => p.servedPosition > 0);
  const labels = shown.map((p) => (p.clicked > 0 ? 1 : 0));
  const mean = (f: (p: ShadowPair) => number) => (pairs.length ? pairs.reduce((s, p) => s + f(p), 0) / pairs.length : NaN);
  return {
    experiment,
    shadowVersion,
    servedVersions: [...new Set(pairs.map((p) => p.servedVersion))].sort(),
    requests: byRequest.size,
    items: pairs.length,
    meanServedScore: mean((p) => p.served),
    meanShadowScore: mean((p) => p.shadow),
    meanAbsScoreDifference: mean((p) => Math.abs(p.shadow - p.served)),
    scoreCorrelation: pearson(
      pairs.map((p) => p.served),
      pairs.map((p) => p.shadow),
    ),
    rankCorrelation: rankRequests ? rankSum / rankRequests : NaN,
    topKOverlap: overlapRequests ? overlap / overlapRequests : NaN,
    sameFirstItem: overlapRequests ? sameFirst / overlapRequests : NaN,
    shown: shown.length,
    clicked: labels.reduce((s: number, y) => s + y, 0),
    servedAuc: auc(
      shown.map((p) => p.served),
      labels,
    ),
    shadowAuc: auc(
      shown.map((p) => p.shadow),
      labels,
    ),
  };
}

/** Ranks with ties averaged (1-based). */
function ranks(values: readonly number[]): number[] {
  const order = values.map((v, i) => ({ v, i })).sort((a, b) => a.v - b.v);
  const out = new Array<number>(values.length);
  for (let start = 0; start < order.length; ) {
    let end = start;
    while (end + 1 < order.length && order[end + 1]!.v === order[start]!.v) end++;
    const rank = (start + end) / 2 + 1;
    for (let j = start; j <= end; j++) out[order[j]!.i] = rank;
    start = end + 1;
  }
  return out;
}

function pearson(x: readonly number[], y: readonly number[]): number {
  const n = x.length;
  if (n < 2) return NaN;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < n; i++) {
    mx += x[i]!;
    my += y[i]!;
  }
  mx /= n;
  my /= n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i]! - mx;
    const dy = y[i]! - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : NaN;
}
