// End-to-end token timings on the virtual clock. Expected values are derived here, independently,
// from Dynamo's polynomial (prefill of the new prompt tokens in a pass, decode at the active-KV
// fraction, floored at 1 ms, only in passes that emit) — the engine's timing model is not imported.
import { describe, expect, it } from 'vitest';
import type { EngineSetup } from '../../src/core/engine.js';
import {
  DYNAMO_CORE_ARGS,
  makeEngine,
  range,
  rec,
  request,
  runToCompletion,
  tokens,
  type RunOutcome,
} from '../helpers/core-fixtures.js';

/** Prefill ms for n new prompt tokens in one pass (0 when there are none). */
function prefill(n: number): number {
  if (n <= 0) return 0;
  return 4.209989e-7 * n * n + 1.518344e-2 * n + 16.50142;
}

/** Decode ms at KV utilisation p (active tokens / total tokens), floored at 1 ms. */
function decode(p: number): number {
  return Math.max(1, -25.74 * p * p + 54.01 * p + 5.74);
}

/** Default pool: 16384 blocks of 64 tokens. */
const N = 16384;
const BS = 64;
const util = (blocks: number, numBlocks = N, bs = BS): number => (blocks * bs) / (numBlocks * bs);

/** Builds a timeline from per-pass [prefill tokens, active blocks or null when nothing is emitted]. */
function timeline(start: number, passes: Array<[number, number | null]>, opts: { s?: number; sd?: number; numBlocks?: number; bs?: number } = {}): number[] {
  const s = opts.s ?? 1;
  const sd = opts.sd ?? 1;
  const ends: number[] = [];
  let t = start;
  for (const [newTokens, blocks] of passes) {
    const pf = prefill(newTokens);
    const dc = blocks === null ? 0 : decode(util(blocks, opts.numBlocks, opts.bs));
    t = t + pf / s + dc / (s * sd);
    ends.push(t);
  }
  return ends;
}

function expectTimes(actual: number[], expected: number[]): void {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((t, i) => expect(t, `token ${i}`).toBeCloseTo(expected[i], 9));
}

async function run(setup: Partial<EngineSetup>, reqs: Parameters<typeof runToCompletion>[1]): Promise<RunOutcome> {
  const engine = await makeEngine(setup);
  return runToCompletion(engine, reqs);
}

describe('single request', () => {
  it('prompt 1000, 3 tokens: prefill + decode, then one decode per token at 16/16384 utilisation', async () => {
    const out = await run({}, [request(1, 0, tokens(1000), 3)]);
    const times = rec(out, 1).times;
    expect(times[0]).toBeCloseTo(37.8985784930481, 10);
    expect(times[1] - times[0]).toBeCloseTo(5.79272, 5);
    expectTimes(times, timeline(0, [[1000, 16], [0, 16], [0, 16]]));
    expect(rec(out, 1).finishedAt).toBe(times[2]);
  });

  it('starts its first pass at its arrival time when the engine is idle', async () => {
    const out = await run({}, [request(1, 250, tokens(100), 2)]);
    expectTimes(rec(out, 1).times, timeline(250, [[100, 2], [0, 2]]));
  });

  it('grows the decode utilisation when a generated token opens a new block', async () => {
    // 126 prompt tokens: the 2nd token (position 127) still fits block 2, the 3rd (128) opens block 3.
    const out = await run({}, [request(1, 0, tokens(126), 4)]);
    // Pass k allocates room for the tokens known at its start: 126 → 2 blocks, 127 → 2, 128 → 2, 129 → 3.
    expectTimes(rec(out, 1).times, timeline(0, [[126, 2], [0, 2], [0, 2], [0, 3]]));
  });
});

describe('batches', () => {
  it('two requests arriving together share one prefill over all their new tokens', async () => {
    const out = await run({}, [request(1, 0, tokens(1000), 2), request(2, 0, tokens(500, 10_000), 2)]);
    const expected = timeline(0, [[1500, 16 + 8], [0, 16 + 8]]);
    expectTimes(rec(out, 1).times, expected);
    expectTimes(rec(out, 2).times, expected);
  });

  it.each([
    { label: 'mid-pass', at: 10 },
    { label: 'exactly at the pass end', at: -1 },
  ])('a request arriving $label joins the next pass', async ({ at }) => {
    const t1 = timeline(0, [[1000, 16]])[0];
    const arrival = at < 0 ? t1 : at;
    const out = await run({}, [request(1, 0, tokens(1000), 3), request(2, arrival, tokens(200, 50_000), 2)]);
    expect(rec(out, 2).submittedAt).toBe(arrival);
    const r1 = timeline(0, [[1000, 16], [200, 16 + 4], [0, 16 + 4]]);
    expectTimes(rec(out, 1).times, r1);
    expectTimes(rec(out, 2).times, r1.slice(1));
  });

  it('a decoding request consumes the budget first and a new prompt is chunked around it', async () => {
    const out = await run({ maxNumBatchedTokens: 256 }, [request(1, 0, tokens(100), 3), request(2, 0, tokens(600, 10_000), 1)]);
    // Pass 1: 100 + 156 prompt tokens; r1 emits (blocks 2 + 3).
    // Pass 2: r1 decodes 1, r2 gets 255 (411 done, 7 blocks); r1 emits.
    // Pass 3: r1 decodes 1, r2 finishes its last 189 (10 blocks); both emit.
    const t = timeline(0, [[256, 2 + 3], [255, 2 + 7], [189, 2 + 10]]);
    expectTimes(rec(out, 1).times, t);
    expectTimes(rec(out, 2).times, [t[2]]);
  });
});

describe('chunked prefill', () => {
  it.each([
    { budget: 256, chunks: [256, 256, 256, 232] },
    { budget: 400, chunks: [400, 400, 200] },
    { budget: 1000, chunks: [1000] },
  ])('budget $budget: prompt 1000 takes passes $chunks; passes without a token add no decode time', async ({ budget, chunks }) => {
    const out = await run({ maxNumBatchedTokens: budget }, [request(1, 0, tokens(1000), 2)]);
    const passes: Array<[number, number | null]> = chunks.map((c, i) => [c, i === chunks.length - 1 ? 16 : null]);
    passes.push([0, 16]);
    const t = timeline(0, passes);
    expectTimes(rec(out, 1).times, t.slice(chunks.length - 1));
    expect(out.passCount).toBe(chunks.length + 1);
  });
});

describe('prefix reuse', () => {
  it.each([
    // 1000 = 15 full blocks + 40: 960 tokens cached, 40 new.
    { label: 'unaligned prompt', len: 1000, sharedTokens: 1000, cached: 960 },
    // 1024 = 16 full blocks, all cached (Dynamo's rule; vLLM would recompute the last token).
    { label: 'block-aligned prompt, fully cached', len: 1024, sharedTokens: 1024, cached: 1024 },
    { label: 'shared first 640 tokens', len: 1000, sharedTokens: 640, cached: 640 },
    { label: 'shared first 700 tokens (partial block not reused)', len: 1000, sharedTokens: 700, cached: 640 },
    { label: 'nothing shared', len: 1000, sharedTokens: 0, cached: 0 },
  ])('a second request after the first finished pays prefill only for uncached tokens: $label', async ({ len, sharedTokens, cached }) => {
    const first = tokens(len);
    const second = [...first.slice(0, sharedTokens), ...tokens(len - sharedTokens, 100_000)];
    const out = await run({}, [request(1, 0, first, 2), request(2, 200, second, 2)]);
    expect(rec(out, 1).finishedAt!).toBeLessThan(200);
    const blocks = Math.ceil(len / BS);
    expectTimes(rec(out, 2).times, timeline(200, [[len - cached, blocks], [0, Math.ceil((len + 1) / BS)]]));
    expect(rec(out, 2).seq!.cachedTokens).toBe(cached);
  });

  it('a fully cached aligned prompt costs no prefill, emits in its first pass and announces nothing', async () => {
    const prompt = tokens(1024);
    const out = await run({}, [request(1, 0, prompt, 2), request(2, 200, prompt, 2)]);
    const second = out.passes.filter((p) => p.result.startMs >= 200);
    expect(second[0].result.prefillTokens).toBe(0);
    expect(second[0].result.prefillMs).toBe(0);
    expect(second[0].result.decodeRequests).toBe(1);
    expect(rec(out, 2).seq!.cachedTokens).toBe(1024);
    expect(second.flatMap((p) => p.result.kvEvents)).toEqual([]);
  });

  it('a request sharing the blocks of a running one pays only for its own tokens', async () => {
    const prompt = tokens(1000);
    const out = await run({}, [request(1, 0, prompt, 3), request(2, 10, prompt, 2)]);
    // Pass 2: r2 reuses r1's 15 active blocks and adds one partial block: 17 blocks in use.
    const t = timeline(0, [[1000, 16], [40, 17], [0, 17]]);
    expectTimes(rec(out, 1).times, t);
    expectTimes(rec(out, 2).times, t.slice(1));
  });
});

describe('speedup', () => {
  it.each([
    { s: 1, sd: 1 },
    { s: 2, sd: 1 },
    { s: 1, sd: 2 },
    { s: 2, sd: 2 },
    { s: 10, sd: 3 },
    { s: 0.5, sd: 1 },
  ])('speedup $s and decode speedup $sd divide prefill by s and decode by s·sd', async ({ s, sd }) => {
    const out = await run({ speedupRatio: s, decodeSpeedupRatio: sd }, [request(1, 0, tokens(1000), 3), request(2, 1, tokens(300, 9000), 1)]);
    // r2 arrives during pass 1 at every speedup used here (pass 1 lasts more than 3 ms).
    const t = timeline(0, [[1000, 16], [300, 16 + 5], [0, 16]], { s, sd });
    expectTimes(rec(out, 1).times, t);
    expectTimes(rec(out, 2).times, [t[1]]);
  });

  it('speedup 2 with decode speedup 2 matches the hand-computed first token', async () => {
    const out = await run({ speedupRatio: 2, decodeSpeedupRatio: 2 }, [request(1, 0, tokens(1000), 1)]);
    expect(rec(out, 1).times[0]).toBeCloseTo(32.1058589 / 2 + 5.7927195930481 / 4, 6);
  });

  it('speedup Infinity makes every pass take zero time', async () => {
    const reqs = [
      request(1, 0, tokens(1000), 5),
      request(2, 0, tokens(3000, 5000), 3),
      request(3, 0, tokens(1000), 4), // prefix hit
    ];
    const out = await run({ speedupRatio: Infinity, maxNumBatchedTokens: 512 }, reqs);
    for (const r of out.records.values()) {
      expect(r.tokens.length).toBeGreaterThan(0);
      expect(r.times.every((t) => t === 0)).toBe(true);
      expect(r.finishedAt).toBe(0);
    }
    expect(out.endMs).toBe(0);
  });

  it('speedup Infinity with later arrivals stamps tokens at the arrival times', async () => {
    const out = await run({ speedupRatio: Infinity }, [request(1, 0, tokens(100), 3), request(2, 42, tokens(100, 500), 2)]);
    expect(rec(out, 1).times).toEqual([0, 0, 0]);
    expect(rec(out, 2).times).toEqual([42, 42]);
  });
});

describe('preemption timing', () => {
  // bs 4, 6 blocks (24 tokens), budget 16, 2 seqs, LIFO: two 8-token prompts, 8 tokens each.
  // Passes 1-5 run both; pass 6 preempts r2 (13 known tokens); r1 finishes in pass 8; pass 9
  // readmits r2 and recomputes its 13 tokens: only the prompt part costs prefill.
  it.each([
    { caching: false, recomputePrefill: 8 },
    // With prefix caching the victim's two prompt blocks are still cached (its generated block was
    // the first evicted), so the recompute costs no prefill at all.
    { caching: true, recomputePrefill: 0 },
  ])('the recomputed prompt is charged as prefill, recomputed generated tokens are free (prefix caching $caching)', async ({ caching, recomputePrefill }) => {
    const out = await run({ ...DYNAMO_CORE_ARGS, maxNumBatchedTokens: 16, maxNumSeqs: 2, enablePrefixCaching: caching }, [
      request(1, 0, range(0, 8), 8),
      request(2, 0, range(100, 108), 8),
    ]);
    const opts = { numBlocks: 6, bs: 4 };
    const t = timeline(
      0,
      [
        [16, 4], // both prompts; 2 blocks each
        [0, 6],
        [0, 6],
        [0, 6],
        [0, 6],
        [0, 4], // r2 preempted: r1's 4 blocks
        [0, 4],
        [0, 4], // r1 finishes
        [recomputePrefill, 4], // r2 readmitted with 13 tokens (4 blocks)
        [0, 4],
        [0, 4],
      ],
      opts,
    );
    expectTimes(rec(out, 1).times, t.slice(0, 8));
    expectTimes(rec(out, 2).times, [...t.slice(0, 5), ...t.slice(8)]);
    const readmit = out.passes[8].result;
    expect(readmit.admitted.map((s) => s.key)).toEqual([2]);
    expect(readmit.scheduledTokens).toBe(caching ? 5 : 13);
    expect(readmit.prefillTokens).toBe(recomputePrefill);
    expect(out.passes[5].result.preempted.map((s) => s.key)).toEqual([2]);
  });
});

describe('data parallel ranks', () => {
  it('round-robin ranks run independent timelines', async () => {
    const out = await run({ dataParallelSize: 2 }, [
      request(1, 0, tokens(1000), 2), // rank 0
      request(2, 0, tokens(500, 10_000), 2), // rank 1
      request(3, 0, tokens(300, 20_000), 2), // rank 0
    ]);
    expect([1, 2, 3].map((k) => rec(out, k).rank)).toEqual([0, 1, 0]);
    const rank0 = timeline(0, [[1300, 16 + 5], [0, 16 + 5]]);
    const rank1 = timeline(0, [[500, 8], [0, 8]]);
    expectTimes(rec(out, 1).times, rank0);
    expectTimes(rec(out, 3).times, rank0);
    expectTimes(rec(out, 2).times, rank1);
  });

  it('identical prompts on different ranks each pay the full prefill (separate caches)', async () => {
    const prompt = tokens(1000);
    const out = await run({ dataParallelSize: 2 }, [request(1, 0, prompt, 1), request(2, 0, prompt, 1), request(3, 100, prompt, 1)]);
    const fresh = timeline(0, [[1000, 16]]);
    expectTimes(rec(out, 1).times, fresh);
    expectTimes(rec(out, 2).times, fresh);
    // Request 3 lands on rank 0 again and hits its cache.
    expect(rec(out, 3).rank).toBe(0);
    expectTimes(rec(out, 3).times, timeline(100, [[40, 16]]));
  });

  it('a long prefill on one rank does not delay decoding on another; explicit dp_rank routes', async () => {
    const out = await run({ dataParallelSize: 3 }, [
      request(1, 0, tokens(8000), 1, { dpRank: 2 }),
      request(2, 0, tokens(100, 50_000), 4, { dpRank: 1 }),
    ]);
    expect(rec(out, 1).rank).toBe(2);
    expect(rec(out, 2).rank).toBe(1);
    expectTimes(rec(out, 1).times, timeline(0, [[8000, 125]]));
    expectTimes(rec(out, 2).times, timeline(0, [[100, 2], [0, 2], [0, 2], [0, 2]]));
    expect(rec(out, 2).finishedAt!).toBeLessThan(rec(out, 1).finishedAt!);
  });
});
