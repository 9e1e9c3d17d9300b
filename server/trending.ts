// The trending items, kept in memory and refreshed from Redis in the background, so that a
// Recommend without candidates (and the popularity fallback) never waits on Redis and still
// answers while Redis is down, with the last list it saw.
import type { Redis } from "../lib/redis.js";
import type { Logger } from "../lib/logger.js";

export interface TrendingOptions {
  /** @default 1000 ms */
  refreshMs?: number;
  /** Items kept. @default 200 */
  size?: number;
}

export class TrendingCache {
  private items: string[] = [];
  private scores = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private failing = false;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly log: Logger,
    private readonly options: TrendingOptions = {},
  ) {}

  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.options.refreshMs ?? 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Item ids, most trending first. */
  top(n: number): string[] {
    return this.items.slice(0, n);
  }

  /** Popularity score of an item (0 when it is not trending). */
  score(item: string): number {
    return this.scores.get(item) ?? 0;
  }

  async refresh(): Promise<void> {
    try {
      const flat = await this.redis.zrevrange(this.key, 0, (this.options.size ?? 200) - 1, "WITHSCORES");
      const items: string[] = [];
      const scores = new Map<string, number>();
      for (let i = 0; i < flat.length; i += 2) {
        items.push(flat[i]!);
        scores.set(flat[i]!, Number(flat[i + 1]));
      }
      this.items = items;
      this.scores = scores;
      if (this.failing) this.log.info("trending items readable again");
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.log.warn({ err: (err as Error).message }, "cannot refresh trending items; serving the last list");
      this.failing = true;
    }
  }
}
