// The live engine loop on a virtual clock: same timeline as the offline driver, hooks, cancellation, stop.
import { afterEach, describe, expect, it } from 'vitest';
import { VirtualClock } from '../../src/clock/clock.js';
import { Engine } from '../../src/core/engine.js';
import type { PassResult } from '../../src/core/scheduler.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { OfflineDriver } from '../../src/engine/offline-driver.js';
import { engineSetup, getHasher, tokens } from '../helpers/core-fixtures.js';

const MODEL = { vocabSize: 1000, contextLength: 0 };
const loops: EngineLoop[] = [];
afterEach(async () => {
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

async function engine(overrides = {}) {
  return new Engine(engineSetup({ blockSize: 16, numGpuBlocks: 200, maxNumSeqs: 4, maxNumBatchedTokens: 64 }, overrides), createPolynomialTimingModel(), await getHasher(), MODEL);
}

interface Emission {
  token: number | null;
  at: number;
  last: boolean;
}

function collect(): { out: Emission[]; done: Promise<void>; sink: { emit(t: number | null, at: number, last: boolean): void } } {
  const out: Emission[] = [];
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  return {
    out,
    done,
    sink: {
      emit(token, at, last) {
        out.push({ token, at, last });
        if (last) resolve();
      },
    },
  };
}

describe('EngineLoop', () => {
  it('gives every token the same virtual time as the offline driver (one loop, two clocks)', async () => {
    const requests = [
      { promptLength: 100, maxTokens: 7 },
      { promptLength: 40, maxTokens: 12 },
      { promptLength: 250, maxTokens: 3 },
    ];
    const offlineEngine = await engine();
    const offline = new Map<number, number[]>();
    const driver = new OfflineDriver(offlineEngine, { onToken: (seq, _t, at) => offline.set(seq.key, [...(offline.get(seq.key) ?? []), at]) });
    requests.forEach((r, key) => driver.schedule(0, { key, promptLength: r.promptLength, promptTokens: tokens(r.promptLength, key * 1000), maxTokens: r.maxTokens }));
    driver.run();

    const live = new EngineLoop(await engine(), new VirtualClock());
    loops.push(live);
    const runs = requests.map(() => collect());
    // All three are handed over before the loop's first pass, as the driver's arrivals at 0 are.
    requests.forEach((r, key) => live.submit({ promptLength: r.promptLength, promptTokens: tokens(r.promptLength, key * 1000), maxTokens: r.maxTokens }, runs[key].sink));
    live.start();
    await Promise.all(runs.map((r) => r.done));
    runs.forEach((r, key) => {
      expect(r.out.map((e) => e.at)).toEqual(offline.get(key));
      expect(r.out.filter((e) => e.last)).toHaveLength(1);
    });
    expect(live.activeRequests).toBe(0);
  });

  it('calls the pass hooks around each pass, with KV events visible at its start', async () => {
    const seen: string[] = [];
    const loop = new EngineLoop(await engine({ enablePrefixCaching: true }), new VirtualClock(), {
      onPassStart: (rank, r: PassResult) => seen.push(`start ${rank} ${r.kvEvents.length > 0 ? 'events' : '-'}`),
      onPassEnd: (rank) => seen.push(`end ${rank}`),
    });
    loops.push(loop);
    loop.start();
    const run = collect();
    loop.submit({ promptLength: 32, promptTokens: tokens(32), maxTokens: 2 }, run.sink);
    await run.done;
    // Prefill (stores two full blocks) plus one decode pass; each start is followed by its end.
    expect(seen.slice(0, 4)).toEqual(['start 0 events', 'end 0', 'start 0 -', 'end 0']);
  });

  it('answers a request that needs no tokens at once, and stops delivering to a cancelled one', async () => {
    const e = await engine();
    const loop = new EngineLoop(e, new VirtualClock());
    loops.push(loop);
    loop.start();
    const none = collect();
    loop.submit({ promptLength: 8, promptTokens: tokens(8), maxTokens: 0 }, none.sink);
    await none.done;
    expect(none.out).toEqual([{ token: null, at: 0, last: true }]);

    const run = collect();
    const submitted = loop.submit({ promptLength: 64, promptTokens: tokens(64), maxTokens: 1000 }, run.sink);
    if (!submitted.ok) throw new Error(submitted.reason);
    await new Promise<void>((resolve) => {
      const wait = () => (run.out.length >= 3 ? resolve() : setImmediate(wait));
      wait();
    });
    expect(loop.cancel(submitted.seq, submitted.rank)).toBe(true);
    const count = run.out.length;
    expect(e.ranks[0].snapshot()).toMatchObject({ running: 0, activeBlocks: 0 });
    // Nothing more arrives: the loop has gone idle.
    await new Promise((resolve) => setImmediate(resolve));
    expect(run.out.length).toBe(count);
    expect(loop.activeRequests).toBe(0);
  });

  it('runs data-parallel ranks side by side and stops cleanly', async () => {
    const e = await engine({ dataParallelSize: 2 });
    const loop = new EngineLoop(e, new VirtualClock());
    loop.start();
    const a = collect();
    const b = collect();
    loop.submit({ promptLength: 16, promptTokens: tokens(16), maxTokens: 5, dpRank: 0 }, a.sink);
    loop.submit({ promptLength: 16, promptTokens: tokens(16), maxTokens: 5, dpRank: 1 }, b.sink);
    await Promise.all([a.done, b.done]);
    // Same work on two independent ranks: the same timeline.
    expect(a.out.map((x) => x.at)).toEqual(b.out.map((x) => x.at));
    await loop.stop();
  });
});
