// The worker's system status server: /metrics, /health and /live, as Dynamo's runtime serves them
// (system_status_server.rs): health and live share one handler, everything else is 404. Settings
// come from the environment through config.ts (systemServerSettings). Handlers add routes with any
// method and a request body (the runtime control API under /mocker/).
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Registry } from 'prom-client';
import type { EndpointStatus, HealthReport } from './health.js';

export interface StatusServerOptions {
  host: string;
  port: number;
  registry: Registry;
  healthPath?: string;
  livePath?: string;
  health: () => HealthReport;
  /** performance.now() at process start, for the uptime field. */
  startedAt: number;
  /** More GET routes (the 1.x metadata routes): a response for a path, or undefined if not theirs. */
  routes?: (path: string) => StaticResponse | undefined;
  /**
   * Routes with any method and a body, asked in order after the built-in and static routes: each
   * returns its response for a request, or undefined if the path is not its.
   */
  handlers?: readonly RouteHandler[];
}

/** One request as a handler sees it. */
export interface RouteRequest {
  method: string;
  /** The path without the query string. */
  path: string;
  headers: IncomingHttpHeaders;
  /** Reads the whole body; rejects with BodyTooLargeError past `maxBytes` (the rest is drained unread). */
  body(maxBytes: number): Promise<Buffer>;
}

export interface RouteResponse extends StaticResponse {
  headers?: Record<string, string>;
}

/** A route taking any method and a body: its response, or undefined if the request is not its. */
export type RouteHandler = (req: RouteRequest) => RouteResponse | Promise<RouteResponse> | undefined;

export class BodyTooLargeError extends Error {
  constructor(readonly maxBytes: number) {
    super(`request body larger than ${maxBytes} bytes`);
    this.name = 'BodyTooLargeError';
  }
}

/** How much of an oversized body is read and dropped (so the client sees the answer) before the socket is cut. */
const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;

/** The body of `req`, at most `maxBytes`; past it, the rest is drained in the background and the promise rejects. */
function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let drained = 0;
    let tooLarge = false;
    const overflow = () => {
      tooLarge = true;
      chunks.length = 0;
      reject(new BodyTooLargeError(maxBytes));
    };
    req.on('data', (chunk: Buffer) => {
      if (tooLarge) {
        // Reading the rest lets the client finish sending and read the answer; a sender that never
        // stops is cut off.
        drained += chunk.length;
        if (drained > DRAIN_LIMIT_BYTES) req.destroy();
        return;
      }
      size += chunk.length;
      if (size > maxBytes) overflow();
      else chunks.push(chunk);
    });
    req.on('end', () => {
      if (!tooLarge) resolve(Buffer.concat(chunks));
    });
    req.on('error', (err) => {
      if (!tooLarge) reject(err);
    });
    if (Number.isFinite(declared) && declared > maxBytes) overflow();
  });
}

export interface StaticResponse {
  status: number;
  type: string;
  body: string | Uint8Array;
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
  const send = (req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string | Uint8Array, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': type, 'content-length': typeof body === 'string' ? Buffer.byteLength(body) : body.length, ...headers });
    // Like axum's GET routes, HEAD answers with the headers only.
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const extra = opts.routes?.(path);
    const builtIn = path === healthPath || path === livePath || path === '/metrics';
    if (!builtIn && extra === undefined && opts.handlers?.length) {
      const routeRequest: RouteRequest = { method: req.method ?? 'GET', path, headers: req.headers, body: (maxBytes) => readBody(req, maxBytes) };
      for (const handler of opts.handlers) {
        let answer: ReturnType<RouteHandler>;
        try {
          answer = handler(routeRequest);
        } catch {
          answer = Promise.reject(new Error('handler failed'));
        }
        if (answer === undefined) continue;
        Promise.resolve(answer).then(
          (r) => send(req, res, r.status, r.type, r.body, r.headers),
          () => send(req, res, 500, TEXT, 'Internal error'),
        );
        return;
      }
    }
    const known = builtIn || extra !== undefined;
    if (!known) {
      send(req, res, 404, TEXT, 'Route not found');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      // axum's method router: a known path with another method is 405 with an Allow header.
      send(req, res, 405, TEXT, '', { allow: 'GET,HEAD' });
      return;
    }
    if (extra !== undefined) {
      send(req, res, extra.status, extra.type, extra.body);
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
