// What a person at a terminal sees: a table command prints its table and nothing else (no
// "connected to NATS" line before it), logs asked for are one readable line each on a terminal and
// JSON lines otherwise, and a mistyped flag is refused with the flag that was meant.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { featureSpec } from "../../features/definitions.js";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { logisticModel } from "../fixtures/onnx-models.js";

let rt: TestRuntime;

before(async () => {
  rt = testRuntime();
  const registry = await rt.registry();
  const features = ["clicks_last_5min", "engagement_score", "purchase_amount"].map((n) => featureSpec(n)!);
  await registry.publish({ name: "ranker", artifact: logisticModel([1, 2, 3], 0), features, inputName: "features", outputName: "score" });
});
after(async () => {
  await rt?.cleanup();
});

/** The environment of a user's shell: no LOG_LEVEL or LOG_FORMAT of the test runner's. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, STREAMSERVE_ACTOR: "ci-test", NO_COLOR: "1" };
  delete env.LOG_LEVEL;
  delete env.LOG_FORMAT;
  return env;
}

const scope = () => ["--namespace", rt.config.namespace, "--data-dir", rt.config.dataDir];

/** Runs the CLI with stdout and stderr as pipes. */
function cli(...args: string[]) {
  const r = spawnSync(process.execPath, ["--import", "tsx", "cli/main.ts", ...args, ...scope()], { encoding: "utf8", env: userEnv(), timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Runs the CLI on a pseudo-terminal (util-linux `script`), as a person would: stdout and stderr on one screen. */
function onTerminal(...args: string[]): { code: number | null; screen: string } {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const command = [process.execPath, "--import", "tsx", "cli/main.ts", ...args, ...scope()].map(quote).join(" ");
  const r = spawnSync("script", ["-qec", command, "/dev/null"], { encoding: "utf8", env: userEnv(), timeout: 60_000 });
  return { code: r.status, screen: r.stdout.replace(/\r\n/g, "\n") };
}

it("models list on a terminal shows the table and nothing else", () => {
  const { code, screen } = onTerminal("models", "list");
  assert.equal(code, 0, screen);
  const lines = screen.trimEnd().split("\n");
  assert.match(lines[0]!, /^model\s+version\s+aliases\s+created\s+by\s+auc\s+features$/);
  assert.match(lines[1]!, /^-+ +-+/);
  assert.match(lines[2]!, /^ranker\s+1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\S+\s+3$/);
  assert.equal(lines.length, 3, `only the table, got:\n${screen}`);
});

it("models list through pipes: stdout is the table, stderr is empty", () => {
  const r = cli("models", "list");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.err, "");
  assert.equal(r.out.trimEnd().split("\n").length, 3);
  const json = cli("models", "list", "--json");
  assert.deepEqual(
    (JSON.parse(json.out) as { model: string; version: string }[]).map((x) => [x.model, x.version]),
    [["ranker", "1"]],
  );
});

it("experiments list keeps its output to the result", () => {
  const e = cli("experiments", "list");
  assert.equal(e.code, 0, e.err);
  assert.equal(e.out, "no experiments\n");
  assert.equal(e.err, "");
});

it("logs asked for with --log-level go to stderr: one pretty line on a terminal, JSON lines otherwise", () => {
  const { code, screen } = onTerminal("models", "list", "--log-level", "info");
  assert.equal(code, 0, screen);
  const logLine = screen.split("\n").find((l) => l.includes("connected to NATS"));
  assert.ok(logLine, screen);
  assert.match(logLine, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: connected to NATS \{"url":"nats:\/\/[^"]+"\}$/);

  const piped = cli("models", "list", "--log-level", "info");
  assert.equal(piped.code, 0, piped.err);
  assert.equal(piped.out.trimEnd().split("\n").length, 3, "the table alone on stdout");
  const events = piped.err
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { level: number; msg: string });
  assert.ok(
    events.some((e) => e.msg === "connected to NATS" && e.level === 30),
    piped.err,
  );

  const forced = onTerminal("models", "list", "--log-level", "info", "--log-format", "json");
  const jsonLine = forced.screen.split("\n").find((l) => l.includes("connected to NATS"))!;
  assert.equal((JSON.parse(jsonLine) as { msg: string }).msg, "connected to NATS");
});

it("refuses a mistyped flag and names the one meant, before starting anything", () => {
  const r = cli("serve", "--grpc-prot", "9000");
  assert.equal(r.code, 2);
  assert.match(r.err, /^streamserve serve: unknown flag --grpc-prot: did you mean --grpc-port\?/);
  assert.equal(r.out, "");
  const f = cli("models", "list", "--log-format", "xml");
  assert.equal(f.code, 2);
  assert.match(f.err, /--log-format must be pretty or json, got "xml"/);
});
