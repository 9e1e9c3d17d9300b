// `streamserve train --once --data FILE`: the bootstrap path through the real command, with the
// embedded ClickHouse reading the file and (when publishing) the registry on NATS.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { main } from "../../cli/main.js";
import { createRandom } from "../../trainer/gbdt.js";
import { uniqueNamespace } from "../helpers.js";
import { createRuntime } from "../../lib/runtime.js";
import { createLogger } from "../../lib/logger.js";
import { deleteNamespace } from "../../lib/nats.js";
import { lockBucket } from "../../trainer/cycle-lock.js";

let dir: string;
let csv: string;
const namespace = uniqueNamespace("train");

before(() => {
  dir = mkdtempSync(join(tmpdir(), "streamserve-train-"));
  csv = join(dir, "history.csv");
  const rand = createRandom(3);
  const lines = ["clicks_last_5min,item_ctr_5min,device_type,tiny,clicked"];
  for (let i = 0; i < 3000; i++) {
    const clicks = Math.floor(rand() * 10);
    const ctr = rand() < 0.1 ? "" : (rand() * 0.5).toFixed(3); // empty cell = missing
    const device = ["desktop", "mobile", "tablet", "fridge"][Math.floor(rand() * 4)]!;
    const tiny = (rand() * 1e-4).toExponential(); // "4.8e-05": a number, not text
    const z = -2 + 0.3 * clicks + (ctr === "" ? 1 : 4 * Number(ctr)) + (device === "mobile" ? 0.7 : 0);
    lines.push(`${clicks},${ctr},${device},${tiny},${rand() < 1 / (1 + Math.exp(-z)) ? 1 : 0}`);
  }
  writeFileSync(csv, lines.join("\n") + "\n");
});

after(async () => {
  const rt = createRuntime({ namespace, dataDir: join(dir, "cleanup") }, createLogger("silent"));
  const nc = await rt.nats().catch(() => undefined);
  if (nc) await deleteNamespace(nc, rt.names).catch(() => undefined);
  await (await nc?.jetstreamManager())?.streams.delete(`KV_${lockBucket(rt.names)}`).catch(() => undefined);
  await rt.close();
  rmSync(dir, { recursive: true, force: true });
});

const run = (...args: string[]) => main(["train", ...args, "--namespace", namespace, "--data-dir", join(dir, "data"), "--log-level", "silent"]);

it("trains from a CSV, writes an ONNX model that onnxruntime runs, without touching the registry", async () => {
  const output = join(dir, "model.onnx");
  assert.equal(await run("--once", "--data", csv, "--label", "clicked", "--output", output, "--no-publish", "--trees", "30", "--json"), 0);
  assert.ok(existsSync(output));
  const session = await ort.InferenceSession.create(readFileSync(output));
  const x = new ort.Tensor("float32", Float32Array.of(9, 0.4, 1, 0, 0, 0, 0, 0), [2, 4]);
  const p = (await session.run({ features: x })).probabilities!.data as Float32Array;
  assert.ok(p[1]! > p[3]!, `a busy mobile user on a high-CTR item (${p[1]}) beats an idle desktop one (${p[3]})`);
  await session.release();
});

it("publishes to the registry and promotes the first version", async () => {
  assert.equal(await run("--once", "--data", csv, "--label", "clicked", "--trees", "30", "--min-rows", "100", "--json"), 0);
  const rt = createRuntime({ namespace, dataDir: join(dir, "check") }, createLogger("silent"));
  try {
    const registry = await rt.registry();
    const alias = await registry.getAlias("recommender", "production");
    assert.equal(alias?.version, "1");
    const mv = (await registry.getVersion("recommender", "1"))!;
    // Pipeline features keep their serving spec; device_type keeps the pipeline's vocabulary.
    assert.deepEqual(
      mv.features.map((f) => [f.name, f.source, f.type]),
      [
        ["clicks_last_5min", "user", "numeric"],
        ["item_ctr_5min", "item", "numeric"],
        ["device_type", "request", "categorical"],
        ["tiny", "user", "numeric"],
      ],
    );
    assert.equal(mv.data?.kind, "file");
    assert.ok(mv.metrics.auc! > 0.6, `AUC ${mv.metrics.auc}`);
  } finally {
    await rt.close();
  }
});

it("fails with a message that says the fix", async () => {
  const errors: string[] = [];
  const original = console.error;
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    assert.equal(await run("--once", "--data", csv, "--label", "nope", "--no-publish"), 1);
    assert.match(errors.at(-1)!, /has no column "nope" for the label; its columns are clicks_last_5min, item_ctr_5min, device_type, tiny, clicked/);
    assert.equal(await run("--once", "--data", csv), 2);
    assert.match(errors.at(-1)!, /--data needs --label COLUMN/);
    assert.equal(await run("--data", csv, "--label", "clicked"), 2);
    assert.match(errors.at(-1)!, /add --once/);
    assert.equal(await run("--once", "--label", "bought"), 2);
    assert.match(errors.at(-1)!, /clicked or converted/);
  } finally {
    console.error = original;
  }
});
