// One pino logger for the process; parts take children named after themselves. Connection URLs
// pass through redactUrl before they are logged, so credentials never reach the log.
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(level = process.env.LOG_LEVEL ?? "info", destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "streamserve" },
      redact: { paths: ["password", "token", "*.password", "*.token", "authorization"], censor: "[redacted]" },
    },
    destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

/** `redis://user:secret@host:6379` → `redis://user:***@host:6379`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:@/]+):[^@/]*@/, "//$1:***@");
  }
}
