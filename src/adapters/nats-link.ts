// Whether a NATS connection is up, from its status events: one watcher per connection, shared by
// every publisher on it (a process with 1,024 workers still reads the status stream once).
import type { NatsConnection } from 'nats';

export interface ConnectionLink {
  /** False from a `disconnect` until the next `reconnect`, and for good once the connection is closed. */
  readonly connected: boolean;
  /** Calls `listener` on every change; returns the function that removes it. */
  onChange(listener: (connected: boolean) => void): () => void;
}

const links = new WeakMap<NatsConnection, ConnectionLink>();

export function natsLink(nc: NatsConnection): ConnectionLink {
  let link = links.get(nc);
  if (link) return link;
  const listeners = new Set<(connected: boolean) => void>();
  // nats.js has no public "is connected": its protocol handler knows (a link made mid-outage must
  // not start as up); without it, a connection that is not closed counts as up.
  const state = (nc as unknown as { protocol?: { connected?: unknown } }).protocol?.connected;
  let connected = !nc.isClosed() && (typeof state === 'boolean' ? state : true);
  const set = (up: boolean) => {
    if (up === connected) return;
    connected = up;
    for (const l of [...listeners]) l(up);
  };
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') set(false);
      else if (s.type === 'reconnect') set(true);
    }
    set(false);
  })().catch(() => set(false));
  void nc.closed().then(() => set(false));
  link = {
    get connected() {
      return connected;
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
  links.set(nc, link);
  return link;
}
