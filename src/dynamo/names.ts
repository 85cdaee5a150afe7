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

/** 1.x NATS transport string in the Endpoint record: raw (not slugified) names, used verbatim by the frontend. */
export function natsTransportSubject(ep: EndpointId, instanceId: bigint): string {
  return `${ep.namespace}_${ep.component}.${ep.endpoint}-${leaseHex(instanceId)}`;
}

/** 1.x TCP routing key (0.9+): `{instance id hex}/{endpoint}`, sent back verbatim as the frame's path. */
export function tcpRoutingKey(ep: EndpointId, instanceId: bigint): string {
  return `${leaseHex(instanceId)}/${ep.endpoint}`;
}

const utf8 = new TextEncoder();

/**
 * The file name of a key in the file discovery backend: Rust's `percent_encode(NON_ALPHANUMERIC)`,
 * every byte outside [A-Za-z0-9] as %XX with uppercase hex ('/', '-', '_' and '.' included).
 */
export function fileStoreName(key: string): string {
  let out = '';
  for (const b of utf8.encode(key)) {
    const alnum = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
    out += alnum ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Splits a discovery key into the file backend's bucket directory (`v1/instances`) and the key inside it. */
export function splitBucketKey(key: string): { bucket: string; key: string } {
  const parts = key.split('/');
  if (parts.length < 3) throw new RangeError(`discovery key '${key}' has no bucket`);
  return { bucket: parts.slice(0, 2).join('/'), key: parts.slice(2).join('/') };
}
