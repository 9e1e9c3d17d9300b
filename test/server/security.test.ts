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
import { Health } from "../../gen/grpc/health/v1/health_pb.js";

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
  await assert.rejects(client.recommend({ userId: "u1" }), (e: { code: number; details: string }) => e.code === Code.UNAUTHENTICATED && /Bearer/.test(e.details));
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
