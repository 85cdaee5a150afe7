// Synthetic prompt tokens for trace replay: equal hash ids give equal tokens, so prefix reuse is real.
import { blockHash, sequenceHash, type Xxh3 } from '../core/hash.js';
import { createRng, mixSeed } from '../core/random.js';
import type { EngineRequest } from '../core/engine.js';
import { PRIVATE_BLOCK_KEY } from '../core/kv/block-pool.js';
import type { TraceRecord } from './trace.js';

const SHARED_CHUNK = 0x68617368; // distinguishes chunks named by a hash id …
const PRIVATE_CHUNK = 0x70726976; // … from the request-private chunks past the listed ids

/** Block hashes of one hash-id chunk reached through one particular prefix of chunks. */
interface ChunkNode {
  local: bigint[];
  seq: bigint[];
  children: Map<number, ChunkNode>;
}

/** How many trace requests walk through each hash-id prefix. */
interface CountNode {
  count: number;
  children: Map<number, CountNode>;
}


export class SyntheticPrompts {
  private readonly root: ChunkNode = { local: [], seq: [], children: new Map() };
  private readonly localById = new Map<number, bigint[]>();
  private readonly chunk: Uint32Array;
  /** When whole KV blocks tile each chunk, hashes can be memoised per chunk. */
  private readonly aligned: boolean;
  private readonly counts: CountNode = { count: 0, children: new Map() };

  constructor(
    private readonly hasher: Xxh3 | null,
    private readonly blockSize: number,
    private readonly traceBlockSize: number,
    private readonly vocabSize: number,
    private readonly seed: number,
    /** Off: hash every block (the reference behaviour the private-block shortcut must reproduce). */
    private readonly markPrivate = true,
  ) {
    this.chunk = new Uint32Array(traceBlockSize);
    this.aligned = traceBlockSize % blockSize === 0;
  }

  /**
   * Counts the hash-id prefixes of the whole trace, so that prompt blocks only one request walks
   * through are marked private instead of hashed: the cache behaves identically.
   */
  prepare(records: readonly TraceRecord[]): void {
    for (const r of records) {
      let node = this.counts;
      for (const id of r.hashIds) {
        let child = node.children.get(id);
        if (!child) {
          child = { count: 0, children: new Map() };
          node.children.set(id, child);
        }
        child.count++;
        node = child;
      }
    }
  }

  /** The engine request for one trace record (key = trace index). */
  request(record: TraceRecord): EngineRequest {
    // Output ids are never reported; unless every block must be hashed (the reference mode), they
    // are neither drawn nor hashed.
    const base = { key: record.index, promptLength: record.inputLength, maxTokens: record.outputLength, seed: record.index, privateOutput: this.markPrivate };
    if (!this.hasher) return { ...base, promptBlocks: { local: [], seq: [], tail: [] } };
    if (!this.aligned) return { ...base, promptTokens: this.allTokens(record) };
    return { ...base, promptBlocks: this.blocks(record, this.hasher) };
  }

  /** Fills the chunk buffer with the first `length` tokens of chunk `j` of `record`. */
  private fillChunk(record: TraceRecord, j: number, length = this.traceBlockSize): Uint32Array {
    const id = j < record.hashIds.length ? record.hashIds[j] : -1;
    const seed =
      id >= 0
        ? mixSeed(this.seed, SHARED_CHUNK, id % 0x100000000, Math.floor(id / 0x100000000))
        : mixSeed(this.seed, PRIVATE_CHUNK, record.index, j);
    const rng = createRng(seed);
    for (let i = 0; i < length; i++) this.chunk[i] = rng.nextInt(this.vocabSize);
    return this.chunk;
  }

  private allTokens(record: TraceRecord): Uint32Array {
    const out = new Uint32Array(record.inputLength);
    const S = this.traceBlockSize;
    for (let j = 0; j * S < record.inputLength; j++) {
      const n = Math.min(S, record.inputLength - j * S);
      out.set(this.fillChunk(record, j, n).subarray(0, n), j * S);
    }
    return out;
  }

  private blocks(record: TraceRecord, hasher: Xxh3): { local: bigint[]; seq: bigint[]; tail: number[] } {
    const S = this.traceBlockSize;
    const bs = this.blockSize;
    const perChunk = S / bs;
    const local: bigint[] = [];
    const seq: bigint[] = [];
    const tail: number[] = [];
    let node: ChunkNode | null = this.root;
    let counted: CountNode | undefined = this.counts;
    let parent: bigint | null = null;
    for (let j = 0; j * S < record.inputLength; j++) {
      const chunkLength = Math.min(S, record.inputLength - j * S);
      const fullBlocks = Math.floor(chunkLength / bs);
      counted = j < record.hashIds.length ? counted?.children.get(record.hashIds[j]) : undefined;
      const shared: boolean = node !== null && counted !== undefined && counted.count > 1;
      // The chunk's hashes: memoised when other requests walk the same prefix; computed afresh in the
      // reference mode (nobody else walks them); none when the rest of the prompt is private.
      let hashed: ChunkNode | null = null;
      if (shared) {
        const id = record.hashIds[j];
        hashed = node!.children.get(id) ?? null;
        if (!hashed) {
          hashed = this.hashChunk(record, j, parent, hasher, perChunk, id);
          node!.children.set(id, hashed);
        }
      } else if (!this.markPrivate) {
        hashed = this.hashChunk(record, j, parent, hasher, perChunk, j < record.hashIds.length ? record.hashIds[j] : -1);
      }
      for (let b = 0; b < fullBlocks; b++) {
        local.push(hashed ? hashed.local[b] : PRIVATE_BLOCK_KEY);
        seq.push(hashed ? hashed.seq[b] : PRIVATE_BLOCK_KEY);
      }
      node = shared ? hashed : null;
      if (seq.length) parent = seq[seq.length - 1];
      // The tail only matters when the block it starts could be shared, i.e. its parent is not private.
      if (chunkLength % bs !== 0 && parent !== PRIVATE_BLOCK_KEY) {
        const tokens = this.fillChunk(record, j, chunkLength);
        for (let i = fullBlocks * bs; i < chunkLength; i++) tail.push(tokens[i]);
      }
    }
    return { local, seq, tail };
  }

  private hashChunk(record: TraceRecord, j: number, parent: bigint | null, hasher: Xxh3, blocks: number, id: number): ChunkNode {
    let local = id >= 0 ? this.localById.get(id) : undefined;
    if (!local || local.length < blocks) {
      const tokens = this.fillChunk(record, j, blocks * this.blockSize);
      local = [];
      for (let b = 0; b < blocks; b++) local.push(blockHash(hasher, tokens, b * this.blockSize, (b + 1) * this.blockSize));
      if (id >= 0) this.localById.set(id, local);
    }
    const seq: bigint[] = [];
    let p = parent;
    for (let b = 0; b < blocks; b++) {
      p = sequenceHash(hasher, p, local[b]);
      seq.push(p);
    }
    return { local: blocks === local.length ? local : local.slice(0, blocks), seq, children: new Map() };
  }
}
