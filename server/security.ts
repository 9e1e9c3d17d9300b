// Transport security and authentication, both off by default for local use: TLS with a server
// certificate (and optionally required client certificates), and a bearer token checked on every
// RPC except health (load balancers and probes carry no token).
import { readFileSync } from "node:fs";
import { timingSafeEqual } from "node:crypto";
import { grpc, ServiceError, Code } from "../lib/grpc.js";
import { registerSecret } from "../lib/redact.js";

export interface SecurityOptions {
  /** PEM files for TLS. Without them the server speaks plaintext. */
  tlsCert?: string;
  tlsKey?: string;
  /** CA bundle that client certificates must chain to; set to require client certificates (mTLS). */
  tlsClientCa?: string;
  /** Token clients send as `authorization: Bearer <token>`. Unset: no authentication. */
  authToken?: string;
}

export function serverCredentials(options: SecurityOptions = {}): grpc.ServerCredentials {
  if (!options.tlsCert && !options.tlsKey) return grpc.ServerCredentials.createInsecure();
  if (!options.tlsCert || !options.tlsKey) throw new Error("TLS needs both --tls-cert and --tls-key");
  const ca = options.tlsClientCa ? readFileSync(options.tlsClientCa) : null;
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: readFileSync(options.tlsCert), private_key: readFileSync(options.tlsKey) }], Boolean(ca));
}

const UNAUTHENTICATED_PATHS = new Set(["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"]);

/** Returns a check that throws UNAUTHENTICATED unless the call carries the token. */
export function tokenChecker(options: SecurityOptions = {}): (path: string, metadata: grpc.Metadata) => void {
  const token = options.authToken;
  if (!token) return () => undefined;
  registerSecret(token);
  const expected = Buffer.from(`Bearer ${token}`);
  return (path, metadata) => {
    if (UNAUTHENTICATED_PATHS.has(path)) return;
    const given = Buffer.from(String(metadata.get("authorization")[0] ?? ""));
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new ServiceError(Code.UNAUTHENTICATED, "missing or wrong token: send metadata `authorization: Bearer <token>`");
    }
  };
}
