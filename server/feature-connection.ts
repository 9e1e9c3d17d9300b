// The serving feature read's connection to one Redis on the hand-written RESP client (lib/resp.ts;
// ioredis costs ~10x its client CPU per command), with what the serving ioredis client had: it fails
// fast while Redis is down (reconnect attempts backed off up to 2 s, never given up) and a read not
// answered within the command timeout drops the connection, failing what is in flight, so that a
// stalled Redis cannot pile up reads. Invariant: a read either gets its replies or fails, soon.
import { connectResp } from "../lib/resp-client.js";
import { RespConnectionError, type RespCommand, type RespConnection, type RespRawReply, type RespReply } from "../lib/resp.js";
import { redactUrl, type Logger } from "../lib/logger.js";
import { fastPathChoice } from "../lib/fast-paths.js";
import { isCluster, type Redis } from "../lib/redis.js";

export class FeatureConnection {
  private conn: RespConnection;
  /** Start times of the sends in flight, oldest first (replies come back in order). */
  private readonly inFlight: number[] = [];
  private timer?: NodeJS.Timeout;
  private failures = 0;
  private downUntil = 0;
  private down = false;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly log: Logger,
    private readonly commandTimeoutMs = 100,
  ) {
    this.conn = this.open();
  }

  /**
   * Sends the commands in one write; one reply per command (error replies as RespError values).
   * With `bulkAsBytes`, top-level bulk replies may be Buffers (see RespSendOptions).
   */
  send(commands: readonly RespCommand[], options: { bulkAsBytes: true }): Promise<RespRawReply[]>;
  send(commands: readonly RespCommand[]): Promise<RespReply[]>;
  async send(commands: readonly RespCommand[], options?: { bulkAsBytes: true }): Promise<RespRawReply[]> {
    if (this.closed) throw new RespConnectionError("the feature connection is closed");
    if (this.downUntil > Date.now()) throw new RespConnectionError("Redis unavailable (reconnecting)");
    const conn = this.conn;
    const started = performance.now();
    this.inFlight.push(started);
    this.timer ??= setTimeout(() => this.checkTimeouts(), this.commandTimeoutMs).unref();
    try {
      const replies: RespRawReply[] = options ? await conn.send(commands, options) : await conn.send(commands);
      if (this.down) this.log.info({ url: redactUrl(this.url) }, "Redis back");
      this.down = false;
      this.failures = 0;
      return replies;
    } catch (err) {
      if (err instanceof RespConnectionError && conn === this.conn) this.failed(err);
      throw err;
    } finally {
      if (conn === this.conn) this.inFlight.shift();
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.conn.close();
  }

  private open(): RespConnection {
    return connectResp(this.url, { name: "streamserve", connectTimeoutMs: 2000 });
  }

  private failed(err: Error): void {
    if (!this.down) this.log.warn({ err: err.message, url: redactUrl(this.url) }, "Redis unavailable");
    this.down = true;
    this.failures++;
    this.downUntil = Date.now() + Math.min(50 * this.failures, 2000);
  }

  /** The oldest send in flight past the timeout: drop the connection (its sends fail), the next send dials anew. */
  private checkTimeouts(): void {
    this.timer = undefined;
    const oldest = this.inFlight[0];
    if (oldest === undefined || this.closed) return;
    const waited = performance.now() - oldest;
    if (waited < this.commandTimeoutMs) {
      this.timer = setTimeout(() => this.checkTimeouts(), this.commandTimeoutMs - waited).unref();
      return;
    }
    const stale = this.conn;
    this.inFlight.length = 0;
    this.conn = this.open();
    this.failed(new RespConnectionError(`Redis did not answer within ${this.commandTimeoutMs} ms`));
    stale.close();
  }
}

/** The serving feature read's client: the RESP connection for one Redis, ioredis for a cluster or with --redis-client ioredis. */
export function featureSource(url: string, ioredisClient: Redis, log: Logger): Redis | FeatureConnection {
  if (isCluster(ioredisClient) || fastPathChoice("redisClient") === "ioredis") return ioredisClient;
  const conn = new FeatureConnection(url, log);
  // Connect now, not on the first Recommend (whose 100 ms budget would include the dial).
  conn.send([["PING"]]).catch(() => undefined);
  return conn;
}
