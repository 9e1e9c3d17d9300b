// A lean Redis connection for the features worker's write path: a whole batch of commands goes
// out in one socket write and the replies are parsed here, with no object or promise per command.
// ioredis spends ~13 µs of client CPU per command on our machines (more than Redis spends
// executing it), and a batch of 2000 events is ~4000 commands; this costs ~1–4 µs. Everything
// that is not that hot path uses ioredis (lib/redis.ts).
//
// Single Redis only (no Cluster redirections). redis:// and rediss:// URLs with user, password
// and database, as ioredis reads them. A lost connection fails the commands in flight; the next
// send connects again, so the caller's retry is the reconnect loop.
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";

export type RespArg = string | number;
/**
 * A command as its arguments, or already encoded (`resp`, holding `count` commands): the hot
 * path builds its most repeated commands from pre-encoded pieces (see `bulk`).
 */
export type RespCommand = readonly RespArg[] | { readonly resp: string; readonly count: number };
/** A reply: simple/bulk string, integer, null (nil), array, or a Redis error as a value. */
export type RespReply = string | number | null | RespError | RespReply[];

/** An error reply from Redis (WRONGTYPE, OOM, ...), returned in place of that command's reply. */
export class RespError extends Error {
  override name = "RespError";
}

/** The connection failed or was lost: the commands in flight have no replies. */
export class RespConnectionError extends Error {
  override name = "RespConnectionError";
}

export interface RespOptions {
  /** @default 5000 */
  connectTimeoutMs?: number;
  /** CLIENT SETNAME, shown by CLIENT LIST. @default "streamserve" */
  name?: string;
}

interface Waiter {
  left: number;
  replies: RespReply[];
  resolve(replies: RespReply[]): void;
  reject(err: Error): void;
}

export class RespConnection {
  private socket?: Socket;
  private connecting?: Promise<Socket>;
  private readonly waiters: Waiter[] = [];
  private rest?: Buffer;
  /** Arrays being filled, innermost last: the parser resumes inside them when more bytes come. */
  private readonly arrays: { items: RespReply[]; left: number }[] = [];
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly options: RespOptions = {},
  ) {}

  /** Sends the commands in one write; resolves with one reply per command, in order. */
  async send(commands: readonly RespCommand[]): Promise<RespReply[]> {
    if (commands.length === 0) return [];
    const socket = await this.connected();
    return this.write(socket, commands);
  }

  /** Closes the connection; commands still in flight fail. */
  close(): void {
    this.closed = true;
    this.socket?.destroy();
    this.socket = undefined;
  }

  private write(socket: Socket, commands: readonly RespCommand[]): Promise<RespReply[]> {
    let count = 0;
    for (const c of commands) count += "resp" in c ? c.count : 1;
    return new Promise((resolve, reject) => {
      this.waiters.push({ left: count, replies: [], resolve, reject });
      // The string goes to the socket as is: Node encodes it straight into the write request,
      // one copy fewer than a Buffer of a batch's megabyte of commands.
      socket.write(encodeCommands(commands), "utf8");
    });
  }

  private connected(): Promise<Socket> {
    if (this.closed) return Promise.reject(new RespConnectionError("the Redis connection was closed"));
    if (this.socket) return Promise.resolve(this.socket);
    this.connecting ??= this.dial().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async dial(): Promise<Socket> {
    const target = parseRedisUrl(this.url);
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = target.tls
        ? tlsConnect({ host: target.host, port: target.port, servername: target.host })
        : netConnect({ host: target.host, port: target.port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new RespConnectionError(`Redis at ${target.host}:${target.port} did not answer within ${this.options.connectTimeoutMs ?? 5000} ms`));
      }, this.options.connectTimeoutMs ?? 5000);
      s.once(target.tls ? "secureConnect" : "connect", () => {
        clearTimeout(timer);
        s.off("error", onError);
        resolve(s);
      });
      const onError = (err: Error) => {
        clearTimeout(timer);
        reject(new RespConnectionError(`cannot connect to Redis at ${target.host}:${target.port}: ${err.message}`, { cause: err }));
      };
      s.once("error", onError);
    });
    socket.setNoDelay(true);
    this.rest = undefined;
    this.arrays.length = 0;
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    const lost = (err?: Error) => {
      if (this.socket === socket) this.socket = undefined;
      this.failAll(new RespConnectionError(`the Redis connection was lost${err ? `: ${err.message}` : ""}`, { cause: err }));
    };
    socket.on("error", lost);
    socket.on("close", () => lost());
    const hello: RespArg[][] = [];
    if (target.password !== undefined) hello.push(target.user ? ["AUTH", target.user, target.password] : ["AUTH", target.password]);
    if (target.db) hello.push(["SELECT", target.db]);
    hello.push(["CLIENT", "SETNAME", this.options.name ?? "streamserve"]);
    const replies = await this.write(socket, hello);
    const failed = replies.find((r) => r instanceof RespError);
    if (failed) {
      socket.destroy();
      throw new RespConnectionError(`Redis refused the connection: ${(failed as RespError).message}`);
    }
    if (this.closed) {
      socket.destroy();
      throw new RespConnectionError("the Redis connection was closed");
    }
    this.socket = socket;
    return socket;
  }

  private failAll(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.rest = undefined;
    this.arrays.length = 0;
  }

  private onData(chunk: Buffer): void {
    const buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    let pos: number;
    try {
      pos = this.parse(buf);
    } catch (err) {
      this.socket?.destroy(err as Error);
      return;
    }
    // What is left is at most the start of one element: arrays already parsed live in `arrays`.
    this.rest = pos < buf.length ? buf.subarray(pos) : undefined;
  }

  /** Parses every complete element in buf; returns where the first incomplete one starts. */
  private parse(buf: Buffer): number {
    let pos = 0;
    while (pos < buf.length) {
      const cr = buf.indexOf(13, pos);
      if (cr === -1 || cr + 1 >= buf.length) break;
      const type = buf[pos];
      let next = cr + 2;
      let value: RespReply;
      switch (type) {
        case 0x2b: // +
          // A transaction answers +QUEUED per command: no string built for the common replies.
          value = cr - pos === 7 && buf[pos + 1] === 0x51 ? "QUEUED" : cr - pos === 3 && buf[pos + 1] === 0x4f ? "OK" : buf.toString("utf8", pos + 1, cr);
          break;
        case 0x2d: // -
          value = new RespError(buf.toString("utf8", pos + 1, cr));
          break;
        case 0x3a: // :
          value = readInteger(buf, pos + 1, cr);
          break;
        case 0x24: {
          // $
          const len = readInteger(buf, pos + 1, cr);
          if (len < 0) {
            value = null;
            break;
          }
          if (next + len + 2 > buf.length) return pos;
          value = buf.toString("utf8", next, next + len);
          next += len + 2;
          break;
        }
        case 0x2a: {
          // *
          const len = readInteger(buf, pos + 1, cr);
          if (len > 0) {
            this.arrays.push({ items: [], left: len });
            pos = next;
            continue;
          }
          value = len < 0 ? null : [];
          break;
        }
        default:
          throw new RespConnectionError(`Redis sent a reply this client cannot read (type byte ${type})`);
      }
      pos = next;
      this.emit(value);
    }
    return pos;
  }

  private emit(value: RespReply): void {
    let v = value;
    while (this.arrays.length > 0) {
      const top = this.arrays[this.arrays.length - 1]!;
      top.items.push(v);
      if (--top.left > 0) return;
      this.arrays.pop();
      v = top.items;
    }
    const w = this.waiters[0];
    if (!w) return; // a reply nobody waits for (cannot happen short of a protocol error)
    w.replies.push(v);
    if (--w.left === 0) {
      this.waiters.shift();
      w.resolve(w.replies);
    }
  }
}

/** The decimal integer in buf[from, to): what RESP headers and integer replies hold. */
function readInteger(buf: Buffer, from: number, to: number): number {
  const negative = buf[from] === 0x2d;
  let n = 0;
  for (let i = negative ? from + 1 : from; i < to; i++) n = n * 10 + (buf[i]! - 0x30);
  return negative ? -n : n;
}

/** The RESP encoding of commands (a string: the socket encodes it to UTF-8 as it writes). */
export function encodeCommands(commands: readonly RespCommand[]): string {
  let s = "";
  for (const c of commands) {
    if ("resp" in c) {
      s += c.resp;
      continue;
    }
    s += "*" + c.length + "\r\n";
    for (const a of c) {
      if (typeof a === "number") {
        const v = numberString(a);
        s += "$" + v.length + "\r\n" + v + "\r\n";
      } else s += "$" + Buffer.byteLength(a) + "\r\n" + a + "\r\n";
    }
  }
  return s;
}

/** One argument, RESP-encoded: the pieces of pre-encoded commands. */
export function bulk(a: RespArg): string {
  const v = typeof a === "number" ? numberString(a) : a;
  return "$" + (typeof a === "number" ? v.length : Buffer.byteLength(v)) + "\r\n" + v + "\r\n";
}

/** The RESP header of a command with `args` arguments, the command name included. */
export function commandHeader(name: string, args: number): string {
  return "*" + args + "\r\n" + bulk(name);
}

const SMALL_INTS = Array.from({ length: 4096 }, (_, i) => String(i));
const SMI_MAX = 2 ** 31 - 1;

/**
 * String(x), faster for the numbers a feature pipeline writes most: small counts (cached) and
 * epoch milliseconds. V8 keeps integers above 2^31 as doubles and prints them with its general
 * shortest-form algorithm (~0.3 µs here); printed as two small integers they cost a fifth.
 */
export function numberString(x: number): string {
  if (Number.isInteger(x) && x >= 0) {
    if (x < 4096) return SMALL_INTS[x]!;
    if (x > SMI_MAX && x <= Number.MAX_SAFE_INTEGER) {
      const hi = Math.floor(x / 1e6);
      if (hi <= SMI_MAX) {
        const lo = x - hi * 1e6;
        return String(hi) + (lo < 10 ? "00000" : lo < 100 ? "0000" : lo < 1000 ? "000" : lo < 10000 ? "00" : lo < 100000 ? "0" : "") + lo;
      }
    }
  }
  return String(x);
}

interface RedisTarget {
  host: string;
  port: number;
  tls: boolean;
  user?: string;
  password?: string;
  db: number;
}

export function parseRedisUrl(url: string): RedisTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RespConnectionError(`REDIS_URL "${url}" is not a URL: use redis://[user:password@]host[:port][/db]`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
    throw new RespConnectionError(`REDIS_URL "${url}": the scheme must be redis:// or rediss://`);
  }
  const db = u.pathname && u.pathname !== "/" ? Number(u.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0) throw new RespConnectionError(`REDIS_URL "${url}": the database must be a number`);
  const target: RedisTarget = { host: u.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1", port: u.port ? Number(u.port) : 6379, tls: u.protocol === "rediss:", db };
  // ioredis's reading: redis://:password@host (no user) and redis://user:password@host.
  if (u.password) {
    target.password = decodeURIComponent(u.password);
    if (u.username) target.user = decodeURIComponent(u.username);
  } else if (u.searchParams.get("password")) {
    target.password = u.searchParams.get("password")!;
  }
  return target;
}
