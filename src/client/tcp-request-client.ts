// Frontend side of the TCP request plane: pooled, pipelined connections; one reply per request, in order.
import { Socket } from 'node:net';
import { TcpResponseDecoder, encodeTcpRequest } from '../dynamo/tcp-request-codec.js';

export interface TcpClientOptions {
  /** DYN_TCP_POOL_SIZE: connections per worker address at most (Dynamo's code default 100). */
  poolSize: number;
  /** DYN_TCP_CONNECT_TIMEOUT, ms (code default 5 s). */
  connectTimeoutMs: number;
  /** DYN_TCP_REQUEST_TIMEOUT: how long to wait for the reply to a frame, ms (code default 5 s). */
  requestTimeoutMs: number;
}

interface Pending {
  resolve(reply: Uint8Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

class Connection {
  readonly pending: Pending[] = [];
  private readonly decoder = new TcpResponseDecoder();
  closed = false;

  constructor(readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      for (const reply of this.decoder.push(chunk)) {
        const p = this.pending.shift();
        if (!p) continue;
        clearTimeout(p.timer);
        p.resolve(reply);
      }
    });
    const fail = (): void => {
      this.closed = true;
      for (const p of this.pending.splice(0)) {
        clearTimeout(p.timer);
        p.reject(new Error('TCP request connection closed before the worker replied'));
      }
    };
    socket.on('close', fail);
    socket.on('error', fail);
  }
}

function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  let host = address.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(address.slice(i + 1)) };
}

export class TcpRequestClient {
  private readonly pools = new Map<string, Connection[]>();
  private readonly opening = new Map<string, Array<Promise<Connection>>>();

  constructor(private readonly o: TcpClientOptions) {}

  /** Number of open connections to `address` (for tests and benchmarks). */
  connections(address: string): number {
    return (this.pools.get(address) ?? []).filter((c) => !c.closed).length;
  }

  /**
   * Sends one 0.9+ frame and resolves with the worker's reply (empty = ACK). A connection is reused
   * when one is idle; otherwise a new one opens until the pool is full, after which requests are
   * pipelined on the least busy connection.
   */
  async send(address: string, path: string, headers: Record<string, string>, payload: Uint8Array): Promise<Uint8Array> {
    return this.sendFrame(address, encodeTcpRequest(path, headers, payload));
  }

  /** Sends arbitrary bytes as one request on a connection and waits for one reply. */
  async sendFrame(address: string, frame: Uint8Array): Promise<Uint8Array> {
    const conn = await this.pick(address);
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`TCP request to ${address} timed out after ${this.o.requestTimeoutMs} ms`));
        conn.socket.destroy();
      }, this.o.requestTimeoutMs);
      conn.pending.push({ resolve, reject, timer });
      conn.socket.write(frame);
    });
  }

  private async pick(address: string): Promise<Connection> {
    let pool = this.pools.get(address);
    if (!pool) this.pools.set(address, (pool = []));
    for (let i = pool.length - 1; i >= 0; i--) if (pool[i].closed) pool.splice(i, 1);
    const idle = pool.find((c) => c.pending.length === 0);
    if (idle) return idle;
    let opening = this.opening.get(address);
    if (!opening) this.opening.set(address, (opening = []));
    if (pool.length + opening.length < this.o.poolSize) {
      const list = opening;
      const ready: Promise<Connection> = this.open(address)
        .then((conn) => {
          pool.push(conn);
          return conn;
        })
        .finally(() => list.splice(list.indexOf(ready), 1));
      list.push(ready);
      return ready;
    }
    if (pool.length === 0) return opening[0];
    return pool.reduce((a, b) => (b.pending.length < a.pending.length ? b : a));
  }

  private open(address: string): Promise<Connection> {
    const { host, port } = splitHostPort(address);
    return new Promise((resolve, reject) => {
      const socket = new Socket();
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`TCP connection to ${address} timed out after ${this.o.connectTimeoutMs} ms`));
      }, this.o.connectTimeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`TCP connection to ${address} failed: ${err.message}`));
      });
      socket.connect(port, host, () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Connection(socket));
      });
    });
  }

  close(): void {
    for (const pool of this.pools.values()) for (const c of pool) c.socket.destroy();
    this.pools.clear();
  }
}
