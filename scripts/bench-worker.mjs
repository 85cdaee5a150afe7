#!/usr/bin/env node
// Worker benchmark, configurations alternated round by round so they share the machine's noise:
//  1. spawn → Endpoint record visible, for 1.4 file+TCP, 1.4 etcd+TCP and 0.6.1 etcd+NATS;
//  2. tokens/s streamed at --speedup-ratio 0 (concurrency × max-tokens) over the TCP and the NATS
//     request plane (1.4, etcd), and 0.6.1 for comparison.
// Usage: node scripts/bench-worker.mjs [--runs 9] [--tput-runs 5] [--max-tokens 400] [--concurrency 256]   (--runs 0: streaming only)
import { mkdirSync, mkdtempSync, readdirSync, rmSync, watch } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fmt, median, stopChild as stop, streamLoad } from './lib/bench.mjs';
import { start, startLocalServers } from './lib/local-servers.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '9' },
    'tput-runs': { type: 'string', default: '5' },
    'max-tokens': { type: 'string', default: '400' },
    concurrency: { type: 'string', default: '256' },
  },
});
const runs = Number(values.runs);
const tputRuns = Number(values['tput-runs']);
const maxTokens = Number(values['max-tokens']);
const concurrency = Number(values.concurrency);

const servers = await startLocalServers();
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const client = await DynamoClient.connect({ env: servers });
const model = join(root, 'test', 'fixtures', 'tiny-model');
const bin = join(root, 'bin', 'dynamo-mocker');
const base = { DYN_TCP_RPC_HOST: '127.0.0.1' };
let round = 0;

// 1. Start-up: from spawning the process to its Endpoint record appearing.
const startups = {
  '1.4 file + TCP': async () => {
    const kv = mkdtempSync(join(tmpdir(), 'bench-kv-'));
    const dir = join(kv, 'v1', 'instances');
    mkdirSync(dir, { recursive: true });
    const seen = new Promise((resolve) => {
      const w = watch(dir, () => {
        if (readdirSync(dir).some((n) => !n.startsWith('.'))) {
          w.close();
          resolve(performance.now());
        }
      });
    });
    const t0 = performance.now();
    const w = start(process.execPath, [bin, '--model-path', model, '--dynamo-version', '1.4'], { ...base, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: kv });
    const ms = (await seen) - t0;
    await stop(w);
    rmSync(kv, { recursive: true, force: true });
    return ms;
  },
  '1.4 etcd + TCP': (ns) => etcdStartup(['--dynamo-version', '1.4'], { ETCD_ENDPOINTS: servers.ETCD_ENDPOINTS }, ns),
  '0.6.1 etcd + NATS': (ns) => etcdStartup([], servers, ns),
};
async function etcdStartup(args, env, ns) {
  const watcher = await client.etcd.watch().prefix(`v1/instances/${ns}/backend/generate/`).create();
  const written = new Promise((resolve) => watcher.once('put', () => resolve(performance.now())));
  const t0 = performance.now();
  const w = start(process.execPath, [bin, '--model-path', model, ...args], { ...base, ...env, DYN_NAMESPACE: ns });
  const ms = (await written) - t0;
  await watcher.cancel();
  await stop(w);
  return ms;
}
const startupTimes = Object.fromEntries(Object.keys(startups).map((k) => [k, []]));
for (let i = 0; i < runs; i++) for (const [name, run] of Object.entries(startups)) startupTimes[name].push(await run(`startup${round++}`));

// 2. Streaming throughput with no simulated delays, over each request plane.
const planes = {
  '1.4 TCP plane': { args: ['--dynamo-version', '1.4'], env: { ETCD_ENDPOINTS: servers.ETCD_ENDPOINTS } },
  '1.4 NATS plane': { args: ['--dynamo-version', '1.4'], env: { ...servers, DYN_REQUEST_PLANE: 'nats' } },
  '0.6.1 (NATS)': { args: [], env: servers },
};
const tput = Object.fromEntries(Object.keys(planes).map((k) => [k, []]));
for (let i = 0; i < tputRuns; i++) {
  for (const [name, p] of Object.entries(planes)) {
    const ns = `tput${round++}`;
    const w = start(process.execPath, [bin, '--model-path', model, ...p.args, '--speedup-ratio', '0', '--max-num-seqs', String(concurrency)], { ...base, ...p.env, DYN_NAMESPACE: ns });
    const [inst] = await client.waitForInstances({ namespace: ns, component: 'backend', endpoint: 'generate' }, 1, 20000);
    tput[name].push((await streamLoad(client, inst, { concurrency, maxTokens, label: name })).tokensPerS);
    await stop(w);
  }
}
await client.close();

console.log(`worker benchmark: ${runs} start-ups and ${tputRuns} streaming runs per configuration, alternated`);
if (runs > 0) {
  console.log('spawn → Endpoint record visible (ms):');
  for (const [name, xs] of Object.entries(startupTimes)) console.log(`  ${name.padEnd(18)} ${fmt(xs)}`);
}
console.log(`tokens/s streamed at --speedup-ratio 0, ${concurrency} concurrent × ${maxTokens} tokens:`);
for (const [name, xs] of Object.entries(tput)) console.log(`  ${name.padEnd(18)} ${fmt(xs)}`);
const ratios = tput['1.4 TCP plane'].map((t, i) => t / tput['1.4 NATS plane'][i]);
console.log(`  TCP / NATS plane, pair by pair: median ${median(ratios).toFixed(2)}× (${ratios.map((r) => r.toFixed(2)).join(', ')})`);
process.exit(0);
