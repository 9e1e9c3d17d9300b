// The registry commands as an operator types them: push a model of their own, list, promote,
// roll back, and run an experiment; and the errors that tell them what to fix.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { garbageModel, logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;

before(() => {
  rt = testRuntime();
});
after(async () => {
  await rt?.cleanup();
});

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", "cli/main.ts", ...args, "--namespace", rt.config.namespace, "--data-dir", rt.config.dataDir], {
    encoding: "utf8",
    env: { ...process.env, LOG_LEVEL: "silent", STREAMSERVE_ACTOR: "ci-test" },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

it("pushes, lists, promotes and rolls back models; runs experiments", () => {
  const good = join(rt.config.dataDir, "good.onnx");
  const broken = join(rt.config.dataDir, "broken.onnx");
  writeFileSync(good, logisticModel([1, 2, 3], 0));
  writeFileSync(broken, garbageModel());

  const features = "clicks_last_5min,item:my_item_score,device_type";
  let r = cli("models", "push", "--name", "ranker", "--file", good, "--features", features, "--alias", "production");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /pushed ranker version 1 .*3 features/);
  assert.match(r.out, /ranker@production → 1/);
  r = cli("models", "push", "--name", "ranker", "--file", good, "--features", features);
  assert.match(r.out, /pushed ranker version 2/);

  r = cli("models", "list", "ranker", "--json");
  assert.equal(r.code, 0, r.err);
  const rows = JSON.parse(r.out) as { version: string; aliases: string; by: string }[];
  assert.deepEqual(
    rows.map((x) => [x.version, x.aliases, x.by]),
    [
      ["1", "production", "ci-test"],
      ["2", "", "ci-test"],
    ],
  );

  r = cli("models", "promote", "ranker", "2");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /ranker@production: 1 → 2/);
  r = cli("models", "rollback", "ranker");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /ranker@production: 2 → 1 \(rolled back\)/);
  r = cli("models", "history", "ranker", "--json");
  assert.deepEqual(
    (JSON.parse(r.out) as { version: string }[]).map((x) => x.version),
    ["1", "2", "1"],
  );

  r = cli("models", "promote", "ranker", "1", "--alias", "candidate");
  assert.equal(r.code, 0, r.err);
  r = cli("experiments", "create", "--name", "ab1", "--model", "ranker", "--variant", "control:50:production", "--variant", "treatment:50:candidate");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /experiment ab1 running on ranker: control 50% → production, treatment 50% → candidate/);
  r = cli("experiments", "list", "--json");
  assert.equal((JSON.parse(r.out) as { name: string; status: string }[])[0]!.status, "running");
  r = cli("experiments", "stop", "ab1");
  assert.equal(r.code, 0, r.err);
});

it("says what to fix when the input is wrong", () => {
  const good = join(rt.config.dataDir, "good.onnx");
  const broken = join(rt.config.dataDir, "broken.onnx");
  const cases: [string[], RegExp][] = [
    [["models", "push", "--name", "x", "--file", "/nope.onnx", "--features", "clicks_last_5min"], /--file \/nope\.onnx: no such file/],
    [["models", "push", "--name", "x", "--file", broken, "--features", "user:b"], /onnxruntime cannot load the model/],
    [["models", "push", "--name", "x", "--file", broken, "--features", "a:b"], /feature "a:b": source must be user, item or request/],
    [["models", "push", "--name", "x", "--file", broken, "--features", "mystery"], /unknown feature "mystery".*user:mystery/],
    [["models", "push", "--name", "x", "--file", good, "--features", "clicks_last_5min,engagement_score"], /takes 3 features but 2 were declared/],
    [["models", "promote", "ranker", "42"], /model ranker has no version 42/],
    [["experiments", "create", "--name", "bad", "--model", "ranker", "--variant", "a:60:production", "--variant", "b:60:production"], /adds up to 120%/],
    [["experiments", "create", "--name", "bad", "--variant", "a-50-production"], /must look like name:traffic:target/],
    [["nonsense"], /unknown command "nonsense"/],
  ];
  for (const [args, message] of cases) {
    const r = cli(...args);
    assert.notEqual(r.code, 0, `${args.join(" ")} should fail`);
    assert.match(r.err, message, `${args.join(" ")}: ${r.err}`);
  }
});
