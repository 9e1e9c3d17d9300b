// The process's Prometheus metrics, kept by prom-client: one registry per runtime, shared by the
// parts running in it, with prom-client's default Node.js metrics (process_cpu_seconds_total,
// resident memory, event-loop lag, GC, active handles). This file only adds what the parts share:
// asking twice for one name hands back the same metric (the parts of `up` register side by side),
// gauges read at scrape time, and a value reader for tests.
//
// Labels: declare every label name; observations pass labels first (`inc({ table }, n)`,
// `set({ kind }, v)`, `observe({ kind }, v)`), and request-path code binds its children once
// (`handled.labels({ method, code })`). A label value never carries a string a client chose.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Aggregator } from "prom-client";

export { Counter, Gauge, Histogram, Registry };

/** Latency buckets in seconds, from 100 µs to 10 s. */
export const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The label value for anything outside a metric's known set (keeps series bounded). */
export const OTHER_LABEL = "other";

export interface MetricOptions<L extends string> {
  /** Every label the metric takes; prom-client rejects any other. @default [] */
  labelNames?: readonly L[];
  /**
   * How `serve --workers N` combines the workers' values into one /metrics: "sum" for totals and
   * levels that add up (calls, buffer depth), "max"/"min"/"average"/"first" otherwise.
   * @default "sum"
   */
  aggregator?: Aggregator;
}

export interface GaugeOptions<L extends string> extends MetricOptions<L> {
  /** Reads the value at scrape time (a buffer's depth) instead of setting it on every change. */
  collect?: (gauge: Gauge<L>) => void;
}

export interface HistogramOptions<L extends string> extends MetricOptions<L> {
  /** Bucket upper bounds. @default LATENCY_BUCKETS */
  buckets?: number[];
}

export interface MetricsRegistryOptions {
  /** Register prom-client's default Node.js process metrics. @default true */
  defaultMetrics?: boolean;
}

/**
 * A metric's children bound once per pair of label values and found again by two Map lookups, so
 * the request path allocates no label object. Its size is the metric's series count: give it
 * bounded values only.
 */
export function childCache<C>(bind: (a: string, b: string) => C): (a: string, b?: string) => C {
  const outer = new Map<string, Map<string, C>>();
  return (a, b = "") => {
    let inner = outer.get(a);
    if (!inner) outer.set(a, (inner = new Map()));
    let child = inner.get(b);
    if (child === undefined) inner.set(b, (child = bind(a, b)));
    return child;
  };
}

type AnyMetric = Counter<string> | Gauge<string> | Histogram<string>;

export class MetricsRegistry {
  /** The prom-client registry (for /metrics and cluster aggregation). */
  readonly registry = new Registry();
  private readonly collectors = new Map<string, ((gauge: Gauge<string>) => void)[]>();

  constructor(options: MetricsRegistryOptions = {}) {
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  counter<L extends string = never>(name: string, help: string, options: MetricOptions<L> = {}): Counter<L> {
    return this.existing(name, "counter", options) ?? new Counter<L>({ ...this.base(name, help, options) });
  }

  gauge<L extends string = never>(name: string, help: string, options: GaugeOptions<L> = {}): Gauge<L> {
    let collectors = this.collectors.get(name);
    const gauge =
      (this.existing(name, "gauge", options) as Gauge<L> | undefined) ??
      new Gauge<L>({
        ...this.base(name, help, options),
        // Several parts (or a restarted server in one process) may each read a share at scrape time.
        collect() {
          for (const c of collectors!) c(this as Gauge<string>);
        },
      });
    if (!collectors) this.collectors.set(name, (collectors = []));
    if (options.collect) collectors.push(options.collect as (gauge: Gauge<string>) => void);
    return gauge;
  }

  /** Adds a scrape-time reader to a gauge this registry made (for a part that starts later). */
  collect<L extends string>(gauge: Gauge<L>, read: (gauge: Gauge<L>) => void): void {
    const collectors = this.collectors.get((gauge as unknown as { name: string }).name);
    if (!collectors) throw new Error("collect(): the gauge is not from this registry");
    collectors.push(read as unknown as (gauge: Gauge<string>) => void);
  }

  histogram<L extends string = never>(name: string, help: string, options: HistogramOptions<L> = {}): Histogram<L> {
    return this.existing(name, "histogram", options) ?? new Histogram<L>({ ...this.base(name, help, options), buckets: options.buckets ?? LATENCY_BUCKETS });
  }

  /** Prometheus text exposition format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** The Content-Type of `render()`. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * The sum of a metric's series whose labels include `labels` (a histogram's observation count);
   * 0 when there is none. For tests and summaries, not the request path.
   */
  async value(name: string, labels: Record<string, string> = {}): Promise<number> {
    const metric = this.registry.getSingleMetric(name);
    if (!metric) return 0;
    const { values } = await metric.get();
    const want = metric instanceof Histogram ? `${name}_count` : undefined;
    return values
      .filter((v) => (want ? (v as { metricName?: string }).metricName === want : true))
      .filter((v) => Object.entries(labels).every(([k, x]) => String((v.labels as Record<string, unknown>)[k]) === x))
      .reduce((sum, v) => sum + v.value, 0);
  }

  private base<L extends string>(name: string, help: string, options: MetricOptions<L>) {
    return { name, help, labelNames: options.labelNames ?? [], aggregator: options.aggregator ?? "sum", registers: [this.registry] };
  }

  /** The metric already registered under `name`, checked to be the same kind with the same labels. */
  private existing<M extends AnyMetric>(name: string, type: string, options: MetricOptions<string>): M | undefined {
    const m = this.registry.getSingleMetric(name) as (AnyMetric & { type?: string; labelNames?: string[] }) | undefined;
    if (!m) return undefined;
    const labels = [...(options.labelNames ?? [])].sort().join(",");
    const had = [...(m.labelNames ?? [])].sort().join(",");
    if (m.type !== type || labels !== had) {
      throw new Error(`metric ${name} is already registered as a ${m.type} with labels [${had}], not a ${type} with [${labels}]`);
    }
    return m as M;
  }
}
