// Dynamo 1.4's event plane on the wire: subjects, publisher records, the msgpack envelope and its payloads.
//
// Payloads are msgpack maps keyed by field name in Rust's declaration order (rmp-serde
// `to_vec_named`), written with msgpackr in rmp-serde's byte forms: unsigned integers in their
// smallest uint form (a u64 above 32 bits as `cf` + 8 bytes, never msgpackr's int64 `d3` nor a
// float), and f64 fields always as `cb` + 8 bytes, even when their value is integral.
import { Packr, addExtension } from 'msgpackr';
import type { EndpointId } from '../config.js';
import type { KvEventData } from '../core/types.js';
import { stringifyJson } from './lossless-json.js';

const packr = new Packr({ useRecords: false, variableMapSize: true });

/** A u64 above 32 bits, to be written as msgpack uint64. */
class Uint64 {
  constructor(readonly value: bigint) {}
}

/** An f64 field's value, to be written as msgpack float64. */
class Float64 {
  constructor(readonly value: number) {}
}

type Allocate = (size: number) => { targetView: DataView; position: number };

/**
 * msgpackr's extension hook may write raw bytes instead of an ext record: `pack` is handed an
 * allocator into the output buffer and returns nothing, so the type code is never written.
 */
function rawExtension<T>(Class: new (...args: never[]) => T, type: number, write: (v: T, view: DataView, at: number) => void): void {
  const pack = (v: T, allocate: Allocate): undefined => {
    const { targetView, position } = allocate(9);
    write(v, targetView, position);
    return undefined;
  };
  addExtension({ Class, type, pack: pack as unknown as (value: unknown) => Uint8Array });
}
rawExtension(Uint64, 98, (v, view, at) => {
  view.setUint8(at, 0xcf);
  view.setBigUint64(at + 1, v.value);
});
rawExtension(Float64, 99, (v, view, at) => {
  view.setUint8(at, 0xcb);
  view.setFloat64(at + 1, v.value);
});

export const KV_EVENTS_TOPIC = 'kv-events';
export const KV_METRICS_TOPIC = 'kv_metrics';
export const FPM_TOPIC = 'forward-pass-metrics';

/** A u64 as rmp-serde writes it: a number up to 32 bits (smallest uint form), uint64 beyond. */
function u64(v: bigint | number): number | Uint64 {
  return typeof v === 'bigint' ? (v <= 0xffffffffn ? Number(v) : new Uint64(v)) : v <= 0xffffffff ? v : new Uint64(BigInt(v));
}

const f64 = (v: number) => new Float64(v);

/** Dynamo ≥ 1.4's `encode_event_segment`: bytes of [A-Za-z0-9_-] kept, every other byte as %XX. */
export function encodeEventSegment(s: string): string {
  let out = '';
  for (const b of new TextEncoder().encode(s)) {
    const keep = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f || b === 0x2d;
    out += keep ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The endpoint scope's subject prefix: `namespace.{ns}.component.{cp}.endpoint.{ep}`. */
export function endpointSubjectPrefix(ep: EndpointId): string {
  return `namespace.${encodeEventSegment(ep.namespace)}.component.${encodeEventSegment(ep.component)}.endpoint.${encodeEventSegment(ep.endpoint)}`;
}

/** The NATS subject of a topic at endpoint scope (1.4 publishes every worker topic there). */
export function eventSubject(ep: EndpointId, topic: string): string {
  return `${endpointSubjectPrefix(ep)}.${encodeEventSegment(topic)}`;
}

function scopePath(ep: EndpointId): string {
  return `namespace/${encodeEventSegment(ep.namespace)}/component/${encodeEventSegment(ep.component)}/endpoint/${encodeEventSegment(ep.endpoint)}`;
}

export function eventChannelKey(ep: EndpointId, topic: string, publisherId: bigint): string {
  return `v1/event_channels/${scopePath(ep)}/topic/${encodeEventSegment(topic)}/${publisherId.toString(16)}`;
}

export function eventSourceKey(ep: EndpointId, topic: string, publisherId: bigint): string {
  return `v1/event_sources/${scopePath(ep)}/topic/${encodeEventSegment(topic)}/${publisherId.toString(16)}`;
}

function endpointScope(ep: EndpointId) {
  return { kind: 'endpoint', endpoint: { namespace: ep.namespace, component: ep.component, name: ep.endpoint } };
}

/** Where subscribers find a publisher: a ZMQ PUB endpoint, or the NATS subject prefix. */
export type EventTransportRecord = { kind: 'Zmq'; endpoint: string } | { kind: 'Nats'; subjectPrefix: string };

/** `{"type":"EventChannel",…}`: one per publisher, `instance_id` = its publisher id. */
export function eventChannelRecord(ep: EndpointId, topic: string, publisherId: bigint, transport: EventTransportRecord): string {
  const t = transport.kind === 'Zmq' ? { kind: 'Zmq', config: { endpoint: transport.endpoint } } : { kind: 'Nats', config: { subject_prefix: transport.subjectPrefix } };
  return stringifyJson({ type: 'EventChannel', scope: endpointScope(ep), topic, instance_id: publisherId, transport: t });
}

/**
 * `{"type":"EventSource",…}`: binds a KV publisher to the (worker, DP rank) whose events it carries.
 * Without `recovery_target` in its metadata it is a live-only source.
 */
export function eventSourceRecord(ep: EndpointId, publisherId: bigint, workerId: bigint, dpRank: number): string {
  const endpoint = { namespace: ep.namespace, component: ep.component, name: ep.endpoint };
  return stringifyJson({
    type: 'EventSource',
    scope: endpointScope(ep),
    topic: KV_EVENTS_TOPIC,
    publisher_id: publisherId,
    metadata: { kv_state_endpoint: endpoint, worker: { worker_id: workerId, dp_rank: dpRank }, publisher_id: publisherId },
  });
}

/** The envelope every event-plane message travels in. */
export function packEnvelope(publisherId: bigint, sequence: bigint, publishedAtMs: number, topic: string, payload: Uint8Array): Uint8Array {
  return packr.pack({ publisher_id: u64(publisherId), sequence: u64(sequence), published_at: u64(Math.floor(publishedAtMs)), topic, payload });
}

/** One RouterEvent as the publisher emits it: the pool's event data under a publisher-assigned id. */
export interface RouterEventOut {
  eventId: bigint;
  dpRank: number;
  data: KvEventData;
}

function eventData(d: KvEventData): unknown {
  if (d.kind === 'stored') {
    return {
      stored: {
        parent_hash: d.parentHash === null ? null : u64(d.parentHash),
        start_position: null,
        blocks: d.blocks.map((b) => ({ block_hash: u64(b.blockHash), tokens_hash: u64(b.tokensHash), mm_extra_info: null })),
      },
    };
  }
  if (d.kind === 'removed') return { removed: { block_hashes: d.blockHashes.map(u64) } };
  return 'cleared';
}

/** The `kv-events` payload: an array of RouterEvent maps (1.4). */
export function packRouterEvents(workerId: bigint, events: readonly RouterEventOut[]): Uint8Array {
  return packr.pack(
    events.map((e) => ({
      worker_id: u64(workerId),
      storage_tier: 'device',
      event: { event_id: u64(e.eventId), data: eventData(e.data), dp_rank: e.dpRank },
    })),
  );
}

/** The `kv_metrics` payload: ActiveLoad, as Dynamo's mocker fills it (KV blocks in use on the rank). */
export function packActiveLoad(workerId: bigint, dpRank: number, kvUsedBlocks: number): Uint8Array {
  return packr.pack({ worker_id: u64(workerId), dp_rank: dpRank, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: u64(kvUsedBlocks) });
}

/** A forward pass as the planner reads it (Dynamo's `ForwardPassMetrics`, version 1). */
export interface ForwardPassMetrics {
  wallTimeS: number;
  scheduled: { numPrefill: number; sumPrefillTokens: number; varPrefillLength: number; sumPrefillKvTokens: number; numDecode: number; sumDecodeKvTokens: number; varDecodeKvTokens: number };
  queued: { numPrefill: number; sumPrefillTokens: number; varPrefillLength: number; numDecode: number; sumDecodeKvTokens: number; varDecodeKvTokens: number };
}

export const FPM_VERSION = 1;

/** The `forward-pass-metrics` payload: `worker_id` as decimal text, a counter per DP rank from 1. */
export function packForwardPassMetrics(workerId: bigint, dpRank: number, counterId: number, m: ForwardPassMetrics): Uint8Array {
  const s = m.scheduled;
  const q = m.queued;
  return packr.pack({
    version: FPM_VERSION,
    worker_id: workerId.toString(),
    dp_rank: dpRank,
    counter_id: u64(counterId),
    wall_time: f64(m.wallTimeS),
    scheduled_requests: {
      num_prefill_requests: s.numPrefill,
      sum_prefill_tokens: u64(s.sumPrefillTokens),
      var_prefill_length: f64(s.varPrefillLength),
      sum_prefill_kv_tokens: u64(s.sumPrefillKvTokens),
      num_decode_requests: s.numDecode,
      sum_decode_kv_tokens: u64(s.sumDecodeKvTokens),
      var_decode_kv_tokens: f64(s.varDecodeKvTokens),
    },
    queued_requests: {
      num_prefill_requests: q.numPrefill,
      sum_prefill_tokens: u64(q.sumPrefillTokens),
      var_prefill_length: f64(q.varPrefillLength),
      num_decode_requests: q.numDecode,
      sum_decode_kv_tokens: u64(q.sumDecodeKvTokens),
      var_decode_kv_tokens: f64(q.varDecodeKvTokens),
    },
  });
}

const SEQUENCE_BYTES = 8;

/** A u64 as 8 big-endian bytes (ZMQ frames 1 and 2). */
export function u64Frame(v: bigint): Uint8Array {
  const b = new Uint8Array(SEQUENCE_BYTES);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

/** The 4 frames of a direct-ZMQ message: topic, publisher id, sequence, `0x01 | u32 len | envelope`. */
export function zmqFrames(topic: string, publisherId: bigint, sequence: bigint, envelope: Uint8Array): Uint8Array[] {
  const framed = new Uint8Array(5 + envelope.length);
  framed[0] = 1;
  new DataView(framed.buffer).setUint32(1, envelope.length);
  framed.set(envelope, 5);
  return [new TextEncoder().encode(topic), u64Frame(publisherId), u64Frame(sequence), framed];
}

/** vLLM's KV events (the `--zmq-kv-events-ports` format), map form, with the block's token ids. */
export type VllmKvEvent =
  | { type: 'BlockStored'; blockHashes: bigint[]; parentBlockHash: bigint | null; tokenIds: number[]; blockSize: number }
  | { type: 'BlockRemoved'; blockHashes: bigint[] };

/** A vLLM event batch: `[ts seconds (f64), [event maps…], dp_rank]`. */
export function packVllmBatch(tsSeconds: number, events: readonly VllmKvEvent[], dpRank: number): Uint8Array {
  return packr.pack([
    f64(tsSeconds),
    events.map((e) =>
      e.type === 'BlockStored'
        ? { type: 'BlockStored', block_hashes: e.blockHashes.map(u64), parent_block_hash: e.parentBlockHash === null ? null : u64(e.parentBlockHash), token_ids: e.tokenIds, block_size: e.blockSize, group_idx: 0 }
        : { type: 'BlockRemoved', block_hashes: e.blockHashes.map(u64), group_idx: 0 },
    ),
    dpRank,
  ]);
}
