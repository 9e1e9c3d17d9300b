// Which implementation each hand-written fast path runs, beside its library version (why each
// exists: docs/fast-paths.md). The environment decides, so that a command's worker threads and
// child processes agree; the CLI flags of the same names set it.
export const FAST_PATHS = {
  /** The features store's Redis client: lib/resp.ts or ioredis (lib/resp-ioredis.ts). */
  redisClient: { env: "STREAMSERVE_REDIS_CLIENT", flag: "redis-client", choices: ["resp", "ioredis"] },
  /** The features worker's JetStream pull: lib/jetstream-pull-fast.ts or nats.js fetch(). */
  pull: { env: "STREAMSERVE_PULL", flag: "pull", choices: ["fast", "library"] },
} as const;

export type FastPath = keyof typeof FAST_PATHS;
export type FastPathChoice<K extends FastPath> = (typeof FAST_PATHS)[K]["choices"][number];

/** The implementation the environment names; the first (the hand-written one) when unset. */
export function fastPathChoice<K extends FastPath>(kind: K, env: NodeJS.ProcessEnv = process.env): FastPathChoice<K> {
  const { env: name, flag, choices } = FAST_PATHS[kind];
  const v = env[name] || choices[0];
  if (!(choices as readonly string[]).includes(v)) throw new Error(`${name} (--${flag}) must be ${choices.join(" or ")}, got "${v}"`);
  return v as FastPathChoice<K>;
}
