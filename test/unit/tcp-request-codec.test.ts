// TCP request-plane framing: 0.9+ and 0.8 request frames, split and pipelined input, limits, replies.
import { describe, expect, it } from 'vitest';
import {
  TCP_ACK,
  TcpRequestDecoder,
  TcpResponseDecoder,
  encodeTcpRequest,
  encodeTcpRequestV08,
} from '../../src/dynamo/tcp-request-codec.js';
import { TWO_PART_PREFIX_BYTES } from '../../src/dynamo/two-part-codec.js';
import { concatBytes } from '../helpers/bytes.js';

const enc = new TextEncoder();
const PATH = '694d9981145a61ad/generate';
const HEADERS = { 'x-endpoint-path': PATH };

/** A well-formed TwoPart message of `size` bytes: header_len = size − 24, body_len 0, checksum 0, filler header. */
function payload(size: number, fill = 0x41): Uint8Array {
  const p = new Uint8Array(size).fill(fill);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(Math.max(0, size - TWO_PART_PREFIX_BYTES)));
  v.setBigUint64(8, 0n);
  v.setBigUint64(16, 0n);
  return p;
}

const concat = concatBytes;

/** Hand-built 0.9 frame, independent of encodeTcpRequest. */
function frame09(path: string, headersText: string, body: Uint8Array): Uint8Array {
  const p = enc.encode(path);
  const h = enc.encode(headersText);
  const head = new Uint8Array(2 + p.length + 2 + h.length + 4);
  const v = new DataView(head.buffer);
  v.setUint16(0, p.length);
  head.set(p, 2);
  v.setUint16(2 + p.length, h.length);
  head.set(h, 4 + p.length);
  v.setUint32(4 + p.length + h.length, body.length);
  return concat(head, body);
}

describe('encodeTcpRequest', () => {
  it('writes the 0.9+ layout of the contract example (u16 path, u16 headers, u32 payload, big-endian)', () => {
    const body = payload(392);
    const f = encodeTcpRequest(PATH, HEADERS, body);
    expect([...f.subarray(0, 2)]).toEqual([0x00, 0x19]);
    expect(new TextDecoder().decode(f.subarray(2, 27))).toBe(PATH);
    expect([...f.subarray(27, 29)]).toEqual([0x00, 0x2f]);
    expect(new TextDecoder().decode(f.subarray(29, 76))).toBe('{"x-endpoint-path":"694d9981145a61ad/generate"}');
    expect([...f.subarray(76, 80)]).toEqual([0x00, 0x00, 0x01, 0x88]);
    expect(f.subarray(80)).toEqual(body);
    expect(f).toEqual(frame09(PATH, JSON.stringify(HEADERS), body));
  });
});

describe('TcpRequestDecoder', () => {
  it('decodes one 0.9 frame with its headers and size', () => {
    const body = payload(100);
    const [f, ...rest] = new TcpRequestDecoder().push(frame09(PATH, '{"x-endpoint-path":"a","request-id":"r1"}', body));
    expect(rest).toEqual([]);
    expect(f.format).toBe('0.9');
    expect(f.path).toBe(PATH);
    expect(f.headers).toEqual({ 'x-endpoint-path': 'a', 'request-id': 'r1' });
    expect(f.headersError).toBeNull();
    expect(f.payload).toEqual(body);
    expect(f.frameBytes).toBe(2 + PATH.length + 2 + 41 + 4 + 100);
  });

  it('decodes pipelined frames from one chunk, in order', () => {
    const frames = Array.from({ length: 5 }, (_, i) => encodeTcpRequest(`${i}/generate`, HEADERS, payload(30 + i, i)));
    const out = new TcpRequestDecoder().push(concat(...frames));
    expect(out.map((f) => f.path)).toEqual(['0/generate', '1/generate', '2/generate', '3/generate', '4/generate']);
    expect(out.map((f) => f.payload.length)).toEqual([30, 31, 32, 33, 34]);
  });

  it('decodes frames split at every byte boundary', () => {
    const bytes = concat(encodeTcpRequest(PATH, HEADERS, payload(64)), encodeTcpRequestV08('x/generate', payload(40)));
    const d = new TcpRequestDecoder();
    const out = [];
    for (let i = 0; i < bytes.length; i++) {
      for (const f of d.push(bytes.subarray(i, i + 1))) out.push({ path: f.path, format: f.format, payload: f.payload.slice() });
    }
    expect(out).toEqual([
      { path: PATH, format: '0.9', payload: payload(64) },
      { path: 'x/generate', format: '0.8', payload: payload(40) },
    ]);
    expect(d.bufferedBytes).toBe(0);
  });

  it('decodes the headerless 0.8 frame', () => {
    const [f] = new TcpRequestDecoder().push(encodeTcpRequestV08('generate', payload(200)));
    expect(f).toMatchObject({ format: '0.8', path: 'generate', headers: {}, headersError: null });
    expect(f.payload).toEqual(payload(200));
  });

  it('tells a 0.8 frame from a 0.9 one even when its length bytes read as "{}" (payload of 0x00027B7D bytes)', () => {
    const size = 0x00027b7d;
    const body = payload(size);
    const bytes = encodeTcpRequestV08('generate', body);
    // As 0.9, these bytes would be headers_len = 2 and headers = "{}", then a 0-byte payload.
    expect([...bytes.subarray(10, 14)]).toEqual([0x00, 0x02, 0x7b, 0x7d]);
    const out = new TcpRequestDecoder().push(bytes);
    expect(out).toHaveLength(1);
    expect(out[0].format).toBe('0.8');
    expect(out[0].payload.length).toBe(size);
  });

  it.each([0x00027b00, 0x00027b22, 0x00037b41, 0x00107b7d])('reads a 0.8 frame whose length bytes start with "{" as 0.8 (payload of %i bytes)', (size) => {
    const out = new TcpRequestDecoder().push(concat(encodeTcpRequestV08('generate', payload(size)), encodeTcpRequestV08('next', payload(24))));
    expect(out.map((f) => [f.format, f.path, f.payload.length])).toEqual([
      ['0.8', 'generate', size],
      ['0.8', 'next', 24],
    ]);
  });

  it('accepts "{}" headers, an empty headers section (also with a payload over 1.5 MiB), and a 0.9 payload that starts with "{"', () => {
    const json = enc.encode('{"id":1}'.padEnd(40, ' '));
    const out = new TcpRequestDecoder(64 * 1024 * 1024).push(
      concat(frame09(PATH, '{}', payload(24)), frame09(PATH, '', payload(300)), frame09(PATH, '', payload(70_000)), frame09(PATH, '', payload(2_000_000)), frame09(PATH, '{}', json)),
    );
    expect(out.map((f) => [f.format, f.path, f.headers, f.payload.length])).toEqual([
      ['0.9', PATH, {}, 24],
      ['0.9', PATH, {}, 300],
      ['0.9', PATH, {}, 70_000],
      ['0.9', PATH, {}, 2_000_000],
      ['0.9', PATH, {}, 40],
    ]);
    expect(out[4].payload).toEqual(json);
  });

  it('answers at once a malformed frame that reads as 0.9: empty path, "{}" headers, empty payload', () => {
    const d = new TcpRequestDecoder();
    // What an independent checker sent: 00 00 | 00 02 | {} | 00 00 00 00. Read as 0.8 it would be the
    // start of a 162,685-byte payload; as 0.9 it is complete, so it must not wait for more bytes.
    const out = d.push(new Uint8Array([0, 0, 0, 2, 0x7b, 0x7d, 0, 0, 0, 0]));
    expect(out.map((f) => [f.format, f.path, f.payload.length])).toEqual([['0.9', '', 0]]);
    expect(d.push(encodeTcpRequest(PATH, HEADERS, payload(30))).map((f) => f.path)).toEqual([PATH]);
  });

  it('settles an ambiguous 0.8 frame split byte by byte by the connection\'s earlier 0.8 frames', () => {
    const d = new TcpRequestDecoder();
    const bytes = concat(encodeTcpRequestV08('generate', payload(100)), encodeTcpRequestV08('generate', payload(0x00027b7d)));
    const out = [];
    for (let i = 0; i < bytes.length; i++) out.push(...d.push(bytes.subarray(i, i + 1)).map((f) => [f.format, f.payload.length]));
    expect(out).toEqual([
      ['0.8', 100],
      ['0.8', 0x00027b7d],
    ]);
  });

  it('frames a 0.9 request whose payload is not even a TwoPart message (too short), so it can be refused', () => {
    const out = new TcpRequestDecoder().push(concat(encodeTcpRequest(PATH, HEADERS, enc.encode('garbage')), encodeTcpRequest(PATH, HEADERS, payload(24))));
    expect(out.map((f) => [f.format, new TextDecoder().decode(f.payload.subarray(0, 7))])).toEqual([
      ['0.9', 'garbage'],
      ['0.9', new TextDecoder().decode(payload(24).subarray(0, 7))],
    ]);
  });

  it('keeps a frame whose headers are not valid JSON, as Dynamo does, and says why', () => {
    const d = new TcpRequestDecoder();
    const out = d.push(concat(frame09(PATH, '{"x-endpoint-path":', payload(30)), encodeTcpRequest(PATH, HEADERS, payload(31))));
    expect(out).toHaveLength(2);
    expect(out[0].format).toBe('0.9');
    expect(out[0].headers).toEqual({});
    expect(out[0].headersError).toMatch(/not valid JSON/);
    expect(out[0].payload).toEqual(payload(30));
    expect(out[1].headersError).toBeNull();
  });

  it('frames an empty path and a path longer than 1024 bytes (Dynamo ≥ 1.2 has no path limit)', () => {
    const long = 'p'.repeat(2048);
    const out = new TcpRequestDecoder().push(concat(encodeTcpRequest('', {}, payload(24)), encodeTcpRequest(long, {}, payload(24))));
    expect(out.map((f) => f.path)).toEqual(['', long]);
  });

  it('reports a path that is not UTF-8 as null without breaking the stream', () => {
    const bad = frame09('xx', '{}', payload(24));
    bad[2] = 0xff;
    bad[3] = 0xfe;
    const out = new TcpRequestDecoder().push(concat(bad, encodeTcpRequest(PATH, HEADERS, payload(24))));
    expect(out.map((f) => f.path)).toEqual([null, PATH]);
  });

  it('refuses a frame over the size limit as soon as its lengths are known, after the frames before it', () => {
    const d = new TcpRequestDecoder(1000);
    const ok = encodeTcpRequest(PATH, HEADERS, payload(100));
    const big = encodeTcpRequest(PATH, HEADERS, payload(2000));
    // Only the big frame's header arrives: the limit is enforced before its payload is buffered.
    const out = d.push(concat(ok, big.subarray(0, 100)));
    expect(out).toHaveLength(1);
    expect(d.error?.message).toBe(`request frame of ${big.length} bytes exceeds DYN_TCP_MAX_MESSAGE_SIZE (1000)`);
    expect(d.push(ok)).toEqual([]);
  });

  it('limits the whole frame, not only the payload (a frame of exactly the limit passes)', () => {
    const f = encodeTcpRequest(PATH, HEADERS, payload(100));
    expect(new TcpRequestDecoder(f.length).push(f)).toHaveLength(1);
    const d = new TcpRequestDecoder(f.length - 1);
    expect(d.push(f)).toEqual([]);
    expect(d.error).not.toBeNull();
  });

  it('gives back the memory of a large frame once it is consumed', () => {
    const d = new TcpRequestDecoder(64 * 1024 * 1024, 1024 * 1024);
    const big = encodeTcpRequest(PATH, HEADERS, payload(3 * 1024 * 1024));
    for (let i = 0; i < big.length; i += 65536) d.push(big.subarray(i, i + 65536));
    expect(d.bufferedBytes).toBe(0);
    expect((d as unknown as { buf: Uint8Array }).buf.length).toBeLessThanOrEqual(1024 * 1024);
  });
});

describe('TcpResponseDecoder', () => {
  it('splits ACKs and error replies, also across chunks', () => {
    const err = enc.encode('Server overloaded: worker at capacity');
    const reply = new Uint8Array(4 + err.length);
    new DataView(reply.buffer).setUint32(0, err.length);
    reply.set(err, 4);
    const bytes = concat(TCP_ACK, reply, TCP_ACK);
    const d = new TcpResponseDecoder();
    const out = [...d.push(bytes.subarray(0, 6)), ...d.push(bytes.subarray(6))];
    expect(out.map((r) => new TextDecoder().decode(r))).toEqual(['', 'Server overloaded: worker at capacity', '']);
  });
});
