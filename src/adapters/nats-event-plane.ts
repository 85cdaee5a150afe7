// The 0.6.x event plane over NATS: KV events on the component's JetStream stream, LoadEvents on core NATS.
import type { JetStreamClient, NatsConnection } from 'nats';
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { PublisherFaults } from '../faults/worker-faults.js';
import type { Engine } from '../core/engine.js';
import type { PassResult } from '../core/scheduler.js';
import type { KvEvent } from '../core/types.js';
import { loadEventJson, routerEventJson, type RankLoad } from '../dynamo/event-messages.js';
import type { EngineLoopHooks } from '../engine/engine-loop.js';
import { RankDebounce } from './rank-debounce.js';

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

class KvEventPublisher {
  private readonly js: JetStreamClient;
  private readonly encoder = new TextEncoder();
  private tail: Promise<unknown> = Promise.resolve();

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
        this.log.warn(`KV event publish failed: ${err.message}`);
      });
    }
  }

  /** Waits for the acks of everything published so far. */
  async flush(): Promise<void> {
    await this.tail;
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
  /** A fault plan's load and KV-event faults (`gap` has no meaning for 0.6.x event ids and is ignored). */
  faults?: PublisherFaults;
}

/** One worker's 0.6.x events as engine-loop hooks: KV events at each pass start, load on every change. */
export function jetstreamEventHooks(o: JetStreamEventOptions): EngineLoopHooks & { stop(): Promise<void> } {
  const kv = o.kvSubject !== null ? new KvEventPublisher(o.nats, o.kvSubject, o.workerId, o.log) : null;
  const encoder = new TextEncoder();
  // Dynamo publishes 1 ms after the active blocks or the waiting count change.
  const load = new RankDebounce<RankLoad>({
    ranks: o.engine.ranks.length,
    read: (rank) => {
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
    same: (a, b) => a.activeBlocks === b.activeBlocks && a.waiting === b.waiting,
    publish: (rank, current) => {
      const value = o.faults ? o.faults.load.pass(rank, current) : current;
      if (value !== undefined && !o.nats.isClosed()) o.nats.publish(o.loadSubject, encoder.encode(loadEventJson(o.workerId, value)));
    },
  });
  o.faults?.load.onResume(() => o.engine.ranks.forEach((_, rank) => load.publishNow(rank)));
  o.queues.forEach((queue, rank) => {
    queue.on('add', () => load.changed(rank));
    queue.on('next', () => load.changed(rank));
    load.publishNow(rank);
  });
  return {
    onPassStart: (rank: number, result: PassResult) => {
      if (kv && result.kvEvents.length) {
        const faults = o.faults?.kv;
        if (faults?.active) {
          const { now } = faults.apply(rank, result.kvEvents, (ms, later) => setTimeout(() => kv.publish(later), ms).unref());
          if (now.length) kv.publish(now);
        } else kv.publish(result.kvEvents);
      }
      load.changed(rank);
    },
    onPassEnd: (rank: number) => load.changed(rank),
    stop: async () => {
      load.stop();
      await kv?.flush();
    },
  };
}
