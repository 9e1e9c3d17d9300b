// One pino logger for the process; parts take children named after themselves. Every serialized
// line passes through lib/redact.ts, so credentials never reach the log however deep they sit.
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";
import { redactText } from "./redact.js";

export { redactUrl } from "./redact.js";

export type { Logger };

/** `pretty`: one coloured line per event, for a person at a terminal. `json`: pino's lines, for machines. */
export type LogFormat = "pretty" | "json";

export const LOG_FORMATS: readonly LogFormat[] = ["pretty", "json"];

/**
 * The format when none is asked for: LOG_FORMAT if set, else pretty when the log's stream (stderr)
 * is a terminal and JSON when it goes to a file, a pipe or a collector.
 */
export function defaultLogFormat(env: NodeJS.ProcessEnv = process.env, stream: { isTTY?: boolean } = process.stderr): LogFormat {
  const asked = env.LOG_FORMAT?.trim().toLowerCase();
  if (asked === "pretty" || asked === "json") return asked;
  return stream.isTTY ? "pretty" : "json";
}

export function createLogger(
  level = process.env.LOG_LEVEL ?? "info",
  destination?: NodeJS.WritableStream,
  format: LogFormat = destination ? "json" : defaultLogFormat(),
): Logger {
  return pino(
    {
      level,
      base: { service: "streamserve" },
      redact: { paths: ["password", "token", "*.password", "*.token", "authorization"], censor: "[redacted]" },
      hooks: { streamWrite: redactText },
    },
    format === "pretty" ? prettyStream(destination) : (destination ?? pino.destination({ fd: 2, sync: false })),
  );
}

/** pino-pretty in this thread: time, level, [part] and message, then the event's fields, on one line. */
function prettyStream(destination?: NodeJS.WritableStream) {
  const colorize = destination ? false : Boolean(process.stderr.isTTY) && !process.env.NO_COLOR;
  return pretty({
    destination: destination ?? 2,
    colorize,
    translateTime: "SYS:HH:MM:ss.l",
    // The line is built by prettyLine; pino-pretty would print errors on lines of their own.
    hideObject: true,
    messageFormat: (log, messageKey) => prettyLine(log, messageKey, colorize),
  });
}

const HIDDEN = new Set(["level", "time", "pid", "hostname", "service", "part", "msg"]);

/** `[server] gRPC listening {"port":50051}`; an error shows as its type and message (the stack stays in JSON). */
export function prettyLine(log: Record<string, unknown>, messageKey: string, colorize = false): string {
  const fields: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(log)) {
    if (HIDDEN.has(k) || k === messageKey) continue;
    const e = v as { type?: unknown; message?: unknown; stack?: unknown } | null;
    fields[k] = e && typeof e === "object" && typeof e.message === "string" && typeof e.stack === "string" ? `${e.type ?? "Error"}: ${e.message}` : v;
  }
  const part = typeof log.part === "string" ? `[${log.part}] ` : "";
  const rest = Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : "";
  return `${part}${String(log[messageKey] ?? "")}${colorize && rest ? `\x1b[90m${rest}\x1b[39m` : rest}`;
}
