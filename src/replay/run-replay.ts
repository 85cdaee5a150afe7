// `dynamo-mocker replay`: runs a trace through a fleet of engines behind a router, or prefill and decode pools, on a virtual clock.
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Engine, type ModelLimits } from '../core/engine.js';
import type { Xxh3 } from '../core/hash.js';
import { resolveKvTransfer, type KvTransferSettings } from '../core/kv-transfer.js';
import type { FleetRouter } from '../core/router/fleet-router.js';
import type { TimingModel } from '../core/timing/timing-model.js';
import type { ReplayConfig } from '../config.js';
import { DisaggDriver } from '../engine/disagg-driver.js';
import { FleetDriver, type ActionOptions, type Arrival } from '../engine/offline-driver.js';
import { createXxh3 } from '../hashing/xxh3.js';
import { loadTimingModel } from '../npz/profile-loader.js';
import { loadModelLimits } from '../model/model-limits.js';
import { renderHtmlReport } from './html-report.js';
import { createRouter, routerNews, routerPicker } from './replay-routing.js';
import { roundMs, summarize, summarizeDisagg, summarizeFleet, summaryTable, type PoolUsage, type ReplaySummary, type RequestResult, type WorkerUsage } from './report.js';
import type { Timeline } from './report-data.js';
import { Dependents } from './dependents.js';
import { ResultBook } from './result-book.js';
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
  const prompts = promptsFor(config, workload, hasher, limits.vocabSize, opts);
  const disagg = config.prefillWorkers !== null && config.decodeWorkers !== null;
  // Rows name their worker only when there is a choice of worker (a fleet of one writes what it always did).
  const fleet = !disagg && config.numWorkers > 1;

  const dependents = new Dependents(records);
  let nextRoot = 0;
  /** Closed loop: issues the next independent record (dependents are issued by their dependencies' ends). */
  const submitNext = (atMs: number): void => {
    while (nextRoot < records.length && records[nextRoot].after) nextRoot++;
    if (nextRoot < records.length) {
      const record = records[nextRoot++];
      sim.schedule(atMs, () => prompts.request(record));
    }
  };
  // When a request ends, the dependents whose last dependency it was are issued after their delay;
  // in a closed loop its slot passes to them or, when there are none, to the next independent record.
  const book = new ResultBook(records, { fleet, disagg }, (key, atMs) => {
    const issued = dependents.ended(key, atMs, config.arrivalSpeedup, (record, readyMs) => sim.schedule(readyMs, () => prompts.request(record)));
    if (config.concurrency !== null && issued === 0) submitNext(atMs);
  });

  const started = performance.now();
  let lastProgress = started;
  const progress = (force: boolean): void => {
    if (!config.progress) return;
    const now = performance.now();
    if (!force && now - lastProgress < (io.isTty ? 250 : 5000)) return;
    if (!force && now - started < 1000) return;
    lastProgress = now;
    const line = `replay: ${book.ended}/${records.length} requests done (${((book.ended / Math.max(1, records.length)) * 100).toFixed(1)}%), simulated ${(sim.nowMs / 1000).toFixed(1)} s`;
    io.err(io.isTty ? `\r${line}` : `${line}\n`);
  };
  const onPass = (): void => {
    if ((sim.passes & 1023) === 0) progress(false);
  };

  const setup: SimulationSetup = { config, timing, hasher, limits, book, onPass };
  let built: BuiltSimulation;
  if (disagg) {
    const kv = resolveKvTransfer(config.kvTransfer, limits.kvShape);
    if (kv.bytesPerToken === null) {
      io.err('warning: no --kv-bytes-per-token and no model config to derive it from: KV transfers take no time (as in Dynamo)\n');
    }
    built = disaggregatedPools(setup, kv);
  } else {
    built = aggregatedFleet(setup, fleet);
  }
  const sim = built.sim;

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
    const timeline = new TimelineSampler(built.engines, spanMs > 0 ? spanMs / 256 : 10);
    sampler = timeline;
    const tick = (nowMs: number): void => {
      timeline.sample(nowMs);
      if (book.ended < records.length) sim.at(timeline.nextAt(nowMs), tick, { observer: true });
    };
    sim.at(0, tick, { observer: true });
  }
  const endMs = sim.run();
  if (config.progress && performance.now() - started >= 1000) {
    progress(true);
    io.err('\n');
  }
  const { results } = book;
  const summary = summarize(results, endMs, sim.passes);
  built.summarize(summary, endMs);
  return { results, summary, timeline: sampler?.result() ?? null };
}

/** The prompts of a workload's requests, from the cache when an earlier replay built them. */
function promptsFor(config: ReplayConfig, workload: Workload, hasher: Xxh3, vocabSize: number, opts: SimulateOptions): SyntheticPrompts {
  const markPrivate = opts.markPrivate ?? true;
  const key = JSON.stringify([config.engine.enablePrefixCaching, config.engine.blockSize, workload.traceBlockSize, vocabSize, config.engine.seed, markPrivate]);
  const cached = opts.promptCache?.get(key);
  if (cached) return cached;
  const prompts = new SyntheticPrompts(config.engine.enablePrefixCaching ? hasher : null, config.engine.blockSize, workload.traceBlockSize, vocabSize, config.engine.seed, markPrivate);
  prompts.prepare(workload.records);
  opts.promptCache?.set(key, prompts);
  return prompts;
}

/** What building either simulation needs. */
interface SimulationSetup {
  config: ReplayConfig;
  timing: TimingModel;
  hasher: Xxh3;
  limits: ModelLimits;
  book: ResultBook;
  /** After every pass (progress). */
  onPass: () => void;
}

/** A simulation ready to be given arrivals, its engines (for the timeline) and its part of the summary. */
interface BuiltSimulation {
  sim: Simulation;
  engines: Engine[];
  summarize(summary: ReplaySummary, endMs: number): void;
}

/** Router news goes ahead of same-time arrivals and does not count as activity (see ActionOptions). */
const NEWS: ActionOptions = { beforeArrivals: true, observer: true };

/** `--num-workers` aggregated engines behind `--router` (a fleet of one is the single-worker replay). */
function aggregatedFleet({ config, timing, hasher, limits, book, onPass }: SimulationSetup, fleet: boolean): BuiltSimulation {
  const engines = Array.from({ length: config.numWorkers }, () => new Engine(config.engine, timing, hasher, limits));
  const usage: WorkerUsage[] = engines.map(() => ({ passes: 0, busyMs: 0 }));
  const router = createRouter(config, engines.length);
  const wantsEvents = router.onKvEvents !== undefined;
  const news = routerNews(router, (atMs, action) => sim.at(atMs, action, NEWS));
  const routingHasher = config.engine.enablePrefixCaching ? hasher : null;
  const sim: FleetDriver = new FleetDriver(
    engines,
    {
      onSubmit: (key, atMs, result, worker) => {
        if (fleet) book.results[key].worker = worker;
        if (!result.ok) router.onEnd?.(key);
        book.submitted(key, atMs, result);
      },
      onToken: (seq, _token, atMs) => {
        if (book.token(seq, atMs)) news?.firstToken(seq.key, atMs);
      },
      onFinish: (seq, atMs) => {
        news?.end(seq.key, atMs);
        book.finish(seq, atMs);
      },
      onPass: (_rank, result, worker) => {
        const u = usage[worker];
        u.passes++;
        u.busyMs += result.endMs - result.startMs;
        // Dynamo's replay applies a vLLM pass's KV events when the pass starts (now).
        if (wantsEvents && result.kvEvents.length) router.onKvEvents!(worker, result.kvEvents);
        onPass();
      },
    },
    routerPicker(router, routingHasher, config.engine.blockSize),
  );
  return {
    sim,
    engines,
    summarize: (summary, endMs) => {
      if (fleet) summary.fleet = summarizeFleet(book.results, endMs, router, usage, config.engine.dataParallelSize);
    },
  };
}

/** `--prefill-workers` and `--decode-workers` engines with Dynamo's vLLM handoff, each pool behind `--router`. */
function disaggregatedPools({ config, timing, hasher, limits, book, onPass }: SimulationSetup, kv: KvTransferSettings): BuiltSimulation {
  const pool = (workerType: 'prefill' | 'decode', workers: number): Engine[] =>
    Array.from({ length: workers }, () => new Engine({ ...config.engine, workerType }, timing, hasher, limits));
  const prefill = pool('prefill', config.prefillWorkers!);
  const decode = pool('decode', config.decodeWorkers!);
  const usage = (workers: number): PoolUsage => ({ workers, ranksPerWorker: config.engine.dataParallelSize, passes: 0, busyMs: 0, lastPassEndMs: 0 });
  const measured = { prefill: usage(prefill.length), decode: usage(decode.length) };
  const { results } = book;
  // The prefill side's share of a request's report: its prefix hits and preemptions.
  const prefillCached = new Map<number, number>();
  const prefillPreemptions = new Map<number, number>();
  // One router per pool, as in Dynamo's replay; round-robin keeps the driver's own rotations.
  const routers: { prefill: FleetRouter; decode: FleetRouter } | null =
    config.router === 'round-robin' ? null : { prefill: createRouter(config, prefill.length, 'prefill'), decode: createRouter(config, decode.length, 'decode') };
  const news = routers && {
    prefill: routerNews(routers.prefill, (atMs, action) => sim.at(atMs, action, NEWS)),
    decode: routerNews(routers.decode, (atMs, action) => sim.at(atMs, action, NEWS)),
  };
  const routingHasher = config.engine.enablePrefixCaching ? hasher : null;
  const pickers = routers
    ? { pickPrefill: routerPicker(routers.prefill, routingHasher, config.engine.blockSize), pickDecode: routerPicker(routers.decode, routingHasher, config.engine.blockSize) }
    : {};
  const sim: DisaggDriver = new DisaggDriver(
    prefill,
    decode,
    kv,
    {
      onSubmit: (key, atMs, result, prefillWorker) => {
        results[key].prefill_worker = prefillWorker;
        if (routers && !result.ok) (prefillWorker === null ? routers.decode : routers.prefill).onEnd?.(key);
        book.submitted(key, atMs, result);
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
        book.fail(key, atMs, `decode worker ${decodeWorker}: ${reason}`);
      },
      onTransfer: (seq, _atMs, delayMs, decodeWorker) => {
        const r = results[seq.key];
        r.decode_worker = decodeWorker;
        r.transfer_ms = roundMs(delayMs);
      },
      onActivate: (seq, atMs) => {
        results[seq.key].decode_start_ms = roundMs(atMs);
      },
      onToken: (seq, _token, atMs) => void book.token(seq, atMs),
      onFinish: (seq, atMs) => {
        const cached = prefillCached.get(seq.key) ?? seq.cachedTokens ?? 0;
        const preemptions = (prefillPreemptions.get(seq.key) ?? 0) + seq.preemptions;
        prefillCached.delete(seq.key);
        prefillPreemptions.delete(seq.key);
        news?.decode?.end(seq.key, atMs);
        book.finish(seq, atMs, cached, preemptions);
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
    },
    pickers,
  );
  return {
    sim,
    engines: [...prefill, ...decode],
    summarize: (summary, endMs) => {
      summary.disagg = summarizeDisagg(results, endMs, measured, kv, config.router);
    },
  };
}

/** The replay command: reads or generates the workload, simulates it, writes the files asked for and prints the summary. */
export async function runReplay(config: ReplayConfig, io: ReplayIo, command = 'dynamo-mocker replay'): Promise<number> {
  const workload = loadWorkload(config, io.err);
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
