// The 0.6.x event plane over NATS: KV events on the component's JetStream stream, LoadEvents on core NATS.
import type { JetStreamClient, NatsConnection } from 'nats';
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { Engine } from '../core/engine.js';
import type { PassResult } from '../core/scheduler.js';
import type { KvEvent } from '../core/types.js';
import { loadEventJson, routerEventJson, type RankLoad } from '../dynamo/event-messages.js';
import type { EngineLoopHooks } from '../engine/engine-loop.js';

/** Creates the stream if absent: subjects `{stream}.*`, `max_age` in seconds (DYN_NATS_STREAM_MAX_AGE). */
export async function ensureKvEventStream(nc: NatsConnection, stream: string, maxAgeS: number): Promise<void> {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.info(stream);
    return;
  } catch {
    // not found: create it below
  }
  try {
    await jsm.streams.add({ name: stream, subjects: [`${stream}.*`], max_age: Math.round(maxAgeS * 1e9) });
  } catch (err) {
    // Another worker or a router may have created it in the meantime.
    await jsm.streams.info(stream).catch(() => {
      throw err;
    });
  }
}

export class KvEventPublisher {
  private readonly js: JetStreamClient;
  private readonly encoder = new TextEncoder();
  private tail: Promise<unknown> = Promise.resolve();
  failed = 0;

  constructor(
    nc: NatsConnection,
    private readonly subject: string,
    private readonly workerId: bigint,
    private readonly log: Logger,
  ) {
    this.js = nc.jetstream();
  }

  /**
   * Publishes a pass's events. Publishes go out on one connection in call order, so the stream
   * keeps the pool's order; acks are awaited in the background only to report failures.
   */
  publish(events: readonly KvEvent[]): void {
    for (const event of events) {
      const ack = this.js.publish(this.subject, this.encoder.encode(routerEventJson(this.workerId, event)));
      this.tail = ack.catch((err: Error) => {
        this.failed++;
        this.log.warn(`KV event publish failed: ${err.message}`);
      });
    }
  }

  /** Waits for the acks of everything published so far. */
  async flush(): Promise<void> {
    await this.tail;
  }
}

/** Dynamo publishes 1 ms after the active blocks or the waiting count change. */
const DEBOUNCE_MS = 1;

export class LoadPublisher {
  private readonly encoder = new TextEncoder();
  private readonly last: Array<{ activeBlocks: number; waiting: number } | null>;
  private readonly timers: Array<NodeJS.Timeout | null>;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subject: string,
    private readonly workerId: bigint,
    private readonly read: (rank: number) => RankLoad,
    ranks: number,
  ) {
    this.last = Array.from({ length: ranks }, () => null);
    this.timers = Array.from({ length: ranks }, () => null);
  }

  /** Call whenever a rank's load may have changed; publishes at most once per debounce window. */
  changed(rank: number): void {
    if (this.timers[rank]) return;
    const load = this.read(rank);
    const last = this.last[rank];
    if (last && last.activeBlocks === load.activeBlocks && last.waiting === load.waiting) return;
    this.timers[rank] = setTimeout(() => {
      this.timers[rank] = null;
      this.publishNow(rank);
    }, DEBOUNCE_MS);
  }

  /** Publishes the rank's current load immediately (also used for the first value). */
  publishNow(rank: number): void {
    const load = this.read(rank);
    this.last[rank] = { activeBlocks: load.activeBlocks, waiting: load.waiting };
    if (this.nc.isClosed()) return;
    this.nc.publish(this.subject, this.encoder.encode(loadEventJson(this.workerId, load)));
  }

  stop(): void {
    for (let r = 0; r < this.timers.length; r++) {
      const t = this.timers[r];
      if (t) clearTimeout(t);
      this.timers[r] = null;
    }
  }
}

export interface JetStreamEventOptions {
  nats: NatsConnection;
  /** The KV-event subject (`{stream}.queue`), or null when prefix caching is off (nothing to publish). */
  kvSubject: string | null;
  /** `namespace.{ns}.kv_metrics`. */
  loadSubject: string;
  workerId: bigint;
  engine: Engine;
  /** One admission queue per DP rank: its waiting requests count as waiting load. */
  queues: PQueue[];
  /** --max-num-seqs, reported as request_total_slots. */
  totalSlots: number;
  log: Logger;
}

/** One worker's 0.6.x events as engine-loop hooks: KV events at each pass start, load on every change. */
export function jetstreamEventHooks(o: JetStreamEventOptions): EngineLoopHooks & { stop(): Promise<void> } {
  const kv = o.kvSubject !== null ? new KvEventPublisher(o.nats, o.kvSubject, o.workerId, o.log) : null;
  const load = new LoadPublisher(
    o.nats,
    o.loadSubject,
    o.workerId,
    (rank) => {
      const s = o.engine.ranks[rank].snapshot();
      return {
        dpRank: rank,
        activeSlots: s.running,
        totalSlots: o.totalSlots,
        waiting: s.waiting + o.queues[rank].size,
        activeBlocks: s.activeBlocks,
        totalBlocks: s.totalBlocks,
        prefixHitRate: s.prefixHitRate,
      };
    },
    o.engine.ranks.length,
  );
  o.queues.forEach((queue, rank) => {
    queue.on('add', () => load.changed(rank));
    queue.on('next', () => load.changed(rank));
    load.publishNow(rank);
  });
  return {
    onPassStart: (rank: number, result: PassResult) => {
      if (kv && result.kvEvents.length) kv.publish(result.kvEvents);
      load.changed(rank);
    },
    onPassEnd: (rank: number) => load.changed(rank),
    stop: async () => {
      load.stop();
      await kv?.flush();
    },
  };
}
