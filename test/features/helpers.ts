// Shared by the features tests: an isolated namespace on the real NATS and Redis, a seeded event
// generator, and the seed pipeline's features computed independently of features/ (plain loops
// over the events, the formulas written out as in the seed's Spark job).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { headers as natsHeaders, type JetStreamClient, type NatsConnection } from "nats";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRuntime, type Runtime } from "../../lib/runtime.js";
import { deleteNamespace } from "../../lib/nats.js";
import { deleteKeysWithPrefix, isCluster } from "../../lib/redis.js";
import type { Names } from "../../lib/config.js";
import { ActivityEventSchema } from "../../gen/streamserve/v1/events_pb.js";
import type { ActivityEvent } from "../../features/definitions.js";
import { FeatureWindowLogSchema } from "../../gen/streamserve/v1/logs_pb.js";

export const WINDOW_MS = 5 * 60_000;
export const WATERMARK_MS = 10 * 60_000;
export const HALF_LIFE_MS = 30 * 60_000;
export const TREND_WEIGHTS: Record<string, number> = { view: 1, click: 3, purchase: 10 };

export function uniqueNamespace(tag: string): string {
  return `t_${tag}_${randomBytes(4).toString("hex")}`;
}

/** A runtime on a fresh namespace (streams ensured), and the cleanup that removes all of it. */
export async function testRuntime(
  namespace: string,
  config: { redisUrl?: string } = {},
): Promise<{ runtime: Runtime; nc: NatsConnection; js: JetStreamClient; cleanup(): Promise<void> }> {
  const runtime = createRuntime({ namespace, logLevel: process.env.TEST_LOG_LEVEL ?? "silent", ...config });
  const nc = await runtime.nats();
  return {
    runtime,
    nc,
    js: nc.jetstream(),
    async cleanup() {
      await deleteNamespace(nc, runtime.names).catch(() => undefined);
      await deleteKeysWithPrefix(runtime.redis(), runtime.names.redisPrefix).catch(() => undefined);
      await runtime.close();
    },
  };
}

/** An event as a client publishes it (event_time in epoch ms). */
export type TestEvent = ActivityEvent;

export interface EventSetOptions {
  count: number;
  users: number;
  pages: number;
  startMs: number;
  /** Event times spread evenly over this span (then jittered). */
  spanMs: number;
  /** Each event's time moves by up to ± this much, so arrival order is not time order. */
  jitterMs?: number;
  seed?: number;
  idPrefix?: string;
}

/** A deterministic pseudo-random clickstream, in publishing order. */
export function makeEvents(o: EventSetOptions): TestEvent[] {
  const rnd = mulberry32(o.seed ?? 1);
  const pick = (n: number) => Math.floor(rnd() * n);
  const events: TestEvent[] = [];
  for (let i = 0; i < o.count; i++) {
    const r = rnd();
    const type = r < 0.55 ? "view" : r < 0.85 ? "click" : r < 0.95 ? "purchase" : "share";
    const jitter = o.jitterMs ? Math.round((rnd() * 2 - 1) * o.jitterMs) : 0;
    events.push({
      event_id: `${o.idPrefix ?? "e"}${i}`,
      // Skewed towards low ids, so some users and pages have many events per window.
      user_id: `u${Math.floor(rnd() * rnd() * o.users)}`,
      event_type: type,
      page_id: `p${pick(o.pages)}`,
      session_duration: Math.round(rnd() * 60000) / 100,
      // Amounts on non-purchases too: the seed sums purchase amounts only.
      amount: type === "purchase" ? Math.round(rnd() * 20000) / 100 : rnd() < 0.2 ? 5 : 0,
      event_time: Math.max(o.startMs, Math.round(o.startMs + (i / o.count) * o.spanMs + jitter)),
    });
  }
  return events;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ExpectedWindow {
  entity: "user" | "item";
  id: string;
  windowStart: number;
  features: Record<string, number>;
  eventCount: number;
  maxEventTime: number;
}

/** Per entity and 5-minute window, the seed's user features and the item features, from scratch. */
export function expectedWindows(events: readonly TestEvent[]): ExpectedWindow[] {
  const byKey = new Map<string, TestEvent[]>();
  const seen = new Set<string>();
  for (const e of events) {
    if (seen.has(e.event_id)) continue; // an event id counts once
    seen.add(e.event_id);
    const start = Math.floor(e.event_time / WINDOW_MS) * WINDOW_MS;
    for (const k of [`user|${e.user_id}|${start}`, `item|${e.page_id}|${start}`]) {
      let list = byKey.get(k);
      if (!list) byKey.set(k, (list = []));
      list.push(e);
    }
  }
  const out: ExpectedWindow[] = [];
  for (const [k, list] of byKey) {
    const [entity, id, start] = k.split("|") as ["user" | "item", string, string];
    const maxEventTime = Math.max(...list.map((e) => e.event_time));
    let features: Record<string, number>;
    if (entity === "user") {
      const clicks = list.filter((e) => e.event_type === "click").length;
      const avg = list.reduce((s, e) => s + e.session_duration, 0) / list.length;
      const unique = new Set(list.map((e) => e.page_id)).size;
      const purchase = list.filter((e) => e.event_type === "purchase").reduce((s, e) => s + e.amount, 0);
      features = {
        clicks_last_5min: clicks,
        avg_session_duration: avg,
        unique_pages_viewed: unique,
        purchase_amount: purchase,
        engagement_score: clicks * 0.3 + unique * 0.4 + (purchase > 0 ? 30 : 0),
      };
    } else {
      const views = list.filter((e) => e.event_type === "view").length;
      const clicks = list.filter((e) => e.event_type === "click").length;
      features = {
        item_views_5min: views,
        item_clicks_5min: clicks,
        item_purchases_5min: list.filter((e) => e.event_type === "purchase").length,
        item_ctr_5min: views > 0 ? clicks / views : 0,
      };
    }
    out.push({ entity, id, windowStart: Number(start), features, eventCount: list.length, maxEventTime });
  }
  return out;
}

/** The newest window of each entity: what its online hash must show. */
export function latestWindows(windows: readonly ExpectedWindow[]): Map<string, ExpectedWindow> {
  const latest = new Map<string, ExpectedWindow>();
  for (const w of windows) {
    const k = `${w.entity}:${w.id}`;
    const cur = latest.get(k);
    if (!cur || w.windowStart > cur.windowStart) latest.set(k, w);
  }
  return latest;
}

/** Each item's decayed activity, as log2 of Σ weight·2^(t/halfLife) (the trending set's score). */
export function expectedTrendingScores(events: readonly TestEvent[]): Map<string, number> {
  const seen = new Set<string>();
  const byItem = new Map<string, { t: number; w: number }[]>();
  for (const e of events) {
    if (seen.has(e.event_id)) continue;
    seen.add(e.event_id);
    const w = TREND_WEIGHTS[e.event_type];
    if (!w) continue;
    let list = byItem.get(e.page_id);
    if (!list) byItem.set(e.page_id, (list = []));
    list.push({ t: e.event_time, w });
  }
  const scores = new Map<string, number>();
  for (const [item, list] of byItem) {
    // Relative to the newest event, so the sum stays in range: log2 Σ w 2^((t - T)/H) + T/H.
    const T = Math.max(...list.map((x) => x.t));
    const s = list.reduce((acc, x) => acc + x.w * 2 ** ((x.t - T) / HALF_LIFE_MS), 0);
    scores.set(item, T / HALF_LIFE_MS + Math.log2(s));
  }
  return scores;
}

export type Encoding = "json-ms" | "json-iso" | "protobuf";

export function encodeEvent(e: TestEvent, encoding: Encoding): { data: Uint8Array; contentType?: string } {
  if (encoding === "protobuf") {
    const m = create(ActivityEventSchema, {
      eventId: e.event_id,
      userId: e.user_id,
      eventType: e.event_type,
      pageId: e.page_id,
      sessionDuration: e.session_duration,
      amount: e.amount,
      eventTime: timestampFromMs(e.event_time),
    });
    return { data: toBinary(ActivityEventSchema, m), contentType: "application/protobuf" };
  }
  const body = encoding === "json-iso" ? { ...e, event_time: new Date(e.event_time).toISOString() } : e;
  return { data: new TextEncoder().encode(JSON.stringify(body)) };
}

/** Publishes events (concurrently, in order of submission), cycling through the encodings. */
export async function publishEvents(
  js: JetStreamClient,
  names: Names,
  events: readonly TestEvent[],
  options: { encodings?: Encoding[]; msgId?: (e: TestEvent, i: number) => string | undefined; chunk?: number } = {},
): Promise<void> {
  const encodings = options.encodings ?? ["json-ms"];
  const chunk = options.chunk ?? 500;
  for (let from = 0; from < events.length; from += chunk) {
    await Promise.all(
      events.slice(from, from + chunk).map((e, j) => {
        const i = from + j;
        const { data, contentType } = encodeEvent(e, encodings[i % encodings.length]!);
        const h = natsHeaders();
        if (contentType) h.set("Content-Type", contentType);
        const msgID = options.msgId?.(e, i);
        return js.publish(names.eventsSubject, data, { headers: h, ...(msgID ? { msgID } : {}) });
      }),
    );
  }
}

export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits until the features consumer has every message of the stream delivered and acked. */
export async function waitConsumerDrained(nc: NatsConnection, names: Names, timeoutMs = 60_000): Promise<void> {
  const jsm = await nc.jetstreamManager();
  await waitFor(
    "the features consumer to ack everything",
    async () => {
      const info = await jsm.consumers.info(names.eventsStream, names.consumer("features"));
      return info.num_pending === 0 && info.num_ack_pending === 0 && info.delivered.stream_seq > 0;
    },
    timeoutMs,
  );
}

export interface LoggedWindow {
  entity: string;
  id: string;
  windowStart: number;
  windowEnd: number;
  features: Record<string, number>;
  eventCount: number;
  msgId: string | undefined;
  contentType: string | undefined;
}

/** Every FeatureWindowLog stored in the namespace's LOGS stream, in stream order. */
export async function readFeatureWindowLogs(nc: NatsConnection, names: Names): Promise<LoggedWindow[]> {
  const jsm = await nc.jetstreamManager();
  const info = await jsm.streams.info(names.logsStream);
  const out: LoggedWindow[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(names.logsStream, { seq });
    if (m.subject !== names.logsSubject("feature_window")) continue;
    const log = fromBinary(FeatureWindowLogSchema, m.data);
    out.push({
      entity: log.entityType,
      id: log.entityId,
      windowStart: timestampMs(log.windowStart!),
      windowEnd: timestampMs(log.windowEnd!),
      features: { ...log.features },
      eventCount: Number(log.eventCount),
      msgId: m.header.get("Nats-Msg-Id") || undefined,
      contentType: m.header.get("Content-Type") || undefined,
    });
  }
  return out;
}

export function assertNear(actual: number, expected: number, what: string, relTol = 1e-9): void {
  const ok = Math.abs(actual - expected) <= relTol * Math.max(1, Math.abs(expected));
  assert.ok(ok, `${what}: expected ${expected}, got ${actual}`);
}

export function assertFeatures(actual: Record<string, number | string>, expected: Record<string, number>, what: string): void {
  for (const [name, v] of Object.entries(expected)) {
    assert.ok(name in actual, `${what}: feature ${name} missing (has ${Object.keys(actual).join(", ")})`);
    assertNear(Number(actual[name]), v, `${what} ${name}`);
  }
}

/** Compares every entity's online hash with its newest expected window; returns how many were checked. */
export async function assertOnlineStore(runtime: Runtime, windows: readonly ExpectedWindow[], ttlSeconds = runtime.config.featureTtlSeconds): Promise<number> {
  const redis = runtime.redis();
  const latest = [...latestWindows(windows).values()];
  const keyOf = (w: ExpectedWindow) => (w.entity === "user" ? runtime.names.userFeaturesKey(w.id) : runtime.names.itemFeaturesKey(w.id));
  let replies: [unknown, unknown][];
  if (isCluster(redis)) {
    // A cluster pipeline takes keys of one slot: one call per key, all at once.
    replies = (await Promise.all(latest.flatMap((w) => [redis.hgetall(keyOf(w)), redis.pttl(keyOf(w))]))).map((r) => [null, r]);
  } else {
    const pipe = redis.pipeline();
    for (const w of latest) pipe.hgetall(keyOf(w)).pttl(keyOf(w));
    replies = (await pipe.exec())!;
  }
  latest.forEach((w, i) => {
    const hash = replies[2 * i]![1] as Record<string, string>;
    const ttl = replies[2 * i + 1]![1] as number;
    const what = `${w.entity} ${w.id} window ${new Date(w.windowStart).toISOString()}`;
    assert.ok(Object.keys(hash).length > 0, `${what}: no online hash`);
    assert.equal(Number(hash.window_start), w.windowStart, `${what}: online hash shows another window`);
    assert.equal(Number(hash.event_count), w.eventCount, `${what}: event_count`);
    assert.equal(Number(hash.feature_time), w.maxEventTime, `${what}: feature_time`);
    assertFeatures(hash, w.features, what);
    assert.ok(ttl > 0 && ttl <= ttlSeconds * 1000, `${what}: TTL ${ttl} ms, expected (0, ${ttlSeconds} s]`);
  });
  return latest.length;
}

/** Checks the LOGS stream holds exactly the expected closed windows, once each. */
export function assertClosedWindows(logged: readonly LoggedWindow[], expected: readonly ExpectedWindow[]): void {
  const byKey = new Map<string, LoggedWindow>();
  for (const l of logged) {
    const k = `${l.entity}|${l.id}|${l.windowStart}`;
    assert.ok(!byKey.has(k), `window ${k} was logged twice`);
    byKey.set(k, l);
  }
  for (const w of expected) {
    const k = `${w.entity}|${w.id}|${w.windowStart}`;
    const l = byKey.get(k);
    assert.ok(l, `closed window ${k} was not logged`);
    assert.equal(l.windowEnd, w.windowStart + WINDOW_MS, `${k} window_end`);
    assert.equal(l.eventCount, w.eventCount, `${k} event_count`);
    assert.equal(l.msgId, `fw:${w.entity}:${w.id}:${w.windowStart}`, `${k} Nats-Msg-Id`);
    assert.equal(l.contentType, "application/protobuf", `${k} Content-Type`);
    assertFeatures(l.features, w.features, k);
  }
  assert.equal(byKey.size, expected.length, `logged ${byKey.size} windows, expected ${expected.length}`);
}

/** An event far past every test window, published after the others: the watermark it raises closes them all. */
export function closingEvent(eventTime: number): TestEvent {
  return { event_id: "flush", user_id: "flush-user", event_type: "view", page_id: "flush-page", session_duration: 0, amount: 0, event_time: eventTime };
}

/**
 * Partitioned (partitions > 1): waits until the router's consumer and every partition's have
 * every message delivered and acked (a partition's consumer exists once a worker leased it).
 */
export async function waitPartitionsDrained(nc: NatsConnection, names: Names, partitions: number, timeoutMs = 60_000): Promise<void> {
  const jsm = await nc.jetstreamManager();
  const consumers = [
    names.consumer("features-router"),
    ...Array.from({ length: partitions }, (_, p) => names.consumer(`features-p${String(p).padStart(2, "0")}`)),
  ];
  await waitFor(
    "the router and every partition to ack everything",
    async () => {
      for (const c of consumers) {
        const info = await jsm.consumers.info(names.eventsStream, c).catch(() => undefined);
        if (!info) throw new Error(`${c} does not exist`);
        if (info.num_pending !== 0 || info.num_ack_pending !== 0) throw new Error(`${c}: ${info.num_pending} pending, ${info.num_ack_pending} unacked`);
      }
      return true;
    },
    timeoutMs,
  );
}

/** A `streamserve features` process of a test's own, started from source, its stderr kept for the asserts. */
export interface FeaturesProcess {
  child: ChildProcess;
  stderr: string[];
  exited: Promise<number | null>;
}

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Starts `streamserve features --namespace NS --http-port 0 …flags --progress 0 --log-level info` (env over the test's). */
export function spawnFeaturesProcess(namespace: string, flags: string[], env: NodeJS.ProcessEnv = {}): FeaturesProcess {
  const child = spawn(
    process.execPath,
    [...["--import", "tsx", "cli/main.ts", "features", "--namespace", namespace, "--http-port", "0"], ...flags, ...["--progress", "0", "--log-level", "info"]],
    { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } },
  );
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on("data", (s: string) => stderr.push(s));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stderr, exited };
}
