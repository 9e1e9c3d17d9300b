// `streamserve demo` (`npm run demo`): the whole platform plus the clickstream simulator on a
// compressed schedule, narrating the loop as it happens: fallback serving, the first model trained
// and hot-swapped in, a second model in an A/B experiment and its result, a drift alert after the
// simulated behaviour shifts, and where to look.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { durationFlag, numberFlag } from "../args.js";
import { startPlatform, banner, type Platform } from "./up.js";
import { startSimulation, type Simulation } from "../../simulator/simulation.js";
import type { Runtime } from "../../lib/runtime.js";
import type { CycleReport as TrainingReport } from "../../trainer/cycle.js";
import type { SkippedRun } from "../../trainer/schedule.js";
import { experimentRows, featureDriftRows } from "../../monitor/text-report.js";
import { formatTable } from "../table.js";

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
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/** The story, phase by phase; each phase waits on what it announces rather than on a clock alone. */
async function tell(runtime: Runtime, platform: Platform, sim: Simulation, phaseMs: number, signal: AbortSignal): Promise<void> {
  const model = runtime.config.modelName;
  const registry = await runtime.registry();

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
  if (swapped) note(`hot swap done: the server now answers with version ${platform.server.models.servedVersion(model)}, with no failed request (${sim.counters().requestErrors} errors so far)`);

  say("Phase 3: a second model is trained and tried against production in an A/B experiment.");
  await sleep(phaseMs / 2, signal);
  const second = await platform.trainer.runNow();
  note(describeTraining(second));
  const aliases = await registry.aliases(model);
  const production = aliases.production?.version;
  const versions = (await registry.listVersions(model)).map((v) => v.version);
  const challenger = [...versions].reverse().find((v) => v !== production);
  if (production && challenger) {
    if (aliases.candidate?.version !== challenger) await registry.setAlias(model, "candidate", challenger, { actor: "demo", reason: "A/B challenger" });
    const name = `demo_ab_${Date.now().toString(36)}`;
    for (const e of await registry.listExperiments()) if (e.status === "running" && e.model === model) await registry.stopExperiment(e.name);
    await registry.createExperiment({ name, model, actor: "demo", variants: [{ name: "control", traffic: 50, target: "production" }, { name: "treatment", traffic: 50, target: "candidate" }] });
    note(`experiment ${name}: control → version ${production}, treatment → version ${challenger}, 50/50 by a hash of the user id`);
    await sleep(phaseMs * 1.5, signal);
    // Let the last exposures and clicks reach ClickHouse before the analysis reads them.
    await platform.server.logs.flush();
    await sleep(3000, signal);
    const report = await platform.monitor.runCycle();
    const results = report.experiments?.experiments.filter((r) => r.experiment === name) ?? [];
    if (results.length) console.log(formatTable(experimentRows(results)).replace(/^/gm, "    "));
    await registry.stopExperiment(name);
  } else {
    note("only one version so far: skipping the experiment");
  }

  say("Phase 4: behaviour shifts (longer sessions on mobile, a new popular page); the monitor compares served features with the training reference.");
  await sleep(phaseMs * 1.5, signal);
  const report = await platform.monitor.runCycle();
  const drift = report.drift?.features ?? [];
  if (drift.length) console.log(formatTable(featureDriftRows(drift)).replace(/^/gm, "    "));
  const alerts = report.alerts.sent.length;
  note(alerts ? `${alerts} alert(s) sent (NATS ${runtime.names.alertsSubject("<kind>")}, the log, and the webhook if STREAMSERVE_ALERT_WEBHOOK is set)` : "no alert this cycle");
}

const command: Command = {
  name: "demo",
  summary: "the whole loop on a compressed schedule with the clickstream simulator, narrated",
  booleans: ["no-local-services", "metrics-open"],
  usage: `Usage: streamserve demo [flags]

Starts everything \`streamserve up\` starts plus the clickstream simulator, then tells the story
of the loop as it happens (about five minutes): fallback serving, the first model trained and
hot-swapped in, a second model in an A/B experiment and its result, a drift alert after the
simulated behaviour shifts. The platform keeps running afterwards until Ctrl-C (or --duration).

  --phase DURATION    length of each phase (default 60s)
  --rate N            simulated events per second (default 300)
  --users N           simulated users (default 800)
  --pages N           simulated pages (default 120)
  --duration DURATION stop by itself after this long (default: run until Ctrl-C)`,
  async run(args, runtime) {
    const phaseMs = durationFlag(args, "phase", 60_000)!;
    const platform = await startPlatform(runtime, args, {
      localServices: !args.flags["no-local-services"],
      // The schedules are driven by the story; their own timers stay far away.
      trainEveryMs: 24 * 3_600_000,
      monitorEveryMs: 24 * 3_600_000,
      // Compressed: clicks arrive within seconds here, so the trainer need not wait 5 minutes for
      // them, and a few thousand rows are enough to show a promotion.
      // No cycle at start: the story runs them (a cycle while the simulator's first calls arrive
      // only competes with them for the CPU).
      trainer: { labelDelayMs: 10_000, minRows: 500, windowMs: 3_600_000, initialDelayMs: 24 * 3_600_000 },
      // Drift over the last phase and a half, so the shift is not diluted by the hour before it.
      monitor: { drift: { windowMs: phaseMs * 1.5 } },
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
      durationMs: 0,
      // Phase 4 starts after 1 + about 1 + 2 phases.
      shiftAtMs: phaseMs * 4,
      progressIntervalMs: 10_000,
      onProgress: (p) =>
        console.log(`  · ${p.eventsPerSecond.toFixed(0)} events/s, ${p.requestsPerSecond.toFixed(0)} Recommend/s, ${p.outcomes} clicks, ${p.requestErrors} errors${p.shifted ? " (shifted)" : ""}`),
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
        note(`SQL:       after Ctrl-C, streamserve report sql "SELECT model_version, count() FROM predictions FINAL GROUP BY model_version" --data-dir ${runtime.config.dataDir}`);
        note("The platform keeps running; Ctrl-C stops everything.");
        await new Promise<void>((resolve) => stop.signal.addEventListener("abort", () => resolve(), { once: true }));
      }
    } finally {
      if (timer) clearTimeout(timer);
      void signal;
      await sim.stop();
      await platform.stop();
    }
    return 0;
  },
};

export default command;
