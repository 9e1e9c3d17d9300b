// TLS (with and without client certificates) and token authentication, as documented for
// production: off by default, and when on, every RPC but health needs the token.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { testRuntime, type TestRuntime } from "../helpers.js";
import { startServer, type RunningServer } from "../../server/server.js";
import { createServiceClient, grpc, Code } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { Health, HealthCheckRequestSchema } from "../../gen/grpc/health/v1/health_pb.js";
import * as reflection from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { create, toBinary } from "@bufbuild/protobuf";
import { mountDashboard } from "../../monitor/dashboard.js";
import { resolveMonitorOptions } from "../../monitor/options.js";

let rt: TestRuntime;
const servers: RunningServer[] = [];

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCerts(dir: string) {
  const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt");
  for (const name of ["server", "client"]) {
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.csr`);
    const ext = join(dir, `${name}.ext`);
    execFileSync("sh", ["-c", `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ${ext}`]);
    run("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", `${name}.crt`);
  }
  const file = (n: string) => join(dir, n);
  return { ca: file("ca.crt"), serverCert: file("server.crt"), serverKey: file("server.key"), clientCert: file("client.crt"), clientKey: file("client.key") };
}

before(() => {
  rt = testRuntime();
});
after(async () => {
  for (const s of servers) await s.stop();
  await rt?.cleanup();
});

it("serves over TLS, requires client certificates when configured, and checks the token", async () => {
  const certs = makeCerts(rt.config.dataDir);
  const server = await startServer(rt, {
    http: false,
    security: { tlsCert: certs.serverCert, tlsKey: certs.serverKey, tlsClientCa: certs.ca, authToken: "s3cret" },
  });
  servers.push(server);
  const address = `127.0.0.1:${server.port}`;
  const ca = readFileSync(certs.ca);
  const mtls = grpc.credentials.createSsl(ca, readFileSync(certs.clientKey), readFileSync(certs.clientCert));

  // Right certificate and token: answered.
  const client = createServiceClient(RecommendationService, address, mtls);
  const good = new grpc.Metadata();
  good.set("authorization", "Bearer s3cret");
  const res = await client.recommend({ userId: "u1", candidates: ["a"] }, { metadata: good });
  assert.equal(res.modelVersion, "fallback");

  // No token, wrong token: UNAUTHENTICATED with the fix in the message.
  await assert.rejects(
    client.recommend({ userId: "u1" }),
    (e: { code: number; details: string }) => e.code === Code.UNAUTHENTICATED && /Bearer/.test(e.details),
  );
  const bad = new grpc.Metadata();
  bad.set("authorization", "Bearer nope");
  await assert.rejects(client.recommend({ userId: "u1" }, { metadata: bad }), (e: { code: number }) => e.code === Code.UNAUTHENTICATED);

  // Health needs no token (probes and load balancers carry none).
  const healthClient = createServiceClient(Health, address, mtls);
  const status = await healthClient.check({ service: "" });
  assert.ok(status.status >= 1);
  healthClient.close();

  // TLS without a client certificate is refused by the handshake.
  const noCert = createServiceClient(RecommendationService, address, grpc.credentials.createSsl(ca));
  await assert.rejects(noCert.recommend({ userId: "u1" }, { metadata: good, deadlineMs: 3000 }), (e: { code: number }) => e.code === Code.UNAVAILABLE);
  noCert.close();

  // Plaintext against a TLS port fails too.
  const plain = createServiceClient(RecommendationService, address);
  await assert.rejects(plain.recommend({ userId: "u1" }, { metadata: good, deadlineMs: 3000 }));
  plain.close();
  client.close();
});

it("with a token, every HTTP endpoint but /healthz needs it; /metrics has its own; the dashboard takes it from the browser", async () => {
  const server = await startServer(rt, { security: { authToken: "s3cret", metrics: { token: "scrape-me" } } });
  servers.push(server);
  let chQueried = 0;
  mountDashboard(rt.http, {
    clickhouse: async () => (chQueried++, Promise.reject(new Error("no ClickHouse in this test"))),
    model: "recommender",
    options: resolveMonitorOptions(),
  });
  const port = await rt.listenHttp();
  const base = `http://127.0.0.1:${port}`;
  const get = (path: string, headers: Record<string, string> = {}) => fetch(`${base}${path}`, { headers, redirect: "manual" });

  assert.equal((await get("/healthz")).status, 200, "/healthz is open to probes");
  for (const path of ["/", "/dashboard", "/api/dashboard", "/api/models", "/api/traffic", "/api/drift", "/api/alerts", "/metrics", "/nope"]) {
    assert.equal((await get(path)).status, 401, `${path} without a token`);
  }
  assert.equal(chQueried, 0, "nothing was read for an unauthenticated request");
  // A browser gets the login form; a wrong token says so.
  const login = await get("/", { accept: "text/html" });
  assert.match(await login.text(), /<form method="get"[^>]*><input name="token" type="password"/);
  assert.match(await (await get("/?token=wrong", { accept: "text/html" })).text(), /not right/);

  // The handoff: ?token= sets an HttpOnly cookie and redirects to the address without the token.
  const handoff = await get("/dashboard?token=s3cret&hours=6");
  assert.equal(handoff.status, 303);
  assert.equal(handoff.headers.get("location"), "/dashboard?hours=6");
  const setCookie = handoff.headers.get("set-cookie") ?? "";
  assert.match(setCookie, /HttpOnly/);
  assert.match(setCookie, /SameSite=Strict/);
  const cookie = setCookie.split(";")[0]!;
  const page = await get("/dashboard", { cookie });
  assert.equal(page.status, 200);
  assert.match(await page.text(), /streamserve monitor/);
  assert.equal((await get("/api/models", { cookie })).status, 500, "past the token, the API runs (and reports ClickHouse missing)");
  assert.equal((await get("/api/models", { authorization: "Bearer s3cret" })).status, 500);
  assert.equal((await get("/api/models", { cookie: "streamserve_token=nope" })).status, 401);

  // /metrics takes the scraper's token, not the cookie or the main token.
  assert.equal((await get("/metrics", { cookie })).status, 401);
  assert.equal((await get("/metrics", { authorization: "Bearer s3cret" })).status, 401);
  const metrics = await get("/metrics", { authorization: "Bearer scrape-me" });
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /grpc_server_inflight/);
});

it("with a token, reflection and Health/Watch need it; Health/Check does not", async () => {
  const server = await startServer(rt, { http: false, security: { authToken: "s3cret" } });
  servers.push(server);
  const address = `127.0.0.1:${server.port}`;
  const raw = new grpc.Client(address, grpc.credentials.createInsecure());
  const identity = (b: Buffer) => b;
  const good = new grpc.Metadata();
  good.set("authorization", "Bearer s3cret");
  const listServices = (metadata: grpc.Metadata) =>
    new Promise<{ code: number; data: number }>((resolve) => {
      const call = raw.makeBidiStreamRequest("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", identity, identity, metadata);
      let data = 0;
      call.on("data", () => (data++, call.end()));
      call.on("error", () => undefined);
      call.on("status", (s) => resolve({ code: s.code, data }));
      call.write(
        Buffer.from(
          toBinary(
            reflection.ServerReflectionRequestSchema,
            create(reflection.ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }),
          ),
        ),
      );
    });
  assert.deepEqual(await listServices(new grpc.Metadata()), { code: Code.UNAUTHENTICATED, data: 0 });
  assert.deepEqual(await listServices(good), { code: Code.OK, data: 1 });

  const watch = (metadata: grpc.Metadata) =>
    new Promise<number>((resolve) => {
      const call = raw.makeServerStreamRequest(
        "/grpc.health.v1.Health/Watch",
        identity,
        identity,
        Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, {}))),
        metadata,
      );
      call.on("data", () => call.cancel());
      call.on("error", () => undefined);
      call.on("status", (s) => resolve(s.code));
    });
  assert.equal(await watch(new grpc.Metadata()), Code.UNAUTHENTICATED);
  assert.equal(await watch(good), Code.CANCELLED, "answered, then cancelled by the client");
  const health = createServiceClient(Health, address);
  assert.ok((await health.check({ service: "" })).status >= 1);
  health.close();
  raw.close();
});
