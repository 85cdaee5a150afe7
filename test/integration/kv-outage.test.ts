// KV events across a NATS restart (issue 12, item 3): a worker streams a burst of requests that
// store many blocks while nats-server is stopped for ~2 s and started again on the same port with the
// same JetStream store. Afterwards the router's view must hold exactly the blocks of every completed
// request (the pool is large enough that nothing is evicted). 0.6.1: a reader replays the whole
// JetStream stream into a RouterIndex (none lost, none stored twice, every parent known). 1.4 on core
// NATS: a live-only router model applies what its subscription received.
import { connect, type NatsConnection } from 'nats';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { natsLink } from '../../src/adapters/nats-link.js';
import { DynamoClient, type StreamHandle } from '../../src/client/dynamo-client.js';
import type { KvEvent } from '../../src/core/types.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { RouterIndex } from '../helpers/core-fixtures.js';
import { routerEventData } from '../helpers/router-events.js';
import { seqHashes } from '../helpers/reference-hash.js';
import { RouterSubscriber, fileRecords, type SeenRouterEvent } from '../helpers/router-subscriber.js';
import { haveServers, useCluster, waitFor, type NatsHandle } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess } from '../helpers/worker-process.js';

const enabled = haveServers();
const BS = 4;
const PROMPT = 64;
/** Prompt + output is a multiple of the block size: the last block is full but its last token is never computed. */
const MAX_TOKENS = 300;
const REQUESTS = 24;
const OUTAGE_MS = 2000;


function decode(raw: string): KvEvent {
  const j = parseJson(raw) as Record<string, any>;
  return { eventId: Number(j.event.event_id), dpRank: j.event.dp_rank, data: routerEventData(j.event.data) };
}

/** Everything the stream holds now, from its first message, as a router consumer reads it. */
async function readStream(nc: NatsConnection, stream: string): Promise<KvEvent[]> {
  const last = (await (await nc.jetstreamManager()).streams.info(stream)).state.last_seq;
  const events: KvEvent[] = [];
  if (last === 0) return events;
  const messages = await (await nc.jetstream().consumers.get(stream)).consume();
  const text = new TextDecoder();
  for await (const m of messages) {
    events.push(decode(text.decode(m.data)));
    if (m.seq >= last) break;
  }
  return events;
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

/**
 * REQUESTS concurrent requests (distinct prompts from `base`), then, once decoding is under way (each
 * request stores a block every 4 tokens), a NATS outage of OUTAGE_MS. `finished()` waits for every
 * request and gives the blocks they must have stored: each one's full blocks (the last token's KV is
 * never computed) and how many tokens streamed during the outage.
 */
async function burstThroughOutage(nats: NatsHandle, base: number, send: (tokenIds: number[]) => Promise<StreamHandle>) {
  const prompts = Array.from({ length: REQUESTS }, (_, i) => range(base + i * 1000, PROMPT));
  const tokensAt: number[] = [];
  const handles = await Promise.all(prompts.map(send));
  for (const h of handles) h.stream.onToken(() => tokensAt.push(performance.now()));
  await waitFor(() => tokensAt.length >= REQUESTS * 20, { message: 'decoding under way' });
  const haltedAt = performance.now();
  await nats.halt();
  await sleep(OUTAGE_MS);
  await nats.resume();
  const resumedAt = performance.now();
  return {
    resumedAt,
    async finished() {
      const results = await Promise.all(handles.map((h) => h.stream.done));
      const expected = new Set<bigint>();
      for (const [i, r] of results.entries()) {
        expect(r.tokenIds).toHaveLength(MAX_TOKENS);
        const full = [...prompts[i], ...r.tokenIds];
        for (const hash of seqHashes(full.slice(0, Math.floor((full.length - 1) / BS) * BS), BS)) expected.add(hash);
      }
      return { expected, outageTokens: tokensAt.filter((t) => t >= haltedAt && t <= resumedAt).length };
    },
  };
}

describe.skipIf(!enabled)('KV events across a NATS restart (0.6.1, JetStream)', () => {
  const cluster = useCluster();

  /**
   * Runs the burst with NATS down for OUTAGE_MS in the middle; returns the figures and the events the
   * stream holds once it has caught up with the worker's cache.
   */
  async function burstThroughRestart(ns: string, env: Record<string, string> = {}) {
    const w = await startWorkerProcess(
      ['--model-path', TINY_MODEL, '--block-size', String(BS), '--speedup-ratio', '1', '--max-num-seqs', String(REQUESTS), '--num-gpu-blocks-override', '65536'],
      { ...cluster.env, DYN_NAMESPACE: ns, ...env },
    );
    const stream = `namespace-${ns}-component-backend-kv-events`;
    const ep = { namespace: ns, component: 'backend', endpoint: 'generate' };
    const client = await DynamoClient.connect({ env: cluster.env });
    const [inst] = await client.waitForInstances(ep, 1);
    const clientLink = natsLink(client.nats);
    // A router's view: its own connection, reconnecting at once, counting load events.
    const router = await connect({ servers: `127.0.0.1:${cluster.nats.port}`, reconnectTimeWait: 50, maxReconnectAttempts: -1 });
    const loadsAt: number[] = [];
    router.subscribe(`namespace.${ns}.kv_metrics`, { callback: () => loadsAt.push(performance.now()) });
    await router.flush();

    const burst = await burstThroughOutage(cluster.nats, 10_000, (tokenIds) => client.generate(inst.subject, { tokenIds, maxTokens: MAX_TOKENS }));
    const { resumedAt } = burst;

    // Time to serve again: the first request that completes after NATS is back.
    let servedAt = 0;
    const probes: number[][] = [];
    for (let attempt = 0; servedAt === 0; attempt++) {
      // A request sent while the client itself is still reconnecting would be dropped by nats.js.
      await waitFor(() => clientLink.connected, { timeoutMs: 15_000, message: 'the client reconnected' });
      try {
        probes.push(range(900_000 + attempt * 100, 8));
        const h = await client.generate(inst.subject, { tokenIds: probes[attempt], maxTokens: 1 });
        await h.stream.done;
        servedAt = performance.now();
      } catch (err) {
        if (performance.now() - resumedAt > 15_000) throw err;
        await sleep(10);
      }
    }
    const { outageTokens, expected } = await burst.finished();
    let converged = 0;
    let events: KvEvent[] = [];
    let index = new RouterIndex();
    let missing: bigint[] = [];
    const deadline = performance.now() + 15_000;
    for (;;) {
      events = await readStream(router, stream);
      index = new RouterIndex({ gapBeforeCleared: true }).applyEvents(events);
      missing = [...expected].filter((h) => !index.has(h));
      if (missing.length === 0) {
        converged = performance.now();
        break;
      }
      if (performance.now() > deadline) break;
      await sleep(50);
    }
    // Beyond those, only the blocks of probe requests (an attempt that timed out may still have run).
    const probeBlocks = new Set(probes.flatMap((p) => seqHashes(p, BS)));
    const extra = index.hashes().filter((h) => !expected.has(h) && !probeBlocks.has(h));
    const figures = {
      blocks: expected.size,
      lost: missing.length,
      unexpectedBlocks: extra.length,
      outageTokens,
      serveAgainMs: Math.round(servedAt - resumedAt),
      kvConvergedMs: converged ? Math.round(converged - resumedAt) : null,
      firstLoadAfterResumeMs: loadsAt.some((t) => t >= resumedAt) ? Math.round(loadsAt.find((t) => t >= resumedAt)! - resumedAt) : null,
    };
    console.log(`KV outage (${ns}): ${JSON.stringify(figures)}`);
    await client.close();
    await router.close();
    expect(await w.stop()).toBe(0);
    return { figures, events, index, extra, output: w.output() };
  }

  it('a 2 s NATS restart mid-burst loses no KV block; events are republished in order, one log line', async () => {
    const { figures, events, extra, output } = await burstThroughRestart('kvoutage');
    // Events were produced while NATS was down (they are what could have been lost).
    expect(figures.outageTokens).toBeGreaterThan(REQUESTS * 10);
    expect(figures.lost).toBe(0);
    expect(extra).toEqual([]);
    // Nothing overflowed: ids 0, 1, 2, … with no cleared event (a strict index accepts the stream).
    expect(events.some((e) => e.data.kind === 'cleared')).toBe(false);
    expect(() => new RouterIndex().applyEvents(events)).not.toThrow();
    // Load events resume by themselves after the reconnect.
    expect(figures.firstLoadAfterResumeMs).not.toBeNull();
    const lines = output.split('\n').filter((l) => l.includes('KV event'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/JetStream publishing interrupted for \d+\.\d s .*event\(s\) held .* published in order, none lost/);
  });

  it('with an outbox too small for the outage, republishes the cache (cleared, then stores) and the router converges', async () => {
    const { figures, events, extra, output } = await burstThroughRestart('kvoverflow', { DYN_MOCKER_KV_OUTBOX_EVENTS: '50' });
    expect(figures.lost).toBe(0);
    expect(extra).toEqual([]);
    expect(events.some((e) => e.data.kind === 'cleared')).toBe(true);
    const lines = output.split('\n').filter((l) => l.includes('KV event'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/event\(s\) dropped \(outbox full at 50 events\), the cache republished as \d+ event\(s\) \(cleared, then stores\)/);
  });
});

/**
 * A 1.4 KV router's index over a live-only source (dynamo-events-disagg-1x.md §2.7.4): per rank, an
 * event id at or below the last is stale, a gap clears the rank before the event is applied, a
 * `cleared` clears it, and a store under an unknown parent is dropped.
 */
class LiveOnlyRouter {
  readonly blocks = new Map<bigint, bigint | null>();
  private last: bigint | undefined;
  gaps = 0;
  droppedStores = 0;

  apply(e: SeenRouterEvent): void {
    if (this.last !== undefined && e.eventId <= this.last) return;
    if (this.last !== undefined && e.eventId > this.last + 1n) {
      this.gaps++;
      this.blocks.clear();
    }
    this.last = e.eventId;
    const d = e.data;
    if (d.kind === 'cleared') this.blocks.clear();
    else if (d.kind === 'removed') for (const h of d.blockHashes) this.blocks.delete(h);
    else if (d.parentHash !== null && !this.blocks.has(d.parentHash)) this.droppedStores++;
    else {
      let parent = d.parentHash;
      for (const b of d.blocks) {
        this.blocks.set(b.blockHash, parent);
        parent = b.blockHash;
      }
    }
  }
}

describe.skipIf(!enabled)('KV events across a NATS restart (1.4 event plane on core NATS)', () => {
  const cluster = useCluster();

  it('a router that lost events in the outage sees the gap, then the republished cache: it ends with every block', async () => {
    const ns = 'kvoutage14';
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-outage-'));
    const env = { DYN_NAMESPACE: ns, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_EVENT_PLANE: 'nats', NATS_SERVER: cluster.nats.url };
    const w = await startWorkerProcess(
      ['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--block-size', String(BS), '--speedup-ratio', '1', '--max-num-seqs', String(REQUESTS), '--num-gpu-blocks-override', '65536'],
      env,
    );
    const ep = { namespace: ns, component: 'backend', endpoint: 'generate' };
    // Requests go over TCP and discovery is files: only the event plane depends on NATS.
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root, env: {} });
    const [inst] = await client.waitForInstances(ep, 1);
    const routerNc = await connect({ servers: `127.0.0.1:${cluster.nats.port}`, reconnectTimeWait: 50, maxReconnectAttempts: -1 });
    const sub = await RouterSubscriber.connect({ records: fileRecords(root), endpoint: ep, kvPublishers: 1, nats: routerNc });

    const burst = await burstThroughOutage(cluster.nats, 20_000, (tokenIds) => client.generate(inst, { tokenIds, maxTokens: MAX_TOKENS }));
    const { resumedAt } = burst;
    const { outageTokens, expected } = await burst.finished();
    let router = new LiveOnlyRouter();
    let missing: bigint[] = [];
    let converged = 0;
    const deadline = performance.now() + 15_000;
    for (;;) {
      router = new LiveOnlyRouter();
      for (const e of sub.kvEvents) router.apply(e);
      missing = [...expected].filter((h) => !router.blocks.has(h));
      if (missing.length === 0 && router.blocks.size === expected.size) {
        converged = performance.now();
        break;
      }
      if (performance.now() > deadline) break;
      await sleep(50);
    }
    const figures = { blocks: expected.size, lost: missing.length, routerBlocks: router.blocks.size, outageTokens, gapsSeen: router.gaps, kvConvergedMs: converged ? Math.round(converged - resumedAt) : null };
    console.log(`KV outage (1.4, NATS event plane): ${JSON.stringify(figures)}`);
    expect(outageTokens).toBeGreaterThan(REQUESTS * 10);
    expect(figures.lost).toBe(0);
    expect(router.blocks.size).toBe(expected.size);
    // Envelopes were lost while NATS was down: the router saw it as a gap (never as silence), and the
    // worker's cleared event and stores after the reconnect carried on the ids without one.
    expect(router.gaps).toBeGreaterThanOrEqual(1);
    expect(sub.kvEvents.some((e) => e.data.kind === 'cleared')).toBe(true);
    sub.close();
    await client.close();
    await routerNc.close();
    expect(await w.stop()).toBe(0);
    rmSync(root, { recursive: true, force: true });
  });
});
