// TwoPartCodec framing: reference byte vectors, single-message decode errors and the TCP stream decoder.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  decodeTwoPart,
  encodeTwoPart,
  encodeTwoPartText,
  TWO_PART_PREFIX_BYTES,
  TwoPartError,
  TwoPartStreamDecoder,
  type TwoPartMessage,
} from '../../src/dynamo/two-part-codec.js';
import { createXxh3, type Xxh3Hasher } from '../../src/hashing/xxh3.js';
import { concatBytes } from '../helpers/bytes.js';

let xxh: Xxh3Hasher;
beforeAll(async () => {
  xxh = await createXxh3();
});

const enc = new TextEncoder();
const dec = new TextDecoder();
const u8 = (s: string) => enc.encode(s);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const text = (m: TwoPartMessage) => ({ header: dec.decode(m.header), body: dec.decode(m.body) });

function expectKind(fn: () => unknown, kind: TwoPartError['kind']): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TwoPartError);
    expect((err as TwoPartError).kind).toBe(kind);
    return;
  }
  expect.unreachable(`expected TwoPartError(${kind})`);
}

describe('encodeTwoPart reference vectors (§4.1)', () => {
  it('handshake for subject abc', () => {
    const header = u8('{"subject":"abc","stream_type":"response"}');
    expect(header.length).toBe(42);
    const frame = encodeTwoPart(header, new Uint8Array(0), xxh);
    expect(hex(frame.subarray(0, 24))).toBe(
      '000000000000002a' + '0000000000000000' + 'da40868b546eddd8',
    );
    expect(dec.decode(frame.subarray(24))).toBe('{"subject":"abc","stream_type":"response"}');
  });

  it('prologue and sentinel checksums', () => {
    const pro = encodeTwoPart(u8('{"error":null}'), new Uint8Array(0), xxh);
    expect(hex(pro.subarray(0, 8))).toBe('000000000000000e');
    expect(hex(pro.subarray(16, 24))).toBe('f0e61489b502a52a');
    const sen = encodeTwoPart(u8('"sentinel"'), new Uint8Array(0), xxh);
    expect(hex(sen.subarray(0, 8))).toBe('000000000000000a');
    expect(hex(sen.subarray(16, 24))).toBe('3993296f71e74889');
  });

  it('data-only frame puts the length in body_len', () => {
    const f = encodeTwoPart(new Uint8Array(0), u8('{"complete_final":true}'), xxh);
    const v = new DataView(f.buffer, f.byteOffset);
    expect(v.getBigUint64(0, false)).toBe(0n);
    expect(v.getBigUint64(8, false)).toBe(23n);
    expect(v.getBigUint64(16, false)).toBe(xxh.hash0(u8('{"complete_final":true}')));
  });

  it('empty message checksum is XXH3(empty)', () => {
    const f = encodeTwoPart(new Uint8Array(0), new Uint8Array(0), xxh);
    expect(f.length).toBe(24);
    expect(hex(f.subarray(16))).toBe('2d06800538d394c2');
  });

  it('encodeTwoPartText matches encodeTwoPart, including non-ASCII', () => {
    for (const [h, b] of [
      ['{"subject":"abc","stream_type":"response"}', ''],
      ['', '{"data":{"data":{"token_ids":[4021]}},"complete_final":false}'],
      ['{"h":"é中😀"}', '{"b":"ü"}'],
      ['', ''],
    ] as const) {
      expect(hex(encodeTwoPartText(h, b, xxh))).toBe(hex(encodeTwoPart(u8(h), u8(b), xxh)));
    }
  });
});

describe('decodeTwoPart', () => {
  it('round-trips header and body', () => {
    const f = encodeTwoPart(u8('{"id":"x"}'), u8('{"token_ids":[1]}'), xxh);
    expect(text(decodeTwoPart(f, xxh))).toEqual({ header: '{"id":"x"}', body: '{"token_ids":[1]}' });
    expect(text(decodeTwoPart(f))).toEqual({ header: '{"id":"x"}', body: '{"token_ids":[1]}' });
  });

  it('accepts a zero checksum (release builds) without verifying', () => {
    const f = encodeTwoPart(u8('h'), u8('b'), xxh);
    f.fill(0, 16, 24);
    expect(text(decodeTwoPart(f, xxh))).toEqual({ header: 'h', body: 'b' });
  });

  it('works on a view with a non-zero byteOffset', () => {
    const f = encodeTwoPart(u8('hh'), u8('bbb'), xxh);
    const padded = new Uint8Array(f.length + 7);
    padded.set(f, 5);
    expect(text(decodeTwoPart(padded.subarray(5, 5 + f.length), xxh))).toEqual({ header: 'hh', body: 'bbb' });
  });

  it('rejects a bad checksum', () => {
    const f = encodeTwoPart(u8('{"a":1}'), u8('{}'), xxh);
    f[f.length - 1] ^= 1;
    expectKind(() => decodeTwoPart(f, xxh), 'checksum');
    // Without a hasher the checksum is not checked.
    expect(() => decodeTwoPart(f)).not.toThrow();
  });

  it('rejects frames shorter than the prefix', () => {
    expectKind(() => decodeTwoPart(new Uint8Array(0)), 'too-short');
    expectKind(() => decodeTwoPart(new Uint8Array(23)), 'too-short');
  });

  it('rejects truncated frames and trailing bytes', () => {
    const f = encodeTwoPart(u8('header'), u8('body'), xxh);
    expectKind(() => decodeTwoPart(f.subarray(0, f.length - 1), xxh), 'length-mismatch');
    const longer = new Uint8Array(f.length + 1);
    longer.set(f);
    expectKind(() => decodeTwoPart(longer, xxh), 'length-mismatch');
  });

  it('rejects huge u64 lengths as a mismatch', () => {
    const f = new Uint8Array(30);
    const v = new DataView(f.buffer);
    v.setBigUint64(0, 0xffff_ffff_ffff_fff0n, false);
    v.setBigUint64(8, 22n, false); // wraps to 6 if added in 64-bit arithmetic
    expectKind(() => decodeTwoPart(f), 'length-mismatch');
  });
});

describe('TwoPartStreamDecoder', () => {
  const frames = () => [
    encodeTwoPartText('{"subject":"abc","stream_type":"response"}', '', xxh),
    encodeTwoPartText('{"error":null}', '', xxh),
    encodeTwoPartText('', '{"data":{"data":{"token_ids":[1]}},"complete_final":false}', xxh),
    encodeTwoPartText('', '', xxh),
    encodeTwoPartText('', '{"complete_final":true}', xxh),
    encodeTwoPartText('"sentinel"', '', xxh),
  ];
  const expected = () => frames().map((f) => text(decodeTwoPart(f, xxh)));
  const concat = (parts: Uint8Array[]) => concatBytes(...parts);

  it('decodes several frames in one chunk', () => {
    const d = new TwoPartStreamDecoder({ xxh });
    expect(d.push(concat(frames())).map(text)).toEqual(expected());
    expect(d.bufferedBytes).toBe(0);
    d.finish();
  });

  it('decodes byte-by-byte', () => {
    const d = new TwoPartStreamDecoder({ xxh });
    const all = concat(frames());
    const out: TwoPartMessage[] = [];
    for (let i = 0; i < all.length; i++) out.push(...d.push(all.subarray(i, i + 1)));
    expect(out.map(text)).toEqual(expected());
    d.finish();
  });

  it('decodes at every split point of the whole stream', () => {
    const all = concat(frames());
    for (let cut = 0; cut <= all.length; cut++) {
      const d = new TwoPartStreamDecoder({ xxh });
      const out = [...d.push(all.slice(0, cut)), ...d.push(all.slice(cut))];
      expect(out.map(text)).toEqual(expected());
    }
  });

  it('handles random chunking with a large frame', () => {
    const big = 'x'.repeat(200_000);
    const parts = [...frames(), encodeTwoPartText('{"h":1}', big, xxh), ...frames()];
    const all = concat(parts);
    let seed = 42;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed);
    const d = new TwoPartStreamDecoder({ xxh });
    const out: TwoPartMessage[] = [];
    for (let o = 0; o < all.length; ) {
      const n = 1 + (rnd() % 5000);
      out.push(...d.push(all.subarray(o, o + n)));
      o += n;
    }
    expect(out.length).toBe(13);
    expect(dec.decode(out[6].body)).toBe(big);
    d.finish();
  });

  it('pushing an empty chunk is a no-op', () => {
    const d = new TwoPartStreamDecoder();
    expect(d.push(new Uint8Array(0))).toEqual([]);
  });

  it('finish() reports a truncated stream', () => {
    const f = frames()[0];
    const d = new TwoPartStreamDecoder();
    expect(d.push(f.subarray(0, 10))).toEqual([]);
    expectKind(() => d.finish(), 'too-short');
    const d2 = new TwoPartStreamDecoder();
    d2.push(f.subarray(0, 30));
    expect(d2.bufferedBytes).toBe(30);
    expectKind(() => d2.finish(), 'too-short');
  });

  it('rejects a bad checksum and stays failed', () => {
    const f = frames()[1];
    f[f.length - 2] ^= 0x20;
    const d = new TwoPartStreamDecoder({ xxh });
    expectKind(() => d.push(f), 'checksum');
    expectKind(() => d.push(frames()[0]), 'checksum');
  });

  it('accepts zero checksums', () => {
    const f = frames()[2];
    f.fill(0, 16, 24);
    const d = new TwoPartStreamDecoder({ xxh });
    expect(d.push(f)).toHaveLength(1);
  });

  it('rejects absurd lengths before buffering', () => {
    const prefix = new Uint8Array(TWO_PART_PREFIX_BYTES);
    const v = new DataView(prefix.buffer);
    v.setBigUint64(0, 300n * 1024n * 1024n, false);
    expectKind(() => new TwoPartStreamDecoder().push(prefix), 'too-large');

    v.setBigUint64(0, 0n, false);
    v.setBigUint64(8, 1n << 40n, false);
    expectKind(() => new TwoPartStreamDecoder().push(prefix), 'too-large');

    // Split prefix takes the slow path; same verdict.
    v.setBigUint64(8, 200n * 1024n * 1024n, false);
    v.setBigUint64(0, 100n * 1024n * 1024n, false);
    const d = new TwoPartStreamDecoder();
    d.push(prefix.subarray(0, 5));
    expectKind(() => d.push(prefix.subarray(5)), 'too-large');
  });

  it('honours a custom maxMessageBytes', () => {
    const d = new TwoPartStreamDecoder({ maxMessageBytes: 10 });
    expectKind(() => d.push(encodeTwoPartText('{"error":null}', '', xxh)), 'too-large');
  });
});
