// ExpiryQueue: one timer for many same-delay timeouts; an entry expires once, no earlier than its
// delay after its last add, unless removed first.
import { it } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { ExpiryQueue } from "../../lib/expiry-queue.js";

it("expires entries in order, each no earlier than its delay, and never a removed one", async () => {
  const fired: [string, number][] = [];
  const added = new Map<string, number>();
  const q = new ExpiryQueue<string>(40, (e) => fired.push([e, performance.now() - added.get(e)!]));
  const add = (e: string) => (added.set(e, performance.now()), q.add(e));
  add("a");
  await sleep(15);
  add("b");
  add("gone");
  await sleep(5);
  add("c");
  q.delete("gone");
  await sleep(100);
  assert.deepEqual(
    fired.map(([e]) => e),
    ["a", "b", "c"],
  );
  for (const [e, after] of fired) assert.ok(after >= 39, `${e} expired after ${after} ms`);
  assert.equal(q.size, 0);
});

it("adding again restarts an entry's delay", async () => {
  const fired: string[] = [];
  const q = new ExpiryQueue<string>(40, (e) => fired.push(e));
  q.add("a");
  q.add("b");
  await sleep(25);
  q.add("a");
  await sleep(25);
  assert.deepEqual(fired, ["b"]);
  await sleep(40);
  assert.deepEqual(fired, ["b", "a"]);
});

it("a delay that is not finite never expires", async () => {
  const q = new ExpiryQueue<string>(Number.POSITIVE_INFINITY, () => assert.fail("expired"));
  q.add("a");
  assert.equal(q.size, 0);
  await sleep(10);
});
