// kill -9 of a `streamserve sink` process in the middle of its work, then a restart: JetStream
// redelivers what the dead process had in hand, and ClickHouse ends with every row exactly once.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "nats";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { openClickHouse, queryRows } from "../../lib/clickhouse.js";
import { ITEMS_PER_PREDICTION, logMessage, publishLogs, tempDir, uniqueNamespace, waitFor } from "./fixtures/logs.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const dir = tempDir("sink-crash");
let runtime: Runtime;
let nc: NatsConnection;
const children: ChildProcess[] = [];

/** The real command, as a deployment runs it (embedded ClickHouse in the shared data dir). */
function startSinkProcess(): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "cli/main.ts",
      "sink",
      "--namespace",
      runtime.config.namespace,
      "--data-dir",
      dir.path,
      "--http-port",
      "0",
      "--batch-size",
      "300",
      "--ack-wait",
      "2s",
      "--kinds",
      "prediction",
    ],
    { cwd: root, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, LOG_LEVEL: "warn" } },
  );
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
  child.on("exit", (code, signal) => {
    if (code && code !== 0) console.error(`sink process exited with ${code} (${signal}):\n${stderr}`);
  });
  children.push(child);
  return child;
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve(child.exitCode) : child.once("exit", (code) => resolve(code)),
  );

async function consumer() {
  return (await nc.jetstreamManager()).consumers.info(runtime.names.logsStream, runtime.names.consumer("sink-prediction"));
}

describe("sink process killed with SIGKILL", () => {
  before(async () => {
    // This process never opens ClickHouse until the sink processes are gone: chDB binds a data
    // directory to one process at a time.
    runtime = createRuntime({ namespace: uniqueNamespace("sinkk"), dataDir: dir.path, logLevel: "error" });
    nc = await runtime.nats();
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await deleteNamespace(nc, runtime.names).catch(() => undefined);
    await runtime.close();
    dir.remove();
  });

  it("restarts after kill -9 mid-stream and ends with every row exactly once", async () => {
    const total = 6000;
    const messages = Array.from({ length: total }, (_, i) => logMessage("prediction", i, "crash"));
    await publishLogs(nc.jetstream(), runtime.names, messages.slice(0, total / 2));

    const first = startSinkProcess();
    // Kill it once it has acked some batches and is busy with more.
    await waitFor(
      "first process under way",
      async () => first.exitCode === null && ((await consumer().catch(() => undefined))?.ack_floor.stream_seq ?? 0) >= 900,
      60_000,
      20,
    );
    first.kill("SIGKILL");
    await exited(first);
    const atKill = await consumer();
    assert.ok(atKill.ack_floor.stream_seq < total / 2, "killed before it finished");
    // Delivered to the dead process and never acked: only a redelivery can get these written.
    assert.ok(atKill.num_ack_pending > 0, `killed with a batch in hand (${atKill.num_ack_pending} unacked)`);

    await publishLogs(nc.jetstream(), runtime.names, messages.slice(total / 2));
    const second = startSinkProcess();
    await waitFor(
      "second process drained the stream",
      async () => {
        const info = await consumer();
        return info.num_pending === 0 && info.num_ack_pending === 0 && info.ack_floor.stream_seq === total;
      },
      120_000,
      200,
    );
    second.kill("SIGTERM");
    assert.equal(await exited(second), 0, "a SIGTERM stop is clean");

    const ch = await openClickHouse(runtime.config, runtime.log);
    try {
      const [r] = await queryRows<{ rows: number; requests: number }>(
        ch,
        "SELECT toFloat64(count()) rows, toFloat64(uniqExact(request_id)) requests FROM predictions FINAL WHERE request_id LIKE 'req-crash-%'",
      );
      assert.deepEqual(r, { rows: total * ITEMS_PER_PREDICTION, requests: total });
    } finally {
      await ch.close();
    }
  });
});
