// Disaggregated prefill/decode pairs on real worker processes: Dynamo 1.4's bootstrap sessions (file + TCP) and 0.6.1's flow (etcd + NATS).
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateDisaggregated } from '../../src/client/disagg-flow.js';
import { DynamoClient, type GenerateRequest, type Instance } from '../../src/client/dynamo-client.js';
import type { StreamResult } from '../../src/client/stream-server.js';
import type { EndpointId } from '../../src/config.js';
import { freePort, haveServers, useCluster, waitFor } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const ep = (namespace: string, component: string): EndpointId => ({ namespace, component, endpoint: 'generate' });
const prompt = (n: number, base = 0): number[] => Array.from({ length: n }, (_, i) => ((base + i) % 1900) + 10);
/** 1 MB per token at 1 GB/s: every prompt token costs 1 ms of transfer (Dynamo's own test figures). */
const TRANSFER = ['--kv-bytes-per-token', '1000000', '--kv-transfer-bandwidth', '1'];

interface Pair {
  prefill: WorkerProcess;
  decode: WorkerProcess;
  client: DynamoClient;
  ns: string;
  prefills: Instance[];
  decodes: Instance[];
}

const pairs: Pair[] = [];
afterAll(async () => {
  for (const p of pairs.splice(0)) {
    await p.client.close();
    await Promise.all([p.prefill.stop(), p.decode.stop()]);
  }
});

/** A 1.4 prefill worker (with bootstrap servers unless `bootstrap` is false) and a decode worker on file discovery + TCP. */
async function pair14(name: string, opts: { workers?: number; bootstrap?: boolean; prefillArgs?: string[]; decodeArgs?: string[] } = {}): Promise<Pair> {
  const root = mkdtempSync(join(tmpdir(), 'dyn-disagg-'));
  const ns = `pd-${name}`;
  const workers = opts.workers ?? 1;
  const env = { DYN_NAMESPACE: ns, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_HTTP_RPC_HOST: '127.0.0.1' };
  const common = ['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--block-size', '16', '--num-workers', String(workers), ...TRANSFER];
  const bootstrap = opts.bootstrap === false ? [] : ['--bootstrap-ports', Array(workers).fill('0').join(',')];
  const [prefill, decode] = await Promise.all([
    startWorkerProcess([...common, '--disaggregation-mode', 'prefill', ...bootstrap, ...(opts.prefillArgs ?? [])], env),
    startWorkerProcess([...common, '--disaggregation-mode', 'decode', ...(opts.decodeArgs ?? [])], env),
  ]);
  const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
  const [prefills, decodes] = await Promise.all([client.waitForInstances(ep(ns, 'prefill'), workers), client.waitForInstances(ep(ns, 'backend'), workers)]);
  const p = { prefill, decode, client, ns, prefills, decodes };
  pairs.push(p);
  return p;
}

function engineData(item: unknown): Record<string, unknown> {
  return ((item as { data?: Record<string, unknown> }).data ?? {}) as Record<string, unknown>;
}

/** The bootstrap session's frames as the prefill stream shows them: the token marked "dummy", then a separate `length` chunk. */
function expectPrefillStream(r: StreamResult): void {
  expect(r.prologueError).toBeNull();
  expect(r.errors).toEqual([]);
  expect(r.items).toHaveLength(2);
  const [token, end] = r.items.map(engineData);
  expect(token.token_ids).toHaveLength(1);
  expect(token.disaggregated_params).toBe('dummy');
  expect(token.finish_reason).toBeNull();
  expect(end.token_ids).toEqual([]);
  expect(end.finish_reason).toBe('length');
  expect(r.completeFinal).toBe(true);
}

describe('Dynamo 1.4 disaggregated pairs (file discovery + TCP)', () => {
  let p: Pair;
  beforeAll(async () => {
    p = await pair14('one');
  });

  it('registers role cards: prefill (worker_type, needs, bootstrap endpoint, KV events) and decode (no KV events)', async () => {
    const prefillCard = (await p.client.card(ep(p.ns, 'prefill'), p.prefills[0].instanceId))!;
    const decodeCard = (await p.client.card(ep(p.ns, 'backend'), p.decodes[0].instanceId))!;
    expect(prefillCard.model_type).toBe('');
    expect(prefillCard.worker_type).toBe('prefill');
    expect(prefillCard.needs).toEqual([['decode']]);
    const prc = prefillCard.runtime_config as Record<string, unknown>;
    expect(prc.kv_event_publishing_enabled).toBe(true);
    const de = prc.disaggregated_endpoint as { bootstrap_host: string; bootstrap_port: number };
    expect(de.bootstrap_host).toBe('127.0.0.1');
    expect(de.bootstrap_port).toBeGreaterThan(0);
    expect(decodeCard.model_type).toBe('Chat | Completions');
    expect(decodeCard.worker_type).toBe('decode');
    expect(decodeCard.needs).toEqual([['prefill']]);
    expect((decodeCard.runtime_config as Record<string, unknown>).kv_event_publishing_enabled).toBe(false);
    expect((decodeCard.runtime_config as Record<string, unknown>).disaggregated_endpoint).toBeUndefined();
    // Dynamo 1.4's prefill workers never bind the vLLM-named series; decode workers have them.
    expect((await p.prefill.get('/metrics')).body).not.toMatch(/^vllm:/m);
    expect((await p.decode.get('/metrics')).body).toMatch(/^vllm:num_requests_running\{/m);
  });

  it("drives the prefill router's bootstrap flow: exactly max_tokens tokens, the first no earlier than prefill plus transfer", async () => {
    const outcomes = await Promise.all(
      [0, 1, 2].map((i) =>
        generateDisaggregated(p.client, { prefillEndpoint: ep(p.ns, 'prefill'), prefill: p.prefills[0], decode: p.decodes[0] }, { tokenIds: prompt(64, i * 100), maxTokens: 7 }),
      ),
    );
    for (const o of outcomes) {
      expect(o.path).toBe('bootstrap');
      expectPrefillStream(o.prefill);
      const d = o.decode!;
      expect(d.prologueError).toBeNull();
      expect(d.errors).toEqual([]);
      expect(d.tokenIds).toHaveLength(7);
      expect(d.finishReason).toBe('length');
      // 64 tokens × 1 MB at 1 GB/s = 64 ms of transfer after the prefill's token.
      expect(o.prefillEndAt! - o.prefillTokenAt!).toBeGreaterThanOrEqual(64);
      expect(d.tokenTimes[0] - o.prefillTokenAt!).toBeGreaterThanOrEqual(64);
    }
    // Every KV block is free again on both sides once the sessions are over.
    await waitFor(async () => (await p.prefill.metric('dynamo_component_kvstats_active_blocks')) === 0);
    await waitFor(async () => (await p.decode.metric('dynamo_component_kvstats_active_blocks')) === 0);
  });

  it('pairs a decode that arrives before its prefill, and one that arrives after', async () => {
    const card = (await p.client.card(ep(p.ns, 'prefill'), p.prefills[0].instanceId))!;
    const de = (card.runtime_config as { disaggregated_endpoint: { bootstrap_host: string; bootstrap_port: number } }).disaggregated_endpoint;
    for (const decodeFirst of [true, false]) {
      const bootstrapInfo = { host: de.bootstrap_host, port: de.bootstrap_port, room: 12345678901234567890n & ((1n << 63n) - 1n), handoffId: randomUUID() };
      const requestId = randomUUID();
      const req: GenerateRequest = { tokenIds: prompt(40, decodeFirst ? 7 : 9), maxTokens: 4, bootstrapInfo };
      const send = (to: 'prefill' | 'decode') =>
        to === 'prefill' ? p.client.generate(p.prefills[0], { ...req, maxTokens: 1 }, { requestId }) : p.client.generate(p.decodes[0], req, { requestId });
      const first = await send(decodeFirst ? 'decode' : 'prefill');
      // The first side has been accepted (a decode has connected to the bootstrap server by then) and waits at the rendezvous.
      expect(await first.stream.prologue).toBeNull();
      const second = await send(decodeFirst ? 'prefill' : 'decode');
      const [a, b] = await Promise.all([first.stream.done, second.stream.done]);
      const [prefill, decode] = decodeFirst ? [b, a] : [a, b];
      expectPrefillStream(prefill);
      expect(decode.errors).toEqual([]);
      expect(decode.tokenIds).toHaveLength(4);
    }
  });

  it('a cancelled decode releases the prefill side, which reports the lost destination', async () => {
    const card = (await p.client.card(ep(p.ns, 'prefill'), p.prefills[0].instanceId))!;
    const de = (card.runtime_config as { disaggregated_endpoint: { bootstrap_host: string; bootstrap_port: number } }).disaggregated_endpoint;
    const bootstrapInfo = { host: de.bootstrap_host, port: de.bootstrap_port, room: 5n, handoffId: randomUUID() };
    const requestId = randomUUID();
    const req: GenerateRequest = { tokenIds: prompt(200, 3), maxTokens: 4, bootstrapInfo };
    const decode = await p.client.generate(p.decodes[0], req, { requestId });
    expect(await decode.stream.prologue).toBeNull();
    const prefill = await p.client.generate(p.prefills[0], { ...req, maxTokens: 1 }, { requestId });
    // Cancel once the prefill has produced its token: its KV is held for the transfer (200 ms).
    await waitFor(() => prefill.stream.tokens.length === 1);
    decode.stream.kill();
    const [pr, dr] = await Promise.all([prefill.stream.done, decode.stream.done]);
    expect(dr.tokenIds).toEqual([]);
    expect(pr.tokenIds).toHaveLength(1);
    expect(pr.errors.join(' ')).toMatch(/destination disconnected|handoff/);
    await waitFor(async () => (await p.prefill.metric('dynamo_component_kvstats_active_blocks')) === 0);
    await waitFor(async () => (await p.decode.metric('dynamo_component_kvstats_active_blocks')) === 0);
  });

  it('refuses a decode whose bootstrap server is unreachable, and handoff metadata without a handoff id', async () => {
    const dead = await freePort();
    const requestId = randomUUID();
    const h = await p.client.generate(p.decodes[0], { tokenIds: prompt(16), maxTokens: 2, bootstrapInfo: { host: '127.0.0.1', port: dead, room: 1n, handoffId: randomUUID() } }, { requestId });
    const r = await h.stream.done;
    expect(r.prologueError).toMatch(/^bootstrap connection failed: /);
    const { stream, controlJson } = p.client.prepareStream(randomUUID(), 'json');
    const body = JSON.stringify({ token_ids: prompt(8), stop_conditions: { max_tokens: 2 }, bootstrap_info: { bootstrap_host: '127.0.0.1', bootstrap_port: dead, bootstrap_room: 1 } });
    const { encodeTwoPartText } = await import('../../src/dynamo/two-part-codec.js');
    const target = p.decodes[0];
    if (target.transport.kind !== 'tcp') throw new Error('expected a TCP instance');
    await p.client.tcp.send(target.transport.address, target.transport.path, {}, encodeTwoPartText(controlJson, body, p.client.xxh));
    expect((await stream.done).prologueError).toBe('disaggregated mocker requires a handoff ID');
  });
});

describe('Dynamo 1.4 without bootstrap, and two of each', () => {
  it('without a bootstrap server: prefill_result flow, the length chunk after the modelled transfer', async () => {
    const p = await pair14('nobootstrap', { bootstrap: false });
    const o = await generateDisaggregated(p.client, { prefillEndpoint: ep(p.ns, 'prefill'), prefill: p.prefills[0], decode: p.decodes[0] }, { tokenIds: prompt(8), maxTokens: 5 });
    expect(o.path).toBe('prefill-result');
    expectPrefillStream(o.prefill);
    // 8 tokens × 1,000,000 B at 1 GB/s = 8.0 ms between the token and the length chunk.
    expect(o.prefillEndAt! - o.prefillTokenAt!).toBeGreaterThanOrEqual(8);
    expect(o.decode!.tokenIds).toHaveLength(5);
    expect(o.decode!.errors).toEqual([]);
  });

  it('--num-workers 2 on each side: every pairing completes its sessions', async () => {
    const p = await pair14('two', { workers: 2 });
    expect(p.prefills).toHaveLength(2);
    expect(p.decodes).toHaveLength(2);
    const ports = await Promise.all(
      p.prefills.map(async (inst) => ((await p.client.card(ep(p.ns, 'prefill'), inst.instanceId))!.runtime_config as { disaggregated_endpoint: { bootstrap_port: number } }).disaggregated_endpoint.bootstrap_port),
    );
    expect(new Set(ports).size).toBe(2);
    const outcomes = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        generateDisaggregated(
          p.client,
          { prefillEndpoint: ep(p.ns, 'prefill'), prefill: p.prefills[i % 2], decode: p.decodes[Math.floor(i / 2)] },
          { tokenIds: prompt(32, i * 50), maxTokens: 3 },
        ),
      ),
    );
    for (const o of outcomes) {
      expect(o.path).toBe('bootstrap');
      expectPrefillStream(o.prefill);
      expect(o.decode!.tokenIds).toHaveLength(3);
    }
  });

  it('a prefill whose destination never connects fails cleanly after the rendezvous timeout', async () => {
    const args = join(mkdtempSync(join(tmpdir(), 'dyn-args-')), 'engine.json');
    writeFileSync(args, JSON.stringify({ handoff_session_timeout_ms: 300 }));
    const p = await pair14('timeout', { prefillArgs: ['--extra-engine-args', args] });
    const card = (await p.client.card(ep(p.ns, 'prefill'), p.prefills[0].instanceId))!;
    const de = (card.runtime_config as { disaggregated_endpoint: { bootstrap_host: string; bootstrap_port: number } }).disaggregated_endpoint;
    const h = await p.client.generate(p.prefills[0], { tokenIds: prompt(16), maxTokens: 1, bootstrapInfo: { host: de.bootstrap_host, port: de.bootstrap_port, room: 2n, handoffId: randomUUID() } });
    const r = await h.stream.done;
    expect(r.tokenIds).toEqual([]);
    expect(r.errors).toEqual(['handoff participant rendezvous timed out']);
    expect(r.completeFinal).toBe(true);
  });

  it('a decode whose prefill worker dies mid-session ends with an error and frees its reservation', async () => {
    const p = await pair14('dead', { prefillArgs: ['--kv-bytes-per-token', '100000000'] });
    const o = generateDisaggregated(p.client, { prefillEndpoint: ep(p.ns, 'prefill'), prefill: p.prefills[0], decode: p.decodes[0] }, { tokenIds: prompt(64), maxTokens: 3 });
    // 64 tokens × 100 MB at 1 GB/s: a 6.4 s transfer, during which the prefill worker is killed.
    await waitFor(async () => ((await p.decode.metric('dynamo_component_kvstats_active_blocks')) ?? 0) > 0);
    p.prefill.proc.kill('SIGKILL');
    const outcome = await o;
    expect(outcome.decode!.errors).toEqual(['destination handoff ended before completion']);
    expect(outcome.decode!.tokenIds).toEqual([]);
    await waitFor(async () => (await p.decode.metric('dynamo_component_kvstats_active_blocks')) === 0);
  });
});

describe.skipIf(!haveServers())('Dynamo 0.6.1 disaggregated pair (etcd + NATS)', () => {
  const cluster = useCluster();

  it('prefill marked Prefill emits its token with disaggregated_params; decode gets them and returns max_tokens tokens', async () => {
    const ns = 'pd-legacy';
    const env = { ...cluster.env, DYN_NAMESPACE: ns };
    const common = ['--model-path', TINY_MODEL, '--block-size', '16', ...TRANSFER];
    const [prefill, decode] = await Promise.all([startWorkerProcess([...common, '--is-prefill-worker'], env), startWorkerProcess([...common, '--disaggregation-mode', 'decode'], env)]);
    const client = await DynamoClient.connect({ env: cluster.env });
    pairs.push({ prefill, decode, client, ns, prefills: [], decodes: [] });
    const [pi] = await client.waitForInstances(ep(ns, 'prefill'), 1);
    const [di] = await client.waitForInstances(ep(ns, 'backend'), 1);
    expect((await client.card(ep(ns, 'prefill'), pi.instanceId))!.model_type).toBe('Prefill');
    expect((await client.card(ep(ns, 'backend'), di.instanceId))!.model_type).toBe('Chat | Completions');
    expect(prefill.output()).toMatch(/--is-prefill-worker is deprecated/);
    const o = await generateDisaggregated(client, { prefillEndpoint: ep(ns, 'prefill'), prefill: pi, decode: di }, { tokenIds: prompt(24), maxTokens: 6 });
    expect(o.path).toBe('legacy');
    expectPrefillStream(o.prefill);
    expect(o.prefill.sentinel).toBe(true);
    expect(o.prefillEndAt! - o.prefillTokenAt!).toBeGreaterThanOrEqual(24);
    expect(o.decode!.tokenIds).toHaveLength(6);
    expect(o.decode!.errors).toEqual([]);
  });
});
