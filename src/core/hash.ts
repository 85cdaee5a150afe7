// KV block hashing that matches Dynamo's router (tokens_hash) and lib/tokens sequence hashes bit-for-bit.

/** Injected XXH3 implementation; the pure core never loads WASM itself. */
export interface Xxh3 {
  /** XXH3-64 with seed 1337 of bytes */
  hash1337(bytes: Uint8Array): bigint;
}

/** Dynamo's XXH3_SEED for both the router's LocalBlockHash and the mocker's sequence hashes. */
export const KV_HASH_SEED = 1337;

// Shared scratch space: hashing is synchronous, so one buffer per module is enough and keeps the
// per-block path free of allocations once it has grown to the working block size.
let scratch = new Uint8Array(256);
let scratchView = new DataView(scratch.buffer);

const pairBuf = new Uint8Array(16);
const pairView = new DataView(pairBuf.buffer);

// On little-endian hosts a Uint32Array already holds the exact wire bytes, so we can hash a view.
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function ensureScratch(bytes: number): void {
  if (scratch.length >= bytes) return;
  let size = scratch.length;
  while (size < bytes) size *= 2;
  scratch = new Uint8Array(size);
  scratchView = new DataView(scratch.buffer);
}

/**
 * Encodes tokens[start..end) as u32 little-endian bytes.
 * Without `scratch` the result is a view into a shared module buffer that is overwritten by the next
 * call; pass your own buffer (at least 4*(end-start) bytes) to keep the result.
 */
export function tokensToBytes(
  tokens: ArrayLike<number>,
  start: number,
  end: number,
  scratchBuf?: Uint8Array,
): Uint8Array {
  if (!(start >= 0 && end >= start && end <= tokens.length)) {
    throw new RangeError(`token range [${start}, ${end}) out of bounds for length ${tokens.length}`);
  }
  const n = (end - start) * 4;
  if (HOST_LITTLE_ENDIAN && scratchBuf === undefined && tokens instanceof Uint32Array) {
    return new Uint8Array(tokens.buffer, tokens.byteOffset + start * 4, n);
  }
  let out: Uint8Array;
  let view: DataView;
  if (scratchBuf !== undefined) {
    if (scratchBuf.length < n) {
      throw new RangeError(`scratch buffer too small: need ${n} bytes, have ${scratchBuf.length}`);
    }
    out = scratchBuf;
    view = new DataView(scratchBuf.buffer, scratchBuf.byteOffset, scratchBuf.byteLength);
  } else {
    ensureScratch(n);
    out = scratch;
    view = scratchView;
  }
  for (let i = start, o = 0; i < end; i++, o += 4) {
    view.setUint32(o, tokens[i], true);
  }
  return out.subarray(0, n);
}

/** Router LocalBlockHash / `tokens_hash`: XXH3-64(seed 1337) over the block's u32 LE token bytes. */
export function blockHash(h: Xxh3, tokens: ArrayLike<number>, start: number, end: number): bigint {
  return h.hash1337(tokensToBytes(tokens, start, end));
}

/** Sequence hash: the first block's is its own block hash; later ones chain XXH3(parent LE ‖ local LE). */
export function sequenceHash(h: Xxh3, parent: bigint | null, local: bigint): bigint {
  if (parent === null) return local;
  pairView.setBigUint64(0, parent, true);
  pairView.setBigUint64(8, local, true);
  return h.hash1337(pairBuf);
}

/** Block and sequence hashes of every full block; a trailing partial block is ignored like the router does. */
export function sequenceHashes(
  h: Xxh3,
  tokens: ArrayLike<number>,
  blockSize: number,
): { local: bigint[]; seq: bigint[] } {
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
  }
  const blocks = Math.floor(tokens.length / blockSize);
  const local = new Array<bigint>(blocks);
  const seq = new Array<bigint>(blocks);
  let parent: bigint | null = null;
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const l = blockHash(h, tokens, start, start + blockSize);
    const s = sequenceHash(h, parent, l);
    local[b] = l;
    seq[b] = s;
    parent = s;
  }
  return { local, seq };
}
