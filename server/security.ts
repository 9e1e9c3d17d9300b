// Transport security and authentication, both off by default for local use: TLS with a server
// certificate (and optionally required client certificates), and a bearer token checked on every
// RPC (reflection and Health/Watch included) except Health/Check, and on every HTTP endpoint except
// /healthz (load balancers and probes carry no token). /metrics has its own setting, since
// Prometheus scrapers often hold a separate credential. The dashboard takes the token from the
// browser: a login form, or a `?token=` link, either of which stores it in an HttpOnly cookie.
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { grpc, ServiceError, Code } from "../lib/grpc.js";
import { registerSecret } from "../lib/redact.js";
import { sameSecret, sendJson, sendText, type HttpGuard } from "../lib/http.js";

export interface SecurityOptions {
  /** PEM files for TLS. Without them the server speaks plaintext. */
  tlsCert?: string;
  tlsKey?: string;
  /** CA bundle that client certificates must chain to; set to require client certificates (mTLS). */
  tlsClientCa?: string;
  /** Token clients send as `authorization: Bearer <token>`. Unset: no authentication. */
  authToken?: string;
  /**
   * Who may read /metrics when `authToken` is set: "token" (the same token), "open" (no token),
   * or the separate token a Prometheus scraper sends. @default "token"
   */
  metrics?: "token" | "open" | { token: string };
}

export function serverCredentials(options: SecurityOptions = {}): grpc.ServerCredentials {
  if (!options.tlsCert && !options.tlsKey) return grpc.ServerCredentials.createInsecure();
  if (!options.tlsCert || !options.tlsKey) throw new Error("TLS needs both --tls-cert and --tls-key");
  const ca = options.tlsClientCa ? readFileSync(options.tlsClientCa) : null;
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: readFileSync(options.tlsCert), private_key: readFileSync(options.tlsKey) }], Boolean(ca));
}

const UNAUTHENTICATED_PATHS = new Set(["/grpc.health.v1.Health/Check"]);

/** Returns a check that throws UNAUTHENTICATED unless the call carries the token. */
export function tokenChecker(options: SecurityOptions = {}): (path: string, metadata: grpc.Metadata) => void {
  const token = options.authToken;
  if (!token) return () => undefined;
  registerSecret(token);
  const expected = Buffer.from(`Bearer ${token}`);
  return (path, metadata) => {
    if (UNAUTHENTICATED_PATHS.has(path)) return;
    if (!sameSecret(String(metadata.get("authorization")[0] ?? ""), expected)) {
      throw new ServiceError(Code.UNAUTHENTICATED, "missing or wrong token: send metadata `authorization: Bearer <token>`");
    }
  };
}

const COOKIE = "streamserve_token";

/**
 * The HTTP side of the token: undefined when no token is set. /healthz is open; /metrics follows
 * `metrics`; everything else takes `authorization: Bearer <token>`, the cookie a login stored, or
 * a `?token=` handoff (which sets the cookie and redirects to the same address without it).
 */
export function httpGuard(options: SecurityOptions = {}): HttpGuard | undefined {
  const token = options.authToken;
  if (!token) return undefined;
  registerSecret(token);
  const metrics = options.metrics ?? "token";
  if (typeof metrics === "object") registerSecret(metrics.token);
  return (req, res, url) => {
    if (url.pathname === "/healthz") return true;
    // The REST inference API checks the same token itself (its probes excepted) and answers in the protocol's JSON.
    if (url.pathname === "/v2" || url.pathname.startsWith("/v2/")) return true;
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (url.pathname === "/metrics") {
      if (metrics === "open") return true;
      const expected = typeof metrics === "object" ? metrics.token : token;
      if (sameSecret(bearer, expected)) return true;
      sendText(res, 401, "unauthorized: send `authorization: Bearer <metrics token>`\n");
      return false;
    }
    if (sameSecret(bearer, token) || sameSecret(cookie(req, COOKIE), token)) return true;
    const handoff = url.searchParams.get("token");
    if (handoff !== null && sameSecret(handoff, token)) {
      url.searchParams.delete("token");
      res.writeHead(303, {
        "set-cookie": `${COOKIE}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`,
        location: `${url.pathname}${url.search}`,
        "cache-control": "no-store",
      });
      res.end();
      return false;
    }
    unauthorized(req, res, url, handoff !== null);
    return false;
  };
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) {
      try {
        return decodeURIComponent(v.join("="));
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function unauthorized(req: IncomingMessage, res: ServerResponse, url: URL, wrong: boolean): void {
  const wantsPage = req.method === "GET" && !url.pathname.startsWith("/api/") && (req.headers.accept ?? "").includes("text/html");
  if (!wantsPage) {
    res.setHeader("www-authenticate", 'Bearer realm="streamserve"');
    sendJson(res, 401, { error: "unauthorized: send `authorization: Bearer <token>`, or open the dashboard with ?token=<token>" });
    return;
  }
  // The login prompt: a GET form whose ?token= is the handoff above.
  sendText(
    res,
    401,
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>streamserve: sign in</title></head>
<body style="font:14px system-ui,sans-serif;margin:15vh auto;max-width:360px">
<h1 style="font-size:18px">streamserve monitor</h1>
${wrong ? '<p style="color:#d6336c">That token is not right.</p>' : "<p>This server needs its access token (the one in <code>--auth-token-file</code>).</p>"}
<form method="get" action="${url.pathname === "/" ? "/" : "/dashboard"}"><input name="token" type="password" autocomplete="current-password" autofocus required style="width:100%;padding:6px">
<button style="margin-top:8px">Sign in</button></form></body></html>`,
    "text/html; charset=utf-8",
  );
}
