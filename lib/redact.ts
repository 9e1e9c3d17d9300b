// Keeps secrets out of logs and error messages. Two rules cover every line the process writes:
// credentials inside URLs (`redis://user:secret@host`) are masked wherever they appear, and the
// secrets the configuration holds (URL passwords, auth tokens) are registered here and masked
// wherever they appear in a serialized log line, however deep (an ioredis error's command
// arguments, a nested `err`, a URL repeated inside a message).

const MASK = "***";
const secrets = new Set<string>();

/** Secrets shorter than this are not searched for: masking every "ab" would garble the log. */
const MIN_SECRET_LENGTH = 4;

/** Registers a value that must never appear in a log line or error message. */
export function registerSecret(value: string | undefined | null): void {
  if (!value || value.length < MIN_SECRET_LENGTH) return;
  secrets.add(value);
  // How it appears once JSON-escaped or percent-encoded (in a URL, or inside a logged string).
  secrets.add(JSON.stringify(value).slice(1, -1));
  secrets.add(encodeURIComponent(value));
}

/** Registers the password (and a username-only token) of a connection URL. */
export function registerUrlSecrets(url: string | undefined): void {
  if (!url) return;
  for (const one of url.split(",")) {
    try {
      const u = new URL(one.trim());
      registerSecret(safeDecode(u.password));
      if (u.password) registerSecret(u.password);
      // nats://token@host: a username without a password is a token.
      if (u.username && !u.password && u.protocol.startsWith("nats")) registerSecret(safeDecode(u.username));
    } catch {
      const m = /\/\/[^:@/]*:([^@/]*)@/.exec(one);
      if (m?.[1]) registerSecret(m[1]);
    }
  }
}

const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)([^:@/\s"'\\]*):([^@/\s"'\\]+)@/gi;

/** Masks URL credentials and every registered secret in a piece of text. */
export function redactText(text: string): string {
  let out = text.replace(URL_CREDENTIALS, `$1$2:${MASK}@`);
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(MASK);
  return out;
}

/** `redis://user:secret@host:6379` → `redis://user:***@host:6379`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = MASK;
    return redactText(u.toString());
  } catch {
    return redactText(url);
  }
}

/** Forgets every registered secret (tests). */
export function clearSecrets(): void {
  secrets.clear();
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
