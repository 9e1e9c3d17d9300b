// Load from outside the server's process: h2load over gRPC when it is installed, otherwise the
// grpc-js load client in a child process (bench/load-client.ts). Either way one phase is a
// warm-up and then a measured run of fixed length, with the server's CPU time (its whole
// process tree) taken from /proc around the measured run only.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { grpcFailures, h2loadArgs, h2loadVersion, parseH2loadLog, parseH2loadSummary } from "./h2load.js";
import type { LoadClientJob, LoadClientResult } from "./load-client.js";
import { percentile } from "./measure.js";
import { nodeFlags, startChild, treeCpuSeconds } from "./processes.js";

/** A unary gRPC call to load a server with. */
export interface CallTarget {
  /** "127.0.0.1:PORT". */
  address: string;
  /** "/package.Service/Method". */
  path: string;
  /** The request message. */
  request: Uint8Array;
  /** Length of the reply message, to tell replies from gRPC errors in h2load's byte counts. */
  replyBytes: number;
  /** The server's pid, for its CPU time. */
  pid: number;
}

/** How the load is offered: connections × concurrent calls on each. */
export interface LoadShape {
  connections: number;
  streams: number;
}

export const shapeLabel = (s: LoadShape) => (s.streams === 1 ? `c=${s.connections}` : `${s.connections}x${s.streams}`);

export interface LoadFigures {
  /** Calls answered with a reply message. */
  calls: number;
  /** Calls that failed (transport or gRPC status). */
  errors: number;
  /** Latencies the percentiles come from (p99.9 needs thousands). */
  samples: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** Server CPU (user + system, all its processes) per answered call, in µs. */
  cpuUsPerCall: number;
}

interface RawRun {
  calls: number;
  errors: number;
  seconds: number;
  latenciesMs: number[];
  /** The server's CPU seconds over the measured run. */
  serverCpuSeconds: number;
}

export interface LoadGenerator {
  /** What a reader is told was used. */
  description: string;
  /** Warms up for `warmupMs`, then measures for `durationMs`. */
  run(target: CallTarget, shape: LoadShape, durationMs: number, warmupMs: number): Promise<RawRun>;
}

/** h2load if installed (BENCH_LOAD=client forces the grpc-js client). */
export function pickLoadGenerator(): LoadGenerator {
  const version = process.env.BENCH_LOAD === "client" ? undefined : h2loadVersion();
  if (process.env.BENCH_LOAD === "h2load" && !version) throw new Error("BENCH_LOAD=h2load but h2load is not installed (apt-get install nghttp2-client)");
  return version ? h2load(version) : grpcJsClient();
}

const grpcFrame = (message: Uint8Array) => {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
};

function h2load(version: string): LoadGenerator {
  return {
    description: `h2load (${version}, one thread) over gRPC, in its own process`,
    async run(target, shape, durationMs, warmupMs) {
      const dir = mkdtempSync(join(tmpdir(), "streamserve-h2load-"));
      try {
        const bodyFile = join(dir, "request.grpc");
        writeFileSync(bodyFile, grpcFrame(target.request));
        // A log file per run: h2load appends to an existing one.
        const once = async (ms: number, logFile: string) => {
          const args = h2loadArgs({
            url: `http://${target.address}${target.path}`,
            bodyFile,
            logFile,
            connections: shape.connections,
            streams: shape.streams,
            durationMs: ms,
          });
          const child = startChild("h2load", "h2load", args);
          const timer = setTimeout(() => void child.stop(1000), ms + 30_000);
          const code = await child.exited;
          clearTimeout(timer);
          if (code !== 0) throw new Error(`h2load exited with ${code}:\n${child.output().slice(-2000)}`);
          const summary = parseH2loadSummary(child.output());
          // None done but one running is a stall the figures show; none even sent is a failure.
          if (summary.started === 0) throw new Error(`h2load could not send a request to ${target.address}${target.path}:\n${child.output().slice(-2000)}`);
          return summary;
        };
        // The warm-up is a run of its own: h2load's --warm-up-time would fall inside the CPU window.
        if (warmupMs > 0) await once(warmupMs, join(dir, "warm-up.tsv"));
        const logFile = join(dir, "measured.tsv");
        const cpuBefore = treeCpuSeconds(target.pid);
        const summary = await once(durationMs, logFile);
        const serverCpuSeconds = treeCpuSeconds(target.pid) - cpuBefore;
        const calls = Math.max(0, summary.succeeded - grpcFailures(summary, target.replyBytes + 5));
        return { calls, errors: summary.done - calls, seconds: summary.seconds, latenciesMs: parseH2loadLog(readFileSync(logFile, "utf8")), serverCpuSeconds };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

function grpcJsClient(): LoadGenerator {
  return {
    description: `grpc-js load client in a child process (${process.env.BENCH_LOAD === "client" ? "BENCH_LOAD=client" : "h2load not installed: apt-get install nghttp2-client"})`,
    async run(target, shape, durationMs, warmupMs) {
      const job: LoadClientJob = {
        address: target.address,
        path: target.path,
        body: Buffer.from(target.request).toString("base64"),
        ...shape,
        warmupMs,
        durationMs,
      };
      const child = startChild("load client", process.execPath, [...nodeFlags(), "--import", "tsx", "bench/load-client.ts", JSON.stringify(job)]);
      let stdout = "";
      let cpuBefore = NaN;
      let serverCpuSeconds = NaN;
      child.proc.stdout!.on("data", (d: Buffer) => {
        stdout += d.toString("utf8");
        if (Number.isNaN(cpuBefore) && stdout.includes("measuring\n")) cpuBefore = treeCpuSeconds(target.pid);
        if (Number.isNaN(serverCpuSeconds) && stdout.includes("measured\n")) serverCpuSeconds = treeCpuSeconds(target.pid) - cpuBefore;
      });
      const timer = setTimeout(() => void child.stop(1000), warmupMs + durationMs + 30_000);
      const code = await child.exited;
      clearTimeout(timer);
      if (code !== 0) throw new Error(`load client exited with ${code}:\n${child.output().slice(-2000)}`);
      return { ...(JSON.parse(stdout.trim().split("\n").at(-1)!) as LoadClientResult), serverCpuSeconds };
    },
  };
}

/** One phase: a warm-up, then the measured run with the server's CPU time around it. */
export async function measure(generator: LoadGenerator, target: CallTarget, shape: LoadShape, durationMs: number, warmupMs: number): Promise<LoadFigures> {
  const run = await generator.run(target, shape, durationMs, warmupMs);
  const cpu = run.serverCpuSeconds;
  const l = run.latenciesMs;
  return {
    calls: run.calls,
    errors: run.errors,
    samples: run.latenciesMs.length,
    seconds: run.seconds,
    perSecond: run.calls / run.seconds,
    p50Ms: percentile(l, 50),
    p99Ms: percentile(l, 99),
    p999Ms: percentile(l, 99.9),
    maxMs: l.at(-1) ?? NaN,
    cpuUsPerCall: run.calls ? (cpu * 1e6) / run.calls : NaN,
  };
}
