// Secrets stay out of logs and error messages: every line a failing start writes (stdout and
// stderr, every log level) is searched for the password, and a bad database or scheme in the Redis
// URL is a configuration error that names the fix.
import { after, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { Writable } from "node:stream";
import { createLogger } from "../../lib/logger.js";
import { redactText, registerUrlSecrets } from "../../lib/redact.js";
import { testRuntime } from "../helpers.js";

const PASSWORD = "Sup3r-S3cret-Pw";
/** The namespace every start here uses, removed afterwards (a serve that started creates its registry buckets). */
const rt = testRuntime();
after(() => rt.cleanup());

/**
 * Runs the CLI until it exits, or until its output matches every pattern in `until` (then SIGTERM, so
 * its shutdown lines are searched too), or `runMs` passes (SIGTERM); returns its exit code and all output.
 * Waiting on the output rather than a fixed time keeps a slow (loaded) start from cutting it short.
 */
function runCli(args: string[], env: Record<string, string>, until: RegExp[] = [], runMs = 60_000): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "cli/main.ts", ...args, "--grpc-port", "0", "--http-port", "0", "--namespace", rt.config.namespace],
      {
        env: { ...process.env, LOG_LEVEL: "trace", ...env },
      },
    );
    let output = "";
    const onData = (d: Buffer) => {
      output += d.toString();
      if (until.length > 0 && until.every((re) => re.test(output))) child.kill("SIGTERM");
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const timer = setTimeout(() => child.kill("SIGTERM"), runMs);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

it("a start with a wrong Redis password never writes the password", async () => {
  // Until it has both served and been refused by Redis: the refusal is where the password could leak.
  const { output } = await runCli(["serve"], { REDIS_URL: `redis://alice:${PASSWORD}@127.0.0.1:6379` }, [/gRPC listening/, /WRONGPASS/]);
  assert.match(output, /gRPC listening/);
  assert.match(output, /WRONGPASS/);
  assert.ok(
    !output.includes(PASSWORD),
    `the password is in the output:\n${output
      .split("\n")
      .filter((l) => l.includes(PASSWORD))
      .join("\n")}`,
  );
});

it("a bad database in REDIS_URL is a configuration error, with the password masked", async () => {
  const { code, output } = await runCli(["serve"], { REDIS_URL: `redis://alice:${PASSWORD}@127.0.0.1:6379/notanumber` });
  assert.equal(code, 2, output);
  assert.match(output, /database "notanumber" .* must be a number/);
  assert.match(output, /redis:\/\/alice:\*\*\*@127\.0\.0\.1:6379/);
  assert.ok(!output.includes(PASSWORD), output);
});

it("a wrong scheme is a configuration error, with the password masked", async () => {
  const { code, output } = await runCli(["serve"], { REDIS_URL: `http://alice:${PASSWORD}@127.0.0.1:6379` });
  assert.equal(code, 2, output);
  assert.match(output, /must start with redis:\/\/ or rediss:\/\//);
  assert.ok(!output.includes(PASSWORD), output);
});

it("masks registered secrets however deep they sit in a log line", () => {
  registerUrlSecrets(`redis://bob:${PASSWORD}-2@127.0.0.1:6379`);
  let written = "";
  const log = createLogger("info", new Writable({ write: (chunk: Buffer, _enc, cb) => ((written += chunk.toString()), cb()) }));
  // The shapes that leaked: an ioredis error's command arguments, a nested err, a URL in a message.
  const err = Object.assign(new Error(`connect to redis://bob:${PASSWORD}-2@127.0.0.1:6379/x failed`), {
    command: { name: "hello", args: ["3", "AUTH", "bob", `${PASSWORD}-2`] },
  });
  log.error({ err, nested: { deeper: { err: { message: `pw ${PASSWORD}-2` } } } }, "Redis failed");
  assert.match(written, /Redis failed/);
  assert.ok(!written.includes(`${PASSWORD}-2`), written);
  assert.equal(redactText(`nats://u:other-secret@h:4222`), "nats://u:***@h:4222");
});
