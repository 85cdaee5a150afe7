// Connects to NATS (JetStream required) the way Dynamo reads it from the environment, failing within
// seconds with one line that names the URL and the variable.
import { connect, credsAuthenticator, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from 'nats';
import { readFileSync } from 'node:fs';
import type { Env } from '../config.js';
import { ConnectionError, DEFAULT_TIMEOUT_MS, reason, redact } from './connection-error.js';
import { DEFAULT_NATS_SERVER, ServerUrlError, parseNatsServers } from './server-urls.js';

export { ConnectionError };

/** Delay between reconnect attempts to one server, plus nats.js's jitter of up to 100 ms. */
export const RECONNECT_WAIT_MS = 250;

/**
 * `NATS_SERVER` (default nats://localhost:4222, comma-separated list allowed, each must be nats://);
 * auth from the first of NATS_AUTH_USERNAME+NATS_AUTH_PASSWORD, NATS_AUTH_TOKEN, NATS_AUTH_NKEY,
 * NATS_AUTH_CREDENTIALS_FILE (Dynamo's order), else user info in the URL, else none. Dynamo's Rust
 * client sends user/user when nothing is set; that is only harmless on an auth-less server, so it is
 * not imitated. At start-up there is no reconnect loop: an unreachable server fails within
 * `timeoutMs`. Once connected, the client reconnects forever (as async-nats does), trying every
 * RECONNECT_WAIT_MS.
 */
export async function connectNats(env: Env, opts: { timeoutMs?: number } = {}): Promise<NatsConnection> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const url = env.NATS_SERVER || DEFAULT_NATS_SERVER;
  const shown = redact(url);
  let parsed;
  try {
    parsed = parseNatsServers(url);
  } catch (err) {
    if (err instanceof ServerUrlError) throw new ConnectionError(`${err.variable} ${err.message}`);
    throw err;
  }
  const { servers, auth: urlAuth } = parsed;

  const options: ConnectionOptions = {
    servers,
    timeout: timeoutMs,
    waitOnFirstConnect: false,
    reconnect: true,
    maxReconnectAttempts: -1,
    // nats.js waits 2 s between attempts by default; a worker should be back within a fraction of a
    // second of the server (its KV events, load and requests wait for it).
    reconnectTimeWait: RECONNECT_WAIT_MS,
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
