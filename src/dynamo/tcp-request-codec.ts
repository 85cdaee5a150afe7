// Dynamo's TCP request plane framing: request frames (0.9+ with headers, 0.8 without) and u32-length replies.
//
// Request, all integers big-endian:
//   0.9+: u16 path_len | path | u16 headers_len | headers (JSON object) | u32 payload_len | payload
//   0.8:  u16 path_len | path | u32 payload_len | payload
// Reply (ACK or error text): u32 len | data. An ACK is four zero bytes.
//
// Both request forms are told apart per frame. After the path, a 0.9+ frame has headers_len ≥ 2 and
// headers that start with '{' and hold no NUL byte (JSON text cannot). Read as 0.8, those bytes are
// the payload length's high half (≥ 2 only for payloads ≥ 128 KiB), its low half, then the payload,
// whose TwoPart prefix starts with a u64 header length, i.e. a NUL byte. So a 0.8 frame can pass the
// test only with headers_len = 2 and a low half starting with '{' (a payload length of 0x00027Bxx);
// its 0.9 reading then has a payload length of 0, while a TwoPart message has at least 24 bytes.
// Requiring that of 0.9 frames with 2-byte headers makes the rule exact for every well-formed frame,
// and headers that are not valid JSON (which Dynamo ignores) are still framed right.
//
// Frontends always send headers (at least "{}"), but Dynamo's decoder also takes an empty section
// (headers_len = 0). Read as 0.8, such a frame has a payload length below 24 whenever its payload is
// under 1.5 MiB (the length's high half lands there), which no 0.8 frame can have; so that case is
// read as 0.9 with empty headers. A headerless 0.9 frame of 1.5 MiB or more would be misread.
//
// As in Dynamo ≥ 1.2 (zero_copy_decoder.rs), any path length is framed (an empty or unknown path is
// a routing matter, not a framing one) and unreadable headers are ignored: they only carry tracing
// hints. Only a frame over DYN_TCP_MAX_MESSAGE_SIZE breaks the stream.

import { TWO_PART_PREFIX_BYTES } from './two-part-codec.js';

/** Dynamo's DYN_TCP_MAX_MESSAGE_SIZE default: 32 MiB for the whole frame. */
export const TCP_MAX_MESSAGE_BYTES_DEFAULT = 32 * 1024 * 1024;
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
  private readonly initialBytes: number;

  constructor(
    private readonly maxMessageBytes = TCP_MAX_MESSAGE_BYTES_DEFAULT,
    private readonly shrinkBytes = 8 * 1024 * 1024,
    // A request is about a kilobyte of JSON per 200 prompt tokens; the buffer grows as needed.
    initialBytes = 4096,
  ) {
    this.initialBytes = initialBytes;
    this.buf = new Uint8Array(initialBytes);
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
      if (this.buf.length > this.shrinkBytes) this.buf = new Uint8Array(this.initialBytes);
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
    // Enough to tell the formats apart: 2 bytes of headers_len and the first header byte.
    if (avail < 2 + pathLen + 3) return null;
    const x = this.u16(afterPath);
    let format: TcpFrameFormat = '0.8';
    let headersLen = 0;
    if (x === 0) {
      if (avail < 2 + pathLen + 4) return null;
      if (this.u32(afterPath) < TWO_PART_PREFIX_BYTES) format = '0.9';
    } else if (x >= 2 && this.buf[afterPath + 2] === OPEN_BRACE) {
      // Decide with the whole headers section and the payload length after it.
      const needed = 2 + pathLen + 2 + x + 4;
      if (needed > this.maxMessageBytes) throw this.tooLarge(needed);
      if (avail < needed) return null;
      const h = this.buf.subarray(afterPath + 2, afterPath + 2 + x);
      const p = this.u32(afterPath + 2 + x);
      if (!h.includes(0) && (x > 2 || p >= TWO_PART_PREFIX_BYTES)) {
        format = '0.9';
        headersLen = x;
      }
    }
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
    return { format, path, headers, headersError: error, payload, frameBytes: total };
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
