// The guarded rollout and shadow commands as an operator types them, each in a process of its own:
// start a rollout, look at it, list it, and the errors that say what to fix.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const features = [{ name: "item_ctr_5min", source: "item" as const, type: "numeric" as const, default: 0 }];
  for (const w of [0, 1])
    await registry.publish({ name: "ranker", artifact: logisticModel([w], 0), features, inputName: "features", outputName: "score", actor: "test" });
  await registry.setAlias("ranker", "production", "1", { actor: "test" });
});
after(async () => {
  await rt?.cleanup();
});

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "cli/main.ts", ...args, "--model", "ranker", "--namespace", rt.config.namespace, "--data-dir", rt.config.dataDir],
    {
      encoding: "utf8",
      env: { ...process.env, LOG_LEVEL: "silent", STREAMSERVE_ACTOR: "ci-test" },
      timeout: 60_000,
    },
  );
  return { code: r.status, out: r.stdout, err: r.stderr };
}

it("experiments rollout, rollout-check, list; --shadow; and their errors", () => {
  let r = cli("experiments", "rollout", "2", "--stages", "20,60", "--min-users", "5", "--min-stage", "1h");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /guarded rollout rollout-ranker-v2: v2 to 20 % → 60 % → 100 % of users against production v1; now at 20 %/);

  r = cli("experiments", "rollout-check", "--json");
  assert.equal(r.code, 0, r.err);
  const [step] = JSON.parse(r.out) as { action: string; reason: string; percent: number }[];
  assert.equal(step!.action, "hold");
  assert.equal(step!.percent, 20);
  assert.match(step!.reason, /holding: \d+ s of 3600 s, users 0 rollout \/ 0 baseline of 5 each/);

  r = cli("experiments", "list", "--json");
  const [listed] = JSON.parse(r.out) as { name: string; rollout: string; variants: string }[];
  assert.equal(listed!.rollout, "v2 vs v1, stage 20 % of 20/60/100");
  assert.equal(listed!.variants, "rollout:20:2 control:80:1");

  // One experiment per model: a second rollout or experiment waits for this one.
  r = cli("experiments", "rollout", "2");
  assert.notEqual(r.code, 0);
  assert.match(r.err, /already running on ranker; stop it first/);
  r = cli("experiments", "stop", "rollout-ranker-v2");
  assert.equal(r.code, 0, r.err);

  r = cli("experiments", "create", "--name", "shadow2", "--shadow", "2:25");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /experiment shadow2 running on ranker: control 100% → production; shadow 2 scores 25% of requests/);
  r = cli("experiments", "stop", "shadow2");
  assert.equal(r.code, 0, r.err);

  const errors: [string[], RegExp][] = [
    [["experiments", "rollout"], /rollout needs the VERSION/],
    [["experiments", "rollout", "1"], /version 1 of ranker is already production/],
    [["experiments", "rollout", "9"], /model ranker has no version 9/],
    [["experiments", "rollout", "2", "--stages", "50,10"], /rollout stages must increase/],
    [["experiments", "create", "--name", "s", "--shadow", "2"], /must look like VERSION:PERCENT/],
    [["experiments", "create", "--name", "s", "--shadow", "2:150"], /percent must be a number in \(0, 100\]/],
    [["experiments", "create", "--name", "s", "--shadow", "7:10"], /shadow: model ranker has no alias or version "7"/],
    [["train", "--once", "--rollout", "fast"], /--rollout must be immediate or guarded/],
  ];
  for (const [args, message] of errors) {
    r = cli(...args);
    assert.notEqual(r.code, 0, args.join(" "));
    assert.match(r.err + r.out, message, args.join(" "));
  }
});
