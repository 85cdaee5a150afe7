// vLLM's own KV-event stream (--zmq-kv-events-ports), with the replay ROUTER (--zmq-replay-ports), per DP rank.
//
// As Dynamo's mocker writes it (lib/mocker/src/services/zmq_events.rs): a PUB socket per DP rank on
// `base + rank`, every pass's events as one batch `["", seq u64 BE, [ts, [events…], dp_rank]]` with
// `seq` from 0; the last 10,000 batches kept for a DEALER that asks `["", start_seq]` on the replay
// ROUTER (`replay base + rank`), answered batch by batch as `["", "", seq, payload]` and closed with
// `seq = 0xFFFFFFFFFFFFFFFF` and an empty payload. Events use vLLM's map form, which decodes on every
// Dynamo version (1.4.0's own positional removals do not). Clear-all events are not sent, as in Dynamo.
import type { Logger } from 'pino';
import type { Publisher, Router } from 'zeromq';
import type { KvEvent } from '../core/types.js';
import { packVllmBatch, u64Frame, type VllmKvEvent } from '../dynamo/event-plane-wire.js';
import type { EngineLoopHooks } from '../engine/engine-loop.js';
import { loadZmq, tooManySockets } from './zmq-library.js';

/** Batches each rank keeps for replay (Dynamo's ring buffer). */
export const REPLAY_BUFFER_BATCHES = 10_000;
const END_OF_REPLAY = u64Frame(0xffff_ffff_ffff_ffffn);
const EMPTY = new Uint8Array(0);

export function vllmEvents(events: readonly KvEvent[], blockSize: number): VllmKvEvent[] {
  const out: VllmKvEvent[] = [];
  for (const { data } of events) {
    if (data.kind === 'stored') {
      const tokenIds: number[] = [];
      for (const b of data.blocks) {
        if (!b.tokens) throw new Error('vLLM KV events need the blocks\' token ids (Scheduler.recordBlockTokens)');
        tokenIds.push(...b.tokens);
      }
      out.push({ type: 'BlockStored', blockHashes: data.blocks.map((b) => b.blockHash), parentBlockHash: data.parentHash, tokenIds, blockSize });
    } else if (data.kind === 'removed') {
      out.push({ type: 'BlockRemoved', blockHashes: data.blockHashes });
    }
  }
  return out;
}

interface Rank {
  pub: Publisher;
  router: Router | null;
  seq: bigint;
  /** The newest batches, oldest first: `first` is the sequence number of `buffer[0]`. */
  buffer: Uint8Array[];
  first: bigint;
  sending: Promise<unknown>;
}

export class VllmKvEvents {
  readonly hooks: EngineLoopHooks;

  private constructor(
    private readonly ranks: Rank[],
    private readonly blockSize: number,
    private readonly log: Logger,
  ) {
    this.hooks = {
      onPassStart: (rank, result) => {
        if (result.kvEvents.length) this.publish(rank, result.kvEvents);
      },
    };
    ranks.forEach((r) => r.router && void this.serveReplay(r));
  }

  /** Binds rank r's PUB on `tcp://{host}:{basePort + r}` and, if given, its ROUTER on `replayBasePort + r`. */
  static async start(o: { basePort: number; replayBasePort: number | null; ranks: number; blockSize: number; host?: string; log: Logger }): Promise<VllmKvEvents> {
    const zmq = await loadZmq();
    const host = o.host ?? '0.0.0.0';
    const ranks: Rank[] = [];
    try {
      for (let r = 0; r < o.ranks; r++) {
        const pub = new zmq.Publisher({ linger: 0, sendTimeout: 0 });
        ranks.push({ pub, router: null, seq: 0n, buffer: [], first: 0n, sending: Promise.resolve() });
        await pub.bind(`tcp://${host}:${o.basePort + r}`);
        if (o.replayBasePort !== null) {
          const router = new zmq.Router({ linger: 0 });
          ranks[r].router = router;
          await router.bind(`tcp://${host}:${o.replayBasePort + r}`);
        }
      }
    } catch (err) {
      for (const r of ranks) {
        r.pub.close();
        r.router?.close();
      }
      throw tooManySockets(err, "vLLM's KV-event sockets (--zmq-kv-events-ports)");
    }
    return new VllmKvEvents(ranks, o.blockSize, o.log);
  }

  private publish(rank: number, events: readonly KvEvent[]): void {
    const batch = vllmEvents(events, this.blockSize);
    if (batch.length === 0) return;
    const r = this.ranks[rank];
    const payload = packVllmBatch(Date.now() / 1000, batch, rank);
    const seq = r.seq++;
    r.buffer.push(payload);
    if (r.buffer.length > REPLAY_BUFFER_BATCHES) {
      r.buffer.shift();
      r.first++;
    }
    // One send in flight per socket; a PUB drops what it cannot queue.
    r.sending = r.sending.then(() => r.pub.send([EMPTY, u64Frame(seq), payload]).catch(() => {}));
  }

  /** Answers `["", start_seq]` requests with the buffered batches from `start_seq` on, then the end marker. */
  private async serveReplay(r: Rank): Promise<void> {
    const router = r.router!;
    try {
      for await (const frames of router) {
        const [identity, , start] = frames;
        if (frames.length < 3 || start.length !== 8) {
          this.log.warn('ignoring a malformed KV-event replay request');
          continue;
        }
        const from = new DataView(start.buffer, start.byteOffset, 8).getBigUint64(0);
        // Publishing goes on while the replay is sent: answer from a copy of the buffer as it is now.
        const first = r.first;
        const batches = r.buffer.slice();
        const last = first + BigInt(batches.length);
        if (from < first || from >= last) this.log.warn(`KV-event replay from ${from}: buffered ${first}..${last - 1n}`);
        for (let seq = from < first ? first : from; seq < last; seq++) {
          await router.send([identity, EMPTY, EMPTY, u64Frame(seq), batches[Number(seq - first)]]);
        }
        await router.send([identity, EMPTY, EMPTY, END_OF_REPLAY, EMPTY]);
      }
    } catch (err) {
      if (!router.closed) this.log.warn(`KV-event replay stopped: ${(err as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    for (const r of this.ranks) {
      await r.sending;
      r.pub.close();
      r.router?.close();
    }
  }
}
