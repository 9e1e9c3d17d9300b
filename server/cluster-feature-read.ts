// The feature read on a Redis Cluster (feature-lookup.ts reads through it when REDIS_URL names a
// cluster). A script may declare keys of one slot only, so the keys of the reads started in one
// turn are grouped by the master serving their slot and each master gets one call for all of them,
// every master at once. Invariant: every read settles exactly once, with rows in its keys' order.
import calculateSlot from "cluster-key-slot";
import type { Cluster } from "../lib/redis.js";

type ScriptCommand = (...args: (string | number)[]) => Promise<string>;

/**
 * The user's fields from keys[0] and the item fields from every other key, as rows in the order of
 * `keys`. The reads that requests start in the same turn of the event loop share one script call
 * per master (READ_NODE_FEATURES_LUA: one command to encode and one reply to parse per master,
 * however many requests), or, where scripts are refused, one pipeline of HMGETs per master. A read
 * fails if a master holding one of its keys fails.
 */
export function readAcrossSlots(redis: Cluster, keys: string[], userFields: string[], itemFields: string[]): Promise<(string | null)[][]> {
  return enqueue(redis, keys, userFields, itemFields, true);
}

function enqueue(redis: Cluster, keys: string[], userFields: string[], itemFields: string[], retry: boolean): Promise<(string | null)[][]> {
  return new Promise((resolve, reject) => {
    let batch = pendingClusterReads.get(redis);
    if (!batch) {
      pendingClusterReads.set(redis, (batch = []));
      setImmediate(() => sendClusterBatch(redis));
    }
    batch.push({ keys, userFields, itemFields, rows: keys.map(() => []), waiting: 0, done: false, retry, resolve, reject });
  });
}

/**
 * Reads keys that one master holds, in slots of their own: the first key routes the call (a script
 * may declare keys of one slot only), the keys come as arguments, and the flag lets the script
 * reach keys of the node's other slots (Redis 7). ARGV: the number of user and of item fields, one
 * letter per key ("u": a user's hash, else an item's), the user fields, the item fields, the keys.
 */
const READ_NODE_FEATURES_LUA = `#!lua flags=no-writes,allow-cross-slot-keys
local nu = tonumber(ARGV[1])
local ni = tonumber(ARGV[2])
local kinds = ARGV[3]
local k0 = 4 + nu + ni
local out = {}
for i = k0, #ARGV do
  local row = i - k0 + 1
  if string.byte(kinds, row) == 117 then out[row] = redis.call('HMGET', ARGV[i], unpack(ARGV, 4, 3 + nu))
  else out[row] = redis.call('HMGET', ARGV[i], unpack(ARGV, 4 + nu, 3 + nu + ni)) end
end
return cjson.encode(out)`;

interface ClusterRead {
  keys: string[];
  userFields: string[];
  itemFields: string[];
  rows: (string | null)[][];
  /** Calls (one per master, or per master and field list) whose answer this read still waits for. */
  waiting: number;
  done: boolean;
  /** May go again once after the topology is refreshed (a slot moved under it). */
  retry: boolean;
  resolve: (rows: (string | null)[][]) => void;
  reject: (err: Error) => void;
}

/** The keys one call reads: which read and which of its keys each is. */
interface NodeCall {
  userFields: string[];
  itemFields: string[];
  reads: ClusterRead[];
  indices: number[];
}

/** A call's share of a busy turn: Redis runs a script whole, so a larger one would hold up every other client. */
const MAX_KEYS_PER_CALL = 1000;
const pendingClusterReads = new WeakMap<Cluster, ClusterRead[]>();
const clusterScriptUnsupported = new WeakSet<Cluster>();
/** Field lists by identity (each feature list's plan keeps its own): reads of the same lists share a call. */
const fieldListIds = new WeakMap<string[], number>();
let nextFieldListId = 0;

function fieldListId(fields: string[]): number {
  let id = fieldListIds.get(fields);
  if (id === undefined) fieldListIds.set(fields, (id = nextFieldListId++));
  return id;
}

function sendClusterBatch(redis: Cluster): void {
  const batch = pendingClusterReads.get(redis)!;
  pendingClusterReads.delete(redis);
  const useScript = !clusterScriptUnsupported.has(redis);
  // Script: a call per master and field lists. HMGETs: a pipeline per master (each command has its fields).
  const open = new Map<string, NodeCall>();
  const calls: NodeCall[] = [];
  for (const read of batch) {
    const joined = new Set<NodeCall>();
    for (let i = 0; i < read.keys.length; i++) {
      if (!(i === 0 ? read.userFields : read.itemFields).length) continue;
      const slot = calculateSlot(read.keys[i]!);
      // The nodes of a slot, as ioredis checks a pipeline's keys; unknown slots (no topology yet) each go alone.
      const node = redis.slots[slot]?.join(";") ?? `slot ${slot}`;
      const id = useScript ? `${node}|${fieldListId(read.userFields)}|${fieldListId(read.itemFields)}` : node;
      let call = open.get(id);
      if (!call || call.indices.length >= MAX_KEYS_PER_CALL) {
        open.set(id, (call = { userFields: read.userFields, itemFields: read.itemFields, reads: [], indices: [] }));
        calls.push(call);
      }
      call.reads.push(read);
      call.indices.push(i);
      if (!joined.has(call)) {
        joined.add(call);
        read.waiting++;
      }
    }
    if (read.waiting === 0) settle(read);
  }
  if (useScript) defineNodeScript(redis);
  for (const call of calls) {
    if (useScript) {
      const kinds = call.indices.map((i) => (i === 0 ? "u" : "i")).join("");
      const keys = call.indices.map((i, k) => call.reads[k]!.keys[i]!);
      const args = [1, keys[0]!, call.userFields.length, call.itemFields.length, kinds, ...call.userFields, ...call.itemFields, ...keys];
      nodeScriptCommand(redis)
        .apply(redis, args)
        .then(
          (json) => {
            // One row per key, each as long as its field list (never empty): Lua's nil comes as false.
            const rows = JSON.parse(json) as (string | false)[][];
            call.indices.forEach((i, k) => (call.reads[k]!.rows[i] = (rows[k] ?? []).map((v) => (v === false ? null : v))));
            answered(call);
          },
          (err: Error) => {
            // A slot of the call moved to another master (resharding): learn where, then read again once.
            if (/non local key/i.test(err.message)) redis.refreshSlotsCache(() => new Set(call.reads).forEach((read) => again(redis, read, err)));
            else for (const read of new Set(call.reads)) scriptRefused(redis, read, err);
          },
        );
    } else {
      const pipeline = redis.pipeline();
      call.indices.forEach((i, k) => pipeline.hmget(call.reads[k]!.keys[i]!, ...(i === 0 ? call.reads[k]!.userFields : call.reads[k]!.itemFields)));
      pipeline.exec().then(
        (results) => {
          call.indices.forEach((i, k) => {
            const [err, v] = results?.[k] ?? [new Error("Redis returned no reply for a pipelined read"), null];
            if (err) settle(call.reads[k]!, err);
            else call.reads[k]!.rows[i] = v as (string | null)[];
          });
          answered(call);
        },
        (err: Error) => {
          for (const read of call.reads) settle(read, err);
        },
      );
    }
  }
}

function answered(call: NodeCall): void {
  for (const read of new Set(call.reads)) if (--read.waiting === 0) settle(read);
}

/** A script refused as such (scripting disabled or denied by ACL, a Redis before 7): this read and the next ones go by HMGET. */
function scriptRefused(redis: Cluster, read: ClusterRead, err: Error): void {
  if (read.done || !/NOSCRIPT|NOPERM|unknown command|not allowed|disabled|shebang|flags|compiling/i.test(err.message)) return settle(read, err);
  clusterScriptUnsupported.add(redis);
  read.done = true;
  enqueue(redis, read.keys, read.userFields, read.itemFields, read.retry).then(read.resolve, read.reject);
}

function again(redis: Cluster, read: ClusterRead, err: Error): void {
  if (read.done || !read.retry) return settle(read, err);
  read.done = true;
  enqueue(redis, read.keys, read.userFields, read.itemFields, false).then(read.resolve, read.reject);
}

const scriptDefined = new WeakSet<Cluster>();

function defineNodeScript(redis: Cluster): void {
  if (!scriptDefined.has(redis)) {
    redis.defineCommand("streamserveReadNodeFeatures", { lua: READ_NODE_FEATURES_LUA });
    scriptDefined.add(redis);
  }
}

function nodeScriptCommand(target: object): ScriptCommand {
  return (target as { streamserveReadNodeFeatures: ScriptCommand }).streamserveReadNodeFeatures;
}

function settle(read: ClusterRead, err?: Error): void {
  if (read.done) return;
  read.done = true;
  if (err) read.reject(err);
  else read.resolve(read.rows);
}
