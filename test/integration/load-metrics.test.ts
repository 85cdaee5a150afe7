// The worker's LoadEvents on namespace.{ns}.kv_metrics as the frontend's busy monitor reads them, and
// their agreement with the Prometheus gauges scraped from the same worker.
import type { NatsConnection, Subscription } from 'nats';
import { beforeAll, describe, expect, it } from 'vitest';
import { DynamoClient } from '../../src/client/dynamo-client.js';
import { parseJson } from '../../src/dynamo/lossless-json.js';
import { haveServers, useCluster, waitFor } from '../helpers/servers.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const enabled = haveServers();

interface Load {
  workerId: bigint;
  rank: number;
  active: number;
  total: number;
  waiting: number;
  activeBlocks: number;
  totalBlocks: number;
  usage: number;
  hitRate: number;
}

function decodeLoad(raw: string): Load {
  const j = parseJson(raw) as Record<string, any>;
  expect(Object.keys(j)).toEqual(['worker_id', 'data']);
  expect(Object.keys(j.data)).toEqual(['worker_stats', 'kv_stats', 'spec_decode_stats']);
  expect(j.data.spec_decode_stats).toBeNull();
  const w = j.data.worker_stats;
  const k = j.data.kv_stats;
  expect(Object.keys(w)).toEqual(['data_parallel_rank', 'request_active_slots', 'request_total_slots', 'num_requests_waiting']);
  expect(Object.keys(k)).toEqual(['kv_active_blocks', 'kv_total_blocks', 'gpu_cache_usage_perc', 'gpu_prefix_cache_hit_rate']);
  return {
    workerId: BigInt(j.worker_id),
    rank: w.data_parallel_rank,
    active: w.request_active_slots,
    total: w.request_total_slots,
    waiting: w.num_requests_waiting,
    activeBlocks: k.kv_active_blocks,
    totalBlocks: k.kv_total_blocks,
    usage: k.gpu_cache_usage_perc,
    hitRate: k.gpu_prefix_cache_hit_rate,
  };
}

/** Prometheus text exposition → samples with parsed labels. */
function parseExposition(text: string): Array<{ name: string; labels: Record<string, string>; value: number }> {
  const out: Array<{ name: string; labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The one sample of `name` whose labels include `match`; fails if there is not exactly one. */
function sample(samples: ReturnType<typeof parseExposition>, name: string, match: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
  if (hits.length !== 1) throw new Error(`${hits.length} samples of ${name} ${JSON.stringify(match)}`);
  return hits[0].value;
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

describe.skipIf(!enabled)('load metrics (LoadEvent) and their Prometheus twins', () => {
  const cluster = useCluster();
  let nc: NatsConnection;
  beforeAll(() => {
    nc = cluster.nc;
  });

  /** Subscribes to the namespace's load subject before the worker starts, so the first value is seen. */
  async function worker(ns: string, args: string[]) {
    const loads: Load[] = [];
    const sub: Subscription = nc.subscribe(`namespace.${ns}.kv_metrics`, { callback: (_e, m) => loads.push(decodeLoad(m.string())) });
    await nc.flush();
    const w = await startWorkerProcess(['--model-path', TINY_MODEL, '--block-size', '16', ...args], { ...cluster.env, DYN_NAMESPACE: ns });
    const client = await DynamoClient.connect({ env: cluster.env });
    const [inst] = await client.waitForInstances({ namespace: ns, component: 'backend', endpoint: 'generate' }, 1);
    return { w, client, inst, loads, sub };
  }

  async function scrape(w: WorkerProcess) {
    return parseExposition((await w.get('/metrics')).body);
  }

  async function finish(w: WorkerProcess, client: DynamoClient, sub: Subscription) {
    sub.unsubscribe();
    await client.close();
    expect(await w.stop()).toBe(0);
  }

  it('tracks admission: slots rise to --max-num-seqs, the rest wait, and the gauges agree with the LoadEvent', async () => {
    // Speedup 0.1 stretches a pass to ~60 ms (prefill ~180 ms), so each state lasts long enough to compare.
    const { w, client, inst, loads, sub } = await worker('load', ['--max-num-seqs', '3', '--num-gpu-blocks-override', '1000', '--speedup-ratio', '0.1']);
    await waitFor(() => loads.length > 0, { message: 'the first LoadEvent' });
    expect(loads[0]).toEqual({ workerId: inst.instanceId, rank: 0, active: 0, total: 3, waiting: 0, activeBlocks: 0, totalBlocks: 1000, usage: 0, hitRate: 0 });

    // 32-token prompts with 4 output tokens: 3 blocks per request for its whole life.
    const handles = await Promise.all(range(0, 10).map((i) => client.generate(inst.subject, { tokenIds: range(1000 + i * 100, 32), maxTokens: 4 })));
    await waitFor(() => loads.some((l) => l.active === 3 && l.waiting === 7), { message: 'a LoadEvent with 3 active and 7 waiting' });
    // The gauges and the newest LoadEvent describe the same engine state; retry across pass edges.
    await waitFor(
      async () => {
        const s = await scrape(w);
        const l = loads[loads.length - 1];
        const labels = { dynamo_namespace: 'load', dynamo_component: 'backend' };
        return (
          l.active === 3 &&
          l.waiting === 7 &&
          l.activeBlocks === 9 &&
          sample(s, 'vllm:num_requests_running') === l.active &&
          sample(s, 'vllm:num_requests_waiting') === l.waiting &&
          sample(s, 'dynamo_component_kvstats_active_blocks', labels) === l.activeBlocks &&
          sample(s, 'dynamo_component_kvstats_total_blocks', labels) === l.totalBlocks &&
          Math.abs(sample(s, 'dynamo_component_kvstats_gpu_cache_usage_percent', labels) - l.usage) < 1e-9 &&
          Math.abs(sample(s, 'vllm:kv_cache_usage_perc') - l.usage) < 1e-9 &&
          sample(s, 'dynamo_component_total_blocks', { dp_rank: '0' }) === l.totalBlocks &&
          Math.abs(sample(s, 'dynamo_component_gpu_cache_usage_percent', { dp_rank: '0' }) - l.usage) < 1e-9
        );
      },
      { timeoutMs: 10_000, message: 'gauges that agree with the LoadEvent while 3 run and 7 wait' },
    );
    expect(loads[loads.length - 1].usage).toBeCloseTo(0.009, 9);

    const results = await Promise.all(handles.map((h) => h.stream.done));
    expect(results.every((r) => r.tokenIds.length === 4)).toBe(true);
    await waitFor(() => loads[loads.length - 1].activeBlocks === 0 && loads[loads.length - 1].waiting === 0, { message: 'an idle LoadEvent' });
    expect(Math.max(...loads.map((l) => l.active))).toBe(3);
    expect(loads.every((l) => l.total === 3 && l.totalBlocks === 1000 && l.workerId === inst.instanceId && l.rank === 0)).toBe(true);
    expect(loads.every((l) => l.usage >= 0 && l.usage <= 1 && l.hitRate >= 0 && l.hitRate <= 1)).toBe(true);
    // Waiting only falls as requests are admitted: 7 → 4 → 1 → 0 in steps of at most 3.
    const waits = loads.map((l) => l.waiting).filter((v, i, a) => i === 0 || v !== a[i - 1]);
    for (let i = 1; i < waits.length; i++) if (waits[i] < waits[i - 1]) expect(waits[i - 1] - waits[i]).toBeLessThanOrEqual(3);
    await finish(w, client, sub);
  });

  it('reports a shared prefix as a hit rate in both the LoadEvent and the gauge', async () => {
    const { w, client, inst, loads, sub } = await worker('loadhit', ['--speedup-ratio', '0', '--num-gpu-blocks-override', '1000']);
    const prefix = range(5000, 64);
    await (await client.generate(inst.subject, { tokenIds: [...prefix, ...range(6000, 64)], maxTokens: 2 })).stream.done;
    await (await client.generate(inst.subject, { tokenIds: [...prefix, ...range(7000, 64)], maxTokens: 2 })).stream.done;
    // Admissions so far: 0 of 8 blocks, then 4 of 8 cached → a recent-admission hit rate of 0.25.
    await waitFor(() => loads.some((l) => l.hitRate > 0), { message: 'a LoadEvent with a prefix hit rate' });
    const last = loads[loads.length - 1];
    expect(last.hitRate).toBeCloseTo(0.25, 9);
    const s = await scrape(w);
    expect(sample(s, 'dynamo_component_kvstats_gpu_prefix_cache_hit_rate')).toBeCloseTo(last.hitRate, 9);
    expect(sample(s, 'dynamo_component_kv_cache_hit_rate', { dp_rank: '0' })).toBeCloseTo(last.hitRate, 9);
    expect(sample(s, 'vllm:prefix_cache_hits_total')).toBe(64);
    expect(sample(s, 'vllm:prefix_cache_queries_total')).toBe(256);
    await finish(w, client, sub);
  });

  it('publishes one LoadEvent stream per DP rank, tagged with its rank', async () => {
    const { w, client, inst, loads, sub } = await worker('loaddp', ['--data-parallel-size', '2', '--max-num-seqs', '2', '--num-gpu-blocks-override', '1000', '--speedup-ratio', '0.1']);
    await waitFor(() => new Set(loads.map((l) => l.rank)).size === 2, { message: 'a first LoadEvent from each rank' });
    // Everything goes to rank 1: its slots fill, rank 0 stays idle.
    const handles = await Promise.all(range(0, 4).map((i) => client.generate(inst.subject, { tokenIds: range(100 * i, 32), maxTokens: 4, dpRank: 1 })));
    await waitFor(() => loads.some((l) => l.rank === 1 && l.active === 2 && l.waiting === 2), { message: 'rank 1 full with 2 waiting' });
    expect(loads.filter((l) => l.rank === 0).every((l) => l.active === 0 && l.activeBlocks === 0)).toBe(true);
    expect(loads.every((l) => l.total === 2 && l.totalBlocks === 1000)).toBe(true);
    await waitFor(
      async () => {
        const s = await scrape(w);
        return sample(s, 'vllm:num_requests_running', { engine: '1' }) === 2 && sample(s, 'vllm:num_requests_running', { engine: '0' }) === 0;
      },
      { message: 'per-engine running gauges' },
    );
    const s = await scrape(w);
    expect(sample(s, 'dynamo_component_total_blocks', { dp_rank: '0' })).toBe(1000);
    expect(sample(s, 'dynamo_component_total_blocks', { dp_rank: '1' })).toBe(1000);
    await Promise.all(handles.map((h) => h.stream.done));
    await finish(w, client, sub);
  });

  it('scrapes do not disturb the engine: a stream takes as long while /metrics is hammered', async () => {
    const { w, client, inst, sub } = await worker('loadscrape', ['--num-gpu-blocks-override', '1000']);
    /** First-to-last token time of a 200-token stream (≈200 decode passes of ~6 ms each). */
    const span = async (seed: number) => {
      const r = await (await client.generate(inst.subject, { tokenIds: range(seed, 32), maxTokens: 200 })).stream.done;
      expect(r.tokenIds).toHaveLength(200);
      return r.tokenTimes[199] - r.tokenTimes[0];
    };
    const quiet = await span(10_000);
    let scrapes = 0;
    let hammering = true;
    const hammer = (async () => {
      while (hammering) {
        await scrape(w);
        scrapes++;
      }
    })();
    const loud = await span(20_000);
    hammering = false;
    await hammer;
    // Hundreds of scrapes during ~1.2 s of streaming (Prometheus scrapes every few seconds).
    expect(scrapes).toBeGreaterThan(50);
    // Measured: under 1% apart with ~500 scrapes; 10% leaves room for a busy CI machine.
    expect(Math.abs(loud - quiet) / quiet).toBeLessThan(0.1);
    await finish(w, client, sub);
  });
});
