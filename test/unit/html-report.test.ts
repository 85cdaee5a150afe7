// The HTML report renderer on seeded data: every chart drawn, strings escaped, nothing external, edge cases without NaN.
import { describe, expect, it } from 'vitest';
import { renderHtmlReport, throughputBuckets } from '../../src/replay/html-report.js';
import type { ReplayReportData, SweepReportData } from '../../src/replay/report-data.js';
import { summarize, type ReplaySummary, type RequestResult } from '../../src/replay/report.js';
import { replayFixture, sweepFixture } from '../helpers/report-fixtures.js';

const REPLAY_CHARTS = ['ttft', 'itl', 'e2e', 'throughput-tokens', 'throughput-requests', 'running', 'waiting', 'kv-usage', 'worker-requests'];
const DRAWN = /<(rect|path|polyline|polygon|circle|line)\b/;

/** Each chart's SVG by its data-chart id, in page order. */
function charts(html: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of html.matchAll(/<svg data-chart="([^"]+)"[\s\S]*?<\/svg>/g)) out.set(m[1], m[0]);
  return out;
}

function count(s: string, re: RegExp): number {
  return [...s.matchAll(new RegExp(re.source, 'g'))].length;
}

/** The plotted points of the Pareto chart (not the legend's). */
function points(svg: string): string {
  return /<g class="points">([\s\S]*?)<\/g>/.exec(svg)?.[1] ?? '';
}

/** Text of the tick labels in a chart's axes group. */
function tickLabels(svg: string): string[] {
  const axes = /<g class="axes">([\s\S]*?)<\/g>/.exec(svg)?.[1] ?? '';
  return [...axes.matchAll(/<text [^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
}

/** Nothing that would make the page fetch anything, no script, no broken numbers. */
function expectClean(html: string): void {
  expect(html).not.toMatch(/NaN|undefined|Infinity/);
  expect(html).not.toMatch(/<script|<img|<link|<iframe|<object|<embed|<use|@import|url\(|https?:/i);
  expect(html).not.toMatch(/<[^>]*\s(src|href|xlink:href|srcset|action)\s*=/i);
  expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
  expect(html.trimEnd().endsWith('</html>')).toBe(true);
}

/** The data with its summary recomputed from (edited) results. */
function withResults(base: ReplayReportData, results: RequestResult[]): ReplayReportData {
  const end = results.reduce((m, r) => Math.max(m, r.finish_ms ?? 0), 0);
  return { ...base, results, summary: summarize(results, end, 10) };
}

describe('replay report', () => {
  const data = replayFixture({ requests: 400, workers: 4, samples: 200, seed: 3 });
  const html = renderHtmlReport(data);
  const svgs = charts(html);

  it('draws every chart as an SVG with drawn elements', () => {
    expect([...svgs.keys()]).toEqual(REPLAY_CHARTS);
    for (const [id, svg] of svgs) {
      expect(svg, id).toMatch(DRAWN);
      expect(svg, id).not.toContain('class="empty"');
      expect(svg, id).toMatch(/viewBox="0 0 720 \d+"/);
    }
    expectClean(html);
  });

  it('shows the header figures, the command and the summary table', () => {
    expect(html).toContain(`<h1>${data.title}</h1>`);
    expect(html).toContain(data.command);
    for (const label of ['requests', 'completed', 'errors', 'simulated duration', 'requests/s', 'output tokens/s', 'prefix hit rate', 'preemptions', 'workers']) {
      expect(html).toContain(`<div class="k">${label}</div>`);
    }
    expect(html).toContain(`<div class="v">${data.summary.requests.toLocaleString('en-US')}</div>`);
    expect(html).toContain('<h3>Latency (ms)</h3>');
    expect(html).toContain('<h3>Errors</h3>');
  });

  it('the fleet section: per-worker rows with nested figures as columns, the spreads as a table', () => {
    const fleet = html.slice(html.indexOf('<h3>Fleet</h3>'), html.indexOf('<h3>Errors</h3>'));
    expect(fleet.length).toBeGreaterThan(0);
    expect(fleet).toContain('<h4>per_worker</h4>');
    expect(fleet).toContain('<h4>spread</h4>');
    const name = (col: string) => col.replace(/([_.])/g, '$1<wbr>');
    for (const col of ['worker', 'requests', 'busy_fraction', 'ttft_ms.p50', 'ttft_ms.p90']) expect(fleet).toContain(`<th class="num">${name(col)}</th>`);
    expect(fleet).toContain(`<th class="num">${name('max_over_mean')}</th>`);
    expect(fleet).toContain('<td><b>busy_fraction</b></td>');
    expect(html).toContain('<th>router</th><td>kv</td>');
  });

  it('histograms: bins, a cumulative line, p50/p90/p99 marked, log x for wide ranges', () => {
    const ttft = svgs.get('ttft')!;
    expect(count(ttft, /<rect [^>]*><title>/)).toBeGreaterThan(10);
    expect(ttft).toContain('class="cdf"');
    for (const p of ['p50', 'p90', 'p99']) expect(ttft).toMatch(new RegExp(`>${p} [0-9.,k]+ ms</text>`));
    // Lognormal TTFTs span decades: powers of ten on the axis.
    expect(html).toMatch(/<strong>TTFT<\/strong> <span class="note">[^<]*log scale/);
    expect(tickLabels(ttft)).toEqual(expect.arrayContaining(['10', '100', '1000']));
    // ITLs are within a factor of a few: linear, with 1-2-5 steps.
    expect(html).not.toMatch(/<strong>ITL \(mean per request\)<\/strong> <span class="note">[^<]*log scale/);
  });

  it('one line per worker with a legend for a few workers; percent axis for KV usage', () => {
    for (const id of ['running', 'waiting', 'kv-usage']) {
      const svg = svgs.get(id)!;
      expect(count(svg, /class="series"/), id).toBe(4);
      for (let w = 0; w < 4; w++) expect(svg).toContain(`>worker ${w}</text>`);
      expect(new Set(svg.match(/stroke="#[0-9a-f]{6}" stroke-width="1.4"/g)).size, id).toBe(4);
    }
    expect(tickLabels(svgs.get('kv-usage')!)).toEqual(expect.arrayContaining(['0%', '20%', '40%', '60%', '80%', '100%']));
  });

  it('throughput per time bucket from the results, with the run average', () => {
    const tok = svgs.get('throughput-tokens')!;
    expect(tok).toContain('class="series"');
    expect(tok).toContain('run average');
    expect(count(svgs.get('throughput-requests')!, /<rect /)).toBeGreaterThan(20);
    const t0 = Math.min(...data.results.map((r) => r.arrival_ms));
    const b = throughputBuckets(data.results, t0, data.summary.duration_ms);
    expect(b.tokens.length).toBeGreaterThan(40);
    expect(b.tokens.length).toBeLessThanOrEqual(90);
    expect(b.spanMs).toBe(b.widthMs * b.tokens.length);
    expect(b.completions.reduce((a, v) => a + v, 0)).toBe(data.summary.completed);
    expect(b.tokens.reduce((a, v) => a + v, 0)).toBeCloseTo(data.summary.output_tokens, 6);
    expect(html).toContain(`bucket ${b.widthMs >= 1000 ? `${b.widthMs / 1000} s` : `${b.widthMs} ms`}`);
  });

  it('throughput buckets spread a request\'s tokens from its first token to its finish', () => {
    const r = (first: number, finish: number, tokens: number): RequestResult => ({
      index: 0,
      arrival_ms: 0,
      first_token_ms: first,
      finish_ms: finish,
      ttft_ms: first,
      mean_itl_ms: (finish - first) / Math.max(1, tokens - 1),
      e2e_ms: finish,
      input_tokens: 10,
      output_tokens: tokens,
      cached_tokens: 0,
      preemptions: 0,
      dp_rank: 0,
    });
    // 900 ms of run: 10 ms buckets. One token at 0, then 90 tokens evenly over 0..900 ms: one per bucket more.
    const b = throughputBuckets([r(0, 900, 91), { ...r(5, 5, 1), error: 'failed' }], 0);
    expect(b.widthMs).toBe(10);
    expect(b.tokens).toHaveLength(90);
    expect(b.tokens[0]).toBeCloseTo(2, 9);
    for (let i = 1; i < 90; i++) expect(b.tokens[i]).toBeCloseTo(1, 9);
    expect(b.completions[89]).toBe(1);
    expect(b.completions.reduce((a, v) => a + v, 0)).toBe(1);
  });

  it('requests per worker from results, unrouted requests noted', () => {
    const bars = svgs.get('worker-requests')!;
    const perWorker = [0, 0, 0, 0];
    let unrouted = 0;
    for (const r of data.results) {
      if (typeof r.worker === 'number') perWorker[r.worker]++;
      else unrouted++;
    }
    for (let w = 0; w < 4; w++) expect(bars).toMatch(new RegExp(`worker ${w}: (\\d+) completed, (\\d+) failed`));
    const tips = [...bars.matchAll(/<title>worker (\d+): (\d+) completed, (\d+) failed<\/title>/g)];
    const seen = new Map(tips.map((m) => [Number(m[1]), Number(m[2]) + Number(m[3])]));
    expect([...seen.entries()].sort((a, b) => a[0] - b[0]).map(([, n]) => n)).toEqual(perWorker);
    expect(unrouted).toBeGreaterThan(0);
    expect(html).toContain(`${unrouted} not routed to a worker`);
  });

  it('is deterministic', () => {
    expect(renderHtmlReport(data)).toBe(html);
  });
});

describe('replay report with many or one workers', () => {
  it('64 workers: min/median/max bands instead of 64 lines', () => {
    const html = renderHtmlReport(replayFixture({ requests: 3000, workers: 64, samples: 300, seed: 5 }));
    const svgs = charts(html);
    for (const id of ['running', 'waiting', 'kv-usage']) {
      const svg = svgs.get(id)!;
      expect(svg, id).toContain('<g class="band"');
      expect(svg).toContain('min–max across 64 workers');
      expect(count(svg, /class="series"/), id).toBe(2);
    }
    // Bars for all 64, labels thinned so they do not collide.
    const bars = svgs.get('worker-requests')!;
    expect(count(bars, /<title>worker \d+:/g)).toBeGreaterThanOrEqual(64);
    expect(count(bars, /<text [^>]*text-anchor="middle">\d+<\/text>/)).toBeLessThanOrEqual(32);
    expectClean(html);
  });

  it('one worker (a single engine: results carry no worker, everything ran on worker 0)', () => {
    const data = replayFixture({ requests: 50, workers: 1, samples: 20, seed: 9, errorRate: 0.2 });
    expect(data.results.every((r) => r.worker === undefined)).toBe(true);
    const html = renderHtmlReport(data);
    const svgs = charts(html);
    expect([...svgs.keys()]).toEqual(REPLAY_CHARTS);
    expect(count(svgs.get('running')!, /class="series"/)).toBe(1);
    expect(html).toContain('1 worker,');
    const done = data.results.filter((r) => r.error === undefined).length;
    expect(svgs.get('worker-requests')).toContain(`<title>worker 0: ${done} completed, ${50 - done} failed</title>`);
    expect(html).not.toContain('<h3>Fleet</h3>');
    expectClean(html);
  });
});

describe('replay report edge cases', () => {
  const base = replayFixture({ requests: 20, workers: 2, samples: 10, seed: 11 });

  it('zero requests and an empty timeline: every chart present, saying there is no data', () => {
    const html = renderHtmlReport({ ...withResults(base, []), timeline: { t_ms: [], workers: [] } });
    const svgs = charts(html);
    expect([...svgs.keys()]).toEqual(REPLAY_CHARTS);
    for (const svg of svgs.values()) expect(svg).toContain('class="empty"');
    expect(html).toContain('No completed requests');
    expect(html).toContain('No timeline samples');
    expect(html).not.toContain('<h3>Errors</h3>');
    expectClean(html);
  });

  it('all requests failed: null percentiles, errors table, bars in the failed colour', () => {
    const failed = base.results.map((r, i) => ({
      ...r,
      first_token_ms: null,
      finish_ms: null,
      ttft_ms: null,
      mean_itl_ms: null,
      e2e_ms: null,
      output_tokens: 0,
      error: i % 2 ? 'refused: <b>too long</b>' : 'stalled',
    }));
    const data = withResults(base, failed);
    expect(data.summary.ttft_ms.p50).toBeNull();
    const html = renderHtmlReport(data);
    const svgs = charts(html);
    for (const id of ['ttft', 'itl', 'e2e', 'throughput-tokens', 'throughput-requests']) expect(svgs.get(id), id).toContain('class="empty"');
    expect(svgs.get('worker-requests')).toContain('fill="#e15759"');
    expect(html).toContain('<h3>Errors</h3>');
    expect(html).toContain('refused: &lt;b&gt;too long&lt;/b&gt;');
    expect(html).toContain('<td class="num">–</td>');
    expectClean(html);
  });

  it('one request, results without a worker field, gaps and nulls in the timeline', () => {
    const one = withResults(base, [{ ...base.results.find((r) => r.error === undefined)!, worker: undefined } as RequestResult]);
    const timeline = {
      t_ms: [0, 10, 20, 30],
      workers: [
        { running: [1, null, 2, 3], waiting: [0, 0], kv_usage: [0.1, Number.NaN, 0.3, 0.2] },
        { running: [], waiting: [1, 1, 1, 1], kv_usage: [0, 0, 0, 0] },
      ],
    } as unknown as ReplayReportData['timeline'];
    const html = renderHtmlReport({ ...one, timeline });
    const svgs = charts(html);
    expect([...svgs.keys()]).toEqual(REPLAY_CHARTS);
    expect(svgs.get('ttft')).not.toContain('class="empty"');
    expect(svgs.get('running')).toMatch(DRAWN);
    expect(svgs.get('worker-requests')).toContain('Results carry no worker assignment');
    expectClean(html);
  });

  it('count axes tick on whole numbers; low KV usage is zoomed in', () => {
    const timeline = {
      t_ms: Array.from({ length: 50 }, (_, i) => i * 100),
      workers: [0, 1].map((w) => ({
        running: Array.from({ length: 50 }, (_, i) => (i + w) % 2),
        waiting: Array.from({ length: 50 }, (_, i) => (i % 7 === w ? 1 : 0)),
        kv_usage: Array.from({ length: 50 }, (_, i) => 0.005 + 0.025 * ((i * (w + 1)) % 5) / 4),
      })),
    };
    const svgs = charts(renderHtmlReport({ ...base, timeline }));
    expect(tickLabels(svgs.get('waiting')!).slice(0, 2)).toEqual(['0', '1']);
    expect(tickLabels(svgs.get('running')!).slice(0, 2)).toEqual(['0', '1']);
    expect(tickLabels(svgs.get('kv-usage')!).slice(0, 4)).toEqual(['0%', '1%', '2%', '3%']);
    // 0 to 4.9 s of samples: seconds on a tight axis.
    expect(tickLabels(svgs.get('kv-usage')!)).toEqual(expect.arrayContaining(['0', '1', '2', '3', '4', 'simulated time (s)']));
  });

  it('identical latencies and a zero-length run', () => {
    const same = base.results
      .filter((r) => r.error === undefined)
      .map((r) => ({ ...r, arrival_ms: 0, first_token_ms: 0, finish_ms: 0, ttft_ms: 0, mean_itl_ms: 0, e2e_ms: 0 }));
    const html = renderHtmlReport({ ...withResults(base, same), timeline: { t_ms: [0], workers: [{ running: [0], waiting: [0], kv_usage: [0] }] } });
    const svgs = charts(html);
    for (const [id, svg] of svgs) expect(svg, id).toMatch(DRAWN);
    expectClean(html);
  });

  it('a fleet section of unknown shape is shown as tables, escaped', () => {
    const summary = {
      ...base.summary,
      fleet: {
        workers: 2,
        router: 'kv<script>',
        per_worker: [
          { worker: 0, requests: 12, busy_fraction: 0.5, note: '<i>x</i>' },
          { worker: 1, requests: 8, busy_fraction: null, '<key>': true },
        ],
        nested: { a: { b: { c: { d: { e: { f: 1 } } } } } },
        list: [1, 2, 3],
      },
    } as unknown as ReplaySummary;
    const html = renderHtmlReport({ ...base, summary });
    expect(html).toContain('<h3>Fleet</h3>');
    expect(html).toContain('<h4>per_worker</h4>');
    expect(html).toContain('<th class="num">busy_<wbr>fraction</th>');
    expect(html).toContain('kv&lt;script&gt;');
    expect(html).toContain('&lt;i&gt;x&lt;/i&gt;');
    expect(html).toContain('<th>&lt;key&gt;</th>');
    expect(html).toContain('1, 2, 3');
    expectClean(html);
  });

  it('a disaggregated summary shows the pools', () => {
    const summary: ReplaySummary = {
      ...base.summary,
      disagg: {
        prefill: { workers: 2, passes: 10, busy_ms: 100, busy_fraction: 0.25 },
        decode: { workers: 3, passes: 40, busy_ms: 300, busy_fraction: 0.5 },
        kv_transfer_bandwidth_gbps: 25,
        kv_bytes_per_token: null,
        kv_transfer_timing_mode: 'model' as never,
        prefill_ms: { p50: 1, p90: 2, p99: 3, mean: 1.5 },
        handoff_ms: { p50: null, p90: null, p99: null, mean: null },
        transfer_ms: { p50: 0, p90: 0, p99: 0, mean: 0 },
      },
    };
    const html = renderHtmlReport({ ...base, summary });
    expect(html).toContain('<h3>Disaggregated pools</h3>');
    expect(html).toContain('KV transfer takes no time');
    expectClean(html);
  });
});

describe('escaping', () => {
  const evil = '<script>alert(1)</script>';
  it('titles, commands, config values and parameter names are inert', () => {
    const replay = renderHtmlReport({ ...replayFixture({ requests: 30, workers: 2, samples: 10 }), title: `A ${evil} & "B"`, command: `dynamo-mocker replay '"><img src=x onerror=alert(1)>' ${evil}` });
    expect(replay).toContain('<title>A &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;B&quot;</title>');
    expect(replay).toContain('&#39;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&#39;');
    expectClean(replay);

    const sweep = renderHtmlReport(
      sweepFixture({ title: evil, command: evil, configs: [{ 'max-num-seqs': 8, [`router${evil}`]: evil }, { 'max-num-seqs': 64, [`router${evil}`]: '"quoted"' }] }),
    );
    expect(sweep).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(sweep).toContain('router&lt;script&gt;alert(1)&lt;/script&gt;=&lt;script&gt;');
    expect(sweep).toContain('&quot;quoted&quot;');
    expectClean(sweep);
  });
});

describe('sweep report', () => {
  const data = sweepFixture();
  const html = renderHtmlReport(data);
  const pareto = charts(html).get('pareto')!;
  const front = data.rows.filter((r) => r.pareto);

  it('Pareto chart: every configuration a point naming its config, the front highlighted and connected', () => {
    expect([...charts(html).keys()]).toEqual(['pareto']);
    expect(front.length).toBeGreaterThan(2);
    expect(front.length).toBeLessThan(data.rows.length);
    expect(count(points(pareto), /<circle /)).toBe(data.rows.length);
    expect(count(points(pareto), /<circle [^>]*fill="#e15759"/)).toBe(front.length);
    expect(pareto).toContain('class="front"');
    data.rows.forEach((r, i) => {
      expect(pareto).toContain(`<title>#${i + 1}${r.pareto ? ' (Pareto)' : ''}: max-num-seqs=${r.config['max-num-seqs']} router=${r.config.router}`);
    });
    expect(pareto).toContain('p90 TTFT (ms');
    expect(pareto).toContain('output tokens/s');
    expectClean(html);
  });

  it('table of all rows with the Pareto rows marked', () => {
    const table = /<table class="sweep">[\s\S]*?<\/table>/.exec(html)![0];
    expect(count(table, /<tr[ >]/)).toBe(2 + data.rows.length);
    expect(count(table, /<tr class="pareto">/)).toBe(front.length);
    expect(count(table, /class="star"/)).toBe(front.length);
    expect(table).toContain('<th rowspan="2">max-num-seqs</th>');
    expect(html).toContain('Pareto front, by p90 TTFT:');
  });

  it('more than three parameters share one configuration column', () => {
    const configs = [8, 64].map((seqs, i) => ({ 'max-num-seqs': seqs, router: 'kv', 'num-workers': 2 ** i, 'block-size': 16 }));
    const wide = renderHtmlReport(sweepFixture({ configs }));
    const table = /<table class="sweep">[\s\S]*?<\/table>/.exec(wide)![0];
    expect(table).toContain('<th rowspan="2">configuration</th>');
    expect(table).not.toContain('<th rowspan="2">max-num-seqs</th>');
    expect(table).toContain('<span>max-num-seqs=64</span> <span>router=kv</span> <span>num-workers=2</span> <span>block-size=16</span>');
    expectClean(wide);
  });

  it('one row, rows without a p90 TTFT, no rows', () => {
    const one = renderHtmlReport({ ...data, rows: [{ ...data.rows[0], pareto: true }] });
    expect(count(points(charts(one).get('pareto')!), /<circle /)).toBe(1);
    expectClean(one);

    const noTtft = renderHtmlReport({ ...data, rows: data.rows.map((r, i) => (i < 3 ? { ...r, ttft_ms: { p50: null, p90: null, p99: null, mean: null }, completed: 0, errors: 1000 } : r)) });
    expect(noTtft).toContain('3 not plotted (no p90 TTFT)');
    expect(count(points(charts(noTtft).get('pareto')!), /<circle /)).toBe(data.rows.length - 3);
    expectClean(noTtft);

    const allNull = renderHtmlReport({ ...data, rows: data.rows.slice(0, 2).map((r) => ({ ...r, ttft_ms: { p50: null, p90: null, p99: null, mean: null }, output_tokens_per_s: 0 })) });
    expect(charts(allNull).get('pareto')).toContain('No configuration has a p90 TTFT');
    expectClean(allNull);

    const empty = renderHtmlReport({ kind: 'sweep', title: 'empty', command: '', parameters: [], rows: [] } satisfies SweepReportData);
    expect(charts(empty).get('pareto')).toContain('No sweep rows');
    expectClean(empty);
  });
});

describe('size', () => {
  it('23,608 requests on 16 workers with a 500-sample timeline stays well under 2 MB', () => {
    const data = replayFixture({ requests: 23_608, workers: 16, samples: 500, seed: 2 });
    const html = renderHtmlReport(data);
    expect(Buffer.byteLength(html)).toBeLessThan(2_000_000);
    expect([...charts(html).keys()]).toEqual(REPLAY_CHARTS);
    expectClean(html);
  });
});
