// The address this host advertises to peers, picked as Dynamo's local_ip_for_advertise does.
import { networkInterfaces } from 'node:os';

/** The primary local IP: the first non-internal IPv4, else a non-link-local IPv6, else loopback. */
export function primaryLocalIp(): string {
  const all = Object.values(networkInterfaces()).flatMap((list) => list ?? []);
  const v4 = all.find((a) => a.family === 'IPv4' && !a.internal);
  if (v4) return v4.address;
  const v6 = all.find((a) => a.family === 'IPv6' && !a.internal && !a.address.startsWith('fe80'));
  return v6 ? v6.address : '127.0.0.1';
}

/** An address to advertise for a bind host: the primary local IP instead of a wildcard. */
export function advertisedHost(bindHost: string): string {
  return bindHost === '0.0.0.0' || bindHost === '::' || bindHost === '[::]' ? primaryLocalIp() : bindHost;
}

/** `host:port`, with an IPv6 host in brackets. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}
