// The worker's system status server: /metrics, /health and /live, as Dynamo's runtime serves them
// (system_status_server.rs): health and live share one handler, everything else is 404.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Registry } from 'prom-client';
import { ConfigError } from '../config.js';
import type { EndpointStatus, HealthReport } from './health.js';

export interface StatusServerSettings {
  enabled: boolean;
  host: string;
  port: number;
  healthPath: string;
  livePath: string;
  startingStatus: EndpointStatus;
}

/** Dynamo's old code default when only DYN_SYSTEM_ENABLED is set (the K8s operator uses it too). */
export const DEFAULT_STATUS_PORT = 9090;

const TRUTHY = new Set(['1', 'true', 'yes', 'on']);
const truthy = (v: string | undefined): boolean => TRUTHY.has((v ?? '').trim().toLowerCase());
const nonEmpty = (v: string | undefined): string | undefined => {
  const t = v?.trim();
  return t ? t : undefined;
};

function routePath(env: Record<string, string | undefined>, name: string, fallback: string): string {
  const p = nonEmpty(env[name]) ?? fallback;
  if (!p.startsWith('/')) throw new ConfigError(name, `must be a path starting with '/', got '${p}'`);
  return p;
}

/**
 * Settings from the environment. Current Dynamo: `DYN_SYSTEM_PORT` alone switches the server on
 * (−1 = off, 0 = random port). Old Dynamo: `DYN_SYSTEM_ENABLED` switched it on with port 9090, which
 * is still honoured for old launch scripts; an explicit `DYN_SYSTEM_PORT=-1` wins over it.
 * Invalid values throw a ConfigError naming the variable.
 */
export function statusServerSettings(env: Record<string, string | undefined>): StatusServerSettings {
  let enabled = truthy(env.DYN_SYSTEM_ENABLED);
  let port = DEFAULT_STATUS_PORT;
  const rawPort = nonEmpty(env.DYN_SYSTEM_PORT);
  if (rawPort !== undefined) {
    const n = /^[+-]?\d+$/.test(rawPort) ? Number(rawPort) : NaN;
    if (!Number.isInteger(n) || n < -1 || n > 65535) {
      throw new ConfigError('DYN_SYSTEM_PORT', `must be a port number 0-65535 (0 = random, -1 = off), got '${env.DYN_SYSTEM_PORT}'`);
    }
    if (n === -1) enabled = false;
    else {
      port = n;
      enabled = true;
    }
  }
  const starting = (nonEmpty(env.DYN_SYSTEM_STARTING_HEALTH_STATUS) ?? 'notready').toLowerCase();
  if (starting !== 'ready' && starting !== 'notready') {
    throw new ConfigError('DYN_SYSTEM_STARTING_HEALTH_STATUS', `must be 'ready' or 'notready', got '${env.DYN_SYSTEM_STARTING_HEALTH_STATUS}'`);
  }
  return {
    enabled,
    host: nonEmpty(env.DYN_SYSTEM_HOST) ?? '0.0.0.0',
    port,
    healthPath: routePath(env, 'DYN_SYSTEM_HEALTH_PATH', '/health'),
    livePath: routePath(env, 'DYN_SYSTEM_LIVE_PATH', '/live'),
    startingStatus: starting,
  };
}

export interface StatusServerOptions {
  host: string;
  port: number;
  registry: Registry;
  healthPath?: string;
  livePath?: string;
  health: () => HealthReport;
  /** performance.now() at process start, for the uptime field. */
  startedAt: number;
}

export interface StatusServer {
  /** The bound address (the real port when 0 was asked for). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

const TEXT = 'text/plain; charset=utf-8';

/** Rust's Duration as serde writes it. */
export function durationJson(ms: number): { nanos: number; secs: number } {
  const ns = BigInt(Math.max(0, Math.round(ms * 1e6)));
  return { nanos: Number(ns % 1_000_000_000n), secs: Number(ns / 1_000_000_000n) };
}

/**
 * The health body. serde_json (without preserve_order) writes object keys sorted, so this does too:
 * `{"endpoints":{…},"status":"ready"|"notready","uptime":{"nanos":M,"secs":N}}`.
 */
export function healthBody(report: HealthReport, uptimeMs: number): string {
  const endpoints: Record<string, EndpointStatus> = {};
  for (const name of Object.keys(report.endpoints).sort()) endpoints[name] = report.endpoints[name];
  return JSON.stringify({ endpoints, status: report.ready ? 'ready' : 'notready', uptime: durationJson(uptimeMs) });
}

export async function startStatusServer(opts: StatusServerOptions): Promise<StatusServer> {
  const healthPath = opts.healthPath ?? '/health';
  const livePath = opts.livePath ?? '/live';
  const send = (req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string, extra: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), ...extra });
    // Like axum's GET routes, HEAD answers with the headers only.
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const known = path === healthPath || path === livePath || path === '/metrics';
    if (!known) {
      send(req, res, 404, TEXT, 'Route not found');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      // axum's method router: a known path with another method is 405 with an Allow header.
      send(req, res, 405, TEXT, '', { allow: 'GET,HEAD' });
      return;
    }
    if (path === healthPath || path === livePath) {
      let body: string;
      let ready: boolean;
      try {
        const report = opts.health();
        ready = report.ready;
        body = healthBody(report, performance.now() - opts.startedAt);
      } catch {
        send(req, res, 500, TEXT, 'Failed to get health status');
        return;
      }
      send(req, res, ready ? 200 : 503, TEXT, body);
      return;
    }
    // /metrics: collect() callbacks (uptime) run inside registry.metrics(); a throwing one is a 500.
    Promise.resolve()
      .then(() => opts.registry.metrics())
      .then(
        (t) => send(req, res, 200, opts.registry.contentType, t),
        () => send(req, res, 500, TEXT, 'Failed to get metrics'),
      );
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // A socket-level error after start-up must not crash the worker.
  server.on('error', () => {});
  const addr = server.address() as AddressInfo;
  let closing: Promise<void> | null = null;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      (closing ??= new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}
