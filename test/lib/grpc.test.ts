// The unary call wrapper: a handler learns that its call ended (client gone, deadline, shutdown)
// through `cancelled` or the signal it asks for, and a handler that gives up because of it is
// accounted as CANCELLED or DEADLINE_EXCEEDED, not INTERNAL.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { grpc, Code, createServiceClient, serviceDefinition, unaryImplementation, type CallContext } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";

const ended: { userId: string; code: grpc.status }[] = [];
const seen = new Map<string, { cancelled: boolean; aborted: boolean }>();
const shutdown = new AbortController();
let server: grpc.Server;
let client: ReturnType<typeof createServiceClient<typeof RecommendationService.method>>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until the call ends, by polling `cancelled` ("poll-…") or on the signal ("signal-…"). */
async function recommend(req: { userId: string }, ctx: CallContext) {
  if (req.userId === "ok") return { requestId: "r" };
  if (req.userId.startsWith("signal")) {
    await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
  } else {
    const until = Date.now() + 10_000;
    while (!ctx.cancelled && Date.now() < until) await sleep(5);
  }
  seen.set(req.userId, { cancelled: ctx.cancelled, aborted: ctx.signal.aborted });
  throw new Error("gave up");
}

before(async () => {
  server = new grpc.Server();
  server.addService(
    serviceDefinition(RecommendationService),
    unaryImplementation(
      RecommendationService,
      { recommend, recordOutcome: () => ({ outcomeId: "o" }) },
      { begin: (_path, md) => (code) => ended.push({ userId: String(md.get("user")[0]), code }) },
      shutdown.signal,
    ),
  );
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  client = createServiceClient(RecommendationService, `127.0.0.1:${port}`);
});
after(() => {
  client?.close();
  server?.forceShutdown();
});

const md = (user: string) => {
  const m = new grpc.Metadata();
  m.set("user", user);
  return m;
};
const endedCode = async (user: string) => {
  const until = Date.now() + 5000;
  while (!ended.some((e) => e.userId === user)) {
    if (Date.now() > until) throw new Error(`the call of ${user} never ended on the server`);
    await sleep(10);
  }
  return ended.find((e) => e.userId === user)!.code;
};

it("a plain call answers OK", async () => {
  assert.equal((await client.recommend({ userId: "ok" }, { metadata: md("ok") })).requestId, "r");
  assert.equal(await endedCode("ok"), Code.OK);
});

for (const how of ["poll", "signal"]) {
  it(`${how}: the deadline ends the handler's wait and is accounted as DEADLINE_EXCEEDED`, async () => {
    const user = `${how}-deadline`;
    await assert.rejects(
      client.recommend({ userId: user }, { deadlineMs: 200, metadata: md(user) }),
      (e: { code: number }) => e.code === Code.DEADLINE_EXCEEDED,
    );
    assert.equal(await endedCode(user), Code.DEADLINE_EXCEEDED);
    assert.deepEqual(seen.get(user), { cancelled: true, aborted: true });
  });

  it(`${how}: a client that goes away ends the handler's wait, accounted as CANCELLED (not INTERNAL)`, async () => {
    const user = `${how}-cancel`;
    const call = client.raw.makeUnaryRequest(
      "/streamserve.v1.RecommendationService/Recommend",
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.from([0x0a, user.length, ...Buffer.from(user)]),
      md(user),
      () => undefined,
    );
    await sleep(200);
    call.cancel();
    assert.equal(await endedCode(user), Code.CANCELLED);
    assert.deepEqual(seen.get(user), { cancelled: true, aborted: true });
  });
}

it("shutdown aborts the signal of calls in flight", async () => {
  const user = "signal-shutdown";
  const pending = client.recommend({ userId: user }, { metadata: md(user) }).catch((e: { code: number }) => e);
  await sleep(200);
  shutdown.abort();
  assert.equal(await endedCode(user), Code.CANCELLED);
  assert.deepEqual(seen.get(user), { cancelled: true, aborted: true });
  assert.equal(((await pending) as { code: number }).code, Code.CANCELLED);
});
