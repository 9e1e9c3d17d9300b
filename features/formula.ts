// Derived-feature formulas: a small arithmetic language over feature names, so a derived feature
// can be stated as data (a definition file, a registry entry) and checked against its compute().
//
//   formula    := comparison ("?" formula ":" formula)?
//   comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//   sum        := product (("+" | "-") product)*
//   product    := unary (("*" | "/") unary)*
//   unary      := "-" unary | number | name | "(" formula ")"
//
// A name is a feature of the same view (absent reads as 0). Numbers and conditions do not mix:
// the condition of "?:" must be a comparison (is 0 false? a formula never has to say) and a
// comparison is never a number (no `(a > b) * 3`), so a formula reads one way to whoever writes
// it and to every evaluator of it.
export type Formula =
  | { kind: "num"; value: number }
  | { kind: "var"; name: string }
  | { kind: "neg"; arg: Formula }
  | { kind: "bin"; op: "+" | "-" | "*" | "/"; left: Formula; right: Formula }
  | { kind: "cmp"; op: "<" | "<=" | ">" | ">=" | "==" | "!="; left: Formula; right: Formula }
  | { kind: "cond"; test: Formula; then: Formula; else: Formula };

export class FormulaError extends Error {
  override name = "FormulaError";
}

const TOKEN = /\s*(?:(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(<=|>=|==|!=|[-+*/()<>?:]))/y;

export function parseFormula(source: string): Formula {
  const tokens: string[] = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < source.length) {
    if (/^\s*$/.test(source.slice(TOKEN.lastIndex))) break;
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(source);
    if (!m) throw new FormulaError(`formula "${source}": unexpected character at ${at}: "${source.slice(at).trim()[0]}"`);
    tokens.push(m[0].trim());
  }
  let i = 0;
  const peek = () => tokens[i];
  const expect = (t: string) => {
    if (tokens[i] !== t) throw new FormulaError(`formula "${source}": expected "${t}", found ${tokens[i] ? `"${tokens[i]}"` : "the end"}`);
    i++;
  };
  const formula = (): Formula => {
    const test = comparison();
    if (peek() !== "?") return test;
    if (test.kind !== "cmp") throw new FormulaError(`formula "${source}": the condition before "?" must be a comparison`);
    i++;
    const then = formula();
    expect(":");
    return { kind: "cond", test, then, else: formula() };
  };
  const comparison = (): Formula => {
    const left = sum();
    const op = peek();
    if (op === "<" || op === "<=" || op === ">" || op === ">=" || op === "==" || op === "!=") {
      i++;
      return { kind: "cmp", op, left, right: sum() };
    }
    return left;
  };
  const sum = (): Formula => {
    let left = product();
    for (let op = peek(); op === "+" || op === "-"; op = peek()) {
      i++;
      left = { kind: "bin", op, left, right: product() };
    }
    return left;
  };
  const product = (): Formula => {
    let left = unary();
    for (let op = peek(); op === "*" || op === "/"; op = peek()) {
      i++;
      left = { kind: "bin", op, left, right: unary() };
    }
    return left;
  };
  const unary = (): Formula => {
    const t = tokens[i++];
    if (t === undefined) throw new FormulaError(`formula "${source}": ends too early`);
    if (t === "-") return { kind: "neg", arg: unary() };
    if (t === "(") {
      const inner = formula();
      expect(")");
      return inner;
    }
    if (/^\d/.test(t)) return { kind: "num", value: Number(t) };
    if (/^[A-Za-z_]/.test(t)) return { kind: "var", name: t };
    throw new FormulaError(`formula "${source}": unexpected "${t}"`);
  };
  const f = formula();
  if (i < tokens.length) throw new FormulaError(`formula "${source}": unexpected "${tokens[i]}"`);
  checkComparisons(f, false, source);
  return f;
}

/** A comparison is a condition, never a number (see the header). */
function checkComparisons(f: Formula, asCondition: boolean, source: string): void {
  switch (f.kind) {
    case "cmp":
      if (!asCondition) throw new FormulaError(`formula "${source}": a comparison may only be the condition of "?:"`);
      checkComparisons(f.left, false, source);
      checkComparisons(f.right, false, source);
      return;
    case "neg":
      return checkComparisons(f.arg, false, source);
    case "bin":
      checkComparisons(f.left, false, source);
      return checkComparisons(f.right, false, source);
    case "cond":
      checkComparisons(f.test, true, source);
      checkComparisons(f.then, false, source);
      return checkComparisons(f.else, false, source);
    default:
      return;
  }
}

/** Feature names a formula reads. */
export function formulaInputs(f: Formula): string[] {
  switch (f.kind) {
    case "num":
      return [];
    case "var":
      return [f.name];
    case "neg":
      return formulaInputs(f.arg);
    case "bin":
    case "cmp":
      return [...new Set([...formulaInputs(f.left), ...formulaInputs(f.right)])];
    case "cond":
      return [...new Set([...formulaInputs(f.test), ...formulaInputs(f.then), ...formulaInputs(f.else)])];
  }
}

export function evaluateFormula(f: Formula, values: Readonly<Record<string, number>>): number {
  switch (f.kind) {
    case "num":
      return f.value;
    case "var":
      return values[f.name] ?? 0;
    case "neg":
      return -evaluateFormula(f.arg, values);
    case "bin": {
      const a = evaluateFormula(f.left, values);
      const b = evaluateFormula(f.right, values);
      return f.op === "+" ? a + b : f.op === "-" ? a - b : f.op === "*" ? a * b : a / b;
    }
    case "cmp":
      return compare(f.op, evaluateFormula(f.left, values), evaluateFormula(f.right, values)) ? 1 : 0;
    case "cond":
      return evaluateFormula(f.test, values) ? evaluateFormula(f.then, values) : evaluateFormula(f.else, values);
  }
}

function compare(op: string, a: number, b: number): boolean {
  switch (op) {
    case "<":
      return a < b;
    case "<=":
      return a <= b;
    case ">":
      return a > b;
    case ">=":
      return a >= b;
    case "==":
      return a === b;
    default:
      return a !== b;
  }
}
