#!/usr/bin/env node
// Runs every test file under test/ with Node's test runner through tsx. Node 20's runner does not
// expand globs for .ts files itself, so this script finds them. Extra arguments filter by path:
// `npm test -- trainer` runs the files whose path contains "trainer".
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
const filters = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const flags = process.argv.slice(2).filter((a) => a.startsWith("-"));

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "fixtures" ? [] : walk(path);
    return name.endsWith(".test.ts") ? [path] : [];
  });
}

const files = walk(join(root, "test"))
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filters.join(", ")}`);
  process.exit(1);
}
const result = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-concurrency=2", "--test-timeout=300000", ...flags, ...files], {
  cwd: root,
  stdio: "inherit",
});
process.exit(result.status ?? 1);
