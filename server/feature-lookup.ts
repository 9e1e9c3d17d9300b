// Online features for one Recommend request: the user's hash and every candidate's hash, read in
// one round trip (on one Redis through the hand-written RESP client, feature-connection.ts, or
// ioredis with --redis-client ioredis; on a Redis Cluster, one per master holding some of the keys,
// all at once: cluster-feature-read.ts), assembled into the row-major matrix the model version declares.
// Redis trouble never fails the request: the features take their defaults and the caller logs it.
import { createHash } from "node:crypto";
import { isCluster, type Redis } from "../lib/redis.js";
import { encodeArgs, RespError, RespWriter, type RespArg, type RespRawReply, type RespReply } from "../lib/resp.js";
import { readAcrossSlots } from "./cluster-feature-read.js";
import { FeatureConnection } from "./feature-connection.js";
import type { Names } from "../lib/config.js";
import type { FeatureSpec } from "../lib/registry.js";

export interface RequestContext {
  userId: string;
  currentPage: string;
  deviceType: string;
}

/**
 * A value as read: a string, or null/false (Lua's nil) when the hash or field is absent; or, from
 * the byte parser (parseScriptBytes), the number it already parsed (null when it is not one).
 */
type RawValue = ScriptValue | number;
/** A value of the script's JSON reply. */
type ScriptValue = string | null | false;

export interface FeatureMatrix {
  /** rows × features, row-major, in the order of `specs`. */
  matrix: Float32Array;
  rows: number;
  /** Features that took their default for at least one row. */
  missing: string[];
  /** Redis could not be read at all (down, slow); every user and item feature is a default. */
  unavailable: boolean;
}

/** Where features are read: the RESP connection (one Redis) or an ioredis client (a cluster, or --redis-client ioredis). */
export type FeatureSource = Redis | FeatureConnection;

export async function lookupFeatures(
  redis: FeatureSource,
  names: Names,
  specs: readonly FeatureSpec[],
  ctx: RequestContext,
  items: readonly string[],
): Promise<FeatureMatrix> {
  const plan = planFor(specs);
  const { userFields, itemFields } = plan;
  let userValues: RawValue[] = [];
  let itemValues: RawValue[][] = [];
  let unavailable = false;
  if (userFields.length || itemFields.length) {
    const keyList = () => {
      const keys = new Array<string>(items.length + 1);
      keys[0] = names.userFeaturesKey(ctx.userId);
      for (let i = 0; i < items.length; i++) keys[i + 1] = names.itemFeaturesKey(items[i]!);
      return keys;
    };
    try {
      // The RESP path writes the keys from bytes it keeps (itemKeyBytes): no key strings to build.
      const keys = redis instanceof FeatureConnection ? [] : keyList();
      const rows =
        redis instanceof FeatureConnection
          ? await readOnResp(redis, names, ctx.userId, items, plan, keyList)
          : isCluster(redis)
            ? await readAcrossSlots(redis, keys, userFields, itemFields)
            : scriptUnsupported.has(redis)
              ? await readWithPipeline(redis, keys, userFields, itemFields)
              : await batchedScriptRead(redis, keys, userFields, itemFields).catch((err: Error) => {
                  // Scripting disabled (or a cluster node named as one Redis, CROSSSLOT): use a pipeline.
                  if (!SCRIPT_REFUSED.test(err.message)) throw err;
                  scriptUnsupported.add(redis);
                  return readWithPipeline(redis, keys, userFields, itemFields);
                });
      userValues = rows[0] ?? [];
      itemValues = rows.slice(1);
    } catch {
      unavailable = true;
      userValues = [];
      itemValues = [];
    }
  }
  return assemble(specs, ctx, items, userValues, itemValues, unavailable);
}

/** What a feature list reads from Redis, worked out once per list (a model version's, the logged set). */
interface Plan {
  userFields: string[];
  itemFields: string[];
}

const plans = new WeakMap<readonly FeatureSpec[], Plan>();

function planFor(specs: readonly FeatureSpec[]): Plan {
  let plan = plans.get(specs);
  if (!plan) {
    plan = { userFields: specs.filter((s) => s.source === "user").map((s) => s.name), itemFields: specs.filter((s) => s.source === "item").map((s) => s.name) };
    plans.set(specs, plan);
  }
  return plan;
}

/**
 * Reads the user's fields from keys[0] and the item fields from every other key in one command:
 * a server-side script returning the values as one JSON string. Measured against a pipeline of
 * HMGETs it costs the client under half the CPU (one command to encode, one reply to parse), and
 * the client is where the request path spends it.
 */
const READ_FEATURES_LUA = `
local nu = tonumber(ARGV[1])
local ni = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local first = (i == 1) and 3 or (3 + nu)
  local count = (i == 1) and nu or ni
  if count > 0 then out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV, first, first + count - 1)) else out[i] = {} end
end
return cjson.encode(out)`;

/** Errors meaning the script cannot run here (scripting disabled, a cluster node named as one Redis): read with a pipeline. */
const SCRIPT_REFUSED = /CROSSSLOT|NOSCRIPT|NOPERM|unknown command|not allowed|disabled/i;
const READ_FEATURES_SHA = createHash("sha1").update(READ_FEATURES_LUA).digest("hex");

const scriptUnsupported = new WeakSet<Redis | FeatureConnection>();
const scriptDefined = new WeakSet<Redis>();

interface PendingRead {
  args: (string | number)[];
  resolve: (json: string) => void;
  reject: (err: Error) => void;
}

const pendingReads = new WeakMap<Redis, PendingRead[]>();

/**
 * readWithScript, with the reads that requests start in the same turn of the event loop sent as
 * one pipeline: one socket write for all of them instead of one each (under load the write was
 * the largest single cost of the read). A lone read goes out as it is.
 */
function batchedScriptRead(redis: Redis, keys: string[], userFields: string[], itemFields: string[]): Promise<RawValue[][]> {
  defineScript(redis);
  const args = scriptArgs(keys, userFields, itemFields);
  return new Promise<string>((resolve, reject) => {
    let batch = pendingReads.get(redis);
    if (!batch) {
      pendingReads.set(redis, (batch = []));
      setImmediate(() => sendBatch(redis));
    }
    batch.push({ args, resolve, reject });
  }).then(parseRawReply);
}

function sendBatch(redis: Redis): void {
  const batch = pendingReads.get(redis)!;
  pendingReads.delete(redis);
  if (batch.length === 1) {
    const read = batch[0]!;
    scriptCommand(redis).apply(redis, read.args).then(read.resolve, read.reject);
    return;
  }
  const pipeline = redis.pipeline();
  const queue = scriptCommand(pipeline);
  for (const read of batch) queue.apply(pipeline, read.args);
  pipeline.exec().then(
    (results) =>
      batch.forEach((read, i) => {
        const [err, json] = results?.[i] ?? [new Error("Redis returned no reply for a pipelined read"), null];
        if (err) read.reject(err);
        else read.resolve(json as string);
      }),
    (err: Error) => batch.forEach((read) => read.reject(err)),
  );
}

type ScriptCommand = (...args: (string | number)[]) => Promise<string>;

function scriptCommand(target: object): ScriptCommand {
  return (target as { streamserveReadFeatures: ScriptCommand }).streamserveReadFeatures;
}

function defineScript(redis: Redis): void {
  if (!scriptDefined.has(redis)) {
    redis.defineCommand("streamserveReadFeatures", { lua: READ_FEATURES_LUA });
    scriptDefined.add(redis);
  }
}

function scriptArgs(keys: string[], userFields: string[], itemFields: string[]): (string | number)[] {
  return [keys.length, ...keys, userFields.length, itemFields.length, ...userFields, ...itemFields];
}

/** The script's rows as Lua encodes them: a missing field (nil) is false, a row without fields `{}`. */
function parseRawReply(json: string): ScriptValue[][] {
  const rows = JSON.parse(json) as (ScriptValue[] | Record<string, never>)[];
  for (let i = 0; i < rows.length; i++) if (!Array.isArray(rows[i])) rows[i] = [];
  return rows as ScriptValue[][];
}

function parseScriptReply(json: string): (string | null)[][] {
  return parseRawReply(json).map((row) => row.map((v) => (v === false ? null : v)));
}

export async function readWithScript(redis: Redis, keys: string[], userFields: string[], itemFields: string[]): Promise<(string | null)[][]> {
  defineScript(redis);
  return parseScriptReply(await scriptCommand(redis).apply(redis, scriptArgs(keys, userFields, itemFields)));
}

export async function readWithPipeline(redis: Redis, keys: string[], userFields: string[], itemFields: string[]): Promise<(string | null)[][]> {
  const pipeline = redis.pipeline();
  keys.forEach((key, i) => {
    const fields = i === 0 ? userFields : itemFields;
    if (fields.length) pipeline.hmget(key, ...fields);
  });
  const results = (await pipeline.exec()) ?? [];
  const values = results.map(([err, v]) => {
    if (err) throw err;
    return v as (string | null)[];
  });
  return keys.map((_, i) => ((i === 0 ? userFields : itemFields).length ? values.shift()! : []));
}

interface PendingRespRead {
  userKey: string;
  /** Each candidate's key, RESP-encoded (itemKeyBytes). */
  itemKeys: Buffer[];
  plan: Plan;
  /** The script's JSON, as bytes (the RESP client's bulkAsBytes) or a string. */
  resolve: (json: string | Buffer) => void;
  reject: (err: Error) => void;
}

const pendingRespReads = new WeakMap<FeatureConnection, PendingRespRead[]>();
const EVALSHA_HEAD = encodeArgs("EVALSHA", READ_FEATURES_SHA);
const EVAL_HEAD = encodeArgs("EVAL", READ_FEATURES_LUA);
/** The script's arguments after the keys (field counts and names), encoded once per plan: the same on every read. */
const scriptTails = new WeakMap<Plan, Buffer>();

/** Bound on itemKeyBytes's entries per Names (a catalog's hot items); past it the cache starts again. */
const ITEM_KEY_CACHE = 20_000;
const itemKeyCaches = new WeakMap<Names, Map<string, Buffer>>();

/** An item's feature key as a RESP bulk string, kept: the same candidates come back request after request. */
function itemKeyBytes(names: Names, item: string): Buffer {
  let cache = itemKeyCaches.get(names);
  if (!cache) itemKeyCaches.set(names, (cache = new Map()));
  let bytes = cache.get(item);
  if (!bytes) {
    if (cache.size >= ITEM_KEY_CACHE) cache.clear();
    bytes = encodeArgs(names.itemFeaturesKey(item));
    cache.set(item, bytes);
  }
  return bytes;
}

/** The script read on the RESP connection, batched per turn of the event loop as on ioredis; a pipeline of HMGETs where scripts are refused. */
async function readOnResp(
  conn: FeatureConnection,
  names: Names,
  userId: string,
  items: readonly string[],
  plan: Plan,
  keyList: () => string[],
): Promise<RawValue[][]> {
  if (!scriptUnsupported.has(conn)) {
    const userKey = names.userFeaturesKey(userId);
    const itemKeys = new Array<Buffer>(items.length);
    for (let i = 0; i < items.length; i++) itemKeys[i] = itemKeyBytes(names, items[i]!);
    try {
      const json = await new Promise<string | Buffer>((resolve, reject) => {
        let batch = pendingRespReads.get(conn);
        if (!batch) {
          pendingRespReads.set(conn, (batch = []));
          setImmediate(() => sendRespBatch(conn));
        }
        batch.push({ userKey, itemKeys, plan, resolve, reject });
      });
      if (typeof json === "string") return parseRawReply(json);
      // Anything the byte parser does not expect goes to JSON.parse, the library path.
      return parseScriptBytes(json) ?? parseRawReply(json.toString("utf8"));
    } catch (err) {
      if (!(err instanceof RespError) || !SCRIPT_REFUSED.test(err.message)) throw err;
      scriptUnsupported.add(conn);
    }
  }
  return readWithRespPipeline(conn, keyList(), plan.userFields, plan.itemFields);
}

function tailFor(plan: Plan): Buffer {
  let tail = scriptTails.get(plan);
  if (!tail) {
    tail = encodeArgs(plan.userFields.length, plan.itemFields.length, ...plan.userFields, ...plan.itemFields);
    scriptTails.set(plan, tail);
  }
  return tail;
}

/** EVALSHA (or EVAL: `head`) of each read, straight into bytes. */
function encodeScriptReads(reads: readonly PendingRespRead[], head: Buffer): RespWriter {
  // Sized to fit (ASCII keys), not guessed: a batch of many large reads would otherwise hold megabytes.
  let size = 0;
  for (const { userKey, itemKeys, plan } of reads) {
    size += head.length + tailFor(plan).length + 32 + userKey.length + 16;
    for (const key of itemKeys) size += key.length;
  }
  const w = new RespWriter(size);
  for (const { userKey, itemKeys, plan } of reads) {
    const tail = tailFor(plan);
    const keys = 1 + itemKeys.length;
    w.command(3 + keys + 2 + plan.userFields.length + plan.itemFields.length)
      .raw(head)
      .number(keys)
      .string(userKey);
    for (const key of itemKeys) w.raw(key);
    w.raw(tail);
  }
  return w;
}

function settle(read: PendingRespRead, reply: RespRawReply | undefined): void {
  if (typeof reply === "string" || Buffer.isBuffer(reply)) read.resolve(reply);
  else read.reject(reply instanceof RespError ? reply : new Error("the feature script returned no string"));
}

function sendRespBatch(conn: FeatureConnection): void {
  const batch = pendingRespReads.get(conn)!;
  pendingRespReads.delete(conn);
  conn.send([encodeScriptReads(batch, EVALSHA_HEAD)], BULK_AS_BYTES).then(
    async (replies) => {
      // NOSCRIPT: Redis does not have the script (restarted, SCRIPT FLUSH): EVAL loads it.
      let unknown: PendingRespRead[] | undefined;
      for (let i = 0; i < batch.length; i++) {
        const reply = replies[i];
        if (reply instanceof RespError && reply.message.startsWith("NOSCRIPT")) (unknown ??= []).push(batch[i]!);
        else settle(batch[i]!, reply);
      }
      if (!unknown) return;
      try {
        const retried = await conn.send([encodeScriptReads(unknown, EVAL_HEAD)], BULK_AS_BYTES);
        unknown.forEach((read, i) => settle(read, retried[i]));
      } catch (err) {
        for (const read of unknown) read.reject(err as Error);
      }
    },
    (err: Error) => batch.forEach((read) => read.reject(err)),
  );
}

const BULK_AS_BYTES = { bulkAsBytes: true } as const;

/** Exact powers of ten (all of them doubles with no rounding) for the decimal fast path. */
const POW10 = Array.from({ length: 16 }, (_, k) => 10 ** k);

/**
 * The script's JSON reply (as cjson writes it: no spaces, `{}` for a row without fields, false for
 * nil) read straight from its bytes when every value is a plain decimal of at most 15 digits (the
 * common case: counts, short decimals), each parsed to the number Number makes of it: no reply
 * string, no string per value, no JSON.parse. Anything else (an exponent, 16+ digits, an escape,
 * a shape it does not expect) gives undefined, and the caller reads the reply with parseRawReply,
 * which is faster at those.
 */
export function parseScriptBytes(b: Buffer): RawValue[][] | undefined {
  const n = b.length;
  let p = 0;
  if (b[p++] !== 0x5b) return undefined; // [
  const rows: RawValue[][] = [];
  if (b[p] === 0x5d) return p + 1 === n ? rows : undefined;
  for (;;) {
    const c = b[p];
    if (c === 0x7b) {
      // {}
      if (b[p + 1] !== 0x7d) return undefined;
      rows.push([]);
      p += 2;
    } else if (c === 0x5b) {
      p++;
      const row: RawValue[] = [];
      if (b[p] === 0x5d) p++;
      else
        for (;;) {
          const v = b[p];
          if (v === 0x22) {
            // A string: plain ASCII without escapes is parsed here, anything else through JSON.parse.
            let q = p + 1;
            let plain = true;
            while (q < n) {
              const x = b[q]!;
              if (x === 0x22) break;
              if (x === 0x5c) {
                plain = false;
                q += 2;
                continue;
              }
              if (x >= 0x80) plain = false;
              q++;
            }
            if (q >= n) return undefined;
            // Other forms (exponents, 16+ digits, escapes): JSON.parse and Number are faster at those,
            // and the reply is read that way from the start.
            const value = plain ? decimal(b, p + 1, q) : undefined;
            if (value === undefined) return undefined;
            row.push(value);
            p = q + 1;
          } else if (v === 0x66 && b[p + 1] === 0x61 && b[p + 2] === 0x6c && b[p + 3] === 0x73 && b[p + 4] === 0x65) {
            // false
            row.push(false);
            p += 5;
          } else return undefined;
          if (b[p] === 0x2c) p++;
          else if (b[p] === 0x5d) {
            p++;
            break;
          } else return undefined;
        }
      rows.push(row);
    } else return undefined;
    if (b[p] === 0x2c) p++;
    else if (b[p] === 0x5d) return p + 1 === n ? rows : undefined;
    else return undefined;
  }
}

/**
 * Number(s) of the ASCII string in b[from, to) when it is a plain decimal of at most 15 digits
 * (null for ""), else undefined. Exact: the digits are an exact integer and 10^k an exact double,
 * so their quotient is the correctly rounded value, as Number's.
 */
function decimal(b: Buffer, from: number, to: number): number | null | undefined {
  if (from === to) return null;
  let i = from;
  const negative = b[i] === 0x2d;
  if (negative) i++;
  let m = 0;
  let digits = 0;
  let fraction = -1;
  for (; i < to; i++) {
    const c = b[i]!;
    if (c >= 0x30 && c <= 0x39) {
      if (++digits > 15) return undefined;
      m = m * 10 + (c - 0x30);
      if (fraction >= 0) fraction++;
    } else if (c === 0x2e && fraction < 0) fraction = 0;
    else break;
  }
  if (i === to && digits > 0 && fraction !== 0) {
    const v = fraction > 0 ? m / POW10[fraction]! : m;
    return negative ? -v : v;
  }
  return undefined;
}

async function readWithRespPipeline(conn: FeatureConnection, keys: string[], userFields: string[], itemFields: string[]): Promise<RawValue[][]> {
  const commands: RespArg[][] = [];
  keys.forEach((key, i) => {
    const fields = i === 0 ? userFields : itemFields;
    if (fields.length) commands.push(["HMGET", key, ...fields]);
  });
  const replies = await conn.send(commands);
  let next = 0;
  return keys.map((_, i) => {
    if (!(i === 0 ? userFields : itemFields).length) return [];
    const reply: RespReply = replies[next++]!;
    if (reply instanceof RespError) throw reply;
    return reply as (string | null)[];
  });
}

/** Pure assembly, separate from I/O so it is easy to test and reason about. */
export function assemble(
  specs: readonly FeatureSpec[],
  ctx: RequestContext,
  items: readonly string[],
  userValues: readonly RawValue[],
  itemValues: readonly (readonly RawValue[])[],
  unavailable: boolean,
): FeatureMatrix {
  const width = specs.length;
  const rows = items.length;
  const matrix = new Float32Array(rows * width);
  const missing = new Set<string>();
  let u = 0;
  let it = 0;
  for (let j = 0; j < width; j++) {
    const spec = specs[j]!;
    if (spec.source === "user") {
      const v = parseNumber(userValues[u++]);
      if (v === undefined) missing.add(spec.name);
      for (let r = 0; r < rows; r++) matrix[r * width + j] = v ?? spec.default;
    } else if (spec.source === "item") {
      const col = it++;
      for (let r = 0; r < rows; r++) {
        const v = parseNumber(itemValues[r]?.[col]);
        if (v === undefined) missing.add(spec.name);
        matrix[r * width + j] = v ?? spec.default;
      }
    } else {
      const raw = requestField(spec.name, ctx);
      const v = encodeRequestValue(spec, raw);
      if (v === undefined) missing.add(spec.name);
      for (let r = 0; r < rows; r++) matrix[r * width + j] = v ?? spec.default;
    }
  }
  return { matrix, rows, missing: [...missing], unavailable };
}

function parseNumber(raw: RawValue | undefined): number | undefined {
  if (typeof raw === "number") return raw;
  if (raw === null || raw === undefined || raw === false || raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : undefined;
}

function requestField(name: string, ctx: RequestContext): string {
  switch (name) {
    case "device_type":
      return ctx.deviceType;
    case "current_page":
      return ctx.currentPage;
    case "user_id":
      return ctx.userId;
    default:
      return "";
  }
}

/** Categorical request values become their vocabulary index; numeric ones are parsed. */
function encodeRequestValue(spec: FeatureSpec, raw: string): number | undefined {
  if (!raw) return undefined;
  if (spec.type === "categorical") {
    const idx = spec.vocabulary?.indexOf(raw) ?? -1;
    return idx >= 0 ? idx : undefined;
  }
  return parseNumber(raw);
}
