// The 0.6.x event plane over NATS: KV events on the component's JetStream stream, LoadEvents on core NATS.
import type { JetStreamClient, NatsConnection } from 'nats';
import type { Logger } from 'pino';
import type { KvEvent } from '../core/types.js';
import { loadEventJson, routerEventJson, type RankLoad } from '../dynamo/event-messages.js';

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
  published = 0;
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
      this.published++;
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
  published = 0;

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
    this.published++;
  }

  stop(): void {
    for (let r = 0; r < this.timers.length; r++) {
      const t = this.timers[r];
      if (t) clearTimeout(t);
      this.timers[r] = null;
    }
  }
}
