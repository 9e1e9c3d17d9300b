// Where a partitioned store's projection goes (the public hashes and the trending set, written
// after each commit: commit-pipeline.ts): one connection to the one Redis, or on a Redis Cluster
// one per master, each sent the writes of the keys in its slots.
// The invariant: a batch's projection is encoded when the batch is computed and sent in commit
// order on each connection, so a later batch's values never land before an earlier one's.
import calculateSlot from "cluster-key-slot";
import type { Cluster } from "../lib/redis.js";
import { clusterNodeUrl } from "../lib/redis-url.js";
import { RespError, type RespConnection, type RespWriter } from "../lib/resp.js";
import { connectResp } from "../lib/resp-client.js";
import type { WriteSet } from "./batch-planner.js";
import { WindowStoreError } from "./store-keys.js";
import type { WriteEncoder } from "./write-encoder.js";

export interface ProjectionSink {
  /** Encodes a batch's projection now; the returned call sends it (after the batch's commit). */
  prepare(ws: WriteSet, encoder: WriteEncoder): () => Promise<void>;
  close(): void;
}

/** Everything to one Redis. */
export class NodeProjection implements ProjectionSink {
  private readonly conn: RespConnection;

  constructor(redisUrl: string) {
    this.conn = connectResp(redisUrl, { name: "streamserve-features-projector" });
  }

  prepare(ws: WriteSet, encoder: WriteEncoder): () => Promise<void> {
    const w = encoder.encodeProjection(ws);
    return () => send(this.conn, w);
  }

  close(): void {
    this.conn.close();
  }
}

/** Each master of a Redis Cluster the writes of its slots (by the cluster client's slot table). */
export class ClusterProjection implements ProjectionSink {
  private readonly conns = new Map<string, RespConnection>();

  constructor(
    private readonly cluster: Cluster,
    private readonly clusterUrl: string,
  ) {}

  prepare(ws: WriteSet, encoder: WriteEncoder): () => Promise<void> {
    const nodeOf = new Map<string, string>();
    const node = (key: string) => {
      let n = nodeOf.get(key);
      if (n === undefined) {
        n = this.cluster.slots[calculateSlot(key)]?.[0];
        if (n === undefined) throw new WindowStoreError(`no Redis Cluster master known for the slot of ${key}`);
        nodeOf.set(key, n);
      }
      return n;
    };
    // The nodes this batch writes to, then each one's share.
    const nodes = new Set<string>();
    encoder.encodeProjection(ws, (key) => {
      nodes.add(node(key));
      return false;
    });
    const parts = [...nodes].map((n) => [this.connection(n), encoder.encodeProjection(ws, (key) => node(key) === n)] as const);
    return async () => {
      await Promise.all(parts.map(([conn, w]) => send(conn, w)));
    };
  }

  private connection(node: string): RespConnection {
    let c = this.conns.get(node);
    if (!c) this.conns.set(node, (c = connectResp(clusterNodeUrl(this.clusterUrl, node), { name: "streamserve-features-projector" })));
    return c;
  }

  close(): void {
    for (const c of this.conns.values()) c.close();
  }
}

async function send(conn: RespConnection, w: RespWriter): Promise<void> {
  if (w.count === 0) return;
  for (const r of await conn.send([w]))
    if (r instanceof RespError) throw new WindowStoreError(`Redis refused writing the public features: ${r.message}`, { cause: r });
}
