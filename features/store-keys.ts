// The window store's Redis keys, and the stored values that more than one of its parts reads.
//
// Keys (P = the namespace's Redis prefix, V = a view's entity):
//   P features:V:windows        hash    window start → "open" | "closed" (rows being logged) | "published"
//   P features:V:w:<start>      hash    entity id → the window's aggregates (n, t, then each
//                                        aggregation's fields; windows.ts stateFields), comma-packed
//   P features:V:d:<start>      hash    entity id NUL aggregation NUL value → 1 (distinct counts)
//   P features:seen:<bucket>    hash    event id → 1, the events applied (bucket: event time by the
//                                        shortest window, dropped once every view closed it)
//   P features:trend            hash    item → "s r": decayed activity s as of event time r
//   P features:event_time_high  string  newest event time any worker has seen (the watermark's source)
//   P features:version          string  raised by every transaction that changes feature state
//   P features:epoch            string  the lease epoch of the partition's owner (partitioned only)
// Partitioned (features/partitions.ts), each partition's keys carry a hash tag, P features:{P p07}:…,
// so that its transactions live in one Redis Cluster slot; unpartitioned, the keys above as they are.
// And the public keys of ARCHITECTURE.md: user_features:{id}, item_features:{id}, trending_items.
import type { FeatureView } from "./definitions.js";
import { emptyState, type StateValues } from "./windows.js";

/** Internal keys of the feature pipeline, all under the namespace's Redis prefix. */
export interface StoreKeys {
  windows(entity: string): string;
  state(entity: string, windowStart: number): string;
  distinct(entity: string, windowStart: number): string;
  seen(bucket: number): string;
  trend: string;
  eventTimeHigh: string;
  /** Raised by every transaction that changes feature state: how a writer knows it was alone. */
  version: string;
  /** The lease epoch of the partition's owner: a commit under another epoch is refused. */
  epoch: string;
}

/** The keys of the unpartitioned store, or of one partition's (its label, e.g. "p07", in a hash tag). */
export function storeKeys(redisPrefix: string, partition?: string): StoreKeys {
  const base = partition === undefined ? `${redisPrefix}features:` : `${redisPrefix}features:{${redisPrefix}${partition}}:`;
  return {
    windows: (entity) => `${base}${entity}:windows`,
    state: (entity, ws) => `${base}${entity}:w:${ws}`,
    distinct: (entity, ws) => `${base}${entity}:d:${ws}`,
    seen: (bucket) => `${base}seen:${bucket}`,
    trend: `${base}trend`,
    eventTimeHigh: `${base}event_time_high`,
    version: `${base}version`,
    epoch: `${base}epoch`,
  };
}

export type WindowStatus = "open" | "closed" | "published";

/** A window's state from its Redis value: comma-separated state values ("" where absent). */
export function unpack(packed: string, view: FeatureView): StateValues {
  const out = emptyState(view);
  let from = 0;
  for (let i = 0; i < out.length && from <= packed.length; i++) {
    let to = packed.indexOf(",", from);
    if (to === -1) to = packed.length;
    if (to > from) out[i] = Number(packed.slice(from, to));
    from = to + 1;
  }
  return out;
}

/** An item's trend activity as stored ("s r"): decayed activity s as of event time r. */
export function trendOf(value: string): [number, number] {
  const sp = value.indexOf(" ");
  return [Number(value.slice(0, sp)), Number(value.slice(sp + 1))];
}

/** The field of a distinct-count value in its window's distinct hash. */
export function distinctField(entityId: string, agg: number, value: string): string {
  return entityId + "\u0000" + agg + "\u0000" + value;
}

export class WindowStoreError extends Error {
  override name = "WindowStoreError";
}

/** A commit refused because another worker now holds the partition's lease (a higher epoch in Redis). */
export class LeaseLostError extends WindowStoreError {
  override name = "LeaseLostError";
}
