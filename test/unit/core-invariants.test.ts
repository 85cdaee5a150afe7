// Randomized workloads (seeded) over small pools that force preemption and eviction: after every
// pass and at the end, the pool, the sequences, the emitted tokens and the KV event stream must
// satisfy the engine's invariants, and the same seed must reproduce the same run exactly.
import { describe, expect, it } from 'vitest';
import type { Engine, EngineSetup } from '../../src/core/engine.js';
import type { CachedBlock } from '../../src/core/kv/block-pool.js';
import type { PassResult } from '../../src/core/scheduler.js';
import type { KvEvent } from '../../src/core/types.js';
import {
  engineSetup,
  getHasher,
  makeEngine,
  RouterIndex,
  runToCompletion,
  testRng,
  tokens,
  type RunContext,
  type RunOutcome,
  type TimedRequest,
} from '../helpers/core-fixtures.js';

const VOCAB = 24;
const BANNED: ReadonlySet<number> = new Set([0, 2, 3, 17]);

interface Scenario {
  name: string;
  setup: Partial<EngineSetup>;
  requests: number;
  /** Longest prompt drawn (tokens). */
  maxPrompt: number;
  maxOutput: number;
  /** Probability, at each token, of cancelling something. */
  cancelRate: number;
}

const SCENARIOS: Scenario[] = [
  {
    name: 'tiny pool, caching, chunked, LIFO',
    setup: { blockSize: 4, numGpuBlocks: 24, maxNumBatchedTokens: 16, maxNumSeqs: 4, watermark: 0, preemptionMode: 'lifo' },
    requests: 40,
    maxPrompt: 40,
    maxOutput: 30,
    cancelRate: 0.01,
  },
  {
    name: 'tiny pool, no caching, chunked, FIFO',
    setup: { blockSize: 4, numGpuBlocks: 20, maxNumBatchedTokens: 12, maxNumSeqs: 5, watermark: 0, preemptionMode: 'fifo', enablePrefixCaching: false },
    requests: 40,
    maxPrompt: 36,
    maxOutput: 30,
    cancelRate: 0.01,
  },
  {
    name: 'caching, chunked off, FIFO, DP 2',
    setup: { blockSize: 4, numGpuBlocks: 28, maxNumBatchedTokens: 32, maxNumSeqs: 6, watermark: 0, preemptionMode: 'fifo', enableChunkedPrefill: false, dataParallelSize: 2 },
    requests: 60,
    maxPrompt: 40,
    maxOutput: 25,
    cancelRate: 0.02,
  },
  {
    name: 'caching, chunked, LIFO, DP 3, default watermark, unlimited budget',
    setup: { blockSize: 8, numGpuBlocks: 30, maxNumBatchedTokens: null, maxNumSeqs: 8, preemptionMode: 'lifo', dataParallelSize: 3 },
    requests: 70,
    maxPrompt: 120,
    maxOutput: 40,
    cancelRate: 0.01,
  },
  {
    name: 'no caching, chunked off, LIFO, DP 2, speedups',
    setup: { blockSize: 4, numGpuBlocks: 16, maxNumBatchedTokens: 24, maxNumSeqs: 3, watermark: 0.1, enablePrefixCaching: false, enableChunkedPrefill: false, dataParallelSize: 2, speedupRatio: 3, decodeSpeedupRatio: 2 },
    requests: 40,
    maxPrompt: 30,
    maxOutput: 20,
    cancelRate: 0.02,
  },
  {
    name: 'caching, chunked, FIFO, infinite speedup, heavy cancellation',
    setup: { blockSize: 4, numGpuBlocks: 24, maxNumBatchedTokens: 8, maxNumSeqs: 4, watermark: 0, preemptionMode: 'fifo', speedupRatio: Infinity },
    requests: 40,
    maxPrompt: 40,
    maxOutput: 30,
    cancelRate: 0.05,
  },
];

const SEEDS = [1, 2, 3, 4, 5];

interface Expectation {
  refused: boolean;
  maxTokens: number;
}

/**
 * Builds a seeded workload: prompts drawn from a few shared prefixes plus random suffixes (so the
 * prefix cache gets hits), random arrivals (often simultaneous), some explicit DP ranks, some
 * requests too large to ever fit (which must be refused at submit).
 */
function workload(sc: Scenario, seed: number): { requests: TimedRequest[]; expect: Map<number, Expectation> } {
  const setup = engineSetup(sc.setup);
  const rng = testRng(seed * 7919 + sc.requests);
  const bs = setup.blockSize;
  const n = setup.numGpuBlocks;
  // Requests whose peak lies between (1 − watermark)·N and N blocks are avoided: see the watermark
  // stranding bug covered in core-scheduler.test.ts.
  const safePeakBlocks = Math.floor(n - setup.watermark * n);
  const families = [0, 1, 2].map((f) => tokens(rng.int(bs, 3 * bs), 1000 * (f + 1)).map((t) => t % VOCAB));
  const requests: TimedRequest[] = [];
  const expectations = new Map<number, Expectation>();
  let t = 0;
  for (let key = 0; key < sc.requests; key++) {
    t += rng.chance(0.4) ? 0 : rng.int(1, 40);
    let prompt: number[];
    let maxTokens: number;
    if (rng.chance(0.05)) {
      // Can never fit: more blocks than the whole pool.
      prompt = Array.from({ length: (n + 1) * bs }, () => rng.int(0, VOCAB - 1));
      maxTokens = 1;
    } else {
      const len = rng.int(1, sc.maxPrompt);
      const prefix = rng.chance(0.6) ? rng.pick(families) : [];
      prompt = [...prefix, ...Array.from({ length: len }, () => rng.int(0, VOCAB - 1))].slice(0, len);
      maxTokens = rng.chance(0.05) ? 0 : rng.int(1, sc.maxOutput);
      while (maxTokens > 0 && Math.ceil((prompt.length + maxTokens - 1) / bs) > safePeakBlocks) maxTokens--;
      if (maxTokens === 0 && Math.ceil(prompt.length / bs) > safePeakBlocks) prompt = prompt.slice(0, bs);
    }
    const dpRank = rng.chance(0.2) ? rng.int(0, setup.dataParallelSize - 1) : null;
    requests.push({
      key,
      atMs: t,
      promptLength: prompt.length,
      promptTokens: prompt,
      maxTokens,
      bannedTokens: BANNED,
      dpRank,
      seed: rng.chance(0.3) ? rng.int(0, 1000) : undefined,
    });
    const promptBlocks = Math.ceil(prompt.length / bs);
    const peakBlocks = Math.ceil((prompt.length + Math.max(0, maxTokens - 1)) / bs);
    const refused =
      promptBlocks > n - setup.watermark * n ||
      peakBlocks > n ||
      (!setup.enableChunkedPrefill && setup.maxNumBatchedTokens !== null && prompt.length > setup.maxNumBatchedTokens);
    expectations.set(key, { refused, maxTokens });
  }
  return { requests, expect: expectations };
}

function check(cond: boolean, message: () => string): void {
  if (!cond) throw new Error(message());
}

/** Checks the pool against the sequences that hold its blocks (after every pass). */
function checkRank(ctx: RunContext, rank: number, result: PassResult): void {
  const sched = ctx.engine.ranks[rank];
  const pool = sched.pool;
  const { blockSize, enablePrefixCaching } = sched.config;
  const at = `rank ${rank}, pass at ${result.startMs}`;
  check(pool.activeBlocks >= 0, () => `${at}: negative active blocks`);
  check(pool.activeBlocks + pool.inactiveBlocks <= pool.capacity, () => `${at}: ${pool.activeBlocks} active + ${pool.inactiveBlocks} inactive > ${pool.capacity}`);
  if (!enablePrefixCaching) check(pool.inactiveBlocks === 0, () => `${at}: inactive blocks without prefix caching`);

  const holders = new Map<CachedBlock, number>();
  let slots = 0;
  let running = 0;
  for (const r of ctx.records.values()) {
    if (r.rank !== rank || !r.seq) continue;
    const seq = r.seq;
    if (seq.status !== 'running') {
      // Only running sequences hold KV.
      check(seq.slots === 0 && seq.blocks.length === 0, () => `${at}: seq ${seq.key} (${seq.status}) still holds KV`);
      continue;
    }
    running++;
    slots += seq.slots;
    check(seq.computed <= seq.knownLength, () => `${at}: seq ${seq.key} computed ${seq.computed} > known ${seq.knownLength}`);
    check(seq.allocatedBlocks === Math.ceil(seq.computed / blockSize), () => `${at}: seq ${seq.key} has ${seq.allocatedBlocks} blocks for ${seq.computed} computed tokens`);
    const committed = enablePrefixCaching ? Math.floor(seq.computed / blockSize) : 0;
    check(seq.committedBlocks === committed, () => `${at}: seq ${seq.key} committed ${seq.committedBlocks}, expected ${committed}`);
    check(seq.blocks.length === seq.committedBlocks, () => `${at}: seq ${seq.key} block list length`);
    for (let i = 0; i < seq.blocks.length; i++) {
      const b = seq.blocks[i];
      check(b.hash === seq.seqHashes[i], () => `${at}: seq ${seq.key} block ${i} is ${b.hash}, expected ${seq.seqHashes[i]}`);
      holders.set(b, (holders.get(b) ?? 0) + 1);
    }
  }
  check(running === sched.runningCount, () => `${at}: ${running} running sequences, scheduler says ${sched.runningCount}`);
  let distinct = 0;
  for (const [b, n] of holders) {
    check(b.refCount === n, () => `${at}: block ${b.hash} refcount ${b.refCount}, held by ${n}`);
    check(pool.lookup(b.hash) === b, () => `${at}: held block ${b.hash} is not the cached one`);
    distinct += b.count;
  }
  check(pool.activeBlocks === distinct + slots, () => `${at}: ${pool.activeBlocks} active blocks, sequences hold ${distinct} blocks + ${slots} slots`);

  // A pass that preempted admits nothing.
  check(!(result.preempted.length && result.admitted.length), () => `${at}: admitted after a preemption`);
  check(result.endMs >= result.startMs, () => `${at}: ends before it starts`);
  if (result.emitted.length && Number.isFinite(sched.config.speedupRatio)) check(result.endMs > result.startMs, () => `${at}: emitting pass took no time`);
  for (const e of result.kvEvents) check(e.dpRank === rank, () => `${at}: event for rank ${e.dpRank}`);
}

interface Coverage {
  preemptions: number;
  evictedBlocks: number;
  prefixHitTokens: number;
  cancellations: number;
  refusals: number;
  chunkedPasses: number;
}

const emptyCoverage = (): Coverage => ({ preemptions: 0, evictedBlocks: 0, prefixHitTokens: 0, cancellations: 0, refusals: 0, chunkedPasses: 0 });

function runScenario(engine: Engine, sc: Scenario, seed: number, requests: TimedRequest[], coverage = emptyCoverage()): RunOutcome {
  const cancelRng = testRng(seed ^ 0x5bd1e995);
  return runToCompletion(engine, requests, {
    keepPasses: false,
    onPass: (ctx, rank, result) => {
      checkRank(ctx, rank, result);
      coverage.preemptions += result.preempted.length;
      for (const e of result.kvEvents) if (e.data.kind === 'removed') coverage.evictedBlocks += e.data.blockHashes.length;
      // A pass that computed prompt tokens of a request without finishing its prompt.
      if (result.scheduledTokens > 0 && result.prefillRequests > result.emitted.length) coverage.chunkedPasses++;
    },
    onToken(ctx, record, _token, atMs) {
      if (!cancelRng.chance(sc.cancelRate)) return;
      if (cancelRng.chance(0.5)) {
        ctx.cancel(record.key, atMs);
        return;
      }
      // Cancel some other live request (waiting, preempted or running), on any rank.
      const live = [...ctx.records.values()].filter((r) => r.seq && ['waiting', 'preempted', 'running'].includes(r.seq.status));
      if (live.length) ctx.cancel(cancelRng.pick(live).key, atMs);
    },
  });
}

const stringify = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));

function fingerprint(out: RunOutcome): string {
  const records = [...out.records.values()].map((r) => ({
    key: r.key,
    accepted: r.accepted,
    rank: r.rank,
    tokens: r.tokens,
    times: r.times,
    finishedAt: r.finishedAt,
    cancelledAt: r.cancelledAt,
  }));
  return stringify({ records, events: out.events, endMs: out.endMs, passes: out.passCount });
}

describe.each(SCENARIOS)('invariants: $name', (sc) => {
  const coverage = emptyCoverage();

  it.each(SEEDS)('seed %i', async (seed) => {
    const hasher = await getHasher();
    const { requests, expect: expectations } = workload(sc, seed);
    const engine = await makeEngine(sc.setup, { model: { vocabSize: VOCAB } });
    const out = runScenario(engine, sc, seed, requests, coverage);
    const setup = engine.setup;
    for (const sched of engine.ranks) coverage.prefixHitTokens += sched.snapshot().prefixHitTokens;
    for (const r of out.records.values()) {
      if (r.accepted === false) coverage.refusals++;
      if (r.cancelledAt !== null) coverage.cancellations++;
    }

    // Everything is done: no KV held anywhere.
    for (const sched of engine.ranks) {
      expect(sched.idle).toBe(true);
      expect(sched.pool.activeBlocks).toBe(0);
      expect(sched.snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
    }

    const arrivals = new Set(requests.map((q) => q.atMs));
    let finished = 0;
    let cancelled = 0;
    for (const r of out.records.values()) {
      const exp = expectations.get(r.key)!;
      expect(r.accepted, `request ${r.key} accepted`).toBe(!exp.refused);
      if (!r.accepted) {
        expect(r.tokens).toEqual([]);
        continue;
      }
      // Tokens: inside the vocabulary, never banned, times never decreasing.
      for (const tok of r.tokens) {
        expect(tok).toBeGreaterThanOrEqual(0);
        expect(tok).toBeLessThan(VOCAB);
        expect(Number.isInteger(tok)).toBe(true);
        expect(BANNED.has(tok), `request ${r.key} emitted banned token ${tok}`).toBe(false);
      }
      for (let i = 1; i < r.times.length; i++) {
        if (Number.isFinite(setup.speedupRatio)) expect(r.times[i]).toBeGreaterThan(r.times[i - 1]);
        else expect(r.times[i]).toBeGreaterThanOrEqual(r.times[i - 1]);
      }
      // With zero-duration passes the clock only moves at arrivals.
      if (!Number.isFinite(setup.speedupRatio)) for (const t of r.times) expect(arrivals.has(t)).toBe(true);
      if (r.times.length) expect(r.times[0]).toBeGreaterThanOrEqual(r.submittedAt!);
      if (r.cancelledAt !== null) {
        cancelled++;
        expect(r.seq!.status).toBe('cancelled');
        expect(r.finishedAt).toBeNull();
        expect(r.tokens.length).toBeLessThan(exp.maxTokens);
      } else {
        finished++;
        expect(r.seq!.status).toBe('finished');
        expect(r.tokens, `request ${r.key} output length`).toHaveLength(exp.maxTokens);
        expect(r.finishedAt).toBe(exp.maxTokens ? r.times[exp.maxTokens - 1] : r.submittedAt);
      }
    }
    expect(finished).toBeGreaterThan(0);
    expect(finished + cancelled + [...out.records.values()].filter((r) => !r.accepted).length).toBe(sc.requests);

    // KV events: ids 0,1,2,… per rank; the stream replays cleanly into a router index and leaves it
    // holding exactly the blocks the pool still caches.
    for (let rank = 0; rank < engine.ranks.length; rank++) {
      const events: KvEvent[] = out.events[rank];
      expect(events.map((e) => e.eventId)).toEqual(events.map((_e, i) => i));
      const pool = engine.ranks[rank].pool;
      if (!setup.enablePrefixCaching) {
        expect(events).toEqual([]);
        continue;
      }
      const index = new RouterIndex({ hasher });
      expect(() => index.applyEvents(events)).not.toThrow();
      expect(index.storedBlocks).toBeGreaterThan(0);
      expect(new Set(index.hashes(rank))).toEqual(new Set(pool.inactiveHashes()));
      // Tail-first freeing: a parent always outlives its children in the LRU.
      expect(index.orphaningRemovals).toBe(0);
    }
  });

  it('the seeds exercised preemption, cancellation, refusal and (with caching) eviction and prefix hits', () => {
    const setup = engineSetup(sc.setup);
    expect(coverage.preemptions).toBeGreaterThan(0);
    expect(coverage.cancellations).toBeGreaterThan(0);
    expect(coverage.refusals).toBeGreaterThan(0);
    if (setup.enablePrefixCaching) {
      expect(coverage.evictedBlocks).toBeGreaterThan(0);
      expect(coverage.prefixHitTokens).toBeGreaterThan(0);
    }
    if (setup.enableChunkedPrefill && setup.maxNumBatchedTokens !== null) expect(coverage.chunkedPasses).toBeGreaterThan(0);
  });
});

describe('determinism', () => {
  it.each(SCENARIOS.map((sc, i) => [sc.name, i] as const))('%s: the same seed gives identical tokens, times and events', async (_name, i) => {
    const sc = SCENARIOS[i];
    const seed = 11 + i;
    const runOnce = async (): Promise<string> => {
      const engine = await makeEngine(sc.setup, { model: { vocabSize: VOCAB } });
      return fingerprint(runScenario(engine, sc, seed, workload(sc, seed).requests));
    };
    const a = await runOnce();
    const b = await runOnce();
    expect(b).toBe(a);
    // And a different engine seed changes the sampled tokens.
    const engine = await makeEngine({ ...sc.setup, seed: 99 }, { model: { vocabSize: VOCAB } });
    const c = fingerprint(runScenario(engine, { ...sc, cancelRate: 0 }, seed, workload(sc, seed).requests));
    const engine2 = await makeEngine(sc.setup, { model: { vocabSize: VOCAB } });
    const d = fingerprint(runScenario(engine2, { ...sc, cancelRate: 0 }, seed, workload(sc, seed).requests));
    expect(c).not.toBe(d);
  });
});
