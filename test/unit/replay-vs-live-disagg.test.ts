// The live prefill/decode pair (request servers, bootstrap sessions) and the disaggregated replay driver give the same per-request timings on virtual time.
import PQueue from 'p-queue';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { preprocessedRequestJson1x, requestControlJson } from '../../src/client/dynamo-client.js';
import { VirtualClock } from '../../src/clock/clock.js';
import { Engine, type EngineSetup } from '../../src/core/engine.js';
import type { KvTransferSettings } from '../../src/core/kv-transfer.js';
import { createPolynomialTimingModel } from '../../src/core/timing/polynomial.js';
import type { WorkerType } from '../../src/core/types.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { DisaggDriver } from '../../src/engine/disagg-driver.js';
import { EngineLoop } from '../../src/engine/engine-loop.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { NO_REQUEST_METRICS } from '../../src/metrics/request-metrics.js';
import { channelPair } from '../../src/serving/handoff-channel.js';
import { HandoffRendezvous } from '../../src/serving/handoff-sessions.js';
import { RequestServer } from '../../src/serving/request-server.js';
import { engineSetup, tokens } from '../helpers/core-fixtures.js';
import { MemorySink } from '../helpers/memory-sink.js';

const xxh = await createXxh3();
const silent = pino({ level: 'silent' });
const MODEL = { vocabSize: 1000, contextLength: 4096 };
const SETUP: Partial<EngineSetup> = { blockSize: 4, numGpuBlocks: 256, maxNumSeqs: 8, maxNumBatchedTokens: 64 };

/**
 * A small trace whose requests do not overlap in time (the virtual clock of the live path jumps to
 * whichever sleeper asks first, so only sequential phases are exact). Shared prefixes make the decode
 * worker's prefix cache matter for destination_missing.
 */
const TRACE = [
  { at: 0, prompt: tokens(40, 10), maxTokens: 5 },
  { at: 2_000, prompt: [...tokens(40, 10), ...tokens(30, 500)], maxTokens: 3 },
  { at: 4_000, prompt: tokens(7, 900), maxTokens: 8 },
  { at: 6_000, prompt: tokens(130, 200), maxTokens: 1 },
];

interface Timing {
  firstTokenMs: number;
  lastTokenMs: number;
  tokens: number;
}

const loops: EngineLoop[] = [];
afterEach(async () => {
  await Promise.all(loops.splice(0).map((l) => l.stop()));
});

function engine(workerType: WorkerType, speedupRatio: number): Engine {
  return new Engine(engineSetup(SETUP, { workerType, speedupRatio }), createPolynomialTimingModel(), xxh, MODEL);
}

/** The trace through prefill and decode request servers on one virtual clock, meeting over an in-memory bootstrap rendezvous. */
async function live(transfer: KvTransferSettings, speedupRatio: number): Promise<Timing[]> {
  const clock = new VirtualClock();
  const rendezvous = new HandoffRendezvous({ rendezvousTimeoutMs: 30_000, maxSessions: 64 });
  const sleep = (ms: number) => clock.sleepUntil(clock.now() + ms);
  const server = (workerType: WorkerType): { server: RequestServer; sinks: Map<string, MemorySink> } => {
    const e = engine(workerType, speedupRatio);
    const loop = new EngineLoop(e, clock);
    loop.start();
    loops.push(loop);
    const sinks = new Map<string, MemorySink>();
    const s = new RequestServer({
      loop,
      queues: e.ranks.map(() => new PQueue({ concurrency: e.setup.maxNumSeqs })),
      xxh,
      metrics: NO_REQUEST_METRICS,
      log: silent,
      modelEosTokenIds: [],
      openSink: async (info) => {
        const sink = new MemorySink(info, () => clock.now());
        sinks.set(info.subject, sink);
        return sink;
      },
      now: () => clock.now(),
      disagg: {
        workerType,
        transfer,
        sessionTimeoutMs: 600_000,
        rendezvousTimeoutMs: 30_000,
        sessionsPerRank: 8,
        rendezvous: workerType === 'prefill' ? rendezvous : null,
        connect: async (_info, identity, dpRank) => {
          const [bootstrapSide, decodeSide] = channelPair(identity);
          rendezvous.acceptDestination(bootstrapSide, { kind: 'Register', role: 'Destination', dpRank, order: 'SourceFirst', engineType: 'vllm' });
          return decodeSide;
        },
      },
      sleep,
    });
    return { server: s, sinks };
  };
  const prefill = server('prefill');
  const decode = server('decode');
  const out: Timing[] = [];
  for (const [i, r] of TRACE.entries()) {
    await clock.sleepUntil(r.at);
    const id = `6a1f0c2e-0000-4000-8000-${String(i + 1).padStart(12, '0')}`;
    const bootstrapInfo = { host: '127.0.0.1', port: 1, room: BigInt(i + 1), handoffId: `0b7e4d1a-0000-4000-8000-${String(i + 1).padStart(12, '0')}` };
    const frame = (subject: string, maxTokens: number) =>
      encodeTwoPartText(requestControlJson(id, 'memory:1', subject, 'json'), preprocessedRequestJson1x({ tokenIds: r.prompt, maxTokens, bootstrapInfo }), xxh);
    // The prefill router sends both at once: the prefill with max_tokens 1, the decode with the original.
    await Promise.all([prefill.server.handle(frame(`p${i}`, 1)), decode.server.handle(frame(`d${i}`, r.maxTokens))]);
    const sink = decode.sinks.get(`d${i}`)!;
    const times = sink.events.flatMap((e) => (e.kind === 'item' && ((e.body as { data: { data: { token_ids: number[] } } }).data.data.token_ids.length ?? 0) > 0 ? [e.at] : []));
    expect(prefill.sinks.get(`p${i}`)!.tokens).toHaveLength(1);
    out.push({ firstTokenMs: times[0] - r.at, lastTokenMs: times.at(-1)! - r.at, tokens: sink.tokens.length });
  }
  return out;
}

/** The same trace through the disaggregated replay driver. */
function replay(transfer: KvTransferSettings, speedupRatio: number): Timing[] {
  const out: Timing[] = TRACE.map(() => ({ firstTokenMs: NaN, lastTokenMs: NaN, tokens: 0 }));
  const driver = new DisaggDriver([engine('prefill', speedupRatio)], [engine('decode', speedupRatio)], transfer, {
    onToken: (seq, _t, atMs) => {
      const o = out[seq.key];
      if (o.tokens === 0) o.firstTokenMs = atMs - TRACE[seq.key].at;
      o.lastTokenMs = atMs - TRACE[seq.key].at;
      o.tokens++;
    },
  });
  TRACE.forEach((r, key) => driver.schedule(r.at, { key, promptLength: r.prompt.length, promptTokens: r.prompt, maxTokens: r.maxTokens }));
  driver.run();
  return out;
}

describe('live pair vs disaggregated replay', () => {
  const cases: Array<[string, KvTransferSettings, number]> = [
    ['1 MB/token at 1 GB/s, full prompt', { bandwidthGBps: 1, bytesPerToken: 1_000_000, timingMode: 'full_prompt' }, 1],
    ['destination_missing with shared prefixes', { bandwidthGBps: 1, bytesPerToken: 1_000_000, timingMode: 'destination_missing' }, 1],
    ['speedup 10 (the transfer is not sped up)', { bandwidthGBps: 2, bytesPerToken: 3_000_000, timingMode: 'full_prompt' }, 10],
    ['no transfer delay', { bandwidthGBps: 0, bytesPerToken: 1_000_000, timingMode: 'full_prompt' }, 1],
  ];
  for (const [name, transfer, speedup] of cases) {
    it(`gives the same TTFT and last-token times per request: ${name}`, async () => {
      const l = await live(transfer, speedup);
      const r = replay(transfer, speedup);
      expect(l.map((t) => t.tokens)).toEqual(TRACE.map((t) => t.maxTokens));
      expect(r.map((t) => t.tokens)).toEqual(TRACE.map((t) => t.maxTokens));
      for (let i = 0; i < TRACE.length; i++) {
        expect(l[i].firstTokenMs).toBeCloseTo(r[i].firstTokenMs, 6);
        expect(l[i].lastTokenMs).toBeCloseTo(r[i].lastTokenMs, 6);
      }
      // The transfer is part of every TTFT: at least prompt × bytes / bandwidth when it is on.
      if (transfer.bandwidthGBps > 0 && transfer.timingMode === 'full_prompt') {
        for (let i = 0; i < TRACE.length; i++) expect(r[i].firstTokenMs).toBeGreaterThan((TRACE[i].prompt.length * transfer.bytesPerToken!) / (transfer.bandwidthGBps * 1e6));
      }
    });
  }
});
