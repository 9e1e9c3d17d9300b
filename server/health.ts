// grpc.health.v1.Health, the standard health checking protocol, so Kubernetes probes, load
// balancers, grpc_health_probe, grpcurl and buf curl can ask whether the server is serving.
//
// The server sets statuses as it goes (SERVING once a model or the fallback is ready, every service
// NOT_SERVING while draining); Check answers the current status, Watch streams it. Usage:
//
//   const health = new HealthService();
//   server.addService(serviceDefinition(Health), health.implementation(shutdownSignal));
//   health.setStatus("", ServingStatus.SERVING);
import { create, isMessage } from "@bufbuild/protobuf";
import { Code, ServiceError, grpc, unaryImplementation } from "../lib/grpc.js";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "../gen/grpc/health/v1/health_pb.js";

export { Health, ServingStatus };

/** The service name that stands for the whole server. */
export const WHOLE_SERVER = "";

type WatchCall = grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>;

/** One open Watch stream: what it last sent and whether it is waiting for the client to read. */
interface Watcher {
  call: WatchCall;
  service: string;
  sent: ServingStatus | undefined;
  waitingForDrain: boolean;
}

export class HealthService {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Set<Watcher>();

  /**
   * @param initial Statuses known from the start. The whole server ("") is always known and starts
   * NOT_SERVING unless given here: a server is not ready until it says so.
   */
  private readonly maxWatchers: number;

  constructor(
    initial: Record<string, ServingStatus> = {},
    options: { /** Open Watch streams before new ones get RESOURCE_EXHAUSTED. @default 1000 */ maxWatchers?: number } = {},
  ) {
    this.maxWatchers = options.maxWatchers ?? 1000;
    this.statuses.set(WHOLE_SERVER, ServingStatus.NOT_SERVING);
    for (const [service, status] of Object.entries(initial)) this.statuses.set(service, status);
  }

  /** Sets one service's status ("" = the whole server) and tells its watchers if it changed. */
  setStatus(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const w of this.watchers) if (w.service === service) this.push(w);
  }

  /** Sets every known service, the whole server included (NOT_SERVING while draining). */
  setAll(status: ServingStatus): void {
    for (const service of [...this.statuses.keys()]) this.setStatus(service, status);
  }

  /** The status Check would answer; undefined for a service nobody registered. */
  status(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Open Watch streams (for metrics and tests). */
  get watching(): number {
    return this.watchers.size;
  }

  /**
   * grpc-js handlers for Check and Watch. When `shutdown` fires, every Watch stream ends with OK:
   * a Watch never ends on its own, and grpc-js's tryShutdown waits for every open call, so without
   * this a single watching load balancer would hold the server up forever.
   */
  implementation(shutdown?: AbortSignal): grpc.UntypedServiceImplementation {
    const unary = unaryImplementation(Health, {
      check: (req) => {
        const status = this.statuses.get(req.service);
        // The spec: Check on a service the server does not know is NOT_FOUND, not SERVICE_UNKNOWN.
        if (status === undefined) throw new ServiceError(Code.NOT_FOUND, `unknown service "${req.service}"`);
        return { status };
      },
    });
    return { ...unary, watch: (call: WatchCall) => this.watch(call, shutdown) };
  }

  private watch(call: WatchCall, shutdown: AbortSignal | undefined): void {
    // lib/grpc.ts decodes leniently (so unary calls can answer INVALID_ARGUMENT); anything that is
    // not a HealthCheckRequest here is a body that failed to decode.
    if (!isMessage(call.request, HealthCheckRequestSchema)) {
      call.emit("error", { code: Code.INVALID_ARGUMENT, details: "request is not a valid grpc.health.v1.HealthCheckRequest" });
      return;
    }
    // Watch needs no token, so the number of open streams is what bounds its memory.
    if (this.watchers.size >= this.maxWatchers) {
      call.emit("error", {
        code: Code.RESOURCE_EXHAUSTED,
        details: `too many Health/Watch streams open (limit ${this.maxWatchers}); poll Check or retry later`,
      });
      return;
    }
    const w: Watcher = { call, service: call.request.service, sent: undefined, waitingForDrain: false };
    if (shutdown?.aborted) {
      this.push(w);
      call.end();
      return;
    }
    const stop = () => {
      if (!this.watchers.delete(w)) return;
      shutdown?.removeEventListener("abort", endStream);
      call.off("drain", onDrain);
    };
    const endStream = () => {
      stop();
      if (!call.cancelled) call.end();
    };
    const onDrain = () => {
      w.waitingForDrain = false;
      this.push(w);
    };
    this.watchers.add(w);
    call.on("drain", onDrain);
    call.once("cancelled", stop);
    shutdown?.addEventListener("abort", endStream, { once: true });
    this.push(w);
  }

  /**
   * Sends the watcher its service's current status unless that is what it last sent. A client that
   * does not read gets no queue of stale statuses: while the stream waits for "drain", changes only
   * update the map, and the latest one is sent when it drains (the spec allows dropping the rest).
   */
  private push(w: Watcher): void {
    if (w.waitingForDrain || w.call.cancelled) return;
    const status = this.statuses.get(w.service) ?? ServingStatus.SERVICE_UNKNOWN;
    if (status === w.sent) return;
    w.sent = status;
    if (!w.call.write(create(HealthCheckResponseSchema, { status }))) w.waitingForDrain = true;
  }
}
