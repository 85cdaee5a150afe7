// Per-request replay results and the run summary (percentiles, throughput, prefix hit rate).

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

function fmt(v: number | null): string {
  return v === null ? '-' : v.toFixed(2);
}

/** The human-readable summary table. */
export function summaryTable(s: ReplaySummary): string {
  const rows: string[] = [];
  rows.push(`requests        ${s.requests} (${s.completed} completed, ${s.errors} errors)`);
  rows.push(`simulated time  ${(s.duration_ms / 1000).toFixed(3)} s over ${s.passes} passes`);
  rows.push(`throughput      ${s.requests_per_s.toFixed(3)} req/s, ${s.output_tokens_per_s.toFixed(1)} output tok/s, ${s.total_tokens_per_s.toFixed(1)} total tok/s`);
  rows.push(`prefix hits     ${(s.prefix_hit_rate * 100).toFixed(2)}% of ${s.input_tokens} input tokens cached`);
  rows.push(`preemptions     ${s.preemptions}`);
  rows.push('');
  rows.push('latency (ms)        p50        p90        p99       mean');
  for (const [name, p] of [
    ['TTFT', s.ttft_ms],
    ['ITL', s.itl_ms],
    ['E2E', s.e2e_ms],
  ] as const) {
    rows.push(`${name.padEnd(12)}${fmt(p.p50).padStart(11)}${fmt(p.p90).padStart(11)}${fmt(p.p99).padStart(11)}${fmt(p.mean).padStart(11)}`);
  }
  return rows.join('\n');
}
