// The features store's Redis client on ioredis: the library path beside lib/resp.ts, behind the same
// RespConnection interface (chosen with --redis-client ioredis). Invariant, as there: replies in
// command order, and a lost connection fails what is in flight rather than resending it on a new
// connection, where a WATCH it depends on no longer holds.
// ioredis is loaded only when such a connection is made: loading it defines a String subclass
// (its RESP3 VerbatimString), after which V8 runs every s.charCodeAt() several times slower,
// and the store thread's hand-written encoder is made of those.
import { createRequire } from "node:module";
import type { Redis, ReplyError as IoredisReplyError } from "ioredis";
import { ioredisTargetOptions, parseRedisUrl } from "./redis-url.js";
import { RespConnectionError, RespError, type RespCommand, type RespConnection, type RespOptions, type RespReply } from "./resp.js";

type Ioredis = { Redis: typeof Redis; ReplyError: typeof IoredisReplyError };
let ioredis: Ioredis | undefined;
const loadIoredis = (): Ioredis => (ioredis ??= createRequire(import.meta.url)("ioredis") as Ioredis);

export class IoredisRespConnection implements RespConnection {
  private readonly redis: Redis;
  private readonly ReplyError = loadIoredis().ReplyError;
  private connecting?: Promise<void>;
  private dials = 0;
  private closed = false;
  private lastError?: Error;

  constructor(url: string, options: RespOptions = {}) {
    const target = ioredisTargetOptions(parseRedisUrl(url));
    this.redis = new (loadIoredis().Redis)({
      ...target,
      connectTimeout: options.connectTimeoutMs ?? target.connectTimeout,
      connectionName: options.name ?? "streamserve",
      // RESP2, as the hand-written client speaks it: the same reply shapes (RESP3 nests WITHSCORES pairs).
      protocol: 2,
      // Connect on the first send and again on the send after a loss, never by itself; nothing
      // queued while disconnected nor resent after.
      lazyConnect: true,
      retryStrategy: () => null,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
    });
    this.redis.on("ready", () => this.dials++);
    // Each send reports its own failure; a refused AUTH arrives here before connect() fails.
    this.redis.on("error", (err: Error) => (this.lastError = err));
  }

  get connection(): number {
    return this.dials;
  }

  async send(commands: readonly RespCommand[], options: { onConnection?: number } = {}): Promise<RespReply[]> {
    if (commands.length === 0) return [];
    await this.connected();
    if (options.onConnection !== undefined && options.onConnection !== this.dials) {
      throw new RespConnectionError("the Redis connection was replaced since the commands it depends on");
    }
    const pipeline = this.redis.pipeline();
    for (const c of commands) {
      if ("bytes" in c) for (const [name, ...args] of decodeCommands(c.bytes, c.count)) pipeline.call(name!.toString(), ...args);
      else pipeline.call(String(c[0]), ...c.slice(1));
    }
    const results = (await pipeline.exec()) ?? [];
    return results.map(([err, reply]) => {
      if (!err) return fromIoredis(reply);
      if (err instanceof this.ReplyError) return new RespError(err.message);
      throw new RespConnectionError(`the Redis connection was lost: ${err.message}`, { cause: err });
    });
  }

  close(): void {
    this.closed = true;
    this.redis.disconnect();
  }

  private async connected(): Promise<void> {
    if (this.closed) throw new RespConnectionError("the Redis connection was closed");
    if (this.redis.status === "ready") return;
    this.lastError = undefined;
    this.connecting ??= this.redis
      .connect()
      .catch((failed: Error) => {
        const err = this.lastError ?? failed;
        const why = err instanceof this.ReplyError ? `Redis refused the connection: ${err.message}` : `cannot connect to Redis: ${err.message}`;
        throw new RespConnectionError(why, { cause: err });
      })
      .finally(() => (this.connecting = undefined));
    await this.connecting;
  }
}

/** An ioredis reply as RespReply: errors inside a transaction's reply become RespError values. */
function fromIoredis(reply: unknown): RespReply {
  if (Array.isArray(reply)) return reply.map(fromIoredis);
  if (reply instanceof Error) return new RespError(reply.message);
  if (reply === null || typeof reply === "string" || typeof reply === "number") return reply;
  return String(reply);
}

/** Splits encoded commands (a RespWriter's bytes: arrays of bulk strings) back into argument lists. */
export function decodeCommands(bytes: Uint8Array, count: number): Buffer[][] {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Buffer[][] = [];
  let pos = 0;
  const header = (type: number): number => {
    const cr = buf.indexOf(13, pos);
    if (buf[pos] !== type || cr === -1) throw new Error(`encoded commands are not RESP arrays of bulk strings (at byte ${pos})`);
    const n = Number(buf.toString("latin1", pos + 1, cr));
    pos = cr + 2;
    return n;
  };
  while (pos < buf.length) {
    const args: Buffer[] = [];
    for (let n = header(0x2a); n > 0; n--) {
      const len = header(0x24);
      args.push(buf.subarray(pos, pos + len));
      pos += len + 2;
    }
    out.push(args);
  }
  if (out.length !== count) throw new Error(`encoded commands hold ${out.length} commands, not the ${count} they claim`);
  return out;
}
