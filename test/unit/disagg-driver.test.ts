// The fleet driver (several engines, one virtual clock) and the prefill → decode handoff on top of it.
import { describe, expect, it } from 'vitest';
import type { Engine } from '../../src/core/engine.js';
import type { KvTransferSettings } from '../../src/core/kv-transfer.js';
import { DisaggDriver } from '../../src/engine/disagg-driver.js';
import { FleetDriver, OfflineDriver } from '../../src/engine/offline-driver.js';
import { makeEngine, tokens } from '../helpers/core-fixtures.js';

const SMALL = { blockSize: 16, numGpuBlocks: 200, watermark: 0 };
/** 1 MB per token at 1 GB/s: one token costs one millisecond. */
const MS_PER_TOKEN: KvTransferSettings = { bandwidthGBps: 1, bytesPerToken: 1_000_000, timingMode: 'full_prompt' };

function req(key: number, promptLength: number, maxTokens: number) {
  return { key, promptLength, promptTokens: tokens(promptLength, key * 1000), maxTokens };
}

describe('FleetDriver', () => {
  it('a fleet of one gives the single-engine driver its timeline', async () => {
    const times = async (make: (e: Engine, cb: (key: number, at: number) => void) => { schedule: OfflineDriver['schedule']; run(): number }) => {
      const out: string[] = [];
      const driver = make(await makeEngine(SMALL), (key, at) => out.push(`${key}@${at}`));
      [req(0, 100, 5), req(1, 40, 3), req(2, 250, 2)].forEach((r, i) => driver.schedule(i * 3, r));
      out.push(`end ${driver.run()}`);
      return out;
    };
    const single = await times((e, cb) => new OfflineDriver(e, { onToken: (seq, _t, at) => cb(seq.key, at) }));
    const fleet = await times((e, cb) => new FleetDriver([e], { onToken: (seq, _t, at) => cb(seq.key, at) }));
    expect(fleet).toEqual(single);
  });

  it('arrivals go round-robin by default, or wherever the picker says', async () => {
    const workersOf = async (pick?: (r: { key: number }) => number) => {
      const seen: number[] = [];
      const fleet = new FleetDriver([await makeEngine(SMALL), await makeEngine(SMALL), await makeEngine(SMALL)], { onSubmit: (_k, _at, _r, worker) => seen.push(worker) }, pick);
      for (let k = 0; k < 5; k++) fleet.schedule(k, req(k, 16, 1));
      fleet.run();
      return seen;
    };
    expect(await workersOf()).toEqual([0, 1, 2, 0, 1]);
    expect(await workersOf((r) => (r.key % 2 === 0 ? 2 : 0))).toEqual([2, 0, 2, 0, 2]);
  });

  it('timed actions run at their time, before the passes that start then', async () => {
    const log: string[] = [];
    const fleet = new FleetDriver([await makeEngine(SMALL)], {
      onPass: (_rank, result) => log.push(`pass@${result.startMs}`),
    });
    fleet.at(5, (now) => log.push(`action@${now}`));
    fleet.schedule(5, req(0, 16, 1));
    fleet.at(5, (now) => log.push(`late action@${now}`));
    fleet.run();
    expect(log).toEqual(['action@5', 'late action@5', 'pass@5']);
  });
});

describe('DisaggDriver', () => {
  it('reservations wait for decode KV; prefill KV is held until the decode side activates', async () => {
    // Decode pool of 5 blocks: one 48-token prompt (3 blocks) fits, the second waits for it to finish.
    const prefill = await makeEngine({ ...SMALL, workerType: 'prefill' });
    const decode = await makeEngine({ ...SMALL, numGpuBlocks: 5, workerType: 'decode' });
    const transfers = new Map<number, { at: number; delay: number; prefillHeldBlocks: number }>();
    const finishes = new Map<number, number>();
    const driver = new DisaggDriver([prefill], [decode], MS_PER_TOKEN, {
      onTransfer: (seq, at, delay) => transfers.set(seq.key, { at, delay, prefillHeldBlocks: prefill.ranks[0].pool.activeBlocks }),
      onFinish: (seq, at) => finishes.set(seq.key, at),
    });
    driver.schedule(0, req(0, 48, 3));
    driver.schedule(0, req(1, 48, 3));
    driver.run();
    expect(transfers.get(0)!.delay).toBe(48);
    // Both prompts sit on the prefill worker when the first transfer starts; the second still does when its own starts.
    expect(transfers.get(0)!.prefillHeldBlocks).toBe(6);
    expect(transfers.get(1)!.prefillHeldBlocks).toBe(3);
    expect(transfers.get(1)!.at).toBe(finishes.get(0));
    for (const e of [prefill, decode]) expect(e.ranks[0].pool.activeBlocks).toBe(0);
  });

  it('a request with nothing to decode finishes at arrival without a pass', async () => {
    const prefill = await makeEngine({ ...SMALL, workerType: 'prefill' });
    const decode = await makeEngine({ ...SMALL, workerType: 'decode' });
    const finished: Array<[number, number, number]> = [];
    const driver = new DisaggDriver([prefill], [decode], MS_PER_TOKEN, { onFinish: (seq, at) => finished.push([seq.key, at, seq.generated]) });
    driver.schedule(7, req(0, 32, 0));
    expect(driver.run()).toBe(7);
    expect(finished).toEqual([[0, 7, 0]]);
    expect(driver.passes).toBe(0);
  });
});
