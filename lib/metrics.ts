// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
// exposition format at /metrics. One registry per process, shared by the parts running in it.

type Labels = Record<string, string>;

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

const key = (labels: Labels) => JSON.stringify(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)));
const fmt = (labels: Labels, extra: Labels = {}) => {
  const all = { ...labels, ...extra };
  const parts = Object.entries(all).map(([k, v]) => `${k}="${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};
const num = (v: number) => (Number.isFinite(v) ? String(v) : v > 0 ? "+Inf" : v < 0 ? "-Inf" : "NaN");

export class Counter implements Metric {
  readonly type = "counter";
  private values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    const e = this.values.get(k);
    if (e) e.value += by;
    else this.values.set(k, { labels, value: by });
  }
  get(labels: Labels = {}): number {
    return this.values.get(key(labels))?.value ?? 0;
  }
  render(): string[] {
    return [...this.values.values()].map((e) => `${this.name}${fmt(e.labels)} ${num(e.value)}`);
  }
}

export class Gauge implements Metric {
  readonly type = "gauge";
  private values = new Map<string, { labels: Labels; value: number }>();
  private collectors: (() => void)[] = [];
  constructor(readonly name: string, readonly help: string) {}
  set(value: number, labels: Labels = {}): void {
    this.values.set(key(labels), { labels, value });
  }
  get(labels: Labels = {}): number {
    return this.values.get(key(labels))?.value ?? 0;
  }
  /** Read a value at scrape time (e.g. a buffer's depth) instead of updating it on every change. */
  collect(fn: (g: Gauge) => void): void {
    this.collectors.push(() => fn(this));
  }
  render(): string[] {
    for (const c of this.collectors) c();
    return [...this.values.values()].map((e) => `${this.name}${fmt(e.labels)} ${num(e.value)}`);
  }
}

/** Latency buckets in seconds, from 100 µs to 10 s. */
export const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Histogram implements Metric {
  readonly type = "histogram";
  private series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[] = LATENCY_BUCKETS) {}
  observe(value: number, labels: Labels = {}): void {
    const k = key(labels);
    let s = this.series.get(k);
    if (!s) this.series.set(k, (s = { labels, counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  count(labels: Labels = {}): number {
    return this.series.get(key(labels))?.count ?? 0;
  }
  render(): string[] {
    const out: string[] = [];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${fmt(s.labels, { le: String(b) })} ${s.counts[i]}`));
      out.push(`${this.name}_bucket${fmt(s.labels, { le: "+Inf" })} ${s.count}`);
      out.push(`${this.name}_sum${fmt(s.labels)} ${num(s.sum)}`);
      out.push(`${this.name}_count${fmt(s.labels)} ${s.count}`);
    }
    return out;
  }
}

export class MetricsRegistry {
  private metrics = new Map<string, Metric>();

  counter(name: string, help: string): Counter {
    return this.register(name, () => new Counter(name, help)) as Counter;
  }
  gauge(name: string, help: string): Gauge {
    return this.register(name, () => new Gauge(name, help)) as Gauge;
  }
  histogram(name: string, help: string, buckets?: number[]): Histogram {
    return this.register(name, () => new Histogram(name, help, buckets)) as Histogram;
  }

  /** Prometheus text exposition format 0.0.4. */
  render(): string {
    const lines: string[] = [];
    for (const m of this.metrics.values()) {
      lines.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, ...m.render());
    }
    return lines.join("\n") + "\n";
  }

  private register(name: string, make: () => Metric): Metric {
    // Parts in one process ask for the same metric: hand back the existing one.
    let m = this.metrics.get(name);
    if (!m) this.metrics.set(name, (m = make()));
    return m;
  }
}
