// The serving benchmark's load client when h2load is not installed: grpc-js in a process of its
// own, sending one request message again and again on N connections × M concurrent calls each,
// for a warm-up and then a fixed time. Prints "measuring" when the warm-up ends, "measured" when
// the run does (the parent reads the server's CPU time at both), then one JSON line:
// { calls, errors, seconds, latenciesMs: sorted }.
//
//   node --import tsx bench/load-client.ts '{"address":"127.0.0.1:50051","path":"/...","body":"<base64>","connections":16,"streams":1,"durationMs":3000}'
import * as grpc from "@grpc/grpc-js";

/** What the parent asks for. */
export interface LoadClientJob {
  address: string;
  path: string;
  /** The request message (no gRPC frame prefix), base64. */
  body: string;
  connections: number;
  /** Concurrent calls per connection. */
  streams: number;
  /** Calls made before the measured run, in the same process (so the client is warm too). */
  warmupMs: number;
  durationMs: number;
}

export interface LoadClientResult {
  calls: number;
  errors: number;
  seconds: number;
  latenciesMs: number[];
}

async function run(job: LoadClientJob): Promise<LoadClientResult> {
  const identity = (b: Buffer) => b;
  const body = Buffer.from(job.body, "base64");
  // A local subchannel pool per client: otherwise grpc-js shares one connection among them all.
  const clients = Array.from(
    { length: job.connections },
    () => new grpc.Client(job.address, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }),
  );
  await Promise.all(clients.map((c) => new Promise<void>((res, rej) => c.waitForReady(Date.now() + 10_000, (e) => (e ? rej(e) : res())))));
  let latencies: number[] = [];
  let errors = 0;
  const call = (client: grpc.Client) =>
    new Promise<void>((resolve) => {
      const t = performance.now();
      client.makeUnaryRequest(job.path, identity, identity, body, (err) => {
        if (err) errors++;
        else latencies.push(performance.now() - t);
        resolve();
      });
    });
  const runFor = (ms: number) => {
    const stopAt = performance.now() + ms;
    return Promise.all(
      clients.flatMap((client) =>
        Array.from({ length: job.streams }, async () => {
          while (performance.now() < stopAt) await call(client);
        }),
      ),
    );
  };
  await runFor(job.warmupMs);
  latencies = [];
  errors = 0;
  console.log("measuring");
  const started = performance.now();
  await runFor(job.durationMs);
  const seconds = (performance.now() - started) / 1000;
  console.log("measured");
  for (const c of clients) c.close();
  return { calls: latencies.length, errors, seconds, latenciesMs: latencies.sort((a, b) => a - b) };
}

const job = JSON.parse(process.argv[2] ?? "null") as LoadClientJob | null;
if (!job) {
  console.error("usage: load-client.ts JOB_JSON");
  process.exit(2);
}
console.log(JSON.stringify(await run(job)));
process.exit(0);
