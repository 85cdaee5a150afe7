// `dynamo-mocker replay` as users run it (the built CLI in a child process): trace formats, fleets, sweeps on threads, bad flags.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { mixedTraceLines, TRACE_FIXTURES } from '../helpers/traces.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin/dynamo-mocker');
const fixtures = join(root, 'test/fixtures/traces');
const dir = mkdtempSync(join(tmpdir(), 'replay-fleet-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Run {
  code: number;
  out: string;
  err: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 }, (error, out, err) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, out, err });
    });
  });
}

let files = 0;
const file = (name: string): string => join(dir, `${files++}-${name}`);

const trace = file('mixed.jsonl');
writeFileSync(trace, mixedTraceLines(300).map((l) => JSON.stringify(l)).join('\n') + '\n');

describe('trace formats through the CLI', () => {
  it.each(TRACE_FIXTURES)('%s replays to completion, detected and named', async (name, format) => {
    const output = file('rows.jsonl');
    const detected = await cli(['replay', '--trace', join(fixtures, name), '--no-progress', '--output', output, '--num-workers', '2', '--router', 'kv']);
    expect(detected.code, detected.err).toBe(0);
    const rows = readFileSync(output, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { error?: string; worker: number | null; finish_ms: number | null });
    expect(rows.length).toBeGreaterThan(3);
    for (const r of rows) {
      expect(r.error).toBeUndefined();
      expect(r.finish_ms).not.toBeNull();
      expect([0, 1]).toContain(r.worker);
    }
    const explicit = await cli(['replay', '--trace', join(fixtures, name), '--trace-format', format, '--no-progress', '--output', file('rows.jsonl'), '--num-workers', '2', '--router', 'kv']);
    expect(explicit.out).toBe(detected.out);
  });

  it('a malformed row stops the run with its line number (exit 2)', async () => {
    const bad = file('bad.csv');
    writeFileSync(bad, 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,abc,12\n');
    const run = await cli(['replay', '--trace', bad, '--no-progress']);
    expect(run.code).toBe(2);
    expect(run.err).toMatch(/line 3/);
    expect(run.err).toMatch(/ContextTokens/);
  });
});

describe('fleet replay', () => {
  it('is byte-identical run to run for every router (same trace, flags and seed)', async () => {
    for (const router of ['round-robin', 'random', 'least-loaded', 'kv']) {
      const a = file('a.jsonl');
      const b = file('b.jsonl');
      const args = ['replay', '--trace', trace, '--no-progress', '--num-workers', '3', '--router', router, '--router-temperature', router === 'kv' ? '0.3' : '0', '--seed', '5'];
      const [ra, rb] = await Promise.all([cli([...args, '--output', a]), cli([...args, '--output', b])]);
      expect(ra.code, ra.err).toBe(0);
      expect(rb.code).toBe(0);
      expect(readFileSync(a, 'utf8')).toBe(readFileSync(b, 'utf8'));
      expect(ra.out).toBe(rb.out);
    }
  });

  it('the KV router reports what it saw: every request routed, the cached tokens it expected', async () => {
    const summary = file('view.json');
    const run = await cli(['replay', '--trace', trace, '--no-progress', '--num-workers', '3', '--router', 'kv', '--summary', summary]);
    expect(run.code, run.err).toBe(0);
    const parsed = JSON.parse(readFileSync(summary, 'utf8')) as { requests: number; cached_tokens: number; fleet: { router_stats: { routed: number; overlap_blocks: number; overlap_tokens: number } } };
    const stats = parsed.fleet.router_stats;
    expect(stats.routed).toBe(parsed.requests);
    expect(stats.overlap_tokens).toBe(stats.overlap_blocks * 64);
    // The trace shares prefixes: the router saw some of them cached.
    expect(stats.overlap_tokens).toBeGreaterThan(0);
    expect(run.out).toMatch(/router's view +\d+\.\d+% of input tokens cached on the workers it chose/);
    const roundRobin = await cli(['replay', '--trace', trace, '--no-progress', '--num-workers', '3', '--summary', file('rr.json')]);
    expect(roundRobin.out).not.toContain("router's view");
  });

  it('a synthetic workload replays, seeded', async () => {
    const args = ['replay', '--synthetic', 'requests=200,isl=uniform:500:3000,osl=lognormal:80:40,shared-prefix=0.5,prefix-groups=4,turns=2,turn-delay-ms=100,rate=30', '--no-progress', '--num-workers', '2', '--router', 'kv'];
    const [a, b, other] = await Promise.all([cli([...args, '--seed', '1']), cli([...args, '--seed', '1']), cli([...args, '--seed', '2'])]);
    expect(a.code, a.err).toBe(0);
    expect(a.out).toMatch(/requests {8}200 \(200 completed, 0 errors\)/);
    expect(a.out).toBe(b.out);
    expect(other.out).not.toBe(a.out);
  });
});

describe('disaggregated pools behind routers', () => {
  it('each pool has its router: deterministic, every row on a worker of each pool, the router in the summary', async () => {
    const args = ['replay', '--trace', trace, '--no-progress', '--prefill-workers', '2', '--decode-workers', '2', '--kv-bytes-per-token', '131072', '--router', 'kv'];
    const [a, b] = [{ output: file('d.jsonl'), summary: file('d.json') }, { output: file('e.jsonl'), summary: file('e.json') }];
    const [ra, rb] = await Promise.all([
      cli([...args, '--output', a.output, '--summary', a.summary]),
      cli([...args, '--output', b.output, '--summary', b.summary]),
    ]);
    expect(ra.code, ra.err).toBe(0);
    expect(rb.code).toBe(0);
    expect(readFileSync(a.output, 'utf8')).toBe(readFileSync(b.output, 'utf8'));
    expect(ra.out).toContain('kv router per pool');
    const rows = readFileSync(a.output, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prefill_worker: number; decode_worker: number; error?: string });
    expect(rows.every((r) => r.error === undefined && [0, 1].includes(r.prefill_worker) && [0, 1].includes(r.decode_worker))).toBe(true);
    for (const pool of ['prefill_worker', 'decode_worker'] as const) expect(new Set(rows.map((r) => r[pool])).size).toBe(2);
    const summary = JSON.parse(readFileSync(a.summary, 'utf8')) as { disagg: { router?: string } };
    expect(summary.disagg.router).toBe('kv');
  });
});

describe('sweeps', () => {
  const sweepArgs = ['replay', '--trace', trace, '--no-progress', '--sweep', 'num-workers=1,2,3', '--sweep', 'router=round-robin,kv', '--sweep', 'max-num-seqs=4,256'];

  it('run in parallel exactly as one by one, each row what that configuration gives alone', async () => {
    const parallel = { output: file('p.jsonl'), summary: file('p.json'), report: file('p.html') };
    const serial = { output: file('s.jsonl'), summary: file('s.json') };
    const [p, s] = await Promise.all([
      cli([...sweepArgs, '--sweep-jobs', '2', '--output', parallel.output, '--summary', parallel.summary, '--report', parallel.report]),
      cli([...sweepArgs, '--sweep-jobs', '1', '--output', serial.output, '--summary', serial.summary]),
    ]);
    expect(p.code, p.err).toBe(0);
    expect(s.code, s.err).toBe(0);
    expect(p.out).toBe(s.out);
    expect(readFileSync(parallel.output, 'utf8')).toBe(readFileSync(serial.output, 'utf8'));
    expect(readFileSync(parallel.summary, 'utf8')).toBe(readFileSync(serial.summary, 'utf8'));
    const { parameters, rows } = JSON.parse(readFileSync(parallel.summary, 'utf8')) as {
      parameters: string[];
      rows: Array<{ config: Record<string, string | number>; ttft_ms: { p90: number }; output_tokens_per_s: number; pareto: boolean }>;
    };
    expect(parameters).toEqual(['num-workers', 'router', 'max-num-seqs']);
    expect(rows.map((r) => `${r.config['num-workers']}/${r.config.router}/${r.config['max-num-seqs']}`)).toEqual([
      '1/round-robin/4',
      '1/round-robin/256',
      '1/kv/4',
      '1/kv/256',
      '2/round-robin/4',
      '2/round-robin/256',
      '2/kv/4',
      '2/kv/256',
      '3/round-robin/4',
      '3/round-robin/256',
      '3/kv/4',
      '3/kv/256',
    ]);
    // Pareto: exactly the rows no other row beats on both throughput and p90 TTFT.
    for (const r of rows) {
      const beaten = rows.some(
        (o) => o !== r && o.output_tokens_per_s >= r.output_tokens_per_s && o.ttft_ms.p90 <= r.ttft_ms.p90 && (o.output_tokens_per_s > r.output_tokens_per_s || o.ttft_ms.p90 < r.ttft_ms.p90),
      );
      expect(r.pareto, JSON.stringify(r.config)).toBe(!beaten);
    }
    expect(rows.some((r) => r.pareto)).toBe(true);
    // Row 8 (3 workers, kv, 256) against the same configuration replayed alone.
    const alone = file('alone.json');
    const single = await cli(['replay', '--trace', trace, '--no-progress', '--num-workers', '3', '--router', 'kv', '--max-num-seqs', '256', '--summary', alone]);
    expect(single.code).toBe(0);
    const summary = JSON.parse(readFileSync(alone, 'utf8')) as { ttft_ms: unknown; e2e_ms: unknown; output_tokens_per_s: number };
    const row = rows[11] as unknown as { ttft_ms: unknown; e2e_ms: unknown; output_tokens_per_s: number };
    expect(row.ttft_ms).toEqual(summary.ttft_ms);
    expect(row.e2e_ms).toEqual(summary.e2e_ms);
    expect(row.output_tokens_per_s).toBe(summary.output_tokens_per_s);
    expect(readFileSync(parallel.report, 'utf8')).toMatch(/<svg/);
  });
});

describe('sweep details', () => {
  it('a swept boolean overrides the command\'s own --no-flag', async () => {
    const summary = file('bool.json');
    const run = await cli(['replay', '--trace', trace, '--no-progress', '--no-enable-prefix-caching', '--sweep', 'enable-prefix-caching=on,off', '--summary', summary]);
    expect(run.code, run.err).toBe(0);
    const { rows } = JSON.parse(readFileSync(summary, 'utf8')) as { rows: Array<{ prefix_hit_rate: number }> };
    expect(rows[0].prefix_hit_rate).toBeGreaterThan(0);
    expect(rows[1].prefix_hit_rate).toBe(0);
  });

  it('with a synthetic workload, each swept seed replays the workload that seed generates, as a run alone would', async () => {
    const synthetic = ['--synthetic', 'requests=150,isl=uniform:300:2000,osl=uniform:10:60,shared-prefix=0.5,rate=20', '--no-progress', '--num-workers', '2', '--router', 'kv'];
    const summary = file('seeds.json');
    const sweep = await cli(['replay', ...synthetic, '--sweep', 'seed=1,2', '--summary', summary]);
    expect(sweep.code, sweep.err).toBe(0);
    const { rows } = JSON.parse(readFileSync(summary, 'utf8')) as { rows: Array<{ e2e_ms: unknown; ttft_ms: unknown }> };
    for (const [i, seed] of ['1', '2'].entries()) {
      const alone = file(`seed${seed}.json`);
      expect((await cli(['replay', ...synthetic, '--seed', seed, '--summary', alone])).code).toBe(0);
      const expected = JSON.parse(readFileSync(alone, 'utf8')) as { e2e_ms: unknown; ttft_ms: unknown };
      expect(rows[i].e2e_ms).toEqual(expected.e2e_ms);
      expect(rows[i].ttft_ms).toEqual(expected.ttft_ms);
    }
    expect(rows[0].e2e_ms).not.toEqual(rows[1].e2e_ms);
  });

  it('a large fleet lists 32 workers in the table and all of them in the JSON summary', async () => {
    const summary = file('wide.json');
    const run = await cli(['replay', '--trace', trace, '--no-progress', '--num-workers', '40', '--summary', summary]);
    expect(run.code, run.err).toBe(0);
    expect(run.out).toContain('(8 more workers: see the JSON summary\'s fleet.per_worker)');
    const parsed = JSON.parse(readFileSync(summary, 'utf8')) as { fleet: { per_worker: unknown[] } };
    expect(parsed.fleet.per_worker).toHaveLength(40);
  });
});

describe('bad flags exit 2 and name the flag', () => {
  it.each([
    [['--router', 'nearest'], '--router'],
    [['--num-workers', '0'], '--num-workers'],
    [['--num-workers', '2', '--prefill-workers', '1', '--decode-workers', '1'], '--num-workers'],
    [['--kv-overlap-score-weight', '-1'], '--kv-overlap-score-weight'],
    [['--router-temperature', 'hot'], '--router-temperature'],
    [['--trace-format', 'parquet'], '--trace-format'],
    [['--sweep', 'trace=a,b'], '--sweep'],
    [['--sweep', 'num-workers'], '--sweep'],
    [['--sweep', 'num-workers=1,,2'], '--sweep'],
    [['--sweep', 'num-workers=1,0'], '--sweep'],
    [['--sweep', 'router=kv,x'], '--sweep'],
    [['--sweep', 'num-workers=1', '--sweep-jobs', '0'], '--sweep-jobs'],
    [['--sweep-jobs', '2'], '--sweep-jobs'],
  ])('%j', async (args, flag) => {
    const run = await cli(['replay', '--trace', trace, '--no-progress', ...args]);
    expect(run.code).toBe(2);
    expect(run.err).toContain(flag);
    expect(run.err.trim().split('\n')).toHaveLength(1);
  });

  it.each([
    [['--synthetic', 'requests=10', '--trace', 'x.jsonl'], '--synthetic'],
    [['--synthetic', 'isl=foo'], '--synthetic'],
    [['--synthetic', 'requests=10', '--trace-format', 'azure'], '--trace-format'],
    [[], '--trace'],
  ])('%j', async (args, flag) => {
    const run = await cli(['replay', '--no-progress', ...args]);
    expect(run.code).toBe(2);
    expect(run.err).toContain(flag);
  });
});
