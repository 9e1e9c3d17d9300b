// The features worker against the real NATS JetStream and Redis: the seed's features exactly,
// late events, dead letters and the trending set, each in its own namespace.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { headers as natsHeaders } from "nats";
import {
  startFeaturesWorker,
  type FeaturesWorker,
  DEAD_LETTER_REASON_HEADER,
  DEAD_LETTER_SEQUENCE_HEADER,
  DEAD_LETTER_DETAIL_HEADER,
} from "../../features/worker.js";
import { TRENDING, USER_FEATURES } from "../../features/definitions.js";
import { WindowStore } from "../../features/window-store.js";
import {
  assertClosedWindows,
  assertNear,
  assertOnlineStore,
  expectedTrendingScores,
  expectedWindows,
  makeEvents,
  publishEvents,
  readFeatureWindowLogs,
  testRuntime,
  uniqueNamespace,
  waitConsumerDrained,
  WATERMARK_MS,
  WINDOW_MS,
  type TestEvent,
} from "./helpers.js";

const T0 = Date.UTC(2024, 2, 10, 12, 0, 0);
const MIN = 60_000;

/**
 * The seed's features against an independent computation, with batches of up to `maxBatch`
 * events (small ones: an entity's window is built over many transactions).
 */
function seedFeatures(title: string, count: number, maxBatch: number): void {
  describe(title, () => {
    let env: Awaited<ReturnType<typeof testRuntime>>;
    let worker: FeaturesWorker;
    const events = makeEvents({ count, users: 40, pages: 25, startMs: T0, spanMs: 60 * MIN, jitterMs: MIN, seed: 7 });

    before(async () => {
      env = await testRuntime(uniqueNamespace("feat_seed"));
      // JSON with epoch ms, JSON with ISO times and protobuf, interleaved.
      await publishEvents(env.js, env.runtime.names, events, { encodings: ["json-ms", "json-iso", "protobuf"] });
      worker = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, maxBatch });
      await waitConsumerDrained(env.nc, env.runtime.names);
      await worker.closeDueWindows();
    });
    after(async () => {
      await worker?.stop();
      await env?.cleanup();
    });

    test("every event is applied once; none is late with a jitter under the watermark", async () => {
      assert.equal(worker.stats.messages, events.length);
      assert.deepEqual(worker.stats.applied, { user: events.length, item: events.length });
      assert.deepEqual(worker.stats.late, {});
      assert.deepEqual(worker.stats.duplicates, {});
      assert.equal(worker.stats.deadLetters, 0);
      assert.equal(await env.runtime.metrics.value("streamserve_features_messages_total"), events.length);
    });

    test("online hashes hold each entity's newest window, computed as the seed does", async () => {
      const checked = await assertOnlineStore(env.runtime, expectedWindows(events));
      assert.equal(checked, 40 + 25 - countMissing(events));
    });

    test("windows the watermark passed are on LOGS once each, with their final features", async () => {
      const high = Math.max(...events.map((e) => e.event_time));
      const closed = expectedWindows(events).filter((w) => w.windowStart + WINDOW_MS <= high - WATERMARK_MS);
      assert.ok(closed.length > count / 15, `a meaningful number of closed windows (${closed.length})`);
      assertClosedWindows(await readFeatureWindowLogs(env.nc, env.runtime.names), closed);
      assert.deepEqual(worker.stats.windowsClosed, {
        user: closed.filter((w) => w.entity === "user").length,
        item: closed.filter((w) => w.entity === "item").length,
      });
    });

    test("the trending set ranks items by decayed activity", async () => {
      const expected = expectedTrendingScores(events);
      const flat = await env.runtime.redis().zrevrange(env.runtime.names.trendingKey, 0, -1, "WITHSCORES");
      const actual = new Map<string, number>();
      for (let i = 0; i < flat.length; i += 2) actual.set(flat[i]!, Number(flat[i + 1]));
      assert.equal(actual.size, expected.size);
      for (const [item, score] of expected) assertNear(actual.get(item) ?? NaN, score, `trending score of ${item}`, 1e-12);
      const order = [...expected.entries()].sort((a, b) => b[1] - a[1]).map(([k]) => k);
      assert.deepEqual([...actual.keys()], order);
    });
  });
}

seedFeatures("seed features, online and closed", 3000, 500);
seedFeatures("seed features in small batches", 1500, 7);

/** Users and pages of the generator's id ranges that happen to have no events. */
function countMissing(events: readonly TestEvent[]): number {
  const users = new Set(events.map((e) => e.user_id));
  const pages = new Set(events.map((e) => e.page_id));
  return 40 - users.size + (25 - pages.size);
}

describe("late events", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let worker: FeaturesWorker;
  const ev = (id: string, user: string, page: string, type: string, t: number, amount = 0): TestEvent => ({
    event_id: id,
    user_id: user,
    event_type: type,
    page_id: page,
    session_duration: 10,
    amount,
    event_time: t,
  });

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_late"));
    worker = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, closeIntervalMs: 60_000 });
  });
  after(async () => {
    await worker?.stop();
    await env?.cleanup();
  });

  test("an event behind the watermark is counted and dropped; one within it is merged", async () => {
    const { js, nc, runtime } = env;
    const names = runtime.names;
    const first = [ev("a1", "u1", "p1", "click", T0 + MIN), ev("a2", "u1", "p2", "purchase", T0 + 2 * MIN, 40)];
    await publishEvents(js, names, first);
    await waitConsumerDrained(nc, names);
    // Newest event 12:20 → watermark 12:10: [12:00, 12:05) is closed.
    await publishEvents(js, names, [ev("b1", "u2", "p3", "view", T0 + 20 * MIN)]);
    await waitConsumerDrained(nc, names);
    assert.equal(await worker.closeDueWindows(), 3, "u1, p1, p2 in [12:00, 12:05) and nothing else");

    await publishEvents(js, names, [
      ev("late", "u1", "p1", "purchase", T0 + 3 * MIN, 1000), // [12:00, 12:05): closed
      ev("ok", "u1", "p1", "click", T0 + 12 * MIN), // [12:10, 12:15): still open (ends after 12:10)
    ]);
    await waitConsumerDrained(nc, names);
    await worker.closeDueWindows();

    assert.deepEqual(worker.stats.late, { user: 1, item: 1 });
    assert.equal(await runtime.metrics.value("streamserve_features_late_events_total", { entity: "user" }), 1);
    assert.deepEqual(worker.stats.applied, { user: 4, item: 4 });

    const logged = await readFeatureWindowLogs(nc, names);
    const u1 = logged.filter((l) => l.entity === "user" && l.id === "u1");
    assert.equal(u1.length, 1, "the closed window is logged once, not again with the late event");
    assert.equal(u1[0]!.eventCount, 2);
    assert.equal(u1[0]!.features.purchase_amount, 40, "the late purchase is not merged");
    assert.equal(u1[0]!.features.engagement_score, 0.3 + 2 * 0.4 + 30);

    const online = await worker.store.readFeatures(USER_FEATURES, "u1");
    assert.equal(online?.window_start, T0 + 10 * MIN, "the online hash moved on to the newer window");
    assert.equal(online?.clicks_last_5min, 1);
    assert.equal(online?.purchase_amount, 0);
  });
});

describe("events out of order within the watermark", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let store: WindowStore;
  const ev = (id: string, user: string, t: number): TestEvent => ({
    event_id: id,
    user_id: user,
    event_type: "click",
    page_id: "p",
    session_duration: 1,
    amount: 0,
    event_time: t,
  });

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_order"));
    store = new WindowStore(env.runtime.redis(), env.runtime.config.redisUrl, env.runtime.names, [USER_FEATURES], null);
  });
  after(async () => {
    store?.close();
    await env?.cleanup();
  });

  test("an older window's event leaves the online hash on the entity's newer window", async () => {
    await store.apply([ev("x1", "x", T0 + 6 * MIN)]);
    // x's late-arriving 12:03 event comes in a batch whose other events are in x's newer window.
    await store.apply([ev("x0", "x", T0 + 3 * MIN), ev("y1", "y", T0 + 7 * MIN)]);
    const x = await store.readFeatures(USER_FEATURES, "x");
    assert.equal(x?.window_start, T0 + 5 * MIN, "still the 12:05 window");
    assert.equal(x?.clicks_last_5min, 1);
    const older = await store.apply([ev("x00", "x", T0 + 4 * MIN)]);
    assert.deepEqual(older.counts.user, { applied: 1, duplicates: 0, late: 0 }, "the older window took the event");
    assert.equal((await store.readFeatures(USER_FEATURES, "x"))?.window_start, T0 + 5 * MIN);
  });

  test("ids in any script: keys, distinct values and packed state are byte-exact", async () => {
    const user = "usér ✓ 用户";
    const pages = ["página", "страница", "😀 page", "página"];
    await store.apply(pages.map((p, i) => ({ ...ev(`ü${i}`, user, T0 + 6 * MIN + i), page_id: p })));
    const f = await store.readFeatures(USER_FEATURES, user);
    assert.equal(f?.event_count, 4);
    assert.equal(f?.unique_pages_viewed, 3, "the repeated page counted once");
    // A redelivery of the same events, read back from the packed state and markers, changes nothing.
    const again = await store.apply(pages.map((p, i) => ({ ...ev(`ü${i}`, user, T0 + 6 * MIN + i), page_id: p })));
    assert.deepEqual(again.counts.user, { applied: 0, duplicates: 4, late: 0 });
    const more = await store.apply([{ ...ev("ü9", user, T0 + 7 * MIN), page_id: "страница" }]);
    assert.deepEqual(more.counts.user, { applied: 1, duplicates: 0, late: 0 });
    const g = await store.readFeatures(USER_FEATURES, user);
    assert.equal(g?.event_count, 5);
    assert.equal(g?.unique_pages_viewed, 3);
  });

  test("overlapped batches, one spanning two windows, leave the hash on the newest window", async () => {
    // Handed over at once, as the worker does: each is computed while the one before is in Redis.
    const [a, b, c] = await Promise.all([
      store.apply([ev("z1", "z", T0 + 7 * MIN)]),
      store.apply([ev("z2", "z", T0 + 2 * MIN), ev("z3", "z", T0 + 12 * MIN), ev("z4", "z", T0 + 11 * MIN)]),
      store.apply([ev("z5", "z", T0 + 3 * MIN), ev("z1", "z", T0 + 7 * MIN)]),
    ]);
    assert.deepEqual(
      [a, b, c].map((r) => r.counts.user),
      [
        { applied: 1, duplicates: 0, late: 0 },
        { applied: 3, duplicates: 0, late: 0 },
        { applied: 1, duplicates: 1, late: 0 },
      ],
    );
    const z = await store.readFeatures(USER_FEATURES, "z");
    assert.equal(z?.window_start, T0 + 10 * MIN, "the 12:10 window, not the older ones written after it");
    assert.equal(z?.event_count, 2);
    assert.equal(z?.feature_time, T0 + 12 * MIN);
  });
});

describe("dead letters", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let worker: FeaturesWorker;

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_dlq"));
    worker = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0 });
  });
  after(async () => {
    await worker?.stop();
    await env?.cleanup();
  });

  test("bad events go to the dead-letter subject with their reason, and the stream moves on", async () => {
    const { js, nc, runtime } = env;
    const names = runtime.names;
    const now = Date.now();
    const good = (id: string) => ({ event_id: id, user_id: "u1", event_type: "click", page_id: "p1", session_duration: 5, amount: 0, event_time: now - 1000 });
    const bad: [string | Uint8Array, string, string?][] = [
      ["{oops", "invalid_json"],
      [JSON.stringify([good("x")]), "not_an_object"],
      [JSON.stringify({ ...good("m"), user_id: undefined }), "missing_field"],
      [JSON.stringify({ ...good("w"), session_duration: "long" }), "wrong_type"],
      [JSON.stringify({ ...good("t0"), event_time: 0 }), "absurd_timestamp"],
      [JSON.stringify({ ...good("tf"), event_time: now + 3_600_000 }), "absurd_timestamp"],
      [new Uint8Array([0x0a, 0xff, 0x01]), "invalid_protobuf", "application/protobuf"],
      // Two sessions or purchases this large would sum to Infinity in u1's window.
      [JSON.stringify({ ...good("big1"), session_duration: 1.7e308 }), "invalid_value"],
      [JSON.stringify({ ...good("big2"), session_duration: 1.7e308 }), "invalid_value"],
      [JSON.stringify({ ...good("buy1"), event_type: "purchase", amount: 1.7e308 }), "invalid_value"],
      [JSON.stringify({ ...good("buy2"), event_type: "purchase", amount: 1.7e308 }), "invalid_value"],
    ];
    const sent = new Map<number, { data: Uint8Array; reason: string }>();
    await publishEvents(js, names, [{ ...good("g1") }]);
    for (const [body, reason, contentType] of bad) {
      const data = typeof body === "string" ? new TextEncoder().encode(body) : body;
      const h = natsHeaders();
      if (contentType) h.set("Content-Type", contentType);
      h.set("X-Client", "test");
      const ack = await js.publish(names.eventsSubject, data, { headers: h });
      sent.set(ack.seq, { data, reason });
    }
    await publishEvents(js, names, [good("g2")], { encodings: ["protobuf"] });
    await waitConsumerDrained(nc, names);

    assert.equal(worker.stats.deadLetters, bad.length);
    assert.deepEqual(worker.stats.applied, { user: 2, item: 2 }, "the good events around the bad ones were applied");
    const online = await runtime.redis().hgetall(names.userFeaturesKey("u1"));
    assert.equal(online.event_count, "2");
    assert.equal(online.avg_session_duration, "5", "the aggregations stay finite");
    assert.equal(online.purchase_amount, "0");

    const jsm = await nc.jetstreamManager();
    const info = await jsm.streams.info(names.eventsStream, { subjects_filter: names.deadLetterSubject });
    assert.equal(info.state.subjects?.[names.deadLetterSubject], bad.length, "one dead letter per bad event");
    const reasons: Record<string, number> = {};
    for (let seq = 1; seq <= info.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(names.eventsStream, { seq });
      if (m.subject !== names.deadLetterSubject) continue;
      const original = sent.get(Number(m.header.get(DEAD_LETTER_SEQUENCE_HEADER)));
      assert.ok(original, `dead letter ${seq} points at a message that was sent bad`);
      assert.equal(m.header.get(DEAD_LETTER_REASON_HEADER), original.reason);
      assert.ok(m.header.get(DEAD_LETTER_DETAIL_HEADER).length > 0, "a detail for humans");
      assert.equal(m.header.get("X-Client"), "test", "the original headers travel along");
      assert.deepEqual(new Uint8Array(m.data), original.data, "the original bytes, untouched");
      reasons[original.reason] = (reasons[original.reason] ?? 0) + 1;
    }
    for (const [reason, n] of Object.entries(reasons)) {
      assert.equal(await runtime.metrics.value("streamserve_features_dead_letters_total", { reason }), n, `metric for ${reason}`);
    }
  });
});

describe("trending set size", () => {
  let env: Awaited<ReturnType<typeof testRuntime>>;
  let worker: FeaturesWorker;

  before(async () => {
    env = await testRuntime(uniqueNamespace("feat_trend"));
    worker = await startFeaturesWorker(env.runtime, { progressIntervalMs: 0, trending: { ...TRENDING, maxItems: 5 } });
  });
  after(async () => {
    await worker?.stop();
    await env?.cleanup();
  });

  test("keeps the top maxItems items, recent activity outweighing older activity", async () => {
    // Page i gets i+1 views at 12:00; page "fresh" gets 4 views two hours later, worth 4·2^4 = 64 views at 12:00.
    const events: TestEvent[] = [];
    for (let i = 0; i < 10; i++) {
      for (let j = 0; j <= i; j++) {
        events.push({ event_id: `v${i}-${j}`, user_id: "u", event_type: "view", page_id: `p${i}`, session_duration: 1, amount: 0, event_time: T0 + j });
      }
    }
    for (let j = 0; j < 4; j++) {
      events.push({
        event_id: `f${j}`,
        user_id: "u",
        event_type: "view",
        page_id: "fresh",
        session_duration: 1,
        amount: 0,
        event_time: T0 + 2 * 3_600_000 + j,
      });
    }
    await publishEvents(env.js, env.runtime.names, events);
    await waitConsumerDrained(env.nc, env.runtime.names);
    const top = await env.runtime.redis().zrevrange(env.runtime.names.trendingKey, 0, -1);
    assert.deepEqual(top, ["fresh", "p9", "p8", "p7", "p6"]);
  });
});
