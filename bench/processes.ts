// Child processes of the benchmarks: started, watched, measured (CPU time from /proc) and always
// stopped, on success, on error and when the benchmark itself exits or is interrupted.
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** Node flags for every streamserve child: the young-generation size the command runs with (cli/main.ts). */
export function nodeFlags(): string[] {
  return (process.env.BENCH_NODE_FLAGS ?? "--max-semi-space-size=64").split(" ").filter(Boolean);
}

export interface Child {
  label: string;
  proc: ChildProcess;
  pid: number;
  /** The last few KB of its stdout and stderr, for error messages. */
  output(): string;
  /** Resolves with the first match of `pattern` in its output; rejects if it exits first or the time passes. */
  waitForOutput(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code once it has exited. */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL for it and whatever it started if it has not exited within `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const running = new Set<Child>();
const cleanups = new Set<() => Promise<void>>();
let hooked = false;

/** Runs `fn` (say, deleting a namespace) if the benchmark is interrupted; returns the undo. */
export function atInterrupt(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/** Kills every child still running and the processes they started (synchronous: safe in an exit handler). */
export function killAll(): void {
  for (const child of running) killTree(child.pid, "SIGKILL");
  running.clear();
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on("exit", killAll);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, async () => {
      killAll();
      await Promise.race([Promise.allSettled([...cleanups].map((fn) => fn())), sleep(5000)]);
      process.exit(signal === "SIGINT" ? 130 : 143);
    });
  }
}

/** Starts `command args` from the repository root, tracked so that it never outlives the benchmark. */
export function startChild(label: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): Child {
  hookExit();
  const proc = spawn(command, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  if (proc.pid === undefined) throw new Error(`${label}: could not start ${command}`);
  let tail = "";
  const waiters = new Set<() => void>();
  const onData = (d: Buffer) => {
    tail = (tail + d.toString("utf8")).slice(-16_384);
    for (const w of waiters) w();
  };
  proc.stdout!.on("data", onData);
  proc.stderr!.on("data", onData);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    proc.once("exit", (code, signal) => {
      exitCode = code ?? (signal ? -1 : null);
      running.delete(child);
      for (const w of waiters) w();
      resolve(exitCode);
    }),
  );
  const child: Child = {
    label,
    proc,
    pid: proc.pid,
    output: () => tail,
    exited,
    waitForOutput(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => done(new Error(`${label}: no ${pattern} within ${timeoutMs} ms; its output:\n${tail.slice(-3000)}`)), timeoutMs);
        const check = () => {
          const m = tail.match(pattern);
          if (m) done(undefined, m);
          else if (exitCode !== undefined) done(new Error(`${label} exited (${exitCode}) before printing ${pattern}; its output:\n${tail.slice(-3000)}`));
        };
        const done = (err?: Error, m?: RegExpMatchArray) => {
          clearTimeout(timer);
          waiters.delete(check);
          if (err) reject(err);
          else resolve(m!);
        };
        waiters.add(check);
        check();
      });
    },
    async stop(graceMs = 10_000) {
      if (exitCode !== undefined) return;
      const tree = descendants(child.pid);
      proc.kill("SIGTERM");
      const timedOut = await Promise.race([exited.then(() => false), sleep(graceMs).then(() => true)]);
      if (timedOut) proc.kill("SIGKILL");
      await exited;
      // Whatever it started and left behind (a worker or analytics child) goes too.
      for (const pid of tree) signal(pid, "SIGKILL");
    },
  };
  running.add(child);
  return child;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

function killTree(pid: number, sig: NodeJS.Signals): void {
  for (const p of [...descendants(pid), pid]) signal(p, sig);
}

/** /proc/<pid>/stat fields after the command name (field 3 onwards), or undefined if it is gone. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** Every process below `pid` (children, grandchildren, ...), from the parent ids in /proc. */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(Number(entry));
    if (fields) parentOf.set(Number(entry), Number(fields[1]));
  }
  const out: number[] = [];
  let frontier = [pid];
  while (frontier.length) {
    const next: number[] = [];
    for (const [child, parent] of parentOf) if (frontier.includes(parent)) next.push(child);
    out.push(...next);
    frontier = next;
  }
  return out;
}

/** User + system CPU seconds of one process (all its threads), from /proc/<pid>/stat utime and stime. */
export function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) / 100 : 0; // clock ticks; USER_HZ is 100 on Linux
}

/** CPU seconds of `pid` and every process it started (`serve --workers N`, `up`'s analytics side). */
export function treeCpuSeconds(pid: number): number {
  return [pid, ...descendants(pid)].reduce((sum, p) => sum + cpuSeconds(p), 0);
}
