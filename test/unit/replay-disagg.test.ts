// Disaggregated replay (--prefill-workers/--decode-workers): exact handoff timings, placement, transfer modes, flags.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseReplayConfig } from '../../src/config.js';
import { mixedTraceLines, replayCli } from '../helpers/traces.js';

const dir = mkdtempSync(join(tmpdir(), 'replay-disagg-'));

const replay = replayCli;

// Dynamo's polynomial, written out independently of src/.
const prefill = (n: number) => (n <= 0 ? 0 : 4.209989e-7 * n * n + 1.518344e-2 * n + 16.50142);
const decode = (p: number) => Math.max(1, -25.74 * p * p + 54.01 * p + 5.74);
const TOTAL_KV = 16384 * 64;
/** 1 MB of KV per token over 1 GB/s: 1 ms per token. */
const MS_PER_TOKEN = ['--kv-bytes-per-token', '1000000', '--kv-transfer-bandwidth', '1'];
const P1D1 = ['--prefill-workers', '1', '--decode-workers', '1'];

describe('disaggregated replay timings', () => {
  it('TTFT = prefill pass end + transfer delay + one decode pass', async () => {
    const r = await replay([{ timestamp: 0, input_length: 8, output_length: 3 }], [...P1D1, ...MS_PER_TOKEN]);
    expect(r.code).toBe(0);
    const d = decode(64 / TOTAL_KV); // one 64-token block in use, on either worker
    const prefillEnd = prefill(8) + d; // the prefill pass also emits the hidden token
    const row = r.rows[0];
    expect(row.prefill_done_ms).toBeCloseTo(prefillEnd, 5);
    expect(row.transfer_ms).toBe(8);
    expect(row.decode_start_ms).toBeCloseTo(prefillEnd + 8, 5);
    expect(row.ttft_ms).toBeCloseTo(prefillEnd + 8 + d, 5);
    expect(row.finish_ms).toBeCloseTo(prefillEnd + 8 + 3 * d, 5);
    expect(row.mean_itl_ms).toBeCloseTo(d, 5);
    // Only decode tokens count; the prefill's token is hidden.
    expect(row.output_tokens).toBe(3);
    expect([row.prefill_worker, row.decode_worker]).toEqual([0, 0]);
    expect(r.summary.passes).toBe(4);
    expect(r.summary.disagg.transfer_ms.mean).toBe(8);
    expect(r.summary.disagg.prefill.passes).toBe(1);
    expect(r.summary.disagg.decode.passes).toBe(3);
    expect(r.out).toMatch(/^disaggregated +1 prefill \+ 1 decode workers/m);
    expect(r.out).toMatch(/^KV transfer +8\.00/m);
    expect(r.err).toBe('');
  });

  it('the transfer delay ignores --speedup-ratio; pass times scale', async () => {
    const trace = [{ timestamp: 0, input_length: 8, output_length: 3 }];
    const base = await replay(trace, [...P1D1, ...MS_PER_TOKEN]);
    const fast = await replay(trace, [...P1D1, ...MS_PER_TOKEN, '--speedup-ratio', '4']);
    const d = decode(64 / TOTAL_KV);
    const row = fast.rows[0];
    expect(row.prefill_done_ms).toBeCloseTo(base.rows[0].prefill_done_ms / 4, 5);
    expect(row.transfer_ms).toBe(8);
    expect(row.ttft_ms).toBeCloseTo((prefill(8) + d) / 4 + 8 + d / 4, 5);
    const instant = await replay(trace, [...P1D1, ...MS_PER_TOKEN, '--speedup-ratio', '0']);
    expect(instant.rows[0].ttft_ms).toBe(8);
    expect(instant.rows[0].finish_ms).toBe(8);
  });

  it('destination_missing transfers only the blocks the decode worker lacks', async () => {
    // B shares A's first 64-token chunk; A has finished (and left its blocks cached) when B arrives.
    const trace = [
      { timestamp: 0, input_length: 128, output_length: 2, hash_ids: [1, 2] },
      { timestamp: 10_000, input_length: 128, output_length: 2, hash_ids: [1, 3] },
    ];
    const flags = [...P1D1, ...MS_PER_TOKEN, '--block-size', '16', '--trace-block-size', '64'];
    const full = await replay(trace, flags);
    const missing = await replay(trace, [...flags, '--kv-transfer-timing-mode', 'destination_missing']);
    expect(full.rows.map((r: { transfer_ms: number }) => r.transfer_ms)).toEqual([128, 128]);
    expect(missing.rows.map((r: { transfer_ms: number }) => r.transfer_ms)).toEqual([128, 64]);
    // The prefill worker's own prefix hits are reported as before, and B's TTFT shrinks by the 64 ms saved.
    expect(missing.rows[1].cached_tokens).toBe(64);
    expect(full.rows[1].ttft_ms - missing.rows[1].ttft_ms).toBeCloseTo(64, 6);
    expect(missing.summary.disagg.kv_transfer_timing_mode).toBe('destination_missing');
  });
});

describe('disaggregated placement', () => {
  it('P=2, D=2 spread requests round-robin, each pool with its own rotation', async () => {
    const spaced = Array.from({ length: 4 }, (_, i) => ({ timestamp: i * 10_000, input_length: 100, output_length: 2 }));
    const a = await replay(spaced, ['--prefill-workers', '2', '--decode-workers', '2']);
    expect(a.rows.map((r: { prefill_worker: number }) => r.prefill_worker)).toEqual([0, 1, 0, 1]);
    expect(a.rows.map((r: { decode_worker: number }) => r.decode_worker)).toEqual([0, 1, 0, 1]);
    expect(a.summary.disagg.prefill.workers).toBe(2);
    expect(a.summary.disagg.decode.workers).toBe(2);
    // Together: the decode worker is chosen when the prefill is done (Dynamo's vLLM order), so
    // prefill worker 0's two requests finish first and take decode workers 0 and 1.
    const together = spaced.map((l) => ({ ...l, timestamp: 0 }));
    const b = await replay(together, ['--prefill-workers', '2', '--decode-workers', '2']);
    expect(b.rows.map((r: { prefill_worker: number }) => r.prefill_worker)).toEqual([0, 1, 0, 1]);
    expect(b.rows.map((r: { decode_worker: number }) => r.decode_worker)).toEqual([0, 0, 1, 1]);
  });

  it('a refusal on either side is reported as an error and the rest completes', async () => {
    // 10 blocks of 16: a 300-token prompt never fits (prefill refuses); 100 + 100 tokens fit a
    // prefill (100 + 1) but not a decode worker, which must hold the output too.
    const r = await replay(
      [
        { timestamp: 0, input_length: 300, output_length: 1 },
        { timestamp: 0, input_length: 100, output_length: 100 },
        { timestamp: 0, input_length: 20, output_length: 2 },
      ],
      [...P1D1, '--num-gpu-blocks-override', '10', '--block-size', '16'],
    );
    expect(r.rows[0].error).toMatch(/rejected/);
    expect(r.rows[0].prefill_done_ms).toBeNull();
    expect(r.rows[1].error).toMatch(/^decode worker 0: request rejected/);
    expect(r.rows[1].prefill_done_ms).not.toBeNull();
    expect(r.rows[2].output_tokens).toBe(2);
    expect(r.summary.errors).toBe(2);
  });

  it('without KV bytes per token the transfer takes no time, with a one-line warning', async () => {
    const r = await replay([{ timestamp: 0, input_length: 64, output_length: 2 }], P1D1);
    expect(r.rows[0].transfer_ms).toBe(0);
    expect(r.rows[0].decode_start_ms).toBe(r.rows[0].prefill_done_ms);
    expect(r.err).toMatch(/^warning: .*--kv-bytes-per-token.*\n$/);
    expect(r.summary.disagg.kv_bytes_per_token).toBeNull();
  });

  it('--model-path derives KV bytes per token from the model config', async () => {
    // tiny-model: 2 layers × 2 (K, V) × 2 KV heads × (64 / 4) head dim × 2 bytes (bfloat16) = 256 B.
    const model = fileURLToPath(new URL('../fixtures/tiny-model/', import.meta.url));
    const trace = [{ timestamp: 0, input_length: 8, output_length: 2 }];
    const r = await replay(trace, [...P1D1, '--model-path', model, '--kv-transfer-bandwidth', '0.001']);
    expect(r.summary.disagg.kv_bytes_per_token).toBe(256);
    expect(r.rows[0].transfer_ms).toBeCloseTo(((8 * 256) / 1e6) * 1000, 9); // 0.001 GB/s = 1e6 B/s
    const fp8 = await replay(trace, [...P1D1, '--model-path', model, '--kv-transfer-bandwidth', '0.001', '--kv-cache-dtype', 'fp8']);
    expect(fp8.summary.disagg.kv_bytes_per_token).toBe(128);
    expect(r.err).toBe('');
  });

  it('aggregated replay carries no disaggregation fields', async () => {
    const r = await replay([{ timestamp: 0, input_length: 64, output_length: 2 }], MS_PER_TOKEN);
    expect(Object.keys(r.rows[0])).not.toContain('prefill_worker');
    expect(r.summary.disagg).toBeUndefined();
    expect(r.out).not.toMatch(/disaggregated/);
  });
});

describe('disaggregated determinism', () => {
  const lines = mixedTraceLines(200);

  it('same trace, flags and seed give byte-identical files', async () => {
    const flags = ['--prefill-workers', '2', '--decode-workers', '3', '--num-gpu-blocks-override', '400', '--kv-transfer-timing-mode', 'destination_missing', ...MS_PER_TOKEN];
    const a = await replay(lines, flags);
    const b = await replay(lines, flags);
    expect(a.code).toBe(0);
    expect(a.bytes).toBe(b.bytes);
    expect(a.summaryBytes).toBe(b.summaryBytes);
    expect(a.summary.completed).toBe(200);
    expect(a.summary.output_tokens).toBe(lines.reduce((s, l) => s + l.output_length, 0));
    // Every decode worker took part.
    expect(new Set(a.rows.map((r: { decode_worker: number }) => r.decode_worker))).toEqual(new Set([0, 1, 2]));
  });
});

describe('disaggregation flags', () => {
  it.each([
    { args: ['--prefill-workers', '2'], flag: '--decode-workers', message: /is required with --prefill-workers/ },
    { args: ['--decode-workers', '2'], flag: '--prefill-workers', message: /is required with --decode-workers/ },
    { args: ['--prefill-workers', '0', '--decode-workers', '1'], flag: '--prefill-workers', message: /integer in \[1, / },
    { args: ['--prefill-workers', '1', '--decode-workers', 'two'], flag: '--decode-workers', message: /must be an integer/ },
    { args: ['--prefill-workers', '1.5', '--decode-workers', '1'], flag: '--prefill-workers', message: /must be an integer/ },
  ])('$args → exit 2 naming $flag', async ({ args, flag, message }) => {
    const r = await replay([{ timestamp: 0, input_length: 8, output_length: 1 }], args);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`${flag}: `);
    expect(r.err).toMatch(message);
  });

  it('parses into ReplayConfig, absent meaning aggregated', () => {
    const trace = join(dir, 'flags.jsonl');
    writeFileSync(trace, '{"input_length":1,"output_length":1}\n');
    expect(parseReplayConfig({ trace }, [])).toMatchObject({ prefillWorkers: null, decodeWorkers: null });
    expect(parseReplayConfig({ trace, prefillWorkers: '3', decodeWorkers: '5' }, [])).toMatchObject({ prefillWorkers: 3, decodeWorkers: 5 });
  });
});
