// The metrics registry on prom-client: the default Node.js metrics, declared labels checked, one
// metric per name however many parts ask for it, gauges read at scrape time.
import { it } from "node:test";
import assert from "node:assert/strict";
import { MetricsRegistry, childCache } from "../../lib/metrics.js";

it("exposes prom-client's default Node.js process metrics", async () => {
  const text = await new MetricsRegistry().render();
  for (const name of [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "nodejs_eventloop_lag_seconds",
    "nodejs_gc_duration_seconds",
    "nodejs_active_handles",
  ]) {
    assert.match(text, new RegExp(`^# TYPE ${name} `, "m"), name);
  }
});

it("checks label names and hands back the same metric for the same name", async () => {
  const m = new MetricsRegistry({ defaultMetrics: false });
  const a = m.counter("x_total", "x", { labelNames: ["table"] });
  assert.equal(m.counter("x_total", "x", { labelNames: ["table"] }), a);
  assert.throws(() => m.counter("x_total", "x", { labelNames: ["kind"] }), /already registered as a counter with labels \[table\]/);
  assert.throws(() => m.gauge("x_total", "x", { labelNames: ["table"] }), /already registered as a counter/);
  assert.throws(() => a.inc({ kind: "p" } as never), /label/i);
  a.inc({ table: "p" }, 2);
  a.labels({ table: "p" }).inc();
  assert.equal(await m.value("x_total", { table: "p" }), 3);
  assert.equal(await m.value("x_total", { table: "q" }), 0);
  assert.equal(await m.value("missing_total"), 0);
  assert.match(await m.render(), /^x_total\{table="p"\} 3$/m);
});

it("reads gauges at scrape time from every part that registered a reader", async () => {
  const m = new MetricsRegistry({ defaultMetrics: false });
  let depth = 1;
  const g = m.gauge("depth", "d", { collect: (gauge) => gauge.set(depth) });
  m.collect(g, (gauge) => gauge.inc(10));
  depth = 5;
  assert.equal(await m.value("depth"), 15);
  const h = m.histogram("lat_seconds", "l", { labelNames: ["method"] });
  h.observe({ method: "/a" }, 0.002);
  h.labels({ method: "/a" }).observe(0.004);
  assert.equal(await m.value("lat_seconds", { method: "/a" }), 2, "a histogram's value is its count");
});

it("childCache binds one child per pair of label values", () => {
  let bound = 0;
  const child = childCache((a, b) => ({ a, b, n: ++bound }));
  assert.equal(child("x", "y"), child("x", "y"));
  assert.equal(child("x"), child("x", ""));
  assert.notEqual(child("x", "y"), child("x", "z"));
  assert.equal(bound, 3);
});
