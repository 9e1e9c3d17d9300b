// ClickHouse for the offline half: a server when CLICKHOUSE_URL is set, otherwise the embedded
// chDB engine in the data directory. chDB binds one data path per process, so embedded mode suits
// `streamserve up` (every part in one process); split deployments point CLICKHOUSE_URL at a server.
// Opening applies pending migrations.
import { mkdirSync } from "node:fs";
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

export async function openClickHouse(
  config: Pick<Config, "clickhouseUrl" | "clickhouseDatabase" | "dataDir">,
  log: Logger,
  migrations: Migration[] = MIGRATIONS,
): Promise<ClickHouse> {
  const database = config.clickhouseDatabase;
  let client: ClickHouseClient;
  let mode: ClickHouse["mode"];
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
    const { createChdbConnection } = await import("chdb/connection");
    client = createClient({
      connection: createChdbConnection({ path }),
      clickhouse_settings: { date_time_input_format: "best_effort" },
    } as never) as ClickHouseClient;
    // The embedded engine ignores the client's `database` option but keeps session state, so
    // `USE` makes unqualified table names resolve in our database for every later query.
    // (Settings persist the same way: per-query clickhouse_settings stay set on this client.)
    await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(database)}` });
    await client.command({ query: `USE ${quoteIdent(database)}` });
    log.info({ path, database }, "using embedded ClickHouse (chDB)");
  }
  await migrate(client, migrations, log);
  return { client, database, mode, close: () => client.close() };
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
