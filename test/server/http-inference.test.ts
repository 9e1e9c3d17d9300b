// The Open Inference Protocol over HTTP as curl and the KServe/Triton HTTP clients speak it, checked
// against the published protocol's own examples: the KServe v2 REST inference request (input0
// UINT32 [2,2] = [1,2,3,4], input1 BOOL [3], output0 asked for) and Triton's binary tensor data
// example (input0's 16 bytes after the JSON, output0 asked for as binary). streamserve serves
// models with one float32 [batch, features] input, so "mymodel" here takes input0 [N,2] and
// returns output0 = 2 · input0 + 1 [N,2]; the examples' input1 gets the error a model without it gives.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { GraphProtoSchema, NodeProtoSchema, TensorProtoSchema, TensorProto_DataType } from "../../gen/onnx/onnx_pb.js";
import { modelBytes, valueInfo } from "../fixtures/onnx-models.js";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer, type ServerOptions } from "../../server/server.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [
  { name: "a", source: "user", type: "numeric", default: 0 },
  { name: "b", source: "user", type: "numeric", default: 0 },
];

/** float32 input0 [N,2] → float32 output0 [N,2] = 2 · input0 + 1. */
function exampleModel(): Uint8Array {
  const graph = create(GraphProtoSchema, {
    name: "mymodel",
    node: [
      create(NodeProtoSchema, { opType: "Mul", input: ["input0", "two"], output: ["doubled"] }),
      create(NodeProtoSchema, { opType: "Add", input: ["doubled", "one"], output: ["output0"] }),
    ],
    initializer: [
      create(TensorProtoSchema, { name: "two", dims: [1n], dataType: TensorProto_DataType.FLOAT, floatData: [2] }),
      create(TensorProtoSchema, { name: "one", dims: [1n], dataType: TensorProto_DataType.FLOAT, floatData: [1] }),
    ],
    input: [valueInfo("input0", TensorProto_DataType.FLOAT, ["N", 2])],
    output: [valueInfo("output0", TensorProto_DataType.FLOAT, ["N", 2])],
  });
  return modelBytes(graph);
}

/** The KServe v2 REST spec's inference request example, as printed (its BOOL input gives 1 value for shape [3]). */
const SPEC_EXAMPLE = {
  id: "42",
  inputs: [
    { name: "input0", shape: [2, 2], datatype: "UINT32", data: [1, 2, 3, 4] },
    { name: "input1", shape: [3], datatype: "BOOL", data: [true] },
  ],
  outputs: [{ name: "output0" }],
};
/** The example with the input this model has. */
const ONE_INPUT = { ...SPEC_EXAMPLE, inputs: [SPEC_EXAMPLE.inputs[0]] };

interface Served {
  rt: TestRuntime;
  server: RunningServer;
  base: string;
  stop(): Promise<void>;
}

async function serve(options?: ServerOptions): Promise<Served> {
  const rt = testRuntime();
  const registry = await rt.registry();
  const v = (await registry.publish({ name: "mymodel", artifact: exampleModel(), features: FEATURES, inputName: "input0", outputName: "output0" })).version;
  await registry.setAlias("mymodel", "production", v);
  const server = await startServer(rt, options);
  const base = `http://127.0.0.1:${await rt.listenHttp()}`;
  try {
    await waitFor(() => server.models.servedVersion("mymodel") === v, 30_000, "mymodel loaded");
  } catch (err) {
    await server.stop();
    await rt.cleanup();
    throw err;
  }
  return {
    rt,
    server,
    base,
    async stop() {
      await server.stop();
      await rt.cleanup();
    },
  };
}

const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body),
  });

describe("Open Inference Protocol over HTTP", () => {
  let s: Served;

  before(async () => {
    s = await serve({ limits: { maxMessageBytes: 64 * 1024 } });
  });
  after(async () => {
    await s?.stop();
  });

  it("answers health, server and model metadata", async () => {
    for (const path of ["/v2/health/live", "/v2/health/ready", "/v2/models/mymodel/ready", "/v2/models/mymodel/versions/1/ready"]) {
      const r = await fetch(`${s.base}${path}`);
      assert.equal(r.status, 200, path);
      assert.equal(await r.text(), "", `${path}: the body is empty`);
    }
    assert.equal((await fetch(`${s.base}/v2/models/nope/ready`)).status, 400);
    assert.equal((await fetch(`${s.base}/v2/models/mymodel/versions/9/ready`)).status, 400);

    const server = (await (await fetch(`${s.base}/v2`)).json()) as { name: string; version: string; extensions: string[] };
    assert.equal(server.name, "streamserve");
    assert.match(server.version, /^\d+\.\d+\.\d+/);
    assert.deepEqual(server.extensions, ["binary_tensor_data"]);

    for (const path of ["/v2/models/mymodel", "/v2/models/mymodel/versions/1"]) {
      const r = await fetch(`${s.base}${path}`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), {
        name: "mymodel",
        versions: ["1"],
        platform: "onnxruntime_onnx",
        inputs: [{ name: "input0", datatype: "FP32", shape: [-1, 2] }],
        outputs: [{ name: "output0", datatype: "FP32", shape: [-1, 2] }],
      });
    }
    const missing = await fetch(`${s.base}/v2/models/nope`);
    assert.equal(missing.status, 404);
    assert.deepEqual(await missing.json(), { error: 'model "nope" is not in the registry' });
  });

  it("refuses the spec's example as printed, naming the input whose data does not fill its shape", async () => {
    const r = await post(`${s.base}/v2/models/mymodel/infer`, SPEC_EXAMPLE);
    assert.equal(r.status, 400);
    assert.equal(r.headers.get("content-type"), "application/json");
    assert.deepEqual(await r.json(), { error: "inputs[1].data: has 1 values; shape [3] needs 3" });
  });

  it("answers the spec's example in the spec's response format", async () => {
    const three = { ...SPEC_EXAMPLE, inputs: [SPEC_EXAMPLE.inputs[0], { ...SPEC_EXAMPLE.inputs[1], data: [true, false, true] }] };
    const refused = await post(`${s.base}/v2/models/mymodel/infer`, three);
    assert.equal(refused.status, 400);
    assert.deepEqual(await refused.json(), { error: 'inputs[1].name: model has no input "input1" (inputs: input0)' });

    const r = await post(`${s.base}/v2/models/mymodel/infer`, ONE_INPUT);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), "application/json");
    assert.deepEqual(await r.json(), {
      model_name: "mymodel",
      model_version: "1",
      id: "42",
      outputs: [{ name: "output0", shape: [2, 2], datatype: "FP32", data: [3, 5, 7, 9] }],
    });
    // Tensor data in its natural multi-dimensional form, a version in the path, no outputs listed.
    const nested = await post(`${s.base}/v2/models/mymodel/versions/1/infer`, {
      inputs: [
        {
          name: "input0",
          shape: [3, 2],
          datatype: "FP64",
          data: [
            [0.5, 1],
            [2, 3],
            [-1, 0],
          ],
        },
      ],
    });
    assert.equal(nested.status, 200);
    const body = (await nested.json()) as { id: string; outputs: { shape: number[]; data: number[] }[] };
    assert.equal(body.id, "");
    assert.deepEqual(
      body.outputs.map((o) => [o.shape, o.data]),
      [
        [
          [3, 2],
          [2, 3, 5, 7, -1, 1],
        ],
      ],
    );
  });

  it("reads and writes binary tensor data as in Triton's example", async () => {
    const header = Buffer.from(
      JSON.stringify({
        model_name: "mymodel",
        inputs: [{ name: "input0", shape: [2, 2], datatype: "UINT32", parameters: { binary_data_size: 16 } }],
        outputs: [{ name: "output0", parameters: { binary_data: true } }],
      }),
    );
    const data = Buffer.from(new Uint32Array([1, 2, 3, 4]).buffer);
    const r = await post(`${s.base}/v2/models/mymodel/infer`, Buffer.concat([header, data]), {
      "content-type": "application/octet-stream",
      "inference-header-content-length": String(header.length),
    });
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(r.headers.get("content-type"), "application/octet-stream");
    const body = Buffer.from(await r.arrayBuffer());
    const jsonLength = Number(r.headers.get("inference-header-content-length"));
    assert.equal(body.length, jsonLength + 16, "Content-Length is the JSON plus 16 bytes of FP32 [2,2]");
    const json = JSON.parse(body.subarray(0, jsonLength).toString()) as { model_name: string; outputs: unknown[] };
    assert.equal(json.model_name, "mymodel");
    assert.deepEqual(json.outputs, [{ name: "output0", datatype: "FP32", shape: [2, 2], parameters: { binary_data_size: 16 } }]);
    const floats = new Float32Array(new Uint8Array(body.subarray(jsonLength)).buffer);
    assert.deepEqual(Array.from(floats), [3, 5, 7, 9]);

    // Binary input, JSON output.
    const plain = Buffer.from(JSON.stringify({ inputs: [{ name: "input0", shape: [1, 2], datatype: "INT64", parameters: { binary_data_size: 16 } }] }));
    const m = await post(`${s.base}/v2/models/mymodel/infer`, Buffer.concat([plain, Buffer.from(new BigInt64Array([10n, -3n]).buffer)]), {
      "inference-header-content-length": String(plain.length),
    });
    assert.equal(m.status, 200, await m.clone().text());
    assert.deepEqual(((await m.json()) as { outputs: { data: number[] }[] }).outputs[0]!.data, [21, -5]);
    // JSON input, every output binary (binary_data_output).
    const all = await post(`${s.base}/v2/models/mymodel/infer`, {
      parameters: { binary_data_output: true },
      inputs: [{ name: "input0", shape: [1, 2], datatype: "FP32", data: [0, 1] }],
    });
    assert.equal(all.status, 200);
    const allBody = Buffer.from(await all.arrayBuffer());
    const n = Number(all.headers.get("inference-header-content-length"));
    assert.deepEqual(Array.from(new Float32Array(new Uint8Array(allBody.subarray(n)).buffer)), [1, 3]);

    const short = await post(`${s.base}/v2/models/mymodel/infer`, Buffer.concat([header, data.subarray(0, 10)]), {
      "inference-header-content-length": String(header.length),
    });
    assert.equal(short.status, 400);
    assert.deepEqual(await short.json(), { error: "inputs[0].parameters.binary_data_size: is 16 but only 10 bytes of binary data follow the JSON" });
    const sizeOff = Buffer.from(JSON.stringify({ inputs: [{ name: "input0", shape: [2, 2], datatype: "UINT32", parameters: { binary_data_size: 12 } }] }));
    const off = await post(`${s.base}/v2/models/mymodel/infer`, Buffer.concat([sizeOff, data.subarray(0, 12)]), {
      "inference-header-content-length": String(sizeOff.length),
    });
    assert.equal(off.status, 400);
    assert.match(((await off.json()) as { error: string }).error, /has 12 bytes; shape \[2,2\] of UINT32 needs 16/);
  });

  it("answers bad requests with 4xx and a reason, as the gRPC service words them", async () => {
    const infer = `${s.base}/v2/models/mymodel/infer`;
    const cases: [unknown, number, RegExp][] = [
      ["{not json", 400, /^body: is not JSON/],
      [{ inputs: [] }, 400, /^inputs: must be a non-empty array/],
      [
        { inputs: [{ name: "input0", shape: [2, 2], datatype: "FP32", data: [1, 2, "x", 4] }] },
        400,
        /^inputs\[0\]\.data\[2\]: must be a number for FP32, got "x"$/,
      ],
      [{ inputs: [{ name: "nope", shape: [1], datatype: "FP32", data: [1] }] }, 400, /^inputs\[0\]\.name: model has no input "nope" \(inputs: input0\)$/],
      [{ inputs: [{ name: "input0", shape: [2, 2], datatype: "FP16", data: [1, 2, 3, 4] }] }, 400, /^inputs\[0\]\.datatype: "FP16" is not supported/],
      [{ inputs: [{ name: "input0", shape: [2, 3], datatype: "INT32", data: [1, 2, 3, 4, 5, 6] }] }, 400, /^inputs\[0\]\.shape\[1\]: is 3; the model takes 2$/],
      [{ inputs: [{ name: "input0", shape: [2], datatype: "INT32", data: [1, 2] }] }, 400, /^inputs\[0\]\.shape: has 1 dimensions; the model takes \[-1,2\]$/],
      [
        { inputs: [{ name: "input0", shape: [1, 2], datatype: "INT32", data: [1, 2.5] }] },
        400,
        /^inputs\[0\]\.data\[1\]: must be an integer for INT32, got 2.5$/,
      ],
      [{ ...ONE_INPUT, outputs: [{ name: "output9" }] }, 400, /^outputs\[0\]\.name: model has no output "output9"/],
    ];
    for (const [body, status, error] of cases) {
      const r = await post(infer, body);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.match(((await r.json()) as { error: string }).error, error);
    }
    const unknown = await post(`${s.base}/v2/models/nope/infer`, ONE_INPUT);
    assert.equal(unknown.status, 404);
    assert.deepEqual(await unknown.json(), { error: 'model "nope" is not in the registry' });
    const noVersion = await post(`${s.base}/v2/models/mymodel/versions/7/infer`, ONE_INPUT);
    assert.equal(noVersion.status, 404);
    assert.match(((await noVersion.json()) as { error: string }).error, /has no version or alias "7"/);
    assert.equal((await fetch(infer)).status, 405);
    assert.equal((await post(`${s.base}/v2/models/mymodel`, {})).status, 405);
    assert.equal((await fetch(`${s.base}/v2/modelz`)).status, 404);

    const big = await post(infer, JSON.stringify({ inputs: [{ name: "input0", shape: [1], datatype: "FP32", data: new Array(20_000).fill(1.5) }] }));
    assert.equal(big.status, 413);
    assert.match(((await big.json()) as { error: string }).error, /exceeds the 65536-byte limit/);
    // The server keeps answering.
    assert.equal((await fetch(`${s.base}/v2/health/live`)).status, 200);
  });
});

describe("Open Inference Protocol over HTTP: the gRPC server's token and in-flight limit", () => {
  let secured: Served;
  let full: Served;

  before(async () => {
    secured = await serve({ security: { authToken: "s3cret" } });
    full = await serve({ limits: { maxInflight: 0 } });
  });
  after(async () => {
    await secured?.stop();
    await full?.stop();
  });

  it("asks for the token everywhere but the health probes", async () => {
    assert.equal((await fetch(`${secured.base}/v2/health/live`)).status, 200);
    assert.equal((await fetch(`${secured.base}/v2/health/ready`)).status, 200);
    const request = ONE_INPUT;
    for (const [headers, status] of [
      [{}, 401],
      [{ authorization: "Bearer wrong" }, 401],
      [{ authorization: "Bearer s3cret" }, 200],
    ] as const) {
      const r = await post(`${secured.base}/v2/models/mymodel/infer`, request, headers);
      assert.equal(r.status, status);
      if (status === 401) {
        assert.equal(r.headers.get("www-authenticate"), "Bearer");
        assert.match(((await r.json()) as { error: string }).error, /missing or wrong token/);
      }
    }
    assert.equal((await fetch(`${secured.base}/v2/models/mymodel`)).status, 401);
  });

  it("sheds calls past the in-flight limit with 429", async () => {
    const r = await post(`${full.base}/v2/models/mymodel/infer`, ONE_INPUT);
    assert.equal(r.status, 429);
    assert.equal(r.headers.get("retry-after"), "1");
    assert.match(((await r.json()) as { error: string }).error, /server busy/);
    assert.equal((await fetch(`${full.base}/v2/health/live`)).status, 200);
  });
});
