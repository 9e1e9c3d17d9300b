// A batch of event messages as they came from JetStream, packed into one transferable buffer:
// the features worker hands it to the window store's thread, which parses it there
// (features/store-thread.ts). Packing is a copy of the payloads; handing over parsed events
// instead cost a structured clone of every event on both threads, and their parsing on the
// thread that also reads NATS.
import type { ActivityEvent } from "./definitions.js";
import { isProtobufContentType, type DeadLetterReason, type EventParser } from "./event-parser.js";

export interface MessageBatch {
  /** The payloads, back to back. */
  bytes: Uint8Array;
  /** Where each payload ends in `bytes`. */
  ends: Uint32Array;
  /** 1 where the payload is protobuf (its Content-Type said so), 0 where it is JSON. */
  protobuf: Uint8Array;
}

/** A message the parser refused: its index in the batch and why. */
export interface RefusedMessage {
  index: number;
  reason: DeadLetterReason;
  detail: string;
}

export function packMessages(msgs: readonly { data: Uint8Array; headers?: { get(name: string): string } | undefined }[]): MessageBatch {
  let size = 0;
  for (const m of msgs) size += m.data.length;
  const bytes = new Uint8Array(size);
  const ends = new Uint32Array(msgs.length);
  const protobuf = new Uint8Array(msgs.length);
  let at = 0;
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i]!;
    bytes.set(m.data, at);
    ends[i] = at += m.data.length;
    if (m.headers && isProtobufContentType(m.headers.get("Content-Type") || undefined)) protobuf[i] = 1;
  }
  return { bytes, ends, protobuf };
}

/** The buffers to transfer (not copy) with a batch posted to another thread. */
export function batchTransferList(b: MessageBatch): ArrayBuffer[] {
  return [b.bytes.buffer as ArrayBuffer, b.ends.buffer as ArrayBuffer, b.protobuf.buffer as ArrayBuffer];
}

const decoder = new TextDecoder("utf-8", { fatal: true });

export function parseMessages(b: MessageBatch, parse: EventParser): { events: ActivityEvent[]; refused: RefusedMessage[] } {
  const events: ActivityEvent[] = [];
  const refused: RefusedMessage[] = [];
  // All text, and ASCII (the usual JSON): decoded at once, each message a slice of it.
  let text: string | undefined;
  try {
    text = decoder.decode(b.bytes);
    if (text.length !== b.bytes.length) text = undefined;
  } catch {
    text = undefined;
  }
  let from = 0;
  for (let i = 0; i < b.ends.length; i++) {
    const to = b.ends[i]!;
    const r = b.protobuf[i]
      ? parse(b.bytes.subarray(from, to), "application/protobuf")
      : text !== undefined
        ? parse.json(text.slice(from, to))
        : parse(b.bytes.subarray(from, to), undefined);
    if (r.ok) events.push(r.event);
    else refused.push({ index: i, reason: r.reason, detail: r.detail });
    from = to;
  }
  return { events, refused };
}
