// When a periodic progress line is worth writing: whenever a counter moved since the last line,
// and while nothing moves only every so often, so an idle service does not fill its log.

export interface ProgressPacerOptions {
  /** While nothing changes, the longest time between two lines. @default 300_000 (5 min) */
  idleEveryMs?: number;
  /** Clock, for tests. @default performance.now */
  now?: () => number;
}

/**
 * Returns `due(counters)`: true (and remembers them) when `counters` differ from those of the last
 * line written, or the last line is `idleEveryMs` old. The first call is always due.
 */
export function progressPacer(options: ProgressPacerOptions = {}): (counters: Readonly<Record<string, unknown>>) => boolean {
  const idleEveryMs = options.idleEveryMs ?? 300_000;
  const now = options.now ?? (() => performance.now());
  let last: { at: number; key: string } | undefined;
  return (counters) => {
    const key = JSON.stringify(counters);
    const t = now();
    if (last && last.key === key && t - last.at < idleEveryMs) return false;
    last = { at: t, key };
    return true;
  };
}
