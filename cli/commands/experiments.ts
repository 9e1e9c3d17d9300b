// `streamserve experiments`: A/B tests between model versions, stored in the registry.
import type { Command } from "../command.js";
import { listFlag, stringFlag, UsageError } from "../args.js";
import { parseVariant } from "../../lib/experiments.js";
import { printTable } from "../table.js";

const command: Command = {
  name: "experiments",
  summary: "create, list and stop A/B experiments between model versions",
  printsReport: true,
  usage: `Usage:
  streamserve experiments create --name NAME --variant control:50:production --variant treatment:50:candidate [--model recommender]
  streamserve experiments list [--json]
  streamserve experiments stop NAME

A variant is name:traffic%:target, target being a model alias or version; traffic adds up to 100.
Users are assigned by a hash of experiment and user id: the same user always sees the same variant.`,
  async run(args, runtime) {
    const registry = await runtime.registry();
    const [sub, name] = args.positionals;
    switch (sub) {
      case "create": {
        const expName = stringFlag(args, "name");
        if (!expName) throw new UsageError("--name is required");
        let variants;
        try {
          variants = listFlag(args, "variant").map(parseVariant);
        } catch (err) {
          throw new UsageError((err as Error).message);
        }
        const e = await registry.createExperiment({ name: expName, model: runtime.config.modelName, variants });
        console.log(`experiment ${e.name} running on ${e.model}: ${e.variants.map((v) => `${v.name} ${v.traffic}% → ${v.target}`).join(", ")}`);
        return 0;
      }
      case "list": {
        const rows = (await registry.listExperiments()).map((e) => ({
          name: e.name,
          model: e.model,
          status: e.status,
          variants: e.variants.map((v) => `${v.name}:${v.traffic}:${v.target}`).join(" "),
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
        throw new UsageError(sub ? `unknown subcommand "${sub}"` : "which subcommand? create, list or stop");
    }
  },
};

export default command;
