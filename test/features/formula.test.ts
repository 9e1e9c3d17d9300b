// Derived-feature formulas: parsing, and agreement of the formula (in JavaScript and compiled to
// Lua, run by the real Redis) with each declared feature's `compute`.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { evaluateFormula, formulaInputs, formulaToLua, parseFormula, FormulaError } from "../../features/formula.js";
import { keySlot } from "../../features/redis-scripts.js";
import { FEATURE_VIEWS } from "../../features/definitions.js";

const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { lazyConnect: true });
after(() => redis.disconnect());

test("precedence, parentheses, unary minus and the conditional", () => {
  const ev = (src: string, vals: Record<string, number> = {}) => evaluateFormula(parseFormula(src), vals);
  assert.equal(ev("1 + 2 * 3"), 7);
  assert.equal(ev("(1 + 2) * 3"), 9);
  assert.equal(ev("10 - 4 - 3"), 3, "left-associative");
  assert.equal(ev("12 / 3 / 2"), 2);
  assert.equal(ev("-a * 2", { a: 3 }), -6);
  assert.equal(ev("a > 0 ? 30 : 0", { a: 0.01 }), 30);
  assert.equal(ev("(a >= 1) ? b / a : 0", { a: 0, b: 5 }), 0, "no division by zero in the unused branch");
  assert.equal(ev("missing + 1"), 1, "an absent feature reads as 0");
  assert.equal(ev("1.5e3"), 1500);
  assert.deepEqual(formulaInputs(parseFormula("a * 0.3 + b * 0.4 + (c > 0 ? 30 : a)")).sort(), ["a", "b", "c"]);
});

test("malformed formulas are refused with the reason", () => {
  assert.throws(() => parseFormula("a +"), /ends too early/);
  assert.throws(() => parseFormula("a b"), /unexpected "b"/);
  assert.throws(() => parseFormula("a ? 1 : 2"), /condition before "\?" must be a comparison/);
  assert.throws(() => parseFormula("(a > 0) * 30"), /comparison may only be the condition/);
  assert.throws(() => parseFormula("a % 2"), FormulaError);
  assert.throws(() => parseFormula("(a + 1"), /expected "\)"/);
});

/** Random feature values with the corner cases that matter (zeros, fractions, large counts). */
function samples(names: string[], n: number): Record<string, number>[] {
  let seed = 42;
  const rnd = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296);
  const pick = () => [0, 0, 1, 2, 0.5, rnd() * 1000, Math.floor(rnd() * 50), 1e6 * rnd()][Math.floor(rnd() * 8)]!;
  return Array.from({ length: n }, () => Object.fromEntries(names.map((k) => [k, pick()])));
}

test("every declared derived feature has a formula that agrees with its compute(), in JS and in Redis Lua", async () => {
  let checked = 0;
  for (const view of FEATURE_VIEWS) {
    const inputs = view.aggregations.map((a) => a.name);
    for (const d of view.derived) {
      assert.ok(d.formula, `${d.name} needs a formula for the streaming engine`);
      const f = parseFormula(d.formula);
      for (const name of formulaInputs(f)) assert.ok(inputs.includes(name), `${d.name} reads ${name}, not an aggregation of the ${view.entity} view`);
      const cases = samples(inputs, 200);
      // Lua, in the real Redis: all cases in one script call.
      const lua = `local out = {}
for i = 1, #ARGV do
  local f = cjson.decode(ARGV[i])
  out[i] = string.format('%.17g', ${formulaToLua(f, "f")})
end
return out`;
      const fromLua = (await redis.eval(lua, 0, ...cases.map((c) => JSON.stringify(c)))) as string[];
      cases.forEach((c, i) => {
        const expected = d.compute(c);
        assert.equal(evaluateFormula(f, c), expected, `${d.name} formula in JS for ${JSON.stringify(c)}`);
        assert.equal(Number(fromLua[i]), expected, `${d.name} formula in Lua for ${JSON.stringify(c)}`);
      });
      checked++;
    }
  }
  assert.equal(checked, 2, "engagement_score and item_ctr_5min");
});

test("cluster slots match Redis's CRC16 and honour hash tags", () => {
  // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
  assert.equal(keySlot("foo"), 12182);
  assert.equal(keySlot("bar"), 5061);
  assert.equal(keySlot("123456789"), 0x31c3 % 16384, "CRC16/XMODEM check value 0x31C3");
  assert.equal(keySlot("{user1000}.following"), keySlot("{user1000}.followers"));
  assert.equal(keySlot("ns:features:{ns:user_features:42}:w:0"), keySlot("ns:user_features:42"));
});
