// The monitor's commands as a user runs them: `streamserve drift` on CSV and Parquet files,
// `streamserve monitor --once` and `streamserve report` against a seeded data directory and the
// machine's NATS. Each command runs in a process of its own, as it would from a shell.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openClickHouse } from "../../lib/clickhouse.js";
import { createLogger } from "../../lib/logger.js";
import { EXIT_DRIFT } from "../../cli/commands/drift.js";
import { publishProduction, testEnvironment } from "./fixtures/environment.js";
import { TEST_FEATURES, referenceSample } from "./fixtures/synthetic.js";
import { normals, seededRandom } from "./fixtures/random.js";
import { freePort, waitFor } from "../helpers.js";
import type { SeedSpec } from "./fixtures/seed-clickhouse.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const MODEL = "recommender";
const env = testEnvironment("monitor-cli");
const dir = env.dataDir;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "cli/main.ts", ...args], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: "error", STREAMSERVE_NAMESPACE: env.namespace, STREAMSERVE_DATA_DIR: dir },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const describeRun = (r: Run) => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

/** Reference and current samples: `income` shifted by a quarter in the current file. */
function writeCsv(name: string, seed: number, n: number, incomeFactor: number): string {
  const random = seededRandom(seed);
  const age = normals(random, n, 40, 10);
  const income = normals(random, n, 10, 0.5).map((v) => Math.exp(v) * incomeFactor);
  const lines = ["age,income,device"];
  for (let i = 0; i < n; i++) lines.push(`${age[i]!.toFixed(1)},${i % 97 === 0 ? "nan" : income[i]!.toFixed(2)},${random() < 0.6 ? "mobile" : "desktop"}`);
  const path = join(dir, name);
  writeFileSync(path, lines.join("\n") + "\n");
  return path;
}

let referenceCsv: string;
let currentCsv: string;
let sameCsv: string;

before(async () => {
  referenceCsv = writeCsv("reference.csv", 1, 2000, 1);
  currentCsv = writeCsv("current.csv", 2, 1500, 1.25);
  sameCsv = writeCsv("same.csv", 3, 1500, 1);
  // Parquet copies, written by chDB in a process of its own: this process opens the data directory
  // later, and chDB binds one data path per process.
  const queries = ["reference", "current"].map(
    (name) => `INSERT INTO FUNCTION file('${join(dir, name)}.parquet', 'Parquet') SELECT * FROM file('${join(dir, name)}.csv', 'CSVWithNames')`,
  );
  const converted = spawnSync(process.execPath, ["-e", `const { query } = require("chdb"); for (const q of ${JSON.stringify(queries)}) query(q);`], {
    cwd: ROOT,
    encoding: "utf8",
  });
  assert.equal(converted.status, 0, converted.stderr);
});

after(async () => {
  await env.cleanup();
});

describe("streamserve drift", () => {
  it("finds the shifted column in CSV files and exits with the drift status", async () => {
    const r = await cli(["drift", "--reference", referenceCsv, "--current", currentCsv]);
    assert.equal(r.code, EXIT_DRIFT, describeRun(r));
    const lines = r.stdout.split("\n");
    assert.match(lines.find((l) => l.startsWith("income"))!, /\balert\b/);
    assert.match(lines.find((l) => l.startsWith("age"))!, /\bok\b/);
    assert.match(lines.find((l) => l.startsWith("device"))!, /categorical\s+chi2.*\bok\b/);
    assert.match(r.stdout, /^drift: /m);
  });

  it("exits 0 when nothing drifted, and reports JSON with the NaN count", async () => {
    const r = await cli(["drift", "--reference", referenceCsv, "--current", sameCsv, "--json"]);
    assert.equal(r.code, 0, describeRun(r));
    const out = JSON.parse(r.stdout) as { drift: boolean; features: { feature: string; verdict: string; dropped: number; currentN: number }[] };
    assert.equal(out.drift, false);
    const income = out.features.find((f) => f.feature === "income")!;
    // Rows 0, 97, 194, ... of 1500 hold "nan": 16 values dropped and counted.
    assert.equal(income.dropped, 16 + 21);
    assert.equal(income.currentN, 1500 - 16);
    assert.ok(out.features.every((f) => f.verdict === "ok" || f.verdict === "warning"));
  });

  it("reads Parquet the same way", async () => {
    const r = await cli([
      "drift",
      "--reference",
      join(dir, "reference.parquet"),
      "--current",
      join(dir, "current.parquet"),
      "--columns",
      "income,age",
      "--json",
    ]);
    assert.equal(r.code, EXIT_DRIFT, describeRun(r));
    const out = JSON.parse(r.stdout) as { features: { feature: string; verdict: string }[] };
    assert.deepEqual(
      out.features.map((f) => [f.feature, f.verdict]),
      [
        ["income", "alert"],
        ["age", "ok"],
      ],
    );
  });

  it("says what is wrong: a missing file, a missing flag, an unknown column", async () => {
    const [missing, noFlag, badColumn] = await Promise.all([
      cli(["drift", "--reference", join(dir, "nope.csv"), "--current", currentCsv]),
      cli(["drift", "--reference", referenceCsv]),
      cli(["drift", "--reference", referenceCsv, "--current", currentCsv, "--columns", "salary"]),
    ]);
    assert.equal(missing.code, 1, describeRun(missing));
    assert.match(missing.stderr, /no such file: .*nope\.csv/);
    assert.equal(noFlag.code, 2, describeRun(noFlag));
    assert.match(noFlag.stderr, /--reference and --current are both required/);
    assert.equal(badColumn.code, 2, describeRun(badColumn));
    assert.match(badColumn.stderr, /column "salary" is not in both files; shared columns: age, income, device/);
  });
});

describe("streamserve monitor --once and streamserve report", () => {
  let once: Run;

  before(async () => {
    const version = await publishProduction(env.runtime, MODEL, TEST_FEATURES, referenceSample(1));
    await publishProduction(env.runtime, "cli-ab", TEST_FEATURES);
    const registry = await env.runtime.registry();
    const experiment = await registry.createExperiment({
      name: "cli-exp",
      model: "cli-ab",
      variants: [
        { name: "control", traffic: 50, target: "production" },
        { name: "treatment", traffic: 50, target: "production" },
      ],
      actor: "test",
    });
    const now = Date.now();
    const spec: SeedSpec = {
      dataDir: dir,
      model: MODEL,
      version,
      endMs: now - 60_000,
      sessionFactor: 1.5,
      experiment: { name: "cli-exp", model: "cli-ab", fromMs: Date.parse(experiment.createdAt), toMs: now },
    };
    const seeded = spawnSync(process.execPath, ["--import", "tsx", "test/monitor/fixtures/seed-clickhouse.ts", JSON.stringify(spec)], {
      cwd: ROOT,
      encoding: "utf8",
    });
    assert.equal(seeded.status, 0, seeded.stderr);
    once = await cli(["monitor", "--once"]);
  });

  it("runs one cycle and prints what it found", () => {
    assert.equal(once.code, 0, describeRun(once));
    assert.match(once.stdout, /^Drift of recommender version 1/m);
    assert.match(once.stdout.split("\n").find((l) => l.startsWith("avg_session_duration"))!, /\balert\b/);
    assert.match(once.stdout, /^cli-exp\s+treatment/m);
    assert.match(once.stdout, /\[alert\] drift in feature avg_session_duration/);
  });

  it("reports drift, quality and A/B from the views", async () => {
    // One after the other: each opens the embedded data directory, which one process holds at a time.
    const drift = await cli(["report", "drift"]);
    const quality = await cli(["report", "quality"]);
    const ab = await cli(["report", "ab", "--experiment", "cli-exp"]);
    const abJson = await cli(["report", "ab", "--json"]);
    for (const r of [drift, quality, ab, abJson]) assert.equal(r.code, 0, describeRun(r));
    assert.match(drift.stdout.split("\n").find((l) => /avg_session_duration\s+ks/.test(l))!, /\balert\b/);
    assert.match(drift.stdout, /\(score\)/);
    assert.match(quality.stdout, /^hour\s+model\s+version\s+variant/m);
    assert.match(ab.stdout, /^cli-exp\s+control \(control\)/m);
    // Conversion per user, then CTR per shown item: the two tables report ab prints (and the demo too).
    assert.match(ab.stdout, /^conversion \(per user[^\n]*\n[\s\S]*^CTR \(clicks per shown item[^\n]*\nexperiment\s+variant\s+users\s+shown\s+clicks\s+CTR/m);
    const rows = JSON.parse(abJson.stdout) as { experiment: string; variant: string; users: number; lift: number }[];
    assert.deepEqual(
      rows.map((r) => r.variant),
      ["control", "treatment"],
    );
    assert.ok(rows[1]!.lift > 0.1, `lift ${rows[1]!.lift}`);
    assert.ok(rows[0]!.users + rows[1]!.users === 5000);
  });

  it("runs read-only SQL on the embedded engine", async () => {
    const count = await cli(["report", "sql", "SELECT count() AS n FROM drift_report WHERE verdict = 'alert'", "--json"]);
    assert.equal(count.code, 0, describeRun(count));
    assert.ok(Number((JSON.parse(count.stdout) as { n: string }[])[0]!.n) >= 2);
    const write = await cli(["report", "sql", "DROP TABLE monitoring"]);
    assert.equal(write.code, 1, describeRun(write));
    assert.match(write.stderr, /readonly/i);
  });

  it("serves the dashboard behind --auth-token-file, as serve does", async () => {
    const tokenFile = join(dir, "dashboard-token");
    writeFileSync(tokenFile, "s3cret-dashboard\n");
    const port = await freePort();
    const child = spawn(process.execPath, ["--import", "tsx", "cli/main.ts", "monitor", "--http-port", String(port), "--auth-token-file", tokenFile], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: "error", STREAMSERVE_NAMESPACE: env.namespace, STREAMSERVE_DATA_DIR: dir },
    });
    let stdout = "";
    child.stdout.on("data", (c) => (stdout += c));
    const closed = new Promise((r) => child.once("close", r));
    try {
      await waitFor(() => /dashboard http:\/\//.test(stdout), 60_000, "the dashboard line");
      const base = `http://127.0.0.1:${port}`;
      assert.equal((await fetch(`${base}/api/models`)).status, 401, "no token: refused");
      const ok = await fetch(`${base}/api/models`, { headers: { authorization: "Bearer s3cret-dashboard" } });
      assert.equal(ok.status, 200);
      assert.ok(Array.isArray(await ok.json()));
      assert.equal((await fetch(`${base}/healthz`)).status, 200, "/healthz stays open for probes");
      const metrics = await fetch(`${base}/metrics`, { headers: { authorization: "Bearer s3cret-dashboard" } });
      assert.match(await metrics.text(), /^# TYPE streamserve_monitor_cycles_total counter/m);
    } finally {
      child.kill("SIGINT");
      await closed;
    }
  });

  it("rejects a report it does not know, and explains a data directory held by another process", async () => {
    const unknown = await cli(["report", "latency"]);
    assert.equal(unknown.code, 2, describeRun(unknown));
    assert.match(unknown.stderr, /say which report: drift, quality, ab/);
    // This process now holds the data directory, as `streamserve up` would.
    const held = await openClickHouse({ clickhouseUrl: undefined, clickhouseDatabase: "streamserve", dataDir: dir }, createLogger("error"));
    try {
      const r = await cli(["report", "drift"]);
      assert.equal(r.code, 1, describeRun(r));
      assert.match(r.stderr, /cannot open the embedded ClickHouse in .*another streamserve process .*\/api\/drift/);
    } finally {
      await held.close();
    }
  });
});
