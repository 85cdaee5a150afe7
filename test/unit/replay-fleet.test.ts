// Fleet replay (--num-workers, --router): hand-computed KV routing, fleet of one = single worker, determinism, prefix reuse, dependent records.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseReplayConfig, type ReplayConfig } from '../../src/config.js';
import { simulateTrace, type ReplayOutcome } from '../../src/replay/run-replay.js';
import { generateSyntheticTrace, parseSyntheticSpec } from '../../src/replay/synthetic-trace.js';
import { parseTrace, type TraceRecord } from '../../src/replay/trace.js';
import type { Workload } from '../../src/replay/workload.js';
import { mixedTraceLines } from '../helpers/traces.js';

// parseReplayConfig wants a readable --trace; the records themselves are handed to simulateTrace.
const dir = mkdtempSync(join(tmpdir(), 'replay-fleet-'));
const traceFile = join(dir, 'trace.jsonl');
writeFileSync(traceFile, '{"timestamp":0,"input_length":1,"output_length":1}\n');

const io = { out: () => {}, err: () => {}, env: {}, isTty: false };

function config(flags: Record<string, unknown> = {}): ReplayConfig {
  return parseReplayConfig({ trace: traceFile, progress: false, ...flags }, []);
}

function workload(records: TraceRecord[], traceBlockSize: number): Workload {
  return { records, traceBlockSize, name: 'test', format: 'mooncake' };
}

const run = (flags: Record<string, unknown>, w: Workload): Promise<ReplayOutcome> => simulateTrace(config(flags), w, io);

function rec(index: number, timestampMs: number, inputLength: number, outputLength: number, hashIds: number[], after?: TraceRecord['after']): TraceRecord {
  return { index, line: index + 1, timestampMs, inputLength, outputLength, hashIds, ...(after ? { after } : {}) };
}

describe('KV routing against round-robin, by hand', () => {
  // 2 workers, block_size 16 = trace block size 16 (one hash id = one KV block), prefix caching on.
  // Five 64-token prompts (4 full blocks), 2 output tokens, 10 s apart: each ends long before the next
  // arrives, so at every arrival the router's load terms are 0 (no prefill backlog, no active blocks)
  // and the cost is  logit(w) = max(0, 64/16 − ov(w)) + (0 + 4 − 0) = 8 − ov(w),  ov = the strict
  // prefix of the request's blocks the worker announced. Nothing is evicted (16384 blocks per worker).
  //   R0 [1,2,3,4]   R1 [1,2,3,5]   R2 [6,7,8,9]   R3 [6,7,8,10]   R4 [6,7,11,12]
  // Blocks no other request walks through (R0's 4, R1's 5, …) are private, never announced.
  const records = [
    rec(0, 0, 64, 2, [1, 2, 3, 4]),
    rec(1, 10_000, 64, 2, [1, 2, 3, 5]),
    rec(2, 20_000, 64, 2, [6, 7, 8, 9]),
    rec(3, 30_000, 64, 2, [6, 7, 8, 10]),
    rec(4, 40_000, 64, 2, [6, 7, 11, 12]),
  ];
  const w = workload(records, 16);
  const flags = { blockSize: '16', traceBlockSize: '16', numWorkers: '2' };

  it('kv: each request follows its prefix; cached tokens and hit rate as the cost predicts', async () => {
    // R0: both workers cold, 8 vs 8: a seeded tie, call the winner X.
    // R1: ov(X) = 3 ([1,2,3]), other 0 → 5 vs 8 → X; 3 blocks cached = 48 tokens.
    // R2: nobody holds [6…] → 8 vs 8, a tie again, call the winner Y (X or not: nothing below depends on it).
    // R3: ov(Y) = 3 ([6,7,8]) → 5 vs 8 → Y; 48 cached.
    // R4: ov(Y) = 2 ([6,7]), the other worker 0 → 6 vs 8 → Y; 32 cached.
    // Hit rate (0 + 48 + 0 + 48 + 32) / (5 · 64) = 128 / 320 = 0.4.
    const { results, summary } = await run({ ...flags, router: 'kv' }, w);
    expect(results.map((r) => r.cached_tokens)).toEqual([0, 48, 0, 48, 32]);
    expect(summary.cached_tokens).toBe(128);
    expect(summary.prefix_hit_rate).toBe(0.4);
    const at = results.map((r) => r.worker);
    expect(at[1]).toBe(at[0]);
    expect(at[3]).toBe(at[2]);
    expect(at[4]).toBe(at[2]);
    // Every request arrives to an idle fleet, as the hand computation assumes.
    for (let i = 1; i < 5; i++) expect(results[i].arrival_ms).toBeGreaterThan(results[i - 1].finish_ms!);
    expect(summary.fleet!.router).toBe('kv');
  });

  it('round-robin: alternating workers send shared prefixes to cold workers', async () => {
    // R0 → w0, R1 → w1 (cold: 0), R2 → w0 (holds [1,2,3]: 0), R3 → w1 (holds [1,2,3]: 0),
    // R4 → w0 (holds [6,7,8] from R2: 2 blocks = 32). Hit rate 32 / 320 = 0.1.
    const { results, summary } = await run({ ...flags, router: 'round-robin' }, w);
    expect(results.map((r) => r.worker)).toEqual([0, 1, 0, 1, 0]);
    expect(results.map((r) => r.cached_tokens)).toEqual([0, 0, 0, 0, 32]);
    expect(summary.cached_tokens).toBe(32);
    expect(summary.prefix_hit_rate).toBe(0.1);
    expect(summary.fleet!.per_worker.map((p) => p.cached_tokens)).toEqual([32, 0]);
  });
});

describe('a fleet of one is the single-worker replay', () => {
  const records = parseTrace(
    mixedTraceLines(80)
      .map((l) => JSON.stringify(l))
      .join('\n'),
    512,
  );
  const w = workload(records, 512);
  const base = { blockSize: '16', numGpuBlocksOverride: '600', maxNumBatchedTokens: '1024' };

  it.each([
    { loop: 'open', flags: base },
    { loop: 'closed', flags: { ...base, concurrency: '6' } },
  ])('$loop loop: every router with --num-workers 1 gives byte-identical results and summary', async ({ flags }) => {
    const reference = await run(flags, w);
    expect(reference.summary.completed).toBe(records.length);
    expect(reference.summary.cached_tokens).toBeGreaterThan(0);
    expect(reference.summary.fleet).toBeUndefined();
    expect('worker' in reference.results[0]).toBe(false);
    for (const router of ['round-robin', 'random', 'least-loaded', 'kv']) {
      const one = await run({ ...flags, numWorkers: '1', router }, w);
      expect(JSON.stringify(one.results), router).toBe(JSON.stringify(reference.results));
      expect(JSON.stringify(one.summary), router).toBe(JSON.stringify(reference.summary));
    }
  });
});

describe('fleet determinism', () => {
  const records = parseTrace(
    mixedTraceLines(120)
      .map((l) => JSON.stringify(l))
      .join('\n'),
    512,
  );
  const w = workload(records, 512);
  const base = { blockSize: '16', numWorkers: '3', numGpuBlocksOverride: '500' };

  it.each([
    { router: 'kv', routerTemperature: '0' },
    { router: 'kv', routerTemperature: '0.5' },
    { router: 'random' },
    { router: 'least-loaded' },
  ])('same trace, flags and seed → identical output: $router $routerTemperature', async (flags) => {
    const a = await run({ ...base, ...flags, seed: '7' }, w);
    const b = await run({ ...base, ...flags, seed: '7' }, w);
    expect(JSON.stringify(a.results)).toBe(JSON.stringify(b.results));
    expect(JSON.stringify(a.summary)).toBe(JSON.stringify(b.summary));
    // All three workers get work.
    expect(new Set(a.results.map((r) => r.worker)).size).toBe(3);
  });

  it('a different seed changes the random assignment', async () => {
    const a = await run({ ...base, router: 'random', seed: '7' }, w);
    const b = await run({ ...base, router: 'random', seed: '8' }, w);
    expect(a.results.map((r) => r.worker)).not.toEqual(b.results.map((r) => r.worker));
  });
});

describe('KV routing on a trace with shared prefixes', () => {
  const spec = parseSyntheticSpec('requests=240,isl=uniform:600:1400,osl=uniform:8:40,shared-prefix=0.6,prefix-groups=8,rate=40', 3);
  const records = generateSyntheticTrace(spec, 64);
  const w = workload(records, 64);
  // 400 blocks of 16 tokens per worker: room for the requests in flight and a few groups' prefixes
  // (about 40 blocks each), not all eight. Round-robin sends every group to every worker, where the
  // prefixes evict one another; KV routing keeps a group on the workers that hold it.
  // (With an unbounded cache both approach the trace's shared fraction, about 0.5.)
  const base = { blockSize: '16', traceBlockSize: '64', numWorkers: '4', seed: '3', numGpuBlocksOverride: '400' };

  it('beats round-robin on prefix hit rate; rows name workers and the fleet summary adds up', async () => {
    const kv = await run({ ...base, router: 'kv' }, w);
    const rr = await run({ ...base, router: 'round-robin' }, w);
    const random = await run({ ...base, router: 'random' }, w);
    for (const o of [kv, rr, random]) expect(o.summary.completed).toBe(records.length);
    // Measured: kv 0.427, round-robin 0.326, random 0.349.
    expect(kv.summary.prefix_hit_rate).toBeGreaterThan(rr.summary.prefix_hit_rate + 0.06);
    expect(kv.summary.prefix_hit_rate).toBeGreaterThan(random.summary.prefix_hit_rate + 0.04);
    expect(kv.summary.prefix_hit_rate).toBeGreaterThan(0.4);
    expect(rr.results.map((r) => r.worker)).toEqual(records.map((_, i) => i % 4));
    for (const o of [kv, rr]) {
      for (const r of o.results) expect(r.worker).toSatisfy((v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 4);
      const fleet = o.summary.fleet!;
      expect(fleet.workers).toBe(4);
      expect(fleet.per_worker.map((p) => p.worker)).toEqual([0, 1, 2, 3]);
      const sum = (k: 'requests' | 'completed' | 'input_tokens' | 'cached_tokens' | 'output_tokens' | 'preemptions'): number =>
        fleet.per_worker.reduce((a, p) => a + p[k], 0);
      expect(sum('requests')).toBe(o.summary.requests);
      expect(sum('completed')).toBe(o.summary.completed);
      expect(sum('input_tokens')).toBe(o.summary.input_tokens);
      expect(sum('cached_tokens')).toBe(o.summary.cached_tokens);
      expect(sum('output_tokens')).toBe(o.summary.output_tokens);
      expect(sum('preemptions')).toBe(o.summary.preemptions);
      for (const p of fleet.per_worker) {
        const mine = o.results.filter((r) => r.worker === p.worker);
        expect(p.requests).toBe(mine.length);
        expect(p.cached_tokens).toBe(mine.reduce((a, r) => a + r.cached_tokens, 0));
        expect(p.passes).toBeGreaterThan(0);
      }
    }
    // KV routing concentrates a group on few workers; per-worker hit rates follow.
    expect(Math.min(...kv.summary.fleet!.per_worker.map((p) => p.prefix_hit_rate))).toBeGreaterThan(0);
  });
});

describe('dependent records (after) in a fleet', () => {
  // R1 waits for R0 (+500 ms); R3 waits for R1 and R2 (+250 ms after the later of the two ends).
  const records = [
    rec(0, 0, 300, 20, []),
    rec(1, 0, 200, 5, [], { indices: [0], delayMs: 500 }),
    rec(2, 100, 400, 30, []),
    rec(3, 0, 100, 3, [], { indices: [1, 2], delayMs: 250 }),
    rec(4, 50, 150, 4, []),
  ];
  const w = workload(records, 512);

  it.each([
    { loop: 'open', flags: {} },
    { loop: 'closed', flags: { concurrency: '1' } },
    { loop: 'closed, two slots', flags: { concurrency: '2' } },
  ])('$loop loop: a dependent arrives its delay after its last dependency finishes', async ({ flags }) => {
    for (const router of ['kv', 'round-robin']) {
      const { results, summary } = await run({ blockSize: '16', numWorkers: '2', router, ...flags }, w);
      expect(summary.completed).toBe(5);
      const r = results;
      expect(r[1].arrival_ms).toBeCloseTo(r[0].finish_ms! + 500, 4);
      expect(r[3].arrival_ms).toBeCloseTo(Math.max(r[1].finish_ms!, r[2].finish_ms!) + 250, 4);
      expect(r[1].arrival_ms).toBeGreaterThan(r[0].finish_ms!);
      if ('concurrency' in flags) {
        // Closed loop: roots are issued in order as slots free up (dependents take their root's slot).
        expect(r[0].arrival_ms).toBe(0);
        if (flags.concurrency === '1') {
          // One slot: R0; its end issues its dependent R1 (which takes the slot); R1's end issues no
          // dependent (R3 still waits for R2), so the next root R2 follows at once; R2's end issues R3;
          // R3's end issues nothing, so the last root R4 follows at once.
          expect(r[2].arrival_ms).toBeCloseTo(r[1].finish_ms!, 4);
          expect(r[4].arrival_ms).toBeCloseTo(r[3].finish_ms!, 4);
        }
      } else {
        expect(r[2].arrival_ms).toBe(100);
        expect(r[4].arrival_ms).toBe(50);
      }
    }
  });
});
