// `npm run bench -- serving-up`: Recommend at concurrency 1, loaded from outside, against
// `streamserve up` (the whole platform, a black box started by its CLI in its own namespace and
// data directory) without and then with `streamserve simulate --rate 1000` running against it, next
// to `streamserve serve` alone measured the same way in the same run: does analytics stall serving?
import { defaultModelFeatures } from "../features/definitions.js";
import { measure, pickLoadGenerator, type LoadFigures, type LoadShape } from "./load.js";
import { fmt, header } from "./measure.js";
import { startChild, type Child } from "./processes.js";
import { programArgs, programsLine } from "./built-cli.js";
import { DURATION_MS, machineLine, printFigures, printHeaderRow, WARMUP_MS } from "./serving.js";
import {
  prepareNamespace,
  RECOMMEND_PATH,
  recommendRequest,
  startStreamserve,
  syntheticModel,
  unaryCall,
  type RunningStreamserve,
} from "./streamserve-process.js";

/** Tail percentiles need samples: each row here runs twice as long as a `serving` row. */
const UP_DURATION_MS = 2 * DURATION_MS;
const SIM_RATE = 1000;
const C1: LoadShape = { connections: 1, streams: 1 };

async function recommendC1(server: RunningStreamserve, load: ReturnType<typeof pickLoadGenerator>): Promise<LoadFigures> {
  const request = recommendRequest();
  const reply = await unaryCall(server.address, RECOMMEND_PATH, request);
  return measure(
    load,
    { address: server.address, path: RECOMMEND_PATH, request, replyBytes: reply.length, pid: server.child.pid },
    C1,
    UP_DURATION_MS,
    WARMUP_MS,
  );
}

/** Mean events/s of the simulator's progress lines printed after `from` (an offset in its output). */
function simulatedRate(sim: Child, from: number): number {
  const rates = [
    ...sim
      .output()
      .slice(from)
      .matchAll(/events\s+(\d+)\/s/g),
  ].map((m) => Number(m[1]));
  return rates.length ? rates.reduce((a, b) => a + b, 0) / rates.length : NaN;
}

export async function benchServingUp(): Promise<void> {
  header(`serving-up: Recommend at c=1 against \`streamserve up\` with the simulator at ${SIM_RATE} events/s, vs \`streamserve serve\` alone`);
  const load = pickLoadGenerator();
  console.log(`load: ${load.description}; ${WARMUP_MS} ms warm-up + ${UP_DURATION_MS} ms measured per row (2 x BENCH_DURATION_MS)`);
  console.log(machineLine());
  console.log(programsLine());
  const artifact = syntheticModel(defaultModelFeatures().length);

  const serveNs = await prepareNamespace(artifact);
  let alone: LoadFigures;
  try {
    const server = await startStreamserve(serveNs, "serve");
    try {
      printHeaderRow();
      alone = await recommendC1(server, load);
      printFigures("serve alone", C1, alone);
    } finally {
      await server.stop();
    }
  } finally {
    await serveNs.cleanup();
  }

  const upNs = await prepareNamespace(artifact);
  let up: RunningStreamserve | undefined;
  let sim: Child | undefined;
  try {
    up = await startStreamserve(upNs, "up", ["--no-local-services"]);
    printFigures("up, no simulator", C1, await recommendC1(up, load));
    sim = startChild("streamserve simulate", process.execPath, [
      ...programArgs("cli/main.ts"),
      ...["simulate", "--rate", String(SIM_RATE), "--duration", `${Math.ceil((WARMUP_MS + UP_DURATION_MS) / 1000) + 120}s`],
      ...[
        "--grpc-address",
        up.address,
        "--progress",
        "1s",
        "--namespace",
        upNs.rt.config.namespace,
        "--data-dir",
        upNs.rt.config.dataDir,
        "--log-level",
        "warn",
      ],
    ]);
    // Measured once the simulator is publishing and the features worker has had a moment with it.
    await sim.waitForOutput(/events\s+\d+\/s/, 60_000);
    const from = sim.output().length;
    const busy = await recommendC1(up, load);
    printFigures(`up + simulate ${SIM_RATE}/s`, C1, busy);
    console.log(`simulator: ${fmt(simulatedRate(sim, from), 0)} events/s while measured (asked ${SIM_RATE}); it also calls Recommend on up`);
    console.log(`up + simulator p99 / serve alone's: ${fmt(busy.p99Ms, 2)} / ${fmt(alone.p99Ms, 2)} ms = ${fmt(busy.p99Ms / alone.p99Ms, 2)} (target ≤ 1.5)`);
    console.log(
      `up + simulator p99.9 / serve alone's: ${fmt(busy.p999Ms, 2)} / ${fmt(alone.p999Ms, 2)} ms = ${fmt(busy.p999Ms / alone.p999Ms, 2)} (target ≤ 2)`,
    );
    console.log(
      `max: up + simulator ${fmt(busy.maxMs, 1)} ms, serve alone ${fmt(alone.maxMs, 1)} ms (from ${busy.samples} and ${alone.samples} calls; a call still running when a row ends is not counted)`,
    );
    console.log(machineLine());
  } finally {
    await sim?.stop();
    await up?.stop(30_000);
    await upNs.cleanup();
  }
}
