// The command line as node:util.parseArgs reads it, with the house's rules: a command knows the flags
// its usage text names plus the global ones; anything else is refused with the closest known flag.
import { it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { closestName, durationFlag, flagsInUsage, listFlag, numberFlag, parseArgs, stringFlag, UsageError } from "../../cli/args.js";
import { COMMANDS, knownFlags, loadCommand, main } from "../../cli/main.js";

const parse = (argv: string[]) => parseArgs(argv, ["no-promote"], ["grpc-port", "variant", "lambda", "window"]);

it("reads --flag value, --flag=value, repeats, -h, booleans and -- like before", () => {
  const a = parse(["list", "--grpc-port", "9000", "--variant=a:50:x", "--variant", "b:50:y", "--no-promote", "-h", "--lambda", "-1", "--", "--not-a-flag"]);
  assert.deepEqual(a.positionals, ["list", "--not-a-flag"]);
  assert.equal(stringFlag(a, "grpc-port"), "9000");
  assert.deepEqual(listFlag(a, "variant"), ["a:50:x", "b:50:y"]);
  assert.equal(a.flags["no-promote"], true);
  assert.equal(a.flags.help, true);
  assert.equal(numberFlag(a, "lambda"), -1);
  assert.equal(durationFlag(parse(["--window", "5m"]), "window"), 300_000);
  assert.equal(parse(["--json", "--once"]).flags.json, true);
});

it("says what is wrong with a flag", () => {
  const fails = (argv: string[], message: RegExp) =>
    assert.throws(
      () => parse(argv),
      (e: Error) => e instanceof UsageError && message.test(e.message),
    );
  fails(["--grpc-prot", "9000"], /^unknown flag --grpc-prot: did you mean --grpc-port\?$/);
  fails(["--varient", "a"], /did you mean --variant\?/);
  fails(["--jsn"], /did you mean --json\?/);
  fails(["--frobnicate"], /^unknown flag --frobnicate$/);
  fails(["-x"], /^unknown flag -x$/);
  fails(["--grpc-port"], /^--grpc-port needs a value$/);
  fails(["--grpc-port", "--json"], /^--grpc-port needs a value$/);
  fails(["--json=yes"], /^--json takes no value \(got "yes"\)$/);
  assert.throws(() => numberFlag(parse(["--lambda", "x"]), "lambda"), /--lambda must be a number, got "x"/);
  assert.equal(closestName("promote", ["no-promote", "publish"]), "no-promote");
});

it("finds the flags a usage text names", () => {
  assert.deepEqual(flagsInUsage("  --tls-cert FILE --tls-key FILE   serve\n  [--no-promote | --no-publish] --a1 x --max-inflight N"), [
    "tls-cert",
    "tls-key",
    "no-promote",
    "no-publish",
    "a1",
    "max-inflight",
  ]);
});

it("every command accepts every flag its help shows, and prints that help", async () => {
  for (const name of COMMANDS) {
    const command = (await loadCommand(name))!;
    const known = knownFlags(command);
    for (const flag of ["grpc-port", "http-port", "data-dir", "namespace", "log-level", "log-format", "host"])
      assert.ok(known.includes(flag), `${name} --${flag}`);
    for (const flag of known) {
      const bool = ["help", "json", "once", ...(command.booleans ?? [])].includes(flag);
      const args = parseArgs(bool ? [`--${flag}`] : [`--${flag}`, "1"], command.booleans ?? [], known);
      assert.ok(args.flags[flag] !== undefined, `${name} --${flag}`);
    }
  }
  const out: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  try {
    assert.equal(await main(["train", "--help"]), 0);
  } finally {
    console.log = log;
  }
  assert.match(out.join("\n"), /--publish +with --output: also publish/);
  assert.match(out.join("\n"), /--log-format FORMAT/);
});

it("exits 2 on a mistyped flag without running the command", async () => {
  const errors: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    assert.equal(await main(["serve", "--grpc-prot", "9000"]), 2);
  } finally {
    console.error = error;
  }
  assert.match(errors[0]!, /^streamserve serve: unknown flag --grpc-prot: did you mean --grpc-port\?\n\nUsage: streamserve serve/);
});

it("every flag a command's file reads is one its usage text names (or it would be refused)", async () => {
  for (const name of COMMANDS) {
    const command = (await loadCommand(name))!;
    const source = readFileSync(new URL(`../../cli/commands/${name}.ts`, import.meta.url), "utf8");
    const read = [
      ...source.matchAll(/(?:stringFlag|numberFlag|durationFlag|listFlag)\(args, "([a-z0-9-]+)"|args\.flags\["([a-z0-9-]+)"\]|args\.flags\.([a-z]+)\b/g),
    ].map((m) => m[1] ?? m[2] ?? m[3]!);
    const known = knownFlags(command);
    for (const flag of read) assert.ok(known.includes(flag) || flag === "help", `streamserve ${name} reads --${flag} but its usage text does not name it`);
  }
});

it("up takes the trainer's --rollout choice and refuses a mode it does not know, before starting anything", async () => {
  const errors: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    assert.equal(await main(["up", "--rollout", "sometimes", "--no-local-services", "--log-level", "silent"]), 2);
  } finally {
    console.error = error;
  }
  assert.match(errors[0]!, /^streamserve up: --rollout must be immediate or guarded, got "sometimes"\n\nUsage: streamserve up/);
  assert.ok(knownFlags((await loadCommand("up"))!).includes("rollout-stages"));
});
