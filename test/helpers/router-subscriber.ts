// A KV router's view of a Dynamo 1.4 worker's event plane, written from the contract
// (dynamo-events-disagg-1x.md §2–3), not from src/: records, transports, envelopes, bindings, cursors.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Etcd3 } from 'etcd3';
import { Unpackr } from 'msgpackr';
import type { NatsConnection, Subscription } from 'nats';
import * as zmq from 'zeromq';
import type { KvEventData } from '../../src/core/types.js';
import { waitFor } from './servers.js';

const reader = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });
const big = (v: unknown): bigint => {
  if (typeof v !== 'bigint' && typeof v !== 'number') throw new Error(`not an integer: ${String(v)}`);
  return BigInt(v);
};

export interface SeenRouterEvent {
  publisherId: bigint;
  workerId: bigint;
  storageTier: string;
  eventId: bigint;
  dpRank: number;
  data: KvEventData;
}

interface Channel {
  key: string;
  topic: string;
  publisherId: bigint;
  transport: { kind: 'Zmq'; endpoint: string } | { kind: 'Nats'; subjectPrefix: string };
}

interface Source {
  key: string;
  publisherId: bigint;
  workerId: bigint;
  dpRank: number;
}

/** Records of the worker's publishers, from etcd or from the file store. */
export type RecordReader = () => Promise<Map<string, string>>;

export function etcdRecords(etcd: Etcd3): RecordReader {
  return async () => {
    const out = new Map<string, string>();
    for (const prefix of ['v1/event_channels/', 'v1/event_sources/']) for (const [k, v] of Object.entries(await etcd.getAll().prefix(prefix).strings())) out.set(k, v);
    return out;
  };
}

export function fileRecords(root: string): RecordReader {
  return async () => {
    const out = new Map<string, string>();
    for (const bucket of ['v1/event_channels', 'v1/event_sources']) {
      let names: string[] = [];
      try {
        names = readdirSync(join(root, bucket));
      } catch {
        continue;
      }
      for (const n of names) if (!n.startsWith('.')) out.set(`${bucket}/${decodeURIComponent(n)}`, readFileSync(join(root, bucket, n), 'utf8'));
    }
    return out;
  };
}

const seg = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);

export class RouterSubscriber {
  readonly kvEvents: SeenRouterEvent[] = [];
  readonly loads: Array<Record<string, unknown>> = [];
  readonly forwardPasses: Array<Record<string, any>> = [];
  /** performance.now() at which each forward-pass message arrived. */
  readonly forwardPassTimes: number[] = [];
  /** Everything a 1.4 router would reject or flag. */
  readonly violations: string[] = [];
  readonly channels: Channel[] = [];
  readonly sources = new Map<bigint, Source>();
  private readonly cursors = new Map<string, bigint>();
  private readonly sequences = new Map<bigint, bigint>();
  private readonly closers: Array<() => void> = [];
  private readonly listeners: Array<(e: SeenRouterEvent) => void> = [];

  private constructor(private readonly scopePath: string) {}

  /**
   * Waits for `kvPublishers` KV channels with their sources plus the kv_metrics and
   * forward-pass-metrics channels of the endpoint, then subscribes to all of them.
   */
  static async connect(o: { records: RecordReader; endpoint: { namespace: string; component: string; endpoint: string }; kvPublishers: number; nats?: NatsConnection }): Promise<RouterSubscriber> {
    const ep = o.endpoint;
    const scope = `namespace/${seg(ep.namespace)}/component/${seg(ep.component)}/endpoint/${seg(ep.endpoint)}`;
    const sub = new RouterSubscriber(scope);
    let records = new Map<string, string>();
    const wanted = () => {
      const kv = [...records.keys()].filter((k) => k.startsWith(`v1/event_channels/${scope}/topic/kv-events/`)).length;
      const src = [...records.keys()].filter((k) => k.startsWith(`v1/event_sources/${scope}/topic/kv-events/`)).length;
      const other = ['kv_metrics', 'forward-pass-metrics'].every((t) => [...records.keys()].some((k) => k.startsWith(`v1/event_channels/${scope}/topic/${t}/`)));
      return kv === o.kvPublishers && src === o.kvPublishers && other;
    };
    await waitFor(async () => ((records = await o.records()), wanted()), { message: 'event-plane records' });
    for (const [key, text] of records) sub.record(key, text);
    // On NATS every publisher of a topic shares the endpoint's subject: one subscription per subject.
    const subjects = new Set<string>();
    for (const c of sub.channels) {
      if (c.transport.kind === 'Nats') {
        const subject = `${c.transport.subjectPrefix}.${seg(c.topic)}`;
        if (subjects.has(subject)) continue;
        subjects.add(subject);
      }
      await sub.subscribe(c, o.nats);
    }
    return sub;
  }

  private record(key: string, text: string): void {
    const j = JSON.parse(text.replace(/:(\d{16,})/g, ':"$1"'));
    const endpoint = { kind: 'endpoint', endpoint: { namespace: j.scope?.endpoint?.namespace, component: j.scope?.endpoint?.component, name: j.scope?.endpoint?.name } };
    if (!key.includes(`/${this.scopePath}/`)) return;
    if (JSON.stringify(j.scope) !== JSON.stringify(endpoint)) this.violations.push(`${key}: scope ${JSON.stringify(j.scope)}`);
    if (j.type === 'EventChannel') {
      const id = BigInt(j.instance_id);
      if (!key.endsWith(`/topic/${seg(j.topic)}/${id.toString(16)}`)) this.violations.push(`${key}: key does not end with its topic and id`);
      const t = j.transport;
      const transport = t.kind === 'Zmq' ? { kind: 'Zmq' as const, endpoint: t.config.endpoint } : { kind: 'Nats' as const, subjectPrefix: t.config.subject_prefix };
      this.channels.push({ key, topic: j.topic, publisherId: id, transport });
    } else if (j.type === 'EventSource') {
      const id = BigInt(j.publisher_id);
      if (j.topic !== 'kv-events' || BigInt(j.metadata.publisher_id) !== id) this.violations.push(`${key}: source topic or publisher id mismatch`);
      if (JSON.stringify(j.metadata.kv_state_endpoint) !== JSON.stringify(endpoint.endpoint)) this.violations.push(`${key}: kv_state_endpoint ${JSON.stringify(j.metadata.kv_state_endpoint)}`);
      if (this.sources.has(id)) this.violations.push(`${key}: publisher ${id} bound twice`);
      this.sources.set(id, { key, publisherId: id, workerId: BigInt(j.metadata.worker.worker_id), dpRank: j.metadata.worker.dp_rank });
    }
  }

  private async subscribe(c: Channel, nats?: NatsConnection): Promise<void> {
    if (c.transport.kind === 'Zmq') {
      const s = new zmq.Subscriber();
      s.connect(c.transport.endpoint);
      s.subscribe(c.topic);
      this.closers.push(() => s.close());
      void (async () => {
        try {
          for await (const frames of s) this.zmqMessage(c, frames);
        } catch {
          // closed
        }
      })();
      return;
    }
    if (!nats) throw new Error('a NATS channel needs a NATS connection');
    const subject = `${c.transport.subjectPrefix}.${seg(c.topic)}`;
    const s: Subscription = nats.subscribe(subject);
    this.closers.push(() => s.unsubscribe());
    void (async () => {
      for await (const m of s) this.envelope(c, m.data);
    })();
    await nats.flush();
  }

  private zmqMessage(c: Channel, frames: Buffer[]): void {
    if (frames.length !== 4) return void this.violations.push(`${c.topic}: ${frames.length} frames`);
    const [topic, pub, seq, framed] = frames;
    if (topic.toString() !== c.topic) return void this.violations.push(`${c.topic}: frame 0 is ${topic.toString()}`);
    if (pub.length !== 8 || seq.length !== 8) return void this.violations.push(`${c.topic}: id frames of ${pub.length}/${seq.length} bytes`);
    if (framed[0] !== 1 || framed.readUInt32BE(1) !== framed.length - 5) return void this.violations.push(`${c.topic}: bad frame header`);
    const env = this.envelope(c, framed.subarray(5));
    if (env && (pub.readBigUInt64BE(0) !== env.publisherId || seq.readBigUInt64BE(0) !== env.sequence)) this.violations.push(`${c.topic}: frames and envelope disagree (IdentityMismatch)`);
  }

  private envelope(c: Channel, bytes: Uint8Array): { publisherId: bigint; sequence: bigint } | null {
    const env = reader.unpack(bytes) as Record<string, unknown>;
    const keys = Object.keys(env).join(',');
    if (keys !== 'publisher_id,sequence,published_at,topic,payload') return (this.violations.push(`${c.topic}: envelope keys ${keys}`), null);
    if (!(env.payload instanceof Uint8Array)) return (this.violations.push(`${c.topic}: payload is not bin`), null);
    const publisherId = big(env.publisher_id);
    const sequence = big(env.sequence);
    if (env.topic !== c.topic) this.violations.push(`${c.topic}: envelope topic ${String(env.topic)}`);
    // ZMQ: the socket is the publisher's own; NATS: any publisher advertised for this topic.
    const known = c.transport.kind === 'Zmq' ? publisherId === c.publisherId : this.channels.some((x) => x.topic === c.topic && x.publisherId === publisherId);
    if (!known) this.violations.push(`${c.topic}: envelope from ${publisherId}, not an advertised publisher`);
    const last = this.sequences.get(publisherId);
    if (last !== undefined && sequence !== last + 1n) this.violations.push(`${c.topic}: sequence ${sequence} after ${last}`);
    this.sequences.set(publisherId, sequence);
    const payload = reader.unpack(env.payload as Uint8Array);
    if (c.topic === 'kv-events') this.kvBatch(publisherId, payload);
    else if (c.topic === 'kv_metrics') this.loads.push(payload);
    else if (c.topic === 'forward-pass-metrics') {
      this.forwardPasses.push(payload);
      this.forwardPassTimes.push(performance.now());
    }
    return { publisherId, sequence };
  }

  private kvBatch(publisherId: bigint, payload: unknown): void {
    const source = this.sources.get(publisherId);
    if (!source) return void this.violations.push(`kv-events from unbound publisher ${publisherId} (dropped)`);
    if (!Array.isArray(payload)) return void this.violations.push('kv-events payload is not an array');
    const events = payload.map((e: any) => this.routerEvent(publisherId, e));
    if (events.some((e) => e.workerId !== source.workerId || e.dpRank !== source.dpRank)) return void this.violations.push(`batch from ${publisherId} names another worker or rank (whole batch dropped)`);
    for (const e of events) {
      const key = `${e.workerId}/${e.dpRank}`;
      const last = this.cursors.get(key);
      if (last !== undefined && e.eventId !== last + 1n) this.violations.push(`rank ${e.dpRank}: event ${e.eventId} after ${last} (a gap resets the rank)`);
      this.cursors.set(key, e.eventId);
      this.kvEvents.push(e);
      for (const l of this.listeners) l(e);
    }
  }

  private routerEvent(publisherId: bigint, e: any): SeenRouterEvent {
    const keys = Object.keys(e).join(',');
    if (keys !== 'worker_id,storage_tier,event') this.violations.push(`RouterEvent keys ${keys}`);
    const ev = e.event;
    const d = ev.data;
    let data: KvEventData;
    if (d === 'cleared') data = { kind: 'cleared' };
    else if (d.stored) {
      if (Object.keys(d.stored).join(',') !== 'parent_hash,start_position,blocks') this.violations.push(`stored keys ${Object.keys(d.stored)}`);
      data = {
        kind: 'stored',
        parentHash: d.stored.parent_hash === null ? null : big(d.stored.parent_hash),
        blocks: d.stored.blocks.map((b: any) => ({ blockHash: big(b.block_hash), tokensHash: big(b.tokens_hash) })),
      };
    } else data = { kind: 'removed', blockHashes: d.removed.block_hashes.map(big) };
    return { publisherId, workerId: big(e.worker_id), storageTier: e.storage_tier, eventId: big(ev.event_id), dpRank: Number(ev.dp_rank), data };
  }

  /** Calls `listener` for every RouterEvent from now on. */
  onKvEvent(listener: (e: SeenRouterEvent) => void): void {
    this.listeners.push(listener);
  }

  /** The first event id seen per rank (1 unless the subscription started late). */
  firstEventId(dpRank: number): bigint | undefined {
    return this.kvEvents.find((e) => e.dpRank === dpRank)?.eventId;
  }

  close(): void {
    for (const c of this.closers) c();
  }
}
