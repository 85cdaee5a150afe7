// Work-handler metrics, label sanitizing, the status server and its settings.
import { describe, expect, it } from 'vitest';
import { WorkHandlerMetrics, sanitizePrometheusLabel, REQUEST_DURATION_BUCKETS } from '../../src/metrics/work-handler-metrics.js';
import { createMetricsRegistry } from '../../src/metrics/runtime-metrics.js';
import { HealthState } from '../../src/metrics/health.js';
import { startStatusServer, statusServerSettings } from '../../src/metrics/status-server.js';
import { buckets125 } from '../../src/metrics/engine-metrics.js';

describe('sanitize_prometheus_label', () => {
  it.each([
    ['__test', 'test'],
    [':test', '_test'],
    ['123:test-label@domain', '_123_test_label_domain'],
    ['my-worker', 'my_worker'],
    ['@@123', '_123'],
    ['ok', 'ok'],
  ])('%s → %s', (input, output) => expect(sanitizePrometheusLabel(input)).toBe(output));
  it('rejects all-underscore values', () => expect(() => sanitizePrometheusLabel('____')).toThrow());
});

describe('work-handler metrics', () => {
  it('counts requests, bytes, durations, errors and cancellations per worker', async () => {
    let t = 0;
    const { registry } = createMetricsRegistry(() => t);
    const labels = { namespace: 'dynamo', component: 'backend', endpoint: 'generate', model: 'm' };
    const a = WorkHandlerMetrics.forWorker(registry, { ...labels, workerId: 'a' }, () => t);
    const b = WorkHandlerMetrics.forWorker(registry, { ...labels, workerId: 'b' }, () => t);
    const tr = a.begin(100);
    tr.responseBytes(40);
    t = 250;
    tr.end();
    tr.end();
    a.error('generate');
    b.cancelled();
    const text = await registry.metrics();
    const l = (w: string) => `dynamo_namespace="dynamo",dynamo_component="backend",dynamo_endpoint="generate",model="m",worker_id="${w}"`;
    expect(text).toContain(`dynamo_component_requests_total{${l('a')}} 1`);
    expect(text).toContain(`dynamo_component_requests_total{${l('b')}} 0`);
    expect(text).toContain(`dynamo_component_request_bytes_total{${l('a')}} 100`);
    expect(text).toContain(`dynamo_component_response_bytes_total{${l('a')}} 40`);
    expect(text).toContain(`dynamo_component_inflight_requests{${l('a')}} 0`);
    expect(text).toContain(`dynamo_component_request_duration_seconds_sum{${l('a')}} 0.25`);
    expect(text).toContain(`dynamo_component_errors_total{${l('a')},error_type="generate"} 1`);
    expect(text).toContain(`dynamo_component_cancellation_total{${l('b')}} 1`);
    expect(text).toContain('dynamo_component_uptime_seconds 0.25');
    for (const le of REQUEST_DURATION_BUCKETS) expect(text).toContain(`dynamo_component_request_duration_seconds_bucket{le="${le}",${l('a')}}`);
    expect(REQUEST_DURATION_BUCKETS).toHaveLength(17);
  });

  it("builds vLLM's 1-2-5 buckets", () => {
    expect(buckets125(4096)).toEqual([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]);
  });
});

describe('status server', () => {
  it('reads its settings from the environment', () => {
    expect(statusServerSettings({}).enabled).toBe(false);
    expect(statusServerSettings({ DYN_SYSTEM_ENABLED: 'true' })).toMatchObject({ enabled: true, port: 9090, host: '0.0.0.0' });
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '8081' })).toMatchObject({ enabled: true, port: 8081 });
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '-1', DYN_SYSTEM_ENABLED: '1' }).enabled).toBe(false);
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '0', DYN_SYSTEM_HEALTH_PATH: '/h', DYN_SYSTEM_STARTING_HEALTH_STATUS: 'ready' })).toMatchObject({ port: 0, healthPath: '/h', startingStatus: 'ready' });
    expect(() => statusServerSettings({ DYN_SYSTEM_PORT: 'abc' })).toThrow(/DYN_SYSTEM_PORT/);
  });

  it('serves /health and /live from one handler, /metrics, and 404 otherwise', async () => {
    const { registry } = createMetricsRegistry();
    const health = new HealthState();
    const server = await startStatusServer({ host: '127.0.0.1', port: 0, registry, health: () => health.status(), startedAt: 0, healthPath: '/health', livePath: '/live' });
    const get = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${server.address.port}${path}`);
      return { status: res.status, body: await res.text(), type: res.headers.get('content-type') };
    };
    try {
      let r = await get('/health');
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body)).toMatchObject({ status: 'notready', endpoints: {} });
      health.setEndpoint('generate', 'ready');
      r = await get('/live');
      expect(r.status).toBe(200);
      expect(r.type).toBe('text/plain; charset=utf-8');
      const body = JSON.parse(r.body);
      expect(body).toMatchObject({ status: 'ready', endpoints: { generate: 'ready' } });
      expect(Number.isInteger(body.uptime.secs) && Number.isInteger(body.uptime.nanos)).toBe(true);
      health.setDraining(true);
      expect((await get('/health')).status).toBe(503);
      expect((await get('/metrics')).body).toContain('dynamo_component_uptime_seconds');
      r = await get('/other');
      expect(r.status).toBe(404);
      expect(r.body).toBe('Route not found');
    } finally {
      await server.close();
    }
  });

  it('can start ready before any endpoint registers', () => {
    expect(new HealthState('ready').status().ready).toBe(true);
    expect(new HealthState().status().ready).toBe(false);
  });
});
