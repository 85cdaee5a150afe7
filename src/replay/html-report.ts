// Renders a replay or sweep report as one self-contained HTML page: SVG charts drawn here, no script, no network access.
import type { Percentiles, ReplaySummary, RequestResult } from './report.js';
import type { ReplayReportData, ReportData, SweepReportData, SweepRow, Timeline } from './report-data.js';

/** One HTML document for `data`; every string from the data is escaped. */
export function renderHtmlReport(data: ReportData): string {
  const body = data.kind === 'sweep' ? sweepBody(data) : replayBody(data);
  return page(data.title, body);
}

// ---------------------------------------------------------------------------------------------
// Text and number formatting

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function esc(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const DASH = '–';

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** A figure for people: thousands separators, at most `digits` decimals, a dash when unknown. */
function fmt(v: number | null | undefined, digits = 2): string {
  if (!finite(v)) return DASH;
  const s = v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  return s === '-0' ? '0' : s;
}

/** Three significant digits, for marker labels and tooltips. */
function short(v: number): string {
  if (!finite(v)) return DASH;
  const a = Math.abs(v);
  if (a >= 1e6) return `${trimZeros((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${trimZeros((v / 1e3).toPrecision(3))}k`;
  if (a >= 100) return String(Math.round(v));
  if (a === 0) return '0';
  return trimZeros(v.toPrecision(3));
}

function trimZeros(s: string): string {
  return s.includes('e') || !s.includes('.') ? s : s.replace(/\.?0+$/, '');
}

function pct(fraction: number | null | undefined): string {
  return finite(fraction) ? `${fmt(fraction * 100, 2)}%` : DASH;
}

function duration(ms: number | null | undefined): string {
  if (!finite(ms)) return DASH;
  if (ms < 1000) return `${fmt(ms, 1)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${fmt(s, 2)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** An SVG coordinate: one decimal, and never NaN or Infinity whatever the data. */
function c(v: number): string {
  return Number.isFinite(v) ? String(Math.round(v * 10) / 10) : '0';
}

// ---------------------------------------------------------------------------------------------
// Scales and ticks

interface Scale {
  log: boolean;
  d0: number;
  d1: number;
  r0: number;
  r1: number;
  ticks: number[];
  label: (v: number) => string;
}

function at(s: Scale, v: number): number {
  if (!Number.isFinite(v)) return s.r0;
  let t: number;
  if (s.log) {
    const lv = Math.log10(Math.max(v, s.d0));
    t = (lv - Math.log10(s.d0)) / (Math.log10(s.d1) - Math.log10(s.d0));
  } else {
    t = (v - s.d0) / (s.d1 - s.d0);
  }
  if (!Number.isFinite(t)) t = 0;
  return s.r0 + t * (s.r1 - s.r0);
}

/** 1, 2 or 5 × 10^k, at least `raw`. */
function niceStep(raw: number): number {
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

/**
 * Nice bounds and ticks. `tight` keeps the data's own bounds (time axes) and puts ticks inside them;
 * `integer` keeps ticks on whole numbers (counts).
 */
function linearScale(lo: number, hi: number, r0: number, r1: number, count = 5, opts: { tight?: boolean; integer?: boolean } = {}): Scale {
  const tight = opts.tight ?? false;
  if (!finite(lo) || !finite(hi)) [lo, hi] = [0, 1];
  if (lo > hi) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    hi += pad;
    lo = lo >= 0 && lo - pad < 0 ? 0 : lo - pad;
  }
  const step = Math.max(niceStep((hi - lo) / count), opts.integer ? 1 : 0);
  const first = (tight ? Math.ceil(lo / step - 1e-9) : Math.floor(lo / step + 1e-9)) * step;
  const d0 = tight ? lo : first;
  const d1 = tight ? hi : Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0; first + i * step <= d1 + step * 1e-6 && i < 50; i++) ticks.push(first + i * step);
  const big = Math.max(Math.abs(d0), Math.abs(d1));
  const [div, suffix] = big >= 1e6 ? [1e6, 'M'] : big >= 1e4 ? [1e3, 'k'] : [1, ''];
  const decimals = Math.max(0, Math.min(6, Math.ceil(-Math.log10(step / div) - 1e-9)));
  const label = (v: number): string => {
    const s = (v / div).toFixed(decimals);
    return (/^-0(\.0*)?$/.test(s) ? s.slice(1) : s) + (v === 0 ? '' : suffix);
  };
  return { log: false, d0, d1, r0, r1, ticks, label };
}

/** Log scale over nice 1-2-5 bounds; ticks at 1-2-5 for up to three decades, powers of ten beyond. */
function logScale(lo: number, hi: number, r0: number, r1: number): Scale {
  const down = (v: number): number => {
    const mag = 10 ** Math.floor(Math.log10(v));
    return [5, 2, 1].map((n) => n * mag).find((n) => n <= v * (1 + 1e-9)) ?? mag;
  };
  const up = (v: number): number => {
    const mag = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((n) => n * mag).find((n) => n >= v * (1 - 1e-9)) ?? 10 * mag;
  };
  const d0 = down(lo);
  let d1 = up(hi);
  if (d1 <= d0) d1 = up(d0 * 1.5);
  const decades = Math.log10(d1 / d0);
  const mults = decades <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let k = Math.floor(Math.log10(d0)); k <= Math.ceil(Math.log10(d1)); k++) {
    for (const m of mults) {
      const v = m * 10 ** k;
      if (v >= d0 * (1 - 1e-9) && v <= d1 * (1 + 1e-9)) ticks.push(v);
    }
  }
  return { log: true, d0, d1, r0, r1, ticks, label: short };
}

/** Log when every value is positive and they span more than `ratio`; values ≤ 0 are clamped to the lowest bin by `at`. */
function autoScale(values: number[], r0: number, r1: number, ratio = 30): Scale {
  const pos = values.filter((v) => v > 0);
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  let posLo = Infinity;
  for (const v of pos) if (v < posLo) posLo = v;
  if (pos.length > 0 && hi / posLo > ratio) return logScale(posLo, hi, r0, r1);
  return linearScale(values.length ? lo : 0, values.length ? hi : 1, r0, r1, 6);
}

/** Time axis unit that keeps tick labels short. */
function timeUnit(spanMs: number): { div: number; unit: string } {
  if (spanMs < 2000) return { div: 1, unit: 'ms' };
  if (spanMs < 20 * 60_000) return { div: 1000, unit: 's' };
  if (spanMs < 10 * 3_600_000) return { div: 60_000, unit: 'min' };
  return { div: 3_600_000, unit: 'h' };
}

// ---------------------------------------------------------------------------------------------
// Chart frame, legend and empty state

const W = 720;
const FONT = 11;
const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#79706e'];
/** Above this many workers a line each is unreadable; charts show the spread across workers instead. */
const MAX_WORKER_LINES = PALETTE.length;
const INK = '#333';
const GRID = '#e4e4e4';

interface Box {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

interface LegendItem {
  label: string;
  color: string;
  kind: 'line' | 'box' | 'dash' | 'dot';
}

/** Approximate text width at FONT size, for laying out legends and labels without a browser. */
function textWidth(s: string): number {
  return s.length * FONT * 0.58;
}

function legendRows(items: LegendItem[], width: number): LegendItem[][] {
  const rows: LegendItem[][] = [[]];
  let x = 0;
  for (const item of items) {
    const w = 22 + textWidth(item.label) + 14;
    if (x + w > width && rows[rows.length - 1].length > 0) {
      rows.push([]);
      x = 0;
    }
    rows[rows.length - 1].push(item);
    x += w;
  }
  return items.length ? rows : [];
}

function legendSvg(rows: LegendItem[][], left: number, top: number): string {
  const out: string[] = ['<g class="legend">'];
  rows.forEach((row, ri) => {
    let x = left;
    const y = top + ri * 16 + 8;
    for (const item of row) {
      if (item.kind === 'box') out.push(`<rect x="${c(x)}" y="${c(y - 5)}" width="14" height="10" fill="${item.color}"/>`);
      else if (item.kind === 'dot') out.push(`<circle cx="${c(x + 7)}" cy="${c(y)}" r="4" fill="${item.color}"/>`);
      else out.push(`<line x1="${c(x)}" y1="${c(y)}" x2="${c(x + 16)}" y2="${c(y)}" stroke="${item.color}" stroke-width="2"${item.kind === 'dash' ? ' stroke-dasharray="4 3"' : ''}/>`);
      out.push(`<text x="${c(x + 20)}" y="${c(y + 4)}">${esc(item.label)}</text>`);
      x += 22 + textWidth(item.label) + 14;
    }
  });
  out.push('</g>');
  return out.join('');
}

interface FrameOptions {
  id: string;
  title: string;
  note?: string;
  height?: number;
  legend?: LegendItem[];
  /** Extra room on the right for a second axis. */
  rightAxis?: boolean;
  /** Room between the legend and the plot (marker labels). */
  extraTop?: number;
}

/** The plot box for a chart, after room for the legend and axes. */
function layout(opts: FrameOptions): { box: Box; height: number; rows: LegendItem[][] } {
  const height = opts.height ?? 250;
  const right = W - (opts.rightAxis ? 52 : 24);
  const rows = legendRows(opts.legend ?? [], right - 64);
  const top = 8 + rows.length * 16 + (rows.length ? 6 : 0) + (opts.extraTop ?? 0);
  return { box: { left: 64, top, right, bottom: height - 42 }, height, rows };
}

function figure(opts: FrameOptions, height: number, inner: string, after = ''): string {
  const note = opts.note ? ` <span class="note">${esc(opts.note)}</span>` : '';
  return (
    `<figure class="chart" id="chart-${esc(opts.id)}"><figcaption><strong>${esc(opts.title)}</strong>${note}</figcaption>` +
    `<svg data-chart="${esc(opts.id)}" viewBox="0 0 ${W} ${height}" width="${W}" height="${height}" role="img" aria-label="${esc(opts.title)}" ` +
    `font-family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif" font-size="${FONT}" fill="${INK}">` +
    `${inner}</svg>${after}</figure>`
  );
}

function axes(box: Box, x: Scale, y: Scale, xTitle: string, yTitle: string, y2?: Scale, y2Title?: string): string {
  const out: string[] = ['<g class="axes">'];
  for (const t of y.ticks) {
    const py = at(y, t);
    out.push(`<line x1="${c(box.left)}" y1="${c(py)}" x2="${c(box.right)}" y2="${c(py)}" stroke="${GRID}"/>`);
    out.push(`<text x="${c(box.left - 6)}" y="${c(py + 4)}" text-anchor="end">${esc(y.label(t))}</text>`);
  }
  for (const t of x.ticks) {
    const px = at(x, t);
    out.push(`<line x1="${c(px)}" y1="${c(box.top)}" x2="${c(px)}" y2="${c(box.bottom)}" stroke="${GRID}" stroke-width="0.6"/>`);
    out.push(`<line x1="${c(px)}" y1="${c(box.bottom)}" x2="${c(px)}" y2="${c(box.bottom + 4)}" stroke="${INK}"/>`);
    out.push(`<text x="${c(px)}" y="${c(box.bottom + 16)}" text-anchor="middle">${esc(x.label(t))}</text>`);
  }
  if (y2) {
    for (const t of y2.ticks) {
      const py = at(y2, t);
      out.push(`<line x1="${c(box.right)}" y1="${c(py)}" x2="${c(box.right + 4)}" y2="${c(py)}" stroke="${INK}"/>`);
      out.push(`<text x="${c(box.right + 7)}" y="${c(py + 4)}">${esc(y2.label(t))}</text>`);
    }
    out.push(`<line x1="${c(box.right)}" y1="${c(box.top)}" x2="${c(box.right)}" y2="${c(box.bottom)}" stroke="${INK}"/>`);
    if (y2Title) {
      const cy = (box.top + box.bottom) / 2;
      out.push(`<text transform="translate(${c(W - 4)} ${c(cy)}) rotate(-90)" text-anchor="middle">${esc(y2Title)}</text>`);
    }
  }
  out.push(`<line x1="${c(box.left)}" y1="${c(box.bottom)}" x2="${c(box.right)}" y2="${c(box.bottom)}" stroke="${INK}"/>`);
  out.push(`<line x1="${c(box.left)}" y1="${c(box.top)}" x2="${c(box.left)}" y2="${c(box.bottom)}" stroke="${INK}"/>`);
  out.push(`<text x="${c((box.left + box.right) / 2)}" y="${c(box.bottom + 34)}" text-anchor="middle">${esc(xTitle)}</text>`);
  const cy = (box.top + box.bottom) / 2;
  out.push(`<text transform="translate(14 ${c(cy)}) rotate(-90)" text-anchor="middle">${esc(yTitle)}</text>`);
  out.push('</g>');
  return out.join('');
}

/** A chart with nothing to plot still gets its frame, so the page layout and checks stay uniform. */
function emptyChart(opts: FrameOptions, message: string): string {
  const height = 110;
  return figure(
    opts,
    height,
    `<rect class="empty" x="1" y="1" width="${W - 2}" height="${height - 2}" fill="#fafafa" stroke="${GRID}"/>` +
      `<text x="${W / 2}" y="${height / 2 + 4}" text-anchor="middle" fill="#777">${esc(message)}</text>`,
  );
}

/** "M x y L x y …", starting a new segment after any gap (a non-finite value). */
function linePath(xs: number[], ys: number[]): string {
  const parts: string[] = [];
  let pen = false;
  for (let i = 0; i < xs.length; i++) {
    if (!Number.isFinite(xs[i]) || !Number.isFinite(ys[i])) {
      pen = false;
      continue;
    }
    parts.push(`${pen ? 'L' : 'M'}${c(xs[i])} ${c(ys[i])}`);
    pen = true;
  }
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------
// Replay charts

function latencyHistogram(id: string, title: string, values: number[], marks: Percentiles): string {
  const opts: FrameOptions = {
    id,
    title,
    rightAxis: true,
    legend: [
      { label: 'requests per bin', color: '#9ecae1', kind: 'box' },
      { label: 'cumulative % (right axis)', color: INK, kind: 'line' },
      { label: 'p50 / p90 / p99', color: '#d62728', kind: 'dash' },
    ],
  };
  const vals = values.filter(finite);
  if (vals.length === 0) return emptyChart(opts, 'No completed requests with this measurement');
  const { box, height, rows } = layout({ ...opts, height: 290, extraTop: MARK_ROWS * MARK_ROW_HEIGHT });
  const x = autoScale(vals, box.left, box.right);
  opts.note = `${fmt(vals.length, 0)} requests${x.log ? ', log scale' : ''}`;

  const bins = 40;
  const counts = new Array<number>(bins).fill(0);
  const edge = (i: number): number => (x.log ? x.d0 * (x.d1 / x.d0) ** (i / bins) : x.d0 + ((x.d1 - x.d0) * i) / bins);
  const span = x.log ? Math.log10(x.d1 / x.d0) : x.d1 - x.d0;
  for (const v of vals) {
    const t = x.log ? Math.log10(Math.max(v, x.d0) / x.d0) / span : (v - x.d0) / span;
    counts[Math.min(bins - 1, Math.max(0, Math.floor(t * bins)))]++;
  }
  const y = linearScale(0, Math.max(...counts), box.bottom, box.top, 5, { integer: true });
  const y2 = linearScale(0, 100, box.bottom, box.top, 4);
  y2.label = (v) => `${v}%`;

  const out: string[] = [legendSvg(rows, box.left, 4), axes(box, x, y, `${title} (ms)`, 'requests', y2, 'cumulative')];
  out.push('<g class="bars" fill="#9ecae1" stroke="#6baed6" stroke-width="0.5">');
  for (let i = 0; i < bins; i++) {
    if (counts[i] === 0) continue;
    const x0 = at(x, edge(i));
    const x1 = at(x, edge(i + 1));
    const y0 = at(y, counts[i]);
    out.push(
      `<rect x="${c(x0)}" y="${c(y0)}" width="${c(Math.max(0.5, x1 - x0))}" height="${c(box.bottom - y0)}"><title>${esc(`${short(edge(i))}–${short(edge(i + 1))} ms: ${counts[i]} requests`)}</title></rect>`,
    );
  }
  out.push('</g>');
  const cx: number[] = [at(x, edge(0))];
  const cy: number[] = [at(y2, 0)];
  let cum = 0;
  for (let i = 0; i < bins; i++) {
    cum += counts[i];
    cx.push(at(x, edge(i + 1)));
    cy.push(at(y2, (cum / vals.length) * 100));
  }
  out.push(`<path class="cdf" d="${linePath(cx, cy)}" fill="none" stroke="${INK}" stroke-width="1.5"/>`);
  out.push(percentileMarks(box, x, marks));
  return figure(opts, height, out.join(''));
}

/** Room above the plot for the p50/p90/p99 labels, one row each. */
const MARK_ROWS = 3;
const MARK_ROW_HEIGHT = 13;

/**
 * Dashed verticals at p50/p90/p99, labelled in a staircase above the plot: the k-th marker's label is on
 * row k and its line starts below it, so no later marker's line crosses an earlier label.
 */
function percentileMarks(box: Box, x: Scale, p: Percentiles): string {
  const marks = (
    [
      ['p50', p.p50],
      ['p90', p.p90],
      ['p99', p.p99],
    ] as Array<[string, number | null]>
  ).filter((m): m is [string, number] => finite(m[1]));
  const out: string[] = ['<g class="marks">'];
  const top = box.top - MARK_ROWS * MARK_ROW_HEIGHT;
  marks.forEach(([name, v], row) => {
    const px = Math.min(box.right, Math.max(box.left, at(x, v)));
    const label = `${name} ${short(v)} ms`;
    const anchorEnd = px + 4 + textWidth(label) > W - 4;
    const ty = top + (row + 1) * MARK_ROW_HEIGHT - 3;
    out.push(`<line x1="${c(px)}" y1="${c(ty - 9)}" x2="${c(px)}" y2="${c(box.bottom)}" stroke="#d62728" stroke-width="1.2" stroke-dasharray="4 3"><title>${esc(label)}</title></line>`);
    out.push(`<text class="halo" x="${c(anchorEnd ? px - 4 : px + 4)}" y="${c(ty)}" text-anchor="${anchorEnd ? 'end' : 'start'}" fill="#b21f1f">${esc(label)}</text>`);
  });
  out.push('</g>');
  return out.join('');
}

function isDone(r: RequestResult): boolean {
  return r.error === undefined && finite(r.finish_ms);
}

/** Output tokens and completions per simulated-time bucket. */
export interface ThroughputBuckets {
  /** Bucket width, a nice 1-2-5 number of ms giving about 90 buckets. */
  widthMs: number;
  /** Time the buckets cover from `originMs`: whole buckets, so the last may extend past the run. */
  spanMs: number;
  /** Output tokens per bucket: the first at first_token_ms, the rest spread evenly until finish_ms. */
  tokens: number[];
  /** Requests finishing in each bucket. */
  completions: number[];
}

/** Buckets completed requests' output over simulated time from `originMs` (the first arrival). */
export function throughputBuckets(results: readonly RequestResult[], originMs: number, minSpanMs = 0): ThroughputBuckets {
  const done = results.filter(isDone);
  let end = 0;
  for (const r of done) end = Math.max(end, (r.finish_ms as number) - originMs);
  const runMs = Math.max(end, finite(minSpanMs) ? minSpanMs : 0, 1);
  const widthMs = niceStep(runMs / 90);
  const n = Math.max(1, Math.ceil(runMs / widthMs - 1e-9));
  const tokens = new Array<number>(n).fill(0);
  const completions = new Array<number>(n).fill(0);
  const idx = (ms: number): number => Math.min(n - 1, Math.max(0, Math.floor(ms / widthMs)));
  const spread = (a: number, b: number, mass: number): void => {
    if (!(b > a)) {
      tokens[idx(b)] += mass;
      return;
    }
    for (let i = idx(a); i <= idx(b); i++) {
      // The first and last buckets also take what lies outside the range (clamped times).
      const lo = i === 0 ? -Infinity : i * widthMs;
      const hi = i === n - 1 ? Infinity : (i + 1) * widthMs;
      const overlap = Math.min(b, hi) - Math.max(a, lo);
      if (overlap > 0) tokens[i] += (mass * overlap) / (b - a);
    }
  };
  for (const r of done) {
    const f = (r.finish_ms as number) - originMs;
    completions[idx(f)]++;
    if (!(r.output_tokens > 0)) continue;
    const first = finite(r.first_token_ms) ? Math.min(r.first_token_ms - originMs, f) : f;
    tokens[idx(first)] += 1;
    if (r.output_tokens > 1) spread(first, f, r.output_tokens - 1);
  }
  return { widthMs, spanMs: n * widthMs, tokens, completions };
}

function throughputCharts(results: RequestResult[], t0: number, spanHintMs: number, summary: ReplaySummary): string {
  const tokOpts: FrameOptions = {
    id: 'throughput-tokens',
    title: 'Output tokens/s over simulated time',
    legend: [
      { label: 'output tokens/s per bucket', color: '#4e79a7', kind: 'line' },
      { label: 'run average', color: '#d62728', kind: 'dash' },
    ],
  };
  const reqOpts: FrameOptions = {
    id: 'throughput-requests',
    title: 'Completed requests/s over simulated time',
    legend: [
      { label: 'completions/s per bucket', color: '#59a14f', kind: 'box' },
      { label: 'run average', color: '#d62728', kind: 'dash' },
    ],
  };
  const done = results.filter(isDone).length;
  if (done === 0) return emptyChart(tokOpts, 'No completed requests') + emptyChart(reqOpts, 'No completed requests');
  const { widthMs, spanMs, tokens, completions } = throughputBuckets(results, t0, spanHintMs);
  // Every bucket is a whole width (a partial last one would turn a single late finish into a spike).
  const tokRate = tokens.map((v) => v / (widthMs / 1000));
  const reqRate = completions.map((v) => v / (widthMs / 1000));
  const tu = timeUnit(spanMs);
  const note = `bucket ${duration(widthMs)}, ${fmt(done, 0)} completed requests`;
  return (
    stepChart({ ...tokOpts, note }, tokRate, widthMs, spanMs, tu, 'output tokens/s', '#4e79a7', summary.output_tokens_per_s, false) +
    stepChart({ ...reqOpts, note }, reqRate, widthMs, spanMs, tu, 'requests/s', '#59a14f', summary.requests_per_s, true)
  );
}

function stepChart(
  opts: FrameOptions,
  rates: number[],
  widthMs: number,
  spanMs: number,
  tu: { div: number; unit: string },
  yTitle: string,
  color: string,
  average: number,
  bars: boolean,
): string {
  const { box, height, rows } = layout({ ...opts, height: 220 });
  const x = linearScale(0, spanMs / tu.div, box.left, box.right, 8, { tight: true });
  const y = linearScale(0, Math.max(...rates, finite(average) ? average : 0, 0), box.bottom, box.top, 4);
  const out: string[] = [legendSvg(rows, box.left, 4), axes(box, x, y, `simulated time (${tu.unit})`, yTitle)];
  if (bars) {
    out.push(`<g class="bars" fill="${color}" fill-opacity="0.75">`);
    rates.forEach((v, i) => {
      if (!(v > 0)) return;
      const x0 = at(x, (i * widthMs) / tu.div);
      const x1 = at(x, ((i + 1) * widthMs) / tu.div);
      const y0 = at(y, v);
      out.push(`<rect x="${c(x0)}" y="${c(y0)}" width="${c(Math.max(0.5, x1 - x0 - 0.5))}" height="${c(box.bottom - y0)}"/>`);
    });
    out.push('</g>');
  } else {
    const xs: number[] = [];
    const ys: number[] = [];
    rates.forEach((v, i) => {
      xs.push(at(x, (i * widthMs) / tu.div), at(x, ((i + 1) * widthMs) / tu.div));
      ys.push(at(y, v), at(y, v));
    });
    const line = linePath(xs, ys);
    out.push(`<path class="area" d="M${c(xs[0])} ${c(box.bottom)}${line.replace(/^M/, 'L')}L${c(xs[xs.length - 1])} ${c(box.bottom)}Z" fill="${color}" fill-opacity="0.15"/>`);
    out.push(`<path class="series" d="${line}" fill="none" stroke="${color}" stroke-width="1.5"/>`);
  }
  if (finite(average) && average > 0) {
    const py = at(y, average);
    out.push(`<line x1="${c(box.left)}" y1="${c(py)}" x2="${c(box.right)}" y2="${c(py)}" stroke="#d62728" stroke-dasharray="5 4"><title>${esc(`run average ${short(average)} ${yTitle}`)}</title></line>`);
  }
  return figure(opts, height, out.join(''));
}

/** Running, waiting or KV usage per worker: a line each for a few workers, min/median/max bands for many. */
function timelineChart(id: string, title: string, tl: Timeline, pick: (w: Timeline['workers'][number]) => number[] | undefined, yTitle: string, percent: boolean): string {
  const workers = tl.workers ?? [];
  const times = (tl.t_ms ?? []).filter(finite);
  const base: FrameOptions = { id, title };
  if (times.length === 0 || workers.length === 0 || times.length !== (tl.t_ms ?? []).length) {
    return emptyChart(base, times.length === 0 || workers.length === 0 ? 'No timeline samples' : 'Timeline has invalid sample times');
  }
  const n = times.length;
  const scaleV = percent ? 100 : 1;
  const series = workers.map((w) => {
    const arr = pick(w) ?? [];
    return Array.from({ length: n }, (_, i) => (finite(arr[i]) ? arr[i] * scaleV : NaN));
  });
  const many = workers.length > MAX_WORKER_LINES;
  const legend: LegendItem[] = many
    ? [
        { label: `min–max across ${workers.length} workers`, color: '#c6dbef', kind: 'box' },
        { label: 'median worker', color: '#2171b5', kind: 'line' },
        { label: 'mean', color: '#f28e2b', kind: 'dash' },
      ]
    : workers.map((_, i) => ({ label: `worker ${i}`, color: PALETTE[i % PALETTE.length], kind: 'line' as const }));
  const opts: FrameOptions = { ...base, legend, note: `${workers.length} worker${workers.length === 1 ? '' : 's'}, ${n} samples` };
  const { box, height, rows } = layout(opts);
  const tMax = Math.max(...times);
  const tMin = Math.min(0, ...times);
  const tu = timeUnit(tMax - tMin);
  const x = linearScale(tMin / tu.div, tMax / tu.div, box.left, box.right, 8, { tight: tMax > tMin });
  let vMax = 0;
  for (const s of series) for (const v of s) if (v > vMax) vMax = v;
  // KV usage: the full 0–100% when it gets anywhere near full, else zoomed in so low usage still shows its shape.
  const y = percent
    ? linearScale(0, vMax >= 40 ? Math.max(100, vMax) : Math.max(vMax, 1), box.bottom, box.top, 5)
    : linearScale(0, Math.max(vMax, 1), box.bottom, box.top, 5, { integer: true });
  if (percent) {
    const plain = y.label;
    y.label = (v) => `${plain(v)}%`;
  }
  const xs = times.map((t) => at(x, t / tu.div));
  const out: string[] = [legendSvg(rows, box.left, 4), axes(box, x, y, `simulated time (${tu.unit})`, yTitle)];
  if (!many) {
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      out.push(`<path class="series" d="${linePath(xs, s.map((v) => (Number.isFinite(v) ? at(y, v) : NaN)))}" fill="none" stroke="${color}" stroke-width="1.4"><title>worker ${i}</title></path>`);
    });
  } else {
    const lo: number[] = [];
    const hi: number[] = [];
    const med: number[] = [];
    const mean: number[] = [];
    for (let i = 0; i < n; i++) {
      const col = series.map((s) => s[i]).filter(Number.isFinite).sort((a, b) => a - b);
      if (col.length === 0) {
        lo.push(NaN);
        hi.push(NaN);
        med.push(NaN);
        mean.push(NaN);
        continue;
      }
      lo.push(at(y, col[0]));
      hi.push(at(y, col[col.length - 1]));
      const mid = (col.length - 1) / 2;
      med.push(at(y, (col[Math.floor(mid)] + col[Math.ceil(mid)]) / 2));
      mean.push(at(y, col.reduce((a, b) => a + b, 0) / col.length));
    }
    // One band polygon per run of valid samples (a gap in the data is a gap in the band).
    let start = -1;
    const bands: string[] = [];
    for (let i = 0; i <= n; i++) {
      const ok = i < n && Number.isFinite(lo[i]);
      if (ok && start < 0) start = i;
      if (!ok && start >= 0) {
        const pts: string[] = [];
        for (let j = start; j < i; j++) pts.push(`${c(xs[j])},${c(hi[j])}`);
        for (let j = i - 1; j >= start; j--) pts.push(`${c(xs[j])},${c(lo[j])}`);
        bands.push(`<polygon points="${pts.join(' ')}"/>`);
        start = -1;
      }
    }
    out.push(`<g class="band" fill="#c6dbef" stroke="#9ecae1" stroke-width="0.5">${bands.join('')}</g>`);
    out.push(`<path class="series" d="${linePath(xs, med)}" fill="none" stroke="#2171b5" stroke-width="1.6"><title>median worker</title></path>`);
    out.push(`<path class="series" d="${linePath(xs, mean)}" fill="none" stroke="#f28e2b" stroke-width="1.2" stroke-dasharray="4 3"><title>mean</title></path>`);
  }
  return figure(opts, height, out.join(''));
}

/** Requests each worker ran (completed, failed), from results' `worker`. */
function workerBars(results: RequestResult[], tl: Timeline): string {
  const opts: FrameOptions = {
    id: 'worker-requests',
    title: 'Requests per worker',
    legend: [
      { label: 'completed', color: '#4e79a7', kind: 'box' },
      { label: 'failed', color: '#e15759', kind: 'box' },
      { label: 'mean per worker', color: INK, kind: 'dash' },
    ],
  };
  // Single-engine replays carry no `worker`: every request went to worker 0.
  const single = (tl.workers?.length ?? 0) <= 1 && results.every((r) => r.worker === undefined);
  const workerOf = (r: RequestResult): number | null => (finite(r.worker) && r.worker >= 0 ? Math.floor(r.worker) : single ? 0 : null);
  let maxIdx = -1;
  let unrouted = 0;
  for (const r of results) {
    const w = workerOf(r);
    if (w === null) unrouted++;
    else maxIdx = Math.max(maxIdx, w);
  }
  if (maxIdx < 0) {
    const why = results.length === 0 ? 'No requests' : results.every((r) => r.worker === undefined) ? 'Results carry no worker assignment' : 'No request was routed to a worker';
    return emptyChart(opts, why);
  }
  const nW = Math.max(maxIdx + 1, tl.workers?.length ?? 0);
  const ok = new Array<number>(nW).fill(0);
  const bad = new Array<number>(nW).fill(0);
  for (const r of results) {
    const w = workerOf(r);
    if (w === null) continue;
    if (isDone(r)) ok[w]++;
    else bad[w]++;
  }
  const totals = ok.map((v, i) => v + bad[i]);
  const mean = totals.reduce((a, b) => a + b, 0) / nW;
  const most = Math.max(...totals);
  opts.note =
    `${nW} worker${nW === 1 ? '' : 's'}; min ${fmt(Math.min(...totals), 0)}, mean ${fmt(mean, 1)}, max ${fmt(most, 0)}` +
    (mean > 0 ? ` (max/mean ${fmt(most / mean, 2)})` : '') +
    (unrouted ? `; ${fmt(unrouted, 0)} not routed to a worker` : '');
  const { box, height, rows } = layout(opts);
  const y = linearScale(0, Math.max(most, 1), box.bottom, box.top, 5, { integer: true });
  const slot = (box.right - box.left) / nW;
  const every = Math.max(1, Math.ceil(nW / 24));
  // The x axis is a band scale; ticks are drawn here, so the shared axes get none.
  const x: Scale = { log: false, d0: 0, d1: nW, r0: box.left, r1: box.right, ticks: [], label: String };
  const out: string[] = [legendSvg(rows, box.left, 4), axes(box, x, y, 'worker', 'requests')];
  out.push('<g class="bars">');
  for (let i = 0; i < nW; i++) {
    const x0 = box.left + i * slot + slot * 0.12;
    const w = Math.max(0.5, slot * 0.76);
    const yOk = at(y, ok[i]);
    const yAll = at(y, totals[i]);
    const tip = `<title>${esc(`worker ${i}: ${ok[i]} completed, ${bad[i]} failed`)}</title>`;
    if (ok[i] > 0) out.push(`<rect x="${c(x0)}" y="${c(yOk)}" width="${c(w)}" height="${c(box.bottom - yOk)}" fill="#4e79a7">${tip}</rect>`);
    if (bad[i] > 0) out.push(`<rect x="${c(x0)}" y="${c(yAll)}" width="${c(w)}" height="${c(yOk - yAll)}" fill="#e15759">${tip}</rect>`);
    if (i % every === 0) {
      const cx = box.left + (i + 0.5) * slot;
      out.push(`<text x="${c(cx)}" y="${c(box.bottom + 16)}" text-anchor="middle">${i}</text>`);
    }
  }
  out.push('</g>');
  if (mean > 0) {
    const py = at(y, mean);
    out.push(`<line x1="${c(box.left)}" y1="${c(py)}" x2="${c(box.right)}" y2="${c(py)}" stroke="${INK}" stroke-dasharray="5 4"><title>${esc(`mean ${fmt(mean, 1)} requests`)}</title></line>`);
  }
  return figure(opts, height, out.join(''));
}

// ---------------------------------------------------------------------------------------------
// Tables

function table(headers: string[], rows: string[][], opts: { cls?: string; rowClass?: (i: number) => string; numeric?: boolean[] } = {}): string {
  const num = (i: number): string => (opts.numeric?.[i] ? ' class="num"' : '');
  const head = headers.map((h, i) => `<th${num(i)}>${h}</th>`).join('');
  const body = rows
    .map((r, ri) => {
      const cls = opts.rowClass?.(ri);
      return `<tr${cls ? ` class="${cls}"` : ''}>${r.map((cell, i) => `<td${num(i)}>${cell}</td>`).join('')}</tr>`;
    })
    .join('');
  return `<table${opts.cls ? ` class="${opts.cls}"` : ''}><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function kvTable(rows: Array<[string, string]>): string {
  return `<table class="kv"><tbody>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td class="num">${esc(v)}</td></tr>`).join('')}</tbody></table>`;
}

function latencyRow(name: string, p: Percentiles | undefined): string[] {
  return [esc(name), fmt(p?.p50), fmt(p?.p90), fmt(p?.p99), fmt(p?.mean)].map((v, i) => (i === 0 ? v : esc(v)));
}

function summaryTables(s: ReplaySummary): string {
  const parts: string[] = [];
  parts.push('<div class="tables">');
  parts.push(
    `<div><h3>Run</h3>${kvTable([
      ['requests', fmt(s.requests, 0)],
      ['completed', fmt(s.completed, 0)],
      ['errors', fmt(s.errors, 0)],
      ['simulated duration', duration(s.duration_ms)],
      ['engine passes', fmt(s.passes, 0)],
      ['input tokens', fmt(s.input_tokens, 0)],
      ['output tokens', fmt(s.output_tokens, 0)],
      ['cached tokens', fmt(s.cached_tokens, 0)],
      ['prefix hit rate', pct(s.prefix_hit_rate)],
      ['preemptions', fmt(s.preemptions, 0)],
      ['requests/s', fmt(s.requests_per_s, 3)],
      ['output tokens/s', fmt(s.output_tokens_per_s, 1)],
      ['total tokens/s', fmt(s.total_tokens_per_s, 1)],
    ])}</div>`,
  );
  const lat = [latencyRow('TTFT', s.ttft_ms), latencyRow('ITL (mean per request)', s.itl_ms), latencyRow('E2E', s.e2e_ms)];
  const dg = s.disagg;
  if (dg) lat.push(latencyRow('prefill', dg.prefill_ms), latencyRow('handoff', dg.handoff_ms), latencyRow('KV transfer', dg.transfer_ms));
  parts.push(`<div><h3>Latency (ms)</h3>${table(['', 'p50', 'p90', 'p99', 'mean'], lat, { numeric: [false, true, true, true, true] })}</div>`);
  parts.push('</div>');
  if (dg) {
    const pool = (name: string, p: typeof dg.prefill): string[] => [esc(name), fmt(p.workers, 0), fmt(p.passes, 0), esc(duration(p.busy_ms)), esc(pct(p.busy_fraction))];
    parts.push(`<h3>Disaggregated pools</h3>${table(['pool', 'workers', 'passes', 'busy', 'busy fraction'], [pool('prefill', dg.prefill), pool('decode', dg.decode)], { numeric: [false, true, true, true, true] })}`);
    const kv =
      dg.kv_bytes_per_token === null
        ? 'KV transfer takes no time (KV bytes per token unknown)'
        : `KV transfer ${fmt(dg.kv_transfer_bandwidth_gbps)} GB/s × ${fmt(dg.kv_bytes_per_token, 0)} B/token (${dg.kv_transfer_timing_mode})`;
    parts.push(`<p>${esc(kv)}</p>`);
  }
  const known = new Set(['requests', 'completed', 'errors', 'duration_ms', 'input_tokens', 'output_tokens', 'cached_tokens', 'prefix_hit_rate', 'preemptions', 'requests_per_s', 'output_tokens_per_s', 'total_tokens_per_s', 'ttft_ms', 'itl_ms', 'e2e_ms', 'passes', 'disagg', 'fleet']);
  const extra = s as unknown as Record<string, unknown>;
  if (extra.fleet !== undefined && extra.fleet !== null) parts.push(`<h3>Fleet</h3>${genericSection(extra.fleet)}`);
  const others = Object.keys(extra).filter((k) => !known.has(k));
  if (others.length) parts.push(`<h3>Other summary fields</h3>${genericSection(Object.fromEntries(others.map((k) => [k, extra[k]])))}`);
  return parts.join('');
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A top-level section: its simple fields as one key/value table, each nested table under its own heading. */
function genericSection(v: unknown): string {
  if (!isPlainObject(v)) return `<div class="generic">${generic(v, 0)}</div>`;
  const simple = Object.keys(v).filter((k) => v[k] === null || typeof v[k] !== 'object');
  const nested = Object.keys(v).filter((k) => !simple.includes(k));
  const parts: string[] = [];
  if (simple.length) parts.push(generic(Object.fromEntries(simple.map((k) => [k, v[k]])), 0));
  for (const k of nested) parts.push(`<h4>${esc(k)}</h4>${generic(v[k], 1)}`);
  return `<div class="generic">${parts.join('')}</div>`;
}

/** A column name that may wrap after its separators (long snake_case names would widen the table). */
function columnName(name: string): string {
  return esc(name).replace(/([_.])/g, '$1<wbr>');
}

/** Any JSON-like value as nested tables: objects as key/value rows, arrays of objects as one row each. */
function generic(v: unknown, depth: number): string {
  if (v === null || v === undefined) return DASH;
  if (typeof v === 'number') return esc(Number.isInteger(v) ? fmt(v, 0) : adaptive(v, 3));
  if (typeof v === 'string' || typeof v === 'boolean' || typeof v === 'bigint') return esc(String(v));
  if (depth > 4) return `<code>${esc(truncate(safeJson(v), 200))}</code>`;
  if (Array.isArray(v)) {
    if (v.length === 0) return '(none)';
    if (v.every(isPlainObject)) {
      const flat = v.map(flatten);
      const cols: string[] = [];
      for (const row of flat) for (const k of Object.keys(row)) if (!cols.includes(k)) cols.push(k);
      const shown = cols.slice(0, 40);
      const rows = flat.map((row) => shown.map((k) => generic(row[k], depth + 1)));
      const numeric = shown.map((k) => flat.every((row) => row[k] === undefined || row[k] === null || typeof row[k] === 'number'));
      return table(shown.map(columnName), rows, { cls: 'generic', numeric });
    }
    if (v.every((x) => !isPlainObject(x) && !Array.isArray(x))) {
      const shown = v.slice(0, 64).map((x) => generic(x, depth + 1));
      return shown.join(', ') + (v.length > 64 ? `, … (${v.length} values)` : '');
    }
    return table(['#', 'value'], v.map((x, i) => [String(i), generic(x, depth + 1)]), { cls: 'generic' });
  }
  if (isPlainObject(v)) {
    const keys = Object.keys(v);
    if (keys.length === 0) return '(empty)';
    // Records of flat records (e.g. one spread per figure): one row each, their fields as columns.
    if (keys.length > 1 && keys.every((k) => isFlatRecord(v[k]))) {
      const cols: string[] = [];
      for (const k of keys) for (const c2 of Object.keys(v[k] as object)) if (!cols.includes(c2)) cols.push(c2);
      const rows = keys.map((k) => [`<b>${esc(k)}</b>`, ...cols.map((c2) => generic((v[k] as Record<string, unknown>)[c2], depth + 1))]);
      return table(['', ...cols.map(columnName)], rows, { cls: 'generic', numeric: [false, ...cols.map(() => true)] });
    }
    return `<table class="kv generic"><tbody>${keys.map((k) => `<tr><th>${esc(k)}</th><td>${generic(v[k], depth + 1)}</td></tr>`).join('')}</tbody></table>`;
  }
  return esc(String(v));
}

/** A record whose values are all primitives (or null). */
function isFlatRecord(v: unknown): v is Record<string, unknown> {
  return isPlainObject(v) && Object.keys(v).length > 0 && Object.values(v).every((x) => x === null || typeof x !== 'object');
}

/** A table row's nested flat records become dotted columns (ttft_ms → ttft_ms.p50, ttft_ms.p90, …). */
function flatten(row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(row)) {
    if (isFlatRecord(v)) for (const [k2, v2] of Object.entries(v)) out[`${k}.${k2}`] = v2;
    else out[k] = v;
  }
  return out;
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

function errorTable(results: RequestResult[]): string {
  const byReason = new Map<string, number>();
  for (const r of results) if (r.error !== undefined) byReason.set(r.error, (byReason.get(r.error) ?? 0) + 1);
  if (byReason.size === 0) return '';
  const sorted = [...byReason.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const shown = sorted.slice(0, 20).map(([reason, n]) => [`<code>${esc(truncate(reason, 300))}</code>`, fmt(n, 0)]);
  const rest = sorted.slice(20).reduce((a, [, n]) => a + n, 0);
  if (rest) shown.push([esc(`${sorted.length - 20} other reasons`), fmt(rest, 0)]);
  return `<h3>Errors</h3>${table(['reason', 'requests'], shown, { numeric: [false, true] })}`;
}

// ---------------------------------------------------------------------------------------------
// Pages

function header(title: string, command: string, kind: string, figures: Array<[string, string]>): string {
  const cards = figures.map(([k, v]) => `<div class="fig"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`).join('');
  return (
    `<header><p class="kind">dynamo-mocker ${esc(kind)} report</p><h1>${esc(title)}</h1>` +
    (command ? `<pre class="cmd"><code>${esc(command)}</code></pre>` : '') +
    `<div class="figures">${cards}</div></header>`
  );
}

function replayBody(d: ReplayReportData): string {
  const s = d.summary;
  const results = d.results ?? [];
  const tl: Timeline = d.timeline ?? { t_ms: [], workers: [] };
  const done = results.filter(isDone);
  let t0 = Infinity;
  for (const r of results) if (finite(r.arrival_ms) && r.arrival_ms < t0) t0 = r.arrival_ms;
  if (!finite(t0)) t0 = 0;
  const workers = tl.workers?.length ?? 0;
  const parts: string[] = [
    header(d.title, d.command, 'replay', [
      ['requests', fmt(s.requests, 0)],
      ['completed', fmt(s.completed, 0)],
      ['errors', fmt(s.errors, 0)],
      ['simulated duration', duration(s.duration_ms)],
      ['requests/s', fmt(s.requests_per_s, 3)],
      ['output tokens/s', fmt(s.output_tokens_per_s, 1)],
      ['prefix hit rate', pct(s.prefix_hit_rate)],
      ['preemptions', fmt(s.preemptions, 0)],
      ...(workers ? ([['workers', fmt(workers, 0)]] as Array<[string, string]>) : []),
    ]),
  ];
  parts.push('<section><h2>Latency distributions</h2>');
  parts.push(latencyHistogram('ttft', 'TTFT', done.map((r) => r.ttft_ms as number), s.ttft_ms));
  parts.push(latencyHistogram('itl', 'ITL (mean per request)', done.map((r) => r.mean_itl_ms as number), s.itl_ms));
  parts.push(latencyHistogram('e2e', 'E2E', done.map((r) => r.e2e_ms as number), s.e2e_ms));
  parts.push('</section><section><h2>Throughput</h2>');
  parts.push(throughputCharts(results, t0, s.duration_ms, s));
  parts.push('</section><section><h2>Workers</h2>');
  parts.push(timelineChart('running', 'Running requests per worker', tl, (w) => w.running, 'running requests', false));
  parts.push(timelineChart('waiting', 'Waiting requests per worker', tl, (w) => w.waiting, 'waiting requests', false));
  parts.push(timelineChart('kv-usage', 'KV cache usage per worker', tl, (w) => w.kv_usage, 'KV blocks in use', true));
  parts.push(workerBars(results, tl));
  parts.push('</section><section><h2>Summary</h2>');
  parts.push(summaryTables(s));
  parts.push(errorTable(results));
  parts.push('</section>');
  return parts.join('\n');
}

function configText(row: SweepRow, keys: string[]): string {
  return keys
    .filter((k) => row.config?.[k] !== undefined)
    .map((k) => `${k}=${row.config[k]}`)
    .join(' ');
}

function paretoChart(d: SweepReportData, keys: string[]): string {
  const opts: FrameOptions = {
    id: 'pareto',
    title: 'Throughput against p90 TTFT',
    height: 330,
    legend: [
      { label: 'Pareto front', color: '#e15759', kind: 'dot' },
      { label: 'other configurations', color: '#9e9e9e', kind: 'dot' },
    ],
  };
  const rows = d.rows ?? [];
  const pts = rows.map((r, i) => ({ r, i, x: r.ttft_ms?.p90, y: r.output_tokens_per_s })).filter((p): p is { r: SweepRow; i: number; x: number; y: number } => finite(p.x) && finite(p.y));
  const missing = rows.length - pts.length;
  if (pts.length === 0) return emptyChart(opts, rows.length ? 'No configuration has a p90 TTFT (no completed requests)' : 'No sweep rows');
  const front = pts.filter((p) => p.r.pareto).sort((a, b) => a.x - b.x);
  opts.note = `${pts.length} configurations, ${front.length} on the Pareto front` + (missing ? `; ${missing} not plotted (no p90 TTFT)` : '') + '; hover a point for its configuration';
  const { box, height, rows: lrows } = layout(opts);
  const xs = pts.map((p) => p.x);
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  // Linear with room around the points, unless they span decades.
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
  const x = lo > 0 && hi / lo > 20 ? logScale(lo, hi, box.left, box.right) : linearScale(Math.max(0, lo - pad), hi + pad, box.left, box.right, 6);
  const y = linearScale(0, Math.max(...pts.map((p) => p.y)) * 1.08, box.bottom, box.top, 5);
  const out: string[] = [legendSvg(lrows, box.left, 4), axes(box, x, y, `p90 TTFT (ms${x.log ? ', log scale' : ''})`, 'output tokens/s')];
  out.push(`<text x="${c(box.left + 8)}" y="${c(box.top + 14)}" fill="#777">↖ better</text>`);
  if (front.length > 1) {
    out.push(`<path class="front" d="${linePath(front.map((p) => at(x, p.x)), front.map((p) => at(y, p.y)))}" fill="none" stroke="#e15759" stroke-width="1.8"/>`);
  }
  const tip = (p: { r: SweepRow; i: number }): string =>
    `<title>${esc(`#${p.i + 1}${p.r.pareto ? ' (Pareto)' : ''}: ${configText(p.r, keys) || '(no parameters)'}\np90 TTFT ${short(p.r.ttft_ms.p90 as number)} ms, ${short(p.r.output_tokens_per_s)} output tok/s, ${short(p.r.requests_per_s)} req/s`)}</title>`;
  out.push('<g class="points">');
  for (const p of pts.filter((q) => !q.r.pareto)) {
    out.push(`<circle cx="${c(at(x, p.x))}" cy="${c(at(y, p.y))}" r="4" fill="#bdbdbd" stroke="#757575">${tip(p)}</circle>`);
  }
  for (const p of front) out.push(`<circle cx="${c(at(x, p.x))}" cy="${c(at(y, p.y))}" r="5.5" fill="#e15759" stroke="#7f1d1d">${tip(p)}</circle>`);
  out.push('</g>');
  out.push(frontLabels(box, front.map((p) => ({ px: at(x, p.x), py: at(y, p.y), full: truncate(`#${p.i + 1} ${configText(p.r, keys)}`.trim(), 48), short: `#${p.i + 1}` })), pts.map((p) => ({ px: at(x, p.x), py: at(y, p.y) }))));
  // Tooltips do not print: the front's configurations are also listed under the chart.
  const key = front.length
    ? `<p class="key">Pareto front, by p90 TTFT: ${front.map((p) => `<span><b>#${p.i + 1}</b> ${esc(configText(p.r, keys) || '(no parameters)')}</span>`).join('; ')}</p>`
    : '';
  return figure(opts, height, out.join(''), key);
}

interface Rect {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

/**
 * Labels for the Pareto points: the full configuration where it fits, else "#n", else none (the tooltip
 * and the key under the chart still name it). Greedy: first free spot around the point that stays in the plot.
 */
function frontLabels(box: Box, labels: Array<{ px: number; py: number; full: string; short: string }>, points: Array<{ px: number; py: number }>): string {
  const taken: Rect[] = points.map((p) => ({ x0: p.px - 6, y0: p.py - 6, x1: p.px + 6, y1: p.py + 6 }));
  taken.push({ x0: box.left, y0: box.top, x1: box.left + 70, y1: box.top + 20 });
  const hits = (r: Rect): boolean => taken.some((t) => r.x0 < t.x1 && r.x1 > t.x0 && r.y0 < t.y1 && r.y1 > t.y0);
  const out: string[] = ['<g class="labels">'];
  for (const l of labels) {
    let placed = false;
    for (const text of labels.length <= 15 ? [l.full, l.short] : [l.short]) {
      const w = textWidth(text);
      const spots: Array<[number, number, 'start' | 'end' | 'middle']> = [
        [l.px + 8, l.py - 6, 'start'],
        [l.px + 8, l.py + 14, 'start'],
        [l.px - 8, l.py - 6, 'end'],
        [l.px - 8, l.py + 14, 'end'],
        [l.px, l.py - 11, 'middle'],
        [l.px, l.py + 20, 'middle'],
      ];
      for (const [tx, ty, anchor] of spots) {
        const x0 = anchor === 'start' ? tx : anchor === 'end' ? tx - w : tx - w / 2;
        const r: Rect = { x0, y0: ty - 10, x1: x0 + w, y1: ty + 2 };
        if (r.x0 < box.left || r.x1 > box.right || r.y0 < box.top || r.y1 > box.bottom || hits(r)) continue;
        taken.push(r);
        out.push(`<text class="halo" x="${c(tx)}" y="${c(ty)}" text-anchor="${anchor}">${esc(text)}</text>`);
        placed = true;
        break;
      }
      if (placed) break;
    }
  }
  out.push('</g>');
  return out.join('');
}

function sweepBody(d: SweepReportData): string {
  const rows = d.rows ?? [];
  const keys = [...(d.parameters ?? [])];
  for (const r of rows) for (const k of Object.keys(r.config ?? {})) if (!keys.includes(k)) keys.push(k);
  const front = rows.filter((r) => r.pareto);
  const best = rows.reduce<SweepRow | null>((b, r) => (finite(r.output_tokens_per_s) && (!b || r.output_tokens_per_s > b.output_tokens_per_s) ? r : b), null);
  let lowest: SweepRow | null = null;
  for (const r of rows) if (finite(r.ttft_ms?.p90) && (!lowest || r.ttft_ms.p90 < (lowest.ttft_ms.p90 as number))) lowest = r;
  const parts: string[] = [
    header(d.title, d.command, 'sweep', [
      ['configurations', fmt(rows.length, 0)],
      ['on the Pareto front', fmt(front.length, 0)],
      ['best output tokens/s', best ? fmt(best.output_tokens_per_s, 1) : DASH],
      ['lowest p90 TTFT (ms)', lowest ? fmt(lowest.ttft_ms.p90, 1) : DASH],
    ]),
    `<p class="params">Swept: ${keys.length ? keys.map((k) => `<code>${esc(k)}</code>`).join(', ') : DASH}</p>`,
  ];
  parts.push('<section><h2>Pareto front</h2>');
  parts.push(paretoChart(d, keys));
  parts.push('</section><section><h2>All configurations</h2>');
  parts.push('<p class="note">Latencies in ms. ★ marks the Pareto front: no other configuration has both higher output tokens/s and lower p90 TTFT.</p>');
  parts.push(`<div class="wide">${sweepTable(rows, keys)}</div>`);
  parts.push('</section>');
  return parts.join('\n');
}

/** Up to this many swept parameters get a column each; more share one "configuration" column that can wrap. */
const MAX_PARAMETER_COLUMNS = 3;

/** Fewer decimals for bigger figures: table columns stay narrow enough to print. */
function adaptive(v: number | null | undefined, small = 2): string {
  if (!finite(v)) return DASH;
  const a = Math.abs(v);
  return fmt(v, a >= 100 ? 0 : a >= 10 ? 1 : small);
}

function sweepTable(rows: SweepRow[], keys: string[]): string {
  const groups: Array<[string, string[]]> = [
    ['TTFT', ['p50', 'p90', 'p99']],
    ['ITL', ['p50', 'p90']],
    ['E2E', ['p50', 'p90']],
  ];
  const single = ['done', 'errors', 'req/s', 'output tok/s'];
  const tail = ['prefix hits', 'preempt.'];
  const columns = keys.length <= MAX_PARAMETER_COLUMNS;
  const value = (r: SweepRow, k: string): string => {
    const v = r.config?.[k];
    return v === undefined ? DASH : typeof v === 'number' ? fmt(v, 6) : String(v);
  };
  const top =
    `<tr><th rowspan="2" class="num">#</th><th rowspan="2" title="Pareto front">★</th>` +
    (columns ? keys.map((k) => `<th rowspan="2">${esc(k)}</th>`).join('') : '<th rowspan="2">configuration</th>') +
    single.map((h) => `<th rowspan="2" class="num">${h}</th>`).join('') +
    groups.map(([g, sub]) => `<th colspan="${sub.length}" class="group">${g}</th>`).join('') +
    tail.map((h) => `<th rowspan="2" class="num">${h}</th>`).join('') +
    '</tr>';
  const second = `<tr>${groups.map(([, sub]) => sub.map((h) => `<th class="num">${h}</th>`).join('')).join('')}</tr>`;
  const num = (v: string): string => `<td class="num">${esc(v)}</td>`;
  const body = rows
    .map((r, i) => {
      const cells = [
        num(String(i + 1)),
        `<td>${r.pareto ? '<span class="star" title="on the Pareto front">★</span>' : ''}</td>`,
        ...(columns
          ? keys.map((k) => `<td>${esc(value(r, k))}</td>`)
          : [`<td class="config">${keys.map((k) => `<span>${esc(k)}=${esc(value(r, k))}</span>`).join(' ')}</td>`]),
        num(fmt(r.completed, 0)),
        num(fmt(r.errors, 0)),
        num(adaptive(r.requests_per_s)),
        num(adaptive(r.output_tokens_per_s)),
        num(adaptive(r.ttft_ms?.p50)),
        num(adaptive(r.ttft_ms?.p90)),
        num(adaptive(r.ttft_ms?.p99)),
        num(adaptive(r.itl_ms?.p50)),
        num(adaptive(r.itl_ms?.p90)),
        num(adaptive(r.e2e_ms?.p50)),
        num(adaptive(r.e2e_ms?.p90)),
        num(finite(r.prefix_hit_rate) ? `${fmt(r.prefix_hit_rate * 100, 1)}%` : DASH),
        num(fmt(r.preemptions, 0)),
      ];
      return `<tr${r.pareto ? ' class="pareto"' : ''}>${cells.join('')}</tr>`;
    })
    .join('');
  return `<table class="sweep"><thead>${top}${second}</thead><tbody>${body}</tbody></table>`;
}

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 980px; padding: 20px 24px 40px; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 2px 0 10px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; break-after: avoid; page-break-after: avoid; }
h3 { font-size: 15px; margin: 18px 0 6px; break-after: avoid; page-break-after: avoid; }
.kind { margin: 0; color: #666; font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
pre.cmd { background: #f5f5f5; border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px 10px; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; margin: 0 0 12px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 8px; }
.fig { border: 1px solid #e0e0e0; border-radius: 4px; padding: 6px 10px; break-inside: avoid; }
.fig .v { font-size: 18px; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.fig .k { font-size: 12px; color: #666; }
figure.chart { margin: 0 0 18px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 13px; margin-bottom: 2px; }
figcaption .note, p.note { color: #666; font-size: 12px; }
svg { display: block; width: 100%; height: auto; max-width: 100%; }
svg text.halo { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
table { border-collapse: collapse; font-size: 12.5px; margin: 4px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
th.group { text-align: center; }
p.params { margin: 10px 0 0; font-size: 13px; }
p.key { font-size: 12px; color: #444; margin: 4px 0 0; }
table.kv th { background: #fafafa; font-weight: 500; }
.tables { display: flex; flex-wrap: wrap; gap: 24px; }
.wide { overflow-x: auto; }
table.sweep { font-size: 11.5px; }
table.sweep th, table.sweep td { padding: 3px 5px; }
td.config span { display: inline-block; margin-right: 6px; }
tr.pareto td { background: #fde8e8; font-weight: 600; }
.star { color: #c62828; }
table.generic { font-size: 12px; }
div.generic { overflow-x: auto; }
h4 { font-size: 13px; margin: 10px 0 2px; font-weight: 600; }
code { font-size: 12px; overflow-wrap: anywhere; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
@page { margin: 12mm; }
@media print {
  body { max-width: none; padding: 0; background: #fff !important; color: #000; font-size: 11pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  section { break-before: auto; }
  figure.chart, .fig, .tables > div { break-inside: avoid; page-break-inside: avoid; }
  .wide { overflow: visible; }
  table { font-size: 8.5pt; }
  div.generic { overflow: visible; }
  table.generic { font-size: 7pt; }
  table.generic th, table.generic td { padding: 1px 3px; }
  table.sweep { font-size: 7pt; width: 100%; }
  table.sweep th, table.sweep td { padding: 1px 2px; }
  /* Parameter values may break anywhere, so however many a sweep has, the table fits the page; numbers stay whole. */
  table.sweep td:not(.num) { overflow-wrap: anywhere; }
  tr.pareto td { font-weight: normal; }
  pre.cmd { background: #fff; }
}
`;

function page(title: string, body: string): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
${body}
<footer><p class="note">Simulated by dynamo-mocker on a virtual clock; all times are simulated.</p></footer>
</body>
</html>
`;
}
