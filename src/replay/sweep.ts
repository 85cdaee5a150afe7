// `replay --sweep`: the cross product of flag values, replayed in parallel worker threads, one row per configuration, Pareto rows marked.
import { writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { ConfigError } from '../config-error.js';
import { parseReplayConfig, type RawOptions, type ReplayConfig } from '../config.js';
import { renderHtmlReport } from './html-report.js';
import type { ReplaySummary } from './report.js';
import type { SweepRow } from './report-data.js';
import type { ReplayIo } from './run-replay.js';
import { loadWorkload, type Workload } from './workload.js';

/**
 * Flags a sweep may vary: the fleet, the router and the engine. The workload itself (trace,
 * synthetic spec, block size of the trace) stays fixed, so every row replays the same requests.
 */
export const SWEEPABLE_FLAGS = [
  'num-workers',
  'router',
  'kv-overlap-score-weight',
  'router-temperature',
  'max-num-seqs',
  'max-num-batched-tokens',
  'num-gpu-blocks-override',
  'block-size',
  'data-parallel-size',
  'watermark',
  'preemption-mode',
  'enable-prefix-caching',
  'enable-chunked-prefill',
  'speedup-ratio',
  'decode-speedup-ratio',
  'latency-jitter',
  'seed',
  'arrival-speedup',
  'concurrency',
  'prefill-workers',
  'decode-workers',
  'kv-transfer-bandwidth',
  'kv-transfer-timing-mode',
] as const;

const BOOLEAN_FLAGS = new Set(['enable-prefix-caching', 'enable-chunked-prefill']);

export interface SweepAxis {
  flag: string;
  values: string[];
}

/** Parses the --sweep arguments ('flag=v1,v2,...'); the same flag twice, unknown flags and empty values are errors naming --sweep. */
export function parseSweepAxes(specs: readonly string[]): SweepAxis[] {
  const axes: SweepAxis[] = [];
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    if (eq < 0) throw new ConfigError('--sweep', `expected flag=v1,v2,..., got '${spec}'`);
    const flag = spec.slice(0, eq).trim().replace(/^--/, '');
    if (!(SWEEPABLE_FLAGS as readonly string[]).includes(flag)) {
      throw new ConfigError('--sweep', `'${flag}' cannot be swept; sweepable flags: ${SWEEPABLE_FLAGS.join(', ')}`);
    }
    if (axes.some((a) => a.flag === flag)) throw new ConfigError('--sweep', `'${flag}' is swept twice`);
    const values = spec
      .slice(eq + 1)
      .split(',')
      .map((v) => v.trim());
    if (values.length === 0 || values.some((v) => v === '')) throw new ConfigError('--sweep', `'${flag}' needs non-empty values, got '${spec.slice(eq + 1)}'`);
    if (new Set(values).size !== values.length) throw new ConfigError('--sweep', `'${flag}' lists a value twice`);
    axes.push({ flag, values });
  }
  return axes;
}

/** Every combination, the first axis varying slowest (the order rows are printed in). */
export function crossProduct(axes: readonly SweepAxis[]): Array<Record<string, string>> {
  let combos: Array<Record<string, string>> = [{}];
  for (const axis of axes) combos = combos.flatMap((c) => axis.values.map((v) => ({ ...c, [axis.flag]: v })));
  return combos;
}

const camel = (flag: string): string => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** One configuration's replay config: the command's own flags with the swept values put in. */
export function sweepConfig(raw: RawOptions, argv: readonly string[], combo: Record<string, string>): ReplayConfig {
  const options: RawOptions = { ...raw };
  delete options.sweep;
  delete options.sweepJobs;
  // A swept boolean flag overrides the command's own --flag / --no-flag (whose clash check reads argv).
  const swept = new Set(Object.keys(combo).filter((f) => BOOLEAN_FLAGS.has(f)).flatMap((f) => [`--${f}`, `--no-${f}`]));
  const args = argv.filter((a) => a !== '--sweep' && !swept.has(a));
  for (const [flag, value] of Object.entries(combo)) options[camel(flag)] = value;
  try {
    return parseReplayConfig(options, args);
  } catch (err) {
    if (err instanceof ConfigError) {
      const where = Object.entries(combo)
        .map(([f, v]) => `${f}=${v}`)
        .join(', ');
      throw new ConfigError('--sweep', `configuration ${where}: ${err.message}`);
    }
    throw err;
  }
}

/** Marks the rows no other row beats on both throughput (higher) and p90 TTFT (lower). */
export function markPareto(rows: SweepRow[]): void {
  for (const row of rows) {
    const p90 = row.ttft_ms.p90;
    if (p90 === null || row.completed === 0) {
      row.pareto = false;
      continue;
    }
    row.pareto = !rows.some((other) => {
      const q = other.ttft_ms.p90;
      if (other === row || q === null || other.completed === 0) return false;
      const notWorse = other.output_tokens_per_s >= row.output_tokens_per_s && q <= p90;
      const better = other.output_tokens_per_s > row.output_tokens_per_s || q < p90;
      return notWorse && better;
    });
  }
}

export function sweepRow(combo: Record<string, string>, summary: ReplaySummary): SweepRow {
  const config: Record<string, string | number> = {};
  for (const [flag, value] of Object.entries(combo)) config[flag] = /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
  return {
    config,
    requests: summary.requests,
    completed: summary.completed,
    errors: summary.errors,
    duration_ms: summary.duration_ms,
    requests_per_s: summary.requests_per_s,
    output_tokens_per_s: summary.output_tokens_per_s,
    ttft_ms: summary.ttft_ms,
    itl_ms: summary.itl_ms,
    e2e_ms: summary.e2e_ms,
    prefix_hit_rate: summary.prefix_hit_rate,
    preemptions: summary.preemptions,
    pareto: false,
  };
}

/**
 * What a sweep thread is given: the workloads once, as its workerData (one, or one per swept seed
 * of a synthetic workload), then one job at a time; and what it answers.
 */
export interface SweepJob {
  index: number;
  config: ReplayConfig;
  /** Index into the thread's workloads. */
  workload: number;
}
export type SweepAnswer = { index: number; summary: ReplaySummary; warnings: string[] } | { index: number; error: string };

/**
 * Runs the jobs on `threads` worker threads (each replays one configuration at a time); summaries
 * come back in job order whatever the order they finish in, so the output never depends on it.
 */
async function runJobs(jobs: SweepJob[], workloads: Workload[], threads: number, onDone: (done: number, warnings: string[]) => void): Promise<ReplaySummary[]> {
  const summaries = new Array<ReplaySummary>(jobs.length);
  let next = 0;
  let done = 0;
  const url = new URL('./sweep-worker.js', import.meta.url);
  const run = (): Promise<void> =>
    new Promise((resolve, reject) => {
      // The workloads are copied into each thread once, not with every job.
      const worker = new Worker(url, { workerData: workloads });
      const give = (): void => {
        if (next >= jobs.length) {
          void worker.terminate().then(() => resolve());
          return;
        }
        worker.postMessage(jobs[next++]);
      };
      worker.on('message', (answer: SweepAnswer) => {
        if ('error' in answer) {
          void worker.terminate();
          reject(new Error(`sweep configuration ${answer.index + 1}: ${answer.error}`));
          return;
        }
        summaries[answer.index] = answer.summary;
        onDone(++done, answer.warnings);
        give();
      });
      worker.on('error', reject);
      give();
    });
  await Promise.all(Array.from({ length: Math.min(threads, jobs.length) }, run));
  return summaries;
}

function fmt(v: number | null, digits = 1): string {
  return v === null ? '-' : v.toFixed(digits);
}

/** The sweep's table: one line per configuration, Pareto rows starred. */
export function sweepTable(axes: readonly SweepAxis[], rows: readonly SweepRow[]): string {
  const head = [...axes.map((a) => a.flag), 'req/s', 'out tok/s', 'TTFT p50', 'TTFT p90', 'TTFT p99', 'ITL p50', 'ITL p90', 'E2E p50', 'E2E p90', 'E2E p99', 'prefix hits', 'preempt', 'errors', 'pareto'];
  const body = rows.map((r) => [
    ...axes.map((a) => String(r.config[a.flag])),
    r.requests_per_s.toFixed(3),
    r.output_tokens_per_s.toFixed(1),
    fmt(r.ttft_ms.p50),
    fmt(r.ttft_ms.p90),
    fmt(r.ttft_ms.p99),
    fmt(r.itl_ms.p50, 2),
    fmt(r.itl_ms.p90, 2),
    fmt(r.e2e_ms.p50),
    fmt(r.e2e_ms.p90),
    fmt(r.e2e_ms.p99),
    `${(r.prefix_hit_rate * 100).toFixed(2)}%`,
    String(r.preemptions),
    String(r.errors),
    r.pareto ? '*' : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i < axes.length ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), ...body.map(line), '', 'latencies in ms; * = Pareto-optimal (no other row has higher output tok/s and lower TTFT p90)'].join('\n');
}

/** The sweep command: checks every configuration first, replays them in parallel, writes rows and the report. */
export async function runSweep(raw: RawOptions, argv: readonly string[], io: ReplayIo, command: string): Promise<number> {
  const axes = parseSweepAxes(raw.sweep as string[]);
  const combos = crossProduct(axes);
  const configs = combos.map((combo) => sweepConfig(raw, argv, combo));
  const threads = raw.sweepJobs === undefined ? availableParallelism() : sweepJobs(raw.sweepJobs);
  // A synthetic workload is generated from --seed: each swept seed replays its own, as it would alone.
  const workloads: Workload[] = [];
  const workloadOf = new Map<number, number>();
  const workloadIndex = (config: ReplayConfig): number => {
    const key = config.synthetic === null ? 0 : config.engine.seed;
    let index = workloadOf.get(key);
    if (index === undefined) {
      index = workloads.push(loadWorkload(config, io.err)) - 1;
      workloadOf.set(key, index);
    }
    return index;
  };
  const jobWorkloads = configs.map(workloadIndex);
  const workload = workloads[0];
  const jobs = configs.map((config, index) => ({ index, config: { ...config, progress: false }, workload: jobWorkloads[index] }));
  const progress = configs[0].progress;
  const warned = new Set<string>();
  const summaries = await runJobs(jobs, workloads, threads, (done, warnings) => {
    for (const w of warnings) {
      if (!warned.has(w)) io.err(w);
      warned.add(w);
    }
    if (progress) io.err(`sweep: ${done}/${jobs.length} configurations done\n`);
  });
  const rows = summaries.map((summary, i) => sweepRow(combos[i], summary));
  markPareto(rows);
  const { outputPath, summaryPath, reportPath } = configs[0];
  const parameters = axes.map((a) => a.flag);
  if (outputPath) writeFileSync(outputPath, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  if (summaryPath) writeFileSync(summaryPath, JSON.stringify({ parameters, rows }, null, 2) + '\n');
  if (reportPath) writeFileSync(reportPath, renderHtmlReport({ kind: 'sweep', title: `Sweep over ${workload.name}`, command, parameters, rows }));
  io.out(sweepTable(axes, rows) + '\n');
  return 0;
}

function sweepJobs(value: unknown): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new ConfigError('--sweep-jobs', `must be an integer from 1 to 256, got '${String(value)}'`);
  return n;
}
