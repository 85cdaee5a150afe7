// Publishes the block pool's KV events to Dynamo's JetStream stream as RouterEvent JSON, in order.
import type { JetStreamClient, NatsConnection } from 'nats';
import type { Logger } from 'pino';
import type { KvEvent } from '../core/types.js';

/** Serializes one event exactly as Dynamo's RouterEvent (u64 hashes as bare integers). */
export function routerEventJson(workerId: bigint, event: KvEvent): string {
  const d = event.data;
  let data: string;
  if (d.kind === 'stored') {
    let blocks = '';
    for (let i = 0; i < d.blocks.length; i++) {
      const b = d.blocks[i];
      blocks += `${i ? ',' : ''}{"block_hash":${b.blockHash},"tokens_hash":${b.tokensHash}}`;
    }
    data = `{"stored":{"parent_hash":${d.parentHash === null ? 'null' : d.parentHash},"blocks":[${blocks}]}}`;
  } else if (d.kind === 'removed') {
    data = `{"removed":{"block_hashes":[${d.blockHashes.join(',')}]}}`;
  } else {
    data = '"cleared"';
  }
  return `{"worker_id":${workerId},"event":{"event_id":${event.eventId},"data":${data},"dp_rank":${event.dpRank}}}`;
}

/** Creates the stream if absent: subjects `{stream}.*`, max_age from DYN_NATS_STREAM_MAX_AGE (s). */
export async function ensureKvEventStream(nc: NatsConnection, stream: string, env: Record<string, string | undefined>): Promise<void> {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.info(stream);
    return;
  } catch {
    // not found: create it below
  }
  const raw = Number(env.DYN_NATS_STREAM_MAX_AGE ?? '3600');
  const maxAgeS = Number.isFinite(raw) && raw > 0 ? raw : 3600;
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
