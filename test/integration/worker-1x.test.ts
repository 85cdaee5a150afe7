// Dynamo 1.4 workers driven only through --dynamo-version 1.4 and Dynamo's environment variables:
// etcd + TCP, etcd + NATS and file + TCP (which needs no server at all).
import { createBLAKE3 } from 'hash-wasm';
import { existsSync, mkdtempSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, preprocessedRequestJson1x, type Instance } from '../../src/client/dynamo-client.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { encodeTcpRequest, encodeTcpRequestV08 } from '../../src/dynamo/tcp-request-codec.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { freePort, haveServers, useCluster, waitFor } from '../helpers/servers.js';
import { stopAndKill, tenRequestsThreeSlots } from '../helpers/scenarios.js';
import { MODULE_TRACE, TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

type Combo = { discovery: 'etcd' | 'file'; plane: 'tcp' | 'nats' };
const EP = (namespace: string) => ({ namespace, component: 'backend', endpoint: 'generate' });

/** Addresses where nothing listens: a worker that needs no NATS or etcd never notices them. */
async function deadServers(): Promise<Record<string, string>> {
  const [a, b] = await Promise.all([freePort(), freePort()]);
  return { NATS_SERVER: `nats://127.0.0.1:${a}`, ETCD_ENDPOINTS: `http://127.0.0.1:${b}` };
}

interface Started {
  w: WorkerProcess;
  client: DynamoClient;
  inst: Instance;
  ns: string;
  root: string | null;
}

/** A 1.4 worker on `combo`, configured by Dynamo's variables, and a frontend-side client that found it. */
async function start(combo: Combo, ns: string, serverEnv: Record<string, string>, args: string[] = [], env: Record<string, string> = {}, clientEnv: Record<string, string> = {}): Promise<Started> {
  const root = combo.discovery === 'file' ? mkdtempSync(join(tmpdir(), 'dyn-kv-')) : null;
  const planeEnv = { DYN_NAMESPACE: ns, DYN_DISCOVERY_BACKEND: combo.discovery, DYN_REQUEST_PLANE: combo.plane, ...(root ? { DYN_FILE_KV: root } : {}) };
  const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4', ...args], { ...serverEnv, ...planeEnv, ...env });
  // The frontend side gets only what its own configuration needs.
  const frontendEnv = {
    ...(combo.discovery === 'etcd' ? { ETCD_ENDPOINTS: serverEnv.ETCD_ENDPOINTS } : {}),
    ...(combo.plane === 'nats' ? { NATS_SERVER: serverEnv.NATS_SERVER } : {}),
  };
  const client = await DynamoClient.connect({ env: { ...frontendEnv, ...clientEnv }, discovery: combo.discovery, fileRoot: root ?? undefined });
  const [inst] = await client.waitForInstances(EP(ns), 1);
  return { w, client, inst, ns, root };
}

async function finish(s: Started): Promise<void> {
  await s.client.close();
  expect(await s.w.stop()).toBe(0);
}

async function blake3(bytes: Uint8Array): Promise<string> {
  const h = await createBLAKE3();
  h.init();
  h.update(bytes);
  return `blake3:${h.digest('hex')}`;
}

const prompt = (n: number, base = 0) => Array.from({ length: n }, (_, i) => (base + i) % 1900 + 10);

/** The checks every combination must pass. */
function behaviour(combo: Combo, serverEnv: () => Record<string, string>, records: (s: Started) => Promise<{ endpoint: string; model: string; order?: 'model-first' }>, gone: (s: Started) => Promise<boolean>) {
  const tag = `${combo.discovery}-${combo.plane}`;

  it('writes exact tagged records on one instance id, the card as 1.4 writes it, and removes them on SIGTERM', async () => {
    const s = await start(combo, `rec-${tag}`, serverEnv(), ['--block-size', '16', '--max-num-seqs', '7']);
    const id = s.inst.instanceId;
    const hex = id.toString(16);
    const { endpoint, model, order } = await records(s);
    if (order) expect(order).toBe('model-first');
    const transport =
      combo.plane === 'tcp'
        ? `{"tcp":"${/"tcp":"(127\.0\.0\.1:\d+)\//.exec(endpoint)?.[1]}/${hex}/generate"}`
        : `{"nats_tcp":"${s.ns}_backend.generate-${hex}"}`;
    expect(endpoint).toBe(
      `{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"${s.ns}","instance_id":${id},"transport":${transport},"device_type":"cuda"}`,
    );
    expect(model.startsWith(`{"type":"Model","namespace":"${s.ns}","component":"backend","endpoint":"generate","instance_id":${id},"card_json":{`)).toBe(true);
    const card = (parseJson(model) as { card_json: Record<string, unknown> }).card_json as Record<string, any>;
    expect(Object.keys(card)).toEqual([
      'display_name', 'slug', 'source_path', 'model_info', 'tokenizer', 'prompt_formatter', 'gen_config',
      'architectural_max_context_length', 'context_length', 'kv_cache_block_size', 'migration_limit', 'model_type',
      'model_input', 'worker_type', 'needs', 'runtime_config', 'media_decoder', 'media_fetcher',
    ]);
    expect(card).toMatchObject({ source_path: TINY_MODEL, architectural_max_context_length: 4096, context_length: 4096, kv_cache_block_size: 16, worker_type: 'aggregated', needs: [] });
    expect(card.runtime_config).toMatchObject({ context_length: 4096, max_num_seqs: 7, enable_local_indexer: false, data_parallel_size: 1 });
    // Card files are served by the worker's system server, as a 1.4 worker does with DYN_SYSTEM_PORT set;
    // a frontend downloads each one and checks its BLAKE3 and size.
    for (const [slot, name] of [['model_info', 'hf_config_json'], ['tokenizer', 'hf_tokenizer_json'], ['prompt_formatter', 'hf_tokenizer_config_json'], ['gen_config', 'hf_generation_config_json']]) {
      const f = card[slot][name] as { path: string; checksum: string; size: number };
      expect(f.path).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${s.w.statusPort}/v1/metadata/${s.ns}/backend/generate/${card.slug}/_base/[a-z_]+\\.json$`));
      const res = await fetch(f.path);
      expect(res.status).toBe(200);
      const bytes = new Uint8Array(await res.arrayBuffer());
      expect(bytes.length).toBe(f.size);
      expect(await blake3(bytes)).toBe(f.checksum);
      expect(Buffer.from(bytes).equals(readFileSync(join(TINY_MODEL, f.path.split('/').at(-1)!)))).toBe(true);
    }
    expect(await s.w.get('/metadata')).toEqual({ status: 404, body: 'Discovery metadata not available' });
    await finish(s);
    expect(await gone(s)).toBe(true);
  });

  it('streams exactly max_tokens tokens with complete_final and the sentinel; honours routing.dp_rank', async () => {
    const s = await start(combo, `gen-${tag}`, serverEnv(), ['--speedup-ratio', '0', '--data-parallel-size', '2']);
    const r = await (await s.client.generate(s.inst, { tokenIds: prompt(50), maxTokens: 300, stopTokenIdsHidden: [7, 8], eosTokenIds: [9] })).stream.done;
    expect(r).toMatchObject({ prologueError: null, finishReason: 'length', completeFinal: true, sentinel: true });
    expect(r.tokenIds).toHaveLength(300);
    expect(r.tokenIds.every((t) => t >= 0 && t < 2048 && ![2, 3, 7, 8, 9].includes(t))).toBe(true);
    const bad = await (await s.client.generate(s.inst, { tokenIds: [1, 2], maxTokens: 2, dpRank: 5 })).stream.done;
    expect(bad.prologueError).toMatch(/dp_rank 5 is out of range/);
    await (await s.client.generate(s.inst, { tokenIds: [1, 2], maxTokens: 2, dpRank: 1 })).stream.done;
    expect(await s.w.metric('vllm:e2e_request_latency_seconds_count{model_name="' + TINY_MODEL + '",engine="1"')).toBe(1);
    await finish(s);
  });

  it('stop and kill end the stream at once without the sentinel (1.x rule) and free the KV blocks', async () => {
    const s = await start(combo, `cancel-${tag}`, serverEnv(), ['--block-size', '16']);
    await stopAndKill(s.w, () => s.client.generate(s.inst, { tokenIds: prompt(64), maxTokens: 2000 }), false);
    await finish(s);
  });

  it('with --max-num-seqs 3 and 10 concurrent clients: 10 in flight, 7 without a first token, then all complete', async () => {
    const s = await start(combo, `q-${tag}`, serverEnv(), ['--max-num-seqs', '3']);
    await tenRequestsThreeSlots(s.w, (i) => s.client.generate(s.inst, { tokenIds: prompt(32, 100 + 32 * i), maxTokens: 40 }));
    await finish(s);
  });

  it('SIGTERM lets a running stream finish, then deregisters', async () => {
    const s = await start(combo, `drain-${tag}`, serverEnv(), ['--max-num-seqs', '1']);
    const h = await s.client.generate(s.inst, { tokenIds: [1, 2, 3], maxTokens: 120 });
    await waitFor(() => h.stream.tokens.length > 0, { timeoutMs: 5000 });
    s.w.proc.kill('SIGTERM');
    await waitFor(async () => (await s.w.get('/health').catch(() => ({ status: 0 }))).status !== 200, { timeoutMs: 3000, message: 'draining' });
    const r = await h.stream.done;
    expect(r.tokenIds).toHaveLength(120);
    expect(r.completeFinal).toBe(true);
    expect(await s.w.exited).toBe(0);
    expect(await gone(s)).toBe(true);
    await s.client.close();
  });
}

describe('Dynamo 1.4, file discovery + TCP: no NATS, no etcd', () => {
  const combo: Combo = { discovery: 'file', plane: 'tcp' };
  let dead: Record<string, string>;
  beforeAll(async () => {
    dead = await deadServers();
  });
  const fileOf = (s: Started, bucket: string) => join(s.root!, 'v1', bucket, `${s.ns.replace(/-/g, '%2D')}%2Fbackend%2Fgenerate%2F${s.inst.instanceId.toString(16)}`);
  behaviour(
    combo,
    () => dead,
    async (s) => ({ endpoint: readFileSync(fileOf(s, 'instances'), 'utf8'), model: readFileSync(fileOf(s, 'mdc'), 'utf8') }),
    async (s) => !existsSync(fileOf(s, 'instances')) && !existsSync(fileOf(s, 'mdc')) && readdirSync(join(s.root!, 'v1', 'instances')).length === 0,
  );

  it('loads neither the etcd nor the NATS client (nor prom-client without a status server)', async () => {
    const trace = join(mkdtempSync(join(tmpdir(), 'trace-')), 'modules.txt');
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4'], { ...dead, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_SYSTEM_PORT: '-1', MODULE_TRACE_FILE: trace }, { expectServing: false, nodeArgs: ['--import', MODULE_TRACE] });
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const [inst] = await client.waitForInstances(EP('dynamo'), 1);
    expect((await (await client.generate(inst, { tokenIds: [1, 2, 3], maxTokens: 5 })).stream.done).tokenIds).toHaveLength(5);
    await client.close();
    expect(await w.stop()).toBe(0);
    const loaded = readFileSync(trace, 'utf8');
    expect(loaded).toContain('/dist/worker.js');
    expect(loaded).toContain('/dist/adapters/tcp-request-plane.js');
    for (const lib of ['/node_modules/etcd3/', '/node_modules/nats/', '/node_modules/@grpc/', '/node_modules/prom-client/']) expect(loaded).not.toContain(lib);
  });

  it('shares one TCP listener between --num-workers workers, each routed by its own key', async () => {
    const s = await start(combo, 'many', dead, ['--num-workers', '3', '--speedup-ratio', '0']);
    const all = await s.client.waitForInstances(EP('many'), 3);
    const addresses = new Set(all.map((i) => (i.transport.kind === 'tcp' ? i.transport.address : '')));
    expect(addresses.size).toBe(1);
    expect(all.map((i) => (i.transport.kind === 'tcp' ? i.transport.path : ''))).toEqual(all.map((i) => `${i.instanceId.toString(16)}/generate`));
    for (const inst of all) expect((await (await s.client.generate(inst, { tokenIds: [4, 5], maxTokens: 3 })).stream.done).tokenIds).toHaveLength(3);
    expect(await s.w.metric('dynamo_component_requests_total')).toBe(3);
    await finish(s);
  });

  it('pipelines many requests on one connection, and spreads them over a pool of connections', async () => {
    const s = await start(combo, 'pipe', dead, ['--speedup-ratio', '0']);
    if (s.inst.transport.kind !== 'tcp') throw new Error('expected a TCP instance');
    const one = await Promise.all(Array.from({ length: 40 }, (_, i) => s.client.generate(s.inst, { tokenIds: prompt(8, i), maxTokens: 10 })));
    expect(s.client.tcp.connections(s.inst.transport.address)).toBe(1);
    expect((await Promise.all(one.map((h) => h.stream.done))).every((r) => r.tokenIds.length === 10)).toBe(true);
    // Dynamo's frontend opens another connection only once every one has DYN_TCP_CHANNEL_BUFFER requests unanswered.
    const pooled = await DynamoClient.connect({ discovery: 'file', fileRoot: s.root!, env: { DYN_TCP_POOL_SIZE: '8', DYN_TCP_CHANNEL_BUFFER: '4' } });
    const many = await Promise.all(Array.from({ length: 40 }, (_, i) => pooled.generate(s.inst, { tokenIds: prompt(8, i), maxTokens: 10 })));
    expect(pooled.tcp.connections(s.inst.transport.address)).toBeGreaterThan(1);
    expect((await Promise.all(many.map((h) => h.stream.done))).every((r) => r.tokenIds.length === 10)).toBe(true);
    await pooled.close();
    expect(await s.w.metric('dynamo_component_requests_total')).toBe(80);
    await finish(s);
  });

  it('answers malformed input with clear errors where the protocol allows, counts it, and keeps serving', async () => {
    const s = await start(combo, 'bad', dead, [], { DYN_TCP_MAX_MESSAGE_SIZE: '8192' });
    if (s.inst.transport.kind !== 'tcp') throw new Error('expected a TCP instance');
    const { address, path } = s.inst.transport;
    const xxh = s.client.xxh;
    const errors = async (type: string, worker = s.inst.instanceId.toString(16)) =>
      (await s.w.get('/metrics')).body
        .split('\n')
        .filter((l) => l.startsWith('dynamo_component_errors_total') && l.includes(`error_type="${type}"`) && l.includes(`worker_id="${worker}"`))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    // 1. Not a TwoPart message: ACKed (empty), counted, nothing else is possible.
    expect((await s.client.sendRaw(s.inst, new TextEncoder().encode('garbage'))).length).toBe(0);
    await waitFor(async () => (await errors('invalid_message')) === 1, { timeoutMs: 3000 });
    // 2. A bad body: the reason on the request's stream.
    {
      const { stream, controlJson } = s.client.prepareStream(undefined, 'json');
      expect((await s.client.sendRaw(s.inst, encodeTwoPartText(controlJson, '{"token_ids":', xxh))).length).toBe(0);
      expect((await stream.done).prologueError).toMatch(/invalid request body/);
    }
    // 3. An unknown endpoint path: ACKed, refused on its stream, counted for no worker.
    {
      const { stream, controlJson } = s.client.prepareStream(undefined, 'json');
      const body = encodeTwoPartText(controlJson, preprocessedRequestJson1x({ tokenIds: [1], maxTokens: 1 }), xxh);
      expect((await s.client.tcp.send(address, 'ffff/generate', {}, body)).length).toBe(0);
      expect((await stream.done).prologueError).toBe('unknown endpoint "ffff/generate"');
      expect(await errors('generate', '')).toBe(1);
    }
    // 4. Headers that are not JSON are ignored (as Dynamo does), and a 0.8 frame without headers is served.
    {
      const { stream, controlJson } = s.client.prepareStream(undefined, 'json');
      const body = encodeTwoPartText(controlJson, preprocessedRequestJson1x({ tokenIds: [1, 2], maxTokens: 3 }), xxh);
      const f = encodeTcpRequest(path, { h: 'x' }, body);
      f[2 + path.length + 2 + 1] = 0x20; // {"h":"x"} → { h":"x"}
      expect((await s.client.tcp.sendFrame(address, f)).length).toBe(0);
      expect((await stream.done).tokenIds).toHaveLength(3);
      const second = s.client.prepareStream(undefined, 'json');
      const old = encodeTcpRequestV08(path, encodeTwoPartText(second.controlJson, preprocessedRequestJson1x({ tokenIds: [1, 2], maxTokens: 2 }), xxh));
      expect((await s.client.tcp.sendFrame(address, old)).length).toBe(0);
      expect((await second.stream.done).tokenIds).toHaveLength(2);
    }
    // 5. A frame over DYN_TCP_MAX_MESSAGE_SIZE: that connection closes (the request fails at once), counted.
    await expect(s.client.generate(s.inst, { tokenIds: prompt(3000), maxTokens: 1 })).rejects.toThrow(/closed before the worker replied/);
    await waitFor(async () => (await errors('invalid_message', '')) === 1, { timeoutMs: 3000 });
    // Still serving, nothing leaked.
    expect((await (await s.client.generate(s.inst, { tokenIds: [5, 6, 7], maxTokens: 4 })).stream.done).tokenIds).toHaveLength(4);
    await waitFor(async () => (await s.w.metric('dynamo_component_inflight_requests')) === 0, { timeoutMs: 3000 });
    expect(await s.w.metric('dynamo_component_kvstats_active_blocks')).toBe(0);
    await finish(s);
  });

  it('keeps local card paths with DYN_SELF_HOST_METADATA=0, and the records alive past the TTL', async () => {
    const s = await start(combo, 'local', dead, [], { DYN_SELF_HOST_METADATA: '0' });
    const model = readFileSync(fileOf(s, 'mdc'), 'utf8');
    const card = (parseJson(model) as { card_json: Record<string, any> }).card_json;
    expect(card.model_info.hf_config_json.path).toBe(join(TINY_MODEL, 'config.json'));
    // Older than the TTL would mean expired to every reader: the worker keeps touching it.
    const written = statSync(fileOf(s, 'instances')).mtimeMs;
    await waitFor(() => statSync(fileOf(s, 'instances')).mtimeMs > written, { timeoutMs: 5000, message: 'mtime refreshed within ttl/3' });
    await finish(s);
  });

  it('stops at once, exit 0, when SIGTERM arrives while it is still starting', async () => {
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--startup-time', '60'], { ...dead, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root }, { expectServing: false });
    // The status server answers (not ready) while the engine "loads".
    await waitFor(async () => (await w.get('/health').catch(() => ({ status: 0 }))).status === 503, { message: 'start-up under way' });
    const t0 = performance.now();
    expect(await w.stop()).toBe(0);
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(existsSync(join(root, 'v1', 'instances')) ? readdirSync(join(root, 'v1', 'instances')) : []).toEqual([]);
  });

  it('refuses combinations a 0.6.x generation cannot do, naming the setting', async () => {
    const w = await startWorkerProcess(['--model-path', TINY_MODEL], { ...dead, DYN_REQUEST_PLANE: 'tcp' }, { expectServing: false });
    expect(await w.exited).toBe(2);
    expect(w.output()).toMatch(/DYN_REQUEST_PLANE: 'tcp' is not spoken by --dynamo-version 0\.6\.1/);
  });
});

const enabled = haveServers();

describe.skipIf(!enabled)('Dynamo 1.4 over etcd', () => {
  const cluster = useCluster();
  let observer: Etcd3;
  beforeAll(() => {
    observer = new Etcd3({ hosts: cluster.etcd.url });
  });
  afterAll(() => observer?.close());

  const etcdRecords = async (s: Started) => {
    const hex = s.inst.instanceId.toString(16);
    const [endpoint, model] = await Promise.all(
      [`v1/instances/${s.ns}/backend/generate/${hex}`, `v1/mdc/${s.ns}/backend/generate/${hex}`].map(async (k) => (await observer.get(k).exec()).kvs[0]),
    );
    for (const kv of [endpoint, model]) expect(BigInt(kv.lease)).toBe(s.inst.instanceId);
    return {
      endpoint: endpoint.value.toString(),
      model: model.value.toString(),
      order: BigInt(model.create_revision) < BigInt(endpoint.create_revision) ? ('model-first' as const) : undefined,
    };
  };
  const etcdGone = async (s: Started) => (await observer.getAll().prefix(`v1/instances/${s.ns}/`).keys()).length === 0 && (await observer.getAll().prefix(`v1/mdc/${s.ns}/`).keys()).length === 0;

  describe('etcd + TCP (no NATS needed)', () => {
    const env = () => ({ ETCD_ENDPOINTS: cluster.etcd.url, NATS_SERVER: 'nats://127.0.0.1:1' });
    behaviour({ discovery: 'etcd', plane: 'tcp' }, env, etcdRecords, etcdGone);
  });

  describe('etcd + NATS', () => {
    const env = () => cluster.env;
    behaviour({ discovery: 'etcd', plane: 'nats' }, env, etcdRecords, etcdGone);

    it('serves as a NATS micro service reporting 1.4.2, on the subject the record advertises', async () => {
      const s = await start({ discovery: 'etcd', plane: 'nats' }, 'svc14', cluster.env);
      const hex = s.inst.instanceId.toString(16);
      expect(s.inst.transport).toEqual({ kind: 'nats', subject: `svc14_backend.generate-${hex}` });
      const info = JSON.parse(new TextDecoder().decode((await s.client.nats.request('$SRV.INFO.svc14_backend', new Uint8Array(0), { timeout: 2000 })).data));
      expect(info).toMatchObject({ name: 'svc14_backend', version: '1.4.2', endpoints: [{ name: `generate-${hex}`, subject: `svc14_backend.generate-${hex}`, queue_group: 'q' }] });
      await finish(s);
    });
  });

  it('exits 1 naming the URL when etcd is unreachable, and never waits for NATS it does not need', async () => {
    const port = await new Promise<number>((resolve) => {
      const srv = createServer();
      srv.listen(0, '127.0.0.1', () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => resolve(p));
      });
    });
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--dynamo-version', '1.4'], { ETCD_ENDPOINTS: `http://127.0.0.1:${port}` }, { expectServing: false });
    expect(await w.exited).toBe(1);
    expect(w.output()).toContain(`http://127.0.0.1:${port} (ETCD_ENDPOINTS)`);
    expect(w.output()).not.toContain('NATS_SERVER');
  });
});
