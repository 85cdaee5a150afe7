#!/usr/bin/env node
// Replay benchmark: simulated requests per CPU-second, peak memory and growth with trace length.
// Generates synthetic Mooncake-shaped traces (1x = 23,608 requests), replays each in a fresh child
// process a few times, and prints medians. Usage: node scripts/bench-replay.mjs [--runs 3] [--scales 1,2,4]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { median } from './lib/bench.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, scales: { type: 'string', default: '1,2,4' }, child: { type: 'string' } } });

if (values.child) {
  // Child: time only the simulation (trace already parsed), report CPU, wall and peak RSS.
  const { simulateTrace } = await import(join(root, 'dist/replay/run-replay.js'));
  const { loadWorkload } = await import(join(root, 'dist/replay/workload.js'));
  const { parseReplayConfig } = await import(join(root, 'dist/config.js'));
  const config = parseReplayConfig({ trace: values.child, progress: false }, []);
  const workload = loadWorkload(config);
  const { records } = workload;
  const io = { out: () => {}, err: (t) => process.stderr.write(t), env: process.env, isTty: false };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const { summary } = await simulateTrace(config, workload, io);
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(JSON.stringify({
    requests: records.length,
    wallMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    maxRssMb: process.resourceUsage().maxRSS / 1024,
    passes: summary.passes,
    simulatedS: summary.duration_ms / 1000,
  }) + '\n');
  process.exit(0);
}

const dir = join(root, '.bench');
mkdirSync(dir, { recursive: true });
if (!existsSync(join(root, 'dist/replay/run-replay.js'))) execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });

const scales = values.scales.split(',').map(Number);
const rows = [];
for (const scale of scales) {
  const trace = join(dir, `mooncake-x${scale}.jsonl`);
  if (!existsSync(trace)) writeFileSync(trace, execFileSync(process.execPath, [join(root, 'scripts/make-mooncake-trace.mjs'), '--scale', String(scale)], { maxBuffer: 1 << 30 }));
  const runs = [];
  for (let i = 0; i < Number(values.runs); i++) {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', trace], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`replay child failed: ${r.stderr}`);
    runs.push(JSON.parse(r.stdout));
  }
  const cpuMs = median(runs.map((r) => r.cpuMs));
  const wallMs = median(runs.map((r) => r.wallMs));
  rows.push({ scale, requests: runs[0].requests, cpuMs, wallMs, reqPerCpuS: runs[0].requests / (cpuMs / 1000), reqPerWallS: runs[0].requests / (wallMs / 1000), maxRssMb: Math.max(...runs.map((r) => r.maxRssMb)), passes: runs[0].passes, simulatedS: runs[0].simulatedS });
}
console.log(`replay benchmark (median of ${values.runs} runs each; CPU = user + system of the simulation only)`);
console.log('scale  requests   CPU s   wall s   req/CPU-s   req/wall-s   peak RSS MB   passes   simulated s   CPU vs 1x');
for (const r of rows) {
  const growth = (r.cpuMs / rows[0].cpuMs).toFixed(2);
  console.log(`${String(r.scale + 'x').padEnd(6)} ${String(r.requests).padStart(8)} ${(r.cpuMs / 1000).toFixed(2).padStart(7)} ${(r.wallMs / 1000).toFixed(2).padStart(8)} ${r.reqPerCpuS.toFixed(0).padStart(11)} ${r.reqPerWallS.toFixed(0).padStart(12)} ${r.maxRssMb.toFixed(0).padStart(13)} ${String(r.passes).padStart(8)} ${r.simulatedS.toFixed(0).padStart(13)} ${growth.padStart(11)}`);
}
