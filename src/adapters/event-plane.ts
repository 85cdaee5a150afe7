// Dynamo 1.x event-plane transports: envelopes over core NATS, or over one ZMQ PUB socket per publisher.
import type { NatsConnection } from 'nats';
import type { Logger } from 'pino';
import type { Publisher as ZmqPublisher } from 'zeromq';
import type { EndpointId } from '../config.js';
import { endpointSubjectPrefix, eventSubject, zmqFrames, type EventTransportRecord } from '../dynamo/event-plane-wire.js';
import { advertisedHost, hostPort } from './local-ip.js';
import { natsLink } from './nats-link.js';
import { loadZmq, tooManySockets } from './zmq-library.js';

/** One publisher's way out: what its EventChannel record advertises, and how an envelope leaves. */
export interface EventSink {
  readonly record: EventTransportRecord;
  send(publisherId: bigint, sequence: bigint, envelope: Uint8Array): void;
  close(): Promise<void>;
}

export interface EventTransport {
  /** A sink for one publisher of `topic` at the endpoint's scope. */
  open(ep: EndpointId, topic: string): Promise<EventSink>;
  /**
   * Transports that lose messages while their connection is down (core NATS) call `listener` each
   * time it is back; returns the function that removes it.
   */
  onReconnect?(listener: () => void): () => void;
}

/**
 * Core-NATS publish of the envelope bytes to `namespace.{ns}.component.{cp}.endpoint.{ep}.{topic}`.
 * While the connection is down nats.js buffers publishes but drops the buffer at each redial, and a
 * router's subscription is down too: what is published then is lost, which routers see as a gap in
 * the event ids. `onReconnect` lets the publishers republish their state once the connection is back.
 */
export function natsEventTransport(nc: NatsConnection): EventTransport {
  return {
    onReconnect: (listener) => natsLink(nc).onChange((up) => up && listener()),
    async open(ep, topic) {
      const subject = eventSubject(ep, topic);
      return {
        record: { kind: 'Nats', subjectPrefix: endpointSubjectPrefix(ep) },
        send: (_publisherId, _sequence, envelope) => {
          if (!nc.isClosed()) nc.publish(subject, envelope);
        },
        close: async () => {},
      };
    },
  };
}

/** Dynamo's PUB options: a deep send queue, and never block the engine on a slow subscriber. */
const SEND_HIGH_WATER_MARK = 100_000;

/**
 * One ZMQ PUB socket per publisher, bound on every interface at a free port (or DYN_EVENT_PLANE_HOST)
 * and advertised as `tcp://{local IP}:{port}`; each envelope is the 4-frame message subscribers
 * check (topic, publisher id, sequence, framed envelope).
 */
export async function zmqEventTransport(log: Logger, bindHost = '0.0.0.0'): Promise<EventTransport> {
  const zmq = await loadZmq();
  // Looked up once: reading the interfaces for each of N workers' publishers costs ~0.2 ms apiece.
  const advertised = advertisedHost(bindHost);
  return {
    async open(_ep, topic) {
      let socket: ZmqPublisher | null = null;
      try {
        socket = new zmq.Publisher({ sendHighWaterMark: SEND_HIGH_WATER_MARK, sendTimeout: 0, linger: 0 });
        await socket.bind(`tcp://${bindHost.includes(':') ? `[${bindHost}]` : bindHost}:0`);
      } catch (err) {
        socket?.close();
        throw tooManySockets(err, `a ZMQ PUB socket for the '${topic}' event publisher`);
      }
      const port = Number(/:(\d+)$/.exec(socket.lastEndpoint ?? '')?.[1]);
      const queue = new SendQueue(socket, log);
      return {
        record: { kind: 'Zmq', endpoint: `tcp://${hostPort(advertised, port)}` },
        send: (publisherId, sequence, envelope) => queue.push(zmqFrames(topic, publisherId, sequence, envelope)),
        close: async () => {
          await queue.drained();
          socket.close();
        },
      };
    },
  };
}

/** zeromq.js allows one send in flight per socket: messages wait here, in order. */
class SendQueue {
  private readonly pending: Uint8Array[][] = [];
  private sending: Promise<void> | null = null;

  constructor(
    private readonly socket: ZmqPublisher,
    private readonly log: Logger,
  ) {}

  push(frames: Uint8Array[]): void {
    this.pending.push(frames);
    this.sending ??= this.pump();
  }

  async drained(): Promise<void> {
    await this.sending;
  }

  private async pump(): Promise<void> {
    for (let next = this.pending.shift(); next; next = this.pending.shift()) {
      try {
        await this.socket.send(next);
      } catch (err) {
        // A PUB socket drops what it cannot queue; a closed socket means shutdown.
        if (!this.socket.closed) this.log.warn(`event-plane send failed: ${(err as Error).message}`);
      }
    }
    this.sending = null;
  }
}
