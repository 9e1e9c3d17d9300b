// `npm run bench`: every benchmark, each printing its figures next to a baseline measured in the
// same run. `npm run bench -- serving` runs only the named one (a name that is no benchmark's
// selects those it is part of: `npm run bench -- serv` runs serving and serving-up).
import { killAll } from "./processes.js";

const SUITES: [string, () => Promise<{ default?: unknown } & Record<string, unknown>>, string][] = [
  ["serving", () => import("./serving.js"), "benchServing"],
  ["serving-up", () => import("./serving-up.js"), "benchServingUp"],
  ["workers", () => import("./workers.js"), "benchWorkers"],
  ["features", () => import("./features.js"), "benchFeatures"],
  ["fast-paths", () => import("./fast-paths.js"), "benchFastPaths"],
  ["cluster-read", () => import("./cluster-read.js"), "benchClusterRead"],
  ["sink", () => import("./sink.js"), "benchSink"],
  ["log-publisher", () => import("./log-publisher.js"), "benchLogPublisher"],
  ["trainer", () => import("./trainer.js"), "benchTrainer"],
];

const filters = process.argv.slice(2);
const selected = (name: string) => !filters.length || filters.some((f) => (SUITES.some(([n]) => n === f) ? name === f : name.includes(f)));
let failed = false;
for (const [name, load, fn] of SUITES) {
  if (!selected(name)) continue;
  let mod;
  try {
    mod = await load();
  } catch (err) {
    console.log(`\n(${name}: benchmark not available: ${(err as Error).message})`);
    continue;
  }
  try {
    await (mod[fn] as () => Promise<void>)();
  } catch (err) {
    failed = true;
    console.error(`\n${name} failed: ${(err as Error).stack ?? err}`);
    killAll();
  }
}
process.exit(failed ? 1 : 0);
