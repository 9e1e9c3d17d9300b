// Requests built to cost the server: batches it will refuse, huge parameter maps, prototype keys
// as datatypes, unknown model names by the thousand, and explicit versions that would otherwise
// stay loaded for good. Each is refused or bounded cheaply, with the field named.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { createServiceClient, Code, type Client } from "../../lib/grpc.js";
import { GRPCInferenceService, ModelInferRequestSchema } from "../../gen/inference/grpc_predict_v2_pb.js";
import { precheckModelInfer } from "../../server/infer-precheck.js";
import { DEFAULT_LIMITS } from "../../server/limits.js";
import type { Registry } from "../../lib/registry.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;
let server: RunningServer;
let client: Client<typeof GRPCInferenceService.method>;
let registry: Registry;
const versions: string[] = [];
const FEATURES = [
  { name: "a", source: "user" as const, type: "numeric" as const, default: 0 },
  { name: "b", source: "user" as const, type: "numeric" as const, default: 0 },
];

before(async () => {
  rt = testRuntime();
  registry = await rt.registry();
  for (let i = 0; i < 4; i++)
    versions.push(
      (await registry.publish({ name: "scorer", artifact: logisticModel([i, 1], 0), features: FEATURES, inputName: "features", outputName: "score" })).version,
    );
  await registry.setAlias("scorer", "production", versions[0]!);
  // Budget: one on-demand version's artifact, so a second one pushes out the least recently used.
  server = await startServer(rt, { http: false, models: { onDemandBudgetBytes: logisticModel([0, 1], 0).byteLength + 1, onDemandIdleMs: 60_000 } });
  client = createServiceClient(GRPCInferenceService, `127.0.0.1:${server.port}`, undefined, { "grpc.max_send_message_length": 64 * 1024 * 1024 });
  await waitFor(() => server.models.servedVersion("scorer") === versions[0], 15_000, "scorer loaded");
});
after(async () => {
  client?.close();
  await server?.stop();
  await rt?.cleanup();
});

const rejects = (p: Promise<unknown>, code: number, pattern: RegExp) =>
  assert.rejects(p, (e: { code: number; details: string }) => {
    assert.equal(e.code, code, e.details);
    assert.match(e.details, pattern);
    return true;
  });

it("refuses a batch over the limit by its declared shape, whatever its contents", async () => {
  // No contents at all: before, the contents check ran first ("has 0 FP32 values; shape needs 4000000"),
  // after decoding everything; the batch is now refused from the wire bytes.
  await rejects(
    client.modelInfer({ modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [1_000_000n, 2n] }] }),
    Code.INVALID_ARGUMENT,
    /inputs\[0\]\.shape\[0\]: batch of 1000000 exceeds 65536/,
  );
  // The scan itself refuses 16 MB of typed contents without decoding them.
  const bytes = toBinary(
    ModelInferRequestSchema,
    create(ModelInferRequestSchema, {
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "FP32", shape: [1_000_000n, 4n], contents: { fp32Contents: new Array(4_000_000).fill(1) } }],
    }),
  );
  assert.throws(() => precheckModelInfer(bytes, DEFAULT_LIMITS), /batch of 1000000 exceeds 65536/);
  assert.doesNotThrow(() =>
    precheckModelInfer(
      toBinary(
        ModelInferRequestSchema,
        create(ModelInferRequestSchema, { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [3n, 2n] }] }),
      ),
      DEFAULT_LIMITS,
    ),
  );
});

it("refuses a 50k-entry parameters map", async () => {
  const parameters = Object.fromEntries(
    Array.from({ length: 50_000 }, (_, i) => [`p${i}`, { parameterChoice: { case: "int64Param" as const, value: BigInt(i) } }]),
  );
  await rejects(
    client.modelInfer({
      modelName: "scorer",
      parameters,
      inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [1, 2] } }],
    }),
    Code.INVALID_ARGUMENT,
    /^parameters: has more than 64 entries/,
  );
  await rejects(
    client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], parameters, contents: { fp32Contents: [1, 2] } }],
    }),
    Code.INVALID_ARGUMENT,
    /^inputs\[0\]\.parameters: has more than 64 entries/,
  );
});

it("refuses prototype keys as datatypes, naming the datatype field", async () => {
  for (const datatype of ["__proto__", "constructor", "toString", "hasOwnProperty"]) {
    await rejects(
      client.modelInfer({ modelName: "scorer", inputs: [{ name: "features", datatype, shape: [1n, 2n], contents: { fp32Contents: [1, 2] } }] }),
      Code.INVALID_ARGUMENT,
      new RegExp(`^inputs\\[0\\]\\.datatype: "${datatype}" is not supported`),
    );
  }
});

it("answers unknown model names from the watched registry state, without a registry lookup each", async () => {
  const reg = server.models.registryClient!;
  let lookups = 0;
  const counting = <T extends (...a: never[]) => unknown>(fn: T) => ((...a: Parameters<T>) => (lookups++, fn.apply(reg, a))) as T;
  const original = { resolve: reg.resolve, listModels: reg.listModels, listVersions: reg.listVersions, getVersion: reg.getVersion };
  Object.assign(reg, {
    resolve: counting(reg.resolve),
    listModels: counting(reg.listModels),
    listVersions: counting(reg.listVersions),
    getVersion: counting(reg.getVersion),
  });
  try {
    const calls = Array.from({ length: 300 }, (_, i) => client.modelInfer({ modelName: `nope-${i % 30}`, inputs: [] }));
    const results = await Promise.allSettled(calls);
    for (const r of results) assert.equal(r.status === "rejected" && (r.reason as { code: number }).code, Code.NOT_FOUND);
    assert.match((results[0] as PromiseRejectedResult).reason.details, /model "nope-0" is not in the registry/);
    // Unknown versions of a known model: at most one lookup per name and version a second.
    const v = await Promise.allSettled(
      Array.from({ length: 100 }, () => client.modelInfer({ modelName: "scorer", modelVersion: "no-such-alias", inputs: [] })),
    );
    for (const r of v) assert.match((r as PromiseRejectedResult).reason.details, /has no version or alias "no-such-alias"/);
    assert.ok(lookups <= 10, `${lookups} registry lookups for 400 calls (state known: ${server.models.mayHaveModel("nope-0")})`);
  } finally {
    Object.assign(reg, original);
  }
  // A model published now is found as soon as the watch reports it.
  await registry.publish({ name: "fresh", artifact: logisticModel([1, 1], 0), features: FEATURES, inputName: "features", outputName: "score" });
  await waitFor(
    async () =>
      (
        await client
          .modelInfer({
            modelName: "fresh",
            modelVersion: "1",
            inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [0, 0] } }],
          })
          .catch(() => undefined)
      )?.outputs.length,
    10_000,
    "fresh model served",
  );
});

it("unloads on-demand versions over the budget or idle, never the served one, and shows what is loaded", async () => {
  const infer = (modelVersion: string) =>
    client.modelInfer({
      modelName: "scorer",
      modelVersion,
      inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [1, 1] } }],
    });
  const loaded = () =>
    [...server.models.states("scorer")]
      .filter(([, s]) => s.state === "ready")
      .map(([v]) => v)
      .sort();
  await infer(versions[1]!);
  assert.deepEqual(loaded(), [versions[0], versions[1]].sort());
  await infer(versions[2]!);
  assert.deepEqual(loaded(), [versions[0], versions[2]].sort(), "the least recently used on-demand version went over budget");
  const rendered = await rt.metrics.render();
  const series = (version: string, kind: string) => `streamserve_model_version_loaded{model="scorer",version="${version}",kind="${kind}"}`;
  assert.ok(rendered.includes(`${series(versions[0]!, "served")} 1`), rendered);
  assert.ok(rendered.includes(`${series(versions[2]!, "on_demand")} 1`), rendered);
  assert.ok(!rendered.includes(`${series(versions[1]!, "on_demand")} 1`), rendered);
  server.models.unloadIdle(Date.now() + 3_600_000);
  assert.deepEqual(loaded(), [versions[0]], "idle on-demand versions are unloaded; the production version stays");
  // Asked again, an unloaded version loads again.
  assert.equal((await infer(versions[1]!)).modelVersion, versions[1]);
});
