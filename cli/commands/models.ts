// `streamserve models`: push your own ONNX model, list versions, promote, roll back.
import { existsSync, readFileSync } from "node:fs";
import type { Command } from "../command.js";
import { stringFlag, UsageError, type CommandArgs } from "../args.js";
import type { FeatureSpec, Registry } from "../../lib/registry.js";
import { featureSpec, allFeatureSpecs } from "../../features/definitions.js";
import { createSession, resolveIo, signature, ModelLoadError } from "../../server/onnx-model.js";
import { printTable } from "../table.js";

const USAGE = `Usage:
  streamserve models push --name NAME --file model.onnx --features f1,f2,... [--alias production]
                          [--input NAME] [--output NAME] [--description TEXT]
  streamserve models list [NAME] [--json]
  streamserve models promote NAME VERSION [--alias production]
  streamserve models rollback NAME [--alias production]
  streamserve models history NAME [--alias production]

--features lists the model's inputs in the order of its input matrix. A name the feature
pipeline maintains (${allFeatureSpecs()
  .map((f) => f.name)
  .join(", ")}) needs nothing more; any other is written source:name with source user, item or request
(user:my_score reads field my_score of the Redis hash user_features:{user_id}).`;

/** Parses --features into serving specs, with a message that says how to fix a bad entry. */
export function parseFeatureList(list: string): FeatureSpec[] {
  const out: FeatureSpec[] = [];
  for (const raw of list
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [a, b] = raw.split(":");
    if (b === undefined) {
      const known = featureSpec(a!);
      if (!known) throw new UsageError(`unknown feature "${a}": the pipeline has no such feature; write it as user:${a}, item:${a} or request:${a}`);
      out.push(known);
    } else {
      if (!["user", "item", "request"].includes(a!)) throw new UsageError(`feature "${raw}": source must be user, item or request`);
      out.push(featureSpec(b) ?? { name: b, source: a as FeatureSpec["source"], type: "numeric", default: 0 });
    }
  }
  if (!out.length) throw new UsageError("--features is empty");
  return out;
}

async function push(args: CommandArgs, registry: Registry): Promise<number> {
  const name = stringFlag(args, "name");
  const file = stringFlag(args, "file");
  const featureList = stringFlag(args, "features");
  if (!name) throw new UsageError("--name is required");
  if (!file) throw new UsageError("--file is required");
  if (!featureList) throw new UsageError("--features is required (the model's inputs, in order)");
  if (!existsSync(file)) throw new UsageError(`--file ${file}: no such file`);
  const features = parseFeatureList(featureList);
  const bytes = new Uint8Array(readFileSync(file));
  let io;
  try {
    const session = await createSession(bytes);
    io = resolveIo(signature(session), features.length, { inputName: stringFlag(args, "input"), outputName: stringFlag(args, "output") });
    await session.release();
  } catch (err) {
    if (err instanceof ModelLoadError) {
      console.error(`streamserve models push: ${file}: ${err.message}`);
      return 1;
    }
    throw err;
  }
  const mv = await registry.publish({
    name,
    artifact: bytes,
    features,
    inputName: io.inputName,
    outputName: io.outputName,
    description: stringFlag(args, "description"),
  });
  console.log(`pushed ${name} version ${mv.version} (sha256 ${mv.artifact.sha256.slice(0, 12)}, ${features.length} features)`);
  const alias = stringFlag(args, "alias");
  if (alias) {
    await registry.setAlias(name, alias, mv.version, { reason: "models push --alias" });
    console.log(`${name}@${alias} → ${mv.version}`);
  }
  return 0;
}

async function list(args: CommandArgs, registry: Registry): Promise<number> {
  const models = args.positionals[1] ? [args.positionals[1]] : await registry.listModels();
  const rows: Record<string, string>[] = [];
  for (const model of models) {
    const aliases = await registry.aliases(model);
    for (const v of await registry.listVersions(model)) {
      rows.push({
        model,
        version: v.version,
        aliases: Object.entries(aliases)
          .filter(([, r]) => r.version === v.version)
          .map(([a]) => a)
          .join(","),
        created: v.createdAt.replace("T", " ").slice(0, 19),
        by: v.createdBy,
        auc: v.metrics.auc !== undefined ? v.metrics.auc.toFixed(4) : "",
        features: String(v.features.length),
      });
    }
  }
  if (args.flags.json) console.log(JSON.stringify(rows, null, 2));
  else if (!rows.length) console.log("no models yet: push one with `streamserve models push` or let `streamserve train` publish one");
  else printTable(rows);
  return 0;
}

const command: Command = {
  name: "models",
  summary: "push, list, promote and roll back model versions in the registry",
  usage: USAGE,
  printsReport: true,
  async run(args, runtime) {
    const [sub, name, version] = args.positionals;
    const registry = await runtime.registry();
    const alias = stringFlag(args, "alias") ?? "production";
    switch (sub) {
      case "push":
        return push(args, registry);
      case "list":
        return list(args, registry);
      case "promote": {
        if (!name || !version) throw new UsageError("promote needs NAME and VERSION");
        const r = await registry.setAlias(name, alias, version, { reason: "models promote" });
        console.log(`${name}@${alias}: ${r.previous ?? "(none)"} → ${r.version}`);
        return 0;
      }
      case "rollback": {
        if (!name) throw new UsageError("rollback needs NAME");
        const r = await registry.rollback(name, alias);
        console.log(`${name}@${alias}: ${r.previous} → ${r.version} (rolled back)`);
        return 0;
      }
      case "history": {
        if (!name) throw new UsageError("history needs NAME");
        const rows = (await registry.aliasHistory(name, alias)).map((r) => ({
          at: r.at,
          version: r.version,
          from: r.previous ?? "",
          by: r.by,
          reason: r.reason ?? "",
        }));
        if (args.flags.json) console.log(JSON.stringify(rows, null, 2));
        else printTable(rows);
        return 0;
      }
      default:
        throw new UsageError(sub ? `unknown subcommand "${sub}"` : "which subcommand? push, list, promote, rollback or history");
    }
  },
};

export default command;
