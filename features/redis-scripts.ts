// The Redis side of the window state machine: Lua scripts generated from a feature view, and the
// keys they touch.
//
// Why the state lives in Redis, updated by scripts (the exactly-once argument):
// - JetStream delivers at least once: a worker killed after writing but before acking, or one
//   that overruns its ack wait, has its events delivered again, possibly to another worker.
// - Each window's state is one hash that also holds a marker field per applied event id
//   (`e:<event_id>`) and per distinct value (`d<i>:<value>`). The update script reads the markers
//   and the aggregates, folds in only the events it has not seen, and writes everything back in
//   one atomic step. Replaying an event, on any worker, is therefore a no-op; workers need no
//   coordination and no partitioning, and N workers produce what one does (aggregates commute).
// - The same script writes the entity's public feature hash (derived features too: they are
//   formulas compiled to Lua) and the item's decayed activity, so state and what the server
//   reads can never disagree, whichever worker wrote last.
// - Nothing else holds state: the worker's memory is a cache. A kill -9 at any point leaves
//   either the old or the new state of every window, and the unacked events come back and are
//   skipped or applied.
// - What is written outside the script is idempotent and redone on redelivery, because the
//   script returns the current state even when it applied nothing: the open-window index (ZADD),
//   the trending score on a cluster (ZADD GT: scores only grow), the closed-window row on LOGS
//   (Nats-Msg-Id, plus a `published` mark on the closed window).
// - Closing a window marks its hash closed and drops the markers (the memory of a window is
//   bounded by its events until then). From then on the script refuses it, so the row published
//   to the offline store is final and a slow worker cannot slip an event past it.
//
// Cost: a script call carries many groups (entity windows), so a batch of thousands of events
// costs a handful of calls in one round trip, not thousands.
//
// Redis Cluster: a script's keys must share a hash slot. A window's state and the item's trend
// state carry the public key's hash tag, so they share the slot of `user_features:{id}` itself;
// on a cluster the store batches only groups of one slot into a call, and the trending set (its
// own slot) is written by the caller from the scores the script returns.
import type { FeatureView } from "./definitions.js";
import { featureNames, stateFields, stateOp } from "./windows.js";
import { formulaToLua, parseFormula } from "./formula.js";

/** The trending sorted set's scoring. */
export interface TrendingSpec {
  weights: Record<string, number>;
  halfLifeMs: number;
  maxItems: number;
}

/** The part of a key that Redis Cluster hashes: the first non-empty {...}, else the whole key. */
export function hashTagOf(key: string): string {
  const open = key.indexOf("{");
  if (open !== -1) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) return key.slice(open + 1, close);
  }
  return key;
}

/** Internal keys of the feature pipeline, all under the namespace's Redis prefix. */
export interface StateKeys {
  /** Hash of one window of one entity. Same slot as `publicKey`. */
  window(publicKey: string, windowStart: number): string;
  /** Hash with an item's decayed activity (s at reference time r). Same slot as `publicKey`. */
  trend(publicKey: string): string;
  /** Sorted set of a view's open windows, scored by window end. */
  openWindows(entity: string): string;
  /** The newest event time seen by any worker: the watermark's source. */
  eventTimeHigh: string;
}

export function stateKeys(redisPrefix: string): StateKeys {
  const base = `${redisPrefix}features:`;
  return {
    window: (publicKey, windowStart) => `${base}{${hashTagOf(publicKey)}}:w:${windowStart}`,
    trend: (publicKey) => `${base}{${hashTagOf(publicKey)}}:trend`,
    openWindows: (entity) => `${base}open:${entity}`,
    eventTimeHigh: `${base}event_time_high`,
  };
}

/**
 * The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, mod 16384). Scripts may only
 * batch keys of one slot on a cluster; on a single Redis any keys may share a call.
 */
export function keySlot(key: string): number {
  const bytes = new TextEncoder().encode(hashTagOf(key));
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

// Lua shared by the scripts. Results travel inside one cjson-encoded reply; cjson prints numbers
// with 14 digits only, so a fractional result (the trending score) goes as a %.17g string.
const PRELUDE = `
local function fmt(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end
local function nice(x)
  if x == math.floor(x) and x > -1e15 and x < 1e15 then return string.format('%d', x) end
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then s = string.format('%.17g', x) end
  return s
end
`;

/** Where the trending scores go: ZADD inside the script (single Redis) or by the caller (cluster). */
export type TrendingMode = "inline" | "returned";

/**
 * The update script of a view. One call applies many groups (entity windows), so the cost of a
 * call is shared by many events, and for each group writes, atomically: the window state, the
 * entity's public feature hash (aggregates and derived features, when this window is its newest)
 * and, for the trending view, the item's decayed activity and its trending score.
 * KEYS: [trending sorted set when mode is "inline"], then per group its window hash, its public
 * hash and (trending view only) its trend hash.
 * ARGV: open-window TTL ms, trend TTL ms, feature TTL ms, now (ms, the public hash's updated_at),
 * trending max items, then a JSON array with one entry per group: [window start, entity id,
 * events], each event [event_id, event_time, one contribution per aggregation (a number, a
 * string for a distinct count, or false for none; see windows.ts), trend weight or false].
 * Returns a JSON array with per group [status ("open" | "closed"), applied, duplicates, trend
 * score as a string or ""]. (Only what the caller needs: formatting numbers is most of a
 * script's cost.)
 */
export function updateScript(view: FeatureView, trending: TrendingSpec | null, mode: TrendingMode = "inline"): string {
  const fields = stateFields(view); // n, t, rev, aggregation fields
  const K = view.aggregations.length;
  const inline = trending !== null && mode === "inline";
  // Lua arrays start at 1: an event is {id, time, c_0 .. c_K-1, weight}, so c_i is ev[3 + i].
  const aggVars = view.aggregations.map((a, i) => {
    const at = (f: string) => `cur[${fields.indexOf(f) + 2}]`;
    switch (stateOp(a)) {
      case "avg":
        return `local a${i}s = tonumber(${at(`a${i}s`)}) or 0\n      local a${i}n = tonumber(${at(`a${i}n`)}) or 0`;
      case "max":
      case "min":
        return `local a${i} = tonumber(${at(`a${i}`)})`;
      default:
        return `local a${i} = tonumber(${at(`a${i}`)}) or 0`;
    }
  });
  const fold = view.aggregations.map((a, i) => {
    const v = `ev[${3 + i}]`;
    switch (stateOp(a)) {
      case "add":
        return `v = ${v}; if v then a${i} = a${i} + v end`;
      case "avg":
        return `v = ${v}; if v then a${i}s = a${i}s + v; a${i}n = a${i}n + 1 end`;
      case "max":
        return `v = ${v}; if v and (a${i} == nil or v > a${i}) then a${i} = v end`;
      case "min":
        return `v = ${v}; if v and (a${i} == nil or v < a${i}) then a${i} = v end`;
      case "distinct":
        return `v = ${v}; if v then local d = 'd${i}:' .. v; if not present[d] then present[d] = true; out[#out + 1] = d; out[#out + 1] = '1'; a${i} = a${i} + 1 end end`;
    }
  });
  // The features, as windows.ts featuresOf computes them, then the derived formulas.
  const features = [
    ...view.aggregations.map((a, i) =>
      stateOp(a) === "avg" ? `f['${a.name}'] = (a${i}n > 0) and (a${i}s / a${i}n) or 0` : `f['${a.name}'] = a${i} or 0`,
    ),
    ...view.derived.map((d) => {
      if (!d.formula) throw new Error(`derived feature "${d.name}" has no formula: the streaming engine evaluates derived features in Redis and needs one`);
      return `f['${d.name}'] = ${formulaToLua(parseFormula(d.formula), "f")}`;
    }),
  ];
  // Counts are integers, which Redis prints plainly; what may be fractional gets its shortest
  // exact form (0.7, not 0.69999999999999996) for people reading the hash.
  const integral = new Set(view.aggregations.filter((a) => a.kind === "count" || a.kind === "count_distinct").map((a) => a.name));
  const publicValues = featureNames(view).map((nm) => (integral.has(nm) ? `'${nm}', f['${nm}']` : `'${nm}', nice(f['${nm}'])`));
  const distinctMarkers = view.aggregations
    .map((a, i) => (stateOp(a) === "distinct" ? `if evs[j][${3 + i}] then fields[#fields + 1] = 'd${i}:' .. evs[j][${3 + i}] end` : ""))
    .filter(Boolean);
  const aggNames = fields.slice(3);
  const H = trending?.halfLifeMs;
  // Decayed activity kept relative to the newest event time seen (tref), so it never overflows
  // and the result does not depend on arrival order. The trending score is log2 of the activity
  // decayed to the epoch: halvings since the epoch of the newest event plus log2 of the activity
  // then. Items' scores compare like their activity at any common instant, and adding activity
  // only raises a score, so ZADD GT can apply scores in any order (and again, after a crash).
  const trend = trending
    ? {
        read: `local tkey = KEYS[ki]; ki = ki + 1
  local tr = redis.call('HMGET', tkey, 's', 'r')
  local ts, tref = tonumber(tr[1]), tonumber(tr[2])
  local tchanged = false`,
        fold: `local w = ev[${3 + K}]
        if w then
          if tref == nil then ts = w; tref = et
          elseif et > tref then ts = ts * math.pow(2, -(et - tref) / ${H}) + w; tref = et
          else ts = ts + w * math.pow(2, -(tref - et) / ${H}) end
          tchanged = true
        end`,
        write: `if tchanged then
      redis.call('HSET', tkey, 's', ts, 'r', tref)
      redis.call('PEXPIRE', tkey, trendTtl)
    end`,
        score: `local score = (tref ~= nil and ts > 0) and (tref / ${H} + math.log(ts) / math.log(2)) or nil
  ${inline ? "if score then redis.call('ZADD', KEYS[1], 'GT', score, entity); ranked = true end" : ""}`,
      }
    : { read: "", fold: "", write: "", score: "local score = nil" };
  return `${PRELUDE}
local openTtl, trendTtl, featureTtl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local groups = cjson.decode(ARGV[6])
local results = {}
local ki = ${inline ? 2 : 1}
local ranked = false
local v
for g = 1, #groups do
  local ws, entity, evs = groups[g][1], groups[g][2], groups[g][3]
  local state, pub = KEYS[ki], KEYS[ki + 1]
  ki = ki + 2
  ${trend.read}
  local fields = {'closed', ${fields.map((f) => `'${f}'`).join(", ")}}
  local nfixed = #fields
  for j = 1, #evs do
    fields[#fields + 1] = 'e:' .. evs[j][1]
    ${distinctMarkers.join("\n    ")}
  end
  local cur = redis.call('HMGET', state, unpack(fields))
  local r
  if cur[1] then
    -- Closed: its final row is (being) published; nothing may change it any more.
    r = {'closed', 0, 0}
  else
    local present = {}
    for k = nfixed + 1, #fields do
      if cur[k] then present[fields[k]] = true end
    end
    local n = tonumber(cur[2]) or 0
    local t = tonumber(cur[3]) or 0
    local rev = tonumber(cur[4]) or 0
    ${aggVars.join("\n    ")}
    local applied, dups = 0, 0
    local out = {}
    for j = 1, #evs do
      local ev = evs[j]
      local mk = 'e:' .. ev[1]
      if present[mk] then
        dups = dups + 1
      else
        present[mk] = true
        out[#out + 1] = mk
        out[#out + 1] = '1'
        applied = applied + 1
        n = n + 1
        local et = ev[2]
        if et > t then t = et end
        ${fold.join("\n        ")}
        ${trend.fold}
      end
    end
    if applied > 0 then
      rev = rev + 1
      -- Numbers go to redis.call as numbers: Redis prints them exactly (%.17g) in C, far
      -- cheaper than string.format in Lua.
      out[#out + 1] = 'n'; out[#out + 1] = n
      out[#out + 1] = 't'; out[#out + 1] = t
      out[#out + 1] = 'rev'; out[#out + 1] = rev
      ${aggNames.map((f) => `if ${f} ~= nil then out[#out + 1] = '${f}'; out[#out + 1] = ${f} end`).join("\n      ")}
      redis.call('HSET', state, unpack(out))
      -- An open window's hash lives until it is closed; the TTL only reclaims it if the stream stops for good.
      if not cur[2] then redis.call('PEXPIRE', state, openTtl) end
      -- The public hash shows the entity's newest window: an older one still open (events out
      -- of order within the watermark) updates its state but leaves the hash alone.
      local cws = tonumber(redis.call('HGET', pub, 'window_start'))
      if cws == nil or ws >= cws then
        local f = {}
        ${features.join("\n        ")}
        redis.call('HSET', pub, ${publicValues.join(", ")},
          'window_start', ws, 'window_end', ws + ${view.windowMs}, 'event_count', n, 'feature_time', t, 'updated_at', now)
        redis.call('PEXPIRE', pub, featureTtl)
      end
    end
    ${trend.write}
    r = {'open', applied, dups}
  end
  ${trend.score}
  r[4] = fmt(score)
  results[g] = r
end
${inline ? "-- Keep the top items: the lowest scores are those whose activity decayed most.\nif ranked then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1)) end" : ""}
return cjson.encode(results)
`;
}

/**
 * The close script of a view: marks windows closed, keeps only their aggregates, returns them.
 * KEYS: window hashes. ARGV: TTL ms of a closed window.
 * Returns a JSON array with per window false (no state) or [published "1" | "0", ...state fields].
 */
export function closeScript(view: FeatureView): string {
  const fields = stateFields(view);
  return `
local names = {${fields.map((f) => `'${f}'`).join(", ")}}
local results = {}
for w = 1, #KEYS do
  local cur = redis.call('HMGET', KEYS[w], 'closed', 'published', unpack(names))
  if not cur[3] then
    results[w] = false
  else
    if not cur[1] then
      -- Drop the per-event markers: a closed window refuses every event, so they are dead weight.
      redis.call('DEL', KEYS[w])
      local out = {'closed', '1'}
      for k = 1, #names do
        if cur[k + 2] then out[#out + 1] = names[k]; out[#out + 1] = cur[k + 2] end
      end
      redis.call('HSET', KEYS[w], unpack(out))
      redis.call('PEXPIRE', KEYS[w], ARGV[1])
    end
    local r = {cur[2] and '1' or '0'}
    for k = 1, #names do r[#r + 1] = cur[k + 2] or '' end
    results[w] = r
  end
end
return cjson.encode(results)
`;
}

/** Records that closed windows' rows reached the LOGS stream. KEYS: window hashes. */
export const MARK_PUBLISHED_SCRIPT = `
for w = 1, #KEYS do
  if redis.call('EXISTS', KEYS[w]) == 1 then redis.call('HSET', KEYS[w], 'published', '1') end
end
return #KEYS
`;

/**
 * Raises the newest event time seen to ARGV[1] if that is larger ("" only reads it).
 * KEYS: the event-time-high key. Returns the value after the call ("" when none yet).
 */
export const ADVANCE_EVENT_TIME_SCRIPT = `
local cur = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and (not cur or tonumber(ARGV[1]) > tonumber(cur)) then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return cur or ''
`;
