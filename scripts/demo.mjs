#!/usr/bin/env node
// The main job: a worker with --max-num-seqs 3 and 10 concurrent requests through the frontend-side
// client, showing 10 in flight / 7 without a first token, then all done.
//   npm run demo                                   Dynamo 0.6.1: local NATS (JetStream) + etcd, NATS request plane
//   npm run demo -- --dynamo-version 1.4           Dynamo 1.4: file discovery + TCP request plane, no servers at all
//   npm run demo -- --dynamo-version 1.4 --discovery-backend etcd    Dynamo 1.4 on a local etcd
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { freePort, start, startLocalServers, waitFor } from './lib/local-servers.mjs';

const { values } = parseArgs({ options: { 'dynamo-version': { type: 'string', default: '0.6.1' }, 'discovery-backend': { type: 'string' } } });
const version = values['dynamo-version'];
const discovery = values['discovery-backend'] ?? (version === '1.4' ? 'file' : 'etcd');
if (!['0.6.1', '0.6.0', '1.4'].includes(version) || !['etcd', 'file'].includes(discovery) || (version !== '1.4' && discovery === 'file')) {
  console.error('usage: demo.mjs [--dynamo-version 0.6.1|0.6.0|1.4] [--discovery-backend etcd|file (1.4 only)]');
  process.exit(2);
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let env;
let fileRoot = null;
if (discovery === 'file') {
  fileRoot = mkdtempSync(join(tmpdir(), 'dynamo-demo-kv-'));
  process.on('exit', () => rmSync(fileRoot, { recursive: true, force: true }));
  env = { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: fileRoot };
  console.log(`Dynamo ${version}: file discovery under ${fileRoot}, TCP request plane; no NATS, no etcd`);
} else {
  env = await startLocalServers({ nats: version !== '1.4' });
  console.log(`Dynamo ${version}: ${env.NATS_SERVER ? `NATS ${env.NATS_SERVER} (JetStream) and etcd ${env.ETCD_ENDPOINTS} are up` : `etcd ${env.ETCD_ENDPOINTS} is up`}`);
}
const statusPort = await freePort();
const model = join(root, 'test', 'fixtures', 'tiny-model');
const args = ['--model-path', model, '--model-name', 'Qwen/Qwen3-0.6B', '--max-num-seqs', '3', '--dynamo-version', version];
console.log(`$ dynamo-mocker ${args.join(' ')}   (DYN_SYSTEM_PORT=${statusPort}${fileRoot ? ` DYN_DISCOVERY_BACKEND=file DYN_FILE_KV=${fileRoot}` : ''})`);
const worker = start(process.execPath, [join(root, 'bin', 'dynamo-mocker'), ...args], { ...env, DYN_SYSTEM_PORT: String(statusPort), DYN_SYSTEM_HOST: '127.0.0.1', DYN_TCP_RPC_HOST: '127.0.0.1' });
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const client = await DynamoClient.connect({ env, discovery, fileRoot: fileRoot ?? undefined });
const [instance] = await client.waitForInstances({ namespace: 'dynamo', component: 'backend', endpoint: 'generate' }, 1, 20000).catch((err) => {
  console.error(`${err.message}\n${worker.output()}`);
  process.exit(1);
});
console.log(`worker registered: instance ${instance.instanceId.toString(16)}, ${instance.transport.kind === 'tcp' ? `TCP ${instance.subject}` : `NATS subject ${instance.subject}`}\n`);

const metric = async (name) => {
  const text = await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(name)).reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
};

const N = 10;
const MAX_TOKENS = 60;
console.log(`sending ${N} concurrent requests (64-token prompts, max_tokens ${MAX_TOKENS})…`);
const handles = await Promise.all(
  Array.from({ length: N }, (_, i) => client.generate(instance, { tokenIds: Array.from({ length: 64 }, (_, j) => 100 + i * 64 + j), maxTokens: MAX_TOKENS, model: 'Qwen/Qwen3-0.6B' })),
);
await waitFor(() => handles.filter((h) => h.stream.tokens.length > 0).length >= 3, 'first tokens');
const started = handles.filter((h) => h.stream.tokens.length > 0).length;
console.log(`client:   ${N} requests in flight, ${started} generating, ${N - started} waiting for a first token`);
console.log(`/metrics: dynamo_component_inflight_requests ${await metric('dynamo_component_inflight_requests')}, vllm:num_requests_running ${await metric('vllm:num_requests_running')}, vllm:num_requests_waiting ${await metric('vllm:num_requests_waiting')}\n`);

const results = await Promise.all(handles.map((h) => h.stream.done));
console.log('request  tokens  finish   TTFT ms  mean ITL ms  E2E ms');
results.forEach((r, i) => {
  const ttft = r.tokenTimes[0] - handles[i].sentAt;
  const itl = (r.tokenTimes.at(-1) - r.tokenTimes[0]) / (r.tokenIds.length - 1);
  const e2e = r.endedAt - handles[i].sentAt;
  console.log(`${String(i).padStart(7)}  ${String(r.tokenIds.length).padStart(6)}  ${String(r.finishReason).padEnd(7)}  ${ttft.toFixed(1).padStart(7)}  ${itl.toFixed(2).padStart(11)}  ${e2e.toFixed(1).padStart(6)}`);
});
const ok = results.every((r) => r.tokenIds.length === MAX_TOKENS && r.finishReason === 'length' && r.completeFinal);
console.log(`\nall ${N} complete: ${ok ? 'yes' : 'NO'}; /metrics now: dynamo_component_requests_total ${await metric('dynamo_component_requests_total')}, inflight ${await metric('dynamo_component_inflight_requests')}`);

await client.close();
worker.child.kill('SIGTERM');
await new Promise((r) => worker.child.once('exit', r));
console.log(`worker stopped (${discovery === 'file' ? 'records deleted' : 'lease revoked'})`);
process.exit(ok && started === 3 ? 0 : 1);
