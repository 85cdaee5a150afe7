// Per-request replay results and the run summary (percentiles, throughput, prefix hit rate).
import type { KvTransferSettings, KvTransferTimingMode } from '../core/kv-transfer.js';

export interface RequestResult {
  index: number;
  arrival_ms: number;
  first_token_ms: number | null;
  finish_ms: number | null;
  ttft_ms: number | null;
  mean_itl_ms: number | null;
  e2e_ms: number | null;
  input_tokens: number;
  output_tokens: number;
  cached_tokens: number;
  preemptions: number;
  dp_rank: number | null;
  /** Fleet replay (--num-workers above 1) only: the worker (0..N-1) the router chose; null if never routed. */
  worker?: number | null;
  // Disaggregated replay only (absent otherwise).
  /** Prefill worker (0..P-1) that ran (or refused) the prompt; null when there was nothing to decode. */
  prefill_worker?: number | null;
  /** Decode worker (0..D-1) that reserved the KV. */
  decode_worker?: number | null;
  /** When the prefill worker emitted its hidden token (its pass end). */
  prefill_done_ms?: number | null;
  /** KV transfer delay, real model milliseconds (not divided by --speedup-ratio). */
  transfer_ms?: number | null;
  /** When the decode worker activated the request (prefill done + waiting for decode KV + transfer). */
  decode_start_ms?: number | null;
  error?: string;
}

export interface Percentiles {
  p50: number | null;
  p90: number | null;
  p99: number | null;
  mean: number | null;
}

export interface ReplaySummary {
  requests: number;
  completed: number;
  errors: number;
  duration_ms: number;
  input_tokens: number;
  output_tokens: number;
  cached_tokens: number;
  prefix_hit_rate: number;
  preemptions: number;
  requests_per_s: number;
  output_tokens_per_s: number;
  total_tokens_per_s: number;
  ttft_ms: Percentiles;
  itl_ms: Percentiles;
  e2e_ms: Percentiles;
  passes: number;
  /** Disaggregated replay only. */
  disagg?: DisaggSummary;
  /** Fleet replay (--num-workers above 1) only. */
  fleet?: FleetSummary;
}

/** One worker of a fleet: what it was given and what it did with it. */
export interface FleetWorkerSummary {
  worker: number;
  /** Requests routed to it (refused ones included). */
  requests: number;
  completed: number;
  input_tokens: number;
  cached_tokens: number;
  /** cached over input tokens of its completed requests. */
  prefix_hit_rate: number;
  output_tokens: number;
  preemptions: number;
  passes: number;
  /** Time its DP ranks spent in passes over (DP ranks × the run's duration). */
  busy_fraction: number;
  ttft_ms: Percentiles;
}

/** How unevenly a per-worker figure is spread: max over mean (1 = perfectly even) and the coefficient of variation. */
export interface Spread {
  min: number;
  max: number;
  mean: number;
  max_over_mean: number;
  cv: number;
}

export interface FleetSummary {
  router: string;
  /** What the router measured itself, when it does (kv: requests routed, the cached blocks and tokens it saw on the workers it chose). */
  router_stats?: Record<string, number>;
  workers: number;
  per_worker: FleetWorkerSummary[];
  spread: { requests: Spread; input_tokens: Spread; busy_fraction: Spread; prefix_hit_rate: Spread };
}

/** What the replay measured of one fleet worker's passes. */
export interface WorkerUsage {
  passes: number;
  busyMs: number;
}

export interface PoolSummary {
  workers: number;
  passes: number;
  /** Simulated time the pool's ranks spent in passes, summed. */
  busy_ms: number;
  /** busy_ms over workers × DP ranks per worker × the time the last pass of any pool ended. */
  busy_fraction: number;
}

export interface DisaggSummary {
  /** The router of each pool when not round-robin (absent: round-robin, as the summary always had it). */
  router?: string;
  prefill: PoolSummary;
  decode: PoolSummary;
  kv_transfer_bandwidth_gbps: number;
  /** null: unknown (no --kv-bytes-per-token and no model config), so transfers took no time. */
  kv_bytes_per_token: number | null;
  kv_transfer_timing_mode: KvTransferTimingMode;
  /** Arrival → prefill token (prefill queueing and compute). */
  prefill_ms: Percentiles;
  /** Prefill token → decode start: waiting for decode KV plus the transfer. */
  handoff_ms: Percentiles;
  transfer_ms: Percentiles;
}

/** What the replay measured of one pool. */
export interface PoolUsage {
  workers: number;
  ranksPerWorker: number;
  passes: number;
  busyMs: number;
  /** When this pool's last pass ended (the run's duration stops at the last pass start). */
  lastPassEndMs: number;
}

/** Rounds simulated times to nanoseconds so output files are stable and readable. */
export function roundMs(ms: number): number {
  return Math.round(ms * 1e6) / 1e6;
}

/** Linear-interpolated percentile (numpy's default) of sorted values. */
export function percentile(sorted: readonly number[], q: number): number | null {
  if (sorted.length === 0) return null;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return roundMs(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo));
}

function stats(values: number[]): Percentiles {
  const sorted = values.slice().sort((a, b) => a - b);
  const mean = values.length ? roundMs(values.reduce((a, b) => a + b, 0) / values.length) : null;
  return { p50: percentile(sorted, 0.5), p90: percentile(sorted, 0.9), p99: percentile(sorted, 0.99), mean };
}

export function summarize(results: readonly RequestResult[], durationMs: number, passes: number): ReplaySummary {
  const done = results.filter((r) => r.error === undefined && r.finish_ms !== null);
  const input = results.reduce((a, r) => a + (r.error === undefined ? r.input_tokens : 0), 0);
  const output = done.reduce((a, r) => a + r.output_tokens, 0);
  const cached = done.reduce((a, r) => a + r.cached_tokens, 0);
  const seconds = durationMs / 1000;
  const perSecond = (n: number): number => (seconds > 0 ? Math.round((n / seconds) * 1000) / 1000 : 0);
  return {
    requests: results.length,
    completed: done.length,
    errors: results.length - done.length,
    duration_ms: roundMs(durationMs),
    input_tokens: input,
    output_tokens: output,
    cached_tokens: cached,
    prefix_hit_rate: input > 0 ? Math.round((cached / input) * 1e6) / 1e6 : 0,
    preemptions: done.reduce((a, r) => a + r.preemptions, 0),
    requests_per_s: perSecond(done.length),
    output_tokens_per_s: perSecond(output),
    total_tokens_per_s: perSecond(output + input),
    ttft_ms: stats(done.flatMap((r) => (r.ttft_ms === null ? [] : [r.ttft_ms]))),
    itl_ms: stats(done.flatMap((r) => (r.mean_itl_ms === null ? [] : [r.mean_itl_ms]))),
    e2e_ms: stats(done.flatMap((r) => (r.e2e_ms === null ? [] : [r.e2e_ms]))),
    passes,
  };
}

/** The disaggregated part of the summary, over completed requests like the latencies. */
export function summarizeDisagg(
  results: readonly RequestResult[],
  durationMs: number,
  pools: { prefill: PoolUsage; decode: PoolUsage },
  kv: KvTransferSettings,
  router = 'round-robin',
): DisaggSummary {
  const done = results.filter((r) => r.error === undefined && r.finish_ms !== null);
  const spanMs = Math.max(durationMs, pools.prefill.lastPassEndMs, pools.decode.lastPassEndMs);
  const pool = (u: PoolUsage): PoolSummary => {
    const capacity = spanMs * u.workers * u.ranksPerWorker;
    return { workers: u.workers, passes: u.passes, busy_ms: roundMs(u.busyMs), busy_fraction: capacity > 0 ? Math.round((u.busyMs / capacity) * 1e6) / 1e6 : 0 };
  };
  const of = (f: (r: RequestResult) => number | null): Percentiles =>
    stats(
      done.flatMap((r) => {
        const v = f(r);
        return v === null ? [] : [v];
      }),
    );
  return {
    ...(router === 'round-robin' ? {} : { router }),
    prefill: pool(pools.prefill),
    decode: pool(pools.decode),
    kv_transfer_bandwidth_gbps: kv.bandwidthGBps,
    kv_bytes_per_token: kv.bytesPerToken,
    kv_transfer_timing_mode: kv.timingMode,
    prefill_ms: of((r) => (r.prefill_done_ms == null ? null : r.prefill_done_ms - r.arrival_ms)),
    handoff_ms: of((r) => (r.decode_start_ms == null || r.prefill_done_ms == null ? null : r.decode_start_ms - r.prefill_done_ms)),
    transfer_ms: of((r) => r.transfer_ms ?? null),
  };
}

function spread(values: readonly number[]): Spread {
  const round = (x: number): number => Math.round(x * 1e6) / 1e6;
  if (values.length === 0) return { min: 0, max: 0, mean: 0, max_over_mean: 0, cv: 0 };
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, v) => a + (v - mean) ** 2, 0) / values.length;
  return {
    min: round(Math.min(...values)),
    max: round(Math.max(...values)),
    mean: round(mean),
    max_over_mean: mean > 0 ? round(Math.max(...values) / mean) : 0,
    cv: mean > 0 ? round(Math.sqrt(variance) / mean) : 0,
  };
}

/** The per-worker part of a fleet replay's summary. */
export function summarizeFleet(
  results: readonly RequestResult[],
  durationMs: number,
  router: { name: string; stats?(): Record<string, number> },
  usage: readonly WorkerUsage[],
  ranksPerWorker: number,
): FleetSummary {
  const per: FleetWorkerSummary[] = usage.map((u, worker) => ({
    worker,
    requests: 0,
    completed: 0,
    input_tokens: 0,
    cached_tokens: 0,
    prefix_hit_rate: 0,
    output_tokens: 0,
    preemptions: 0,
    passes: u.passes,
    busy_fraction: durationMs > 0 ? Math.round((u.busyMs / (durationMs * ranksPerWorker)) * 1e6) / 1e6 : 0,
    ttft_ms: stats([]),
  }));
  const ttfts: number[][] = usage.map(() => []);
  for (const r of results) {
    if (r.worker === null || r.worker === undefined) continue;
    const w = per[r.worker];
    w.requests++;
    if (r.error !== undefined || r.finish_ms === null) continue;
    w.completed++;
    w.input_tokens += r.input_tokens;
    w.cached_tokens += r.cached_tokens;
    w.output_tokens += r.output_tokens;
    w.preemptions += r.preemptions;
    if (r.ttft_ms !== null) ttfts[r.worker].push(r.ttft_ms);
  }
  for (const w of per) {
    w.prefix_hit_rate = w.input_tokens > 0 ? Math.round((w.cached_tokens / w.input_tokens) * 1e6) / 1e6 : 0;
    w.ttft_ms = stats(ttfts[w.worker]);
  }
  return {
    router: router.name,
    ...(router.stats ? { router_stats: router.stats() } : {}),
    workers: per.length,
    per_worker: per,
    spread: {
      requests: spread(per.map((w) => w.requests)),
      input_tokens: spread(per.map((w) => w.input_tokens)),
      busy_fraction: spread(per.map((w) => w.busy_fraction)),
      prefix_hit_rate: spread(per.map((w) => w.prefix_hit_rate)),
    },
  };
}

function fmt(v: number | null): string {
  return v === null ? '-' : v.toFixed(2);
}

/** Workers listed in the table; the JSON summary has them all. */
const MAX_WORKER_ROWS = 32;

/** The human-readable summary table. */
export function summaryTable(s: ReplaySummary): string {
  const rows: string[] = [];
  rows.push(`requests        ${s.requests} (${s.completed} completed, ${s.errors} errors)`);
  rows.push(`simulated time  ${(s.duration_ms / 1000).toFixed(3)} s over ${s.passes} passes`);
  rows.push(`throughput      ${s.requests_per_s.toFixed(3)} req/s, ${s.output_tokens_per_s.toFixed(1)} output tok/s, ${s.total_tokens_per_s.toFixed(1)} total tok/s`);
  rows.push(`prefix hits     ${(s.prefix_hit_rate * 100).toFixed(2)}% of ${s.input_tokens} input tokens cached`);
  rows.push(`preemptions     ${s.preemptions}`);
  const fl = s.fleet;
  if (fl) {
    const sp = fl.spread;
    rows.push(`fleet           ${fl.workers} workers, ${fl.router} router`);
    const seen = fl.router_stats?.overlap_tokens;
    if (seen !== undefined && s.input_tokens > 0) {
      rows.push(`router's view   ${pct(seen / s.input_tokens)} of input tokens cached on the workers it chose, by their KV events (the engines hit ${pct(s.prefix_hit_rate)})`);
    }
    rows.push(
      `spread          requests ${sp.requests.min}–${sp.requests.max} per worker (max/mean ${sp.requests.max_over_mean.toFixed(3)}), busy ${pct(sp.busy_fraction.min)}–${pct(sp.busy_fraction.max)}, prefix hits ${pct(sp.prefix_hit_rate.min)}–${pct(sp.prefix_hit_rate.max)}`,
    );
  }
  const dg = s.disagg;
  if (dg) {
    rows.push(`disaggregated   ${dg.prefill.workers} prefill + ${dg.decode.workers} decode workers, ${dg.router ?? 'round-robin'} router per pool; ${transferLine(dg)}`);
    rows.push(`pool busy       prefill ${pct(dg.prefill.busy_fraction)} over ${dg.prefill.passes} passes, decode ${pct(dg.decode.busy_fraction)} over ${dg.decode.passes} passes`);
  }
  rows.push('');
  rows.push('latency (ms)        p50        p90        p99       mean');
  const latencies: Array<readonly [string, Percentiles]> = [
    ['TTFT', s.ttft_ms],
    ['ITL', s.itl_ms],
    ['E2E', s.e2e_ms],
  ];
  if (dg) latencies.push(['prefill', dg.prefill_ms], ['handoff', dg.handoff_ms], ['KV transfer', dg.transfer_ms]);
  for (const [name, p] of latencies) {
    rows.push(`${name.padEnd(12)}${fmt(p.p50).padStart(11)}${fmt(p.p90).padStart(11)}${fmt(p.p99).padStart(11)}${fmt(p.mean).padStart(11)}`);
  }
  if (fl) {
    rows.push('');
    rows.push('worker  requests  completed  prefix hits   busy   TTFT p50   TTFT p90  preemptions');
    for (const w of fl.per_worker.slice(0, MAX_WORKER_ROWS)) {
      rows.push(
        `${String(w.worker).padStart(6)}${String(w.requests).padStart(10)}${String(w.completed).padStart(11)}${pct(w.prefix_hit_rate).padStart(13)}${pct(w.busy_fraction).padStart(7)}${fmt(w.ttft_ms.p50).padStart(11)}${fmt(w.ttft_ms.p90).padStart(11)}${String(w.preemptions).padStart(13)}`,
      );
    }
  }
  if (fl && fl.per_worker.length > MAX_WORKER_ROWS) rows.push(`(${fl.per_worker.length - MAX_WORKER_ROWS} more workers: see the JSON summary's fleet.per_worker)`);
  return rows.join('\n');
}

function pct(fraction: number): string {
  return `${(fraction * 100).toFixed(2)}%`;
}

function transferLine(dg: DisaggSummary): string {
  if (dg.kv_bytes_per_token === null) return 'KV transfer takes no time (KV bytes per token unknown)';
  if (!(dg.kv_transfer_bandwidth_gbps > 0)) return 'KV transfer takes no time (bandwidth 0)';
  return `KV transfer ${dg.kv_transfer_bandwidth_gbps} GB/s × ${dg.kv_bytes_per_token} B/token (${dg.kv_transfer_timing_mode})`;
}
