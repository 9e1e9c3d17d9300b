// The monitor's findings as table rows for people (`streamserve monitor --once`, `drift`, `report`);
// cli/table.ts lays them out. Numbers are shortened here, once, the same way everywhere.
import type { FeatureDrift } from "./drift.js";
import type { QualityGroup } from "./quality.js";
import type { ExperimentResult } from "./experiments.js";
import type { AbReportRow, DriftReportRow, QualityReportRow } from "./reports.js";
import type { ShadowComparison } from "./shadow.js";

type Row = Record<string, string | number>;

/** 3 significant decimals; p-values and other tiny numbers in exponent form; "-" for no value. */
export function num(v: number | undefined, digits = 3): string {
  if (v === undefined || !Number.isFinite(v)) return "-";
  if (Number.isInteger(v)) return String(v);
  if (v !== 0 && Math.abs(v) < 10 ** -digits) return v.toExponential(1);
  return v.toFixed(digits);
}

/** A p-value: exactly 0 means below what a double resolves, which is what a person should read. */
export function pvalue(v: number | undefined): string {
  return v === 0 ? "<1e-15" : num(v);
}

const pct = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? "-" : `${(v * 100).toFixed(1)}%`);
const interval = (lo: number | undefined, hi: number | undefined) => (Number.isFinite(lo) && Number.isFinite(hi) ? `[${pct(lo)}, ${pct(hi)}]` : "-");

export function featureDriftRows(features: readonly FeatureDrift[]): Row[] {
  return features.map((f) => ({
    feature: f.feature,
    type: f.type,
    test: f.test,
    statistic: num(f.testStatistic),
    "p (corrected)": pvalue(f.pAdjusted),
    psi: num(f.psi),
    "non-finite": f.type === "numeric" && Number.isFinite(f.nonFiniteRate) ? pct(f.nonFiniteRate) : "-",
    reference: f.referenceN,
    current: f.currentN,
    verdict: f.verdict,
    note: f.reason ?? "",
  }));
}

export function qualityGroupRows(groups: readonly QualityGroup[]): Row[] {
  return groups.map((g) => ({
    hour: g.hour.toISOString().slice(0, 16).replace("T", " "),
    version: g.version,
    variant: g.variant || "-",
    shown: g.shown,
    positives: g.result.positives,
    auc: num(g.result.auc),
    accuracy: num(g.result.accuracy),
    ece: num(g.result.ece),
    brier: num(g.result.brier),
    verdict: g.verdict,
    note: g.notes.join("; "),
  }));
}

export function experimentRows(results: readonly ExperimentResult[]): Row[] {
  return results.flatMap((e) =>
    e.variants.map((v) => ({
      experiment: e.experiment,
      variant: v.control ? `${v.variant} (control)` : v.variant,
      users: v.users,
      exposures: v.exposures,
      conversions: v.conversions,
      rate: pct(v.conversionRate),
      "revenue/user": num(v.avgRevenue, 2),
      lift: v.control ? "" : pct(v.lift?.lift),
      "95% CI": v.control ? "" : interval(v.lift?.lower, v.lift?.upper),
      p: v.control ? "" : pvalue(v.pAdjusted),
      "seq p": v.control ? "" : pvalue(v.sequentialPValue),
      "diff (always valid)": v.control ? "" : interval(v.sequential?.lower, v.sequential?.upper),
      "CUPED p": v.control ? "" : pvalue(v.cuped?.pValue),
      "var. reduction": v.control ? "" : pct(v.cuped?.varianceReduction),
      "revenue p": v.control ? "" : pvalue(v.revenueTest?.pValue),
      verdict: v.verdict,
    })),
  );
}

/** The CTR side of each experiment: clicks per shown item, users as clusters (delta method). */
export function experimentCtrRows(results: readonly ExperimentResult[]): Row[] {
  return results.flatMap((e) =>
    e.variants.map((v) => {
      const t = v.ctrTest;
      return {
        experiment: e.experiment,
        variant: v.control ? `${v.variant} (control)` : v.variant,
        users: v.users,
        shown: v.shown,
        clicks: v.clicks,
        CTR: pct(v.ctr),
        "CTR lift": v.control ? "" : pct(t?.lift),
        "95% CI (diff)": v.control ? "" : interval(t?.lower, t?.upper),
        p: v.control ? "" : pvalue(t?.pValue),
        "seq p": v.control ? "" : pvalue(t?.sequentialPValue),
        "diff (always valid)": v.control ? "" : interval(t?.sequential.lower, t?.sequential.upper),
        "CUPED p": v.control ? "" : pvalue(t?.cuped?.pValue),
        "var. reduction": v.control ? "" : pct(t?.cuped?.varianceReduction),
      };
    }),
  );
}

export function driftReportRows(rows: readonly DriftReportRow[]): Row[] {
  return rows.map((r) => ({
    model: r.model,
    version: r.version,
    feature: r.kind === "prediction_drift" ? "(score)" : r.feature,
    statistic: r.statistic,
    value: r.statistic === "non_finite" ? pct(r.value) : num(r.value),
    p: pvalue(r.pValue),
    threshold: num(r.threshold),
    current: r.currentN,
    reference: r.referenceN,
    verdict: r.verdict,
  }));
}

export function qualityReportRows(rows: readonly QualityReportRow[]): Row[] {
  return rows.map((r) => ({
    hour: r.hour.slice(0, 16).replace("T", " "),
    model: r.model,
    version: r.version,
    variant: r.variant,
    n: r.n,
    positives: r.positives,
    auc: num(r.auc),
    accuracy: num(r.accuracy),
    ece: num(r.ece),
    "mean score": num(r.meanPredicted),
    "observed rate": num(r.observedRate),
    verdict: r.verdict,
  }));
}

export function abReportRows(rows: readonly AbReportRow[]): Row[] {
  return rows.map((r) => ({
    experiment: r.experiment,
    variant: r.control ? `${r.variant} (control)` : r.variant,
    version: r.version,
    users: r.users,
    exposures: r.exposures,
    conversions: r.conversions,
    rate: pct(r.conversionRate),
    "revenue/user": num(r.avgRevenue, 2),
    lift: r.control ? "" : pct(r.lift),
    "95% CI": r.control ? "" : interval(r.liftLower, r.liftUpper),
    p: r.control ? "" : pvalue(r.pValue),
    "seq p": r.control ? "" : pvalue(r.sequentialPValue),
    "diff (always valid)": r.control ? "" : interval(r.sequentialLower, r.sequentialUpper),
    "CUPED p": r.control ? "" : pvalue(r.cupedPValue),
    "var. reduction": r.control ? "" : pct(r.varianceReduction),
    "revenue p": r.control ? "" : pvalue(r.revenuePValue),
    verdict: r.verdict,
  }));
}

/** The CTR side of `report ab`: the same columns as experimentCtrRows, from the stored analysis. */
export function abCtrReportRows(rows: readonly AbReportRow[]): Row[] {
  return rows.map((r) => ({
    experiment: r.experiment,
    variant: r.control ? `${r.variant} (control)` : r.variant,
    users: r.users,
    shown: Number.isFinite(r.shown) ? r.shown : "-",
    clicks: Number.isFinite(r.clicks) ? r.clicks : "-",
    CTR: pct(r.ctr),
    "CTR lift": r.control ? "" : pct(r.ctrLift),
    "95% CI (diff)": r.control ? "" : interval(r.ctrLower, r.ctrUpper),
    p: r.control ? "" : pvalue(r.ctrPValue),
    "seq p": r.control ? "" : pvalue(r.ctrSequentialPValue),
    "diff (always valid)": r.control ? "" : interval(r.ctrSequentialLower, r.ctrSequentialUpper),
    "CUPED p": r.control ? "" : pvalue(r.ctrCupedPValue),
    "var. reduction": r.control ? "" : pct(r.ctrVarianceReduction),
  }));
}

/**
 * What `streamserve report ab` prints: conversion per user, then CTR per shown item, then each
 * experiment's notes. The demo prints this same text.
 */
export function abReportText(rows: readonly AbReportRow[], format: (rows: Row[]) => string): string {
  const parts = [
    "conversion (per user: converted at least once)",
    format(abReportRows(rows)),
    "",
    "CTR (clicks per shown item; users as clusters, delta method)",
    format(abCtrReportRows(rows)),
  ];
  const notes = new Map(rows.filter((r) => r.note).map((r) => [r.experiment, r.note]));
  for (const [experiment, note] of notes) parts.push("", `${experiment}: ${note}`);
  return parts.join("\n");
}

export function shadowRows(rows: readonly ShadowComparison[]): Row[] {
  return rows.map((r) => ({
    experiment: r.experiment,
    shadow: r.shadowVersion,
    served: r.servedVersions.join(","),
    requests: r.requests,
    items: r.items,
    "mean |Δscore|": num(r.meanAbsScoreDifference),
    "score r": num(r.scoreCorrelation),
    "rank ρ": num(r.rankCorrelation),
    "top-k overlap": pct(r.topKOverlap),
    "same first": pct(r.sameFirstItem),
    shown: r.shown,
    clicks: r.clicked,
    "AUC served": num(r.servedAuc),
    "AUC shadow": num(r.shadowAuc),
  }));
}
