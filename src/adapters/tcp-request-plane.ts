// The TCP request plane (Dynamo ≥ 0.8): one listener per process, frames routed by path, one ACK per frame.
//
// Every frame gets exactly one reply, in arrival order on its connection, and that reply is always
// the empty ACK: a 1.4 frontend takes any other reply but "Server overloaded:"/"Server unavailable:"
// for an ACK and then waits for a call home that never comes. A request that cannot be served
// (unknown path, over capacity) is therefore ACKed and refused on its call-home stream. Only bytes
// that cannot be framed at all (a frame over DYN_TCP_MAX_MESSAGE_SIZE) close the connection, after
// the frames before them were served; the frontend then fails that request at once.
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { TcpServerSettings } from '../config.js';
import { TCP_ACK, TcpRequestDecoder } from '../dynamo/tcp-request-codec.js';
import type { TransportFault } from '../serving/request-server.js';
import { limitedWarn, reasonOf, type WarningLimiter } from '../log-limiter.js';
import { advertisedHost, hostPort, primaryLocalIp } from './local-ip.js';

export interface TcpRoute {
  /** Serves one acknowledged request; resolves when its stream has ended. Never rejects. */
  handle(payload: Uint8Array, fault: TransportFault | null): Promise<void>;
}

export interface TcpRequestPlaneOptions {
  settings: TcpServerSettings;
  log: Logger;
  /** Rate-limits the per-connection warnings about unreadable bytes; absent: every line is logged. */
  warnings?: WarningLimiter;
  /** A request whose path names no endpoint served here: refuse it on its stream if it can be read. */
  unrouted(payload: Uint8Array, fault: TransportFault): void;
  /** A connection closed because its bytes cannot be framed. */
  framingError(message: string): void;
}

export class TcpRequestPlane {
  private readonly routes = new Map<string, TcpRoute>();
  private readonly sockets = new Set<Socket>();
  private inflight = 0;
  private readonly capacity: number;

  private constructor(
    private readonly server: Server,
    /** `ip:port` as advertised in Endpoint records. */
    readonly address: string,
    private readonly o: TcpRequestPlaneOptions,
  ) {
    this.capacity = o.settings.workerPoolSize + o.settings.workQueueSize;
    server.on('connection', (socket) => this.accept(socket));
    // A failing socket must never take the listener down.
    server.on('error', (err) => o.log.error({ err }, 'TCP request plane error'));
  }

  /** Binds DYN_TCP_RPC_HOST (else the primary local IP) on DYN_TCP_RPC_PORT (0 = any free port). */
  static async listen(o: TcpRequestPlaneOptions): Promise<TcpRequestPlane> {
    const bindHost = o.settings.host ?? primaryLocalIp();
    const server = createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.settings.port, bindHost, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const { port } = server.address() as { port: number };
    // Bound to every interface: advertise one the frontend can reach.
    return new TcpRequestPlane(server, hostPort(advertisedHost(bindHost), port), o);
  }

  /** The Endpoint record's transport string for a routing key: `ip:port/{hex}/{endpoint}`. */
  transport(path: string): string {
    return `${this.address}/${path}`;
  }

  route(path: string, route: TcpRoute): void {
    this.routes.set(path, route);
  }

  /** Stops routing to `path`: later frames for it are refused as an unknown endpoint. */
  unroute(path: string): void {
    this.routes.delete(path);
  }

  /** Closes the listener and every connection. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new TcpRequestDecoder(this.o.settings.maxMessageBytes, this.o.settings.shrinkMessageBytes);
    let warnedHeaders = false;
    socket.on('data', (chunk: Buffer) => {
      const frames = decoder.push(chunk);
      // Frames that arrived together are ACKed with one write.
      if (frames.length > 1) socket.cork();
      for (const frame of frames) {
        // The payload is a view into the decoder's buffer, which the next chunk may overwrite.
        const payload = frame.payload.slice();
        if (frame.headersError && !warnedHeaders) {
          warnedHeaders = true;
          const msg = `ignoring unreadable request headers from ${socket.remoteAddress}:${socket.remotePort} (${frame.headersError})`;
          limitedWarn(this.o.warnings, 'malformed-request', 'unreadable request headers', this.o.log, undefined, msg);
        }
        this.dispatch(frame.path, payload);
        socket.write(TCP_ACK);
      }
      if (frames.length > 1) socket.uncork();
      if (decoder.error) {
        this.o.framingError(decoder.error.message);
        const msg = `closing request connection from ${socket.remoteAddress}:${socket.remotePort}: ${decoder.error.message}`;
        limitedWarn(this.o.warnings, 'malformed-request', reasonOf(decoder.error.message), this.o.log, undefined, msg);
        socket.destroy();
      }
    });
  }

  private dispatch(path: string | null, payload: Uint8Array): void {
    if (path === null) return this.o.unrouted(payload, { type: 'invalid_message', message: 'Invalid endpoint path: not valid UTF-8' });
    const route = this.routes.get(path);
    if (!route) return this.o.unrouted(payload, { type: 'generate', message: `unknown endpoint ${JSON.stringify(path)}` });
    const fault = this.inflight >= this.capacity ? { type: 'generate' as const, message: 'Server overloaded: worker at capacity' } : null;
    this.inflight++;
    void route.handle(payload, fault).finally(() => this.inflight--);
  }
}
