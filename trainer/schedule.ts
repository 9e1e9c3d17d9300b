// Continuous training: a cycle every `intervalMs` (6 h by default), skipped when no prediction was
// logged since the data the last version was trained on, and never two cycles at once: the next
// run is scheduled only after the current one ends, a run asked for meanwhile is refused, and
// across processes runTrainingCycle holds the model's training lock (trainer/cycle-lock.ts).

import type { Part, Runtime } from "../lib/runtime.js";
import { countPredictionsSince } from "./dataset.js";
import { runTrainingCycle, type CycleOptions, type CycleReport } from "./cycle.js";
import { withDefaults } from "../lib/options.js";

export interface ScheduleOptions extends Omit<CycleOptions, "data" | "signal"> {
  /** Time between the end of one cycle and the start of the next. @default 6 h */
  intervalMs?: number;
  /** Delay before the first cycle. @default 0 (at start) */
  initialDelayMs?: number;
  /** Window of each cycle. @default 24 h */
  windowMs?: number;
  /** @default "clicked" */
  label?: "clicked" | "converted";
  /** Newest predictions left out, waiting for their outcomes. @default 5 min */
  labelDelayMs?: number;
  /** Called with each cycle's report (skips included). */
  onReport?: (report: CycleReport | SkippedRun) => void;
}

export const SCHEDULE_DEFAULTS = Object.freeze({
  intervalMs: 6 * 3_600_000,
  initialDelayMs: 0,
  windowMs: 24 * 3_600_000,
});

/** A scheduled run that did not start a cycle. */
export interface SkippedRun {
  skipped: true;
  reason: string;
}

export interface TrainingSchedule extends Part {
  /** Runs a cycle now unless one is running (then resolves with a SkippedRun). */
  runNow(): Promise<CycleReport | SkippedRun>;
  readonly running: boolean;
}

export function startTrainingSchedule(runtime: Runtime, options: ScheduleOptions = {}): TrainingSchedule {
  const o = withDefaults(SCHEDULE_DEFAULTS, options);
  const modelName = o.modelName ?? runtime.config.modelName;
  const log = runtime.log.child({ part: "trainer", model: modelName });
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<CycleReport | SkippedRun> | undefined;
  let stopped = false;
  /** End of the window the newest version was trained on; undefined until known. */
  let trainedUntilMs: number | undefined;

  const lastTrainedUntil = async (): Promise<number | undefined> => {
    if (trainedUntilMs !== undefined) return trainedUntilMs;
    // After a restart, the registry remembers which data the newest logged-data version saw.
    const registry = await runtime.registry();
    const versions = await registry.listVersions(modelName);
    for (const v of versions.reverse()) {
      const end = v.data?.window_end;
      if (v.data?.kind === "logs" && typeof end === "string") return Date.parse(end);
    }
    return undefined;
  };

  const cycle = async (): Promise<CycleReport | SkippedRun> => {
    const ch = await runtime.clickhouse();
    const since = await lastTrainedUntil();
    if (since !== undefined) {
      const fresh = await countPredictionsSince(ch.client, modelName, since, abort.signal);
      if (fresh === 0) {
        const reason = `no new predictions logged since ${new Date(since).toISOString()}`;
        log.info(`training cycle skipped: ${reason}`);
        await (await runtime.registry()).recordEvent({ model_name: modelName, kind: "train_skipped", actor: o.actor ?? "trainer", reason });
        return { skipped: true, reason };
      }
    }
    const report = await runTrainingCycle(runtime, {
      ...o,
      data: { kind: "logs", label: o.label, windowMs: o.windowMs, labelDelayMs: o.labelDelayMs },
      signal: abort.signal,
    });
    const end = report.data.source.window_end;
    if (typeof end === "string") trainedUntilMs = Date.parse(end);
    return report;
  };

  const runNow = (): Promise<CycleReport | SkippedRun> => {
    if (inFlight) return Promise.resolve({ skipped: true, reason: "a training cycle is already running" });
    if (stopped) return Promise.resolve({ skipped: true, reason: "the trainer is stopped" });
    inFlight = cycle()
      .catch((err): SkippedRun => {
        // Stopping aborts the cycle's queries: that is no failure to report.
        if (abort.signal.aborted) {
          log.info("training cycle cancelled: the trainer is stopping");
          return { skipped: true, reason: "cancelled: the trainer stopped" };
        }
        log.error({ err }, "training cycle failed");
        return { skipped: true, reason: `failed: ${(err as Error).message}` };
      })
      .then((r) => {
        o.onReport?.(r);
        return r;
      })
      .finally(() => {
        inFlight = undefined;
        schedule(o.intervalMs);
      });
    return inFlight;
  };

  const schedule = (delayMs: number) => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(() => void runNow(), delayMs);
    timer.unref?.();
  };

  log.info({ everyMs: o.intervalMs, windowMs: o.windowMs }, "continuous training scheduled");
  schedule(o.initialDelayMs);

  return {
    name: "trainer",
    get running() {
      return inFlight !== undefined;
    },
    runNow,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      abort.abort();
      await inFlight?.catch(() => undefined);
    },
  };
}
