// Frontend side of the TCP request plane, pooled as Dynamo's frontend does it: requests share a connection
// (pipelined, one reply per request, in order) until it has DYN_TCP_CHANNEL_BUFFER of them unanswered;
// only then does the pool grow, up to DYN_TCP_POOL_SIZE connections.
import type { Socket } from 'node:net';
import { connectTcp } from '../adapters/tcp-connect.js';
import { TcpResponseDecoder, encodeTcpRequest } from '../dynamo/tcp-request-codec.js';

export interface TcpClientOptions {
  /** DYN_TCP_POOL_SIZE: connections per worker address at most (Dynamo's code default 100). */
  poolSize: number;
  /** DYN_TCP_CHANNEL_BUFFER: unanswered requests a connection takes before another is opened (1024). */
  channelBuffer: number;
  /** DYN_TCP_CONNECT_TIMEOUT, ms (code default 5 s). */
  connectTimeoutMs: number;
  /** DYN_TCP_REQUEST_TIMEOUT: how long to wait for the reply to a frame, ms (code default 5 s). */
  requestTimeoutMs: number;
}

interface Pending {
  resolve(reply: Uint8Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
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

export class TcpRequestClient {
  private readonly pools = new Map<string, Connection[]>();
  private readonly opening = new Map<string, Promise<Connection>>();
  private turn = 0;

  constructor(private readonly o: TcpClientOptions) {}

  /** Number of open connections to `address` (for tests and benchmarks). */
  connections(address: string): number {
    return (this.pools.get(address) ?? []).filter((c) => !c.closed).length;
  }

  /** Sends one 0.9+ frame and resolves with the worker's reply (empty = ACK). */
  async send(address: string, path: string, headers: Record<string, string>, payload: Uint8Array): Promise<Uint8Array> {
    return this.sendFrame(address, encodeTcpRequest(path, headers, payload));
  }

  /** Sends arbitrary bytes as one request on a connection and waits for one reply. */
  sendFrame(address: string, frame: Uint8Array): Promise<Uint8Array> {
    return new Promise<Uint8Array>((resolve, reject) => {
      const entry: Pending = { resolve, reject, timer: undefined };
      this.dispatch(address, frame, entry).catch(reject);
    });
  }

  /**
   * Picks a connection and, in the same synchronous step, counts the request on it and writes the
   * frame, so concurrent callers see each other's load and replies match requests in order.
   */
  private async dispatch(address: string, frame: Uint8Array, entry: Pending): Promise<void> {
    let pool = this.pools.get(address);
    if (!pool) this.pools.set(address, (pool = []));
    const send = (conn: Connection): void => {
      entry.timer = setTimeout(() => {
        entry.reject(new Error(`TCP request to ${address} timed out after ${this.o.requestTimeoutMs} ms`));
        conn.socket.destroy();
      }, this.o.requestTimeoutMs);
      conn.pending.push(entry);
      conn.socket.write(frame);
    };
    for (;;) {
      for (let i = pool.length - 1; i >= 0; i--) if (pool[i].closed) pool.splice(i, 1);
      // Round-robin over the connections that still have room, as Dynamo's HostPool does.
      const start = this.turn++;
      for (let i = 0; i < pool.length; i++) {
        const conn = pool[(start + i) % pool.length];
        if (conn.pending.length < this.o.channelBuffer) return send(conn);
      }
      if (pool.length >= this.o.poolSize && pool.length > 0) {
        return send(pool.reduce((a, b) => (b.pending.length < a.pending.length ? b : a)));
      }
      // One connection opens at a time; whoever waited for it looks again once it is there.
      const opening = this.opening.get(address);
      if (opening) {
        await opening.catch(() => {});
        continue;
      }
      const list = pool;
      const ready = this.open(address).then((conn) => {
        list.push(conn);
        return conn;
      });
      this.opening.set(address, ready);
      try {
        await ready;
      } finally {
        this.opening.delete(address);
      }
    }
  }

  private async open(address: string): Promise<Connection> {
    return new Connection(await connectTcp(address, this.o.connectTimeoutMs, 'TCP connection'));
  }

  close(): void {
    for (const pool of this.pools.values()) for (const c of pool) c.socket.destroy();
    this.pools.clear();
  }
}
