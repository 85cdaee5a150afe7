// Block pool: capacity, LRU eviction order, the vLLM prefix-caching walk-through, commit dedupe
// and the KV events it produces (restating Dynamo's kv_manager / evictor tests on our pool).
import { describe, expect, it } from 'vitest';
import { BlockPool, PRIVATE_BLOCK_KEY, type CachedBlock } from '../../src/core/kv/block-pool.js';
import type { KvEvent } from '../../src/core/types.js';
import { applyEvents, RouterIndex, testRng } from '../helpers/core-fixtures.js';

const h = (...ids: number[]): bigint[] => ids.map((i) => BigInt(i));

/**
 * Dynamo's `Use([ids])` for independent full blocks: every id is its own root-level block here
 * (commit range of one), so parent chains never matter. Returns the block handles.
 */
function useIndependent(pool: BlockPool, ids: number[]): CachedBlock[] {
  const out: CachedBlock[] = [];
  for (const id of ids) {
    if (!pool.lookup(BigInt(id))) {
      if (!pool.allocateSlots(1)) throw new Error(`no room for block ${id}`);
    } else {
      out.push(pool.acquire(BigInt(id)));
      continue;
    }
    pool.commit(h(id), h(id), 0, 1, out);
  }
  return out;
}

/** Dynamo's `Use(blocks)` for one sequence: hits are acquired, new ones get slots and are committed as a run. */
function useChain(pool: BlockPool, ids: number[]): { ok: boolean; blocks: CachedBlock[] } {
  const hashes = h(...ids);
  const blocks: CachedBlock[] = [];
  let hits = 0;
  while (hits < hashes.length && pool.lookup(hashes[hits])) blocks.push(pool.acquire(hashes[hits++]));
  if (!pool.allocateSlots(hashes.length - hits)) {
    for (let i = blocks.length - 1; i >= 0; i--) pool.release(blocks[i]);
    return { ok: false, blocks: [] };
  }
  pool.commit(hashes, hashes, hits, hashes.length, blocks);
  return { ok: true, blocks };
}

function releaseTailFirst(pool: BlockPool, blocks: CachedBlock[]): void {
  for (let i = blocks.length - 1; i >= 0; i--) pool.release(blocks[i]);
}

function summarize(events: KvEvent[]): Array<['stored', bigint | null, bigint[]] | ['removed', bigint[]] | ['cleared']> {
  return events.map((e) => {
    const d = e.data;
    if (d.kind === 'stored') return ['stored', d.parentHash, d.blocks.map((b) => b.blockHash)];
    if (d.kind === 'removed') return ['removed', d.blockHashes];
    return ['cleared'];
  });
}

describe('BlockPool capacity (Dynamo test_failure_on_max_capacity)', () => {
  it.each([
    { label: 'uncommitted slots', commit: false },
    { label: 'committed full blocks', commit: true },
  ])('capacity 10: 10 blocks succeed, the 11th fails without throwing ($label)', ({ commit }) => {
    const pool = new BlockPool(10, true);
    expect(pool.allocateSlots(10)).toBe(true);
    if (commit) pool.commit(h(...Array.from({ length: 10 }, (_, i) => i)), h(...Array.from({ length: 10 }, (_, i) => i)), 0, 10, []);
    expect(pool.activeBlocks).toBe(10);
    expect(pool.freeBlocks).toBe(0);
    let result: boolean | undefined;
    expect(() => {
      result = pool.allocateSlots(1);
    }).not.toThrow();
    expect(result).toBe(false);
    // A failed allocation changes nothing.
    expect(pool.activeBlocks).toBe(10);
    expect(pool.inactiveBlocks).toBe(0);
  });

  it('allocation is all or nothing', () => {
    const pool = new BlockPool(10, true);
    expect(pool.allocateSlots(7)).toBe(true);
    expect(pool.allocateSlots(4)).toBe(false);
    expect(pool.activeBlocks).toBe(7);
    expect(pool.allocateSlots(3)).toBe(true);
    expect(pool.activeBlocks).toBe(10);
    expect(pool.allocateSlots(0)).toBe(true);
  });

  it('inactive blocks count as capacity but can be evicted for a new allocation', () => {
    const pool = new BlockPool(4, true);
    const blocks = useIndependent(pool, [1, 2, 3, 4]);
    releaseTailFirst(pool, blocks);
    expect(pool.activeBlocks).toBe(0);
    expect(pool.inactiveBlocks).toBe(4);
    expect(pool.freeBlocks).toBe(4);
    pool.drainEvents();
    expect(pool.allocateSlots(4)).toBe(true);
    expect(pool.inactiveBlocks).toBe(0);
    expect(summarize(pool.drainEvents())).toEqual([['removed', h(4, 3, 2, 1)]]);
  });

  it('rejects a non-positive or fractional capacity', () => {
    expect(() => new BlockPool(0, true)).toThrow();
    expect(() => new BlockPool(2.5, true)).toThrow();
  });

  it('releasing more slots than are active throws', () => {
    const pool = new BlockPool(4, true);
    pool.allocateSlots(2);
    expect(() => pool.releaseSlots(3)).toThrow();
    pool.releaseSlots(2);
    expect(pool.activeBlocks).toBe(0);
  });

  it('releasing an already inactive block throws', () => {
    const pool = new BlockPool(4, true);
    const [b] = useIndependent(pool, [1]);
    pool.release(b);
    expect(() => pool.release(b)).toThrow();
  });
});

describe('BlockPool LRU eviction order (Dynamo test_lru_evictor_eviction_order)', () => {
  // Dynamo: insert 4,3,2,1,5; re-insert 1,4,2 → evictions 3,5,1,4,2 then none. Here "insert" is
  // a block becoming inactive and "re-insert" is a reuse (reactivation) followed by a re-free.
  it.each([{ extra: 0 }, { extra: 1 }, { extra: 3 }])(
    'blocks freed 4,3,2,1,5 then reused and re-freed 1,4,2 evict as 3,5,1,4,2 (spare capacity $extra)',
    ({ extra }) => {
      const pool = new BlockPool(5 + extra, true);
      const handles = new Map<number, CachedBlock>();
      for (const id of [4, 3, 2, 1, 5]) {
        const [b] = useIndependent(pool, [id]);
        handles.set(id, b);
        pool.release(b);
      }
      for (const id of [1, 4, 2]) {
        const b = pool.acquire(BigInt(id));
        expect(b).toBe(handles.get(id));
        pool.release(b);
      }
      expect(pool.inactiveHashes()).toEqual(h(3, 5, 1, 4, 2));
      pool.drainEvents();

      // Use up the spare capacity first: no eviction.
      if (extra) expect(pool.allocateSlots(extra)).toBe(true);
      expect(pool.drainEvents()).toEqual([]);

      const order: bigint[] = [];
      for (let i = 0; i < 5; i++) {
        expect(pool.allocateSlots(1)).toBe(true);
        const events = pool.drainEvents();
        expect(events).toHaveLength(1);
        const d = events[0].data;
        if (d.kind !== 'removed') throw new Error(`expected removed, got ${d.kind}`);
        order.push(...d.blockHashes);
      }
      expect(order).toEqual(h(3, 5, 1, 4, 2));
      // Nothing left to evict.
      expect(pool.allocateSlots(1)).toBe(false);
      expect(pool.inactiveBlocks).toBe(0);
    },
  );
});

describe('BlockPool lifecycle (Dynamo test_block_lifecycle_stringent, vLLM prefix-caching walk-through)', () => {
  // Dynamo's full blocks 4 and 6 are "destroyed" there; in this pool the analogue of a block that
  // is destroyed rather than cached is an uncommitted slot (a block still being filled).
  it('tracks refcounts, the inactive set, prefix probes and LRU evictions step by step', () => {
    const pool = new BlockPool(10, true);
    const refs = (ids: number[]) => ids.map((id) => pool.lookup(BigInt(id))?.refCount);

    // Request A: full blocks 0..3 plus a block being filled ("4").
    expect(pool.allocateSlots(5)).toBe(true);
    const a: CachedBlock[] = [];
    pool.commit(h(0, 1, 2, 3), h(0, 1, 2, 3), 0, 4, a);
    expect(summarize(pool.drainEvents())).toEqual([['stored', null, h(0, 1, 2, 3)]]);

    // Request B shares 0,1 then has its own 5 and a block being filled ("6").
    expect(pool.allocateSlots(4)).toBe(true);
    const b: CachedBlock[] = [];
    pool.commit(h(0, 1, 5), h(0, 1, 5), 0, 3, b);
    expect(summarize(pool.drainEvents())).toEqual([['stored', 1n, h(5)]]);
    expect(refs([0, 1, 2, 3, 5])).toEqual([2, 2, 1, 1, 1]);
    expect(pool.activeBlocks).toBe(7); // 0,1,2,3,5 + the two slots
    expect(pool.inactiveBlocks).toBe(0);

    // A finishes: its partial block is dropped, its full blocks are freed tail first.
    pool.releaseSlots(1);
    releaseTailFirst(pool, a);
    expect(pool.drainEvents()).toEqual([]);
    expect(pool.inactiveHashes()).toEqual(h(3, 2));
    expect(refs([0, 1, 5])).toEqual([1, 1, 1]);
    expect(pool.activeBlocks).toBe(4);

    // B finishes.
    pool.releaseSlots(1);
    releaseTailFirst(pool, b);
    expect(pool.drainEvents()).toEqual([]);
    expect(pool.inactiveHashes()).toEqual(h(3, 2, 5, 1, 0));
    expect(pool.inactiveBlocks).toBe(5);
    expect(pool.activeBlocks).toBe(0);

    // Request C: 0,1,2 are cached (reactivated, no event), 7,8,9 are new.
    const c = useChain(pool, [0, 1, 2, 7, 8, 9]);
    expect(c.ok).toBe(true);
    expect(summarize(pool.drainEvents())).toEqual([['stored', 2n, h(7, 8, 9)]]);
    expect(pool.inactiveHashes()).toEqual(h(3, 5));
    expect(refs([0, 1, 2, 7, 8, 9])).toEqual([1, 1, 1, 1, 1, 1]);
    expect(pool.activeBlocks).toBe(6);

    // probe_new_blocks([0..4]) == 1: only block 4 is missing.
    expect(pool.probe(h(0, 1, 2, 3, 4), 5)).toEqual({ hitBlocks: 4, activeHitBlocks: 3 });
    // The probe is a contiguous prefix and honours its cap.
    expect(pool.probe(h(0, 1, 2, 3, 4), 2)).toEqual({ hitBlocks: 2, activeHitBlocks: 2 });
    expect(pool.probe(h(0, 4, 2), 3)).toEqual({ hitBlocks: 1, activeHitBlocks: 1 });
    expect(pool.probe(h(4, 0), 2)).toEqual({ hitBlocks: 0, activeHitBlocks: 0 });

    // Request D needs 3 new blocks with 8 in use: the oldest inactive block (3) is evicted.
    const d = useChain(pool, [10, 11, 12]);
    expect(d.ok).toBe(true);
    expect(summarize(pool.drainEvents())).toEqual([
      ['removed', h(3)],
      ['stored', null, h(10, 11, 12)],
    ]);
    expect(pool.inactiveHashes()).toEqual(h(5));

    // Request E needs one more: block 5 goes.
    const e = useChain(pool, [13]);
    expect(e.ok).toBe(true);
    expect(summarize(pool.drainEvents())).toEqual([
      ['removed', h(5)],
      ['stored', null, h(13)],
    ]);
    expect(pool.inactiveBlocks).toBe(0);
    expect(pool.activeBlocks).toBe(10);

    // Full: the next request fails and leaves no trace.
    expect(useChain(pool, [14]).ok).toBe(false);
    expect(pool.drainEvents()).toEqual([]);
    expect(pool.activeBlocks).toBe(10);
  });
});

describe('BlockPool commit', () => {
  it('a block that already exists and is active is shared: refcount 2, slot given back, no event', () => {
    const pool = new BlockPool(8, true);
    const first: CachedBlock[] = [];
    pool.allocateSlots(2);
    pool.commit(h(1, 2), h(101, 102), 0, 2, first);
    pool.drainEvents();

    const second: CachedBlock[] = [];
    pool.allocateSlots(2);
    expect(pool.activeBlocks).toBe(4);
    pool.commit(h(1, 2), h(101, 102), 0, 2, second);
    expect(pool.drainEvents()).toEqual([]);
    expect(second[0]).toBe(first[0]);
    expect(second[1]).toBe(first[1]);
    expect(first.map((b) => b.refCount)).toEqual([2, 2]);
    expect(pool.activeBlocks).toBe(2);

    releaseTailFirst(pool, second);
    expect(first.map((b) => b.refCount)).toEqual([1, 1]);
    expect(pool.inactiveBlocks).toBe(0);
    releaseTailFirst(pool, first);
    expect(pool.inactiveHashes()).toEqual(h(2, 1));
  });

  it('a block that exists but is inactive is reactivated, no event', () => {
    const pool = new BlockPool(8, true);
    const first: CachedBlock[] = [];
    pool.allocateSlots(3);
    pool.commit(h(1, 2, 3), h(101, 102, 103), 0, 3, first);
    releaseTailFirst(pool, first);
    pool.drainEvents();
    expect(pool.inactiveBlocks).toBe(3);

    const again: CachedBlock[] = [];
    expect(pool.allocateSlots(2)).toBe(true);
    pool.commit(h(1, 2, 3), h(101, 102, 103), 0, 2, again);
    expect(pool.drainEvents()).toEqual([]);
    expect(again).toHaveLength(2);
    expect(again[0]).toBe(first[0]);
    expect(again[1]).toBe(first[1]);
    expect(again.map((b) => b.refCount)).toEqual([1, 1]);
    expect(pool.activeBlocks).toBe(2);
    expect(pool.inactiveHashes()).toEqual(h(3));
  });

  it('announces runs of new blocks, each with the block just before the run as parent', () => {
    const pool = new BlockPool(16, true);
    // Block 2 already exists, inactive (stored earlier by another request).
    const other: CachedBlock[] = [];
    pool.allocateSlots(2);
    pool.commit(h(1, 2), h(101, 102), 0, 2, other);
    releaseTailFirst(pool, other);
    expect(summarize(pool.drainEvents())).toEqual([['stored', null, h(1, 2)]]);

    const seqHashes = h(11, 2, 13, 14, 15);
    const local = h(111, 102, 113, 114, 115);
    const out: CachedBlock[] = [];
    pool.allocateSlots(5);
    pool.commit(seqHashes, local, 0, 5, out);
    const events = pool.drainEvents();
    expect(summarize(events)).toEqual([
      ['stored', null, h(11)],
      ['stored', 2n, h(13, 14, 15)],
    ]);
    // tokens_hash travels with each block.
    const second = events[1].data;
    if (second.kind !== 'stored') throw new Error('expected stored');
    expect(second.blocks.map((b) => b.tokensHash)).toEqual(h(113, 114, 115));
    expect(out.map((b) => b.hash)).toEqual(seqHashes);
  });

  it('a commit that starts mid-sequence uses the previous block as parent', () => {
    const pool = new BlockPool(16, true);
    const out: CachedBlock[] = [];
    pool.allocateSlots(4);
    pool.commit(h(1, 2, 3, 4), h(1, 2, 3, 4), 0, 2, out);
    pool.commit(h(1, 2, 3, 4), h(1, 2, 3, 4), 2, 4, out);
    expect(summarize(pool.drainEvents())).toEqual([
      ['stored', null, h(1, 2)],
      ['stored', 2n, h(3, 4)],
    ]);
    expect(pool.activeBlocks).toBe(4);
  });

  it('batches every block evicted by one allocation into one Removed event, LRU first', () => {
    const pool = new BlockPool(6, true);
    const a: CachedBlock[] = [];
    const b: CachedBlock[] = [];
    pool.allocateSlots(3);
    pool.commit(h(1, 2, 3), h(1, 2, 3), 0, 3, a);
    pool.allocateSlots(3);
    pool.commit(h(7, 8, 9), h(7, 8, 9), 0, 3, b);
    releaseTailFirst(pool, b);
    releaseTailFirst(pool, a);
    pool.drainEvents();
    expect(pool.inactiveHashes()).toEqual(h(9, 8, 7, 3, 2, 1));

    expect(pool.allocateSlots(4)).toBe(true);
    expect(summarize(pool.drainEvents())).toEqual([['removed', h(9, 8, 7, 3)]]);
    expect(pool.inactiveHashes()).toEqual(h(2, 1));
  });

  it('numbers events 0,1,2,… and stamps the DP rank', () => {
    const pool = new BlockPool(4, true, 3);
    const out: CachedBlock[] = [];
    pool.allocateSlots(2);
    pool.commit(h(1, 2), h(1, 2), 0, 2, out);
    releaseTailFirst(pool, out);
    pool.allocateSlots(4);
    const first = pool.drainEvents();
    pool.releaseSlots(4);
    const x: CachedBlock[] = [];
    pool.allocateSlots(1);
    pool.commit(h(5), h(5), 0, 1, x);
    const events = [...first, ...pool.drainEvents()];
    expect(events.map((e) => e.eventId)).toEqual([0, 1, 2]);
    expect(events.every((e) => e.dpRank === 3)).toBe(true);
    expect(pool.drainEvents()).toEqual([]);
    // The stream is a valid router history.
    const index = applyEvents(events);
    expect(index.hashes(3)).toEqual(h(5));
  });

  it('emits nothing and caches nothing when prefix caching is off', () => {
    const pool = new BlockPool(4, false);
    const out: CachedBlock[] = [];
    pool.allocateSlots(3);
    pool.commit(h(1, 2, 3), h(1, 2, 3), 0, 3, out);
    expect(pool.probe(h(1, 2, 3), 3)).toEqual({ hitBlocks: 0, activeHitBlocks: 0 });
    releaseTailFirst(pool, out);
    expect(pool.allocateSlots(4)).toBe(true); // evicts the three inactive blocks
    expect(pool.inactiveBlocks).toBe(0);
    expect(pool.drainEvents()).toEqual([]);
  });
});

describe('BlockPool private block runs', () => {
  const P = PRIVATE_BLOCK_KEY;

  it('are found again only by their owner, minus what eviction took from their tail', () => {
    const pool = new BlockPool(10, true);
    const keys = [1n, 2n, P, P, P, P];
    const out: CachedBlock[] = [];
    expect(pool.allocateSlots(6)).toBe(true);
    pool.commit(keys, keys, 0, 6, out, 7);
    releaseTailFirst(pool, out); // as a preemption does
    expect(pool.probe(keys, 6, 7)).toEqual({ hitBlocks: 6, activeHitBlocks: 0 });
    expect(pool.probe(keys, 6, 8)).toEqual({ hitBlocks: 2, activeHitBlocks: 0 }); // another owner
    expect(pool.probe(keys, 4, 7)).toEqual({ hitBlocks: 4, activeHitBlocks: 0 }); // capped

    // Fill the pool: the private run was freed first, so it loses its last blocks first.
    expect(pool.allocateSlots(4)).toBe(true);
    expect(pool.allocateSlots(1)).toBe(true);
    expect(pool.probe(keys, 6, 7)).toEqual({ hitBlocks: 5, activeHitBlocks: 0 });
    expect(pool.drainEvents().filter((e) => e.data.kind === 'removed')).toEqual([]);

    // The owner takes back its prefix: 2 real blocks and 3 private ones, now active.
    const again: CachedBlock[] = [];
    pool.acquirePrefix(keys, 5, 7, again);
    expect(again.map((b) => b.count)).toEqual([1, 1, 3]);
    expect(pool.activeBlocks).toBe(5 + 5);
    expect(pool.inactiveBlocks).toBe(0);
  });

  it('take capacity and age in the LRU like real blocks but are never announced or found', () => {
    const pool = new BlockPool(8, true);
    const out: CachedBlock[] = [];
    const keys = [1n, PRIVATE_BLOCK_KEY, PRIVATE_BLOCK_KEY, PRIVATE_BLOCK_KEY];
    expect(pool.allocateSlots(4)).toBe(true);
    pool.commit(keys, keys, 0, 4, out);
    // One real block and one entry for the run of three private blocks.
    expect(out).toHaveLength(2);
    expect(out[1].count).toBe(3);
    expect(summarize(pool.drainEvents())).toEqual([['stored', null, h(1)]]);
    expect(pool.activeBlocks).toBe(4);
    expect(pool.lookup(PRIVATE_BLOCK_KEY)).toBeUndefined();

    releaseTailFirst(pool, out);
    expect(pool.activeBlocks).toBe(0);
    expect(pool.inactiveBlocks).toBe(4);

    // Eviction takes the private run (oldest) first, partly, and announces nothing for it.
    expect(pool.allocateSlots(6)).toBe(true);
    expect(pool.drainEvents()).toEqual([]);
    expect(pool.inactiveBlocks).toBe(2);
    expect(pool.allocateSlots(2)).toBe(true);
    expect(summarize(pool.drainEvents())).toEqual([['removed', h(1)]]);
    expect(pool.inactiveBlocks).toBe(0);
    expect(pool.activeBlocks).toBe(8);
  });
});

describe('router index fixture', () => {
  const stored = (eventId: number, parentHash: bigint | null, ...blocks: number[]): KvEvent => ({
    eventId,
    dpRank: 0,
    data: { kind: 'stored', parentHash, blocks: blocks.map((b) => ({ blockHash: BigInt(b), tokensHash: BigInt(b) })) },
  });
  const removed = (eventId: number, ...blocks: number[]): KvEvent => ({
    eventId,
    dpRank: 0,
    data: { kind: 'removed', blockHashes: h(...blocks) },
  });

  it('accepts a valid history', () => {
    const index = applyEvents([stored(0, null, 1, 2), stored(1, 2n, 3), removed(2, 3), stored(3, 2n, 3)]);
    expect(index.hashes().sort()).toEqual(h(1, 2, 3));
    expect(index.parentOf(3n)).toBe(2n);
    expect(index.overlap(h(1, 2, 3, 4))).toBe(3);
  });

  it.each([
    { label: 'unknown parent', events: [stored(0, 9n, 1)] },
    { label: 're-store of a live hash', events: [stored(0, null, 1), stored(1, null, 1)] },
    { label: 'removal of an unknown hash', events: [stored(0, null, 1), removed(1, 2)] },
    { label: 'removal twice', events: [stored(0, null, 1), removed(1, 1), removed(2, 1)] },
    { label: 'event id gap', events: [stored(0, null, 1), stored(2, 1n, 2)] },
  ])('throws on $label', ({ events }) => {
    expect(() => applyEvents(events)).toThrow();
  });

  it('optionally rejects removing a block whose children are still stored', () => {
    const events = [stored(0, null, 1, 2), removed(1, 1)];
    expect(applyEvents(events).orphaningRemovals).toBe(1);
    expect(() => applyEvents(events, new RouterIndex({ requireLeafRemoval: true }))).toThrow();
  });
});

describe('BlockPool snapshot (a router rebuilds the cache from it)', () => {
  it('is a cleared event, then every cached block with its parent first, in runs', () => {
    const pool = new BlockPool(32, true);
    const a = useChain(pool, [1, 2, 3]).blocks;
    const b = useChain(pool, [1, 2, 4, 5]).blocks;
    const c = useChain(pool, [9]).blocks;
    releaseTailFirst(pool, b);
    const history = pool.drainEvents();
    expect(pool.hasPendingEvents).toBe(false);
    const snapshot = pool.snapshotEvents();
    expect(summarize(snapshot)).toEqual([
      ['cleared'],
      ['stored', null, h(9)],
      ['stored', null, h(1, 2, 4, 5)],
      ['stored', 2n, h(3)],
    ]);
    // The ids go on from the pool's own.
    expect(snapshot.map((e) => e.eventId)).toEqual([3, 4, 5, 6]);
    const index = applyEvents([...history, ...snapshot]);
    expect(index.hashes().sort()).toEqual(h(1, 2, 3, 4, 5, 9));
    expect([index.parentOf(3n), index.parentOf(4n), index.parentOf(1n)]).toEqual([2n, 2n, null]);
    // The snapshot is independent of what came before it and takes nothing from the pool.
    expect(new RouterIndex({ gapBeforeCleared: true }).applyEvents(snapshot).hashes().sort()).toEqual(h(1, 2, 3, 4, 5, 9));
    expect([pool.activeBlocks, pool.inactiveBlocks]).toEqual([4, 2]);
    releaseTailFirst(pool, a);
    releaseTailFirst(pool, c);
  });

  it('splits long runs, each part under the last block of the one before', () => {
    const pool = new BlockPool(8, true);
    useChain(pool, [1, 2, 3, 4, 5]);
    pool.drainEvents();
    expect(summarize(pool.snapshotEvents(2))).toEqual([['cleared'], ['stored', null, h(1, 2)], ['stored', 2n, h(3, 4)], ['stored', 4n, h(5)]]);
  });

  it('leaves out a block whose parent was evicted (no prefix lookup can reach it) and refuses undrained events', () => {
    const pool = new BlockPool(3, true);
    const { blocks } = useChain(pool, [1, 2]);
    // Parent first: block 1 is the least recently freed and goes first.
    pool.release(blocks[0]);
    pool.release(blocks[1]);
    expect(pool.allocateSlots(2)).toBe(true);
    expect(pool.hasPendingEvents).toBe(true);
    expect(() => pool.snapshotEvents()).toThrow(/undrained/);
    expect(summarize(pool.drainEvents())).toEqual([['stored', null, h(1, 2)], ['removed', h(1)]]);
    expect(pool.lookup(2n)).toBeDefined();
    expect(summarize(pool.snapshotEvents())).toEqual([['cleared']]);
  });

  it('with prefix caching off is empty', () => {
    expect(new BlockPool(4, false).snapshotEvents()).toEqual([]);
  });

  it.each([1, 2, 3, 4, 5])('after a random workload with evictions, equals the reachable cache (seed %i)', (seed) => {
    const rng = testRng(seed);
    const pool = new BlockPool(24, true);
    const history = new RouterIndex();
    const live: CachedBlock[][] = [];
    for (let step = 0; step < 300; step++) {
      if (live.length && (live.length > 3 || rng.chance(0.5))) {
        const [gone] = live.splice(rng.int(0, live.length - 1), 1);
        if (rng.chance(0.8)) releaseTailFirst(pool, gone);
        else for (const b of gone) pool.release(b);
      } else {
        // Chains over a small alphabet share prefixes; a block's hash encodes its whole prefix.
        const length = rng.int(1, 6);
        const ids: number[] = [];
        let prefix = 0;
        for (let i = 0; i < length; i++) ids.push((prefix = prefix * 4 + rng.int(1, 3)));
        const { ok, blocks } = useChain(pool, ids);
        if (ok) live.push(blocks);
      }
      history.applyEvents(pool.drainEvents());
    }
    const reachable = (hash: bigint): boolean => {
      for (let b = pool.lookup(hash); b; b = b.parent === null ? undefined : pool.lookup(b.parent)) if (b.parent === null) return true;
      return false;
    };
    const cached = history.hashes().filter((x) => pool.lookup(x));
    expect(cached.length).toBe(history.size());
    const snapshot = pool.snapshotEvents();
    const rebuilt = new RouterIndex({ gapBeforeCleared: true }).applyEvents(snapshot);
    expect(rebuilt.hashes().sort()).toEqual(cached.filter(reachable).sort());
    for (const x of rebuilt.hashes()) expect(rebuilt.parentOf(x)).toBe(pool.lookup(x)!.parent);
    // Replayed after the live history, the snapshot leaves the same index.
    history.applyEvents(snapshot);
    expect(history.hashes().sort()).toEqual(rebuilt.hashes().sort());
  });
});
