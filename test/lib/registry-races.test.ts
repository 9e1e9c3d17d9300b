// The registry under concurrent writers: two publishers racing for the same version number each
// keep their own artifact, and concurrent alias moves all land, each recording what it replaced.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { connectNats } from "../../lib/nats.js";
import { Registry } from "../../lib/registry.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;
before(() => {
  rt = testRuntime();
});
after(async () => {
  await rt?.cleanup();
});

const features = [{ name: "clicks_last_5min", source: "user" as const, type: "numeric" as const, default: 0 }];

it("publishers racing for a version number never overwrite each other's artifact", async () => {
  const a = await rt.registry();
  // A second publisher on its own connection, as a second `models push` or trainer would be.
  const nc = await connectNats(rt.config.natsUrl, rt.log);
  try {
    const b = await Registry.open(nc, rt.names);
    const pushes = Array.from({ length: 12 }, (_, i) =>
      (i % 2 ? a : b).publish({ name: "raced", artifact: logisticModel([i + 1], i), features, inputName: "features", outputName: "score" }),
    );
    const published = await Promise.all(pushes);
    assert.equal(new Set(published.map((v) => v.version)).size, 12, "every publish got its own version");
    for (const [i, mv] of published.entries()) {
      const bytes = await a.fetchArtifact(mv); // verifies the sha256 recorded at publication
      assert.deepEqual(new Uint8Array(bytes), logisticModel([i + 1], i), `version ${mv.version} serves the bytes its publisher pushed`);
    }
  } finally {
    await nc.close();
  }
});

it("concurrent alias moves all land, each recording the version it replaced", async () => {
  const registry = await rt.registry();
  const versions: string[] = [];
  for (let i = 0; i < 8; i++)
    versions.push(
      (await registry.publish({ name: "promoted", artifact: logisticModel([i], 0), features, inputName: "features", outputName: "score" })).version,
    );
  await registry.setAlias("promoted", "production", versions[0]!);
  await Promise.all(versions.slice(1).map((v) => registry.setAlias("promoted", "production", v)));
  const history = await registry.aliasHistory("promoted", "production");
  assert.equal(history.length, versions.length, "no promotion was lost");
  for (let i = 1; i < history.length; i++) {
    assert.equal(history[i]!.previous, history[i - 1]!.version, `move ${i} records the version it replaced`);
  }
});
