// The HTTP side of a process: /healthz, /metrics and whatever the parts running in it mount
// (the monitor's dashboard and JSON API). One server per process, shared by the parts of `up`.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "./logger.js";

export type HttpHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

export class HttpServer {
  private routes = new Map<string, HttpHandler>();
  private prefixRoutes: [string, string, HttpHandler][] = [];
  private server: Server;

  constructor(private readonly log: Logger) {
    this.server = createServer((req, res) => void this.dispatch(req, res));
  }

  /** Exact path, or a prefix when the path ends with "*". */
  route(method: string, path: string, handler: HttpHandler): void {
    if (path.endsWith("*")) this.prefixRoutes.push([method, path.slice(0, -1), handler]);
    else this.routes.set(`${method} ${path}`, handler);
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
    const url = new URL(req.url ?? "/", "http://localhost");
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "GET");
    const handler =
      this.routes.get(`${method} ${url.pathname}`) ?? this.prefixRoutes.find(([m, p]) => m === method && url.pathname.startsWith(p))?.[2];
    if (!handler) return sendText(res, 404, "not found\n");
    try {
      await handler(req, res, url);
    } catch (err) {
      this.log.error({ err, path: url.pathname }, "HTTP handler failed");
      if (!res.headersSent) sendText(res, 500, `error: ${(err as Error).message}\n`);
      else res.end();
    }
  }
}

export function sendText(res: ServerResponse, status: number, body: string, contentType = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": contentType, "cache-control": "no-store" });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body), "application/json");
}
