#!/usr/bin/env -S node --max-semi-space-size=64
// The `streamserve` command: one entry point for every part of the platform.
// The shebang gives V8 a 64 MiB young generation: the features worker allocates ~4 KB per event,
// and most of it dies young between collections that way.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createRuntime } from "../lib/runtime.js";
import { ConfigError } from "../lib/config.js";
import { FAST_PATHS } from "../lib/fast-paths.js";
import { RegistryError } from "../lib/registry.js";
import { createLogger, LOG_FORMATS, defaultLogFormat, type LogFormat } from "../lib/logger.js";
import { redactText } from "../lib/redact.js";
import { parseArgs, configFromFlags, flagsInUsage, stringFlag, UsageError, type CommandArgs } from "./args.js";
import { printsReport, type Command } from "./command.js";

/** Every command, in the order `--help` lists them. */
export const COMMANDS = ["up", "serve", "features", "sink", "train", "monitor", "models", "experiments", "simulate", "demo", "drift", "report"] as const;

const GLOBAL_FLAGS = `Flags every command takes (environment variable in brackets):
  --grpc-port N        gRPC port (default 50051)
  --http-port N        HTTP port for /metrics, /healthz and the dashboard (default 8080)
  --data-dir DIR       data directory: embedded ClickHouse, log spill files (default ./data) [STREAMSERVE_DATA_DIR]
  --redis-url URL      [REDIS_URL] (default redis://127.0.0.1:6379)
  --nats-url URL       [NATS_URL] (default nats://127.0.0.1:4222)
  --clickhouse-url URL ClickHouse server; unset: embedded engine in the data directory [CLICKHOUSE_URL]
  --namespace NAME     prefix for streams, buckets and keys, to run several platforms side by side [STREAMSERVE_NAMESPACE]
  --model NAME         registry model that Recommend serves (default recommender)
  --host ADDR          interface the gRPC and HTTP servers bind to (default 0.0.0.0)
  --log-level LEVEL    trace, debug, info, warn, error, silent (default info; warn for commands that
                       print a table or report) [LOG_LEVEL]
  --log-format FORMAT  pretty (one coloured line per event) or json (default: pretty when stderr is a
                       terminal, json otherwise) [LOG_FORMAT]
  --redis-client C     Redis client of the features store and of serving's feature read: resp (hand-written, default) or ioredis [STREAMSERVE_REDIS_CLIENT]
  --pull P             the features worker's JetStream pull: fast (hand-written, default) or library (nats.js
                       fetch()) [STREAMSERVE_PULL]`;

/** The flags a command accepts: those its usage text and the global flags name, and its booleans. */
export function knownFlags(command: Command): string[] {
  return [...flagsInUsage(command.usage, GLOBAL_FLAGS), ...(command.booleans ?? [])];
}

/**
 * The process's logger. Logs go to stderr; a command that prints a table or report logs only
 * warnings unless --log-level or LOG_LEVEL asks for more, so a terminal shows just its result.
 */
function loggerFor(command: Command, args: CommandArgs) {
  const format = stringFlag(args, "log-format") ?? defaultLogFormat();
  if (!(LOG_FORMATS as readonly string[]).includes(format)) throw new UsageError(`--log-format must be ${LOG_FORMATS.join(" or ")}, got "${format}"`);
  const asked = stringFlag(args, "log-level") ?? (process.env.LOG_LEVEL || undefined);
  const level = asked ?? (printsReport(command, args) ? "warn" : "info");
  return { level, format: format as LogFormat };
}

export async function loadCommand(name: string): Promise<Command | undefined> {
  const file = new URL(`./commands/${name}.js`, import.meta.url);
  // Under tsx the sources are .ts; built, they are .js.
  const candidates = [file, new URL(`./commands/${name}.ts`, import.meta.url)];
  const found = candidates.find((u) => existsSync(fileURLToPath(u)));
  if (!found) return undefined;
  return ((await import(found.href)) as { default: Command }).default;
}

async function help(): Promise<string> {
  const lines = ["Usage: streamserve <command> [flags]", "", "Commands:"];
  for (const name of COMMANDS) {
    const c = await loadCommand(name);
    if (c) lines.push(`  ${name.padEnd(12)} ${c.summary}`);
  }
  lines.push("", GLOBAL_FLAGS, "", "`streamserve <command> --help` shows a command's own flags.");
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(await help());
    return name ? 0 : 2;
  }
  const command = (COMMANDS as readonly string[]).includes(name) ? await loadCommand(name) : undefined;
  if (!command) {
    console.error(`streamserve: unknown command "${name}". Run \`streamserve --help\` for the list.`);
    return 2;
  }
  let args;
  try {
    args = parseArgs(rest, command.booleans, knownFlags(command));
  } catch (err) {
    console.error(`streamserve ${name}: ${(err as Error).message}\n\n${command.usage}`);
    return 2;
  }
  if (args.flags.help) {
    console.log(`${command.usage}\n\n${GLOBAL_FLAGS}`);
    return 0;
  }
  // The fast paths' choices go to the environment, which the command's threads and child processes inherit.
  for (const { flag, env } of Object.values(FAST_PATHS)) {
    const v = stringFlag(args, flag);
    if (v !== undefined) process.env[env] = v;
  }
  let runtime;
  try {
    const { level, format } = loggerFor(command, args);
    runtime = createRuntime({ ...configFromFlags(args), logLevel: level }, createLogger(level, undefined, format));
  } catch (err) {
    console.error(redactText(`streamserve ${name}: ${(err as Error).message}`));
    return 2;
  }
  try {
    return await command.run(args, runtime);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`streamserve ${name}: ${err.message}\n\n${command.usage}`);
      return 2;
    }
    if (err instanceof ConfigError || err instanceof RegistryError) {
      console.error(redactText(`streamserve ${name}: ${err.message}`));
      return 1;
    }
    const e = err as { code?: string; message?: string };
    if (e?.code === "CONNECTION_REFUSED" || /ECONNREFUSED/.test(e?.message ?? "")) {
      console.error(redactText(`streamserve ${name}: cannot reach a service (${e.message}). Is it running? Check --nats-url / --redis-url.`));
      return 1;
    }
    runtime.log.error({ err }, `${name} failed`);
    console.error(redactText(`streamserve ${name}: ${(err as Error)?.message ?? err}`));
    return 1;
  } finally {
    await runtime.close().catch(() => undefined);
  }
}

/**
 * The last fence: an error that escaped every handler is logged and the process keeps serving.
 * Request handlers catch their own errors; reaching this is a bug, never a reason to take down
 * the server (and, in `up`, every other part with it).
 */
function keepServingOnStrayErrors(): void {
  const report = (kind: string) => (err: unknown) => {
    const e = err instanceof Error ? { message: err.message, stack: err.stack } : { value: String(err) };
    process.stderr.write(`${redactText(JSON.stringify({ level: 50, time: Date.now(), msg: `${kind}: kept serving`, err: e }))}\n`);
  };
  process.on("unhandledRejection", report("unhandled rejection"));
  process.on("uncaughtException", report("uncaught exception"));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === (await import("node:fs")).realpathSync(process.argv[1])) {
  keepServingOnStrayErrors();
  process.exitCode = await main(process.argv.slice(2));
  // Connections that outlive the command (a NATS reconnect loop) must not keep the process alive.
  setTimeout(() => process.exit(process.exitCode), 2000).unref();
}
