// Seeded, deterministic report data (replay and sweep) for the HTML report tests.
import { summarize, summarizeFleet, type RequestResult } from '../../src/replay/report.js';
import type { ReplayReportData, SweepReportData, SweepRow, Timeline } from '../../src/replay/report-data.js';

/** mulberry32: small, fast, good enough for test data. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function lognormal(rand: () => number, median: number, sigma: number): number {
  const u = Math.max(rand(), 1e-12);
  const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  return median * Math.exp(sigma * z);
}

const round = (v: number): number => Math.round(v * 1e3) / 1e3;

export interface ReplayFixtureOptions {
  requests: number;
  workers: number;
  seed?: number;
  /** Fraction of requests that fail (half before routing, half on a worker). */
  errorRate?: number;
  /** Timeline samples. */
  samples?: number;
  title?: string;
  command?: string;
}

/** A replay of `requests` Poisson arrivals over `workers` workers with lognormal latencies and a random-walk timeline. */
export function replayFixture(opts: ReplayFixtureOptions): ReplayReportData {
  const rand = seededRandom(opts.seed ?? 1);
  const errorRate = opts.errorRate ?? 0.01;
  const results: RequestResult[] = [];
  let t = 0;
  for (let i = 0; i < opts.requests; i++) {
    t += -Math.log(Math.max(rand(), 1e-12)) * 40;
    const arrival = round(t);
    const input = 100 + Math.floor(rand() * 4000);
    const base: RequestResult = {
      index: i,
      arrival_ms: arrival,
      first_token_ms: null,
      finish_ms: null,
      ttft_ms: null,
      mean_itl_ms: null,
      e2e_ms: null,
      input_tokens: input,
      output_tokens: 0,
      cached_tokens: 0,
      preemptions: 0,
      dp_rank: null,
    };
    // Skewed routing so the per-worker bars differ; a single engine's results carry no worker, as replay writes them.
    const worker = Math.min(opts.workers - 1, Math.floor(rand() ** 1.3 * opts.workers));
    if (opts.workers > 1) base.worker = worker;
    const fail = rand();
    if (fail < errorRate / 2) {
      results.push({ ...base, ...(opts.workers > 1 ? { worker: null } : {}), error: 'refused: prompt longer than max_model_len' });
      continue;
    }
    if (fail < errorRate) {
      results.push({ ...base, dp_rank: 0, error: 'worker stalled' });
      continue;
    }
    const ttft = lognormal(rand, 120, 1.1);
    const output = 1 + Math.floor(rand() * 400);
    const itl = output > 1 ? lognormal(rand, 18, 0.35) : null;
    const first = arrival + ttft;
    const finish = first + (itl ?? 0) * (output - 1);
    results.push({
      ...base,
      first_token_ms: round(first),
      finish_ms: round(finish),
      ttft_ms: round(ttft),
      mean_itl_ms: itl === null ? null : round(itl),
      e2e_ms: round(finish - arrival),
      output_tokens: output,
      cached_tokens: Math.floor(input * rand() * 0.6),
      preemptions: rand() < 0.02 ? 1 : 0,
      dp_rank: 0,
    });
  }
  const end = results.reduce((m, r) => Math.max(m, r.finish_ms ?? r.arrival_ms), 0);
  const summary = summarize(results, end, Math.round(end / 15));
  // A fleet's summary has a per-worker section, as the replay writes it for --num-workers above 1.
  if (opts.workers > 1) {
    const usage = Array.from({ length: opts.workers }, () => ({ passes: Math.round(end / 15), busyMs: end * (0.4 + rand() * 0.5) }));
    summary.fleet = summarizeFleet(results, end, { name: 'kv' }, usage, 1);
  }
  return {
    kind: 'replay',
    title: opts.title ?? `Seeded replay: ${opts.requests} requests on ${opts.workers} workers`,
    command: opts.command ?? `dynamo-mocker replay trace.jsonl --num-workers ${opts.workers} --report report.html`,
    summary,
    results,
    timeline: timelineFixture(rand, opts.workers, opts.samples ?? 400, end),
  };
}

function timelineFixture(rand: () => number, workers: number, samples: number, endMs: number): Timeline {
  const t_ms = Array.from({ length: samples }, (_, i) => round((endMs * i) / Math.max(1, samples - 1)));
  return {
    t_ms,
    workers: Array.from({ length: workers }, (_, w) => {
      let running = 4 + (w % 5);
      let waiting = 0;
      let kv = 0.2 + 0.05 * (w % 4);
      const out = { running: [] as number[], waiting: [] as number[], kv_usage: [] as number[] };
      for (let i = 0; i < samples; i++) {
        running = Math.max(0, Math.min(64, running + Math.round((rand() - 0.5) * 4)));
        waiting = Math.max(0, waiting + Math.round((rand() - 0.55) * 3));
        kv = Math.max(0, Math.min(1, kv + (rand() - 0.5) * 0.05));
        out.running.push(running);
        out.waiting.push(waiting);
        out.kv_usage.push(round(kv));
      }
      return out;
    }),
  };
}

/** A sweep over batch size × router: bigger batches raise throughput and TTFT, so the Pareto front is a real trade-off. */
export function sweepFixture(opts: { seed?: number; title?: string; command?: string; configs?: Array<Record<string, string | number>> } = {}): SweepReportData {
  const rand = seededRandom(opts.seed ?? 7);
  const configs =
    opts.configs ??
    [8, 16, 32, 64, 128, 256].flatMap((seqs) => ['kv', 'round-robin'].map((router) => ({ 'max-num-seqs': seqs, router }) as Record<string, string | number>));
  const rows: SweepRow[] = configs.map((config) => {
    const seqs = Number(config['max-num-seqs'] ?? 16);
    const kv = config.router === 'kv';
    const p90 = round(30 * seqs ** 0.85 * (kv ? 0.8 : 1) * (0.85 + rand() * 0.3));
    const tok = round(400 * seqs ** 0.55 * (kv ? 1.05 : 1) * (0.9 + rand() * 0.2));
    const pct = (p50: number) => ({ p50: round(p50), p90: round(p50 * 2), p99: round(p50 * 3.5), mean: round(p50 * 1.3) });
    return {
      config,
      requests: 1000,
      completed: 990,
      errors: 10,
      duration_ms: round(60000 / seqs ** 0.5),
      requests_per_s: round(tok / 200),
      output_tokens_per_s: tok,
      ttft_ms: { ...pct(p90 / 2), p90 },
      itl_ms: pct(12 + seqs / 20 + rand() * 4),
      e2e_ms: pct(2000 + seqs * 10),
      prefix_hit_rate: kv ? 0.42 : 0.18,
      preemptions: Math.floor(rand() * 20),
      pareto: false,
    };
  });
  for (const r of rows) {
    r.pareto = !rows.some((o) => o !== r && (o.ttft_ms.p90 as number) <= (r.ttft_ms.p90 as number) && o.output_tokens_per_s >= r.output_tokens_per_s && ((o.ttft_ms.p90 as number) < (r.ttft_ms.p90 as number) || o.output_tokens_per_s > r.output_tokens_per_s));
  }
  return {
    kind: 'sweep',
    title: opts.title ?? 'Seeded sweep: batch size × router',
    command: opts.command ?? 'dynamo-mocker sweep trace.jsonl --max-num-seqs 8,16,32,64,128,256 --router kv,round-robin --report sweep.html',
    parameters: Object.keys(configs[0] ?? {}),
    rows,
  };
}
