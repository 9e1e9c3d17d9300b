// What a client can hold on the server below the handlers: answers it does not read, requests it
// never finishes or declares too large, connections, streams and Watch streams. Each is bounded,
// and normal calls keep being answered.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { createServiceClient, Code } from "../../lib/grpc.js";
import { GRPCInferenceService, ModelInferRequestSchema } from "../../gen/inference/grpc_predict_v2_pb.js";
import { Health, HealthCheckRequestSchema } from "../../gen/grpc/health/v1/health_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import { grpcFrame, GRPC_REQUEST_HEADERS } from "./raw-grpc.js";

let rt: TestRuntime;
let server: RunningServer;
let url: string;
const gauge = async (name: string) => Number(new RegExp(`^${name} (\\d+)`, "m").exec(await rt.metrics.render())?.[1] ?? NaN);

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const features = [0, 1, 2, 3].map((i) => ({ name: `f${i}`, source: "user" as const, type: "numeric" as const, default: 0 }));
  const mv = await registry.publish({ name: "wide", artifact: logisticModel([1, 1, 1, 1], 0), features, inputName: "features", outputName: "score" });
  await registry.setAlias("wide", "production", mv.version);
  server = await startServer(rt, {
    http: false,
    limits: {
      responseWriteTimeoutMs: 10_000,
      requestReadTimeoutMs: 1000,
      maxHeldBytes: 12 * 1024 * 1024,
      maxConnections: 20,
      maxStreamsPerConnection: 16,
      connectionIdleMs: 1500,
      maxWatchStreams: 5,
    },
  });
  url = `http://127.0.0.1:${server.port}`;
  await waitFor(() => server.models.servedVersion("wide"), 15_000, "model loaded");
});
after(async () => {
  await server?.stop();
  await rt?.cleanup();
});

const bigInfer = grpcFrame(
  toBinary(
    ModelInferRequestSchema,
    create(ModelInferRequestSchema, {
      modelName: "wide",
      inputs: [{ name: "features", datatype: "FP32", shape: [65536n, 4n] }],
      rawInputContents: [new Uint8Array(65536 * 16)],
    }),
  ),
);
const smallInfer = () =>
  createServiceClient(GRPCInferenceService, `127.0.0.1:${server.port}`).modelInfer({
    modelName: "wide",
    inputs: [{ name: "features", datatype: "FP32", shape: [1n, 4n], contents: { fp32Contents: [1, 2, 3, 4] } }],
  });

it("counts answers a client does not read against the in-flight and byte budgets, cancels them for room and after a timeout", async () => {
  const sessions = Array.from({ length: 4 }, () => http2.connect(url));
  const streams = Array.from({ length: 24 }, (_, i) => {
    const st = sessions[i % 4]!.request({ ...GRPC_REQUEST_HEADERS, ":path": "/inference.GRPCInferenceService/ModelInfer" });
    st.on("error", () => undefined);
    st.pause(); // reads nothing: the 256 KB answers stay on the server
    st.end(bigInfer);
    return st;
  });
  // Before, every answered call left the in-flight count at once (it read 0) and the answers piled up.
  await waitFor(
    async () => (await gauge("grpc_server_inflight")) > 0 && (await gauge("grpc_server_held_bytes")) > 4 * 1024 * 1024,
    30_000,
    "unread answers counted",
  );
  // Over the byte budget, the oldest unread answers make room: a client that reads is answered.
  await waitFor(async () => (await gauge("grpc_server_held_bytes")) > 12 * 1024 * 1024, 30_000, "held bytes over the budget");
  assert.equal((await smallInfer()).outputs.length, 1);
  assert.ok((await gauge("grpc_server_unread_cancelled")) > 0, "unread answers were cancelled to make room");
  // The unread answers are cancelled after responseWriteTimeoutMs; the budget is free again.
  await waitFor(() => streams.every((s) => s.closed), 40_000, "unread streams cancelled");
  await waitFor(async () => (await gauge("grpc_server_held_bytes")) === 0 && (await gauge("grpc_server_inflight")) === 0, 5000, "budgets released");
  assert.equal((await smallInfer()).outputs.length, 1);
  for (const s of sessions) s.destroy();
});

it("refuses a declared length over the limit at once and stops reading the body", async () => {
  const session = http2.connect(url);
  const st = session.request({ ...GRPC_REQUEST_HEADERS, ":path": "/inference.GRPCInferenceService/ModelInfer" });
  let status: string | undefined;
  st.on("response", (h) => (status ??= h["grpc-status"] as string | undefined));
  st.on("trailers", (h) => (status ??= h["grpc-status"] as string | undefined));
  st.on("error", () => undefined);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(0x7fffffff, 1);
  st.write(prefix);
  // Keep sending, as the probe did: before, the server read (and discarded) all of it.
  const chunk = Buffer.alloc(256 * 1024);
  let sent = 0;
  const started = Date.now();
  while (!st.closed && Date.now() - started < 5000) {
    if (st.write(chunk)) sent += chunk.length;
    else await new Promise((r) => setTimeout(r, 2));
  }
  assert.equal(status, String(Code.RESOURCE_EXHAUSTED));
  assert.ok(st.closed, "the server reset the stream");
  assert.ok(sent < 32 * 1024 * 1024, `the client sent ${sent} bytes before being stopped`);
  session.destroy();
});

it("refuses a request that never finishes arriving", async () => {
  const session = http2.connect(url);
  const st = session.request({ ...GRPC_REQUEST_HEADERS, ":path": "/inference.GRPCInferenceService/ModelInfer" });
  let status: string | undefined;
  st.on("response", (h) => (status ??= h["grpc-status"] as string | undefined));
  st.on("trailers", (h) => (status ??= h["grpc-status"] as string | undefined));
  st.on("error", () => undefined);
  st.write(bigInfer.subarray(0, 100)); // a partial frame, then silence
  await waitFor(() => st.closed, 10_000, "partial request refused");
  assert.equal(status, String(Code.DEADLINE_EXCEEDED));
  session.destroy();
});

it("limits connections, streams per connection and idle connections", async () => {
  // SETTINGS_MAX_CONCURRENT_STREAMS is announced to every client.
  const session = http2.connect(url);
  await new Promise((r) => session.once("remoteSettings", r));
  assert.equal(session.remoteSettings.maxConcurrentStreams, 16);
  // An idle HTTP/2 connection gets GOAWAY.
  const goaway = new Promise((r) => session.once("goaway", r));
  await goaway;
  session.destroy();

  // Raw TCP connections that never speak: at most maxConnections are kept, and idle ones are closed.
  const sockets: Socket[] = [];
  const closed = new Set<Socket>();
  for (let i = 0; i < 40; i++) {
    const s = connect(server.port, "127.0.0.1");
    s.on("error", () => undefined);
    s.on("close", () => closed.add(s));
    sockets.push(s);
  }
  await waitFor(() => closed.size >= 20, 5000, "connections over the limit closed");
  await waitFor(() => closed.size === 40, 10_000, "idle connections closed");
  assert.equal((await smallInfer()).outputs.length, 1, "normal calls are answered throughout");
});

it("caps Health/Watch streams, which need no token", async () => {
  const client = createServiceClient(Health, `127.0.0.1:${server.port}`);
  const watches = Array.from({ length: 5 }, () => {
    const call = client.raw.makeServerStreamRequest(
      "/grpc.health.v1.Health/Watch",
      (m: Uint8Array) => Buffer.from(m),
      (b: Buffer) => b,
      toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" })),
    );
    call.on("error", () => undefined);
    return call;
  });
  await waitFor(() => server.health.watching === 5, 5000, "five watchers");
  const sixth = client.raw.makeServerStreamRequest(
    "/grpc.health.v1.Health/Watch",
    (m: Uint8Array) => Buffer.from(m),
    (b: Buffer) => b,
    toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" })),
  );
  const err = await new Promise<{ code: number; details: string }>((resolve) => sixth.on("error", resolve));
  assert.equal(err.code, Code.RESOURCE_EXHAUSTED);
  assert.match(err.details, /too many Health\/Watch streams/);
  for (const w of watches) w.cancel();
  await waitFor(() => server.health.watching === 0, 5000, "watchers gone");
  client.close();
});
