// A batch's write set (batch-planner.ts) as the Redis commands of its transaction, encoded
// straight into bytes: the online hashes from pre-encoded templates (they are most of the bytes
// a batch sends), the window state comma-packed, the trending set scored. The public hashes and
// the trending set are in the transaction, or (projectSeparately) in a projection sent after it:
// absolute values, so writing one again writes the same thing.
import type { Names } from "../lib/config.js";
import { encodeArgs, encodeCommandHeader, RespWriter } from "../lib/resp.js";
import type { FeatureView } from "./definitions.js";
import type { TrendingSpec } from "./window-store.js";
import type { StoreKeys } from "./store-keys.js";
import type { WriteSet } from "./batch-planner.js";
import { featureNames, featureValues, type StateValues } from "./windows.js";

const HSET = encodeArgs("HSET");
const PEXPIRE = encodeCommandHeader("PEXPIRE", 3);
const ONE = encodeArgs("1");

/** The public hash's fields after the features, the same for every view. */
const PUBLIC_FIELDS = {
  windowStart: encodeArgs("window_start"),
  windowEnd: encodeArgs("window_end"),
  eventCount: encodeArgs("event_count"),
  featureTime: encodeArgs("feature_time"),
  updatedAt: encodeArgs("updated_at"),
};

/** Pre-encoded pieces of a view's public-hash HSET: its header and feature names. */
interface PublicTemplate {
  head: Buffer;
  fields: Buffer[];
}

export interface WriteEncoderOptions {
  keys: StoreKeys;
  names: Names;
  views: readonly FeatureView[];
  trending: { view: FeatureView; spec: TrendingSpec } | null;
  /** TTL of the public feature hashes, ms. */
  featureTtlMs: number;
  /** TTL of an open window's state and markers, ms. */
  openWindowTtlMs: number;
  /** Public hashes and the trending set go in encodeProjection(), not in the transaction. */
  projectSeparately: boolean;
}

export class WriteEncoder {
  private readonly featureTtl: Buffer;
  private readonly openTtl: Buffer;
  private readonly templates = new Map<FeatureView, PublicTemplate>();
  private readonly featureScratch: number[] = [];
  /** The size of the last batch's writes: the next one's buffer starts there. */
  private writeBytes = 64 * 1024;

  constructor(private readonly o: WriteEncoderOptions) {
    this.featureTtl = encodeArgs(o.featureTtlMs);
    this.openTtl = encodeArgs(o.openWindowTtlMs);
    for (const v of o.views) {
      const names = featureNames(v);
      this.templates.set(v, {
        head: encodeCommandHeader("HSET", 2 + 2 * (names.length + Object.keys(PUBLIC_FIELDS).length)),
        fields: names.map((n) => encodeArgs(n)),
      });
    }
  }

  /** The batch's commands, in order: markers, each window's state, distinct values, listing and public hashes, the trending set, the event-time high. */
  encode(ws: WriteSet): RespWriter {
    const separate = this.o.projectSeparately;
    const k = this.o.keys;
    const w = new RespWriter(this.writeBytes);
    for (const [b, ids] of ws.markBuckets) {
      const key = k.seen(b);
      w.command(2 + 2 * ids.length)
        .raw(HSET)
        .string(key);
      for (const id of ids) w.string(id).raw(ONE);
      w.raw(PEXPIRE, 1).string(key).raw(this.openTtl);
    }
    const nowBytes = encodeArgs(ws.now);
    for (const { view, windowStart, changed, added, opened } of ws.windows) {
      if (changed.length === 0) continue;
      const stateKey = k.state(view.entity, windowStart);
      w.command(2 + 2 * changed.length)
        .raw(HSET)
        .string(stateKey);
      for (const g of changed) pack(w.string(g.entityId), g.state!);
      w.raw(PEXPIRE, 1).string(stateKey).raw(this.openTtl);
      if (added.length > 0) {
        const dkey = k.distinct(view.entity, windowStart);
        w.command(2 + 2 * added.length)
          .raw(HSET)
          .string(dkey);
        for (const f of added) w.string(f).raw(ONE);
        w.raw(PEXPIRE, 1).string(dkey).raw(this.openTtl);
      }
      if (opened) w.args(["HSET", k.windows(view.entity), windowStart, "open"]);
      // The public hash shows the entity's newest window: an older one still open (events out
      // of order within the watermark) updates its state but leaves the hash alone.
      if (separate) continue;
      const window = [encodeArgs(windowStart), encodeArgs(windowStart + view.windowMs)] as const;
      for (const g of changed) if (!g.newer) this.publicWrites(w, view, g.entityId, window, g.state!, nowBytes);
    }
    if (this.o.trending) {
      this.trendState(w, ws.trend);
      if (!separate) this.trendScores(w, ws.trend, this.o.trending.spec);
    }
    if (ws.raisesHigh) w.args(["SET", k.eventTimeHigh, ws.high]);
    this.writeBytes = Math.max(64 * 1024, w.bytes.length);
    return w;
  }

  /**
   * The batch's projection when it is written apart from the transaction: the public hash of each
   * entity it changed or saw redelivered (its newest window's state) and their trending scores;
   * with `only`, just the keys it accepts (a cluster master's share).
   */
  encodeProjection(ws: WriteSet, only?: (key: string) => boolean): RespWriter {
    const w = new RespWriter(16 * 1024);
    const nowBytes = encodeArgs(ws.now);
    for (const { view, windowStart, changed, replayed } of ws.windows) {
      const window = [encodeArgs(windowStart), encodeArgs(windowStart + view.windowMs)] as const;
      for (const g of changed)
        if (!g.newer && (!only || only(publicKey(this.o.names, view, g.entityId)))) this.publicWrites(w, view, g.entityId, window, g.state!, nowBytes);
      for (const g of replayed)
        if (!only || only(publicKey(this.o.names, view, g.entityId))) this.publicWrites(w, view, g.entityId, window, g.state!, nowBytes);
    }
    if (this.o.trending && (!only || only(this.o.names.trendingKey))) {
      this.trendScores(w, ws.trend, this.o.trending.spec);
      this.trendScores(w, ws.trendReplayed, this.o.trending.spec);
    }
    return w;
  }

  /** An entity's public hash (its newest window's features and when they were computed) and its TTL. */
  private publicWrites(w: RespWriter, view: FeatureView, entityId: string, window: readonly [Buffer, Buffer], s: StateValues, now: Buffer): void {
    const t = this.templates.get(view)!;
    const key = publicKey(this.o.names, view, entityId);
    const f = featureValues(view, s, this.featureScratch);
    w.raw(t.head, 1).string(key);
    for (let i = 0; i < f.length; i++) w.raw(t.fields[i]!).number(f[i]!);
    const p = PUBLIC_FIELDS;
    w.raw(p.windowStart)
      .raw(window[0])
      .raw(p.windowEnd)
      .raw(window[1])
      .raw(p.eventCount)
      .number(s[0]!)
      .raw(p.featureTime)
      .number(s[1]!)
      .raw(p.updatedAt)
      .raw(now);
    w.raw(PEXPIRE, 1).string(key).raw(this.featureTtl);
  }

  /** Each item's decayed activity ("s r"). */
  private trendState(w: RespWriter, after: Map<string, [number, number]>): void {
    if (after.size === 0) return;
    w.command(2 + 2 * after.size)
      .raw(HSET)
      .string(this.o.keys.trend);
    for (const [item, [s, ref]] of after) {
      const value = w.string(item).beginValue();
      w.valueNumber(s).valueAscii(" ").valueNumber(ref).endValue(value);
    }
  }

  /** Each item's trending score; the set trimmed to its size. */
  private trendScores(w: RespWriter, after: Map<string, [number, number]>, spec: TrendingSpec): void {
    const H = spec.halfLifeMs;
    let ranked = 0;
    for (const [, [s]] of after) if (s > 0) ranked++;
    if (ranked === 0) return;
    // log2 of the activity decayed to the epoch: items compare like their activity at any
    // common instant, and more activity only raises a score, so ZADD GT is order-free.
    const trendingKey = this.o.names.trendingKey;
    w.command(3 + 2 * ranked)
      .string("ZADD")
      .string(trendingKey)
      .string("GT");
    for (const [item, [s, ref]] of after) if (s > 0) w.number(ref / H + Math.log2(s)).string(item);
    w.args(["ZREMRANGEBYRANK", trendingKey, 0, -(spec.maxItems + 1)]);
  }
}

/** `user_features:{id}` or `item_features:{id}`. */
export function publicKey(names: Names, view: FeatureView, entityId: string): string {
  return view.entity === "user" ? names.userFeaturesKey(entityId) : names.itemFeaturesKey(entityId);
}

/** A window's state as its Redis value: the state values, comma-separated ("" where absent). */
function pack(w: RespWriter, s: StateValues): void {
  const mark = w.beginValue();
  for (let i = 0; i < s.length; i++) {
    if (i > 0) w.valueAscii(",");
    if (s[i] === s[i]) w.valueNumber(s[i]!);
  }
  w.endValue(mark);
}
