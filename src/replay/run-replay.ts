// `dynamo-mocker replay`: runs a trace through a fleet of engines behind a router, or prefill and decode pools, on a virtual clock.
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Engine, type EngineRequest, type SubmitResult } from '../core/engine.js';
import { resolveKvTransfer, type KvTransferSettings } from '../core/kv-transfer.js';
import type { FleetRouter } from '../core/router/fleet-router.js';
import type { Sequence } from '../core/sequence.js';
import type { ReplayConfig } from '../config.js';
import { DisaggDriver } from '../engine/disagg-driver.js';
import { FleetDriver, type ActionOptions, type Arrival } from '../engine/offline-driver.js';
import { createXxh3 } from '../hashing/xxh3.js';
import { loadTimingModel } from '../npz/profile-loader.js';
import { loadModelLimits } from '../model/model-limits.js';
import { renderHtmlReport } from './html-report.js';
import { createRouter, routeRequest } from './replay-routing.js';
import { roundMs, summarize, summarizeDisagg, summarizeFleet, summaryTable, type PoolUsage, type ReplaySummary, type RequestResult, type WorkerUsage } from './report.js';
import type { Timeline } from './report-data.js';
import { Dependents } from './dependents.js';
import { SyntheticPrompts } from './synthetic-prompts.js';
import { TimelineSampler } from './timeline.js';
import { loadWorkload, type Workload } from './workload.js';

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
  /** Only when asked for (`timeline: true`): per-worker state over simulated time, for the report. */
  timeline: Timeline | null;
}

/** What both drivers offer the replay: arrivals, the run, and the clock and pass count for progress. */
interface Simulation {
  schedule(atMs: number, request: Arrival): void;
  at(atMs: number, action: (nowMs: number) => void, opts?: ActionOptions): void;
  run(): number;
  readonly nowMs: number;
  readonly passes: number;
}

export interface SimulateOptions {
  /** Off: hash every block (the reference the private-block shortcut must reproduce). */
  markPrivate?: boolean;
  /** Sample per-worker state over simulated time (for the report). */
  timeline?: boolean;
  /**
   * Prompts built for earlier replays of the same workload, by the settings they depend on: a sweep
   * thread hashes each shared prefix once for all its configurations (requests are built afresh).
   */
  promptCache?: Map<string, SyntheticPrompts>;
}

/** Runs the replay in memory (no files written); the CLI wrapper handles output files. */
export async function simulateTrace(
  config: ReplayConfig,
  workload: Workload,
  io: ReplayIo,
  opts: SimulateOptions = {},
): Promise<ReplayOutcome> {
  const { records } = workload;
  const hasher = await createXxh3();
  const timing = loadTimingModel(config.engine.plannerProfileData ?? undefined, (msg) => io.err(`error: ${msg}\n`));
  const limits = await loadModelLimits(config.modelPath, io.env, (msg) => io.err(`warning: ${msg}\n`));
  const markPrivate = opts.markPrivate ?? true;
  const promptKey = JSON.stringify([config.engine.enablePrefixCaching, config.engine.blockSize, workload.traceBlockSize, limits.vocabSize, config.engine.seed, markPrivate]);
  let cached = opts.promptCache?.get(promptKey);
  if (!cached) {
    cached = new SyntheticPrompts(
      config.engine.enablePrefixCaching ? hasher : null,
      config.engine.blockSize,
      workload.traceBlockSize,
      limits.vocabSize,
      config.engine.seed,
      markPrivate,
    );
    cached.prepare(records);
    opts.promptCache?.set(promptKey, cached);
  }
  const prompts = cached;
  const disagg = config.prefillWorkers !== null && config.decodeWorkers !== null;
  // Rows name their worker only when there is a choice of worker (a fleet of one writes what it always did).
  const fleet = !disagg && config.numWorkers > 1;

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
    ...(fleet ? { worker: null } : {}),
    // Only disaggregated rows carry these (aggregated output stays as it was).
    ...(disagg ? { prefill_worker: null, decode_worker: null, prefill_done_ms: null, transfer_ms: null, decode_start_ms: null } : {}),
  }));

  let nextRoot = 0;
  let finished = 0;
  const dependents = new Dependents(records);
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

  /**
   * Request `key` ended (finished or failed) at `atMs`: dependents whose last
   * dependency it was are issued after their delay, and in a closed loop its slot passes to those
   * dependents or, when there are none, to the next independent record.
   */
  const ended = (key: number, atMs: number): void => {
    finished++;
    const issued = dependents.ended(key, atMs, config.arrivalSpeedup, (record, readyMs) => sim.schedule(readyMs, () => prompts.request(record)));
    if (config.concurrency !== null && issued === 0) submitNext(atMs);
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
    ended(seq.key, atMs);
  };
  const fail = (key: number, atMs: number, reason: string): void => {
    results[key].error = reason;
    ended(key, atMs);
  };
  const submitted = (key: number, atMs: number, result: SubmitResult): void => {
    const r = results[key];
    r.arrival_ms = roundMs(atMs);
    if (result.ok) r.dp_rank = result.rank;
    else fail(key, atMs, result.reason);
  };
  /** Records a token of `seq`; true when it was the first. */
  const token = (seq: Sequence, atMs: number): boolean => {
    const r = results[seq.key];
    if (r.first_token_ms !== null) return false;
    r.first_token_ms = roundMs(atMs);
    r.ttft_ms = roundMs(atMs - r.arrival_ms);
    return true;
  };
  const onPass = (): void => {
    if ((sim.passes & 1023) === 0) progress(false);
  };

  let pools: { prefill: PoolUsage; decode: PoolUsage } | null = null;
  let kv: KvTransferSettings | null = null;
  let sim: Simulation;
  let engines: Engine[];
  let fleetUsage: WorkerUsage[] | null = null;
  let router: FleetRouter | null = null;
  if (!disagg) {
    engines = Array.from({ length: config.numWorkers }, () => new Engine(config.engine, timing, hasher, limits));
    const usage: WorkerUsage[] = engines.map(() => ({ passes: 0, busyMs: 0 }));
    fleetUsage = usage;
    const fleetRouter = createRouter(config, engines.length);
    router = fleetRouter;
    const wantsEvents = fleetRouter.onKvEvents !== undefined;
    const blockSize = config.engine.blockSize;
    const routingHasher = config.engine.enablePrefixCaching ? hasher : null;
    const tell = routerNews(fleetRouter, (atMs, action) => sim.at(atMs, action, { beforeArrivals: true, observer: true }));
    sim = new FleetDriver(
      engines,
      {
        onSubmit: (key, atMs, result, worker) => {
          if (fleet) results[key].worker = worker;
          if (!result.ok) fleetRouter.onEnd?.(key);
          submitted(key, atMs, result);
        },
        onToken: (seq, _token, atMs) => {
          if (token(seq, atMs)) tell?.firstToken(seq.key, atMs);
        },
        onFinish: (seq, atMs) => {
          tell?.end(seq.key, atMs);
          finish(seq, atMs);
        },
        onPass: (_rank, result, worker) => {
          const u = usage[worker];
          u.passes++;
          u.busyMs += result.endMs - result.startMs;
          // Dynamo's replay applies a vLLM pass's KV events when the pass starts (now).
          if (wantsEvents && result.kvEvents.length) fleetRouter.onKvEvents!(worker, result.kvEvents);
          onPass();
        },
      },
      (request, nowMs) => {
        const target = fleetRouter.route(routeRequest(request, routingHasher, blockSize), nowMs);
        if (target.rank !== null) request.dpRank = target.rank;
        return target.worker;
      },
    );
  } else {
    kv = resolveKvTransfer(config.kvTransfer, limits.kvShape);
    if (kv.bytesPerToken === null) {
      io.err('warning: no --kv-bytes-per-token and no model config to derive it from: KV transfers take no time (as in Dynamo)\n');
    }
    const pool = (workerType: 'prefill' | 'decode', workers: number): Engine[] =>
      Array.from({ length: workers }, () => new Engine({ ...config.engine, workerType }, timing, hasher, limits));
    const prefill = pool('prefill', config.prefillWorkers!);
    const decode = pool('decode', config.decodeWorkers!);
    engines = [...prefill, ...decode];
    const usage = (workers: number): PoolUsage => ({ workers, ranksPerWorker: config.engine.dataParallelSize, passes: 0, busyMs: 0, lastPassEndMs: 0 });
    const measured = { prefill: usage(prefill.length), decode: usage(decode.length) };
    pools = measured;
    // The prefill side's share of a request's report: its prefix hits and preemptions.
    const prefillCached = new Map<number, number>();
    const prefillPreemptions = new Map<number, number>();
    // One router per pool, as in Dynamo's replay; round-robin keeps the driver's own rotations.
    const routers = config.router === 'round-robin' ? null : { prefill: createRouter(config, prefill.length, 'prefill'), decode: createRouter(config, decode.length, 'decode') };
    const news = routers && {
      prefill: routerNews(routers.prefill, (atMs, action) => sim.at(atMs, action, { beforeArrivals: true, observer: true })),
      decode: routerNews(routers.decode, (atMs, action) => sim.at(atMs, action, { beforeArrivals: true, observer: true })),
    };
    const blockSize = config.engine.blockSize;
    const routingHasher = config.engine.enablePrefixCaching ? hasher : null;
    const picker = (router: FleetRouter) => (request: EngineRequest, nowMs: number): number => {
      const target = router.route(routeRequest(request, routingHasher, blockSize), nowMs);
      if (target.rank !== null) request.dpRank = target.rank;
      return target.worker;
    };
    const pickers = routers ? { pickPrefill: picker(routers.prefill), pickDecode: picker(routers.decode) } : {};
    sim = new DisaggDriver(prefill, decode, kv, {
      onSubmit: (key, atMs, result, prefillWorker) => {
        results[key].prefill_worker = prefillWorker;
        if (routers && !result.ok) (prefillWorker === null ? routers.decode : routers.prefill).onEnd?.(key);
        submitted(key, atMs, result);
      },
      onPrefillDone: (seq, atMs) => {
        // Dynamo's replay marks the prefill complete and frees it in the prefill router, then routes the decode.
        news?.prefill?.firstToken(seq.key, atMs);
        news?.prefill?.end(seq.key, atMs);
        results[seq.key].prefill_done_ms = roundMs(atMs);
        prefillCached.set(seq.key, seq.cachedTokens ?? 0);
        prefillPreemptions.set(seq.key, seq.preemptions);
      },
      onDecodeRefused: (key, atMs, reason, decodeWorker) => {
        routers?.decode.onEnd?.(key);
        fail(key, atMs, `decode worker ${decodeWorker}: ${reason}`);
      },
      onTransfer: (seq, _atMs, delayMs, decodeWorker) => {
        const r = results[seq.key];
        r.decode_worker = decodeWorker;
        r.transfer_ms = roundMs(delayMs);
      },
      onActivate: (seq, atMs) => {
        results[seq.key].decode_start_ms = roundMs(atMs);
      },
      onToken: (seq, _token, atMs) => void token(seq, atMs),
      onFinish: (seq, atMs) => {
        const cached = prefillCached.get(seq.key) ?? seq.cachedTokens ?? 0;
        const preemptions = (prefillPreemptions.get(seq.key) ?? 0) + seq.preemptions;
        prefillCached.delete(seq.key);
        prefillPreemptions.delete(seq.key);
        news?.decode?.end(seq.key, atMs);
        finish(seq, atMs, cached, preemptions);
      },
      onPass: (_rank, result, which, worker) => {
        // Only the prefill pool's KV events reach a router (Dynamo's decode workers capture none).
        if (which === 'prefill' && result.kvEvents.length) routers?.prefill.onKvEvents?.(worker, result.kvEvents);
        const u = measured[which];
        u.passes++;
        u.busyMs += result.endMs - result.startMs;
        u.lastPassEndMs = Math.max(u.lastPassEndMs, result.endMs);
        onPass();
      },
    }, pickers);
  }

  /** Closed loop: issues the next independent record (dependents are issued by their dependencies' ends). */
  function submitNext(atMs: number): void {
    while (nextRoot < records.length && records[nextRoot].after) nextRoot++;
    if (nextRoot < records.length) {
      const record = records[nextRoot++];
      sim.schedule(atMs, () => prompts.request(record));
    }
  }

  let spanMs = 0;
  if (config.concurrency !== null) {
    for (let i = 0; i < config.concurrency; i++) submitNext(0);
  } else {
    const roots = records.filter((r) => !r.after);
    const t0 = roots.reduce((m, r) => Math.min(m, r.timestampMs), Infinity);
    for (const r of roots) {
      const atMs = (r.timestampMs - t0) / config.arrivalSpeedup;
      spanMs = Math.max(spanMs, atMs);
      sim.schedule(atMs, () => prompts.request(r));
    }
  }
  let sampler: TimelineSampler | null = null;
  if (opts.timeline) {
    const timeline = new TimelineSampler(engines, spanMs > 0 ? spanMs / 256 : 10);
    sampler = timeline;
    const tick = (nowMs: number): void => {
      timeline.sample(nowMs);
      if (finished < records.length) sim.at(timeline.nextAt(nowMs), tick, { observer: true });
    };
    sim.at(0, tick, { observer: true });
  }
  const endMs = sim.run();
  if (config.progress && performance.now() - started >= 1000) {
    progress(true);
    io.err('\n');
  }
  const summary = summarize(results, endMs, sim.passes);
  if (pools && kv) summary.disagg = summarizeDisagg(results, endMs, pools, kv, config.router);
  if (fleet && fleetUsage && router) summary.fleet = summarizeFleet(results, endMs, router.name, fleetUsage, config.engine.dataParallelSize);
  return { results, summary, timeline: sampler?.result() ?? null };
}

/**
 * Tells a router what a pass's end shows — first tokens and finished streams — when the pass ends
 * (not when the simulation computes it, at its start), one timed action per pass; null when the
 * router does not listen.
 */
function routerNews(
  router: FleetRouter,
  at: (atMs: number, action: () => void) => void,
): { firstToken(key: number, atMs: number): void; end(key: number, atMs: number): void } | null {
  if (!router.onFirstToken && !router.onEnd) return null;
  let batch: { atMs: number; firstTokens: number[]; ends: number[] } | null = null;
  const batchAt = (atMs: number): { firstTokens: number[]; ends: number[] } => {
    if (batch && batch.atMs === atMs) return batch;
    const b = { atMs, firstTokens: [] as number[], ends: [] as number[] };
    batch = b;
    at(atMs, () => {
      for (const key of b.firstTokens) router.onFirstToken?.(key);
      for (const key of b.ends) router.onEnd?.(key);
      if (batch === b) batch = null;
    });
    return b;
  };
  return {
    firstToken: (key, atMs) => batchAt(atMs).firstTokens.push(key),
    end: (key, atMs) => batchAt(atMs).ends.push(key),
  };
}

/** The replay command: reads or generates the workload, simulates it, writes the files asked for and prints the summary. */
export async function runReplay(config: ReplayConfig, io: ReplayIo, command = 'dynamo-mocker replay'): Promise<number> {
  const workload = loadWorkload(config);
  if (workload.skippedRows > 0) io.err(`warning: ${workload.skippedRows} ${workload.format} rows with no prompt tokens left out (failed requests in the log)\n`);
  const { results, summary, timeline } = await simulateTrace(config, workload, io, { timeline: config.reportPath !== null });
  if (config.outputPath) writeFileSync(config.outputPath, results.map((r) => JSON.stringify(r)).join('\n') + (results.length ? '\n' : ''));
  if (config.summaryPath) writeFileSync(config.summaryPath, JSON.stringify(summary, null, 2) + '\n');
  if (config.reportPath) {
    const title = `Replay of ${workload.name}`;
    writeFileSync(config.reportPath, renderHtmlReport({ kind: 'replay', title, command, summary, results, timeline: timeline! }));
  }
  io.out(summaryTable(summary) + '\n');
  return 0;
}
