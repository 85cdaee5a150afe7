// Starting N workers: bounded concurrency, Dynamo's --stagger-delay (auto rule, pauses, validation), failures and stops.
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { WORKER_DEFAULTS, parseWorkerConfig } from '../../src/config.js';
import { STAGGER_GROUP_PAUSE_MS, autoStaggerDelayS, launchWorkers, staggerPauseMs, type LaunchOptions } from '../../src/worker-launch.js';
import { TINY_MODEL } from '../helpers/worker-process.js';

/** A sleep that records what it was asked and returns at once. */
function recordingSleep(): { pauses: number[]; sleep: LaunchOptions<number>['sleep'] } {
  const pauses: number[] = [];
  return { pauses, sleep: async (ms) => void pauses.push(ms) };
}

/** Starts that finish on a later turn of the event loop, counting how many run at once. */
function countingStart(fail?: (index: number) => boolean) {
  const state = { inFlight: 0, maxInFlight: 0, startedIndexes: [] as number[] };
  const start = (index: number): Promise<number> => {
    state.startedIndexes.push(index);
    state.inFlight++;
    state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
    return new Promise((resolve, reject) =>
      setImmediate(() => {
        state.inFlight--;
        if (fail?.(index)) reject(new Error(`worker ${index} failed`));
        else resolve(index);
      }),
    );
  };
  return { state, start };
}

describe('--stagger-delay: Dynamo’s auto rule and pauses', () => {
  it.each([
    [1, 0],
    [32, 0],
    [33, 0.1],
    [128, 0.1],
    [129, 0.2],
    [1024, 0.2],
  ])('auto (-1) with %i workers is %f s', (workers, seconds) => {
    expect(autoStaggerDelayS(workers)).toBe(seconds);
  });

  it('pauses the delay before every launch but the first, 2 s more before the 33rd, 65th, …', () => {
    expect([0, 1, 2, 31, 32, 33, 63, 64, 65].map((i) => staggerPauseMs(i, 200))).toEqual([0, 200, 200, 200, 2200, 200, 200, 2200, 200]);
    expect([0, 1, 32, 64].map((i) => staggerPauseMs(i, 0))).toEqual([0, 0, 0, 0]);
  });
});

describe('launchWorkers', () => {
  it('starts every worker once, in index order, never more than `concurrency` at once', async () => {
    const { state, start } = countingStart();
    const started: number[] = [];
    await launchWorkers({ count: 100, concurrency: 8, staggerDelayMs: 0, start, started: (w) => started.push(w), halted: () => false, sleep: recordingSleep().sleep });
    expect(state.startedIndexes).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(state.maxInFlight).toBe(8);
    expect(started.sort((a, b) => a - b)).toEqual(state.startedIndexes);
  });

  it('without a stagger it never sleeps', async () => {
    const { pauses, sleep } = recordingSleep();
    await launchWorkers({ count: 40, concurrency: 32, staggerDelayMs: 0, start: countingStart().start, started: () => {}, halted: () => false, sleep });
    expect(pauses).toEqual([]);
  });

  it('with a stagger it pauses between launches as Dynamo does (2 s more after every 32)', async () => {
    const { pauses, sleep } = recordingSleep();
    await launchWorkers({ count: 70, concurrency: 32, staggerDelayMs: 100, start: countingStart().start, started: () => {}, halted: () => false, sleep });
    expect(pauses).toHaveLength(69);
    expect(pauses.filter((ms) => ms === 100 + STAGGER_GROUP_PAUSE_MS)).toHaveLength(2);
    expect(pauses[31]).toBe(2100); // before worker 32
    expect(pauses[63]).toBe(2100); // before worker 64
  });

  it('after a failure launches nothing more, lets the launches in flight finish, then rejects with it', async () => {
    const { state, start } = countingStart((i) => i === 5);
    const started: number[] = [];
    let inFlightAtRejection = -1;
    await expect(
      launchWorkers({ count: 100, concurrency: 4, staggerDelayMs: 0, start, started: (w) => started.push(w), halted: () => false, sleep: recordingSleep().sleep }).catch((err) => {
        inFlightAtRejection = state.inFlight;
        throw err;
      }),
    ).rejects.toThrow('worker 5 failed');
    expect(inFlightAtRejection).toBe(0);
    // At most the launches already in flight when worker 5 failed (3 others) came after it.
    expect(Math.max(...state.startedIndexes)).toBeLessThanOrEqual(8);
    expect(started.sort((a, b) => a - b)).toEqual(state.startedIndexes.filter((i) => i !== 5));
  });

  it('a failure cuts a stagger pause short', async () => {
    const { start } = countingStart((i) => i === 0);
    // A pause that only ends when aborted: the test would time out if the failure did not end it.
    const sleep = (_ms: number, signal: AbortSignal): Promise<void> =>
      new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve())));
    await expect(launchWorkers({ count: 3, concurrency: 2, staggerDelayMs: 60_000, start, started: () => {}, halted: () => false, sleep })).rejects.toThrow('worker 0 failed');
  });

  it('once halted (a stop, a lost registration) launches no more', async () => {
    const { state, start } = countingStart();
    const started: number[] = [];
    await launchWorkers({ count: 50, concurrency: 1, staggerDelayMs: 0, start, started: (w) => started.push(w), halted: () => started.length >= 3, sleep: recordingSleep().sleep });
    expect(state.startedIndexes).toEqual([0, 1, 2]);
  });
});

describe('--stagger-delay in the worker config', () => {
  const cfg = (raw: Record<string, string>) => parseWorkerConfig({ modelPath: 'm', ...raw }, [], {});

  it('defaults to no stagger (Dynamo’s newest default), whatever the number of workers', () => {
    expect(WORKER_DEFAULTS.staggerDelayS).toBe(0);
    expect(cfg({}).staggerDelayS).toBe(0);
    expect(cfg({ numWorkers: '1024' }).staggerDelayS).toBe(0);
  });

  it('takes seconds as given and resolves -1 by --num-workers', () => {
    expect(cfg({ staggerDelay: '0.25' }).staggerDelayS).toBe(0.25);
    expect(cfg({ staggerDelay: '0' }).staggerDelayS).toBe(0);
    expect(cfg({ staggerDelay: '-1', numWorkers: '8' }).staggerDelayS).toBe(0);
    expect(cfg({ staggerDelay: '-1', numWorkers: '100' }).staggerDelayS).toBe(0.1);
    expect(cfg({ staggerDelay: '-1', numWorkers: '1024' }).staggerDelayS).toBe(0.2);
  });

  it.each([
    ['-2', /must be ≥ 0 \(seconds between worker launches\) or -1 \(auto\), got '-2'/],
    ['-0.5', /or -1 \(auto\), got '-0.5'/],
    ['soon', /must be a number, got 'soon'/],
    ['4000', /must be ≤ 3600/],
  ])('--stagger-delay %s exits 2 with one line naming the flag', async (value, message) => {
    let err = '';
    const code = await main(['--model-path', TINY_MODEL, '--stagger-delay', value], { out: () => {}, err: (t) => (err += t), env: {}, isTty: false });
    expect(code).toBe(2);
    expect(err).toContain('--stagger-delay');
    expect(err).toMatch(message);
    expect(err.trim().split('\n')).toHaveLength(1);
  });
});
