// Work-handler metrics, label sanitizing and the uptime gauge, checked on the exposition text.
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { WORK_ERROR_TYPES } from '../../src/metrics/request-metrics.js';
import {
  REQUEST_DURATION_BUCKETS,
  WORK_HANDLER_HELP,
  WorkHandlerMetrics,
  sanitizePrometheusLabel,
} from '../../src/metrics/work-handler-metrics.js';
import { createMetricsRegistry } from '../../src/metrics/runtime-metrics.js';
import { buckets125 } from '../../src/metrics/engine-metrics.js';

describe('sanitize_prometheus_label', () => {
  it.each([
    // Dynamo's own test cases (prometheus_names.rs) and the examples of the reference.
    ['__test', 'test'],
    [':test', '_test'],
    ['123:test-label@domain', '_123_test_label_domain'],
    ['my-worker', 'my_worker'],
    ['@@123', '_123'],
    ['comp345', 'comp345'],
    ['_x', '_x'],
    ['___x', '__x'],
    ['__1', '_1'],
    ['a.b c', 'a_b_c'],
    ['é-x', 'x'],
  ])('%s → %s', (input, output) => expect(sanitizePrometheusLabel(input)).toBe(output));

  it('replaces one character (code point) by one underscore', () => {
    expect(sanitizePrometheusLabel('a😀b')).toBe('a_b');
  });

  it.each(['____', '_', '', '-', '::'])('rejects %j', (input) => expect(() => sanitizePrometheusLabel(input)).toThrow());
});

const NAMES = [
  'dynamo_component_requests_total',
  'dynamo_component_request_duration_seconds',
  'dynamo_component_inflight_requests',
  'dynamo_component_request_bytes_total',
  'dynamo_component_response_bytes_total',
  'dynamo_component_errors_total',
  'dynamo_component_cancellation_total',
];

const BASE = { namespace: 'dynamo', component: 'backend', endpoint: 'generate', model: 'Qwen/Qwen3-0.6B' };
const series = (w: string, ns = 'dynamo', comp = 'backend', ep = 'generate', model = 'Qwen/Qwen3-0.6B') =>
  `dynamo_namespace="${ns}",dynamo_component="${comp}",dynamo_endpoint="${ep}",model="${model}",worker_id="${w}"`;

/** The sample lines of one metric name (exact name, any labels). */
function samples(text: string, name: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

describe('work-handler metrics', () => {
  it('exposes every family with HELP/TYPE and zero series before any traffic', async () => {
    const { registry } = createMetricsRegistry(() => 0);
    WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: '694d9a1b2c3d4e5f' }, () => 0);
    const text = await registry.metrics();
    const types = ['counter', 'histogram', 'gauge', 'counter', 'counter', 'counter', 'counter'];
    const helps = Object.values(WORK_HANDLER_HELP);
    NAMES.forEach((name, i) => {
      expect(text).toContain(`# TYPE ${name} ${types[i]}\n`);
      expect(text).toContain(`# HELP ${name} ${helps[i]}\n`);
    });
    const l = series('694d9a1b2c3d4e5f');
    for (const name of ['dynamo_component_requests_total', 'dynamo_component_inflight_requests', 'dynamo_component_request_bytes_total', 'dynamo_component_response_bytes_total', 'dynamo_component_cancellation_total']) {
      expect(samples(text, name)).toEqual([`${name}{${l}} 0`]);
    }
    expect(samples(text, 'dynamo_component_request_duration_seconds_count')).toEqual([`dynamo_component_request_duration_seconds_count{${l}} 0`]);
    // Every error_type starts at 0 (Dynamo's CounterVec has none until an error; ours reads as 0 errors).
    expect(samples(text, 'dynamo_component_errors_total')).toEqual(WORK_ERROR_TYPES.map((t) => `dynamo_component_errors_total{${l},error_type="${t}"} 0`));
    expect(text).toContain('# TYPE dynamo_component_uptime_seconds gauge\n');
    expect(samples(text, 'dynamo_component_uptime_seconds')).toEqual(['dynamo_component_uptime_seconds 0']);
  });

  it('has the 17 duration buckets 0.005 … 600 plus +Inf', async () => {
    expect(REQUEST_DURATION_BUCKETS).toEqual([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600]);
    const registry = new Registry();
    WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: 'a' });
    const text = await registry.metrics();
    const les = samples(text, 'dynamo_component_request_duration_seconds_bucket').map((line) => /le="([^"]+)"/.exec(line)?.[1]);
    expect(les).toEqual([...REQUEST_DURATION_BUCKETS.map(String), '+Inf']);
  });

  it('moves the counters exactly as Dynamo does', async () => {
    let t = 1000;
    const registry = new Registry();
    const m = WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: 'a' }, () => t);
    const l = series('a');
    const value = async (name: string, labels = l) => {
      const line = samples(await registry.metrics(), name).find((s) => s.startsWith(`${name}{${labels}}`));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };

    const first = m.begin(120);
    expect(await value('dynamo_component_requests_total')).toBe(1);
    expect(await value('dynamo_component_inflight_requests')).toBe(1);
    expect(await value('dynamo_component_request_bytes_total')).toBe(120);
    const second = m.begin(80);
    expect(await value('dynamo_component_requests_total')).toBe(2);
    expect(await value('dynamo_component_inflight_requests')).toBe(2);
    expect(await value('dynamo_component_request_bytes_total')).toBe(200);

    first.responseBytes(40);
    first.responseBytes(45);
    second.responseBytes(7);
    expect(await value('dynamo_component_response_bytes_total')).toBe(92);

    t = 1250; // 0.25 s
    first.end();
    first.end(); // idempotent
    expect(await value('dynamo_component_inflight_requests')).toBe(1);
    expect(await value('dynamo_component_request_duration_seconds_count')).toBe(1);
    expect(await value('dynamo_component_request_duration_seconds_sum')).toBe(0.25);
    expect(await value('dynamo_component_request_duration_seconds_bucket', `le="0.1",${l}`)).toBe(0);
    expect(await value('dynamo_component_request_duration_seconds_bucket', `le="0.25",${l}`)).toBe(1);
    expect(await value('dynamo_component_request_duration_seconds_bucket', `le="+Inf",${l}`)).toBe(1);

    t = 1000 + 700_000; // 700 s: beyond the last bucket
    second.end();
    expect(await value('dynamo_component_inflight_requests')).toBe(0);
    expect(await value('dynamo_component_request_duration_seconds_count')).toBe(2);
    expect(await value('dynamo_component_request_duration_seconds_bucket', `le="600",${l}`)).toBe(1);
    expect(await value('dynamo_component_request_duration_seconds_bucket', `le="+Inf",${l}`)).toBe(2);
    expect(await value('dynamo_component_requests_total')).toBe(2);

    m.error('generate');
    m.error('generate');
    m.error('publish_final');
    expect(await value('dynamo_component_errors_total', `${l},error_type="generate"`)).toBe(2);
    expect(await value('dynamo_component_errors_total', `${l},error_type="publish_final"`)).toBe(1);
    expect(await value('dynamo_component_errors_total', `${l},error_type="deserialization"`)).toBe(0);

    m.cancelled();
    expect(await value('dynamo_component_cancellation_total')).toBe(1);
  });

  it('accepts every error_type', async () => {
    const registry = new Registry();
    const m = WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: 'a' });
    for (const type of WORK_ERROR_TYPES) m.error(type);
    const lines = samples(await registry.metrics(), 'dynamo_component_errors_total');
    expect(lines.map((s) => /error_type="([^"]+)"/.exec(s)?.[1]).sort()).toEqual(
      ['deserialization', 'invalid_message', 'response_stream', 'generate', 'publish_response', 'publish_final'].sort(),
    );
    for (const line of lines) expect(line.endsWith(' 1')).toBe(true);
  });

  it('keeps one series per worker in a shared registry', async () => {
    const registry = new Registry();
    const a = WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: '1a' });
    const b = WorkHandlerMetrics.forWorker(registry, { ...BASE, workerId: '2b' });
    a.begin(10).end();
    a.begin(10);
    b.begin(5);
    b.cancelled();
    const text = await registry.metrics();
    expect(samples(text, 'dynamo_component_requests_total')).toEqual([
      `dynamo_component_requests_total{${series('1a')}} 2`,
      `dynamo_component_requests_total{${series('2b')}} 1`,
    ]);
    expect(samples(text, 'dynamo_component_request_bytes_total')).toEqual([
      `dynamo_component_request_bytes_total{${series('1a')}} 20`,
      `dynamo_component_request_bytes_total{${series('2b')}} 5`,
    ]);
    expect(samples(text, 'dynamo_component_cancellation_total')).toEqual([
      `dynamo_component_cancellation_total{${series('1a')}} 0`,
      `dynamo_component_cancellation_total{${series('2b')}} 1`,
    ]);
    // One family each: HELP/TYPE once.
    for (const name of NAMES) expect(text.split(`# TYPE ${name} `).length).toBe(2);
  });

  it('sanitizes hierarchy label values but exports model and worker_id verbatim', async () => {
    const registry = new Registry();
    const m = WorkHandlerMetrics.forWorker(registry, { namespace: 'my-ns', component: 'my-worker', endpoint: 'gen.erate', model: 'org/My-Model:v1', workerId: '7587889a' });
    expect(m.labels).toEqual({ dynamo_namespace: 'my_ns', dynamo_component: 'my_worker', dynamo_endpoint: 'gen_erate', model: 'org/My-Model:v1', worker_id: '7587889a' });
    expect(await registry.metrics()).toContain(`dynamo_component_requests_total{${series('7587889a', 'my_ns', 'my_worker', 'gen_erate', 'org/My-Model:v1')}} 0`);
    expect(() => WorkHandlerMetrics.forWorker(registry, { ...BASE, component: '____', workerId: 'x' })).toThrow();
  });

  it('keeps registries independent', async () => {
    const r1 = new Registry();
    const r2 = new Registry();
    WorkHandlerMetrics.forWorker(r1, { ...BASE, workerId: 'a' }).begin(1);
    WorkHandlerMetrics.forWorker(r2, { ...BASE, workerId: 'a' });
    expect(samples(await r1.metrics(), 'dynamo_component_requests_total')).toEqual([`dynamo_component_requests_total{${series('a')}} 1`]);
    expect(samples(await r2.metrics(), 'dynamo_component_requests_total')).toEqual([`dynamo_component_requests_total{${series('a')}} 0`]);
  });
});

describe('uptime gauge', () => {
  it('is refreshed at scrape time and has no labels', async () => {
    let t = 5000;
    const { registry } = createMetricsRegistry(() => t);
    expect(samples(await registry.metrics(), 'dynamo_component_uptime_seconds')).toEqual(['dynamo_component_uptime_seconds 0']);
    t = 7500;
    const text = await registry.metrics();
    expect(text).toContain('# HELP dynamo_component_uptime_seconds Total uptime of the DistributedRuntime in seconds\n');
    expect(text).toContain('# TYPE dynamo_component_uptime_seconds gauge\n');
    expect(samples(text, 'dynamo_component_uptime_seconds')).toEqual(['dynamo_component_uptime_seconds 2.5']);
  });
});

describe('engine-metric buckets', () => {
  it("builds vLLM's 1-2-5 buckets", () => {
    expect(buckets125(4096)).toEqual([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]);
  });
});

describe('engine metrics (vLLM names, Dynamo 1.4 native metrics §5.7)', () => {
  async function scrape(workerLabel: boolean) {
    const { Engine } = await import('../../src/core/engine.js');
    const { createPolynomialTimingModel } = await import('../../src/core/timing/polynomial.js');
    const { createXxh3 } = await import('../../src/hashing/xxh3.js');
    const { EngineMetrics, VLLM_TTFT_BUCKETS } = await import('../../src/metrics/engine-metrics.js');
    const engine = new Engine(
      { numGpuBlocks: 100, blockSize: 16, maxNumSeqs: 4, maxNumBatchedTokens: 512, enablePrefixCaching: true, enableChunkedPrefill: true, watermark: 0, preemptionMode: 'lifo', speedupRatio: 1, decodeSpeedupRatio: 1, maxModelLen: null, dataParallelSize: 2, seed: 0 },
      createPolynomialTimingModel(),
      await createXxh3(),
      { vocabSize: 1000, contextLength: 4096 },
    );
    const registry = new Registry();
    const m = EngineMetrics.forWorker(registry, { engine, queued: () => 0, namespace: 'dynamo', component: 'backend', model: 'Qwen/Qwen3-0.6B', workerId: 'abc' }, 4096, workerLabel);
    engine.submit({ key: 1, promptLength: 40, promptTokens: Array.from({ length: 40 }, (_, i) => i), maxTokens: 5, dpRank: 1 });
    engine.ranks[1].step(0);
    const obs = m.request(1, 0);
    obs.token(20);
    obs.token(26);
    obs.finish(26, 40, 2);
    return { text: await registry.metrics(), buckets: VLLM_TTFT_BUCKETS };
  }

  it("labels the vLLM series by model_name and engine (the DP rank) only, as Dynamo 1.4's mocker does", async () => {
    const { text, buckets } = await scrape(false);
    expect(text).toContain('# TYPE vllm:num_requests_running gauge');
    expect(text).toContain('vllm:num_requests_running{model_name="Qwen/Qwen3-0.6B",engine="1"} 1');
    expect(text).toContain('vllm:num_requests_running{model_name="Qwen/Qwen3-0.6B",engine="0"} 0');
    expect(text).toContain('# TYPE vllm:num_preemptions_total counter');
    expect(text).toContain('vllm:kv_cache_usage_perc{model_name="Qwen/Qwen3-0.6B",engine="1"} 0.03');
    expect(text).toContain('vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen3-0.6B",engine="1"} 0.03');
    const ttft = text.split('\n').filter((l) => l.startsWith('vllm:time_to_first_token_seconds_bucket'));
    expect(ttft.map((l) => /le="([^"]+)"/.exec(l)![1])).toEqual([...buckets.map(String), '+Inf']);
    expect(text).toContain('vllm:time_to_first_token_seconds_count{model_name="Qwen/Qwen3-0.6B",engine="1"} 1');
    expect(text).toContain('vllm:inter_token_latency_seconds_sum{model_name="Qwen/Qwen3-0.6B",engine="1"} 0.006');
    expect(text).toContain('vllm:e2e_request_latency_seconds_sum{model_name="Qwen/Qwen3-0.6B",engine="1"} 0.026');
    expect(text.split('\n').filter((l) => l.startsWith('vllm:') && l.includes('worker_id'))).toEqual([]);
  });

  it('adds worker_id when several workers share the registry', async () => {
    const { text } = await scrape(true);
    expect(text).toContain('vllm:num_requests_running{model_name="Qwen/Qwen3-0.6B",engine="1",worker_id="abc"} 1');
  });
});
