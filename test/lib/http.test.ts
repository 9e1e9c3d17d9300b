// The process's HTTP server answers any request target, however malformed, and stays up; a proxied
// route forwards to another process's server or says why it cannot.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import { HttpServer, proxyTo, requestUrl, sendJson, sendText } from "../../lib/http.js";
import { createLogger } from "../../lib/logger.js";

function rawRequest(port: number, target: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.end(`GET ${target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`));
    let body = "";
    socket.on("data", (d) => (body += d.toString()));
    socket.on("end", () => resolve(body));
    socket.on("error", reject);
  });
}

test("a malformed request target gets an answer and the server keeps serving", async () => {
  const server = new HttpServer(createLogger("silent"));
  server.route("GET", "/healthz", (_req, res) => sendText(res, 200, "ok\n"));
  const port = await server.listen(0, "127.0.0.1");
  try {
    // Each of these once threw "Invalid URL" out of the dispatcher as an unhandled rejection.
    for (const target of ["http://a:99999/", "//a:99999/", "http://[::1/", "*", "http://a:99999/healthz"]) {
      const answer = await rawRequest(port, target);
      assert.match(answer, /^HTTP\/1\.1 (200|400|404) /, `${target}: ${answer.split("\r\n")[0]}`);
    }
    assert.match(await rawRequest(port, "http://a:99999/healthz"), /^HTTP\/1\.1 200 /, "absolute form routes by its path");
    assert.match(await rawRequest(port, "*"), /^HTTP\/1\.1 400 /);
    assert.match(await rawRequest(port, "/healthz"), /^HTTP\/1\.1 200 /);
  } finally {
    await server.close();
  }
});

test("requestUrl keeps the path and query of every target form", () => {
  assert.equal(requestUrl("/metrics?x=1")?.pathname, "/metrics");
  assert.equal(requestUrl("/metrics?x=1")?.search, "?x=1");
  assert.equal(requestUrl("http://a:99999/api/models?y")?.pathname, "/api/models");
  assert.equal(requestUrl("//a:99999/")?.pathname, "//a:99999/");
  assert.equal(requestUrl("http://a")?.pathname, "/");
  assert.equal(requestUrl("*"), undefined);
  assert.equal(requestUrl(undefined)?.pathname, "/");
});

test("a proxied route forwards path, query and answer, and says why when nothing is there", async () => {
  const upstream = new HttpServer(createLogger("silent"));
  upstream.route("GET", "/api/*", (_req, res, url) => sendJson(res, 207, { path: url.pathname, hours: url.searchParams.get("hours") }));
  const upstreamPort = await upstream.listen(0, "127.0.0.1");
  let target: number | undefined = upstreamPort;
  const front = new HttpServer(createLogger("silent"));
  front.route("GET", "/api/*", proxyTo({ port: () => target, unavailable: () => "the analytics process is restarting" }));
  const port = await front.listen(0, "127.0.0.1");
  try {
    const ok = await fetch(`http://127.0.0.1:${port}/api/drift?hours=6`);
    assert.equal(ok.status, 207);
    assert.deepEqual(await ok.json(), { path: "/api/drift", hours: "6" });

    target = undefined;
    const down = await fetch(`http://127.0.0.1:${port}/api/drift`);
    assert.equal(down.status, 503);
    assert.equal(down.headers.get("retry-after"), "5");
    assert.deepEqual(await down.json(), { error: "the analytics process is restarting" });

    // A port with no server behind it (the child died between the lookup and the call).
    await upstream.close();
    target = upstreamPort;
    const refused = await fetch(`http://127.0.0.1:${port}/api/drift`);
    assert.equal(refused.status, 503);
    assert.match(((await refused.json()) as { error: string }).error, /restarting \(connect ECONNREFUSED/);
  } finally {
    await front.close();
    await upstream.close().catch(() => undefined);
  }
});
