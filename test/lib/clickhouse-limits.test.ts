// The embedded engine's thread pools are bounded: the engine itself reports the limits openClickHouse
// sets (server settings through the engine arguments, query settings on every query).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openClickHouse, queryRows } from "../../lib/clickhouse.js";
import { createLogger } from "../../lib/logger.js";

test("the embedded engine runs with bounded query threads and background pools", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "streamserve-limits-"));
  const ch = await openClickHouse({ clickhouseUrl: undefined, clickhouseDatabase: "streamserve", dataDir }, createLogger("silent"), undefined, {
    maxThreads: 1,
    backgroundPoolSize: 1,
    otherPoolSize: 1,
  });
  try {
    const [q] = await queryRows<{ mt: string | number; mit: string | number }>(
      ch,
      "SELECT getSetting('max_threads') AS mt, getSetting('max_insert_threads') AS mit",
    );
    assert.equal(Number(q!.mt), 1);
    assert.equal(Number(q!.mit), 1);
    const server = await queryRows<{ name: string; value: string }>(
      ch,
      "SELECT name, value FROM system.server_settings WHERE name IN ('background_pool_size', 'background_common_pool_size')",
    );
    assert.deepEqual(Object.fromEntries(server.map((r) => [r.name, Number(r.value)])), {
      background_pool_size: 1,
      background_common_pool_size: 1,
    });
    // The migrations ran and an insert works under the bounds.
    await ch.client.insert({ table: "schema_migrations", values: [{ version: 999_999, name: "limits-test" }], format: "JSONEachRow" });
    const [n] = await queryRows<{ n: string | number }>(ch, "SELECT count() AS n FROM schema_migrations WHERE version = 999999");
    assert.equal(Number(n!.n), 1);
  } finally {
    await ch.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
