// Turns a message from the EVENTS stream into an ActivityEvent, or says precisely why it cannot,
// so the worker can dead-letter it with that reason instead of stalling on it.
//
// JSON carries the seed's fields: event_id, user_id, event_type, page_id (non-empty strings),
// session_duration and amount (finite numbers of magnitude at most maxAbsValue, so that no sum or
// average of a window can overflow; absent reads as 0, the protobuf default, so both encodings agree), event_time (an ISO-8601 string, a zone-less one read as UTC, or epoch
// milliseconds) and an optional device_type. A message with `Content-Type: application/protobuf`
// is decoded as streamserve.v1.ActivityEvent and checked the same way.
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ActivityEventSchema } from "../gen/streamserve/v1/events_pb.js";
import type { ActivityEvent } from "./definitions.js";
import { withDefaults } from "../lib/options.js";

export type DeadLetterReason = "invalid_json" | "invalid_protobuf" | "not_an_object" | "missing_field" | "wrong_type" | "invalid_value" | "absurd_timestamp";

export type ParseResult = { ok: true; event: ActivityEvent } | { ok: false; reason: DeadLetterReason; detail: string };

export interface EventParserOptions {
  /**
   * Events further ahead of this process's clock are refused. A far-future event would push the
   * watermark ahead and turn every genuine event late, so the bound stays below the watermark
   * delay: an event at most this far ahead cannot close the window that "now" falls in.
   * @default 300_000 (5 minutes)
   */
  maxFutureMs?: number;
  /** Events older than this (epoch ms) are refused: a zero or a seconds-for-milliseconds mix-up. @default 946_684_800_000 (2000-01-01) */
  minEventTimeMs?: number;
  /** Longest id (event, user, page) accepted, in characters. @default 256 */
  maxIdLength?: number;
  /**
   * Largest magnitude of session_duration and amount accepted: far beyond any real session or
   * purchase, and so far below the largest double (1.8e308) that a window's sum of any number of
   * events stays finite (1e12 × 2^53 events ≈ 9e27). @default 1e12
   */
  maxAbsValue?: number;
  /** The clock that bounds future events. @default Date.now */
  now?: () => number;
}

export const DEFAULT_EVENT_PARSER_OPTIONS: Readonly<Required<EventParserOptions>> = Object.freeze({
  maxFutureMs: 5 * 60_000,
  minEventTimeMs: Date.UTC(2000, 0, 1),
  maxIdLength: 256,
  maxAbsValue: 1e12,
  now: Date.now,
});

const PROTOBUF_TYPES = new Set(["application/protobuf", "application/x-protobuf"]);

/** True when a Content-Type header asks for the protobuf decoding. */
export function isProtobufContentType(contentType: string | undefined): boolean {
  return contentType !== undefined && PROTOBUF_TYPES.has(contentType.split(";")[0]!.trim().toLowerCase());
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** Parses a message's bytes; `json` parses JSON text already decoded (a batch decodes at once). */
export type EventParser = ((data: Uint8Array, contentType: string | undefined) => ParseResult) & { json(text: string): ParseResult };

/** A parser with its options resolved once (the worker calls it for every message). */
export function createEventParser(options: EventParserOptions = {}): EventParser {
  const opts: Required<EventParserOptions> = withDefaults(DEFAULT_EVENT_PARSER_OPTIONS, options);
  const parser = (data: Uint8Array, contentType: string | undefined) => parse(data, contentType, opts);
  return Object.assign(parser, { json: (text: string) => parseJson(text, opts) });
}

export function parseActivityEvent(data: Uint8Array, contentType: string | undefined, options: EventParserOptions = {}): ParseResult {
  return createEventParser(options)(data, contentType);
}

function parse(data: Uint8Array, contentType: string | undefined, opts: Required<EventParserOptions>): ParseResult {
  if (isProtobufContentType(contentType)) return parseProtobuf(data, opts);
  let text: string;
  try {
    text = decoder.decode(data);
  } catch (err) {
    return fail("invalid_json", (err as Error).message);
  }
  return parseJson(text, opts);
}

function parseJson(text: string, opts: Required<EventParserOptions>): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return fail("invalid_json", (err as Error).message);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail("not_an_object", `expected a JSON object, got ${Array.isArray(value) ? "an array" : value === null ? "null" : typeof value}`);
  }
  return validate(value as Record<string, unknown>, opts);
}

function parseProtobuf(data: Uint8Array, opts: Required<EventParserOptions>): ParseResult {
  let m;
  try {
    m = fromBinary(ActivityEventSchema, data);
  } catch (err) {
    return fail("invalid_protobuf", (err as Error).message);
  }
  // proto3 cannot tell an empty string from a missing one: both are missing here.
  const fields: Record<string, unknown> = {
    event_id: m.eventId || undefined,
    user_id: m.userId || undefined,
    event_type: m.eventType || undefined,
    page_id: m.pageId || undefined,
    session_duration: m.sessionDuration,
    amount: m.amount,
    event_time: m.eventTime ? timestampMs(m.eventTime) : undefined,
    device_type: m.deviceType || undefined,
  };
  return validate(fields, opts);
}

function validate(v: Record<string, unknown>, opts: Required<EventParserOptions>): ParseResult {
  // Field by field into the event itself: the worker runs this for every message.
  const event_id = idOf(v, "event_id", opts);
  if (typeof event_id !== "string") return event_id;
  const user_id = idOf(v, "user_id", opts);
  if (typeof user_id !== "string") return user_id;
  const event_type = idOf(v, "event_type", opts);
  if (typeof event_type !== "string") return event_type;
  const page_id = idOf(v, "page_id", opts);
  if (typeof page_id !== "string") return page_id;
  const session_duration = numberOf(v, "session_duration", opts);
  if (typeof session_duration !== "number") return session_duration;
  const amount = numberOf(v, "amount", opts);
  if (typeof amount !== "number") return amount;
  if (session_duration < 0) return fail("invalid_value", `session_duration must not be negative, got ${session_duration}`);
  const event_time = eventTimeOf(v.event_time, opts);
  if (typeof event_time !== "number") return event_time;
  const device = v.device_type;
  if (device !== undefined && device !== null && typeof device !== "string") {
    return fail("wrong_type", `device_type must be a string, got ${describe(device)}`);
  }
  const event: ActivityEvent = { event_id, user_id, event_type, page_id, session_duration, amount, event_time };
  if (device) event.device_type = device;
  return { ok: true, event };
}

function idOf(v: Record<string, unknown>, field: string, opts: Required<EventParserOptions>): string | ParseResult {
  const x = v[field];
  if (x === undefined || x === null || x === "") return fail("missing_field", `${field} is missing`);
  if (typeof x !== "string") return fail("wrong_type", `${field} must be a string, got ${describe(x)}`);
  if (x.length > opts.maxIdLength) return fail("invalid_value", `${field} is longer than ${opts.maxIdLength} characters`);
  return x;
}

/** A numeric field; absent reads as 0 (the protobuf default). */
function numberOf(v: Record<string, unknown>, field: string, opts: Required<EventParserOptions>): number | ParseResult {
  const x = v[field];
  if (x === undefined || x === null) return 0;
  if (typeof x !== "number" || !Number.isFinite(x)) return fail("wrong_type", `${field} must be a finite number, got ${describe(x)}`);
  if (Math.abs(x) > opts.maxAbsValue) return fail("invalid_value", `${field} must be within ±${opts.maxAbsValue} (a window's sums would overflow), got ${x}`);
  return x;
}

// Date-time with an optional zone; a space may stand for the "T" (as SQL tools print them).
const ISO_8601 = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?$/i;

function eventTimeOf(x: unknown, opts: Required<EventParserOptions>): number | ParseResult {
  let ms: number;
  if (x === undefined || x === null || x === "") return fail("missing_field", "event_time is missing");
  if (typeof x === "number") {
    if (!Number.isFinite(x)) return fail("wrong_type", `event_time must be a finite number of milliseconds, got ${x}`);
    ms = Math.trunc(x);
  } else if (typeof x === "string") {
    const m = ISO_8601.exec(x.trim());
    if (!m) return fail("wrong_type", `event_time must be an ISO-8601 date-time or epoch milliseconds, got "${x.slice(0, 64)}"`);
    // Zone-less times are UTC, whatever the zone this process happens to run in.
    const zone = m[3] ? (/^z$/i.test(m[3]) ? "Z" : m[3].replace(/^([+-]\d{2})(\d{2})$/, "$1:$2")) : "Z";
    const time = m[2]!.replace(/\.(\d{3})\d+$/, ".$1"); // Date.parse takes at most milliseconds
    ms = Date.parse(`${m[1]}T${time}${zone}`);
    if (Number.isNaN(ms)) return fail("wrong_type", `event_time "${x.slice(0, 64)}" is not a valid date-time`);
  } else {
    return fail("wrong_type", `event_time must be an ISO-8601 string or epoch milliseconds, got ${describe(x)}`);
  }
  if (ms < opts.minEventTimeMs) {
    const hint = ms > 0 && ms < 1e11 ? " (seconds instead of milliseconds?)" : "";
    return fail("absurd_timestamp", `event_time ${ms} is before ${new Date(opts.minEventTimeMs).toISOString()}${hint}`);
  }
  const ahead = ms - opts.now();
  if (ahead > opts.maxFutureMs) {
    return fail("absurd_timestamp", `event_time ${iso(ms)} is ${Math.round(ahead / 1000)} s in the future`);
  }
  return ms;
}

/** ISO form when the date exists (±8.64e15 ms), the bare number otherwise. */
function iso(ms: number): string {
  return Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : String(ms);
}

function describe(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "an array";
  if (typeof x === "string") return `the string "${x.slice(0, 32)}"`;
  if (typeof x === "object") return "an object";
  return `${typeof x} ${String(x)}`;
}

function fail(reason: DeadLetterReason, detail: string): ParseResult {
  return { ok: false, reason, detail };
}
