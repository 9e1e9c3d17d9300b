// The model repository of a running server (KServe's name → model map): which versions are
// loaded, which version each alias serves, and which experiments route users elsewhere.
//
// Hot swap, the Triton way: a new version for an alias is loaded and warmed up in the background
// while the old one keeps serving; then the alias pointer moves in one assignment. Requests hold
// the model they started on (inflight count) and the old session is released after the last of
// them finishes. A version that fails to load leaves the old one serving.
//
// Versions a request names explicitly (ModelInfer model_version "3") are loaded on demand and
// unloaded again, least recently used first, once they sit idle or exceed a memory budget; the
// versions an alias serves or an experiment routes to are never unloaded.
import type { Logger } from "../lib/logger.js";
import type { MetricsRegistry } from "../lib/metrics.js";
import type { Experiment, Registry, RegistryChange } from "../lib/registry.js";
import { loadModel, type OnnxModel, type SessionSettings } from "./onnx-model.js";

export interface ModelManagerOptions {
  /** The alias served when a request names no version. @default "production" */
  servingAlias?: string;
  session?: SessionSettings;
  /** Called when a version fails to load (the server raises an alert). */
  onLoadFailure?: (model: string, version: string, error: Error) => void;
  /** Versions loaded on demand are unloaded after this long without a request. @default 300000 ms */
  onDemandIdleMs?: number;
  /**
   * Artifact bytes of on-demand versions kept loaded; beyond it the least recently used go (an
   * onnxruntime session takes a few times its artifact's size). @default 256 MiB
   */
  onDemandBudgetBytes?: number;
}

export type VersionState = { state: "loading"; promise: Promise<OnnxModel> } | { state: "ready"; model: OnnxModel } | { state: "failed"; error: string };

export class ModelManager {
  private readonly versions = new Map<string, VersionState>();
  private readonly routes = new Map<string, OnnxModel>();
  /** The version each served alias should point to, from the registry (even before it loads). */
  private readonly wantedAliases = new Map<string, string>();
  private readonly experiments = new Map<string, Experiment>();
  /** Serializes swaps per alias so a slow load cannot overwrite a newer promotion. */
  private readonly swapChains = new Map<string, Promise<void>>();
  private readonly servingAlias: string;
  private registry: Registry | undefined;
  private initialized = false;
  private readonly swaps;
  private readonly loadFailures;
  /** Model names and versions the registry holds, as its watch reports them. */
  private readonly known = new Map<string, Set<string>>();
  private registryState = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly unloads;

  constructor(
    private readonly log: Logger,
    metrics: MetricsRegistry,
    private readonly options: ModelManagerOptions = {},
  ) {
    this.servingAlias = options.servingAlias ?? "production";
    // Label values come from the registry (published models and their versions), never from a call.
    this.swaps = metrics.counter("streamserve_model_swaps_total", "Alias swaps completed, by model and alias", { labelNames: ["model", "alias"] });
    this.loadFailures = metrics.counter("streamserve_model_load_failures_total", "Model versions that failed to load or warm up", {
      labelNames: ["model", "version"],
    });
    metrics.gauge("streamserve_models_loaded", "Model versions loaded (the most any serving worker holds)", {
      // Every worker of `serve --workers N` loads the same versions: a sum would count each N times.
      aggregator: "max",
      collect: (g) => g.set([...this.versions.values()].filter((v) => v.state === "ready").length),
    });
    this.unloads = metrics.counter("streamserve_model_unloads_total", "On-demand model versions unloaded, by reason (idle, budget)", {
      labelNames: ["reason"],
    });
    metrics.gauge(
      "streamserve_model_version_loaded",
      "1 for each model version loaded, by model, version and kind (served: an alias or experiment uses it; on_demand: unloaded when idle)",
      {
        labelNames: ["model", "version", "kind"],
        aggregator: "max",
        collect: (g) => {
          g.reset();
          for (const state of this.versions.values()) {
            if (state.state !== "ready") continue;
            g.set({ model: state.model.name, version: state.model.version.version, kind: this.pinned(state.model) ? "served" : "on_demand" }, 1);
          }
        },
      },
    );
    this.sweepTimer = setInterval(() => this.unloadIdle(), 15_000);
    this.sweepTimer.unref();
  }

  /**
   * False when the registry's watched state says the model does not exist (no KV call needed);
   * true when it exists or the state is not known (no registry yet).
   */
  mayHaveModel(model: string): boolean {
    return !this.registryState || this.known.has(model);
  }

  /** True while the watched registry state is complete (the watch is live). */
  knowsRegistry(): boolean {
    return this.registryState;
  }

  /** Like mayHaveModel, for one version number. */
  mayHaveVersion(model: string, version: string): boolean {
    return !this.registryState || (this.known.get(model)?.has(version) ?? false);
  }

  /** True once the registry's state has been read (or there is no registry yet: fallback serving). */
  get ready(): boolean {
    return this.initialized;
  }

  /** Follows the registry until the signal fires; reconnects the watch if it ends. */
  async run(openRegistry: () => Promise<Registry>, signal: AbortSignal): Promise<void> {
    let backoff = 250;
    while (!signal.aborted) {
      try {
        this.registry = await openRegistry();
        // Load what the registry says now before reporting ready (Triton: warm up first). After a
        // reconnect this catches up on what the outage hid; re-applying the rest is a no-op.
        for (const change of await this.registry.snapshot()) this.apply(change);
        this.registryState = true;
        if (!this.initialized) {
          await this.settle();
          this.initialized = true;
        }
        // The watch replays the current state first; re-applying it is a no-op.
        for await (const change of this.registry.watch(signal)) {
          backoff = 250;
          this.apply(change);
        }
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn({ err: (err as Error).message }, "registry watch interrupted; retrying");
      }
      // The watched state may miss changes until the watch is back: ask the registry meanwhile.
      this.registryState = false;
      // No registry (NATS down): serve the fallback rather than wait.
      this.initialized = true;
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /** Applies one registry change; exported for tests that drive the manager directly. */
  apply(change: RegistryChange): void {
    if (change.kind === "version" || (change.kind === "alias" && change.record)) {
      const versions = this.known.get(change.model) ?? new Set<string>();
      if (change.kind === "version") versions.add(change.version);
      this.known.set(change.model, versions);
    }
    if (change.kind === "alias") {
      const key = routeKey(change.model, change.alias);
      if (!change.record) {
        this.wantedAliases.delete(key);
        return;
      }
      this.wantedAliases.set(key, change.record.version);
      if (this.isServed(change.model, change.alias)) this.scheduleSwap(change.model, change.alias, change.record.version);
    } else if (change.kind === "experiment") {
      if (change.experiment?.status === "running") {
        this.experiments.set(change.experiment.model, change.experiment);
        for (const target of experimentTargets(change.experiment)) this.ensureTarget(change.experiment.model, target);
      } else {
        for (const [model, e] of this.experiments) if (e.name === change.name) this.experiments.delete(model);
      }
    }
  }

  /** The running experiment on a model, if any. */
  experimentFor(model: string): Experiment | undefined {
    return this.experiments.get(model);
  }

  /**
   * The model serving `ref` (alias or version; empty = the serving alias), with a reference the
   * caller must give back with `release` when its request ends.
   */
  acquire(model: string, ref = ""): OnnxModel | undefined {
    const target = ref || this.servingAlias;
    const m = /^\d+$/.test(target) ? this.readyVersion(model, target) : this.routes.get(routeKey(model, target));
    if (m) {
      m.inflight++;
      m.lastUsedMs = Date.now();
    }
    return m;
  }

  release(m: OnnxModel): void {
    m.inflight--;
    if (m.retired && m.inflight === 0) void m.release();
  }

  /** Loads a version that is not loaded yet (ModelInfer naming an explicit version). */
  async load(model: string, version: string): Promise<OnnxModel> {
    const state = this.versions.get(versionKey(model, version));
    if (state?.state === "ready") return state.model;
    if (state?.state === "loading") return state.promise;
    if (!this.registry) throw new Error("the model registry is not reachable");
    return this.startLoad(model, version);
  }

  /** Versions a model has loaded or tried to load, with their state. */
  states(model: string): Map<string, VersionState> {
    const out = new Map<string, VersionState>();
    for (const [key, state] of this.versions) {
      const [m, v] = key.split("/");
      if (m === model) out.set(v!, state);
    }
    return out;
  }

  /** Version number an alias currently serves (after its last successful swap). */
  servedVersion(model: string, alias = this.servingAlias): string | undefined {
    return this.routes.get(routeKey(model, alias))?.version.version;
  }

  /** The registry, once connected. */
  get registryClient(): Registry | undefined {
    return this.registry;
  }

  /** Waits until every scheduled swap has finished (tests, start-up readiness). */
  async settle(): Promise<void> {
    while (this.swapChains.size > 0) await Promise.allSettled([...this.swapChains.values()]);
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    await Promise.allSettled([...this.swapChains.values()]);
    for (const state of this.versions.values()) if (state.state === "ready") await state.model.release();
    this.versions.clear();
    this.routes.clear();
  }

  private isServed(model: string, alias: string): boolean {
    if (alias === this.servingAlias) return true;
    const running = this.experiments.get(model);
    return running ? experimentTargets(running).includes(alias) : false;
  }

  private ensureTarget(model: string, target: string): void {
    if (/^\d+$/.test(target)) {
      void this.load(model, target).catch(() => undefined);
      return;
    }
    const version = this.wantedAliases.get(routeKey(model, target));
    if (version && this.routes.get(routeKey(model, target))?.version.version !== version) this.scheduleSwap(model, target, version);
  }

  private scheduleSwap(model: string, alias: string, version: string): void {
    const key = routeKey(model, alias);
    const previous = this.swapChains.get(key) ?? Promise.resolve();
    const next = previous
      .then(() => this.swap(model, alias, version))
      .catch((err: Error) => this.log.error({ model, alias, version, err: err.message }, "swap failed"));
    this.swapChains.set(key, next);
    void next.finally(() => {
      if (this.swapChains.get(key) === next) this.swapChains.delete(key);
    });
  }

  private async swap(model: string, alias: string, version: string): Promise<void> {
    const key = routeKey(model, alias);
    // A newer promotion arrived while this one waited: skip straight to it.
    if (this.wantedAliases.get(key) !== version) return;
    let next: OnnxModel;
    try {
      next = await this.load(model, version);
    } catch {
      return; // logged and counted by startLoad; the old version keeps serving
    }
    const old = this.routes.get(key);
    if (old === next) return;
    this.routes.set(key, next);
    this.swaps.inc({ model, alias });
    this.log.info({ model, alias, from: old?.version.version, to: version }, "model swapped");
    if (old) this.retireIfUnused(old);
  }

  private startLoad(model: string, version: string): Promise<OnnxModel> {
    const key = versionKey(model, version);
    const registry = this.registry!;
    const promise = (async () => {
      const started = Date.now();
      const mv = await registry.getVersion(model, version);
      if (!mv) throw new Error(`model ${model} has no version ${version}`);
      const bytes = await registry.fetchArtifact(mv);
      const loaded = await loadModel(mv, bytes, this.options.session);
      this.log.info(
        {
          model,
          version,
          ms: Date.now() - started,
          scorer: loaded.scorer,
          ...(loaded.native && { trees: loaded.native.description, layout: loaded.native.layout }),
          ...(loaded.nativeUnavailable && { nativeUnavailable: loaded.nativeUnavailable }),
        },
        "model version loaded and warmed up",
      );
      return loaded;
    })();
    this.versions.set(key, { state: "loading", promise });
    promise.then(
      (m) => {
        this.versions.set(key, { state: "ready", model: m });
        m.lastUsedMs = Date.now();
        this.unloadOverBudget();
      },
      (err: Error) => {
        this.versions.set(key, { state: "failed", error: err.message });
        this.loadFailures.inc({ model, version });
        this.log.error({ model, version, err: err.message }, "model version failed to load; the previous version keeps serving");
        this.options.onLoadFailure?.(model, version, err);
      },
    );
    return promise;
  }

  private readyVersion(model: string, version: string): OnnxModel | undefined {
    const state = this.versions.get(versionKey(model, version));
    return state?.state === "ready" ? state.model : undefined;
  }

  /** True for a version an alias serves or the running experiment routes to: never unloaded. */
  private pinned(m: OnnxModel): boolean {
    if ([...this.routes.values()].includes(m)) return true;
    const running = this.experiments.get(m.name);
    if (running && experimentTargets(running).includes(m.version.version)) return true;
    // A served alias whose swap to this version is pending.
    for (const [key, version] of this.wantedAliases)
      if (version === m.version.version && key.startsWith(`${m.name}@`) && this.isServed(m.name, key.slice(m.name.length + 1))) return true;
    return false;
  }

  /** Unloads a version no alias serves any more, once its in-flight requests finish. */
  private retireIfUnused(m: OnnxModel): void {
    if (this.pinned(m)) return;
    this.unload(m);
  }

  private unload(m: OnnxModel): void {
    const key = versionKey(m.name, m.version.version);
    this.versions.delete(key);
    m.retired = true;
    if (m.inflight === 0) void m.release();
  }

  /** The ready versions loaded on demand, least recently used first. */
  private onDemand(): OnnxModel[] {
    const out: OnnxModel[] = [];
    for (const state of this.versions.values()) if (state.state === "ready" && !this.pinned(state.model)) out.push(state.model);
    return out.sort((a, b) => a.lastUsedMs - b.lastUsedMs);
  }

  /** Unloads on-demand versions idle for longer than onDemandIdleMs (also run by a timer). */
  unloadIdle(now = Date.now()): void {
    const idleMs = this.options.onDemandIdleMs ?? 300_000;
    for (const m of this.onDemand()) {
      if (m.inflight > 0 || now - m.lastUsedMs < idleMs) continue;
      this.unloads.inc({ reason: "idle" });
      this.log.info({ model: m.name, version: m.version.version }, "idle on-demand model version unloaded");
      this.unload(m);
    }
  }

  private unloadOverBudget(): void {
    const budget = this.options.onDemandBudgetBytes ?? 256 * 1024 * 1024;
    const loaded = this.onDemand();
    let bytes = loaded.reduce((sum, m) => sum + m.version.artifact.size, 0);
    // The newest stays even alone over budget: the request that loaded it is about to use it.
    for (const m of loaded.slice(0, -1)) {
      if (bytes <= budget) break;
      bytes -= m.version.artifact.size;
      this.unloads.inc({ reason: "budget" });
      this.log.info({ model: m.name, version: m.version.version }, "on-demand model version unloaded to stay within the memory budget");
      this.unload(m);
    }
  }
}

/** Every alias or version an experiment needs loaded: its variants' and its shadow's. */
const experimentTargets = (e: Experiment): string[] => [...e.variants.map((v) => v.target), ...(e.shadow ? [e.shadow.target] : [])];
const routeKey = (model: string, alias: string) => `${model}@${alias}`;
const versionKey = (model: string, version: string) => `${model}/${version}`;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });
}
