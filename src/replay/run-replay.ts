// `dynamo-mocker replay`: runs a trace through one engine, or prefill and decode pools, on a virtual clock and reports latencies.
import { readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Engine, type EngineRequest, type SubmitResult } from '../core/engine.js';
import { resolveKvTransfer, type KvTransferSettings } from '../core/kv-transfer.js';
import type { Sequence } from '../core/sequence.js';
import type { ReplayConfig } from '../config.js';
import { DisaggDriver } from '../engine/disagg-driver.js';
import { OfflineDriver } from '../engine/offline-driver.js';
import { createXxh3 } from '../hashing/xxh3.js';
import { loadTimingModel } from '../npz/profile-loader.js';
import { loadModelLimits } from '../model/model-limits.js';
import { roundMs, summarize, summarizeDisagg, summaryTable, type PoolUsage, type ReplaySummary, type RequestResult } from './report.js';
import { SyntheticPrompts } from './synthetic-prompts.js';
import { parseTrace, type TraceRecord } from './trace.js';

export interface ReplayIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env: Record<string, string | undefined>;
  /** Whether stderr is a terminal (progress redraws one line). */
  isTty: boolean;
}

export interface ReplayOutcome {
  results: RequestResult[];
  summary: ReplaySummary;
}

/** What both drivers offer the replay: arrivals, the run, and the clock and pass count for progress. */
interface Simulation {
  schedule(atMs: number, request: EngineRequest): void;
  run(): number;
  readonly nowMs: number;
  readonly passes: number;
}

/** Runs the replay in memory (no files written); the CLI wrapper handles output files. */
export async function simulateTrace(config: ReplayConfig, records: TraceRecord[], io: ReplayIo, opts: { markPrivate?: boolean } = {}): Promise<ReplayOutcome> {
  const hasher = await createXxh3();
  const timing = loadTimingModel(config.engine.plannerProfileData ?? undefined, (msg) => io.err(`error: ${msg}\n`));
  const limits = await loadModelLimits(config.modelPath, io.env, (msg) => io.err(`warning: ${msg}\n`));
  const prompts = new SyntheticPrompts(
    config.engine.enablePrefixCaching ? hasher : null,
    config.engine.blockSize,
    config.traceBlockSize,
    limits.vocabSize,
    config.engine.seed,
    opts.markPrivate ?? true,
  );
  prompts.prepare(records);
  const disagg = config.prefillWorkers !== null && config.decodeWorkers !== null;

  const results: RequestResult[] = records.map((r) => ({
    index: r.index,
    arrival_ms: 0,
    first_token_ms: null,
    finish_ms: null,
    ttft_ms: null,
    mean_itl_ms: null,
    e2e_ms: null,
    input_tokens: r.inputLength,
    output_tokens: 0,
    cached_tokens: 0,
    preemptions: 0,
    dp_rank: null,
    // Only disaggregated rows carry these (aggregated output stays as it was).
    ...(disagg ? { prefill_worker: null, decode_worker: null, prefill_done_ms: null, transfer_ms: null, decode_start_ms: null } : {}),
  }));

  let nextClosedLoop = 0;
  let finished = 0;
  const started = performance.now();
  let lastProgress = started;
  const progress = (force: boolean): void => {
    if (!config.progress) return;
    const now = performance.now();
    if (!force && now - lastProgress < (io.isTty ? 250 : 5000)) return;
    if (!force && now - started < 1000) return;
    lastProgress = now;
    const line = `replay: ${finished}/${records.length} requests done (${((finished / Math.max(1, records.length)) * 100).toFixed(1)}%), simulated ${(sim.nowMs / 1000).toFixed(1)} s`;
    io.err(io.isTty ? `\r${line}` : `${line}\n`);
  };

  /** `seq` emitted its last token; `cached` and `preemptions` may include a prefill worker's share. */
  const finish = (seq: Sequence, atMs: number, cached = seq.cachedTokens ?? 0, preemptions = seq.preemptions): void => {
    const r = results[seq.key];
    r.finish_ms = roundMs(atMs);
    r.e2e_ms = roundMs(atMs - r.arrival_ms);
    r.output_tokens = seq.generated;
    r.cached_tokens = cached;
    r.preemptions = preemptions;
    if (r.first_token_ms !== null && seq.generated > 1) r.mean_itl_ms = roundMs((atMs - r.first_token_ms) / (seq.generated - 1));
    finished++;
    if (config.concurrency !== null) submitNext(atMs);
  };
  const fail = (key: number, atMs: number, reason: string): void => {
    results[key].error = reason;
    finished++;
    if (config.concurrency !== null) submitNext(atMs);
  };
  const submitted = (key: number, atMs: number, result: SubmitResult): void => {
    const r = results[key];
    r.arrival_ms = roundMs(atMs);
    if (result.ok) r.dp_rank = result.rank;
    else fail(key, atMs, result.reason);
  };
  const token = (seq: Sequence, atMs: number): void => {
    const r = results[seq.key];
    if (r.first_token_ms === null) {
      r.first_token_ms = roundMs(atMs);
      r.ttft_ms = roundMs(atMs - r.arrival_ms);
    }
  };
  const onPass = (): void => {
    if ((sim.passes & 1023) === 0) progress(false);
  };

  let pools: { prefill: PoolUsage; decode: PoolUsage } | null = null;
  let kv: KvTransferSettings | null = null;
  let sim: Simulation;
  if (!disagg) {
    const engine = new Engine(config.engine, timing, hasher, limits);
    sim = new OfflineDriver(engine, {
      onSubmit: (key, atMs, result) => submitted(key, atMs, result),
      onToken: (seq, _token, atMs) => token(seq, atMs),
      onFinish: (seq, atMs) => finish(seq, atMs),
      onPass,
    });
  } else {
    kv = resolveKvTransfer(config.kvTransfer, limits.kvShape);
    if (kv.bytesPerToken === null) {
      io.err('warning: no --kv-bytes-per-token and no model config to derive it from: KV transfers take no time (as in Dynamo)\n');
    }
    const pool = (workerType: 'prefill' | 'decode', workers: number): Engine[] =>
      Array.from({ length: workers }, () => new Engine({ ...config.engine, workerType }, timing, hasher, limits));
    const prefill = pool('prefill', config.prefillWorkers!);
    const decode = pool('decode', config.decodeWorkers!);
    const usage = (workers: number): PoolUsage => ({ workers, ranksPerWorker: config.engine.dataParallelSize, passes: 0, busyMs: 0, lastPassEndMs: 0 });
    const measured = { prefill: usage(prefill.length), decode: usage(decode.length) };
    pools = measured;
    // The prefill side's share of a request's report: its prefix hits and preemptions.
    const prefillCached = new Map<number, number>();
    const prefillPreemptions = new Map<number, number>();
    sim = new DisaggDriver(prefill, decode, kv, {
      onSubmit: (key, atMs, result, prefillWorker) => {
        results[key].prefill_worker = prefillWorker;
        submitted(key, atMs, result);
      },
      onPrefillDone: (seq, atMs) => {
        results[seq.key].prefill_done_ms = roundMs(atMs);
        prefillCached.set(seq.key, seq.cachedTokens ?? 0);
        prefillPreemptions.set(seq.key, seq.preemptions);
      },
      onDecodeRefused: (key, atMs, reason, decodeWorker) => fail(key, atMs, `decode worker ${decodeWorker}: ${reason}`),
      onTransfer: (seq, _atMs, delayMs, decodeWorker) => {
        const r = results[seq.key];
        r.decode_worker = decodeWorker;
        r.transfer_ms = roundMs(delayMs);
      },
      onActivate: (seq, atMs) => {
        results[seq.key].decode_start_ms = roundMs(atMs);
      },
      onToken: (seq, _token, atMs) => token(seq, atMs),
      onFinish: (seq, atMs) => {
        const cached = prefillCached.get(seq.key) ?? seq.cachedTokens ?? 0;
        const preemptions = (prefillPreemptions.get(seq.key) ?? 0) + seq.preemptions;
        prefillCached.delete(seq.key);
        prefillPreemptions.delete(seq.key);
        finish(seq, atMs, cached, preemptions);
      },
      onPass: (_rank, result, which) => {
        const u = measured[which];
        u.passes++;
        u.busyMs += result.endMs - result.startMs;
        u.lastPassEndMs = Math.max(u.lastPassEndMs, result.endMs);
        onPass();
      },
    });
  }

  function submitNext(atMs: number): void {
    if (nextClosedLoop < records.length) sim.schedule(atMs, prompts.request(records[nextClosedLoop++]));
  }

  if (config.concurrency !== null) {
    for (let i = 0; i < config.concurrency; i++) submitNext(0);
  } else {
    const t0 = records.reduce((m, r) => Math.min(m, r.timestampMs), Infinity);
    for (const r of records) sim.schedule((r.timestampMs - t0) / config.arrivalSpeedup, prompts.request(r));
  }
  const endMs = sim.run();
  if (config.progress && performance.now() - started >= 1000) {
    progress(true);
    io.err('\n');
  }
  const summary = summarize(results, endMs, sim.passes);
  if (pools && kv) summary.disagg = summarizeDisagg(results, endMs, pools, kv);
  return { results, summary };
}

export async function runReplay(config: ReplayConfig, io: ReplayIo): Promise<number> {
  const records = parseTrace(readFileSync(config.tracePath, 'utf8'), config.traceBlockSize);
  const { results, summary } = await simulateTrace(config, records, io);
  if (config.outputPath) writeFileSync(config.outputPath, results.map((r) => JSON.stringify(r)).join('\n') + (results.length ? '\n' : ''));
  if (config.summaryPath) writeFileSync(config.summaryPath, JSON.stringify(summary, null, 2) + '\n');
  io.out(summaryTable(summary) + '\n');
  return 0;
}
