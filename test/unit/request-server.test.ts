// The request path on the virtual clock with an in-memory sink: streaming, admission, refusals, cancellation, counting.
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { preprocessedRequestJson1x, requestControlJson, type GenerateRequest } from '../../src/client/dynamo-client.js';
import { VirtualClock } from '../../src/clock/clock.js';
import { Engine } from '../../src/core/engine.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import type { WorkErrorType } from '../../src/metrics/request-metrics.js';
import { CountingMetrics } from '../helpers/counting-metrics.js';
import { RequestServer, refuseUnrouted } from '../../src/serving/request-server.js';
import { engineSetup, tokens } from '../helpers/core-fixtures.js';
import { MemorySink } from '../helpers/memory-sink.js';

const xxh = await createXxh3();
const silent = pino({ level: 'silent' });

interface Harness {
  server: RequestServer;
  engine: Engine;
  clock: VirtualClock;
  metrics: CountingMetrics;
  sinks: MemorySink[];
  observed: number[];
  loop: EngineLoop;
}

const loops: EngineLoop[] = [];
afterEach(async () => {
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

function harness(setup: Parameters<typeof engineSetup>[0] = {}, opts: { failOpen?: boolean } = {}): Harness {
  const engine = new Engine(engineSetup({ blockSize: 16, numGpuBlocks: 1000 }, setup), createPolynomialTimingModel(), xxh, { vocabSize: 1000, contextLength: 4096 });
  const clock = new VirtualClock();
  const loop = new EngineLoop(engine, clock);
  loop.start();
  loops.push(loop);
  const queues = engine.ranks.map(() => new PQueue({ concurrency: engine.setup.maxNumSeqs }));
  const metrics = new CountingMetrics();
  const sinks: MemorySink[] = [];
  const observed: number[] = [];
  const server = new RequestServer({
    loop,
    queues,
    xxh,
    metrics,
    log: silent,
    modelEosTokenIds: [2],
    openSink: async (info) => {
      if (opts.failOpen) throw new Error(`call-home connection to ${info.address} failed: refused`);
      const s = new MemorySink(info, () => clock.now());
      sinks.push(s);
      return s;
    },
    now: () => clock.now(),
    observe: (rank) => {
      observed.push(rank);
      return { token() {}, finish() {} };
    },
  });
  return { server, engine, clock, metrics, sinks, observed, loop };
}

let nextId = 0;
function payload(req: GenerateRequest, control: Record<string, unknown> = {}, body?: string): Uint8Array {
  const id = `req-${nextId++}`;
  const header = JSON.stringify({ ...JSON.parse(requestControlJson(id, 'memory:1', `stream-${id}`, 'json')), ...control });
  return encodeTwoPartText(header, body ?? preprocessedRequestJson1x(req), xxh);
}

describe('RequestServer', () => {
  it('streams exactly max_tokens tokens, one item per pass, then complete_final; counts bytes and the request', async () => {
    const h = harness();
    const p = payload({ tokenIds: tokens(40, 10), maxTokens: 12, stopTokenIdsHidden: [7] });
    await h.server.handle(p);
    const [sink] = h.sinks;
    expect(sink.shape).toEqual(['prologue ok', '12 items', 'finish']);
    expect(sink.tokens).toHaveLength(12);
    expect(sink.tokens.every((t) => t >= 0 && t < 1000 && t !== 2 && t !== 7)).toBe(true);
    const last = sink.events.filter((e) => e.kind === 'item').at(-1)!;
    expect(last.kind === 'item' && (last.body as { data: { data: unknown } }).data.data).toMatchObject({
      finish_reason: 'length',
      completion_usage: { prompt_tokens: 40, completion_tokens: 12, total_tokens: 52 },
    });
    // Tokens arrive at the end of each simulated pass: strictly later each time, on the virtual clock.
    const times = sink.events.filter((e) => e.kind === 'item').map((e) => e.at);
    for (let i = 1; i < times.length; i++) expect(times[i]).toBeGreaterThan(times[i - 1]);
    expect(h.metrics).toMatchObject({ requests: 1, ended: 1, requestBytes: p.length, cancellations: 0, errors: [] });
    expect(h.metrics.responseBytes).toBeGreaterThan(12 * 100);
    expect(h.server.inflightCount).toBe(0);
    expect(h.engine.ranks[0].snapshot().running).toBe(0);
  });

  it('admits at most --max-num-seqs at once: with 3 slots and 10 requests, 3 start and 7 wait for a slot', async () => {
    const h = harness({ maxNumSeqs: 3 });
    const done = Array.from({ length: 10 }, (_, i) => h.server.handle(payload({ tokenIds: tokens(32, 100 + 32 * i), maxTokens: 20 })));
    await Promise.all(done);
    // Replay the timeline: a request runs from its first token to its finish.
    const spans = h.sinks.map((s) => ({ first: s.events.find((e) => e.kind === 'item')!.at, end: s.events.find((e) => e.kind === 'finish')!.at }));
    const firstFinish = Math.min(...spans.map((s) => s.end));
    expect(spans.filter((s) => s.first < firstFinish)).toHaveLength(3);
    for (const { first } of spans) expect(spans.filter((s) => s.first <= first && s.end > first).length).toBeLessThanOrEqual(3);
    expect(h.sinks.every((s) => s.tokens.length === 20)).toBe(true);
  });

  it('reads the data-parallel rank from routing.dp_rank (0.9+) as well as from dp_rank', async () => {
    const h = harness({ dataParallelSize: 2 });
    await h.server.handle(payload({ tokenIds: [1, 2, 3], maxTokens: 2, dpRank: 1 }));
    const body = JSON.parse(preprocessedRequestJson1x({ tokenIds: [1, 2, 3], maxTokens: 2 }));
    await h.server.handle(payload({ tokenIds: [] as number[], maxTokens: 0 }, {}, JSON.stringify({ ...body, dp_rank: 1 })));
    await h.server.handle(payload({ tokenIds: [] as number[], maxTokens: 0 }, {}, JSON.stringify({ ...body, dp_rank: 0, routing: { dp_rank: 1 } })));
    expect(h.observed).toEqual([1, 1, 1]);
  });

  const refusals: Array<[string, () => Uint8Array, WorkErrorType, RegExp]> = [
    ['a body that is not JSON', () => payload({ tokenIds: [1], maxTokens: 1 }, {}, '{"token_ids":'), 'deserialization', /invalid request body/],
    ['empty token_ids', () => payload({ tokenIds: [], maxTokens: 1 }), 'deserialization', /token_ids must be a non-empty array/],
    ['a dp_rank out of range', () => payload({ tokenIds: [1], maxTokens: 1, dpRank: 4 }), 'generate', /dp_rank 4 is out of range/],
    ['a prompt over the context length', () => payload({ tokenIds: tokens(5000), maxTokens: 1 }), 'generate', /context length of 4096/],
    ['a bidirectional (many_in) request', () => payload({ tokenIds: [1], maxTokens: 1 }, { request_type: 'many_in' }), 'deserialization', /many_in/],
    ['a msgpack payload', () => payload({ tokenIds: [1], maxTokens: 1 }, { payload_codec: 'msgpack' }), 'deserialization', /payload_codec "msgpack" is not supported/],
  ];
  for (const [what, make, type, message] of refusals) {
    it(`refuses ${what} on its stream and counts ${type}`, async () => {
      const h = harness();
      await h.server.handle(make());
      expect(h.sinks).toHaveLength(1);
      expect(h.sinks[0].shape).toEqual(['prologue error', 'end']);
      expect(h.sinks[0].prologueError).toMatch(message);
      expect(h.metrics).toMatchObject({ requests: 1, ended: 1, errors: [type] });
    });
  }

  it('refuses a frame with a wrong checksum on its stream (its header still names the caller)', async () => {
    const h = harness();
    const p = payload({ tokenIds: [1, 2], maxTokens: 2 });
    p[23] ^= 0xff;
    await h.server.handle(p);
    expect(h.sinks[0].prologueError).toMatch(/checksum mismatch/);
    expect(h.metrics.errors).toEqual(['invalid_message']);
  });

  it('counts what cannot be answered: no frame, no readable control header, no call home', async () => {
    const h = harness();
    await h.server.handle(new TextEncoder().encode('garbage'));
    await h.server.handle(encodeTwoPartText('{not json', '{}', xxh));
    expect(h.sinks).toHaveLength(0);
    expect(h.metrics.errors).toEqual(['invalid_message', 'deserialization']);
    const g = harness({}, { failOpen: true });
    await g.server.handle(payload({ tokenIds: [1], maxTokens: 1 }));
    expect(g.metrics).toMatchObject({ requests: 1, ended: 1, errors: ['response_stream'] });
  });

  it("refuses a body nested deeper than serde_json's recursion limit on its stream, as a deserialization error", async () => {
    const h = harness();
    // An unknown field nesting the body `depth` levels deep (the body itself is the first level).
    const nested = (depth: number) => preprocessedRequestJson1x({ tokenIds: [1, 2], maxTokens: 2 }).replace(/^\{/, `{"x":${'['.repeat(depth - 1)}${']'.repeat(depth - 1)},`);
    await h.server.handle(payload({ tokenIds: [1, 2], maxTokens: 2 }, {}, nested(127)));
    expect(h.sinks[0].shape).toEqual(['prologue ok', '2 items', 'finish']);
    for (const depth of [128, 129, 100_000]) await h.server.handle(payload({ tokenIds: [1, 2], maxTokens: 2 }, {}, nested(depth)));
    for (const sink of h.sinks.slice(1)) expect(sink.prologueError).toMatch(/^invalid request body: .*Recursion limit exceeded/);
    expect(h.metrics.errors).toEqual(['deserialization', 'deserialization', 'deserialization']);
  });

  it('reports a fault the request plane found on the request stream', async () => {
    const h = harness();
    await h.server.handle(payload({ tokenIds: [1], maxTokens: 5 }), { type: 'generate', message: 'Server overloaded: worker at capacity' });
    expect(h.sinks[0].prologueError).toBe('Server overloaded: worker at capacity');
    expect(h.metrics.errors).toEqual(['generate']);
  });

  it.each(['stop', 'kill'] as const)('%s ends the stream at once (the generation decides on the sentinel) and frees the KV blocks', async (msg) => {
    const h = harness();
    const done = h.server.handle(payload({ tokenIds: tokens(64), maxTokens: 500 }));
    await new Promise<void>((resolve) => {
      const wait = () => (h.sinks[0] ? h.sinks[0].onItem((n) => n === 5 && resolve()) : setImmediate(wait));
      wait();
    });
    h.sinks[0].send(msg);
    await done;
    expect(h.sinks[0].shape).toEqual(['prologue ok', '5 items', 'end-stopped']);
    expect(h.metrics).toMatchObject({ cancellations: 1, ended: 1, errors: [] });
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, activeBlocks: 0 });
  });

  it('cancels a request whose frontend hangs up, also while it waits for a slot', async () => {
    const h = harness({ maxNumSeqs: 1 });
    const first = h.server.handle(payload({ tokenIds: tokens(16), maxTokens: 300 }));
    const second = h.server.handle(payload({ tokenIds: tokens(16, 50), maxTokens: 300 }));
    await new Promise<void>((resolve) => {
      const wait = () => (h.sinks.length === 2 && h.sinks[0].tokens.length > 2 ? resolve() : setImmediate(wait));
      wait();
    });
    h.sinks[1].hangUp(); // still queued behind the first
    h.sinks[0].hangUp();
    await Promise.all([first, second]);
    expect(h.sinks[1].shape).toEqual(['prologue ok', 'end']);
    expect(h.metrics.cancellations).toBe(2);
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
  });

  it('drain waits for in-flight requests, and past the grace period ends them with an error item, freeing their KV', async () => {
    const h = harness({ maxNumSeqs: 2 });
    const quick = h.server.handle(payload({ tokenIds: [1, 2], maxTokens: 3 }));
    expect(await h.server.drain(60_000)).toBe(true);
    await quick;
    expect(h.sinks[0].shape).toEqual(['prologue ok', '3 items', 'finish']);

    // Two streaming, one waiting for a slot, when the grace period runs out.
    const long = [0, 1, 2].map((i) => h.server.handle(payload({ tokenIds: tokens(40, 100 * i), maxTokens: 1_000_000 })));
    await new Promise<void>((resolve) => {
      const wait = () => (h.sinks.length === 4 && h.sinks[1].tokens.length > 2 && h.sinks[2].tokens.length > 2 ? resolve() : setImmediate(wait));
      wait();
    });
    expect(h.engine.ranks[0].snapshot().activeBlocks).toBeGreaterThan(0);
    expect(await h.server.drain(0)).toBe(false);
    await Promise.all(long);
    for (const sink of h.sinks.slice(1)) {
      expect(sink.shape.slice(-2)).toEqual([expect.stringMatching(/items$/), 'finish']);
      const last = sink.events.filter((e) => e.kind === 'item').at(-1) as unknown as { body: { data: { data: { finish_reason: unknown; token_ids: unknown } } } };
      expect(last.body.data.data).toMatchObject({ token_ids: [], finish_reason: { error: 'worker shutting down: graceful shutdown timeout (0 s) reached' } });
    }
    expect(h.sinks[3].tokens).toEqual([]);
    expect(h.metrics.cancellations).toBe(3);
    expect(h.metrics.errors).toEqual([]);
    expect(h.server.inflightCount).toBe(0);
    expect(h.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
  });

  it('refuseUnrouted tells the caller why on its stream and counts the error', async () => {
    const h = harness();
    const sinks: MemorySink[] = [];
    await refuseUnrouted(payload({ tokenIds: [1], maxTokens: 1 }), { type: 'generate', message: 'unknown endpoint "abc/generate"' }, {
      xxh,
      metrics: h.metrics,
      log: silent,
      openSink: async (info) => {
        const s = new MemorySink(info, () => 0);
        sinks.push(s);
        return s;
      },
    });
    expect(sinks[0].shape).toEqual(['prologue error', 'end']);
    expect(sinks[0].prologueError).toBe('unknown endpoint "abc/generate"');
    expect(h.metrics.errors).toEqual(['generate']);
    await refuseUnrouted(new Uint8Array(3), { type: 'invalid_message', message: 'Invalid endpoint path' }, { xxh, metrics: h.metrics, log: silent, openSink: async () => expect.unreachable() });
    expect(h.metrics.errors).toEqual(['generate', 'invalid_message']);
  });
});
