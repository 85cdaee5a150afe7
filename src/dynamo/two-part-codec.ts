// Dynamo's TwoPartCodec: 24-byte big-endian prefix (header_len, body_len, XXH3-64 seed 0) + header + body.

/** Anything that can compute XXH3-64 with seed 0 (see createXxh3 in src/hashing/xxh3.ts). */
export interface Xxh3Seed0 {
  hash0(bytes: Uint8Array): bigint;
}

export interface TwoPartMessage {
  header: Uint8Array;
  body: Uint8Array;
}

export type TwoPartErrorKind = 'too-short' | 'length-mismatch' | 'checksum' | 'too-large';

export class TwoPartError extends Error {
  readonly kind: TwoPartErrorKind;
  constructor(kind: TwoPartErrorKind, message: string) {
    super(message);
    this.name = 'TwoPartError';
    this.kind = kind;
  }
}

export const TWO_PART_PREFIX_BYTES = 24;

/** Stream decoder default cap: a response frame this big means a corrupt or hostile peer, not a real item. */
export const TWO_PART_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

const EMPTY = new Uint8Array(0);
const textEncoder = new TextEncoder();

function writePrefix(frame: Uint8Array, headerLen: number, bodyLen: number, checksum: bigint): void {
  const v = new DataView(frame.buffer, frame.byteOffset, TWO_PART_PREFIX_BYTES);
  v.setBigUint64(0, BigInt(headerLen), false);
  v.setBigUint64(8, BigInt(bodyLen), false);
  v.setBigUint64(16, checksum, false);
}

/**
 * Encodes one frame. Always writes the real checksum: 0.4.x peers verify it unconditionally,
 * newer peers ignore it, so a correct value works with every version.
 */
export function encodeTwoPart(header: Uint8Array, body: Uint8Array, xxh: Xxh3Seed0): Uint8Array {
  const frame = new Uint8Array(TWO_PART_PREFIX_BYTES + header.length + body.length);
  frame.set(header, TWO_PART_PREFIX_BYTES);
  frame.set(body, TWO_PART_PREFIX_BYTES + header.length);
  // header‖body is contiguous in the frame, so the checksum needs no extra buffer.
  writePrefix(frame, header.length, body.length, xxh.hash0(frame.subarray(TWO_PART_PREFIX_BYTES)));
  return frame;
}

/**
 * Encodes a frame from JSON text, UTF-8-encoding straight into the frame buffer (one allocation;
 * this is the per-token hot path). Pass '' for an empty header or body. The buffer is sized for
 * ASCII text (JSON usually is), so a frame queued on a socket pins exactly its own size; text with
 * multi-byte characters is encoded again into a worst-case buffer and copied out at its real size.
 */
export function encodeTwoPartText(header: string, body: string, xxh: Xxh3Seed0): Uint8Array {
  const exact = new Uint8Array(TWO_PART_PREFIX_BYTES + header.length + body.length);
  const end = encodeTextInto(exact, header, body, xxh);
  if (end === exact.length) return exact;
  // Worst case 3 bytes per UTF-16 code unit.
  const wide = new Uint8Array(TWO_PART_PREFIX_BYTES + 3 * (header.length + body.length));
  return wide.slice(0, encodeTextInto(wide, header, body, xxh)!);
}

/** Writes the frame into `buf`; returns its end, or null when the text does not fit. */
function encodeTextInto(buf: Uint8Array, header: string, body: string, xxh: Xxh3Seed0): number | null {
  let h = 0;
  if (header.length !== 0) {
    const r = textEncoder.encodeInto(header, buf.subarray(TWO_PART_PREFIX_BYTES));
    if (r.read < header.length) return null;
    h = r.written;
  }
  let b = 0;
  if (body.length !== 0) {
    const r = textEncoder.encodeInto(body, buf.subarray(TWO_PART_PREFIX_BYTES + h));
    if (r.read < body.length) return null;
    b = r.written;
  }
  const end = TWO_PART_PREFIX_BYTES + h + b;
  writePrefix(buf, h, b, xxh.hash0(buf.subarray(TWO_PART_PREFIX_BYTES, end)));
  return end;
}

interface Lengths {
  headerLen: number;
  bodyLen: number;
  checksum: bigint;
}

// Lengths are u64 on the wire; anything needing the high word cannot be a sane frame here.
function readPrefix(bytes: Uint8Array, offset: number, max: number): Lengths {
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, TWO_PART_PREFIX_BYTES);
  const hHi = v.getUint32(0, false);
  const bHi = v.getUint32(8, false);
  const headerLen = v.getUint32(4, false);
  const bodyLen = v.getUint32(12, false);
  if (hHi !== 0 || bHi !== 0 || headerLen > max || bodyLen > max || headerLen + bodyLen > max) {
    const hl = v.getBigUint64(0, false);
    const bl = v.getBigUint64(8, false);
    throw new TwoPartError(
      'too-large',
      `two-part message too large: header_len=${hl} body_len=${bl} exceeds limit ${max}`,
    );
  }
  return { headerLen, bodyLen, checksum: v.getBigUint64(16, false) };
}

function verify(payload: Uint8Array, checksum: bigint, xxh: Xxh3Seed0 | undefined): void {
  // Released Dynamo builds (0.5+) send 0, meaning "not computed".
  if (checksum === 0n || xxh === undefined) return;
  const actual = xxh.hash0(payload);
  if (actual !== checksum) {
    throw new TwoPartError(
      'checksum',
      `two-part checksum mismatch: frame says ${checksum.toString(16)}, computed ${actual.toString(16)}`,
    );
  }
}

/**
 * Decodes exactly one complete frame (e.g. a NATS payload). header/body are views into `frame`.
 * The checksum is verified only when non-zero and a hasher is given.
 */
export function decodeTwoPart(frame: Uint8Array, xxh?: Xxh3Seed0): TwoPartMessage {
  if (frame.length < TWO_PART_PREFIX_BYTES) {
    throw new TwoPartError(
      'too-short',
      `two-part message too short: ${frame.length} bytes, need at least ${TWO_PART_PREFIX_BYTES}`,
    );
  }
  const v = new DataView(frame.buffer, frame.byteOffset, TWO_PART_PREFIX_BYTES);
  const headerLen = v.getBigUint64(0, false);
  const bodyLen = v.getBigUint64(8, false);
  const actual = BigInt(frame.length - TWO_PART_PREFIX_BYTES);
  if (headerLen + bodyLen !== actual) {
    throw new TwoPartError(
      'length-mismatch',
      `two-part length mismatch: header_len=${headerLen} + body_len=${bodyLen} != ${actual} payload bytes`,
    );
  }
  const h = Number(headerLen);
  const payload = frame.subarray(TWO_PART_PREFIX_BYTES);
  verify(payload, v.getBigUint64(16, false), xxh);
  return { header: payload.subarray(0, h), body: payload.subarray(h) };
}

export interface TwoPartStreamDecoderOptions {
  /** Verify non-zero checksums with this hasher; omit to skip verification. */
  xxh?: Xxh3Seed0;
  /** Reject frames whose header+body exceed this many bytes (default 256 MiB). */
  maxMessageBytes?: number;
}

/**
 * Incremental decoder for a TCP byte stream of two-part frames.
 * Frames fully contained in one pushed chunk are returned as zero-copy views into that chunk,
 * so callers must not mutate a chunk after pushing it. After an error the decoder stays failed.
 */
export class TwoPartStreamDecoder {
  private readonly xxh: Xxh3Seed0 | undefined;
  private readonly max: number;
  private readonly prefix = new Uint8Array(TWO_PART_PREFIX_BYTES);
  private prefixFill = 0;
  // Set once the prefix of the current frame is known and its payload is still incomplete.
  private current: Lengths | null = null;
  private payload: Uint8Array = EMPTY;
  private payloadFill = 0;
  private failure: TwoPartError | null = null;

  constructor(options: TwoPartStreamDecoderOptions = {}) {
    this.xxh = options.xxh;
    this.max = options.maxMessageBytes ?? TWO_PART_MAX_MESSAGE_BYTES;
  }

  /** Bytes of an incomplete frame currently held (0 at a frame boundary). */
  get bufferedBytes(): number {
    return this.current === null ? this.prefixFill : TWO_PART_PREFIX_BYTES + this.payloadFill;
  }

  /** Feeds bytes; returns every frame completed by them, in order. */
  push(chunk: Uint8Array): TwoPartMessage[] {
    if (this.failure !== null) throw this.failure;
    try {
      return this.consume(chunk);
    } catch (err) {
      if (err instanceof TwoPartError) this.failure = err;
      throw err;
    }
  }

  /** Call at end of stream: throws 'too-short' if a frame was cut off mid-way. */
  finish(): void {
    if (this.failure !== null) throw this.failure;
    if (this.bufferedBytes > 0) {
      throw new TwoPartError('too-short', `stream ended inside a two-part frame (${this.bufferedBytes} bytes buffered)`);
    }
  }

  private consume(chunk: Uint8Array): TwoPartMessage[] {
    const out: TwoPartMessage[] = [];
    let off = 0;
    const n = chunk.length;
    while (off < n) {
      if (this.current === null) {
        if (this.prefixFill === 0 && n - off >= TWO_PART_PREFIX_BYTES) {
          // Fast path: the whole prefix is in this chunk.
          const lens = readPrefix(chunk, off, this.max);
          off += TWO_PART_PREFIX_BYTES;
          const total = lens.headerLen + lens.bodyLen;
          if (n - off >= total) {
            out.push(this.emit(lens, chunk.subarray(off, off + total)));
            off += total;
            continue;
          }
          this.startPayload(lens);
        } else {
          const take = Math.min(TWO_PART_PREFIX_BYTES - this.prefixFill, n - off);
          this.prefix.set(chunk.subarray(off, off + take), this.prefixFill);
          this.prefixFill += take;
          off += take;
          if (this.prefixFill < TWO_PART_PREFIX_BYTES) break;
          this.prefixFill = 0;
          const lens = readPrefix(this.prefix, 0, this.max);
          if (lens.headerLen + lens.bodyLen === 0) {
            out.push(this.emit(lens, EMPTY));
            continue;
          }
          this.startPayload(lens);
        }
      }
      const lens = this.current!;
      const need = this.payload.length - this.payloadFill;
      const take = Math.min(need, n - off);
      this.payload.set(chunk.subarray(off, off + take), this.payloadFill);
      this.payloadFill += take;
      off += take;
      if (this.payloadFill === this.payload.length) {
        const payload = this.payload;
        this.current = null;
        this.payload = EMPTY;
        this.payloadFill = 0;
        out.push(this.emit(lens, payload));
      }
    }
    return out;
  }

  private startPayload(lens: Lengths): void {
    // Allocated once at its final size so a large frame split over many chunks is copied only once.
    this.current = lens;
    this.payload = new Uint8Array(lens.headerLen + lens.bodyLen);
    this.payloadFill = 0;
  }

  private emit(lens: Lengths, payload: Uint8Array): TwoPartMessage {
    verify(payload, lens.checksum, this.xxh);
    return { header: payload.subarray(0, lens.headerLen), body: payload.subarray(lens.headerLen) };
  }
}
