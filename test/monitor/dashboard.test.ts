// The dashboard in headless Chromium: served by the monitor on the runtime's HTTP server, drawn from
// what a real cycle stored in embedded ClickHouse; no console errors, every chart drawn with the
// seeded data, a screenshot kept in the test's temporary directory.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser, type LaunchOptions, type Page } from "playwright-core";
import type { ClickHouse } from "../../lib/clickhouse.js";
import { createMonitor, type Monitor } from "../../monitor/monitor.js";
import { publishProduction, testEnvironment } from "./fixtures/environment.js";
import { TEST_FEATURES, insertRows, makeExperiment, makeTraffic, referenceSample } from "./fixtures/synthetic.js";

const HOUR = 3_600_000;
const MODEL = "recommender";
const SYSTEM_CHROMIUM = "/usr/bin/chromium";

/**
 * Debian's Chromium when it is installed, otherwise the headless build that the devDependency
 * @sparticuz/chromium ships inside its npm package (unpacked to the temporary directory on first use),
 * so `npm install && npm test` needs no system package.
 */
async function browserLaunchOptions(): Promise<LaunchOptions> {
  const common = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  if (existsSync(SYSTEM_CHROMIUM)) return { executablePath: SYSTEM_CHROMIUM, args: ["--headless", ...common] };
  const bundled = (await import("@sparticuz/chromium")).default;
  // Its defaults also turn off web security, which a test of a page must keep on.
  const args = bundled.args.filter((a) => !["--disable-web-security", "--allow-running-insecure-content"].includes(a));
  return { executablePath: await bundled.executablePath(), args: [...args, ...common] };
}
const env = testEnvironment("monitor-dashboard");

let ch: ClickHouse;
let monitor: Monitor;
let browser: Browser;
let page: Page;
let base: string;
const consoleErrors: string[] = [];
let modelEvents = 0;

before(async () => {
  const { runtime } = env;
  ch = await runtime.clickhouse();
  const version = await publishProduction(runtime, MODEL, TEST_FEATURES, referenceSample(1));
  const now = Date.now();
  // Three hours of traffic up to a minute ago; the last hour shifted in avg_session_duration.
  const early = makeTraffic({
    seed: 21,
    model: MODEL,
    version,
    requests: 2000,
    candidates: 5,
    shown: 3,
    from: new Date(now - 3 * HOUR),
    to: new Date(now - HOUR),
    latencyMs: 6,
  });
  const late = makeTraffic({
    seed: 22,
    model: MODEL,
    version,
    requests: 1200,
    candidates: 5,
    shown: 3,
    from: new Date(now - HOUR),
    to: new Date(now - 60_000),
    latencyMs: 12,
    shift: { sessionFactor: 1.6 },
  });
  await insertRows(ch, "predictions", [...early.predictions, ...late.predictions]);
  await insertRows(ch, "outcomes", [...early.outcomes, ...late.outcomes]);
  // Registry history as the sink would have written it: publish, promote, a rollback, a rejection.
  const at = (h: number) => new Date(now - h * HOUR).toISOString();
  const events = [
    { kind: "publish", alias: "", from_version: "", to_version: "1", time: at(3.5) },
    { kind: "promote", alias: "production", from_version: "", to_version: "1", time: at(3.4) },
    { kind: "publish", alias: "", from_version: "", to_version: "2", time: at(2.5) },
    { kind: "promote", alias: "production", from_version: "1", to_version: "2", time: at(2.4) },
    { kind: "rollback", alias: "production", from_version: "2", to_version: "1", time: at(1.5) },
    { kind: "publish", alias: "", from_version: "", to_version: "3", time: at(0.5) },
    { kind: "reject", alias: "", from_version: "", to_version: "3", time: at(0.45) },
  ];
  modelEvents = events.length;
  await insertRows(
    ch,
    "model_events",
    events.map((e, i) => ({ ...e, event_id: `e${i}`, model_name: MODEL, actor: "trainer", reason: "", details: "" })),
  );
  // An experiment with a real difference.
  await publishProduction(runtime, "ab-dash", TEST_FEATURES);
  const registry = await runtime.registry();
  const experiment = await registry.createExperiment({
    name: "new-ranker",
    model: "ab-dash",
    variants: [
      { name: "control", traffic: 50, target: "production" },
      { name: "treatment", traffic: 50, target: "production" },
    ],
    actor: "test",
  });
  const data = makeExperiment({
    seed: 23,
    experiment: "new-ranker",
    model: "ab-dash",
    users: 4000,
    from: new Date(experiment.createdAt),
    to: new Date(),
    variants: [
      { name: "control", traffic: 50, conversionRate: 0.1 },
      { name: "treatment", traffic: 50, conversionRate: 0.13 },
    ],
  });
  await insertRows(ch, "exposures", data.exposures);
  await insertRows(ch, "outcomes", data.outcomes);

  monitor = createMonitor(runtime, { quality: { hours: 3, labelDelayMs: 0 } });
  const report = await monitor.runCycle(new Date(Date.now() + 1000));
  assert.deepEqual(report.errors, []);
  base = `http://127.0.0.1:${await runtime.listenHttp()}`;

  browser = await chromium.launch(await browserLaunchOptions());
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(msg.text());
  });
  page.on("pageerror", (err) => consoleErrors.push(err.message));
  await page.goto(`${base}/?refresh=5`);
  await page.waitForSelector("body[data-rendered]", { timeout: 15_000 });
});

after(async () => {
  await browser?.close();
  await monitor?.stop();
  await env.cleanup();
});

describe("the dashboard", () => {
  it("loads without console errors", () => {
    assert.deepEqual(consoleErrors, []);
  });

  it("draws drift per feature with its thresholds, the shifted feature in alert", async () => {
    const bars = await page.$$eval("#drift rect.bar", (rs) =>
      rs.map((r) => [r.getAttribute("data-feature"), r.getAttribute("data-verdict"), Number(r.getAttribute("width"))]),
    );
    assert.equal(bars.length, TEST_FEATURES.length + 1, JSON.stringify(bars)); // every feature and the score
    const shifted = bars.find((b) => b[0] === "avg_session_duration")!;
    assert.equal(shifted[1], "alert");
    assert.equal(bars[0]![0], "avg_session_duration", "the worst feature comes first");
    assert.ok((shifted[2] as number) > 50, "the PSI bar has a visible length");
    assert.equal(await page.locator("#drift line.threshold").count(), 2);
  });

  it("shows the distributions behind the worst drift", async () => {
    const titles = await page.$$eval("#distributions svg text.title", (ts) => ts.map((t) => t.textContent ?? ""));
    assert.match(titles[0]!, /^avg_session_duration — PSI/);
    assert.equal(await page.locator("#distributions svg").first().locator("rect.dist-bar[data-sample=reference]").count(), 10);
  });

  it("draws the model timeline with promotions and the rollback", async () => {
    assert.equal(await page.locator("#timeline .marker").count(), modelEvents);
    assert.equal(await page.locator('#timeline .marker[data-kind="rollback"]').count(), 1);
    assert.equal(await page.locator("#timeline path.line").count(), 1);
  });

  it("draws request rate and three latency percentiles", async () => {
    assert.equal(await page.locator("#traffic path.line").count(), 1);
    assert.equal(await page.locator("#latency path.line").count(), 3);
    const api = (await (await fetch(`${base}/api/traffic`)).json()) as { requests: number; p95: number }[];
    assert.equal(
      api.reduce((s, r) => s + r.requests, 0),
      3200,
    );
    assert.ok(api.every((r) => r.p95 > 0));
  });

  it("draws hourly quality against the floor", async () => {
    assert.ok((await page.locator("#quality path.line").count()) >= 1);
    assert.equal(await page.locator("#quality line.threshold").count(), 1);
  });

  it("draws the A/B variants with confidence intervals", async () => {
    const experiment = page.locator('#ab .experiment[data-experiment="new-ranker"]');
    assert.equal(await experiment.count(), 1);
    // Two conversion-rate intervals and one lift interval.
    assert.equal(await experiment.locator("line.ci").count(), 3);
    const cells = await experiment.locator("table tr").nth(2).locator("td").allTextContents();
    assert.equal(cells[0], "treatment");
  });

  it("lists the alerts the cycle sent", async () => {
    const text = await page.locator("#alerts").textContent();
    assert.match(text ?? "", /drift in feature avg_session_duration/);
  });

  it("refreshes itself", async () => {
    const first = await page.getAttribute("body", "data-rendered");
    await page.waitForSelector(`body[data-rendered]:not([data-rendered="${first}"])`, { timeout: 12_000 });
  });

  it("is served at /dashboard too, and leaves a screenshot to look at", async (t) => {
    const res = await fetch(`${base}/dashboard`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/html/);
    // Outside the data directory, which cleanup removes: the picture is for a person to check.
    const file = join(tmpdir(), "streamserve-dashboard.png");
    await page.screenshot({ path: file, fullPage: true });
    assert.ok(statSync(file).size > 20_000);
    t.diagnostic(`screenshot: ${file}`);
  });
});
