// The system status server over real HTTP on 127.0.0.1, its settings and the readiness rule.
import { request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config.js';
import { HealthState } from '../../src/metrics/health.js';
import { createMetricsRegistry } from '../../src/metrics/runtime-metrics.js';
import { systemServerSettings as statusServerSettings } from '../../src/config.js';
import { durationJson, healthBody, startStatusServer, type StatusServer } from '../../src/metrics/status-server.js';
import { WorkHandlerMetrics } from '../../src/metrics/work-handler-metrics.js';

interface Reply {
  status: number;
  body: string;
  type: string | undefined;
  headers: Record<string, string | string[] | undefined>;
}

function call(port: number, path: string, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), type: res.headers['content-type'], headers: res.headers }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

const servers: StatusServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(health: HealthState, registry: Registry = createMetricsRegistry().registry, paths: { healthPath?: string; livePath?: string } = {}) {
  const server = await startStatusServer({ host: '127.0.0.1', port: 0, registry, health: () => health.status(), startedAt: performance.now(), ...paths });
  servers.push(server);
  return { server, get: (path: string, method?: string) => call(server.address.port, path, method) };
}

describe('status server routes', () => {
  it('binds a random port when asked for port 0', async () => {
    const { server } = await start(new HealthState());
    expect(server.address.host).toBe('127.0.0.1');
    expect(server.address.port).toBeGreaterThan(0);
  });

  it('answers /health 503 until the endpoint is ready, then 200', async () => {
    const health = new HealthState();
    const { get } = await start(health);
    let r = await get('/health');
    expect(r.status).toBe(503);
    expect(r.type).toBe('text/plain; charset=utf-8');
    expect(JSON.parse(r.body)).toEqual({ status: 'notready', uptime: expect.any(Object), endpoints: {} });

    health.setEndpoint('generate', 'notready');
    r = await get('/health');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body)).toMatchObject({ status: 'notready', endpoints: { generate: 'notready' } });

    health.setEndpoint('generate', 'ready');
    r = await get('/health');
    expect(r.status).toBe(200);
    expect(r.type).toBe('text/plain; charset=utf-8');
    const body = JSON.parse(r.body);
    expect(body).toEqual({ status: 'ready', uptime: { secs: expect.any(Number), nanos: expect.any(Number) }, endpoints: { generate: 'ready' } });
    expect(Number.isInteger(body.uptime.secs) && Number.isInteger(body.uptime.nanos)).toBe(true);
    expect(body.uptime.nanos).toBeGreaterThanOrEqual(0);
    expect(body.uptime.nanos).toBeLessThan(1e9);
    // Query strings do not change the route.
    expect((await get('/health?verbose=1')).status).toBe(200);
  });

  it('serves /live from the same handler', async () => {
    const health = new HealthState();
    const { get } = await start(health);
    expect((await get('/live')).status).toBe(503);
    health.setEndpoint('generate', 'ready');
    const [h, l] = await Promise.all([get('/health'), get('/live')]);
    expect(l.status).toBe(200);
    expect(l.type).toBe(h.type);
    const strip = (s: string) => ({ ...JSON.parse(s), uptime: null });
    expect(strip(l.body)).toEqual(strip(h.body));
  });

  it('with several workers, is ready only while every instance of the endpoint is', () => {
    const health = new HealthState('notready', 2);
    health.setEndpoint('generate', 'ready', 'a1');
    expect(health.status()).toEqual({ ready: false, endpoints: { generate: 'notready' } });
    health.setEndpoint('generate', 'ready', 'b2');
    expect(health.status()).toEqual({ ready: true, endpoints: { generate: 'ready' } });
    health.setEndpoint('generate', 'notready', 'a1');
    expect(health.status()).toEqual({ ready: false, endpoints: { generate: 'notready' } });
  });

  it('is 503 while draining', async () => {
    const health = new HealthState();
    health.setEndpoint('generate', 'ready');
    const { get } = await start(health);
    expect((await get('/health')).status).toBe(200);
    health.setDraining(true);
    const r = await get('/health');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.body)).toMatchObject({ status: 'notready', endpoints: { generate: 'ready' } });
    expect((await get('/live')).status).toBe(503);
  });

  it('serves the registry on /metrics', async () => {
    const { registry } = createMetricsRegistry();
    WorkHandlerMetrics.forWorker(registry, { namespace: 'dynamo', component: 'backend', endpoint: 'generate', model: 'm', workerId: 'ab' }).begin(42);
    const { get } = await start(new HealthState(), registry);
    const r = await get('/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe(registry.contentType);
    expect(r.body).toContain('# TYPE dynamo_component_uptime_seconds gauge');
    expect(r.body).toMatch(/^dynamo_component_uptime_seconds \d/m);
    expect(r.body).toContain('dynamo_component_requests_total{dynamo_namespace="dynamo",dynamo_component="backend",dynamo_endpoint="generate",model="m",worker_id="ab"} 1');
    expect(r.body).toContain('dynamo_component_request_bytes_total{dynamo_namespace="dynamo",dynamo_component="backend",dynamo_endpoint="generate",model="m",worker_id="ab"} 42');
  });

  it('answers 500 "Failed to get metrics" when the registry fails', async () => {
    const registry = new Registry();
    registry.metrics = () => Promise.reject(new Error('boom'));
    const { get } = await start(new HealthState(), registry);
    const r = await get('/metrics');
    expect(r.status).toBe(500);
    expect(r.body).toBe('Failed to get metrics');
  });

  it('answers 404 "Route not found" for anything else', async () => {
    const { get } = await start(new HealthState());
    for (const path of ['/', '/other', '/health/', '/metrics/x', '/healthz']) {
      const r = await get(path);
      expect(r.status, path).toBe(404);
      expect(r.body).toBe('Route not found');
      expect(r.type).toBe('text/plain; charset=utf-8');
    }
    expect((await get('/nope', 'POST')).status).toBe(404);
  });

  it('answers HEAD like GET without a body and other methods with 405', async () => {
    const health = new HealthState();
    health.setEndpoint('generate', 'ready');
    const { get } = await start(health);
    const head = await get('/health', 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    const post = await get('/health', 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET,HEAD');
  });

  it('uses custom paths from the settings', async () => {
    const settings = statusServerSettings({ DYN_SYSTEM_PORT: '0', DYN_SYSTEM_HEALTH_PATH: '/custom/health', DYN_SYSTEM_LIVE_PATH: '/custom/live' });
    const health = new HealthState(settings.startingStatus);
    const { get } = await start(health, undefined, { healthPath: settings.healthPath, livePath: settings.livePath });
    expect((await get('/custom/health')).status).toBe(503);
    expect((await get('/custom/live')).status).toBe(503);
    expect((await get('/health')).status).toBe(404);
    expect((await get('/live')).status).toBe(404);
    expect((await get('/metrics')).status).toBe(200);
    health.setEndpoint('generate', 'ready');
    expect((await get('/custom/health')).status).toBe(200);
    expect((await get('/custom/live')).status).toBe(200);
  });

  it('is ready before registration with DYN_SYSTEM_STARTING_HEALTH_STATUS=ready', async () => {
    const settings = statusServerSettings({ DYN_SYSTEM_PORT: '0', DYN_SYSTEM_STARTING_HEALTH_STATUS: 'ready' });
    const { get } = await start(new HealthState(settings.startingStatus));
    const r = await get('/health');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ status: 'ready', endpoints: {} });
  });

  it('closes idempotently and frees the port', async () => {
    const { server } = await start(new HealthState());
    await Promise.all([server.close(), server.close()]);
    await expect(call(server.address.port, '/health')).rejects.toThrow();
  });

  it('rejects when the port is taken', async () => {
    const { server } = await start(new HealthState());
    await expect(
      startStatusServer({ host: '127.0.0.1', port: server.address.port, registry: new Registry(), health: () => ({ ready: true, endpoints: {} }), startedAt: 0 }),
    ).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});

describe('health body', () => {
  it("writes Rust's Duration as secs/nanos", () => {
    expect(durationJson(12_345.678901)).toEqual({ secs: 12, nanos: 345_678_901 });
    expect(durationJson(0)).toEqual({ secs: 0, nanos: 0 });
    expect(durationJson(-5)).toEqual({ secs: 0, nanos: 0 });
  });

  it('sorts keys like serde_json', () => {
    const body = healthBody({ ready: false, endpoints: { load_metrics: 'ready', generate: 'notready' } }, 12_000);
    expect(body).toBe('{"endpoints":{"generate":"notready","load_metrics":"ready"},"status":"notready","uptime":{"nanos":0,"secs":12}}');
  });
});

describe('readiness rule', () => {
  it('needs an endpoint, all endpoints ready, and no draining', () => {
    const h = new HealthState();
    expect(h.status()).toEqual({ ready: false, endpoints: {} });
    h.setEndpoint('generate', 'ready');
    expect(h.status().ready).toBe(true);
    h.setEndpoint('clear_kv_blocks', 'notready');
    expect(h.status().ready).toBe(false);
    h.setEndpoint('clear_kv_blocks', 'ready');
    expect(h.status()).toEqual({ ready: true, endpoints: { generate: 'ready', clear_kv_blocks: 'ready' } });
    h.setDraining(true);
    expect(h.draining).toBe(true);
    expect(h.status().ready).toBe(false);
    h.setDraining(false);
    expect(h.status().ready).toBe(true);
  });

  it('starting status ready counts only while no endpoint is registered', () => {
    const h = new HealthState('ready');
    expect(h.status().ready).toBe(true);
    h.setEndpoint('generate', 'notready');
    expect(h.status().ready).toBe(false);
    h.setEndpoint('generate', 'ready');
    expect(h.status().ready).toBe(true);
    h.setDraining(true);
    expect(h.status().ready).toBe(false);
  });
});

describe('statusServerSettings', () => {
  it('is off by default with Dynamo defaults', () => {
    expect(statusServerSettings({})).toEqual({ enabled: false, host: '0.0.0.0', port: 9090, healthPath: '/health', livePath: '/live', startingStatus: 'notready' });
  });

  it.each(['true', '1', 'yes', 'on', 'TRUE', ' On '])('DYN_SYSTEM_ENABLED=%j enables it on port 9090', (v) => {
    expect(statusServerSettings({ DYN_SYSTEM_ENABLED: v })).toMatchObject({ enabled: true, port: 9090 });
  });

  it.each(['false', '0', 'no', 'off', ''])('DYN_SYSTEM_ENABLED=%j leaves it off', (v) => {
    expect(statusServerSettings({ DYN_SYSTEM_ENABLED: v }).enabled).toBe(false);
  });

  it('is enabled by DYN_SYSTEM_PORT alone, 0 meaning a random port', () => {
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '8081' })).toMatchObject({ enabled: true, port: 8081 });
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '0' })).toMatchObject({ enabled: true, port: 0 });
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '8081', DYN_SYSTEM_ENABLED: 'false' })).toMatchObject({ enabled: true, port: 8081 });
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '' }).enabled).toBe(false);
  });

  it('is disabled by DYN_SYSTEM_PORT=-1, even with DYN_SYSTEM_ENABLED', () => {
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '-1' }).enabled).toBe(false);
    expect(statusServerSettings({ DYN_SYSTEM_PORT: '-1', DYN_SYSTEM_ENABLED: 'true' }).enabled).toBe(false);
  });

  it('reads host, paths and starting status', () => {
    expect(
      statusServerSettings({
        DYN_SYSTEM_PORT: '9345',
        DYN_SYSTEM_HOST: '127.0.0.1',
        DYN_SYSTEM_HEALTH_PATH: '/h',
        DYN_SYSTEM_LIVE_PATH: '/l',
        DYN_SYSTEM_STARTING_HEALTH_STATUS: 'ready',
      }),
    ).toEqual({ enabled: true, host: '127.0.0.1', port: 9345, healthPath: '/h', livePath: '/l', startingStatus: 'ready' });
    expect(statusServerSettings({ DYN_SYSTEM_STARTING_HEALTH_STATUS: 'notready' }).startingStatus).toBe('notready');
    expect(statusServerSettings({ DYN_SYSTEM_STARTING_HEALTH_STATUS: 'Ready' }).startingStatus).toBe('ready');
  });

  it.each(['abc', '65536', '-2', '1.5', '0x50', '1e3', '80 80'])('rejects DYN_SYSTEM_PORT=%j naming the variable', (v) => {
    expect(() => statusServerSettings({ DYN_SYSTEM_PORT: v })).toThrow(ConfigError);
    expect(() => statusServerSettings({ DYN_SYSTEM_PORT: v })).toThrow(/DYN_SYSTEM_PORT/);
  });

  it('rejects an unknown starting status and relative paths, naming the variable', () => {
    expect(() => statusServerSettings({ DYN_SYSTEM_STARTING_HEALTH_STATUS: 'healthy' })).toThrow(/DYN_SYSTEM_STARTING_HEALTH_STATUS/);
    expect(() => statusServerSettings({ DYN_SYSTEM_HEALTH_PATH: 'health' })).toThrow(/DYN_SYSTEM_HEALTH_PATH/);
    expect(() => statusServerSettings({ DYN_SYSTEM_LIVE_PATH: 'live' })).toThrow(/DYN_SYSTEM_LIVE_PATH/);
  });
});
