// Online features for one Recommend request: the user's hash and every candidate's hash, read in
// one round trip, assembled into the row-major matrix the model version declares.
// Redis trouble never fails the request: the features take their defaults and the caller logs it.
import type { Redis } from "../lib/redis.js";
import type { Names } from "../lib/config.js";
import type { FeatureSpec } from "../lib/registry.js";

export interface RequestContext {
  userId: string;
  currentPage: string;
  deviceType: string;
}

export interface FeatureMatrix {
  /** rows × features, row-major, in the order of `specs`. */
  matrix: Float32Array;
  rows: number;
  /** Features that took their default for at least one row. */
  missing: string[];
  /** Redis could not be read at all (down, slow); every user and item feature is a default. */
  unavailable: boolean;
}

export async function lookupFeatures(
  redis: Redis,
  names: Names,
  specs: readonly FeatureSpec[],
  ctx: RequestContext,
  items: readonly string[],
): Promise<FeatureMatrix> {
  const userFields = specs.filter((s) => s.source === "user").map((s) => s.name);
  const itemFields = specs.filter((s) => s.source === "item").map((s) => s.name);
  let userValues: (string | null)[] = [];
  let itemValues: (string | null)[][] = [];
  let unavailable = false;
  if (userFields.length || itemFields.length) {
    const keys = [names.userFeaturesKey(ctx.userId), ...items.map((item) => names.itemFeaturesKey(item))];
    try {
      const rows = scriptUnsupported.has(redis)
        ? await readWithPipeline(redis, keys, userFields, itemFields)
        : await readWithScript(redis, keys, userFields, itemFields).catch((err: Error) => {
            // Redis Cluster (keys in different slots) or scripting disabled: use a pipeline.
            if (!/CROSSSLOT|NOSCRIPT|unknown command|not allowed|disabled/i.test(err.message)) throw err;
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

const scriptUnsupported = new WeakSet<Redis>();
const scriptDefined = new WeakSet<Redis>();

export async function readWithScript(redis: Redis, keys: string[], userFields: string[], itemFields: string[]): Promise<(string | null)[][]> {
  if (!scriptDefined.has(redis)) {
    redis.defineCommand("streamserveReadFeatures", { lua: READ_FEATURES_LUA });
    scriptDefined.add(redis);
  }
  const call = (redis as unknown as { streamserveReadFeatures(...args: (string | number)[]): Promise<string> }).streamserveReadFeatures;
  const json = await call.call(redis, keys.length, ...keys, userFields.length, itemFields.length, ...userFields, ...itemFields);
  // Lua turns a missing field (nil) into false.
  return (JSON.parse(json) as (string | false)[][]).map((row) => (Array.isArray(row) ? row.map((v) => (v === false ? null : v)) : []));
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

/** Pure assembly, separate from I/O so it is easy to test and reason about. */
export function assemble(
  specs: readonly FeatureSpec[],
  ctx: RequestContext,
  items: readonly string[],
  userValues: readonly (string | null)[],
  itemValues: readonly (readonly (string | null)[])[],
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

function parseNumber(raw: string | null | undefined): number | undefined {
  if (raw === null || raw === undefined || raw === "") return undefined;
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
