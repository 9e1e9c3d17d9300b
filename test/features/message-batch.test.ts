// A batch of raw messages as the store's thread receives it: packed, then parsed with each
// message's own encoding, refusals reported by their index in the batch.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createEventParser } from "../../features/event-parser.js";
import { packMessages, parseMessages } from "../../features/message-batch.js";
import { ActivityEventSchema } from "../../gen/streamserve/v1/events_pb.js";

const NOW = Date.UTC(2026, 0, 1, 12);
const parse = createEventParser({ now: () => NOW });
const enc = new TextEncoder();
const json = (o: unknown) => ({ data: enc.encode(JSON.stringify(o)) });
const event = (i: number, extra: Record<string, unknown> = {}) => ({
  event_id: `e${i}`,
  user_id: `u${i}`,
  event_type: "click",
  page_id: "p1",
  session_duration: 1.5,
  amount: 0,
  event_time: NOW - i,
  ...extra,
});
const protobufHeaders = { get: (name: string) => (name === "Content-Type" ? "application/protobuf" : "") };

test("each message parsed with its own encoding; refusals keep their index in the batch", () => {
  const pb = toBinary(
    ActivityEventSchema,
    create(ActivityEventSchema, { eventId: "pb1", userId: "u-pb", eventType: "view", pageId: "p2", eventTime: timestampFromMs(NOW - 7) }),
  );
  const msgs = [
    json(event(0)),
    { data: enc.encode("{not json") },
    json(event(2, { user_id: "usér ✓" })), // non-ASCII: the batch cannot be sliced as one text
    { data: pb, headers: protobufHeaders },
    { data: new Uint8Array([0x7b, 0xff, 0x7d]) }, // not UTF-8
    json(event(5, { event_time: "yesterday" })),
    json(event(6)),
  ];
  const { events, refused } = parseMessages(packMessages(msgs), parse);
  assert.deepEqual(
    events.map((e) => [e.event_id, e.user_id]),
    [
      ["e0", "u0"],
      ["e2", "usér ✓"],
      ["pb1", "u-pb"],
      ["e6", "u6"],
    ],
  );
  assert.deepEqual(
    refused.map((r) => [r.index, r.reason]),
    [
      [1, "invalid_json"],
      [4, "invalid_json"],
      [5, "wrong_type"],
    ],
  );
});

test("an all-ASCII batch (decoded at once, sliced per message) parses as message by message", () => {
  const msgs = Array.from({ length: 300 }, (_, i) => (i % 37 === 5 ? { data: enc.encode(`{"event_id": "x${i}"}`) } : json(event(i, { amount: i / 7 }))));
  const batch = packMessages(msgs);
  const { events, refused } = parseMessages(batch, parse);
  const one = msgs.map((m) => parse(m.data, undefined));
  assert.deepEqual(
    events,
    one.flatMap((r) => (r.ok ? [r.event] : [])),
  );
  assert.deepEqual(
    refused,
    one.flatMap((r, index) => (r.ok ? [] : [{ index, reason: r.reason, detail: r.detail }])),
  );
  assert.equal(refused.length, 8);
});
