// Connects to NATS (JetStream required) and etcd the way Dynamo reads them from the environment.
import { Etcd3 } from 'etcd3';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';
import { readFileSync } from 'node:fs';

/** A one-line, user-facing failure to reach a dependency (the CLI exits with code 1). */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
}

function reason(err: unknown): string {
  const e = err as { code?: string; message?: string };
  if (e?.code === 'CONNECTION_REFUSED' || /ECONNREFUSED/.test(e?.message ?? '')) return 'connection refused';
  return (e?.message ?? String(err)).split('\n')[0];
}

export async function connectNats(env: Record<string, string | undefined>, opts: { timeoutMs?: number } = {}): Promise<NatsConnection> {
  const url = env.NATS_SERVER || 'nats://localhost:4222';
  if (!url.startsWith('nats://')) throw new ConnectionError(`NATS_SERVER must start with nats://, got '${url}'`);
  const options: ConnectionOptions = {
    servers: url.split(',').map((s) => s.trim().replace(/^nats:\/\//, '')),
    timeout: opts.timeoutMs ?? 3000,
    reconnect: true,
    maxReconnectAttempts: -1,
    name: 'dynamo-mocker',
  };
  if (env.NATS_AUTH_USERNAME && env.NATS_AUTH_PASSWORD) {
    options.user = env.NATS_AUTH_USERNAME;
    options.pass = env.NATS_AUTH_PASSWORD;
  } else if (env.NATS_AUTH_TOKEN) {
    options.token = env.NATS_AUTH_TOKEN;
  } else if (env.NATS_AUTH_CREDENTIALS_FILE) {
    const { credsAuthenticator } = await import('nats');
    options.authenticator = credsAuthenticator(readFileSync(env.NATS_AUTH_CREDENTIALS_FILE));
  }
  let nc: NatsConnection;
  try {
    nc = await connect(options);
  } catch (err) {
    throw new ConnectionError(`cannot connect to NATS at ${url} (NATS_SERVER): ${reason(err)}`);
  }
  try {
    const jsm = await nc.jetstreamManager({ timeout: opts.timeoutMs ?? 3000 });
    await jsm.getAccountInfo();
  } catch {
    await nc.close().catch(() => {});
    throw new ConnectionError(`NATS at ${url} (NATS_SERVER) has no JetStream: start nats-server with -js`);
  }
  return nc;
}

export async function connectEtcd(env: Record<string, string | undefined>, opts: { timeoutMs?: number } = {}): Promise<Etcd3> {
  const raw = env.ETCD_ENDPOINTS || 'http://localhost:2379';
  const hosts = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const auth = env.ETCD_AUTH_USERNAME && env.ETCD_AUTH_PASSWORD ? { username: env.ETCD_AUTH_USERNAME, password: env.ETCD_AUTH_PASSWORD } : undefined;
  const timeoutMs = opts.timeoutMs ?? 3000;
  const client = new Etcd3({ hosts, auth, dialTimeout: timeoutMs });
  // etcd3 retries internally; an unreachable etcd must still fail fast with a clear message.
  try {
    await Promise.race([
      client.get('v1/__dynamo_mocker_probe').string(),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs).unref()),
    ]);
  } catch (err) {
    client.close();
    throw new ConnectionError(`cannot connect to etcd at ${hosts.join(',')} (ETCD_ENDPOINTS): ${reason(err)}`);
  }
  return client;
}
