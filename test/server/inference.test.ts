// The Open Inference Protocol as Triton/KServe clients use it: typed and raw tensors, datatypes,
// batches, requested outputs, versions, and the errors a malformed tensor gets.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { createServiceClient, Code, type Client } from "../../lib/grpc.js";
import { GRPCInferenceService } from "../../gen/inference/grpc_predict_v2_pb.js";
import { logisticModel, sigmoid } from "../fixtures/onnx-models.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [
  { name: "a", source: "user", type: "numeric", default: 0 },
  { name: "b", source: "user", type: "numeric", default: 0 },
];
const expected = (a: number, b: number) => sigmoid(a * 1 + b * -2 + 0.5);

function f32bytes(values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

describe("inference.GRPCInferenceService", () => {
  let rt: TestRuntime;
  let server: RunningServer;
  let client: Client<typeof GRPCInferenceService.method>;
  let v1: string;
  let v2: string;

  before(async () => {
    rt = testRuntime();
    const registry = await rt.registry();
    v1 = (await registry.publish({ name: "scorer", artifact: logisticModel([1, -2], 0.5), features: FEATURES, inputName: "features", outputName: "score" }))
      .version;
    v2 = (await registry.publish({ name: "scorer", artifact: logisticModel([0, 0], 0), features: FEATURES, inputName: "features", outputName: "score" }))
      .version;
    await registry.setAlias("scorer", "production", v1);
    server = await startServer(rt);
    client = createServiceClient(GRPCInferenceService, `127.0.0.1:${server.port}`);
    await waitFor(() => server.models.servedVersion("scorer") === v1, 15_000, "scorer loaded");
  });

  after(async () => {
    client?.close();
    await server?.stop();
    await rt?.cleanup();
  });

  it("reports liveness, readiness and metadata", async () => {
    assert.equal((await client.serverLive({})).live, true);
    assert.equal((await client.serverReady({})).ready, true);
    const meta = await client.serverMetadata({});
    assert.equal(meta.name, "streamserve");
    assert.match(meta.version, /^\d+\.\d+\.\d+/);
    const mm = await client.modelMetadata({ name: "scorer" });
    assert.deepEqual(mm.versions, [v1, v2]);
    assert.equal(mm.platform, "onnxruntime_onnx");
    assert.deepEqual(
      mm.inputs.map((i) => [i.name, i.datatype, i.shape]),
      [["features", "FP32", [-1n, 2n]]],
    );
    assert.deepEqual(
      mm.outputs.map((o) => [o.name, o.datatype]),
      [["score", "FP32"]],
    );
    assert.equal((await client.modelReady({ name: "scorer" })).ready, true);
    assert.equal((await client.modelReady({ name: "nope" })).ready, false);
  });

  it("infers a batch from typed FP32 contents with the production version", async () => {
    const res = await client.modelInfer({
      modelName: "scorer",
      id: "call-1",
      inputs: [{ name: "features", datatype: "FP32", shape: [3n, 2n], contents: { fp32Contents: [1, 0, 0, 1, 2, 2] } }],
    });
    assert.equal(res.id, "call-1");
    assert.equal(res.modelVersion, v1);
    const out = res.outputs[0]!;
    assert.equal(out.name, "score");
    assert.equal(out.datatype, "FP32");
    assert.deepEqual(out.shape, [3n, 1n]);
    const want = [expected(1, 0), expected(0, 1), expected(2, 2)];
    out.contents!.fp32Contents.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-6));
  });

  it("infers from raw_input_contents and answers in raw_output_contents", async () => {
    const rows = 64;
    const values = Array.from({ length: rows * 2 }, (_, i) => (i % 7) - 3);
    const res = await client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "FP32", shape: [BigInt(rows), 2n] }],
      rawInputContents: [f32bytes(values)],
    });
    assert.equal(res.rawOutputContents.length, 1);
    const raw = res.rawOutputContents[0]!;
    const scores = new Float32Array(new Uint8Array(raw).buffer);
    assert.equal(scores.length, rows);
    for (let r = 0; r < rows; r++) assert.ok(Math.abs(scores[r]! - expected(values[2 * r]!, values[2 * r + 1]!)) < 1e-6);
  });

  it("converts FP64, INT64 and BOOL inputs to the model's FP32", async () => {
    const fp64 = await client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "FP64", shape: [1n, 2n], contents: { fp64Contents: [1, 1] } }],
    });
    assert.ok(Math.abs(fp64.outputs[0]!.contents!.fp32Contents[0]! - expected(1, 1)) < 1e-6);
    const i64 = await client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "INT64", shape: [1n, 2n], contents: { int64Contents: [3n, 1n] } }],
    });
    assert.ok(Math.abs(i64.outputs[0]!.contents!.fp32Contents[0]! - expected(3, 1)) < 1e-6);
    const raw64 = new Uint8Array(BigInt64Array.from([2n, 0n]).buffer);
    const i64raw = await client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "INT64", shape: [1n, 2n] }],
      rawInputContents: [raw64],
    });
    assert.ok(Math.abs(new Float32Array(new Uint8Array(i64raw.rawOutputContents[0]!).buffer)[0]! - expected(2, 0)) < 1e-6);
    const bool = await client.modelInfer({
      modelName: "scorer",
      inputs: [{ name: "features", datatype: "BOOL", shape: [1n, 2n], contents: { boolContents: [true, false] } }],
    });
    assert.ok(Math.abs(bool.outputs[0]!.contents!.fp32Contents[0]! - expected(1, 0)) < 1e-6);
  });

  it("serves an explicit version and honours requested outputs", async () => {
    const res = await client.modelInfer({
      modelName: "scorer",
      modelVersion: v2,
      inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [5, 5] } }],
      outputs: [{ name: "score" }],
    });
    assert.equal(res.modelVersion, v2);
    assert.ok(Math.abs(res.outputs[0]!.contents!.fp32Contents[0]! - 0.5) < 1e-6);
    await expectError(
      client.modelInfer({
        modelName: "scorer",
        inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [1, 1] } }],
        outputs: [{ name: "nope" }],
      }),
      Code.INVALID_ARGUMENT,
      /^outputs\[0\]\.name/,
    );
  });

  it("names the field of a malformed tensor", async () => {
    const cases: [Parameters<typeof client.modelInfer>[0], number, RegExp][] = [
      [{ modelName: "", inputs: [] }, Code.INVALID_ARGUMENT, /^model_name/],
      [{ modelName: "ghost", inputs: [] }, Code.NOT_FOUND, /ghost/],
      [{ modelName: "scorer", modelVersion: "99", inputs: [] }, Code.NOT_FOUND, /99/],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [2n, 2n], contents: { fp32Contents: [1, 2, 3] } }] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.contents: has 3 FP32 values; shape \[2,2\] needs 4/,
      ],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [1n, 3n], contents: { fp32Contents: [1, 2, 3] } }] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.shape\[1\]: is 3; the model takes 2/,
      ],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [6n], contents: { fp32Contents: [1, 2, 3, 4, 5, 6] } }] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.shape: has 1 dimensions/,
      ],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP16", shape: [1n, 2n] }], rawInputContents: [new Uint8Array(4)] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.datatype/,
      ],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n] }], rawInputContents: [new Uint8Array(7)] },
        Code.INVALID_ARGUMENT,
        /^raw_input_contents for inputs\[0\]: has 7 bytes; .* needs 8/,
      ],
      [
        {
          modelName: "scorer",
          inputs: [{ name: "features", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [1, 2] } }],
          rawInputContents: [f32bytes([1, 2])],
        },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.contents: must be empty/,
      ],
      [
        { modelName: "scorer", inputs: [{ name: "x", datatype: "FP32", shape: [1n, 2n], contents: { fp32Contents: [1, 2] } }] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.name: model has no input "x"/,
      ],
      [{ modelName: "scorer", inputs: [] }, Code.INVALID_ARGUMENT, /^inputs: missing input "features"/],
      [
        { modelName: "scorer", inputs: [{ name: "features", datatype: "FP32", shape: [-1n, 2n] }], rawInputContents: [new Uint8Array(0)] },
        Code.INVALID_ARGUMENT,
        /^inputs\[0\]\.shape\[0\]/,
      ],
    ];
    for (const [req, code, message] of cases) await expectError(client.modelInfer(req), code, message);
  });

  it("answers INVALID_ARGUMENT, not INTERNAL, to bytes that are not a request", async () => {
    const raw = client.raw as unknown as { makeUnaryRequest: (...args: unknown[]) => void };
    const err = await new Promise<{ code: number; details: string }>((resolve) =>
      raw.makeUnaryRequest(
        "/inference.GRPCInferenceService/ModelInfer",
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        (e: { code: number; details: string }) => resolve(e),
      ),
    );
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(err.details, /not a valid inference\.ModelInferRequest/);
  });
});

async function expectError(p: Promise<unknown>, code: number, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: { code: number; details: string }) => {
    assert.equal(err.code, code, `${err.details}`);
    assert.match(err.details, message);
    return true;
  });
}
