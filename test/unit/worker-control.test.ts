// WorkerControl over two workers (real engines, admission queues and fault plans): the settings it reads and patches, atomically, and the stats it sums and resets.
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { Engine, EngineSetup } from '../../src/core/engine.js';
import { EMPTY_FAULT_PLAN, FAULT_KINDS, faultPlanJson, parseFaultPlan, type FaultAction } from '../../src/faults/fault-plan.js';
import { WorkerControl, type ControlledWorker } from '../../src/faults/worker-control.js';
import { WorkerFaults } from '../../src/faults/worker-faults.js';
import { ControlError } from '../../src/metrics/control-api.js';
import type { RequestCounts } from '../../src/serving/request-server.js';
import { makeEngine, tokens } from '../helpers/core-fixtures.js';

const silent = pino({ level: 'silent' });
const zeroCounts = (): RequestCounts => ({ received: 0, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 });

const PLAN = { seed: 7, rules: [{ match: { every_nth: 3 }, action: { kind: 'cut', after_tokens: 5 } }] };

type Worker = ControlledWorker & { faults: WorkerFaults };

const made: Worker[] = [];
afterEach(() => {
  for (const w of made.splice(0)) {
    w.faults.stop();
    for (const q of w.queues) q.clear();
  }
});

async function worker(setup: Partial<EngineSetup>, plan: unknown = {}): Promise<Worker> {
  const engine = await makeEngine({ blockSize: 16, numGpuBlocks: 100, maxNumSeqs: 4, ...setup });
  const counts = zeroCounts();
  const w: Worker = {
    engine,
    queues: engine.ranks.map(() => new PQueue({ concurrency: engine.setup.maxNumSeqs })),
    faults: new WorkerFaults({ plan: parseFaultPlan(plan), log: silent, exit: () => {}, withdraw: async () => {}, restore: async () => {} }),
    counts,
    resetCounts: () => Object.assign(counts, zeroCounts()),
  };
  made.push(w);
  return w;
}

/** A control over worker A (two DP ranks, the plan PLAN) and worker B (one rank, no plan). */
async function twoWorkers(): Promise<{ control: WorkerControl; a: Worker; b: Worker; logs: string[] }> {
  const logs: string[] = [];
  const control = new WorkerControl((line) => logs.push(line));
  const a = await worker({ dataParallelSize: 2 }, PLAN);
  const b = await worker({});
  control.add(a);
  control.add(b);
  return { control, a, b, logs };
}

const engines = (...ws: Worker[]): Engine[] => ws.map((w) => w.engine);

/** The ControlError `fn` throws. */
function controlError(fn: () => void): ControlError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ControlError);
    return err as ControlError;
  }
  throw new Error('expected a ControlError');
}

describe('WorkerControl.config', () => {
  it('is empty without workers', () => {
    expect(new WorkerControl(() => {}).config()).toEqual({});
  });

  it('reads the first worker’s settings and plan, with its defaults spelled out', async () => {
    const { control } = await twoWorkers();
    expect(control.config()).toEqual({
      speedup_ratio: 1,
      decode_speedup_ratio: 1,
      latency_jitter: 0,
      max_num_seqs: 4,
      faults: { seed: 7, rules: [{ match: { every_nth: 3 }, action: { kind: 'cut', after_tokens: 5 } }] },
    });
  });

  it('stops reading a worker once it is removed', async () => {
    const control = new WorkerControl(() => {});
    const a = await worker({ maxNumSeqs: 2 });
    const b = await worker({ maxNumSeqs: 9 });
    const removeA = control.add(a);
    control.add(b);
    removeA();
    removeA(); // twice is harmless
    expect(control.config().max_num_seqs).toBe(9);
    expect(control.stats().workers).toBe(1);
  });
});

describe('WorkerControl.patchConfig', () => {
  it('speedup_ratio: 0 means no delays (Infinity) on every engine and reads back as 0', async () => {
    const { control, a, b } = await twoWorkers();
    control.patchConfig({ speedup_ratio: 0 });
    for (const e of engines(a, b)) expect(e.setup.speedupRatio).toBe(Infinity);
    expect(control.config().speedup_ratio).toBe(0);
    control.patchConfig({ speedup_ratio: 2.5 });
    for (const e of engines(a, b)) expect(e.setup.speedupRatio).toBe(2.5);
    expect(control.config().speedup_ratio).toBe(2.5);
  });

  it('decode_speedup_ratio and latency_jitter reach every engine and every scheduler (from the next pass)', async () => {
    const { control, a, b } = await twoWorkers();
    control.patchConfig({ decode_speedup_ratio: 3, latency_jitter: 0.25 });
    for (const e of engines(a, b)) {
      expect(e.setup).toMatchObject({ decodeSpeedupRatio: 3, latencyJitter: 0.25 });
      for (const rank of e.ranks) expect(rank.config).toMatchObject({ decodeSpeedupRatio: 3, latencyJitter: 0.25 });
    }
    expect(control.config()).toMatchObject({ decode_speedup_ratio: 3, latency_jitter: 0.25 });
  });

  it('max_num_seqs moves the batch limit and every admission queue together', async () => {
    const { control, a, b } = await twoWorkers();
    control.patchConfig({ max_num_seqs: 7 });
    for (const w of [a, b]) {
      expect(w.engine.setup.maxNumSeqs).toBe(7);
      for (const rank of w.engine.ranks) expect(rank.config.maxNumSeqs).toBe(7);
      expect(w.queues.map((q) => q.concurrency)).toEqual(w.queues.map(() => 7));
    }
    expect(a.queues).toHaveLength(2);
    expect(control.config().max_num_seqs).toBe(7);
  });

  it('faults: every worker gets the plan, its request indexes counting from 0', async () => {
    const { control, a, b } = await twoWorkers();
    const facts = { dpRank: 0, promptTokens: 10, sinceStartMs: 0 };
    a.faults.next(facts);
    const plan = { seed: 3, rules: [{ match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'patched' } }] };
    control.patchConfig({ faults: plan });
    for (const w of [a, b]) {
      expect(w.faults.plan).toEqual(parseFaultPlan(plan));
      expect(w.faults.next(facts)).toEqual({ rule: 0, action: { kind: 'refuse', message: 'patched' } });
      expect(w.faults.next(facts)).toBeNull();
    }
    expect(control.config().faults).toEqual(plan);
    control.patchConfig({ faults: {} });
    expect(control.config().faults).toEqual(faultPlanJson(EMPTY_FAULT_PLAN));
  });

  it('refuses an invalid plan with a ControlError naming the field under faults.', async () => {
    const { control } = await twoWorkers();
    const cases: Array<[unknown, string]> = [
      [{ rules: [{ action: { kind: 'cut', after_tokens: -1 } }] }, 'faults.rules[0].action.after_tokens'],
      [{ rules: [{ action: { kind: 'explode' } }] }, 'faults.rules[0].action.kind'],
      [{ rules: [{ match: { sometimes: true }, action: { kind: 'no_stream' } }] }, 'faults.rules[0].match.sometimes'],
      [{ seed: 1, rulez: [] }, 'faults.rulez'],
      [{ rules: 'all' }, 'faults.rules'],
      [{ 'odd-key': 1 }, 'faults["odd-key"]'],
    ];
    for (const [plan, field] of cases) {
      const err = controlError(() => control.patchConfig({ faults: plan }));
      expect(err.field).toBe(field);
      expect(err.message.startsWith(`${field}: `)).toBe(true);
    }
  });

  it('refuses a plan that is not an object, naming faults itself', async () => {
    const { control } = await twoWorkers();
    for (const plan of ['nope', null, [], 3]) {
      const err = controlError(() => control.patchConfig({ faults: plan }));
      expect(err.field).toBe('faults');
      expect(err.message).toMatch(/^faults: must be a fault plan/);
    }
  });

  it('refuses bad values, naming the key', async () => {
    const { control } = await twoWorkers();
    const cases: Array<[string, unknown]> = [
      ['speedup_ratio', -1],
      ['speedup_ratio', '2'],
      ['speedup_ratio', null],
      ['decode_speedup_ratio', 0],
      ['latency_jitter', 1.5],
      ['latency_jitter', -0.1],
      ['max_num_seqs', 0],
      ['max_num_seqs', 2.5],
      ['max_num_seqs', (1 << 20) + 1],
    ];
    for (const [key, value] of cases) {
      const err = controlError(() => control.patchConfig({ [key]: value }));
      expect(err.field).toBe(key);
      expect(err.message).toContain(key);
    }
  });

  it('is atomic: one bad key leaves every setting, queue and plan as it was', async () => {
    const { control, a, b } = await twoWorkers();
    const before = control.config();
    const plans = [a.faults.plan, b.faults.plan];
    const good = { speedup_ratio: 3, decode_speedup_ratio: 2, latency_jitter: 0.1, max_num_seqs: 9, faults: { rules: [{ action: { kind: 'refuse' } }] } };
    const bad: Array<[string, unknown]> = [
      ['speedup_ratio', -1],
      ['decode_speedup_ratio', 0],
      ['latency_jitter', 2],
      ['max_num_seqs', 0],
      ['faults', { rules: [{ action: { kind: 'stall' } }] }],
    ];
    for (const [key, value] of bad) {
      expect(controlError(() => control.patchConfig({ ...good, [key]: value })).field.startsWith(key)).toBe(true);
      expect(control.config()).toEqual(before);
      for (const w of [a, b]) {
        expect(w.engine.setup).toMatchObject({ speedupRatio: 1, decodeSpeedupRatio: 1, maxNumSeqs: 4 });
        expect(w.engine.setup.latencyJitter ?? 0).toBe(0);
        expect(w.queues.every((q) => q.concurrency === 4)).toBe(true);
      }
      expect([a.faults.plan, b.faults.plan]).toEqual(plans);
      expect(a.faults.plan).toBe(plans[0]);
    }
    control.patchConfig(good);
    expect(control.config()).toMatchObject({ speedup_ratio: 3, decode_speedup_ratio: 2, latency_jitter: 0.1, max_num_seqs: 9 });
  });
});

describe('WorkerControl.stats', () => {
  const cut: FaultAction = { kind: 'cut', afterTokens: 1 };
  const stall: FaultAction = { kind: 'stall', beforeToken: 1, ms: 5 };

  it('sums both workers: requests, faults by kind, running, waiting (engine and admission queue) and KV blocks', async () => {
    const { control, a, b } = await twoWorkers();
    Object.assign(a.counts, { received: 5, completed: 2, refused: 1, failed: 1, cancelled: 0, cut: 1 });
    Object.assign(b.counts, { received: 3, completed: 1, refused: 0, failed: 0, cancelled: 1, cut: 1 });
    a.faults.fired({ rule: 0, action: cut }, 'r1');
    a.faults.fired({ rule: 0, action: cut }, 'r2');
    b.faults.fired({ rule: 0, action: cut }, 'r3');
    b.faults.fired({ rule: 1, action: stall }, 'r4');
    // Worker A: one request running on each rank (40-token prompts: 3 blocks each at the first pass).
    for (const rank of [0, 1]) {
      expect(a.engine.submit({ key: rank, promptLength: 40, promptTokens: tokens(40, 100 * rank), maxTokens: 10, dpRank: rank }).ok).toBe(true);
      a.engine.ranks[rank].step(0);
    }
    // Worker B: one waiting in the engine (not stepped), two waiting for an admission slot.
    expect(b.engine.submit({ key: 9, promptLength: 20, promptTokens: tokens(20), maxTokens: 10 }).ok).toBe(true);
    b.queues[0].pause();
    void b.queues[0].add(() => {});
    void b.queues[0].add(() => {});
    const active = [...a.engine.ranks, ...b.engine.ranks].reduce((n, r) => n + r.pool.activeBlocks, 0);
    expect(active).toBe(6);
    expect(control.stats()).toEqual({
      workers: 2,
      requests: { received: 8, completed: 3, refused: 1, failed: 1, cancelled: 1, cut: 2 },
      faults_fired: { ...Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])), cut: 3, stall: 1 },
      running: 2,
      waiting: 3,
      kv_active_blocks: 6,
      kv_total_blocks: 300,
      kv_usage: 6 / 300,
    });
  });

  it('resetStats zeroes every worker’s request and fault counts (not the gauges) and logs it', async () => {
    const { control, a, b, logs } = await twoWorkers();
    Object.assign(a.counts, { received: 5, completed: 4, cut: 1 });
    Object.assign(b.counts, { received: 2, refused: 2 });
    a.faults.fired({ rule: 0, action: cut }, 'r1');
    b.faults.fired({ rule: 0, action: stall }, 'r2');
    expect(b.engine.submit({ key: 1, promptLength: 20, promptTokens: tokens(20), maxTokens: 10 }).ok).toBe(true);
    control.resetStats();
    expect(a.counts).toEqual(zeroCounts());
    expect(b.counts).toEqual(zeroCounts());
    const stats = control.stats();
    expect(stats.requests).toEqual(zeroCounts());
    expect(stats.faults_fired).toEqual(Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])));
    expect(stats.waiting).toBe(1);
    expect(logs).toEqual(['control API: stats reset']);
  });

  it('is all zeros without workers', () => {
    expect(new WorkerControl(() => {}).stats()).toEqual({
      workers: 0,
      requests: zeroCounts(),
      faults_fired: {},
      running: 0,
      waiting: 0,
      kv_active_blocks: 0,
      kv_total_blocks: 0,
      kv_usage: 0,
    });
  });
});
