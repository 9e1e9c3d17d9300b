// `streamserve experiments`: A/B tests between model versions, stored in the registry.
import type { Command } from "../command.js";
import { durationFlag, listFlag, numberFlag, stringFlag, UsageError } from "../args.js";
import { parseShadow, parseVariant } from "../../lib/experiments.js";
import { printTable } from "../table.js";
import { checkRollouts, startGuardedRollout, DEFAULT_STAGES } from "../../trainer/rollout.js";
import { rolloutLock } from "../../trainer/cycle-lock.js";

const command: Command = {
  name: "experiments",
  summary: "create, list and stop A/B experiments between model versions",
  printsReport: true,
  usage: `Usage:
  streamserve experiments create --name NAME --variant control:50:production --variant treatment:50:candidate [--shadow VERSION:PERCENT] [--model recommender]
  streamserve experiments create --name NAME --shadow VERSION:PERCENT
  streamserve experiments list [--json]
  streamserve experiments stop NAME
  streamserve experiments rollout VERSION [--stages 10,50,100] [--min-stage 1h] [--min-users 200] [--alpha 0.05]
  streamserve experiments rollout-check [--json]

A variant is name:traffic%:target, target being a model alias or version; traffic adds up to 100.
Users are assigned by a hash of experiment and user id: the same user always sees the same variant.

--shadow VERSION:PERCENT also scores PERCENT % of requests (by a hash of experiment and request
id) with VERSION (a version or alias) after the response is sent; its scores are logged to
shadow_predictions, never returned. Without --variant everyone stays on production
(control:100:production). \`streamserve report shadow\` compares the two.

rollout starts a guarded rollout of VERSION against the current production version: an experiment
rollout-MODEL-vVERSION gives VERSION the first stage's share of users, the rest stay on production.
Each look (every monitoring cycle, or rollout-check now) compares the stage's online CTR and
conversion per user (from outcomes) with production's by always-valid sequential tests (mSPRT),
with guardrails on error rate and latency. A significant regression stops the rollout (everyone
back on production); a stage that held --min-stage with --min-users per arm advances; passing the
last stage below 100 % promotes VERSION. Every step is in model_events with its statistics
(streamserve report sql "SELECT * FROM model_timeline").

Flags:
  --stages P,Q,...   percent of users per stage, ascending (default ${DEFAULT_STAGES.join(",")})
  --min-stage D      a stage holds at least this long before it advances (default 1h)
  --min-users N      and has at least N users in each arm (default 200)
  --alpha A          probability of rolling back a candidate that is no worse, over the whole
                     rollout (default 0.05; split over the tests and stages)`,
  async run(args, runtime) {
    const registry = await runtime.registry();
    const [sub, name] = args.positionals;
    switch (sub) {
      case "create": {
        const expName = stringFlag(args, "name");
        if (!expName) throw new UsageError("--name is required");
        let variants;
        let shadow;
        try {
          variants = listFlag(args, "variant").map(parseVariant);
          const spec = stringFlag(args, "shadow");
          shadow = spec ? parseShadow(spec) : undefined;
        } catch (err) {
          throw new UsageError((err as Error).message);
        }
        if (!variants.length && shadow) variants = [{ name: "control", traffic: 100, target: "production" }];
        const e = await registry.createExperiment({ name: expName, model: runtime.config.modelName, variants, shadow });
        console.log(
          `experiment ${e.name} running on ${e.model}: ${e.variants.map((v) => `${v.name} ${v.traffic}% → ${v.target}`).join(", ")}${e.shadow ? `; shadow ${e.shadow.target} scores ${e.shadow.percent}% of requests` : ""}`,
        );
        return 0;
      }
      case "rollout": {
        const version = name;
        if (!version || !/^\d+$/.test(version)) throw new UsageError("rollout needs the VERSION (a number) to roll out");
        const stages = stringFlag(args, "stages")?.split(",").map(Number);
        const e = await startGuardedRollout(registry, {
          model: runtime.config.modelName,
          candidate: version,
          stages,
          policy: { minStageMs: durationFlag(args, "min-stage"), minUsers: numberFlag(args, "min-users"), alpha: numberFlag(args, "alpha") },
          actor: process.env.STREAMSERVE_ACTOR ?? process.env.USER ?? "cli",
        });
        console.log(
          `guarded rollout ${e.name}: v${version} to ${e.rollout!.stages.join(" % → ")} % of users against production v${e.rollout!.baseline}; now at ${e.rollout!.stages[0]} %`,
        );
        return 0;
      }
      case "rollout-check": {
        const steps = await checkRollouts({ ch: await runtime.clickhouse(), registry, log: runtime.log, lock: rolloutLock(runtime) });
        if (args.flags.json) console.log(JSON.stringify(steps, null, 2));
        else if (!steps.length) console.log("no guarded rollout running");
        else
          printTable(
            steps.map((s) => ({
              experiment: s.experiment,
              stage: `${s.percent} %`,
              users: `${s.stats.rollout.users} / ${s.stats.baseline.users}`,
              action: s.action,
              reason: s.reason,
            })),
          );
        return 0;
      }
      case "list": {
        const rows = (await registry.listExperiments()).map((e) => ({
          name: e.name,
          model: e.model,
          status: e.status,
          variants: e.variants.map((v) => `${v.name}:${v.traffic}:${v.target}`).join(" "),
          shadow: e.shadow ? `${e.shadow.target}:${e.shadow.percent}` : "",
          rollout: e.rollout
            ? `v${e.rollout.candidate} vs v${e.rollout.baseline}, stage ${e.rollout.stages[e.rollout.stage]} % of ${e.rollout.stages.join("/")}`
            : "",
          created: e.createdAt.replace("T", " ").slice(0, 19),
        }));
        if (args.flags.json) console.log(JSON.stringify(rows, null, 2));
        else if (!rows.length) console.log("no experiments");
        else printTable(rows);
        return 0;
      }
      case "stop": {
        if (!name) throw new UsageError("stop needs the experiment's NAME");
        const e = await registry.stopExperiment(name);
        console.log(`experiment ${e.name} stopped`);
        return 0;
      }
      default:
        throw new UsageError(sub ? `unknown subcommand "${sub}"` : "which subcommand? create, list, stop, rollout or rollout-check");
    }
  },
};

export default command;
