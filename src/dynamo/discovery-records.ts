// The values a worker writes under v1/instances and v1/mdc: untagged for 0.6.x, tagged DiscoveryInstance for 1.x.
import type { EndpointId } from '../config.js';
import { stringifyJson } from './lossless-json.js';

/** How the frontend reaches an instance (Dynamo's TransportType). */
export type Transport = { nats_tcp: string } | { tcp: string };

/** The 0.6.x Instance record: pretty JSON (serde_json::to_string_pretty), exact u64 instance id. */
export function instanceRecord(ep: EndpointId, leaseId: bigint, subject: string): string {
  return stringifyJson(
    { component: ep.component, endpoint: ep.endpoint, namespace: ep.namespace, instance_id: leaseId, transport: { nats_tcp: subject } },
    { pretty: true },
  );
}

/**
 * The 1.x `{"type":"Endpoint",…}` record: compact, the tag first, then the Instance fields in
 * declaration order. `device_type` is written as Dynamo's workers write it; `request_plane_codec`
 * is left out, so the frontend talks JSON to this worker.
 */
export function endpointRecord(ep: EndpointId, instanceId: bigint, transport: Transport, deviceType: 'cpu' | 'cuda'): string {
  return stringifyJson({
    type: 'Endpoint',
    component: ep.component,
    endpoint: ep.endpoint,
    namespace: ep.namespace,
    instance_id: instanceId,
    transport,
    device_type: deviceType,
  });
}

/** The 1.x `{"type":"Model",…}` record: the card as an object inside `card_json`, not as a string. */
export function modelRecord(ep: EndpointId, instanceId: bigint, cardJson: string): string {
  const head = stringifyJson({ type: 'Model', namespace: ep.namespace, component: ep.component, endpoint: ep.endpoint, instance_id: instanceId });
  return `${head.slice(0, -1)},"card_json":${cardJson}}`;
}
