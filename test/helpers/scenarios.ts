// Scenarios several integration tests run against different planes and generations.
import { performance } from 'node:perf_hooks';
import { expect } from 'vitest';
import type { StreamHandle } from '../../src/client/dynamo-client.js';
import type { StreamResult } from '../../src/client/stream-server.js';
import { waitFor } from './servers.js';
import type { WorkerProcess } from './worker-process.js';

/**
 * The seed's admission scenario, on a worker started with --max-num-seqs 3: 10 concurrent requests
 * are all in flight, 3 stream while 7 have no first token yet, then all 10 complete.
 */
export async function tenRequestsThreeSlots(w: WorkerProcess, send: (i: number) => Promise<StreamHandle>): Promise<StreamResult[]> {
  const handles = await Promise.all(Array.from({ length: 10 }, (_, i) => send(i)));
  await waitFor(() => handles.filter((h) => h.stream.tokens.length > 0).length === 3, { timeoutMs: 5000, message: '3 streams with tokens' });
  expect(await w.metric('dynamo_component_inflight_requests')).toBe(10);
  expect(handles.filter((h) => h.stream.tokens.length === 0)).toHaveLength(7);
  expect(await w.metric('vllm:num_requests_running')).toBe(3);
  expect(await w.metric('vllm:num_requests_waiting')).toBe(7);
  const results = await Promise.all(handles.map((h) => h.stream.done));
  expect(results.every((r) => r.tokenIds.length === 40 && r.completeFinal)).toBe(true);
  expect(await w.metric('dynamo_component_inflight_requests')).toBe(0);
  return results;
}

/**
 * `stop`, then `kill`, sent after 5 tokens of a long stream: each ends the stream within a second
 * without complete_final (with the sentinel or not, as the generation says), frees the KV blocks and
 * counts a cancellation.
 */
export async function stopAndKill(w: WorkerProcess, send: () => Promise<StreamHandle>, sentinel: boolean): Promise<void> {
  for (const how of ['stop', 'kill'] as const) {
    const h = await send();
    await waitFor(() => h.stream.tokens.length >= 5, { timeoutMs: 5000 });
    const t0 = performance.now();
    if (how === 'stop') h.stream.stop();
    else h.stream.kill();
    const r = await h.stream.done;
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(r).toMatchObject({ completeFinal: false, sentinel });
    expect(r.tokenIds.length).toBeLessThan(2000);
  }
  await waitFor(async () => (await w.metric('dynamo_component_kvstats_active_blocks')) === 0, { timeoutMs: 3000, message: 'blocks freed' });
  expect(await w.metric('dynamo_component_cancellation_total')).toBe(2);
}
