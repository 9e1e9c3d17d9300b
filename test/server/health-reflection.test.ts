// Health and server reflection, checked the way users and tools meet them: a real grpc-js server on
// a free port, `buf curl` (the npm package's binary) discovering and calling services through
// reflection alone, and grpc-js clients for what buf curl does not show (Health Watch, the
// individual reflection requests, per-stream dependency bookkeeping).
//
// grpcurl is not installed here. buf curl speaks the same ServerReflectionInfo protocol (v1, and
// v1alpha with --reflect-protocol grpc-v1alpha): list_services, then file_containing_symbol and
// file_by_filename until it has the schema. So a buf curl call that succeeds without --schema proves
// what a grpcurl call needs.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { create, equals, fromBinary, toBinary, type DescFile, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, file_google_protobuf_timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ServiceError, createServiceClient, grpc, serviceDefinition, unaryImplementation, type Client } from "../../lib/grpc.js";
import { HealthService, Health, ServingStatus } from "../../server/health.js";
import { addReflection, reflectionImplementations } from "../../server/reflection.js";
import { HealthCheckRequestSchema, file_grpc_health_v1_health, type HealthCheckResponse } from "../../gen/grpc/health/v1/health_pb.js";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { GRPCInferenceService, file_inference_grpc_predict_v2 } from "../../gen/inference/grpc_predict_v2_pb.js";
import { RecommendationService, file_streamserve_v1_recommendation } from "../../gen/streamserve/v1/recommendation_pb.js";
import { file_streamserve_v1_events } from "../../gen/streamserve/v1/events_pb.js";

const BUF = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));
const RECOMMENDATION = "streamserve.v1.RecommendationService";
const HOSTED = [
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "inference.GRPCInferenceService",
  RECOMMENDATION,
];

const unimplemented = () => {
  throw new ServiceError(Code.UNIMPLEMENTED, "stub");
};

/** Stand-ins for the real handlers: enough to see a call travel through with the reflected schema. */
function addStubServices(server: grpc.Server) {
  server.addService(
    serviceDefinition(GRPCInferenceService),
    unaryImplementation(GRPCInferenceService, {
      serverLive: () => ({ live: true }),
      serverReady: () => ({ ready: true }),
      modelReady: unimplemented,
      serverMetadata: unimplemented,
      modelMetadata: unimplemented,
      modelInfer: unimplemented,
    }),
  );
  server.addService(
    serviceDefinition(RecommendationService),
    unaryImplementation(RecommendationService, {
      // Echoes the request back in the answer, so the test sees that buf curl's JSON reached the
      // handler field by field (user_id, candidates) through the schema it got from reflection.
      recommend: (req) => ({
        requestId: `for-${req.userId}`,
        recommendations: req.candidates.map((itemId, i) => ({ itemId, score: 1 - i / 4 })),
        modelName: "recommender",
        modelVersion: "stub",
      }),
      recordOutcome: unimplemented,
    }),
  );
}

async function listen(server: grpc.Server): Promise<string> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return `127.0.0.1:${port}`;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function bufCurl(...args: string[]): Promise<Run> {
  return new Promise((resolve) =>
    execFile(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr }),
    ),
  );
}

function ok(run: Run): string {
  assert.equal(run.code, 0, `buf curl failed (${run.code}): ${run.stderr}`);
  return run.stdout;
}

/** Resolves when `check` holds, polling; fails after a second and a half. */
async function eventually(check: () => boolean, what: string) {
  for (let i = 0; i < 150 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(check(), what);
}

/** Items from a stream, taken one at a time, each with a timeout so a missing message fails fast. */
class Inbox<T> {
  private readonly items: T[] = [];
  private readonly waiting: ((item: T) => void)[] = [];
  push(item: T) {
    const w = this.waiting.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  get pending(): number {
    return this.items.length;
  }
  next(what: string, ms = 2000): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      this.waiting.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
  }
}

type Version = "v1" | "v1alpha";

/**
 * A raw ServerReflectionInfo stream. Requests and responses are (de)serialized here with the
 * version's own schema, and a request can also be sent as arbitrary bytes.
 */
function reflectionStream(address: string, version: Version) {
  const schemas = version === "v1" ? v1 : v1alpha;
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = client.makeBidiStreamRequest(
    `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
    (b: Buffer) => b,
    (b: Buffer) => b,
  );
  const inbox = new Inbox<Buffer>();
  const status = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
  call.on("data", (b: Buffer) => inbox.push(b));
  call.on("error", () => {}); // the outcome is read from "status"
  return {
    status,
    async raw(bytes: Uint8Array): Promise<v1.ServerReflectionResponse> {
      call.write(Buffer.from(bytes));
      // Both versions share field numbers; reading the answer as v1 keeps the assertions typed.
      return fromBinary(v1.ServerReflectionResponseSchema, await inbox.next(`a ${version} reflection response`));
    },
    ask(request: MessageInitShape<typeof v1.ServerReflectionRequestSchema>) {
      return this.raw(toBinary(schemas.ServerReflectionRequestSchema, create(schemas.ServerReflectionRequestSchema, request as never)));
    },
    close() {
      call.end();
      return status.finally(() => client.close());
    },
  };
}

/** Opens Health.Watch(service) and hands out its statuses one at a time. */
function openWatch(client: Client<(typeof Health)["method"]>, service: string) {
  // createServiceClient covers unary methods; its raw grpc-js client has the streaming ones too.
  const raw = client.raw as unknown as { watch(req: unknown): grpc.ClientReadableStream<HealthCheckResponse> };
  const stream = raw.watch(create(HealthCheckRequestSchema, { service }));
  const inbox = new Inbox<ServingStatus>();
  const status = new Promise<grpc.StatusObject>((resolve) => stream.on("status", resolve));
  stream.on("data", (res: HealthCheckResponse) => inbox.push(res.status));
  stream.on("error", () => {}); // the outcome is read from "status"; cancelling is part of the tests
  return { stream, inbox, status, next: () => inbox.next(`a status for "${service}"`) };
}

function fileNames(res: v1.ServerReflectionResponse): string[] {
  assert.equal(res.messageResponse.case, "fileDescriptorResponse", `expected files, got ${JSON.stringify(res.messageResponse)}`);
  return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
}

function errorCode(res: v1.ServerReflectionResponse): number {
  assert.equal(res.messageResponse.case, "errorResponse", `expected an error_response, got ${res.messageResponse.case}`);
  return res.messageResponse.value.errorCode;
}

describe("health and reflection on a live server", () => {
  const server = new grpc.Server();
  const shutdown = new AbortController();
  const health = new HealthService({ [RECOMMENDATION]: ServingStatus.SERVING });
  let address = "";
  let url = "";

  before(async () => {
    server.addService(serviceDefinition(Health), health.implementation(shutdown.signal));
    // events.proto imports google/protobuf/timestamp.proto: the one dependency edge among our files.
    addReflection(server, { services: [GRPCInferenceService, RecommendationService, Health], files: [file_streamserve_v1_events], shutdown: shutdown.signal });
    addStubServices(server);
    address = await listen(server);
    url = `http://${address}`;
    health.setStatus("", ServingStatus.SERVING);
  });

  after(async () => {
    shutdown.abort();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  describe("buf curl, with nothing but reflection to go on", () => {
    for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
      it(`lists services and methods (${protocol})`, async () => {
        const [services, listed] = await Promise.all([
          bufCurl("--reflect-protocol", protocol, "--list-services", url),
          bufCurl("--reflect-protocol", protocol, "--list-methods", url),
        ]);
        assert.deepEqual(ok(services).trim().split("\n").sort(), HOSTED);
        const methods = ok(listed).trim().split("\n");
        for (const m of [
          `${RECOMMENDATION}/Recommend`,
          `${RECOMMENDATION}/RecordOutcome`,
          "inference.GRPCInferenceService/ModelInfer",
          "grpc.health.v1.Health/Watch",
          "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ]) {
          assert.ok(methods.includes(m), `${m} missing from ${methods.join(", ")}`);
        }
      });

      it(`calls Recommend, ServerLive and Health.Check from JSON (${protocol})`, async () => {
        const [rec, live, check] = await Promise.all([
          bufCurl("--reflect-protocol", protocol, "--data", '{"user_id":"u1","candidates":["a","b"]}', `${url}/${RECOMMENDATION}/Recommend`),
          bufCurl("--reflect-protocol", protocol, `${url}/inference.GRPCInferenceService/ServerLive`),
          bufCurl("--reflect-protocol", protocol, "--data", "{}", `${url}/grpc.health.v1.Health/Check`),
        ]);
        assert.deepEqual(JSON.parse(ok(rec)), {
          requestId: "for-u1",
          recommendations: [
            { itemId: "a", score: 1 },
            { itemId: "b", score: 0.75 },
          ],
          modelName: "recommender",
          modelVersion: "stub",
        });
        assert.deepEqual(JSON.parse(ok(live)), { live: true });
        assert.deepEqual(JSON.parse(ok(check)), { status: "SERVING" });
      });
    }

    it("really uses the protocol it is told to: it fails on a server without v1alpha", async () => {
      // Guards the test above: if buf curl quietly fell back to v1, the v1alpha runs would prove nothing.
      const only = new grpc.Server();
      only.addService(serviceDefinition(v1.ServerReflection), reflectionImplementations({ services: [RecommendationService] }).v1);
      addStubServices(only);
      const addr = await listen(only);
      try {
        const call = ["--data", '{"user_id":"u1"}', `http://${addr}/${RECOMMENDATION}/Recommend`];
        ok(await bufCurl("--reflect-protocol", "grpc-v1", ...call));
        const refused = await bufCurl("--reflect-protocol", "grpc-v1alpha", ...call);
        // buf curl reports the UNIMPLEMENTED reflection service as a schema without the service.
        assert.notEqual(refused.code, 0);
        assert.match(refused.stderr, /failed to find service named "streamserve\.v1\.RecommendationService"/);
      } finally {
        only.forceShutdown();
      }
    });
  });

  describe("ServerReflectionInfo, request by request", () => {
    for (const version of ["v1", "v1alpha"] as const) {
      it(`answers every kind of request and keeps the stream open after errors (${version})`, async () => {
        const s = reflectionStream(address, version);
        try {
          const listed = await s.ask({ host: "example", messageRequest: { case: "listServices", value: "*" } });
          assert.equal(listed.validHost, "example");
          assert.equal(listed.originalRequest?.messageRequest.case, "listServices");
          assert.equal(listed.messageResponse.case, "listServicesResponse");
          assert.deepEqual(
            listed.messageResponse.value.service.map((x) => x.name),
            HOSTED,
          );

          // Each symbol kind resolves to the file that declares it.
          const symbols: [string, DescFile][] = [
            [RECOMMENDATION, file_streamserve_v1_recommendation],
            [`${RECOMMENDATION}.Recommend`, file_streamserve_v1_recommendation],
            ["streamserve.v1.RecommendRequest", file_streamserve_v1_recommendation],
            ["streamserve.v1.RecommendRequest.user_id", file_streamserve_v1_recommendation],
            ["inference.ModelInferRequest.InferInputTensor", file_inference_grpc_predict_v2],
            ["inference.ModelInferRequest.InferInputTensor.datatype", file_inference_grpc_predict_v2],
            ["inference.ModelInferRequest.ParametersEntry", file_inference_grpc_predict_v2],
            ["inference.InferParameter.parameter_choice", file_inference_grpc_predict_v2],
            [".inference.ModelInferResponse", file_inference_grpc_predict_v2],
            ["grpc.health.v1.HealthCheckResponse.ServingStatus", file_grpc_health_v1_health],
            ["grpc.health.v1.HealthCheckResponse.SERVICE_UNKNOWN", file_grpc_health_v1_health],
            ["google.protobuf.Timestamp", file_google_protobuf_timestamp],
          ];
          for (const [symbol, file] of symbols) {
            const res = await s.ask({ messageRequest: { case: "fileContainingSymbol", value: symbol } });
            assert.equal(fileNames(res)[0], file.proto.name, symbol);
            // What travels is the generated code's own descriptor, byte for byte meaningful.
            assert.equal(res.messageResponse.case, "fileDescriptorResponse");
            assert.ok(equals(FileDescriptorProtoSchema, fromBinary(FileDescriptorProtoSchema, res.messageResponse.value.fileDescriptorProto[0]!), file.proto));
          }

          const missing = await s.ask({ messageRequest: { case: "fileContainingSymbol", value: "streamserve.v1.Nope" } });
          assert.equal(errorCode(missing), Code.NOT_FOUND);
          assert.equal(missing.originalRequest?.messageRequest.value, "streamserve.v1.Nope");
          assert.equal(errorCode(await s.ask({ messageRequest: { case: "fileByFilename", value: "nope.proto" } })), Code.NOT_FOUND);
          assert.equal(
            errorCode(
              await s.ask({
                messageRequest: { case: "fileContainingExtension", value: { containingType: "streamserve.v1.RecommendRequest", extensionNumber: 100 } },
              }),
            ),
            Code.NOT_FOUND,
          );
          assert.equal(errorCode(await s.ask({ messageRequest: { case: "allExtensionNumbersOfType", value: "streamserve.v1.Nope" } })), Code.NOT_FOUND);
          // A service is a symbol but not a message type, so it has no extension numbers to list.
          assert.equal(errorCode(await s.ask({ messageRequest: { case: "allExtensionNumbersOfType", value: RECOMMENDATION } })), Code.NOT_FOUND);
          const numbers = await s.ask({ messageRequest: { case: "allExtensionNumbersOfType", value: "streamserve.v1.RecommendRequest" } });
          assert.equal(numbers.messageResponse.case, "allExtensionNumbersResponse");
          assert.deepEqual(numbers.messageResponse.value.extensionNumber, []);
          assert.equal(numbers.messageResponse.value.baseTypeName, "streamserve.v1.RecommendRequest");

          assert.equal(errorCode(await s.ask({ messageRequest: { case: undefined } })), Code.INVALID_ARGUMENT);
          // Bytes that are not a request at all (field 3, a string, with a length running past the end).
          const garbage = await s.raw(Uint8Array.of(0x1a, 0x7f, 0x61));
          assert.equal(errorCode(garbage), Code.INVALID_ARGUMENT);
          assert.equal(garbage.originalRequest, undefined);

          // Still answering after all those errors.
          assert.deepEqual(fileNames(await s.ask({ messageRequest: { case: "fileByFilename", value: "grpc/health/v1/health.proto" } })), [
            "grpc/health/v1/health.proto",
          ]);
        } finally {
          assert.equal((await s.close()).code, grpc.status.OK);
        }
      });

      it(`sends a file's imports once per stream (${version})`, async () => {
        const s = reflectionStream(address, version);
        try {
          const events = { messageRequest: { case: "fileByFilename", value: "streamserve/v1/events.proto" } } as const;
          assert.deepEqual(fileNames(await s.ask(events)), ["streamserve/v1/events.proto", "google/protobuf/timestamp.proto"]);
          // The client has timestamp.proto now; the file asked for is always sent.
          assert.deepEqual(fileNames(await s.ask(events)), ["streamserve/v1/events.proto"]);
          assert.deepEqual(fileNames(await s.ask({ messageRequest: { case: "fileContainingSymbol", value: "google.protobuf.Timestamp" } })), [
            "google/protobuf/timestamp.proto",
          ]);
        } finally {
          await s.close();
        }
        // A new stream is a new client state: the import comes again.
        const fresh = reflectionStream(address, version);
        try {
          assert.deepEqual(fileNames(await fresh.ask({ messageRequest: { case: "fileContainingSymbol", value: "streamserve.v1.ActivityEvent" } })), [
            "streamserve/v1/events.proto",
            "google/protobuf/timestamp.proto",
          ]);
        } finally {
          await fresh.close();
        }
      });
    }
  });

  describe("Health through a grpc-js client", () => {
    const healthClient = () => createServiceClient(Health, address);

    it("Check: the current status, NOT_FOUND for a service nobody registered", async () => {
      const c = healthClient();
      try {
        assert.equal((await c.check({ service: "" })).status, ServingStatus.SERVING);
        assert.equal((await c.check({ service: RECOMMENDATION })).status, ServingStatus.SERVING);
        await assert.rejects(c.check({ service: "no.such.Service" }), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
        health.setStatus(RECOMMENDATION, ServingStatus.NOT_SERVING);
        assert.equal((await c.check({ service: RECOMMENDATION })).status, ServingStatus.NOT_SERVING);
      } finally {
        health.setStatus(RECOMMENDATION, ServingStatus.SERVING);
        c.close();
      }
    });

    it("Watch: the status at once, then each change, and stops when the client cancels", async () => {
      const c = healthClient();
      try {
        const w = openWatch(c, RECOMMENDATION);
        assert.equal(await w.next(), ServingStatus.SERVING);
        health.setStatus(RECOMMENDATION, ServingStatus.NOT_SERVING);
        assert.equal(await w.next(), ServingStatus.NOT_SERVING);
        // Setting the same status again is not a change and sends nothing: the next message is SERVING.
        health.setStatus(RECOMMENDATION, ServingStatus.NOT_SERVING);
        health.setStatus(RECOMMENDATION, ServingStatus.SERVING);
        assert.equal(await w.next(), ServingStatus.SERVING);

        // Another service's change does not reach this stream.
        health.setStatus("", ServingStatus.NOT_SERVING);
        health.setStatus("", ServingStatus.SERVING);
        const whole = openWatch(c, "");
        assert.equal(await whole.next(), ServingStatus.SERVING);
        assert.equal(w.inbox.pending, 0);

        const before = health.watching;
        w.stream.cancel();
        await eventually(() => health.watching === before - 1, "the server forgets a cancelled Watch");
        whole.stream.cancel();
        await eventually(() => health.watching === before - 2, "the server forgets a cancelled Watch");
      } finally {
        c.close();
      }
    });

    it("Watch: SERVICE_UNKNOWN for an unknown service, its status once it appears; setAll reaches every watcher", async () => {
      const c = healthClient();
      try {
        const late = openWatch(c, "streamserve.v1.Later");
        assert.equal(await late.next(), ServingStatus.SERVICE_UNKNOWN);
        const whole = openWatch(c, "");
        assert.equal(await whole.next(), ServingStatus.SERVING);
        health.setStatus("streamserve.v1.Later", ServingStatus.SERVING);
        assert.equal(await late.next(), ServingStatus.SERVING);

        health.setAll(ServingStatus.NOT_SERVING); // draining
        assert.equal(await late.next(), ServingStatus.NOT_SERVING);
        assert.equal(await whole.next(), ServingStatus.NOT_SERVING);
        assert.equal((await c.check({ service: RECOMMENDATION })).status, ServingStatus.NOT_SERVING);
        late.stream.cancel();
        whole.stream.cancel();
      } finally {
        health.setAll(ServingStatus.SERVING);
        c.close();
      }
    });

    it("Watch: a client that does not read gets the latest status, not a backlog", async () => {
      const c = healthClient();
      const service = "streamserve.v1.Flapping";
      try {
        health.setStatus(service, ServingStatus.SERVING);
        const w = openWatch(c, service);
        assert.equal(await w.next(), ServingStatus.SERVING);
        w.stream.pause();
        // Enough changes to fill HTTP/2 flow control and the stream buffers many times over.
        const changes = 40_000;
        for (let i = 0; i < changes; i++) health.setStatus(service, i % 2 === 0 ? ServingStatus.NOT_SERVING : ServingStatus.SERVING);
        health.setStatus(service, ServingStatus.NOT_SERVING);
        w.stream.resume();
        // Read until the current status has arrived and nothing follows it for a moment (or until
        // nothing has come for two seconds, which the assertions below then report).
        const seen: ServingStatus[] = [];
        for (;;) {
          const quiet = seen.at(-1) === ServingStatus.NOT_SERVING ? 200 : 2000;
          const s = await w.inbox.next("", quiet).catch(() => undefined);
          if (s === undefined) break;
          seen.push(s);
        }
        assert.equal(seen.at(-1), ServingStatus.NOT_SERVING, "the last status sent is the current one");
        assert.ok(seen.length < changes / 2, `${seen.length} statuses for ${changes} changes: intermediate ones should be dropped`);
        w.stream.cancel();
      } finally {
        c.close();
      }
    });
  });
});

describe("shutdown", () => {
  it("ends open Watch and reflection streams with OK so tryShutdown can finish", async () => {
    const server = new grpc.Server();
    const shutdown = new AbortController();
    const health = new HealthService();
    server.addService(serviceDefinition(Health), health.implementation(shutdown.signal));
    addReflection(server, { services: [Health], shutdown: shutdown.signal });
    const address = await listen(server);
    const c = createServiceClient(Health, address);
    const reflection = reflectionStream(address, "v1");
    try {
      const w = openWatch(c, "");
      assert.equal(await w.next(), ServingStatus.NOT_SERVING);
      // Both streams are established and idle, as a watching load balancer and an open grpcurl session would be.
      assert.equal((await reflection.ask({ messageRequest: { case: "listServices", value: "" } })).messageResponse.case, "listServicesResponse");
      assert.equal(health.watching, 1);

      shutdown.abort();
      const done = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("tryShutdown is still waiting for an open stream")), 3000).unref());
      await Promise.race([done, timeout]);
      assert.equal((await w.status).code, grpc.status.OK);
      assert.equal((await reflection.status).code, grpc.status.OK);
      assert.equal(health.watching, 0);
    } finally {
      c.close();
      server.forceShutdown();
    }
  });
});
