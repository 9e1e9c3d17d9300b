// Command-line parsing shared by every streamserve command: node:util.parseArgs reads `--flag value`,
// `--flag=value`, `-h` and `--`; a command's known flags are the ones its usage text names plus the
// global ones, so a flag documented in a usage text is accepted and any other is an error that
// names the closest known flag. Repeated flags are collected into arrays.
import { parseArgs as parseArgv } from "node:util";
import type { Config } from "../lib/config.js";

export type Flags = Record<string, string | boolean | string[]>;

export interface CommandArgs {
  flags: Flags;
  positionals: string[];
}

export class UsageError extends Error {
  override name = "UsageError";
}

/** Flags that take no value in every command. */
export const GLOBAL_BOOLEANS = ["help", "json", "once"] as const;

/** Every `--flag` a usage text mentions, in order, without repeats. */
export function flagsInUsage(...texts: string[]): string[] {
  return [...new Set(texts.flatMap((t) => [...t.matchAll(/--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)/g)].map((m) => m[1]!)))];
}

/**
 * Parses a command's arguments against the flags it knows: `booleans` take no value, every other
 * known flag takes one, and an unknown flag is a UsageError naming the closest known one. Without
 * `known` (a test parsing one command's flags), every `--flag` given is accepted.
 */
export function parseArgs(argv: string[], booleans: readonly string[] = [], known?: readonly string[]): CommandArgs {
  const bool = new Set<string>([...GLOBAL_BOOLEANS, ...booleans]);
  const end = argv.indexOf("--");
  const given = (end === -1 ? argv : argv.slice(0, end)).filter((a) => a.startsWith("--")).map((a) => a.slice(2).split("=")[0]!);
  const accepted = new Set<string>([...(known ?? given), ...bool]);
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = {};
  for (const name of accepted) options[name] = bool.has(name) ? { type: "boolean" } : { type: "string", multiple: true };
  options.help = { type: "boolean", short: "h" };
  // Not strict: the checks below give the messages (and the closest flag) themselves.
  const { tokens, positionals } = parseArgv({ args: argv, options, strict: false, allowPositionals: true, tokens: true });
  const flags: Flags = {};
  const add = (name: string, value: string | boolean) => {
    const prev = flags[name];
    if (prev === undefined || typeof value === "boolean") flags[name] = value;
    else flags[name] = [...(Array.isArray(prev) ? prev : [String(prev)]), value];
  };
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    const name = token.name;
    if (!accepted.has(name)) throw new UsageError(unknownFlagMessage(token.rawName, name, accepted));
    if (bool.has(name)) {
      if (token.inlineValue) throw new UsageError(`${token.rawName} takes no value (got "${token.value}")`);
      add(name, true);
      continue;
    }
    // A flag's value may start with "-" (a negative number) but not with "--": "--model --json" lacks one.
    if (typeof token.value !== "string" || (!token.inlineValue && token.value.startsWith("--"))) throw new UsageError(`--${name} needs a value`);
    add(name, token.value);
  }
  return { flags, positionals };
}

function unknownFlagMessage(rawName: string, name: string, known: ReadonlySet<string>): string {
  const closest = closestName(name, [...known]);
  return closest ? `unknown flag ${rawName}: did you mean --${closest}?` : `unknown flag ${rawName}`;
}

/** The known name nearest to a typo by edit distance, when it is near enough to be the one meant. */
export function closestName(name: string, known: readonly string[]): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const k of known) {
    const distance = editDistance(name, k);
    if (!best || distance < best.distance) best = { name: k, distance };
  }
  if (!best) return undefined;
  const near =
    (best.distance <= Math.max(1, Math.floor(name.length / 3)) && best.distance < name.length) ||
    (name.length > 2 && (best.name.includes(name) || name.includes(best.name)));
  return near ? best.name : undefined;
}

function editDistance(a: string, b: string): number {
  // Optimal string alignment: a swap of two neighbours ("prot" for "port") counts as one edit.
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
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
