// The HTTP side of a process: /healthz, /metrics and whatever the parts running in it mount
// (the monitor's dashboard and JSON API). One server per process, shared by the parts of `up`;
// `proxyTo` forwards routes to another process's server (`up`'s analytics process).
import { timingSafeEqual } from "node:crypto";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "./logger.js";

export type HttpHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

/** Runs before every route: true lets the request through; false means it has answered (401). */
export type HttpGuard = (req: IncomingMessage, res: ServerResponse, url: URL) => boolean;

export class HttpServer {
  private routes = new Map<string, HttpHandler>();
  private prefixRoutes: [string, string, HttpHandler][] = [];
  private guard: HttpGuard | undefined;
  private server: Server;

  constructor(private readonly log: Logger) {
    // dispatch never rejects; the catch is the last fence so that no request can become an
    // unhandled rejection (which would end the process and every part of `up` with it).
    this.server = createServer((req, res) => {
      this.dispatch(req, res).catch((err: unknown) => this.failed(res, err, req.url));
    });
    this.server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
      if (socket.writable && !socket.writableEnded) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
      else socket.destroy();
      this.log.debug({ code: err.code }, "malformed HTTP request");
    });
  }

  /** Exact path, or a prefix when the path ends with "*". */
  route(method: string, path: string, handler: HttpHandler): void {
    if (path.endsWith("*")) this.prefixRoutes.push([method, path.slice(0, -1), handler]);
    else this.routes.set(`${method} ${path}`, handler);
  }

  /** Sets the check every request passes before routing (authentication). */
  setGuard(guard: HttpGuard | undefined): void {
    this.guard = guard;
  }

  listen(port: number, host = "0.0.0.0"): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        const addr = this.server.address();
        resolve(typeof addr === "object" && addr ? addr.port : port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = requestUrl(req.url);
    if (!url) return sendText(res, 400, "bad request target: expected an origin-form path such as /metrics\n");
    if (this.guard && !this.guard(req, res, url)) return;
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "GET");
    const handler = this.routes.get(`${method} ${url.pathname}`) ?? this.prefixRoutes.find(([m, p]) => m === method && url.pathname.startsWith(p))?.[2];
    if (!handler) return sendText(res, 404, "not found\n");
    try {
      await handler(req, res, url);
    } catch (err) {
      this.failed(res, err, url.pathname);
    }
  }

  private failed(res: ServerResponse, err: unknown, path: string | undefined): void {
    this.log.error({ err, path }, "HTTP handler failed");
    if (res.writableEnded) return;
    if (!res.headersSent) sendText(res, 500, `error: ${(err as Error)?.message ?? String(err)}\n`);
    else res.end();
  }
}

/**
 * The request target as a URL on this server, or undefined when it cannot be one. Only the path
 * and query are used: an absolute-form target (`GET http://host:99999/`) would otherwise make
 * `new URL` throw on its authority.
 */
export function requestUrl(target: string | undefined): URL | undefined {
  let pathAndQuery = target || "/";
  if (!pathAndQuery.startsWith("/")) {
    const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*(.*)$/i.exec(pathAndQuery);
    if (!m) return undefined;
    pathAndQuery = m[1]?.startsWith("/") ? m[1] : `/${m[1] ?? ""}`;
  }
  try {
    // Prefixed, not resolved against a base: "//host:99999/" must stay a path, not an authority.
    return new URL(`http://localhost${pathAndQuery}`);
  } catch {
    return undefined;
  }
}

export function sendText(res: ServerResponse, status: number, body: string, contentType = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": contentType, "cache-control": "no-store" });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body), "application/json");
}

export interface ProxyOptions {
  /** The loopback port to forward to, or undefined while that server is not there. */
  port: () => number | undefined;
  /** Why nothing answers, for the 503 while `port()` is undefined. */
  unavailable: () => string;
  /** Longest wait for the whole answer. @default 60_000 */
  timeoutMs?: number;
  /** Headers added to every forwarded request (the child's secret). */
  headers?: () => Record<string, string>;
}

/**
 * A handler that forwards the request (method, path and query, headers, body) to 127.0.0.1:port and
 * streams the answer back. No server there: 503 with the reason, in JSON for /api/ paths.
 */
export function proxyTo(options: ProxyOptions): HttpHandler {
  const unavailable = (res: ServerResponse, url: URL, reason: string) => {
    res.setHeader("retry-after", "5");
    if (url.pathname.startsWith("/api/")) sendJson(res, 503, { error: reason });
    else sendText(res, 503, `${reason}\n`);
  };
  return (req, res, url) =>
    new Promise<void>((resolve) => {
      const port = options.port();
      if (port === undefined) return resolve(unavailable(res, url, options.unavailable()));
      const upstream = request(
        {
          host: "127.0.0.1",
          port,
          method: req.method,
          path: url.pathname + url.search,
          headers: { ...req.headers, ...options.headers?.(), connection: "close" },
          timeout: options.timeoutMs ?? 60_000,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          answer.once("end", resolve);
          answer.once("error", () => (res.destroy(), resolve()));
        },
      );
      upstream.once("timeout", () => upstream.destroy(new Error("timed out")));
      upstream.once("error", (err) => {
        if (!res.headersSent) unavailable(res, url, `${options.unavailable()} (${err.message})`);
        else res.destroy();
        resolve();
      });
      res.once("close", () => upstream.destroy());
      req.pipe(upstream);
    });
}

/** Whether `given` is `expected`, compared in constant time (a token, a secret; a Buffer when checked per call). */
export function sameSecret(given: string | undefined, expected: string | Buffer): boolean {
  if (given === undefined) return false;
  const a = Buffer.from(given);
  const b = typeof expected === "string" ? Buffer.from(expected) : expected;
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The header a supervised child's private HTTP port requires (its parent's secret, lib/supervisor.ts). */
export const CHILD_SECRET_HEADER = "x-streamserve-child";

/**
 * A guard for a child's private loopback port: only requests carrying the secret its parent sent
 * pass, so another local user cannot read the dashboard's data around `up`'s own token.
 */
export function childOnlyGuard(secret: string): HttpGuard {
  return (req, res) => {
    const given = req.headers[CHILD_SECRET_HEADER];
    if (sameSecret(typeof given === "string" ? given : undefined, secret)) return true;
    sendText(res, 401, `this is a private port of streamserve up: use up's own HTTP port\n`);
    return false;
  };
}
