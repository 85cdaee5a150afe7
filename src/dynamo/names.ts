// Dynamo's names: slugs, NATS subjects, etcd keys and stream names derived from an endpoint and lease.
import type { EndpointId } from '../config.js';

/**
 * Dynamo's Slug::slugify: lowercase, anything outside [a-z0-9-_] becomes '_', leading '_' stripped.
 * Rust maps each `char` (code point), so the regex runs in `u` mode: an astral character such as an
 * emoji becomes one '_', not two (one per UTF-16 code unit).
 */
export function slugify(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9_-]/gu, '_')
    .replace(/^_+/, '');
}

/** NATS service name of a component: slugify("{ns}_{component}"). */
export function serviceName(ep: EndpointId): string {
  return slugify(`${ep.namespace}_${ep.component}`);
}

/** Rust's `{:x}` of the lease id: lowercase hex, no prefix, no leading zeros. */
export function leaseHex(id: bigint): string {
  if (id < 0n || id > 0xffff_ffff_ffff_ffffn) throw new RangeError(`lease id ${id} is not a u64`);
  return id.toString(16);
}

export function requestSubject(ep: EndpointId, leaseId: bigint): string {
  return `${serviceName(ep)}.${ep.endpoint}-${leaseHex(leaseId)}`;
}

export function instanceKey(ep: EndpointId, leaseId: bigint): string {
  return `v1/instances/${ep.namespace}/${ep.component}/${ep.endpoint}/${leaseHex(leaseId)}`;
}

/** The prefix the frontend watches (no trailing slash, as Dynamo does). */
export function instancePrefix(ep: EndpointId): string {
  return `v1/instances/${ep.namespace}/${ep.component}/${ep.endpoint}`;
}

export function cardKey(ep: EndpointId, leaseId: bigint): string {
  return `v1/mdc/${ep.namespace}/${ep.component}/${ep.endpoint}/${leaseHex(leaseId)}`;
}

/** JetStream stream of a component's KV events: slugify("namespace.{ns}.component.{cp}.kv_events") with '_' → '-'. */
export function kvEventStreamName(namespace: string, component: string): string {
  return slugify(`namespace.${namespace}.component.${component}.kv_events`).replace(/_/g, '-');
}

/** Core-NATS subject of load events (raw namespace, not slugified). */
export function kvMetricsSubject(namespace: string): string {
  return `namespace.${namespace}.kv_metrics`;
}
