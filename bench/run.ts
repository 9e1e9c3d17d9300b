// `npm run bench`: every benchmark, each printing its figures next to a baseline measured in the
// same run. `npm run bench -- serving` runs only the benchmarks whose name matches.
const SUITES: [string, () => Promise<{ default?: unknown } & Record<string, unknown>>, string][] = [
  ["serving", () => import("./serving.js"), "benchServing"],
  ["workers", () => import("./workers.js"), "benchWorkers"],
  ["features", () => import("./features.js"), "benchFeatures"],
  ["sink", () => import("./sink.js"), "benchSink"],
  ["trainer", () => import("./trainer.js"), "benchTrainer"],
];

const filters = process.argv.slice(2);
for (const [name, load, fn] of SUITES) {
  if (filters.length && !filters.some((f) => name.includes(f))) continue;
  let mod;
  try {
    mod = await load();
  } catch (err) {
    console.log(`\n(${name}: benchmark not available: ${(err as Error).message})`);
    continue;
  }
  await (mod[fn] as () => Promise<void>)();
}
process.exit(0);
