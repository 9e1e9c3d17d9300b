// The serving benchmark's reading of h2load: its summary and per-request log parsed into figures,
// and a gRPC error (HTTP 200, status in the trailers, no reply message) counted as an error,
// checked on real runs of both load generators against the bench's floor server.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { grpcFailures, h2loadArgs, h2loadVersion, parseH2loadLog, parseH2loadSummary } from "../../bench/h2load.js";
import { measure, pickLoadGenerator, type CallTarget } from "../../bench/load.js";
import { percentile } from "../../bench/measure.js";
import { startChild, type Child } from "../../bench/processes.js";
import { freePort } from "../helpers.js";

// h2load 1.52's closing lines (-c 4 -m 4 -D 2 against a 600-byte gRPC reply).
const SUMMARY = `Stopped all clients for thread #0

finished in 2.01s, 20078.00 req/s, 12.24MB/s
requests: 40156 total, 40172 started, 40156 done, 40156 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 40156 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 24.47MB (25660604) total, 196.61KB (201324) headers (space savings 96.39%), 23.17MB (24294380) data
                     min         max         mean         sd        +/- sd
time for request:      134us     35.21ms       783us      1.19ms    94.78%
`;

describe("h2load output", () => {
  it("reads the summary's counts, bytes and duration", () => {
    assert.deepEqual(parseH2loadSummary(SUMMARY), {
      seconds: 2.01,
      started: 40172,
      done: 40156,
      succeeded: 40156,
      failed: 0,
      errored: 0,
      timeout: 0,
      status2xx: 40156,
      dataBytes: 24294380,
    });
  });

  it("reads a duration given in milliseconds", () => {
    const s = parseH2loadSummary(SUMMARY.replace("finished in 2.01s", "finished in 305.41ms"));
    assert.ok(Math.abs(s.seconds - 0.30541) < 1e-9, String(s.seconds));
  });

  it("says which line is missing when the output is not a summary", () => {
    assert.throws(() => parseH2loadSummary("connect to 127.0.0.1 port 1 failed\n"), /no 'finished in' line[\s\S]*port 1 failed/);
  });

  it("counts 200 responses without a reply message as gRPC failures", () => {
    const s = parseH2loadSummary(SUMMARY);
    assert.equal(grpcFailures(s, 605), 0);
    // 156 of the 40156 replies missing: trailers-only error responses carry no DATA.
    assert.equal(grpcFailures({ ...s, dataBytes: 605 * 40000 }, 605), 156);
    assert.equal(grpcFailures({ ...s, dataBytes: 0 }, 605), 40156);
  });

  it("takes latencies of status-200 requests from the log, in ms, sorted", () => {
    const log = "1796323078323948\t200\t26909\n1796323078323949\t-1\t5\n1796323078323950\t200\t134\n";
    assert.deepEqual(parseH2loadLog(log), [0.134, 26.909]);
  });

  it("sends gRPC's headers with the body file, on one thread", () => {
    const args = h2loadArgs({ url: "http://127.0.0.1:9/a.B/C", bodyFile: "/b", logFile: "/l", connections: 4, streams: 16, durationMs: 3000 });
    assert.deepEqual(args, [
      "-c",
      "4",
      "-m",
      "16",
      "-t",
      "1",
      "-D",
      "3000ms",
      "-d",
      "/b",
      "--log-file",
      "/l",
      "-H",
      "content-type: application/grpc",
      "-H",
      "te: trailers",
      "http://127.0.0.1:9/a.B/C",
    ]);
  });
});

it("percentile is the nearest rank", () => {
  const values = Array.from({ length: 1000 }, (_, i) => i + 1);
  assert.equal(percentile(values, 50), 500);
  assert.equal(percentile(values, 99), 990);
  assert.equal(percentile(values, 99.9), 999);
  assert.equal(percentile(values, 100), 1000);
  assert.ok(Number.isNaN(percentile([], 50)));
});

describe("load generators against the floor server", () => {
  const PATH = "/bench.Floor/Call";
  const reply = Buffer.alloc(600, 7);
  let dir: string;
  let floor: Child;
  let address: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "streamserve-bench-test-"));
    writeFileSync(join(dir, "replies.json"), JSON.stringify({ [PATH]: [{ requestBytes: 3, reply: reply.toString("base64") }] }));
    floor = startChild("floor server", process.execPath, ["--import", "tsx", "bench/floor-server.ts", join(dir, "replies.json")]);
    address = `127.0.0.1:${(await floor.waitForOutput(/listening (\d+)/, 60_000))[1]}`;
  });
  after(async () => {
    await floor?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const target = (path: string): CallTarget => ({ address, path, request: Buffer.from([1, 2, 3]), replyBytes: reply.length, pid: floor.pid });

  for (const kind of ["h2load", "client"] as const) {
    it(`${kind}: counts replies, and an unimplemented method as errors`, {
      skip: kind === "h2load" && !h2loadVersion() && "h2load not installed",
    }, async () => {
      process.env.BENCH_LOAD = kind;
      try {
        const load = pickLoadGenerator();
        const ok = await measure(load, target(PATH), { connections: 2, streams: 2 }, 500, 300);
        assert.ok(ok.calls > 50, `calls ${ok.calls}`);
        // The warm-up's calls are not among the measured run's latencies (h2load appends to a log file).
        assert.ok(ok.samples >= ok.calls - 4 && ok.samples <= ok.calls + 4, `${ok.samples} latencies for ${ok.calls} calls`);
        assert.equal(ok.errors, 0);
        assert.ok(ok.p50Ms > 0 && ok.p50Ms <= ok.p99Ms && ok.p99Ms <= ok.p999Ms && ok.p999Ms <= ok.maxMs, JSON.stringify(ok));
        assert.ok(ok.cpuUsPerCall > 0, `the floor's CPU per call: ${ok.cpuUsPerCall}`);
        const bad = await measure(load, target("/bench.Floor/Missing"), { connections: 1, streams: 1 }, 300, 0);
        assert.equal(bad.calls, 0);
        assert.ok(bad.errors > 10, `errors ${bad.errors}`);
        if (kind === "h2load") {
          const nobody = { ...target(PATH), address: `127.0.0.1:${await freePort()}` };
          await assert.rejects(measure(load, nobody, { connections: 1, streams: 1 }, 300, 0), /could not send a request/);
        }
      } finally {
        delete process.env.BENCH_LOAD;
      }
    });
  }
});
