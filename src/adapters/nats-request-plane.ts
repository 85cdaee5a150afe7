// The NATS request plane: the endpoint as a NATS micro service, as Dynamo's runtime builds it.
import type { NatsConnection, Service } from 'nats';
import type { Logger } from 'pino';

export interface NatsEndpointSpec {
  /** Service name: slugify("{ns}_{component}"). */
  service: string;
  /** The runtime version Dynamo reports ($SRV.INFO `version`). */
  version: string;
  description: string;
  /** Endpoint name: "{endpoint}-{instance id hex}". */
  name: string;
  subject: string;
}

/**
 * Serves one worker's endpoint: queue group "q", answering $SRV.PING/INFO/STATS (stats `data` null,
 * as Dynamo's mocker registers no stats payload). Every request is acked at once with an empty
 * reply, which the frontend waits for before it expects the call home. Resolves once the
 * subscription is registered with the server.
 */
export async function serveNatsEndpoint(
  nc: NatsConnection,
  spec: NatsEndpointSpec,
  handle: (payload: Uint8Array) => void,
  log: Logger,
): Promise<{ stop(): Promise<void> }> {
  const service: Service = await nc.services.add({
    name: spec.service,
    version: spec.version,
    description: spec.description,
    queue: 'q',
    statsHandler: async () => null,
  });
  const empty = new Uint8Array(0);
  service.addEndpoint(spec.name, {
    subject: spec.subject,
    handler: (err, msg) => {
      if (err) {
        log.error({ err }, 'request subscription failed');
        return;
      }
      if (msg.reply) msg.respond(empty);
      handle(msg.data);
    },
  });
  await nc.flush();
  return {
    // Drains the subscription: messages already delivered are still acked and handled.
    stop: () => service.stop().then(
      () => {},
      () => {},
    ),
  };
}
