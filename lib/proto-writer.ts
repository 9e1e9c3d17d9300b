// Hand-written protobuf encoding for the request path's hot messages (PredictionLog, RecommendResponse):
// sizes first, then one pass into a buffer of exactly that size. Invariant: the bytes equal
// protobuf-es's toBinary of the same message (fields by number, proto3 zero values omitted); the
// encoders' tests check byte equality against the library.

// Wire types.
export const VARINT = 0;
export const I64 = 1;
export const LEN = 2;

/** proto3 omits a double that is +0 (but writes -0), as protobuf-es's isScalarZeroValue says. */
export const doubleSet = (v: number) => !Object.is(v, 0);

export function varintSize(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

// Strings are measured and copied by Buffer's native calls, not charCodeAt loops: once a process
// has loaded ioredis (whose VerbatimString extends String), V8 runs charCodeAt ~5-8x slower
// everywhere in it, and the serving process loads ioredis.

/** UTF-8 length. */
export function utf8Length(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

// Doubles go through one scratch value: the same little-endian bytes DataView.setFloat64 writes.
const scratch = new Float64Array(1);
const scratchBytes = new Uint8Array(scratch.buffer);
const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export class Writer {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  varint(v: number): void {
    const buf = this.buf;
    while (v >= 128) {
      buf[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    buf[this.pos++] = v;
  }
  tag(field: number, wireType: number): void {
    this.varint(field * 8 + wireType);
  }
  /** A LEN field: tag, length, UTF-8 bytes (`bytes` from utf8Length). */
  string(field: number, s: string, bytes: number): void {
    this.tag(field, LEN);
    this.varint(bytes);
    // As many bytes as chars: ASCII, whose latin1 bytes are its UTF-8 bytes (latin1 is the cheaper copy).
    this.pos += this.buf.write(s, this.pos, bytes === s.length ? "latin1" : "utf8");
  }
  /** A singular string field: omitted when empty, as proto3 does. */
  optionalString(field: number, s: string, bytes: number): void {
    if (bytes !== 0) this.string(field, s, bytes);
  }
  double(v: number): void {
    scratch[0] = v;
    const buf = this.buf;
    const pos = this.pos;
    if (littleEndian) {
      for (let k = 0; k < 8; k++) buf[pos + k] = scratchBytes[k]!;
    } else {
      for (let k = 0; k < 8; k++) buf[pos + k] = scratchBytes[7 - k]!;
    }
    this.pos = pos + 8;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}
