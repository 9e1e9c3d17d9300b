// Bounds on what a gRPC client can hold on the server, below the handlers: connections, streams
// per connection, idle and old connections (GOAWAY), requests that never finish arriving, and
// responses that a client does not read.
//
// grpc-js covers streams per connection, idle and maximum connection age through its server
// options. The rest is here:
// - connections: grpc-js has no limit, so the server listens on its own net.Server (which has
//   `maxConnections`) and hands each socket to grpc-js through `createConnectionInjector`;
// - a call whose request has not fully arrived within `requestReadTimeoutMs` is refused, and a
//   call the server has answered stops reading from its client (RST_STREAM): a 0x7fffffff length
//   prefix is refused at once instead of being read (and discarded) for gigabytes;
// - a response stays counted (calls in flight, bytes held) until it has left the server, and one
//   a client leaves unread for `responseWriteTimeoutMs` is cancelled, freeing its buffers.
//
// The stream of a call is reached through grpc-js's innermost call object (`call.stream`), which
// is not public API: `guardedStream` checks its shape, and test/server/transport-limits.test.ts
// fails if a grpc-js upgrade moves it.
import { createServer, type Server as NetServer, type Socket } from "node:net";
import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { grpc, wireSize } from "../lib/grpc.js";
import type { ServingLimits } from "./limits.js";

export type TransportLimits = Pick<
  ServingLimits,
  | "maxConnections"
  | "maxStreamsPerConnection"
  | "connectionIdleMs"
  | "connectionAgeMs"
  | "connectionAgeGraceMs"
  | "requestReadTimeoutMs"
  | "responseWriteTimeoutMs"
  | "maxMessageBytes"
>;

/** grpc-js server options for the limits it enforces itself. */
export function grpcServerOptions(limits: TransportLimits, guard: CallGuard): grpc.ServerOptions {
  return {
    "grpc.max_receive_message_length": limits.maxMessageBytes,
    "grpc.max_send_message_length": limits.maxMessageBytes,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.max_concurrent_streams": limits.maxStreamsPerConnection,
    "grpc.max_connection_idle_ms": limits.connectionIdleMs,
    "grpc.max_connection_age_ms": limits.connectionAgeMs,
    "grpc.max_connection_age_grace_ms": limits.connectionAgeGraceMs,
    interceptors: [guard.interceptor],
    // Nothing here serves channelz; its per-call and per-message accounting (timestamps, counters) is pure cost.
    "grpc.enable_channelz": 0,
  };
}

interface Tracked {
  stream: ServerHttp2Stream;
  /** Request and response bytes the call holds. */
  bytes: number;
  closed: boolean;
  onClosed: (() => void)[];
  /** A unary call (it holds an admission slot until closed). */
  unary: boolean;
  /** Cancelled by `reclaim`, its close still to come. */
  releasing: boolean;
}

/** Per-call accounting: what each call's stream still holds, and when it is gone. */
export class CallGuard {
  private readonly calls = new WeakMap<grpc.Metadata, Tracked>();
  private held = 0;
  private open = 0;
  /** Calls answered whose answer has not fully left yet, oldest first: the clients not reading. */
  private readonly unread = new Set<Tracked>();
  private releasingBytes = 0;
  private releasingCalls = 0;

  /**
   * @param authorize Throws a ServiceError to refuse a streaming call (reflection, Health/Watch)
   * from its metadata; unary calls are admitted by lib/grpc.ts's hooks.
   */
  constructor(
    private readonly limits: Pick<TransportLimits, "requestReadTimeoutMs" | "responseWriteTimeoutMs">,
    private readonly authorize: (path: string, metadata: grpc.Metadata) => void = () => undefined,
  ) {}

  /** Request and response bytes of calls whose stream has not closed yet (answers unread included). */
  get heldBytes(): number {
    return this.held;
  }

  /** Calls whose stream is open. */
  get openCalls(): number {
    return this.open;
  }

  /** Runs `fn` once the call's stream has closed (at once if it has, or if it is not tracked). */
  whenClosed(metadata: grpc.Metadata, fn: () => void): void {
    const t = this.calls.get(metadata);
    if (!t || t.closed) fn();
    else t.onClosed.push(fn);
  }

  /**
   * Makes room for a new call: while the calls in flight or the bytes they hold are over their
   * limits, the oldest answers whose clients have not read them are cancelled (those clients are
   * the ones holding memory; a client that reads is never affected). Returns the calls and bytes
   * that remain once those cancellations complete.
   */
  reclaim(inflight: number, limits: { maxInflight: number; maxHeldBytes: number }): { calls: number; bytes: number } {
    for (const t of this.unread) {
      if (this.held - this.releasingBytes <= limits.maxHeldBytes && inflight - this.releasingCalls < limits.maxInflight) break;
      if (t.releasing || t.closed) continue;
      t.releasing = true;
      this.releasingBytes += t.bytes;
      if (t.unary) this.releasingCalls++;
      this.reclaimed++;
      t.stream.close(h2.NGHTTP2_CANCEL);
    }
    return { calls: inflight - this.releasingCalls, bytes: this.held - this.releasingBytes };
  }

  /** Answers cancelled by `reclaim` so far. */
  reclaimed = 0;

  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    const stream = guardedStream(call);
    if (!stream) return new grpc.ServerInterceptingCall(call);
    const t: Tracked = { stream, bytes: 0, closed: false, onClosed: [], unary: !method.requestStream && !method.responseStream, releasing: false };
    this.open++;
    let halfClosed = false;
    let answered = false;
    let writeTimer: NodeJS.Timeout | undefined;
    let readTimer: NodeJS.Timeout | undefined = setTimeout(() => {
      // Whatever is still arriving is not a request a client is waiting on.
      call.sendStatus({
        code: grpc.status.DEADLINE_EXCEEDED,
        details: `the request did not arrive within ${this.limits.requestReadTimeoutMs} ms`,
        metadata: null,
      });
    }, this.limits.requestReadTimeoutMs);
    readTimer.unref();
    const stopReadTimer = () => {
      if (readTimer) clearTimeout(readTimer);
      readTimer = undefined;
    };
    const hold = (bytes: number) => {
      t.bytes += bytes;
      this.held += bytes;
    };
    stream.once("close", () => {
      stopReadTimer();
      if (writeTimer) clearTimeout(writeTimer);
      t.closed = true;
      this.held -= t.bytes;
      this.unread.delete(t);
      if (t.releasing) {
        this.releasingBytes -= t.bytes;
        if (t.unary) this.releasingCalls--;
      }
      this.open--;
      for (const fn of t.onClosed.splice(0)) fn();
    });
    // Answered while the client is still sending (a refused oversized message, whose status
    // grpc-js sends without passing through interceptors): stop reading. On the next turn, after
    // the status has been queued, so the client sees it rather than a bare reset.
    const stopReading = () => {
      if (halfClosed || stream.destroyed || stream.closed) return;
      setImmediate(() => {
        if (!stream.destroyed && !stream.closed) stream.close(h2.NGHTTP2_NO_ERROR);
      });
    };
    // A client that leaves its response unread does not hold it (or its call slot) forever.
    const armWriteTimer = () => {
      if (writeTimer || stream.closed) return;
      this.unread.add(t);
      writeTimer = setTimeout(() => {
        writeTimer = undefined;
        if (stream.destroyed || stream.closed) return;
        if (answered || stream.writableLength > 0) stream.close(h2.NGHTTP2_CANCEL);
      }, this.limits.responseWriteTimeoutMs);
      writeTimer.unref();
    };
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        this.calls.set(metadata, t);
        if (method.requestStream || method.responseStream) {
          try {
            this.authorize(method.path, metadata);
          } catch (err) {
            const e = err as { code?: number; message?: string };
            call.sendStatus({ code: e.code ?? grpc.status.UNAUTHENTICATED, details: e.message ?? "unauthenticated", metadata: null });
            return;
          }
        }
        next(metadata);
      })
      // The first message is the request of a unary call and the opening of a stream's.
      .withOnReceiveMessage((message, next) => {
        stopReadTimer();
        hold(wireSize(message) ?? 0);
        next(message);
      })
      .withOnReceiveHalfClose((next) => {
        stopReadTimer();
        halfClosed = true;
        next();
      })
      .withOnCancel(() => {
        stopReadTimer();
        stopReading();
      })
      .build();
    const responder = new grpc.ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendMessage((message, next) => {
        const before = stream.writableLength;
        next(message);
        hold(Math.max(0, stream.writableLength - before));
        // A unary call's status waits for its message to be written, so the timer starts here.
        if (stream.writableLength > 0) armWriteTimer();
      })
      .withSendStatus((status, next) => {
        stopReadTimer();
        answered = true;
        next(status);
        stopReading();
        armWriteTimer();
      })
      .build();
    return new grpc.ServerInterceptingCall(call, responder);
  };
}

/** The HTTP/2 stream under grpc-js's innermost call object, if it still has the shape we know. */
export function guardedStream(call: unknown): ServerHttp2Stream | undefined {
  const stream = (call as { stream?: Partial<ServerHttp2Stream> } | undefined)?.stream;
  if (stream && typeof stream.close === "function" && typeof stream.once === "function" && "writableLength" in stream && "readableEnded" in stream) {
    return stream as ServerHttp2Stream;
  }
  return undefined;
}

export interface GrpcListener {
  port: number;
  /** Stops accepting connections (grpc-js shutdown then closes the sessions). */
  close(): void;
  /** Also closes every connection now. */
  destroy(): void;
  /** TCP connections open now. */
  connections(): number;
}

/**
 * Listens on `host:port` with at most `maxConnections` TCP connections (more are closed at once)
 * and gives each accepted socket to the grpc-js server.
 */
export async function listenGrpc(
  server: grpc.Server,
  host: string,
  port: number,
  credentials: grpc.ServerCredentials,
  limits: Pick<TransportLimits, "maxConnections" | "requestReadTimeoutMs">,
): Promise<GrpcListener> {
  const injector = server.createConnectionInjector(credentials);
  const sockets = new Set<Socket>();
  const net: NetServer = createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    // A connection that never sends a byte would never become an HTTP/2 session that grpc-js
    // times out, and once handed over it cannot be closed from here: it is handed over only once
    // it speaks (the first bytes are put back for the HTTP/2 or TLS layer to read).
    const silent = setTimeout(() => socket.destroy(), limits.requestReadTimeoutMs);
    silent.unref();
    socket.once("data", (first) => {
      clearTimeout(silent);
      socket.pause();
      socket.unshift(first);
      injector.injectConnection(socket);
    });
  });
  net.maxConnections = limits.maxConnections;
  const bound = await new Promise<number>((resolve, reject) => {
    net.once("error", reject);
    // "[::1]" style hosts from --host: net wants them bare.
    net.listen(port, host.replace(/^\[(.*)\]$/, "$1"), () => {
      net.off("error", reject);
      const addr = net.address();
      resolve(typeof addr === "object" && addr ? addr.port : port);
    });
  });
  return {
    port: bound,
    close() {
      net.close();
    },
    destroy() {
      net.close();
      injector.destroy();
      for (const s of sockets) s.destroy();
    },
    connections: () => sockets.size,
  };
}
