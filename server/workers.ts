// `serve --workers N`: N serving event loops on one gRPC port, with node:cluster sharing the
// listening socket (the primary accepts connections and hands them to the workers round-robin;
// Node 20 has no SO_REUSEPORT). Each worker is a whole server: it follows the registry and
// hot-swaps on its own, and binds the port only once its models are loaded.
//
// The primary serves no gRPC. It supervises (a worker that dies is logged and restarted, with a
// backoff if it keeps dying), answers one /healthz for all workers, serves one /metrics (prom-client's
// AggregatorRegistry asks every worker for its registry and sums the series), and on SIGINT/SIGTERM
// tells every worker to drain (health NOT_SERVING, in-flight calls finish, logs flushed) and waits.
import cluster, { type Worker } from "node:cluster";
import { join } from "node:path";
import { AggregatorRegistry } from "prom-client";
import type { Runtime } from "../lib/runtime.js";
import { sendText } from "../lib/http.js";
import { httpGuard } from "./security.js";
import { MetricsRegistry } from "../lib/metrics.js";
import { defaultSpillDir, startServer, type ServerOptions } from "./server.js";

/** Tells a forked process which worker slot (1..N) it fills; stable across restarts. */
const WORKER_INDEX_ENV = "STREAMSERVE_SERVE_WORKER";
const STATUS = "streamserve:worker-status";
const STOP = "streamserve:worker-stop";

/** What a worker tells the primary whenever it changes. */
interface WorkerStatus {
  type: typeof STATUS;
  index: number;
  /** Bound and serving (models loaded, not draining). */
  ready: boolean;
  /** The version Recommend serves ("fallback" before any model). */
  version: string;
  port: number;
}

export interface WorkersOptions {
  /** Serving event loops (worker processes) to run. */
  workers: number;
  /** Options each worker's server starts with. */
  server: ServerOptions;
  /** Resolves when every worker should drain and the supervisor return. */
  stop: Promise<unknown>;
  /** How long the primary waits for draining workers before killing them. @default server drain timeout + 5000 ms */
  drainTimeoutMs?: number;
}

/** True in a process that `superviseWorkers` forked. */
export function isServingWorker(): boolean {
  return cluster.isWorker && process.env[WORKER_INDEX_ENV] !== undefined;
}

// ---------------------------------------------------------------- primary

interface Slot {
  index: number;
  worker?: Worker;
  status?: WorkerStatus;
  startedAt: number;
  everReady: boolean;
  backoffMs: number;
}

/** Runs N workers until `stop` resolves; returns the exit code. */
export async function superviseWorkers(runtime: Runtime, options: WorkersOptions): Promise<number> {
  const log = runtime.log.child({ part: "workers" });
  const model = runtime.config.modelName;
  // The primary's own series; the workers' (process metrics included) come through the aggregator.
  const own = new MetricsRegistry({ defaultMetrics: false });
  const restarts = own.counter("streamserve_serve_worker_restarts_total", "Serving workers that died and were restarted");
  const slots: Slot[] = Array.from({ length: options.workers }, (_, i) => ({ index: i + 1, startedAt: 0, everReady: false, backoffMs: 500 }));
  own.gauge("streamserve_serve_workers", "Serving workers by state (wanted, running, ready)", {
    labelNames: ["state"],
    collect: (g) => {
      g.set({ state: "wanted" }, slots.length);
      g.set({ state: "running" }, slots.filter((s) => s.worker).length);
      g.set({ state: "ready" }, slots.filter((s) => s.status?.ready).length);
    },
  });
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  let fatal: string | undefined;
  let announcedPort = false;
  let wake: () => void = () => undefined;
  const changed = () => wake();

  const fork = (slot: Slot) => {
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(slot.index) });
    slot.worker = worker;
    slot.status = undefined;
    slot.startedAt = Date.now();
    worker.on("message", (msg: { type?: string }) => {
      if (msg?.type !== STATUS) return;
      const status = msg as WorkerStatus;
      if (status.ready && !slot.status?.ready) log.info({ worker: slot.index, pid: worker.process.pid, version: status.version }, "serving worker ready");
      if (status.ready && !slot.everReady) slot.everReady = true;
      if (status.ready && !announcedPort) {
        announcedPort = true;
        log.info({ port: status.port, workers: slots.length, model }, "gRPC listening");
      }
      slot.status = status;
      changed();
    });
    worker.once("exit", (code, signal) => {
      slot.worker = undefined;
      slot.status = undefined;
      changed();
      if (stopping) return;
      if (!slot.everReady && !slots.some((s) => s.everReady)) {
        // No worker ever started (a port in use, a bad flag): restarting would only repeat it.
        fatal = `serving worker ${slot.index} exited (code ${code ?? signal}) before any worker was ready`;
        log.error({ worker: slot.index, code, signal }, `${fatal}; stopping`);
        changed();
        return;
      }
      const lived = Date.now() - slot.startedAt;
      slot.backoffMs = lived > 10_000 ? 500 : Math.min(slot.backoffMs * 2, 30_000);
      restarts.inc();
      log.error({ worker: slot.index, pid: worker.process.pid, code, signal, restartInMs: slot.backoffMs }, "serving worker died; restarting it");
      setTimeout(() => {
        if (!stopping) fork(slot);
      }, slot.backoffMs).unref();
    });
  };

  // With a token, the primary's HTTP endpoints need it as a single server's do (/healthz aside).
  const guard = httpGuard(options.server.security);
  if (guard) runtime.http.setGuard(guard);
  runtime.http.route("GET", "/healthz", (_req, res) => {
    const ready = slots.filter((s) => s.status?.ready);
    // Serving while any worker is: connections only reach workers that are bound, and bound means ready.
    const ok = !stopping && ready.length > 0;
    const version = ready[0]?.status?.version ?? "fallback";
    const body = {
      status: ok ? "SERVING" : "NOT_SERVING",
      model,
      version,
      workers: slots.map((s) => ({ worker: s.index, pid: s.worker?.process.pid ?? null, ready: s.status?.ready ?? false, version: s.status?.version ?? null })),
    };
    sendText(res, ok ? 200 : 503, JSON.stringify(body), "application/json");
  });
  runtime.http.route("GET", "/metrics", async (_req, res) => {
    const [workers, mine] = await Promise.all([aggregator.clusterMetrics(), own.render()]);
    sendText(res, 200, workers + mine, own.contentType);
  });

  log.info({ workers: slots.length }, "starting serving workers");
  for (const slot of slots) fork(slot);
  await runtime.listenHttp();

  let stopReason: unknown;
  void options.stop.then((r) => {
    stopReason = r;
    changed();
  });
  while (stopReason === undefined && !fatal) await new Promise<void>((r) => (wake = r));

  stopping = true;
  log.info({ reason: fatal ?? stopReason }, "draining every serving worker");
  const running = slots.flatMap((s) => (s.worker ? [s.worker] : []));
  // Resent until each exits: a worker still booting has no listener yet and would miss one message.
  const tellStop = () => {
    for (const w of running) if (w.isConnected()) w.send({ type: STOP }, () => undefined);
  };
  tellStop();
  const resend = setInterval(tellStop, 500);
  const limitMs = options.drainTimeoutMs ?? (options.server.drainTimeoutMs ?? 10_000) + 5_000;
  const exited = Promise.all(running.map((w) => (w.isDead() ? undefined : new Promise((r) => w.once("exit", r)))));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), limitMs)))]);
  clearTimeout(timer);
  clearInterval(resend);
  if (timedOut) {
    log.warn({ afterMs: limitMs }, "workers still draining: killing them");
    for (const w of running) if (!w.isDead()) w.process.kill("SIGKILL");
  }
  log.info("serving workers stopped");
  return fatal ? 1 : 0;
}

// ---------------------------------------------------------------- worker

/** The serving side of one worker process: a whole server, reporting to the primary. */
export async function runServingWorker(runtime: Runtime, options: ServerOptions): Promise<number> {
  const index = Number(process.env[WORKER_INDEX_ENV]);
  const rt: Runtime = { ...runtime, log: runtime.log.child({ worker: index }) };
  // Answer the primary's AggregatorRegistry with this process's registry.
  AggregatorRegistry.setRegistries([runtime.metrics.registry]);
  new AggregatorRegistry();

  let stopping = false;
  let signals = 0;
  const stop = new Promise<string>((resolve) => {
    // Ctrl-C reaches every process of the group; the primary also sends STOP. Drain once; a second
    // signal ends the worker at once (as in a single-process serve).
    const onSignal = (signal: NodeJS.Signals) => {
      if (++signals > 1) process.exit(signal === "SIGINT" ? 130 : 143);
      resolve(signal);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    process.on("message", (msg: { type?: string }) => msg?.type === STOP && resolve("primary"));
    // (A worker whose primary is killed outright is ended by node:cluster itself.)
  });

  // Worker 1 shares the single-process spill directory; each other worker has its own.
  const spillDir = index === 1 ? defaultSpillDir(runtime.config) : join(defaultSpillDir(runtime.config), `worker-${index}`);
  const server = await startServer(rt, { ...options, http: false, listenWhenReady: true, spillDir });
  let last = "";
  const report = () => {
    const status: WorkerStatus = {
      type: STATUS,
      index,
      ready: server.models.ready && !stopping,
      version: server.models.servedVersion(runtime.config.modelName) ?? "fallback",
      port: server.port,
    };
    const key = JSON.stringify(status);
    if (key !== last && process.connected) {
      last = key;
      process.send?.(status);
    }
  };
  report();
  const timer = setInterval(report, 250);
  const why = await stop;
  stopping = true;
  report();
  rt.log.info({ reason: why }, "stopping");
  await server.stop();
  clearInterval(timer);
  // The IPC channel would keep this process alive after the command returns; disconnecting through
  // cluster tells the primary this exit is intended (a bare process.disconnect() exits at once).
  if (process.connected) cluster.worker?.disconnect();
  return 0;
}
