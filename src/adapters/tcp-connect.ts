// Opening a TCP connection to a peer's advertised `host:port` within a deadline (call-home streams, request clients).
import { Socket } from 'node:net';

/** `host:port` (an IPv6 host in brackets) → its parts, or null when it is not such an address. */
export function splitHostPort(address: string): { host: string; port: number } | null {
  const i = address.lastIndexOf(':');
  const port = Number(address.slice(i + 1));
  let host = address.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) return null;
  return { host, port };
}

/**
 * Connects within `timeoutMs`. Failures are `{what} to {address} failed: …`, `… timed out after N ms`
 * or `bad {what} address`, made into errors by `error` (the caller's error class).
 */
export function connectTcp(address: string, timeoutMs: number, what: string, error: (message: string) => Error = (m) => new Error(m)): Promise<Socket> {
  const target = splitHostPort(address);
  if (!target) return Promise.reject(error(`bad ${what} address '${address}'`));
  return new Promise((resolve, reject) => {
    const socket = new Socket();
    const timer = setTimeout(() => {
      socket.destroy();
      reject(error(`${what} to ${address} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(error(`${what} to ${address} failed: ${err.message}`));
    });
    socket.connect(target.port, target.host, () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}
