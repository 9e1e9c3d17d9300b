// Guarded rollout: a promotion that goes out in stages (10 % → 50 % → 100 % of users by default)
// instead of at once. The routing is an ordinary experiment in the registry, which every server
// already follows: the candidate's variant "rollout" holds the stage's share, "control" (the
// production version when the rollout started) the rest. Users are placed by the experiments' hash
// (lib/experiments.ts), "rollout" first, so a user who got the candidate at 10 % keeps it at 50 %.
//
// Each look (`checkRollouts`, run by every monitoring cycle and by `experiments rollout-check`)
// reads the current stage's exposures, predictions and outcomes from ClickHouse and applies the
// pure decision of rollout-decision.ts: a significant regression stops the rollout (every user back
// on the baseline), a stage that held long enough advances, and passing the last tested stage
// moves the production alias. Each step lands in model_events with its statistics.
import type { ClickHouse } from "../lib/clickhouse.js";
import type { Logger } from "../lib/logger.js";
import type { Experiment, ExperimentVariant, Registry, RolloutState } from "../lib/registry.js";
import { RegistryError } from "../lib/registry.js";
import { toClickHouseTime } from "../monitor/store.js";
import { decideStage, testsForEvent, ROLLOUT_POLICY_DEFAULTS, type RolloutArmStats, type RolloutPolicy, type StageDecision } from "./rollout-decision.js";
import { withDefaults } from "../lib/options.js";
import { isHeld, type CycleLock, type LockHolder } from "./cycle-lock.js";

export const DEFAULT_STAGES: readonly number[] = Object.freeze([10, 50, 100]);
export const ROLLOUT_VARIANT = "rollout";
export const BASELINE_VARIANT = "control";

/** Options for {@link startGuardedRollout}. */
export interface StartRolloutOptions {
  model: string;
  /** The version to roll out. */
  candidate: string;
  /** Percent of users per stage, ascending, ending at 100. @default [10, 50, 100] */
  stages?: readonly number[];
  /** The decision's settings; see {@link ROLLOUT_POLICY_DEFAULTS}. */
  policy?: Partial<RolloutPolicy>;
  /** Recorded in model_events. @default "trainer" */
  actor?: string;
  reason?: string;
}

type RolloutRegistry = Pick<
  Registry,
  "getAlias" | "getVersion" | "createExperiment" | "getExperiment" | "stopExperiment" | "listExperiments" | "setAlias" | "recordEvent"
>;

/** The routing entry's name: one rollout per model and candidate version. */
export function rolloutName(model: string, candidate: string): string {
  return `rollout-${model}-v${candidate}`.slice(0, 64);
}

/** Checks and completes stage lists: ascending percentages in (0, 100], ending at 100. */
export function parseStages(stages: readonly number[]): number[] {
  const out = [...stages];
  if (out.at(-1) !== 100) out.push(100);
  if (out.length < 2) throw new RegistryError("a guarded rollout needs at least one stage below 100 %", "invalid");
  out.forEach((p, i) => {
    if (!(p > 0 && p <= 100)) throw new RegistryError(`rollout stage ${p} % must be between 0 and 100`, "invalid");
    if (i > 0 && !(p > out[i - 1]!)) throw new RegistryError(`rollout stages must increase: ${out.join(", ")}`, "invalid");
  });
  return out;
}

function variantsAt(state: RolloutState): ExperimentVariant[] {
  const share = state.stages[state.stage]!;
  return [
    { name: ROLLOUT_VARIANT, traffic: share, target: state.candidate },
    { name: BASELINE_VARIANT, traffic: 100 - share, target: state.baseline },
  ];
}

/** Starts a rollout of `candidate` against the current production version at the first stage. */
export async function startGuardedRollout(registry: RolloutRegistry, options: StartRolloutOptions): Promise<Experiment> {
  const { model, candidate } = options;
  const stages = parseStages(options.stages ?? DEFAULT_STAGES);
  if (!(await registry.getVersion(model, candidate))) throw new RegistryError(`model ${model} has no version ${candidate}`, "not_found");
  const production = await registry.getAlias(model, "production");
  if (!production) throw new RegistryError(`model ${model} has no production version to roll out against: promote one first (models promote)`, "not_found");
  if (production.version === candidate) throw new RegistryError(`version ${candidate} of ${model} is already production`, "invalid");
  // createExperiment would let the same name through (that is how stages advance): a second start
  // of the same rollout must not reset it to its first stage.
  const running = (await registry.listExperiments()).find((e) => e.status === "running" && e.model === model);
  if (running) throw new RegistryError(`experiment ${running.name} is already running on ${model}; stop it first`, "conflict");
  const policy: RolloutPolicy = withDefaults(ROLLOUT_POLICY_DEFAULTS, options.policy);
  const now = new Date().toISOString();
  const state: RolloutState = { candidate, baseline: production.version, stages, stage: 0, startedAt: now, stageStartedAt: now, policy: { ...policy } };
  const experiment = await registry.createExperiment({
    name: rolloutName(model, candidate),
    model,
    variants: variantsAt(state),
    rollout: state,
    actor: options.actor,
  });
  await registry.recordEvent({
    model_name: model,
    kind: "rollout_start",
    alias: "production",
    from_version: production.version,
    to_version: candidate,
    actor: options.actor ?? "trainer",
    reason: options.reason ?? `guarded rollout of v${candidate} against v${production.version}: ${stages.join(" % → ")} %`,
    details: { experiment: experiment.name, stages, stage: 0, percent: stages[0], policy },
  });
  return experiment;
}

/** One look at one rollout, and what was done. */
export interface RolloutStep {
  experiment: string;
  model: string;
  candidate: string;
  baseline: string;
  percent: number;
  /** "promoted": the last tested stage held and production moved to the candidate. */
  action: StageDecision["action"] | "promoted";
  reason: string;
  decision: StageDecision;
  stats: { rollout: RolloutArmStats; baseline: RolloutArmStats };
}

export interface RolloutDeps {
  ch: ClickHouse;
  registry: RolloutRegistry;
  log?: Logger;
  actor?: string;
  /**
   * Takes a rollout's lock (trainer/cycle-lock.ts acquireRolloutLock): with it, two monitors never
   * act on one stage twice; the second re-reads the rollout once the first is done.
   */
  lock?: (experiment: string) => Promise<CycleLock | LockHolder>;
}

/** Looks at every running rollout once, as of `now`, and acts on each decision. */
export async function checkRollouts(deps: RolloutDeps, now = new Date()): Promise<RolloutStep[]> {
  const steps: RolloutStep[] = [];
  for (const listed of await deps.registry.listExperiments()) {
    if (listed.status !== "running" || !listed.rollout) continue;
    const lock = await deps.lock?.(listed.name);
    if (lock && isHeld(lock)) {
      deps.log?.info({ experiment: listed.name, holder: lock.holder }, "guarded rollout: another process is deciding this stage; not looked at now");
      continue;
    }
    try {
      // Under the lock, the rollout as it is now: another monitor may have moved it since the listing.
      const e = lock ? await deps.registry.getExperiment(listed.name) : listed;
      if (e?.status === "running" && e.rollout) steps.push(await lookAt(deps, e, e.rollout, now));
    } finally {
      await lock?.release();
    }
  }
  return steps;
}

async function lookAt(deps: RolloutDeps, e: Experiment, state: RolloutState, now: Date): Promise<RolloutStep> {
  const policy: RolloutPolicy = { ...ROLLOUT_POLICY_DEFAULTS, ...state.policy };
  const stageStart = new Date(state.stageStartedAt);
  const stats = await readRolloutStats(deps.ch, e.name, state, stageStart, now);
  const decision = decideStage({ ...stats, stages: state.stages, stage: state.stage, elapsedMs: now.getTime() - stageStart.getTime() }, policy);
  const percent = state.stages[state.stage]!;
  const step: RolloutStep = {
    experiment: e.name,
    model: e.model,
    candidate: state.candidate,
    baseline: state.baseline,
    percent,
    action: decision.action,
    reason: decision.reason,
    decision,
    stats,
  };
  const actor = deps.actor ?? "rollout";
  const details = {
    experiment: e.name,
    stage: state.stage,
    percent,
    stages: state.stages,
    test_alpha: decision.testAlpha,
    tests: testsForEvent(decision.tests),
    stats,
  };
  const log = deps.log?.child({ part: "rollout", model: e.model, experiment: e.name });
  if (decision.action === "rollback") {
    await deps.registry.stopExperiment(e.name);
    await deps.registry.recordEvent({
      model_name: e.model,
      kind: "rollout_rollback",
      alias: "production",
      from_version: state.candidate,
      to_version: state.baseline,
      actor,
      reason: decision.reason,
      details,
    });
    log?.warn(details, `guarded rollout: rolled back v${state.candidate}: ${decision.reason}`);
  } else if (decision.action === "advance") {
    const next = state.stage + 1;
    if (next >= state.stages.length - 1) {
      // The last tested stage held: the candidate becomes production for everyone, then the routing entry goes.
      step.action = "promoted";
      step.reason = `${decision.reason}; v${state.candidate} promoted to production`;
      await deps.registry.setAlias(e.model, "production", state.candidate, { actor, reason: `guarded rollout: ${step.reason}`, kind: "promote" });
      await deps.registry.stopExperiment(e.name);
      await deps.registry.recordEvent({
        model_name: e.model,
        kind: "rollout_complete",
        alias: "production",
        from_version: state.baseline,
        to_version: state.candidate,
        actor,
        reason: step.reason,
        details,
      });
      log?.info(details, `guarded rollout: ${step.reason}`);
    } else {
      const advanced: RolloutState = { ...state, stage: next, stageStartedAt: now.toISOString() };
      await deps.registry.createExperiment({ name: e.name, model: e.model, variants: variantsAt(advanced), rollout: advanced, actor });
      await deps.registry.recordEvent({
        model_name: e.model,
        kind: "rollout_advance",
        alias: "production",
        from_version: state.baseline,
        to_version: state.candidate,
        actor,
        reason: decision.reason,
        details: { ...details, next_percent: state.stages[next] },
      });
      log?.info(details, `guarded rollout: ${decision.reason}`);
    }
  } else {
    log?.debug(details, `guarded rollout: ${decision.reason}`);
  }
  return step;
}

const EMPTY_ARM: RolloutArmStats = Object.freeze({
  users: 0,
  ctrUsers: 0,
  ctrSum: 0,
  ctrSumSq: 0,
  conversions: 0,
  requests: 0,
  errors: 0,
  latencySum: 0,
  latencySumSq: 0,
  latencyRequests: 0,
});

/**
 * The stage's figures per arm, per user first: CTR = distinct clicked items / shown items of the
 * user's requests, converted if any request converted; a request counts as an error when its
 * exposure says another version than the arm's answered it; latency per request (from its
 * prediction log).
 */
export async function readRolloutStats(
  ch: ClickHouse,
  experiment: string,
  state: Pick<RolloutState, "candidate" | "baseline">,
  from: Date,
  to: Date,
): Promise<{ rollout: RolloutArmStats; baseline: RolloutArmStats }> {
  const result = await ch.client.query({
    query: `
      SELECT variant, count() AS users, countIf(shown > 0) AS ctr_users,
        sumIf(clicks / shown, shown > 0) AS ctr_sum, sumIf((clicks / shown) * (clicks / shown), shown > 0) AS ctr_sumsq,
        sum(converted) AS conversions, sum(requests) AS requests, sum(errors) AS errors,
        sum(lat_sum) AS latency_sum, sum(lat_sumsq) AS latency_sumsq, sum(lat_n) AS latency_requests
      FROM (
        SELECT e.user_id AS user_id, argMin(e.variant, e.time) AS variant, count() AS requests,
          sum(p.shown) AS shown, sum(o.clicks) AS clicks, max(o.converted) AS converted,
          countIf(e.model_version != if(e.variant = {rollout:String}, {candidate:String}, {baseline:String})) AS errors,
          sum(p.latency) AS lat_sum, sum(p.latency * p.latency) AS lat_sumsq, sum(p.present) AS lat_n
        FROM (
          SELECT request_id, user_id, variant, model_version, time FROM exposures FINAL
          WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)} AND time < {to:DateTime64(3)}) AS e
        LEFT JOIN (
          SELECT request_id, countIf(position > 0) AS shown, toFloat64(any(latency_ms)) AS latency, 1 AS present FROM predictions FINAL
          WHERE time >= {from:DateTime64(3)} - INTERVAL 1 MINUTE
            AND request_id IN (SELECT request_id FROM exposures WHERE experiment = {experiment:String} AND time >= {from:DateTime64(3)})
          GROUP BY request_id) AS p USING (request_id)
        LEFT JOIN (
          SELECT request_id, uniqExactIf(item_id, clicked = 1) AS clicks, max(converted) AS converted FROM outcomes FINAL
          WHERE time >= {from:DateTime64(3)} GROUP BY request_id) AS o USING (request_id)
        GROUP BY user_id)
      GROUP BY variant`,
    query_params: {
      experiment,
      from: toClickHouseTime(from),
      to: toClickHouseTime(to),
      rollout: ROLLOUT_VARIANT,
      candidate: state.candidate,
      baseline: state.baseline,
    },
    format: "JSONEachRow",
  });
  const rows = await result.json<Record<string, string | number>>();
  const arm = (variant: string): RolloutArmStats => {
    const r = rows.find((x) => x.variant === variant);
    if (!r) return { ...EMPTY_ARM };
    return {
      users: Number(r.users),
      ctrUsers: Number(r.ctr_users),
      ctrSum: Number(r.ctr_sum),
      ctrSumSq: Number(r.ctr_sumsq),
      conversions: Number(r.conversions),
      requests: Number(r.requests),
      errors: Number(r.errors),
      latencySum: Number(r.latency_sum),
      latencySumSq: Number(r.latency_sumsq),
      latencyRequests: Number(r.latency_requests),
    };
  };
  return { rollout: arm(ROLLOUT_VARIANT), baseline: arm(BASELINE_VARIANT) };
}
