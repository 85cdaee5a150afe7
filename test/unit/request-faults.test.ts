// Fault plans on the request path, on a discrete-event virtual clock: every action's effect on the stream, the KV, the counts and the worker.
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { preprocessedRequestJson1x, requestControlJson, type GenerateRequest } from '../../src/client/dynamo-client.js';
import { Engine, type EngineSetup } from '../../src/core/engine.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import type { KvEvent } from '../../src/core/types.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { FAULT_KINDS, parseFaultPlan, type FaultKind } from '../../src/faults/fault-plan.js';
import { WorkerFaults } from '../../src/faults/worker-faults.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { RequestServer } from '../../src/serving/request-server.js';
import { CountingMetrics } from '../helpers/counting-metrics.js';
import { engineSetup, tokens } from '../helpers/core-fixtures.js';
import { EventClock } from '../helpers/event-clock.js';
import { MemorySink, type SinkEvent } from '../helpers/memory-sink.js';

const xxh = await createXxh3();
const silent = pino({ level: 'silent' });

interface Harness {
  server: RequestServer;
  engine: Engine;
  clock: EventClock;
  metrics: CountingMetrics;
  /** Absent when the harness runs without a plan. */
  faults: WorkerFaults | null;
  sinks: MemorySink[];
  /** openSink calls, by request id. */
  opened: string[];
  exits: number[];
  withdrawals: number;
  restores: number;
  /** Kinds as the faults counter saw them. */
  counted: FaultKind[];
  /** KV events as the engine made them, and as a publisher consulting the plan would send them. */
  made: KvEvent[];
  published: KvEvent[];
  delayed: Array<{ ms: number; events: KvEvent[] }>;
  skipped: number[];
}

const loops: EngineLoop[] = [];
const workerFaults: WorkerFaults[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const f of workerFaults.splice(0)) f.stop();
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

function harness(plan: unknown | null, setup: Partial<EngineSetup> = {}): Harness {
  const engine = new Engine(engineSetup({ blockSize: 16, numGpuBlocks: 1000 }, setup), createPolynomialTimingModel(), xxh, { vocabSize: 1000, contextLength: 4096 });
  const clock = new EventClock();
  const h = {
    engine,
    clock,
    metrics: new CountingMetrics(),
    sinks: [],
    opened: [],
    exits: [],
    withdrawals: 0,
    restores: 0,
    counted: [],
    made: [],
    published: [],
    delayed: [],
    skipped: [],
  } as unknown as Harness;
  h.faults =
    plan === null
      ? null
      : new WorkerFaults({
          plan: parseFaultPlan(plan),
          log: silent,
          exit: (code) => h.exits.push(code),
          withdraw: async () => void h.withdrawals++,
          restore: async () => void h.restores++,
          counted: (kind) => h.counted.push(kind),
        });
  if (h.faults) workerFaults.push(h.faults);
  // As the worker does when a plan may need it: stored events name their sequence.
  for (const rank of engine.ranks) rank.pool.tagEventOwners = true;
  const loop = new EngineLoop(engine, clock, {
    // What an event publisher does with a pass's KV events (WorkerEvents.kvEventsOf).
    onPassStart: (rank, result) => {
      h.made.push(...result.kvEvents);
      const kv = h.faults?.kv;
      if (!kv?.active) return void h.published.push(...result.kvEvents);
      const { now, skip } = kv.apply(rank, result.kvEvents, (ms, events) => h.delayed.push({ ms, events }));
      h.published.push(...now);
      h.skipped.push(skip);
    },
  });
  loop.start();
  loops.push(loop);
  h.server = new RequestServer({
    faults: h.faults ?? undefined,
    sleep: clock.sleep,
    loop,
    queues: engine.ranks.map(() => new PQueue({ concurrency: engine.setup.maxNumSeqs })),
    xxh,
    metrics: h.metrics,
    log: silent,
    modelEosTokenIds: [2],
    openSink: async (info) => {
      h.opened.push(info.context);
      const s = new MemorySink(info, () => clock.now());
      h.sinks.push(s);
      return s;
    },
    now: () => clock.now(),
  });
  return h;
}

/** A plan of one rule. */
const onEvery = (action: Record<string, unknown>, match: Record<string, unknown> = {}) => ({ seed: 1, rules: [{ match, action }] });

let nextId = 0;
function payload(req: GenerateRequest, body?: string, id = `req-${nextId++}`): Uint8Array {
  return encodeTwoPartText(requestControlJson(id, 'memory:1', `stream-${id}`, 'json'), body ?? preprocessedRequestJson1x(req), xxh);
}

/** Waits (on I/O turns, not time) until `cond` holds. */
async function until(cond: () => boolean, what = 'condition'): Promise<void> {
  for (let i = 0; i < 100_000; i++) {
    if (cond()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

type Item = Extract<SinkEvent, { kind: 'item' }>;
const items = (s: MemorySink): Item[] => s.events.filter((e): e is Item => e.kind === 'item');
/** The LLMEngineOutput inside an item. */
const output = (e: Item) => (e.body as { data: { data: Record<string, unknown> } }).data.data;
const itemTimes = (s: MemorySink): number[] => items(s).map((e) => e.at);

/** Every kind at 0, with `fired` set. */
function firedOnly(fired: Partial<Record<FaultKind, number>>): Record<string, number> {
  return Object.fromEntries(FAULT_KINDS.map((k) => [k, fired[k] ?? 0]));
}

/** No KV blocks held, nothing running or waiting, no request in flight. */
function expectIdle(h: Harness): void {
  expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
  expect(h.server.inflightCount).toBe(0);
  expect([...h.server.admissionQueue(0)]).toEqual([]);
}

const PROMPT = tokens(40, 10);

describe('stream faults', () => {
  it('refuse: an error in the prologue with the plan’s message; the engine never sees the request', async () => {
    const h = harness(onEvery({ kind: 'refuse', message: 'injected refusal' }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 8 }));
    expect(h.sinks[0].shape).toEqual(['prologue error', 'end']);
    expect(h.sinks[0].prologueError).toBe('injected refusal');
    expect(h.server.counts).toEqual({ received: 1, completed: 0, refused: 1, failed: 0, cancelled: 0, cut: 0 });
    expect(h.metrics).toMatchObject({ requests: 1, ended: 1, errors: ['generate'] });
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ refuse: 1 }));
    expect(h.made).toEqual([]);
    expectIdle(h);
  });

  it('error after_tokens 3: three tokens, then an error item carrying the message, then complete_final; the KV is freed', async () => {
    const h = harness(onEvery({ kind: 'error', after_tokens: 3, message: 'injected error' }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 10 }));
    const [sink] = h.sinks;
    expect(sink.shape).toEqual(['prologue ok', '4 items', 'finish']);
    expect(sink.tokens).toHaveLength(3);
    const fourth = output(items(sink)[3]);
    expect(fourth.token_ids).toEqual([]);
    expect(JSON.stringify(fourth.finish_reason)).toContain('injected error');
    expect(h.server.counts).toEqual({ received: 1, completed: 0, refused: 0, failed: 1, cancelled: 0, cut: 0 });
    expect(h.metrics.errors).toEqual(['generate']);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ error: 1 }));
    expectIdle(h);
  });

  it('cut after_tokens 2: two tokens, then the connection closes without complete_final; the KV is freed', async () => {
    const h = harness(onEvery({ kind: 'cut', after_tokens: 2 }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 10 }));
    expect(h.sinks[0].shape).toEqual(['prologue ok', '2 items', 'cut']);
    expect(h.server.counts).toEqual({ received: 1, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 1 });
    expect(h.metrics).toMatchObject({ ended: 1, cancellations: 0, errors: [] });
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ cut: 1 }));
    expectIdle(h);
  });

  /** Request 0 gets an error item and request 1 is cut, both before their first token. */
  async function faultedBeforeFirstToken(): Promise<Harness> {
    const h = harness({
      rules: [
        { match: { request_index: [0, 0] }, action: { kind: 'error', after_tokens: 0, message: 'at once' } },
        { match: { request_index: [1, 1] }, action: { kind: 'cut' } },
      ],
    });
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 10 }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 10 }));
    return h;
  }

  it('error and cut with after_tokens 0 end the stream before the first token; the engine never sees the request', async () => {
    const h = await faultedBeforeFirstToken();
    expect(h.sinks.map((s) => s.shape)).toEqual([
      ['prologue ok', '1 items', 'finish'],
      ['prologue ok', 'cut'],
    ]);
    expect(h.made).toEqual([]);
    expect(h.server.counts).toMatchObject({ failed: 1, cut: 1 });
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
    expect(h.server.inflightCount).toBe(0);
  });

  // A request ended before admission must leave its rank's waiting set (the forward-pass metrics'
  // queued prefill work), whichever way it ends.
  it('error and cut with after_tokens 0 leave nothing in the admission queue', async () => {
    const h = await faultedBeforeFirstToken();
    expect([...h.server.admissionQueue(0)]).toEqual([]);
  });

  it('a request that ends before after_tokens is never hit (and the fault is not counted)', async () => {
    const h = harness(onEvery({ kind: 'cut', after_tokens: 5 }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 5 }));
    expect(h.sinks[0].shape).toEqual(['prologue ok', '5 items', 'finish']);
    expect(h.server.counts).toMatchObject({ completed: 1, cut: 0 });
    expect(h.faults!.firedByKind()).toEqual(firedOnly({}));
  });

  it('crash after_tokens 1: the process exits with exit_code once the first token is out, after the log line (setImmediate)', async () => {
    const h = harness(onEvery({ kind: 'crash', after_tokens: 1, exit_code: 7 }));
    const done = h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 6 }));
    await until(() => h.sinks.length === 1);
    let exitsRightAfterToken1: number[] | null = null;
    // The fault fires synchronously after the first item; the exit waits for the next I/O turn.
    h.sinks[0].onItem((n) => n === 1 && queueMicrotask(() => (exitsRightAfterToken1 = [...h.exits])));
    await until(() => h.exits.length > 0, 'the exit');
    expect(exitsRightAfterToken1).toEqual([]);
    expect(h.exits).toEqual([7]);
    await done; // the exit is a fake here, so the stream goes on to its end
    expect(h.exits).toEqual([7]);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ crash: 1 }));
    expect(h.counted).toEqual(['crash']);
  });

  it('WorkerFaults.crash calls exit on the next I/O turn, and not at all once stopped', async () => {
    const h = harness(onEvery({ kind: 'crash' }));
    h.faults!.crash(3);
    expect(h.exits).toEqual([]);
    await turn();
    expect(h.exits).toEqual([3]);
    h.faults!.crash(4);
    h.faults!.stop();
    await turn();
    expect(h.exits).toEqual([3]);
  });

  it('no_stream: the request is taken but its response stream is never opened; nothing stays in flight', async () => {
    const h = harness(onEvery({ kind: 'no_stream' }, { request_index: [0, 0] }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    expect(h.opened).toEqual([]);
    expect(h.server.inflightCount).toBe(0);
    expect(h.metrics).toMatchObject({ requests: 1, ended: 1, errors: [] });
    expect(h.server.counts).toEqual({ received: 1, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 });
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ no_stream: 1 }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    expect(h.opened).toHaveLength(1);
    expect(h.sinks[0].shape).toEqual(['prologue ok', '4 items', 'finish']);
    expectIdle(h);
  });
});

describe('delivery faults (on the engine’s own timeline)', () => {
  const MAX_TOKENS = 8;

  async function deliveryTimes(plan: unknown | null): Promise<{ times: number[]; h: Harness }> {
    const h = harness(plan);
    expect(h.clock.now()).toBe(0); // the arrival
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: MAX_TOKENS }));
    expect(h.sinks[0].shape).toEqual(['prologue ok', `${MAX_TOKENS} items`, 'finish']);
    expectIdle(h);
    return { times: itemTimes(h.sinks[0]), h };
  }

  it('stall before_token 2 ms 500: token 1 on time, token 2 and every later one exactly 500 ms late', async () => {
    const { times: plain } = await deliveryTimes(null);
    const { times: stalled, h } = await deliveryTimes(onEvery({ kind: 'stall', before_token: 2, ms: 500 }));
    expect(stalled[0]).toBe(plain[0]);
    for (let i = 1; i < MAX_TOKENS; i++) expect(stalled[i]).toBe(plain[i] + 500);
    expect(h.sinks[0].events.at(-1)!.at).toBe(plain.at(-1)! + 500);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ stall: 1 }));
    expect(h.server.counts).toMatchObject({ received: 1, completed: 1 });
  });

  it('slow factor 3: every token reaches the frontend 3× as long after the arrival as without the fault', async () => {
    const { times: plain } = await deliveryTimes(null);
    const { times: slowed, h } = await deliveryTimes(onEvery({ kind: 'slow', factor: 3 }));
    expect(slowed).toEqual(plain.map((t) => 3 * t));
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ slow: 1 }));
  });
});

describe('worker faults', () => {
  it('deregister ms: withdraws the records at once and restores them ms later, while the request is served', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness(onEvery({ kind: 'deregister', ms: 1000 }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    expect(h.sinks[0].shape).toEqual(['prologue ok', '4 items', 'finish']);
    expect([h.withdrawals, h.restores]).toEqual([1, 0]);
    vi.advanceTimersByTime(999);
    expect(h.restores).toBe(0);
    vi.advanceTimersByTime(1);
    expect([h.withdrawals, h.restores]).toEqual([1, 1]);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ deregister: 1 }));
  });

  it('deregister again while withdrawn: no second withdrawal, the timer starts over', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness(null);
    const f = new WorkerFaults({ plan: parseFaultPlan({}), log: silent, exit: () => {}, withdraw: async () => void h.withdrawals++, restore: async () => void h.restores++ });
    workerFaults.push(f);
    f.deregister(1000);
    vi.advanceTimersByTime(600);
    f.deregister(1000);
    vi.advanceTimersByTime(999);
    expect([h.withdrawals, h.restores]).toEqual([1, 0]);
    vi.advanceTimersByTime(1);
    expect([h.withdrawals, h.restores]).toEqual([1, 1]);
  });

  it('deregister without ms: withdrawn until the plan changes', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness(onEvery({ kind: 'deregister' }));
    h.faults!.deregister(null);
    vi.advanceTimersByTime(3_600_000);
    expect([h.withdrawals, h.restores]).toEqual([1, 0]);
    h.faults!.setPlan(parseFaultPlan({}));
    expect([h.withdrawals, h.restores]).toEqual([1, 1]);
  });

  it('load_metrics freeze: the last value before the fault is reported until ms pass, then reports resume at once', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness(onEvery({ kind: 'load_metrics', mode: 'freeze', ms: 1000 }));
    const load = h.faults!.load;
    const resumed: number[] = [];
    load.onResume(() => resumed.push(resumed.length));
    expect(load.pass(0, 3)).toBe(3);
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    expect(load.pass(0, 9)).toBe(3);
    expect(load.pass(1, 4)).toBeUndefined(); // no value before the fault: nothing to repeat
    vi.advanceTimersByTime(999);
    expect(load.pass(0, 9)).toBe(3);
    expect(resumed).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(resumed).toHaveLength(1);
    expect(load.pass(0, 9)).toBe(9);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ load_metrics: 1 }));
  });

  it('load_metrics stop: nothing is reported until ms pass; a release with nothing held calls no listener', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness(onEvery({ kind: 'load_metrics', mode: 'stop', ms: 500 }));
    const load = h.faults!.load;
    let resumed = 0;
    load.onResume(() => resumed++);
    load.release();
    expect(resumed).toBe(0);
    expect(load.pass(0, 3)).toBe(3);
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    expect(load.pass(0, 5)).toBeUndefined();
    vi.advanceTimersByTime(500);
    expect(resumed).toBe(1);
    expect(load.pass(0, 5)).toBe(5);
  });
});

describe('kv_events faults', () => {
  /** Runs a faulted request (index 0) beside an unfaulted one (index 1) with another prompt; returns the faulted one's sequence key. */
  async function faultedAndPlain(action: Record<string, unknown>): Promise<{ h: Harness; key: number; other: number }> {
    const h = harness(onEvery(action, { request_index: [0, 0] }));
    const keys: number[] = [];
    const register = h.faults!.kvEvents.bind(h.faults);
    h.faults!.kvEvents = (rank, seqKey, mode, ms) => (keys.push(seqKey), register(rank, seqKey, mode, ms));
    await Promise.all([h.server.handle(payload({ tokenIds: tokens(40, 100), maxTokens: 4 })), h.server.handle(payload({ tokenIds: tokens(40, 500), maxTokens: 4 }))]);
    expect(keys).toHaveLength(1);
    const owners = new Set(h.made.map((e) => e.owner));
    const other = [...owners].find((o) => o !== undefined && o !== keys[0])!;
    expect(other).toBeTypeOf('number');
    expect(h.faults!.kv.active).toBe(false); // released when the request ended
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ kv_events: 1 }));
    expectIdle(h);
    return { h, key: keys[0], other };
  }

  const stored = (events: KvEvent[], owner: number) => events.filter((e) => e.data.kind === 'stored' && e.owner === owner);

  it('stored events name the sequence whose blocks they report', async () => {
    const { h, key, other } = await faultedAndPlain({ kind: 'kv_events', mode: 'drop' });
    // 40-token prompts in 16-token blocks: two full blocks each, stored at the prefill.
    expect(stored(h.made, key).flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks : []))).toHaveLength(2);
    expect(stored(h.made, other)).not.toHaveLength(0);
    expect(h.made.filter((e) => e.data.kind === 'stored').every((e) => e.owner === key || e.owner === other)).toBe(true);
  });

  it('drop leaves out the faulted request’s events only', async () => {
    const { h, key, other } = await faultedAndPlain({ kind: 'kv_events', mode: 'drop' });
    expect(stored(h.published, key)).toEqual([]);
    expect(stored(h.published, other)).toEqual(stored(h.made, other));
    expect(h.delayed).toEqual([]);
  });

  it('duplicate sends each of the faulted request’s events twice, in place', async () => {
    const { h, key, other } = await faultedAndPlain({ kind: 'kv_events', mode: 'duplicate' });
    const made = stored(h.made, key);
    expect(made.length).toBeGreaterThan(0);
    expect(stored(h.published, key)).toEqual(made.flatMap((e) => [e, e]));
    expect(stored(h.published, other)).toEqual(stored(h.made, other));
  });

  it('delay hands the faulted request’s events to the publisher to send ms later', async () => {
    const { h, key, other } = await faultedAndPlain({ kind: 'kv_events', mode: 'delay', ms: 250 });
    expect(stored(h.published, key)).toEqual([]);
    expect(h.delayed.map((d) => d.ms)).toEqual(h.delayed.map(() => 250));
    expect(h.delayed.flatMap((d) => d.events)).toEqual(stored(h.made, key));
    expect(stored(h.published, other)).toEqual(stored(h.made, other));
  });

  it('gap skips one event id, once, before the next events', async () => {
    const h = harness(onEvery({ kind: 'kv_events', mode: 'gap' }, { request_index: [0, 0] }));
    await h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 4 }));
    await h.server.handle(payload({ tokenIds: tokens(40, 700), maxTokens: 4 }));
    expect(h.skipped).toEqual([1]);
    expect(h.published).toEqual(h.made);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ kv_events: 1 }));
  });

  it('KvEventFaults.apply leaves events of other owners, removals and other ranks alone', () => {
    const h = harness(null);
    const f = new WorkerFaults({ plan: parseFaultPlan({}), log: silent, exit: () => {}, withdraw: async () => {}, restore: async () => {} });
    workerFaults.push(f);
    const ev = (eventId: number, owner?: number): KvEvent => ({ eventId, dpRank: 0, data: { kind: 'stored', parentHash: null, blocks: [{ blockHash: BigInt(eventId), tokensHash: 1n }] }, owner });
    const removed: KvEvent = { eventId: 9, dpRank: 0, data: { kind: 'removed', blockHashes: [1n] } };
    const lease = f.kvEvents(0, 5, 'drop', null);
    expect(f.kv.active).toBe(true);
    const later: unknown[] = [];
    expect(f.kv.apply(0, [ev(1, 5), ev(2, 6), removed, ev(3)], (...a) => later.push(a))).toEqual({ now: [ev(2, 6), removed, ev(3)], skip: 0 });
    expect(f.kv.apply(1, [ev(4, 5)], () => {})).toEqual({ now: [ev(4, 5)], skip: 0 });
    lease.release();
    expect(f.kv.active).toBe(false);
    expect(f.kv.apply(0, [ev(5, 5)], () => {})).toEqual({ now: [ev(5, 5)], skip: 0 });
    expect(later).toEqual([]);
    expect(h.made).toEqual([]);
  });
});

describe('counting and matching through the server', () => {
  it('counts received, completed, refused, failed, cancelled and cut', async () => {
    const h = harness({
      rules: [
        { match: { request_index: [1, 1] }, action: { kind: 'refuse' } },
        { match: { request_index: [2, 2] }, action: { kind: 'error', after_tokens: 1 } },
        { match: { request_index: [3, 3] }, action: { kind: 'cut', after_tokens: 1 } },
      ],
    });
    const done = [
      h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 3 })), // 0: completes
      h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 3 })), // 1: refused by the plan
      h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 3 })), // 2: error item
      h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 3 })), // 3: cut
      h.server.handle(payload({ tokenIds: [], maxTokens: 3 })), // refused by validation
      h.server.handle(payload({ tokenIds: tokens(64, 300), maxTokens: 1000 }, undefined, 'long')), // 4: stopped by the frontend
      h.server.handle(payload({ tokenIds: PROMPT, maxTokens: 3 })), // 5: completes
    ];
    const long = (): MemorySink | undefined => h.sinks.find((s) => s.info.context === 'long');
    await until(() => (long()?.tokens.length ?? 0) >= 3, 'the long request’s third token');
    long()!.send('stop');
    await Promise.all(done);
    expect(h.server.counts).toEqual({ received: 7, completed: 2, refused: 2, failed: 1, cancelled: 1, cut: 1 });
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ refuse: 1, error: 1, cut: 1 }));
    expectIdle(h);
    h.server.resetCounts();
    expect(h.server.counts).toEqual({ received: 0, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 });
  });

  it('counts every kind once in firedByKind and the faults counter, when it takes effect', async () => {
    const kinds: Array<Record<string, unknown>> = [
      { kind: 'refuse' },
      { kind: 'error', after_tokens: 1 },
      { kind: 'cut', after_tokens: 1 },
      { kind: 'stall', ms: 5 },
      { kind: 'slow', factor: 2 },
      { kind: 'no_stream' },
      { kind: 'crash', after_tokens: 1 },
      { kind: 'deregister', ms: 60_000 },
      { kind: 'kv_events', mode: 'drop' },
      { kind: 'load_metrics', mode: 'stop', ms: 60_000 },
    ];
    expect(kinds.map((k) => k.kind).sort()).toEqual([...FAULT_KINDS].sort());
    const h = harness({ rules: kinds.map((action, i) => ({ match: { request_index: [i, i] }, action })) });
    // Arrival order is call order: each request takes its index before its first await.
    await Promise.all(kinds.map((_, i) => h.server.handle(payload({ tokenIds: tokens(40, 100 * i), maxTokens: 3 }))));
    await turn(); // the crash's exit
    expect(h.faults!.firedByKind()).toEqual(Object.fromEntries(FAULT_KINDS.map((k) => [k, 1])));
    expect([...h.counted].sort()).toEqual([...FAULT_KINDS].sort());
    expect(h.exits).toEqual([1]);
    expect(h.withdrawals).toBe(1);
    expectIdle(h);
    h.faults!.resetCounts();
    expect(h.faults!.firedByKind()).toEqual(firedOnly({}));
  });

  it('first matching rule wins; request_index counts only requests the worker would serve, in arrival order', async () => {
    const h = harness({
      rules: [
        { match: { request_index: [1, 1] }, action: { kind: 'cut', after_tokens: 1 } },
        { match: { request_index: [0, 2] }, action: { kind: 'refuse', message: 'second rule' } },
      ],
    });
    const outcomes: string[][] = [];
    const send = async (p: Uint8Array, fault: Parameters<RequestServer['handle']>[1] = null): Promise<void> => {
      const before = h.sinks.length;
      await h.server.handle(p, fault);
      outcomes.push(h.sinks.slice(before).flatMap((s) => s.shape));
    };
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 })); // index 0: second rule
    await send(payload({ tokenIds: [], maxTokens: 3 })); // invalid body: no index
    await send(payload({ tokenIds: tokens(5000), maxTokens: 3 })); // over the context length: no index
    await send(payload({ tokenIds: PROMPT, maxTokens: 3, dpRank: 3 })); // no such DP rank: no index
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 }), { type: 'generate', message: 'overloaded' }); // the plane's refusal: no index
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 })); // index 1: both rules match, the first wins
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 })); // index 2: second rule
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 })); // index 3: no rule
    expect(outcomes).toEqual([
      ['prologue error', 'end'],
      ['prologue error', 'end'],
      ['prologue error', 'end'],
      ['prologue error', 'end'],
      ['prologue error', 'end'],
      ['prologue ok', '1 items', 'cut'],
      ['prologue error', 'end'],
      ['prologue ok', '3 items', 'finish'],
    ]);
    expect(h.sinks.map((s) => s.prologueError)).toEqual([
      'second rule',
      expect.stringMatching(/token_ids/),
      expect.stringMatching(/context length/),
      expect.stringMatching(/dp_rank 3/),
      'overloaded',
      null,
      'second rule',
      null,
    ]);
    expect(h.faults!.firedByKind()).toEqual(firedOnly({ refuse: 2, cut: 1 }));
    expect(h.server.counts).toMatchObject({ received: 8, refused: 6, cut: 1, completed: 1 });
    // A new plan counts request indexes from 0 again.
    h.faults!.setPlan(parseFaultPlan({ rules: [{ match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'new plan' } }] }));
    await send(payload({ tokenIds: PROMPT, maxTokens: 3 }));
    expect(h.sinks.at(-1)!.prologueError).toBe('new plan');
  });
});
