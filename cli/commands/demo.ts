// `streamserve demo` (`npm run demo`): the whole platform plus the clickstream simulator on a
// compressed schedule, narrating the loop as it happens: fallback serving, the first model trained
// and hot-swapped in, a second model in an A/B experiment and its result, a drift alert after the
// simulated behaviour shifts, and where to look.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { randomBytes } from "node:crypto";
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
import { experimentRows, featureDriftRows, num } from "../../monitor/text-report.js";
import type { CycleReport as MonitoringReport } from "../../monitor/monitor.js";
import { formatTable } from "../table.js";
import type { Registry } from "../../lib/registry.js";
import { startGuardedRollout, type RolloutStep } from "../../trainer/rollout.js";
import { logisticOnnx, ONNX_INPUT_NAME, ONNX_PROBABILITIES_NAME } from "../../trainer/onnx-export.js";
import { featureSpec } from "../../features/definitions.js";
import { FALLBACK_VERSION } from "../../server/recommendation-service.js";

const say = (text: string) => console.log(`\n▶ ${text}`);
const note = (text: string) => console.log(`  ${text}`);

function describeTraining(r: TrainingReport | SkippedRun): string {
  if ("skipped" in r) return `training skipped: ${r.reason}`;
  const auc = r.candidate?.auc;
  const prod = r.production?.evaluation?.auc;
  return `trained on ${r.data.rows} rows (${r.data.positives} clicks): AUC ${auc?.toFixed(3) ?? "-"}${prod !== undefined ? ` vs production ${prod.toFixed(3)}` : ""} → ${r.decision.action}${r.version ? ` version ${r.version.version}` : ""} (${r.decision.reason})`;
}

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs: number, signal: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !signal.aborted) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 250));
  }
  return false;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    // The listener goes with the timer: the story sleeps dozens of times on one signal.
    const onAbort = () => (clearTimeout(t), resolve());
    const t = setTimeout(() => (signal.removeEventListener("abort", onAbort), resolve()), ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });

/** Each look at the running rollout until it is promoted, rolled back, or `maxLooks` pass. */
async function followRollout(platform: Platform, experiment: string, lookMs: number, maxLooks: number, signal: AbortSignal): Promise<RolloutStep | undefined> {
  let last: RolloutStep | undefined;
  for (let look = 1; look <= maxLooks && !signal.aborted; look++) {
    await sleep(lookMs, signal);
    // The stage's last exposures and clicks reach ClickHouse before the look reads them.
    await platform.server.logs.flush();
    await sleep(1500, signal);
    const report = await platform.monitor.runCycle();
    const step = report.rollouts?.find((r) => r.experiment === experiment);
    if (!step) {
      note(`look ${look}: the rollout is no longer running`);
      return last;
    }
    last = step;
    const ctr = step.decision.tests.find((t) => t.name === "ctr");
    const conversion = step.decision.tests.find((t) => t.name === "conversion");
    note(
      `look ${look}, stage ${step.percent} %: ${step.stats.rollout.users} users on v${step.candidate} / ${step.stats.baseline.users} on v${step.baseline}; ` +
        `CTR per user ${pct(ctr?.rollout)} vs ${pct(ctr?.baseline)} (difference in [${pct(ctr?.lower)}, ${pct(ctr?.upper)}]), ` +
        `conversion ${pct(conversion?.rollout)} vs ${pct(conversion?.baseline)} → ${step.action.toUpperCase()}`,
    );
    if (step.action === "promoted" || step.action === "rollback") {
      note(step.reason);
      return step;
    }
  }
  return last;
}

const pct = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? "-" : `${(100 * v).toFixed(1)}%`);

/** Stops whatever experiment runs on the model (the story runs one at a time). */
async function stopRunning(registry: Registry, model: string): Promise<void> {
  for (const e of await registry.listExperiments()) if (e.status === "running" && e.model === model) await registry.stopExperiment(e.name);
}

/** The story, phase by phase; each phase waits on what it announces rather than on a clock alone. */
async function tell(runtime: Runtime, platform: Platform, sim: Simulation, phaseMs: number, signal: AbortSignal): Promise<void> {
  const model = runtime.config.modelName;
  const registry = await runtime.registry();
  const lookMs = phaseMs / 2;

  say(`Phase 1: no model yet. Recommend ranks by popularity (model_version "fallback") while events flow (feature windows compressed to ${phaseMs / 3000} s).`);
  await sleep(phaseMs, signal);
  const c1 = sim.counters();
  note(`${c1.events} events, ${c1.requests} Recommend calls (${c1.fallbackResponses} answered by the fallback), ${c1.outcomes} clicks recorded`);

  say("Phase 2: the trainer learns from the logged features joined to the clicks, and promotes a first model.");
  let first = await platform.trainer.runNow();
  note(describeTraining(first));
  for (let attempt = 0; attempt < 3 && !signal.aborted && !("version" in first && first.decision.action === "promote"); attempt++) {
    note("not enough to promote yet; more traffic, then another try");
    await sleep(phaseMs / 2, signal);
    first = await platform.trainer.runNow();
    note(describeTraining(first));
  }
  const swapped = await waitUntil(() => platform.server.models.servedVersion(model) !== undefined, 30_000, signal);
  if (!swapped) return note("no model was promoted: the story stops here (more traffic or a longer --phase helps)");
  const v1 = platform.server.models.servedVersion(model)!;
  note(`hot swap done: the server now answers with version ${v1}, with no failed request (${sim.counters().requestErrors} errors so far)`);
  await sleep(phaseMs / 2, signal);
  await platform.server.logs.flush();
  await sleep(1500, signal);
  const online = (await platform.monitor.runCycle()).online ?? [];
  const fallback = online.find((o) => o.version === FALLBACK_VERSION);
  const firstModel = online.find((o) => o.version === v1);
  if (fallback && firstModel) {
    note(
      `online, from outcomes: version ${v1} CTR ${pct(firstModel.ctr)} of ${firstModel.shown} shown items (${firstModel.requests} requests) against the fallback's ${pct(fallback.ctr)} of ${fallback.shown}`,
    );
  }

  say("Phase 3: a second model goes out as a guarded rollout: 10 % → 50 % → 100 % of users, each stage judged online against production.");
  await sleep(phaseMs / 2, signal);
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
        policy: DEMO_ROLLOUT_POLICY(phaseMs),
        actor: "demo",
        reason: "demo: rolled out whatever its offline AUC",
      })
    ).name;
  }
  if (rollout) {
    note(
      `${rollout}: always-valid sequential tests (mSPRT) on CTR and conversion per user, guardrails on error rate and latency; a look every ${lookMs / 1000} s`,
    );
    await followRollout(platform, rollout, lookMs, 10, signal);
  }

  say("Phase 4: a deliberately worse model (it prefers the items users click least: item CTR and clicks with negative weights) goes out the same way.");
  const production = await registry.getAlias(model, "production");
  const prodVersion = production && (await registry.getVersion(model, production.version));
  if (prodVersion) {
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
    const e = await startGuardedRollout(registry, {
      model,
      candidate: bad.version,
      policy: DEMO_ROLLOUT_POLICY(phaseMs),
      actor: "demo",
      reason: "demo: a deliberately worse model",
    });
    note(`version ${bad.version} published; ${e.name} at 10 %`);
    await followRollout(platform, e.name, lookMs, 8, signal);

    // Production now: unchanged if the rollback happened, the worse model if the tests let it through.
    const control = (await registry.getAlias(model, "production"))?.version ?? prodVersion.version;
    const treatment = control === bad.version ? prodVersion.version : bad.version;
    say(
      `Phase 5: an A/B test, production v${control} against v${treatment}, until the always-valid test reaches a verdict; v${v1} scores half the requests in shadow meanwhile.`,
    );
    await stopRunning(registry, model);
    const name = `demo_ab_${Date.now().toString(36)}`;
    await registry.createExperiment({
      name,
      model,
      actor: "demo",
      variants: [
        { name: "control", traffic: 50, target: control },
        { name: "treatment", traffic: 50, target: treatment },
      ],
      ...(v1 !== control && v1 !== treatment && { shadow: { target: v1, percent: 50 } }),
    });
    note(`experiment ${name}: control → v${control}, treatment → v${treatment}, 50/50 by a hash of the user id`);
    let verdict = false;
    let report: MonitoringReport | undefined;
    for (let look = 1; look <= 10 && !verdict && !signal.aborted; look++) {
      await sleep(lookMs, signal);
      await platform.server.logs.flush();
      await sleep(1500, signal);
      report = await platform.monitor.runCycle();
      const result = report.experiments?.experiments.find((r) => r.experiment === name);
      const t = result?.variants.find((v) => !v.control);
      if (!result || !t) continue;
      verdict = t.sequentialSignificant === true;
      note(
        `look ${look}: ${result.variants.map((v) => `${v.variant} ${v.conversions}/${v.users} users converted`).join(", ")}; ` +
          `always-valid p ${num(t.sequentialPValue)}, fixed-horizon p ${num(t.pValue)}, CUPED variance reduction ${pct(t.cuped?.varianceReduction)}` +
          (verdict
            ? ` → VERDICT: the treatment ${t.sequential!.estimate < 0 ? "converts less" : "converts more"} (difference in [${pct(t.sequential!.lower)}, ${pct(t.sequential!.upper)}])`
            : ""),
      );
    }
    const result = report?.experiments?.experiments.filter((r) => r.experiment === name) ?? [];
    if (result.length) console.log(formatTable(experimentRows(result)).replace(/^/gm, "    "));
    if (!verdict) note("no verdict within ten looks: the always-valid test keeps the experiment running until the data decide");
    const shadow = report?.shadow?.find((c) => c.experiment === name);
    if (shadow) {
      note(
        `shadow v${shadow.shadowVersion} on ${shadow.requests} of the same requests: scores correlate ${num(shadow.scoreCorrelation)} with the served ones, ` +
          `top-k overlap ${pct(shadow.topKOverlap)}, same first item ${pct(shadow.sameFirstItem)}; AUC on the shown items ${num(shadow.shadowAuc)} vs ${num(shadow.servedAuc)} served`,
      );
    }
    await registry.stopExperiment(name);
  }

  say("Phase 6: behaviour shifts (longer sessions on mobile, a new popular page); the monitor compares served features with the training reference.");
  sim.world.shift();
  await sleep(phaseMs * 1.5, signal);
  const report = await platform.monitor.runCycle();
  const drift = report.drift?.features ?? [];
  if (drift.length) console.log(formatTable(featureDriftRows(drift)).replace(/^/gm, "    "));
  else if (report.drift?.reason) note(`drift not checked: ${report.drift.reason}`);
  const sent = report.alerts.sent.length;
  const firing = report.alerts.suppressed.length;
  const shifted = drift.filter((f) => f.verdict === "alert").map((f) => f.feature);
  if (shifted.length) note(`drift on ${shifted.length} of ${drift.length} features: ${shifted.join(", ")}`);
  note(
    sent || firing
      ? `${sent} alert(s) sent now, ${firing} still firing from an earlier look (NATS ${runtime.names.alertsSubject("<kind>")}, the log, and the webhook if STREAMSERVE_ALERT_WEBHOOK is set)`
      : "no alert this cycle",
  );
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

/** The deliberately worse model: the more an item is clicked, the lower it ranks. */
const WORSE_MODEL = [
  { feature: "item_ctr_5min", weight: -8 },
  { feature: "item_clicks_5min", weight: -0.3 },
];

/** Stages judged at the pace of the story: a look every half phase. */
const DEMO_ROLLOUT_POLICY = (phaseMs: number) => ({ minStageMs: phaseMs, minUsers: 40, minTestUsers: 20 });

const command: Command = {
  name: "demo",
  summary: "the whole loop on a compressed schedule with the clickstream simulator, narrated",
  booleans: ["no-local-services", "metrics-open"],
  usage: `Usage: streamserve demo [flags]

Starts everything \`streamserve up\` starts plus the clickstream simulator, then tells the story
of the loop as it happens (about ten minutes), with numbers measured from the logged outcomes:
  1. fallback serving (popularity) while events flow;
  2. the first model trained, hot-swapped in, its online CTR against the fallback's;
  3. a second model in a guarded rollout, 10 % → 50 % → 100 % of users, each stage judged online;
  4. a deliberately worse model (it prefers the least clicked items) rolled back by the same test;
  5. an A/B test that runs until its always-valid test reaches a verdict, with a shadow version
     scoring half the requests meanwhile;
  6. a drift alert after the simulated behaviour shifts.
The platform keeps running afterwards until Ctrl-C (or --duration).

Each run has a namespace of its own (streams, buckets, Redis keys; ClickHouse in
DATA_DIR/<namespace>), so nothing left by another run can steer it; the namespace's NATS and Redis
state is deleted when the demo ends, its ClickHouse data is kept for \`report sql\`. With
--namespace (or STREAMSERVE_NAMESPACE) the demo runs in that one and leaves it in place.

  --phase DURATION    length of each phase (default 45s)
  --rate N            simulated events per second (default 300)
  --users N           simulated users (default 800)
  --pages N           simulated pages (default 120)
  --duration DURATION stop by itself after this long (default: run until Ctrl-C)`,
  async run(args, given) {
    const phaseMs = durationFlag(args, "phase", 45_000)!;
    const fresh = stringFlag(args, "namespace") === undefined && !process.env.STREAMSERVE_NAMESPACE;
    const namespace = fresh ? `demo_${Date.now().toString(36)}_${randomBytes(2).toString("hex")}` : given.config.namespace;
    const runtime = fresh ? createRuntime({ ...given.config, namespace, dataDir: join(given.config.dataDir, namespace) }, given.log) : given;
    if (fresh) console.log(`demo namespace ${namespace} (ClickHouse data in ${runtime.config.dataDir})`);
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
        labelDelayMs: 10_000,
        minRows: 500,
        windowMs: 3_600_000,
        initialDelayMs: 24 * 3_600_000,
        rollout: "guarded",
        rolloutPolicy: DEMO_ROLLOUT_POLICY(phaseMs),
      },
      // Drift over the last phase and a half, so the shift is not diluted by the hour before it.
      // Online CTR per version over the whole demo (the fallback's phase included).
      monitor: { drift: { windowMs: phaseMs * 1.5 }, online: { windowMs: 3_600_000 } },
      // Windows compressed like the rest of the story (the definitions say 5 minutes, watermark
      // 10): within a few minutes the windows are in steady state, so training, serving and the
      // drift check compare like with like, and closed windows reach ClickHouse during the demo.
      // Whole milliseconds: window bounds become protobuf Timestamps (--phase 20s would give 6666.67).
      featureWindows: { windowMs: Math.round(phaseMs / 3), watermarkMs: Math.round(phaseMs / 6) },
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
      progressIntervalMs: 10_000,
      onProgress: (p) =>
        console.log(
          `  · ${p.eventsPerSecond.toFixed(0)} events/s, ${p.requestsPerSecond.toFixed(0)} Recommend/s, ${p.outcomes} clicks, ${p.requestErrors} errors${p.shifted ? " (shifted)" : ""}`,
        ),
    });
    const stop = new AbortController();
    const duration = durationFlag(args, "duration");
    const timer = duration ? setTimeout(() => stop.abort(), duration) : undefined;
    const signal = untilSignal().then(() => stop.abort());
    try {
      await tell(runtime, platform, sim, phaseMs, stop.signal);
      if (!stop.signal.aborted) {
        say("Where to look");
        note(`dashboard: http://127.0.0.1:${platform.httpPort}/  (model versions, latency, drift, A/B)`);
        note(`metrics:   http://127.0.0.1:${platform.httpPort}/metrics`);
        note(`call it:   grpcurl -plaintext -d '{"user_id":"u1"}' 127.0.0.1:${platform.grpcPort} streamserve.v1.RecommendationService/Recommend`);
        note(
          `SQL:       after Ctrl-C, streamserve report sql "SELECT model_version, count() FROM predictions FINAL GROUP BY model_version" --data-dir ${runtime.config.dataDir}`,
        );
        note("The platform keeps running; Ctrl-C stops everything.");
        await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
      }
    } finally {
      if (timer) clearTimeout(timer);
      void signal;
      await sim.stop();
      await platform.stop();
      if (fresh) await forgetNamespace(runtime);
    }
    return 0;
  },
};

export default command;
