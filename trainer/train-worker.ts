// Runs trainGbdt in a worker thread. Training a million rows takes seconds of pure computation;
// in `streamserve up` the same process answers gRPC requests, whose latency must not wait on it.
// This file is both the caller's API and the worker's entry point (recognised by its workerData).

import { isMainThread, parentPort, workerData, type Worker } from "node:worker_threads";
import { startModuleWorker } from "../lib/worker-thread.js";
import { trainGbdt, type GbdtData, type GbdtModel, type GbdtOptions, type GbdtProgress } from "./gbdt.js";

const MARK = "streamserve-gbdt-worker";

type FromWorker =
  | { type: "ready" }
  | { type: "progress"; progress: GbdtProgress }
  | { type: "done"; model: GbdtModel }
  | { type: "error"; message: string; stack?: string };

/**
 * Trains in a worker thread and resolves with the model (the data is copied to the worker).
 * Where a worker cannot start (an environment without the TypeScript loader in workers, say),
 * trains on this thread instead, with the same result.
 */
export function trainInWorker(data: GbdtData, options: GbdtOptions = {}, onProgress?: (p: GbdtProgress) => void): Promise<GbdtModel> {
  return new Promise((resolve, reject) => {
    let started = false;
    let worker: Worker;
    const fallback = (why: unknown) => {
      process.emitWarning(`training on the main thread: the worker did not start (${(why as Error)?.message ?? why})`);
      try {
        resolve(trainGbdt(data, options, onProgress));
      } catch (err) {
        reject(err);
      }
    };
    try {
      worker = startModuleWorker(import.meta.url, { mark: MARK, data, options, progress: onProgress !== undefined });
    } catch (err) {
      fallback(err);
      return;
    }
    worker.on("message", (m: FromWorker) => {
      if (m.type === "ready") started = true;
      else if (m.type === "progress") onProgress?.(m.progress);
      else if (m.type === "done") resolve(m.model);
      else if (m.type === "error") reject(Object.assign(new Error(m.message), { stack: m.stack }));
    });
    worker.on("error", (err) => (started ? reject(err) : fallback(err)));
    worker.on("exit", (code) => {
      if (code !== 0) reject(new Error(`training worker exited with code ${code}`));
    });
  });
}

if (!isMainThread && (workerData as { mark?: string } | null)?.mark === MARK && parentPort) {
  const port = parentPort;
  const { data, options, progress } = workerData as { data: GbdtData; options: GbdtOptions; progress: boolean };
  port.postMessage({ type: "ready" } satisfies FromWorker);
  try {
    const model = trainGbdt(data, options, progress ? (p) => port.postMessage({ type: "progress", progress: p } satisfies FromWorker) : undefined);
    port.postMessage({ type: "done", model } satisfies FromWorker);
  } catch (err) {
    port.postMessage({ type: "error", message: (err as Error).message, stack: (err as Error).stack } satisfies FromWorker);
  }
}
