// A running simulation: emits the clickstream to EVENTS at a target rate, and on some page views
// asks the gRPC server for recommendations the way a website would (a few candidate pages, or none
// to get the trending ones), then answers with RecordOutcome for the clicks and conversions the
// hidden truth draws. Usable as a library (`startSimulation`) by tests and `demo`, and by
// `streamserve simulate`.
import { randomBytes } from "node:crypto";
import { headers as natsHeaders, type NatsConnection } from "nats";
import { RecommendationService } from "../gen/streamserve/v1/recommendation_pb.js";
import { createServiceClient, type Client } from "../lib/grpc.js";
import type { Names } from "../lib/config.js";
import type { Logger } from "../lib/logger.js";
import { Clickstream, type Session, type SimEvent } from "./clickstream.js";
import { createRandom, type Random } from "./random.js";
import { World, type SimPage } from "./world.js";
import { withDefaults } from "../lib/options.js";

export interface SimulationOptions {
  /** @default 1000 */
  users?: number;
  /** @default 200 */
  pages?: number;
  /** Activity events per second published to EVENTS. @default 200 */
  rate?: number;
  /** How long to run (ms); 0 runs until `stop()`. @default 60000 */
  durationMs?: number;
  /** The RecommendationService to call; empty string: publish events only. @default "127.0.0.1:50051" */
  grpcAddress?: string;
  /** When (ms after the start) behaviour shifts: longer mobile sessions, a new popular page. @default none */
  shiftAtMs?: number;
  /** @default 42 */
  seed?: number | string;
  /** Share of page views on which the site asks for recommendations. @default 0.3 */
  recommendShare?: number;
  /** Share of those requests sent without candidates (the trending items). @default 0.3 */
  trendingShare?: number;
  /** Candidates per request when candidates are sent. @default 8 */
  candidates?: number;
  /** Recommendations asked for. @default 4 */
  limit?: number;
  /** Recommend calls in flight at once; views past it get no recommendations. @default 64 */
  maxInflight?: number;
  /** Prefix of event and request ids. @default random, so that reruns of a seed do not collide */
  runId?: string;
  /** Called every `progressIntervalMs` with rates over the interval. */
  onProgress?: (progress: SimulationProgress) => void;
  /** @default 5000 */
  progressIntervalMs?: number;
}

export const SIMULATION_DEFAULTS = Object.freeze({
  users: 1000,
  pages: 200,
  rate: 200,
  durationMs: 60_000,
  grpcAddress: "127.0.0.1:50051",
  seed: 42 as number | string,
  recommendShare: 0.3,
  trendingShare: 0.3,
  candidates: 8,
  limit: 4,
  maxInflight: 64,
  progressIntervalMs: 5000,
});

/** What the simulation needs from its process; a Runtime provides it. */
export interface SimulationContext {
  names: Names;
  log: Logger;
  nats(): Promise<NatsConnection>;
}

export interface SimulationCounters {
  events: number;
  publishErrors: number;
  requests: number;
  requestErrors: number;
  /** Views that got no recommendations because `maxInflight` calls were pending. */
  requestsSkipped: number;
  /** Recommendations returned, all requests together. */
  recommendations: number;
  /** Responses served by the popularity fallback (model_version "fallback"). */
  fallbackResponses: number;
  /** RecordOutcome calls made (one per clicked recommendation). */
  outcomes: number;
  conversions: number;
  outcomeErrors: number;
  shifted: boolean;
  elapsedMs: number;
}

export interface SimulationProgress extends SimulationCounters {
  eventsPerSecond: number;
  requestsPerSecond: number;
}

export interface Simulation {
  readonly world: World;
  readonly runId: string;
  counters(): SimulationCounters;
  /** Resolves when the duration is over (or `stop()` was called), after in-flight calls finished. */
  readonly done: Promise<SimulationCounters>;
  stop(): Promise<SimulationCounters>;
}

/**
 * Events due are sent every tick. Short, so that arrivals (and the Recommend calls they make) come
 * spread out as a site's many independent users' do, not as bursts that queue on the server.
 */
const TICK_MS = 5;

export async function startSimulation(ctx: SimulationContext, options: SimulationOptions = {}): Promise<Simulation> {
  const o = withDefaults(SIMULATION_DEFAULTS, options);
  if (!(o.rate > 0)) throw new RangeError(`rate must be positive, got ${o.rate}`);
  if (!(o.durationMs >= 0)) throw new RangeError(`durationMs must be 0 or more, got ${o.durationMs}`);
  const log = ctx.log.child({ part: "simulator" });
  const runId = o.runId ?? `sim${randomBytes(4).toString("hex")}`;
  const world = new World({ users: o.users, pages: o.pages, seed: o.seed });
  const root = createRandom(o.seed);
  const stream = new Clickstream(world, root.fork("events"), { runId });
  // Separate streams: whether the site asks for recommendations, and what it asks.
  const siteRand = root.fork("site");
  const nc = await ctx.nats();
  const js = nc.jetstream();
  const client: Client<typeof RecommendationService.method> | undefined = o.grpcAddress ? createServiceClient(RecommendationService, o.grpcAddress) : undefined;
  const jsonHeaders = natsHeaders();
  jsonHeaders.set("Content-Type", "application/json");

  const c: SimulationCounters = {
    events: 0,
    publishErrors: 0,
    requests: 0,
    requestErrors: 0,
    requestsSkipped: 0,
    recommendations: 0,
    fallbackResponses: 0,
    outcomes: 0,
    conversions: 0,
    outcomeErrors: 0,
    shifted: false,
    elapsedMs: 0,
  };
  const inflight = new Set<Promise<void>>();
  const started = performance.now();
  let requestCounter = 0;
  let stopped = false;
  let logged = 0;
  const warn = (obj: object, msg: string) => {
    if (logged++ < 10 || logged % 1000 === 0) log.warn(obj, msg);
  };

  /** What a website would do on a page view: ask, show, and report what the user did. */
  async function recommend(session: Session, page: SimPage): Promise<void> {
    const n = requestCounter++;
    const requestId = `${runId}-r${n}`;
    const rand = root.fork(`request/${n}`);
    const candidates = rand.chance(o.trendingShare) ? [] : drawCandidates(rand, page);
    c.requests++;
    let response;
    try {
      response = await client!.recommend(
        { userId: session.user.id, currentPage: page.id, deviceType: session.device, candidates, limit: o.limit, requestId },
        { deadlineMs: 2000 },
      );
    } catch (err) {
      c.requestErrors++;
      warn({ err: (err as Error).message, requestId }, "Recommend failed");
      return;
    }
    c.recommendations += response.recommendations.length;
    if (response.modelVersion === "fallback") c.fallbackResponses++;
    // The user scans from the top and clicks at most one recommendation.
    for (const [i, rec] of response.recommendations.entries()) {
      const shown = world.page(rec.itemId);
      if (!shown) continue;
      if (!rand.chance(world.clickProbability(session.user, session.device, shown, page, i + 1))) continue;
      const converted = rand.chance(world.conversionProbability(session.user, shown));
      try {
        await client!.recordOutcome(
          { requestId: response.requestId || requestId, itemId: shown.id, clicked: true, converted, revenue: converted ? shown.price : 0 },
          { deadlineMs: 2000 },
        );
        c.outcomes++;
        if (converted) c.conversions++;
      } catch (err) {
        c.outcomeErrors++;
        warn({ err: (err as Error).message, requestId }, "RecordOutcome failed");
      }
      stream.follow(session, shown);
      break;
    }
  }

  /** Half popular pages, half any page, never the page being viewed. */
  function drawCandidates(rand: Random, current: SimPage): string[] {
    const out = new Set<string>();
    for (let tries = 0; out.size < Math.min(o.candidates, world.pages.length - 1) && tries < o.candidates * 10; tries++) {
      const p = tries % 2 === 0 ? world.drawBrowsePage(rand, world.users[rand.int(world.users.length)]!) : world.pages[rand.int(world.pages.length)]!;
      if (p.id !== current.id && (p.popularity > 0 || world.isShifted)) out.add(p.id);
    }
    return [...out];
  }

  function publish(event: SimEvent): Promise<void> {
    return js.publish(ctx.names.eventsSubject, JSON.stringify(event), { msgID: event.event_id, headers: jsonHeaders }).then(
      () => void c.events++,
      (err) => {
        c.publishErrors++;
        warn({ err: (err as Error).message }, "publishing an event failed");
      },
    );
  }

  let finish!: (counters: SimulationCounters) => void;
  const done = new Promise<SimulationCounters>((resolve) => (finish = resolve));
  let lastProgress = { at: started, events: 0, requests: 0 };

  async function loop(): Promise<void> {
    let emitted = 0;
    while (!stopped) {
      const elapsed = performance.now() - started;
      if (o.durationMs > 0 && elapsed >= o.durationMs) break;
      if (o.shiftAtMs !== undefined && !world.isShifted && elapsed >= o.shiftAtMs) {
        world.shift();
        c.shifted = true;
        log.info({ elapsedMs: Math.round(elapsed) }, "behaviour shifted: longer mobile sessions, a new popular page");
      }
      // Catch up to the target rate, but never with more than half a second's burst after a stall.
      const due = Math.min(Math.floor((elapsed / 1000) * o.rate) - emitted, Math.ceil(o.rate / 2));
      const publishes: Promise<void>[] = [];
      for (let k = 0; k < due; k++) {
        const { event, session } = stream.next(Date.now());
        emitted++;
        publishes.push(publish(event));
        if (client && event.event_type === "view" && siteRand.chance(o.recommendShare)) {
          if (inflight.size >= o.maxInflight) {
            c.requestsSkipped++;
            continue;
          }
          const p = recommend(session, world.page(event.page_id)!).finally(() => inflight.delete(p));
          inflight.add(p);
        }
      }
      await Promise.all(publishes);
      const now = performance.now();
      if (o.onProgress && now - lastProgress.at >= o.progressIntervalMs) {
        const seconds = (now - lastProgress.at) / 1000;
        o.onProgress({
          ...counters(),
          eventsPerSecond: (c.events - lastProgress.events) / seconds,
          requestsPerSecond: (c.requests - lastProgress.requests) / seconds,
        });
        lastProgress = { at: now, events: c.events, requests: c.requests };
      }
      await new Promise((r) => setTimeout(r, Math.max(0, TICK_MS - (performance.now() - now))));
    }
    await Promise.allSettled([...inflight]);
    client?.close();
    finish(counters());
  }

  function counters(): SimulationCounters {
    return { ...c, elapsedMs: Math.round(performance.now() - started) };
  }

  loop().catch((err) => {
    log.error({ err }, "simulation failed");
    client?.close();
    finish(counters());
  });
  log.info(
    { runId, users: o.users, pages: o.pages, rate: o.rate, durationMs: o.durationMs, grpc: o.grpcAddress || "(none)", shiftAtMs: o.shiftAtMs, seed: o.seed },
    "simulation started",
  );

  return {
    world,
    runId,
    counters,
    done,
    stop() {
      stopped = true;
      return done;
    },
  };
}
