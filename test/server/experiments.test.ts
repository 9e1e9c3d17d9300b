// A/B routing: users are split between variants by a deterministic hash, each variant's model
// scores its users, and every experiment request logs one exposure.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { fromBinary } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy } from "nats";
import { testRuntime, waitFor, type TestRuntime } from "../helpers.js";
import type { RunningServer } from "../../server/server.js";
import { startServing, type Serving } from "./harness.js";
import { assignVariant } from "../../lib/experiments.js";
import { ExposureLogSchema } from "../../gen/streamserve/v1/logs_pb.js";
import { logisticModel } from "../fixtures/onnx-models.js";
import type { FeatureSpec } from "../../lib/registry.js";

const FEATURES: FeatureSpec[] = [{ name: "clicks_last_5min", source: "user", type: "numeric", default: 0 }];

let rt: TestRuntime;
let serving: Serving;
let server: RunningServer;
let client: Serving["client"];

before(async () => {
  rt = testRuntime();
  serving = await startServing(rt);
  ({ server, client } = serving);
});
after(async () => {
  await serving?.close();
  await rt?.cleanup();
});

it("routes each user to its variant's model and logs one exposure per request", async () => {
  const registry = await rt.registry();
  const v1 = await registry.publish({ name: "recommender", artifact: logisticModel([0.1], 0), features: FEATURES, inputName: "features", outputName: "score" });
  const v2 = await registry.publish({ name: "recommender", artifact: logisticModel([0.2], 1), features: FEATURES, inputName: "features", outputName: "score" });
  await registry.setAlias("recommender", "production", v1.version);
  await registry.setAlias("recommender", "candidate", v2.version);
  const experiment = await registry.createExperiment({
    name: "rec_v2",
    model: "recommender",
    variants: [
      { name: "control", traffic: 70, target: "production" },
      { name: "treatment", traffic: 30, target: "candidate" },
    ],
  });
  await waitFor(() => server.models.experimentFor("recommender")?.name === "rec_v2", 10_000, "experiment seen");
  await waitFor(
    () => server.models.servedVersion("recommender", "candidate") === v2.version && server.models.servedVersion("recommender") === v1.version,
    15_000,
    "both variants loaded",
  );

  const counts: Record<string, number> = { control: 0, treatment: 0 };
  const requestIds: string[] = [];
  for (let i = 0; i < 400; i++) {
    const userId = `user-${i}`;
    const res = await client.recommend({ userId, candidates: ["a", "b"] });
    const expected = assignVariant(experiment, userId);
    assert.equal(res.variant, expected.name, `user ${userId}`);
    assert.equal(res.modelVersion, expected.name === "control" ? v1.version : v2.version);
    counts[res.variant]!++;
    requestIds.push(res.requestId);
    // The same user always lands in the same variant.
    if (i % 50 === 0) assert.equal((await client.recommend({ userId, candidates: ["a"] })).variant, res.variant);
  }
  assert.ok(counts.treatment! > 80 && counts.treatment! < 160, `about 30 % treatment: ${JSON.stringify(counts)}`);

  await server.logs.flush();
  const nc = await rt.nats();
  const jsm = await nc.jetstreamManager();
  await jsm.consumers.add(rt.names.logsStream, {
    durable_name: "exp_check",
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    filter_subject: rt.names.logsSubject("exposure"),
  });
  const consumer = await nc.jetstream().consumers.get(rt.names.logsStream, "exp_check");
  const exposures = new Map<string, number>();
  const messages = await consumer.fetch({ max_messages: 1000, expires: 2000 });
  for await (const m of messages) {
    const e = fromBinary(ExposureLogSchema, m.data);
    assert.equal(e.experiment, "rec_v2");
    exposures.set(e.requestId, (exposures.get(e.requestId) ?? 0) + 1);
  }
  for (const id of requestIds) assert.equal(exposures.get(id), 1, `one exposure for ${id}`);

  // Stopping the experiment sends everyone back to production.
  await registry.stopExperiment("rec_v2");
  await waitFor(() => !server.models.experimentFor("recommender"), 10_000, "experiment stopped");
  const after = await client.recommend({ userId: "user-1", candidates: ["a"] });
  assert.equal(after.variant, "");
  assert.equal(after.modelVersion, v1.version);
});
