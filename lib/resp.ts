// The features store's Redis client, hand-written: a batch of commands goes out in one socket write
// and the replies are parsed here, with no object or promise per command (why: docs/fast-paths.md).
// lib/resp-ioredis.ts is the same interface on ioredis, chosen with --redis-client / STREAMSERVE_REDIS_CLIENT.
// Invariant: replies come back in the order the commands went out; a lost connection fails the
// commands in flight, and the next send connects again (the caller's retry is the reconnect loop).
// Single Redis only (no Cluster redirections); URLs are read by lib/redis-url.ts.
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { parseRedisUrl, REDIS_CONNECT_TIMEOUT_MS } from "./redis-url.js";

export type RespArg = string | number;
/**
 * A command as its arguments, or commands already encoded (a RespWriter: the hot path writes
 * its batches straight into bytes).
 */
export type RespCommand = readonly RespArg[] | EncodedCommands;
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
  /** @default REDIS_CONNECT_TIMEOUT_MS (5000) */
  connectTimeoutMs?: number;
  /** CLIENT SETNAME, shown by CLIENT LIST. @default "streamserve" */
  name?: string;
}

export interface RespSendOptions {
  onConnection?: number;
  /**
   * Top-level bulk string replies may come back as the bytes (a Buffer) instead of a string, for
   * a caller that parses them itself; a client may ignore it (ioredis does), so strings stay possible.
   */
  bulkAsBytes?: boolean;
}

/** A reply of a send with `bulkAsBytes`. */
export type RespRawReply = RespReply | Buffer;

/** What the features store needs of a Redis connection; both clients implement it. */
export interface RespConnection {
  /**
   * Sends the commands in one write; resolves with one reply per command, in order (an error
   * reply is a RespError value). With `onConnection` (a `connection` read earlier), fails with a
   * RespConnectionError instead of sending on a newer connection: what that one had (a WATCH) is gone.
   */
  send(commands: readonly RespCommand[], options: RespSendOptions & { bulkAsBytes: true }): Promise<RespRawReply[]>;
  send(commands: readonly RespCommand[], options?: RespSendOptions): Promise<RespReply[]>;
  /** Which connection the next send goes out on if it is still open (they are numbered as made). */
  readonly connection: number;
  /** Closes the connection; commands still in flight fail. */
  close(): void;
}

interface Waiter {
  left: number;
  /** Top-level bulk strings as bytes (RespSendOptions.bulkAsBytes). */
  bytes: boolean;
  replies: RespReply[];
  resolve(replies: RespReply[]): void;
  reject(err: Error): void;
}

export class RespSocketConnection implements RespConnection {
  private socket?: Socket;
  /** The socket being dialled (not yet ready): close() ends it too, failing the sends waiting on it. */
  private dialling?: Socket;
  private connecting?: Promise<Socket>;
  private readonly waiters: Waiter[] = [];
  private rest?: Buffer;
  /** Arrays being filled, innermost last: the parser resumes inside them when more bytes come. */
  private readonly arrays: { items: RespReply[]; left: number }[] = [];
  private closed = false;
  /** Connections made so far: a WATCH holds only on the connection that sent it. */
  private dials = 0;

  constructor(
    private readonly url: string,
    private readonly options: RespOptions = {},
  ) {}

  send(commands: readonly RespCommand[], options: RespSendOptions & { bulkAsBytes: true }): Promise<RespRawReply[]>;
  send(commands: readonly RespCommand[], options?: RespSendOptions): Promise<RespReply[]>;
  async send(commands: readonly RespCommand[], options: RespSendOptions = {}): Promise<RespRawReply[]> {
    if (commands.length === 0) return [];
    // Connected: no await (a microtask turn per read on the request path).
    const socket = this.socket ?? (await this.connected());
    if (options.onConnection !== undefined && options.onConnection !== this.dials) {
      throw new RespConnectionError("the Redis connection was replaced since the commands it depends on");
    }
    return this.write(socket, commands, options.bulkAsBytes === true);
  }

  get connection(): number {
    return this.dials;
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
    this.dialling?.destroy();
    this.socket = undefined;
  }

  private write(socket: Socket, commands: readonly RespCommand[], bytes = false): Promise<RespReply[]> {
    let count = 0;
    for (const c of commands) count += "bytes" in c ? c.count : 1;
    return new Promise((resolve, reject) => {
      this.waiters.push({ left: count, bytes, replies: [], resolve, reject });
      // Argument lists are encoded here; encoded blocks go out as they are, all in one writev.
      socket.cork();
      let args: RespWriter | undefined;
      for (const c of commands) {
        if ("bytes" in c) {
          if (args) socket.write(args.bytes);
          args = undefined;
          socket.write(c.bytes);
        } else (args ??= new RespWriter()).args(c);
      }
      if (args) socket.write(args.bytes);
      socket.uncork();
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
    const timeoutMs = this.options.connectTimeoutMs ?? REDIS_CONNECT_TIMEOUT_MS;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = target.tls
        ? tlsConnect({ host: target.host, port: target.port, servername: target.host })
        : netConnect({ host: target.host, port: target.port });
      this.dialling = s;
      const timer = setTimeout(() => {
        s.destroy();
        reject(new RespConnectionError(`Redis at ${target.host}:${target.port} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
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
    const replies = await this.write(socket, hello).finally(() => (this.dialling = undefined));
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
    this.dials++;
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
          // A socket's chunks are never reused: the view stays valid (it keeps the chunk alive until parsed).
          value =
            this.arrays.length === 0 && this.waiters[0]?.bytes === true
              ? (buf.subarray(next, next + len) as unknown as RespReply)
              : buf.toString("utf8", next, next + len);
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

/**
 * Builds RESP commands straight into bytes. A batch of feature writes is megabytes of small
 * pieces: concatenated into one string, V8 spends ~3 ms per MB flattening it when it is written,
 * and every number printed is a string for the GC. Here integers go in as digits and strings as
 * their bytes, into one buffer that grows as needed.
 */
export class RespWriter implements EncodedCommands {
  private buf: Buffer;
  private pos = 0;
  /** Commands written. */
  count = 0;

  constructor(capacity = 16 * 1024) {
    this.buf = Buffer.allocUnsafe(Math.max(64, capacity));
  }

  /** The bytes written so far (a view of the writer's buffer: write no more once it is sent). */
  get bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  /** Starts a command of `args` arguments, its name included. */
  command(args: number): this {
    this.count++;
    this.room(24);
    this.buf[this.pos++] = 0x2a; // *
    this.pos = this.digits(args, this.pos);
    this.buf[this.pos++] = 13;
    this.buf[this.pos++] = 10;
    return this;
  }

  /** A whole command from its arguments. */
  args(a: readonly RespArg[]): this {
    this.command(a.length);
    for (const x of a) this.arg(x);
    return this;
  }

  /** One argument, a number or a string. */
  arg(x: RespArg): this {
    return typeof x === "number" ? this.number(x) : this.string(x);
  }

  /** A bulk string argument. */
  string(s: string): this {
    const n = s.length;
    this.room(3 * n + 32);
    const b = this.buf;
    let p = this.pos;
    b[p++] = 0x24; // $
    p = this.digits(n, p);
    b[p++] = 13;
    b[p++] = 10;
    // ASCII (ids, keys, digits): the length is the character count and the bytes the codes.
    let ascii = true;
    if (n <= 64) {
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c > 0x7f) {
          ascii = false;
          break;
        }
        b[p + i] = c;
      }
    } else ascii = b.write(s, p, "utf8") === n;
    if (!ascii) {
      const len = Buffer.byteLength(s);
      p = this.pos + 1;
      p = this.digits(len, p);
      b[p++] = 13;
      b[p++] = 10;
      b.write(s, p, "utf8");
      p += len;
    } else p += n;
    b[p++] = 13;
    b[p++] = 10;
    this.pos = p;
    return this;
  }

  /** A number argument, printed as String(x) would. */
  number(x: number): this {
    if (Number.isSafeInteger(x) && x >= 0) {
      this.room(40);
      const b = this.buf;
      const len = this.digitCount(x);
      let p = this.pos;
      b[p++] = 0x24;
      p = this.digits(len, p);
      b[p++] = 13;
      b[p++] = 10;
      p = this.digits(x, p, len);
      b[p++] = 13;
      b[p++] = 10;
      this.pos = p;
      return this;
    }
    return this.string(String(x));
  }

  /**
   * A bulk string composed of numbers and ASCII pieces without building it first: `beginValue`,
   * then `valueNumber` / `valueAscii`, then `endValue`.
   */
  beginValue(): number {
    // Room for the header of a value under 1000 bytes; endValue moves the value if it is longer.
    this.room(64);
    const mark = this.pos;
    this.buf[mark] = 0x24;
    this.pos = mark + 6;
    return mark;
  }

  valueNumber(x: number): this {
    this.room(40);
    if (Number.isSafeInteger(x) && x >= 0) this.pos = this.digits(x, this.pos);
    else this.valueAscii(String(x));
    return this;
  }

  /** A piece of a value known to be ASCII (a separator, a printed number). */
  valueAscii(s: string): this {
    this.room(s.length + 8);
    for (let i = 0; i < s.length; i++) this.buf[this.pos++] = s.charCodeAt(i);
    return this;
  }

  endValue(mark: number): this {
    const start = mark + 6;
    const len = this.pos - start;
    const d = this.digitCount(len);
    // `$` len CR LF takes 3 + d bytes of the 6 reserved: move the value to follow it.
    const at = mark + 3 + d;
    this.room(at - start + 2);
    const b = this.buf;
    if (at !== start) b.copyWithin(at, start, this.pos);
    let p = this.digits(len, mark + 1, d);
    b[p++] = 13;
    b[p++] = 10;
    this.pos = at + len;
    b[this.pos++] = 13;
    b[this.pos++] = 10;
    return this;
  }

  /** Pre-encoded bytes (`encodeArgs`), holding `commands` whole commands. */
  raw(bytes: Uint8Array, commands = 0): this {
    this.room(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
    this.count += commands;
    return this;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(2 * this.buf.length, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  private digitCount(x: number): number {
    let len = 1;
    for (let p = 10; x >= p && len < 16; p *= 10) len++;
    return len;
  }

  /** Writes the non-negative integer x at p (in `len` digits); returns the position after it. */
  private digits(x: number, p: number, len = this.digitCount(x)): number {
    const b = this.buf;
    let q = p + len;
    let v = x;
    do {
      const d = v % 10;
      b[--q] = 0x30 + d;
      v = (v - d) / 10;
    } while (v > 0);
    return p + len;
  }
}

/** Commands already encoded (a RespWriter's bytes), sent as they are. */
export interface EncodedCommands {
  readonly bytes: Uint8Array;
  readonly count: number;
}

/** The RESP encoding of one argument list's pieces, for templates copied into many commands. */
export function encodeArgs(...args: RespArg[]): Buffer {
  const w = new RespWriter(64);
  for (const a of args) w.arg(a);
  return Buffer.from(w.bytes);
}

/** The RESP header of a command with `args` arguments, its name included. */
export function encodeCommandHeader(name: string, args: number): Buffer {
  const w = new RespWriter(64);
  w.command(args).string(name);
  return Buffer.from(w.bytes);
}
