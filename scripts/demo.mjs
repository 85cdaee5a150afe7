#!/usr/bin/env node
// The main job: local NATS (JetStream) and etcd, a worker with --max-num-seqs 3, and 10 concurrent
// requests through the frontend-side client. Shows 10 in flight / 7 without a first token, then all done.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const children = [];
const dirs = [];
const cleanup = () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const have = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
function ensureServers() {
  const missing = [];
  if (!have('nats-server')) missing.push('nats-server');
  if (!have('etcd')) missing.push('etcd-server');
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    console.error(`missing ${missing.join(' and ')}: run  sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`);
    process.exit(1);
  }
  console.log(`installing ${missing.join(', ')} (Debian packages)…`);
  const r = spawnSync('sh', ['-c', `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing.join(' ')}`], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

async function waitFor(cond, what, timeoutMs = 15000) {
  const deadline = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  children.push(child);
  return { child, output: () => out };
}

ensureServers();
const [natsPort, etcdPort, peerPort, statusPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const natsDir = mkdtempSync(join(tmpdir(), 'demo-nats-'));
const etcdDir = mkdtempSync(join(tmpdir(), 'demo-etcd-'));
dirs.push(natsDir, etcdDir);
const nats = start('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', natsDir]);
const etcdUrl = `http://127.0.0.1:${etcdPort}`;
const peer = `http://127.0.0.1:${peerPort}`;
start('etcd', ['--data-dir', etcdDir, '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `default=${peer}`, '--log-level', 'error']);
await waitFor(() => /Server is ready/.test(nats.output()), 'nats-server');
await waitFor(async () => (await fetch(`${etcdUrl}/health`).then((r) => r.json()).catch(() => ({}))).health === 'true', 'etcd');
const env = { NATS_SERVER: `nats://127.0.0.1:${natsPort}`, ETCD_ENDPOINTS: etcdUrl };
console.log(`NATS ${env.NATS_SERVER} (JetStream) and etcd ${etcdUrl} are up`);

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
