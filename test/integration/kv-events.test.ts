// The worker's KV events as a KV-aware router sees them: read back from the JetStream stream, hashes
// checked against an independent XXH3 (hash-wasm) and replayed into a router-side index.
import type { NatsConnection, Subscription } from 'nats';
import { beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient } from '../../src/client/dynamo-client.js';
import type { KvEvent, KvEventData } from '../../src/core/types.js';
import { routerEventData } from '../helpers/router-events.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { RouterIndex } from '../helpers/core-fixtures.js';
import { seqHashes as refSeqHashes, tokenHashes as refTokenHashes } from '../helpers/reference-hash.js';
import { haveServers, useCluster, waitFor } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const enabled = haveServers();
const BS = 16;

// ---- the reference hash rule (wire §6.2), computed without the project's hashing code ----

const tokenHashes = (tokens: number[], bs = BS) => refTokenHashes(tokens, bs);
const seqHashes = (tokens: number[], bs = BS) => refSeqHashes(tokens, bs);

// ---- what a router reads ----

/** A RouterEvent off the wire, in the core's event shape, with the worker id and the raw JSON. */
interface RouterEvent extends KvEvent {
  workerId: bigint;
  raw: string;
}
type EventData = KvEventData;

const big = (v: unknown): bigint => {
  if (typeof v !== 'bigint' && typeof v !== 'number') throw new Error(`not an integer: ${String(v)}`);
  return BigInt(v);
};

function decodeRouterEvent(raw: string): RouterEvent {
  const j = parseJson(raw) as Record<string, any>;
  expect(Object.keys(j)).toEqual(['worker_id', 'event']);
  expect(Object.keys(j.event)).toEqual(['event_id', 'data', 'dp_rank']);
  const data = routerEventData(j.event.data);
  expect(typeof j.event.event_id).toBe('number');
  return { workerId: big(j.worker_id), eventId: j.event.event_id, dpRank: j.event.dp_rank, data, raw };
}

/** Reads a stream from its first message with an ordered consumer, into `events`. */
async function followStream(nc: NatsConnection, stream: string, events: RouterEvent[]): Promise<() => Promise<void>> {
  await waitFor(async () => (await nc.jetstreamManager()).streams.info(stream).then(() => true, () => false), { message: `stream ${stream}` });
  const consumer = await nc.jetstream().consumers.get(stream);
  const messages = await consumer.consume();
  const dec = new TextDecoder();
  const done = (async () => {
    for await (const m of messages) {
      expect(m.subject).toBe(`${stream}.queue`);
      events.push(decodeRouterEvent(dec.decode(m.data)));
    }
  })();
  return async () => {
    await messages.close();
    await done;
  };
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

/** The expected stored run for `tokens` from block `from` on. */
function storedRun(tokens: number[], from = 0): EventData {
  const seq = seqHashes(tokens);
  const local = tokenHashes(tokens);
  return { kind: 'stored', parentHash: from === 0 ? null : seq[from - 1], blocks: seq.slice(from).map((h, i) => ({ blockHash: h, tokensHash: local[from + i] })) };
}

it('the independent hash rule reproduces the reference test vectors (block size 4, tokens 1..8)', () => {
  expect(tokenHashes(range(1, 8), 4)).toEqual([14643705804678351452n, 16777012769546811212n]);
  expect(seqHashes(range(1, 8), 4)).toEqual([14643705804678351452n, 4945711292740353085n]);
});

describe.skipIf(!enabled)('KV events on the JetStream stream', () => {
  const cluster = useCluster();
  let nc: NatsConnection;
  beforeAll(() => {
    nc = cluster.nc;
  });

  async function worker(ns: string, args: string[], env: Record<string, string> = {}) {
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--block-size', String(BS), '--speedup-ratio', '0', ...args], { ...cluster.env, DYN_NAMESPACE: ns, ...env });
    const client = await DynamoClient.connect({ env: cluster.env });
    const [inst] = await client.waitForInstances({ namespace: ns, component: 'backend', endpoint: 'generate' }, 1);
    return { w, client, inst };
  }

  async function run(client: DynamoClient, subject: string, tokenIds: number[], maxTokens: number, dpRank?: number) {
    const h = await client.generate(subject, { tokenIds, maxTokens, dpRank });
    const r = await h.stream.done;
    expect(r.tokenIds).toHaveLength(maxTokens);
    return r;
  }

  let fenceSeed = 900_000;
  /**
   * Stream order is publish order, so the events of everything that finished before a fence request
   * are exactly the events before the fence's own stored event. Returns those events.
   */
  async function fence(client: DynamoClient, subject: string, events: RouterEvent[], dpRank?: number): Promise<RouterEvent[]> {
    const tokens = range((fenceSeed += 1000), BS);
    const [marker] = seqHashes(tokens);
    await run(client, subject, tokens, 1, dpRank);
    const at = () => events.findIndex((e) => e.data.kind === 'stored' && e.data.blocks.some((b) => b.blockHash === marker));
    await waitFor(() => at() >= 0, { message: 'the fence request\'s stored event' });
    return events.slice(0, at());
  }

  async function finish(w: WorkerProcess, client: DynamoClient) {
    await client.close();
    expect(await w.stop()).toBe(0);
  }

  it('creates the stream as Dynamo does and stores a known prompt under the reference hashes', async () => {
    const { w, client, inst } = await worker('kvhash', []);
    const stream = 'namespace-kvhash-component-backend-kv-events';
    const info = await (await nc.jetstreamManager()).streams.info(stream);
    expect(info.config.subjects).toEqual([`${stream}.*`]);
    expect(info.config.max_age).toBe(3600 * 1e9);

    const events: RouterEvent[] = [];
    const stop = await followStream(nc, stream, events);
    // 40 prompt tokens + 5 generated stay below 3 full blocks: exactly the prompt's 2 blocks are stored.
    const prompt = range(1000, 40);
    await run(client, inst.subject, prompt, 5);
    const before = await fence(client, inst.subject, events);
    const seq = seqHashes(prompt);
    const local = tokenHashes(prompt);
    // One pass stored both prompt blocks (one event each or one run; either way in order from the root).
    const stored = before.flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks : []));
    expect(stored).toEqual([
      { blockHash: seq[0], tokensHash: local[0] },
      { blockHash: seq[1], tokensHash: local[1] },
    ]);
    expect(before.every((e) => e.data.kind === 'stored')).toBe(true);
    expect(before[0].data.kind === 'stored' && before[0].data.parentHash).toBeNull();
    expect(events.every((e) => e.workerId === inst.instanceId && e.dpRank === 0)).toBe(true);
    // Exact u64 text on the wire: the worker id and hashes are written digit for digit.
    expect(before[0].raw).toContain(`{"worker_id":${inst.instanceId},"event":{"event_id":`);
    expect(before[0].raw).toContain(`"block_hash":${seq[0]},"tokens_hash":${local[0]}`);

    // Generated tokens fill blocks too: 40 prompt + 10 output tokens complete a third block whose
    // last 8 tokens are the first 8 generated ones, stored under the prompt's second block.
    const prompt2 = range(5000, 40);
    const r = await run(client, inst.subject, prompt2, 10);
    const after = (await fence(client, inst.subject, events)).slice(before.length + 1);
    const full = [...prompt2, ...r.tokenIds];
    // The prompt's two blocks at prefill, then the third when the decode fills it.
    expect(after.map((e) => e.data)).toEqual([storedRun(full.slice(0, 32)), storedRun(full.slice(0, 48), 2)]);
    await stop();
    await finish(w, client);
  });

  it('a shared prefix is a prefix-cache hit: only the new blocks are stored, under the cached parent', async () => {
    const { w, client, inst } = await worker('kvprefix', []);
    const events: RouterEvent[] = [];
    const stop = await followStream(nc, 'namespace-kvprefix-component-backend-kv-events', events);
    const prefix = range(2000, 48); // 3 full blocks
    const a = [...prefix, ...range(3000, 32)];
    const b = [...prefix, ...range(4000, 32)];
    await run(client, inst.subject, a, 4);
    await run(client, inst.subject, b, 4);
    // 80 prompt tokens each, 48 of the second one cached: vLLM counts both in tokens.
    expect(await w.metric('vllm:prefix_cache_queries_total')).toBe(160);
    expect(await w.metric('vllm:prefix_cache_hits_total')).toBe(48);
    const hitRate = await w.metric('dynamo_component_kvstats_gpu_prefix_cache_hit_rate');
    expect(hitRate).toBeGreaterThan(0);
    expect(hitRate).toBeLessThanOrEqual(1);
    const before = await fence(client, inst.subject, events);
    // 5 blocks stored for the first request, then only the 2 new ones of the second under the shared parent.
    expect(before.map((e) => e.data)).toEqual([storedRun(a), storedRun(b, 3)]);
    await stop();
    await finish(w, client);
  });

  it('evicts under pressure: removals name only stored hashes and a router index replays the stream cleanly', async () => {
    // 12 blocks of 16 tokens: each 64-token prompt leaves 4 cached blocks, so the 4th prompt evicts.
    const { w, client, inst } = await worker('kvevict', ['--num-gpu-blocks-override', '12', '--max-num-seqs', '2']);
    const events: RouterEvent[] = [];
    const stop = await followStream(nc, 'namespace-kvevict-component-backend-kv-events', events);
    const prompts = Array.from({ length: 8 }, (_, i) => range(10_000 + i * 1000, 64));
    // Two at a time, plus one prompt that reuses an evicted prefix and one that reuses a cached one.
    for (let i = 0; i < prompts.length; i += 2) {
      await Promise.all([run(client, inst.subject, prompts[i], 3), run(client, inst.subject, prompts[i + 1], 3)]);
    }
    await run(client, inst.subject, [...prompts[0], ...range(50_000, 16)], 3);
    await run(client, inst.subject, [...prompts[7].slice(0, 32), ...range(60_000, 32)], 3);
    const before = await fence(client, inst.subject, events);
    // The shared router-side index throws on an unknown parent, an unknown removed block, a block
    // stored while still live, or a gap in the event ids.
    const index = new RouterIndex();
    const storedEver = new Set<bigint>();
    for (const e of events) {
      if (e.data.kind === 'stored') for (const b of e.data.blocks) storedEver.add(b.blockHash);
      if (e.data.kind === 'removed') for (const h of e.data.blockHashes) expect(storedEver.has(h)).toBe(true);
      index.apply(e);
    }
    expect(index.removedBlocks).toBeGreaterThan(0);
    // The index never holds more than the pool's capacity, and every stored hash was a real block hash.
    expect(index.size()).toBeLessThanOrEqual(12);
    const allExpected = new Set(prompts.flatMap((p) => seqHashes(p)));
    for (const p of [[...prompts[0], ...range(50_000, 16)], [...prompts[7].slice(0, 32), ...range(60_000, 32)]]) for (const h of seqHashes(p)) allExpected.add(h);
    const fenceHashes = events.slice(before.length).flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks.map((b) => b.blockHash) : []));
    for (const h of storedEver) expect(allExpected.has(h) || fenceHashes.includes(h)).toBe(true);
    // Prompt 0 was evicted before it came back: its blocks were stored twice in all, with a removal between.
    const p0 = seqHashes(prompts[0])[0];
    expect(before.filter((e) => e.data.kind === 'stored' && e.data.blocks.some((b) => b.blockHash === p0))).toHaveLength(2);
    expect(before.some((e) => e.data.kind === 'removed' && e.data.blockHashes.includes(p0))).toBe(true);
    await stop();
    await finish(w, client);
  });

  it('tags each DP rank and keeps one index per rank', async () => {
    const { w, client, inst } = await worker('kvdp', ['--data-parallel-size', '2']);
    const events: RouterEvent[] = [];
    const stop = await followStream(nc, 'namespace-kvdp-component-backend-kv-events', events);
    const prompt = range(7000, 32);
    await run(client, inst.subject, prompt, 2, 1);
    await run(client, inst.subject, prompt, 2, 0);
    const before = await fence(client, inst.subject, events, 0);
    expect(before.map((e) => e.dpRank)).toEqual([1, 0]);
    // No sharing across ranks: each rank stores the same blocks from the root.
    for (const e of before) expect(e.data).toEqual(storedRun(prompt));
    const index = new RouterIndex();
    for (const e of before) index.apply(e);
    expect([index.size(0), index.size(1)]).toEqual([2, 2]);
    await stop();
    await finish(w, client);
  });

  it('takes the stream max_age from DYN_NATS_STREAM_MAX_AGE and leaves an existing stream alone', async () => {
    const { w, client } = await worker('kvage', [], { DYN_NATS_STREAM_MAX_AGE: '90' });
    const jsm = await nc.jetstreamManager();
    expect((await jsm.streams.info('namespace-kvage-component-backend-kv-events')).config.max_age).toBe(90 * 1e9);
    await finish(w, client);
    // A router created the stream first, with its own settings: a worker must not change them.
    await jsm.streams.add({ name: 'namespace-kvown-component-backend-kv-events', subjects: ['namespace-kvown-component-backend-kv-events.*'], max_age: 7 * 1e9 });
    const second = await worker('kvown', [], { DYN_NATS_STREAM_MAX_AGE: '90' });
    expect((await jsm.streams.info('namespace-kvown-component-backend-kv-events')).config.max_age).toBe(7 * 1e9);
    await finish(second.w, second.client);
  });

  it('publishes nothing with prefix caching off, as Dynamo', async () => {
    const { w, client, inst } = await worker('kvoff', ['--no-enable-prefix-caching']);
    const stream = 'namespace-kvoff-component-backend-kv-events';
    const seen: string[] = [];
    const sub: Subscription = nc.subscribe(`${stream}.*`, { callback: (_e, m) => seen.push(m.subject) });
    let loadEvents = 0;
    const load = nc.subscribe('namespace.kvoff.kv_metrics', { callback: () => loadEvents++ });
    await nc.flush();
    await run(client, inst.subject, range(100, 64), 20);
    // The worker publishes load events on the same connection after each pass's KV events, so once
    // a load event from after the request has arrived, any KV event would have arrived before it.
    const before = loadEvents;
    await run(client, inst.subject, range(200, 64), 2);
    await waitFor(() => loadEvents > before, { message: 'a load event after the requests' });
    expect(seen).toEqual([]);
    expect(await (await nc.jetstreamManager()).streams.info(stream).then(() => 'exists', () => 'absent')).toBe('absent');
    sub.unsubscribe();
    load.unsubscribe();
    await finish(w, client);
  });
});
