// Which partition an entity belongs to, and what a partition is called in NATS and Redis.
//
// The invariant: an entity id maps to the same partition for a given partition count, in every
// process (FNV-1a over its UTF-8 bytes, not a runtime's hash). An event belongs to two key spaces,
// its user's partition for the user view and its page's partition for the item view and trending;
// the router publishes it once to each partition that one of its keys maps to (README: partitions).
import type { Names } from "../lib/config.js";
import type { ActivityEvent, FeatureView } from "./definitions.js";

/** Most partitions a deployment may have (two-digit labels; each is a durable consumer and a lease). */
export const MAX_PARTITIONS = 256;

/** The partition of an entity id among `count`. */
export function partitionOf(entityId: string, count: number): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(entityId, "utf8");
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % count;
}

/** A partition's label: p00, p07, p15 (three digits past 99). */
export function partitionLabel(index: number): string {
  return `p${String(index).padStart(2, "0")}`;
}

/** The partitions an event goes to: its user's and its page's (one when they coincide). */
export function partitionsOfEvent(e: Pick<ActivityEvent, "user_id" | "page_id">, count: number): number[] {
  const u = partitionOf(e.user_id, count);
  const i = partitionOf(e.page_id, count);
  return u === i ? [u] : [u, i];
}

/** Whether an event's effect on a view belongs to partition `index` (its key maps there). */
export function belongsTo(view: FeatureView, e: ActivityEvent, index: number, count: number): boolean {
  return partitionOf(e[view.key], count) === index;
}

/** The subject of a partition's events in EVENTS (captured by the stream's events.> subjects). */
export function partitionSubject(names: Names, index: number): string {
  return names.eventsSubject.replace(/activity$/, `keyed.${partitionLabel(index)}`);
}

/** The durable consumer of a partition's events. */
export function partitionConsumerPart(index: number): string {
  return `features-${partitionLabel(index)}`;
}

/** Validates a partition count from a flag or option. */
export function checkPartitionCount(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_PARTITIONS) throw new RangeError(`partitions must be an integer from 1 to ${MAX_PARTITIONS}, got ${n}`);
}
