// Starts a throwaway nats-server (JetStream) and etcd on free loopback ports for scripts.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const children = [];
const dirs = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const have = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;

/** Installs the Debian packages when missing and running as root; otherwise explains and exits. */
export function ensureServers({ nats = true } = {}) {
  const missing = [];
  if (nats && !have('nats-server')) missing.push('nats-server');
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

export const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

export async function waitFor(cond, what, timeoutMs = 15000) {
  const deadline = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Spawns a child that is killed when this process exits; collects its output. */
export function start(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  children.push(child);
  return { child, output: () => out };
}

/** Starts etcd and (unless `nats` is false) NATS with JetStream; returns the env a worker or client needs. */
export async function startLocalServers({ nats: withNats = true } = {}) {
  ensureServers({ nats: withNats });
  const [natsPort, etcdPort, peerPort] = await Promise.all([freePort(), freePort(), freePort()]);
  const etcdDir = mkdtempSync(join(tmpdir(), 'local-etcd-'));
  dirs.push(etcdDir);
  let nats = null;
  if (withNats) {
    const natsDir = mkdtempSync(join(tmpdir(), 'local-nats-'));
    dirs.push(natsDir);
    nats = start('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', natsDir]);
  }
  const etcdUrl = `http://127.0.0.1:${etcdPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  start('etcd', ['--data-dir', etcdDir, '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `default=${peer}`, '--log-level', 'error']);
  if (nats) await waitFor(() => /Server is ready/.test(nats.output()), 'nats-server');
  await waitFor(async () => (await fetch(`${etcdUrl}/health`).then((r) => r.json()).catch(() => ({}))).health === 'true', 'etcd');
  return { ...(nats ? { NATS_SERVER: `nats://127.0.0.1:${natsPort}` } : {}), ETCD_ENDPOINTS: etcdUrl };
}
