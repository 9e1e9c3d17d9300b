// The training threads: the main thread plus `threads - 1` worker threads, each running its share
// of every row pass (gbdt-histogram.ts) over the same SharedArrayBuffers. trainGbdt stays
// synchronous: the main thread hands out a task with Atomics.notify and blocks in Atomics.wait
// until every worker has finished it. This file is also the workers' entry point.
// Invariant: a task's plan is written before its generation number is bumped, and read by the
// main thread only after every worker has stored that generation as done.

import { isMainThread, workerData, type Worker } from "node:worker_threads";
import { startModuleWorker } from "../lib/worker-thread.js";
import { TASK_EXIT, arenaBuffers, arenaFromBuffers, runTask, type Arena, type ArenaBuffers } from "./gbdt-histogram.js";

const MARK = "streamserve-gbdt-histogram-worker";
const GEN = 0;
const KIND = 1;
const COUNT = 2;
const DONE = 3; // + worker
/** A task is one pass over at most every row: a worker silent this long has died. */
const TASK_TIMEOUT_MS = 120_000;

export interface Team {
  /** Threads that take part, the main thread included. */
  readonly threads: number;
  /** Runs a task on every thread (thread 0 here) and returns when all are done. */
  run(kind: number, count: number): void;
  close(): void;
}

/** Runs every task on this thread. */
export function soloTeam(a: Arena): Team {
  return { threads: 1, run: (kind, count) => runTask(a, kind, count, 0), close: () => {} };
}

/**
 * Starts `a.threads - 1` workers over the arena (which must be in SharedArrayBuffers). They start
 * while the caller fills the arena; `ready` waits for them.
 */
export function startTeam(a: Arena): Team & { ready(timeoutMs: number): boolean } {
  const W = a.threads - 1;
  const control = new Int32Array(new SharedArrayBuffer((DONE + 2 * W) * 4));
  const buffers = arenaBuffers(a);
  const workers: Worker[] = [];
  for (let w = 0; w < W; w++) {
    const worker = startModuleWorker(import.meta.url, { mark: MARK, buffers, control: control.buffer, worker: w });
    worker.unref();
    // A failure shows as a worker that never gets ready or never finishes a task.
    worker.on("error", () => {});
    workers.push(worker);
  }
  let gen = 0;
  const ready = (timeoutMs: number) => {
    const until = Date.now() + timeoutMs;
    for (let w = 0; w < W; w++) {
      while (Atomics.load(control, DONE + W + w) === 0) {
        const left = until - Date.now();
        if (left <= 0) return false;
        Atomics.wait(control, DONE + W + w, 0, left);
      }
    }
    return true;
  };
  return {
    threads: a.threads,
    ready,
    run(kind, count) {
      Atomics.store(control, KIND, kind);
      Atomics.store(control, COUNT, count);
      gen = Atomics.add(control, GEN, 1) + 1;
      Atomics.notify(control, GEN);
      runTask(a, kind, count, 0);
      for (let w = 0; w < W; w++) {
        for (;;) {
          const done = Atomics.load(control, DONE + w);
          if (done === gen) break;
          if (done === -1) throw new Error(`gbdt: training thread ${w + 1} failed`);
          if (Atomics.wait(control, DONE + w, done, TASK_TIMEOUT_MS) === "timed-out") {
            throw new Error(`gbdt: training thread ${w + 1} did not finish a pass in ${TASK_TIMEOUT_MS / 1000} s`);
          }
        }
      }
    },
    close() {
      // The kind stays TASK_EXIT, so a worker that starts late exits at its first look.
      Atomics.store(control, KIND, TASK_EXIT);
      Atomics.add(control, GEN, 1);
      Atomics.notify(control, GEN);
    },
  };
}

function workerLoop(buffers: ArenaBuffers, control: Int32Array, w: number): void {
  const a = arenaFromBuffers(buffers);
  const W = a.threads - 1;
  Atomics.store(control, DONE + W + w, 1);
  Atomics.notify(control, DONE + W + w);
  let seen = 0;
  for (;;) {
    Atomics.wait(control, GEN, seen);
    const gen = Atomics.load(control, GEN);
    if (gen === seen) continue;
    seen = gen;
    const kind = Atomics.load(control, KIND);
    if (kind === TASK_EXIT) return;
    let done = gen;
    try {
      runTask(a, kind, Atomics.load(control, COUNT), w + 1);
    } catch {
      done = -1;
    }
    Atomics.store(control, DONE + w, done);
    Atomics.notify(control, DONE + w);
  }
}

if (!isMainThread && (workerData as { mark?: string } | null)?.mark === MARK) {
  const d = workerData as { buffers: ArenaBuffers; control: SharedArrayBuffer; worker: number };
  workerLoop(d.buffers, new Int32Array(d.control), d.worker);
}
