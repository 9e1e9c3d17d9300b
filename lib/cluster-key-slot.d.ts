// Types for cluster-key-slot (ioredis's own dependency, which ships none): a key's Redis Cluster hash slot.
declare module "cluster-key-slot" {
  /** The slot (0..16383) of a key, by its hash tag {...} when it has one. */
  export default function calculateSlot(key: string | Buffer): number;
  /** The common slot of several keys, or -1 when they are not all in one. */
  export function generateMulti(keys: (string | Buffer)[]): number;
}
