// Deterministic assignment of users to experiment variants: a hash of experiment and user, so a user
// sees the same variant on every server and after every restart, and the monitor can recompute it.
import { createHash } from "node:crypto";
import type { Experiment, ExperimentVariant, ShadowTarget } from "./registry.js";

/** Buckets per experiment: 0.01 % resolution for traffic shares. */
export const BUCKETS = 10_000;

export function assignmentBucket(experiment: string, userId: string): number {
  const digest = createHash("sha256").update(experiment).update(":").update(userId).digest();
  return digest.readUInt32BE(0) % BUCKETS;
}

export function assignVariant(experiment: Pick<Experiment, "name" | "variants">, userId: string): ExperimentVariant {
  const bucket = assignmentBucket(experiment.name, userId);
  let upper = 0;
  for (const v of experiment.variants) {
    upper += (v.traffic / 100) * BUCKETS;
    if (bucket < upper) return v;
  }
  return experiment.variants.at(-1)!;
}

/** Parses the CLI form `name:traffic:target`, e.g. `control:50:production`. */
export function parseVariant(spec: string): ExperimentVariant {
  const parts = spec.split(":");
  if (parts.length !== 3) throw new Error(`variant "${spec}" must look like name:traffic:target, e.g. control:50:production`);
  const [name, traffic, target] = parts as [string, string, string];
  const share = Number(traffic);
  if (!Number.isFinite(share)) throw new Error(`variant "${spec}": traffic "${traffic}" is not a number`);
  return { name, traffic: share, target };
}

/** Parses the CLI form `target:percent`, e.g. `7:20` (version 7 scores 20 % of requests in shadow). */
export function parseShadow(spec: string): ShadowTarget {
  const i = spec.lastIndexOf(":");
  if (i <= 0) throw new Error(`shadow "${spec}" must look like VERSION:PERCENT, e.g. 7:20`);
  const percent = Number(spec.slice(i + 1));
  if (!(percent > 0 && percent <= 100)) throw new Error(`shadow "${spec}": percent must be a number in (0, 100]`);
  return { target: spec.slice(0, i), percent };
}
