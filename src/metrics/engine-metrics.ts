// Engine metrics: kvstats gauges (Dynamo names) and vLLM-named engine series, read at scrape time.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Engine } from '../core/engine.js';
import type { RequestObserver } from './request-metrics.js';
import { sanitizePrometheusLabel } from './work-handler-metrics.js';

/** vLLM's bucket lists (vllm/v1/metrics/loggers.py). */
export const VLLM_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
export const VLLM_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
export const VLLM_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];

/** vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, … up to `max`. */
export function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let exp = 1; ; exp *= 10) {
    for (const m of [1, 2, 5]) {
      if (m * exp > max) return out;
      out.push(m * exp);
    }
  }
}

export interface EngineSource {
  engine: Engine;
  /** Requests waiting in the admission queue of a rank (not yet in the engine). */
  queued(rank: number): number;
  namespace: string;
  component: string;
  model: string;
  workerId: string;
  /** False: this worker exports no vLLM-named series (Dynamo 1.4's prefill workers never bind them). */
  vllmSeries?: boolean;
}

const NO_OBSERVER: RequestObserver = { token() {}, finish() {} };


interface Family {
  sources: EngineSource[];
  /** The label values of one worker's DP rank on the vLLM-named series. */
  vllm: (s: EngineSource, rank: number) => Record<string, string>;
  ttft: Histogram<string>;
  itl: Histogram<string>;
  e2e: Histogram<string>;
  promptTokens: Histogram<string>;
  generationTokens: Histogram<string>;
}

const families = new WeakMap<Registry, Family>();

function rankTotals(src: EngineSource): Array<{ rank: number; active: number; total: number; running: number; paused: number; waiting: number; hitRate: number; preemptions: number; queries: number; hits: number }> {
  return src.engine.ranks.map((r, rank) => {
    const s = r.snapshot();
    return {
      rank,
      active: s.activeBlocks,
      total: s.totalBlocks,
      running: s.running,
      paused: s.paused,
      waiting: s.waiting + src.queued(rank),
      hitRate: s.prefixHitRate,
      preemptions: s.preemptionsTotal,
      queries: s.prefixQueryTokens,
      hits: s.prefixHitTokens,
    };
  });
}

/**
 * `workerLabel`: whether the vLLM-named series carry `worker_id`. Dynamo's own (one registry per
 * worker runtime) are labelled `model_name` and `engine` only; several workers sharing this
 * process's registry need `worker_id` to keep their series apart.
 */
function family(registry: Registry, maxModelLen: number, workerLabel: boolean): Family {
  const existing = families.get(registry);
  if (existing) return existing;
  const sources: EngineSource[] = [];
  const componentLabels = ['dynamo_namespace', 'dynamo_component', 'worker_id'];
  const rankLabels = [...componentLabels, 'model', 'dp_rank'];
  const vllmLabels = workerLabel ? ['model_name', 'engine', 'worker_id'] : ['model_name', 'engine'];
  const comp = (s: EngineSource) => ({
    dynamo_namespace: sanitizePrometheusLabel(s.namespace),
    dynamo_component: sanitizePrometheusLabel(s.component),
    worker_id: s.workerId,
  });
  const vllm = (s: EngineSource, rank: number): Record<string, string> =>
    workerLabel ? { model_name: s.model, engine: String(rank), worker_id: s.workerId } : { model_name: s.model, engine: String(rank) };

  // Component-level kvstats: Dynamo's single gauge per component; with several DP ranks we report
  // the worker's totals (sum of blocks, usage over all blocks) instead of "last rank wins".
  const kvGauge = (name: string, help: string, value: (t: ReturnType<typeof rankTotals>) => number) =>
    new Gauge({
      name,
      help,
      labelNames: componentLabels,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of sources) this.set(comp(s), value(rankTotals(s)));
      },
    });
  const sum = (t: ReturnType<typeof rankTotals>, k: 'active' | 'total') => t.reduce((a, r) => a + r[k], 0);
  kvGauge('dynamo_component_kvstats_active_blocks', 'Number of active KV cache blocks currently in use', (t) => sum(t, 'active'));
  kvGauge('dynamo_component_kvstats_total_blocks', 'Total number of KV cache blocks available', (t) => sum(t, 'total'));
  kvGauge('dynamo_component_kvstats_gpu_cache_usage_percent', 'GPU cache usage as a percentage (0.0-1.0)', (t) => (sum(t, 'total') ? sum(t, 'active') / sum(t, 'total') : 0));
  kvGauge('dynamo_component_kvstats_gpu_prefix_cache_hit_rate', 'GPU prefix cache hit rate as a percentage (0.0-1.0)', (t) => (t.length ? t.reduce((a, r) => a + r.hitRate, 0) / t.length : 0));

  const perRank = (name: string, help: string, value: (r: ReturnType<typeof rankTotals>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: rankLabels,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of sources) for (const r of rankTotals(s)) this.set({ ...comp(s), model: s.model, dp_rank: String(r.rank) }, value(r));
      },
    });
  perRank('dynamo_component_total_blocks', 'Total number of KV cache blocks available, per DP rank', (r) => r.total);
  perRank('dynamo_component_gpu_cache_usage_percent', 'GPU cache usage as a fraction (0.0-1.0), per DP rank', (r) => (r.total ? r.active / r.total : 0));
  perRank('dynamo_component_kv_active_blocks', 'Active KV cache blocks, per DP rank', (r) => r.active);
  perRank('dynamo_component_kv_cache_hit_rate', 'Prefix cache hit rate (0.0-1.0). Portable across engines.', (r) => r.hitRate);
  perRank('dynamo_mocker_paused_requests', 'Running requests paused because their response stream is congested (backpressure), per DP rank', (r) => r.paused);

  const vllmGauge = (name: string, help: string, value: (r: ReturnType<typeof rankTotals>[number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: vllmLabels,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of sources) if (s.vllmSeries !== false) for (const r of rankTotals(s)) this.set(vllm(s, r.rank), value(r));
      },
    });
  vllmGauge('vllm:num_requests_running', 'Number of requests in model execution batches.', (r) => r.running);
  vllmGauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', (r) => r.waiting);
  vllmGauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', (r) => (r.total ? r.active / r.total : 0));
  vllmGauge('vllm:gpu_cache_usage_perc', 'GPU KV-cache usage. 1 means 100 percent usage (alias of vllm:kv_cache_usage_perc).', (r) => (r.total ? r.active / r.total : 0));

  // Counters mirror monotonic engine totals: at scrape, add what happened since the last scrape.
  const vllmCounter = (name: string, help: string, value: (r: ReturnType<typeof rankTotals>[number]) => number) => {
    const seen = new Map<string, number>();
    return new Counter({
      name,
      help,
      labelNames: vllmLabels,
      registers: [registry],
      collect() {
        for (const s of sources) {
          if (s.vllmSeries === false) continue;
          for (const r of rankTotals(s)) {
            const labels = vllm(s, r.rank);
            const key = `${s.workerId}/${r.rank}`;
            const now = value(r);
            const delta = now - (seen.get(key) ?? 0);
            seen.set(key, now);
            this.inc(labels, Math.max(0, delta));
          }
        }
      },
    });
  };
  vllmCounter('vllm:num_preemptions_total', 'Cumulative number of preemptions from the engine.', (r) => r.preemptions);
  vllmCounter('vllm:prefix_cache_queries_total', 'Prefix cache queries, in terms of number of queried tokens.', (r) => r.queries);
  vllmCounter('vllm:prefix_cache_hits_total', 'Prefix cache hits, in terms of number of cached tokens.', (r) => r.hits);

  const hist = (name: string, help: string, buckets: number[]) => new Histogram({ name, help, labelNames: vllmLabels, buckets, registers: [registry] });
  const f: Family = {
    sources,
    vllm,
    ttft: hist('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', VLLM_TTFT_BUCKETS),
    itl: hist('vllm:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', VLLM_ITL_BUCKETS),
    e2e: hist('vllm:e2e_request_latency_seconds', 'Histogram of e2e request latency in seconds.', VLLM_E2E_BUCKETS),
    promptTokens: hist('vllm:request_prompt_tokens', 'Number of prefill tokens processed.', buckets125(maxModelLen)),
    generationTokens: hist('vllm:request_generation_tokens', 'Number of generation tokens processed.', buckets125(maxModelLen)),
  };
  families.set(registry, f);
  return f;
}

/** Registers one worker's engine with the registry's engine metrics; returns per-request observers. */
export class EngineMetrics {
  private constructor(
    private readonly f: Family,
    private readonly src: EngineSource,
  ) {}

  static forWorker(registry: Registry, src: EngineSource, maxModelLen: number, workerLabel = true): EngineMetrics {
    const f = family(registry, Math.max(maxModelLen, 1), workerLabel);
    f.sources.push(src);
    return new EngineMetrics(f, src);
  }

  /** Starts timing a request that arrived at `arrivalMs` on `rank`. */
  request(rank: number, arrivalMs: number): RequestObserver {
    if (this.src.vllmSeries === false) return NO_OBSERVER;
    const labels = this.f.vllm(this.src, rank);
    const { ttft, itl, e2e, promptTokens, generationTokens } = this.f;
    let last: number | null = null;
    return {
      token(atMs) {
        if (last === null) ttft.observe(labels, (atMs - arrivalMs) / 1000);
        else itl.observe(labels, (atMs - last) / 1000);
        last = atMs;
      },
      finish(atMs, prompt, output) {
        e2e.observe(labels, (atMs - arrivalMs) / 1000);
        promptTokens.observe(labels, prompt);
        generationTokens.observe(labels, output);
      },
    };
  }

  remove(): void {
    const i = this.f.sources.indexOf(this.src);
    if (i >= 0) this.f.sources.splice(i, 1);
  }
}
