// Dynamo 1.4's event plane as a KV router and a planner read it, on ZMQ and NATS, with file and etcd
// discovery: records, envelopes, bindings, event ids, hashes, removals, ActiveLoad, forward-pass metrics,
// and vLLM's own KV-event stream with its replay socket.
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { Unpackr } from 'msgpackr';
import * as zmq from 'zeromq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, type Instance } from '../../src/client/dynamo-client.js';
import type { KvEvent } from '../../src/core/types.js';
import { RouterIndex } from '../helpers/core-fixtures.js';
import { chain, referenceXxh3, seqHashes, tokenHashes } from '../helpers/reference-hash.js';
import { RouterSubscriber, etcdRecords, fileRecords, type SeenRouterEvent } from '../helpers/router-subscriber.js';
import { freePort, haveServers, useCluster, waitFor, type Cluster } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const BS = 16;
const EP = (namespace: string) => ({ namespace, component: 'backend', endpoint: 'generate' });
type Combo = { discovery: 'file' | 'etcd'; plane: 'zmq' | 'nats' };

interface Started {
  w: WorkerProcess;
  client: DynamoClient;
  inst: Instance;
  sub: RouterSubscriber;
  root: string | null;
  ns: string;
  /** Single-block prompts sent to make sure a late ZMQ subscription is live; their blocks may vanish unseen. */
  probeBlocks: Set<bigint>;
}

let probeSeed = 50_000;

/** A 1.4 worker configured by Dynamo's variables, a frontend client, and a router-side subscriber on its events. */
async function start(combo: Combo, ns: string, args: string[], cluster: Cluster | null, dpSize = 1, kvPublishers = dpSize): Promise<Started> {
  const root = combo.discovery === 'file' ? mkdtempSync(join(tmpdir(), 'dyn-kv-')) : null;
  const env: Record<string, string> = {
    DYN_NAMESPACE: ns,
    DYN_DISCOVERY_BACKEND: combo.discovery,
    DYN_EVENT_PLANE: combo.plane,
    DYN_EVENT_PLANE_HOST: '127.0.0.1',
    ...(root ? { DYN_FILE_KV: root } : { ETCD_ENDPOINTS: cluster!.etcd.url }),
    ...(combo.plane === 'nats' ? { NATS_SERVER: cluster!.nats.url } : {}),
  };
  const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--block-size', String(BS), '--data-parallel-size', String(dpSize), ...args], env);
  const client = await DynamoClient.connect({ discovery: combo.discovery, fileRoot: root ?? undefined, env: root ? {} : { ETCD_ENDPOINTS: cluster!.etcd.url } });
  const [inst] = await client.waitForInstances(EP(ns), 1);
  const sub = await RouterSubscriber.connect({
    records: root ? fileRecords(root) : etcdRecords(client.etcd),
    endpoint: EP(ns),
    kvPublishers,
    nats: combo.plane === 'nats' ? cluster!.nc : undefined,
  });
  return { w, client, inst, sub, root, ns, probeBlocks: new Set() };
}

/** Sends single-block requests to `rank` until the subscriber sees one's stored event (a condition, not a wait). */
async function probe(s: Started, rank: number): Promise<void> {
  const seen = (hash: bigint) => s.sub.kvEvents.some((e) => e.dpRank === rank && e.data.kind === 'stored' && e.data.blocks.some((b) => b.blockHash === hash));
  await waitFor(
    async () => {
      const prompt = Array.from({ length: BS + 1 }, (_, i) => (probeSeed + i) % 1900 + 10);
      probeSeed += BS + 1;
      const [hash] = seqHashes(prompt, BS);
      s.probeBlocks.add(hash);
      await (await s.client.generate(s.inst, { tokenIds: prompt, maxTokens: 1, dpRank: rank })).stream.done;
      return waitFor(() => seen(hash), { timeoutMs: 300 }).then(
        () => true,
        () => false,
      );
    },
    { timeoutMs: 15_000, message: `rank ${rank}: events reach the subscriber` },
  );
}

const asKvEvent = (e: SeenRouterEvent): KvEvent => ({ eventId: Number(e.eventId), dpRank: e.dpRank, data: e.data });

async function finish(s: Started): Promise<void> {
  s.sub.close();
  await s.client.close();
  expect(await s.w.stop()).toBe(0);
}

/** The checks every transport and discovery pair must pass. */
function behaviour(combo: Combo, cluster: () => Cluster | null, records: (s: Started) => Promise<string[]>) {
  const tag = `${combo.discovery}-${combo.plane}`;

  it('publishes bound, contiguous, correctly hashed KV events that replay cleanly into a router index under eviction, preemption and 2 DP ranks', async () => {
    const s = await start(combo, `kv-${tag}`, ['--num-gpu-blocks-override', '48', '--max-num-seqs', '4', '--max-num-batched-tokens', '256', '--speedup-ratio', '0'], cluster(), 2);
    // Records: one channel and one live-only source per DP rank, a kv_metrics and a forward-pass-metrics channel.
    expect(s.sub.channels.map((c) => c.topic).sort()).toEqual(['forward-pass-metrics', 'kv-events', 'kv-events', 'kv_metrics']);
    expect([...s.sub.sources.values()].map((x) => [x.workerId, x.dpRank]).sort((a, b) => Number(a[1]) - Number(b[1]))).toEqual([
      [s.inst.instanceId, 0],
      [s.inst.instanceId, 1],
    ]);
    for (const c of s.sub.channels) expect(c.transport.kind).toBe(combo.plane === 'zmq' ? 'Zmq' : 'Nats');
    expect(await records(s)).toHaveLength(6);
    await probe(s, 0);
    await probe(s, 1);

    // Three prompt families sharing 64-token prefixes, 160-token prompts, 100 tokens out, on both ranks.
    const families = [0, 1, 2].map((f) => Array.from({ length: 64 }, (_, i) => (f * 300 + i) % 1900 + 10));
    const prompts = Array.from({ length: 16 }, (_, i) => [...families[i % 3], ...Array.from({ length: 96 }, (_, j) => (7000 + i * 97 + j) % 1900 + 10)]);
    const results = await Promise.all(prompts.map(async (tokenIds, i) => (await s.client.generate(s.inst, { tokenIds, maxTokens: 100, dpRank: i % 2 })).stream.done));
    expect(results.every((r) => r.tokenIds.length === 100)).toBe(true);
    // A fence per rank: a publisher's events arrive in order, so everything before it has arrived.
    await probe(s, 0);
    await probe(s, 1);

    expect(s.sub.violations).toEqual([]);
    if (combo.plane === 'nats') for (const rank of [0, 1]) expect(s.sub.firstEventId(rank)).toBe(1n);
    expect(s.sub.kvEvents.every((e) => e.storageTier === 'device' && e.workerId === s.inst.instanceId)).toBe(true);
    const index = new RouterIndex({ checkEventIds: false, hasher: referenceXxh3, tolerateUnknownRemoval: (h) => s.probeBlocks.has(h) });
    index.applyEvents(s.sub.kvEvents.map(asKvEvent));
    expect(index.removedBlocks).toBeGreaterThan(0);
    expect(await s.w.metric('vllm:num_preemptions_total')).toBeGreaterThan(0);
    // Tokens hashed as the router hashes them: every family prefix was stored, on the rank it ran on.
    const stored = new Set(s.sub.kvEvents.flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks.map((b) => `${e.dpRank}/${b.blockHash}/${b.tokensHash}`) : [])));
    families.forEach((prefix, f) => {
      const hashes = seqHashes(prefix, BS);
      const locals = tokenHashes(prefix, BS);
      for (let b = 0; b < hashes.length; b++) expect(stored.has(`${f % 2}/${hashes[b]}/${locals[b]}`) || stored.has(`${(f + 1) % 2}/${hashes[b]}/${locals[b]}`)).toBe(true);
    });
    // Coalesced and capped as Dynamo's publisher does.
    for (const e of s.sub.kvEvents) expect(e.data.kind === 'stored' ? e.data.blocks.length : e.data.kind === 'removed' ? e.data.blockHashes.length : 0).toBeLessThanOrEqual(128);
    await finish(s);
    expect(await records(s)).toEqual([]);
  });

  it('reports ActiveLoad per rank and forward-pass metrics per pass as the planner decodes them, with a 1 s idle heartbeat', async () => {
    const s = await start(combo, `load-${tag}`, ['--max-num-seqs', '3'], cluster());
    await probe(s, 0);
    // Load: blocks in use while requests run, none once they are done.
    const handles = await Promise.all(Array.from({ length: 10 }, (_, i) => s.client.generate(s.inst, { tokenIds: Array.from({ length: 40 }, (_, j) => 100 + i * 40 + j), maxTokens: 40 })));
    await waitFor(() => handles.filter((h) => h.stream.tokens.length > 0).length === 3, { timeoutMs: 5000 });
    const from = s.sub.forwardPasses.length;
    await waitFor(() => s.sub.forwardPasses.slice(from).some((m) => m.scheduled_requests.num_decode_requests === 3 && m.queued_requests.num_prefill_requests === 7), {
      timeoutMs: 5000,
      message: 'a pass decoding 3 requests with 7 queued',
    });
    expect(s.sub.loads.some((l) => Number(l.kv_used_blocks) > 0)).toBe(true);
    await Promise.all(handles.map((h) => h.stream.done));
    await waitFor(() => Number(s.sub.loads.at(-1)?.kv_used_blocks) === 0, { timeoutMs: 3000, message: 'ActiveLoad back to 0' });
    expect(await s.w.metric('dynamo_component_kv_active_blocks')).toBe(0);
    for (const l of s.sub.loads) {
      expect(Object.keys(l)).toEqual(['worker_id', 'dp_rank', 'active_decode_blocks', 'active_prefill_tokens', 'kv_used_blocks']);
      expect(l).toMatchObject({ worker_id: s.inst.instanceId, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null });
    }
    // Every message as msgspec's ForwardPassMetrics reads it; counters run 1, 2, 3… per rank.
    const fp = s.sub.forwardPasses;
    fp.forEach((m, i) => {
      expect(m).toMatchObject({ version: 1, worker_id: s.inst.instanceId.toString(), dp_rank: 0 });
      expect(typeof m.wall_time).toBe('number');
      if (i > 0) expect(Number(m.counter_id)).toBe(Number(fp[i - 1].counter_id) + 1);
    });
    const prefill = fp.find((m) => m.scheduled_requests.num_prefill_requests > 0)!;
    expect(prefill.scheduled_requests.sum_prefill_tokens).toBeGreaterThan(0);
    expect(prefill.wall_time).toBeGreaterThan(0);
    // Idle: an all-zero pass about every second.
    const idleFrom = fp.length;
    await waitFor(() => fp.slice(idleFrom).filter((m) => m.wall_time === 0).length >= 2, { timeoutMs: 5000, message: 'two idle heartbeats' });
    const beats = fp.map((m, i) => ({ m, at: s.sub.forwardPassTimes[i] })).slice(idleFrom).filter(({ m }) => m.wall_time === 0);
    expect(beats[0].m.scheduled_requests).toEqual({ num_prefill_requests: 0, sum_prefill_tokens: 0, var_prefill_length: 0, sum_prefill_kv_tokens: 0, num_decode_requests: 0, sum_decode_kv_tokens: 0, var_decode_kv_tokens: 0 });
    expect(Number(beats[1].m.counter_id)).toBe(Number(beats[0].m.counter_id) + 1);
    expect(beats[1].at - beats[0].at).toBeGreaterThan(700);
    await finish(s);
  });
}

describe('1.4 event plane, ZMQ + file discovery (no servers)', () => {
  const recordFiles = async (s: Started) =>
    ['v1/event_channels', 'v1/event_sources'].flatMap((b) => (existsSync(join(s.root!, b)) ? readdirSync(join(s.root!, b)).filter((n) => !n.startsWith('.')) : []));
  behaviour({ discovery: 'file', plane: 'zmq' }, () => null, recordFiles);

  it('with --no-kv-events: no KV publisher or source and a card that says so, while load and forward-pass metrics go on', async () => {
    const s = await start({ discovery: 'file', plane: 'zmq' }, 'nokv', ['--no-kv-events'], null, 2, 0);
    expect(s.sub.channels.map((c) => c.topic).sort()).toEqual(['forward-pass-metrics', 'kv_metrics']);
    expect(s.sub.sources.size).toBe(0);
    const card = JSON.parse(readFileSync(join(s.root!, 'v1', 'mdc', readdirSync(join(s.root!, 'v1', 'mdc'))[0]), 'utf8').replace(/:(\d{16,})/g, ':"$1"')).card_json;
    expect(card.runtime_config.kv_event_publishing_enabled).toBe(false);
    await (await s.client.generate(s.inst, { tokenIds: Array.from({ length: 40 }, (_, i) => i + 10), maxTokens: 5, dpRank: 1 })).stream.done;
    await waitFor(() => s.sub.forwardPasses.some((m) => m.dp_rank === 1 && m.scheduled_requests.num_prefill_requests === 1), { timeoutMs: 5000, message: 'a prefill pass on rank 1' });
    expect(s.sub.kvEvents).toEqual([]);
    await finish(s);
  });

  it("vLLM's own KV-event stream: 3-frame batches live, and a late subscriber recovers them all from the replay socket", async () => {
    const [eventsPort, replayPort] = await Promise.all([freePort(), freePort()]);
    const s = await start({ discovery: 'file', plane: 'zmq' }, 'vllm', ['--zmq-kv-events-ports', String(eventsPort), '--zmq-replay-ports', String(replayPort)], null);
    const prefix = Array.from({ length: 48 }, (_, i) => i + 500);
    const prompts = [0, 1, 2].map((k) => [...prefix, ...Array.from({ length: 40 }, (_, j) => 900 + k * 40 + j)]);
    for (const tokenIds of prompts) await (await s.client.generate(s.inst, { tokenIds, maxTokens: 20 })).stream.done;

    const reader = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });
    const dealer = new zmq.Dealer();
    dealer.connect(`tcp://127.0.0.1:${replayPort}`);
    const start0 = Buffer.alloc(8);
    await dealer.send([Buffer.alloc(0), start0]);
    const batches: Array<{ seq: bigint; payload: any }> = [];
    for (;;) {
      const frames = await dealer.receive();
      expect(frames).toHaveLength(4);
      const [empty, topic, seq, payload] = frames;
      expect([empty.length, topic.length, seq.length]).toEqual([0, 0, 8]);
      if (seq.readBigUInt64BE(0) === 0xffff_ffff_ffff_ffffn) {
        expect(payload.length).toBe(0);
        break;
      }
      batches.push({ seq: seq.readBigUInt64BE(0), payload: reader.unpack(payload) });
    }
    dealer.close();
    expect(batches.map((b) => b.seq)).toEqual(batches.map((_, i) => BigInt(i)));
    // [ts, events, dp_rank]; stored blocks carry their tokens, from which the router's hashes follow.
    const storedHashes: bigint[] = [];
    for (const { payload } of batches) {
      expect(payload).toHaveLength(3);
      const [ts, events, rank] = payload;
      expect(typeof ts).toBe('number');
      expect(rank).toBe(0);
      for (const e of events) {
        if (e.type !== 'BlockStored') {
          expect(e.type).toBe('BlockRemoved');
          continue;
        }
        expect(e.block_size).toBe(BS);
        expect(e.token_ids).toHaveLength(e.block_hashes.length * BS);
        let parent = e.parent_block_hash === null ? null : BigInt(e.parent_block_hash);
        e.block_hashes.forEach((h: bigint | number, b: number) => {
          const local = tokenHashes(e.token_ids.slice(b * BS, (b + 1) * BS), BS)[0];
          expect(BigInt(h)).toBe(chain(parent, local));
          parent = BigInt(h);
          storedHashes.push(parent);
        });
      }
    }
    for (const tokenIds of prompts) for (const h of seqHashes(tokenIds, BS)) expect(storedHashes).toContain(h);
    // The same blocks reached the router on the event plane.
    const planeStored = new Set(s.sub.kvEvents.flatMap((e) => (e.data.kind === 'stored' ? e.data.blocks.map((b) => b.blockHash) : [])));
    for (const h of seqHashes(prompts[2], BS)) expect(planeStored.has(h)).toBe(true);

    // Live: [topic "", seq, payload] from the PUB socket once subscribed.
    const live = new zmq.Subscriber();
    live.connect(`tcp://127.0.0.1:${eventsPort}`);
    live.subscribe();
    let seen: Buffer[] | null = null;
    void (async () => {
      for await (const frames of live) if (!seen) seen = frames;
    })();
    await waitFor(
      async () => {
        await (await s.client.generate(s.inst, { tokenIds: Array.from({ length: BS + 1 }, () => Math.floor(Math.random() * 1900)), maxTokens: 1 })).stream.done;
        return seen !== null;
      },
      { timeoutMs: 10_000, message: 'a live batch' },
    );
    live.close();
    const [topic, seq, payload] = seen!;
    expect([topic.length, seq.length]).toEqual([0, 8]);
    expect(seq.readBigUInt64BE(0)).toBeGreaterThanOrEqual(BigInt(batches.length));
    expect(reader.unpack(payload)).toHaveLength(3);
    await finish(s);
  });
});

const enabled = haveServers();

describe.skipIf(!enabled)('1.4 event plane over etcd', () => {
  const cluster = useCluster();
  let observer: Etcd3;
  beforeAll(() => {
    observer = new Etcd3({ hosts: cluster.etcd.url });
  });
  afterAll(() => observer?.close());

  /** The worker's publisher records, each checked to live on its lease. */
  const etcdRecordKeys = async (s: Started) => {
    const out: string[] = [];
    for (const prefix of [`v1/event_channels/namespace/${s.ns}/`, `v1/event_sources/namespace/${s.ns}/`]) {
      for (const kv of (await observer.getAll().prefix(prefix).exec()).kvs) {
        expect(BigInt(kv.lease)).toBe(s.inst.instanceId);
        out.push(kv.key.toString());
      }
    }
    return out;
  };

  describe('NATS transport', () => behaviour({ discovery: 'etcd', plane: 'nats' }, () => cluster, etcdRecordKeys));
  describe('ZMQ transport', () => behaviour({ discovery: 'etcd', plane: 'zmq' }, () => cluster, etcdRecordKeys));
});
