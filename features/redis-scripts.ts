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
// - Nothing else holds state: the worker's memory is a cache. A kill -9 at any point leaves
//   either the old or the new window state, and the unacked events come back and are skipped or
//   applied.
// - Everything written after the script (the public feature hash, the trending score, the open-
//   window index, the closed-window log) is a pure function of the stored state, written
//   idempotently (conditional on the state's revision, ZADD GT, ZADD, Nats-Msg-Id), and redone
//   on redelivery because the script returns the current state even when nothing changed.
// - Closing a window marks its hash closed and drops the markers (the memory of a window is
//   bounded by its events until then). From then on the script refuses it, so the row published
//   to the offline store is final and a slow worker cannot slip an event past it.
//
// Redis Cluster: a script's keys must share a hash slot. A window's state and the item's trend
// state carry the public key's hash tag, so they share the slot of `user_features:{id}` itself.
import type { FeatureView } from "./definitions.js";
import { stateFields, stateOp } from "./windows.js";

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

// Lua shared by the scripts. %.17g round-trips every double, so sums survive being stored.
const PRELUDE = `
local function fmt(x) if x == nil then return '' end return string.format('%.17g', x) end
`;

/** Arguments per event in an update call: id, time, one per aggregation, and the trend weight. */
export function eventStride(view: FeatureView, trending: boolean): number {
  return 2 + view.aggregations.length + (trending ? 1 : 0);
}

/**
 * The update script of a view.
 * KEYS: window hash, [trend hash]. ARGV: open-window TTL ms, trend TTL ms, then per event
 * `eventStride` values: event id, event time, one contribution per aggregation ("" for none,
 * see windows.ts), [trend weight or ""].
 * Returns {status ("open" | "closed"), applied, duplicates, ...state fields, trend score or ""}.
 */
export function updateScript(view: FeatureView, trending: TrendingSpec | null): string {
  const fields = stateFields(view); // n, t, rev, aggregation fields
  const K = view.aggregations.length;
  const stride = eventStride(view, trending !== null);
  const aggVars = view.aggregations.map((a, i) => {
    switch (stateOp(a)) {
      case "avg":
        return `local a${i}s = tonumber(cur[${fields.indexOf(`a${i}s`) + 2}]) or 0
local a${i}n = tonumber(cur[${fields.indexOf(`a${i}n`) + 2}]) or 0`;
      case "max":
      case "min":
        return `local a${i} = tonumber(cur[${fields.indexOf(`a${i}`) + 2}])`;
      default:
        return `local a${i} = tonumber(cur[${fields.indexOf(`a${i}`) + 2}]) or 0`;
    }
  });
  const fold = view.aggregations.map((a, i) => {
    const v = `ARGV[o + ${2 + i}]`;
    switch (stateOp(a)) {
      case "add":
        return `v = ${v}; if v ~= '' then a${i} = a${i} + tonumber(v) end`;
      case "avg":
        return `v = ${v}; if v ~= '' then a${i}s = a${i}s + tonumber(v); a${i}n = a${i}n + 1 end`;
      case "max":
        return `v = ${v}; if v ~= '' then local x = tonumber(v); if a${i} == nil or x > a${i} then a${i} = x end end`;
      case "min":
        return `v = ${v}; if v ~= '' then local x = tonumber(v); if a${i} == nil or x < a${i} then a${i} = x end end`;
      case "distinct":
        return `v = ${v}; if v ~= '' then local f = 'd${i}:' .. v; if not present[f] then present[f] = true; out[#out + 1] = f; out[#out + 1] = '1'; a${i} = a${i} + 1 end end`;
    }
  });
  const distinctMarkers = view.aggregations
    .map((a, i) => (stateOp(a) === "distinct" ? `v = ARGV[o + ${2 + i}]; if v ~= '' then fields[#fields + 1] = 'd${i}:' .. v end` : ""))
    .filter(Boolean);
  const aggNames = fields.slice(3); // state fields after n, t, rev
  const trendRead = trending
    ? `local tr = redis.call('HMGET', KEYS[2], 's', 'r')
local ts, tref = tonumber(tr[1]), tonumber(tr[2])
local tchanged = false`
    : "";
  // Decayed activity kept relative to the newest event time seen (tref), so it never overflows
  // and the result does not depend on arrival order.
  const trendFold = trending
    ? `v = ARGV[o + ${2 + K}]
      if v ~= '' then
        local w = tonumber(v)
        if tref == nil then ts = w; tref = et
        elseif et > tref then ts = ts * math.pow(2, -(et - tref) / ${trending.halfLifeMs}) + w; tref = et
        else ts = ts + w * math.pow(2, -(tref - et) / ${trending.halfLifeMs}) end
        tchanged = true
      end`
    : "";
  // The trending score: log2 of the activity decayed to the epoch, i.e. halvings since the epoch
  // of the newest event plus log2 of the activity then. Scores of items compare like their
  // activity at any common instant, and adding activity only raises the score (so ZADD GT).
  const trendWrite = trending
    ? `if tchanged then
  redis.call('HSET', KEYS[2], 's', fmt(ts), 'r', fmt(tref))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local score = ''
if tref ~= nil and ts > 0 then score = fmt(tref / ${trending.halfLifeMs} + math.log(ts) / math.log(2)) end`
    : `local score = ''`;
  return `${PRELUDE}
local state = KEYS[1]
local S = ${stride}
local nev = (#ARGV - 2) / S
local fields = {'closed', ${fields.map((f) => `'${f}'`).join(", ")}}
local nfixed = #fields
local o, v
for i = 0, nev - 1 do
  o = 3 + i * S
  fields[#fields + 1] = 'e:' .. ARGV[o]
  ${distinctMarkers.join("\n  ")}
end
local cur = redis.call('HMGET', state, unpack(fields))
${trendRead}
if cur[1] then
  -- Closed: its final row is (being) published; nothing may change it any more.
  ${trending ? "local score = ''\n  if tref ~= nil and ts > 0 then score = fmt(tref / " + trending.halfLifeMs + " + math.log(ts) / math.log(2)) end" : "local score = ''"}
  local r = {'closed', '0', '0'}
  for k = 2, nfixed do r[#r + 1] = cur[k] or '' end
  r[#r + 1] = score
  return r
end
local present = {}
for k = nfixed + 1, #fields do
  if cur[k] then present[fields[k]] = true end
end
local n = tonumber(cur[2]) or 0
local t = tonumber(cur[3]) or 0
local rev = tonumber(cur[4]) or 0
${aggVars.join("\n")}
local applied, dups = 0, 0
local out = {}
for i = 0, nev - 1 do
  o = 3 + i * S
  local mk = 'e:' .. ARGV[o]
  if present[mk] then
    dups = dups + 1
  else
    present[mk] = true
    out[#out + 1] = mk
    out[#out + 1] = '1'
    applied = applied + 1
    n = n + 1
    local et = tonumber(ARGV[o + 1])
    if et > t then t = et end
    ${fold.join("\n    ")}
    ${trendFold}
  end
end
if applied > 0 then
  rev = rev + 1
  out[#out + 1] = 'n'; out[#out + 1] = fmt(n)
  out[#out + 1] = 't'; out[#out + 1] = fmt(t)
  out[#out + 1] = 'rev'; out[#out + 1] = fmt(rev)
  ${aggNames.map((f) => `if ${f} ~= nil then out[#out + 1] = '${f}'; out[#out + 1] = fmt(${f}) end`).join("\n  ")}
  redis.call('HSET', state, unpack(out))
  -- A window's hash lives until it is closed; the TTL only guards against a stream that stops for good.
  if not cur[2] then redis.call('PEXPIRE', state, ARGV[1]) end
end
${trendWrite}
return {'open', tostring(applied), tostring(dups), fmt(n), fmt(t), fmt(rev), ${aggNames.map((f) => `fmt(${f})`).join(", ")}, score}
`;
}

/**
 * The close script of a view: marks a window closed, keeps only its aggregates, and returns them.
 * KEYS: window hash. ARGV: TTL ms of the closed window.
 * Returns false when no state exists, else {published ("1" | "0"), ...state fields}.
 */
export function closeScript(view: FeatureView): string {
  const fields = stateFields(view);
  return `
local cur = redis.call('HMGET', KEYS[1], 'closed', 'published', ${fields.map((f) => `'${f}'`).join(", ")})
if not cur[3] then return false end
local names = {${fields.map((f) => `'${f}'`).join(", ")}}
if not cur[1] then
  -- Drop the per-event markers: a closed window refuses every event, so they are dead weight.
  redis.call('DEL', KEYS[1])
  local out = {'closed', '1'}
  for k = 1, #names do
    if cur[k + 2] then out[#out + 1] = names[k]; out[#out + 1] = cur[k + 2] end
  end
  redis.call('HSET', KEYS[1], unpack(out))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local r = {cur[2] and '1' or '0'}
for k = 1, #names do r[#r + 1] = cur[k + 2] or '' end
return r
`;
}

/** Records that a closed window's row reached the LOGS stream. KEYS: window hash. */
export const MARK_PUBLISHED_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'published', '1') end
return 1
`;

/**
 * Writes an entity's public feature hash unless it already shows a newer window or a later
 * revision of the same one, so concurrent workers and replays can only move it forward.
 * KEYS: public hash. ARGV: window start, revision, TTL ms, then field/value pairs.
 * Returns 1 when written, 0 when skipped.
 */
export const PUBLISH_FEATURES_SCRIPT = `
local cur = redis.call('HMGET', KEYS[1], 'window_start', 'window_rev')
local ws, rev = tonumber(ARGV[1]), tonumber(ARGV[2])
local cws, crev = tonumber(cur[1]), tonumber(cur[2])
if cws ~= nil and crev ~= nil and (ws < cws or (ws == cws and rev <= crev)) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
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
