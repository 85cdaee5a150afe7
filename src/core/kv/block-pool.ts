// KV block pool: active blocks with refcounts, cached inactive blocks in an LRU, KV events as data.
import type { KvEvent, StoredBlock } from '../types.js';

/**
 * Key for a full block that provably no other request can share (trace replay knows this in
 * advance). It is above 2^64, so no real hash equals it; such blocks occupy capacity and age in
 * the LRU like any other, and are never hashed or announced. Only their owner can find them again
 * (after a preemption), exactly as it would find its own hashed blocks.
 */
export const PRIVATE_BLOCK_KEY = 1n << 64n;

/** Shared result for passes without events (most of them when the cache is warm). */
const NO_EVENTS: KvEvent[] = [];

/** A full block, keyed by its chained sequence hash. */
export interface CachedBlock {
  readonly hash: bigint;
  readonly tokensHash: bigint;
  /** The block before this one in its sequence (null for a first block), as its Stored event named it. */
  readonly parent: bigint | null;
  /**
   * 1 for a real block. A run of consecutive private blocks of one sequence is one entry: they are
   * committed, freed and aged together, and eviction may take part of a run.
   */
  count: number;
  /** Private runs only: the owning sequence's key and the block index the run starts at. */
  owner: number;
  start: number;
  refCount: number;
  /** Logical time at which the block last became inactive (LRU order). */
  freedAt: number;
  prev: CachedBlock | null;
  next: CachedBlock | null;
}

export interface PrefixProbe {
  /** Leading blocks found in the cache (active or inactive), contiguous from block 0. */
  hitBlocks: number;
  /** How many of those hits are currently active (need no new capacity). */
  activeHitBlocks: number;
}

/**
 * The allocator knows blocks, not requests. Capacity is counted over active and inactive blocks;
 * an uncommitted "slot" is a block still being filled (or any block when prefix caching is off).
 */
export class BlockPool {
  /** Stored events name the sequence whose blocks they report (`KvEvent.owner`), for per-request KV-event faults. */
  tagEventOwners = false;
  private readonly cache = new Map<bigint, CachedBlock>();
  /** Inactive private runs of each owner (usually one), for the owner's own prefix hits. */
  private readonly inactiveRuns = new Map<number, CachedBlock[]>();
  private lruHead: CachedBlock | null = null;
  private lruTail: CachedBlock | null = null;
  private inactive = 0;
  private active = 0;
  private clock = 0;
  private nextEventId = 0;
  private pending: KvEvent[] = [];

  constructor(
    readonly capacity: number,
    readonly prefixCaching: boolean,
    readonly dpRank = 0,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`block pool capacity must be ≥ 1, got ${capacity}`);
  }

  /** Blocks referenced by at least one sequence, plus uncommitted slots. */
  get activeBlocks(): number {
    return this.active;
  }

  /** Cached blocks that nobody references (evictable). */
  get inactiveBlocks(): number {
    return this.inactive;
  }

  /** Blocks a new allocation can get, evicting inactive ones if needed. */
  get freeBlocks(): number {
    return this.capacity - this.active;
  }

  /** Inactive block hashes from least to most recently freed (tests and debugging). */
  inactiveHashes(): bigint[] {
    const out: bigint[] = [];
    for (let b = this.lruHead; b; b = b.next) out.push(b.hash);
    return out;
  }

  lookup(hash: bigint): CachedBlock | undefined {
    return this.cache.get(hash);
  }

  /**
   * Counts the contiguous cached prefix of `hashes`, looking at no more than `maxBlocks`. Private
   * blocks are found only in the inactive run of `owner` that starts at their index.
   */
  probe(hashes: readonly bigint[], maxBlocks: number, owner = -1): PrefixProbe {
    let hitBlocks = 0;
    let activeHitBlocks = 0;
    if (!this.prefixCaching) return { hitBlocks, activeHitBlocks };
    const limit = Math.min(maxBlocks, hashes.length);
    for (; hitBlocks < limit; hitBlocks++) {
      const hash = hashes[hitBlocks];
      if (hash === PRIVATE_BLOCK_KEY) {
        for (let run = this.runAt(owner, hitBlocks); run && hitBlocks < limit; run = this.runAt(owner, hitBlocks)) {
          hitBlocks += Math.min(run.count, limit - hitBlocks);
        }
        break;
      }
      const block = this.cache.get(hash);
      if (!block) break;
      if (block.refCount > 0) activeHitBlocks++;
    }
    return { hitBlocks, activeHitBlocks };
  }

  /** Takes references on the first `count` blocks of `hashes` (a probed prefix hit) into `out`. */
  acquirePrefix(hashes: readonly bigint[], count: number, owner: number, out: CachedBlock[]): void {
    let i = 0;
    for (; i < count && hashes[i] !== PRIVATE_BLOCK_KEY; i++) out.push(this.acquire(hashes[i]));
    if (i === count) return;
    // The owner's own private blocks: one active run made of the front of its cached runs.
    const active = this.privateRun(owner, i, 0);
    out.push(active);
    while (i < count) {
      const run = this.runAt(owner, i);
      if (!run) throw new Error(`private block ${i} of ${owner} is not cached`);
      const taken = Math.min(run.count, count - i);
      this.takeFront(run, taken);
      active.count += taken;
      i += taken;
    }
  }

  /** Takes a reference on a cached block (a prefix hit), reactivating it if it was inactive. */
  acquire(hash: bigint): CachedBlock {
    const block = this.cache.get(hash);
    if (!block) throw new Error(`acquire of unknown block ${hash}`);
    if (block.refCount === 0) {
      this.unlink(block);
      this.inactive--;
      this.active++;
    }
    block.refCount++;
    return block;
  }

  /** Reserves `count` new slots, evicting least recently freed blocks; all or nothing. */
  allocateSlots(count: number): boolean {
    if (count <= 0) return true;
    const overflow = this.active + this.inactive + count - this.capacity;
    if (overflow > this.inactive) return false;
    if (overflow > 0) this.evict(overflow);
    this.active += count;
    return true;
  }

  /** Gives back uncommitted slots. */
  releaseSlots(count: number): void {
    if (count < 0 || count > this.active) throw new Error(`releaseSlots(${count}) with ${this.active} active`);
    this.active -= count;
  }

  /**
   * Turns consecutive uncommitted slots into full blocks. Blocks already cached are shared (their
   * slot is given back) and announce nothing; runs of new blocks are announced as one Stored event
   * each, with the parent being the block just before the run (and with each block's token ids when
   * `tokens` gives them).
   */
  commit(
    hashes: readonly bigint[],
    tokensHashes: readonly bigint[],
    from: number,
    to: number,
    out: CachedBlock[],
    owner = -1,
    tokens?: { blockTokens(b: number): number[] },
  ): void {
    let run: StoredBlock[] | null = null;
    let runParent: bigint | null = null;
    for (let i = from; i < to; i++) {
      const hash = hashes[i];
      if (hash === PRIVATE_BLOCK_KEY) {
        const last = out.length ? out[out.length - 1] : null;
        if (last && last.hash === PRIVATE_BLOCK_KEY) last.count++;
        else out.push(this.privateRun(owner, i, 1));
        // The owner's block i may still be cached from before a preemption: reuse it, as a hashed
        // block would be reused, and give the slot back.
        const old = this.runAt(owner, i);
        if (old) {
          this.takeFront(old, 1);
          this.active--;
        }
        continue;
      }
      const existing = this.cache.get(hash);
      if (existing) {
        if (run) {
          this.emit({ kind: 'stored', parentHash: runParent, blocks: run }, owner);
          run = null;
        }
        this.active--; // the slot is not needed: the content already exists
        out.push(this.acquire(hash));
        continue;
      }
      const parent = i === 0 ? null : hashes[i - 1];
      const block: CachedBlock = { hash, tokensHash: tokensHashes[i], parent, count: 1, owner: -1, start: -1, refCount: 1, freedAt: -1, prev: null, next: null };
      this.cache.set(hash, block);
      out.push(block);
      if (!run) {
        run = [];
        runParent = parent;
      }
      run.push(tokens ? { blockHash: hash, tokensHash: block.tokensHash, tokens: tokens.blockTokens(i) } : { blockHash: hash, tokensHash: block.tokensHash });
    }
    if (run) this.emit({ kind: 'stored', parentHash: runParent, blocks: run }, owner);
  }

  /** Drops one reference; at zero the block becomes inactive (most recently freed). */
  release(block: CachedBlock): void {
    if (block.refCount <= 0) throw new Error(`release of inactive block ${block.hash}`);
    block.refCount--;
    if (block.refCount > 0) return;
    this.active -= block.count;
    this.inactive += block.count;
    block.freedAt = this.clock++;
    if (block.hash === PRIVATE_BLOCK_KEY) {
      const runs = this.inactiveRuns.get(block.owner);
      if (runs) runs.push(block);
      else this.inactiveRuns.set(block.owner, [block]);
    }
    block.prev = this.lruTail;
    block.next = null;
    if (this.lruTail) this.lruTail.next = block;
    else this.lruHead = block;
    this.lruTail = block;
  }

  /** True while events produced since the last drain wait to be drained. */
  get hasPendingEvents(): boolean {
    return this.pending.length > 0;
  }

  /**
   * The cache as a router can rebuild it: a `cleared` event, then every cached block in Stored
   * events, each parent before its children, runs of at most `maxBlocksPerEvent` blocks. A block
   * whose parent is no longer cached cannot be reached by a prefix lookup and is left out, with its
   * descendants. The events take the next ids. Call it only with no events pending (right after a
   * drain), so that the snapshot follows every event already handed out.
   */
  snapshotEvents(maxBlocksPerEvent = 128): KvEvent[] {
    if (this.pending.length) throw new Error('snapshotEvents with undrained events');
    if (!this.prefixCaching) return NO_EVENTS;
    this.emit({ kind: 'cleared' });
    // hash → whether the block was announced (true) or is unreachable (false).
    const seen = new Map<bigint, boolean>();
    const chain: CachedBlock[] = [];
    // Newest first: a leaf usually comes before its ancestors, so one walk up yields its whole run.
    const cached = [...this.cache.values()];
    for (let k = cached.length - 1; k >= 0; k--) {
      const block = cached[k];
      chain.length = 0;
      let reachable = true;
      let parent: bigint | null = null;
      for (let b: CachedBlock | undefined = block; ; ) {
        if (b === undefined) {
          reachable = false;
          break;
        }
        const known = seen.get(b.hash);
        if (known !== undefined) {
          reachable = known;
          parent = b.hash;
          break;
        }
        chain.push(b);
        if (b.parent === null) break;
        b = this.cache.get(b.parent);
      }
      for (const b of chain) seen.set(b.hash, reachable);
      if (!reachable) continue;
      for (let end = chain.length; end > 0; end -= maxBlocksPerEvent) {
        const run: StoredBlock[] = [];
        for (let i = end - 1; i >= Math.max(0, end - maxBlocksPerEvent); i--) run.push({ blockHash: chain[i].hash, tokensHash: chain[i].tokensHash });
        this.emit({ kind: 'stored', parentHash: parent, blocks: run });
        parent = run[run.length - 1].blockHash;
      }
    }
    return this.drainEvents();
  }

  /** Events produced since the last drain, in order. */
  drainEvents(): KvEvent[] {
    const events = this.pending;
    if (events.length === 0) return NO_EVENTS;
    this.pending = [];
    return events;
  }

  /** The owner's inactive private run starting at block `index`, if cached. */
  private runAt(owner: number, index: number): CachedBlock | undefined {
    const runs = this.inactiveRuns.get(owner);
    if (!runs) return undefined;
    for (const run of runs) if (run.start === index) return run;
    return undefined;
  }

  /** Moves the first `n` blocks of an inactive private run to active (the rest keeps its LRU place). */
  private takeFront(run: CachedBlock, n: number): void {
    run.start += n;
    run.count -= n;
    this.inactive -= n;
    this.active += n;
    if (run.count === 0) {
      this.unlink(run);
      this.forgetRun(run);
    }
  }

  private forgetRun(run: CachedBlock): void {
    const runs = this.inactiveRuns.get(run.owner);
    if (!runs) return;
    const i = runs.indexOf(run);
    if (i >= 0) runs.splice(i, 1);
    if (runs.length === 0) this.inactiveRuns.delete(run.owner);
  }

  private privateRun(owner: number, start: number, count: number): CachedBlock {
    return { hash: PRIVATE_BLOCK_KEY, tokensHash: PRIVATE_BLOCK_KEY, parent: null, count, owner, start, refCount: 1, freedAt: -1, prev: null, next: null };
  }

  private evict(count: number): void {
    const removed: bigint[] = [];
    for (let left = count; left > 0; ) {
      const victim = this.lruHead;
      if (!victim) throw new Error('evict with no inactive block');
      if (victim.count > left) {
        // Only private runs have a count above 1: take part of the run.
        victim.count -= left;
        this.inactive -= left;
        break;
      }
      this.unlink(victim);
      this.inactive -= victim.count;
      left -= victim.count;
      if (victim.hash === PRIVATE_BLOCK_KEY) {
        this.forgetRun(victim);
        continue;
      }
      this.cache.delete(victim.hash);
      removed.push(victim.hash);
    }
    if (removed.length) this.emit({ kind: 'removed', blockHashes: removed });
  }

  private unlink(block: CachedBlock): void {
    if (block.prev) block.prev.next = block.next;
    else this.lruHead = block.next;
    if (block.next) block.next.prev = block.prev;
    else this.lruTail = block.prev;
    block.prev = block.next = null;
  }

  private emit(data: KvEvent['data'], owner?: number): void {
    if (!this.prefixCaching) return;
    const event: KvEvent = { eventId: this.nextEventId++, dpRank: this.dpRank, data };
    if (owner !== undefined && this.tagEventOwners) event.owner = owner;
    this.pending.push(event);
  }
}
