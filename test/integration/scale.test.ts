// Many workers in one process (issue 12): --num-workers 64 (a CI-sized stand-in for the 1,024 measured
// by scripts/bench-scale.mjs) registers every instance within a deadline and serves on the first and
// the last worker, on 1.4 file + TCP and on 0.6.1 etcd + NATS; --stagger-delay spaces the launches
// and refuses bad values; the leases of one process share their keep-alive streams.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Etcd3 } from 'etcd3';
import { afterAll, describe, expect, it } from 'vitest';
import { DynamoClient, type Instance } from '../../src/client/dynamo-client.js';
import { haveServers, useCluster, waitFor } from '../helpers/servers.js';
import { BIN, TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const WORKERS = 64;
/** Generous for CI: 64 workers register in well under a second on a laptop. */
const REGISTRATION_DEADLINE_MS = 15_000;
const EP = (namespace: string) => ({ namespace, component: 'backend', endpoint: 'generate' });

const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
function fileRoot(): string {
  const r = mkdtempSync(join(tmpdir(), 'scale-kv-'));
  roots.push(r);
  return r;
}

/** Worker index → its instance id, from each worker's "registered and serving" log line. */
function instanceIdsByWorker(output: string): Map<number, bigint> {
  const ids = new Map<number, bigint>();
  for (const line of output.split('\n')) {
    if (!line.includes('worker registered and serving')) continue;
    const { worker, instance_id: hex } = JSON.parse(line) as { worker: number; instance_id: string };
    ids.set(worker, BigInt(`0x${hex}`));
  }
  return ids;
}

/** Spawns a worker with N workers, waits (up to the deadline) until N instance records are visible; returns the time that took. */
async function startMany(args: string[], env: Record<string, string>, client: DynamoClient, ns: string): Promise<{ w: WorkerProcess; ms: number; instances: Instance[] }> {
  const t0 = performance.now();
  const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--num-workers', String(WORKERS), '--speedup-ratio', '0', ...args], { ...env, DYN_NAMESPACE: ns }, { expectServing: false });
  let instances: Instance[] = [];
  await waitFor(
    async () => {
      if (w.proc.exitCode !== null) throw new Error(`worker exited with ${w.proc.exitCode}:\n${w.output()}`);
      instances = await client.instances(EP(ns));
      return instances.length >= WORKERS;
    },
    { timeoutMs: REGISTRATION_DEADLINE_MS, intervalMs: 25, message: `${WORKERS} instances of ${ns} (saw ${instances.length})` },
  );
  return { w, ms: performance.now() - t0, instances };
}

/** One request to the first and one to the last worker (by index), each streamed to its end. */
async function serveFirstAndLast(w: WorkerProcess, client: DynamoClient, instances: Instance[]): Promise<void> {
  // The last worker's log line may trail its record by a moment.
  await waitFor(() => instanceIdsByWorker(w.output()).size === WORKERS, { timeoutMs: 5000, message: 'a log line per worker' });
  const ids = instanceIdsByWorker(w.output());
  for (const index of [0, WORKERS - 1]) {
    const inst = instances.find((i) => i.instanceId === ids.get(index));
    expect(inst, `worker ${index}'s instance is registered`).toBeDefined();
    const h = await client.generate(inst!, { tokenIds: [11, 12, 13, 14, 15, 16, 17, 18], maxTokens: 5 });
    const done = await h.stream.done;
    expect(done.tokenIds).toHaveLength(5);
  }
}

describe(`--num-workers ${WORKERS} in one process`, () => {
  it('1.4 file + TCP: every instance registered within the deadline; the first and the last worker serve', async () => {
    const root = fileRoot();
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const { w, instances } = await startMany(['--dynamo-version', '1.4'], { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root }, client, 'scale-file');
    expect(new Set(instances.map((i) => i.instanceId)).size).toBe(WORKERS);
    await serveFirstAndLast(w, client, instances);
    await client.close();
    expect(await w.stop()).toBe(0);
  });

  describe.skipIf(!haveServers())('0.6.1 etcd + NATS', () => {
    const cluster = useCluster();

    it('every instance registered within the deadline; the first and the last worker serve', async () => {
      const client = await DynamoClient.connect({ env: cluster.env });
      const { w, instances } = await startMany([], cluster.env, client, 'scale-etcd');
      expect(new Set(instances.map((i) => i.instanceId)).size).toBe(WORKERS);
      await serveFirstAndLast(w, client, instances);
      await client.close();
      expect(await w.stop()).toBe(0);
    });

    it('the leases of one client share keep-alive streams: all stay alive past their TTL, a revoked one among them is lost', async () => {
      const { WorkerLease } = await import('../../src/adapters/etcd-lease.js');
      const etcd = new Etcd3({ hosts: cluster.env.ETCD_ENDPOINTS });
      const lost: string[] = [];
      // TTL 2 s: a keep-alive every ~0.67 s, batched.
      const leases = await Promise.all(Array.from({ length: 40 }, (_, i) => WorkerLease.grant(etcd, 2, (reason) => lost.push(`${i}: ${reason}`))));
      // Revoked behind the worker's back: etcd answers its next keep-alive with TTL 0.
      await etcd.leaseClient.leaseRevoke({ ID: leases[7].etcdId });
      const t0 = performance.now();
      await waitFor(() => lost.length > 0, { timeoutMs: 3000, message: 'the revoked lease reported lost' });
      // Well past the TTL for the others.
      await waitFor(() => performance.now() - t0 > 2500, { timeoutMs: 4000 });
      expect(lost).toHaveLength(1);
      expect(lost[0]).toMatch(/^7: etcd lease [0-9a-f]+ lost: expired or revoked$/);
      for (const [i, lease] of leases.entries()) {
        if (i === 7) continue;
        expect(lease.alive).toBe(true);
        const ttl = Number((await etcd.leaseClient.leaseTimeToLive({ ID: lease.etcdId })).TTL);
        expect(ttl, `lease ${i}'s remaining TTL`).toBeGreaterThan(0);
      }
      await Promise.all(leases.map((l) => l.revoke()));
      etcd.close();
    });
  });
});

describe('file descriptors for the ZMQ sockets', () => {
  it('too few for 100 workers on the ZMQ event plane: exit 1 with one line saying what to do (libzmq would abort the process)', async () => {
    const root = fileRoot();
    const proc = spawn('sh', ['-c', `ulimit -n 512 && exec "${process.execPath}" "${BIN}" --model-path "${TINY_MODEL}" --dynamo-version 1.4 --num-workers 100`], {
      env: { PATH: process.env.PATH ?? '', DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_TCP_RPC_HOST: '127.0.0.1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    expect(code).toBe(1);
    expect(out.trim().split('\n')).toHaveLength(1);
    expect(out).toMatch(/^dynamo-mocker: --num-workers 100 needs 300 ZMQ sockets, about \d+ file descriptors \(two per socket\), more than this process may open \(512, ulimit -n\): raise the limit, or use DYN_EVENT_PLANE=nats\n$/);
  });
});

describe('--stagger-delay', () => {
  it('spaces the launches: three workers 0.4 s apart register about 0.4 s apart', async () => {
    const root = fileRoot();
    const ns = 'stagger';
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const w = await startWorkerProcess(
      ['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--num-workers', '3', '--stagger-delay', '0.4'],
      { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_NAMESPACE: ns },
      { expectServing: false },
    );
    // When each record first became visible, polled every 10 ms.
    const seenAt: number[] = [];
    await waitFor(
      async () => {
        if (w.proc.exitCode !== null) throw new Error(`worker exited with ${w.proc.exitCode}:\n${w.output()}`);
        const n = (await client.instances(EP(ns))).length;
        while (seenAt.length < n) seenAt.push(performance.now());
        return n >= 3;
      },
      { timeoutMs: 10_000, message: 'three instances' },
    );
    const gaps = [seenAt[1] - seenAt[0], seenAt[2] - seenAt[1]];
    for (const gap of gaps) {
      expect(gap).toBeGreaterThan(300);
      expect(gap).toBeLessThan(1500);
    }
    expect(w.output()).toContain('starting 3 workers 0.4 s apart');
    await client.close();
    expect(await w.stop()).toBe(0);
  });

  it('a negative value other than -1 exits 2 with one line naming the flag, before anything connects', async () => {
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--num-workers', '4', '--stagger-delay', '-0.2'], {}, { expectServing: false });
    expect(await w.exited).toBe(2);
    expect(w.output().trim().split('\n')).toEqual(["dynamo-mocker: --stagger-delay: must be ≥ 0 (seconds between worker launches) or -1 (auto), got '-0.2'"]);
  });
});
