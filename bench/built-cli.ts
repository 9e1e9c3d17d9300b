// How the benchmarks run our programs: the built JavaScript in dist/ (what `npm start` runs),
// rebuilt with `npm run build` when a source file is newer; BENCH_FROM_SOURCE=1 runs the
// TypeScript through tsx instead (its keepNames helper costs per closure, dist does not).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./processes.js";

const BUILT_DIRS = ["cli", "server", "features", "sink", "trainer", "monitor", "simulator", "lib", "gen"];
const fromSource = process.env.BENCH_FROM_SOURCE === "1";
let checked = false;

/** Node arguments that run `file` (a .ts path from the repository root, e.g. "cli/main.ts"). */
export function programArgs(file: string): string[] {
  if (fromSource) return ["--import", "tsx", file];
  ensureBuilt();
  return [join("dist", file.replace(/\.ts$/, ".js"))];
}

/** One line for the benchmark's output: which code it runs. */
export function programsLine(): string {
  return fromSource
    ? "programs: from source through tsx (BENCH_FROM_SOURCE=1)"
    : "programs: built JavaScript in dist/ (as `npm start`; unset BENCH_FROM_SOURCE)";
}

function ensureBuilt(): void {
  if (checked) return;
  checked = true;
  const built = ["dist/cli/main.js", "dist/bench/floor-server.js"].map((f) => join(ROOT, f));
  const builtAt = Math.min(...built.map((f) => (existsSync(f) ? statSync(f).mtimeMs : 0)));
  const sources = [...BUILT_DIRS.flatMap((d) => tsFiles(join(ROOT, d))), join(ROOT, "bench/floor-server.ts")];
  if (sources.every((f) => statSync(f).mtimeMs <= builtAt)) return;
  console.log("programs: dist/ is older than the sources, running `npm run build`");
  const r = spawnSync("npm", ["run", "build"], { cwd: ROOT, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`npm run build failed (${r.status}):\n${(r.stdout + r.stderr).slice(-3000)}`);
}

function tsFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith(".d.ts"))
    .map((e) => join(e.parentPath, e.name));
}
