// `npm run bench -- workers`: how `serve --workers N` scales, on the serving benchmark's setup
// (`streamserve serve` in its own process, a 100-tree depth-5 model, 20 candidates with features
// in Redis, logs on, loaded from outside by h2load or the grpc-js load client) at 64 connections.
// The floor is `--workers 1` measured the same way in the same run. On a shared machine one pair
// of runs says little, so rounds alternate 1 and N, each on a freshly started server with the
// same long warm-up (a short one leaves JIT compilation, done once per worker, in the CPU figure).
// Knobs: BENCH_WORKERS (2), BENCH_ROUNDS (3), BENCH_DURATION_MS (10000), BENCH_WARMUP_MS (10000).
import { defaultModelFeatures } from "../features/definitions.js";
import { measure, pickLoadGenerator, type LoadFigures, type LoadShape } from "./load.js";
import { fmt, header } from "./measure.js";
import { machineLine, printFigures, printHeaderRow } from "./serving.js";
import { prepareNamespace, RECOMMEND_PATH, recommendRequest, startStreamserve, syntheticModel, unaryCall } from "./streamserve-process.js";

const WORKERS = Number(process.env.BENCH_WORKERS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 10_000);
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 10_000);
const SHAPE: LoadShape = { connections: 64, streams: 1 };
const TARGET = 1.3;

export async function benchWorkers(): Promise<void> {
  header(`workers: \`streamserve serve --workers ${WORKERS}\` vs \`--workers 1\` (the floor), Recommend at 64 connections, from outside`);
  const load = pickLoadGenerator();
  console.log(
    `load: ${load.description}; ${ROUNDS} rounds alternating 1 and ${WORKERS} workers, each a fresh server, ${WARMUP_MS} ms warm-up + ${DURATION_MS} ms measured`,
  );
  const ns = await prepareNamespace(syntheticModel(defaultModelFeatures().length));
  try {
    printHeaderRow();
    const ratios: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const figures: LoadFigures[] = [];
      for (const n of [1, WORKERS]) {
        console.log(machineLine());
        const server = await startStreamserve(ns, "serve", ["--workers", String(n)]);
        try {
          const replyBytes = (await unaryCall(server.address, RECOMMEND_PATH, recommendRequest())).length;
          const f = await measure(
            load,
            { address: server.address, path: RECOMMEND_PATH, request: recommendRequest(), replyBytes, pid: server.child.pid },
            SHAPE,
            DURATION_MS,
            WARMUP_MS,
          );
          printFigures(`round ${round}, --workers ${n}`, SHAPE, f, figures[0]);
          figures.push(f);
        } finally {
          await server.stop();
        }
      }
      ratios.push(figures[1]!.perSecond / figures[0]!.perSecond);
    }
    console.log(machineLine());
    const median = [...ratios].sort((a, b) => a - b)[Math.floor(ratios.length / 2)]!;
    console.log(
      `--workers ${WORKERS} / --workers 1 calls/s at 64 connections, per round: ${ratios.map((r) => fmt(r, 2)).join(", ")}; median ${fmt(median, 2)} (target ≥ ${TARGET})`,
    );
  } finally {
    await ns.cleanup();
  }
}
