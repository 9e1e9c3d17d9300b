// The spill: log messages waiting on disk for JetStream, a first-in first-out queue of spill files
// (spill-file.ts is their format). append() writes to the newest file, which is closed (fsynced)
// and queued for replay when it reaches its size or on rotate(); peek() reads the oldest closed file
// front to back, ack() takes what JetStream stored off the queue, and a file is deleted once read to
// its end. Invariant: peek() hands out records in the order append() took them, across files and
// across restarts (files are numbered and a number is never reused), and a record leaves the queue
// only through ack().
import { mkdir, unlink } from "node:fs/promises";
import type { Logger } from "../lib/logger.js";
import { encodeRecords, listSpillFiles, setAside, SpillFormatError, SpillReader, SpillWriter, type SpillRecord, type StoredRecord } from "./spill-file.js";

interface SpillFile {
  seq: number;
  path: string;
  /** Records not yet acknowledged (counted by scan() for a previous run's files). */
  records: number;
}

/** Records counted per read while scanning a previous run's files. */
const SCAN_CHUNK = 4096;

export class SpillQueue {
  /** Closed files waiting for replay, oldest first. */
  private files: SpillFile[] = [];
  private active?: { writer: SpillWriter; records: number };
  private reader?: { file: SpillFile; reader: SpillReader };
  private peeked: readonly StoredRecord[] = [];
  private nextSeq = 1;
  private count = 0;
  private unsynced = false;
  /** Serialises everything that touches the file being written: append, sync, rotate, close. */
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly fileBytes: number,
  ) {}

  /** Records on disk not yet acknowledged. */
  get size(): number {
    return this.count;
  }

  /** True while a file is open for appending (it joins the replay order on rotate()). */
  get appending(): boolean {
    return this.active !== undefined;
  }

  /**
   * Creates the directory and lists the files a previous run left; true when there are some. Never
   * throws: an unusable directory is logged, and append() fails (and is retried) until it works.
   */
  async list(): Promise<boolean> {
    try {
      await mkdir(this.dir, { recursive: true });
      const found = await listSpillFiles(this.dir);
      this.files = found.map((f) => ({ ...f, records: 0 }));
      this.nextSeq = (found.at(-1)?.seq ?? 0) + 1;
      return found.length > 0;
    } catch (err) {
      this.log.error({ err, spillDir: this.dir }, "log publisher: cannot use the spill directory");
      return false;
    }
  }

  /** Counts the records in a previous run's files, so that `size` is right from the start. */
  async scan(stop: () => boolean): Promise<{ files: number; messages: number }> {
    for (const file of [...this.files]) {
      if (stop()) break;
      try {
        const reader = await SpillReader.open(file.path);
        if (!reader) continue;
        try {
          for (;;) {
            const { records, done } = await reader.read(SCAN_CHUNK);
            file.records += records.length;
            this.count += records.length;
            if (done) break;
          }
        } finally {
          await reader.close();
        }
      } catch {
        // peek() meets the same file and deals with it (sets it aside or retries).
      }
    }
    return { files: this.files.length, messages: this.files.reduce((n, f) => n + f.records, 0) };
  }

  /** Appends records behind everything already queued; resolves once they are written (not yet fsynced). */
  append(records: readonly SpillRecord[]): Promise<void> {
    return this.serial(async () => {
      const data = encodeRecords(records);
      if (this.active && this.active.writer.bytes >= this.fileBytes) await this.closeActive(true);
      this.active ??= { writer: await SpillWriter.create(this.dir, this.nextSeq++), records: 0 };
      await this.active.writer.append(data);
      this.active.records += records.length;
      this.count += records.length;
      this.unsynced = true;
    });
  }

  /** fsyncs what append() wrote since the last sync. A failure is ignored: the file is fsynced again when it closes. */
  sync(): Promise<void> {
    return this.serial(async () => {
      if (!this.unsynced || !this.active) return;
      this.unsynced = false;
      await this.active.writer.sync().catch(() => undefined);
    });
  }

  /** Closes (fsync) the file being appended to and puts it in the replay order; later appends start a new file. */
  rotate(): Promise<void> {
    return this.serial(() => this.closeActive(true));
  }

  /**
   * Up to `max` of the oldest records not yet acknowledged, from closed files; [] when no closed
   * file holds any. Each peek() is answered by one ack(). Throws when a file cannot be read for now
   * (permissions, I/O): it stays, to be tried again.
   */
  async peek(max: number): Promise<readonly StoredRecord[]> {
    for (;;) {
      const file = this.files[0];
      if (!file) return [];
      const current = await this.open(file);
      if (!current) continue;
      const { records, unreadableBytes, done } = await current.read(max);
      if (records.length > 0) return (this.peeked = records);
      if (!done) continue;
      if (unreadableBytes > 0) {
        this.log.warn(
          { file: file.path, bytes: unreadableBytes },
          "log publisher: skipped the unreadable end of a spill file (a write torn by a crash, or damage)",
        );
      }
      await current.close();
      this.reader = undefined;
      await unlink(file.path);
      this.remove(file);
    }
  }

  /** The first `n` records of the last peek() are stored by JetStream; the rest come again from the next peek(). */
  ack(n: number): void {
    const current = this.reader;
    const peeked = this.peeked;
    this.peeked = [];
    if (!current) return;
    this.forget(current.file, n);
    if (n < peeked.length) current.reader.seek(peeked[n]!.start);
  }

  /** Closes the open files; what is on disk stays for the next SpillQueue on the same directory. */
  close(): Promise<void> {
    return this.serial(async () => {
      await this.reader?.reader.close().catch(() => undefined);
      this.reader = undefined;
      await this.closeActive(false).catch((err) => this.log.warn({ err }, "log publisher: closing a spill file failed"));
    });
  }

  private async open(file: SpillFile): Promise<SpillReader | undefined> {
    if (this.reader?.file === file) return this.reader.reader;
    try {
      const reader = await SpillReader.open(file.path);
      if (reader) {
        this.reader = { file, reader };
        return reader;
      }
      await unlink(file.path); // created just before a crash: holds nothing
    } catch (err) {
      if (err instanceof SpillFormatError) {
        const kept = await setAside(file.path);
        this.log.error({ err, kept }, "log publisher: a spill file is not in a format this version reads; set aside");
      } else if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw err;
      }
    }
    this.remove(file);
    return undefined;
  }

  private remove(file: SpillFile): void {
    if (this.files[0] === file) this.files.shift();
    this.forget(file, file.records);
  }

  private forget(file: SpillFile, n: number): void {
    const k = Math.min(n, file.records);
    file.records -= k;
    this.count = Math.max(0, this.count - k);
  }

  /** Closes the file being written (fsync); `queue`: and puts it in the replay order. An empty one is deleted. */
  private async closeActive(queue: boolean): Promise<void> {
    const active = this.active;
    if (!active) return;
    this.active = undefined;
    this.unsynced = false;
    try {
      await active.writer.close();
    } catch (err) {
      // The records were written; only their durability against power loss is in doubt.
      this.log.warn({ err, file: active.writer.path }, "log publisher: fsync of a spill file failed");
    }
    if (active.records === 0) {
      await unlink(active.writer.path).catch(() => undefined);
      return;
    }
    if (queue) this.files.push({ seq: active.writer.seq, path: active.writer.path, records: active.records });
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.lock.then(work, work);
    this.lock = run.catch(() => undefined);
    return run;
  }
}
