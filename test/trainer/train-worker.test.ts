import { test } from "node:test";
import assert from "node:assert/strict";
import { createRandom, trainGbdt } from "../../trainer/gbdt.js";
import { trainInWorker } from "../../trainer/train-worker.js";

const data = () => {
  const rand = createRandom(4);
  const x = Float64Array.from({ length: 60_000 }, () => rand());
  const z = Float64Array.from({ length: 60_000 }, () => rand());
  return { columns: [x, z], labels: Uint8Array.from(x, (v, i) => (rand() < v * z[i]! ? 1 : 0)) };
};

test("training in a worker gives the same model, reports progress, and leaves the event loop free", async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on("warning", onWarning);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 2);
  const progress: number[] = [];
  const started = performance.now();
  const model = await trainInWorker(data(), { numTrees: 40 }, (p) => progress.push(p.tree));
  const elapsed = performance.now() - started;
  clearInterval(timer);
  process.off("warning", onWarning);
  assert.deepEqual(warnings, [], "the worker started (no fallback to the main thread)");
  assert.deepEqual(
    progress,
    Array.from({ length: 40 }, (_, i) => i),
  );
  assert.deepEqual(model.trees, trainGbdt(data(), { numTrees: 40 }).trees);
  // A blocked loop would tick a handful of times; a free one ticks about every 2 ms.
  assert.ok(ticks > elapsed / 2 / 4, `${ticks} timer ticks in ${elapsed.toFixed(0)} ms`);
});

test("errors from training in the worker reach the caller", async () => {
  await assert.rejects(trainInWorker({ columns: [Float64Array.of(1, 2)], labels: Uint8Array.of(1, 1) }), /both classes/);
});
