// The spill queue on a real directory: records come back in the order they went in, across file
// rotations and a restart; a partial ack hands the rest out again; only acks take records away.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../../lib/logger.js";
import type { SpillRecord } from "../../server/spill-file.js";
import { SpillQueue } from "../../server/spill-queue.js";

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const log = createLogger("silent");
const record = (i: number): SpillRecord => ({
  subject: `logs.k${i % 3}`,
  msgId: `m-${i}`,
  contentType: "application/protobuf",
  payload: new TextEncoder().encode(String(i)),
});
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => record(from + k));
const spillFiles = async (dir: string) => (await readdir(dir)).filter((f) => f.endsWith(".spill"));

/** Everything the queue hands out, `max` at a time, acking `ackOf(batch)` of each peek. */
async function drain(q: SpillQueue, max: number, ackOf: (n: number) => number = (n) => n): Promise<string[]> {
  const out: string[] = [];
  for (;;) {
    const batch = await q.peek(max);
    if (batch.length === 0) return out;
    const k = ackOf(batch.length);
    out.push(...batch.slice(0, k).map((r) => r.msgId));
    q.ack(k);
  }
}

describe("SpillQueue", () => {
  it("hands records out in append order across rotations; a partial ack hands the rest out again", async () => {
    const dir = await mkdtemp(join(tmpdir(), "spill-queue-"));
    dirs.push(dir);
    // Files of ~100 bytes: nearly every append starts a new one.
    const q = new SpillQueue(dir, log, 100);
    assert.equal(await q.list(), false);
    for (let i = 0; i < 50; i += 5) await q.append(range(i, i + 5));
    assert.equal(q.size, 50);
    assert.ok((await spillFiles(dir)).length > 5);
    // The file being appended to is not handed out until it is rotated.
    const beforeRotate = await drain(q, 7);
    await q.rotate();
    // Acking one fewer than each peek gave (at least one) makes every peek after the first repeat a record.
    const rest = await drain(q, 7, (n) => Math.max(1, n - 1));
    assert.deepEqual(
      [...beforeRotate, ...rest],
      range(0, 50).map((r) => r.msgId),
    );
    assert.equal(q.size, 0);
    assert.deepEqual(await spillFiles(dir), [], "read files are deleted");
    await q.close();
  });

  it("keeps what was not acked for the next queue on the same directory, behind nothing and in order", async () => {
    const dir = await mkdtemp(join(tmpdir(), "spill-queue-"));
    dirs.push(dir);
    const a = new SpillQueue(dir, log, 1 << 20);
    await a.list();
    await a.append(range(0, 10));
    await a.rotate();
    await a.append(range(10, 20));
    const first = await a.peek(4);
    a.ack(2); // m-0, m-1 stored; m-2 and m-3 were peeked but not acked
    assert.deepEqual(
      first.map((r) => r.msgId),
      ["m-0", "m-1", "m-2", "m-3"],
    );
    await a.close();

    const b = new SpillQueue(dir, log, 1 << 20);
    assert.equal(await b.list(), true);
    assert.deepEqual(await b.scan(() => false), { files: 2, messages: 20 });
    await b.append(range(20, 25));
    await b.rotate();
    // The acked records were not removed from the file: a new queue sends them again (the stream's dedup absorbs them).
    assert.deepEqual(
      await drain(b, 3),
      range(0, 25).map((r) => r.msgId),
    );
    assert.equal(b.size, 0);
    await b.close();
  });
});
