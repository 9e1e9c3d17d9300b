// One part of the platform in a child process, supervised: `streamserve up` runs its analytics
// (embedded ClickHouse, sink, trainer, monitor, dashboard queries) this way, so their CPU and
// event-loop time never stall the gRPC server. Both sides of the protocol live here:
//
//   parent  superviseChild(): forks the module, sends it its start message, calls its methods over
//           IPC, restarts it with backoff when it dies (pending calls fail, serving goes on), and
//           stops it on shutdown (SIGKILL only after a timeout).
//   child   serveSupervisor(): lowers its own CPU priority, starts its part, answers calls, and
//           stops when told or when the parent goes away: no child outlives `up`.
import { execFileSync, fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { getPriority, setPriority } from "node:os";
import type { Logger } from "./logger.js";
import { withDefaults } from "./options.js";

type ToChild = { type: "start"; payload: unknown; secret: string } | { type: "call"; id: number; method: string; args: unknown[] } | { type: "stop" };
type FromChild =
  | { type: "ready"; info: unknown }
  | { type: "result"; id: number; ok: true; value: unknown }
  | { type: "result"; id: number; ok: false; error: string }
  | { type: "start_failed"; error: string };

export interface SuperviseOptions<Start> {
  /** Name in logs and errors ("analytics"). */
  name: string;
  /** The module the child runs: a path or file URL whose top level calls serveSupervisor. */
  module: string | URL;
  /** The start message, built again for every (re)start. */
  start: () => Start;
  log: Logger;
  /** Delay before the first restart; it doubles after each failed one. @default 1000 */
  restartDelayMs?: number;
  /** @default 30_000 */
  maxRestartDelayMs?: number;
  /** A child that stayed up this long restarts after the first delay again. @default 60_000 */
  stableAfterMs?: number;
  /** Time a child gets to report ready before it is killed and restarted. @default 120_000 */
  readyTimeoutMs?: number;
  /** Time a stopping child gets to finish before SIGKILL. @default 30_000 */
  stopTimeoutMs?: number;
  /** Told of every change of state (for metrics). */
  onState?: (state: ChildState<unknown>["kind"], restarts: number) => void;
}

export const SUPERVISE_DEFAULTS = Object.freeze({
  restartDelayMs: 1000,
  maxRestartDelayMs: 30_000,
  stableAfterMs: 60_000,
  readyTimeoutMs: 120_000,
  stopTimeoutMs: 30_000,
});

/** Where the child is: one of these at a time, changed only by setState. */
export type ChildState<Info> =
  | { kind: "starting"; child: ChildProcess; since: number; readyTimer: NodeJS.Timeout }
  | { kind: "ready"; child: ChildProcess; since: number; info: Info }
  | { kind: "backoff"; timer: NodeJS.Timeout; until: number }
  | { kind: "stopping"; child: ChildProcess | undefined }
  | { kind: "stopped" };

export interface SupervisedChild<Info> {
  /** What the running child reported when it became ready; undefined while it (re)starts. */
  readonly info: Info | undefined;
  readonly pid: number | undefined;
  readonly state: ChildState<Info>["kind"];
  /** Times the child died without being asked to and was (or will be) started again. */
  readonly restarts: number;
  /** Settles when the first child is ready (true) or has died trying (false; restarts follow). */
  readonly firstStart: Promise<boolean>;
  /** Sent to the child with its start message: what its private HTTP port may require (lib/http.ts childOnlyGuard). */
  readonly secret: string;
  /** Calls a method of the child, waiting (up to readyTimeoutMs) for one that is ready. */
  call<T>(method: string, ...args: unknown[]): Promise<T>;
  /** Stops the child (and any restart) and resolves once it has exited. */
  stop(): Promise<void>;
}

/** The child's node flags: the parent's (the tsx loader, the young generation size) without the test runner's or the debugger's. */
function childExecArgv(): string[] {
  return process.execArgv.filter((a) => !/^--(test|inspect|watch|experimental-test)/.test(a));
}

export function superviseChild<Start, Info>(options: SuperviseOptions<Start>): SupervisedChild<Info> {
  const o = withDefaults(SUPERVISE_DEFAULTS, options);
  const log = o.log.child({ child: o.name });
  let state: ChildState<Info> = { kind: "stopped" };
  let restarts = 0;
  let delayMs: number = o.restartDelayMs;
  let nextCallId = 0;
  const pending = new Map<number, { child: ChildProcess; resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  let settleFirst: (ok: boolean) => void = () => undefined;
  const firstStart = new Promise<boolean>((resolve) => (settleFirst = resolve));
  let exited: (() => void) | undefined;
  const secret = randomBytes(24).toString("base64url");

  const setState = (next: ChildState<Info>) => {
    state = next;
    o.onState?.(next.kind, restarts);
    if (next.kind === "ready") {
      settleFirst(true);
      for (const w of readyWaiters) w.resolve();
      readyWaiters = [];
    }
    if (next.kind === "stopping" || next.kind === "stopped") {
      for (const w of readyWaiters) w.reject(new Error(`the ${o.name} process is stopping`));
      readyWaiters = [];
    }
  };

  const spawn = () => {
    const child = fork(o.module instanceof URL ? o.module.pathname : o.module, [], {
      execArgv: childExecArgv(),
      serialization: "advanced", // Dates and Maps in reports survive the trip
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const readyTimer = setTimeout(() => {
      log.error({ pid: child.pid, timeoutMs: o.readyTimeoutMs }, `${o.name} process did not become ready in time; killing it`);
      child.kill("SIGKILL");
    }, o.readyTimeoutMs);
    child.on("message", (m: FromChild) => onMessage(child, m));
    child.on("error", (err) => log.error({ err, pid: child.pid }, `${o.name} process error`));
    child.once("exit", (code, signal) => onExit(child, code, signal));
    setState({ kind: "starting", child, since: Date.now(), readyTimer });
    child.send({ type: "start", payload: o.start(), secret } satisfies ToChild);
  };

  const onMessage = (child: ChildProcess, m: FromChild) => {
    if (m.type === "ready" && state.kind === "starting" && state.child === child) {
      clearTimeout(state.readyTimer);
      log.info({ pid: child.pid, info: m.info }, `${o.name} process ready`);
      setState({ kind: "ready", child, since: Date.now(), info: m.info as Info });
    } else if (m.type === "start_failed") {
      log.error({ pid: child.pid, error: m.error }, `${o.name} process failed to start`);
    } else if (m.type === "result") {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(m.error));
    }
  };

  const onExit = (child: ChildProcess, code: number | null, signal: NodeJS.Signals | null) => {
    const how = signal ? `signal ${signal}` : `exit code ${code}`;
    for (const [id, p] of pending) {
      if (p.child !== child) continue;
      pending.delete(id);
      p.reject(new Error(`the ${o.name} process exited (${how}) before answering`));
    }
    if (state.kind === "stopping" || state.kind === "stopped") {
      exited?.();
      return;
    }
    if (!("child" in state) || state.child !== child) return;
    if (state.kind === "starting") clearTimeout(state.readyTimer);
    const upFor = Date.now() - state.since;
    if (state.kind === "ready" && upFor >= o.stableAfterMs) delayMs = o.restartDelayMs;
    restarts++;
    const wait = delayMs;
    delayMs = Math.min(delayMs * 2, o.maxRestartDelayMs);
    log.error({ pid: child.pid, code, signal, restarts, restartInMs: wait }, `${o.name} process died (${how}); restarting it in ${wait} ms, serving continues`);
    settleFirst(false);
    setState({ kind: "backoff", until: Date.now() + wait, timer: setTimeout(spawn, wait) });
  };

  const whenReady = (): Promise<ChildProcess> => {
    if (state.kind === "ready") return Promise.resolve(state.child);
    if (state.kind === "stopping" || state.kind === "stopped") return Promise.reject(new Error(`the ${o.name} process is stopped`));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the ${o.name} process is not ready (restarting); try again shortly`)), o.readyTimeoutMs);
      readyWaiters.push({ resolve: () => (clearTimeout(timer), resolve()), reject: (e) => (clearTimeout(timer), reject(e)) });
    }).then(whenReady);
  };

  spawn();

  return {
    get info() {
      return state.kind === "ready" ? state.info : undefined;
    },
    get pid() {
      return "child" in state ? state.child?.pid : undefined;
    },
    get state() {
      return state.kind;
    },
    get restarts() {
      return restarts;
    },
    firstStart,
    secret,
    async call<T>(method: string, ...args: unknown[]): Promise<T> {
      const child = await whenReady();
      const id = ++nextCallId;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { child, resolve: resolve as (v: unknown) => void, reject });
        child.send({ type: "call", id, method, args } satisfies ToChild, (err) => {
          if (!err || !pending.delete(id)) return;
          reject(new Error(`cannot reach the ${o.name} process: ${err.message}`));
        });
      });
    },
    async stop() {
      if (state.kind === "stopped" || state.kind === "stopping") return;
      if (state.kind === "backoff") {
        clearTimeout(state.timer);
        setState({ kind: "stopped" });
        return;
      }
      if (state.kind === "starting") clearTimeout(state.readyTimer);
      const child = state.child;
      setState({ kind: "stopping", child });
      if (child.exitCode === null && child.signalCode === null) {
        const gone = new Promise<void>((resolve) => (exited = resolve));
        if (child.connected) child.send({ type: "stop" } satisfies ToChild, () => undefined);
        else child.kill("SIGTERM");
        const timer = setTimeout(() => {
          log.warn({ pid: child.pid, timeoutMs: o.stopTimeoutMs }, `${o.name} process did not stop in time; killing it`);
          child.kill("SIGKILL");
        }, o.stopTimeoutMs);
        await gone;
        clearTimeout(timer);
      }
      log.info({ pid: child.pid }, `${o.name} process stopped`);
      setState({ kind: "stopped" });
    },
  };
}

/** What a child's start function hands back: what to report, what the parent may call, how to stop. */
export interface ChildPart<Info> {
  info: Info;
  methods: Record<string, (...args: never[]) => unknown>;
  stop(): Promise<void>;
}

export interface ServeOptions {
  /** Nice value the child takes (higher is lower priority). @default unchanged */
  nice?: number;
  /** Scheduling class the child takes with it. @default unchanged */
  policy?: SchedulingPolicy;
  /** Time stop() gets before the child exits anyway. @default 25_000 */
  stopTimeoutMs?: number;
  log: Logger;
}

/**
 * The child's side: lowers this process's priority (when given a nice value), waits for the start
 * message, starts its part with it and serves calls until stopped. SIGINT and SIGTERM are left to
 * the parent; a stop message or the parent going away stop the part and end the process.
 */
export function serveSupervisor<Start, Info>(start: (payload: Start, parent: { secret: string }) => Promise<ChildPart<Info>>, options: ServeOptions): void {
  const { log } = options;
  if (!process.send) {
    console.error("this module is started by `streamserve up`, not on its own");
    process.exit(2);
  }
  if (options.nice !== undefined) log.debug({ nice: lowerOwnPriority(options.nice, options.policy), policy: options.policy }, "priority lowered");
  const send = (m: FromChild) => {
    if (process.connected) process.send!(m, undefined, {}, () => undefined);
  };
  let part: Promise<ChildPart<Info>> | undefined;
  let stopping = false;
  const stopAndExit = async (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, "stopping");
    const timer = setTimeout(() => {
      log.warn("stop timed out; exiting");
      process.exit(1);
    }, options.stopTimeoutMs ?? 25_000);
    timer.unref();
    const p = await part?.catch(() => undefined);
    await p?.stop().catch((err: Error) => log.error({ err }, "stop failed"));
    log.flush?.();
    process.exit(0);
  };
  // Signals are the parent's to act on: a Ctrl-C or a service manager's SIGTERM reaches the whole
  // process group, and the parent stops the server first, then its children, in order.
  process.on("SIGINT", () => undefined);
  process.on("SIGTERM", () => undefined);
  process.once("disconnect", () => void stopAndExit("the parent process went away"));
  process.on("message", (m: ToChild) => {
    if (m.type === "start" && !part && !stopping) {
      part = start(m.payload as Start, { secret: m.secret });
      part.then(
        (p) => send({ type: "ready", info: p.info }),
        (err: Error) => {
          log.error({ err }, "start failed");
          send({ type: "start_failed", error: err.message });
          setTimeout(() => process.exit(1), 100);
        },
      );
    } else if (m.type === "call") {
      void (async () => {
        try {
          const p = await part;
          const fn = p?.methods[m.method];
          if (!fn) throw new Error(`unknown method "${m.method}"`);
          send({ type: "result", id: m.id, ok: true, value: await (fn as (...a: unknown[]) => unknown)(...m.args) });
        } catch (err) {
          send({ type: "result", id: m.id, ok: false, error: (err as Error)?.message ?? String(err) });
        }
      })();
    } else if (m.type === "stop") {
      void stopAndExit("asked by the parent");
    }
  });
}

/**
 * Linux scheduling classes a child may take beside its nice value: "batch" never preempts a
 * waking thread of serving; "idle" runs only on time nobody else wants (sched(7)).
 */
export type SchedulingPolicy = "batch" | "idle";

/**
 * Raises this process's nice value to `nice` (and, on Linux with util-linux's `chrt`, moves it to
 * `policy`) and returns the nice value. Linux keeps both per thread: every thread running now
 * (V8's, libuv's, the engine's) is changed, and threads started later inherit them from the
 * thread that starts them. Elsewhere the nice value covers the process and the policy is skipped.
 */
export function lowerOwnPriority(nice: number, policy?: SchedulingPolicy): number {
  let threads = [0];
  try {
    threads = readdirSync("/proc/self/task").map(Number);
  } catch {
    // not Linux: setPriority(0) is the whole process
  }
  for (const tid of threads) {
    try {
      if (getPriority(tid) < nice) setPriority(tid, nice);
    } catch {
      // a thread that ended meanwhile
    }
  }
  if (policy && process.platform === "linux") {
    try {
      execFileSync("chrt", ["--all-tasks", `--${policy}`, "--pid", "0", String(process.pid)], { stdio: "ignore" });
    } catch {
      // no chrt: the nice value alone orders the processes
    }
  }
  return getPriority(0);
}
