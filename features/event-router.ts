// The router of a partitioned deployment: takes activity events from `events.activity` (one
// durable consumer that every worker shares), and publishes each to the partitions its keys map
// to (`events.keyed.pNN` in the same EVENTS stream): its user's, for the user view, and its page's,
// for the item view and trending, once when they coincide. It is a FeatureStore, so the features
// worker's loop (features/worker.ts) pulls, dead-letters what does not parse and acks for it.
// The invariant: a batch is acked only after JetStream stored every keyed copy; a batch routed
// twice (a crash before the acks) yields copies that the partitions recognise by event id.
import type { NatsConnection } from "nats";
import type { Names } from "../lib/config.js";
import type { FeatureView } from "./definitions.js";
import { createEventParser, type EventParser, type EventParserOptions } from "./event-parser.js";
import { KeyedPublisher, type KeyedMessage } from "./keyed-publisher.js";
import { parseMessages, type MessageBatch } from "./message-batch.js";
import { partitionsOfEvent, partitionSubject } from "./partitions.js";
import type { AppliedMessages, FeatureStore } from "./store-thread.js";
import type { ClosedWindow } from "./window-store.js";

export class EventRouter implements FeatureStore {
  private readonly parse: EventParser;
  private readonly publisher: KeyedPublisher;
  private readonly subjects: string[];

  constructor(
    nc: NatsConnection,
    names: Names,
    private readonly partitions: number,
    parser: EventParserOptions = {},
  ) {
    this.parse = createEventParser(parser);
    this.publisher = new KeyedPublisher(nc);
    this.subjects = Array.from({ length: partitions }, (_, p) => partitionSubject(names, p));
  }

  /** Routes the batch's events (the original bytes, unchanged); says which messages did not parse. */
  async applyMessages(batch: MessageBatch): Promise<AppliedMessages> {
    const { events, refused } = parseMessages(batch, this.parse);
    const out: KeyedMessage[] = [];
    let e = 0;
    let r = 0;
    let from = 0;
    for (let i = 0; i < batch.ends.length; i++) {
      const to = batch.ends[i]!;
      if (r < refused.length && refused[r]!.index === i) r++;
      else {
        const data = batch.bytes.subarray(from, to);
        const protobuf = batch.protobuf[i] === 1;
        for (const p of partitionsOfEvent(events[e++]!, this.partitions)) out.push({ subject: this.subjects[p]!, data, protobuf });
      }
      from = to;
    }
    await this.publisher.publish(out);
    return { refused };
  }

  eventTimeHigh(): Promise<number> {
    return Promise.resolve(-Infinity);
  }

  closeDue(_view: FeatureView, _high: number, _publish: (rows: ClosedWindow[]) => Promise<void>): Promise<number> {
    return Promise.resolve(0);
  }

  readFeatures(): Promise<Record<string, number> | undefined> {
    return Promise.resolve(undefined);
  }

  close(): void {
    this.publisher.close();
  }
}
