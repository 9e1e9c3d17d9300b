// Command-line parsing shared by every streamserve command: `--flag value`, `--flag=value`,
// boolean flags the command declares, repeated flags collected into arrays.
import type { Config } from "../lib/config.js";

export type Flags = Record<string, string | boolean | string[]>;

export interface CommandArgs {
  flags: Flags;
  positionals: string[];
}

export class UsageError extends Error {
  override name = "UsageError";
}

export function parseArgs(argv: string[], booleans: readonly string[] = []): CommandArgs {
  const flags: Flags = {};
  const positionals: string[] = [];
  const bool = new Set(["help", "json", "once", ...booleans]);
  const add = (name: string, value: string | boolean) => {
    const prev = flags[name];
    if (prev === undefined) flags[name] = value;
    else flags[name] = [...(Array.isArray(prev) ? prev : [String(prev)]), String(value)];
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === "-h") {
      flags.help = true;
      continue;
    }
    if (!arg.startsWith("--")) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    if (eq !== -1) add(name, arg.slice(eq + 1));
    else if (bool.has(name)) add(name, true);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith("--")) add(name, argv[++i]!);
    else throw new UsageError(`--${name} needs a value`);
  }
  return { flags, positionals };
}

export function stringFlag(args: CommandArgs, name: string): string | undefined {
  const v = args.flags[name];
  if (v === undefined || typeof v === "boolean") return undefined;
  return Array.isArray(v) ? v.at(-1) : v;
}

export function listFlag(args: CommandArgs, name: string): string[] {
  const v = args.flags[name];
  if (v === undefined || typeof v === "boolean") return [];
  return Array.isArray(v) ? v : [v];
}

export function numberFlag(args: CommandArgs, name: string, fallback?: number): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${v}"`);
  return n;
}

/** Durations like 500ms, 30s, 5m, 6h, 1d. */
export function durationFlag(args: CommandArgs, name: string, fallbackMs?: number): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return fallbackMs;
  return parseDuration(v, `--${name}`);
}

export function parseDuration(v: string, what = "duration"): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) throw new UsageError(`${what} must look like 500ms, 30s, 5m, 6h or 1d, got "${v}"`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? "s") as "ms"];
  return Number(m[1]) * unit;
}

/** Flags every command accepts, mapped onto Config. */
export function configFromFlags(args: CommandArgs): Partial<Config> {
  const out: Partial<Config> = {};
  const map: [string, keyof Config][] = [
    ["grpc-port", "grpcPort"],
    ["http-port", "httpPort"],
    ["data-dir", "dataDir"],
    ["namespace", "namespace"],
    ["redis-url", "redisUrl"],
    ["nats-url", "natsUrl"],
    ["clickhouse-url", "clickhouseUrl"],
    ["model", "modelName"],
    ["host", "host"],
    ["log-level", "logLevel"],
  ];
  for (const [flag, key] of map) {
    const v = stringFlag(args, flag);
    if (v !== undefined) (out as Record<string, unknown>)[key] = v;
  }
  return out;
}
