// Verifies KV block/sequence hashing against Dynamo's own test vectors and the hash-wasm adapters.
import { beforeAll, describe, expect, it } from 'vitest';
import {
  blockHash,
  KV_HASH_SEED,
  sequenceHash,
  sequenceHashes,
  tokensToBytes,
  type Xxh3,
} from '../../src/core/hash.js';
import { createBlake3Hex, createXxh3, type Xxh3Hasher } from '../../src/hashing/xxh3.js';

let h: Xxh3Hasher;

beforeAll(async () => {
  h = await createXxh3();
});

const B1 = 14643705804678351452n;
const B2_LOCAL = 16777012769546811212n;
const B2_SEQ = 4945711292740353085n;

describe('xxh3 adapter', () => {
  it('seed 0 of empty input is the standard vector', () => {
    expect(h.hash0(new Uint8Array(0))).toBe(0x2d06800538d394c2n);
  });

  it('seed constant is 1337', () => {
    expect(KV_HASH_SEED).toBe(1337);
  });

  it('hashers with different seeds do not interfere when interleaved', () => {
    const bytes = new Uint8Array([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
    const a = h.hash1337(bytes);
    const z = h.hash0(new Uint8Array(0));
    expect(h.hash1337(bytes)).toBe(a);
    expect(a).toBe(B1);
    expect(z).toBe(0x2d06800538d394c2n);
  });

  it('returns unsigned 64-bit values', () => {
    for (let i = 0; i < 50; i++) {
      const v = h.hash1337(new Uint8Array([i]));
      expect(v >= 0n && v < 1n << 64n).toBe(true);
    }
  });

  it('handles inputs larger than one WASM chunk consistently', () => {
    const big = new Uint8Array(1 << 20).map((_, i) => i & 0xff);
    expect(h.hash0(big)).toBe(h.hash0(big.slice()));
  });
});

describe('blake3', () => {
  it('produces lowercase hex matching the standard empty-input vector', async () => {
    const b3 = await createBlake3Hex();
    expect(b3(new Uint8Array(0))).toBe('af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
    expect(b3(new TextEncoder().encode('abc'))).toBe(
      '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85',
    );
  });
});

describe('tokensToBytes', () => {
  it('encodes u32 little-endian', () => {
    expect(Array.from(tokensToBytes([1, 0x01020304, 0xffffffff], 0, 3))).toEqual([
      1, 0, 0, 0, 4, 3, 2, 1, 0xff, 0xff, 0xff, 0xff,
    ]);
  });

  it('respects start/end', () => {
    expect(Array.from(tokensToBytes([9, 1, 2, 9], 1, 3))).toEqual([1, 0, 0, 0, 2, 0, 0, 0]);
  });

  it('writes into a caller scratch buffer', () => {
    const scratch = new Uint8Array(64);
    const out = tokensToBytes([7, 8], 0, 2, scratch);
    expect(out.buffer).toBe(scratch.buffer);
    expect(Array.from(out)).toEqual([7, 0, 0, 0, 8, 0, 0, 0]);
  });

  it('rejects a too-small scratch and bad ranges', () => {
    expect(() => tokensToBytes([1, 2], 0, 2, new Uint8Array(4))).toThrow(RangeError);
    expect(() => tokensToBytes([1, 2], 1, 3)).toThrow(RangeError);
    expect(() => tokensToBytes([1, 2], 2, 1)).toThrow(RangeError);
  });

  it('grows the shared scratch for long blocks', () => {
    const tokens = Array.from({ length: 1000 }, (_, i) => i);
    const out = tokensToBytes(tokens, 0, 1000);
    expect(out.length).toBe(4000);
    expect(new DataView(out.buffer, out.byteOffset).getUint32(999 * 4, true)).toBe(999);
  });

  it('Uint32Array input gives the same bytes', () => {
    const arr = new Uint32Array([0, 5, 6, 7, 8]);
    expect(Array.from(tokensToBytes(arr, 1, 5))).toEqual(Array.from(tokensToBytes([5, 6, 7, 8], 0, 4)));
  });
});

describe('Dynamo vectors (block size 4, salt 1337)', () => {
  it('block hashes', () => {
    expect(blockHash(h, [1, 2, 3, 4], 0, 4)).toBe(B1);
    expect(blockHash(h, [5, 6, 7, 8], 0, 4)).toBe(B2_LOCAL);
    expect(blockHash(h, [1, 2, 3, 4, 5, 6, 7, 8], 4, 8)).toBe(B2_LOCAL);
    expect(blockHash(h, new Uint32Array([1, 2, 3, 4, 5, 6, 7, 8]), 4, 8)).toBe(B2_LOCAL);
  });

  it('sequence hashes', () => {
    expect(sequenceHash(h, null, B1)).toBe(B1);
    expect(sequenceHash(h, B1, B2_LOCAL)).toBe(B2_SEQ);
  });

  it('sequenceHashes over a prompt, ignoring the trailing partial block', () => {
    const r = sequenceHashes(h, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 4);
    expect(r.local).toEqual([B1, B2_LOCAL]);
    expect(r.seq).toEqual([B1, B2_SEQ]);
  });

  it('sequenceHashes with fewer tokens than a block is empty', () => {
    expect(sequenceHashes(h, [1, 2, 3], 4)).toEqual({ local: [], seq: [] });
  });

  it('rejects a bad block size', () => {
    expect(() => sequenceHashes(h, [1], 0)).toThrow(RangeError);
    expect(() => sequenceHashes(h, [1], 1.5)).toThrow(RangeError);
  });

  it('core functions work with any injected hasher', () => {
    const seen: number[][] = [];
    const fake: Xxh3 = {
      hash1337(bytes) {
        seen.push(Array.from(bytes));
        return BigInt(bytes.length);
      },
    };
    const r = sequenceHashes(fake, [1, 2], 1);
    expect(r.local).toEqual([4n, 4n]);
    expect(r.seq).toEqual([4n, 16n]);
    expect(seen[2]).toEqual([4, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
  });
});

describe('purity', () => {
  it('src/core/hash.ts imports nothing (hasher is injected)', async () => {
    const { readFile } = await import('node:fs/promises');
    const src = await readFile(new URL('../../src/core/hash.ts', import.meta.url), 'utf8');
    expect(src).not.toMatch(/^\s*import\s/m);
    expect(src).not.toMatch(/hash-wasm|node:/);
  });
});
