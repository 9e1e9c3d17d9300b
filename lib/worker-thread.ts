// Starting a worker thread on a module of ours, from the built JavaScript or from source.
import { Worker } from "node:worker_threads";

/**
 * A worker thread running the module at `moduleUrl` (the caller's import.meta.url), which
 * recognises its worker role by `workerData`.
 */
export function startModuleWorker(moduleUrl: string, workerData: unknown): Worker {
  if (moduleUrl.endsWith(".ts")) {
    // Running from source (tsx): Node 20 does not apply the parent's loader to workers, so the
    // worker registers tsx itself before importing the module.
    const tsx = import.meta.resolve("tsx/esm/api");
    const code = `import(${JSON.stringify(tsx)}).then((m) => m.register()).then(() => import(${JSON.stringify(moduleUrl)}))`;
    return new Worker(code, { workerData, eval: true });
  }
  return new Worker(new URL(moduleUrl), { workerData });
}
