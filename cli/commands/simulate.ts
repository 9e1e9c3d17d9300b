// `streamserve simulate`: a clickstream with a known truth, published to EVENTS, calling the
// recommender like a website and reporting clicks and conversions.
import type { Command } from "../command.js";
import { untilSignal } from "../command.js";
import { durationFlag, numberFlag, stringFlag, UsageError } from "../args.js";
import { startSimulation, SIMULATION_DEFAULTS, type SimulationCounters, type SimulationProgress } from "../../simulator/simulation.js";

function integerFlag(value: number | undefined, name: string, min: number): number | undefined {
  if (value !== undefined && (!Number.isInteger(value) || value < min)) throw new UsageError(`--${name} must be an integer of at least ${min}, got ${value}`);
  return value;
}

const line = (p: SimulationProgress) =>
  `${(p.elapsedMs / 1000).toFixed(0).padStart(5)}s  events ${p.eventsPerSecond.toFixed(0).padStart(6)}/s  requests ${p.requestsPerSecond.toFixed(0).padStart(5)}/s  ` +
  `outcomes ${p.outcomes} (${p.conversions} conversions)  errors ${p.publishErrors + p.requestErrors + p.outcomeErrors}${p.shifted ? "  [shifted]" : ""}`;

const summary = (c: SimulationCounters) =>
  `simulated ${(c.elapsedMs / 1000).toFixed(1)} s: ${c.events} events, ${c.requests} Recommend calls (${c.fallbackResponses} served by the fallback, ${c.requestErrors} failed, ${c.requestsSkipped} skipped), ` +
  `${c.outcomes} clicks recorded (${c.conversions} conversions, ${c.outcomeErrors} failed), ${c.publishErrors} publish errors${c.shifted ? ", behaviour shifted" : ""}`;

const command: Command = {
  name: "simulate",
  summary: "simulate users browsing: events to EVENTS, Recommend calls, clicks and conversions from a hidden truth",
  usage: `Usage: streamserve simulate [--users N] [--pages M] [--rate EVENTS_PER_S] [--duration 60s] [flags]

Sessions of page views, clicks and purchases are published to EVENTS (JSON, with event_id). On a
share of the page views it calls Recommend on the gRPC server like a website (a few candidate
pages, or none for the trending ones) and reports the clicks and conversions that a hidden
ground-truth model draws (user engagement, device, page appeal and topic, popularity), so a
trained model can beat the popularity fallback. Deterministic for a seed (without a server the
whole event stream is; with one, it follows the server's answers).

  --users N              simulated users (default ${SIMULATION_DEFAULTS.users})
  --pages M              pages, i.e. items (default ${SIMULATION_DEFAULTS.pages})
  --rate N               events per second (default ${SIMULATION_DEFAULTS.rate})
  --duration DUR         how long to run, 0 for until Ctrl-C (default 60s)
  --grpc-address ADDR    RecommendationService to call (default 127.0.0.1:<--grpc-port>); "none": events only
  --shift AT             change behaviour AT into the run (e.g. 30s): longer mobile sessions, a new popular page
  --seed S               random seed (default ${SIMULATION_DEFAULTS.seed})
  --recommend-share P    share of page views that ask for recommendations (default ${SIMULATION_DEFAULTS.recommendShare})
  --progress DUR         progress line interval (default 5s)

Examples:
  streamserve simulate --users 2000 --pages 300 --rate 500 --duration 2m --shift 1m
  streamserve simulate --grpc-address none --rate 5000 --duration 30s`,
  async run(args, runtime) {
    const address = stringFlag(args, "grpc-address") ?? `127.0.0.1:${runtime.config.grpcPort}`;
    const share = numberFlag(args, "recommend-share");
    if (share !== undefined && (share < 0 || share > 1)) throw new UsageError(`--recommend-share must be between 0 and 1, got ${share}`);
    const sim = await startSimulation(runtime, {
      users: integerFlag(numberFlag(args, "users"), "users", 1),
      pages: integerFlag(numberFlag(args, "pages"), "pages", 2),
      rate: numberFlag(args, "rate"),
      durationMs: durationFlag(args, "duration"),
      grpcAddress: address === "none" ? "" : address,
      shiftAtMs: durationFlag(args, "shift"),
      seed: stringFlag(args, "seed"),
      recommendShare: share,
      progressIntervalMs: durationFlag(args, "progress"),
      onProgress: (p) => console.log(line(p)),
    });
    const result = await Promise.race([sim.done, untilSignal().then(() => sim.stop())]);
    console.log(summary(result));
    return 0;
  },
};

export default command;
