#!/usr/bin/env node
// Worker benchmark: process start → instance key in etcd, and tokens/s streamed at --speedup-ratio 0
// with 256 concurrent requests on one worker. Usage: node scripts/bench-worker.mjs [--runs 5] [--max-tokens 400]
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { start, startLocalServers } from './lib/local-servers.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, 'max-tokens': { type: 'string', default: '400' }, concurrency: { type: 'string', default: '256' } } });
const runs = Number(values.runs);
const maxTokens = Number(values['max-tokens']);
const concurrency = Number(values.concurrency);
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const env = await startLocalServers();
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const client = await DynamoClient.connect({ env });
const model = join(root, 'test', 'fixtures', 'tiny-model');
const bin = join(root, 'bin', 'dynamo-mocker');
const stop = (w) => new Promise((resolve) => (w.child.once('exit', resolve), w.child.kill('SIGTERM')));

// 1. Start-up: from spawning the process to its instance key being written.
const startups = [];
for (let i = 0; i < runs; i++) {
  const ns = `startup${i}`;
  const key = `v1/instances/${ns}/backend/generate/`;
  const watcher = await client.etcd.watch().prefix(key).create();
  const written = new Promise((resolve) => watcher.once('put', () => resolve(performance.now())));
  const t0 = performance.now();
  const w = start(process.execPath, [bin, '--model-path', model], { ...env, DYN_NAMESPACE: ns });
  startups.push((await written) - t0);
  await watcher.cancel();
  await stop(w);
}

// 2. Streaming throughput with no simulated delays.
const throughputs = [];
for (let i = 0; i < Math.min(runs, 3); i++) {
  const ns = `tput${i}`;
  const w = start(process.execPath, [bin, '--model-path', model, '--speedup-ratio', '0', '--max-num-seqs', String(concurrency)], { ...env, DYN_NAMESPACE: ns });
  const [inst] = await client.waitForInstances({ namespace: ns, component: 'backend', endpoint: 'generate' }, 1, 20000);
  const t0 = performance.now();
  const handles = await Promise.all(
    Array.from({ length: concurrency }, (_, r) => client.generate(inst.subject, { tokenIds: Array.from({ length: 128 }, (_, j) => (r * 131 + j) % 2000 + 10), maxTokens })),
  );
  const results = await Promise.all(handles.map((h) => h.stream.done));
  const elapsed = (Math.max(...results.map((r) => r.endedAt)) - t0) / 1000;
  const tokens = results.reduce((s, r) => s + r.tokenIds.length, 0);
  if (tokens !== concurrency * maxTokens) throw new Error(`expected ${concurrency * maxTokens} tokens, got ${tokens}`);
  throughputs.push(tokens / elapsed);
  await stop(w);
}
await client.close();

console.log(`worker benchmark (median of ${runs} start-ups, ${throughputs.length} throughput runs)`);
console.log(`start → instance key written: median ${median(startups).toFixed(0)} ms (min ${Math.min(...startups).toFixed(0)}, max ${Math.max(...startups).toFixed(0)})`);
console.log(`tokens/s streamed at --speedup-ratio 0, ${concurrency} concurrent × ${maxTokens} tokens: median ${median(throughputs).toFixed(0)} (runs: ${throughputs.map((t) => t.toFixed(0)).join(', ')})`);
process.exit(0);
