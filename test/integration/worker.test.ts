// The worker against real nats-server and etcd: registration bytes, streaming, admission, cancellation,
// malformed input, shutdown, several workers, 0.6.0 object store and model-path resolution.
import { createXXHash3, createBLAKE3 } from 'hash-wasm';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, cpSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, preprocessedRequestJson } from '../../src/client/dynamo-client.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { startFakeHub } from '../helpers/fake-hub.js';
import { haveServers, startNats, useCluster, waitFor } from '../helpers/servers.js';
import { stopAndKill, tenRequestsThreeSlots } from '../helpers/scenarios.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const enabled = haveServers();
const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };

describe.skipIf(!enabled)('worker over NATS + etcd', () => {
  const cluster = useCluster();
  let env: Record<string, string>;
  let etcdClient: Etcd3;

  beforeAll(() => {
    env = cluster.env;
    etcdClient = new Etcd3({ hosts: cluster.etcd.url });
  });
  afterAll(() => {
    etcdClient?.close();
  });

  /** Starts a worker in its own namespace so tests never see each other's instances. */
  async function worker(ns: string, args: string[] = [], extraEnv: Record<string, string> = {}) {
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, ...args], { ...env, DYN_NAMESPACE: ns, ...extraEnv });
    const client = await DynamoClient.connect({ env });
    const ep = { ...EP, namespace: ns };
    const [inst] = await client.waitForInstances(ep, 1);
    return { w, client, ep, inst };
  }

  async function done(w: WorkerProcess, client: DynamoClient) {
    await client.close();
    expect(await w.stop()).toBe(0);
  }

  it('registers exact instance and card records on one lease, then revokes it on SIGTERM', async () => {
    const { w, client, ep, inst } = await worker('reg', ['--block-size', '16', '--num-gpu-blocks-override', '1000', '--max-num-seqs', '7']);
    const hex = inst.instanceId.toString(16);
    const all = await etcdClient.getAll().prefix('v1/').exec();
    const mine = all.kvs.filter((kv) => kv.key.toString().includes('/reg/'));
    expect(mine.map((kv) => kv.key.toString()).sort()).toEqual([`v1/instances/reg/backend/generate/${hex}`, `v1/mdc/reg/backend/generate/${hex}`]);
    for (const kv of mine) expect(BigInt(kv.lease)).toBe(inst.instanceId);
    const instance = mine.find((kv) => kv.key.toString().startsWith('v1/instances'))!.value.toString();
    expect(instance).toBe(
      `{\n  "component": "backend",\n  "endpoint": "generate",\n  "namespace": "reg",\n  "instance_id": ${inst.instanceId},\n  "transport": {\n    "nats_tcp": "reg_backend.generate-${hex}"\n  }\n}`,
    );
    const cardText = mine.find((kv) => kv.key.toString().startsWith('v1/mdc'))!.value.toString();
    const card = JSON.parse(cardText);
    expect(Object.keys(card)).toEqual([
      'display_name', 'slug', 'model_info', 'tokenizer', 'prompt_formatter', 'gen_config',
      'context_length', 'kv_cache_block_size', 'migration_limit', 'model_type', 'model_input', 'runtime_config',
    ]);
    expect(card.display_name).toBe(TINY_MODEL);
    expect(card.context_length).toBe(4096);
    expect(card.kv_cache_block_size).toBe(16);
    expect(card.model_type).toBe('Chat | Completions');
    expect(card.model_input).toBe('Tokens');
    expect(card.runtime_config).toEqual({ total_kv_blocks: 1000, max_num_seqs: 7, max_num_batched_tokens: 8192, tool_call_parser: null, reasoning_parser: null, data_parallel_size: 1 });
    const blake3 = await createBLAKE3();
    const config = readFileSync(join(TINY_MODEL, 'config.json'));
    blake3.init();
    blake3.update(config);
    expect(card.model_info.hf_config_json).toEqual({ path: join(TINY_MODEL, 'config.json'), checksum: `blake3:${blake3.digest('hex')}` });
    // Lease revocation removes both keys at once.
    await done(w, client);
    const after = await etcdClient.getAll().prefix('v1/').keys();
    expect(after.filter((k) => k.includes('/reg/'))).toEqual([]);
    expect(ep.namespace).toBe('reg');
  });

  it('is a NATS micro service like Dynamo\'s: $SRV.PING, INFO and STATS name the endpoint and count requests', async () => {
    const { w, client, inst } = await worker('svc', ['--speedup-ratio', '0']);
    const hex = inst.instanceId.toString(16);
    const ask = async (subject: string) => JSON.parse(new TextDecoder().decode((await client.nats.request(subject, new Uint8Array(0), { timeout: 2000 })).data));
    const ping = await ask('$SRV.PING.svc_backend');
    expect(ping).toMatchObject({ type: 'io.nats.micro.v1.ping_response', name: 'svc_backend', version: '0.6.1' });
    const info = await ask(`$SRV.INFO.svc_backend.${ping.id}`);
    expect(info).toMatchObject({
      type: 'io.nats.micro.v1.info_response',
      name: 'svc_backend',
      version: '0.6.1',
      description: 'Dynamo component backend in namespace svc',
      endpoints: [{ name: `generate-${hex}`, subject: inst.subject, queue_group: 'q' }],
    });
    await (await client.generate(inst.subject, { tokenIds: [5, 6, 7], maxTokens: 3 })).stream.done;
    const stats = await ask('$SRV.STATS.svc_backend');
    expect(stats.endpoints).toHaveLength(1);
    expect(stats.endpoints[0]).toMatchObject({ name: `generate-${hex}`, subject: inst.subject, num_requests: 1, num_errors: 0, data: null });
    await done(w, client);
  });

  it('streams exactly max_tokens tokens inside the vocabulary, never a stop token, then complete_final and the sentinel', async () => {
    const { w, client, inst } = await worker('stream', ['--speedup-ratio', '0']);
    const h = await client.generate(inst.subject, { tokenIds: Array.from({ length: 50 }, (_, i) => i + 10), maxTokens: 300, stopTokenIdsHidden: [7, 8], eosTokenIds: [9] });
    const r = await h.stream.done;
    expect(r.prologueError).toBeNull();
    expect(r.tokenIds).toHaveLength(300);
    expect(r.tokenIds.every((t) => t >= 0 && t < 2048 && ![2, 3, 7, 8, 9].includes(t))).toBe(true);
    expect(r.finishReason).toBe('length');
    expect(r.completeFinal).toBe(true);
    expect(r.sentinel).toBe(true);
    expect(parseJson(JSON.stringify(r.usage))).toMatchObject({ prompt_tokens: 50, completion_tokens: 300, total_tokens: 350 });
    // The same sampling seed gives the same tokens.
    const a = await (await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 20, seed: 42 })).stream.done;
    const b = await (await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 20, seed: 42 })).stream.done;
    expect(a.tokenIds).toEqual(b.tokenIds);
    expect(await w.metric('dynamo_component_requests_total')).toBe(3);
    expect(await w.metric('dynamo_component_response_bytes_total')).toBeGreaterThan(0);
    await done(w, client);
  });

  it('with --max-num-seqs 3 and 10 concurrent requests: 10 in flight, 7 without a first token, then all complete', async () => {
    const { w, client, inst } = await worker('tenthree', ['--max-num-seqs', '3']);
    const results = await tenRequestsThreeSlots(w, (i) => client.generate(inst.subject, { tokenIds: Array.from({ length: 32 }, (_, j) => 100 + i * 32 + j), maxTokens: 40 }));
    // Inter-token latency follows the decode model (≈5.75 ms at this tiny KV usage), not timer drift.
    const r0 = results[0];
    const itl = (r0.tokenTimes[39] - r0.tokenTimes[0]) / 39;
    expect(itl).toBeGreaterThan(5.5);
    expect(itl).toBeLessThan(9);
    await done(w, client);
  });

  it('stop and kill end the stream at once, free the KV blocks and count a cancellation', async () => {
    const { w, client, inst } = await worker('cancel', ['--block-size', '16']);
    await stopAndKill(w, () => client.generate(inst.subject, { tokenIds: Array.from({ length: 64 }, (_, i) => i), maxTokens: 2000 }), true);
    await waitFor(async () => (await w.metric('dynamo_component_inflight_requests')) === 0, { timeoutMs: 3000 });
    await done(w, client);
  });

  it('a frontend that disappears mid-stream cancels its request', async () => {
    const { w, client, inst } = await worker('vanish');
    const h = await client.generate(inst.subject, { tokenIds: [1, 2, 3, 4], maxTokens: 5000 });
    await waitFor(() => h.stream.tokens.length >= 3, { timeoutMs: 5000 });
    await client.close(); // drops the TCP stream server and its connections
    await waitFor(async () => (await w.metric('dynamo_component_cancellation_total')) === 1, { timeoutMs: 5000, message: 'cancellation' });
    await waitFor(async () => (await w.metric('dynamo_component_kvstats_active_blocks')) === 0, { timeoutMs: 3000 });
    expect(await w.stop()).toBe(0);
  });

  it('answers malformed input with errors and keeps serving without leaking blocks', async () => {
    const { w, client, inst } = await worker('bad', ['--data-parallel-size', '2']);
    const xxh = client.xxh;
    // 1. Not a two-part frame at all: acked, counted, nothing else possible.
    expect((await client.sendRaw(inst.subject, new TextEncoder().encode('garbage'))).length).toBe(0);
    await waitFor(async () => (await w.metric('dynamo_component_errors_total{dynamo_namespace="bad",dynamo_component="backend",dynamo_endpoint="generate",model')) !== null, { timeoutMs: 3000 });
    // 2. Control header that is not JSON.
    await client.sendRaw(inst.subject, encodeTwoPartText('{not json', '{}', xxh));
    // 3–7. Valid control header, bad bodies: each gets an error prologue on its stream.
    const bodies: Array<[string, RegExp]> = [
      ['{"token_ids":', /invalid request body/],
      [preprocessedRequestJson({ tokenIds: [1, 2], maxTokens: 3 }).replace('"token_ids":[1,2]', '"token_ids":"x"'), /token_ids/],
      [preprocessedRequestJson({ tokenIds: [1, 2], maxTokens: 3, dpRank: 5 }), /dp_rank 5/],
      [preprocessedRequestJson({ tokenIds: Array.from({ length: 5000 }, (_, i) => i % 2000), maxTokens: 3 }), /context length/],
      [preprocessedRequestJson({ tokenIds: [], maxTokens: 3 }), /token_ids/],
    ];
    for (const [body, expected] of bodies) {
      const { stream, controlJson } = client.prepareStream();
      await client.sendRaw(inst.subject, encodeTwoPartText(controlJson, body, xxh));
      const r = await stream.done;
      expect(r.prologueError).toMatch(expected);
      expect(r.sentinel).toBe(true);
    }
    // 8. A frame whose checksum is wrong: still readable, so the caller hears why on its stream.
    {
      const { stream, controlJson } = client.prepareStream();
      const frame = encodeTwoPartText(controlJson, preprocessedRequestJson({ tokenIds: [1, 2], maxTokens: 3 }), xxh);
      frame[23] ^= 0xff; // last byte of the big-endian checksum at offset 16
      await client.sendRaw(inst.subject, frame);
      const r = await stream.done;
      expect(r.prologueError).toMatch(/checksum mismatch/);
      expect(r.sentinel).toBe(true);
    }
    // 9. A frontend address that refuses the call-home connection.
    const closed = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => resolve(port));
      });
    });
    const control = JSON.stringify({
      id: 'r1',
      request_type: 'single_in',
      response_type: 'many_out',
      connection_info: { transport: 'tcp_server', info: JSON.stringify({ address: `127.0.0.1:${closed}`, subject: 's', context: 'r1', stream_type: 'response' }) },
    });
    await client.sendRaw(inst.subject, encodeTwoPartText(control, preprocessedRequestJson({ tokenIds: [1], maxTokens: 2 }), xxh));
    const errors = async (type: string) =>
      (await w.get('/metrics')).body
        .split('\n')
        .filter((l) => l.startsWith('dynamo_component_errors_total') && l.includes(`error_type="${type}"`))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    await waitFor(async () => (await errors('response_stream')) === 1, { timeoutMs: 5000, message: 'response_stream error' });
    // Not a frame, a corrupted checksum.
    expect(await errors('invalid_message')).toBe(2);
    // Control header not JSON, body not JSON, token_ids of the wrong type, empty token_ids.
    expect(await errors('deserialization')).toBe(4);
    // dp_rank out of range, prompt over the context length.
    expect(await errors('generate')).toBe(2);
    // Still serving, on both ranks, and nothing leaked.
    for (const dpRank of [0, 1]) {
      const r = await (await client.generate(inst.subject, { tokenIds: [5, 6, 7], maxTokens: 4, dpRank })).stream.done;
      expect(r.tokenIds).toHaveLength(4);
    }
    await waitFor(async () => (await w.metric('dynamo_component_kvstats_active_blocks')) === 0, { timeoutMs: 3000 });
    await waitFor(async () => (await w.metric('dynamo_component_inflight_requests')) === 0, { timeoutMs: 3000 });
    await done(w, client);
  });

  it('--num-workers 4 registers four independent instances that all serve', async () => {
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--num-workers', '4', '--speedup-ratio', '0'], { ...env, DYN_NAMESPACE: 'four' });
    const client = await DynamoClient.connect({ env });
    const instances = await client.waitForInstances({ ...EP, namespace: 'four' }, 4);
    expect(new Set(instances.map((i) => i.instanceId)).size).toBe(4);
    const cards = await etcdClient.getAll().prefix('v1/mdc/four/').keys();
    expect(cards).toHaveLength(4);
    for (const inst of instances) {
      const r = await (await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 3 })).stream.done;
      expect(r.tokenIds).toHaveLength(3);
    }
    await done(w, client);
    expect(await etcdClient.getAll().prefix('v1/instances/four/').keys()).toEqual([]);
  });

  it('0.6.0 mode uploads the card files to the NATS object store named by the slug', async () => {
    const { w, client, inst } = await worker('era-c', ['--dynamo-version', '0.6.0', '--model-name', 'Tiny/Model-0.1']);
    const cardText = (await etcdClient.get(`v1/mdc/era-c/backend/generate/${inst.instanceId.toString(16)}`).string())!;
    const card = JSON.parse(cardText);
    expect(card.slug).toBe('tiny_model-0_1');
    const url = new URL(card.tokenizer.hf_tokenizer_json.path);
    expect(url.protocol).toBe('nats:');
    expect(url.pathname).toBe('/tiny_model-0_1/tokenizer.json');
    const os = await client.nats.jetstream().views.os('tiny_model-0_1');
    const blob = await os.getBlob('tokenizer.json');
    expect(Buffer.from(blob!).equals(readFileSync(join(TINY_MODEL, 'tokenizer.json')))).toBe(true);
    const blake3 = await createBLAKE3();
    blake3.init();
    blake3.update(blob!);
    expect(card.tokenizer.hf_tokenizer_json.checksum).toBe(`blake3:${blake3.digest('hex')}`);
    await done(w, client);
  });

  it('resolves --model-path from the HF cache, from a hub download, or registers a card without files', async () => {
    const home = mkdtempSync(join(tmpdir(), 'hf-'));
    // HF cache layout.
    const snap = join(home, 'hub', 'models--acme--cached', 'snapshots', 'abc123');
    mkdirSync(snap, { recursive: true });
    cpSync(TINY_MODEL, snap, { recursive: true });
    mkdirSync(join(home, 'hub', 'models--acme--cached', 'refs'), { recursive: true });
    writeFileSync(join(home, 'hub', 'models--acme--cached', 'refs', 'main'), 'abc123');
    const cached = await worker('hfcache', ['--model-path', 'acme/cached'], { HF_HOME: home, HF_HUB_OFFLINE: '1' });
    const cachedCard = JSON.parse((await etcdClient.get(`v1/mdc/hfcache/backend/generate/${cached.inst.instanceId.toString(16)}`).string())!);
    expect(cachedCard.tokenizer.hf_tokenizer_json.path).toBe(join(snap, 'tokenizer.json'));
    await done(cached.w, cached.client);

    // Download from a local fake hub into an empty cache.
    const files: Record<string, Uint8Array> = {};
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) files[`/acme/remote/resolve/main/${f}`] = readFileSync(join(TINY_MODEL, f));
    const hub = await startFakeHub(files);
    const empty = mkdtempSync(join(tmpdir(), 'hf-'));
    const remote = await worker('hfhub', ['--model-path', 'acme/remote'], { HF_HOME: empty, HF_ENDPOINT: hub.url });
    const remoteCard = JSON.parse((await etcdClient.get(`v1/mdc/hfhub/backend/generate/${remote.inst.instanceId.toString(16)}`).string())!);
    expect(remoteCard.model_info.hf_config_json.path.startsWith(join(empty, 'hub', 'models--acme--remote'))).toBe(true);
    expect(remoteCard.context_length).toBe(4096);
    await done(remote.w, remote.client);
    await hub.close();

    // Nothing anywhere: a card without files, one warning, and it still serves.
    const none = await worker('hfnone', ['--model-path', 'acme/missing'], { HF_HOME: empty, HF_HUB_OFFLINE: '1' });
    const noneCard = JSON.parse((await etcdClient.get(`v1/mdc/hfnone/backend/generate/${none.inst.instanceId.toString(16)}`).string())!);
    expect(noneCard.model_info).toBeNull();
    expect(noneCard.tokenizer).toBeNull();
    expect(none.w.output().match(/registering a card without files/g)).toHaveLength(1);
    const r = await (await none.client.generate(none.inst.subject, { tokenIds: [1, 2], maxTokens: 3 })).stream.done;
    expect(r.tokenIds).toHaveLength(3);
    await done(none.w, none.client);
  });

  it('exits 1 within seconds naming the URL and variable when NATS or etcd is unreachable or JetStream is off', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ ...env, NATS_SERVER: `nats://127.0.0.1:${port}` }, new RegExp(`nats://127.0.0.1:${port} \\(NATS_SERVER\\)`)],
      [{ ...env, ETCD_ENDPOINTS: `http://127.0.0.1:${port}` }, new RegExp(`http://127.0.0.1:${port} \\(ETCD_ENDPOINTS\\)`)],
    ];
    const plain = await startNats({ jetstream: false });
    cases.push([{ ...env, NATS_SERVER: plain.url }, /JetStream/]);
    for (const [e, message] of cases) {
      const t0 = performance.now();
      const w = await startWorkerProcess(['--model-path', TINY_MODEL], e, { expectServing: false });
      expect(await w.exited).toBe(1);
      expect(performance.now() - t0).toBeLessThan(8000);
      expect(w.output()).toMatch(message);
    }
    await plain.stop();
  });

  it('reports notready before serving and while draining, ready while serving', async () => {
    const { w, client, inst } = await worker('health', ['--max-num-seqs', '1']);
    const ready = await w.get('/health');
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body)).toMatchObject({ status: 'ready', endpoints: { generate: 'ready' } });
    expect((await w.get('/live')).status).toBe(200);
    expect((await w.get('/nope')).body).toBe('Route not found');
    // A long request keeps the worker draining after SIGTERM; it still finishes its stream.
    const h = await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 150 });
    await waitFor(() => h.stream.tokens.length > 0, { timeoutMs: 5000 });
    w.proc.kill('SIGTERM');
    await waitFor(async () => (await w.get('/health').catch(() => ({ status: 0 }))).status === 503, { timeoutMs: 3000, message: 'draining → 503' });
    const r = await h.stream.done;
    expect(r.tokenIds).toHaveLength(150);
    expect(r.completeFinal).toBe(true);
    expect(await w.exited).toBe(0);
    await client.close();
  });

  it('keeps its lease alive past the TTL and cuts in-flight requests after the graceful-shutdown timeout', async () => {
    // The lease mechanism itself, with a 2 s TTL: keys survive several keep-alives.
    const { WorkerLease, createIfAbsent } = await import('../../src/adapters/etcd-lease.js');
    let lost = false;
    const lease = await WorkerLease.grant(etcdClient, 2, () => (lost = true));
    expect(await createIfAbsent(etcdClient, 'v1/test/keepalive', 'x', lease)).toBe('created');
    expect(await createIfAbsent(etcdClient, 'v1/test/keepalive', 'y', lease)).toBe('exists');
    const grantedAt = performance.now();
    await waitFor(async () => performance.now() - grantedAt > 5000 && (await etcdClient.get('v1/test/keepalive').string()) === 'x', { timeoutMs: 8000, intervalMs: 250, message: 'key outlives its TTL' });
    expect(lost).toBe(false);
    await lease.revoke();
    expect(await etcdClient.get('v1/test/keepalive').string()).toBeNull();

    // A request longer than the grace period is ended with an error item saying why; the worker still
    // exits 0 and revokes.
    const { w, client, inst } = await worker('grace', [], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: '0.5' });
    const h = await client.generate(inst.subject, { tokenIds: [1, 2, 3], maxTokens: 100_000 });
    await waitFor(() => h.stream.tokens.length > 0, { timeoutMs: 5000 });
    const t0 = performance.now();
    w.proc.kill('SIGTERM');
    const r = await h.stream.done;
    expect(r.errors).toEqual(['worker shutting down: graceful shutdown timeout (0.5 s) reached']);
    expect(r.sentinel).toBe(true);
    expect(r.completeFinal).toBe(true);
    expect(await w.exited).toBe(0);
    expect(performance.now() - t0).toBeLessThan(4000);
    expect(await etcdClient.getAll().prefix('v1/instances/grace/').keys()).toEqual([]);
    await client.close();
  });

  it('hashes checksums the same way a frontend verifies frames', async () => {
    // The worker's frames carry real XXH3 checksums; the client decoder verifies non-zero ones.
    const h0 = await createXXHash3(0, 0);
    h0.init();
    h0.update(new TextEncoder().encode('{"error":null}'));
    expect(h0.digest('hex')).toBe('f0e61489b502a52a');
  });
});
