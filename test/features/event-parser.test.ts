// Parsing and validating activity events: what is accepted, and the reason for what is not.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { parseActivityEvent, type DeadLetterReason } from "../../features/event-parser.js";
import { ActivityEventSchema } from "../../gen/streamserve/v1/events_pb.js";

const NOW = Date.UTC(2024, 5, 1, 12, 0, 0);
const opts = { now: () => NOW };
const good = { event_id: "e1", user_id: "u1", event_type: "click", page_id: "p1", session_duration: 12.5, amount: 0, event_time: NOW - 1000 };
const json = (v: unknown) => new TextEncoder().encode(typeof v === "string" ? v : JSON.stringify(v));

function accepted(v: unknown, contentType?: string) {
  const r = parseActivityEvent(v instanceof Uint8Array ? v : json(v), contentType, opts);
  assert.ok(r.ok, `expected acceptance, got ${r.ok ? "" : `${r.reason}: ${r.detail}`}`);
  return r.event;
}

function refused(v: unknown, reason: DeadLetterReason, detail: RegExp, contentType?: string) {
  const r = parseActivityEvent(v instanceof Uint8Array ? v : json(v), contentType, opts);
  assert.ok(!r.ok, `expected ${reason}, got an event`);
  assert.equal(r.reason, reason, r.detail);
  assert.match(r.detail, detail);
}

test("a seed-shaped JSON event is accepted as is", () => {
  assert.deepEqual(accepted(good), good);
  assert.equal(accepted({ ...good, device_type: "mobile" }).device_type, "mobile");
});

test("event_time: epoch milliseconds or ISO-8601, zone-less read as UTC", () => {
  const t = Date.UTC(2024, 5, 1, 11, 59, 30, 250);
  assert.equal(accepted({ ...good, event_time: t }).event_time, t);
  assert.equal(accepted({ ...good, event_time: "2024-06-01T11:59:30.250Z" }).event_time, t);
  assert.equal(accepted({ ...good, event_time: "2024-06-01T11:59:30.250" }).event_time, t);
  assert.equal(accepted({ ...good, event_time: "2024-06-01 11:59:30.250" }).event_time, t);
  assert.equal(accepted({ ...good, event_time: "2024-06-01T13:59:30.250+02:00" }).event_time, t);
  assert.equal(accepted({ ...good, event_time: "2024-06-01T13:59:30.250123+0200" }).event_time, t, "microseconds truncated");
  assert.equal(accepted({ ...good, event_time: "2024-06-01T11:59Z" }).event_time, Date.UTC(2024, 5, 1, 11, 59));
});

test("session_duration and amount default to 0 when absent (the protobuf default)", () => {
  const { session_duration, amount, ...rest } = good;
  void session_duration;
  void amount;
  const e = accepted(rest);
  assert.equal(e.session_duration, 0);
  assert.equal(e.amount, 0);
  assert.equal(accepted({ ...good, amount: null }).amount, 0);
});

test("invalid JSON and non-objects", () => {
  refused("{not json", "invalid_json", /JSON/);
  refused(new Uint8Array([0xff, 0xfe, 0x00]), "invalid_json", /./);
  refused([good], "not_an_object", /array/);
  refused("42", "not_an_object", /number/);
  refused("null", "not_an_object", /null/);
});

test("missing fields name the field", () => {
  for (const field of ["event_id", "user_id", "event_type", "page_id", "event_time"] as const) {
    const { [field]: _drop, ...rest } = good;
    void _drop;
    refused(rest, "missing_field", new RegExp(field));
    refused({ ...good, [field]: "" }, "missing_field", new RegExp(field));
  }
});

test("wrongly typed fields say what they got", () => {
  refused({ ...good, user_id: 42 }, "wrong_type", /user_id must be a string, got number 42/);
  refused({ ...good, session_duration: "12" }, "wrong_type", /session_duration must be a finite number, got the string "12"/);
  refused({ ...good, amount: [] }, "wrong_type", /amount/);
  refused({ ...good, event_time: "yesterday" }, "wrong_type", /ISO-8601/);
  refused({ ...good, event_time: "2024-13-45T99:00:00Z" }, "wrong_type", /not a valid date-time/);
  refused({ ...good, event_time: true }, "wrong_type", /event_time/);
  refused({ ...good, device_type: 3 }, "wrong_type", /device_type/);
  refused({ ...good, session_duration: -1 }, "invalid_value", /negative/);
  // Two of these would sum to Infinity in a window.
  refused({ ...good, session_duration: 1.7e308 }, "invalid_value", /session_duration must be within ±1000000000000 .*1\.7e\+308/);
  refused({ ...good, event_type: "purchase", amount: -1.7e308 }, "invalid_value", /amount must be within/);
  refused({ ...good, page_id: "x".repeat(300) }, "invalid_value", /longer than 256/);
});

test("absurd timestamps: before 2000, seconds for milliseconds, far in the future", () => {
  refused({ ...good, event_time: 0 }, "absurd_timestamp", /before 2000/);
  refused({ ...good, event_time: Math.floor(NOW / 1000) }, "absurd_timestamp", /seconds instead of milliseconds/);
  refused({ ...good, event_time: "1970-01-01T00:00:00Z" }, "absurd_timestamp", /before/);
  refused({ ...good, event_time: NOW + 6 * 60_000 }, "absurd_timestamp", /360 s in the future/);
  refused({ ...good, event_time: 1e20 }, "absurd_timestamp", /in the future/);
  assert.equal(accepted({ ...good, event_time: NOW + 4 * 60_000 }).event_time, NOW + 4 * 60_000, "small clock skew is fine");
});

test("protobuf by Content-Type, validated the same way", () => {
  const m = create(ActivityEventSchema, {
    eventId: "e1",
    userId: "u1",
    eventType: "click",
    pageId: "p1",
    sessionDuration: 12.5,
    eventTime: timestampFromMs(NOW - 1000),
    deviceType: "tablet",
  });
  const e = accepted(toBinary(ActivityEventSchema, m), "application/protobuf");
  assert.deepEqual(e, { ...good, device_type: "tablet" });
  assert.deepEqual(accepted(toBinary(ActivityEventSchema, m), "application/x-protobuf; proto=streamserve.v1.ActivityEvent"), e);
  refused(toBinary(ActivityEventSchema, create(ActivityEventSchema, { ...m, userId: "" })), "missing_field", /user_id/, "application/protobuf");
  refused(toBinary(ActivityEventSchema, create(ActivityEventSchema, { ...m, eventTime: undefined })), "missing_field", /event_time/, "application/protobuf");
  refused(new Uint8Array([0x0a, 0xff, 0x01]), "invalid_protobuf", /./, "application/protobuf");
  // The same bytes without the header are read as JSON.
  refused(toBinary(ActivityEventSchema, m), "invalid_json", /./);
});
