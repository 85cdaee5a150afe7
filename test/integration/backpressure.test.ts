// Backpressure on a real worker (Dynamo 1.4, file discovery + TCP: no servers): a "frontend" that accepts
// the call-home connections of 10 long streams and never reads keeps the worker's memory bounded, a
// normal client's stream on the same worker still completes in its usual time, and past the stall
// timeout the stuck requests are cancelled, their KV freed and counted.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DynamoClient, preprocessedRequestJson1x, requestControlJson, type Instance } from '../../src/client/dynamo-client.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { createXxh3 } from '../../src/hashing/xxh3.js';
import { waitFor } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const xxh = await createXxh3();
const STUCK_STREAMS = 10;
const STUCK_TOKENS = 60_000;
const STALL_TIMEOUT_S = 2;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Resident memory of a process, MB. */
function rssMb(pid: number): number {
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  return kb / 1024;
}

/** A frontend's stream server that accepts every call-home connection and never reads a byte. */
async function neverReadingFrontend(): Promise<{ address: string; sockets: Socket[]; server: Server }> {
  const sockets: Socket[] = [];
  const server = createServer({ pauseOnConnect: true }, (s) => {
    s.on('error', () => {});
    sockets.push(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, sockets, server };
}

const prompt = (n: number, base: number) => Array.from({ length: n }, (_, i) => ((base + i) % 1900) + 10);

/** One normal streamed request: its duration (send to sentinel) and what it received. */
async function normalStream(client: DynamoClient, inst: Instance, maxTokens: number, base: number) {
  const h = await client.generate(inst, { tokenIds: prompt(16, base), maxTokens });
  const r = await h.stream.done;
  return { ms: r.endedAt - h.sentAt, tokens: r.tokenIds.length, completeFinal: r.completeFinal, errors: r.errors };
}

describe('a frontend that stops reading', () => {
  it(`${STUCK_STREAMS} streams × ${STUCK_TOKENS} tokens to a never-reading peer: bounded RSS, other streams unaffected, cancelled and freed after the stall timeout`, async () => {
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
    dirs.push(root);
    const w: WorkerProcess = await startWorkerProcess(
      ['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--speedup-ratio', '0', '--max-model-len', '100000', '--no-kv-events'],
      { DYN_NAMESPACE: 'stuck', DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, DYN_MOCKER_STREAM_STALL_TIMEOUT: String(STALL_TIMEOUT_S) },
    );
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const frontend = await neverReadingFrontend();
    try {
      const [inst] = await client.waitForInstances({ namespace: 'stuck', component: 'backend', endpoint: 'generate' }, 1);
      const pid = w.proc.pid!;
      // Warm up (JIT, buffers), then the normal stream's usual time on an otherwise idle worker.
      await normalStream(client, inst, 2000, 0);
      const baseline = await normalStream(client, inst, 2000, 100);
      expect(baseline).toMatchObject({ tokens: 2000, completeFinal: true, errors: [] });
      const rssBefore = rssMb(pid);

      // The stuck streams: requests whose connection_info names the never-reading frontend.
      for (let i = 0; i < STUCK_STREAMS; i++) {
        const id = `stuck-${i}`;
        const control = requestControlJson(id, frontend.address, `subject-${i}`, 'json');
        const reply = await client.sendRaw(inst, encodeTwoPartText(control, preprocessedRequestJson1x({ tokenIds: prompt(16, 1000 + 16 * i), maxTokens: STUCK_TOKENS }), xxh));
        expect(reply).toHaveLength(0);
      }
      // Each fills the kernel's socket buffers and its own 1 MiB send buffer, then pauses.
      await waitFor(async () => (await w.metric('dynamo_mocker_paused_requests{')) === STUCK_STREAMS, {
        timeoutMs: 15_000,
        message: `${STUCK_STREAMS} paused requests`,
      });
      const rssPaused = rssMb(pid);
      const activeWhilePaused = await w.metric('dynamo_component_kvstats_active_blocks{');
      expect(activeWhilePaused).toBeGreaterThan(STUCK_STREAMS); // they keep their KV blocks
      expect(await w.metric('vllm:num_requests_running{')).toBe(STUCK_STREAMS); // and their slots

      // A normal client on the same worker meanwhile: complete, and in about its usual time.
      const during = await normalStream(client, inst, 2000, 200);
      expect(during).toMatchObject({ tokens: 2000, completeFinal: true, errors: [] });
      expect(during.ms).toBeLessThan(baseline.ms * 3 + 250);

      // Past the stall timeout: cancelled, KV freed, counted, one warning each.
      await waitFor(async () => (await w.metric('dynamo_component_errors_total{') ?? 0) >= STUCK_STREAMS, {
        timeoutMs: STALL_TIMEOUT_S * 1000 + 10_000,
        message: 'stalled requests cancelled',
      });
      const { body } = await w.get('/metrics');
      const series = (name: string) => body.split('\n').filter((l) => l.startsWith(name) && !l.endsWith(' 0'));
      expect(series('dynamo_component_errors_total{')).toEqual([expect.stringMatching(/error_type="publish_response".* 10$/)]);
      expect(series('dynamo_component_cancellation_total{')).toEqual([expect.stringMatching(/ 10$/)]);
      expect(await w.metric('dynamo_component_kvstats_active_blocks{')).toBe(0);
      expect(await w.metric('dynamo_mocker_paused_requests{')).toBe(0);
      expect(await w.metric('vllm:num_requests_running{')).toBe(0);
      expect(w.output().match(/response stream stalled/g)).toHaveLength(STUCK_STREAMS);
      // The frontend, reading at last, finds each connection dropped.
      expect(frontend.sockets).toHaveLength(STUCK_STREAMS);
      let closed = 0;
      for (const s of frontend.sockets) {
        s.on('close', () => closed++);
        s.on('data', () => {});
        s.resume();
      }
      await waitFor(() => closed === STUCK_STREAMS, { message: 'call-home connections closed' });
      const rssAfter = rssMb(pid);

      const growth = rssPaused - rssBefore;
      console.log(
        `never-reading peer, ${STUCK_STREAMS} streams × ${STUCK_TOKENS} tokens: RSS ${rssBefore.toFixed(0)} MB → ${rssPaused.toFixed(0)} MB paused ` +
          `(+${growth.toFixed(1)} MB, ${(growth / STUCK_STREAMS).toFixed(2)} MB per stream) → ${rssAfter.toFixed(0)} MB after the stall timeout; ` +
          `normal 2000-token stream ${baseline.ms.toFixed(0)} ms alone, ${during.ms.toFixed(0)} ms beside them`,
      );
      expect(growth).toBeLessThan(100);

      // Still serving.
      expect(await normalStream(client, inst, 50, 300)).toMatchObject({ tokens: 50, completeFinal: true });
    } finally {
      for (const s of frontend.sockets) s.destroy();
      await new Promise<void>((resolve) => frontend.server.close(() => resolve()));
      await client.close();
      expect(await w.stop()).toBe(0);
    }
  }, 60_000);
});
