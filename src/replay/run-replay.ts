// `dynamo-mocker replay`: runs a trace through the engine on a virtual clock and reports latencies.
import { readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Engine } from '../core/engine.js';
import type { Sequence } from '../core/sequence.js';
import type { ReplayConfig } from '../config.js';
import { OfflineDriver } from '../engine/offline-driver.js';
import { createXxh3 } from '../hashing/xxh3.js';
import { loadTimingModel } from '../npz/profile-loader.js';
import { loadModelLimits } from '../model/model-limits.js';
import { roundMs, summarize, summaryTable, type ReplaySummary, type RequestResult } from './report.js';
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

/** Runs the replay in memory (no files written); the CLI wrapper handles output files. */
export async function simulateTrace(config: ReplayConfig, records: TraceRecord[], io: ReplayIo, opts: { markPrivate?: boolean } = {}): Promise<ReplayOutcome> {
  const hasher = await createXxh3();
  const timing = loadTimingModel(config.engine.plannerProfileData ?? undefined, (msg) => io.err(`error: ${msg}\n`));
  const limits = await loadModelLimits(config.modelPath, io.env, (msg) => io.err(`warning: ${msg}\n`));
  const engine = new Engine(config.engine, timing, hasher, limits);
  const prompts = new SyntheticPrompts(
    config.engine.enablePrefixCaching ? hasher : null,
    config.engine.blockSize,
    config.traceBlockSize,
    limits.vocabSize,
    config.engine.seed,
    opts.markPrivate ?? true,
  );
  prompts.prepare(records);

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
    const line = `replay: ${finished}/${records.length} requests done (${((finished / Math.max(1, records.length)) * 100).toFixed(1)}%), simulated ${(driver.nowMs / 1000).toFixed(1)} s`;
    io.err(io.isTty ? `\r${line}` : `${line}\n`);
  };

  const finish = (seq: Sequence, atMs: number): void => {
    const r = results[seq.key];
    r.finish_ms = roundMs(atMs);
    r.e2e_ms = roundMs(atMs - r.arrival_ms);
    r.output_tokens = seq.generated;
    r.cached_tokens = seq.cachedTokens ?? 0;
    r.preemptions = seq.preemptions;
    if (r.first_token_ms !== null && seq.generated > 1) r.mean_itl_ms = roundMs((atMs - r.first_token_ms) / (seq.generated - 1));
    finished++;
    if (config.concurrency !== null) submitNext(atMs);
  };

  const driver = new OfflineDriver(engine, {
    onSubmit: (key, atMs, result) => {
      const r = results[key];
      r.arrival_ms = roundMs(atMs);
      if (result.ok) {
        r.dp_rank = result.rank;
        return;
      }
      r.error = result.reason;
      finished++;
      if (config.concurrency !== null) submitNext(atMs);
    },
    onToken: (seq, _token, atMs) => {
      const r = results[seq.key];
      if (r.first_token_ms === null) {
        r.first_token_ms = roundMs(atMs);
        r.ttft_ms = roundMs(atMs - r.arrival_ms);
      }
    },
    onFinish: finish,
    onPass: () => {
      if ((driver.passes & 1023) === 0) progress(false);
    },
  });

  function submitNext(atMs: number): void {
    if (nextClosedLoop < records.length) driver.schedule(atMs, prompts.request(records[nextClosedLoop++]));
  }

  if (config.concurrency !== null) {
    for (let i = 0; i < config.concurrency; i++) submitNext(0);
  } else {
    const t0 = records.reduce((m, r) => Math.min(m, r.timestampMs), Infinity);
    for (const r of records) driver.schedule((r.timestampMs - t0) / config.arrivalSpeedup, prompts.request(r));
  }
  const endMs = driver.run();
  if (config.progress && performance.now() - started >= 1000) {
    progress(true);
    io.err('\n');
  }
  return { results, summary: summarize(results, endMs, driver.passes) };
}

export async function runReplay(config: ReplayConfig, io: ReplayIo): Promise<number> {
  const records = parseTrace(readFileSync(config.tracePath, 'utf8'), config.traceBlockSize);
  const { results, summary } = await simulateTrace(config, records, io);
  if (config.outputPath) writeFileSync(config.outputPath, results.map((r) => JSON.stringify(r)).join('\n') + (results.length ? '\n' : ''));
  if (config.summaryPath) writeFileSync(config.summaryPath, JSON.stringify(summary, null, 2) + '\n');
  io.out(summaryTable(summary) + '\n');
  return 0;
}
