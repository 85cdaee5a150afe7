// The core's disaggregation: prefill holds its KV after one token, decode reserves, activates and decodes without prefill cost; Dynamo's transfer formulas.
import { describe, expect, it } from 'vitest';
import { dtypeBytes, kvBytesPerToken, resolveKvTransfer, transferDelayMs, transferTokens } from '../../src/core/kv-transfer.js';
import type { PassResult, Scheduler } from '../../src/core/scheduler.js';
import type { Sequence } from '../../src/core/sequence.js';
import { makeEngine, makeScheduler, seqInput, tokens } from '../helpers/core-fixtures.js';

function run(s: Scheduler, from = 0, maxPasses = 1000): { passes: PassResult[]; now: number } {
  let now = from;
  const passes: PassResult[] = [];
  for (let i = 0; i < maxPasses && !s.idle; i++) {
    const r = s.step(now);
    passes.push(r);
    now = Math.max(r.endMs, now + 1);
  }
  return { passes, now };
}

function reserve(s: Scheduler, key: number, prompt: number[], maxOut: number): Sequence {
  const r = s.reserve(seqInput(key, prompt, maxOut));
  if (!r.ok) throw new Error(r.reason);
  return r.seq;
}

describe('KV transfer timing (Dynamo HandoffTransferTiming::delay_ms)', () => {
  it('is tokens × bytes per token / bandwidth', () => {
    expect(transferDelayMs(8, { bytesPerToken: 1_000_000, bandwidthGBps: 1 })).toBe(8);
    expect(transferDelayMs(4, { bytesPerToken: 25_000_000, bandwidthGBps: 1 })).toBe(100);
    expect(transferDelayMs(128, { bytesPerToken: 1_000_000, bandwidthGBps: 1 })).toBe(128);
    expect(transferDelayMs(1000, { bytesPerToken: 131_072, bandwidthGBps: 64 })).toBeCloseTo(2.048, 9);
  });

  it('is zero when bytes per token are unknown or the bandwidth is 0 (disabled)', () => {
    expect(transferDelayMs(8, { bytesPerToken: null, bandwidthGBps: 1 })).toBe(0);
    expect(transferDelayMs(8, { bytesPerToken: 1_000_000, bandwidthGBps: 0 })).toBe(0);
  });

  it('counts the whole prompt, or what the destination lacks in destination_missing mode', () => {
    expect(transferTokens('full_prompt', 8, 4)).toBe(8);
    expect(transferTokens('destination_missing', 8, 4)).toBe(4);
    expect(transferTokens('destination_missing', 8, null)).toBe(8);
  });

  it("derives bytes per token from the model config with Dynamo's head-dim rule", () => {
    // The tiny fixture: 2 layers, 2 KV heads, hidden 64 / 4 heads = 16 (its head_dim key is ignored), bf16.
    const tiny = { layers: 2, kvHeads: 2, hiddenSize: 64, attentionHeads: 4, dtype: 'bfloat16' };
    expect(kvBytesPerToken(tiny, 'auto')).toBe(2 * 2 * 2 * 16 * 2);
    expect(kvBytesPerToken(tiny, 'fp8')).toBe(2 * 2 * 2 * 16);
    expect(kvBytesPerToken({ ...tiny, dtype: null }, 'auto')).toBe(256); // float16 when the config says nothing
    // Qwen3-0.6B: 28 layers, 8 KV heads, 1024 / 16 = 64, bf16 → 57,344 B (Dynamo's value, not the 128-dim truth).
    expect(kvBytesPerToken({ layers: 28, kvHeads: 8, hiddenSize: 1024, attentionHeads: 16, dtype: 'bfloat16' }, 'auto')).toBe(57_344);
    expect([dtypeBytes('float32'), dtypeBytes('torch.float16'), dtypeBytes('fp8_e5m2'), dtypeBytes('fp8_e4m3'), dtypeBytes('mystery')]).toEqual([4, 2, 1, 1, 2]);
  });

  it('an explicit --kv-bytes-per-token wins over the model', () => {
    const shape = { layers: 2, kvHeads: 2, hiddenSize: 64, attentionHeads: 4, dtype: 'bfloat16' };
    const base = { bandwidthGBps: 64, timingMode: 'full_prompt' as const, cacheDtype: 'auto' };
    expect(resolveKvTransfer({ ...base, bytesPerToken: 7 }, shape).bytesPerToken).toBe(7);
    expect(resolveKvTransfer({ ...base, bytesPerToken: null }, shape).bytesPerToken).toBe(256);
    expect(resolveKvTransfer({ ...base, bytesPerToken: null }, null).bytesPerToken).toBeNull();
  });
});

describe('prefill role', () => {
  it('emits exactly one token whatever max_tokens says, and holds its KV until released', async () => {
    const engine = await makeEngine({ workerType: 'prefill', blockSize: 4, numGpuBlocks: 16 });
    const sub = engine.submit({ key: 0, promptLength: 10, promptTokens: tokens(10), maxTokens: 50, holdOnFinish: true });
    if (!sub.ok) throw new Error(sub.reason);
    const s = engine.ranks[0];
    const { passes } = run(s);
    expect(passes.flatMap((p) => p.emitted)).toEqual([sub.seq]);
    expect(sub.seq.status).toBe('held');
    expect(s.pool.activeBlocks).toBe(3);
    expect(s.release(sub.seq)).toBe(true);
    expect(sub.seq.status).toBe('finished');
    expect(s.pool.activeBlocks).toBe(0);
    expect(s.release(sub.seq)).toBe(false);
  });

  it('without holdOnFinish the KV is freed at the token, and a held prefill can be cancelled', async () => {
    const engine = await makeEngine({ workerType: 'prefill', blockSize: 4, numGpuBlocks: 16 });
    const free = engine.submit({ key: 0, promptLength: 8, promptTokens: tokens(8), maxTokens: 3 });
    const held = engine.submit({ key: 1, promptLength: 8, promptTokens: tokens(8, 100), maxTokens: 3, holdOnFinish: true });
    if (!free.ok || !held.ok) throw new Error('refused');
    run(engine.ranks[0]);
    expect(free.seq.status).toBe('finished');
    expect(engine.ranks[0].pool.activeBlocks).toBe(2);
    expect(engine.ranks[0].cancel(held.seq)).toBe(true);
    expect(engine.ranks[0].pool.activeBlocks).toBe(0);
  });
});

describe('decode role', () => {
  it('charges no prefill time for prompts computed locally', async () => {
    const agg = await makeScheduler({ blockSize: 16 });
    const dec = await makeScheduler({ blockSize: 16, workerType: 'decode' });
    for (const s of [agg, dec]) s.add(seqInput(0, tokens(512), 1));
    const [a] = run(agg).passes;
    const [d] = run(dec).passes;
    expect(a.prefillTokens).toBe(512);
    expect(d.prefillTokens).toBe(512);
    expect(a.prefillMs).toBeGreaterThan(0);
    expect(d.prefillMs).toBe(0);
    expect(d.endMs - d.startMs).toBeCloseTo(d.decodeMs, 9);
  });

  it('reserves the prompt KV, counts whole missing blocks as transferable, and decodes from the transferred prompt once activated', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 16, workerType: 'decode' });
    const seq = reserve(s, 0, tokens(10), 3);
    expect(seq.status).toBe('reserving');
    expect(s.pool.activeBlocks).toBe(0);
    const reserved = s.retryReservations();
    expect(reserved).toEqual([seq]);
    expect(seq.status).toBe('reserved');
    // Dynamo's rule: 3 fresh blocks × 4 = 12 (a cold 10-token prompt).
    expect(seq.transferableTokens).toBe(12);
    expect(s.pool.activeBlocks).toBe(3);
    expect(s.idle).toBe(true); // nothing to run until activated
    expect(s.activate(seq)).toBe(true);
    expect(s.activate(seq)).toBe(false);
    const { passes } = run(s);
    expect(passes[0].prefillTokens).toBe(0);
    expect(passes[0].emitted).toEqual([seq]);
    expect(passes.flatMap((p) => p.emitted)).toHaveLength(3);
    expect(seq.status).toBe('finished');
    expect(s.pool.activeBlocks).toBe(0);
  });

  it('a cached prefix is not transferred again', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 16, workerType: 'decode' });
    s.add(seqInput(0, tokens(8), 1));
    run(s);
    const seq = reserve(s, 1, tokens(10), 1);
    s.retryReservations();
    expect(seq.cachedTokens).toBe(8);
    expect(seq.transferableTokens).toBe(4);
  });

  it('reservations wait for KV and for room in the running batch, oldest first', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 6, watermark: 0, maxNumSeqs: 1, workerType: 'decode' });
    const first = reserve(s, 0, tokens(16), 1);
    const second = reserve(s, 1, tokens(16, 100), 3);
    expect(s.retryReservations()).toEqual([first]);
    expect(second.status).toBe('reserving');
    expect(s.retryReservations()).toEqual([]); // 2 blocks free, 4 needed
    s.activate(first);
    const { passes } = run(s);
    expect(passes.flatMap((p) => p.emitted)).toEqual([first]);
    expect(s.retryReservations()).toEqual([second]);
    // A running request fills the batch (max_num_seqs 1): the next reservation waits for it.
    s.activate(second);
    const third = reserve(s, 2, tokens(4, 200), 1);
    s.step(0);
    expect(s.retryReservations()).toEqual([]);
    run(s);
    expect(s.retryReservations()).toEqual([third]);
    expect(third.status).toBe('reserved');
  });

  it('cancelling a queued or reserved handoff frees its blocks; queued handoffs show as queued decode work', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 16, workerType: 'decode' });
    s.collectForwardPass = true;
    const a = reserve(s, 0, tokens(8), 2);
    const b = reserve(s, 1, tokens(8, 50), 2);
    s.retryReservations();
    s.add(seqInput(2, tokens(4, 90), 1));
    const pass = s.step(0);
    expect(pass.forwardPass!.queuedDecode.count).toBe(2);
    expect(s.cancel(a)).toBe(true);
    expect(s.cancel(b)).toBe(true);
    expect(a.status).toBe('cancelled');
    run(s, pass.endMs);
    expect(s.pool.activeBlocks).toBe(0);
    expect(s.snapshot().running).toBe(0);
  });

  it('refuses a handoff that could never fit', async () => {
    const s = await makeScheduler({ blockSize: 4, numGpuBlocks: 2, workerType: 'decode' });
    const r = s.reserve(seqInput(0, tokens(40), 1));
    expect(r.ok).toBe(false);
  });
});
