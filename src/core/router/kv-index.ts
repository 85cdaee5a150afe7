// The KV router's index of which worker (and DP rank) holds which cached block, rebuilt from the workers' KV events.
import type { KvEventData } from '../types.js';

/**
 * Block sequence hash → the candidates (worker × DP rank, numbered by the caller) whose cache holds
 * it. Overlap is a contiguous prefix, as in Dynamo's radix tree (`find_matches`): a candidate
 * scores the number of the request's leading blocks it holds, and a block it lacks ends its count
 * even if it holds later ones. A sequence hash names its whole prefix, so the request's hash list
 * is its path through the tree.
 */
export class KvOverlapIndex {
  /** One holder is the common case, kept without an array. */
  private readonly holders = new Map<bigint, number | number[]>();
  private readonly held: Int32Array;
  /** Scratch for `overlaps`: the candidates still matching. */
  private active: Int32Array;
  private next: Int32Array;

  constructor(readonly candidates: number) {
    this.held = new Int32Array(candidates);
    this.active = new Int32Array(candidates);
    this.next = new Int32Array(candidates);
  }

  /** Applies one KV event of `candidate` (stored, removed or cleared). */
  apply(candidate: number, data: KvEventData): void {
    if (data.kind === 'stored') {
      for (const block of data.blocks) this.add(candidate, block.blockHash);
    } else if (data.kind === 'removed') {
      for (const hash of data.blockHashes) this.remove(candidate, hash);
    } else if (this.held[candidate] > 0) {
      // Rare (a cache reset): a walk over the whole index beats a per-candidate set on every event.
      for (const hash of [...this.holders.keys()]) this.remove(candidate, hash);
    }
  }

  /** Sets `scores[c]` to candidate c's overlap: how many of the request's leading blocks it holds. */
  overlaps(hashes: readonly bigint[], scores: Int32Array, length = hashes.length): void {
    scores.fill(0);
    if (length === 0) return;
    const first = this.holders.get(hashes[0]);
    if (first === undefined) return;
    let active = this.active;
    let next = this.next;
    let n = 0;
    if (typeof first === 'number') active[n++] = first;
    else for (const c of first) active[n++] = c;
    let depth = 1;
    for (; depth < length && n > 0; depth++) {
      const h = this.holders.get(hashes[depth]);
      let m = 0;
      for (let i = 0; i < n; i++) {
        const c = active[i];
        if (h !== undefined && (h === c || (typeof h !== 'number' && h.includes(c)))) next[m++] = c;
        else scores[c] = depth;
      }
      [active, next] = [next, active];
      n = m;
    }
    for (let i = 0; i < n; i++) scores[active[i]] = depth;
    this.active = active;
    this.next = next;
  }

  /** Blocks the index holds for `candidate` (tests, consistency checks). */
  blocksOf(candidate: number): number {
    return this.held[candidate];
  }

  private add(candidate: number, hash: bigint): void {
    const h = this.holders.get(hash);
    if (h === undefined) this.holders.set(hash, candidate);
    else if (typeof h === 'number') {
      if (h === candidate) return;
      this.holders.set(hash, [h, candidate]);
    } else {
      if (h.includes(candidate)) return;
      h.push(candidate);
    }
    this.held[candidate]++;
  }

  private remove(candidate: number, hash: bigint): void {
    const h = this.holders.get(hash);
    if (h === undefined) return;
    if (typeof h === 'number') {
      if (h !== candidate) return;
      this.holders.delete(hash);
    } else {
      const at = h.indexOf(candidate);
      if (at < 0) return;
      h.splice(at, 1);
      if (h.length === 1) this.holders.set(hash, h[0]);
    }
    this.held[candidate]--;
  }
}
