// Derived-feature formulas: parsing, and agreement of each declared feature's formula with its
// `compute`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { evaluateFormula, formulaInputs, parseFormula, FormulaError } from "../../features/formula.js";
import { FEATURE_VIEWS } from "../../features/definitions.js";

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
  const rnd = () => (seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296;
  const pick = () => [0, 0, 1, 2, 0.5, rnd() * 1000, Math.floor(rnd() * 50), 1e6 * rnd()][Math.floor(rnd() * 8)]!;
  return Array.from({ length: n }, () => Object.fromEntries(names.map((k) => [k, pick()])));
}

test("every declared derived feature has a formula that agrees with its compute()", () => {
  let checked = 0;
  for (const view of FEATURE_VIEWS) {
    const inputs = view.aggregations.map((a) => a.name);
    for (const d of view.derived) {
      assert.ok(d.formula, `${d.name} declares its formula`);
      const f = parseFormula(d.formula);
      for (const name of formulaInputs(f)) assert.ok(inputs.includes(name), `${d.name} reads ${name}, not an aggregation of the ${view.entity} view`);
      for (const c of samples(inputs, 200)) assert.equal(evaluateFormula(f, c), d.compute(c), `${d.name} formula for ${JSON.stringify(c)}`);
      checked++;
    }
  }
  assert.equal(checked, 2, "engagement_score and item_ctr_5min");
});
