// SIGTERM on `streamserve serve`: health goes NOT_SERVING, calls in flight finish, the log buffer
// is flushed to JetStream, and the process exits 0.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { AckPolicy, DeliverPolicy } from "nats";
import { fromBinary } from "@bufbuild/protobuf";
import { freePort, testRuntime, waitFor, type TestRuntime, cliArgs } from "../helpers.js";
import { createServiceClient, Code } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { PredictionLogSchema } from "../../gen/streamserve/v1/logs_pb.js";

let rt: TestRuntime;
let child: ChildProcess;

before(() => {
  rt = testRuntime();
});
after(async () => {
  child?.kill("SIGKILL");
  await rt?.cleanup();
});

it("drains on SIGTERM: in-flight calls finish, logs are flushed, exit code 0", async () => {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  child = spawn(process.execPath, cliArgs(rt, "serve", "--grpc-port", String(grpcPort), "--http-port", String(httpPort)), {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, LOG_LEVEL: "info" },
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status === 200, 20_000, "healthz 200");

  const client = createServiceClient(RecommendationService, `127.0.0.1:${grpcPort}`);
  await client.recommend({ userId: "warm", candidates: ["a"] });
  const calls = Array.from({ length: 300 }, (_, i) =>
    client.recommend({ userId: `u${i}`, candidates: ["a", "b", "c"], requestId: `drain-${i}` }).then(
      (res) => ({ ok: true as const, id: res.requestId, at: performance.now() }),
      (err: { code: number }) => ({ ok: false as const, code: err.code }),
    ),
  );
  await new Promise((r) => setTimeout(r, 5));
  const sigtermAt = performance.now();
  child.kill("SIGTERM");
  const results = await Promise.all(calls);
  const code = await exited;
  client.close();

  assert.equal(code, 0, `exit code 0 (stderr: ${stderr.slice(-2000)})`);
  assert.match(stderr, /draining: health NOT_SERVING/);
  const okIds = results.filter((r) => r.ok).map((r) => (r as { id: string }).id);
  const afterSignal = results.filter((r) => r.ok && r.at > sigtermAt).length;
  assert.ok(afterSignal > 0, "some calls were still running when SIGTERM arrived, and were answered");
  const failed = results.filter((r) => !r.ok) as { code: number }[];
  // Calls that arrive after the drain began are refused cleanly, never cut off mid-way.
  for (const f of failed) assert.equal(f.code, Code.UNAVAILABLE, `failed call code ${f.code}`);

  // Every answered call's prediction made it to LOGS before the process exited.
  const nc = await rt.nats();
  const jsm = await nc.jetstreamManager();
  await jsm.consumers.add(rt.names.logsStream, {
    durable_name: "drain_check",
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    filter_subject: rt.names.logsSubject("prediction"),
  });
  const consumer = await nc.jetstream().consumers.get(rt.names.logsStream, "drain_check");
  const seen = new Set<string>();
  const messages = await consumer.fetch({ max_messages: 1000, expires: 2000 });
  for await (const m of messages) seen.add(fromBinary(PredictionLogSchema, m.data).requestId);
  const missing = okIds.filter((id) => !seen.has(id));
  assert.deepEqual(missing, [], `${okIds.length} answered calls, all logged`);
});
