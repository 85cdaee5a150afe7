// What the HTML report is drawn from: one replay (results, summary, per-worker timeline) or one sweep.
import type { Percentiles, ReplaySummary, RequestResult } from './report.js';

/** Per-worker state sampled over simulated time, at most a few hundred points. */
export interface Timeline {
  /** Simulated time of each sample, ms from the first arrival. */
  t_ms: number[];
  /** One entry per worker (fleet index), each array as long as `t_ms`. */
  workers: Array<{
    /** Running requests (all DP ranks) at the sample time. */
    running: number[];
    /** Waiting requests (all DP ranks). */
    waiting: number[];
    /** Active KV blocks over total KV blocks, 0..1 (all DP ranks). */
    kv_usage: number[];
  }>;
}

export interface ReplayReportData {
  kind: 'replay';
  title: string;
  /** The command line that produced it, shown in the header. */
  command: string;
  summary: ReplaySummary;
  /** Every request, in trace order; `worker` is the fleet index it ran on (null when refused before routing). */
  results: RequestResult[];
  timeline: Timeline;
}

/** One configuration of a sweep and what it measured. */
export interface SweepRow {
  /** The swept parameters' values, keyed by flag name without dashes, e.g. {"num-workers": 8, "router": "kv"}. */
  config: Record<string, string | number>;
  requests: number;
  completed: number;
  errors: number;
  duration_ms: number;
  requests_per_s: number;
  output_tokens_per_s: number;
  ttft_ms: Percentiles;
  itl_ms: Percentiles;
  e2e_ms: Percentiles;
  prefix_hit_rate: number;
  preemptions: number;
  /** On the Pareto front of throughput (output tokens/s, higher is better) against p90 TTFT (lower is better). */
  pareto: boolean;
}

export interface SweepReportData {
  kind: 'sweep';
  title: string;
  command: string;
  /** The swept flag names, in the order given. */
  parameters: string[];
  rows: SweepRow[];
}

export type ReportData = ReplayReportData | SweepReportData;
