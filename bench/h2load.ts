// h2load (Debian's nghttp2-client) as a gRPC load generator: the command line for a unary call,
// and the parsers for its summary and its per-request log. h2load knows HTTP/2, not gRPC: a
// gRPC error arrives as HTTP 200 with the status in the trailers, so calls that got no reply
// message are counted from the DATA bytes received.
import { spawnSync } from "node:child_process";

/** The figures of h2load's summary that the benchmark uses. */
export interface H2loadSummary {
  /** Length of the measured run. */
  seconds: number;
  /** Requests sent; more than `done` when some were still running as the run ended. */
  started: number;
  done: number;
  succeeded: number;
  failed: number;
  errored: number;
  timeout: number;
  /** Responses with a 2xx status. */
  status2xx: number;
  /** Payload bytes of the DATA frames received (gRPC frames: 5-byte prefix + message). */
  dataBytes: number;
}

const UNIT_SECONDS: Record<string, number> = { us: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };

/** Parses h2load's closing summary; throws with the output when a line is missing. */
export function parseH2loadSummary(output: string): H2loadSummary {
  const need = (re: RegExp, what: string): RegExpMatchArray => {
    const m = re.exec(output);
    if (!m) throw new Error(`h2load output has no ${what} line:\n${output.slice(-2000)}`);
    return m;
  };
  const finished = need(/^finished in ([\d.]+)(us|ms|s|m|h),/m, "'finished in'");
  const requests = need(/^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m, "'requests:'");
  const status = need(/^status codes: (\d+) 2xx/m, "'status codes:'");
  const traffic = need(/^traffic: .*?([\d.]+\w*B) \((\d+)\) data\s*$/m, "'traffic:'");
  return {
    seconds: Number(finished[1]) * UNIT_SECONDS[finished[2]!]!,
    started: Number(requests[2]),
    done: Number(requests[3]),
    succeeded: Number(requests[4]),
    failed: Number(requests[5]),
    errored: Number(requests[6]),
    timeout: Number(requests[7]),
    status2xx: Number(status[1]),
    dataBytes: Number(traffic[2]),
  };
}

/**
 * Latencies in ms of the requests in an h2load --log-file (tab-separated: start time in µs since
 * epoch, HTTP status, µs until the end of the response), those with status 200 only, sorted.
 */
export function parseH2loadLog(log: string): number[] {
  const out: number[] = [];
  for (const line of log.split("\n")) {
    const [, status, micros] = line.split("\t");
    if (status === "200" && micros !== undefined) out.push(Number(micros) / 1000);
  }
  return out.sort((a, b) => a - b);
}

/**
 * Calls that failed at the gRPC level although HTTP said 200: those that brought no reply
 * message, estimated from the DATA bytes (every reply is one frame of `frameBytes`).
 */
export function grpcFailures(summary: H2loadSummary, frameBytes: number): number {
  // The byte count covers every 2xx response, including the few that end after the run's
  // "succeeded" count is taken.
  const replied = Math.round(summary.dataBytes / frameBytes);
  return Math.max(0, summary.status2xx - replied);
}

export interface H2loadRun {
  /** "http://127.0.0.1:PORT/package.Service/Method". */
  url: string;
  /** A file holding one gRPC frame: the 5-byte prefix and the request message. */
  bodyFile: string;
  connections: number;
  /** Concurrent calls per connection. */
  streams: number;
  durationMs: number;
  logFile: string;
}

/** h2load's arguments for unary gRPC calls on one native thread. */
export function h2loadArgs(run: H2loadRun): string[] {
  return [
    ...["-c", String(run.connections), "-m", String(run.streams), "-t", "1"],
    // BENCH_RPS: a fixed offered rate per connection, so that CPU per call compares at equal batching on a busy machine.
    ...(process.env.BENCH_RPS ? [`--rps=${process.env.BENCH_RPS}`] : []),
    ...["-D", `${run.durationMs}ms`, "-d", run.bodyFile, "--log-file", run.logFile],
    ...["-H", "content-type: application/grpc", "-H", "te: trailers", run.url],
  ];
}

/** h2load's version line, or undefined when it is not installed. */
export function h2loadVersion(): string | undefined {
  const r = spawnSync("h2load", ["--version"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : undefined;
}
