// `streamserve train --once --data FILE --output FILE`: the model is written to the file and the
// registry is left alone; --publish publishes it too.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { main } from "../../cli/main.js";
import { createRandom } from "../../trainer/gbdt.js";
import { testRuntime, type TestRuntime } from "../helpers.js";

let rt: TestRuntime;
let csv: string;

before(() => {
  rt = testRuntime();
  csv = join(rt.config.dataDir, "history.csv");
  const rand = createRandom(5);
  const lines = ["clicks_last_5min,engagement_score,clicked"];
  for (let i = 0; i < 1500; i++) {
    const clicks = Math.floor(rand() * 10);
    const engagement = rand() * 40;
    lines.push(`${clicks},${engagement.toFixed(2)},${rand() < 1 / (1 + Math.exp(-(-2 + 0.3 * clicks + 0.03 * engagement))) ? 1 : 0}`);
  }
  writeFileSync(csv, `${lines.join("\n")}\n`);
});
after(async () => {
  await rt?.cleanup();
});

/** Runs the command as `streamserve train ...` would, its report kept from the test output. */
async function train(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const [log, error, write] = [console.log, console.error, process.stderr.write];
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  process.stderr.write = (() => true) as typeof process.stderr.write; // the progress line
  try {
    const code = await main(["train", ...args, "--namespace", rt.config.namespace, "--data-dir", join(rt.config.dataDir, "cli"), "--log-level", "silent"]);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    [console.log, console.error, process.stderr.write] = [log, error, write];
  }
}

const versions = async () => (await rt.registry()).listVersions("recommender");

it("--output writes the model and publishes nothing", async () => {
  const output = join(rt.config.dataDir, "model.onnx");
  const r = await train("--once", "--data", csv, "--label", "clicked", "--output", output, "--trees", "10", "--min-rows", "100");
  assert.equal(r.code, 0, r.err);
  assert.ok(existsSync(output) && statSync(output).size > 1000);
  assert.match(r.out, /ONNX written to .*model\.onnx/);
  assert.doesNotMatch(r.out, /Published:/);
  assert.deepEqual(await versions(), []);
});

it("--output --publish writes the file and publishes a version", async () => {
  const output = join(rt.config.dataDir, "published.onnx");
  const r = await train("--once", "--data", csv, "--label", "clicked", "--output", output, "--publish", "--trees", "10", "--min-rows", "100");
  assert.equal(r.code, 0, r.err);
  assert.ok(existsSync(output));
  assert.match(r.out, /Published: recommender version 1/);
  assert.deepEqual(
    (await versions()).map((v) => v.version),
    ["1"],
  );
});

it("says how to publish when --no-promote comes with --output alone", async () => {
  const r = await train("--once", "--data", csv, "--label", "clicked", "--output", join(rt.config.dataDir, "x.onnx"), "--no-promote");
  assert.equal(r.code, 2);
  assert.match(r.err, /add --publish to publish the version as candidate/);
  const both = await train("--once", "--data", csv, "--label", "clicked", "--publish", "--no-publish");
  assert.equal(both.code, 2);
  assert.match(both.err, /--publish and --no-publish contradict each other/);
});
