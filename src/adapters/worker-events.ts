// One worker's Dynamo 1.4 event plane: KV events per DP rank, ActiveLoad and forward-pass metrics, with their records.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { EndpointId } from '../config.js';
import type { Engine } from '../core/engine.js';
import { idleForwardPass, type ForwardPassSnapshot } from '../core/forward-pass.js';
import type { PassResult } from '../core/scheduler.js';
import type { KvEvent } from '../core/types.js';
import { KvEventBatcher } from '../dynamo/kv-event-batcher.js';
import type { DiscoverySession } from '../dynamo/registration.js';
import type { EngineLoopHooks } from '../engine/engine-loop.js';
import type { EventSink, EventTransport } from './event-plane.js';
import { RankDebounce } from './rank-debounce.js';
import type { QueuedWork } from '../serving/request-server.js';
import type { PublisherFaults } from '../faults/worker-faults.js';

/** Dynamo's IDLE_HEARTBEAT_INTERVAL: an idle rank reports an all-zero pass this often. */
export const FPM_HEARTBEAT_MS = 1000;

/**
 * After the event plane's connection comes back (core NATS), each KV publisher republishes its rank's
 * cache this much later: long enough for routers, which lost their subscriptions too, to be back.
 */
export const KV_RESYNC_DELAY_MS = 500;

/** Dynamo 1.4's `discovery_safe_publisher_id`: random, masked to 53 bits so it survives JSON readers. */
function publisherId(): bigint {
  return randomBytes(8).readBigUInt64BE(0) & ((1n << 53n) - 1n);
}

/** The msgpack side, loaded when the publishers start (so it costs nothing before registration). */
type Wire = typeof import('../dynamo/event-plane-wire.js');

/** One publisher: an id, its own envelope sequence from 0, and a sink. */
class Publisher {
  readonly id = publisherId();
  private sequence = 0n;

  constructor(
    readonly topic: string,
    readonly sink: EventSink,
    private readonly wire: Wire,
  ) {}

  publish(payload: Uint8Array): void {
    this.sink.send(this.id, this.sequence, this.wire.packEnvelope(this.id, this.sequence, Date.now(), this.topic, payload));
    this.sequence++;
  }
}

export interface WorkerEventsOptions {
  /** The process's transport, made on first use (it may load the ZMQ library). */
  transport: () => Promise<EventTransport>;
  session: DiscoverySession;
  endpoint: EndpointId;
  engine: Engine;
  /** KV events are published only with prefix caching on (nothing is reusable otherwise). */
  kvEvents: boolean;
  /** Prompt lengths of the requests waiting for an admission slot on a rank (queued prefill work). */
  admissionQueue: (rank: number) => Iterable<QueuedWork>;
  log: Logger;
  /** A fault plan's load and KV-event faults. */
  faults?: PublisherFaults;
}

export class WorkerEvents {
  /** Hand these to the engine loop; they queue what arrives before `start()` has finished. */
  readonly hooks: EngineLoopHooks;
  private readonly batchers: KvEventBatcher[];
  private readonly pendingKv: KvEvent[][];
  private kv: Publisher[] = [];
  private load: Publisher | null = null;
  private fpm: Publisher | null = null;
  private readonly fpmCounters: number[];
  private readonly heartbeats: Array<NodeJS.Timeout | null>;
  /** ActiveLoad: KV blocks in use per rank, 1 ms after a change. */
  private readonly loads: RankDebounce<number>;
  private wire: Wire | null = null;
  private ready = false;
  private stopped = false;
  /** Ranks that republish their cache (cleared, then stores) as soon as their pool has no undrained events. */
  private readonly resyncing: boolean[];
  private resyncTimer: NodeJS.Timeout | null = null;
  private unlistenReconnect: (() => void) | null = null;

  constructor(private readonly o: WorkerEventsOptions) {
    const ranks = o.engine.ranks.length;
    this.batchers = Array.from({ length: ranks }, (_, r) => new KvEventBatcher(r));
    this.pendingKv = Array.from({ length: ranks }, () => []);
    this.fpmCounters = Array.from({ length: ranks }, () => 0);
    this.heartbeats = Array.from({ length: ranks }, () => null);
    this.resyncing = Array.from({ length: ranks }, () => false);
    this.loads = new RankDebounce({
      ranks,
      read: (rank) => o.engine.ranks[rank].pool.activeBlocks,
      same: (a, b) => a === b,
      publish: (rank, value) => {
        const used = o.faults ? o.faults.load.pass(rank, value) : value;
        if (used !== undefined) this.load!.publish(this.wire!.packActiveLoad(o.session.instanceId, rank, used));
      },
    });
    o.faults?.load.onResume(() => {
      if (!this.ready || this.stopped) return;
      for (let rank = 0; rank < ranks; rank++) this.loads.publishNow(rank);
    });
    for (const rank of o.engine.ranks) rank.collectForwardPass = true;
    this.hooks = {
      onPassStart: (rank, result) => {
        // A rank that republishes its cache now has this pass's events in the snapshot.
        const republished = this.resyncing[rank] && this.resync(rank);
        if (!republished && o.kvEvents && result.kvEvents.length) this.kvEventsOf(rank, result.kvEvents);
        this.loadChanged(rank);
      },
      onPassEnd: (rank, result) => {
        this.forwardPass(rank, result);
        this.loadChanged(rank);
      },
    };
  }

  /**
   * Dynamo's order: per KV publisher (one per DP rank) the channel then its source; then the load
   * and forward-pass publishers with their channels. Events queued meanwhile go out after.
   */
  async start(): Promise<void> {
    const { endpoint: ep, session } = this.o;
    const [wire, transport] = await Promise.all([import('../dynamo/event-plane-wire.js'), this.o.transport()]);
    this.wire = wire;
    const workerId = session.instanceId;
    const open = async (topic: string): Promise<Publisher> => {
      const p = new Publisher(topic, await transport.open(ep, topic), wire);
      await session.create(wire.eventChannelKey(ep, topic, p.id), wire.eventChannelRecord(ep, topic, p.id, p.sink.record));
      return p;
    };
    if (this.o.kvEvents) {
      for (let rank = 0; rank < this.o.engine.ranks.length; rank++) {
        const p = await open(wire.KV_EVENTS_TOPIC);
        await session.create(wire.eventSourceKey(ep, wire.KV_EVENTS_TOPIC, p.id), wire.eventSourceRecord(ep, p.id, workerId, rank));
        this.kv.push(p);
      }
    }
    this.load = await open(wire.KV_METRICS_TOPIC);
    this.fpm = await open(wire.FPM_TOPIC);
    this.ready = true;
    this.pendingKv.forEach((events, rank) => {
      if (events.length) this.publishKv(rank, events.splice(0));
    });
    for (let rank = 0; rank < this.o.engine.ranks.length; rank++) {
      this.loads.publishNow(rank);
      this.armHeartbeat(rank);
    }
    this.unlistenReconnect = transport.onReconnect?.(() => this.reconnected()) ?? null;
  }

  /**
   * The connection is back after an outage in which envelopes may have been lost (a router would see
   * a gap in the event ids and clear the rank, and with nothing published after the outage it would
   * not even see that). Loads go out at once; a moment later each rank publishes a `cleared` event
   * and its whole cache as stores, with the next event ids, so a router converges on the cache.
   */
  private reconnected(): void {
    if (this.stopped) return;
    for (let rank = 0; rank < this.o.engine.ranks.length; rank++) this.loads.publishNow(rank);
    if (!this.o.kvEvents) return;
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = null;
      for (let rank = 0; rank < this.resyncing.length; rank++) {
        this.resyncing[rank] = true;
        this.resync(rank);
      }
    }, KV_RESYNC_DELAY_MS);
    this.resyncTimer.unref();
  }

  /** Republishes the rank's cache if its pool has handed out every event (else at its next pass start). */
  private resync(rank: number): boolean {
    const pool = this.o.engine.ranks[rank].pool;
    if (this.stopped || pool.hasPendingEvents) return false;
    this.resyncing[rank] = false;
    this.publishKv(rank, pool.snapshotEvents());
    return true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unlistenReconnect?.();
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    for (const t of this.heartbeats) if (t) clearTimeout(t);
    this.loads.stop();
    await Promise.all([...this.kv, this.load, this.fpm].map((p) => p?.sink.close()));
  }

  /** `faulted` false: events a `delay` fault held back, published as they are. */
  private kvEventsOf(rank: number, events: KvEvent[], faulted = true): void {
    const faults = this.o.faults?.kv;
    if (faulted && faults?.active) {
      const { now, skip } = faults.apply(rank, events, (ms, later) => {
        setTimeout(() => !this.stopped && this.kvEventsOf(rank, later, false), ms).unref();
      });
      this.batchers[rank].skip(skip);
      events = now;
      if (events.length === 0) return;
    }
    if (this.ready) this.publishKv(rank, events);
    else this.pendingKv[rank].push(...events);
  }

  private publishKv(rank: number, events: readonly KvEvent[]): void {
    const workerId = this.o.session.instanceId;
    for (const envelope of this.batchers[rank].batch(events)) this.kv[rank].publish(this.wire!.packRouterEvents(workerId, envelope));
  }

  /** ActiveLoad goes out only once the publishers run, and never after stop. */
  private loadChanged(rank: number): void {
    if (this.ready && !this.stopped) this.loads.changed(rank);
  }

  private forwardPass(rank: number, result: PassResult): void {
    if (!this.ready || this.stopped || !result.forwardPass) return;
    this.publishForwardPass(rank, result.forwardPass, true);
  }

  private publishForwardPass(rank: number, snapshot: ForwardPassSnapshot, withAdmissionQueue: boolean): void {
    if (!this.fpm) return;
    if (withAdmissionQueue) {
      for (const w of this.o.admissionQueue(rank)) (w.kind === 'decode' ? snapshot.queuedDecode : snapshot.queuedPrefill).add(w.tokens);
    }
    const s = snapshot;
    this.fpm.publish(
      this.wire!.packForwardPassMetrics(this.o.session.instanceId, rank, ++this.fpmCounters[rank], {
        wallTimeS: s.wallTimeS,
        scheduled: {
          numPrefill: s.scheduledPrefill.lengths.count,
          sumPrefillTokens: s.scheduledPrefill.computedTokens,
          varPrefillLength: s.scheduledPrefill.lengths.variance,
          sumPrefillKvTokens: s.scheduledPrefill.presentTokens,
          numDecode: s.scheduledDecode.count,
          sumDecodeKvTokens: s.scheduledDecode.sum,
          varDecodeKvTokens: s.scheduledDecode.variance,
        },
        queued: {
          numPrefill: s.queuedPrefill.count,
          sumPrefillTokens: s.queuedPrefill.sum,
          varPrefillLength: s.queuedPrefill.variance,
          numDecode: s.queuedDecode.count,
          sumDecodeKvTokens: s.queuedDecode.sum,
          varDecodeKvTokens: s.queuedDecode.variance,
        },
      }),
    );
    this.armHeartbeat(rank);
  }

  /** An idle rank (no pass for a second) reports an all-zero pass, and again every second after. */
  private armHeartbeat(rank: number): void {
    const t = this.heartbeats[rank];
    if (t) clearTimeout(t);
    if (this.stopped) return;
    this.heartbeats[rank] = setTimeout(() => this.publishForwardPass(rank, idleForwardPass(), false), FPM_HEARTBEAT_MS);
    this.heartbeats[rank].unref();
  }
}

