// hash-wasm backed XXH3-64 (seeds 1337 and 0) and BLAKE3 hashers, initialised once and synchronous after.
import { createRequire } from 'node:module';
import type { IHasher, createBLAKE3 as CreateBlake3, createXXHash3 as CreateXxHash3 } from 'hash-wasm';
import { KV_HASH_SEED, type Xxh3 } from '../core/hash.js';

// hash-wasm's per-algorithm bundles: its all-in-one entry embeds every algorithm's WASM, which costs
// about 20 ms of start-up to load and initialise for the two this worker uses.
const require = createRequire(import.meta.url);
const { createXXHash3 } = require('hash-wasm/dist/xxhash3.umd.min.js') as { createXXHash3: typeof CreateXxHash3 };
const { createBLAKE3 } = require('hash-wasm/dist/blake3.umd.min.js') as { createBLAKE3: typeof CreateBlake3 };

/** Xxh3 plus the seed-0 variant the TwoPartCodec checksum uses. */
export type Xxh3Hasher = Xxh3 & { hash0(bytes: Uint8Array): bigint };

// Copying the 8 digest bytes into one long-lived view is cheaper than a DataView per call.
const digestBytes = new Uint8Array(8);
const digestView = new DataView(digestBytes.buffer);

function digest64(hasher: IHasher, bytes: Uint8Array): bigint {
  hasher.init();
  hasher.update(bytes);
  // Canonical XXH3 digest order is big-endian.
  digestBytes.set(hasher.digest('binary'));
  return digestView.getBigUint64(0, false);
}

export async function createXxh3(): Promise<Xxh3Hasher> {
  // Separate instances: each owns its own WASM memory, so the seeds never clobber each other.
  const [h1337, h0] = await Promise.all([createXXHash3(KV_HASH_SEED, 0), createXXHash3(0, 0)]);
  return {
    hash1337: (bytes) => digest64(h1337, bytes),
    hash0: (bytes) => digest64(h0, bytes),
  };
}

export async function createBlake3Hex(): Promise<(bytes: Uint8Array) => string> {
  const h = await createBLAKE3();
  return (bytes) => {
    h.init();
    h.update(bytes);
    return h.digest('hex');
  };
}
