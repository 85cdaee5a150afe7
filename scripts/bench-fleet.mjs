#!/usr/bin/env node
// Fleet replay benchmark: KV-routed requests per CPU-second, cost against trace length and worker
// count, and a 12-configuration sweep's wall time against the sum of its configurations run alone.
// Every figure is a whole `dynamo-mocker replay` process (startup, trace parsing, simulation, summary).
// Usage: node scripts/bench-fleet.mjs [--runs 3] [--sections 1,2,3,4]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { median } from './lib/bench.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, sections: { type: 'string', default: '1,2,3,4' }, child: { type: 'boolean', default: false } } });

if (values.child) {
  // Child: the CLI in this process, then its CPU time since the process began (startup included).
  const { main } = await import(join(root, 'dist/cli.js'));
  const args = JSON.parse(process.env.BENCH_ARGS);
  const silent = { out: () => {}, err: (t) => process.stderr.write(t), env: process.env, isTty: false };
  const code = await main(args, silent);
  // Both measured from the start of this process.
  const cpu = process.cpuUsage();
  process.stdout.write(JSON.stringify({ code, cpuMs: (cpu.user + cpu.system) / 1000, wallMs: performance.now(), maxRssMb: process.resourceUsage().maxRSS / 1024 }) + '\n');
  process.exit(0);
}

const dir = join(root, '.bench');
mkdirSync(dir, { recursive: true });
if (!existsSync(join(root, 'dist/cli.js'))) execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
const runs = Number(values.runs);
const sections = new Set(values.sections.split(',').map(Number));

function trace(scale) {
  const path = join(dir, `mooncake-x${scale}.jsonl`);
  if (!existsSync(path)) writeFileSync(path, execFileSync(process.execPath, [join(root, 'scripts/make-mooncake-trace.mjs'), '--scale', String(scale)], { maxBuffer: 1 << 30 }));
  return path;
}
const requestsIn = (scale) => Math.round(23608 * scale);

function once(args) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child'], { encoding: 'utf8', env: { ...process.env, BENCH_ARGS: JSON.stringify(args) }, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`replay failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  if (out.code !== 0) throw new Error(`replay exited ${out.code}: ${r.stderr}`);
  return out;
}

/** Runs the configurations in turn, `runs` rounds (A B C A B C …), so drift hits them alike. */
function alternate(configs) {
  const samples = configs.map(() => []);
  for (let round = 0; round < runs; round++) configs.forEach((c, i) => samples[i].push(once(c.args)));
  return configs.map((c, i) => ({ ...c, cpuMs: median(samples[i].map((s) => s.cpuMs)), wallMs: median(samples[i].map((s) => s.wallMs)), rssMb: Math.max(...samples[i].map((s) => s.maxRssMb)) }));
}

const replay = (scale, workers, router, extra = []) => ['replay', '--trace', trace(scale), '--no-progress', '--num-workers', String(workers), '--router', router, ...extra];

console.log(`fleet replay benchmark: median of ${runs} alternated runs, whole process (CPU = user + system)`);
if (sections.has(1)) {
console.log('\n1. throughput on the 23,608-request Mooncake-shaped trace');
const main = alternate([
  { label: '1 worker', args: replay(1, 1, 'round-robin'), requests: requestsIn(1) },
  { label: '8 workers, round-robin', args: replay(1, 8, 'round-robin'), requests: requestsIn(1) },
  { label: '8 workers, kv', args: replay(1, 8, 'kv'), requests: requestsIn(1) },
]);
for (const r of main) console.log(`  ${r.label.padEnd(24)} CPU ${(r.cpuMs / 1000).toFixed(2)} s  wall ${(r.wallMs / 1000).toFixed(2)} s  ${Math.round(r.requests / (r.cpuMs / 1000))} req/CPU-s  peak RSS ${r.rssMb.toFixed(0)} MB`);
}

if (sections.has(2)) {
console.log('\n2. cost against trace length (8 workers, kv; same arrival rate, longer traces)');
const lengths = alternate([0.5, 1, 2].map((scale) => ({ label: `${scale}x`, scale, args: replay(scale, 8, 'kv'), requests: requestsIn(scale) })));
for (const r of lengths) console.log(`  ${r.label.padEnd(5)} ${String(r.requests).padStart(6)} requests  CPU ${(r.cpuMs / 1000).toFixed(2)} s  ${(r.cpuMs / r.requests * 1000).toFixed(1)} µs/request  ×${(r.cpuMs / lengths[0].cpuMs).toFixed(2)} of 0.5x`);
}

if (sections.has(3)) {
console.log('\n3. cost against worker count (1x trace, kv)');
const counts = alternate([4, 8, 16, 32].map((n) => ({ label: `${n} workers`, n, args: replay(1, n, 'kv'), requests: requestsIn(1) })));
for (const r of counts) console.log(`  ${r.label.padEnd(11)} CPU ${(r.cpuMs / 1000).toFixed(2)} s  ${Math.round(r.requests / (r.cpuMs / 1000))} req/CPU-s  ×${(r.cpuMs / counts[0].cpuMs).toFixed(2)} of 4 workers`);
}

if (sections.has(4)) {
  console.log(`\n4. a 12-configuration sweep (num-workers 4,8,16 × router round-robin,kv × max-num-seqs 128,256) on ${availableParallelism()} CPUs`);
  const axes = [['num-workers', ['4', '8', '16']], ['router', ['round-robin', 'kv']], ['max-num-seqs', ['128', '256']]];
  const sweepArgs = ['replay', '--trace', trace(1), '--no-progress', ...axes.flatMap(([f, vs]) => ['--sweep', `${f}=${vs.join(',')}`])];
  const sweeps = [];
  const sums = [];
  for (let round = 0; round < runs; round++) {
    sweeps.push(once(sweepArgs).wallMs);
    let sum = 0;
    for (const n of axes[0][1]) for (const router of axes[1][1]) for (const seqs of axes[2][1]) sum += once(['replay', '--trace', trace(1), '--no-progress', '--num-workers', n, '--router', router, '--max-num-seqs', seqs]).wallMs;
    sums.push(sum);
  }
  const ratios = sweeps.map((s, i) => s / sums[i]);
  console.log(`  sweep wall ${(median(sweeps) / 1000).toFixed(2)} s, the 12 run alone one after another ${(median(sums) / 1000).toFixed(2)} s: ratio ${median(ratios).toFixed(2)} (per round: ${ratios.map((r) => r.toFixed(2)).join(', ')})`);
}
