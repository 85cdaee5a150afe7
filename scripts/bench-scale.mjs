#!/usr/bin/env node
// Scale benchmark: one process with --num-workers N, for each N on
//  (a) Dynamo 1.4, file discovery + TCP request plane (event plane: its default, ZMQ, unless --event-plane says otherwise);
//  (b) Dynamo 0.6.1, etcd + NATS (a throwaway nats-server and etcd of its own).
// Reports: spawn → all N instance records visible, spawn → the worker's "serving" line, idle CPU of the
// worker over --idle-s seconds after that (utime+stime from /proc/<pid>/stat, % of one core), RSS, a
// request served on the first, the last and a few random workers, and SIGTERM → exit.
// Usage: npm run build && node scripts/bench-scale.mjs [--counts 256,1024] [--setups file,etcd]
//        [--idle-s 10] [--settle-s 1] [--random 3] [--deadline-s 300] [--event-plane zmq|nats]
//        [--system] [--bin other/bin/dynamo-mocker] [--node-arg=--cpu-prof ...] [-- extra worker flags]
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stopChild } from './lib/bench.mjs';
import { start, startLocalServers } from './lib/local-servers.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    counts: { type: 'string', default: '256,1024' },
    setups: { type: 'string', default: 'file,etcd' },
    'idle-s': { type: 'string', default: '10' },
    'settle-s': { type: 'string', default: '1' },
    random: { type: 'string', default: '3' },
    'deadline-s': { type: 'string', default: '300' },
    'event-plane': { type: 'string' },
    'node-arg': { type: 'string', multiple: true, default: [] },
    system: { type: 'boolean', default: false },
    bin: { type: 'string' },
  },
});
const counts = values.counts.split(',').map(Number);
const setups = values.setups.split(',');
const idleS = Number(values['idle-s']);
const settleS = Number(values['settle-s']);
const randomRequests = Number(values.random);
const deadlineMs = Number(values['deadline-s']) * 1000;
const extraArgs = positionals;

const CLK_TCK = 100; // Linux USER_HZ
// --bin: another build's bin/dynamo-mocker (e.g. a worktree of an older commit), for before/after figures.
const bin = values.bin ?? join(root, 'bin', 'dynamo-mocker');
const model = join(root, 'test', 'fixtures', 'tiny-model');
const { DynamoClient } = await import(join(root, 'dist', 'client', 'dynamo-client.js'));
const servers = setups.includes('etcd') || values['event-plane'] === 'nats' ? await startLocalServers() : null;

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start at field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}
const rssMb = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(cond, what, deadline) {
  for (;;) {
    if (await cond()) return performance.now();
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function runOne(setup, n, index) {
  const ns = `scale${index}`;
  const ep = { namespace: ns, component: 'backend', endpoint: 'generate' };
  let env;
  let args;
  let countRecords;
  let client;
  let cleanup = () => {};
  if (setup === 'file') {
    const kv = mkdtempSync(join(tmpdir(), 'bench-scale-kv-'));
    cleanup = () => rmSync(kv, { recursive: true, force: true });
    env = {
      DYN_DISCOVERY_BACKEND: 'file',
      DYN_FILE_KV: kv,
      ...(values['event-plane'] ? { DYN_EVENT_PLANE: values['event-plane'] } : {}),
      ...(values['event-plane'] === 'nats' ? { NATS_SERVER: servers.NATS_SERVER } : {}),
    };
    args = ['--dynamo-version', '1.4'];
    const dir = join(kv, 'v1', 'instances');
    countRecords = () => {
      try {
        return readdirSync(dir).filter((name) => !name.startsWith('.')).length;
      } catch {
        return 0;
      }
    };
    client = await DynamoClient.connect({ discovery: 'file', fileRoot: kv });
  } else {
    env = { ...servers };
    args = ['--dynamo-version', '0.6.1'];
    client = await DynamoClient.connect({ env: servers });
    const prefix = `v1/instances/${ns}/backend/generate/`;
    countRecords = () => client.etcd.getAll().prefix(prefix).count();
  }
  const label = `${setup === 'file' ? '1.4 file + TCP' : '0.6.1 etcd + NATS'}, N=${n}`;
  const t0 = performance.now();
  const w = start(process.execPath, [...values['node-arg'], bin, '--model-path', model, '--num-workers', String(n), ...args, ...extraArgs], {
    DYN_TCP_RPC_HOST: '127.0.0.1',
    DYN_NAMESPACE: ns,
    // --system: the status server and its metrics registry on (a free port); off by default.
    DYN_SYSTEM_PORT: values.system ? '0' : '-1',
    ...env,
  });
  const deadline = t0 + deadlineMs;
  const exited = () => w.child.exitCode !== null || w.child.signalCode !== null;
  let lastCount = 0;
  const allVisible = await until(
    async () => {
      if (exited()) throw new Error(`${label}: worker exited with ${w.child.exitCode}:\n${w.output().slice(-2000)}`);
      lastCount = await countRecords();
      return lastCount >= n;
    },
    `${n} instance records (saw ${lastCount})`,
    deadline,
  );
  const serving = await until(() => /worker\(s\) serving/.test(w.output()), 'the serving line', deadline);
  const selfReported = Number(/worker\(s\) serving .* in (\d+) ms/.exec(w.output())?.[1]);

  await sleep(settleS * 1000);
  const cpu0 = cpuSeconds(w.child.pid);
  const i0 = performance.now();
  await sleep(idleS * 1000);
  const idleCpuPct = ((cpuSeconds(w.child.pid) - cpu0) / ((performance.now() - i0) / 1000)) * 100;
  const rss = rssMb(w.child.pid);

  // Requests: the first and last instance by id, plus a few random ones.
  const instances = await client.instances(ep);
  if (instances.length !== n) throw new Error(`${label}: ${instances.length} instances listed, expected ${n}`);
  const picks = [instances[0], instances[n - 1], ...Array.from({ length: randomRequests }, () => instances[Math.floor(Math.random() * n)])];
  const latencies = [];
  for (const inst of picks) {
    const r0 = performance.now();
    const h = await client.generate(inst, { tokenIds: [11, 12, 13, 14, 15, 16, 17, 18], maxTokens: 4 });
    const done = await h.stream.done;
    if (done.tokenIds.length !== 4) throw new Error(`${label}: instance ${inst.instanceId.toString(16)} streamed ${done.tokenIds.length} tokens, expected 4`);
    latencies.push(performance.now() - r0);
  }
  const s0 = performance.now();
  const code = await stopChild(w);
  const stopMs = performance.now() - s0;
  await client.close();
  cleanup();
  return {
    label,
    registeredS: (allVisible - t0) / 1000,
    servingS: (serving - t0) / 1000,
    selfReportedS: selfReported / 1000,
    idleCpuPct,
    rssMb: rss,
    requests: latencies.length,
    requestMs: latencies,
    stopS: stopMs / 1000,
    exitCode: code,
  };
}

const results = [];
let index = 0;
for (const setup of setups) {
  for (const n of counts) {
    const r = await runOne(setup, n, index++);
    results.push(r);
    console.log(
      `${r.label.padEnd(26)} all records visible ${r.registeredS.toFixed(2)} s (start-up logged ${r.selfReportedS.toFixed(2)} s), ` +
        `idle CPU ${r.idleCpuPct.toFixed(1)}% of one core over ${idleS} s, RSS ${r.rssMb.toFixed(0)} MB, ` +
        `${r.requests} requests served (${r.requestMs.map((x) => x.toFixed(0)).join(', ')} ms), stop ${r.stopS.toFixed(2)} s (exit ${r.exitCode})`,
    );
  }
}
console.log(JSON.stringify(results));
process.exit(0);
