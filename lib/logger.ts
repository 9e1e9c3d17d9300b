// One pino logger for the process; parts take children named after themselves. Every serialized
// line passes through lib/redact.ts, so credentials never reach the log however deep they sit.
import { pino, type Logger } from "pino";
import { redactText } from "./redact.js";

export { redactUrl } from "./redact.js";

export type { Logger };

export function createLogger(level = process.env.LOG_LEVEL ?? "info", destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "streamserve" },
      redact: { paths: ["password", "token", "*.password", "*.token", "authorization"], censor: "[redacted]" },
      hooks: { streamWrite: redactText },
    },
    destination ?? pino.destination({ fd: 2, sync: false }),
  );
}
