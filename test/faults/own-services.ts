// What the fault tests share: a Redis or NATS of the test's own (on a free port, killed with
// SIGKILL and restarted at will, never the shared instance), a Recommend load that records every
// answer and every failure, and a reader of the prediction logs in LOGS.
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, type NatsConnection } from "nats";
import { freePort } from "../helpers.js";
import type { Names } from "../../lib/config.js";
import type { Client } from "../../lib/grpc.js";
import type { RecommendationService, RecommendRequestSchema } from "../../gen/streamserve/v1/recommendation_pb.js";
import { PredictionLogSchema, type PredictionLog } from "../../gen/streamserve/v1/logs_pb.js";

// A test that fails half-way must not leave servers behind on the machine.
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

/** A server process of the test's own: same port and data directory across restarts. */
export class OwnService {
  private proc?: ChildProcess;
  /** Kept across restarts: NATS finds its streams there again, a persistent Redis its data. */
  readonly dir: string;

  private constructor(
    readonly kind: "redis" | "nats",
    readonly port: number,
    /** Redis only: every write in the append-only file, fsynced before the reply. */
    readonly persistent = false,
    /**
     * Redis only: a Redis Cluster node (its cluster bus is on port + 10000; test/redis-cluster.ts
     * forms the cluster). Its peers mark it failed after 15 s down (no replicas take over), so a
     * test that kills and restarts a master within that time keeps the cluster serving the others.
     */
    readonly clusterNode = false,
  ) {
    this.dir = mkdtempSync(join(tmpdir(), `streamserve-${kind}-`));
  }

  /** A Redis that loses everything on a crash, or (`persistent`) one that keeps every acknowledged write. */
  static async redis(options: { persistent?: boolean; clusterNode?: boolean; port?: number } = {}): Promise<OwnService> {
    const s = new OwnService("redis", options.port ?? (await freePort()), options.persistent, options.clusterNode);
    await s.start();
    return s;
  }

  static async nats(): Promise<OwnService> {
    const s = new OwnService("nats", await freePort());
    await s.start();
    return s;
  }

  get url(): string {
    return `${this.kind}://127.0.0.1:${this.port}`;
  }

  get alive(): boolean {
    return this.proc !== undefined;
  }

  /** Starts the server and resolves once it says it accepts connections. */
  async start(): Promise<void> {
    if (this.proc) throw new Error(`${this.kind} is already running`);
    const [bin, args, ready] =
      this.kind === "redis"
        ? [
            "redis-server",
            [
              "--port",
              String(this.port),
              "--bind",
              "127.0.0.1",
              "--save",
              "",
              "--dir",
              this.dir,
              ...(this.persistent ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]),
              ...(this.clusterNode ? ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "15000"] : []),
            ],
            "Ready to accept connections",
          ]
        : ["nats-server", ["-js", "-a", "127.0.0.1", "-p", String(this.port), "-sd", this.dir], "Server is ready"];
    const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    running.add(proc);
    proc.once("exit", () => running.delete(proc));
    let output = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new Error(`${bin} did not become ready in 15 s:\n${output}`));
      }, 15_000);
      const onData = (d: Buffer) => {
        output = (output + d.toString()).slice(-8000);
        if (output.includes(ready)) {
          clearTimeout(timer);
          resolve();
        }
      };
      proc.stdout!.on("data", onData);
      proc.stderr!.on("data", onData);
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${bin} exited with ${code}:\n${output}`));
      });
      proc.once("error", (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${bin}: ${err.message}`));
      });
    });
    this.proc = proc;
  }

  /** SIGKILL: a crash, with no goodbye to the clients. */
  async kill(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, "exit");
    proc.kill("SIGKILL");
    await exited;
  }

  /** SIGSTOP: the process hangs with its connections open, as a swapping or stalled server does. */
  pause(): void {
    this.proc?.kill("SIGSTOP");
  }

  resume(): void {
    this.proc?.kill("SIGCONT");
  }

  async remove(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Answer {
  /** When the answer arrived (Date.now()). */
  at: number;
  requestId: string;
  modelVersion: string;
  /** Candidates the request asked to score: each is one prediction row. */
  candidates: number;
  /** The server's own measure of the call. */
  latencyMs: number;
  scores: Map<string, number>;
}

export interface Load {
  answers: Answer[];
  failures: unknown[];
  /** Answers that arrived after `since`. */
  answersSince(since: number): Answer[];
  /** Stops issuing calls and waits for those in flight. */
  stop(): Promise<void>;
}

/**
 * Calls Recommend back to back from `concurrency` loops until stopped, as clients under a
 * steady load do. Every answer and every failure is kept for the test to judge.
 */
export function recommendLoad(
  client: Client<typeof RecommendationService.method>,
  request: (loop: number, i: number) => MessageInitShape<typeof RecommendRequestSchema> & { userId: string; candidates: string[] },
  concurrency = 8,
): Load {
  let stopping = false;
  const answers: Answer[] = [];
  const failures: unknown[] = [];
  const loops = Array.from({ length: concurrency }, async (_, loop) => {
    for (let i = 0; !stopping; i++) {
      const req = request(loop, i);
      try {
        // A deadline, so that a hung call counts as a failure instead of stalling the test.
        const res = await client.recommend(req, { deadlineMs: 5000 });
        answers.push({
          at: Date.now(),
          requestId: res.requestId,
          modelVersion: res.modelVersion,
          candidates: req.candidates.length,
          latencyMs: res.latencyMs,
          scores: new Map(res.recommendations.map((r) => [r.itemId, r.score])),
        });
      } catch (err) {
        failures.push(err);
      }
    }
  });
  return {
    answers,
    failures,
    answersSince: (since) => answers.filter((a) => a.at > since),
    async stop() {
      stopping = true;
      await Promise.all(loops);
    },
  };
}

/**
 * Reads prediction logs from LOGS until every wanted request id has been seen (or the timeout
 * passes), through a consumer of its own that is deleted afterwards.
 */
export async function readPredictionLogs(
  nc: NatsConnection,
  names: Names,
  wanted: ReadonlySet<string>,
  timeoutMs = 20_000,
): Promise<Map<string, PredictionLog>> {
  const jsm = await nc.jetstreamManager();
  const durable = `faults_read_${Math.random().toString(36).slice(2, 10)}`;
  await jsm.consumers.add(names.logsStream, {
    durable_name: durable,
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    filter_subject: names.logsSubject("prediction"),
  });
  const found = new Map<string, PredictionLog>();
  try {
    const consumer = await nc.jetstream().consumers.get(names.logsStream, durable);
    const deadline = Date.now() + timeoutMs;
    while (found.size < wanted.size && Date.now() < deadline) {
      for await (const m of await consumer.fetch({ max_messages: 1000, expires: 1000 })) {
        const p = fromBinary(PredictionLogSchema, m.data);
        if (wanted.has(p.requestId)) found.set(p.requestId, p);
      }
    }
  } finally {
    await jsm.consumers.delete(names.logsStream, durable).catch(() => undefined);
  }
  return found;
}
