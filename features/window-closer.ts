// Closes the windows the watermark has passed: each is marked closed (from then on no batch can
// apply an event to it: every batch checks its window's status, and the version raised here fails
// the EXEC of one that read it open), its final rows are handed over to be logged, then its state,
// distinct values and spent event-id markers are dropped. Old window entries and stale trend
// activity are forgotten later. Through ioredis: none of this is on the hot path.
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import type { FeatureView } from "./definitions.js";
import type { TrendingSpec } from "./window-store.js";
import { trendOf, unpack, type StoreKeys, type WindowStatus } from "./store-keys.js";
import { featuresOf, isWindowClosed, watermarkOf, windowStart } from "./windows.js";

/** A window whose final row was read to be logged. */
export interface ClosedWindow {
  view: FeatureView;
  entityId: string;
  windowStart: number;
  windowEnd: number;
  features: Record<string, number>;
  eventCount: number;
}

export interface WindowCloserOptions {
  redis: Redis;
  keys: StoreKeys;
  names: Names;
  views: readonly FeatureView[];
  trending: { view: FeatureView; spec: TrendingSpec } | null;
  /** Width of an event-id marker bucket (the shortest window). */
  bucketMs: number;
  /** How long (event time) a published window stays listed, refusing stragglers from slower workers. */
  closedWindowTtlMs: number;
  /** How long (event time) an item's trend activity is kept after its last event (0: for ever). */
  trendTtlMs: number;
}

export class WindowCloser {
  constructor(private readonly o: WindowCloserOptions) {}

  /**
   * Closes the view's windows that the watermark has passed: refuses further events for each,
   * hands its final rows to `publish` (in chunks; the rows carry ids that make a repeat harmless),
   * then forgets its state. Returns the number of rows published. A close cut short is finished
   * by the next call, here or in another worker.
   */
  async closeDue(view: FeatureView, high: number, publish: (rows: ClosedWindow[]) => Promise<void>, chunk = 1000): Promise<number> {
    const watermark = watermarkOf(view, high);
    if (!Number.isFinite(watermark)) return 0;
    const { redis, keys: k } = this.o;
    let rows = 0;
    const windows = await this.windows(view);
    const due = [...windows]
      .filter(([ws, s]) => s !== "published" && isWindowClosed(ws + view.windowMs, watermark))
      .map(([ws]) => ws)
      .sort((a, b) => a - b);
    for (const ws of due) {
      // From here on every writer sees the window closed: a batch that read it open fails its EXEC.
      await redis.multi().hset(k.windows(view.entity), String(ws), "closed").incr(k.version).exec();
      let cursor = "0";
      do {
        const [next, flat] = await redis.hscan(k.state(view.entity, ws), cursor, "COUNT", chunk);
        cursor = next;
        const out: ClosedWindow[] = [];
        for (let i = 0; i < flat.length; i += 2) {
          const state = unpack(flat[i + 1]!, view);
          out.push({ view, entityId: flat[i]!, windowStart: ws, windowEnd: ws + view.windowMs, features: featuresOf(view, state), eventCount: state[0]! || 0 });
        }
        if (out.length > 0) await publish(out);
        rows += out.length;
      } while (cursor !== "0");
      await redis
        .multi()
        .hset(k.windows(view.entity), String(ws), "published")
        .del(k.state(view.entity, ws), k.distinct(view.entity, ws), ...this.spentMarkers([ws], view, high))
        .incr(k.version)
        .exec();
    }
    await this.forget(view, windows, high);
    return rows;
  }

  /** A view's windows and their status. */
  private async windows(view: FeatureView): Promise<Map<number, WindowStatus>> {
    const h = await this.o.redis.hgetall(this.o.keys.windows(view.entity));
    return new Map(Object.entries(h).map(([ws, s]) => [Number(ws), s as WindowStatus]));
  }

  /**
   * The applied-event marker buckets within these windows of a view that no view can apply an
   * event of any more (every view's window around them closed). Dropped when a window is
   * published, and again when it is forgotten (for a view that closed last without a window there).
   */
  private spentMarkers(windows: readonly number[], view: FeatureView, high: number): string[] {
    const { views, bucketMs, keys } = this.o;
    const closedByAll = (b: number) => views.every((v) => isWindowClosed(windowStart(b, v.windowMs) + v.windowMs, watermarkOf(v, high)));
    const out: string[] = [];
    for (const ws of windows) {
      for (let b = windowStart(ws, bucketMs); b < ws + view.windowMs; b += bucketMs) if (closedByAll(b)) out.push(keys.seen(b));
    }
    return out;
  }

  /** Drops what no event can need any more: old window entries (and their markers), stale trend activity. */
  private async forget(view: FeatureView, windows: Map<number, WindowStatus>, high: number): Promise<void> {
    const { redis, keys: k, closedWindowTtlMs, trendTtlMs } = this.o;
    const watermark = watermarkOf(view, high);
    const old = [...windows].filter(([ws, s]) => s === "published" && ws + view.windowMs <= watermark - closedWindowTtlMs).map(([ws]) => ws);
    if (old.length > 0) {
      const markers = this.spentMarkers(old, view, high);
      const tx = redis.multi().hdel(k.windows(view.entity), ...old.map(String));
      if (markers.length > 0) tx.del(...markers);
      await tx.incr(k.version).exec();
    }
    if (this.o.trending?.view === view && trendTtlMs > 0 && old.length > 0) {
      let cursor = "0";
      do {
        const [next, flat] = await redis.hscan(k.trend, cursor, "COUNT", 1000);
        cursor = next;
        const stale: string[] = [];
        for (let i = 0; i < flat.length; i += 2) if (trendOf(flat[i + 1]!)[1] + trendTtlMs < high) stale.push(flat[i]!);
        if (stale.length > 0) {
          await redis
            .multi()
            .hdel(k.trend, ...stale)
            .incr(k.version)
            .exec();
          // Apart: on a Redis Cluster the trending set lives in another slot than a partition's keys.
          await redis.zrem(this.o.names.trendingKey, ...stale);
        }
      } while (cursor !== "0");
    }
  }
}
