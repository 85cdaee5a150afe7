// Offline replay: expected timings, determinism, prefix reuse from hash ids, closed loop, errors.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseReplayConfig } from '../../src/config.js';
import { simulateTrace } from '../../src/replay/run-replay.js';
import { parseTrace } from '../../src/replay/trace.js';
import { loadWorkload } from '../../src/replay/workload.js';
import { mixedTraceLines, replayCli } from '../helpers/traces.js';


const replay = replayCli;

// Dynamo's polynomial, written out independently of src/.
const prefill = (n: number) => (n <= 0 ? 0 : 4.209989e-7 * n * n + 1.518344e-2 * n + 16.50142);
const decode = (p: number) => Math.max(1, -25.74 * p * p + 54.01 * p + 5.74);
const TOTAL_KV = 16384 * 64;

describe('replay timings', () => {
  it('single request', async () => {
    const r = await replay([{ timestamp: 0, input_length: 1000, output_length: 3 }]);
    expect(r.code).toBe(0);
    const d = decode((16 * 64) / TOTAL_KV);
    const first = prefill(1000) + d;
    const row = r.rows[0];
    expect(row.first_token_ms).toBeCloseTo(first, 5);
    expect(row.finish_ms).toBeCloseTo(first + 2 * d, 5);
    expect(row.mean_itl_ms).toBeCloseTo(d, 5);
    expect(row.output_tokens).toBe(3);
    expect(row.cached_tokens).toBe(0);
  });

  it('two requests arriving together share passes', async () => {
    const r = await replay([
      { timestamp: 0, input_length: 100, output_length: 2 },
      { timestamp: 0, input_length: 200, output_length: 2 },
    ]);
    // One prefill call on 300 new tokens; 2 + 4 blocks active while decoding.
    const first = prefill(300) + decode((6 * 64) / TOTAL_KV);
    expect(r.rows[0].first_token_ms).toBeCloseTo(first, 5);
    expect(r.rows[1].first_token_ms).toBeCloseTo(first, 5);
    expect(r.rows[1].finish_ms).toBeCloseTo(first + decode((6 * 64) / TOTAL_KV), 5);
  });

  it('hash ids make prefixes reusable', async () => {
    // Second request shares its first 512-token chunk with the first; it arrives after the first finished.
    const r = await replay([
      { timestamp: 0, input_length: 600, output_length: 1, hash_ids: [7, 8] },
      { timestamp: 10_000, input_length: 700, output_length: 1, hash_ids: [7, 9] },
    ]);
    expect(r.rows[1].cached_tokens).toBe(512);
    const blocks = Math.ceil(700 / 64);
    expect(r.rows[1].ttft_ms).toBeCloseTo(prefill(700 - 512) + decode((blocks * 64) / TOTAL_KV), 5);
    expect(r.summary.prefix_hit_rate).toBeCloseTo(512 / 1300, 5);
  });

  it('different hash ids share nothing', async () => {
    const r = await replay([
      { timestamp: 0, input_length: 512, output_length: 1, hash_ids: [1] },
      { timestamp: 10_000, input_length: 512, output_length: 1, hash_ids: [2] },
    ]);
    expect(r.rows[1].cached_tokens).toBe(0);
  });

  it('speedup ratio divides durations; 0 means none', async () => {
    const base = await replay([{ timestamp: 0, input_length: 1000, output_length: 3 }]);
    const fast = await replay([{ timestamp: 0, input_length: 1000, output_length: 3 }], ['--speedup-ratio', '4']);
    expect(fast.rows[0].finish_ms).toBeCloseTo(base.rows[0].finish_ms / 4, 5);
    const instant = await replay([{ timestamp: 0, input_length: 1000, output_length: 3 }], ['--speedup-ratio', '0']);
    expect(instant.rows[0].finish_ms).toBe(0);
  });

  it('arrival speedup compresses timestamps', async () => {
    const r = await replay(
      [
        { timestamp: 1000, input_length: 10, output_length: 1 },
        { timestamp: 3000, input_length: 10, output_length: 1 },
      ],
      ['--arrival-speedup', '2'],
    );
    expect(r.rows[0].arrival_ms).toBe(0);
    expect(r.rows[1].arrival_ms).toBe(1000);
  });

  it('closed loop keeps N requests in flight', async () => {
    const lines = Array.from({ length: 5 }, (_, i) => ({ timestamp: i * 100_000, input_length: 64, output_length: 2 }));
    const r = await replay(lines, ['--concurrency', '2']);
    expect(r.rows[0].arrival_ms).toBe(0);
    expect(r.rows[1].arrival_ms).toBe(0);
    // The third starts exactly when one of the first two finishes.
    expect(r.rows[2].arrival_ms).toBeCloseTo(Math.min(r.rows[0].finish_ms, r.rows[1].finish_ms), 6);
  });

  it('preemption under KV pressure is counted and everything completes', async () => {
    const lines = Array.from({ length: 6 }, () => ({ timestamp: 0, input_length: 40, output_length: 100 }));
    const r = await replay(lines, ['--num-gpu-blocks-override', '12', '--block-size', '16', '--watermark', '0']);
    expect(r.summary.completed).toBe(6);
    expect(r.summary.preemptions).toBeGreaterThan(0);
    expect(r.rows.every((row: { output_tokens: number }) => row.output_tokens === 100)).toBe(true);
  });

  it('reports a request too large for the pool instead of dropping it', async () => {
    const r = await replay(
      [
        { timestamp: 0, input_length: 10_000, output_length: 1 },
        { timestamp: 0, input_length: 10, output_length: 1 },
      ],
      ['--num-gpu-blocks-override', '10'],
    );
    expect(r.rows).toHaveLength(2);
    expect(r.rows[0].error).toMatch(/rejected/);
    expect(r.rows[1].output_tokens).toBe(1);
    expect(r.summary.errors).toBe(1);
  });
});

describe('replay determinism', () => {
  const lines = mixedTraceLines(200);

  it('same input and seed give byte-identical files', async () => {
    const a = await replay(lines, ['--num-gpu-blocks-override', '400']);
    const b = await replay(lines, ['--num-gpu-blocks-override', '400']);
    expect(a.bytes).toBe(b.bytes);
    expect(a.bytes.length).toBeGreaterThan(0);
    expect(a.rows.map((r: { index: number }) => r.index)).toEqual(lines.map((_, i) => i));
  });

  it.each([
    { label: 'roomy cache', args: ['--num-gpu-blocks-override', '2000'] },
    { label: 'preemption, LIFO', args: ['--num-gpu-blocks-override', '250', '--max-num-batched-tokens', '512'] },
    { label: 'preemption, FIFO', args: ['--num-gpu-blocks-override', '250', '--max-num-batched-tokens', '512', '--preemption-mode', 'fifo'] },
    { label: 'no chunked prefill', args: ['--num-gpu-blocks-override', '300', '--no-enable-chunked-prefill', '--max-num-batched-tokens', '4096'] },
    // The KV router counts each private block as its own block: as if it had been hashed.
    { label: 'KV-routed fleet', args: ['--num-gpu-blocks-override', '300', '--num-workers', '3', '--router', 'kv'] },
  ])('private-block shortcut gives exactly the fully hashed result: $label', async ({ args }) => {
    const dir = mkdtempSync(join(tmpdir(), 'replay-private-'));
    const trace = join(dir, 'trace.jsonl');
    writeFileSync(trace, lines.map((l) => JSON.stringify(l)).join('\n'));
    const flags: Record<string, unknown> = { trace, blockSize: '16', progress: false };
    for (let i = 0; i < args.length; i++) {
      const name = args[i].replace(/^--(no-)?/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
      if (args[i].startsWith('--no-')) flags[name] = false;
      else flags[name] = args[++i];
    }
    const config = parseReplayConfig(flags, []);
    const workload = loadWorkload(config);
    const io = { out: () => {}, err: () => {}, env: {}, isTty: false };
    const fast = await simulateTrace(config, workload, io);
    const reference = await simulateTrace(config, workload, io, { markPrivate: false });
    expect(JSON.stringify(fast.results)).toBe(JSON.stringify(reference.results));
    expect(fast.summary).toEqual(reference.summary);
    if (args.includes('250')) expect(fast.summary.preemptions).toBeGreaterThan(0);
  });

  it('prefix caching off changes hits but not token counts', async () => {
    const a = await replay(lines, ['--no-enable-prefix-caching']);
    expect(a.summary.cached_tokens).toBe(0);
    expect(a.summary.output_tokens).toBe(lines.reduce((s, l) => s + l.output_length, 0));
  });

  it('data parallel ranks serve round robin', async () => {
    const a = await replay(lines.slice(0, 10), ['--data-parallel-size', '2']);
    expect(a.rows.map((r: { dp_rank: number }) => r.dp_rank)).toEqual([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
  });
});

describe('trace parsing', () => {
  it('rejects more hash ids than the input covers', () => {
    expect(() => parseTrace('{"timestamp":0,"input_length":10,"output_length":1,"hash_ids":[1,2]}', 512)).toThrow(/line 1/);
  });
  it('rejects non-JSON lines with their number', () => {
    expect(() => parseTrace('{"input_length":1,"output_length":1}\nnope', 512)).toThrow(/line 2/);
  });
});
