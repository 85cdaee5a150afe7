// The runtime control API over real HTTP on 127.0.0.1: routes, bearer auth, body validation, 404/405, logs.
import { request } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CONTROL_MAX_BODY_BYTES, CONTROL_PATCH_KEYS, ControlError, controlRoutes, type MockerControl } from '../../src/metrics/control-api.js';
import { HealthState } from '../../src/metrics/health.js';
import { createMetricsRegistry } from '../../src/metrics/runtime-metrics.js';
import { startStatusServer, type StatusServer } from '../../src/metrics/status-server.js';
import { startWorkerMetrics } from '../../src/metrics/worker-metrics.js';

interface Reply {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

interface CallOptions {
  method?: string;
  headers?: Record<string, string>;
  /** A string or buffer sent with content-length, or an array of chunks sent chunked. */
  body?: string | Buffer | Buffer[];
}

function call(port: number, path: string, o: CallOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers = { ...o.headers };
    if (typeof o.body === 'string' || Buffer.isBuffer(o.body)) headers['content-length'] = String(Buffer.byteLength(o.body));
    const req = request({ host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
    });
    req.on('error', reject);
    if (Array.isArray(o.body)) for (const chunk of o.body) req.write(chunk);
    else if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}

/** A MockerControl that records its calls; patchConfig refuses a negative speedup_ratio like the worker would. */
class FakeControl implements MockerControl {
  settings: Record<string, unknown> = { speedup_ratio: 1, decode_speedup_ratio: 1, latency_jitter: 0, max_num_seqs: 256, faults: null };
  counters = { requests_received: 5, requests_completed: 4, requests_refused: 1, requests_cancelled: 0, requests_cut: 0, faults_fired: { cut: 0 }, running: 1, waiting: 0, kv_usage: 0.25 };
  patches: Record<string, unknown>[] = [];
  resets = 0;
  failWith: Error | null = null;

  config() {
    if (this.failWith) throw this.failWith;
    return { ...this.settings };
  }
  patchConfig(patch: Record<string, unknown>) {
    if (this.failWith) throw this.failWith;
    if (typeof patch.speedup_ratio === 'number' && patch.speedup_ratio <= 0) throw new ControlError('speedup_ratio', 'speedup_ratio must be > 0, got -1');
    this.patches.push(patch);
    Object.assign(this.settings, patch);
  }
  stats() {
    return { ...this.counters };
  }
  resetStats() {
    this.resets++;
    this.counters.requests_received = 0;
  }
}

const servers: StatusServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(token: string | null = null) {
  const control = new FakeControl();
  const logs: string[] = [];
  const health = new HealthState();
  health.setEndpoint('generate', 'ready');
  const server = await startStatusServer({
    host: '127.0.0.1',
    port: 0,
    registry: createMetricsRegistry().registry,
    health: () => health.status(),
    startedAt: performance.now(),
    handlers: [controlRoutes(control, { token, log: (line) => logs.push(line) })],
  });
  servers.push(server);
  const send = (path: string, o?: CallOptions) => call(server.address.port, path, o);
  const patch = (body: unknown, headers?: Record<string, string>) =>
    send('/mocker/config', { method: 'PATCH', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });
  return { control, logs, send, patch };
}

describe('control API routes', () => {
  it('GET /mocker/config answers the current settings as JSON', async () => {
    const { send } = await start();
    const r = await send('/mocker/config');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual({ speedup_ratio: 1, decode_speedup_ratio: 1, latency_jitter: 0, max_num_seqs: 256, faults: null });
    // Query strings do not change the route; HEAD answers the headers only.
    expect((await send('/mocker/config?x=1')).status).toBe(200);
    const head = await send('/mocker/config', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
  });

  it('PATCH /mocker/config applies the update, answers the new config and logs the change', async () => {
    const { control, logs, patch } = await start();
    const faults = { seed: 7, rules: [{ match: { every_nth: 3 }, action: { kind: 'cut', after_tokens: 5 } }] };
    const r = await patch({ speedup_ratio: 2.5, max_num_seqs: 8, faults });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual({ speedup_ratio: 2.5, decode_speedup_ratio: 1, latency_jitter: 0, max_num_seqs: 8, faults });
    expect(control.patches).toEqual([{ speedup_ratio: 2.5, max_num_seqs: 8, faults }]);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toContain('speedup_ratio=2.5');
    expect(logs[0]).toContain('max_num_seqs=8');
    expect(logs[0]).toContain('faults={"seed":7');
    expect(logs[0]).not.toContain('\n');
  });

  it('accepts every documented key', async () => {
    const { control, patch } = await start();
    expect(CONTROL_PATCH_KEYS).toEqual(['speedup_ratio', 'decode_speedup_ratio', 'latency_jitter', 'faults', 'max_num_seqs']);
    const all = { speedup_ratio: 3, decode_speedup_ratio: 2, latency_jitter: 0.1, faults: null, max_num_seqs: 4 };
    expect((await patch(all)).status).toBe(200);
    expect(control.patches).toEqual([all]);
  });

  it('shortens long values in the log line', async () => {
    const { logs, patch } = await start();
    const faults = { seed: 1, rules: Array.from({ length: 200 }, (_, i) => ({ match: { request_index: [i, i] }, action: { kind: 'refuse' } })) };
    expect((await patch({ faults })).status).toBe(200);
    expect(logs[0].length).toBeLessThan(400);
    expect(logs[0]).toMatch(/chars\)$/);
  });

  it('an empty patch changes nothing and logs nothing', async () => {
    const { control, logs, patch } = await start();
    const r = await patch({});
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ speedup_ratio: 1 });
    expect(control.patches).toEqual([]);
    expect(logs).toEqual([]);
  });

  it('GET /mocker/stats answers the counters; POST /mocker/stats/reset resets them and logs it', async () => {
    const { control, logs, send } = await start();
    let r = await send('/mocker/stats');
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual(control.counters);
    r = await send('/mocker/stats/reset', { method: 'POST' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual({ reset: true });
    expect(control.resets).toBe(1);
    expect(logs).toEqual([expect.stringContaining('stats reset')]);
    expect(JSON.parse((await send('/mocker/stats')).body)).toMatchObject({ requests_received: 0 });
  });

  it('answers 405 with an allow header for a wrong method on a known path', async () => {
    const { control, send } = await start();
    const cases: [string, string, string][] = [
      ['/mocker/config', 'POST', 'GET,HEAD,PATCH'],
      ['/mocker/config', 'DELETE', 'GET,HEAD,PATCH'],
      ['/mocker/stats', 'POST', 'GET,HEAD'],
      ['/mocker/stats', 'PATCH', 'GET,HEAD'],
      ['/mocker/stats/reset', 'GET', 'POST'],
    ];
    for (const [path, method, allow] of cases) {
      const r = await send(path, { method });
      expect(r.status, `${method} ${path}`).toBe(405);
      expect(r.headers.allow, `${method} ${path}`).toBe(allow);
      expect(r.headers['content-type']).toBe('application/json');
      expect(JSON.parse(r.body).error).toContain(method);
    }
    expect(control.resets).toBe(0);
  });

  it('answers 404 for an unknown /mocker path, and leaves other paths to the status server', async () => {
    const { send } = await start();
    for (const path of ['/mocker', '/mocker/', '/mocker/nope', '/mocker/config/', '/mocker/stats/other']) {
      const r = await send(path);
      expect(r.status, path).toBe(404);
      expect(r.headers['content-type']).toBe('application/json');
      expect(JSON.parse(r.body)).toEqual({ error: expect.stringContaining(path) });
    }
    const other = await send('/mockery');
    expect(other.status).toBe(404);
    expect(other.body).toBe('Route not found');
  });

  it('answers 500 with a JSON error when the worker fails unexpectedly', async () => {
    const { control, logs, send, patch } = await start();
    control.failWith = new Error('engine gone');
    let r = await send('/mocker/config');
    expect(r.status).toBe(500);
    expect(JSON.parse(r.body).error).toContain('engine gone');
    r = await patch({ speedup_ratio: 2 });
    expect(r.status).toBe(500);
    expect(logs.some((l) => l.includes('engine gone'))).toBe(true);
  });
});

describe('control API validation', () => {
  it('refuses unknown keys before calling patchConfig, listing the known ones', async () => {
    const { control, logs, patch } = await start();
    let r = await patch({ speedup_ratio: 2, x: 1 });
    expect(r.status).toBe(400);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual({ error: `unknown key 'x' (known: ${CONTROL_PATCH_KEYS.join(', ')})` });
    r = await patch({ a: 1, b: 2 });
    expect(JSON.parse(r.body).error).toMatch(/^unknown keys 'a', 'b' \(known: /);
    expect(control.patches).toEqual([]);
    expect(logs).toEqual([]);
  });

  it.each([
    ['an array', '[1,2]', /JSON object/],
    ['a number', '42', /JSON object.*number/],
    ['a string', '"speedup_ratio"', /JSON object.*string/],
    ['null', 'null', /JSON object.*null/],
    ['an empty body', '', /not valid JSON/],
    ['invalid JSON', '{"speedup_ratio": 2', /not valid JSON/],
    ['text', 'speedup_ratio=2', /not valid JSON/],
  ])('refuses %s with a clear 400', async (_, body, message) => {
    const { control, patch } = await start();
    const r = await patch(body);
    expect(r.status).toBe(400);
    expect(r.headers['content-type']).toBe('application/json');
    expect(JSON.parse(r.body).error).toMatch(message);
    expect(control.patches).toEqual([]);
  });

  it('maps a ControlError to 400 with its message and field', async () => {
    const { control, logs, patch } = await start();
    const r = await patch({ speedup_ratio: -1 });
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body)).toEqual({ error: 'speedup_ratio must be > 0, got -1', field: 'speedup_ratio' });
    expect(control.settings.speedup_ratio).toBe(1);
    expect(logs).toEqual([]);
  });

  it('refuses a body over 1 MiB, with a content-length or chunked, and keeps serving', async () => {
    const { control, send, patch } = await start();
    const huge = `{"faults":"${'x'.repeat(CONTROL_MAX_BODY_BYTES)}"}`;
    let r = await patch(huge);
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body).error).toMatch(/larger than 1048576 bytes/);
    // Chunked, so only counting tells: 4 MiB in 64 KiB pieces.
    const chunks = Array.from({ length: 64 }, () => Buffer.alloc(64 * 1024, 0x20));
    r = await send('/mocker/config', { method: 'PATCH', body: chunks });
    expect(r.status).toBe(413);
    expect(control.patches).toEqual([]);
    // Just under the limit is read (and then judged on its content).
    r = await patch(`{"faults":${' '.repeat(CONTROL_MAX_BODY_BYTES - 20)}null}`);
    expect(r.status).toBe(200);
    expect(control.patches).toEqual([{ faults: null }]);
  });
});

describe('control API auth', () => {
  it('is open when no token is configured', async () => {
    const { send, patch } = await start(null);
    expect((await send('/mocker/config')).status).toBe(200);
    expect((await send('/mocker/stats')).status).toBe(200);
    expect((await patch({ latency_jitter: 0.2 })).status).toBe(200);
    expect((await send('/mocker/stats/reset', { method: 'POST' })).status).toBe(200);
  });

  it('answers 401 without the token or with a wrong one, on every /mocker route', async () => {
    const { control, logs, send, patch } = await start('s3cret');
    const wrong: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: 'Bearer s3cre' },
      { authorization: 'Bearer s3cret-and-more' },
      { authorization: 'Bearer ' },
      { authorization: 'Basic s3cret' },
      { authorization: 's3cret' },
    ];
    for (const headers of wrong) {
      for (const [path, method] of [
        ['/mocker/config', 'GET'],
        ['/mocker/config', 'PATCH'],
        ['/mocker/stats', 'GET'],
        ['/mocker/stats/reset', 'POST'],
        ['/mocker/stats/reset', 'GET'],
        ['/mocker/nope', 'GET'],
      ]) {
        const r = await send(path, { method, headers, body: method === 'PATCH' ? '{"speedup_ratio":9}' : undefined });
        expect(r.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(r.headers['www-authenticate']).toBe('Bearer');
        expect(r.headers['content-type']).toBe('application/json');
        expect(JSON.parse(r.body)).toEqual({ error: 'unauthorized' });
      }
    }
    expect(control.patches).toEqual([]);
    expect(control.resets).toBe(0);
    expect(logs).toEqual([]);
    // An unauthenticated huge body is refused without being read.
    expect((await patch(`"${'x'.repeat(2 * CONTROL_MAX_BODY_BYTES)}"`)).status).toBe(401);
  });

  it('answers with the token', async () => {
    const { control, send, patch } = await start('s3cret');
    const headers = { authorization: 'Bearer s3cret' };
    expect((await send('/mocker/config', { headers })).status).toBe(200);
    expect((await send('/mocker/stats', { headers })).status).toBe(200);
    expect((await patch({ max_num_seqs: 2 }, headers)).status).toBe(200);
    expect((await patch({ max_num_seqs: 3 }, { authorization: 'bearer s3cret' })).status).toBe(200);
    expect((await send('/mocker/stats/reset', { method: 'POST', headers })).status).toBe(200);
    expect(control.patches).toEqual([{ max_num_seqs: 2 }, { max_num_seqs: 3 }]);
    // Routing and validation come after authentication.
    expect((await send('/mocker/nope', { headers })).status).toBe(404);
    expect((await send('/mocker/stats', { method: 'POST', headers })).status).toBe(405);
    expect((await patch({ x: 1 }, headers)).status).toBe(400);
  });

  it('never affects /health, /live and /metrics', async () => {
    const { send } = await start('s3cret');
    expect((await send('/health')).status).toBe(200);
    expect((await send('/live')).status).toBe(200);
    const metrics = await send('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain('dynamo_component_uptime_seconds');
    const other = await send('/other');
    expect(other.status).toBe(404);
    expect(other.body).toBe('Route not found');
    expect((await send('/health', { method: 'POST' })).headers.allow).toBe('GET,HEAD');
  });
});

describe('startWorkerMetrics', () => {
  async function startMetrics(control?: { control: MockerControl; token: string | null }) {
    const logs: string[] = [];
    const log = { info: (line: string) => logs.push(line) } as unknown as Logger;
    const { server } = await startWorkerMetrics({
      system: { enabled: true, host: '127.0.0.1', port: 0, healthPath: '/health', livePath: '/live', startingStatus: 'notready' },
      endpoint: { namespace: 'dynamo', component: 'backend', endpoint: 'generate' },
      model: 'm',
      metadataRoutes: false,
      health: new HealthState(),
      startedAt: performance.now(),
      histogramMaxLen: 1024,
      vllmWorkerLabel: false,
      vllmSeries: true,
      control,
      log,
    });
    servers.push(server);
    return { logs, send: (path: string, o?: CallOptions) => call(server.address.port, path, o) };
  }

  it('mounts the control routes when given, with their token, logging through the worker log', async () => {
    const control = new FakeControl();
    const { logs, send } = await startMetrics({ control, token: 't0k' });
    expect(logs).toContain('control API on /mocker/ (bearer token required)');
    expect((await send('/mocker/config')).status).toBe(401);
    const r = await send('/mocker/stats/reset', { method: 'POST', headers: { authorization: 'Bearer t0k' } });
    expect(r.status).toBe(200);
    expect(control.resets).toBe(1);
    expect(logs).toContain('control API: stats reset');
    expect((await send('/metrics')).status).toBe(200);
  });

  it('serves no /mocker routes without it', async () => {
    const { send } = await startMetrics();
    const r = await send('/mocker/config');
    expect(r.status).toBe(404);
    expect(r.body).toBe('Route not found');
  });
});
