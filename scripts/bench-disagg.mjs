#!/usr/bin/env node
// Disaggregation benchmark: live (an aggregated worker vs 1.4 prefill/decode pairs, client-observed) and replay (aggregated vs P=1/D=1, cost of the run).
// Usage: node scripts/bench-disagg.mjs [--rounds 5] [--replay-runs 5] [--live-only | --replay-only]
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fmt, median } from './lib/bench.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(root, 'bin', 'dynamo-mocker');
const MODEL = join(root, 'test', 'fixtures', 'tiny-model');
const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, 'replay-runs': { type: 'string', default: '5' }, 'live-only': { type: 'boolean' }, 'replay-only': { type: 'boolean' } },
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** 128 KiB of KV per token (a 7B-class model) at the default 64 GB/s; no prefix caching, so every prompt is computed. */
const WORKER = ['--dynamo-version', '1.4', '--model-path', MODEL, '--kv-bytes-per-token', '131072', '--block-size', '16', '--no-enable-prefix-caching'];
const LOAD = ['--prompt-length', '2000', '--max-tokens', '32', '--count', '8'];

async function waitForRecords(env, endpoints) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      for (const ep of endpoints) execFileSync(process.execPath, [BIN, 'request', '--endpoint', ep, '--max-tokens', '1', '--prompt-length', '4'], { env, stdio: 'ignore' });
      return;
    } catch {
      if (Date.now() > deadline) throw new Error('workers did not register');
      await sleep(100);
    }
  }
}

async function live() {
  const rows = { aggregated: [], 'P/D, bootstrap': [], 'P/D, prefill_result': [] };
  for (let round = 0; round < Number(values.rounds); round++) {
    // Alternated round by round, so every layout shares the machine's noise.
    for (const layout of Object.keys(rows)) {
      const env = { ...process.env, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: mkdtempSync(join(tmpdir(), 'bench-pd-')), DYN_TCP_RPC_HOST: '127.0.0.1', DYN_HTTP_RPC_HOST: '127.0.0.1', DYN_NAMESPACE: 'bench' };
      const args =
        layout === 'aggregated'
          ? [[]]
          : [['--disaggregation-mode', 'prefill', ...(layout.includes('bootstrap') ? ['--bootstrap-ports', '0'] : [])], ['--disaggregation-mode', 'decode']];
      const procs = args.map((a) => spawn(process.execPath, [BIN, ...WORKER, ...a], { env, stdio: 'ignore' }));
      await waitForRecords(env, layout === 'aggregated' ? ['dyn://bench.backend.generate'] : ['dyn://bench.prefill.generate', 'dyn://bench.backend.generate']);
      const out = execFileSync(process.execPath, [BIN, 'request', '--json', ...LOAD, ...(layout === 'aggregated' ? [] : ['--disaggregated'])], { env }).toString();
      const results = out.trim().split('\n').map((l) => JSON.parse(l));
      if (results.some((r) => r.error)) throw new Error(`${layout}: ${results.find((r) => r.error).error}`);
      rows[layout].push(...results);
      await Promise.all(procs.map((p) => new Promise((resolve) => (p.once('exit', resolve), p.kill('SIGTERM')))));
    }
  }
  console.log(`live, 1.4 file + TCP, ${LOAD.join(' ')} per round, ${values.rounds} alternated rounds (client-observed, ms):`);
  for (const [layout, r] of Object.entries(rows)) {
    const col = (k, d = 1) => (r[0][k] === undefined ? '-' : median(r.map((x) => x[k])).toFixed(d));
    console.log(`  ${layout.padEnd(20)} TTFT ${col('ttft_ms')}  ITL ${col('mean_itl_ms', 2)}  E2E ${col('e2e_ms')}  prefill ${col('prefill_ms')}  transfer ${col('transfer_ms')}  (n=${r.length}, medians)`);
  }
}

function replay() {
  const trace = join(root, '.bench', 'mooncake-1x.jsonl');
  if (!existsSync(trace)) {
    execFileSync('mkdir', ['-p', dirname(trace)]);
    writeFileSync(trace, execFileSync(process.execPath, [join(root, 'scripts', 'make-mooncake-trace.mjs'), '--scale', '1'], { maxBuffer: 1 << 30 }));
  }
  const cpu = { aggregated: [], 'P=1 D=1': [] };
  const wall = { aggregated: [], 'P=1 D=1': [] };
  for (let i = 0; i < Number(values['replay-runs']); i++) {
    for (const layout of Object.keys(cpu)) {
      const extra = layout === 'aggregated' ? [] : ['--prefill-workers', '1', '--decode-workers', '1'];
      const t0 = Date.now();
      const r = spawnSync('/usr/bin/time', ['-f', '%U %S', process.execPath, BIN, 'replay', '--trace', trace, '--kv-bytes-per-token', '131072', '--no-progress', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
      if (r.status !== 0) throw new Error(`replay failed: ${r.stderr}`);
      wall[layout].push((Date.now() - t0) / 1000);
      const [u, s] = r.stderr.toString().trim().split('\n').at(-1).split(' ').map(Number);
      cpu[layout].push(u + s);
    }
  }
  console.log(`replay, the 23,608-request Mooncake-shaped trace, ${values['replay-runs']} alternated runs (whole process, s):`);
  for (const layout of Object.keys(cpu)) console.log(`  ${layout.padEnd(12)} CPU ${fmt(cpu[layout], 2)}  wall ${fmt(wall[layout], 2)}`);
  const ratios = cpu['P=1 D=1'].map((c, i) => c / cpu.aggregated[i]);
  console.log(`  CPU, P=1 D=1 over aggregated, pair by pair: ${fmt(ratios, 2)}`);
}

if (!values['replay-only']) await live();
if (!values['live-only']) replay();
