#!/usr/bin/env node
// Worker memory under a frontend that stops reading: N streams × T tokens sent to a call-home peer that
// accepts and never reads (or, with --reading, reads and discards), the worker's RSS sampled throughout.
// Usage: npm run build && node scripts/bench-stuck-peer.mjs [--streams 10] [--tokens 60000] [--reading]
//          [--root DIR (the checkout whose bin/dynamo-mocker runs; default this one)]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: { streams: { type: 'string', default: '10' }, tokens: { type: 'string', default: '60000' }, reading: { type: 'boolean' }, root: { type: 'string', default: here } },
});
const { DynamoClient, preprocessedRequestJson1x, requestControlJson } = await import(join(here, 'dist', 'client', 'dynamo-client.js'));
const { encodeTwoPartText } = await import(join(here, 'dist', 'dynamo', 'two-part-codec.js'));
const { createXxh3 } = await import(join(here, 'dist', 'hashing', 'xxh3.js'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const streams = Number(values.streams);
const tokens = Number(values.tokens);

const free = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
const statusPort = await free();
const fileRoot = mkdtempSync(join(tmpdir(), 'bench-stuck-'));
const worker = spawn(
  process.execPath,
  [join(values.root, 'bin', 'dynamo-mocker'), '--model-path', join(here, 'test', 'fixtures', 'tiny-model'), '--dynamo-version', '1.4', '--speedup-ratio', '0', '--max-model-len', String(tokens + 1000), '--no-kv-events'],
  {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: fileRoot, DYN_NAMESPACE: 'bench', DYN_TCP_RPC_HOST: '127.0.0.1', DYN_SYSTEM_HOST: '127.0.0.1', DYN_SYSTEM_PORT: String(statusPort), DYN_LOG: 'warn', ...(process.env.DYN_MOCKER_STREAM_BUFFER_BYTES ? { DYN_MOCKER_STREAM_BUFFER_BYTES: process.env.DYN_MOCKER_STREAM_BUFFER_BYTES } : {}) },
    stdio: ['ignore', 'ignore', 'inherit'],
  },
);
const rssMb = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${worker.pid}/status`, 'utf8'))[1]) / 1024;
async function metric(prefix) {
  const body = await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
  return body.split('\n').filter((l) => l.startsWith(prefix)).reduce((a, l) => a + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

// The peer: accepts every call-home connection; reads and discards, or never reads at all.
const sockets = [];
const peer = createServer({ pauseOnConnect: !values.reading }, (s) => {
  s.on('error', () => {});
  if (values.reading) s.on('data', () => {});
  sockets.push(s);
});
await new Promise((resolve) => peer.listen(0, '127.0.0.1', resolve));

try {
  const client = await DynamoClient.connect({ discovery: 'file', fileRoot });
  const [inst] = await client.waitForInstances({ namespace: 'bench', component: 'backend', endpoint: 'generate' }, 1, 20_000);
  await (await client.generate(inst, { tokenIds: [1, 2, 3, 4], maxTokens: 2000 })).stream.done; // warm-up
  const before = rssMb();
  let peak = before;
  const xxh = await createXxh3();
  const address = `127.0.0.1:${peer.address().port}`;
  const t0 = performance.now();
  for (let i = 0; i < streams; i++) {
    const prompt = Array.from({ length: 16 }, (_, k) => 10 + ((16 * i + k) % 1900));
    await client.sendRaw(inst, encodeTwoPartText(requestControlJson(`stuck-${i}`, address, `s-${i}`, 'json'), preprocessedRequestJson1x({ tokenIds: prompt, maxTokens: tokens }), xxh));
  }
  // Until every request finished (its blocks freed) or no byte has left the engine for 2 s (all paused).
  let lastBytes = -1;
  let still = 0;
  for (;;) {
    await sleep(100);
    peak = Math.max(peak, rssMb());
    const bytes = await metric('dynamo_component_response_bytes_total{');
    still = bytes === lastBytes ? still + 1 : 0;
    lastBytes = bytes;
    if ((await metric('dynamo_component_kvstats_active_blocks{')) === 0 || still >= 20) break;
  }
  const settled = rssMb();
  const state = still >= 20 ? 'paused (no bytes for 2 s)' : 'all finished';
  console.log(
    `${streams} streams × ${tokens} tokens, ${values.reading ? 'reading' : 'never-reading'} peer, worker ${values.root}: ` +
      `RSS ${before.toFixed(0)} MB before, ${peak.toFixed(0)} MB peak (+${(peak - before).toFixed(1)} MB, ${((peak - before) / streams).toFixed(2)} MB per stream), ` +
      `${settled.toFixed(0)} MB when ${state} after ${((performance.now() - t0) / 1000).toFixed(1)} s; ${(lastBytes / 1e6).toFixed(1)} MB of response items written`,
  );
  await client.close();
} finally {
  for (const s of sockets) s.destroy();
  peer.close();
  worker.kill('SIGKILL');
}
