// The worker's system status server: /metrics, /health and /live, as Dynamo's runtime serves them.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Registry } from 'prom-client';
import { ConfigError } from '../config.js';
import type { EndpointStatus } from './health.js';

export interface StatusServerSettings {
  enabled: boolean;
  host: string;
  port: number;
  healthPath: string;
  livePath: string;
  startingStatus: EndpointStatus;
}

const truthy = (v: string | undefined): boolean => ['1', 'true', 'yes', 'on'].includes((v ?? '').trim().toLowerCase());

/** Enabled by DYN_SYSTEM_PORT (≠ -1) or the older DYN_SYSTEM_ENABLED (then port 9090 by default). */
export function statusServerSettings(env: Record<string, string | undefined>): StatusServerSettings {
  const rawPort = env.DYN_SYSTEM_PORT?.trim();
  let port = 9090;
  let enabled = truthy(env.DYN_SYSTEM_ENABLED);
  if (rawPort !== undefined && rawPort !== '') {
    const n = Number(rawPort);
    if (!Number.isInteger(n) || n < -1 || n > 65535) throw new ConfigError('DYN_SYSTEM_PORT', `must be a port number (0 = random, -1 = off), got '${rawPort}'`);
    if (n === -1) enabled = false;
    else {
      port = n;
      enabled = true;
    }
  }
  const starting = (env.DYN_SYSTEM_STARTING_HEALTH_STATUS ?? 'notready').trim().toLowerCase();
  return {
    enabled,
    host: env.DYN_SYSTEM_HOST?.trim() || '0.0.0.0',
    port,
    healthPath: env.DYN_SYSTEM_HEALTH_PATH?.trim() || '/health',
    livePath: env.DYN_SYSTEM_LIVE_PATH?.trim() || '/live',
    startingStatus: starting === 'ready' ? 'ready' : 'notready',
  };
}

export interface StatusServerOptions {
  host: string;
  port: number;
  registry: Registry;
  healthPath?: string;
  livePath?: string;
  health: () => { ready: boolean; endpoints: Record<string, EndpointStatus> };
  /** performance.now() at process start, for the uptime field. */
  startedAt: number;
}

export async function startStatusServer(opts: StatusServerOptions): Promise<{ address: { host: string; port: number }; close(): Promise<void> }> {
  const healthPath = opts.healthPath ?? '/health';
  const livePath = opts.livePath ?? '/live';
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && (path === healthPath || path === livePath)) {
      const { ready, endpoints } = opts.health();
      const uptimeNs = BigInt(Math.round((performance.now() - opts.startedAt) * 1e6));
      const body = JSON.stringify({
        status: ready ? 'ready' : 'notready',
        uptime: { secs: Number(uptimeNs / 1_000_000_000n), nanos: Number(uptimeNs % 1_000_000_000n) },
        endpoints,
      });
      res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(body);
      return;
    }
    if (req.method === 'GET' && path === '/metrics') {
      opts.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': opts.registry.contentType });
          res.end(text);
        },
        () => {
          res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
          res.end('Failed to get metrics');
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('Route not found');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
