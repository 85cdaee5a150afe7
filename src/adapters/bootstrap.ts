// The DMHF bootstrap connection over TCP: a prefill worker's server that decode workers register with, and the decode side's connect.
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import {
  DMHF_HEADER,
  HandoffFrameDecoder,
  checkHeader,
  encodeHandoffFrame,
  sameIdentity,
  type HandoffIdentity,
  type RegisterMessage as Register,
} from '../dynamo/handoff-wire.js';
import { QueuedChannel, type HandoffChannel } from '../serving/handoff-channel.js';
import { hostPort } from './local-ip.js';
import { connectTcp } from './tcp-connect.js';

/** Dynamo's limit for the header and the first frame, and for connecting. */
export const BOOTSTRAP_IO_TIMEOUT_MS = 30_000;

/**
 * A channel over an established socket: every frame repeats the identity, and a frame that changes
 * it (or cannot be read) ends the session, as Dynamo's transport does.
 */
function socketChannel(socket: Socket, identity: HandoffIdentity, decoder: HandoffFrameDecoder, first: Uint8Array | null): QueuedChannel {
  const channel = new QueuedChannel(
    identity,
    (message) => socket.write(encodeHandoffFrame({ identity, message })),
    () => socket.end(),
  );
  const take = (chunk: Uint8Array): void => {
    try {
      for (const frame of decoder.push(chunk)) {
        if (!sameIdentity(frame.identity, identity)) throw new Error('bootstrap frame changed session identity');
        channel.deliver(frame.message);
      }
    } catch (err) {
      channel.end((err as Error).message);
      socket.destroy();
    }
  };
  socket.on('data', take);
  socket.on('error', (err) => channel.end(err.message));
  socket.on('close', () => channel.end('peer disconnected'));
  if (first && first.length) take(first);
  return channel;
}

export interface BootstrapServer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Listens on all interfaces (Dynamo binds 0.0.0.0) for decode workers. A connection must start with
 * the 8-byte DMHF header and a Register frame from a Destination within 30 s; anything else is
 * closed without a word (Dynamo sends no ProtocolError there either).
 */
export function listenBootstrap(port: number, onDestination: (channel: HandoffChannel, register: Register) => void, log: Logger): Promise<BootstrapServer> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.setNoDelay(true);
    const decoder = new HandoffFrameDecoder();
    let header: Uint8Array = new Uint8Array(0);
    const timer = setTimeout(() => drop('no registration within 30 s'), BOOTSTRAP_IO_TIMEOUT_MS);
    const drop = (why: string): void => {
      clearTimeout(timer);
      log.debug(`bootstrap connection from ${socket.remoteAddress} dropped: ${why}`);
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      try {
        let rest: Uint8Array = chunk;
        if (header.length < DMHF_HEADER.length) {
          const need = DMHF_HEADER.length - header.length;
          header = concat(header, rest.subarray(0, need));
          rest = rest.subarray(need);
          if (header.length < DMHF_HEADER.length) return;
          checkHeader(header);
        }
        // Only the first frame is read here; the session's channel reads the rest.
        const frames = decoder.push(rest);
        if (frames.length === 0) return;
        const [first] = frames;
        if (first.message.kind !== 'Register' || first.message.role !== 'Destination') return drop('bootstrap first frame must register a participant');
        clearTimeout(timer);
        socket.off('data', onData);
        const channel = socketChannel(socket, first.identity, decoder, null);
        onDestination(channel, first.message);
        for (const later of frames.slice(1)) {
          if (!sameIdentity(later.identity, first.identity)) return channel.close('bootstrap frame changed session identity');
          channel.deliver(later.message);
        }
      } catch (err) {
        drop((err as Error).message);
      }
    };
    socket.on('data', onData);
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`bootstrap server cannot listen on port ${port}: ${err.message}`)));
    server.listen({ port, host: '0.0.0.0' }, () => {
      const bound = (server.address() as { port: number }).port;
      log.info(`bootstrap server listening on 0.0.0.0:${bound}`);
      resolve({
        port: bound,
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

/** The decode side: connects, sends the header and its Register, and returns the session's channel. */
export async function connectBootstrap(host: string, port: number, identity: HandoffIdentity, register: Register, timeoutMs = BOOTSTRAP_IO_TIMEOUT_MS): Promise<HandoffChannel> {
  const socket = await connectTcp(hostPort(host, port), timeoutMs, 'bootstrap connection');
  socket.setNoDelay(true);
  socket.write(DMHF_HEADER);
  socket.write(encodeHandoffFrame({ identity, message: register }));
  return socketChannel(socket, identity, new HandoffFrameDecoder(), null);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
