// `streamserve demo` (`npm run demo`): the whole platform plus the clickstream simulator on a
// compressed schedule, narrating the loop as it happens, each phase with the numbers measured from
// the logged outcomes and a PASS line: fallback serving and the first model against it, a better
// model's guarded rollout that advances, a worse one rolled back, an A/B test to its always-valid
// verdict with a shadow version, and the drift alert after the simulated behaviour shifts.
// Every wait is on a condition (traffic counted, logs written, a decision taken) with a timeout,
// never on a clock alone, so a loaded machine makes the story slower, not different.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { join } from "node:path";
import { durationFlag, numberFlag, stringFlag } from "../args.js";
import { createRuntime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { deleteKeysWithPrefix } from "../../lib/redis.js";
import { startPlatform, banner, type Platform } from "./up.js";
import { startSimulation, type Simulation } from "../../simulator/simulation.js";
import type { Runtime } from "../../lib/runtime.js";
import type { CycleReport as TrainingReport } from "../../trainer/cycle.js";
import type { SkippedRun } from "../../trainer/schedule.js";
import { abReportText, featureDriftRows, num, shadowRows } from "../../monitor/text-report.js";
import type { CycleReport as MonitoringReport } from "../../monitor/monitor.js";
import type { OnlineFigures } from "../../monitor/online.js";
import { formatTable } from "../table.js";
import type { Registry } from "../../lib/registry.js";
import { startGuardedRollout, type RolloutStep } from "../../trainer/rollout.js";
import type { RolloutPolicy } from "../../trainer/rollout-decision.js";
import { logisticOnnx, ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME } from "../../trainer/onnx-export.js";
import { featureSpec } from "../../features/definitions.js";
import { FALLBACK_VERSION } from "../../server/recommendation-service.js";
import { LOG_KINDS } from "../../sink/index.js";

const say = (text: string) => console.log(`\n▶ ${text}`);
const note = (text: string) => console.log(`  ${text}`);
const indent = (text: string) => text.replace(/^/gm, "    ");
const pct = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? "-" : `${(100 * v).toFixed(1)}%`);

/** One phase's outcome, for the closing table. */
interface PhaseResult {
  phase: string;
  pass: boolean;
  measured: string;
}

/** The story's clock: how long each kind of wait may last and how often it looks. */
interface Pace {
  /** Traffic per phase. */
  phaseMs: number;
  /** Between two looks at a rollout or an A/B. */
  lookMs: number;
  /** Looks before a phase gives up. */
  maxLooks: number;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    // The listener goes with the timer: the story sleeps dozens of times on one signal.
    const onAbort = () => (clearTimeout(t), resolve());
    const t = setTimeout(() => (signal.removeEventListener("abort", onAbort), resolve()), ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs: number, signal: AbortSignal, everyMs = 250): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !signal.aborted) {
    if (await check()) return true;
    await sleep(everyMs, signal);
  }
  return false;
}

function describeTraining(r: TrainingReport | SkippedRun): string {
  if ("skipped" in r) return `training skipped: ${r.reason}`;
  const auc = r.candidate?.auc;
  const prod = r.production?.evaluation?.auc;
  return `trained on ${r.data.rows} rows (${r.data.positives} clicks): validation AUC ${auc?.toFixed(3) ?? "-"}${prod !== undefined ? ` vs production's ${prod.toFixed(3)} on the same rows` : ""} → ${r.decision.action}${r.version ? ` version ${r.version.version}` : ""} (${r.decision.reason})`;
}

/**
 * The server's logs are flushed to LOGS and every sink consumer has written (acked) each of them
 * up to the last one published, so what a look reads in ClickHouse is complete up to now. Traffic
 * keeps flowing meanwhile, so "nothing pending" may never hold: each consumer's ack floor must pass
 * the last message of its subject at the time of the flush. Waits up to `timeoutMs`.
 */
async function settle(runtime: Runtime, platform: Platform, signal: AbortSignal, timeoutMs = 30_000): Promise<boolean> {
  await platform.server.logs.flush();
  const { names } = runtime;
  const jsm = await (await runtime.nats()).jetstreamManager();
  const targets: [string, number][] = [];
  for (const kind of LOG_KINDS) {
    const last = await jsm.streams.getMessage(names.logsStream, { last_by_subj: names.logsSubject(kind) }).catch(() => undefined);
    if (last) targets.push([names.consumer(`sink-${kind}`), last.seq]);
  }
  const written = async () => {
    for (const [durable, seq] of targets) {
      const info = await jsm.consumers.info(names.logsStream, durable).catch(() => undefined);
      if (info && info.ack_floor.stream_seq < seq && info.num_pending + info.num_ack_pending > 0) return false;
    }
    return true;
  };
  return waitUntil(written, timeoutMs, signal, 300);
}

/** One monitoring cycle on complete data. */
async function look(runtime: Runtime, platform: Platform, signal: AbortSignal): Promise<MonitoringReport> {
  if (!(await settle(runtime, platform, signal))) note("(the sink had not written every log within 30 s; this look reads what it has)");
  return platform.monitor.runCycle();
}

/** Each look at the running rollout until it is promoted, rolled back, or the looks run out. */
async function followRollout(runtime: Runtime, platform: Platform, experiment: string, pace: Pace, signal: AbortSignal): Promise<RolloutStep | undefined> {
  let last: RolloutStep | undefined;
  for (let n = 1; n <= pace.maxLooks && !signal.aborted; n++) {
    await sleep(pace.lookMs, signal);
    const report = await look(runtime, platform, signal);
    const step = report.rollouts?.find((r) => r.experiment === experiment);
    if (!step) {
      note(`look ${n}: the rollout is no longer running`);
      return last;
    }
    last = step;
    const ctr = step.decision.tests.find((t) => t.name === "ctr");
    const conversion = step.decision.tests.find((t) => t.name === "conversion");
    note(
      `look ${n}, stage ${step.percent} %: ${step.stats.rollout.users} users on v${step.candidate} / ${step.stats.baseline.users} on v${step.baseline}; ` +
        `CTR per user ${pct(ctr?.rollout)} vs ${pct(ctr?.baseline)} (difference in [${pct(ctr?.lower)}, ${pct(ctr?.upper)}] always valid), ` +
        `converted ${pct(conversion?.rollout)} vs ${pct(conversion?.baseline)} → ${step.action.toUpperCase()}`,
    );
    if (step.action === "promoted" || step.action === "rollback") {
      note(step.reason);
      return step;
    }
  }
  return last;
}

/** Stops whatever experiment runs on the model (the story runs one at a time). */
async function stopRunning(registry: Registry, model: string): Promise<void> {
  for (const e of await registry.listExperiments()) if (e.status === "running" && e.model === model) await registry.stopExperiment(e.name);
}

const ctrOf = (f: OnlineFigures | undefined) =>
  f ? `${pct(f.ctr)} (${f.clicks} clicks of ${f.shown} shown items, ${f.requests} requests, ${f.users} users)` : "-";

/** The story, phase by phase; each phase waits on what it announces and records what it measured. */
async function tell(
  runtime: Runtime,
  platform: Platform,
  sim: Simulation,
  pace: Pace,
  policy: Partial<RolloutPolicy>,
  signal: AbortSignal,
): Promise<PhaseResult[]> {
  const results: PhaseResult[] = [];
  const model = runtime.config.modelName;
  const registry = await runtime.registry();
  const { phaseMs } = pace;
  const started = new Date();

  // ── 1 and 2: the fallback, then the first model against it ──────────────────────────────────
  say(
    `Phase 1: no model yet. Recommend ranks by popularity (model_version "fallback") while events flow; the features' windows are compressed to ${Math.round(phaseMs / 1000)} s.`,
  );
  // Enough shown items to train on, and at least a phase of traffic.
  const minShown = 6000;
  await waitUntil(() => sim.counters().recommendations >= minShown && Date.now() - started.getTime() >= phaseMs, 4 * phaseMs, signal, 1000);
  const c1 = sim.counters();
  note(`${c1.events} events, ${c1.requests} Recommend calls (${c1.fallbackResponses} answered by the fallback), ${c1.outcomes} clicks recorded`);

  say("Phase 2: the trainer learns from the logged features joined to the clicks, promotes a first model, and the server hot-swaps it in.");
  await settle(runtime, platform, signal);
  let first = await platform.trainer.runNow();
  note(describeTraining(first));
  for (let attempt = 0; attempt < 3 && !signal.aborted && !("version" in first && first.decision.action === "promote"); attempt++) {
    note("not enough to promote yet; more traffic, then another try");
    await sleep(phaseMs / 2, signal);
    await settle(runtime, platform, signal);
    first = await platform.trainer.runNow();
    note(describeTraining(first));
  }
  const fallbackUntil = new Date();
  const swapped = await waitUntil(() => platform.server.models.servedVersion(model) !== undefined, 60_000, signal);
  if (!swapped) {
    results.push({ phase: "first model vs fallback", pass: false, measured: "no model was promoted (more traffic or a longer --phase helps)" });
    return results;
  }
  const v1 = platform.server.models.servedVersion(model)!;
  const swapAt = new Date();
  note(`hot swap done: the server answers with version ${v1}; ${sim.counters().requestErrors} failed requests so far`);
  // As many shown items for v1 as the fallback had, and at least a phase.
  const shownAtSwap = sim.counters().recommendations;
  await waitUntil(() => sim.counters().recommendations - shownAtSwap >= minShown && Date.now() - swapAt.getTime() >= phaseMs, 4 * phaseMs, signal, 1000);
  await settle(runtime, platform, signal);
  // The fallback after its first window (the trending set and the features start empty), v1 after the swap.
  const warm = new Date(started.getTime() + Math.min(phaseMs / 3, (fallbackUntil.getTime() - started.getTime()) / 3));
  const fallbackFigures = (await platform.online({ from: warm, to: fallbackUntil })).find((o) => o.version === FALLBACK_VERSION);
  const v1Figures = (await platform.online({ from: swapAt, to: new Date() })).find((o) => o.version === v1);
  note(`online, from outcomes: version ${v1} CTR ${ctrOf(v1Figures)}`);
  note(`                       fallback  CTR ${ctrOf(fallbackFigures)}`);
  const firstWins = !!v1Figures && !!fallbackFigures && v1Figures.ctr > fallbackFigures.ctr;
  const firstLift = v1Figures && fallbackFigures ? v1Figures.ctr / fallbackFigures.ctr - 1 : NaN;
  note(
    firstWins
      ? `PASS: version ${v1} gets ${pct(firstLift)} more clicks per shown item than popularity`
      : `NOT AS NARRATED: version ${v1} does not beat the fallback online (lift ${pct(firstLift)})`,
  );
  results.push({
    phase: "first model vs fallback",
    pass: firstWins,
    measured: `CTR v${v1} ${pct(v1Figures?.ctr)} vs fallback ${pct(fallbackFigures?.ctr)} (${pct(firstLift)})`,
  });

  // ── 3: a better model, rolled out in stages ────────────────────────────────────────────────
  say(
    "Phase 3: a second model, trained on the fallback's and v1's traffic, goes out as a guarded rollout: 10 % → 50 % → 100 % of users, each stage judged online.",
  );
  await settle(runtime, platform, signal);
  const second = await platform.trainer.runNow();
  note(describeTraining(second));
  let rollout = "version" in second && second.rollout ? second.rollout.experiment : undefined;
  if (!rollout && "version" in second && second.version) {
    // Not 1 % better offline: the online test decides whether it may replace production.
    await stopRunning(registry, model);
    rollout = (
      await startGuardedRollout(registry, {
        model,
        candidate: second.version.version,
        policy,
        actor: "demo",
        reason: "demo: rolled out whatever its offline AUC",
      })
    ).name;
  }
  let promoted: RolloutStep | undefined;
  if (rollout) {
    note(
      `${rollout}: always-valid sequential tests (mSPRT) on CTR and conversion per user, guardrails on error rate and latency; a stage holds at least ${Math.round((policy.minStageMs ?? 0) / 1000)} s and ${policy.minUsers} users per arm; a look every ${pace.lookMs / 1000} s`,
    );
    promoted = await followRollout(runtime, platform, rollout, pace, signal);
  }
  const advanced = promoted?.action === "promoted";
  const ctr3 = promoted?.decision.tests.find((t) => t.name === "ctr");
  note(
    advanced
      ? `PASS: v${promoted!.candidate} advanced through every stage and is production now`
      : `NOT AS NARRATED: the rollout ${promoted ? `ended in ${promoted.action}` : "did not start"}`,
  );
  results.push({
    phase: "better model: staged rollout advances",
    pass: advanced,
    measured: promoted
      ? `${promoted.action} at ${promoted.percent} %: CTR per user ${pct(ctr3?.rollout)} vs ${pct(ctr3?.baseline)}, ${promoted.stats.rollout.users}/${promoted.stats.baseline.users} users`
      : "no rollout",
  });

  // ── 4: a worse model, rolled back ──────────────────────────────────────────────────────────
  say("Phase 4: a deliberately worse model (it prefers the items users click least: item CTR and clicks with negative weights) goes out the same way.");
  const production = await registry.getAlias(model, "production");
  const prodVersion = production && (await registry.getVersion(model, production.version));
  if (!prodVersion) {
    results.push({ phase: "worse model: rolled back", pass: false, measured: "no production version" });
    return results;
  }
  const specs = WORSE_MODEL.map((w) => featureSpec(w.feature)!);
  const reference = await registry.fetchReference(prodVersion);
  const bad = await registry.publish({
    name: model,
    artifact: logisticOnnx(
      WORSE_MODEL.map((w) => w.weight),
      0,
      "the demo's deliberately worse model",
    ),
    features: specs,
    inputName: ONNX_INPUT_NAME,
    outputName: ONNX_PROBABILITIES_NAME,
    description: "prefers the least clicked items, for the demo's rollback",
    // The served features' reference, from production's training sample.
    reference: reference && Object.fromEntries(specs.filter((f) => reference[f.name]).map((f) => [f.name, reference[f.name]!])),
    actor: "demo",
  });
  await stopRunning(registry, model);
  const e = await startGuardedRollout(registry, { model, candidate: bad.version, policy, actor: "demo", reason: "demo: a deliberately worse model" });
  note(`version ${bad.version} published; ${e.name} at 10 % of users`);
  const rolledBack = await followRollout(runtime, platform, e.name, pace, signal);
  const backed = rolledBack?.action === "rollback";
  const ctr4 = rolledBack?.decision.tests.find((t) => t.name === "ctr");
  const after = (await registry.getAlias(model, "production"))?.version;
  note(
    backed
      ? `PASS: v${bad.version} rolled back at ${rolledBack!.percent} %; every user is on production v${after} again`
      : `NOT AS NARRATED: the worse model ${rolledBack ? `ended in ${rolledBack.action}` : "was never judged"}`,
  );
  results.push({
    phase: "worse model: rolled back",
    pass: backed,
    measured: rolledBack
      ? `${rolledBack.action} at ${rolledBack.percent} %: CTR per user ${pct(ctr4?.rollout)} vs ${pct(ctr4?.baseline)}, ${rolledBack.stats.rollout.users}/${rolledBack.stats.baseline.users} users`
      : "no decision",
  });

  // ── 5: an A/B test to its verdict, with a shadow ───────────────────────────────────────────
  // Production now: unchanged after the rollback, the worse model if the tests let it through.
  const control = after ?? prodVersion.version;
  const treatment = control === bad.version ? prodVersion.version : bad.version;
  say(
    `Phase 5: how much worse is v${treatment}? An A/B test, production v${control} against v${treatment} for half the users, read every look until its always-valid test on CTR reaches a verdict; v${v1} scores half the requests in shadow meanwhile.`,
  );
  await stopRunning(registry, model);
  const name = `demo_ab_${Date.now().toString(36)}`;
  const shadowed = v1 !== control && v1 !== treatment;
  await registry.createExperiment({
    name,
    model,
    actor: "demo",
    variants: [
      { name: "control", traffic: 50, target: control },
      { name: "treatment", traffic: 50, target: treatment },
    ],
    ...(shadowed && { shadow: { target: v1, percent: 50 } }),
  });
  note(`experiment ${name}: control → v${control}, treatment → v${treatment}, 50/50 by a hash of the user id`);
  const abStart = new Date();
  let verdict = false;
  let report: MonitoringReport | undefined;
  for (let n = 1; n <= pace.maxLooks && !verdict && !signal.aborted; n++) {
    await sleep(pace.lookMs, signal);
    report = await look(runtime, platform, signal);
    const result = report.experiments?.experiments.find((r) => r.experiment === name);
    const t = result?.variants.find((v) => !v.control);
    const c = result?.variants.find((v) => v.control);
    if (!result || !t || !c) continue;
    verdict = t.ctrTest?.sequentialSignificant === true;
    note(
      `look ${n}: CTR control ${pct(c.ctr)} (${c.clicks}/${c.shown}, ${c.users} users), treatment ${pct(t.ctr)} (${t.clicks}/${t.shown}, ${t.users} users); ` +
        `always-valid p ${num(t.ctrTest?.sequentialPValue)}, fixed-horizon p ${num(t.ctrTest?.pValue)}` +
        (verdict ? " → VERDICT" : " → keep running"),
    );
  }
  const ab = await platform.abReport(name);
  note(`the analysis as \`streamserve report ab --experiment ${name}\` prints it:`);
  console.log(indent(abReportText(ab, formatTable)));
  const t5 = ab.find((r) => !r.control);
  const c5 = ab.find((r) => r.control);
  note(
    verdict && t5
      ? `PASS: verdict after ${Math.round((Date.now() - abStart.getTime()) / 1000)} s: v${treatment}'s CTR differs from control's by ${pct(t5.ctrLift)} (difference in [${pct(t5.ctrSequentialLower)}, ${pct(t5.ctrSequentialUpper)}], valid at every look); on conversion per user the always-valid p is ${num(t5.sequentialPValue)}`
      : `NOT AS NARRATED: no verdict within ${pace.maxLooks} looks; the always-valid test keeps the experiment running until the data decide`,
  );
  results.push({
    phase: "A/B reaches a verdict",
    pass: verdict,
    measured: t5 && c5 ? `CTR ${pct(t5.ctr)} vs ${pct(c5.ctr)} (lift ${pct(t5.ctrLift)}), always-valid p ${num(t5.ctrSequentialPValue)}` : "no analysis",
  });

  if (shadowed) {
    await settle(runtime, platform, signal);
    const shadow = (await platform.shadowReport({ experiment: name, from: abStart, to: new Date(Date.now() + 60_000) })).filter((s) => s.experiment === name);
    note(`the shadow, as \`streamserve report shadow --experiment ${name}\` prints it:`);
    if (shadow.length) console.log(indent(formatTable(shadowRows(shadow))));
    const s = shadow[0];
    const shadowOk = !!s && s.requests > 0 && Number.isFinite(s.shadowAuc) && Number.isFinite(s.servedAuc);
    note(
      shadowOk
        ? `PASS: v${s!.shadowVersion} scored ${s!.requests} of the same requests off the critical path, never returned: scores correlate ${num(s!.scoreCorrelation)} with the answering versions', top-k overlap ${pct(s!.topKOverlap)}; on the items shown and clicked, AUC ${num(s!.shadowAuc)} for the shadow vs ${num(s!.servedAuc)} served`
        : "NOT AS NARRATED: the shadow scored no requests with outcomes",
    );
    results.push({
      phase: "shadow comparison",
      pass: shadowOk,
      measured: s
        ? `v${s.shadowVersion} on ${s.requests} requests: score r ${num(s.scoreCorrelation)}, AUC ${num(s.shadowAuc)} shadow vs ${num(s.servedAuc)} served`
        : "no shadow scores",
    });
  } else {
    results.push({ phase: "shadow comparison", pass: false, measured: `v${v1} is one of the A/B's arms; no shadow to compare` });
  }
  await registry.stopExperiment(name);
  // The last look before the shift: what already drifted. Models steer clicks (a user who clicks a
  // recommendation also views it), so click-driven features move with the model served; the shift
  // is what moves session lengths and the device mix.
  const before = new Map((report?.drift?.features ?? []).map((f) => [f.feature, f]));
  const alreadyDrifted = [...before.values()].filter((f) => f.verdict === "alert").map((f) => f.feature);

  // ── 6: the shift, and the drift alert ──────────────────────────────────────────────────────
  say(
    "Phase 6: behaviour shifts (longer sessions on mobile, a new popular page); the monitor compares the served features with production's training reference.",
  );
  note(
    `at the last look before the shift, ${alreadyDrifted.length} of ${before.size} features had drifted from the reference${alreadyDrifted.length ? ` (${alreadyDrifted.join(", ")}: the models themselves change what users click)` : ""}`,
  );
  sim.world.shift();
  const shiftAt = Date.now();
  let drifted: MonitoringReport | undefined;
  let newly: string[] = [];
  const sent: string[] = [];
  // The drift window must hold mostly shifted traffic before a look can see it.
  await sleep(phaseMs, signal);
  for (let n = 1; n <= pace.maxLooks && !signal.aborted; n++) {
    const r = await look(runtime, platform, signal);
    sent.push(...r.alerts.sent.filter((a) => a.kind === "drift" && a.status === "firing").map((a) => a.subject));
    newly = (r.drift?.features ?? []).filter((f) => f.verdict === "alert" && before.get(f.feature)?.verdict !== "alert").map((f) => f.feature);
    note(
      `look ${n}, ${Math.round((Date.now() - shiftAt) / 1000)} s after the shift: ${(r.drift?.features ?? []).filter((f) => f.verdict === "alert").length} of ${r.drift?.features.length ?? 0} features drifted, ` +
        `${newly.length} of them not before the shift${newly.length ? ` (${newly.join(", ")})` : ""}; drift alerts sent since the shift: ${sent.length}`,
    );
    if (newly.length && newly.some((f) => sent.includes(f))) {
      drifted = r;
      break;
    }
    await sleep(pace.lookMs, signal);
  }
  const drift = drifted?.drift?.features ?? [];
  if (drift.length) console.log(indent(formatTable(featureDriftRows(drift))));
  const change = (name: string) => {
    const a = before.get(name);
    const b = drift.find((f) => f.feature === name);
    return `${name} ${b?.test.toUpperCase()} ${num(a?.testStatistic)} → ${num(b?.testStatistic)}, PSI ${num(a?.psi)} → ${num(b?.psi)}`;
  };
  note(
    drifted
      ? `PASS: the shift raised drift alerts on ${newly.join(", ")} (${newly.map(change).join("; ")}), sent on NATS ${runtime.names.alertsSubject("drift")}, to the log, and to the webhook if STREAMSERVE_ALERT_WEBHOOK is set`
      : "NOT AS NARRATED: no new drift alert after the shift",
  );
  results.push({
    phase: "drift alert after the shift",
    pass: !!drifted,
    measured: drifted
      ? `new alerts on ${newly.join(", ")} (${alreadyDrifted.length} feature${alreadyDrifted.length === 1 ? "" : "s"} drifting before the shift)`
      : "no new alert",
  });
  return results;
}

/** A fresh demo namespace leaves nothing in the shared NATS and Redis (its ClickHouse data stays). */
async function forgetNamespace(stopped: Runtime): Promise<void> {
  // The platform closed its runtime; a short-lived one does the cleanup.
  const runtime = createRuntime(stopped.config, stopped.log);
  try {
    const nc = await runtime.nats().catch(() => undefined);
    if (nc) await deleteNamespace(nc, runtime.names).catch(() => undefined);
    await deleteKeysWithPrefix(runtime.redis(), runtime.names.redisPrefix).catch(() => undefined);
  } finally {
    await runtime.close().catch(() => undefined);
  }
}

/** The port if nothing listens on it, else 0 (any free one): a demo must not fail on a busy default port. */
async function portOrAny(port: number): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(0));
    probe.listen(port, "0.0.0.0", () => probe.close(() => resolve(port)));
  });
}

/** The deliberately worse model: the more an item is clicked, the lower it ranks. */
const WORSE_MODEL = [
  { feature: "item_ctr_5min", weight: -8 },
  { feature: "item_clicks_5min", weight: -0.3 },
];

const command: Command = {
  name: "demo",
  summary: "the whole loop on a compressed schedule with the clickstream simulator, narrated",
  booleans: ["no-local-services", "metrics-open", "exit"],
  // The story is the output: the platform logs only warnings unless --log-level or LOG_LEVEL says otherwise.
  printsReport: true,
  usage: `Usage: streamserve demo [flags]

Starts everything \`streamserve up\` starts plus the clickstream simulator, then tells the story
of the loop as it happens (7-10 minutes on a busy 2-core machine), each phase with numbers
measured from the logged outcomes and a PASS line:
  1-2. fallback serving (popularity) while events flow; the first model trained, hot-swapped in,
     and its online CTR against the fallback's;
  3. a second model in a guarded rollout, 10 % → 50 % → 100 % of users, each stage judged online;
  4. a deliberately worse model (it prefers the least clicked items) rolled back by the same test;
  5. an A/B test read at every look until its always-valid test on CTR reaches a verdict, printed
     as \`report ab\` prints it, with a shadow version scoring half the requests (\`report shadow\`);
  6. a drift alert after the simulated behaviour shifts.
A table of the phases closes the story. The platform keeps running afterwards until Ctrl-C (or
--duration); with --exit the demo stops there, exiting 0 when every phase went as narrated.

Each run has a namespace of its own (streams, buckets, Redis keys; ClickHouse in
DATA_DIR/<namespace>), so nothing left by another run can steer it; the namespace's NATS and Redis
state is deleted when the demo ends, its ClickHouse data is kept for \`report sql\`. With
--namespace (or STREAMSERVE_NAMESPACE) the demo runs in that one and leaves it in place. When the
default gRPC or HTTP port is taken, the demo takes a free one (the banner says which).

  --phase DURATION    traffic per phase (default 40s); stages hold half a phase
  --look DURATION     time between two looks at a rollout or an A/B (default 10s)
  --rate N            simulated events per second (default 300)
  --users N           simulated users (default 800)
  --pages N           simulated pages (default 120)
  --exit              stop when the story ends (exit 1 if a phase did not go as narrated)
  --duration DURATION stop by itself after this long (default: run until Ctrl-C)`,
  async run(args, given) {
    const phaseMs = durationFlag(args, "phase", 40_000)!;
    const lookMs = durationFlag(args, "look", 10_000)!;
    const fresh = stringFlag(args, "namespace") === undefined && !process.env.STREAMSERVE_NAMESPACE;
    const namespace = fresh ? `demo_${Date.now().toString(36)}_${randomBytes(2).toString("hex")}` : given.config.namespace;
    // The child processes read LOG_LEVEL: the same level as this one's.
    if (!process.env.LOG_LEVEL) process.env.LOG_LEVEL = stringFlag(args, "log-level") ?? "warn";
    const ports = {
      grpcPort: stringFlag(args, "grpc-port") !== undefined ? given.config.grpcPort : await portOrAny(given.config.grpcPort),
      httpPort: stringFlag(args, "http-port") !== undefined ? given.config.httpPort : await portOrAny(given.config.httpPort),
    };
    const config = { ...given.config, ...ports, ...(fresh && { namespace, dataDir: join(given.config.dataDir, namespace) }) };
    const runtime = createRuntime(config, given.log);
    if (fresh) console.log(`demo namespace ${namespace} (ClickHouse data in ${runtime.config.dataDir})`);
    // Stages judged at the story's pace: a look every --look, a stage holds half a phase.
    const policy: Partial<RolloutPolicy> = { minStageMs: phaseMs / 2, minUsers: 40, minTestUsers: 20 };
    const platform = await startPlatform(runtime, args, {
      localServices: !args.flags["no-local-services"],
      // The schedules are driven by the story; their own timers stay far away.
      trainEveryMs: 24 * 3_600_000,
      monitorEveryMs: 24 * 3_600_000,
      // Compressed: clicks arrive within seconds here, so the trainer need not wait 5 minutes for
      // them, and a few thousand rows are enough to show a promotion.
      // No cycle at start: the story runs them (a cycle while the simulator's first calls arrive
      // only competes with them for the CPU).
      // Promotions after the first go out as guarded rollouts, at the story's pace.
      trainer: {
        labelDelayMs: 5_000,
        minRows: 500,
        windowMs: 3_600_000,
        initialDelayMs: 24 * 3_600_000,
        rollout: "guarded",
        rolloutPolicy: policy,
      },
      // Drift over the last phase, so the shift is not diluted by the traffic before it.
      // Online CTR per version over the whole demo (the fallback's phase included).
      monitor: { drift: { windowMs: phaseMs }, online: { windowMs: 3_600_000 } },
      // Windows compressed like the rest of the story (the definitions say 5 minutes, watermark
      // 10): within a few minutes the windows are in steady state, so training, serving and the
      // drift check compare like with like, and closed windows reach ClickHouse during the demo.
      // Whole milliseconds: window bounds become protobuf Timestamps (--phase 20s would give 6666.67).
      featureWindows: { windowMs: Math.round(phaseMs), watermarkMs: Math.round(phaseMs / 8) },
    });
    console.log(banner(platform.grpcPort, platform.httpPort, runtime.config.modelName));
    const sim = await startSimulation(runtime, {
      grpcAddress: `127.0.0.1:${platform.grpcPort}`,
      rate: numberFlag(args, "rate", 300),
      users: numberFlag(args, "users", 800),
      pages: numberFlag(args, "pages", 120),
      // Three recommendations out of twelve candidates: what the ranking puts first is what users
      // see, so a better or worse model shows in the clicks within a phase or two.
      candidates: 12,
      limit: 3,
      durationMs: 0,
      // The story shifts the world itself, at phase 6 (sim.world.shift()).
      progressIntervalMs: 20_000,
      onProgress: (p) =>
        console.log(
          `  · ${p.eventsPerSecond.toFixed(0)} events/s, ${p.requestsPerSecond.toFixed(0)} Recommend/s, ${p.outcomes} clicks, ${p.requestErrors} errors${p.shifted ? " (shifted)" : ""}`,
        ),
    });
    const stop = new AbortController();
    const duration = durationFlag(args, "duration");
    const timer = duration ? setTimeout(() => stop.abort(), duration) : undefined;
    const signal = untilSignal().then(() => stop.abort());
    const began = Date.now();
    let ok = false;
    try {
      const results = await tell(runtime, platform, sim, { phaseMs, lookMs, maxLooks: 12 }, policy, stop.signal);
      ok = results.length === 6 && results.every((r) => r.pass);
      say(`The story in ${Math.round((Date.now() - began) / 1000)} s (${ok ? "every phase as narrated" : "NOT every phase as narrated"})`);
      console.log(indent(formatTable(results.map((r) => ({ phase: r.phase, result: r.pass ? "PASS" : "FAIL", measured: r.measured })))));
      // What serving gave up to keep its budget: a call whose feature read missed it got defaults.
      const calls = await runtime.metrics.value("grpc_server_handled_total", { method: "/streamserve.v1.RecommendationService/Recommend" });
      const degraded = await runtime.metrics.value("streamserve_feature_lookup_degraded_total");
      note(`serving: ${degraded} of ${calls} Recommend calls answered with default features (Redis down or slower than the feature budget)`);
      if (!stop.signal.aborted) {
        say("Where to look");
        note(`dashboard: http://127.0.0.1:${platform.httpPort}/  (model versions, latency, drift, A/B)`);
        note(`metrics:   http://127.0.0.1:${platform.httpPort}/metrics`);
        note(`call it:   grpcurl -plaintext -d '{"user_id":"u1"}' 127.0.0.1:${platform.grpcPort} streamserve.v1.RecommendationService/Recommend`);
        note(
          `SQL:       after Ctrl-C, streamserve report sql "SELECT model_version, count() FROM predictions FINAL GROUP BY model_version" --data-dir ${runtime.config.dataDir}`,
        );
        if (!args.flags.exit) {
          note("The platform keeps running; Ctrl-C stops everything.");
          await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
        }
      }
    } finally {
      if (timer) clearTimeout(timer);
      void signal;
      await sim.stop();
      await platform.stop();
      if (fresh) await forgetNamespace(runtime);
    }
    return args.flags.exit && !ok ? 1 : 0;
  },
};

export default command;
