// A real Prometheus scrapes a real worker (shipped scrape config, 1 s interval) while load produces
// completions, a cancellation, a malformed request, preemptions and prefix-cache hits; then every
// query of the shipped Grafana dashboard must return data (scripts/observability/check-dashboard.mjs).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient, type Instance } from '../../src/client/dynamo-client.js';
import {
  DEFAULT_DASHBOARD,
  checkDashboard,
  extractQueries,
  formatReport,
  loadDashboard,
  substituteVariables,
  type Report,
} from '../../scripts/observability/check-dashboard.mjs';
import { haveServers, requireBinary, startPrometheus, useCluster, waitFor } from '../helpers/servers.js';
import { ROOT, TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

// requireBinary throws under CI=true when the binary is missing: the file fails instead of skipping.
const enabled = haveServers() && requireBinary('prometheus');
const OBS = join(ROOT, 'scripts', 'observability');
const CHECK = join(OBS, 'check-dashboard.mjs');
const SHIPPED_CONFIG = join(OBS, 'prometheus.yml');
const MODEL = 'Qwen/Qwen3-0.6B';
const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };

/** The shipped config with the worker's random status port as target and 1 s scrapes. */
function testConfig(statusPort: number): string {
  const shipped = readFileSync(SHIPPED_CONFIG, 'utf8');
  const replace = (text: string, from: RegExp, to: string) => {
    if (!from.test(text)) throw new Error(`prometheus.yml no longer contains ${from}`);
    return text.replace(from, to);
  };
  let cfg = replace(shipped, /'localhost:8081'/g, `'127.0.0.1:${statusPort}'`);
  cfg = replace(cfg, /scrape_interval: \d+s/g, 'scrape_interval: 1s');
  cfg = replace(cfg, /evaluation_interval: \d+s/g, 'evaluation_interval: 1s');
  return cfg;
}

/** Token ids 3.. (0–2 are special in the tiny model); `seed` makes each prompt's tail unique. */
const tokens = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 3 + ((seed * 131 + i * 7) % 2000));

/** Waits until Prometheus scrapes the worker, so that counters start from their first value. */
async function scraping(prom: { url: string; output(): string }): Promise<void> {
  await waitFor(
    async () => {
      const body = (await (await fetch(`${prom.url}/api/v1/targets`)).json()) as { data: { activeTargets: Array<{ health: string; labels: Record<string, string> }> } };
      return body.data.activeTargets.some((t) => t.labels.job === 'dynamo-backend' && t.health === 'up');
    },
    { timeoutMs: 15_000, intervalMs: 200, message: `dynamo-backend target up: ${prom.output()}` },
  );
}

/**
 * Load that gives every panel data: prefix-cache hits, KV pressure with preemptions and waiting
 * requests, a cancellation and a malformed request; checked on the worker's own /metrics.
 */
async function driveLoad(worker: WorkerProcess, client: DynamoClient, inst: Instance): Promise<void> {
  const prefix = tokens(64, 0);

  // 1. Warm the prefix cache: later prompts share its first 4 blocks (prefix hits).
  const warm = await client.generate(inst, { tokenIds: [...prefix, ...tokens(16, 1)], maxTokens: 8 });
  expect((await warm.stream.done).completeFinal).toBe(true);

  // 2. KV pressure: 5 requests, 3 running at most (waiting > 0), 3 × (96 + 400) tokens ≫ 64 blocks
  //    of 16 tokens, so running requests are preempted; all still finish.
  const pressure = await Promise.all(
    Array.from({ length: 5 }, (_, i) => client.generate(inst, { tokenIds: [...prefix, ...tokens(32, 10 + i)], maxTokens: 400 })),
  );
  const results = await Promise.all(pressure.map((h) => h.stream.done));
  for (const r of results) {
    expect(r.prologueError).toBeNull();
    expect(r.completeFinal).toBe(true);
  }

  // 3. A cancellation: stop a long request after its first tokens.
  const long = await client.generate(inst, { tokenIds: tokens(16, 99), maxTokens: 900 });
  await waitFor(() => long.stream.tokens.length >= 3, { timeoutMs: 10_000, message: 'tokens of the request to cancel' });
  long.stream.stop();
  const stopped = await long.stream.done;
  expect(stopped.tokenIds.length).toBeLessThan(900);

  // 4. An error series: a payload that is not a two-part frame (error_type="invalid_message").
  expect((await client.sendRaw(inst, new TextEncoder().encode('not a two-part frame'))).length).toBe(0);

  // The worker itself saw all of it.
  expect(await worker.metric('dynamo_component_cancellation_total')).toBe(1);
  expect(await worker.metric('dynamo_component_errors_total')).toBeGreaterThanOrEqual(1);
  expect(await worker.metric('vllm:num_preemptions_total')).toBeGreaterThan(0);
  expect(await worker.metric('vllm:prefix_cache_hits_total')).toBeGreaterThan(0);

}

/** Polls Prometheus until it has scraped the load and every dashboard query has a series with a number in it. */
async function expectDashboardData(prom: { url: string }): Promise<Report> {
  // Spot-check values the load must have produced, as Prometheus sees them.
  const value = async (expr: string) => {
    const res = (await (await fetch(`${prom.url}/api/v1/query?${new URLSearchParams({ query: expr })}`)).json()) as { data: { result: Array<{ value: [number, string] }> } };
    return res.data.result.reduce((s, r) => s + Number(r.value[1]), 0);
  };
  const spot = async () =>
    (await value(`sum(increase(dynamo_component_cancellation_total{model="${MODEL}"}[1m]))`)) > 0 &&
    (await value(`sum(dynamo_component_errors_total{model="${MODEL}",error_type="invalid_message"})`)) === 1 &&
    (await value(`sum(vllm:num_preemptions_total{model_name="${MODEL}"})`)) > 0 &&
    (await value(`sum(vllm:prefix_cache_hits_total{model_name="${MODEL}"})`)) > 0;

  // Poll Prometheus until it has scraped the load and every dashboard query has a series with a number in it.
  const vars = { model: MODEL, __rate_interval: '30s', __interval: '5s' };
  let report: Report | undefined;
  const complete = (r: Report) => r.ok && r.results.every((q) => q.finite > 0);
  await waitFor(
    async () => {
      if (!(await spot())) return false;
      report = await checkDashboard({ prometheusUrl: prom.url, dashboard: DEFAULT_DASHBOARD, vars });
      return complete(report);
    },
    { timeoutMs: 20_000, intervalMs: 500, message: 'the load scraped and every dashboard query has data' },
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${report ? formatReport(report) : ''}`);
  });
  return report!;
}

describe.skipIf(!enabled)('Prometheus scraping a worker: the Grafana dashboard has data', () => {
  const cluster = useCluster();
  let worker: WorkerProcess;
  let client: DynamoClient;
  let prom: Awaited<ReturnType<typeof startPrometheus>>;

  beforeAll(async () => {
    const { env } = cluster;
    worker = await startWorkerProcess(
      [
        '--model-path', TINY_MODEL, '--model-name', MODEL, '--max-num-seqs', '3',
        '--block-size', '16', '--num-gpu-blocks-override', '64', '--speedup-ratio', '10',
      ],
      env,
    );
    expect(worker.statusPort).not.toBeNull();
    prom = await startPrometheus(testConfig(worker.statusPort!));
    client = await DynamoClient.connect({ env });
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await worker?.stop();
    await prom?.stop();
  });

  it('ships a valid scrape config and an importable dashboard', () => {
    const check = spawnSync('promtool', ['check', 'config', SHIPPED_CONFIG], { encoding: 'utf8' });
    expect(check.status, check.stdout + check.stderr).toBe(0);

    const dash = loadDashboard(DEFAULT_DASHBOARD) as Record<string, any>;
    expect(dash.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(typeof dash.title).toBe('string');
    expect(typeof dash.uid).toBe('string');
    const vars = dash.templating.list as Array<Record<string, any>>;
    expect(vars.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(vars.find((v) => v.name === 'model')).toMatchObject({ type: 'query', definition: 'label_values(dynamo_component_requests_total, model)' });
    const panels = (dash.panels as Array<Record<string, any>>).flatMap((p) => [p, ...((p.panels as Array<Record<string, any>>) ?? [])]);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos, p.title).toMatchObject({ h: expect.any(Number), w: expect.any(Number), x: expect.any(Number), y: expect.any(Number) });
      expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24);
      if (p.type === 'row') continue;
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      const refIds = (p.targets as Array<Record<string, any>>).map((t) => t.refId);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
      for (const t of p.targets) expect(t.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
    }
    const queries = extractQueries(dash);
    expect(queries.length).toBeGreaterThanOrEqual(25);
    const exprs = queries.map((q) => q.expr).join('\n');
    expect(exprs).not.toContain('$datasource');
    for (const name of [
      'dynamo_component_requests_total', 'dynamo_component_cancellation_total', 'dynamo_component_errors_total',
      'dynamo_component_request_duration_seconds_bucket', 'dynamo_component_response_bytes_total', 'dynamo_component_request_bytes_total',
      'dynamo_component_kvstats_gpu_cache_usage_percent', 'dynamo_component_kvstats_active_blocks', 'dynamo_component_kvstats_total_blocks',
      'dynamo_component_gpu_cache_usage_percent', 'vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc',
      'vllm:num_preemptions_total', 'vllm:prefix_cache_hits_total', 'vllm:prefix_cache_queries_total',
      'vllm:time_to_first_token_seconds_bucket', 'vllm:inter_token_latency_seconds_bucket', 'vllm:e2e_request_latency_seconds_bucket',
    ]) {
      expect(exprs, name).toContain(name);
    }
    expect(substituteVariables('rate(x{model="$model"}[$__rate_interval]) + y[${__interval}] + z[[model]]', { model: 'm', __rate_interval: '30s', __interval: '5s' })).toBe(
      'rate(x{model="m"}[30s]) + y[5s] + zm',
    );
    expect(() => substituteVariables('x{a="$nope"}', {})).toThrow(/\$nope/);
  });

  it('every dashboard query returns series once the worker has served load', async () => {
    await scraping(prom);
    const [inst] = await client.waitForInstances(EP, 1);
    await driveLoad(worker, client, inst);
    const report = await expectDashboardData(prom);
    expect(report.results.length).toBe(extractQueries(loadDashboard(DEFAULT_DASHBOARD)).length);

    // The CLI resolves $model from label_values like Grafana and exits 0 …
    const ok = spawnSync(process.execPath, [CHECK, prom.url, DEFAULT_DASHBOARD], { encoding: 'utf8' });
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toContain(`model ${MODEL}`);
    expect(ok.stdout).toMatch(/all \d+ queries returned series/);
    // … and exits 1 naming the query that has no series.
    const dir = mkdtempSync(join(tmpdir(), 'dashboard-'));
    try {
      const broken = loadDashboard(DEFAULT_DASHBOARD) as Record<string, any>;
      broken.panels.push({ id: 999, type: 'timeseries', title: 'Missing', targets: [{ refId: 'A', expr: 'dynamo_component_no_such_metric{model="$model"}' }] });
      writeFileSync(join(dir, 'd.json'), JSON.stringify(broken));
      const bad = spawnSync(process.execPath, [CHECK, '--prometheus', prom.url, '--dashboard', join(dir, 'd.json'), '--model', MODEL], { encoding: 'utf8' });
      expect(bad.status, bad.stdout + bad.stderr).toBe(1);
      expect(bad.stdout).toContain(`1 of ${report.results.length + 1} queries returned no series`);
      expect(bad.stdout).toContain(`[Missing / A] dynamo_component_no_such_metric{model="${MODEL}"}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 75_000);
});

describe.skipIf(!requireBinary('prometheus'))('Prometheus scraping a Dynamo 1.4 worker (file discovery, TCP): the dashboard has data too', () => {
  it('every dashboard query returns series once the worker has served load', async () => {
    const root = mkdtempSync(join(tmpdir(), 'dyn-kv-'));
    const worker = await startWorkerProcess(
      ['--model-path', TINY_MODEL, '--model-name', MODEL, '--dynamo-version', '1.4', '--max-num-seqs', '3', '--block-size', '16', '--num-gpu-blocks-override', '64', '--speedup-ratio', '10'],
      { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root },
    );
    const prom = await startPrometheus(testConfig(worker.statusPort!));
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    try {
      await scraping(prom);
      const [inst] = await client.waitForInstances(EP, 1);
      await driveLoad(worker, client, inst);
      const report = await expectDashboardData(prom);
      expect(report.results.length).toBe(extractQueries(loadDashboard(DEFAULT_DASHBOARD)).length);
    } finally {
      await client.close();
      await worker.stop();
      await prom.stop();
    }
  }, 75_000);
});
