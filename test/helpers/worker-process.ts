// Runs `bin/dynamo-mocker` as a child process against test servers and waits for it to serve.
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './servers.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = join(ROOT, 'bin', 'dynamo-mocker');
export const TINY_MODEL = join(ROOT, 'test', 'fixtures', 'tiny-model');

export interface WorkerProcess {
  proc: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Port of the system status server (when DYN_SYSTEM_PORT was given). */
  statusPort: number | null;
  /** GET a status-server path. */
  get(path: string): Promise<{ status: number; body: string }>;
  /** Current value of a metric series whose line starts with `prefix` (sum over matches), or null. */
  metric(prefix: string): Promise<number | null>;
  /** Sends `signal` and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

/**
 * Starts a worker with the given CLI args and env. Waits until it logs that it serves (or exits).
 * The status server is always enabled on a random port.
 */
export async function startWorkerProcess(
  args: string[],
  env: Record<string, string>,
  opts: { expectServing?: boolean; timeoutMs?: number; workers?: number } = {},
): Promise<WorkerProcess> {
  const proc = spawn(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', DYN_SYSTEM_PORT: '0', DYN_SYSTEM_HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve((exitCode = code))));
  const handle: WorkerProcess = {
    proc,
    output: () => out,
    statusPort: null,
    async get(path) {
      const res = await fetch(`http://127.0.0.1:${handle.statusPort}${path}`);
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
  await waitFor(
    () => {
      if (exitCode !== undefined) throw new Error(`worker exited with ${exitCode}:\n${out}`);
      return /worker\(s\) serving/.test(out);
    },
    { timeoutMs: opts.timeoutMs ?? 20_000, message: `worker did not start serving:\n${out}` },
  );
  const m = /system status server listening on [^:]+:(\d+)/.exec(out);
  handle.statusPort = m ? Number(m[1]) : null;
  return handle;
}
