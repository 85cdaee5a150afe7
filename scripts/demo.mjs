#!/usr/bin/env node
// The main job: local NATS (JetStream) and etcd, a worker with --max-num-seqs 3, and 10 concurrent
// requests through the frontend-side client. Shows 10 in flight / 7 without a first token, then all done.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, start, startLocalServers, waitFor } from './lib/local-servers.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const env = await startLocalServers();
const statusPort = await freePort();
console.log(`NATS ${env.NATS_SERVER} (JetStream) and etcd ${env.ETCD_ENDPOINTS} are up`);

const model = join(root, 'test', 'fixtures', 'tiny-model');
const args = ['--model-path', model, '--model-name', 'Qwen/Qwen3-0.6B', '--max-num-seqs', '3'];
console.log(`$ dynamo-mocker ${args.join(' ')}   (DYN_SYSTEM_PORT=${statusPort})`);
const worker = start(process.execPath, [join(root, 'bin', 'dynamo-mocker'), ...args], { ...env, DYN_SYSTEM_PORT: String(statusPort), DYN_SYSTEM_HOST: '127.0.0.1' });
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const client = await DynamoClient.connect({ env });
const [instance] = await client.waitForInstances({ namespace: 'dynamo', component: 'backend', endpoint: 'generate' }, 1, 20000);
console.log(`worker registered: instance ${instance.instanceId.toString(16)}, subject ${instance.subject}\n`);

const metric = async (name) => {
  const text = await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(name)).reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
};

const N = 10;
const MAX_TOKENS = 60;
console.log(`sending ${N} concurrent requests (64-token prompts, max_tokens ${MAX_TOKENS})…`);
const handles = await Promise.all(
  Array.from({ length: N }, (_, i) => client.generate(instance.subject, { tokenIds: Array.from({ length: 64 }, (_, j) => 100 + i * 64 + j), maxTokens: MAX_TOKENS, model: 'Qwen/Qwen3-0.6B' })),
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
console.log('worker stopped (lease revoked)');
process.exit(ok && started === 3 ? 0 : 1);
