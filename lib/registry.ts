// The model registry on NATS JetStream: a KV bucket holds versions, aliases and experiments; an
// Object Store bucket holds ONNX artifacts and training reference samples. The server watches the
// KV bucket to hot-swap; the CLI and the trainer write to it. Every change is also published as a
// ModelEventLog to LOGS, which the sink keeps in ClickHouse `model_events`.
import { createHash, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type KV, type NatsConnection, type ObjectStore, type JetStreamClient, type QueuedIterator, type Status } from "nats";
import { ModelEventLogSchema } from "../gen/streamserve/v1/logs_pb.js";
import { publishLogMessage } from "./log-message.js";
import type { Names } from "./config.js";

/** How one model input is obtained at serving time. */
export interface FeatureSpec {
  /** Unique within the model; also the Redis hash field for user and item features. */
  name: string;
  /** user: `user_features:{user_id}`; item: `item_features:{item_id}`; request: a Recommend field. */
  source: "user" | "item" | "request";
  type: "numeric" | "categorical";
  /** Used when the value is missing. NaN lets the trees' learned missing direction decide. */
  default: number;
  /** Categorical values map to their index here; unknown values take `default`. */
  vocabulary?: string[];
}

export interface ModelVersion {
  name: string;
  /** "1", "2", ... in publication order. */
  version: string;
  createdAt: string;
  createdBy: string;
  artifact: { key: string; sha256: string; size: number };
  /** ONNX input that takes the [batch, features] matrix. */
  inputName: string;
  /** ONNX output whose last column is the score. */
  outputName: string;
  features: FeatureSpec[];
  metrics: Record<string, number>;
  params: Record<string, unknown>;
  /** Training data description: window, row counts. */
  data?: Record<string, unknown>;
  /** Object Store key of the reference sample ({feature: values[]}), when the trainer stored one. */
  referenceKey?: string;
  description?: string;
}

export interface AliasRecord {
  version: string;
  previous?: string;
  by: string;
  at: string;
  reason?: string;
}

export interface ExperimentVariant {
  name: string;
  /** Percent of the experiment's users. Variants add up to 100. */
  traffic: number;
  /** A model alias ("production") or version ("7"). */
  target: string;
}

/**
 * A guarded rollout, kept on the experiment that routes it (trainer/rollout.ts): the candidate's
 * variant holds the current stage's share of users, the baseline (production when it started) the rest.
 */
export interface RolloutState {
  candidate: string;
  baseline: string;
  /** Percent of users per stage, ascending; reaching the last (100) promotes the candidate. */
  stages: number[];
  /** Index of the current stage in `stages`. */
  stage: number;
  startedAt: string;
  stageStartedAt: string;
  /** The decision's settings, fixed at the start so every stage is judged alike. */
  policy: Record<string, number>;
}

export interface ShadowTarget {
  target: string;
  /** Percent of requests, (0, 100]. */
  percent: number;
}

export interface Experiment {
  name: string;
  model: string;
  variants: ExperimentVariant[];
  /** Set when the experiment is a guarded rollout's routing entry. */
  rollout?: RolloutState;
  /**
   * Shadow traffic: this share of requests is also scored by `target` (an alias or version), off
   * the request's path; its scores are logged as `shadow` logs, never returned.
   */
  shadow?: ShadowTarget;
  status: "running" | "stopped";
  createdAt: string;
  createdBy: string;
  stoppedAt?: string;
}

export interface PublishInput {
  name: string;
  artifact: Uint8Array;
  features: FeatureSpec[];
  inputName: string;
  outputName: string;
  metrics?: Record<string, number>;
  params?: Record<string, unknown>;
  data?: Record<string, unknown>;
  reference?: Record<string, number[]>;
  description?: string;
  actor?: string;
}

export interface ModelEvent {
  model_name: string;
  kind: string;
  alias?: string;
  from_version?: string;
  to_version?: string;
  actor?: string;
  reason?: string;
  details?: Record<string, unknown>;
}

export type RegistryChange =
  | { kind: "alias"; model: string; alias: string; record: AliasRecord | undefined }
  | { kind: "version"; model: string; version: string }
  | { kind: "experiment"; name: string; experiment: Experiment | undefined };

export class RegistryError extends Error {
  override name = "RegistryError";
  constructor(
    message: string,
    readonly code: "not_found" | "invalid" | "conflict" | "corrupt",
  ) {
    super(message);
  }
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;

export class Registry {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly kv: KV,
    private readonly objects: ObjectStore,
    private readonly names: Names,
  ) {}

  static async open(nc: NatsConnection, names: Names): Promise<Registry> {
    const js = nc.jetstream();
    // History keeps alias moves for rollback and audit.
    const kv = await js.views.kv(names.registryBucket, { history: 64 });
    const objects = await js.views.os(names.artifactsBucket);
    return new Registry(nc, js, kv, objects, names);
  }

  // ---- versions ----

  async publish(input: PublishInput): Promise<ModelVersion> {
    checkName("model name", input.name);
    if (input.artifact.byteLength === 0) throw new RegistryError("the model artifact is empty", "invalid");
    checkFeatures(input.features);
    const sha256 = createHash("sha256").update(input.artifact).digest("hex");
    // Content-addressed: the artifact's key is its sha256, so two publishers racing for the same
    // version number can never overwrite each other's bytes (the loser's write is the same object
    // name only when it is the same content). Written before the version key, which must never
    // point at a missing object.
    const key = `${input.name}/sha256-${sha256}.onnx`;
    await this.objects.putBlob({ name: key }, input.artifact);
    let referenceKey: string | undefined;
    if (input.reference) {
      const json = new TextEncoder().encode(JSON.stringify(input.reference));
      referenceKey = `${input.name}/sha256-${createHash("sha256").update(json).digest("hex")}.reference.json`;
      await this.objects.putBlob({ name: referenceKey }, json);
    }
    for (let attempt = 0; attempt < 20; attempt++) {
      const versions = await this.versionNumbers(input.name);
      const version = String((versions.at(-1) ?? 0) + 1);
      const mv: ModelVersion = {
        name: input.name,
        version,
        createdAt: new Date().toISOString(),
        createdBy: input.actor ?? defaultActor(),
        artifact: { key, sha256, size: input.artifact.byteLength },
        inputName: input.inputName,
        outputName: input.outputName,
        features: input.features,
        metrics: input.metrics ?? {},
        params: input.params ?? {},
        data: input.data,
        description: input.description,
        referenceKey,
      };
      try {
        await this.kv.create(versionKey(input.name, version), encode(mv));
      } catch (err) {
        if (isWrongLastSequence(err)) continue; // another publisher took this number: take the next
        throw err;
      }
      await this.recordEvent({ model_name: input.name, kind: "publish", to_version: version, actor: mv.createdBy, details: { metrics: mv.metrics, sha256 } });
      return mv;
    }
    throw new RegistryError(`could not allocate a version number for ${input.name}`, "conflict");
  }

  async getVersion(name: string, version: string): Promise<ModelVersion | undefined> {
    if (!NAME.test(name) || !/^\d+$/.test(version)) return undefined;
    const entry = await this.kv.get(versionKey(name, version));
    return entry && entry.operation === "PUT" ? decode<ModelVersion>(entry.value) : undefined;
  }

  async listVersions(name: string): Promise<ModelVersion[]> {
    const out: ModelVersion[] = [];
    for (const v of await this.versionNumbers(name)) {
      const mv = await this.getVersion(name, String(v));
      if (mv) out.push(mv);
    }
    return out;
  }

  async listModels(): Promise<string[]> {
    const models = new Set<string>();
    for (const key of await this.keys("model.>")) models.add(key.split(".")[1]!);
    return [...models].sort();
  }

  /** The artifact's bytes, verified against the sha256 recorded at publication. */
  async fetchArtifact(mv: ModelVersion): Promise<Uint8Array> {
    const bytes = await this.objects.getBlob(mv.artifact.key);
    if (!bytes) throw new RegistryError(`artifact ${mv.artifact.key} is missing from the object store`, "not_found");
    const sha = createHash("sha256").update(bytes).digest("hex");
    if (sha !== mv.artifact.sha256) {
      throw new RegistryError(`artifact ${mv.artifact.key} is corrupt: sha256 ${sha} != ${mv.artifact.sha256}`, "corrupt");
    }
    return bytes;
  }

  async fetchReference(mv: ModelVersion): Promise<Record<string, number[]> | undefined> {
    if (!mv.referenceKey) return undefined;
    const bytes = await this.objects.getBlob(mv.referenceKey);
    return bytes ? (JSON.parse(new TextDecoder().decode(bytes)) as Record<string, number[]>) : undefined;
  }

  /** Resolves an alias or a version number to a version number. */
  async resolve(name: string, ref: string): Promise<string | undefined> {
    if (/^\d+$/.test(ref)) return (await this.getVersion(name, ref)) ? ref : undefined;
    return (await this.getAlias(name, ref))?.version;
  }

  // ---- aliases ----

  async getAlias(name: string, alias: string): Promise<AliasRecord | undefined> {
    if (!NAME.test(name) || !NAME.test(alias)) return undefined;
    const entry = await this.kv.get(aliasKey(name, alias));
    return entry && entry.operation === "PUT" ? decode<AliasRecord>(entry.value) : undefined;
  }

  async aliases(name: string): Promise<Record<string, AliasRecord>> {
    const out: Record<string, AliasRecord> = {};
    for (const key of await this.keys(`model.${name}.alias.*`)) {
      const alias = key.split(".").at(-1)!;
      const record = await this.getAlias(name, alias);
      if (record) out[alias] = record;
    }
    return out;
  }

  async setAlias(name: string, alias: string, version: string, opts: { actor?: string; reason?: string; kind?: string } = {}): Promise<AliasRecord> {
    checkName("alias", alias);
    if (/^\d+$/.test(alias)) throw new RegistryError("an alias cannot be a number (numbers are versions)", "invalid");
    const mv = await this.getVersion(name, version);
    if (!mv) throw new RegistryError(`model ${name} has no version ${version}`, "not_found");
    // Compare-and-set on the key's revision: two concurrent promotions both land, one after the
    // other, each recording the version it replaced (a blind put would lose one of them).
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await this.kv.get(aliasKey(name, alias));
      const current = entry && entry.operation === "PUT" ? decode<AliasRecord>(entry.value) : undefined;
      const record: AliasRecord = { version, previous: current?.version, by: opts.actor ?? defaultActor(), at: new Date().toISOString(), reason: opts.reason };
      try {
        if (entry) await this.kv.update(aliasKey(name, alias), encode(record), entry.revision);
        else await this.kv.create(aliasKey(name, alias), encode(record));
      } catch (err) {
        if (isWrongLastSequence(err)) continue; // someone else moved it meanwhile: read again
        throw err;
      }
      await this.recordEvent({
        model_name: name,
        kind: opts.kind ?? "promote",
        alias,
        from_version: current?.version,
        to_version: version,
        actor: record.by,
        reason: opts.reason,
      });
      return record;
    }
    throw new RegistryError(`alias ${alias} of ${name} kept changing under concurrent updates; try again`, "conflict");
  }

  /** Every value the alias has had, oldest first. */
  async aliasHistory(name: string, alias: string): Promise<AliasRecord[]> {
    const out: AliasRecord[] = [];
    for await (const e of await this.kv.history({ key: aliasKey(name, alias) })) {
      if (e.operation === "PUT") out.push(decode<AliasRecord>(e.value));
    }
    return out;
  }

  /** Points the alias back at the version it had before its current one. */
  async rollback(name: string, alias = "production", actor?: string): Promise<AliasRecord> {
    const history = await this.aliasHistory(name, alias);
    const current = history.at(-1);
    if (!current) throw new RegistryError(`model ${name} has no alias ${alias}`, "not_found");
    const earlier = [...history].reverse().find((r) => r.version !== current.version);
    const target = earlier?.version ?? current.previous;
    if (!target) throw new RegistryError(`alias ${alias} of ${name} has no earlier version to roll back to`, "not_found");
    return this.setAlias(name, alias, target, { actor, reason: `rollback from ${current.version}`, kind: "rollback" });
  }

  // ---- experiments ----

  async createExperiment(input: {
    name: string;
    model: string;
    variants: ExperimentVariant[];
    rollout?: RolloutState;
    shadow?: ShadowTarget;
    actor?: string;
  }): Promise<Experiment> {
    checkName("experiment name", input.name);
    checkName("model name", input.model);
    // A shadow needs no A/B split: one variant taking every user is enough.
    checkVariants(input.variants, input.shadow ? 1 : 2);
    if (input.shadow) {
      if (!(input.shadow.percent > 0 && input.shadow.percent <= 100))
        throw new RegistryError(`shadow: percent must be between 0 and 100, got ${input.shadow.percent}`, "invalid");
      if (!(await this.resolve(input.model, input.shadow.target))) {
        throw new RegistryError(`shadow: model ${input.model} has no alias or version "${input.shadow.target}"`, "not_found");
      }
    }
    const running = (await this.listExperiments()).find((e) => e.status === "running" && e.model === input.model);
    if (running && running.name !== input.name) {
      throw new RegistryError(`experiment ${running.name} is already running on ${input.model}; stop it first`, "conflict");
    }
    for (const v of input.variants) {
      if (!(await this.resolve(input.model, v.target))) {
        throw new RegistryError(`variant ${v.name}: model ${input.model} has no alias or version "${v.target}"`, "not_found");
      }
    }
    const experiment: Experiment = {
      name: input.name,
      model: input.model,
      variants: input.variants,
      ...(input.rollout && { rollout: input.rollout }),
      ...(input.shadow && { shadow: input.shadow }),
      status: "running",
      createdAt: new Date().toISOString(),
      createdBy: input.actor ?? defaultActor(),
    };
    await this.kv.put(experimentKey(input.name), encode(experiment));
    return experiment;
  }

  async getExperiment(name: string): Promise<Experiment | undefined> {
    if (!NAME.test(name)) return undefined;
    const entry = await this.kv.get(experimentKey(name));
    return entry && entry.operation === "PUT" ? decode<Experiment>(entry.value) : undefined;
  }

  async listExperiments(): Promise<Experiment[]> {
    const out: Experiment[] = [];
    for (const key of await this.keys("experiment.*")) {
      const e = await this.getExperiment(key.slice("experiment.".length));
      if (e) out.push(e);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  async stopExperiment(name: string): Promise<Experiment> {
    const e = await this.getExperiment(name);
    if (!e) throw new RegistryError(`no experiment named ${name}`, "not_found");
    const stopped: Experiment = { ...e, status: "stopped", stoppedAt: new Date().toISOString() };
    await this.kv.put(experimentKey(name), encode(stopped));
    return stopped;
  }

  // ---- changes ----

  /** The current versions, aliases and experiments, as the changes that would recreate them. */
  async snapshot(): Promise<RegistryChange[]> {
    const out: RegistryChange[] = [];
    const keys = await this.keys("model.>");
    for (const key of keys) {
      const parts = key.split(".");
      if (parts[2] === "version" && parts[3]) out.push({ kind: "version", model: parts[1]!, version: parts[3] });
    }
    for (const model of [...new Set(keys.map((k) => k.split(".")[1]!))].sort()) {
      for (const [alias, record] of Object.entries(await this.aliases(model))) out.push({ kind: "alias", model, alias, record });
    }
    for (const experiment of await this.listExperiments()) out.push({ kind: "experiment", name: experiment.name, experiment });
    return out;
  }

  /**
   * Yields every change, starting with the current state of every key. Ends when the connection
   * comes back after an outage: call it again to go on (the new watch replays the current state).
   */
  async *watch(signal?: AbortSignal): AsyncGenerator<RegistryChange> {
    const iter = await this.kv.watch({ key: ">" });
    const stop = () => iter.stop();
    signal?.addEventListener("abort", stop, { once: true });
    // A restarted server may have lost the watch's consumer, and nats.js notices only after two
    // missed heartbeats (about 10 s): promotions made meanwhile would wait that long to be seen.
    const statuses = this.nc.status() as QueuedIterator<Status>;
    void (async () => {
      for await (const s of statuses) if (s.type === "reconnect") return stop();
    })().catch(() => undefined);
    try {
      for await (const e of iter) {
        const parts = e.key.split(".");
        const deleted = e.operation !== "PUT";
        if (parts[0] === "model" && parts[2] === "alias") {
          yield { kind: "alias", model: parts[1]!, alias: parts[3]!, record: deleted ? undefined : decode<AliasRecord>(e.value) };
        } else if (parts[0] === "model" && parts[2] === "version" && !deleted) {
          yield { kind: "version", model: parts[1]!, version: parts[3]! };
        } else if (parts[0] === "experiment") {
          yield { kind: "experiment", name: parts[1]!, experiment: deleted ? undefined : decode<Experiment>(e.value) };
        }
      }
    } finally {
      signal?.removeEventListener("abort", stop);
      statuses.stop();
    }
  }

  /** Publishes a ModelEventLog to LOGS (→ ClickHouse model_events). */
  async recordEvent(event: ModelEvent): Promise<void> {
    const eventId = randomUUID();
    const msg = create(ModelEventLogSchema, {
      eventId,
      time: timestampFromMs(Date.now()),
      modelName: event.model_name,
      kind: event.kind,
      alias: event.alias ?? "",
      fromVersion: event.from_version ?? "",
      toVersion: event.to_version ?? "",
      actor: event.actor ?? defaultActor(),
      reason: event.reason ?? "",
      detailsJson: event.details ? JSON.stringify(event.details) : "",
    });
    await publishLogMessage(this.js, this.names.logsSubject("model_event"), eventId, ModelEventLogSchema, msg);
  }

  /**
   * Collects the keys first: awaiting other KV calls while iterating nats.js's key lister ends
   * the iteration early (only the first key comes back).
   */
  private async keys(filter: string): Promise<string[]> {
    const out: string[] = [];
    for await (const key of await this.kv.keys(filter)) out.push(key);
    return out;
  }

  private async versionNumbers(name: string): Promise<number[]> {
    const out: number[] = [];
    for (const key of await this.keys(`model.${name}.version.*`)) out.push(Number(key.split(".").at(-1)));
    return out.filter(Number.isFinite).sort((a, b) => a - b);
  }
}

const versionKey = (name: string, version: string) => `model.${name}.version.${version}`;
const aliasKey = (name: string, alias: string) => `model.${name}.alias.${alias}`;
const experimentKey = (name: string) => `experiment.${name}`;
const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
const decode = <T>(bytes: Uint8Array) => JSON.parse(new TextDecoder().decode(bytes)) as T;

function defaultActor(): string {
  return process.env.STREAMSERVE_ACTOR ?? process.env.USER ?? "streamserve";
}

function checkName(what: string, name: string): void {
  if (!NAME.test(name)) throw new RegistryError(`${what} "${name}" must be 1-64 letters, digits, "_" or "-"`, "invalid");
}

function checkFeatures(features: FeatureSpec[]): void {
  if (!features.length) throw new RegistryError("a model version needs at least one feature", "invalid");
  const seen = new Set<string>();
  for (const f of features) {
    if (!f.name || seen.has(f.name)) throw new RegistryError(`feature names must be unique and non-empty ("${f.name}")`, "invalid");
    seen.add(f.name);
    if (!["user", "item", "request"].includes(f.source)) throw new RegistryError(`feature ${f.name}: source must be user, item or request`, "invalid");
    if (f.type === "categorical" && !f.vocabulary?.length) throw new RegistryError(`feature ${f.name}: a categorical feature needs a vocabulary`, "invalid");
  }
}

function checkVariants(variants: ExperimentVariant[], minimum = 2): void {
  if (variants.length < minimum)
    throw new RegistryError(minimum === 1 ? "an experiment needs a variant" : "an experiment needs at least two variants", "invalid");
  const names = new Set<string>();
  let total = 0;
  for (const v of variants) {
    checkName("variant name", v.name);
    if (names.has(v.name)) throw new RegistryError(`variant ${v.name} is listed twice`, "invalid");
    names.add(v.name);
    if (!(v.traffic > 0 && v.traffic <= 100)) throw new RegistryError(`variant ${v.name}: traffic must be between 0 and 100`, "invalid");
    total += v.traffic;
  }
  if (Math.abs(total - 100) > 1e-9) throw new RegistryError(`variant traffic adds up to ${total}%, not 100%`, "invalid");
}

function isWrongLastSequence(err: unknown): boolean {
  const e = err as { api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10071 || /wrong last sequence/i.test(e?.message ?? "");
}
