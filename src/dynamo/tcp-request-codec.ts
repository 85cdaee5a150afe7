// Dynamo's TCP request plane framing: request frames (0.9+ with headers, 0.8 without) and u32-length replies.
//
// Request, all integers big-endian:
//   0.9+: u16 path_len | path | u16 headers_len | headers (JSON object) | u32 payload_len | payload
//   0.8:  u16 path_len | path | u32 payload_len | payload
// Reply (ACK or error text): u32 len | data. An ACK is four zero bytes.
//
// Both request forms are told apart per frame (a connection never mixes them, but nothing says which
// one it speaks). After the path, a 0.9+ frame has headers_len 0, or ≥ 2 with headers that start with
// '{' and hold no NUL byte (JSON text cannot). Read as 0.8, those bytes are the payload length's high
// half (0 below 64 KiB, ≥ 2 only from 128 KiB), its low half, then the payload, whose TwoPart prefix
// starts with a u64 header length, i.e. NUL bytes. So headers_len ≥ 3 with such headers can only be
// 0.9, and a NUL among them or a first byte other than '{' only 0.8. What stays ambiguous is
// headers_len 0 and headers_len 2: there the TwoPart message inside settles it, since its header and
// body lengths plus its 24-byte prefix must add up to the payload length of the right reading. When
// neither or both add up (a malformed payload, or too few bytes yet), the connection's earlier frames
// decide, and a connection's first such frame is read as 0.9: the generation this worker speaks.
// A reading that makes a complete frame is never left waiting for more bytes.

// As in Dynamo ≥ 1.2 (zero_copy_decoder.rs), any path length is framed (an empty or unknown path is
// a routing matter, not a framing one) and unreadable headers are ignored: they only carry tracing
// hints. Only a frame over DYN_TCP_MAX_MESSAGE_SIZE breaks the stream.

import { TCP_SERVER_DEFAULTS } from '../config.js';
import { TWO_PART_PREFIX_BYTES } from './two-part-codec.js';

/** A request is about a kilobyte of JSON per 200 prompt tokens; the buffer grows as needed. */
const INITIAL_BUFFER_BYTES = 4096;

/** The empty reply that accepts a request. */
export const TCP_ACK: Uint8Array = new Uint8Array(4);

export type TcpFrameFormat = '0.9' | '0.8';

export interface TcpRequestFrame {
  format: TcpFrameFormat;
  /** The routing key, e.g. `694d9981145a61ad/generate`; null when it is not valid UTF-8. */
  path: string | null;
  /** Parsed headers; empty for 0.8 frames, for an empty headers section and for unreadable ones. */
  headers: Record<string, string>;
  /** Why the headers section could not be read (the frame itself is intact), or null. */
  headersError: string | null;
  /** The TwoPart message. A view into the decoder's buffer: copy it before the next push. */
  payload: Uint8Array;
  /** Bytes of the whole frame on the wire. */
  frameBytes: number;
}

/** A frame that cannot be read, after which the connection's byte stream cannot be trusted. */
export class TcpFrameError extends Error {
  override name = 'TcpFrameError';
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const textEncoder = new TextEncoder();
const OPEN_BRACE = 0x7b;

function parseHeaders(bytes: Uint8Array): { headers: Record<string, string>; error: string | null } {
  if (bytes.length === 0) return { headers: {}, error: null };
  let parsed: unknown;
  try {
    parsed = JSON.parse(utf8.decode(bytes));
  } catch (err) {
    return { headers: {}, error: `request headers are not valid JSON: ${(err as Error).message}` };
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return { headers: {}, error: 'request headers must be a JSON object of strings' };
  }
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
    if (typeof v !== 'string') return { headers: {}, error: `request header '${k}' must be a string` };
    headers[k] = v;
  }
  return { headers, error: null };
}

/**
 * Incremental decoder for one connection's request bytes. `push` returns every complete frame in
 * order; once the stream cannot be framed, `error` is set (after the frames that preceded the bad
 * one) and the caller closes the connection. The size limit is checked as soon as the lengths are
 * known, before the payload is buffered. After a frame larger than `shrinkBytes` the buffer goes back
 * to its small size.
 */
export class TcpRequestDecoder {
  private buf: Uint8Array;
  private start = 0;
  private end = 0;
  private failure: TcpFrameError | null = null;
  private lastFormat: TcpFrameFormat | null = null;

  constructor(
    private readonly maxMessageBytes = TCP_SERVER_DEFAULTS.maxMessageBytes,
    private readonly shrinkBytes = TCP_SERVER_DEFAULTS.shrinkMessageBytes,
  ) {
    this.buf = new Uint8Array(INITIAL_BUFFER_BYTES);
  }

  /** Why the stream cannot be framed any more, or null. */
  get error(): TcpFrameError | null {
    return this.failure;
  }

  /** Bytes of an incomplete frame held. */
  get bufferedBytes(): number {
    return this.end - this.start;
  }

  push(chunk: Uint8Array): TcpRequestFrame[] {
    const out: TcpRequestFrame[] = [];
    if (this.failure) return out;
    this.append(chunk);
    try {
      for (;;) {
        const frame = this.next();
        if (frame === null) break;
        out.push(frame);
      }
    } catch (err) {
      if (!(err instanceof TcpFrameError)) throw err;
      this.failure = err;
      return out;
    }
    if (this.start === this.end) {
      this.start = this.end = 0;
      if (this.buf.length > this.shrinkBytes) this.buf = new Uint8Array(INITIAL_BUFFER_BYTES);
    }
    return out;
  }

  private append(chunk: Uint8Array): void {
    const held = this.end - this.start;
    if (this.buf.length - this.end < chunk.length) {
      if (held + chunk.length <= this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(Math.max(held + chunk.length, this.buf.length * 2));
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.start = 0;
      this.end = held;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  private u16(at: number): number {
    return (this.buf[at] << 8) | this.buf[at + 1];
  }

  private u32(at: number): number {
    return ((this.buf[at] << 24) >>> 0) + ((this.buf[at + 1] << 16) | (this.buf[at + 2] << 8) | this.buf[at + 3]);
  }

  private tooLarge(total: number): TcpFrameError {
    return new TcpFrameError(`request frame of ${total} bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE (${this.maxMessageBytes})`);
  }

  /** One frame from the buffer, or null if more bytes are needed. */
  private next(): TcpRequestFrame | null {
    const s = this.start;
    const avail = this.end - s;
    if (avail < 2) return null;
    const pathLen = this.u16(s);
    const afterPath = s + 2 + pathLen;
    const format = this.formatAt(afterPath);
    if (format === null) return null;
    const headersLen = format === '0.9' ? this.u16(afterPath) : 0;
    const lenAt = format === '0.9' ? afterPath + 2 + headersLen : afterPath;
    const payloadLen = this.u32(lenAt);
    const total = lenAt + 4 - s + payloadLen;
    if (total > this.maxMessageBytes) throw this.tooLarge(total);
    if (avail < total) return null;

    let path: string | null;
    try {
      path = utf8.decode(this.buf.subarray(s + 2, afterPath));
    } catch {
      path = null;
    }
    const { headers, error } = format === '0.9' ? parseHeaders(this.buf.subarray(afterPath + 2, lenAt)) : { headers: {}, error: null };
    const payload = this.buf.subarray(lenAt + 4, lenAt + 4 + payloadLen);
    this.start = s + total;
    this.lastFormat = format;
    return { format, path, headers, headersError: error, payload, frameBytes: total };
  }

  /** The form of the frame whose path ends at `afterPath`, or null while the bytes cannot tell yet. */
  private formatAt(afterPath: number): TcpFrameFormat | null {
    if (this.end < afterPath + 2) return null;
    const x = this.u16(afterPath);
    if (x === 1) return '0.8';
    if (x >= 2) {
      if (this.end < afterPath + 3) return null;
      if (this.buf[afterPath + 2] !== OPEN_BRACE) return '0.8';
      const needed = afterPath + 2 + x + 4;
      if (needed - this.start > this.maxMessageBytes) throw this.tooLarge(needed - this.start);
      if (this.end < needed) return null;
      if (this.buf.subarray(afterPath + 2, afterPath + 2 + x).includes(0)) return '0.8';
      if (x > 2) return '0.9';
    } else if (this.end < afterPath + 2 + 4) {
      return null;
    }
    // Ambiguous: settle it by the TwoPart lengths, then by the connection's earlier frames.
    const at9 = afterPath + 2 + x;
    const fits8 = this.twoPartFits(afterPath);
    const fits9 = this.twoPartFits(at9);
    if (fits8 !== fits9 && fits8 !== null && fits9 !== null) return fits8 ? '0.8' : '0.9';
    if (fits8 === true && fits9 === null) return '0.8';
    if (fits9 === true && fits8 === null) return '0.9';
    const complete9 = this.end >= at9 + 4 + this.u32(at9);
    if ((fits8 === null || fits9 === null) && !complete9) return null;
    return this.lastFormat ?? '0.9';
  }

  /**
   * Whether the u32 payload length at `lenAt` is that of a TwoPart message whose own header and body
   * lengths (u64 each, after it) add up to it with the 24-byte prefix; null while those bytes are missing.
   */
  private twoPartFits(lenAt: number): boolean | null {
    const payloadLen = this.u32(lenAt);
    if (payloadLen < TWO_PART_PREFIX_BYTES) return false;
    const at = lenAt + 4;
    if (this.end < at + 16) return null;
    if (this.u32(at) !== 0 || this.u32(at + 8) !== 0) return false;
    return this.u32(at + 4) + this.u32(at + 12) + TWO_PART_PREFIX_BYTES === payloadLen;
  }
}

/** Encodes a 0.9+ request frame (what a 1.x frontend sends). */
export function encodeTcpRequest(path: string, headers: Record<string, string>, payload: Uint8Array): Uint8Array {
  const p = textEncoder.encode(path);
  const h = textEncoder.encode(JSON.stringify(headers));
  const frame = new Uint8Array(2 + p.length + 2 + h.length + 4 + payload.length);
  const v = new DataView(frame.buffer);
  v.setUint16(0, p.length);
  frame.set(p, 2);
  v.setUint16(2 + p.length, h.length);
  frame.set(h, 4 + p.length);
  v.setUint32(4 + p.length + h.length, payload.length);
  frame.set(payload, 8 + p.length + h.length);
  return frame;
}

/** Encodes a 0.8 request frame (no headers section). */
export function encodeTcpRequestV08(path: string, payload: Uint8Array): Uint8Array {
  const p = textEncoder.encode(path);
  const frame = new Uint8Array(2 + p.length + 4 + payload.length);
  const v = new DataView(frame.buffer);
  v.setUint16(0, p.length);
  frame.set(p, 2);
  v.setUint32(2 + p.length, payload.length);
  frame.set(payload, 6 + p.length);
  return frame;
}

/** Incremental decoder for the worker's replies: `u32 len | data`, one per request, in order. */
export class TcpResponseDecoder {
  private pending: Uint8Array = new Uint8Array(0);

  push(chunk: Uint8Array): Uint8Array[] {
    let buf = this.pending.length ? concat(this.pending, chunk) : chunk;
    const out: Uint8Array[] = [];
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
      if (buf.length < 4 + len) break;
      out.push(buf.slice(4, 4 + len));
      buf = buf.subarray(4 + len);
    }
    this.pending = buf.slice();
    return out;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
