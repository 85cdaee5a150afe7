// NATS_SERVER and ETCD_ENDPOINTS as URL lists: checked by the config before anything connects, used by
// the connections. Loads no client library.
import { redactCredentials } from '../redact.js';

/** A bad URL list: the message names the variable and shows the URL with its credentials masked. */
export class ServerUrlError extends Error {
  override name = 'ServerUrlError';
  constructor(
    readonly variable: 'NATS_SERVER' | 'ETCD_ENDPOINTS',
    message: string,
  ) {
    super(message);
  }
}

export interface UserInfo {
  user: string;
  /** Empty for a bare token (`nats://token@host`). */
  pass: string;
}

export interface EtcdEndpoints {
  /** The URLs without user info (the client's resolver never sees credentials). */
  hosts: string[];
  /** The first URL's user info, if any. */
  auth: UserInfo | null;
}

export const DEFAULT_ETCD_ENDPOINTS = 'http://localhost:2379';
export const DEFAULT_NATS_SERVER = 'nats://localhost:4222';

function list(raw: string): string[] {
  return raw.split(',').map((s) => s.trim()).filter(Boolean);
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** `ETCD_ENDPOINTS`: comma-separated http(s)://host:port URLs; user info is split off. */
export function parseEtcdEndpoints(raw: string | undefined): EtcdEndpoints {
  const urls = list(raw || DEFAULT_ETCD_ENDPOINTS);
  if (urls.length === 0) throw new ServerUrlError('ETCD_ENDPOINTS', `must list http(s)://host:port URLs, got '${redactCredentials(raw ?? '')}'`);
  const hosts: string[] = [];
  let auth: UserInfo | null = null;
  for (const u of urls) {
    // The last '@' before the path ends the user info (a password may hold an unencoded '@').
    const m = /^(https?:\/\/)(?:([^/?#]*)@)?([^/?#@]+)(.*)$/i.exec(u);
    let ok = m !== null;
    if (m) {
      try {
        ok = new URL(`${m[1]}${m[3]}`).hostname !== '';
      } catch {
        ok = false;
      }
    }
    if (!m || !ok) throw new ServerUrlError('ETCD_ENDPOINTS', `must list http(s)://host:port URLs, got '${redactCredentials(u)}'`);
    const [, scheme, userinfo, hostPort, rest] = m;
    if (userinfo !== undefined && auth === null) {
      const colon = userinfo.indexOf(':');
      auth = colon === -1 ? { user: decode(userinfo), pass: '' } : { user: decode(userinfo.slice(0, colon)), pass: decode(userinfo.slice(colon + 1)) };
    }
    hosts.push(`${scheme}${hostPort}${rest}`);
  }
  return { hosts, auth };
}

export interface NatsServers {
  /** host:port of each server (default port 4222). */
  servers: string[];
  /** The first URL's user info, if any (user+password, or a token as `user`). */
  auth: UserInfo | null;
}

/** `NATS_SERVER`: comma-separated nats://host:port URLs. */
export function parseNatsServers(raw: string | undefined): NatsServers {
  const urls = list(raw || DEFAULT_NATS_SERVER);
  if (urls.length === 0) throw new ServerUrlError('NATS_SERVER', `must be a nats://host:port URL, got '${redactCredentials(raw ?? '')}'`);
  const servers: string[] = [];
  let auth: UserInfo | null = null;
  for (const u of urls) {
    let parsed: URL | null;
    try {
      parsed = new URL(u);
    } catch {
      parsed = null;
    }
    if (parsed === null || parsed.protocol !== 'nats:' || !parsed.hostname) {
      throw new ServerUrlError('NATS_SERVER', `must be a nats://host:port URL, got '${redactCredentials(u)}'`);
    }
    if (parsed.username && !auth) auth = { user: decode(parsed.username), pass: decode(parsed.password) };
    servers.push(`${parsed.hostname}:${parsed.port || '4222'}`);
  }
  return { servers, auth };
}
