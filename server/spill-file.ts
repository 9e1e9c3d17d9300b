// Append-only spill files for the log publisher: where logs wait while JetStream is unreachable.
//
// A file is an 8-byte magic followed by records:
//
//   u32 LE body length | u32 LE CRC-32 of body | body
//   body = u16 LE subject length, subject | u16 LE msgId length, msgId | u16 LE content-type length,
//          content type | payload (the rest of the body)
//
// The length prefix lets a reader skip from record to record; the CRC tells a record that was only
// partly written before a crash (or damaged since) from a good one. A reader stops at the first
// record that is incomplete or fails its CRC and reports how many bytes it could not use: nothing
// after such a record can be trusted to start on a record boundary.
import { crc32 } from "node:zlib";
import { open, readdir, rename, type FileHandle } from "node:fs/promises";
import { join } from "node:path";

export interface SpillRecord {
  subject: string;
  msgId: string;
  contentType: string;
  payload: Uint8Array;
}

/** A record read back from a file, with the offsets that bound it (for resuming after a failure). */
export interface StoredRecord extends SpillRecord {
  start: number;
  end: number;
}

/** A file named like a spill file whose contents are not in this format (another version, another program). */
export class SpillFormatError extends Error {
  override name = "SpillFormatError";
}

const MAGIC = Buffer.from("SSPILL01", "latin1");
const HEADER_BYTES = 8;
const MAX_FIELD_BYTES = 0xffff;
/** Larger than any NATS payload (max_payload tops out at 64 MiB): a bigger length means a damaged header. */
const MAX_BODY_BYTES = 80 * 1024 * 1024;
const READ_CHUNK_BYTES = 1024 * 1024;
const NAME = /^(\d{16})\.spill$/;

export const spillFileName = (seq: number) => `${String(seq).padStart(16, "0")}.spill`;

/** Encodes records into one buffer, so that a chunk of them costs one write call. */
export function encodeRecords(records: readonly SpillRecord[]): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (const r of records) {
    const subject = Buffer.from(r.subject, "utf8");
    const msgId = Buffer.from(r.msgId, "utf8");
    const contentType = Buffer.from(r.contentType, "utf8");
    for (const [field, bytes] of [
      ["subject", subject],
      ["msgId", msgId],
      ["contentType", contentType],
    ] as const) {
      if (bytes.length > MAX_FIELD_BYTES) throw new RangeError(`spill record ${field} is ${bytes.length} bytes, the format allows ${MAX_FIELD_BYTES}`);
    }
    const bodyLength = 6 + subject.length + msgId.length + contentType.length + r.payload.length;
    const record = Buffer.allocUnsafe(8 + bodyLength);
    let o = 8;
    o = record.writeUInt16LE(subject.length, o);
    o += subject.copy(record, o);
    o = record.writeUInt16LE(msgId.length, o);
    o += msgId.copy(record, o);
    o = record.writeUInt16LE(contentType.length, o);
    o += contentType.copy(record, o);
    record.set(r.payload, o);
    record.writeUInt32LE(bodyLength, 0);
    record.writeUInt32LE(crc32(record.subarray(8)), 4);
    parts.push(record);
    total += record.length;
  }
  return Buffer.concat(parts, total);
}

/** Parses one body; undefined when its field lengths do not add up (damage the CRC did not catch). */
function decodeBody(body: Buffer, start: number, end: number): StoredRecord | undefined {
  let o = 0;
  const field = () => {
    if (o + 2 > body.length) return undefined;
    const n = body.readUInt16LE(o);
    if (o + 2 + n > body.length) return undefined;
    const s = body.toString("utf8", o + 2, o + 2 + n);
    o += 2 + n;
    return s;
  };
  const subject = field();
  const msgId = field();
  const contentType = field();
  if (subject === undefined || msgId === undefined || contentType === undefined) return undefined;
  return { subject, msgId, contentType, payload: body.subarray(o), start, end };
}

/** The spill file currently being appended to. */
export class SpillWriter {
  private constructor(
    readonly path: string,
    readonly seq: number,
    private fh: FileHandle,
    private size: number,
  ) {}

  /** Creates the file (it must not exist: a sequence number is never reused) and writes the magic. */
  static async create(dir: string, seq: number): Promise<SpillWriter> {
    const path = join(dir, spillFileName(seq));
    const fh = await open(path, "wx");
    try {
      await fh.write(MAGIC, 0, MAGIC.length, 0);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
    return new SpillWriter(path, seq, fh, MAGIC.length);
  }

  get bytes(): number {
    return this.size;
  }

  async append(data: Buffer): Promise<void> {
    let written = 0;
    // A short write leaves a torn record that a reader skips; finish it so the file stays whole.
    while (written < data.length) {
      const { bytesWritten } = await this.fh.write(data, written, data.length - written, this.size + written);
      written += bytesWritten;
    }
    this.size += data.length;
  }

  sync(): Promise<void> {
    return this.fh.sync();
  }

  /** fsync, then close: a rotated or closed file survives a power loss. */
  async close(): Promise<void> {
    try {
      await this.fh.sync();
    } finally {
      await this.fh.close();
    }
  }
}

export interface ReadResult {
  records: StoredRecord[];
  /** Bytes at the end of the file that do not form a whole, intact record (set once the end is reached). */
  unreadableBytes: number;
  /** True when the reader has reached the end of the usable records. */
  done: boolean;
}

/** Reads a spill file front to back in bounded chunks; can step back to resume after a failed publish. */
export class SpillReader {
  private buf = Buffer.alloc(0);
  /** File offset of buf[0]. */
  private bufStart: number;

  private constructor(
    readonly path: string,
    private fh: FileHandle,
    private fileSize: number,
    /** Offset of the next record to return. */
    private position: number,
  ) {
    this.bufStart = position;
  }

  /**
   * Opens a file for reading. Returns undefined for a file too short to hold the magic (created
   * just before a crash: it holds nothing) and throws for a file whose magic is not ours.
   */
  static async open(path: string): Promise<SpillReader | undefined> {
    const fh = await open(path, "r");
    try {
      const { size } = await fh.stat();
      if (size < HEADER_BYTES) {
        await fh.close();
        return undefined;
      }
      const magic = Buffer.alloc(HEADER_BYTES);
      await fh.read(magic, 0, HEADER_BYTES, 0);
      if (!magic.equals(MAGIC)) throw new SpillFormatError(`${path} is not a spill file (magic ${JSON.stringify(magic.toString("latin1"))})`);
      return new SpillReader(path, fh, size, HEADER_BYTES);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }

  /** Up to `max` records from the current position. */
  async read(max: number): Promise<ReadResult> {
    const records: StoredRecord[] = [];
    while (records.length < max) {
      const at = this.position;
      if (!(await this.cover(at + 8))) return this.end(records);
      const bodyLength = this.buf.readUInt32LE(at - this.bufStart);
      if (bodyLength < 6 || bodyLength > MAX_BODY_BYTES) return this.end(records);
      if (!(await this.cover(at + 8 + bodyLength))) return this.end(records);
      const rel = at - this.bufStart;
      const body = this.buf.subarray(rel + 8, rel + 8 + bodyLength);
      if (crc32(body) !== this.buf.readUInt32LE(rel + 4)) return this.end(records);
      const record = decodeBody(body, at, at + 8 + bodyLength);
      if (!record) return this.end(records);
      records.push(record);
      this.position = record.end;
    }
    return { records, unreadableBytes: 0, done: false };
  }

  /** Moves back to a record returned earlier (its `start`), to send it again. */
  seek(offset: number): void {
    this.position = offset;
    if (offset < this.bufStart) {
      this.buf = Buffer.alloc(0);
      this.bufStart = offset;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }

  private end(records: StoredRecord[]): ReadResult {
    return { records, unreadableBytes: this.fileSize - this.position, done: true };
  }

  /** Makes buf hold the file from the current position up to `endOffset`; false when the file is shorter. */
  private async cover(endOffset: number): Promise<boolean> {
    if (this.bufStart + this.buf.length >= endOffset) return true;
    if (endOffset > this.fileSize) return false;
    // Drop what has been consumed and read on. A fresh buffer each time: records handed out earlier
    // are views into the old one and must stay intact while they are being published.
    const keep = this.buf.subarray(this.position - this.bufStart);
    const size = Math.min(Math.max(endOffset - this.position, keep.length + READ_CHUNK_BYTES), this.fileSize - this.position);
    const next = Buffer.allocUnsafe(size);
    keep.copy(next, 0);
    let filled = keep.length;
    while (filled < size) {
      const { bytesRead } = await this.fh.read(next, filled, size - filled, this.position + filled);
      if (bytesRead === 0) break; // the file shrank under us: treat what is missing as torn
      filled += bytesRead;
    }
    this.buf = next.subarray(0, filled);
    this.bufStart = this.position;
    return this.bufStart + this.buf.length >= endOffset;
  }
}

export interface SpillFileEntry {
  seq: number;
  path: string;
}

/**
 * The spill files in a directory, oldest first. A file named like ours whose magic is not ours is
 * renamed aside (`.unreadable`) rather than deleted or retried forever.
 */
export async function listSpillFiles(dir: string): Promise<SpillFileEntry[]> {
  const names = await readdir(dir);
  return names
    .map((name) => NAME.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ seq: Number(m[1]), path: join(dir, m[0]) }))
    .sort((a, b) => a.seq - b.seq);
}

/** Moves an unreadable file out of the replay order, keeping it for someone to look at. */
export async function setAside(path: string): Promise<string> {
  const target = `${path}.unreadable`;
  await rename(path, target);
  return target;
}
