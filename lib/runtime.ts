// What the parts of one process share: configuration, the logger, the metrics registry, the HTTP
// server, and connections opened on first use and closed once. `streamserve up` runs every part
// on one Runtime; `serve`, `features`, ... each run one part on their own.
import { loadConfig, names, type Config, type Names } from "./config.js";
import { createLogger, type Logger } from "./logger.js";
import { connectNats, ensureStreams, type NatsConnection } from "./nats.js";
import { connectRedis, type Redis } from "./redis.js";
import { openClickHouse, type ClickHouse } from "./clickhouse.js";
import { Registry } from "./registry.js";
import { MetricsRegistry } from "./metrics.js";
import { HttpServer } from "./http.js";

/** A running piece of the platform (server, features worker, sink, trainer, monitor). */
export interface Part {
  name: string;
  /** Finishes in-flight work (drain, flush) and releases what the part opened itself. */
  stop(): Promise<void>;
}

export interface Runtime {
  config: Config;
  names: Names;
  log: Logger;
  metrics: MetricsRegistry;
  /** NATS with the EVENTS and LOGS streams ensured. */
  nats(): Promise<NatsConnection>;
  /** A Redis client that retries (for writers). */
  redis(): Redis;
  /** A Redis client that fails fast (for the request path). */
  servingRedis(): Redis;
  clickhouse(): Promise<ClickHouse>;
  registry(): Promise<Registry>;
  /** The process's HTTP server; not listening until `listenHttp`. */
  http: HttpServer;
  listenHttp(): Promise<number>;
  close(): Promise<void>;
}

export function createRuntime(overrides: Partial<Config> = {}, log?: Logger): Runtime {
  const config = loadConfig(overrides);
  const logger = log ?? createLogger(config.logLevel);
  const metrics = new MetricsRegistry();
  const http = new HttpServer(logger);
  let nats: Promise<NatsConnection> | undefined;
  let redis: Redis | undefined;
  let servingRedis: Redis | undefined;
  let clickhouse: Promise<ClickHouse> | undefined;
  let registry: Promise<Registry> | undefined;
  let httpListening = false;

  const runtime: Runtime = {
    config,
    names: names(config),
    log: logger,
    metrics,
    http,
    nats() {
      nats ??= (async () => {
        const nc = await connectNats(config.natsUrl, logger);
        try {
          await ensureStreams(nc, runtime.names);
        } catch (err) {
          // A connection nobody holds would keep reconnecting (and the process alive) forever.
          await nc.close().catch(() => undefined);
          throw err;
        }
        return nc;
      })();
      nats.catch(() => (nats = undefined)); // a failed first connect may be retried
      return nats;
    },
    redis() {
      return (redis ??= connectRedis(config.redisUrl, logger, { mode: "writer" }));
    },
    servingRedis() {
      return (servingRedis ??= connectRedis(config.redisUrl, logger, { mode: "serving" }));
    },
    clickhouse() {
      clickhouse ??= openClickHouse(config, logger);
      clickhouse.catch(() => (clickhouse = undefined));
      return clickhouse;
    },
    registry() {
      registry ??= runtime.nats().then((nc) => Registry.open(nc, runtime.names));
      registry.catch(() => (registry = undefined));
      return registry;
    },
    async listenHttp() {
      const port = await http.listen(config.httpPort, config.host);
      httpListening = true;
      logger.info({ port }, "HTTP listening (/healthz, /metrics)");
      return port;
    },
    async close() {
      if (httpListening) await http.close();
      const nc = await nats?.catch(() => undefined);
      await nc?.drain().catch(() => undefined);
      redis?.disconnect();
      servingRedis?.disconnect();
      const ch = await clickhouse?.catch(() => undefined);
      await ch?.close().catch(() => undefined);
    },
  };
  return runtime;
}
