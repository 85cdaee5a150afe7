// Backpressure on the response stream: the scheduler's pause/resume, the request path on discrete-event
// virtual time (a congested stream pauses its request, the rest of the batch keeps its exact timing,
// a drain resumes it, the stall timeout cancels it and frees its KV), the call-home stream's
// congestion on loopback against a peer that never reads, and the two DYN_MOCKER_STREAM_* variables.
import { createServer, type Server, type Socket } from 'node:net';
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CallHomeStream } from '../../src/adapters/call-home-stream.js';
import { main } from '../../src/cli.js';
import { preprocessedRequestJson1x, requestControlJson, type GenerateRequest } from '../../src/client/dynamo-client.js';
import { ConfigError, parseWorkerConfig } from '../../src/config.js';
import { Engine } from '../../src/core/engine.js';
import type { TimingModel } from '../../src/core/timing/timing-model.js';
import { llmDataItemBody } from '../../src/dynamo/messages.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { parseFaultPlan } from '../../src/faults/fault-plan.js';
import { WorkerFaults } from '../../src/faults/worker-faults.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { RequestServer } from '../../src/serving/request-server.js';
import { CountingMetrics } from '../helpers/counting-metrics.js';
import { engineSetup, makeScheduler, seqInput, tokens } from '../helpers/core-fixtures.js';
import { EventClock } from '../helpers/event-clock.js';
import { MemorySink } from '../helpers/memory-sink.js';

const xxh = await createXxh3();

describe('Scheduler.pause / resume', () => {
  it('skips a paused sequence in scheduling and emission; it keeps its blocks and counts as running', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 100, enablePrefixCaching: false, watermark: 0 });
    const a = s.add(seqInput(1, tokens(8), 20));
    const b = s.add(seqInput(2, tokens(8, 100), 20));
    if (!a.ok || !b.ok) throw new Error('not added');
    s.step(0); // prefill both, first token each
    expect(s.pause(a.seq)).toBe(true);
    expect(s.pause(a.seq)).toBe(false); // already paused
    const blocks = s.snapshot().activeBlocks;
    const aBlocks = a.seq.blocks.length + a.seq.slots;
    for (let t = 1; t <= 5; t++) {
      const r = s.step(t);
      expect(r.emitted).toEqual([b.seq]);
    }
    expect(a.seq.generated).toBe(1);
    expect(a.seq.blocks.length + a.seq.slots).toBe(aBlocks);
    expect(s.snapshot()).toMatchObject({ running: 2, paused: 1 });
    expect(s.snapshot().activeBlocks).toBeGreaterThanOrEqual(blocks);
    expect(s.resume(a.seq)).toBe(true);
    expect(s.resume(a.seq)).toBe(false);
    expect(s.step(6).emitted).toEqual([a.seq, b.seq]);
    expect(s.snapshot().paused).toBe(0);
  });

  it('a rank whose only running sequences are paused makes no progress and is not idle', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 100 });
    const a = s.add(seqInput(1, tokens(8), 5));
    if (!a.ok) throw new Error('not added');
    s.step(0);
    s.pause(a.seq);
    const r = s.step(1);
    expect(r).toMatchObject({ scheduledTokens: 0, emitted: [], endMs: 1 });
    expect(s.idle).toBe(false);
  });

  it('refuses to pause what is not running; cancelling a paused sequence frees its blocks', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 100, maxNumSeqs: 1 });
    const a = s.add(seqInput(1, tokens(8), 50));
    const queued = s.add(seqInput(2, tokens(8, 100), 50));
    if (!a.ok || !queued.ok) throw new Error('not added');
    s.step(0);
    expect(s.pause(queued.seq)).toBe(false); // waiting for the one slot
    expect(s.pause(a.seq)).toBe(true);
    // The paused request keeps the only slot: the queued one is not admitted.
    expect(s.step(1).admitted).toEqual([]);
    expect(s.cancel(a.seq)).toBe(true);
    expect(s.snapshot()).toMatchObject({ running: 0, paused: 0, activeBlocks: 0 });
    expect(s.step(2).admitted).toEqual([queued.seq]);
  });

  it('never preempts a paused sequence: the one that needs a block gives way instead', async () => {
    // 5 blocks of 4 tokens: two 8-token prompts take 4; the first decode takes the last one.
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 5, enablePrefixCaching: false, watermark: 0, preemptionMode: 'lifo', maxNumBatchedTokens: 64 });
    const a = s.add(seqInput(1, tokens(8), 12));
    const b = s.add(seqInput(2, tokens(8, 100), 12));
    if (!a.ok || !b.ok) throw new Error('not added');
    s.step(0);
    // LIFO would pick b, the newest; paused, it keeps its blocks and a preempts itself.
    s.pause(b.seq);
    const preempted = [];
    for (let t = 1; t < 10 && preempted.length === 0; t++) preempted.push(...s.step(t).preempted);
    expect(preempted).toEqual([a.seq]);
    expect(b.seq.status).toBe('running');
    expect(b.seq.blocks.length + b.seq.slots).toBe(2);
  });
});

// ---------------------------------------------------------------------------------------------
// The request path on discrete-event virtual time.

/** Constant pass times: the tokens of a request alone in the batch are exactly DECODE_MS apart. */
const PREFILL_MS = 20;
const DECODE_MS = 5;
const constantTiming: TimingModel = {
  name: 'constant',
  prefillMs: (b) => (b.requests > 0 ? PREFILL_MS : 0),
  decodeMs: (b) => (b.requests > 0 ? DECODE_MS : 0),
};

interface Harness {
  server: RequestServer;
  engine: Engine;
  clock: EventClock;
  metrics: CountingMetrics;
  sinks: Map<string, MemorySink>;
  warnings: string[];
}

const loops: EngineLoop[] = [];
const faultSets: WorkerFaults[] = [];
afterEach(async () => {
  for (const f of faultSets.splice(0)) f.stop();
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

function harness(streamStallTimeoutMs: number, plan: unknown = null): Harness {
  const engine = new Engine(engineSetup({ blockSize: 16, numGpuBlocks: 1000 }), constantTiming, xxh, { vocabSize: 1000, contextLength: 4096 });
  const clock = new EventClock();
  const loop = new EngineLoop(engine, clock);
  loop.start();
  loops.push(loop);
  const warnings: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line).msg) });
  const sinks = new Map<string, MemorySink>();
  const metrics = new CountingMetrics();
  const faults = plan === null ? undefined : new WorkerFaults({ plan: parseFaultPlan(plan), log, exit: () => {}, withdraw: async () => {}, restore: async () => {} });
  if (faults) faultSets.push(faults);
  const server = new RequestServer({
    loop,
    queues: engine.ranks.map(() => new PQueue({ concurrency: engine.setup.maxNumSeqs })),
    xxh,
    metrics,
    log,
    modelEosTokenIds: [2],
    openSink: async (info) => {
      const s = new MemorySink(info, () => clock.now());
      sinks.set(info.context, s);
      return s;
    },
    now: () => clock.now(),
    sleep: clock.sleep,
    streamStallTimeoutMs,
    faults,
  });
  return { server, engine, clock, metrics, sinks, warnings };
}

function payload(id: string, req: GenerateRequest): Uint8Array {
  return encodeTwoPartText(requestControlJson(id, 'memory:1', `stream-${id}`, 'json'), preprocessedRequestJson1x(req), xxh);
}

const itemTimes = (s: MemorySink): number[] => s.events.filter((e) => e.kind === 'item').map((e) => e.at);

/** Waits (on I/O turns, not time) until `cond` holds. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100_000; i++) {
    if (cond()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

/**
 * Requests A (40 tokens) and B (60 tokens) arrive together; A's frontend stops reading after
 * `congestAt` items (never, when null). Resolves with both sinks once B has finished.
 */
async function run(h: Harness, congestAt: number | null): Promise<{ a: MemorySink; b: MemorySink; doneA: Promise<void> }> {
  const doneA = h.server.handle(payload('a', { tokenIds: tokens(32, 10), maxTokens: 40 }));
  const doneB = h.server.handle(payload('b', { tokenIds: tokens(32, 500), maxTokens: 60 }));
  await until(() => h.sinks.has('a'), 'stream a');
  const a = h.sinks.get('a')!;
  if (congestAt !== null) a.onItem((n) => n === congestAt && a.setCongested(true));
  await doneB;
  return { a, b: h.sinks.get('b')!, doneA };
}

describe('request path: a congested response stream', () => {
  it('pauses its request only: the others keep their exact timing, the paused one keeps its KV and slot, and resumes on drain', async () => {
    const reference = await run(harness(60_000), null);
    await reference.doneA;
    const referenceTimes = itemTimes(reference.b);
    expect(referenceTimes).toHaveLength(60);

    const h = harness(60_000);
    const { a, b, doneA } = await run(h, 5);
    // B: the very same token times as when A read everything.
    expect(itemTimes(b)).toEqual(referenceTimes);
    expect(b.shape).toEqual(['prologue ok', '60 items', 'finish']);
    // A: 5 items, then nothing while paused; it still holds its slot and its blocks.
    expect(a.shape).toEqual(['prologue ok', '5 items']);
    const paused = h.engine.ranks[0].snapshot();
    expect(paused).toMatchObject({ running: 1, paused: 1 });
    expect(paused.activeBlocks).toBe(Math.ceil((32 + 5) / 16)); // prompt + 5 tokens, the last one not yet computed
    // The frontend reads again at t = 1000: A's next token comes one decode pass later.
    await h.clock.sleepUntil(1000);
    a.setCongested(false);
    await doneA;
    expect(a.shape).toEqual(['prologue ok', '40 items', 'finish']);
    expect(itemTimes(a)[5]).toBe(1000 + DECODE_MS);
    expect(h.metrics).toMatchObject({ cancellations: 0, errors: [] });
    expect(h.warnings).toEqual([]);
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, paused: 0, activeBlocks: 0 });
  });

  it('cancels it after the stall timeout: connection dropped, KV freed, counted as publish_response and as a cancellation, one warning', async () => {
    const reference = await run(harness(60_000), null);
    await reference.doneA;

    const h = harness(1500);
    const { a, b, doneA } = await run(h, 5);
    expect(itemTimes(b)).toEqual(itemTimes(reference.b));
    const pausedAt = itemTimes(a)[4];
    await doneA;
    expect(a.shape).toEqual(['prologue ok', '5 items', 'abort']);
    expect(a.events.at(-1)!.at).toBe(pausedAt + 1500);
    expect(h.metrics).toMatchObject({ cancellations: 1, errors: ['publish_response'], ended: 2 });
    expect(h.server.counts).toMatchObject({ cancelled: 1, completed: 1 });
    expect(h.warnings).toHaveLength(1);
    expect(h.warnings[0]).toMatch(/response stream stalled: still over its send buffer after 1\.5 s \(DYN_MOCKER_STREAM_STALL_TIMEOUT\); cancelling the request after 5 tokens/);
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, paused: 0, activeBlocks: 0 });
  });

  it('a drain before the timeout disarms it: a second congestion gets a full timeout of its own', async () => {
    const h = harness(1000);
    const doneA = h.server.handle(payload('a', { tokenIds: tokens(32, 10), maxTokens: 40 }));
    await until(() => h.sinks.has('a'), 'stream a');
    const a = h.sinks.get('a')!;
    a.onItem((n) => (n === 5 || n === 10) && a.setCongested(true));
    await until(() => a.tokens.length === 5, 'five tokens');
    await h.clock.sleepUntil(itemTimes(a)[4] + 900);
    a.setCongested(false);
    await doneA;
    // Congested again at item 10, never drained: cancelled 1000 ms after that, not after the first.
    expect(a.shape).toEqual(['prologue ok', '10 items', 'abort']);
    expect(a.events.at(-1)!.at).toBe(itemTimes(a)[9] + 1000);
    expect(h.metrics.errors).toEqual(['publish_response']);
  });

  it('deliveries held back by a slow fault wait for the drain too', async () => {
    const h = harness(60_000, { seed: 1, rules: [{ match: {}, action: { kind: 'slow', factor: 3 } }] });
    const doneA = h.server.handle(payload('a', { tokenIds: tokens(32, 10), maxTokens: 40 }));
    await until(() => h.sinks.has('a'), 'stream a');
    const a = h.sinks.get('a')!;
    a.onItem((n) => n === 5 && a.setCongested(true));
    await until(() => a.tokens.length === 5, 'five tokens');
    await h.clock.sleepUntil(5000);
    expect(a.tokens).toHaveLength(5);
    a.setCongested(false);
    await doneA;
    expect(a.shape).toEqual(['prologue ok', '40 items', 'finish']);
    expect(itemTimes(a)[5]).toBeGreaterThanOrEqual(5000);
    expect(h.metrics).toMatchObject({ cancellations: 0, errors: [] });
  });

  it('a request ended otherwise while paused (the frontend hangs up) leaves no stall timer behind', async () => {
    const h = harness(1000);
    const doneA = h.server.handle(payload('a', { tokenIds: tokens(32, 10), maxTokens: 40 }));
    await until(() => h.sinks.has('a'), 'stream a');
    const a = h.sinks.get('a')!;
    a.onItem((n) => n === 3 && a.setCongested(true));
    await until(() => a.tokens.length === 3, 'three tokens');
    a.hangUp();
    await doneA;
    expect(h.metrics).toMatchObject({ cancellations: 1, errors: [] });
    await h.clock.sleepUntil(5000); // well past the timeout: nothing more happens
    expect(a.shape).toEqual(['prologue ok', '3 items', 'end']);
    expect(h.metrics.errors).toEqual([]);
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, paused: 0, activeBlocks: 0 });
  });
});

// ---------------------------------------------------------------------------------------------
// The call-home stream against a frontend that accepts the connection and never reads.

describe('CallHomeStream congestion', () => {
  let server: Server | null = null;
  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = null;
  });

  async function neverReading(): Promise<{ address: string; peer: Promise<Socket> }> {
    let accept!: (s: Socket) => void;
    const peer = new Promise<Socket>((resolve) => (accept = resolve));
    server = createServer({ pauseOnConnect: true }, (s) => accept(s));
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', () => resolve()));
    return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, peer };
  }

  it('is congested once more than its buffer is unsent, holds at most one frame more, and drains when the peer reads', async () => {
    const { address, peer } = await neverReading();
    const bufferBytes = 64 * 1024;
    const stream = await CallHomeStream.open({ address, subject: 's', context: 'c', streamType: 'response' }, xxh, { sentinelAfterStop: true, bufferBytes });
    const socket = await peer;
    stream.sendPrologue(null);
    const body = llmDataItemBody({ tokenIds: [123], finishReason: null });
    let frames = 0;
    // What the kernel takes first (send and receive buffers) is not the process's memory.
    while (!stream.congested() && frames < 500_000) {
      stream.sendItem(body);
      frames++;
    }
    expect(stream.congested()).toBe(true);
    expect(stream.unsentBytes).toBeGreaterThan(bufferBytes);
    expect(stream.unsentBytes).toBeLessThanOrEqual(bufferBytes + 24 + body.length);
    let drains = 0;
    const drained = new Promise<void>((resolve) =>
      stream.onDrain(() => {
        drains++;
        resolve();
      }),
    );
    socket.resume(); // the frontend reads again
    socket.on('data', () => {});
    await drained;
    expect(drains).toBe(1);
    expect(stream.congested()).toBe(false);
    expect(stream.unsentBytes).toBe(0);
    stream.finish();
    socket.destroy();
  });

  it('abort drops the connection at once, whatever is still queued', async () => {
    const { address, peer } = await neverReading();
    const stream = await CallHomeStream.open({ address, subject: 's', context: 'c', streamType: 'response' }, xxh, { sentinelAfterStop: true, bufferBytes: 64 * 1024 });
    const socket = await peer;
    const body = llmDataItemBody({ tokenIds: [1], finishReason: null });
    while (!stream.congested()) stream.sendItem(body);
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    socket.resume();
    socket.on('data', () => {});
    socket.on('error', () => {});
    stream.abort();
    expect(stream.congested()).toBe(false);
    await closed;
    // Node drops the queue on the next tick and cancels the write in flight when the handle closes.
    await new Promise((resolve) => setImmediate(resolve));
    expect(stream.unsentBytes).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// Configuration.

describe('DYN_MOCKER_STREAM_BUFFER_BYTES / DYN_MOCKER_STREAM_STALL_TIMEOUT', () => {
  const cfg = (env: Record<string, string>) => parseWorkerConfig({ modelPath: 'm' }, [], env);

  it('default to a 1 MiB buffer and a 60 s stall timeout; fractional seconds are fine', () => {
    expect(cfg({}).responseStream).toEqual({ bufferBytes: 1_048_576, stallTimeoutMs: 60_000 });
    expect(cfg({ DYN_MOCKER_STREAM_BUFFER_BYTES: '65536', DYN_MOCKER_STREAM_STALL_TIMEOUT: '0.5' }).responseStream).toEqual({ bufferBytes: 65_536, stallTimeoutMs: 500 });
  });

  const refusals: Array<[Record<string, string>, string, RegExp]> = [
    [{ DYN_MOCKER_STREAM_BUFFER_BYTES: '1MB' }, 'DYN_MOCKER_STREAM_BUFFER_BYTES', /must be an integer, got '1MB'/],
    [{ DYN_MOCKER_STREAM_BUFFER_BYTES: '4096' }, 'DYN_MOCKER_STREAM_BUFFER_BYTES', /integer in \[65536, 1073741824\]/],
    [{ DYN_MOCKER_STREAM_STALL_TIMEOUT: '0' }, 'DYN_MOCKER_STREAM_STALL_TIMEOUT', /must be > 0/],
    [{ DYN_MOCKER_STREAM_STALL_TIMEOUT: 'soon' }, 'DYN_MOCKER_STREAM_STALL_TIMEOUT', /must be a number/],
    [{ DYN_MOCKER_STREAM_STALL_TIMEOUT: '1e9' }, 'DYN_MOCKER_STREAM_STALL_TIMEOUT', /must be ≤ 2147483/],
  ];
  for (const [env, name, message] of refusals) {
    it(`exits 2 in one line naming ${name} for ${Object.values(env)[0]}`, async () => {
      expect(() => cfg(env)).toThrow(ConfigError);
      let err = '';
      const code = await main(['--model-path', 'm'], { out: () => {}, err: (t) => (err += t), env, isTty: false });
      expect(code).toBe(2);
      expect(err).toContain(name);
      expect(err).toMatch(message);
      expect(err.trim().split('\n')).toHaveLength(1);
    });
  }
});
