// Glue between protobuf-es service descriptors and @grpc/grpc-js: service definitions whose
// (de)serializers are toBinary/fromBinary, unary handlers that receive an AbortSignal and throw
// ServiceError, and promise-based clients. Every streamserve service and client goes through here.
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type DescMethod, type DescService, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";

export { grpc };
export const Code = grpc.status;

/** The one error type handlers throw: a gRPC status code and a message a caller can act on. */
export class ServiceError extends Error {
  override name = "ServiceError";
  constructor(
    readonly code: grpc.status,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Turns anything thrown into a ServiceError; unknown failures become INTERNAL. */
  static from(reason: unknown): ServiceError {
    if (reason instanceof ServiceError) return reason;
    const r = reason as { code?: unknown; details?: unknown; message?: unknown };
    if (typeof r?.code === "number" && r.code in grpc.status) return new ServiceError(r.code, String(r.details ?? r.message ?? ""), { cause: reason });
    if (isAbort(reason)) return new ServiceError(Code.CANCELLED, "the call was cancelled", { cause: reason });
    return new ServiceError(Code.INTERNAL, reason instanceof Error ? reason.message : String(reason), { cause: reason });
  }
}

export const invalidArgument = (field: string, problem: string) => new ServiceError(Code.INVALID_ARGUMENT, `${field}: ${problem}`);

function isAbort(e: unknown): boolean {
  return (e as { name?: string })?.name === "AbortError";
}

/** What a handler knows about its call. */
export interface CallContext {
  /** Fires when the client goes away, the deadline passes or the server shuts down. */
  signal: AbortSignal;
  metadata: grpc.Metadata;
  /** "/package.Service/Method". */
  path: string;
  /** Milliseconds since epoch, or Infinity. */
  deadline: number;
}

/**
 * A request body that failed to decode, or that a precheck refused before decoding; the handler
 * wrapper answers it with INVALID_ARGUMENT (or the precheck's error).
 */
class Malformed {
  constructor(
    readonly typeName: string,
    readonly error: unknown,
    readonly refusal?: ServiceError,
  ) {}
}

/** Looks at a request's bytes before they are decoded; throws a ServiceError to refuse the call. */
export type Precheck = (bytes: Uint8Array) => void;

function serializer(desc: DescMessage) {
  return (msg: MessageShape<DescMessage>) => Buffer.from(toBinary(desc, msg));
}

/** Encoded size of each decoded request, for servers that budget the memory calls hold. */
const wireSizes = new WeakMap<object, number>();

/** The size in bytes a request had on the wire, if this module decoded it. */
export function wireSize(message: unknown): number | undefined {
  return typeof message === "object" && message !== null ? wireSizes.get(message) : undefined;
}

function deserializer(desc: DescMessage, lenient: boolean, precheck?: Precheck) {
  return (bytes: Buffer) => {
    if (precheck) {
      try {
        precheck(bytes);
      } catch (err) {
        return new Malformed(desc.typeName, err, ServiceError.from(err));
      }
    }
    try {
      const message = fromBinary(desc, bytes);
      wireSizes.set(message, bytes.length);
      return message;
    } catch (err) {
      // grpc-js turns a throwing deserializer into INTERNAL; callers deserve INVALID_ARGUMENT.
      if (lenient) return new Malformed(desc.typeName, err);
      throw err;
    }
  };
}

/** @param prechecks By method local name (`modelInfer`): checks run on the request bytes before decoding. */
export function serviceDefinition(service: DescService, prechecks: Record<string, Precheck> = {}): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      requestSerialize: serializer(m.input),
      requestDeserialize: deserializer(m.input, true, prechecks[m.localName]),
      responseSerialize: serializer(m.output),
      responseDeserialize: deserializer(m.output, false),
      originalName: m.name,
    } as grpc.MethodDefinition<unknown, unknown>;
  }
  return def as grpc.ServiceDefinition;
}

type UnaryMethods<S extends GenServiceMethods> = {
  [K in keyof S as S[K]["methodKind"] extends "unary" ? K : never]: S[K];
};

export type UnaryHandlers<S extends GenServiceMethods> = {
  [K in keyof UnaryMethods<S>]: (
    request: MessageShape<S[K]["input"]>,
    ctx: CallContext,
  ) => Promise<MessageInitShape<S[K]["output"]>> | MessageInitShape<S[K]["output"]>;
};

/** Runs around every unary call: admission (auth, load shedding) before, accounting after. */
export interface CallHooks {
  /** Throw a ServiceError to refuse the call. Returns a function called when the call ends. */
  begin?(path: string, metadata: grpc.Metadata): ((code: grpc.status) => void) | void;
}

/** Builds grpc-js handlers for a service's unary methods. */
export function unaryImplementation<S extends GenServiceMethods>(
  service: GenService<S>,
  handlers: UnaryHandlers<S>,
  hooks: CallHooks = {},
  shutdown?: AbortSignal,
): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  for (const m of (service as unknown as DescService).methods) {
    const handler = (handlers as Record<string, (req: unknown, ctx: CallContext) => unknown>)[m.localName];
    if (!handler || m.methodKind !== "unary") continue;
    const path = `/${(service as unknown as DescService).typeName}/${m.name}`;
    impl[m.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      let end: ((code: grpc.status) => void) | void = undefined;
      const finish = (err: ServiceError | null, response?: unknown) => {
        end?.(err ? err.code : Code.OK);
        // Status details travel in an HTTP/2 header: an echo of a huge field would exceed the
        // peer's header limit and the call would never complete.
        if (err) callback({ code: err.code, details: truncate(err.message, 1024) });
        else callback(null, response);
      };
      try {
        end = hooks.begin?.(path, call.metadata);
      } catch (err) {
        finish(ServiceError.from(err));
        return;
      }
      const request = call.request;
      if (request instanceof Malformed) {
        if (request.refusal) return finish(request.refusal);
        finish(new ServiceError(Code.INVALID_ARGUMENT, `request is not a valid ${request.typeName}: ${(request.error as Error)?.message ?? request.error}`));
        return;
      }
      const controller = new AbortController();
      const deadline = deadlineMs(call.getDeadline());
      const abort = () => controller.abort();
      call.once("cancelled", abort);
      shutdown?.addEventListener("abort", abort, { once: true });
      const timer = Number.isFinite(deadline) ? setTimeout(abort, Math.max(0, deadline - Date.now())) : undefined;
      const ctx: CallContext = { signal: controller.signal, metadata: call.metadata, path, deadline };
      Promise.resolve()
        .then(() => handler(request, ctx))
        .then(
          (out) => finish(null, create(m.output, out as MessageInitShape<DescMessage>)),
          (err) => finish(controller.signal.aborted && Date.now() >= deadline ? new ServiceError(Code.DEADLINE_EXCEEDED, "deadline exceeded") : ServiceError.from(err)),
        )
        .finally(() => {
          if (timer) clearTimeout(timer);
          shutdown?.removeEventListener("abort", abort);
        });
    };
  }
  return impl;
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length - max} more characters)`;
}

function deadlineMs(d: grpc.Deadline): number {
  if (d instanceof Date) return d.getTime();
  return typeof d === "number" && d > 0 && Number.isFinite(d) ? d : Infinity;
}

// ---- clients ----

export type Client<S extends GenServiceMethods> = {
  [K in keyof UnaryMethods<S>]: (
    request: MessageInitShape<S[K]["input"]>,
    options?: { deadlineMs?: number; metadata?: grpc.Metadata },
  ) => Promise<MessageShape<S[K]["output"]>>;
} & { close(): void; raw: grpc.Client };

/** A promise-based client for a service's unary methods. */
export function createServiceClient<S extends GenServiceMethods>(
  service: GenService<S>,
  address: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options: grpc.ClientOptions = {},
): Client<S> {
  const desc = service as unknown as DescService;
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(desc), desc.name);
  const raw = new Ctor(address, credentials, options);
  const client: Record<string, unknown> = { raw, close: () => raw.close() };
  for (const m of desc.methods as DescMethod[]) {
    if (m.methodKind !== "unary") continue;
    client[m.localName] = (request: MessageInitShape<DescMessage>, opts: { deadlineMs?: number; metadata?: grpc.Metadata } = {}) =>
      new Promise((resolve, reject) => {
        const callOptions: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
        (raw as unknown as Record<string, (...a: unknown[]) => void>)[m.localName]!.call(
          raw,
          create(m.input, request),
          opts.metadata ?? new grpc.Metadata(),
          callOptions,
          (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)),
        );
      });
  }
  return client as Client<S>;
}
