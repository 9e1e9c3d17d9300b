#!/usr/bin/env node
// Records in package-lock.json every platform's optional binary package, so that `npm ci` accepts
// the lockfile on any machine. npm writes a lock entry only for the packages its registry serves:
// one that a mirror lacks (chdb's @chdb/lib-darwin-* here) is left out, and `npm ci` then fails with
// "Missing: ... from lock file". This adds each missing optional dependency with the platform its
// name declares (os, cpu, libc), so npm skips it on other machines and fetches it by version on its
// own. Run after `npm install` changed the lock: `npm run lock`.
import { readFileSync, writeFileSync } from "node:fs";

const LOCK = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(LOCK, "utf8"));
const packages = lock.packages;

const OS = { darwin: "darwin", linux: "linux", win32: "win32", windows: "win32", freebsd: "freebsd" };
const CPU = { arm64: "arm64", aarch64: "arm64", x64: "x64", ia32: "ia32", armv7: "arm", arm: "arm" };
const LIBC = { gnu: "glibc", glibc: "glibc", musl: "musl" };

/** `@chdb/lib-linux-arm64-gnu` → { os: linux, cpu: arm64, libc: glibc }; undefined when unclear. */
export function platformOf(name) {
  const parts = name.split("/").at(-1).split("-");
  const os = parts.map((p) => OS[p]).find(Boolean);
  const cpu = parts.map((p) => CPU[p]).find(Boolean);
  const libc = parts.map((p) => LIBC[p]).find(Boolean);
  return os && cpu ? { os, cpu, libc } : undefined;
}

const added = [];
for (const [path, entry] of Object.entries(packages)) {
  for (const [dep, range] of Object.entries(entry.optionalDependencies ?? {})) {
    // Resolution as node would see it: next to the dependent, then hoisted to the root.
    const nested = `${path ? `${path}/` : ""}node_modules/${dep}`;
    if (packages[nested] || packages[`node_modules/${dep}`]) continue;
    const platform = platformOf(dep);
    if (!platform) {
      console.error(
        `lock: ${dep} (optional for ${path || "the project"}) is missing and its name names no platform; install it on its platform and commit that lock`,
      );
      process.exitCode = 1;
      continue;
    }
    if (!/^\d+\.\d+\.\d+(-[\w.]+)?$/.test(range)) {
      console.error(`lock: ${dep}@${range} is missing and not an exact version; cannot record it without its registry`);
      process.exitCode = 1;
      continue;
    }
    packages[`node_modules/${dep}`] = {
      version: range,
      cpu: [platform.cpu],
      ...(platform.libc && { libc: [platform.libc] }),
      optional: true,
      os: [platform.os],
    };
    added.push(`${dep}@${range}`);
  }
}

if (added.length) {
  const [root, ...rest] = Object.entries(packages);
  lock.packages = Object.fromEntries([root, ...rest.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);
  writeFileSync(LOCK, `${JSON.stringify(lock, null, 2)}\n`);
  console.log(`lock: recorded ${added.join(", ")}`);
} else {
  console.log("lock: every optional platform package is recorded");
}
