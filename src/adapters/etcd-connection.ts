// Connects to etcd the way Dynamo reads it from the environment, failing within seconds with one line
// that names the URL and the variable.
import { Etcd3, type IOptions } from 'etcd3';
import type { Env } from '../config.js';
import { ConnectionError, DEFAULT_TIMEOUT_MS, reason, redact } from './connection-error.js';
import { ServerUrlError, parseEtcdEndpoints } from './server-urls.js';

export { ConnectionError };

/**
 * `ETCD_ENDPOINTS` (comma-separated, default http://localhost:2379), optional
 * ETCD_AUTH_USERNAME+ETCD_AUTH_PASSWORD (else `user:password@` in the first URL; user info is never
 * passed on to the client, whose resolver would print it in its errors) and TLS from ETCD_AUTH_CA (+ ETCD_AUTH_CLIENT_CERT and
 * ETCD_AUTH_CLIENT_KEY), PEM text as in Dynamo. One bounded read proves the connection: etcd3
 * retries internally (three attempts, then a circuit breaker) and a silent endpoint would otherwise
 * wait for the 30 s default dial timeout.
 */
export async function connectEtcd(env: Env, opts: { timeoutMs?: number } = {}): Promise<Etcd3> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let endpoints;
  try {
    endpoints = parseEtcdEndpoints(env.ETCD_ENDPOINTS);
  } catch (err) {
    if (err instanceof ServerUrlError) throw new ConnectionError(`${err.variable} ${err.message}`);
    throw err;
  }
  const { hosts, auth: urlAuth } = endpoints;
  const shown = hosts.map(redact).join(',');

  const options: IOptions = {
    hosts,
    dialTimeout: timeoutMs,
    // tonic (Dynamo's etcd client) ignores http_proxy; grpc-js would route etcd through it.
    grpcOptions: { 'grpc.enable_http_proxy': 0 },
  };
  if (env.ETCD_AUTH_USERNAME && env.ETCD_AUTH_PASSWORD) {
    options.auth = { username: env.ETCD_AUTH_USERNAME, password: env.ETCD_AUTH_PASSWORD };
  } else if (urlAuth && urlAuth.user && urlAuth.pass) {
    options.auth = { username: urlAuth.user, password: urlAuth.pass };
  }
  if (env.ETCD_AUTH_CA) {
    options.credentials = {
      rootCertificate: Buffer.from(env.ETCD_AUTH_CA),
      ...(env.ETCD_AUTH_CLIENT_CERT && env.ETCD_AUTH_CLIENT_KEY
        ? { certChain: Buffer.from(env.ETCD_AUTH_CLIENT_CERT), privateKey: Buffer.from(env.ETCD_AUTH_CLIENT_KEY) }
        : {}),
    };
  }
  // With one endpoint there is nowhere to fail over to, so etcd3's per-host circuit breaker (open for
  // 5 s after 3 failures) would only hold calls back after an outage: a worker registering again
  // would wait up to 5 s more for an etcd that is already back. Several endpoints keep it.
  if (hosts.length === 1) options.faultHandling = { host: () => PASS_THROUGH };

  let client: Etcd3;
  try {
    client = new Etcd3(options);
  } catch (err) {
    throw new ConnectionError(`cannot set up etcd client for ${shown} (ETCD_ENDPOINTS): ${reason(err, timeoutMs)}`);
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.get('v1/mdc').options({ deadline: Date.now() + timeoutMs }).string(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })), timeoutMs);
      }),
    ]);
  } catch (err) {
    client.close();
    throw new ConnectionError(`cannot connect to etcd at ${shown} (ETCD_ENDPOINTS): ${etcdReason(err, timeoutMs)}`);
  } finally {
    clearTimeout(timer);
  }
  return client;
}

type HostPolicy = ReturnType<NonNullable<NonNullable<IOptions['faultHandling']>['host']>>;

/** A fault-handling policy that runs every call (etcd3 only calls `execute` on a host's policy). */
const PASS_THROUGH = {
  execute: async <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> => fn({ signal: new AbortController().signal }),
} as unknown as HostPolicy;

function etcdReason(err: unknown, timeoutMs: number): string {
  const text = (err as Error)?.message ?? String(err);
  if (/DEADLINE_EXCEEDED|Deadline exceeded/i.test(text)) return `no answer within ${timeoutMs} ms`;
  // grpc-js when the authentication call cannot connect: "No connection established. Last error: null. …"
  if (/No connection established/i.test(text) && !/ECONNREFUSED/.test(text)) return 'no connection (refused or unreachable)';
  // grpc-js prefixes "14 UNAVAILABLE: "; keep the human part.
  return reason(err, timeoutMs).replace(/^\d+ [A-Z_]+: /, '');
}
