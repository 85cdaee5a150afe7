// The zeromq library, loaded with a socket limit that fits --num-workers (before any socket exists).
import { readFileSync, readdirSync } from 'node:fs';
import { ConnectionError } from './connection-error.js';

/**
 * ZMQ's context allows 1023 sockets by default: 341 workers on the 1.4 ZMQ event plane (one PUB per
 * DP rank plus two per worker). The limit can only be raised before the first socket is made, so it
 * is raised here, where every adapter loads the library; the OS file-descriptor limit (about two
 * per socket) is then the real bound.
 */
export const ZMQ_MAX_SOCKETS = 65536;

export async function loadZmq(): Promise<typeof import('zeromq')> {
  const zmq = await import('zeromq');
  if (zmq.context.maxSockets < ZMQ_MAX_SOCKETS) zmq.context.maxSockets = ZMQ_MAX_SOCKETS;
  return zmq;
}

/** A socket the OS or ZMQ refused for lack of descriptors, as one line that says what to do (other errors as they are). */
export function tooManySockets(err: unknown, what: string): unknown {
  const text = (err as Error)?.message ?? String(err);
  if (!/too many open files|too many open file descriptors|EMFILE/i.test(text)) return err;
  return new ConnectionError(`cannot open ${what}: too many open files (each ZMQ socket takes about two descriptors; raise 'ulimit -n' or use DYN_EVENT_PLANE=nats)`);
}

/** Descriptors left for everything else (connections, files, the loader). */
const DESCRIPTOR_HEADROOM = 128;

/**
 * Refuses, with one line, to start when `sockets` more ZMQ sockets (about two descriptors each) would
 * not fit under the soft limit on open files: libzmq aborts the whole process when it runs out
 * (SIGABRT from inside its resolver), so this is checked before any worker starts. Linux only (it
 * reads /proc); elsewhere it checks nothing.
 */
export function checkZmqDescriptors(sockets: number, who: string, advice: string): void {
  let limit: number;
  let open: number;
  try {
    const line = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    if (line === undefined || line === 'unlimited') return;
    limit = Number(line);
    open = readdirSync('/proc/self/fd').length;
  } catch {
    return;
  }
  const needed = open + 2 * sockets + DESCRIPTOR_HEADROOM;
  if (needed <= limit) return;
  throw new ConnectionError(
    `${who} needs ${sockets} ZMQ sockets, about ${needed} file descriptors (two per socket), more than this process may open (${limit}, ulimit -n): ${advice}`,
  );
}
