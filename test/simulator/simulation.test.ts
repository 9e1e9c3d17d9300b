// The running simulation against real NATS (events in a test namespace) and against the real
// gRPC server: Recommend calls, RecordOutcome for the clicks, and the logs the server writes.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import { startSimulation } from "../../simulator/simulation.js";
import { startServer, type RunningServer } from "../../server/server.js";

async function storedEvents(rt: TestRuntime, from: number, count: number): Promise<Record<string, unknown>[]> {
  const jsm = await (await rt.nats()).jetstreamManager();
  const out = [];
  for (let seq = from; seq < from + count; seq++) {
    const m = await jsm.streams.getMessage(rt.names.eventsStream, { seq });
    assert.equal(m.header.get("Content-Type"), "application/json");
    out.push(JSON.parse(new TextDecoder().decode(m.data)) as Record<string, unknown>);
  }
  return out;
}

describe("simulation", () => {
  let rt: TestRuntime;
  let server: RunningServer | undefined;

  before(() => {
    rt = testRuntime();
  });

  after(async () => {
    await server?.stop();
    await rt.cleanup();
  });

  it("publishes JSON events to EVENTS at the target rate, the same ones for the same seed", async () => {
    const jsm = await (await rt.nats()).jetstreamManager();
    const first = await (await startSimulation(rt, { grpcAddress: "", rate: 1000, durationMs: 1500, seed: 3, runId: "simA" })).done;
    assert.ok(first.events >= 1000 * 1.5 * 0.8 && first.events <= 1000 * 1.5 * 1.05, `published ${first.events} events in 1.5 s at 1000/s`);
    assert.equal(first.publishErrors, 0);
    assert.equal((await jsm.streams.info(rt.names.eventsStream)).state.messages, first.events);

    const second = await (await startSimulation(rt, { grpcAddress: "", rate: 1000, durationMs: 600, seed: 3, runId: "simB" })).done;
    const a = await storedEvents(rt, 1, 300);
    const b = await storedEvents(rt, first.events + 1, 300);
    assert.ok(second.events >= 300);
    const comparable = (e: Record<string, unknown>) => ({ ...e, event_time: undefined, event_id: String(e.event_id).replace(/^sim[AB]-/, "") });
    assert.deepEqual(b.map(comparable), a.map(comparable));
    assert.deepEqual(Object.keys(a[0]!).sort(), ["amount", "device_type", "event_id", "event_time", "event_type", "page_id", "session_duration", "user_id"]);
    assert.match(String(a[0]!.event_id), /^simA-e0$/);
  });

  it("stops when asked, and runs without a duration until then", async () => {
    const sim = await startSimulation(rt, { grpcAddress: "", rate: 500, durationMs: 0 });
    await new Promise((r) => setTimeout(r, 400));
    const t0 = Date.now();
    const result = await sim.stop();
    assert.ok(Date.now() - t0 < 1000, "stop is prompt");
    assert.ok(result.events > 50, `${result.events} events before the stop`);
    const later = sim.counters().events;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(sim.counters().events, later, "nothing is published after stop()");
  });

  it("calls Recommend like a website and records the clicks the truth draws", async () => {
    server = await startServer(rt);
    await waitFor(() => server!.models.ready, 15_000, "server ready");
    const sim = await startSimulation(rt, { grpcAddress: `127.0.0.1:${server.port}`, rate: 400, durationMs: 3000, recommendShare: 0.6, seed: 5 });
    const c = await sim.done;
    assert.ok(c.requests > 50, `${c.requests} Recommend calls`);
    assert.equal(c.requestErrors, 0);
    assert.equal(c.outcomeErrors, 0);
    assert.equal(c.fallbackResponses, c.requests, "no model yet: the popularity fallback serves");
    assert.ok(c.recommendations > 0);
    assert.ok(c.outcomes > 0, `${c.outcomes} clicks recorded`);
    // The server logged one prediction per request and one outcome per click.
    const jsm = await (await rt.nats()).jetstreamManager();
    await waitFor(
      async () => {
        const subjects = (await jsm.streams.info(rt.names.logsStream, { subjects_filter: ">" })).state.subjects ?? {};
        return subjects[rt.names.logsSubject("prediction")] === c.requests && subjects[rt.names.logsSubject("outcome")] === c.outcomes;
      },
      15_000,
      "prediction and outcome logs in LOGS",
    );
  });
});
