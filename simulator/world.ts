// The simulated site and its hidden truth: users with a latent engagement, a preferred device
// and a favourite topic; pages with a topic, a popularity (how often people land on them) and an
// appeal (how likely a shown page is clicked) that are drawn independently, so a ranking by
// popularity alone is not the best one. The truth reads only what the feature pipeline can see
// traces of (engagement → clicks, pages, purchases; appeal → item click-through; device; the
// current page's topic), so a trained model can learn it and beat the popularity fallback.
//
// `shift()` changes the world mid-run: mobile sessions grow longer and engage more, and a page
// that nobody visited becomes the most popular one. Feature and prediction drift are then real.
import { createRandom, cumulative, type Random } from "./random.js";
import { withDefaults } from "../lib/options.js";

export const DEVICES = ["desktop", "mobile", "tablet"] as const;
export type Device = (typeof DEVICES)[number];

export interface SimUser {
  id: string;
  /** Latent engagement in [0, 1]: how much the user clicks, browses and buys. */
  engagement: number;
  device: Device;
  favoriteTopic: number;
  /** Propensity to buy after a click, in [0, 1]. */
  buyer: number;
}

export interface SimPage {
  id: string;
  topic: number;
  /** Relative weight of landing on the page while browsing. */
  popularity: number;
  /** Intrinsic click appeal in [0, 1], independent of popularity. */
  appeal: number;
  /** Price of a purchase on the page. */
  price: number;
}

export interface WorldOptions {
  /** @default 1000 */
  users?: number;
  /** @default 200 */
  pages?: number;
  /** @default 8 */
  topics?: number;
  /** @default 42 */
  seed?: number | string;
}

export const WORLD_DEFAULTS: Readonly<Required<WorldOptions>> = Object.freeze({ users: 1000, pages: 200, topics: 8, seed: 42 });

export interface SessionShape {
  /** Mean number of page views in a session. */
  meanViews: number;
  /** Mean seconds between two views. */
  meanStepSeconds: number;
}

/**
 * Coefficients of the hidden click model (logit scale). Exported for the tests and the docs.
 * Clicks on recommendations are rare enough (about 15 % of shown items under a popularity ranking)
 * that a user who clicks at most one of three items does not saturate, and appeal spreads them
 * widely: ranking by appeal gives about 23 %, by the least appeal about 6 %, so a better or worse
 * ranker shows in the CTR within minutes.
 */
export const TRUTH = Object.freeze({
  intercept: -5.0,
  engagement: 2.4,
  device: { desktop: 0.3, mobile: -0.25, tablet: 0 } as Readonly<Record<Device, number>>,
  /** Added to mobile after the shift. */
  mobileAfterShift: 0.6,
  appeal: 3.5,
  /** Weight of appeal in the in-page (browsing) clicks: what makes item CTR a trace of appeal. */
  browseAppeal: 2.5,
  popularity: 0.25,
  sameTopicAsCurrentPage: 0.7,
  favoriteTopic: 0.5,
  /** Per position below the first: users look at the top first. */
  position: -0.2,
  conversionIntercept: -2.2,
  conversionBuyer: 2.5,
});

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

export class World {
  readonly users: SimUser[];
  /** Every page, including the one that only becomes popular at the shift (the last). */
  readonly pages: SimPage[];
  readonly topics: number;
  private shifted = false;
  private pageIndex = new Map<string, number>();
  private browseWeights: Float64Array;
  private topicPages: number[][];
  private userWeights: Float64Array;
  private maxPopularityLog: number;

  constructor(options: WorldOptions = {}) {
    const o = withDefaults(WORLD_DEFAULTS, options) as Required<WorldOptions>;
    if (!Number.isInteger(o.users) || o.users < 1) throw new RangeError(`users must be a positive integer, got ${o.users}`);
    if (!Number.isInteger(o.pages) || o.pages < 2) throw new RangeError(`pages must be an integer of at least 2, got ${o.pages}`);
    const rand = createRandom(o.seed).fork("world");
    this.topics = o.topics;
    this.users = Array.from({ length: o.users }, (_, i) => {
      const r = rand.next();
      return {
        id: `u${i}`,
        engagement: Math.min(1, Math.max(0, 0.45 + 0.22 * rand.normal())),
        device: r < 0.5 ? "desktop" : r < 0.88 ? "mobile" : "tablet",
        favoriteTopic: rand.int(o.topics),
        buyer: rand.next() ** 2,
      };
    });
    // Popularity follows a Zipf law over a random order of the pages; appeal is drawn on its own.
    const order = Array.from({ length: o.pages }, (_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = rand.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    this.pages = Array.from({ length: o.pages }, (_, i) => ({
      id: `p${i}`,
      topic: rand.int(o.topics),
      popularity: 1 / (1 + order[i]!) ** 0.9,
      appeal: rand.next() ** 1.3,
      price: Math.round((5 + rand.exponential(40)) * 100) / 100,
    }));
    // The page that the shift makes popular: unvisited until then.
    const newcomer = this.pages.at(-1)!;
    newcomer.popularity = 0;
    newcomer.appeal = 0.85;
    this.pages.forEach((p, i) => this.pageIndex.set(p.id, i));
    this.topicPages = Array.from({ length: o.topics }, (_, t) => this.pages.flatMap((p, i) => (p.topic === t && p.popularity > 0 ? [i] : [])));
    // Engaged users come back more often.
    this.userWeights = cumulative(this.users.map((u) => 0.2 + u.engagement));
    this.browseWeights = cumulative(this.pages.map((p) => p.popularity));
    this.maxPopularityLog = Math.log(1 + 100 * Math.max(...this.pages.map((p) => p.popularity)));
  }

  get isShifted(): boolean {
    return this.shifted;
  }

  /** Mobile sessions lengthen and engage more; the unvisited page becomes the most popular. */
  shift(): void {
    if (this.shifted) return;
    this.shifted = true;
    const newcomer = this.pages.at(-1)!;
    newcomer.popularity = 1.5 * Math.max(...this.pages.map((p) => p.popularity));
    this.topicPages[newcomer.topic]!.push(this.pages.length - 1);
    this.browseWeights = cumulative(this.pages.map((p) => p.popularity));
  }

  page(id: string): SimPage | undefined {
    const i = this.pageIndex.get(id);
    return i === undefined ? undefined : this.pages[i];
  }

  /** Who starts the next session. */
  drawUser(rand: Random): SimUser {
    return this.users[rand.weighted(this.userWeights)]!;
  }

  /** Mostly the user's usual device. */
  drawDevice(rand: Random, user: SimUser): Device {
    return rand.chance(0.85) ? user.device : rand.pick(DEVICES);
  }

  sessionShape(user: SimUser, device: Device): SessionShape {
    const base =
      device === "desktop"
        ? { meanViews: 6, meanStepSeconds: 40 }
        : device === "mobile"
          ? { meanViews: 4, meanStepSeconds: 18 }
          : { meanViews: 5, meanStepSeconds: 30 };
    const engaged = 0.5 + user.engagement;
    const shiftFactor = this.shifted && device === "mobile" ? 2.5 : 1;
    return { meanViews: base.meanViews * engaged * (this.shifted && device === "mobile" ? 1.6 : 1), meanStepSeconds: base.meanStepSeconds * shiftFactor };
  }

  /** The next page a browsing user lands on: popular pages, or pages of their favourite topic. */
  drawBrowsePage(rand: Random, user: SimUser): SimPage {
    const topical = this.topicPages[user.favoriteTopic]!;
    if (topical.length > 0 && rand.chance(0.35)) return this.pages[rand.pick(topical)]!;
    return this.pages[rand.weighted(this.browseWeights)]!;
  }

  /** Probability that a user clicks on a page while browsing it (an in-page click). */
  browseClickProbability(user: SimUser, device: Device, page: SimPage): number {
    return sigmoid(
      -1.6 +
        2.4 * user.engagement +
        TRUTH.browseAppeal * (page.appeal - 0.5) +
        TRUTH.device[device] +
        (this.shifted && device === "mobile" ? TRUTH.mobileAfterShift : 0),
    );
  }

  /** The hidden truth: probability that `page`, shown at `position` (1-based), is clicked. */
  clickProbability(user: SimUser, device: Device, page: SimPage, currentPage: SimPage | undefined, position: number): number {
    const t = TRUTH;
    const z =
      t.intercept +
      t.engagement * user.engagement +
      t.device[device] +
      (this.shifted && device === "mobile" ? t.mobileAfterShift : 0) +
      t.appeal * page.appeal +
      ((t.popularity * Math.log(1 + 100 * page.popularity)) / this.maxPopularityLog) * 4 +
      (currentPage && currentPage.topic === page.topic ? t.sameTopicAsCurrentPage : 0) +
      (page.topic === user.favoriteTopic ? t.favoriteTopic : 0) +
      t.position * Math.max(0, position - 1);
    return sigmoid(z);
  }

  /** Probability that a click turns into a purchase. */
  conversionProbability(user: SimUser, page: SimPage): number {
    return sigmoid(TRUTH.conversionIntercept + TRUTH.conversionBuyer * user.buyer - page.price / 200);
  }
}
