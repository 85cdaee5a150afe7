// Runs `bin/dynamo-mocker` as a child process and waits, on /health, until it serves.
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import { freePort, waitFor } from './servers.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = join(ROOT, 'bin', 'dynamo-mocker');
export const TINY_MODEL = join(ROOT, 'test', 'fixtures', 'tiny-model');
/** A `--import` hook that appends every module URL the process loads to $MODULE_TRACE_FILE. */
export const MODULE_TRACE = join(ROOT, 'test', 'helpers', 'module-trace.mjs');

const running = new Set<ChildProcess>();
// A test that fails before stopping its worker must not leave the process behind: after each test
// file, whatever is still running is killed.
afterAll(() => {
  for (const proc of running) proc.kill('SIGKILL');
});

export interface WorkerProcess {
  proc: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far (for failure messages and log checks). */
  output(): string;
  /** Port of the system status server (null when the test turned it off). */
  statusPort: number | null;
  /** GET a status-server path. */
  get(path: string): Promise<{ status: number; body: string }>;
  /** Current value of a metric series whose line starts with `prefix` (sum over matches), or null. */
  metric(prefix: string): Promise<number | null>;
  /** Sends `signal` and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

export interface StartOptions {
  /** Wait until /health answers 200 (default), or return at once (e.g. for a worker expected to fail). */
  expectServing?: boolean;
  timeoutMs?: number;
  /** Node options placed before the script (e.g. ['--import', MODULE_TRACE]). */
  nodeArgs?: string[];
  /** Reads the worker's stderr no faster than this (a slow log collector); default: as fast as it comes. */
  stderrBytesPerSecond?: number;
}

/**
 * Starts a worker with the given CLI args and env. The status server runs on a free loopback port
 * (unless env sets DYN_SYSTEM_PORT itself), and the worker counts as serving once /health says ready,
 * which it does only when every worker of the process is registered.
 */
export async function startWorkerProcess(args: string[], env: Record<string, string>, opts: StartOptions = {}): Promise<WorkerProcess> {
  const statusPort = env.DYN_SYSTEM_PORT === undefined ? await freePort() : Number(env.DYN_SYSTEM_PORT) > 0 ? Number(env.DYN_SYSTEM_PORT) : null;
  const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), BIN, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      DYN_SYSTEM_HOST: '127.0.0.1',
      DYN_TCP_RPC_HOST: '127.0.0.1',
      ...(statusPort !== null ? { DYN_SYSTEM_PORT: String(statusPort) } : {}),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  const stderrRate = opts.stderrBytesPerSecond;
  proc.stderr!.on('data', (d: Buffer) => {
    out += d;
    if (stderrRate === undefined) return;
    // A full pipe makes the worker's writes wait (or fail with EAGAIN), as a slow collector does.
    proc.stderr!.pause();
    setTimeout(() => proc.stderr!.resume(), (d.length / stderrRate) * 1000);
  });
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve((exitCode = code))));
  const handle: WorkerProcess = {
    proc,
    output: () => out,
    statusPort,
    async get(path) {
      const res = await fetch(`http://127.0.0.1:${statusPort}${path}`);
      return { status: res.status, body: await res.text() };
    },
    async metric(prefix) {
      const { body } = await handle.get('/metrics');
      let sum: number | null = null;
      for (const line of body.split('\n')) {
        if (!line.startsWith(prefix)) continue;
        sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
      }
      return sum;
    },
    async stop(signal = 'SIGTERM') {
      if (exitCode === undefined) proc.kill(signal);
      return exited;
    },
    exited,
  };
  if (opts.expectServing === false) return handle;
  if (statusPort === null) throw new Error('startWorkerProcess: waiting for a worker to serve needs its status server');
  await waitFor(
    async () => {
      if (exitCode !== undefined) throw new Error(`worker exited with ${exitCode}:\n${out}`);
      return (await handle.get('/health').catch(() => ({ status: 0 }))).status === 200;
    },
    { timeoutMs: opts.timeoutMs ?? 20_000, message: `worker did not become ready:\n${out}` },
  );
  return handle;
}
