// The runtime control API's HTTP side (/mocker/config, /mocker/stats): routing, bearer auth, body checks, JSON.
import { createHash, timingSafeEqual } from 'node:crypto';
import { BodyTooLargeError, type RouteHandler, type RouteRequest, type RouteResponse } from './status-server.js';

/** What the control API reads and changes; implemented by the worker (one per process, covering every worker of it). */
export interface MockerControl {
  /** Current settings as JSON: { speedup_ratio, decode_speedup_ratio, latency_jitter, max_num_seqs, faults }. */
  config(): Record<string, unknown>;
  /** Applies a validated partial update; throws ControlError (→ 400) with a one-line message naming the field for a bad value. */
  patchConfig(patch: Record<string, unknown>): void;
  /** Counters and gauges as JSON (requests received/completed/refused/cancelled/cut, faults fired by kind, running, waiting, KV usage). */
  stats(): Record<string, unknown>;
  resetStats(): void;
}

/** A refused control change: `field` names the offending key (HTTP 400 `{"error": message, "field": field}`). */
export class ControlError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

/** The keys `PATCH /mocker/config` accepts. */
export const CONTROL_PATCH_KEYS: readonly string[] = Object.freeze(['speedup_ratio', 'decode_speedup_ratio', 'latency_jitter', 'faults', 'max_num_seqs']);

/** The largest `PATCH /mocker/config` body (a fault plan fits easily). */
export const CONTROL_MAX_BODY_BYTES = 1024 * 1024;

const JSON_TYPE = 'application/json';
/** A value longer than this is shortened in the change log line. */
const LOGGED_VALUE_CHARS = 200;

interface Route {
  /** The allowed methods, as the `allow` header lists them (HEAD is answered like GET). */
  methods: readonly string[];
  handle(req: RouteRequest): RouteResponse | Promise<RouteResponse>;
}

function json(status: number, value: unknown, headers?: Record<string, string>): RouteResponse {
  return { status, type: JSON_TYPE, body: JSON.stringify(value), headers };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `"key=value"` for the log, the value as JSON and shortened when long. */
function logged(key: string, value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length > LOGGED_VALUE_CHARS) text = `${text.slice(0, LOGGED_VALUE_CHARS)}… (${text.length} chars)`;
  return `${key}=${text}`;
}

/** Whether the request carries `Authorization: Bearer <token>`, compared in constant time. */
function authorized(req: RouteRequest, expected: Buffer): boolean {
  const header = req.headers.authorization;
  if (typeof header !== 'string') return false;
  const match = /^Bearer[ \t]+(.*)$/i.exec(header.trim());
  if (!match || match[1].length === 0) return false;
  // Hashing both sides gives equal lengths, so neither the comparison nor its length check leaks the token.
  const digest = createHash('sha256').update(match[1], 'utf8').digest();
  return timingSafeEqual(digest, expected);
}

/** The control routes for the status server; `token` null = no auth. */
export function controlRoutes(control: MockerControl, opts: { token: string | null; log: (line: string) => void }): RouteHandler {
  const { log } = opts;
  const expected = opts.token === null ? null : createHash('sha256').update(opts.token, 'utf8').digest();
  const known = CONTROL_PATCH_KEYS.join(', ');

  /** Runs a MockerControl call; anything but a ControlError is the worker's fault (500, logged). */
  const internal = (what: string, err: unknown): RouteResponse => {
    log(`control API: ${what} failed: ${errorMessage(err)}`);
    return json(500, { error: `${what} failed: ${errorMessage(err)}` });
  };

  const getConfig = (): RouteResponse => {
    try {
      return json(200, control.config());
    } catch (err) {
      return internal('reading the config', err);
    }
  };

  const patchConfig = async (req: RouteRequest): Promise<RouteResponse> => {
    let raw: Buffer;
    try {
      raw = await req.body(CONTROL_MAX_BODY_BYTES);
    } catch (err) {
      if (err instanceof BodyTooLargeError) return json(413, { error: `request body larger than ${CONTROL_MAX_BODY_BYTES} bytes` });
      return json(400, { error: `cannot read the request body: ${errorMessage(err)}` });
    }
    let patch: unknown;
    try {
      patch = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      return json(400, { error: `request body is not valid JSON: ${errorMessage(err)}` });
    }
    if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) {
      const kind = patch === null ? 'null' : Array.isArray(patch) ? 'an array' : typeof patch;
      return json(400, { error: `request body must be a JSON object of settings, got ${kind}` });
    }
    const fields = patch as Record<string, unknown>;
    const keys = Object.keys(fields);
    const unknown = keys.filter((k) => !CONTROL_PATCH_KEYS.includes(k));
    if (unknown.length > 0) {
      const names = unknown.map((k) => `'${k}'`).join(', ');
      return json(400, { error: `unknown key${unknown.length > 1 ? 's' : ''} ${names} (known: ${known})` });
    }
    if (keys.length > 0) {
      try {
        control.patchConfig(fields);
      } catch (err) {
        if (err instanceof ControlError) return json(400, { error: err.message, field: err.field });
        return internal('changing the config', err);
      }
      log(`control API: config changed: ${keys.map((k) => logged(k, fields[k])).join(', ')}`);
    }
    return getConfig();
  };

  const routes = new Map<string, Route>([
    ['/mocker/config', { methods: ['GET', 'HEAD', 'PATCH'], handle: (req) => (req.method === 'PATCH' ? patchConfig(req) : getConfig()) }],
    [
      '/mocker/stats',
      {
        methods: ['GET', 'HEAD'],
        handle: () => {
          try {
            return json(200, control.stats());
          } catch (err) {
            return internal('reading the stats', err);
          }
        },
      },
    ],
    [
      '/mocker/stats/reset',
      {
        methods: ['POST'],
        handle: () => {
          try {
            control.resetStats();
          } catch (err) {
            return internal('resetting the stats', err);
          }
          log('control API: stats reset');
          return json(200, { reset: true });
        },
      },
    ],
  ]);

  return (req) => {
    if (req.path !== '/mocker' && !req.path.startsWith('/mocker/')) return undefined;
    // Authentication comes first, so without the token nothing about the routes is revealed.
    if (expected !== null && !authorized(req, expected)) return json(401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer' });
    const route = routes.get(req.path);
    if (route === undefined) return json(404, { error: `no such route: ${req.path}` });
    if (!route.methods.includes(req.method)) {
      const allowed = route.methods.join(',');
      return json(405, { error: `method ${req.method} not allowed on ${req.path} (allowed: ${allowed})` }, { allow: allowed });
    }
    return route.handle(req);
  };
}
