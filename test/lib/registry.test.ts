// The registry as the server, the trainer and the CLI use it: versions numbered in order,
// aliases with history and rollback, experiments, the current state as one snapshot.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { RegistryError } from "../../lib/registry.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;
before(() => {
  rt = testRuntime();
});
after(async () => {
  await rt?.cleanup();
});

const features = [{ name: "clicks_last_5min", source: "user" as const, type: "numeric" as const, default: 0 }];

it("numbers versions, keeps every alias and experiment, rolls back, snapshots", async () => {
  const registry = await rt.registry();
  const published = [];
  for (let i = 0; i < 3; i++)
    published.push(await registry.publish({ name: "m", artifact: logisticModel([i], 0), features, inputName: "features", outputName: "score" }));
  assert.deepEqual(
    published.map((v) => v.version),
    ["1", "2", "3"],
  );
  await registry.publish({ name: "other", artifact: logisticModel([1], 0), features, inputName: "features", outputName: "score" });
  assert.deepEqual(await registry.listModels(), ["m", "other"]);

  await registry.setAlias("m", "production", "1");
  await registry.setAlias("m", "candidate", "2");
  await registry.setAlias("m", "shadow", "3");
  await registry.setAlias("m", "production", "3");
  assert.deepEqual(Object.fromEntries(Object.entries(await registry.aliases("m")).map(([a, r]) => [a, r.version])), {
    candidate: "2",
    production: "3",
    shadow: "3",
  });
  const back = await registry.rollback("m");
  assert.equal(back.version, "1");
  assert.deepEqual(
    (await registry.aliasHistory("m", "production")).map((r) => r.version),
    ["1", "3", "1"],
  );

  await registry.createExperiment({
    name: "e1",
    model: "m",
    variants: [
      { name: "a", traffic: 50, target: "production" },
      { name: "b", traffic: 50, target: "candidate" },
    ],
  });
  await registry.createExperiment({
    name: "e2",
    model: "other",
    variants: [
      { name: "a", traffic: 50, target: "1" },
      { name: "b", traffic: 50, target: "1" },
    ],
  });
  assert.deepEqual(
    (await registry.listExperiments()).map((e) => e.name),
    ["e1", "e2"],
  );
  await assert.rejects(
    registry.createExperiment({
      name: "e3",
      model: "m",
      variants: [
        { name: "a", traffic: 50, target: "production" },
        { name: "b", traffic: 50, target: "candidate" },
      ],
    }),
    (e: RegistryError) => e.code === "conflict" && /e1 is already running/.test(e.message),
  );

  const snapshot = await registry.snapshot();
  assert.equal(snapshot.filter((c) => c.kind === "alias").length, 3);
  assert.equal(snapshot.filter((c) => c.kind === "experiment").length, 2);

  const bytes = await registry.fetchArtifact(published[1]!);
  assert.deepEqual(new Uint8Array(bytes), logisticModel([1], 0));
  await assert.rejects(
    registry.fetchArtifact({ ...published[1]!, artifact: { ...published[1]!.artifact, sha256: "0".repeat(64) } }),
    (e: RegistryError) => e.code === "corrupt",
  );
});
