// Sessions of page views, clicks and purchases, one event at a time. A session belongs to a user
// on a device; it views pages (popular ones or the user's favourite topic), clicks with the
// truth's browsing probability, sometimes buys after a click, and ends after a drawn number of
// views. `session_duration` is the session's length so far in seconds, as a site would report it.
// Given the world and the seed, the sequence of events is fixed; only `event_time` is taken from
// the clock the caller passes.
import type { Random } from "./random.js";
import type { Device, SimPage, SimUser, World } from "./world.js";

/** An activity event in the JSON shape the features worker reads from EVENTS. */
export interface SimEvent {
  event_id: string;
  user_id: string;
  event_type: "view" | "click" | "purchase";
  page_id: string;
  session_duration: number;
  amount: number;
  /** ISO-8601, UTC. */
  event_time: string;
  device_type: Device;
}

export interface Session {
  user: SimUser;
  device: Device;
  currentPage: SimPage | undefined;
  elapsedSeconds: number;
  viewsLeft: number;
  /** Events decided but not yet emitted (the click after a view, the purchase after a click). */
  queued: Omit<SimEvent, "event_id" | "event_time">[];
}

export interface ClickstreamOptions {
  /** Sessions in progress at once; events interleave across them. @default 50 */
  concurrentSessions?: number;
  /** Prefix of event ids; unique per run so that reruns of a seed are not taken for redeliveries. */
  runId: string;
}

export class Clickstream {
  private sessions: Session[] = [];
  private counter = 0;
  private readonly concurrent: number;

  constructor(
    private readonly world: World,
    private readonly rand: Random,
    private readonly options: ClickstreamOptions,
  ) {
    this.concurrent = Math.max(1, Math.min(options.concurrentSessions ?? 50, world.users.length));
  }

  /** Events emitted so far. */
  get emitted(): number {
    return this.counter;
  }

  /** The next event of a randomly chosen session in progress (a new one when the pool has room). */
  next(nowMs: number): { event: SimEvent; session: Session } {
    while (this.sessions.length < this.concurrent) this.sessions.push(this.startSession());
    const index = this.rand.int(this.sessions.length);
    let session = this.sessions[index]!;
    if (session.queued.length === 0 && session.viewsLeft <= 0) {
      session = this.sessions[index] = this.startSession();
    }
    if (session.queued.length === 0) this.view(session, this.world.drawBrowsePage(this.rand, session.user));
    const body = session.queued.shift()!;
    return { event: { event_id: `${this.options.runId}-e${this.counter++}`, event_time: new Date(nowMs).toISOString(), ...body }, session };
  }

  /**
   * Makes `page` the session's next view (a recommendation the user clicked): the click on the
   * recommendation is emitted first, then the view it leads to.
   */
  follow(session: Session, page: SimPage): boolean {
    // A session that ended meanwhile has left the site: the click is not followed.
    if (!this.sessions.includes(session) || session.viewsLeft < 0) return false;
    session.queued.unshift({
      user_id: session.user.id,
      event_type: "click",
      page_id: page.id,
      session_duration: round(session.elapsedSeconds),
      amount: 0,
      device_type: session.device,
    });
    session.viewsLeft = Math.max(session.viewsLeft, 1);
    this.view(session, page);
    return true;
  }

  private startSession(): Session {
    const user = this.world.drawUser(this.rand);
    const device = this.world.drawDevice(this.rand, user);
    const shape = this.world.sessionShape(user, device);
    return { user, device, currentPage: undefined, elapsedSeconds: 0, viewsLeft: 1 + Math.round(this.rand.exponential(shape.meanViews - 1)), queued: [] };
  }

  /** Queues a view of `page` and what the user then does on it. */
  private view(session: Session, page: SimPage): void {
    const { user, device } = session;
    const shape = this.world.sessionShape(user, device);
    if (session.currentPage) session.elapsedSeconds += this.rand.exponential(shape.meanStepSeconds);
    session.currentPage = page;
    session.viewsLeft--;
    const base = { user_id: user.id, page_id: page.id, amount: 0, device_type: device };
    const events: Session["queued"] = [{ ...base, event_type: "view", session_duration: round(session.elapsedSeconds) }];
    if (this.rand.chance(this.world.browseClickProbability(user, device, page))) {
      session.elapsedSeconds += this.rand.exponential(shape.meanStepSeconds / 3);
      events.push({ ...base, event_type: "click", session_duration: round(session.elapsedSeconds) });
      if (this.rand.chance(this.world.conversionProbability(user, page) / 2)) {
        events.push({ ...base, event_type: "purchase", amount: page.price, session_duration: round(session.elapsedSeconds) });
      }
    }
    session.queued.push(...events);
  }
}

const round = (s: number) => Math.round(s * 10) / 10;
