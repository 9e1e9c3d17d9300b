// The pacing of progress lines: every change is written, an idle service writes rarely.
import { it } from "node:test";
import assert from "node:assert/strict";
import { progressPacer } from "../../lib/progress-pacer.js";

it("writes a line when a counter moves, and only every idleEveryMs while nothing does", () => {
  let t = 0;
  const due = progressPacer({ idleEveryMs: 60_000, now: () => t });
  const ticks: boolean[] = [];
  const tick = (messages: number) => {
    t += 10_000;
    ticks.push(due({ messages, late: 0 }));
  };
  tick(0); // first line
  for (let i = 0; i < 5; i++) tick(0); // idle for 50 s: nothing
  tick(0); // 60 s after the last line: once
  tick(5); // events arrive: every tick
  tick(9);
  tick(9); // idle again
  assert.deepEqual(ticks, [true, false, false, false, false, false, true, true, true, false]);
  assert.equal(due({ messages: 9, late: 1 }), true, "any counter counts");
});
