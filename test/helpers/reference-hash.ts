// The router's hash rule (wire §6.2), computed with hash-wasm alone, to check the worker's hashes independently.
import { createXXHash3 } from 'hash-wasm';

const hasher = await createXXHash3(1337);

/** XXH3-64 with seed 1337. */
export function xxh1337(bytes: Uint8Array): bigint {
  hasher.init();
  hasher.update(bytes);
  return BigInt(`0x${hasher.digest('hex')}`);
}

/** tokens_hash of each full block: XXH3-64 seed 1337 over the tokens as u32 LE. */
export function tokenHashes(tokens: readonly number[], bs: number): bigint[] {
  const out: bigint[] = [];
  for (let b = 0; b + bs <= tokens.length; b += bs) {
    const bytes = new Uint8Array(bs * 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < bs; i++) view.setUint32(i * 4, tokens[b + i], true);
    out.push(xxh1337(bytes));
  }
  return out;
}

/** The chained hash of a block: its tokens hash for the first block, else XXH3(parent LE ‖ tokens hash LE). */
export function chain(parent: bigint | null, tokensHash: bigint): bigint {
  if (parent === null) return tokensHash;
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, parent, true);
  view.setBigUint64(8, tokensHash, true);
  return xxh1337(bytes);
}

/** Block hashes (chained sequence hashes) of every full block. */
export function seqHashes(tokens: readonly number[], bs: number): bigint[] {
  const out: bigint[] = [];
  for (const local of tokenHashes(tokens, bs)) out.push(chain(out.length ? out[out.length - 1] : null, local));
  return out;
}

/** The XXH3 the test index uses to check every stored block's chain (the fixture's `hasher` option). */
export const referenceXxh3 = { hash1337: xxh1337 };
