// --latency-jitter: the seeded pass-duration factor (statistics, clamping, determinism), its use by the
// scheduler (CV 0 = today's timings, one draw per pass with work, read at every pass), and the flag.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { ConfigError, ENGINE_DEFAULTS, parseReplayConfig, parseWorkerConfig } from '../../src/config.js';
import { mixSeed } from '../../src/core/random.js';
import { Scheduler, type PassResult } from '../../src/core/scheduler.js';
import { JITTER_MAX_FACTOR, JITTER_MIN_FACTOR, JITTER_SEED_SALT, PassJitter } from '../../src/core/timing/jitter.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import type { EngineSetup } from '../../src/core/engine.js';
import { getHasher, makeEngine, makeScheduler, request, runToCompletion, seqInput, tokens } from '../helpers/core-fixtures.js';
import { mixedTraceLines, replayCli } from '../helpers/traces.js';

const SAMPLES = 20_000;

function stats(values: readonly number[]): { mean: number; cv: number } {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
  return { mean, cv: Math.sqrt(variance) / mean };
}

function draw(seed: number, cv: number, n = SAMPLES): number[] {
  const jitter = new PassJitter(seed);
  return Array.from({ length: n }, () => jitter.factor(cv));
}

describe('PassJitter', () => {
  for (const cv of [0.1, 0.3]) {
    it(`has mean 1 ± 0.02 and CV ${cv} ± 0.02 over ${SAMPLES} factors`, () => {
      for (const seed of [0, 1, 0xdeadbeef]) {
        const s = stats(draw(seed, cv));
        expect(Math.abs(s.mean - 1)).toBeLessThanOrEqual(0.02);
        expect(Math.abs(s.cv - cv)).toBeLessThanOrEqual(0.02);
      }
    });
  }

  for (const cv of [0.1, 0.3, 0.5, 1]) {
    it(`keeps every factor within [0.3, 1.7] at CV ${cv}`, () => {
      const factors = draw(7, cv);
      expect(Math.min(...factors)).toBeGreaterThanOrEqual(JITTER_MIN_FACTOR);
      expect(Math.max(...factors)).toBeLessThanOrEqual(JITTER_MAX_FACTOR);
      expect([JITTER_MIN_FACTOR, JITTER_MAX_FACTOR]).toEqual([0.3, 1.7]);
    });
  }

  it('clamps at CV 1: both bounds are reached, nothing lies beyond them', () => {
    const factors = draw(11, 1);
    expect(factors).toContain(0.3);
    expect(factors).toContain(1.7);
    expect(factors.every((f) => f >= 0.3 && f <= 1.7)).toBe(true);
  });

  it('CV 0 returns exactly 1 and draws nothing', () => {
    const plain = new PassJitter(3);
    const interleaved = new PassJitter(3);
    for (let i = 0; i < 100; i++) {
      expect(interleaved.factor(0)).toBe(1);
      expect(interleaved.factor(0.2)).toBe(plain.factor(0.2));
    }
  });

  it('is a pure function of the seed', () => {
    expect(draw(42, 0.3, 1000)).toEqual(draw(42, 0.3, 1000));
    expect(draw(42, 0.3, 1000)).not.toEqual(draw(43, 0.3, 1000));
  });

  it('refuses a negative or non-finite CV (a broken invariant: the config validates it)', () => {
    const jitter = new PassJitter(0);
    for (const cv of [-0.1, NaN, Infinity]) expect(() => jitter.factor(cv)).toThrow(RangeError);
  });
});

/** Queues `n` requests on a scheduler and steps it on the virtual clock (each pass at the previous end) until idle. */
function runScheduler(scheduler: Scheduler, n = 12, onPass?: (pass: PassResult, index: number) => void): PassResult[] {
  for (let k = 0; k < n; k++) expect(scheduler.add(seqInput(k, tokens(40 + 23 * k, 1000 * k), 5 + (k % 7))).ok).toBe(true);
  const passes: PassResult[] = [];
  let now = 0;
  while (!scheduler.idle) {
    const pass = scheduler.step(now);
    onPass?.(pass, passes.length);
    passes.push(pass);
    now = pass.endMs;
  }
  return passes;
}

// Small budget so prompts are chunked and passes mix prefill and decode.
const SMALL: Partial<EngineSetup> = { blockSize: 16, numGpuBlocks: 400, maxNumSeqs: 4, maxNumBatchedTokens: 64 };
const times = (passes: readonly PassResult[]) => passes.map((p) => [p.startMs, p.endMs]);
const durations = (passes: readonly PassResult[]) => passes.map((p) => p.endMs - p.startMs);

describe('Scheduler with --latency-jitter', () => {
  it('CV 0 gives exactly the pass times of a scheduler without the option', async () => {
    const without = runScheduler(await makeScheduler(SMALL));
    const zero = runScheduler(await makeScheduler({ ...SMALL, latencyJitter: 0 }));
    expect(without.length).toBeGreaterThan(20);
    expect(times(zero)).toEqual(times(without));
    // Scaled by the speedup ratios too.
    const fast = { ...SMALL, speedupRatio: 3, decodeSpeedupRatio: 1.7 };
    expect(times(runScheduler(await makeScheduler({ ...fast, latencyJitter: 0 })))).toEqual(times(runScheduler(await makeScheduler(fast))));
  });

  it('CV 0 gives exactly the token times of an engine without the option (arrivals over time)', async () => {
    const requests = () => Array.from({ length: 10 }, (_, k) => request(k, k * 15, tokens(50 + 31 * k, 500 * k), 8));
    const run = async (setup: Partial<EngineSetup>) =>
      [...runToCompletion(await makeEngine({ ...SMALL, ...setup }), requests()).records.values()].map((r) => r.times);
    expect(await run({ latencyJitter: 0 })).toEqual(await run({}));
  });

  it('multiplies each pass duration (scaled prefill + decode) by one factor of the (seed, rank) stream', async () => {
    const seed = 1234;
    const dpRank = 1;
    const fast = { ...SMALL, speedupRatio: 2, decodeSpeedupRatio: 1.5 };
    const base = runScheduler(await makeScheduler(fast));
    const config = (await makeScheduler({ ...fast, latencyJitter: 0.3 })).config;
    const jittered = runScheduler(new Scheduler(config, createPolynomialTimingModel(), await getHasher(), dpRank, seed));
    const expected = new PassJitter(mixSeed(seed, JITTER_SEED_SALT + dpRank));
    expect(jittered.length).toBe(base.length);
    const baseDurations = durations(base);
    const jitteredDurations = durations(jittered);
    let differing = 0;
    for (let i = 0; i < base.length; i++) {
      // The schedule itself does not depend on time: same tokens, same model durations.
      expect(jittered[i].scheduledTokens).toBe(base[i].scheduledTokens);
      expect(jittered[i].prefillMs).toBe(base[i].prefillMs);
      expect(jittered[i].decodeMs).toBe(base[i].decodeMs);
      const factor = expected.factor(0.3);
      expect(jitteredDurations[i]).toBeCloseTo(baseDurations[i] * factor, 9);
      if (Math.abs(factor - 1) > 1e-3) differing++;
    }
    expect(differing).toBeGreaterThan(base.length / 2);
  });

  it('gives each DP rank and each seed its own stream', async () => {
    const config = (await makeScheduler({ ...SMALL, latencyJitter: 0.3 })).config;
    const run = async (rank: number, seed: number) => durations(runScheduler(new Scheduler(config, createPolynomialTimingModel(), await getHasher(), rank, seed)));
    expect(await run(0, 5)).toEqual(await run(0, 5));
    expect(await run(0, 5)).not.toEqual(await run(1, 5));
    expect(await run(0, 5)).not.toEqual(await run(0, 6));
  });

  it('reads the CV from the config at every pass (it may change at run time)', async () => {
    const scheduler = await makeScheduler(SMALL);
    const base = durations(runScheduler(await makeScheduler(SMALL)));
    const switchAt = 10;
    const passes = runScheduler(scheduler, 12, (_pass, index) => {
      if (index === switchAt - 1) (scheduler.config as { latencyJitter?: number }).latencyJitter = 0.5;
    });
    const got = durations(passes);
    expect(got.slice(0, switchAt)).toEqual(base.slice(0, switchAt));
    const expected = new PassJitter(mixSeed(0, JITTER_SEED_SALT));
    for (let i = switchAt; i < got.length; i++) expect(got[i]).toBeCloseTo(base[i] * expected.factor(0.5), 9);
  });

  it('an idle pass draws nothing and still takes no time', async () => {
    const scheduler = await makeScheduler({ ...SMALL, latencyJitter: 0.3 });
    const idle = scheduler.step(100);
    expect(idle.endMs).toBe(100);
    // The first pass with work still gets the stream's first factor.
    const base = runScheduler(await makeScheduler(SMALL), 1);
    const passes = runScheduler(scheduler, 1);
    expect(durations(passes)[0]).toBeCloseTo(durations(base)[0] * new PassJitter(mixSeed(0, JITTER_SEED_SALT)).factor(0.3), 9);
  });
});

describe('--latency-jitter flag', () => {
  it('defaults to 0 (deterministic), in ENGINE_DEFAULTS and in the parsed config', () => {
    expect(ENGINE_DEFAULTS.latencyJitter).toBe(0);
    expect(parseWorkerConfig({ modelPath: 'm' }, [], {}).engine.latencyJitter).toBe(0);
    expect(parseWorkerConfig({ modelPath: 'm', latencyJitter: '0.25' }, [], {}).engine.latencyJitter).toBe(0.25);
    expect(parseWorkerConfig({ modelPath: 'm', latencyJitter: '1' }, [], {}).engine.latencyJitter).toBe(1);
  });

  for (const bad of ['-0.1', '1.5', 'nan', 'inf', 'abc', '']) {
    it(`refuses --latency-jitter '${bad}' with a ConfigError naming the flag`, () => {
      expect(() => parseWorkerConfig({ modelPath: 'm', latencyJitter: bad }, [], {})).toThrow(ConfigError);
      expect(() => parseWorkerConfig({ modelPath: 'm', latencyJitter: bad }, [], {})).toThrow(/--latency-jitter/);
    });
  }

  async function run(args: string[]) {
    let out = '';
    let err = '';
    const code = await main(args, { out: (t) => (out += t), err: (t) => (err += t), env: {}, isTty: false });
    return { code, out, err };
  }

  it('exits 2 naming --latency-jitter, for the worker and for replay', async () => {
    for (const args of [
      ['--model-path', 'm', '--latency-jitter', '2'],
      ['--model-path', 'm', '--latency-jitter', '-1'],
      ['replay', '--trace', 'unused.jsonl', '--latency-jitter', 'x'],
    ]) {
      const { code, err } = await run(args);
      expect(code).toBe(2);
      expect(err).toContain('--latency-jitter');
    }
  });

  it('is listed by --help for the worker and for replay, with its default', async () => {
    for (const args of [['--help'], ['replay', '--help']]) {
      const { code, out } = await run(args);
      expect(code).toBe(0);
      const [, after = ''] = out.replace(/\s+/g, ' ').split('--latency-jitter <cv> ');
      expect(after.split(' --')[0]).toContain('(default: 0)');
    }
  });

  it('is read from --extra-engine-args as latency_jitter', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'jitter-')), 'args.json');
    writeFileSync(file, JSON.stringify({ latency_jitter: 0.2 }));
    expect(parseWorkerConfig({ modelPath: 'm', latencyJitter: '0.1', extraEngineArgs: file }, [], {}).engine.latencyJitter).toBe(0.2);
    writeFileSync(file, JSON.stringify({ latency_jitter: 3 }));
    expect(() => parseWorkerConfig({ modelPath: 'm', extraEngineArgs: file }, [], {})).toThrow(/--latency-jitter/);
    const trace = join(mkdtempSync(join(tmpdir(), 'jitter-')), 't.jsonl');
    writeFileSync(trace, '{"timestamp":0,"input_length":10,"output_length":2}\n');
    expect(parseReplayConfig({ trace, latencyJitter: '0.3' }, []).engine.latencyJitter).toBe(0.3);
  });
});

describe('replay with --latency-jitter', () => {
  const lines = mixedTraceLines(60);

  it('the same seed gives byte-identical output files; another seed differs', async () => {
    const a = await replayCli(lines, ['--latency-jitter', '0.3', '--seed', '7']);
    const b = await replayCli(lines, ['--latency-jitter', '0.3', '--seed', '7']);
    const c = await replayCli(lines, ['--latency-jitter', '0.3', '--seed', '8']);
    for (const r of [a, b, c]) expect(r.code).toBe(0);
    expect(b.bytes).toBe(a.bytes);
    expect(b.summaryBytes).toBe(a.summaryBytes);
    expect(c.bytes).not.toBe(a.bytes);
    // Without jitter these seeds time the trace identically, so the difference above is the jitter's.
    const [plain7, plain8] = await Promise.all([replayCli(lines, ['--seed', '7']), replayCli(lines, ['--seed', '8'])]);
    expect(plain8.bytes).toBe(plain7.bytes);
  });

  it('CV 0 is byte-identical to a run without the flag; CV 0.3 changes the timings', async () => {
    const without = await replayCli(lines, ['--data-parallel-size', '2']);
    const zero = await replayCli(lines, ['--data-parallel-size', '2', '--latency-jitter', '0']);
    const jittered = await replayCli(lines, ['--data-parallel-size', '2', '--latency-jitter', '0.3']);
    expect(zero.bytes).toBe(without.bytes);
    expect(zero.summaryBytes).toBe(without.summaryBytes);
    expect(jittered.bytes).not.toBe(without.bytes);
    // Jitter changes when tokens appear, not how many.
    expect(jittered.rows.map((r) => r.output_tokens)).toEqual(without.rows.map((r) => r.output_tokens));
  });
});
