// The HTML reports in headless Chromium: every chart laid out and drawn, no console errors, exceptions or network requests, fits A4 in print.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderHtmlReport } from '../../src/replay/html-report.js';
import type { ReportData } from '../../src/replay/report-data.js';
import { Chromium, checkPage, findChromium, type PageSession } from '../helpers/chromium.js';
import { replayFixture, sweepFixture } from '../helpers/report-fixtures.js';

const chromium = findChromium();
const inCi = Boolean(process.env.CI);
if (!chromium && !inCi) console.warn('report-chromium: skipped, `chromium` is not on PATH (apt-get install chromium)');

/** A4 minus the report's 12 mm @page margins, in CSS px (96 per inch): the narrowest page it must fit. */
const A4_CONTENT_PX = Math.floor(((210 - 2 * 12) / 25.4) * 96);

const REPLAY_CHARTS = ['ttft', 'itl', 'e2e', 'throughput-tokens', 'throughput-requests', 'running', 'waiting', 'kv-usage', 'worker-requests'];

interface ChartProbe {
  id: string;
  width: number;
  height: number;
  /** Drawn shapes outside the axes and legend (bars, lines, bands, points, or the empty-state frame). */
  marks: number;
  /** Those of them with a non-empty box. */
  visibleMarks: number;
  /** The SVG content's own box, from getBBox. */
  contentWidth: number;
  contentHeight: number;
}

/** Runs in the page: geometry of every <svg>, and the page's width. */
const PROBE = `(() => {
  const shapes = 'rect,path,polyline,polygon,circle,line';
  const charts = [...document.querySelectorAll('svg')].map((svg) => {
    const r = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll(shapes)].filter((e) => !e.closest('g.axes, g.legend'));
    const visible = marks.filter((e) => { const b = e.getBBox(); return b.width > 0 || b.height > 0; });
    const box = svg.getBBox();
    return { id: svg.dataset.chart ?? '', width: r.width, height: r.height, marks: marks.length, visibleMarks: visible.length, contentWidth: box.width, contentHeight: box.height };
  });
  const figures = [...document.querySelectorAll('figure.chart')].map((f) => getComputedStyle(f).breakInside);
  const widest = Math.max(0, ...[...document.querySelectorAll('body *')].map((e) => e.getBoundingClientRect().right));
  return { charts, figures, widest, scrollWidth: document.documentElement.scrollWidth, viewport: document.documentElement.clientWidth, background: getComputedStyle(document.body).backgroundColor, title: document.title };
})()`;

interface Probe {
  charts: ChartProbe[];
  figures: string[];
  widest: number;
  scrollWidth: number;
  viewport: number;
  background: string;
  title: string;
}

async function inspect(page: PageSession): Promise<{ screen: Probe; print: Probe; pdf: Buffer }> {
  await page.send('Emulation.setDeviceMetricsOverride', { width: 1200, height: 900, deviceScaleFactor: 1, mobile: false });
  const screen = (await page.evaluate(PROBE)) as Probe;
  await page.send('Emulation.setEmulatedMedia', { media: 'print' });
  // Paper has no scrollbar: without this the layout width would be the viewport minus one.
  await page.send('Emulation.setScrollbarsHidden', { hidden: true });
  await page.send('Emulation.setDeviceMetricsOverride', { width: A4_CONTENT_PX, height: 1000, deviceScaleFactor: 1, mobile: false });
  const print = (await page.evaluate(PROBE)) as Probe;
  await page.send('Emulation.setEmulatedMedia', { media: '' });
  await page.send('Emulation.setScrollbarsHidden', { hidden: false });
  await page.send('Emulation.clearDeviceMetricsOverride');
  const { data } = await page.send('Page.printToPDF', { paperWidth: 8.27, paperHeight: 11.69, preferCSSPageSize: true });
  return { screen, print, pdf: Buffer.from(data, 'base64') };
}

function expectDrawn(probe: Probe, ids: string[]): void {
  expect(probe.charts.map((c) => c.id)).toEqual(ids);
  for (const c of probe.charts) {
    expect(c.width, c.id).toBeGreaterThan(100);
    expect(c.height, c.id).toBeGreaterThan(50);
    expect(c.contentWidth, c.id).toBeGreaterThan(0);
    expect(c.contentHeight, c.id).toBeGreaterThan(0);
    expect(c.marks, c.id).toBeGreaterThan(0);
    expect(c.visibleMarks, c.id).toBeGreaterThan(0);
  }
}

describe.skipIf(!chromium && !inCi)('HTML report in headless Chromium', () => {
  let browser: Chromium | undefined;
  let dir: string | undefined;

  beforeAll(async () => {
    if (!chromium) throw new Error('`chromium` is not installed but CI is set: CI must install the Debian package (see .ci/run)');
    dir = mkdtempSync(join(tmpdir(), 'report-chromium-'));
    browser = await Chromium.launch({ binary: chromium });
  });

  afterAll(async () => {
    await browser?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function open(name: string, data: ReportData) {
    const file = join(dir!, `${name}.html`);
    writeFileSync(file, renderHtmlReport(data));
    const check = await checkPage(browser!, pathToFileURL(file).href, inspect);
    expect(check.consoleErrors).toEqual([]);
    expect(check.exceptions).toEqual([]);
    expect(check.networkRequests).toEqual([]);
    return check.value;
  }

  function expectPrintable(v: { print: Probe; pdf: Buffer }): void {
    expect(v.print.background).toBe('rgb(255, 255, 255)');
    expect(v.print.figures.length).toBeGreaterThan(0);
    for (const b of v.print.figures) expect(b).toBe('avoid');
    // Nothing wider than the printable width of A4 (Letter is wider).
    expect(v.print.viewport).toBe(A4_CONTENT_PX);
    expect(v.print.scrollWidth).toBeLessThanOrEqual(v.print.viewport);
    expect(v.print.widest).toBeLessThanOrEqual(A4_CONTENT_PX + 0.5);
    expect(v.pdf.subarray(0, 5).toString('latin1')).toBe('%PDF-');
  }

  it('the check itself sees console errors, uncaught exceptions, network requests and undrawn charts', async () => {
    const file = join(dir!, 'broken.html');
    writeFileSync(
      file,
      '<!DOCTYPE html><html><head><title>broken</title></head><body>' +
        '<svg data-chart="blank" width="0" height="0"></svg>' +
        '<img src="http://report-check.invalid/pixel.png">' +
        '<script>console.error("logged on purpose"); throw new Error("thrown on purpose");</script>' +
        '</body></html>',
    );
    const check = await checkPage(browser!, pathToFileURL(file).href, (page) => page.evaluate(PROBE) as Promise<Probe>);
    expect(check.consoleErrors.join('\n')).toContain('logged on purpose');
    expect(check.exceptions.join('\n')).toContain('thrown on purpose');
    expect(check.networkRequests).toEqual(['http://report-check.invalid/pixel.png']);
    expect(check.value.charts).toEqual([expect.objectContaining({ id: 'blank', width: 0, height: 0, marks: 0 })]);
  });

  it('replay report (23,608 requests, 16 workers): every chart drawn, no errors, no network, prints on A4', async () => {
    const data = replayFixture({ requests: 23_608, workers: 16, samples: 500, seed: 21, title: 'Replay <b>16</b> workers' });
    const v = await open('replay', data);
    expect(v.screen.title).toBe('Replay <b>16</b> workers');
    expectDrawn(v.screen, REPLAY_CHARTS);
    expectDrawn(v.print, REPLAY_CHARTS);
    expectPrintable(v);
  });

  it('replay report (3 workers, one line each)', async () => {
    const v = await open('replay-3', replayFixture({ requests: 300, workers: 3, samples: 100, seed: 4 }));
    expectDrawn(v.screen, REPLAY_CHARTS);
    expectPrintable(v);
  });

  it('replay report (64 workers, bands)', async () => {
    const v = await open('replay-64', replayFixture({ requests: 20_000, workers: 64, samples: 500, seed: 8 }));
    expectDrawn(v.screen, REPLAY_CHARTS);
    expectPrintable(v);
  });

  it('empty replay report: every chart still laid out', async () => {
    const base = replayFixture({ requests: 0, workers: 1, samples: 0 });
    const v = await open('replay-empty', { ...base, timeline: { t_ms: [], workers: [] } });
    expectDrawn(v.screen, REPLAY_CHARTS);
    expectPrintable(v);
  });

  it('sweep report: Pareto chart drawn, table fits A4 in print', async () => {
    const v = await open('sweep', sweepFixture());
    expectDrawn(v.screen, ['pareto']);
    expectDrawn(v.print, ['pareto']);
    expectPrintable(v);
  });

  it('sweep report with many parameters and long values still fits A4 in print', async () => {
    const configs = [8, 16, 32, 64].map((seqs, i) => ({
      'max-num-seqs': seqs,
      router: i % 2 ? 'round-robin' : 'kv',
      'num-workers': 2 ** i,
      'model-path': `/very/long/path/to/some/model/checkpoint-${i}-with-a-long-name`,
      'block-size': 16 * (i + 1),
      'speedup-ratio': 1.5,
    }));
    const v = await open('sweep-wide', sweepFixture({ configs }));
    expectDrawn(v.screen, ['pareto']);
    expectPrintable(v);
  });
});
