// Real nats-server and etcd processes on ephemeral loopback ports with temp data dirs, for tests.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from 'nats';
import { afterAll, beforeAll } from 'vitest';

export interface ServerHandle {
  url: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** True if the binary exists. In CI a missing binary is an error, never a skip. */
export function requireBinary(name: string): boolean {
  const found = spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
  if (!found && process.env.CI === 'true') throw new Error(`${name} is not installed (CI must install the Debian package)`);
  return found;
}

export const haveServers = (): boolean => requireBinary('nats-server') && requireBinary('etcd');

/** Polls `cond` until it holds or the deadline passes (waits on a condition, never a fixed sleep). */
export async function waitFor(cond: () => boolean | Promise<boolean>, opts: { timeoutMs?: number; intervalMs?: number; message?: string } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${opts.message ?? 'condition not met'}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 10));
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = new Socket();
    s.once('error', () => resolve(false));
    s.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
  });
}

function launch(cmd: string, args: string[]): { proc: ChildProcess; output: () => string; exited: () => boolean } {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let out = '';
  let exited = false;
  proc.stdout!.on('data', (d) => (out = (out + d).slice(-8000)));
  proc.stderr!.on('data', (d) => (out = (out + d).slice(-8000)));
  proc.once('exit', () => {
    exited = true;
    live.delete(proc);
  });
  return { proc, output: () => out, exited: () => exited };
}

/** Stops the process and removes its data dir (none: keep it). */
async function stopProcess(proc: ChildProcess, dir: string | null): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) {
    const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  }
  if (dir !== null) rmSync(dir, { recursive: true, force: true });
}

async function startWithRetry<T extends ServerHandle>(start: () => Promise<T>): Promise<T> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start();
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

/** A nats-server that can be taken down and brought back on the same port with the same JetStream store. */
export interface NatsHandle extends ServerHandle {
  /** Stops the server (SIGTERM), keeping its port and store dir for `resume`. */
  halt(): Promise<void>;
  /** Starts it again on the same port and store dir; resolves once it accepts connections. */
  resume(): Promise<void>;
}

async function launchNats(port: number, dir: string, jetstream: boolean): Promise<ReturnType<typeof launch>> {
  const args = ['-a', '127.0.0.1', '-p', String(port)];
  if (jetstream) args.push('-js', '-sd', dir);
  const p = launch('nats-server', args);
  try {
    await waitFor(async () => {
      if (p.exited()) throw new Error(`nats-server exited: ${p.output()}`);
      return (!jetstream || /Server is ready/.test(p.output())) && (await canConnect(port));
    }, { timeoutMs: 10_000, message: `nats-server on ${port}: ${p.output()}` });
  } catch (err) {
    await stopProcess(p.proc, null);
    throw err;
  }
  return p;
}

export function startNats(opts: { jetstream?: boolean } = {}): Promise<NatsHandle> {
  const jetstream = opts.jetstream !== false;
  return startWithRetry(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nats-test-'));
    const port = await freePort();
    let p: ReturnType<typeof launch>;
    try {
      p = await launchNats(port, dir, jetstream);
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return restartable('nats-server', `nats://127.0.0.1:${port}`, port, dir, p, () => launchNats(port, dir, jetstream));
  });
}

/**
 * A server handle whose `halt` stops the process but keeps its ports and data dir, and whose
 * `resume` launches it again there (for outage tests); `stop` ends it and removes the dir.
 */
function restartable(
  name: string,
  url: string,
  port: number,
  dir: string,
  first: ReturnType<typeof launch>,
  relaunch: () => Promise<ReturnType<typeof launch>>,
): NatsHandle & EtcdHandle {
  let p = first;
  const handle: NatsHandle & EtcdHandle = {
    url,
    port,
    pid: p.proc.pid!,
    stop: () => stopProcess(p.proc, dir),
    halt: () => stopProcess(p.proc, null),
    resume: async () => {
      if (p.proc.exitCode === null && p.proc.signalCode === null) throw new Error(`${name} is still running`);
      p = await relaunch();
      handle.pid = p.proc.pid!;
    },
  };
  return handle;
}

/** An etcd that can be taken down and brought back on the same ports with the same data dir (its leases and keys). */
export interface EtcdHandle extends ServerHandle {
  /** Stops the server (SIGTERM), keeping its ports and data dir for `resume`. */
  halt(): Promise<void>;
  /** Starts it again on the same ports and data dir; resolves once it reports healthy. */
  resume(): Promise<void>;
}

async function launchEtcd(port: number, peer: number, dir: string): Promise<ReturnType<typeof launch>> {
  const client = `http://127.0.0.1:${port}`;
  const peerUrl = `http://127.0.0.1:${peer}`;
  const p = launch(
    'etcd',
    [
      '--data-dir', dir, '--name', 'default',
      '--listen-client-urls', client, '--advertise-client-urls', client,
      '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl,
      '--initial-cluster', `default=${peerUrl}`, '--log-level', 'error',
    ],
  );
  try {
    await waitFor(async () => {
      if (p.exited()) throw new Error(`etcd exited: ${p.output()}`);
      try {
        const res = await fetch(`${client}/health`);
        return res.ok && ((await res.json()) as { health?: string }).health === 'true';
      } catch {
        return false;
      }
    }, { timeoutMs: 15_000, intervalMs: 25, message: `etcd on ${port}: ${p.output()}` });
  } catch (err) {
    await stopProcess(p.proc, null);
    throw err;
  }
  return p;
}

export function startEtcd(): Promise<EtcdHandle> {
  return startWithRetry(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'etcd-test-'));
    const port = await freePort();
    const peer = await freePort();
    let p: ReturnType<typeof launch>;
    try {
      p = await launchEtcd(port, peer, dir);
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return restartable('etcd', `http://127.0.0.1:${port}`, port, dir, p, () => launchEtcd(port, peer, dir));
  });
}

/** A real Prometheus on an ephemeral loopback port with a temp data dir, ready to answer. */
export async function startPrometheus(config: string): Promise<ServerHandle & { output(): string }> {
  const dir = mkdtempSync(join(tmpdir(), 'prometheus-test-'));
  writeFileSync(join(dir, 'prometheus.yml'), config);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const p = launch('prometheus', [
    `--config.file=${join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--log.level=warn',
  ]);
  try {
    await waitFor(
      async () => {
        if (p.exited()) throw new Error(`prometheus exited: ${p.output()}`);
        try {
          return (await fetch(`${url}/-/ready`)).ok;
        } catch {
          return false;
        }
      },
      { timeoutMs: 20_000, intervalMs: 50, message: `prometheus on ${port}: ${p.output()}` },
    );
  } catch (err) {
    await stopProcess(p.proc, dir);
    throw err;
  }
  return { url, port, pid: p.proc.pid!, output: p.output, stop: () => stopProcess(p.proc, dir) };
}

export interface Cluster {
  nats: NatsHandle;
  etcd: EtcdHandle;
  /** NATS_SERVER and ETCD_ENDPOINTS for a worker or client. */
  env: Record<string, string>;
  /** A plain NATS client connection, as a router or test observer would hold. */
  nc: NatsConnection;
}

/**
 * Starts a NATS (JetStream) and an etcd for the enclosing describe block and stops them after it.
 * Read the fields inside tests or hooks: they are filled in by the beforeAll hook.
 */
export function useCluster(): Cluster {
  const cluster = {} as Cluster;
  beforeAll(async () => {
    [cluster.nats, cluster.etcd] = await Promise.all([startNats(), startEtcd()]);
    cluster.env = { NATS_SERVER: cluster.nats.url, ETCD_ENDPOINTS: cluster.etcd.url };
    cluster.nc = await connect({ servers: `127.0.0.1:${cluster.nats.port}` });
  });
  afterAll(async () => {
    await cluster.nc?.close();
    await Promise.all([cluster.nats?.stop(), cluster.etcd?.stop()]);
  });
  return cluster;
}
