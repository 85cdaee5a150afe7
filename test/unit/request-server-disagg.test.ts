// Disaggregated request path on the virtual clock: prefill and decode RequestServers meeting over an in-memory bootstrap rendezvous.
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { preprocessedRequestJson1x, requestControlJson, type GenerateRequest } from '../../src/client/dynamo-client.js';
import { VirtualClock } from '../../src/clock/clock.js';
import { Engine, type EngineSetup } from '../../src/core/engine.js';
import { transferDelayMs, type KvTransferSettings } from '../../src/core/kv-transfer.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import type { WorkerType } from '../../src/core/types.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { CountingMetrics } from '../helpers/counting-metrics.js';
import { QueuedChannel, channelPair } from '../../src/serving/handoff-channel.js';
import { HandoffRendezvous } from '../../src/serving/handoff-sessions.js';
import { RequestServer, type DisaggServing, type RequestServerOptions } from '../../src/serving/request-server.js';
import { engineSetup, tokens } from '../helpers/core-fixtures.js';
import { MemorySink, type SinkEvent } from '../helpers/memory-sink.js';

const xxh = await createXxh3();
const silent = pino({ level: 'silent' });

/** 8 prompt tokens × 1,000,000 B at 1 GB/s = 8 ms. */
const TRANSFER: KvTransferSettings = { bandwidthGBps: 1, bytesPerToken: 1_000_000, timingMode: 'full_prompt' };
const PROMPT = tokens(8, 100);
const TRANSFER_MS = transferDelayMs(PROMPT.length, TRANSFER);

interface Worker {
  server: RequestServer;
  engine: Engine;
  metrics: CountingMetrics;
  sinks: MemorySink[];
  /** Every transfer wait the worker asked for, in ms. */
  sleeps: number[];
}

const loops: EngineLoop[] = [];
afterEach(async () => {
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

type Sleep = NonNullable<RequestServerOptions['sleep']>;

/** The transfer wait on the virtual clock: jumps it forward by `ms` (cancellable). */
function virtualSleep(clock: VirtualClock): Sleep {
  return (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal.aborted) return reject(new Error('aborted'));
      void clock.sleepUntil(clock.now() + ms).then(() => (signal.aborted ? reject(new Error('aborted')) : resolve()));
    });
}

/**
 * One worker on the shared virtual clock. `disagg` null: an aggregated worker (no disagg option);
 * otherwise a `workerType` worker whose DisaggServing defaults can be overridden.
 */
function worker(clock: VirtualClock, workerType: WorkerType | null, disagg: Partial<DisaggServing> & { sleep?: Sleep } = {}, setup: Partial<EngineSetup> = {}): Worker {
  const engine = new Engine(
    engineSetup({ blockSize: 4, numGpuBlocks: 64, maxNumSeqs: 4 }, workerType ? { workerType } : {}, setup),
    createPolynomialTimingModel(),
    xxh,
    { vocabSize: 1000, contextLength: 4096 },
  );
  const loop = new EngineLoop(engine, clock);
  loop.start();
  loops.push(loop);
  const metrics = new CountingMetrics();
  const sinks: MemorySink[] = [];
  const sleeps: number[] = [];
  // The request path's sleep (the transfer wait here), recorded; a test may replace it.
  const { sleep: given, ...serving_ } = disagg;
  const sleep = given ?? virtualSleep(clock);
  const serving: DisaggServing | undefined =
    workerType === null
      ? undefined
      : {
          workerType,
          transfer: TRANSFER,
          sessionTimeoutMs: 60_000,
          rendezvousTimeoutMs: 30_000,
          sessionsPerRank: 4,
          rendezvous: null,
          connect: async () => {
            throw new Error('no bootstrap server in this test');
          },
          ...serving_,
        };
  const server = new RequestServer({
    disagg: serving,
    sleep: (ms, signal) => {
      sleeps.push(ms);
      return sleep(ms, signal);
    },
    loop,
    queues: engine.ranks.map(() => new PQueue({ concurrency: engine.setup.maxNumSeqs })),
    xxh,
    metrics,
    log: silent,
    modelEosTokenIds: [2],
    openSink: async (info) => {
      const s = new MemorySink(info, () => clock.now());
      sinks.push(s);
      return s;
    },
    now: () => clock.now(),
  });
  return { server, engine, metrics, sinks, sleeps };
}

/** A prefill worker with a bootstrap rendezvous and a decode worker that "connects" to it in memory. */
function disaggPair(clock: VirtualClock, o: { prefill?: Partial<DisaggServing> & { sleep?: Sleep }; decode?: Partial<DisaggServing> & { sleep?: Sleep }; setup?: Partial<EngineSetup> } = {}) {
  const rendezvous = new HandoffRendezvous({ rendezvousTimeoutMs: 30_000, maxSessions: 16 });
  /** The decode's end of every bootstrap connection made. */
  const connections: QueuedChannel[] = [];
  const prefill = worker(clock, 'prefill', { rendezvous, ...o.prefill }, o.setup);
  const decode = worker(
    clock,
    'decode',
    {
      // What the bootstrap server does on a connection: header, Register, then hand it to the rendezvous.
      connect: async (_info, identity, dpRank) => {
        const [server, client] = channelPair(identity);
        connections.push(client);
        rendezvous.acceptDestination(server, { kind: 'Register', role: 'Destination', dpRank, order: 'SourceFirst', engineType: 'vllm' });
        return client;
      },
      ...o.decode,
    },
    o.setup,
  );
  return { prefill, decode, rendezvous, connections };
}

/** Sends a bootstrap pair and waits until its source is in the (stalled) transfer; resolves to both requests' completions. */
async function pairStalledInTransfer(prefill: Worker, decode: Worker, transfer: ReturnType<typeof stalledTransfer>): Promise<{ d: Promise<void>; p: Promise<void> }> {
  const requestId = uuid();
  const info = bootstrap(uuid());
  const d = decode.server.handle(payload(requestId, { tokenIds: PROMPT, maxTokens: 12, bootstrapInfo: info }));
  const p = prefill.server.handle(payload(requestId, { tokenIds: PROMPT, maxTokens: 12, bootstrapInfo: info }));
  await until(transfer.started, 'the transfer to start');
  return { d, p };
}

/** A transfer wait that never ends by itself (only its abort signal ends it), and whether it has begun. */
function stalledTransfer(): { sleep: Sleep; started: () => boolean } {
  let begun = false;
  return {
    started: () => begun,
    sleep: (_ms, signal) =>
      new Promise<void>((_, reject) => {
        begun = true;
        signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      }),
  };
}

let uuidCounter = 0;
function uuid(): string {
  uuidCounter++;
  return `6a1f0c2e-0000-4000-8000-${uuidCounter.toString(16).padStart(12, '0')}`;
}

/** A request frame as the frontend sends it: control header (with `id`) + PreprocessedRequest body. */
function payload(id: string, req: GenerateRequest, body?: string): Uint8Array {
  return encodeTwoPartText(requestControlJson(id, 'memory:1', `stream-${id}`, 'json'), body ?? preprocessedRequestJson1x(req), xxh);
}

/** The bootstrap_info a prefill router gives both requests of a pair. */
function bootstrap(handoffId: string, room = 7n) {
  return { host: '10.0.0.1', port: 24000, room, handoffId };
}

/** Waits (on I/O turns, not time) until `cond` holds. */
async function until(cond: () => boolean, what = 'condition'): Promise<void> {
  for (let i = 0; i < 100_000; i++) {
    if (cond()) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

type Item = Extract<SinkEvent, { kind: 'item' }>;
const items = (s: MemorySink): Item[] => s.events.filter((e): e is Item => e.kind === 'item');
/** The LLMEngineOutput inside an item. */
const output = (e: Item) => (e.body as { data: { data: Record<string, unknown> } }).data.data;

/** Forward-pass view of a rank's decode handoffs that were never activated (reserving or reserved). */
function queuedHandoffs(engine: Engine, nowMs: number): number {
  const rank = engine.ranks[0];
  expect(rank.idle).toBe(true); // stepping by hand is only safe while the engine loop has nothing to do
  rank.collectForwardPass = true;
  try {
    return rank.step(nowMs).forwardPass!.queuedDecode.count;
  } finally {
    rank.collectForwardPass = false;
  }
}

describe('prefill worker without a bootstrap session', () => {
  for (const speedupRatio of [1, 10]) {
    it(`emits its token marked "dummy", then a separate length item after exactly the transfer delay (speedup ${speedupRatio})`, async () => {
      const clock = new VirtualClock();
      const w = worker(clock, 'prefill', {}, { speedupRatio });
      await w.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 50 }));
      const [sink] = w.sinks;
      expect(sink.shape).toEqual(['prologue ok', '2 items', 'finish']);
      const [token, length] = items(sink);
      expect(output(token)).toMatchObject({ token_ids: [expect.any(Number)], finish_reason: null, disaggregated_params: 'dummy' });
      expect(output(token)).not.toHaveProperty('completion_usage');
      expect(output(length)).toMatchObject({
        token_ids: [],
        finish_reason: 'length',
        completion_usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 },
      });
      expect(output(length)).not.toHaveProperty('disaggregated_params');
      // The transfer is real time in Dynamo: not divided by the speedup ratio.
      expect(TRANSFER_MS).toBe(8);
      expect(length.at - token.at).toBeCloseTo(TRANSFER_MS, 9); // virtual ms (float sums of pass times)
      expect(w.sleeps).toEqual([8]);
      expect(w.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
      expect(w.metrics).toMatchObject({ requests: 1, ended: 1, errors: [], cancellations: 0 });
    });
  }

  it('ends at once when the transfer model is disabled (no bytes per token)', async () => {
    const clock = new VirtualClock();
    const w = worker(clock, 'prefill', { transfer: { ...TRANSFER, bytesPerToken: null } });
    await w.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 5 }));
    const [token, length] = items(w.sinks[0]);
    expect(length.at).toBe(token.at);
    expect(w.sleeps).toEqual([]);
  });
});

describe('prefill/decode pair over a bootstrap session', () => {
  for (const order of ['decode first', 'prefill first'] as const) {
    it(`hands the prompt's KV over and decodes exactly max_tokens tokens (${order})`, async () => {
      const clock = new VirtualClock();
      const { prefill, decode, rendezvous } = disaggPair(clock);
      const requestId = uuid();
      const info = bootstrap(uuid());
      const send = (w: Worker, maxTokens: number) => w.server.handle(payload(requestId, { tokenIds: PROMPT, maxTokens, bootstrapInfo: info }));
      let done: Promise<unknown>;
      if (order === 'decode first') {
        const d = send(decode, 12);
        await until(() => rendezvous.pendingCount === 1, 'the destination to register');
        done = Promise.all([d, send(prefill, 12)]);
      } else {
        const p = send(prefill, 12);
        await until(() => rendezvous.pendingCount === 1, 'the source to wait');
        done = Promise.all([p, send(decode, 12)]);
      }
      await done;

      const [prefillSink] = prefill.sinks;
      const [decodeSink] = decode.sinks;
      expect(prefillSink.shape).toEqual(['prologue ok', '2 items', 'finish']);
      const [prefillToken, prefillLength] = items(prefillSink);
      expect(output(prefillToken)).toMatchObject({ finish_reason: null, disaggregated_params: 'dummy' });
      expect(output(prefillLength)).toMatchObject({ token_ids: [], finish_reason: 'length', completion_usage: { prompt_tokens: 8, completion_tokens: 1 } });

      expect(decodeSink.shape).toEqual(['prologue ok', '12 items', 'finish']);
      expect(decodeSink.tokens).toHaveLength(12);
      const decoded = items(decodeSink);
      expect(output(decoded.at(-1)!)).toMatchObject({ finish_reason: 'length', completion_usage: { prompt_tokens: 8, completion_tokens: 12 } });
      // Virtual time: the decode's first token comes no earlier than the prefill's token plus the transfer.
      expect(decoded[0].at).toBeGreaterThanOrEqual(prefillToken.at + TRANSFER_MS);
      // The prefill's length item waits for Complete, which follows the transfer.
      expect(prefillLength.at).toBeGreaterThanOrEqual(prefillToken.at + TRANSFER_MS);
      expect(prefill.sleeps).toEqual([8]);
      expect(decode.sleeps).toEqual([]);

      const now = clock.now();
      for (const w of [prefill, decode]) {
        expect(w.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
        expect(w.metrics).toMatchObject({ requests: 1, ended: 1, errors: [], cancellations: 0 });
        expect(w.server.inflightCount).toBe(0);
      }
      expect(queuedHandoffs(decode.engine, now)).toBe(0);
      expect(rendezvous.pendingCount).toBe(0);
    });
  }

  it('cancelling the decode mid-session ends the prefill with an error item and frees its held KV', async () => {
    const clock = new VirtualClock();
    const transfer = stalledTransfer();
    const { prefill, decode, connections } = disaggPair(clock, {
      // The transfer never ends by itself: the decode is cancelled while the source waits for it.
      prefill: { sleep: transfer.sleep },
    });
    const { d, p } = await pairStalledInTransfer(prefill, decode, transfer);
    // The source holds the prefill's KV; the destination holds a reservation that was never activated.
    expect(prefill.engine.ranks[0].snapshot().activeBlocks).toBeGreaterThan(0);
    expect(queuedHandoffs(decode.engine, clock.now())).toBe(1);

    decode.sinks[0].send('stop');
    await Promise.all([d, p]);

    expect(decode.sinks[0].shape).toEqual(['prologue ok', 'end-stopped']);
    expect(decode.metrics).toMatchObject({ cancellations: 1, errors: [] });
    expect(connections[0].ended).toBe(true);

    const prefillSink = prefill.sinks[0];
    expect(prefillSink.shape).toEqual(['prologue ok', '2 items', 'finish']);
    const [token, error] = items(prefillSink);
    expect(output(token)).toMatchObject({ disaggregated_params: 'dummy' });
    expect(output(error)).toMatchObject({ token_ids: [], finish_reason: { error: 'destination disconnected' } });
    expect(prefill.metrics.errors).toEqual(['generate']);

    for (const w of [prefill, decode]) expect(w.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
    expect(queuedHandoffs(decode.engine, clock.now())).toBe(0);
  });

  it('cancelling the prefill mid-session ends the decode with "destination handoff ended before completion"', async () => {
    const clock = new VirtualClock();
    const transfer = stalledTransfer();
    const { prefill, decode } = disaggPair(clock, {
      prefill: { sleep: transfer.sleep },
    });
    const { d, p } = await pairStalledInTransfer(prefill, decode, transfer);
    prefill.sinks[0].send('stop');
    await Promise.all([d, p]);
    expect(prefill.sinks[0].shape).toEqual(['prologue ok', '1 items', 'end-stopped']);
    expect(decode.sinks[0].shape).toEqual(['prologue ok', '1 items', 'finish']);
    expect(output(items(decode.sinks[0])[0])).toMatchObject({ finish_reason: { error: 'destination handoff ended before completion' } });
    for (const w of [prefill, decode]) expect(w.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
    expect(queuedHandoffs(decode.engine, clock.now())).toBe(0);
  });

  it('a pair whose request ids differ fails rendezvous on both streams', async () => {
    const clock = new VirtualClock();
    const { prefill, decode } = disaggPair(clock);
    const info = bootstrap(uuid());
    const d = decode.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: info }));
    await until(() => decode.sinks.length === 1 && decode.sinks[0].events.length === 1, 'the decode to connect');
    await Promise.all([d, prefill.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: info }))]);
    expect(output(items(prefill.sinks[0])[0])).toMatchObject({ finish_reason: { error: 'handoff participant identity or backend mismatch' } });
    // The destination sees the ProtocolError and reports Dynamo's generic ending.
    expect(output(items(decode.sinks[0])[0])).toMatchObject({ finish_reason: { error: 'destination handoff ended before completion' } });
    for (const w of [prefill, decode]) expect(w.engine.ranks[0].snapshot()).toMatchObject({ running: 0, waiting: 0, activeBlocks: 0 });
  });
});

describe('handoff refusals (prologue text)', () => {
  /** A bootstrap_info without handoff_id (a frontend older than 1.3). */
  function withoutHandoffId(req: GenerateRequest): string {
    const body = preprocessedRequestJson1x(req);
    const stripped = body.replace(/,"handoff_id":"[0-9a-f-]+"/, '');
    expect(stripped).not.toBe(body);
    return stripped;
  }

  async function refusal(w: Worker, p: Uint8Array): Promise<string | null | undefined> {
    await w.server.handle(p);
    const sink = w.sinks.at(-1)!;
    expect(sink.shape).toEqual(['prologue error', 'end']);
    return sink.prologueError;
  }

  for (const role of ['decode', 'prefill'] as const) {
    it(`a ${role} worker refuses bootstrap_info without a handoff ID: "disaggregated mocker requires a handoff ID"`, async () => {
      const clock = new VirtualClock();
      const w = role === 'decode' ? disaggPair(clock).decode : disaggPair(clock).prefill;
      const req = { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) };
      expect(await refusal(w, payload(uuid(), req, withoutHandoffId(req)))).toBe('disaggregated mocker requires a handoff ID');
      expect(w.metrics.errors).toEqual(['generate']);
    });
  }

  it('an aggregated worker refuses a handoff ID, and serves bootstrap_info without one locally', async () => {
    const clock = new VirtualClock();
    const w = worker(clock, null);
    const req = { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) };
    expect(await refusal(w, payload(uuid(), req))).toBe('aggregated mocker request cannot carry handoff metadata');
    await w.server.handle(payload(uuid(), req, withoutHandoffId(req)));
    expect(w.sinks[1].shape).toEqual(['prologue ok', '4 items', 'finish']);
  });

  it('a decode worker refuses a session beyond its per-rank limit: "mocker handoff session limit reached for DP rank 0"', async () => {
    const clock = new VirtualClock();
    const { decode, rendezvous } = disaggPair(clock, { decode: { sessionsPerRank: 1 } });
    const first = decode.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }));
    await until(() => rendezvous.pendingCount === 1 && decode.sinks[0]?.events.length === 1, 'the first session');
    expect(await refusal(decode, payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }))).toBe(
      'mocker handoff session limit reached for DP rank 0',
    );
    decode.sinks[0].send('stop');
    await first;
    // The slot is back: the next session connects.
    const again = decode.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }));
    await until(() => decode.sinks.length === 3 && decode.sinks[2].events.length === 1, 'the next session');
    expect(decode.sinks[2].prologueError).toBeNull();
    decode.sinks[2].send('stop');
    await again;
  });

  it('a prefill worker refuses a session beyond its per-rank limit too', async () => {
    const clock = new VirtualClock();
    const { prefill } = disaggPair(clock, { prefill: { sessionsPerRank: 1 } });
    const first = prefill.server.handle(payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }));
    await until(() => prefill.sinks[0]?.events.length === 1, 'the first session');
    expect(await refusal(prefill, payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }))).toBe(
      'mocker handoff session limit reached for DP rank 0',
    );
    prefill.sinks[0].send('stop');
    await first;
    expect(prefill.sinks[0].shape).toEqual(['prologue ok', 'end-stopped']);
  });

  it('a decode whose connection fails: "bootstrap connection failed: …", and the session slot is returned', async () => {
    const clock = new VirtualClock();
    const w = worker(clock, 'decode', {
      sessionsPerRank: 1,
      connect: async (info) => {
        throw new Error(`bootstrap connect timeout to ${info.host}:${info.port}`);
      },
    });
    for (let i = 0; i < 2; i++) {
      expect(await refusal(w, payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }))).toBe(
        'bootstrap connection failed: bootstrap connect timeout to 10.0.0.1:24000',
      );
    }
    expect(w.metrics.errors).toEqual(['generate', 'generate']);
  });

  it('a prefill worker without a bootstrap server refuses a handoff session', async () => {
    const clock = new VirtualClock();
    const w = worker(clock, 'prefill', { rendezvous: null });
    expect(await refusal(w, payload(uuid(), { tokenIds: PROMPT, maxTokens: 4, bootstrapInfo: bootstrap(uuid()) }))).toBe(
      'this prefill worker runs no bootstrap server (start it with --bootstrap-ports)',
    );
  });
});
