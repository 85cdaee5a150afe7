// Types for check-dashboard.mjs (imported by test/integration/prometheus.test.ts).
export interface DashboardQuery {
  panelId: number;
  panelTitle: string;
  refId: string;
  /** The expr as written in the dashboard, with Grafana variables. */
  expr: string;
}

export interface QueryResult extends DashboardQuery {
  /** The expr after variable substitution, as sent to Prometheus. */
  query: string;
  series: number;
  /** Series whose value is a finite number (not NaN/Inf). */
  finite: number;
  error: string | null;
}

export interface Report {
  ok: boolean;
  results: QueryResult[];
  failed: QueryResult[];
  vars: Record<string, string>;
}

export interface Dashboard {
  panels?: unknown[];
  templating?: { list?: unknown[] };
  [key: string]: unknown;
}

export const DEFAULT_DASHBOARD: string;
export const DEFAULT_BUILTINS: Record<string, string>;
export function loadDashboard(path: string): Dashboard;
export function extractQueries(dashboard: Dashboard): DashboardQuery[];
export function substituteVariables(expr: string, vars: Record<string, string>): string;
export function instantQuery(baseUrl: string, expr: string, time?: number | string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>>;
export function resolveLabelValues(baseUrl: string, definition: string): Promise<string[]>;
export function resolveVariables(baseUrl: string, dashboard: Dashboard, vars: Record<string, string>): Promise<Record<string, string>>;
export function checkDashboard(opts: { prometheusUrl: string; dashboard: string | Dashboard; vars?: Record<string, string>; time?: number | string }): Promise<Report>;
export function formatReport(report: Report): string;
