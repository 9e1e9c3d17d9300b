// Glue between protobuf-es service descriptors and @grpc/grpc-js: service definitions whose
// (de)serializers are toBinary/fromBinary, unary handlers that receive a call context (cancelled,
// deadline, an AbortSignal on demand) and throw ServiceError, and promise-based clients. Every
// streamserve service and client goes through here.
import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
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
  /**
   * Fires when the client goes away, the deadline passes or the server shuts down. Made on first
   * use: a handler that only needs to check should read `cancelled`, which costs nothing.
   */
  readonly signal: AbortSignal;
  /** The client went away, the deadline passed or the server is shutting down. */
  readonly cancelled: boolean;
  readonly metadata: grpc.Metadata;
  /** "/package.Service/Method". */
  readonly path: string;
  /** Milliseconds since epoch, or Infinity. */
  readonly deadline: number;
}

/**
 * One call's context. Most handlers never wait on the signal, so the AbortController, its
 * listeners, the deadline timer and the DOMException an abort allocates exist only once a handler
 * reads `signal`; `cancelled` asks grpc-js, the clock and the shutdown signal directly.
 */
class UnaryCallContext implements CallContext {
  private controller?: AbortController;
  private timer?: NodeJS.Timeout;
  private done = false;
  readonly metadata: grpc.Metadata;
  readonly deadline: number;

  constructor(
    private readonly call: grpc.ServerUnaryCall<unknown, unknown>,
    readonly path: string,
    private readonly shutdown: AbortSignal | undefined,
    private readonly watched: Set<UnaryCallContext>,
  ) {
    this.metadata = call.metadata;
    this.deadline = deadlineMs(call.getDeadline());
  }

  get cancelled(): boolean {
    return (
      this.call.cancelled ||
      this.shutdown?.aborted === true ||
      (this.deadline !== Infinity && Date.now() >= this.deadline) ||
      this.controller?.signal.aborted === true
    );
  }

  get signal(): AbortSignal {
    if (this.controller) return this.controller.signal;
    this.controller = new AbortController();
    if (this.cancelled) {
      this.controller.abort();
    } else if (!this.done) {
      // Bound here, not per call: most calls never get this far.
      const onAbort = (this.onAbort = () => this.abort());
      this.call.once("cancelled", onAbort);
      this.watched.add(this);
      if (this.deadline !== Infinity) this.timer = setTimeout(onAbort, Math.max(0, this.deadline - Date.now()));
    }
    return this.controller.signal;
  }

  private onAbort?: () => void;

  abort(): void {
    this.controller?.abort();
  }

  /** The call is answered: nothing may fire for it any more. */
  end(): void {
    this.done = true;
    if (!this.controller) return;
    if (this.timer) clearTimeout(this.timer);
    if (this.onAbort) this.call.removeListener("cancelled", this.onAbort);
    this.watched.delete(this);
  }
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

/**
 * A reply a handler encoded itself (a hand-written encoder on the request path); sent as it is.
 * The handler's encoder must write exactly what toBinary would for the method's output.
 */
export class EncodedReply {
  constructor(readonly bytes: Uint8Array) {}
}

/** The message's bytes as a Buffer over the same memory (no copy). */
const asBuffer = (b: Uint8Array) => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

function serializer(desc: DescMessage) {
  return (msg: MessageShape<DescMessage> | EncodedReply) => asBuffer(msg instanceof EncodedReply ? msg.bytes : toBinary(desc, msg));
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

/** Handlers of a service's unary methods; with `Encoded` = EncodedReply, a handler may also answer with bytes it encoded. */
export type UnaryHandlers<S extends GenServiceMethods, Encoded = never> = {
  [K in keyof UnaryMethods<S>]: (
    request: MessageShape<S[K]["input"]>,
    ctx: CallContext,
  ) => Promise<MessageInitShape<S[K]["output"]> | Encoded> | MessageInitShape<S[K]["output"]> | Encoded;
};

/** Runs around every unary call: admission (auth, load shedding) before, accounting after. */
export interface CallHooks {
  /** Throw a ServiceError to refuse the call. Returns a function called when the call ends. */
  begin?(path: string, metadata: grpc.Metadata): ((code: grpc.status) => void) | void;
}

/** grpc-js's own deadline timer can fire (and cancel the call) a little before Date.now() reaches the deadline. */
const DEADLINE_SLACK_MS = 5;

/** Builds grpc-js handlers for a service's unary methods. */
export function unaryImplementation<S extends GenServiceMethods>(
  service: GenService<S>,
  handlers: UnaryHandlers<S, EncodedReply>,
  hooks: CallHooks = {},
  shutdown?: AbortSignal,
): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  // Calls whose handler holds a signal; one shutdown listener aborts them all.
  const watched = new Set<UnaryCallContext>();
  shutdown?.addEventListener("abort", () => watched.forEach((c) => c.abort()), { once: true });
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
      const ctx = new UnaryCallContext(call, path, shutdown, watched);
      const ok = (out: unknown) => {
        let response: unknown;
        try {
          response = out instanceof EncodedReply ? out : create(m.output, out as MessageInitShape<DescMessage>);
        } catch (err) {
          return failed(err);
        }
        ctx.end();
        finish(null, response);
      };
      const failed = (err: unknown) => {
        ctx.end();
        // A handler that gives up because its call ended answers for why, not with INTERNAL.
        if (Date.now() >= ctx.deadline - DEADLINE_SLACK_MS) finish(new ServiceError(Code.DEADLINE_EXCEEDED, "deadline exceeded"));
        else if (ctx.cancelled && !(err instanceof ServiceError)) finish(new ServiceError(Code.CANCELLED, "the call was cancelled", { cause: err }));
        else finish(ServiceError.from(err));
      };
      try {
        const out = handler(request, ctx);
        if (typeof (out as PromiseLike<unknown> | undefined)?.then === "function") (out as PromiseLike<unknown>).then(ok, failed);
        else ok(out);
      } catch (err) {
        failed(err);
      }
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
