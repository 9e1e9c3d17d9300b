// Choosing the fast paths and resolving options: the hand-written implementations by default, the
// library ones on request, a misspelt choice refused at start with the fix; undefined keeps a default.
import { test } from "node:test";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { fastPathChoice } from "../../lib/fast-paths.js";
import { ConfigError, loadConfig } from "../../lib/config.js";
import { withDefaults } from "../../lib/options.js";

test("the hand-written paths by default, the library ones when the environment names them", () => {
  assert.equal(fastPathChoice("redisClient", {}), "resp");
  assert.equal(fastPathChoice("pull", {}), "fast");
  assert.equal(fastPathChoice("redisClient", { STREAMSERVE_REDIS_CLIENT: "ioredis" }), "ioredis");
  assert.equal(fastPathChoice("pull", { STREAMSERVE_PULL: "library" }), "library");
});

test("a misspelt choice is a configuration error naming the variable, the flag and the choices", () => {
  assert.throws(
    () => loadConfig({}, { STREAMSERVE_PULL: "quick" }),
    (err: Error) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.message, 'STREAMSERVE_PULL (--pull) must be fast or library, got "quick"');
      return true;
    },
  );
  assert.throws(
    () => loadConfig({}, { STREAMSERVE_REDIS_CLIENT: "hiredis" }),
    /STREAMSERVE_REDIS_CLIENT \(--redis-client\) must be resp or ioredis, got "hiredis"/,
  );
});

test("withDefaults: a field given as undefined keeps its default; the defaults object is not changed", () => {
  const defaults = Object.freeze({ a: 1, b: "x", c: true });
  assert.deepEqual(withDefaults(defaults, { a: undefined, b: "y" }), { a: 1, b: "y", c: true });
  assert.deepEqual(withDefaults(defaults, undefined), { a: 1, b: "x", c: true });
  assert.deepEqual(defaults, { a: 1, b: "x", c: true });
});

test("the --pull and --redis-client flags set the same choice, refused the same way", () => {
  const root = fileURLToPath(new URL("../../", import.meta.url));
  const run = spawnSync(process.execPath, ["--import", "tsx", "cli/main.ts", "features", "--pull", "quick", "--namespace", "t_fast_paths"], {
    cwd: root,
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(run.status, 2, run.stderr);
  assert.match(run.stderr, /STREAMSERVE_PULL \(--pull\) must be fast or library, got "quick"/);
});

test("the store thread's modules do not load ioredis on the default path (its String subclass slows charCodeAt)", () => {
  const root = fileURLToPath(new URL("../../", import.meta.url));
  const script = `
    await import("./features/store-thread.ts");
    const { connectResp } = await import("./lib/resp-client.ts");
    connectResp("redis://127.0.0.1:1").close();
    const { createRequire } = await import("node:module");
    const cache = Object.keys(createRequire(import.meta.url).cache);
    console.log(cache.filter((k) => k.includes("/node_modules/ioredis/")).length);`;
  const run = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: root, encoding: "utf8", timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout.trim(), "0");
});
