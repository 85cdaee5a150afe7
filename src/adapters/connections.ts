// Connects to NATS (JetStream required) and etcd the way Dynamo reads them from the environment,
// failing within seconds with one line that names the URL and the variable.
import { Etcd3, type IOptions } from 'etcd3';
import { connect, credsAuthenticator, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from 'nats';
import { readFileSync } from 'node:fs';
import { ConnectionError } from './connection-error.js';

export { ConnectionError };

type Env = Record<string, string | undefined>;

const DEFAULT_TIMEOUT_MS = 3000;

/** First line of an error, with the usual socket codes spelled out. */
function reason(err: unknown, timeoutMs: number): string {
  const e = err as { code?: string; message?: string; details?: string } | undefined;
  const text = e?.message ?? String(err);
  if (e?.code === 'CONNECTION_REFUSED' || /ECONNREFUSED/.test(text)) return 'connection refused';
  if (e?.code === 'TIMEOUT' || text === 'TIMEOUT') return `no answer within ${timeoutMs} ms`;
  if (/authorization violation/i.test(text)) return 'authorization violation (check NATS_AUTH_*)';
  return text.split('\n')[0].replace(/^'(.*)'$/, '$1');
}

/** A URL for messages: user info is replaced by "***" so credentials never reach a log line. */
function redact(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^@/]*@/i, '$1***@');
}

// ---------------------------------------------------------------------------------------------
// NATS

/**
 * `NATS_SERVER` (default nats://localhost:4222, comma-separated list allowed, each must be nats://);
 * auth from the first of NATS_AUTH_USERNAME+NATS_AUTH_PASSWORD, NATS_AUTH_TOKEN, NATS_AUTH_NKEY,
 * NATS_AUTH_CREDENTIALS_FILE (Dynamo's order), else user info in the URL, else none. Dynamo's Rust
 * client sends user/user when nothing is set; that is only harmless on an auth-less server, so it is
 * not imitated. At start-up there is no reconnect loop: an unreachable server fails within
 * `timeoutMs`. Once connected, the client reconnects forever (as async-nats does).
 */
export async function connectNats(env: Env, opts: { timeoutMs?: number } = {}): Promise<NatsConnection> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const url = env.NATS_SERVER || 'nats://localhost:4222';
  const shown = redact(url);
  const urls = url.split(',').map((s) => s.trim()).filter(Boolean);
  const servers: string[] = [];
  let urlAuth: { user: string; pass: string } | null = null;
  for (const u of urls) {
    let parsed: URL;
    try {
      parsed = new URL(u);
    } catch {
      parsed = new URL('invalid://');
    }
    if (parsed.protocol !== 'nats:' || !parsed.hostname) {
      throw new ConnectionError(`NATS_SERVER must be a nats://host:port URL, got '${redact(u)}'`);
    }
    if (parsed.username && !urlAuth) urlAuth = { user: decodeURIComponent(parsed.username), pass: decodeURIComponent(parsed.password) };
    servers.push(`${parsed.hostname}:${parsed.port || '4222'}`);
  }

  const options: ConnectionOptions = {
    servers,
    timeout: timeoutMs,
    waitOnFirstConnect: false,
    reconnect: true,
    maxReconnectAttempts: -1,
    name: 'dynamo-mocker',
  };
  try {
    if (env.NATS_AUTH_USERNAME && env.NATS_AUTH_PASSWORD) {
      options.user = env.NATS_AUTH_USERNAME;
      options.pass = env.NATS_AUTH_PASSWORD;
    } else if (env.NATS_AUTH_TOKEN) {
      options.token = env.NATS_AUTH_TOKEN;
    } else if (env.NATS_AUTH_NKEY) {
      options.authenticator = nkeyAuthenticator(new TextEncoder().encode(env.NATS_AUTH_NKEY.trim()));
    } else if (env.NATS_AUTH_CREDENTIALS_FILE) {
      options.authenticator = credsAuthenticator(readFileSync(env.NATS_AUTH_CREDENTIALS_FILE));
    } else if (urlAuth) {
      if (urlAuth.pass) {
        options.user = urlAuth.user;
        options.pass = urlAuth.pass;
      } else {
        options.token = urlAuth.user;
      }
    }
  } catch (err) {
    throw new ConnectionError(`cannot set up NATS auth for ${shown} (NATS_AUTH_*): ${reason(err, timeoutMs)}`);
  }

  let nc: NatsConnection;
  try {
    nc = await connect(options);
  } catch (err) {
    throw new ConnectionError(`cannot connect to NATS at ${shown} (NATS_SERVER): ${reason(err, timeoutMs)}`);
  }
  try {
    // jetstreamManager() already asks for the account info; the explicit call keeps the intent visible.
    const jsm = await nc.jetstreamManager({ timeout: timeoutMs });
    await jsm.getAccountInfo();
  } catch (err) {
    await nc.close().catch(() => {});
    const code = (err as { code?: string }).code;
    // 503 = "no responders": nothing answers $JS.API.*, i.e. the server runs without JetStream.
    if (code === '503' || /no responders|jetstream not enabled/i.test(String((err as Error)?.message))) {
      throw new ConnectionError(`NATS at ${shown} (NATS_SERVER) has no JetStream: start nats-server with -js`);
    }
    throw new ConnectionError(`NATS at ${shown} (NATS_SERVER) did not answer the JetStream account check: ${reason(err, timeoutMs)}`);
  }
  return nc;
}

// ---------------------------------------------------------------------------------------------
// etcd

/**
 * `ETCD_ENDPOINTS` (comma-separated, default http://localhost:2379), optional
 * ETCD_AUTH_USERNAME+ETCD_AUTH_PASSWORD and TLS from ETCD_AUTH_CA (+ ETCD_AUTH_CLIENT_CERT and
 * ETCD_AUTH_CLIENT_KEY), PEM text as in Dynamo. One bounded read proves the connection: etcd3
 * retries internally (three attempts, then a circuit breaker) and a silent endpoint would otherwise
 * wait for the 30 s default dial timeout.
 */
export async function connectEtcd(env: Env, opts: { timeoutMs?: number } = {}): Promise<Etcd3> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const raw = env.ETCD_ENDPOINTS || 'http://localhost:2379';
  const hosts = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const shown = hosts.map(redact).join(',');
  for (const h of hosts) {
    if (!/^https?:\/\/[^/]+/.test(h)) throw new ConnectionError(`ETCD_ENDPOINTS must list http(s)://host:port URLs, got '${redact(h)}'`);
  }

  const options: IOptions = {
    hosts,
    dialTimeout: timeoutMs,
    // tonic (Dynamo's etcd client) ignores http_proxy; grpc-js would route etcd through it.
    grpcOptions: { 'grpc.enable_http_proxy': 0 },
  };
  if (env.ETCD_AUTH_USERNAME && env.ETCD_AUTH_PASSWORD) {
    options.auth = { username: env.ETCD_AUTH_USERNAME, password: env.ETCD_AUTH_PASSWORD };
  }
  if (env.ETCD_AUTH_CA) {
    options.credentials = {
      rootCertificate: Buffer.from(env.ETCD_AUTH_CA),
      ...(env.ETCD_AUTH_CLIENT_CERT && env.ETCD_AUTH_CLIENT_KEY
        ? { certChain: Buffer.from(env.ETCD_AUTH_CLIENT_CERT), privateKey: Buffer.from(env.ETCD_AUTH_CLIENT_KEY) }
        : {}),
    };
  }

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

function etcdReason(err: unknown, timeoutMs: number): string {
  const text = (err as Error)?.message ?? String(err);
  if (/DEADLINE_EXCEEDED|Deadline exceeded/i.test(text)) return `no answer within ${timeoutMs} ms`;
  // grpc-js prefixes "14 UNAVAILABLE: "; keep the human part.
  return reason(err, timeoutMs).replace(/^\d+ [A-Z_]+: /, '');
}
