// The 1.4 KV publisher's rules: ids from 1 without gaps, coalescing, dedup, envelope limits; and what the core feeds it.
import { describe, expect, it } from 'vitest';
import { Welford } from '../../src/core/forward-pass.js';
import type { KvEvent, KvEventData, StoredBlock } from '../../src/core/types.js';
import { KvEventBatcher, envelopes } from '../../src/dynamo/kv-event-batcher.js';
import { vllmEvents } from '../../src/adapters/vllm-kv-events.js';
import { engineSetup, makeScheduler, seqInput, tokens } from '../helpers/core-fixtures.js';

const block = (h: number): StoredBlock => ({ blockHash: BigInt(h), tokensHash: BigInt(1000 + h) });
const stored = (parent: number | null, ...hashes: number[]): KvEvent => ({ eventId: 0, dpRank: 0, data: { kind: 'stored', parentHash: parent === null ? null : BigInt(parent), blocks: hashes.map(block) } });
const removed = (...hashes: number[]): KvEvent => ({ eventId: 0, dpRank: 0, data: { kind: 'removed', blockHashes: hashes.map(BigInt) } });
const shape = (d: KvEventData) => (d.kind === 'stored' ? `S(${d.parentHash ?? '-'}:${d.blocks.map((b) => b.blockHash).join(',')})` : d.kind === 'removed' ? `R(${d.blockHashes.join(',')})` : 'C');

describe('KvEventBatcher', () => {
  it('numbers RouterEvents from 1, one more per event, across passes', () => {
    const b = new KvEventBatcher(1);
    const first = b.batch([stored(null, 1), removed(7)]).flat();
    const second = b.batch([stored(null, 2)]).flat();
    expect([...first, ...second].map((e) => [e.eventId, e.dpRank])).toEqual([[1n, 1], [2n, 1], [3n, 1]]);
    expect(b.nextEventId).toBe(4n);
  });

  it('joins a store that continues the previous one, and adjacent removals; keeps the rest apart', () => {
    const b = new KvEventBatcher(0);
    const out = b.batch([stored(null, 1, 2), stored(2, 3), stored(9, 4), removed(3), removed(4), stored(null, 5)]).flat();
    expect(out.map((e) => shape(e.data))).toEqual(['S(-:1,2,3)', 'S(9:4)', 'R(3,4)', 'S(-:5)']);
  });

  it('caps a RouterEvent at 128 blocks, chaining the parent across the split', () => {
    const b = new KvEventBatcher(0);
    const hashes = Array.from({ length: 300 }, (_, i) => i + 1);
    const out = b.batch([stored(null, ...hashes.slice(0, 100)), stored(100, ...hashes.slice(100))]).flat();
    expect(out.map((e) => (e.data.kind === 'stored' ? [e.data.parentHash, e.data.blocks.length] : null))).toEqual([
      [null, 128],
      [128n, 128],
      [256n, 44],
    ]);
    const r = b.batch([removed(...hashes)]).flat();
    expect(r.map((e) => (e.data.kind === 'removed' ? e.data.blockHashes.length : 0))).toEqual([128, 128, 44]);
  });

  it('passes a removal only when every store of the block is undone; an emptied removal takes no id', () => {
    const b = new KvEventBatcher(0);
    b.batch([stored(null, 1), stored(null, 1)]);
    expect(b.batch([removed(1)])).toEqual([]);
    expect(b.nextEventId).toBe(3n);
    expect(b.batch([removed(1, 99)]).flat().map((e) => shape(e.data))).toEqual(['R(1,99)']);
  });

  it('splits envelopes at 128 events and at 8192 blocks, an oversized event alone', () => {
    const many = Array.from({ length: 300 }, (_, i) => ({ eventId: BigInt(i + 1), dpRank: 0, data: { kind: 'removed', blockHashes: [BigInt(i)] } as KvEventData }));
    expect(envelopes(many).map((e) => e.length)).toEqual([128, 128, 44]);
    const big = (n: number, id: number) => ({ eventId: BigInt(id), dpRank: 0, data: { kind: 'removed', blockHashes: Array.from({ length: n }, (_, i) => BigInt(i)) } as KvEventData });
    expect(envelopes([big(5000, 1), big(5000, 2), big(9000, 3), big(1, 4)]).map((e) => e.map((x) => x.eventId))).toEqual([[1n], [2n], [3n], [4n]]);
  });
});

describe('Welford (Dynamo WelfordAcc)', () => {
  it('gives the count, sum and population variance', () => {
    const w = new Welford();
    for (const v of [10, 20, 30, 40]) w.add(v);
    expect([w.count, w.sum, w.variance]).toEqual([4, 100, 125]);
    expect(new Welford().variance).toBe(0);
  });
});

describe('forward-pass statistics from the scheduler', () => {
  it("report each pass's prefill and decode work and the waiting and preempted requests", async () => {
    const s = await makeScheduler(engineSetup({ blockSize: 4, numGpuBlocks: 100, maxNumBatchedTokens: 40, maxNumSeqs: 2, enablePrefixCaching: true, watermark: 0 }));
    s.collectForwardPass = true;
    s.add(seqInput(0, tokens(30, 0), 3));
    s.add(seqInput(1, tokens(20, 100), 3));
    s.add(seqInput(2, tokens(10, 200), 3));
    // Pass 1: request 0 prefills 30 tokens, request 1 the remaining 10 of its 20; request 2 waits (2 slots).
    const p1 = s.step(0).forwardPass!;
    expect([p1.scheduledPrefill.lengths.count, p1.scheduledPrefill.computedTokens, p1.scheduledPrefill.presentTokens, p1.scheduledPrefill.lengths.variance]).toEqual([2, 40, 0, 25]);
    expect(p1.scheduledDecode.count).toBe(0);
    expect([p1.queuedPrefill.count, p1.queuedPrefill.sum]).toEqual([1, 10]);
    expect(p1.wallTimeS).toBeGreaterThan(0);
    // Pass 2: request 0 decodes (31 tokens known), request 1 finishes its prompt with 10 present.
    const p2 = s.step(100).forwardPass!;
    expect([p2.scheduledPrefill.lengths.count, p2.scheduledPrefill.computedTokens, p2.scheduledPrefill.presentTokens]).toEqual([1, 10, 10]);
    expect([p2.scheduledDecode.count, p2.scheduledDecode.sum]).toEqual([1, 31]);
  });

  it('count a preempted request as queued decode work, prompt plus generated', async () => {
    const s = await makeScheduler(engineSetup({ blockSize: 4, numGpuBlocks: 6, maxNumSeqs: 2, enablePrefixCaching: true, watermark: 0, preemptionMode: 'lifo' }));
    s.collectForwardPass = true;
    s.add(seqInput(0, tokens(8, 0), 16));
    const victim = s.add(seqInput(1, tokens(8, 100), 16));
    if (!victim.ok) throw new Error(victim.reason);
    for (let t = 0; t < 40; t++) {
      const r = s.step(t * 10);
      if (r.preempted.length === 0) continue;
      expect(r.preempted).toEqual([victim.seq]);
      expect([r.forwardPass!.queuedDecode.count, r.forwardPass!.queuedDecode.sum]).toEqual([1, victim.seq.knownLength]);
      expect(victim.seq.knownLength).toBeGreaterThan(8);
      return;
    }
    throw new Error('no preemption happened');
  });

  it('is not collected unless asked for', async () => {
    const s = await makeScheduler(engineSetup({ blockSize: 4 }));
    s.add(seqInput(0, tokens(8), 2));
    expect(s.step(0).forwardPass).toBeUndefined();
  });
});

describe("stored blocks' token ids (vLLM's event format)", () => {
  it('come with each stored block when recorded, prompt and generated tokens alike', async () => {
    const s = await makeScheduler(engineSetup({ blockSize: 4, numGpuBlocks: 50, enablePrefixCaching: true }));
    s.recordBlockTokens = true;
    const prompt = tokens(10, 100);
    s.add(seqInput(0, prompt, 3));
    const events: KvEvent[] = [];
    const emittedTokens: number[] = [];
    for (let t = 0; t < 5; t++) {
      const r = s.step(t * 10);
      events.push(...r.kvEvents);
      emittedTokens.push(...r.tokens);
    }
    const blocks = events.flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks : []));
    const all = [...prompt, ...emittedTokens];
    expect(blocks.map((b) => b.tokens)).toEqual([all.slice(0, 4), all.slice(4, 8), all.slice(8, 12)]);
    const vllm = vllmEvents(events, 4);
    expect(vllm[0]).toMatchObject({ type: 'BlockStored', parentBlockHash: null, tokenIds: all.slice(0, 8), blockSize: 4 });
  });
});
