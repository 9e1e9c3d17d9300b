// The Open Inference Protocol over HTTP/REST (KServe v2, Triton), on the process's HTTP port:
// health, server and model metadata, and infer with JSON tensors or the binary tensor data
// extension (Inference-Header-Content-Length). Each request is turned into the gRPC service's
// request message and answered by the same handlers, behind the same admission hooks (token,
// in-flight limit, accounting under the gRPC method it maps to), so models, limits, checks and
// error messages are the gRPC service's; only the status codes and the encoding are HTTP's.
import type { IncomingMessage, ServerResponse } from "node:http";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, grpc, ServiceError, type CallContext, type CallHooks, type UnaryHandlers } from "../lib/grpc.js";
import type { HttpServer } from "../lib/http.js";
import { GRPCInferenceService, ModelInferRequestSchema, type InferTensorContents } from "../gen/inference/grpc_predict_v2_pb.js";
import type { ServingLimits } from "./limits.js";

export interface HttpInferenceOptions {
  /** The gRPC service's handlers (server/inference-service.ts), answered as REST. */
  handlers: UnaryHandlers<typeof GRPCInferenceService.method>;
  /** The gRPC server's admission: the token check, the in-flight limit, call accounting. */
  hooks: CallHooks;
  /** Body size limit (maxMessageBytes, as for a gRPC message). */
  limits: Pick<ServingLimits, "maxMessageBytes">;
  /** Fires when the server shuts down: running calls are cancelled. */
  shutdown?: AbortSignal;
}

/** The extension Triton names in its server metadata when it reads binary tensor data. */
export const BINARY_DATA_EXTENSION = "binary_tensor_data";

const METHOD = (name: string) => `/${GRPCInferenceService.typeName}/${name}`;

/** gRPC status → HTTP status, as KServe and Triton answer them. */
const HTTP_STATUS: Partial<Record<grpc.status, number>> = {
  [Code.INVALID_ARGUMENT]: 400,
  [Code.FAILED_PRECONDITION]: 400,
  [Code.OUT_OF_RANGE]: 400,
  [Code.UNAUTHENTICATED]: 401,
  [Code.PERMISSION_DENIED]: 403,
  [Code.NOT_FOUND]: 404,
  [Code.ALREADY_EXISTS]: 409,
  [Code.RESOURCE_EXHAUSTED]: 429,
  [Code.CANCELLED]: 499,
  [Code.UNIMPLEMENTED]: 501,
  [Code.UNAVAILABLE]: 503,
  [Code.DEADLINE_EXCEEDED]: 504,
};

/** Mounts /v2 and everything under it on `http`. */
export function mountHttpInference(http: HttpServer, options: HttpInferenceOptions): void {
  const { handlers } = options;

  /** Runs one call behind the hooks, as the gRPC wrapper does, and answers it. */
  async function call(req: IncomingMessage, res: ServerResponse, method: string, body: (ctx: CallContext) => Promise<void>, admit = true): Promise<void> {
    const metadata = new grpc.Metadata();
    if (req.headers.authorization) metadata.set("authorization", req.headers.authorization);
    const path = METHOD(method);
    let end: ((code: grpc.status) => void) | void = undefined;
    try {
      if (admit) end = options.hooks.begin?.(path, metadata);
    } catch (err) {
      return sendError(res, ServiceError.from(err));
    }
    const controller = new AbortController();
    const abort = () => controller.abort();
    // The client went away before the answer was written: stop the work.
    res.once("close", () => !res.writableFinished && abort());
    options.shutdown?.addEventListener("abort", abort, { once: true });
    let code: grpc.status = Code.OK;
    try {
      await body({
        signal: controller.signal,
        get cancelled() {
          return controller.signal.aborted;
        },
        metadata,
        path,
        deadline: Infinity,
      });
    } catch (err) {
      const e = ServiceError.from(err);
      code = e.code;
      if (!res.headersSent) sendError(res, e);
      else res.end();
    } finally {
      options.shutdown?.removeEventListener("abort", abort);
      end?.(code);
    }
  }

  async function serverMetadata(req: IncomingMessage, res: ServerResponse) {
    await call(req, res, "ServerMetadata", async (ctx) => {
      const m = await handlers.serverMetadata(create(GRPCInferenceService.method.serverMetadata.input), ctx);
      sendJson(res, 200, { name: m.name, version: m.version, extensions: [...(m.extensions ?? []), BINARY_DATA_EXTENSION] });
    });
  }

  async function routeV2(req: IncomingMessage, res: ServerResponse, url: URL) {
    const route = parseRoute(url.pathname);
    if (!route)
      return sendJson(res, 404, {
        error: `no such endpoint ${req.method} ${url.pathname}: see /v2/health/live, /v2/health/ready, /v2/models/NAME[/versions/V][/ready|/infer]`,
      });
    if ("error" in route) return sendJson(res, 400, { error: route.error });
    const post = req.method === "POST";
    if ((route.kind === "infer") !== post) {
      res.setHeader("allow", route.kind === "infer" ? "POST" : "GET, HEAD");
      return sendJson(res, 405, { error: `${url.pathname} takes ${route.kind === "infer" ? "POST" : "GET"}` });
    }
    switch (route.kind) {
      // Probes carry no token: like the gRPC health service, these two skip admission.
      case "live":
        return call(
          req,
          res,
          "ServerLive",
          async (ctx) => sendEmpty(res, (await handlers.serverLive(create(GRPCInferenceService.method.serverLive.input), ctx)).live ? 200 : 400),
          false,
        );
      case "ready":
        return call(
          req,
          res,
          "ServerReady",
          async (ctx) => sendEmpty(res, (await handlers.serverReady(create(GRPCInferenceService.method.serverReady.input), ctx)).ready ? 200 : 400),
          false,
        );
      case "model-ready":
        return call(req, res, "ModelReady", async (ctx) => {
          const r = await handlers.modelReady(create(GRPCInferenceService.method.modelReady.input, { name: route.model, version: route.version }), ctx);
          sendEmpty(res, r.ready ? 200 : 400);
        });
      case "model":
        return call(req, res, "ModelMetadata", async (ctx) => {
          const m = await handlers.modelMetadata(create(GRPCInferenceService.method.modelMetadata.input, { name: route.model, version: route.version }), ctx);
          const tensor = (t: { name?: string; datatype?: string; shape?: readonly bigint[] }) => ({
            name: t.name,
            datatype: t.datatype,
            shape: (t.shape ?? []).map(Number),
          });
          sendJson(res, 200, {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: (m.inputs ?? []).map(tensor),
            outputs: (m.outputs ?? []).map(tensor),
          });
        });
      case "infer":
        return call(req, res, "ModelInfer", async (ctx) => {
          const body = await readBody(req, options.limits.maxMessageBytes);
          const request = parseInferRequest(body, req.headers["inference-header-content-length"], route.model, route.version);
          const response = await handlers.modelInfer(create(ModelInferRequestSchema, request.message), ctx);
          sendInferResponse(res, response, request.binaryOutputs);
        });
    }
  }

  http.route("GET", "/v2", serverMetadata);
  http.route("GET", "/v2/*", routeV2);
  http.route("POST", "/v2/*", routeV2);
}

// ---- routes ----

type Route = { kind: "live" | "ready" } | { kind: "model" | "model-ready" | "infer"; model: string; version: string } | { error: string };

/** `/v2/models/NAME[/versions/V][/ready|/infer]` and the two health paths. */
export function parseRoute(pathname: string): Route | undefined {
  if (pathname === "/v2/health/live") return { kind: "live" };
  if (pathname === "/v2/health/ready") return { kind: "ready" };
  const m = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(?:\/(ready|infer))?\/?$/.exec(pathname);
  if (!m) return undefined;
  let model: string;
  let version: string;
  try {
    model = decodeURIComponent(m[1]!);
    version = m[2] === undefined ? "" : decodeURIComponent(m[2]);
  } catch {
    return { error: `the path ${pathname} is not valid percent-encoding` };
  }
  return { kind: m[3] === "ready" ? "model-ready" : m[3] === "infer" ? "infer" : "model", model, version };
}

// ---- request ----

/** Element size and little-endian codec of each datatype the binary extension carries here. */
const CODECS: Record<
  string,
  { bytes: number; read(v: DataView, at: number): number | bigint | boolean; write(v: DataView, at: number, x: number | bigint | boolean): void }
> = {
  BOOL: { bytes: 1, read: (v, at) => v.getUint8(at) !== 0, write: (v, at, x) => v.setUint8(at, x ? 1 : 0) },
  UINT8: { bytes: 1, read: (v, at) => v.getUint8(at), write: (v, at, x) => v.setUint8(at, Number(x)) },
  UINT16: { bytes: 2, read: (v, at) => v.getUint16(at, true), write: (v, at, x) => v.setUint16(at, Number(x), true) },
  UINT32: { bytes: 4, read: (v, at) => v.getUint32(at, true), write: (v, at, x) => v.setUint32(at, Number(x), true) },
  UINT64: { bytes: 8, read: (v, at) => v.getBigUint64(at, true), write: (v, at, x) => v.setBigUint64(at, BigInt(x), true) },
  INT8: { bytes: 1, read: (v, at) => v.getInt8(at), write: (v, at, x) => v.setInt8(at, Number(x)) },
  INT16: { bytes: 2, read: (v, at) => v.getInt16(at, true), write: (v, at, x) => v.setInt16(at, Number(x), true) },
  INT32: { bytes: 4, read: (v, at) => v.getInt32(at, true), write: (v, at, x) => v.setInt32(at, Number(x), true) },
  INT64: { bytes: 8, read: (v, at) => v.getBigInt64(at, true), write: (v, at, x) => v.setBigInt64(at, BigInt(x), true) },
  FP32: { bytes: 4, read: (v, at) => v.getFloat32(at, true), write: (v, at, x) => v.setFloat32(at, Number(x), true) },
  FP64: { bytes: 8, read: (v, at) => v.getFloat64(at, true), write: (v, at, x) => v.setFloat64(at, Number(x), true) },
};

type InferRequestInit = MessageInitShape<typeof ModelInferRequestSchema>;
interface TensorInit {
  name: string;
  datatype: string;
  shape: bigint[];
  contents?: ContentsInit;
}
type ContentsInit = Omit<Partial<InferTensorContents>, "$typeName" | "$unknown">;

const bad = (field: string, problem: string) => new ServiceError(Code.INVALID_ARGUMENT, `${field}: ${problem}`);
const isObject = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);

/**
 * The REST body (JSON, then binary tensor data when Inference-Header-Content-Length is given) as
 * the gRPC request message. JSON data becomes typed contents; when any input is binary, every
 * input travels as raw contents, as the gRPC message requires.
 */
export function parseInferRequest(
  body: Buffer,
  headerLength: string | string[] | undefined,
  model: string,
  version: string,
): { message: InferRequestInit; binaryOutputs: Set<string> | "all" } {
  let jsonLength = body.length;
  if (headerLength !== undefined) {
    const n = Number(Array.isArray(headerLength) ? headerLength[0] : headerLength);
    if (!Number.isInteger(n) || n < 0 || n > body.length)
      throw bad("Inference-Header-Content-Length", `must be the JSON's length in bytes, between 0 and the body's ${body.length}`);
    jsonLength = n;
  }
  let json: unknown;
  try {
    json = JSON.parse(body.subarray(0, jsonLength).toString("utf8"));
  } catch (err) {
    throw bad(
      "body",
      `is not JSON (${(err as Error).message})${headerLength === undefined && body.includes(0) ? "; binary tensor data needs the Inference-Header-Content-Length header" : ""}`,
    );
  }
  if (!isObject(json)) throw bad("body", "must be a JSON object with an inputs array");
  if (json.id !== undefined && typeof json.id !== "string") throw bad("id", "must be a string");
  if (!Array.isArray(json.inputs) || json.inputs.length === 0) throw bad("inputs", "must be a non-empty array of {name, shape, datatype, data}");

  let binary = body.subarray(jsonLength);
  const inputs: (TensorInit & { json?: unknown[]; raw?: Uint8Array })[] = json.inputs.map((input: unknown, i: number) => {
    const field = `inputs[${i}]`;
    if (!isObject(input)) throw bad(field, "must be an object {name, shape, datatype, data}");
    if (typeof input.name !== "string" || !input.name) throw bad(`${field}.name`, "is required");
    if (typeof input.datatype !== "string" || !input.datatype) throw bad(`${field}.datatype`, "is required");
    if (!Array.isArray(input.shape) || !input.shape.every((d) => Number.isInteger(d) && d >= 0))
      throw bad(`${field}.shape`, "must be an array of non-negative integers");
    const shape = (input.shape as number[]).map(BigInt);
    const count = (input.shape as number[]).reduce((a, b) => a * b, 1);
    const size = isObject(input.parameters) ? input.parameters.binary_data_size : undefined;
    if (size !== undefined) {
      if (!Number.isInteger(size) || (size as number) < 0) throw bad(`${field}.parameters.binary_data_size`, "must be a non-negative integer");
      if ((size as number) > binary.length)
        throw bad(`${field}.parameters.binary_data_size`, `is ${size} but only ${binary.length} bytes of binary data follow the JSON`);
      const raw = binary.subarray(0, size as number);
      binary = binary.subarray(size as number);
      return { name: input.name, datatype: input.datatype, shape, raw };
    }
    if (!Array.isArray(input.data)) throw bad(`${field}.data`, "must be an array (or send binary data with parameters.binary_data_size)");
    const data = (input.data as unknown[]).flat(Infinity);
    if (data.length !== count) throw bad(`${field}.data`, `has ${data.length} values; shape [${input.shape}] needs ${count}`);
    return { name: input.name, datatype: input.datatype, shape, json: data };
  });
  if (binary.length) throw bad("body", `${binary.length} bytes of binary data follow the JSON that no input's binary_data_size accounts for`);

  const anyRaw = inputs.some((x) => x.raw);
  const rawInputContents: Uint8Array[] = [];
  const tensors: TensorInit[] = inputs.map(({ json: data, raw, ...tensor }, i) => {
    if (anyRaw) {
      rawInputContents.push(raw ?? toRaw(`inputs[${i}]`, tensor.datatype, data!));
      return tensor;
    }
    return { ...tensor, contents: typedContents(`inputs[${i}]`, tensor.datatype, data!) };
  });

  const binaryOutputAll = isObject(json.parameters) && json.parameters.binary_data_output === true;
  const outputs: { name: string }[] = [];
  const binaryOutputs = new Set<string>();
  if (json.outputs !== undefined) {
    if (!Array.isArray(json.outputs)) throw bad("outputs", "must be an array of {name}");
    json.outputs.forEach((o: unknown, i: number) => {
      if (!isObject(o) || typeof o.name !== "string") throw bad(`outputs[${i}].name`, "is required");
      outputs.push({ name: o.name });
      const flag = isObject(o.parameters) ? o.parameters.binary_data : undefined;
      if (flag === true || (flag === undefined && binaryOutputAll)) binaryOutputs.add(o.name);
    });
  }
  return {
    message: {
      modelName: model,
      modelVersion: version,
      id: (json.id as string | undefined) ?? "",
      inputs: tensors as InferRequestInit["inputs"],
      outputs,
      rawInputContents,
    },
    binaryOutputs: binaryOutputAll && outputs.length === 0 ? "all" : binaryOutputs,
  };
}

/** JSON values as the typed contents field of their datatype; other datatypes get none (and the service's error). */
function typedContents(field: string, datatype: string, data: unknown[]): ContentsInit | undefined {
  const numbers = () =>
    data.map((x, k) => {
      if (typeof x !== "number" || !Number.isFinite(x)) {
        if (!(datatype.startsWith("FP") && (x === "NaN" || x === "Infinity" || x === "-Infinity")))
          throw bad(`${field}.data[${k}]`, `must be a number for ${datatype}, got ${JSON.stringify(x)}`);
        return Number(x);
      }
      return x;
    });
  const integers = () =>
    numbers().map((x, k) => {
      if (!Number.isInteger(x)) throw bad(`${field}.data[${k}]`, `must be an integer for ${datatype}, got ${x}`);
      return x;
    });
  switch (datatype) {
    case "BOOL":
      return {
        boolContents: data.map((x, k) => {
          if (typeof x === "boolean") return x;
          if (x === 0 || x === 1) return x === 1;
          throw bad(`${field}.data[${k}]`, `must be true or false for BOOL, got ${JSON.stringify(x)}`);
        }),
      };
    case "INT8":
    case "INT16":
    case "INT32":
      return { intContents: integers() };
    case "UINT8":
    case "UINT16":
    case "UINT32":
      return { uintContents: integers() };
    case "INT64":
      return { int64Contents: integers().map(BigInt) };
    case "UINT64":
      return { uint64Contents: integers().map(BigInt) };
    case "FP32":
      return { fp32Contents: numbers() };
    case "FP64":
      return { fp64Contents: numbers() };
    default:
      return undefined;
  }
}

/** JSON values as raw little-endian bytes, for a request whose other inputs are binary. */
function toRaw(field: string, datatype: string, data: unknown[]): Uint8Array {
  const codec = CODECS[datatype];
  if (!codec) throw bad(`${field}.datatype`, `"${datatype}" is not supported (use one of ${Object.keys(CODECS).join(", ")})`);
  const contents = typedContents(field, datatype, data)!;
  const values = Object.values(contents)[0] as (number | bigint | boolean)[];
  const out = new Uint8Array(values.length * codec.bytes);
  const view = new DataView(out.buffer);
  values.forEach((x, k) => codec.write(view, k * codec.bytes, x));
  return out;
}

// ---- response ----

interface OutputShape {
  name?: string;
  datatype?: string;
  shape?: readonly bigint[];
  contents?: Partial<InferTensorContents>;
}
interface InferResponseShape {
  modelName?: string;
  modelVersion?: string;
  id?: string;
  outputs?: readonly OutputShape[];
  rawOutputContents?: readonly Uint8Array[];
}

/** JSON outputs, or the JSON followed by binary tensor data for the outputs asked for as binary. */
function sendInferResponse(res: ServerResponse, response: InferResponseShape, binaryOutputs: Set<string> | "all"): void {
  const chunks: Uint8Array[] = [];
  const outputs = (response.outputs ?? []).map((o, i) => {
    const raw = response.rawOutputContents?.[i];
    const tensor = { name: o.name, datatype: o.datatype, shape: (o.shape ?? []).map(Number) };
    const wantsBinary = binaryOutputs === "all" || binaryOutputs.has(o.name ?? "");
    if (wantsBinary) {
      const bytes = raw ?? toRaw(`outputs[${i}]`, o.datatype ?? "", contentValues(o.contents));
      chunks.push(bytes);
      return { ...tensor, parameters: { binary_data_size: bytes.byteLength } };
    }
    return { ...tensor, data: raw ? fromRaw(o.datatype ?? "", raw) : contentValues(o.contents).map(jsonValue) };
  });
  const header = Buffer.from(JSON.stringify({ model_name: response.modelName, model_version: response.modelVersion, id: response.id ?? "", outputs }));
  if (!chunks.length) {
    res.writeHead(200, { "content-type": "application/json", "content-length": header.length });
    res.end(header);
    return;
  }
  const body = Buffer.concat([header, ...chunks]);
  res.writeHead(200, { "content-type": "application/octet-stream", "inference-header-content-length": header.length, "content-length": body.length });
  res.end(body);
}

function contentValues(c: Partial<InferTensorContents> | undefined): (number | bigint | boolean)[] {
  if (!c) return [];
  for (const key of ["boolContents", "intContents", "int64Contents", "uintContents", "uint64Contents", "fp32Contents", "fp64Contents"] as const) {
    const v = c[key] as (number | bigint | boolean)[] | undefined;
    if (v?.length) return v;
  }
  return [];
}

function fromRaw(datatype: string, raw: Uint8Array): (number | boolean | string | null)[] {
  const codec = CODECS[datatype];
  if (!codec) throw new ServiceError(Code.INTERNAL, `cannot encode a ${datatype} output as JSON`);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  return Array.from({ length: raw.byteLength / codec.bytes }, (_, k) => jsonValue(codec.read(view, k * codec.bytes)));
}

/** 64-bit integers as JSON numbers (as Triton writes them); NaN and infinities as strings. */
function jsonValue(x: number | bigint | boolean): number | boolean | string | null {
  if (typeof x === "bigint") return Number(x);
  if (typeof x === "number" && !Number.isFinite(x)) return String(x);
  return x;
}

// ---- plumbing ----

/** The body, refused with 413 past `limit` bytes instead of buffered without bound. */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limit) throw new PayloadTooLarge(declared, limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new PayloadTooLarge(size, limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

class PayloadTooLarge extends ServiceError {
  constructor(size: number, limit: number) {
    super(Code.RESOURCE_EXHAUSTED, `the request body (${size} bytes or more) exceeds the ${limit}-byte limit`);
  }
}

function sendError(res: ServerResponse, err: ServiceError): void {
  const status = err instanceof PayloadTooLarge ? 413 : (HTTP_STATUS[err.code] ?? 500);
  if (status === 401) res.setHeader("www-authenticate", "Bearer");
  if (status === 429) res.setHeader("retry-after", "1");
  // The connection may still carry an unread body (a refused upload): close it after answering.
  if (status === 413 || status === 401 || status === 429) res.setHeader("connection", "close");
  sendJson(res, status, { error: err.message.length > 4096 ? `${err.message.slice(0, 4096)}…` : err.message });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { "content-type": "application/json", "content-length": text.length, "cache-control": "no-store" });
  res.end(text);
}

function sendEmpty(res: ServerResponse, status: number): void {
  res.writeHead(status, { "content-length": 0, "cache-control": "no-store" });
  res.end();
}
