#!/usr/bin/env node
// Evaluates every panel query of a Grafana dashboard against a live Prometheus and reports how many
// series each one returns; exits 1 when any query returns none (or fails). Also imported by
// test/integration/prometheus.test.ts.
//
//   node scripts/observability/check-dashboard.mjs [PROMETHEUS_URL] [DASHBOARD_JSON]
//        [--model NAME] [--rate-interval 30s] [--interval 5s] [--var name=value]... [--json]
//
// Defaults: http://localhost:9090 and grafana-dashboard.json beside this script. Grafana variables
// are substituted first: $__rate_interval, $__interval, $__range, and the dashboard's own variables
// ($model when --model is not given is resolved like Grafana does, from the variable's
// label_values(metric, label) query; the first value wins). Queries are instant queries
// (/api/v1/query) at the current time. Exit codes: 0 every query returned at least one series,
// 1 some query returned none or was rejected (each is listed), 2 bad arguments or Prometheus unreachable.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const DEFAULT_DASHBOARD = join(dirname(fileURLToPath(import.meta.url)), 'grafana-dashboard.json');

/** Grafana's built-in interval variables, with values that suit a scrape interval of a few seconds. */
export const DEFAULT_BUILTINS = { __rate_interval: '30s', __interval: '5s', __range: '5m' };

/** Reads a dashboard file; accepts both the plain model and the API's {"dashboard": {...}} wrapper. */
export function loadDashboard(path) {
  const json = JSON.parse(readFileSync(path, 'utf8'));
  return json && typeof json === 'object' && json.dashboard && Array.isArray(json.dashboard.panels) ? json.dashboard : json;
}

/** Every visible panel target with an expr, including panels nested in collapsed rows. */
export function extractQueries(dashboard) {
  const out = [];
  const visit = (panels) => {
    for (const p of panels ?? []) {
      if (Array.isArray(p.panels)) visit(p.panels);
      for (const t of p.targets ?? []) {
        if (t.hide || typeof t.expr !== 'string' || t.expr.trim() === '') continue;
        out.push({ panelId: p.id, panelTitle: p.title ?? '', refId: t.refId ?? '', expr: t.expr });
      }
    }
  };
  visit(dashboard.panels);
  return out;
}

const VAR_RE = /\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)/g;

/** Replaces $name, ${name}, ${name:format} and [[name]]; throws on a variable without a value. */
export function substituteVariables(expr, vars) {
  return expr.replace(VAR_RE, (whole, a, b, c) => {
    const name = a ?? b ?? c;
    if (!Object.prototype.hasOwnProperty.call(vars, name)) throw new Error(`no value for Grafana variable $${name} in: ${expr}`);
    return String(vars[name]);
  });
}

async function api(baseUrl, path, params) {
  const url = new URL(path, baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${url.pathname}: HTTP ${res.status}: ${text.slice(0, 200)}`);
  }
  if (body.status !== 'success') throw new Error(`${url.pathname}: ${body.errorType ?? `HTTP ${res.status}`}: ${body.error ?? text.slice(0, 200)}`);
  return body.data;
}

/** One instant query; returns the result vector (a scalar counts as one series). */
export async function instantQuery(baseUrl, expr, time) {
  const params = { query: expr };
  if (time !== undefined) params.time = String(time);
  const data = await api(baseUrl, 'api/v1/query', params);
  if (data.resultType === 'scalar' || data.resultType === 'string') return [{ metric: {}, value: data.result }];
  return data.result;
}

/** Values for a query variable defined as label_values(metric, label) or label_values(label). */
export async function resolveLabelValues(baseUrl, definition) {
  const m = /^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$/.exec(definition);
  if (!m) throw new Error(`unsupported variable query: ${definition}`);
  const [, match, label] = m;
  const url = new URL(`api/v1/label/${encodeURIComponent(label)}/values`, baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
  if (match) url.searchParams.append('match[]', match);
  const res = await fetch(url);
  const body = await res.json();
  if (body.status !== 'success') throw new Error(`label values for ${definition}: ${body.error ?? res.status}`);
  return body.data;
}

/** Fills in dashboard query variables that `vars` does not set, from their label_values queries. */
export async function resolveVariables(baseUrl, dashboard, vars) {
  const out = { ...vars };
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query' || Object.prototype.hasOwnProperty.call(out, v.name)) continue;
    const definition = v.definition || (typeof v.query === 'string' ? v.query : v.query?.query);
    if (!definition) continue;
    const values = await resolveLabelValues(baseUrl, definition);
    if (values.length > 0) out[v.name] = values[0];
  }
  return out;
}

/**
 * Evaluates every dashboard query. `vars` maps variable names (without '$') to values; the
 * built-in interval variables default to DEFAULT_BUILTINS. Never throws for a single bad query:
 * its `error` is set instead.
 */
export async function checkDashboard({ prometheusUrl, dashboard, vars = {}, time }) {
  const dash = typeof dashboard === 'string' ? loadDashboard(dashboard) : dashboard;
  const values = await resolveVariables(prometheusUrl, dash, { ...DEFAULT_BUILTINS, ...vars });
  const results = [];
  for (const q of extractQueries(dash)) {
    const r = { ...q, query: q.expr, series: 0, finite: 0, error: null };
    try {
      r.query = substituteVariables(q.expr, values);
      const result = await instantQuery(prometheusUrl, r.query, time);
      r.series = result.length;
      r.finite = result.filter((s) => Number.isFinite(Number(s.value?.[1]))).length;
    } catch (err) {
      r.error = err instanceof Error ? err.message : String(err);
    }
    results.push(r);
  }
  const failed = results.filter((r) => r.error !== null || r.series === 0);
  return { ok: failed.length === 0 && results.length > 0, results, failed, vars: values };
}

/** Human-readable report, one line per query. */
export function formatReport(report) {
  const lines = report.results.map((r) => {
    const status = r.error ? 'ERROR' : r.series === 0 ? 'EMPTY' : 'ok';
    const count = r.error ? r.error : `${r.series} series${r.finite < r.series ? ` (${r.series - r.finite} NaN/Inf)` : ''}`;
    return `${status.padEnd(5)} ${`[${r.panelTitle} / ${r.refId}]`} ${count}\n      ${r.query}`;
  });
  lines.push(
    report.ok
      ? `all ${report.results.length} queries returned series`
      : report.results.length === 0
        ? 'the dashboard has no queries'
        : `${report.failed.length} of ${report.results.length} queries returned no series:\n${report.failed.map((r) => `  [${r.panelTitle} / ${r.refId}] ${r.query}`).join('\n')}`,
  );
  return lines.join('\n');
}

function parseArgs(argv) {
  const opts = { prometheusUrl: 'http://localhost:9090', dashboard: DEFAULT_DASHBOARD, vars: {}, json: false };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--model') opts.vars.model = value();
    else if (a === '--rate-interval') opts.vars.__rate_interval = value();
    else if (a === '--interval') opts.vars.__interval = value();
    else if (a === '--prometheus') opts.prometheusUrl = value();
    else if (a === '--dashboard') opts.dashboard = value();
    else if (a === '--var') {
      const kv = value();
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new Error(`--var expects name=value, got '${kv}'`);
      opts.vars[kv.slice(0, eq).replace(/^\$/, '')] = kv.slice(eq + 1);
    } else if (a === '--json') opts.json = true;
    else if (a === '-h' || a === '--help') opts.help = true;
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else positional.push(a);
  }
  if (positional.length > 2) throw new Error('at most two arguments: PROMETHEUS_URL DASHBOARD_JSON');
  if (positional[0]) opts.prometheusUrl = positional[0];
  if (positional[1]) opts.dashboard = positional[1];
  return opts;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`check-dashboard: ${err.message}`);
    process.exit(2);
  }
  if (opts.help) {
    console.log('usage: check-dashboard.mjs [PROMETHEUS_URL] [DASHBOARD_JSON] [--model NAME] [--rate-interval 30s] [--interval 5s] [--var name=value]... [--json]');
    return;
  }
  let report;
  try {
    report = await checkDashboard(opts);
  } catch (err) {
    const cause = err?.cause?.code ?? err?.cause?.message;
    console.error(`check-dashboard: ${opts.prometheusUrl}: ${err.message}${cause ? ` (${cause})` : ''}`);
    process.exit(2);
  }
  if (opts.json) console.log(JSON.stringify(report, null, 2));
  else {
    console.log(`Prometheus ${opts.prometheusUrl}, model ${report.vars.model ?? '(unset)'}, $__rate_interval ${report.vars.__rate_interval}`);
    console.log(formatReport(report));
  }
  process.exitCode = report.ok ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
