// Loopback stand-in for the HuggingFace hub's /{repo}/resolve/{rev}/{file} route, so tests never leave the machine.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface FakeHubRequest {
  method: string;
  /** URL path without the query string, e.g. "/acme/tiny/resolve/main/config.json" */
  path: string;
  /** The Authorization header as received, or null */
  auth: string | null;
}

export interface FakeHubOptions {
  /** When set, any request without `Authorization: Bearer <token>` gets 401, like a gated repo. */
  requireToken?: string;
  /** Force a status (with an empty body) for a path; return undefined to serve normally. */
  statusFor?: (path: string) => number | undefined;
  /** Paths for which the server accepts the request and never answers (for timeout tests). */
  hang?: (path: string) => boolean;
}

export interface FakeHub {
  url: string;
  requests: FakeHubRequest[];
  close(): Promise<void>;
}

/**
 * `files` maps URL paths (leading slash optional) to contents; everything else is 404, with the
 * `X-Error-Code: EntryNotFound` header the real hub sends for a missing file in an existing repo.
 */
export async function startFakeHub(files: Record<string, Uint8Array | string>, opts: FakeHubOptions = {}): Promise<FakeHub> {
  const table = new Map<string, Uint8Array>();
  for (const [p, body] of Object.entries(files)) {
    table.set(p.startsWith('/') ? p : `/${p}`, typeof body === 'string' ? new TextEncoder().encode(body) : body);
  }
  const requests: FakeHubRequest[] = [];

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]);
    const auth = req.headers.authorization ?? null;
    requests.push({ method: req.method ?? 'GET', path, auth });
    if (opts.hang?.(path)) return;
    if (opts.requireToken !== undefined && auth !== `Bearer ${opts.requireToken}`) {
      res.writeHead(401, { 'content-type': 'application/json', 'x-error-code': 'GatedRepo' });
      res.end('{"error":"Access to this repo is restricted"}');
      return;
    }
    const forced = opts.statusFor?.(path);
    if (forced !== undefined) {
      res.writeHead(forced, { 'content-type': 'text/plain' });
      res.end();
      return;
    }
    const body = table.get(path);
    if (body === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'EntryNotFound' });
      res.end('{"error":"Entry not found"}');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.byteLength, 'x-repo-commit': '0'.repeat(40) });
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const server = createServer(handle);
  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolveListen());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolveClose) => {
        // Kill keep-alive and hung connections too, or close() would wait for them.
        server.closeAllConnections();
        server.close(() => resolveClose());
      }),
  };
}

/** Serves every regular file of `dir` as `/{repoId}/resolve/{revision}/{file}`. */
export function hubFilesFromDir(repoId: string, dir: string, revision = 'main'): Record<string, Uint8Array> {
  const out: Record<string, Uint8Array> = {};
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isFile()) out[`/${repoId}/resolve/${revision}/${name}`] = new Uint8Array(readFileSync(p));
  }
  return out;
}
