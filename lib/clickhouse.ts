// ClickHouse for the offline half: a server when CLICKHOUSE_URL is set, otherwise the embedded
// chDB engine in the data directory. chDB binds one data path per process, so embedded mode suits
// `streamserve up` (whose analytics process holds it for the sink, trainer and monitor); split
// deployments point CLICKHOUSE_URL at a server. Opening applies pending migrations.
// The embedded engine's thread pools are bounded (EngineLimits) so that it never takes every core
// of a machine that also serves requests.
import { mkdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { createClient, type ClickHouseClient } from "@clickhouse/client";
import type { Config } from "./config.js";
import type { Logger } from "./logger.js";
import { redactUrl } from "./logger.js";
import { MIGRATIONS, type Migration } from "./clickhouse-migrations.js";

export type { ClickHouseClient };

export interface ClickHouse {
  client: ClickHouseClient;
  database: string;
  /** "embedded" (chDB in dataDir) or "server" (CLICKHOUSE_URL). */
  mode: "embedded" | "server";
  close(): Promise<void>;
}

/** Bounds on the embedded engine's threads. A ClickHouse server is configured on its own side. */
export interface EngineLimits {
  /** Threads one query may use (`max_threads`). @default half the CPUs, at least 1 */
  maxThreads?: number;
  /** Threads of one INSERT ... SELECT (`max_insert_threads`). @default 1 */
  maxInsertThreads?: number;
  /** Background merge and mutation threads (`background_pool_size`). @default 2 */
  backgroundPoolSize?: number;
  /** Threads of the other background pools (common, schedule, move, fetches). @default 2 */
  otherPoolSize?: number;
}

export function resolveEngineLimits(limits: EngineLimits = {}): Required<EngineLimits> {
  return {
    maxThreads: limits.maxThreads ?? Math.max(1, Math.floor(availableParallelism() / 2)),
    maxInsertThreads: limits.maxInsertThreads ?? 1,
    backgroundPoolSize: limits.backgroundPoolSize ?? 2,
    otherPoolSize: limits.otherPoolSize ?? 2,
  };
}

/**
 * Server-level settings exist only as engine arguments at connect time, which chdb's connection
 * factory does not forward. chDB shares one engine between the connections to a data directory and
 * starts it with the first one's arguments, so a bare Session opened first, with the arguments, sets
 * them; it stays open as long as the client. test/lib/clickhouse-limits.test.ts checks the engine
 * reports them.
 */
function engineArgs(l: Required<EngineLimits>): string[] {
  return [
    `--background_pool_size=${l.backgroundPoolSize}`,
    `--background_common_pool_size=${l.otherPoolSize}`,
    `--background_schedule_pool_size=${Math.max(2, l.otherPoolSize)}`,
    `--background_move_pool_size=${Math.max(1, Math.floor(l.otherPoolSize / 2))}`,
    `--background_fetches_pool_size=${Math.max(1, Math.floor(l.otherPoolSize / 2))}`,
  ];
}

export async function openClickHouse(
  config: Pick<Config, "clickhouseUrl" | "clickhouseDatabase" | "dataDir">,
  log: Logger,
  migrations: Migration[] = MIGRATIONS,
  limits: EngineLimits = {},
): Promise<ClickHouse> {
  const database = config.clickhouseDatabase;
  let client: ClickHouseClient;
  let mode: ClickHouse["mode"];
  let release = () => undefined as void;
  if (config.clickhouseUrl) {
    mode = "server";
    const bootstrap = createClient({ url: config.clickhouseUrl });
    await bootstrap.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(database)}` });
    await bootstrap.close();
    client = createClient({ url: config.clickhouseUrl, database, clickhouse_settings: { date_time_input_format: "best_effort" } });
    log.info({ url: redactUrl(config.clickhouseUrl), database }, "using ClickHouse server");
  } else {
    mode = "embedded";
    const path = join(config.dataDir, "clickhouse");
    mkdirSync(path, { recursive: true });
    // Loaded lazily: a deployment that talks to a server never loads the native engine.
    const [{ createChdbConnection }, { Session }] = await Promise.all([import("chdb/connection"), import("chdb")]);
    const l = resolveEngineLimits(limits);
    const engine = new Session(path, { connectionArgs: engineArgs(l) });
    release = () => engine.close();
    client = createClient({
      connection: createChdbConnection({ path }),
      clickhouse_settings: { date_time_input_format: "best_effort", max_threads: l.maxThreads, max_insert_threads: l.maxInsertThreads },
    } as never) as ClickHouseClient;
    // The embedded engine ignores the client's `database` option but keeps session state, so
    // `USE` makes unqualified table names resolve in our database for every later query.
    // (Settings persist the same way: per-query clickhouse_settings stay set on this client.)
    await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(database)}` });
    await client.command({ query: `USE ${quoteIdent(database)}` });
    log.info({ path, database, limits: l }, "using embedded ClickHouse (chDB)");
  }
  await migrate(client, migrations, log);
  return {
    client,
    database,
    mode,
    async close() {
      await client.close();
      release();
    },
  };
}

export async function migrate(client: ClickHouseClient, migrations: Migration[], log: Logger): Promise<void> {
  await client.command({
    query: `CREATE TABLE IF NOT EXISTS schema_migrations (
      version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
    ) ENGINE = ReplacingMergeTree ORDER BY version`,
  });
  const rows = await (await client.query({ query: "SELECT version FROM schema_migrations FINAL", format: "JSONEachRow" })).json<{ version: number | string }>();
  const applied = new Set(rows.map((r) => Number(r.version)));
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (applied.has(m.version)) continue;
    for (const statement of m.statements) await client.command({ query: statement });
    await client.insert({ table: "schema_migrations", values: [{ version: m.version, name: m.name }], format: "JSONEachRow" });
    log.info({ version: m.version, name: m.name }, "applied ClickHouse migration");
  }
}

export function quoteIdent(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`invalid ClickHouse identifier "${name}"`);
  return name;
}

/** Runs a query and returns its rows as objects. */
export async function queryRows<T>(ch: ClickHouse | ClickHouseClient, query: string, params?: Record<string, unknown>): Promise<T[]> {
  const client = "client" in ch ? ch.client : ch;
  const result = await client.query({ query, query_params: params, format: "JSONEachRow" });
  return result.json<T>();
}
