// Per-call timeouts that share one delay (a request read budget, an unread answer's grace, the
// feature read's budget) without a timer per call: entries are held in the order they were added,
// which is the order they fall due, and one timer waits for the oldest. Adding and removing is a
// Map operation; under load nearly every entry is removed before it is due, and the timer fires
// about once per delay instead of being set and cleared on every call.
// Invariant: an entry is passed to `onExpire` once, no earlier than `delayMs` after its last add,
// unless it was removed before.

export class ExpiryQueue<T> {
  /** Entry → when it falls due (performance.now() ms); Map order is add order, hence due order. */
  private readonly due = new Map<T, number>();
  private timer?: NodeJS.Timeout;

  /**
   * @param delayMs The same for every entry; not finite: entries never expire.
   * @param unref Whether the timer lets the process exit (true for the transport's guards).
   */
  constructor(
    readonly delayMs: number,
    private readonly onExpire: (entry: T) => void,
    private readonly unref = false,
  ) {}

  get size(): number {
    return this.due.size;
  }

  /** (Re)starts `entry`'s delay from now. */
  add(entry: T): void {
    if (!Number.isFinite(this.delayMs)) return;
    this.due.delete(entry);
    this.due.set(entry, performance.now() + this.delayMs);
    if (!this.timer) this.arm(this.delayMs);
  }

  /** Forgets `entry`: it will not expire. */
  delete(entry: T): void {
    this.due.delete(entry);
  }

  private arm(ms: number): void {
    this.timer = setTimeout(this.expire, Math.max(0, Math.ceil(ms)));
    if (this.unref) this.timer.unref();
  }

  private readonly expire = (): void => {
    this.timer = undefined;
    const now = performance.now();
    for (const [entry, at] of this.due) {
      if (at > now) {
        this.arm(at - now);
        return;
      }
      this.due.delete(entry);
      try {
        this.onExpire(entry);
      } catch (err) {
        // The rest still expire.
        if (!this.timer && this.due.size) this.arm(0);
        throw err;
      }
    }
  };
}
