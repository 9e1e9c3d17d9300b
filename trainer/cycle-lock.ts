// One actor at a time across processes: one training cycle per model (a scheduled trainer and a
// `train --once`, or two trainers by mistake), one look at a guarded rollout (two monitors). A lock
// is a key in a JetStream KV bucket created only if absent. The bucket's TTL frees a lock whose
// holder died; a live holder rewrites its key well within the TTL.

import { hostname } from "node:os";
import type { KV, NatsConnection } from "nats";
import type { Names } from "../lib/config.js";
import type { Runtime } from "../lib/runtime.js";
import { withDefaults } from "../lib/options.js";

/** The lock bucket beside the registry's, so a namespace's cleanup can find it. */
export const lockBucket = (names: Names) => `${names.registryBucket}-locks`;

export interface CycleLockOptions {
  /** A holder that stops refreshing loses the lock after this long. @default 10 min */
  ttlMs?: number;
}

export const CYCLE_LOCK_DEFAULTS = Object.freeze({ ttlMs: 10 * 60_000 });

export interface CycleLock {
  release(): Promise<void>;
}

export interface LockHolder {
  holder: string;
  since: string;
}

/**
 * Takes the training lock of `model`, or returns the current holder when another cycle has it.
 */
export function acquireCycleLock(nc: NatsConnection, names: Names, model: string, options: CycleLockOptions = {}): Promise<CycleLock | LockHolder> {
  return acquireLock(nc, names, `train.${model}`, options);
}

/** Takes the lock of one guarded rollout (what a monitor holds while it decides and acts on a stage). */
export function acquireRolloutLock(nc: NatsConnection, names: Names, experiment: string): Promise<CycleLock | LockHolder> {
  return acquireLock(nc, names, `rollout.${experiment}`, {});
}

async function acquireLock(nc: NatsConnection, names: Names, key: string, options: CycleLockOptions): Promise<CycleLock | LockHolder> {
  const { ttlMs } = withDefaults(CYCLE_LOCK_DEFAULTS, options);
  const kv: KV = await nc.jetstream().views.kv(lockBucket(names), { ttl: ttlMs, history: 1 });
  const me: LockHolder = { holder: `${hostname()}:${process.pid}`, since: new Date().toISOString() };
  const encode = () => new TextEncoder().encode(JSON.stringify(me));
  let revision: number;
  try {
    revision = await kv.create(key, encode());
  } catch (err) {
    const entry = await kv.get(key).catch(() => null);
    if (entry && entry.operation === "PUT") return JSON.parse(new TextDecoder().decode(entry.value)) as LockHolder;
    throw err; // not a held lock: a real failure
  }
  // Rewrite the key at a third of the TTL so it never expires under a live holder.
  const refresh = setInterval(
    () => {
      kv.update(key, encode(), revision).then(
        (r) => (revision = r),
        () => undefined, // lost (expired and taken): the cycle finishes; the registry stays consistent
      );
    },
    Math.max(1000, ttlMs / 3),
  );
  refresh.unref();
  return {
    async release() {
      clearInterval(refresh);
      await kv.delete(key, { previousSeq: revision }).catch(() => undefined);
    },
  };
}

export function isHeld(lock: CycleLock | LockHolder): lock is LockHolder {
  return "holder" in lock;
}

/** checkRollouts' lock (RolloutDeps.lock) on the runtime's NATS. */
export function rolloutLock(runtime: Pick<Runtime, "nats" | "names">): (experiment: string) => Promise<CycleLock | LockHolder> {
  return async (experiment) => acquireRolloutLock(await runtime.nats(), runtime.names, experiment);
}
