// The simulator without any service: determinism for a seed, the shape of the events, the hidden
// truth's dependence on the signals the features capture, and the shift.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Clickstream, type SimEvent } from "../../simulator/clickstream.js";
import { createRandom } from "../../simulator/random.js";
import { World, type Device, type SimPage } from "../../simulator/world.js";

function events(seed: number, n: number, opts: { shiftAt?: number; users?: number; pages?: number } = {}): { world: World; events: SimEvent[] } {
  const world = new World({ users: opts.users ?? 300, pages: opts.pages ?? 60, seed });
  const stream = new Clickstream(world, createRandom(seed).fork("events"), { runId: "t" });
  const out: SimEvent[] = [];
  for (let i = 0; i < n; i++) {
    if (i === opts.shiftAt) world.shift();
    out.push(stream.next(Date.UTC(2030, 0, 1) + i).event);
  }
  return { world, events: out };
}

const withoutTime = (e: SimEvent) => ({ ...e, event_time: undefined });

/** Area under the ROC curve of `scores` against `labels` (ties count one half). */
function auc(scores: number[], labels: boolean[]): number {
  const order = scores.map((s, i) => [s, labels[i]] as const).sort((a, b) => a[0] - b[0]);
  let rankSum = 0;
  let positives = 0;
  for (let i = 0; i < order.length; ) {
    let j = i;
    while (j < order.length && order[j]![0] === order[i]![0]) j++;
    const midRank = (i + j + 1) / 2;
    for (let k = i; k < j; k++) if (order[k]![1]) (rankSum += midRank), positives++;
    i = j;
  }
  const negatives = order.length - positives;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

describe("simulated world", () => {
  it("is the same for the same seed and different for another", () => {
    const a = events(7, 2000);
    const b = events(7, 2000);
    assert.deepEqual(a.events.map(withoutTime), b.events.map(withoutTime));
    assert.deepEqual(a.world.pages, b.world.pages);
    const c = events(8, 2000);
    assert.notDeepEqual(c.events.map(withoutTime), a.events.map(withoutTime));
    // Forked streams are independent of how much the other streams drew.
    const r1 = createRandom(7);
    r1.fork("x").next();
    assert.equal(r1.fork("y").next(), createRandom(7).fork("y").next());
  });

  it("emits views, clicks and purchases in the shape the features worker reads", () => {
    const { world, events: evs } = events(1, 20_000);
    const count = (t: string) => evs.filter((e) => e.event_type === t).length;
    assert.ok(
      count("view") > count("click") && count("click") > count("purchase") && count("purchase") > 0,
      `views ${count("view")}, clicks ${count("click")}, purchases ${count("purchase")}`,
    );
    assert.equal(new Set(evs.map((e) => e.event_id)).size, evs.length, "event ids are unique");
    for (const e of evs) {
      assert.ok(world.page(e.page_id), `known page ${e.page_id}`);
      assert.ok(e.session_duration >= 0 && Number.isFinite(e.session_duration));
      assert.ok(!Number.isNaN(Date.parse(e.event_time)));
      if (e.event_type === "purchase") assert.equal(e.amount, world.page(e.page_id)!.price);
      else assert.equal(e.amount, 0);
    }
    // Engaged users produce more clicks per view: the trace the user features pick up.
    const byUser = new Map<string, { views: number; clicks: number }>();
    for (const e of evs) {
      const s = byUser.get(e.user_id) ?? { views: 0, clicks: 0 };
      if (e.event_type === "view") s.views++;
      if (e.event_type === "click") s.clicks++;
      byUser.set(e.user_id, s);
    }
    const users = world.users.filter((u) => (byUser.get(u.id)?.views ?? 0) >= 10);
    const top = users.filter((u) => u.engagement > 0.6);
    const low = users.filter((u) => u.engagement < 0.3);
    const rate = (us: typeof users) => us.reduce((s, u) => s + byUser.get(u.id)!.clicks, 0) / us.reduce((s, u) => s + byUser.get(u.id)!.views, 0);
    assert.ok(rate(top) > rate(low) * 1.5, `click rate of engaged users ${rate(top).toFixed(3)} vs others ${rate(low).toFixed(3)}`);
  });

  it("hides a truth that a model on the pipeline's signals learns better than popularity", (t) => {
    // What the pipeline would know, estimated from the events alone: item views (popularity),
    // item click-through, each user's click rate.
    const { world, events: evs } = events(3, 60_000, { users: 400, pages: 80 });
    const item = new Map<string, { views: number; clicks: number }>();
    const user = new Map<string, { views: number; clicks: number }>();
    for (const e of evs) {
      for (const [map, key] of [
        [item, e.page_id],
        [user, e.user_id],
      ] as const) {
        const s = map.get(key) ?? { views: 0, clicks: 0 };
        if (e.event_type === "view") s.views++;
        if (e.event_type === "click") s.clicks++;
        map.set(key, s);
      }
    }
    const ctr = (s: { views: number; clicks: number } | undefined) => ((s?.clicks ?? 0) + 1) / ((s?.views ?? 0) + 10);
    // Recommendation requests answered with the truth.
    const rand = createRandom(99);
    const popularity: number[] = [];
    const learned: number[] = [];
    const labels: boolean[] = [];
    for (let r = 0; r < 6000; r++) {
      const u = world.users[rand.int(world.users.length)]!;
      const device = world.drawDevice(rand, u) as Device;
      const current = world.pages[rand.int(world.pages.length - 1)]!;
      const p = world.pages[rand.int(world.pages.length - 1)]!;
      labels.push(rand.chance(world.clickProbability(u, device, p, current, 1)));
      popularity.push(item.get(p.id)?.views ?? 0);
      learned.push(Math.log(ctr(item.get(p.id))) + Math.log(ctr(user.get(u.id))) + (device === "desktop" ? 0.3 : 0));
    }
    const aucPopularity = auc(popularity, labels);
    const aucLearned = auc(learned, labels);
    t.diagnostic(`AUC popularity ${aucPopularity.toFixed(3)}, features' signals ${aucLearned.toFixed(3)}`);
    assert.ok(aucLearned > aucPopularity + 0.08, `AUC from the features' signals ${aucLearned.toFixed(3)} vs popularity ${aucPopularity.toFixed(3)}`);
  });

  it("makes the ranking matter: three of twelve candidates by appeal get far more clicks than by popularity", () => {
    // The demo's requests: twelve candidates, three shown, the user clicks at most one (scanning
    // from the top). Expected clicks per shown item under each ranking, from the truth.
    const world = new World({ users: 800, pages: 120, seed: 42 });
    const rand = createRandom(7);
    const rankers = { popularity: (p: SimPage) => p.popularity, appeal: (p: SimPage) => p.appeal, leastAppeal: (p: SimPage) => -p.appeal };
    const ctr = { popularity: 0, appeal: 0, leastAppeal: 0 };
    const requests = 5000;
    for (let r = 0; r < requests; r++) {
      const u = world.drawUser(rand);
      const device = world.drawDevice(rand, u);
      const current = world.drawBrowsePage(rand, u);
      const candidates = new Set<SimPage>();
      while (candidates.size < 12) {
        const p = world.pages[rand.int(world.pages.length)]!;
        if (p !== current && p.popularity > 0) candidates.add(p);
      }
      for (const [name, score] of Object.entries(rankers) as [keyof typeof ctr, (p: SimPage) => number][]) {
        const shown = [...candidates].sort((a, b) => score(b) - score(a)).slice(0, 3);
        let none = 1;
        for (const [i, p] of shown.entries()) {
          const q = world.clickProbability(u, device, p, current, i + 1);
          ctr[name] += (none * q) / (3 * requests);
          none *= 1 - q;
        }
      }
    }
    assert.ok(ctr.popularity < 0.25, `CTR by popularity ${ctr.popularity.toFixed(3)}: far from one click per request`);
    assert.ok(ctr.appeal > 1.3 * ctr.popularity, `CTR by appeal ${ctr.appeal.toFixed(3)} vs popularity ${ctr.popularity.toFixed(3)}`);
    assert.ok(ctr.leastAppeal < 0.6 * ctr.popularity, `CTR by least appeal ${ctr.leastAppeal.toFixed(3)} vs popularity ${ctr.popularity.toFixed(3)}`);
  });

  it("ranks by the signals it claims: engagement, appeal, topic, device, position", () => {
    const world = new World({ users: 50, pages: 20, seed: 5 });
    const u = { ...world.users[0]!, engagement: 0.5, favoriteTopic: 99 };
    const page = { ...world.pages[0]!, appeal: 0.5, topic: 1 };
    const base = world.clickProbability(u, "tablet", page, undefined, 1);
    assert.ok(world.clickProbability({ ...u, engagement: 0.9 }, "tablet", page, undefined, 1) > base);
    assert.ok(world.clickProbability(u, "tablet", { ...page, appeal: 0.9 }, undefined, 1) > base);
    assert.ok(world.clickProbability(u, "tablet", page, { ...page, id: "other" }, 1) > base, "same topic as the current page");
    assert.ok(world.clickProbability(u, "desktop", page, undefined, 1) > world.clickProbability(u, "mobile", page, undefined, 1));
    assert.ok(world.clickProbability(u, "tablet", page, undefined, 3) < base);
  });

  it("shifts behaviour: longer mobile sessions and a new page that becomes the most viewed", () => {
    const n = 40_000;
    const { world, events: evs } = events(11, n, { shiftAt: n / 2 });
    assert.ok(world.isShifted);
    const newcomer = world.pages.at(-1)!.id;
    const before = evs.slice(0, n / 2);
    const after = evs.slice(n / 2 + 2000); // sessions started before the shift have ended
    assert.equal(before.filter((e) => e.page_id === newcomer).length, 0, "nobody visits the new page before the shift");
    const views = new Map<string, number>();
    for (const e of after) if (e.event_type === "view") views.set(e.page_id, (views.get(e.page_id) ?? 0) + 1);
    const [mostViewed] = [...views].sort((a, b) => b[1] - a[1])[0]!;
    assert.equal(mostViewed, newcomer);
    const meanMobile = (es: SimEvent[]) => {
      const m = es.filter((e) => e.device_type === "mobile");
      return m.reduce((s, e) => s + e.session_duration, 0) / m.length;
    };
    assert.ok(meanMobile(after) > 2 * meanMobile(before), `mobile session_duration ${meanMobile(before).toFixed(1)} s → ${meanMobile(after).toFixed(1)} s`);
  });
});
