// The 0.6.x event plane over NATS: KV events on the component's JetStream stream (through an outbox that
// survives NATS outages), LoadEvents on core NATS.
import type { NatsConnection } from 'nats';
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { PublisherFaults } from '../faults/worker-faults.js';
import type { Engine } from '../core/engine.js';
import type { PassResult } from '../core/scheduler.js';
import type { KvEvent } from '../core/types.js';
import { loadEventJson, routerEventJson, type RankLoad } from '../dynamo/event-messages.js';
import type { EngineLoopHooks } from '../engine/engine-loop.js';
import { KvEventOutbox } from './kv-event-outbox.js';
import { natsLink } from './nats-link.js';
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

/** How long a stopping worker waits for JetStream to acknowledge the KV events still in its outbox. */
const KV_FLUSH_TIMEOUT_MS = 2000;

/** KV events to JetStream through a bounded, ordered outbox that survives NATS outages (kv-event-outbox.ts). */
function kvEventPublisher(o: JetStreamEventOptions & { kvSubject: string }): KvEventOutbox {
  const js = o.nats.jetstream();
  const encoder = new TextEncoder();
  return new KvEventOutbox({
    publish: (data, msgID) => js.publish(o.kvSubject, data, { msgID }),
    encode: (event) => encoder.encode(routerEventJson(o.workerId, event)),
    link: natsLink(o.nats),
    ranks: o.engine.ranks.length,
    snapshot: (rank) => {
      const pool = o.engine.ranks[rank].pool;
      return pool.hasPendingEvents ? null : pool.snapshotEvents();
    },
    log: o.log,
    limit: o.kvOutboxLimit,
  });
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
  /** Events the KV outbox holds at most (DYN_MOCKER_KV_OUTBOX_EVENTS). */
  kvOutboxLimit: number;
}

/** One worker's 0.6.x events as engine-loop hooks: KV events at each pass start, load on every change. */
export function jetstreamEventHooks(o: JetStreamEventOptions): EngineLoopHooks & { stop(): Promise<void>; kvOutbox: KvEventOutbox | null } {
  const kv = o.kvSubject !== null ? kvEventPublisher({ ...o, kvSubject: o.kvSubject }) : null;
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
  // Load published while NATS was down is lost (nats.js drops what it buffered when it redials): the
  // router gets every rank's current load as soon as the connection is back.
  const unlisten = natsLink(o.nats).onChange((up) => {
    if (up) o.engine.ranks.forEach((_, rank) => load.publishNow(rank));
  });
  o.queues.forEach((queue, rank) => {
    queue.on('add', () => load.changed(rank));
    queue.on('next', () => load.changed(rank));
    load.publishNow(rank);
  });
  return {
    onPassStart: (rank: number, result: PassResult) => {
      // Called on every pass, even without events: a rank waiting to republish its cache does it at a pass start.
      if (kv) {
        const faults = o.faults?.kv;
        if (faults?.active && result.kvEvents.length) {
          const { now } = faults.apply(rank, result.kvEvents, (ms, later) => setTimeout(() => kv.publish(rank, later), ms).unref());
          if (now.length) kv.publish(rank, now);
        } else kv.publish(rank, result.kvEvents);
      }
      load.changed(rank);
    },
    onPassEnd: (rank: number) => load.changed(rank),
    stop: async () => {
      load.stop();
      unlisten();
      await kv?.close(KV_FLUSH_TIMEOUT_MS);
    },
    kvOutbox: kv,
  };
}
