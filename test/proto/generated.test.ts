// The wire contracts: buf lint is clean, and gen/ is exactly what `npm run generate` makes from
// proto/ (so nobody edits generated code by hand or forgets to regenerate).
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const root = new URL("../..", import.meta.url).pathname;
const bin = (name: string) => join(root, "node_modules", ".bin", name);
const env = { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` };

function files(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p, "utf8"));
    }
  };
  walk(dir);
  return out;
}

it("buf lint is clean", () => {
  execFileSync(bin("buf"), ["lint"], { cwd: root, env, stdio: "pipe" });
});

it("gen/ is fresh: regenerating from proto/ changes nothing", () => {
  const out = mkdtempSync(join(tmpdir(), "streamserve-gen-"));
  try {
    // The repository's template, pointed at a temporary directory.
    const template = readFileSync(join(root, "buf.gen.yaml"), "utf8").replace(/out: gen/, `out: ${out}`);
    const templatePath = join(out, "..", `buf.gen.${Date.now()}.yaml`);
    writeFileSync(templatePath, template);
    try {
      execFileSync(bin("buf"), ["generate", "--template", templatePath], { cwd: root, env, stdio: "pipe" });
    } finally {
      rmSync(templatePath, { force: true });
    }
    const fresh = files(out);
    const committed = files(join(root, "gen"));
    assert.deepEqual([...committed.keys()].sort(), [...fresh.keys()].sort(), "the same files");
    for (const [name, text] of fresh) assert.equal(committed.get(name), text, `gen/${name} is stale: run npm run generate`);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
